"""Consumer groups: one instance's membership in a group (a durable pull consumer).

>>> sub = await bus.subscribe(OrderCreated, group="billing", handler=handle)   # doctest: +SKIP
>>> sub.stats.acked, sub.durable                                               # doctest: +SKIP
(3, 'billing__orders_created_v1')

A :class:`Subscription` is made by :meth:`buslib.bus.EventBus.subscribe` (read its module
docstring for the behaviour). This module holds how it works: binding the durable and
detecting config drift, the pull loop with overlapping pull requests and a short
look-ahead, keep-alives and ``handler_timeout``, and settling each message (ack, retry
later, dead letter).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from buslib import codec, tracing
from buslib._wire import _ack, _delivery_info
from buslib.errors import BusError, ConfigDriftError, ContractError, DecodeError
from buslib.events import Event, lookup_event_type
from buslib.retry import DeadLetterSink, Failure, FailureKind, Reject, Retry
from buslib.subjects import durable_name

if TYPE_CHECKING:
    from buslib.bus import EventBus

__all__ = ["HANDLER_TIMEOUT", "Handler", "MessageContext", "Subscription", "SubscriptionStats"]

log = logging.getLogger("buslib")

MSG_ID = "Nats-Msg-Id"
LOOKAHEAD_S = 0.1  # pull ahead at most this much measured handler work, so a group shares a backlog
HANDLER_TIMEOUT = 300.0  # seconds: a handler still running after this is cancelled and retried
STREAM_NOT_FOUND = 10059  # JetStream API error code
Handler = Callable[[Any, "MessageContext"], Awaitable[None]]


class _StreamGone(Exception):
    """The subscription's stream does not exist (deleted under a running subscription)."""


# -- drift ----------------------------------------------------------------------------
def _norm(value: Any) -> Any:
    value = getattr(value, "value", value)  # enums -> their wire value
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value] or None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _differences(existing: object, wanted: Mapping[str, Any], *, unordered: Iterable[str] = ()) -> list[str]:
    diffs = []
    for key, want in wanted.items():
        have, want_n = _norm(getattr(existing, key, None)), _norm(want)
        if key in unordered and have and want_n:
            same = sorted(have) == sorted(want_n)
        elif isinstance(have, float) or isinstance(want_n, float):
            same = have is not None and want_n is not None and abs(have - want_n) < 1e-6
        else:
            same = have == want_n
        if not same:
            diffs.append(f"{key}: the server has {have!r}, this code asks for {want_n!r}")
    return diffs


# -- message context & stats ----------------------------------------------------------
@dataclass
class MessageContext:
    """What a handler knows about the delivery it is handling.

    Attributes:
        subject: the subject the event was published on.
        headers: the message headers (CloudEvents ``ce-*``, ``traceparent``, ...).
        num_delivered: 1 on the first delivery, 2 on the first retry, ...
        stream, stream_seq: where the message is stored.
        group: the consumer group handling it.
        trace_id: the trace this delivery belongs to (the handler runs inside it).
        event_id: the event's id (``Nats-Msg-Id``), when the publisher set one.
        msg: the raw nats-py message (for lessons that look underneath).
    """

    subject: str
    headers: dict[str, str]
    num_delivered: int
    stream: str
    stream_seq: int
    group: str
    trace_id: str | None
    event_id: str | None
    msg: Msg = field(repr=False)
    _delivery: _Delivery | None = field(default=None, repr=False)

    async def in_progress(self) -> None:
        """Tell the server the handler is still working: resets this delivery's ack timer."""
        await self.msg.in_progress()
        if self._delivery is not None:
            self._delivery.last_progress = time.monotonic()


@dataclass
class SubscriptionStats:
    """Counters of one subscription (this instance only)."""

    received: int = 0
    acked: int = 0
    retried: int = 0
    rejected: int = 0
    exhausted: int = 0
    undecodable: int = 0
    dead_lettered: int = 0  # handed to the dead-letter sink, then terminated
    dropped: int = 0  # terminated without a sink (logged as a warning)
    sink_errors: int = 0  # the sink raised: the message was nak'ed, not terminated
    rebinds: int = 0  # pull subscription re-created (server restart, consumer lost)

    @property
    def processed(self) -> int:
        """Messages handled successfully (acked)."""
        return self.acked


@dataclass(eq=False, slots=True)  # identity: kept in a set while its handler runs
class _Delivery:
    msg: Msg
    timer: float  # this delivery's ack timeout, seconds
    last_progress: float
    started: float  # when handling began (handler_timeout counts from here)
    task: asyncio.Task[Any] | None  # the task running the handler: cancelled at handler_timeout
    timed_out: bool = False


# -- subscription ---------------------------------------------------------------------
class Subscription:
    """One instance's membership in a consumer group. Create with :meth:`EventBus.subscribe`."""

    def __init__(
        self,
        bus: EventBus,
        *,
        subject: str,
        stream: str,
        group: str,
        handler: Handler,
        target: type[Event] | None,
        concurrency: int,
        retry: Retry,
        dead_letters: DeadLetterSink | None,
        ack_wait: float,
        prefetch: int,
        pull_expires: float,
        subjects: list[str] | None = None,
        strict: bool = False,
        handler_timeout: float | None = HANDLER_TIMEOUT,
    ) -> None:
        self.bus = bus
        self.subject = subject
        self.subjects = subjects or [subject]  # the consumer's filter: the subject, or a contract's history
        self.strict = strict
        self.handler_timeout = handler_timeout
        self.stream = stream
        self.group = group
        self.durable = durable_name(group, subject)
        self.handler = handler
        self.target = target
        self.concurrency = concurrency
        self.retry = retry
        self.dead_letters = dead_letters
        self.ack_wait = ack_wait
        self.prefetch = prefetch
        self.pull_expires = pull_expires
        self.stats = SubscriptionStats()
        self._timers: list[float] = [ack_wait]
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._in_flight: set[_Delivery] = set()
        self._first_failure: dict[int, datetime] = {}
        self._pending = 0  # messages asked for in pull requests, not yet received
        self._last_heard = time.monotonic()
        self._avg_handler_s: float | None = None
        self._handled = 0
        self._target = concurrency  # messages to have in flight, buffered or asked for
        self._wake = asyncio.Event()
        self._rebind = False
        self._stopping = False
        self._inbox = ""
        self._sub: Any = None
        self._runner: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._inline_task: asyncio.Task[Any] | None = None  # runs the handler when concurrency == 1
        self._stopper: asyncio.Task[None] | None = None
        self._stopped = False
        self._stream_gone = False  # warned once that the stream was deleted; waiting for it quietly

    def __repr__(self) -> str:
        return f"<Subscription {self.stream}/{self.durable} filter={self._filter_text()} {self.stats}>"

    def _filter_text(self) -> str:
        return repr(self.subject) if len(self.subjects) == 1 else repr(self.subjects)

    # -- consumer config --------------------------------------------------------------
    def wanted_config(self) -> ConsumerConfig:
        """The durable consumer configuration this subscription needs."""
        # Ack timeouts (a hung or crashed worker) start at ack_wait and grow with the retry
        # delays when those are longer; the server wants fewer backoff values than max_deliver.
        backoff = [self.ack_wait] + [max(self.ack_wait, d) for d in self.retry.consumer_backoff()]
        backoff = backoff[: max(self.retry.max_deliver - 1, 0)]
        use_backoff = len(set(backoff)) > 1
        self._timers = backoff if use_backoff else [self.ack_wait]
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.retry.max_deliver,
            backoff=backoff if use_backoff else None,
            filter_subject=self.subjects[0] if len(self.subjects) == 1 else None,
            filter_subjects=self.subjects if len(self.subjects) > 1 else None,  # server 2.10+
        )

    def _origins(self, wanted: ConsumerConfig) -> dict[str, str]:
        """Where each wanted consumer setting comes from, for a drift message a learner can act on."""
        retry = self.retry
        delays = [float(d) for d in retry.delays]
        if len(self.subjects) > 1:
            name = getattr(self.target, "__name__", "the contract")
            filters = (
                f"every subject {name} can read: its own and the older versions its upcasters convert "
                "(contracts.subjects_readable_by)"
            )
        else:
            filters = f"the subscribe() target {self.subject!r}"
        if wanted.backoff:
            backoff = (
                f"derived, not passed: ack_wait={_norm(self.ack_wait)} followed by the retry delays {delays} of "
                f"retry=Retry(max_deliver={retry.max_deliver}, ...), so a crashed worker's messages come back as "
                "slowly as failed ones; it changes whenever ack_wait or the retry policy changes"
            )
        else:
            backoff = (
                f"derived, not passed: none needed, because no retry delay {delays} is longer than "
                f"ack_wait={_norm(self.ack_wait)}"
            )
        return {
            "filter_subject": filters,
            "filter_subjects": filters,
            "ack_wait": f"from subscribe(ack_wait={_norm(self.ack_wait)}); the default is 30 s",
            "max_deliver": f"from retry=Retry(max_deliver={retry.max_deliver}); Retry() allows 5 deliveries",
            "backoff": backoff,
            "ack_policy": "fixed by the bus: explicit acks",
            "deliver_policy": "fixed by the bus: a new group starts with the oldest stored message",
        }

    async def _bind(self, *, update: bool) -> ConsumerInfo:
        js = self.bus.js
        wanted = self.wanted_config()
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError as err:
            if err.err_code == STREAM_NOT_FOUND:
                raise _StreamGone(self.stream) from None
            if self.stats.rebinds and not self._stream_gone:
                log.warning("consumer %s/%s was gone: re-creating it", self.stream, self.durable)
            try:
                return await js.add_consumer(self.stream, config=wanted)
            except nats.js.errors.NotFoundError:  # the stream went away in between
                raise _StreamGone(self.stream) from None
        have = info.config
        wanted_values = {
            k: getattr(wanted, k) for k in ("ack_policy", "ack_wait", "max_deliver", "backoff", "deliver_policy")
        }
        diffs = _differences(have, wanted_values)
        have_filters = list(have.filter_subjects or []) or ([have.filter_subject] if have.filter_subject else [])
        if sorted(have_filters) != sorted(self.subjects):
            if len(have_filters) <= 1 and len(self.subjects) == 1:
                have_shown, want_shown, key = (have_filters or [None])[0], self.subjects[0], "filter_subject"
            else:
                have_shown, want_shown, key = have_filters or None, self.subjects, "filter_subjects"
            diffs.insert(0, f"{key}: the server has {have_shown!r}, this code asks for {want_shown!r}")
        if diffs and update:
            log.info("updating consumer %s/%s: %s", self.stream, self.durable, "; ".join(diffs))
            return await js.add_consumer(self.stream, config=wanted)  # create-or-update
        if diffs:
            origins = self._origins(wanted)
            lines = [f"{diff}\n      ({origins.get(diff.split(':', 1)[0], 'set by the bus')})" for diff in diffs]
            raise ConfigDriftError(
                f"The consumer group {self.group!r} (durable {self.durable!r} on stream {self.stream!r}) already "
                f"exists with a different configuration:\n  " + "\n  ".join(lines) + "\n"
                "nats-py's pull_subscribe never updates an existing consumer, so subscribing anyway would silently "
                "keep the old settings. What to do:\n"
                "  - to change the group's settings deliberately, pass update=True to subscribe() (the group keeps "
                "its position: what it already acknowledged is not delivered again);\n"
                "  - to start the group over from the oldest message, delete the consumer first: "
                f"await bus.js.delete_consumer({self.stream!r}, {self.durable!r});\n"
                "  - or, if the old settings are right, subscribe with the same arguments as before."
            )
        return info

    # -- lifecycle --------------------------------------------------------------------
    async def _start(self, *, update: bool) -> None:
        try:
            await self._bind(update=update)
        except _StreamGone:
            raise BusError(
                f"Stream {self.stream!r} does not exist, so group {self.group!r} cannot consume from it. "
                "Create it first (await bus.ensure_stream(...)) or pass the right stream=... to subscribe()."
            ) from None
        nc = self.bus.nc
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox, cb=self._on_message)
        if self.concurrency > 1:  # with one at a time, the subscription's own task runs the handler
            self._workers = [asyncio.create_task(self._work()) for _ in range(self.concurrency)]
        self._runner = asyncio.create_task(self._run())

    async def stop(self, *, timeout: float | None = 30.0) -> None:
        """Stop pulling, let the handlers finish what they received (drain); keep the durable.

        Called from inside a handler, it returns at once and stops in the background once
        that handler has returned.

        Args:
            timeout: seconds to wait for handlers; after that they are cancelled and their
                messages are redelivered after ``ack_wait``. ``None`` waits forever.
        """
        current = asyncio.current_task()
        if current is not None and (
            current in self._workers or current is getattr(self._sub, "_wait_for_msgs_task", None)
        ):
            # Called from one of our own handlers: waiting here for the handlers would wait for itself.
            if self._stopper is None and not self._stopping:
                self._stopper = asyncio.create_task(self.stop(timeout=timeout))
            return
        if self._stopping:  # another caller is stopping it: wait for that
            while not self._stopped:
                await asyncio.sleep(0.01)
            return
        self._stopping = True
        try:
            self._wake.set()
            if self._runner is not None:
                self._runner.cancel()
                await asyncio.gather(self._runner, return_exceptions=True)

            async def drain() -> None:
                if self._sub is not None and not self.bus.nc.is_closed:
                    try:
                        await self._sub.drain()  # what arrived still goes through the handlers
                    except Exception as err:  # closed or reconnecting: the rest is redelivered later
                        log.debug("draining %s: %s", self.durable, err)
                await self._queue.join()

            try:
                await asyncio.wait_for(drain(), timeout)
            except asyncio.TimeoutError:
                log.warning("%s: handlers still running after %s s; cancelling them", self.durable, timeout)
                stop_processing = getattr(self._sub, "_stop_processing", None)
                if stop_processing is not None:
                    stop_processing()  # cancels the subscription's task, and so an inline handler
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self.bus._subscriptions.discard(self)
            if self.bus.nc.is_connected:
                try:
                    await self.bus.nc.flush(timeout=2)  # the last acks reach the server before stop() returns
                except Exception as err:
                    log.debug("flush on stop: %s", err)
        finally:
            self._stopped = True

    @property
    def running(self) -> bool:
        """Whether this subscription is pulling messages."""
        return self._runner is not None and not self._runner.done()

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` has finished: handlers done, last acks flushed."""
        return self._stopped

    def _request_rebind(self) -> None:
        self._rebind = True
        self._wake.set()

    # -- the pull loop ----------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                if self._rebind:
                    await self._bind(update=False)
                    self._rebind = False
                    self.stats.rebinds += 1
                    self._pending = 0
                    self._last_heard = time.monotonic()
                    if self._stream_gone:
                        self._stream_gone = False
                        log.warning("%s: stream %s exists again; consuming resumed", self.durable, self.stream)
                    else:
                        log.info("%s: re-bound to %s/%s", self.bus.service, self.stream, self.durable)
                failures = 0
                await self._pull()
                await self._keep_alive()
                self._check_liveness()
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._tick())
                except asyncio.TimeoutError:
                    pass
            except asyncio.CancelledError:
                raise
            except ConfigDriftError as err:  # someone changed the consumer under us: say so, keep trying
                log.error("%s", err)
                self._rebind = True
                await asyncio.sleep(5)
            except _StreamGone:
                # Deleted on purpose, most likely: say so once, then check back quietly (every 5 s at most).
                failures += 1
                self._rebind = True
                if not self._stream_gone:
                    self._stream_gone = True
                    log.warning(
                        "%s: stream %s no longer exists (deleted?). Group %r waits for it and resumes if it is "
                        "created again; call stop() on this subscription if it is gone for good.",
                        self.durable,
                        self.stream,
                        self.group,
                    )
                await asyncio.sleep(random.uniform(0.5, 1.0) * min(5.0, 0.1 * 2**failures))
            except Exception as err:  # server restarting, JetStream not ready yet, connection lost
                failures += 1
                self._rebind = True
                delay = random.uniform(0.5, 1.0) * min(5.0, 0.1 * 2**failures)
                log.warning(
                    "%s: pulling from %s failed (%s: %s); retrying in %.1f s",
                    self.durable,
                    self.stream,
                    type(err).__name__,
                    err,
                    delay,
                )
                await asyncio.sleep(delay)

    def _tick(self) -> float:
        tick = min(1.0, min(self._timers) / 4)
        if self.handler_timeout is not None:
            tick = min(tick, self.handler_timeout / 4)
        return max(0.05, tick)

    def _ahead_limit(self) -> int:
        """How many messages may wait unstarted: what the handlers start within ``LOOKAHEAD_S``.

        Short on purpose: what one member has pulled ahead no other member of its group can
        take, so a long look-ahead lets the first member grab a backlog ("56/2/2"). Never
        more than a quarter of the ack timeout (buffered messages must not time out) nor
        ``prefetch``. Fast handlers still get up to ``prefetch`` (0.1 s of 20 us handlers is 5000).
        """
        if self._avg_handler_s is None:
            return 0  # nothing measured yet: only what the handlers can start right now
        per_second = self.concurrency / max(self._avg_handler_s, 1e-6)
        horizon = min(LOOKAHEAD_S, min(self._timers) / 4)
        return max(0, min(self.prefetch, int(per_second * horizon)))

    def _want(self) -> int:
        """How many messages to ask for now (0: not worth a pull request yet)."""
        target = self._target
        have = len(self._in_flight) + self._queue.qsize() + self._sub.pending_msgs + self._pending
        want = target - have
        if want <= 0 or (self._pending and want < max(1, target // 2)):
            return 0  # enough is on its way: ask again when half of it is used up
        return want

    async def _pull(self) -> None:
        nc = self.bus.nc
        if self._stopping or not nc.is_connected:
            return
        want = self._want()
        if not want:
            return
        expires_ns = int(self.pull_expires * 1e9)
        request = {"batch": want, "expires": expires_ns, "idle_heartbeat": expires_ns // 6}
        if self._pending == 0:
            self._last_heard = time.monotonic()
        self._pending += want
        subject = f"{self.bus.js._prefix}.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
        await nc.publish(subject, json.dumps(request).encode(), reply=self._inbox)

    def _check_liveness(self) -> None:
        # Pull requests die with a server restart; heartbeats (every expires/6) prove they live.
        silent = time.monotonic() - self._last_heard
        busy = self._in_flight or self._sub.pending_msgs  # heartbeats may wait behind a handler
        if self._pending and not busy and silent > self.pull_expires / 3 + 1:
            log.info("%s: no heartbeat for %.1f s; re-binding", self.durable, silent)
            self._request_rebind()

    async def _keep_alive(self) -> None:
        now = time.monotonic()
        limit = self.handler_timeout
        for delivery in list(self._in_flight):
            if limit is not None and now - delivery.started >= limit:
                # Checked here, once a tick, rather than with a timer per message (which costs ~15 us each).
                if delivery in self._in_flight and not delivery.timed_out and delivery.task is not None:
                    delivery.timed_out = True
                    delivery.task.cancel()  # _process turns it into a retryable TimeoutError
                continue
            if now - delivery.last_progress >= delivery.timer / 2:
                delivery.last_progress = now
                try:
                    await delivery.msg.in_progress()
                except Exception as err:  # reconnecting: the next tick tries again
                    log.debug("in_progress failed: %s", err)

    async def _on_message(self, msg: Msg) -> None:
        self._last_heard = time.monotonic()
        if msg.reply:  # a JetStream delivery: its reply subject is the ack subject
            self._pending = max(0, self._pending - 1)
            if self._workers:
                self._queue.put_nowait(msg)
                return
            if self._inline_task is None:  # the subscription's own task runs every handler
                self._inline_task = asyncio.current_task()
            try:
                await self._process(msg, self._inline_task)
            except Exception:  # a bug here must not kill the subscription
                log.exception("%s: unexpected error while handling a message", self.durable)
            if self._want():  # wake the pull loop only when a pull request is due
                self._wake.set()
            return
        headers = msg.headers or {}
        status, description = headers.get("Status", ""), headers.get("Description", "")
        if status == "100":  # idle heartbeat: the pull request is alive
            return
        left = headers.get("Nats-Pending-Messages")
        if left is not None and left.isdigit():
            self._pending = max(0, self._pending - int(left))
        else:
            self._pending = 0
        if status == "503" or (status == "409" and ("Deleted" in description or "Shutdown" in description)):
            self._request_rebind()
        elif status not in ("404", "408", "409"):
            log.warning("%s: unexpected pull status %s %s", self.durable, status, description)
        elif status == "409" and "Exceeded" in description:
            log.warning("%s: pull refused: %s", self.durable, description)
        self._wake.set()

    # -- handling ---------------------------------------------------------------------
    async def _work(self) -> None:
        queue, task = self._queue, asyncio.current_task()
        while True:
            msg = await queue.get()
            try:
                await self._process(msg, task)
            except Exception:  # a bug here must not kill the worker
                log.exception("%s: unexpected error while handling a message", self.durable)
            finally:
                queue.task_done()
                if self._want():
                    self._wake.set()

    def _decode(self, data: bytes, headers: Mapping[str, str]) -> Any:
        target = self.target
        if target is None:
            return data
        if target is Event:
            # Any event type: the headers say which. Stricter than codec.decode(..., Event), which
            # falls back to the payload's version: a bus message always names its type, and a
            # missing version header means v1 (messages from other tools).
            type_name, version = headers.get("ce-type"), headers.get(codec.VERSION_HEADER, "1")
            if not type_name:
                raise DecodeError("The message has no ce-type header, so its event type is unknown.")
            if not version.isdigit():
                raise DecodeError(f"The {codec.VERSION_HEADER} header {version!r} is not a whole number.")
            target = lookup_event_type(type_name, int(version))
        return codec.decode(data, headers, target, strict=self.strict)

    async def _process(self, msg: Msg, task: asyncio.Task[Any] | None) -> None:
        """Decode, run the handler in ``task`` (the one running this), settle the message."""
        self.stats.received += 1
        stream, num, seq = _delivery_info(msg)
        headers = msg.headers or {}
        now = time.monotonic()
        delivery = _Delivery(msg, self._timers[min(num, len(self._timers)) - 1], now, now, task)
        trace_id, token = tracing._enter_lazily(headers.get(tracing.HEADER))  # the handler runs inside the trace
        try:
            ctx = MessageContext(
                subject=msg.subject,
                headers=headers,
                num_delivered=num,
                stream=stream,
                stream_seq=seq,
                group=self.group,
                trace_id=trace_id,
                event_id=headers.get(MSG_ID) or headers.get("ce-id"),
                msg=msg,
                _delivery=delivery,
            )
            try:
                event = self._decode(msg.data, headers)
            except (DecodeError, ContractError) as err:
                await self._dead_letter(ctx, "undecodable", f"{type(err).__name__}: {err}")
                return
            self._in_flight.add(delivery)
            started = delivery.started = time.monotonic()
            try:
                try:
                    await self.handler(event, ctx)
                except asyncio.CancelledError:
                    if not delivery.timed_out:
                        raise  # stop() or shutdown: not ours to swallow
                    _uncancel()
                    raise _handler_timed_out(self.handler_timeout) from None
                if delivery.timed_out:  # the handler swallowed the cancellation and finished anyway
                    _uncancel()
            except Reject as err:
                await self._dead_letter(ctx, "rejected", err.reason)
                return
            except Exception as err:
                reason = f"{type(err).__name__}: {err}"
                self._first_failure.setdefault(seq, datetime.now(timezone.utc))
                if len(self._first_failure) > 10_000:  # bounded memory: forget the oldest
                    self._first_failure.pop(next(iter(self._first_failure)))
                if self.retry.exhausted(num):
                    await self._dead_letter(ctx, "exhausted", reason)
                    return
                delay = self.retry.delay_for(num)
                log.info(
                    "%s: handler failed on %s seq %d delivery %d (%s); retry in %.2f s",
                    self.durable,
                    msg.subject,
                    seq,
                    num,
                    reason,
                    delay,
                )
                self.stats.retried += 1
                await self._settle(msg.nak(delay=delay))
                return
            finally:
                self._in_flight.discard(delivery)
                elapsed = time.monotonic() - started
                avg = self._avg_handler_s
                self._avg_handler_s = elapsed if avg is None else avg * 0.9 + elapsed * 0.1
                self._handled += 1
                if avg is None or self._handled % 16 == 0:  # the pull target follows handler speed
                    self._target = self.concurrency + self._ahead_limit()
            if await self._settle(_ack(msg)):
                self.stats.acked += 1
                self._first_failure.pop(seq, None)
        finally:
            tracing.exit_span(token)

    async def _settle(self, action: Awaitable[None]) -> bool:
        try:
            await action
            return True
        except Exception as err:  # connection lost: the server redelivers after the ack timeout
            log.warning(
                "%s: could not settle a message (%s: %s); it will be redelivered", self.durable, type(err).__name__, err
            )
            return False

    async def _dead_letter(self, ctx: MessageContext, kind: FailureKind, reason: str) -> None:
        setattr(self.stats, kind, getattr(self.stats, kind) + 1)
        failure = Failure(
            kind=kind,
            reason=reason,
            msg=ctx.msg,
            group=self.group,
            stream=ctx.stream,
            stream_seq=ctx.stream_seq,
            subject=ctx.subject,
            num_delivered=ctx.num_delivered,
            trace_id=ctx.trace_id,
            first_failure_at=self._first_failure.get(ctx.stream_seq),
        )
        if self.dead_letters is not None:
            try:
                await self.dead_letters(failure)
            except Exception as err:  # keep the message: nak it so it is not lost
                self.stats.sink_errors += 1
                log.error(
                    "%s: the dead-letter sink failed for %s seq %d (%s: %s); the message is kept "
                    "(nak'ed, not terminated)",
                    self.durable,
                    ctx.stream,
                    ctx.stream_seq,
                    type(err).__name__,
                    err,
                )
                await self._settle(ctx.msg.nak(delay=self.retry.delay_for(ctx.num_delivered)))
                return
            self.stats.dead_lettered += 1
        else:
            self.stats.dropped += 1
            log.warning(
                "%s: %s message %s seq %d on %s terminated without a dead-letter sink: %s",
                self.durable,
                kind,
                ctx.stream,
                ctx.stream_seq,
                ctx.subject,
                reason,
            )
        if await self._settle(ctx.msg.term()):
            self._first_failure.pop(ctx.stream_seq, None)


def _uncancel() -> None:
    # Python 3.11+ counts cancellation requests; a handled one must be taken back, or later
    # asyncio.timeout() blocks in this task misbehave. 3.10 has no counter.
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


def _handler_timed_out(limit: float | None) -> TimeoutError:
    return TimeoutError(
        f"the handler did not finish within handler_timeout={limit:g} s and was cancelled "
        "(a stuck handler is not kept alive forever; pass a larger handler_timeout for long jobs)"
    )
