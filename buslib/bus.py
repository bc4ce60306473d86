"""The EventBus: typed publish and consumer-group subscribe on NATS JetStream.

>>> from buslib import EventBus, Event, MessageContext
>>> class OrderCreated(Event, type="orders.created"):
...     order_id: str
>>> async def handle(event: OrderCreated, ctx: MessageContext) -> None:
...     print(event.order_id, ctx.num_delivered)
>>> async with EventBus.connect(service="billing") as bus:                 # doctest: +SKIP
...     sub = await bus.subscribe(OrderCreated, group="billing", handler=handle)
...     ack = await bus.publish(OrderCreated(order_id="A-1"))             # stored once, acked
...     await sub.stop()

Publishing: every event is stored in a stream (created on first use: subject
``orders.created.v1`` -> stream ``ORDERS`` with subjects ``orders.>``), carries its id as
``Nats-Msg-Id`` so a retried publish is stored once, and a W3C ``traceparent``.
``publish_many`` keeps thousands of acked publishes in flight at once (and, with
``fast_ingest=True`` on a 2.14+ server, sends fast-ingest batches acknowledged every 500).

Subscribing: a *group* is a durable pull consumer; every instance that subscribes with
the same group shares the messages (each goes to one instance), and every group gets
every message. The durable is named ``<group>__<filter subject>`` with dots, ``*`` and
``>`` spelled ``_``, ``any`` and ``all`` (``billing__orders_created_v1``), so one group
can consume several event types. A handler that returns acks the message; an exception
retries it later (``Retry``); ``Reject``, exhausted retries and undecodable payloads go
to the dead-letter sink and are terminated. Long handlers are kept alive with
``in_progress``; a worker survives server restarts.

How the consumer pulls: one inbox subscription per worker with pull requests kept
overlapping (a new one goes out before the last is used up), so messages keep arriving
while handlers run. nats-py's ``fetch()`` waits for each batch in turn, which is about
3x slower. Only as many messages are pulled ahead as the handlers can start well within
``ack_wait`` (measured as they run), so a slow handler never lets buffered messages
time out and get redelivered elsewhere.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

from buslib import codec, tracing
from buslib.connection import connect as _connect
from buslib.errors import BusError, ConfigDriftError, ContractError, DecodeError, PublishError
from buslib.events import Event, lookup_event_type
from buslib.retry import DeadLetterSink, Failure, FailureKind, Reject, Retry

__all__ = [
    "EventBus",
    "MessageContext",
    "Subscription",
    "SubscriptionStats",
    "SubjectError",
    "durable_name",
    "stream_name_for",
]

log = logging.getLogger("buslib")

MSG_ID = "Nats-Msg-Id"
DUPLICATE_WINDOW = 120.0  # seconds: a retried publish within this window is stored once
FAST_INGEST_API_LEVEL = 4  # server API level that has fast-ingest batch publishing (2.14+)
Handler = Callable[[Any, "MessageContext"], Awaitable[None]]

_TOKEN_RE = re.compile(r"^[^\s.*>]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class SubjectError(BusError, ValueError):
    """A subject or a name derived from it is not valid NATS syntax."""


# -- names ----------------------------------------------------------------------------
def check_subject(subject: object, *, wildcards: bool = False) -> str:
    """Validate a subject such as ``orders.created.v1``; return it unchanged.

    Args:
        subject: the subject.
        wildcards: allow ``*`` (one token) and a final ``>`` (the rest), as filters may.

    Raises:
        SubjectError: empty, not a string, an empty token, whitespace, or a misplaced wildcard.
    """
    if not isinstance(subject, str) or not subject:
        raise SubjectError(f"A subject must be a non-empty string like 'orders.created.v1', got {subject!r}.")
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if wildcards and (token == "*" or (token == ">" and i == len(tokens) - 1)):
            continue
        if not _TOKEN_RE.match(token):
            where = "an empty token (two dots in a row, or a dot at an end)" if not token else f"the token {token!r}"
            rule = (
                "'*' matches one token and '>' the rest (only at the end)"
                if wildcards
                else "wildcards (* and >) are for subscribing, not publishing"
            )
            raise SubjectError(
                f"{subject!r} is not a valid subject: it has {where}. Subjects are dot-separated tokens "
                f"without spaces, like 'orders.created.v1'; {rule}."
            )
    return subject


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` falls under ``pattern`` (``*`` one token, a final ``>`` the rest).

    >>> subject_matches("orders.>", "orders.created.v1"), subject_matches("orders.*", "orders.created.v1")
    (True, False)
    """
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def stream_name_for(subject: str) -> str:
    """The stream that by convention holds a subject: its first token, upper case.

    >>> stream_name_for("orders.created.v1")
    'ORDERS'

    Raises:
        SubjectError: the subject starts with a wildcard (no name can be derived).
    """
    first = check_subject(subject, wildcards=True).split(".")[0]
    if first in ("*", ">"):
        raise SubjectError(
            f"Cannot derive a stream name from {subject!r}: it starts with a wildcard. "
            "Create the stream yourself with bus.ensure_stream(..., name=...) first."
        )
    return re.sub(r"[^A-Za-z0-9_-]", "_", first).upper()


def durable_name(group: str, subject: str) -> str:
    """The durable consumer behind a group for one filter subject (deterministic).

    >>> durable_name("billing", "orders.created.v1")
    'billing__orders_created_v1'
    """
    token = subject.replace(".", "_").replace("*", "any").replace(">", "all")
    return f"{group}__{re.sub(r'[^A-Za-z0-9_-]', '-', token)}"


def _check_group(group: object) -> str:
    if not isinstance(group, str) or not group.strip():
        raise ValueError(
            f"group must be a non-empty name such as 'billing', got {group!r}. The group names the durable "
            "consumer that all instances of one service share; each group receives every message once."
        )
    if not _NAME_RE.match(group):
        raise ValueError(
            f"group {group!r} may only contain letters, digits, '_' and '-' (it becomes part of the "
            "durable consumer's name, where dots, spaces and wildcards are not allowed)."
        )
    return group


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
    ) -> None:
        self.bus = bus
        self.subject = subject
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
        self._stopper: asyncio.Task[None] | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"<Subscription {self.stream}/{self.durable} filter={self.subject!r} {self.stats}>"

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
            filter_subject=self.subject,
        )

    async def _bind(self, *, update: bool) -> ConsumerInfo:
        js = self.bus.js
        wanted = self.wanted_config()
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            if self.stats.rebinds:
                log.warning("consumer %s/%s was gone: re-creating it", self.stream, self.durable)
            return await js.add_consumer(self.stream, config=wanted)
        keys = ("filter_subject", "ack_policy", "ack_wait", "max_deliver", "backoff", "deliver_policy")
        diffs = _differences(info.config, {k: getattr(wanted, k) for k in keys})
        if diffs and update:
            log.info("updating consumer %s/%s: %s", self.stream, self.durable, "; ".join(diffs))
            return await js.add_consumer(self.stream, config=wanted)  # create-or-update
        if diffs:
            raise ConfigDriftError(
                f"The consumer group {self.group!r} (durable {self.durable!r} on stream {self.stream!r}) already "
                f"exists with a different configuration:\n  " + "\n  ".join(diffs) + "\n"
                "nats-py's pull_subscribe never updates an existing consumer, so this would silently keep the old "
                "settings. Either pass update=True to subscribe() to change it deliberately, or delete the "
                f"consumer (await bus.js.delete_consumer({self.stream!r}, {self.durable!r})) to start over."
            )
        return info

    # -- lifecycle --------------------------------------------------------------------
    async def _start(self, *, update: bool) -> None:
        await self._bind(update=update)
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
                    self._rebind = False
                    self.stats.rebinds += 1
                    await self._bind(update=False)
                    self._pending = 0
                    self._last_heard = time.monotonic()
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
        return max(0.05, min(1.0, min(self._timers) / 4))

    def _ahead_limit(self) -> int:
        """How many messages may wait unstarted: those the handlers start within ack_wait / 4."""
        if self._avg_handler_s is None:
            return 0  # nothing measured yet: only what the handlers can start right now
        per_second = self.concurrency / max(self._avg_handler_s, 1e-6)
        return max(0, min(self.prefetch, int(per_second * min(self._timers) / 4)))

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
        for delivery in list(self._in_flight):
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
            try:
                await self._process(msg)
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
        queue = self._queue
        while True:
            msg = await queue.get()
            try:
                await self._process(msg)
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
        if target is Event:  # any event type: the headers say which
            type_name, version = headers.get("ce-type"), headers.get("Bus-Event-Version", "1")
            if not type_name:
                raise DecodeError("The message has no ce-type header, so its event type is unknown.")
            if not version.isdigit():
                raise DecodeError(f"The Bus-Event-Version header {version!r} is not a whole number.")
            target = lookup_event_type(type_name, int(version))
        return codec.decode(data, headers, target)

    async def _process(self, msg: Msg) -> None:
        self.stats.received += 1
        stream, num, seq = _delivery_info(msg)
        headers = msg.headers or {}
        delivery = _Delivery(msg, self._timers[min(num, len(self._timers)) - 1], time.monotonic())
        span, token = tracing.enter(headers.get(tracing.HEADER))  # the handler runs inside the trace
        try:
            ctx = MessageContext(
                subject=msg.subject,
                headers=headers,
                num_delivered=num,
                stream=stream,
                stream_seq=seq,
                group=self.group,
                trace_id=span.trace_id,
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
            started = time.monotonic()
            try:
                await self.handler(event, ctx)
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


# -- the bus --------------------------------------------------------------------------
class _Connecting:
    """``EventBus.connect(...)``: await it, or use it with ``async with``."""

    def __init__(self, factory: Callable[[], Awaitable[EventBus]]) -> None:
        self._factory = factory
        self._bus: EventBus | None = None

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._factory().__await__()

    async def __aenter__(self) -> EventBus:
        self._bus = await self._factory()
        return self._bus

    async def __aexit__(self, *exc: object) -> None:
        if self._bus is not None:
            await self._bus.close()


def _check_bus_options(service: object, *, publish_timeout: float = 2.0, publish_attempts: int = 5, **_: Any) -> None:
    if not isinstance(service, str) or not service.strip():
        raise ValueError(f"service must be a non-empty name such as 'billing', got {service!r}.")
    if publish_attempts < 1 or publish_timeout <= 0:
        raise ValueError(
            f"publish_attempts must be >= 1 and publish_timeout > 0 seconds, got {publish_attempts} and {publish_timeout}."
        )


class EventBus:
    """Typed events over JetStream for one service.

    Args:
        nc: a connected nats-py client (``EventBus.connect`` makes one for you).
        service: this service's name (CloudEvents ``source``, the connection name).
        auto_create_streams: create the conventional stream on the first publish to a
            subject no stream covers; if False, such a publish raises ``PublishError``.
        publish_timeout: seconds to wait for each publish acknowledgement.
        publish_attempts: tries per publish (same ``Nats-Msg-Id``) before giving up.
        owns_connection: ``close()`` also drains and closes ``nc`` (set by ``connect``).
    """

    def __init__(
        self,
        nc: Client,
        *,
        service: str,
        auto_create_streams: bool = True,
        publish_timeout: float = 2.0,
        publish_attempts: int = 5,
        owns_connection: bool = False,
    ) -> None:
        _check_bus_options(service, publish_timeout=publish_timeout, publish_attempts=publish_attempts)
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.service = service
        self.auto_create_streams = auto_create_streams
        self.publish_timeout = publish_timeout
        self.publish_attempts = publish_attempts
        self.publish_retries = 0  # publishes repeated after a timeout or a reconnect
        self._owns_connection = owns_connection
        self._covered: dict[str, str] = {}  # subject -> stream name
        self._batched: dict[str, bool] = {}  # stream name -> allow_batched
        self._subscriptions: set[Subscription] = set()
        self._valid_subjects: set[str] = set()

    @classmethod
    def connect(cls, *, service: str, url: str | None = None, **options: Any) -> _Connecting:
        """Connect to NATS (fail fast, reconnect with backoff) and return a bus.

        Use ``async with EventBus.connect(service="billing") as bus:`` or
        ``bus = await EventBus.connect(service="billing")`` (then ``await bus.close()``).

        Args:
            service: this service's name.
            url: the server; default ``buslib.ensure_server()`` (``NATS_URL`` or embedded).
            **options: ``EventBus`` options (``auto_create_streams``, ``publish_timeout``,
                ``publish_attempts``); anything else goes to ``buslib.connect``.

        Raises:
            ConnectError: no server answered (the message says what to try).
        """
        bus_keys = {"auto_create_streams", "publish_timeout", "publish_attempts"}
        bus_options = {k: options.pop(k) for k in list(options) if k in bus_keys}
        _check_bus_options(service, **bus_options)  # before connecting: nothing to clean up

        async def factory() -> EventBus:
            holder: list[EventBus] = []
            user_cb = options.pop("reconnected_cb", None)

            async def reconnected() -> None:
                for bus in holder:
                    bus._on_reconnected()
                if user_cb is not None:
                    await user_cb()

            nc = await _connect(url, name=service, reconnected_cb=reconnected, **options)
            _use_fast_header_parser(nc)
            bus = cls(nc, service=service, owns_connection=True, **bus_options)
            holder.append(bus)
            return bus

        return _Connecting(factory)

    async def __aenter__(self) -> EventBus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<EventBus service={self.service!r} subscriptions={len(self._subscriptions)}>"

    @property
    def api_level(self) -> int:
        """The server's JetStream API level (0 before 2.11; 2.12 -> 3, 2.15 -> 5)."""
        return int(self.nc._server_info.get("api_lvl", 0) or 0)

    @property
    def subscriptions(self) -> list[Subscription]:
        """The running subscriptions of this bus."""
        return list(self._subscriptions)

    def _on_reconnected(self) -> None:
        # Pull requests do not survive a server restart (nats.py #504): ask again at once.
        for sub in list(self._subscriptions):
            sub._request_rebind()

    async def close(self) -> None:
        """Stop every subscription (letting handlers finish), then drain the connection."""
        await asyncio.gather(*(sub.stop() for sub in list(self._subscriptions)), return_exceptions=True)
        if self._owns_connection and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception as err:
                log.debug("drain on close: %s", err)
                await self.nc.close()

    # -- streams ----------------------------------------------------------------------
    async def ensure_stream(
        self,
        target: type[Event] | str,
        *,
        name: str | None = None,
        subjects: list[str] | None = None,
        storage: StorageType = StorageType.FILE,
        duplicate_window: float = DUPLICATE_WINDOW,
        **overrides: Any,
    ) -> StreamInfo:
        """Create the stream for an event type or subject, or check the existing one.

        By convention ``orders.created.v1`` lives in stream ``ORDERS`` with subjects
        ``orders.>``, file storage and a 120 s duplicate window.

        Args:
            target: an ``Event`` subclass or a subject.
            name / subjects / storage / duplicate_window: override the convention.
            **overrides: other ``StreamConfig`` fields (``max_msgs=5``, ``discard=...``).

        Returns:
            The stream's ``StreamInfo``.

        Raises:
            ConfigDriftError: the stream exists with different settings (says which).
            SubjectError: the subject is not valid.
            BusError: the server refused the stream (e.g. subjects overlap another stream).
        """
        subject = _subject_of(target)
        check_subject(subject, wildcards=True)
        name = name or stream_name_for(subject)
        subjects = subjects or [f"{subject.split('.')[0]}.>"]
        unknown = set(overrides) - set(StreamConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"Unknown stream settings: {', '.join(sorted(unknown))}. See nats.js.api.StreamConfig.")
        wanted: dict[str, Any] = {
            "name": name,
            "subjects": subjects,
            "storage": storage,
            "retention": overrides.pop("retention", RetentionPolicy.LIMITS),
            "duplicate_window": duplicate_window,
            **overrides,
        }
        try:
            info = await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            info = None
        if info is None:
            config = StreamConfig(**wanted)
            if self.api_level >= FAST_INGEST_API_LEVEL and "allow_batched" not in overrides:
                config.allow_batched = True  # lets publish_many use fast-ingest batches
            try:
                info = await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as err:
                if err.err_code == 10058:  # created meanwhile by another instance: compare below
                    info = await self.js.stream_info(name)
                else:
                    raise BusError(
                        f"The server refused to create stream {name!r} with subjects {subjects}: {err.description} "
                        f"(error {err.err_code}). If another stream already covers these subjects, use that one "
                        "(pass name=... and subjects=...) or delete it."
                    ) from None
            else:
                log.info("created stream %s %s", name, subjects)
        diffs = _differences(info.config, {k: v for k, v in wanted.items() if k != "name"}, unordered=("subjects",))
        if diffs:
            raise ConfigDriftError(
                f"Stream {name!r} already exists with a different configuration:\n  " + "\n  ".join(diffs) + "\n"
                "Nothing was changed. Either update it deliberately (await bus.js.update_stream(name=..., ...), "
                f"knowing what the change does to stored messages) or delete it (await bus.js.delete_stream({name!r}))."
            )
        for s in subjects:
            self._covered[s] = name
        self._batched[name] = bool(info.config.allow_batched)
        return info

    async def _stream_for(self, subject: str) -> str:
        stream = self._covered.get(subject)
        if stream is not None:
            return stream
        for pattern, name in self._covered.items():
            if subject_matches(pattern, subject):
                self._covered[subject] = name
                return name
        try:
            stream = await self.js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            if not self.auto_create_streams:
                raise PublishError(
                    f"No stream stores subject {subject!r}, so the event was not published.\n"
                    f"Create one first: await bus.ensure_stream({subject!r}) (stream {stream_name_for(subject)!r} "
                    f"with subjects ['{subject.split('.')[0]}.>']), or `nats stream add`."
                ) from None
            stream = (await self.ensure_stream(subject)).config.name
        self._covered[subject] = stream
        return stream

    # -- publishing -------------------------------------------------------------------
    def _outgoing(
        self, event: Event, span: tracing.TraceContext | None = None
    ) -> list[tuple[str, bytes, dict[str, str]]]:
        if not isinstance(event, Event):
            raise TypeError(
                f"bus.publish() takes a buslib.Event instance, got {type(event).__name__} ({event!r:.60}). "
                "Define the event as `class OrderCreated(Event, type='orders.created'): ...` and publish "
                "OrderCreated(...); to send raw bytes use bus.js.publish(subject, data)."
            )
        span = span or tracing.current_trace() or tracing.new_trace()  # one trace for all copies of the event
        messages = []
        for i, out in enumerate(codec.encode(event, source=self.service)):
            if out.subject not in self._valid_subjects:
                self._valid_subjects.add(check_subject(out.subject))
            headers = out.headers  # a fresh dict per message: ours to extend
            headers.setdefault(MSG_ID, event.id if i == 0 else f"{event.id}:{out.subject}")
            headers[tracing.HEADER] = span.traceparent
            messages.append((out.subject, out.data, headers))
        return messages

    async def publish(self, event: Event) -> PubAck:
        """Publish an event and wait until the server has stored it.

        Args:
            event: the event; its id is the ``Nats-Msg-Id`` (a retry is stored once).

        Returns:
            The server's ``PubAck`` (stream, seq, duplicate) for the event's first subject.

        Raises:
            TypeError: ``event`` is not an ``Event``.
            PublishError: not stored after ``publish_attempts`` tries, or refused.
        """
        acks = [await self._publish_one(subject, data, headers) for subject, data, headers in self._outgoing(event)]
        return acks[0]

    async def _publish_one(self, subject: str, data: bytes, headers: dict[str, str]) -> PubAck:
        last: Exception | None = None
        for attempt in range(self.publish_attempts):
            if attempt:
                self.publish_retries += 1
                await asyncio.sleep(min(2.0, 0.1 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
            try:
                await self._stream_for(subject)
                return await self.js.publish(subject, data, timeout=self.publish_timeout, headers=headers)
            except (
                nats.errors.TimeoutError,
                nats.errors.ConnectionReconnectingError,
                nats.errors.NoRespondersError,
            ) as err:
                last = err  # maybe stored anyway: the retry carries the same Nats-Msg-Id
            except nats.js.errors.NoStreamResponseError as err:
                last = err  # the stream vanished, or JetStream is still starting after a restart
                self._covered = {k: v for k, v in self._covered.items() if v != self._covered.get(subject)}
            except nats.js.errors.APIError as err:
                raise PublishError(
                    f"The server refused the event {headers[MSG_ID]} on {subject!r}: {err.description} "
                    f"(error {err.err_code}). Check the stream's limits (bus.js.stream_info(...))."
                ) from None
            except nats.errors.ConnectionClosedError:
                raise PublishError(f"Cannot publish on {subject!r}: the connection is closed.") from None
        raise PublishError(
            f"The event {headers[MSG_ID]} on {subject!r} was not confirmed after {self.publish_attempts} attempts "
            f"(last: {type(last).__name__}). It may or may not be stored; publishing it again is safe "
            "(same id, so it is stored once). Is the server up (buslib doctor)? Does a stream cover the subject?"
        )

    async def publish_many(
        self, events: Iterable[Event], *, window: int = 4096, fast_ingest: bool = False
    ) -> list[PubAck]:
        """Publish many events with many acknowledgements in flight; each stored once.

        Two ways, both keeping ``Nats-Msg-Id`` (a retry or a repeat is stored once):

        - windowed (default, any server): each message is a core publish with its own reply
          subject into one wildcard inbox, ``window`` awaiting their ack at once. Every
          event gets its own exact ``PubAck``.
        - ``fast_ingest=True``: fast-ingest batches (ADR-50) when the server has API level
          4+ (2.14+) and the stream ``allow_batched`` (``ensure_stream`` sets it there);
          otherwise the windowed way. The server acknowledges every ~500 messages instead of
          each one (faster), so each event's ``PubAck`` is its *batch's* ack: ``seq`` is the
          batch's last sequence, ``batch_id``/``batch_size`` are set, and ``duplicate`` is
          unknown (the server drops duplicates silently). Never probed by trial: 2.11 would
          store the control messages as ordinary messages.

        Outside a trace the whole call gets one new trace id (it is one operation).

        Args:
            events: the events, in order.
            window: how many publishes may await their acknowledgement at once (windowed).
            fast_ingest: use fast-ingest batches where available (see above).

        Returns:
            One ``PubAck`` per event, in input order (for the event's first subject).

        Raises:
            TypeError: an item is not an ``Event``.
            PublishError: some events were not stored: names the first one (index and id)
                and how many were stored (also as ``.index``, ``.event_id``, ``.stored``,
                and ``.acks``: the PubAck or None per event). Publishing them all again is safe.
        """
        events = list(events)
        span = tracing.current_trace() or tracing.new_trace()  # the batch is one operation: one trace
        prepared: list[tuple[int, str, bytes, dict[str, str]]] = []
        for index, event in enumerate(events):
            try:
                prepared += [(index, s, d, h) for s, d, h in self._outgoing(event, span)]
            except TypeError as err:
                raise TypeError(f"publish_many: item {index}: {err}") from None
        for subject in {p[1] for p in prepared}:
            await self._stream_for(subject)
        results: list[PubAck | Exception | None] = [None] * len(prepared)
        todo = list(range(len(prepared)))
        fast = fast_ingest and len(prepared) > 1 and await self._can_fast_ingest({p[1] for p in prepared})
        for attempt in range(self.publish_attempts):
            if attempt:
                self.publish_retries += len(todo)
                await asyncio.sleep(min(2.0, 0.1 * 2 ** (attempt - 1)))
            if fast and len(todo) > 1:
                await self._fast_ingest(prepared, todo, results)
                # a refused message ends a fast batch: the windowed way gets the rest an exact answer each
                fast = not any(isinstance(results[i], nats.js.errors.APIError) for i in todo)
            else:
                await self._windowed(prepared, todo, results, window)
            todo = [i for i in todo if results[i] is None or _retryable(results[i])]
            if not todo:
                break
        acks: list[PubAck | None] = [None] * len(events)
        failed: dict[int, str] = {}
        for (index, *_), result in zip(prepared, results, strict=True):
            if isinstance(result, PubAck):
                if acks[index] is None:
                    acks[index] = result
            elif index not in failed:
                failed[index] = _describe(result)
        if failed:
            first = min(failed)
            stored = len(events) - len(failed)
            error = PublishError(
                f"publish_many stored {stored} of {len(events)} events. The first not stored is #{first} "
                f"(id {events[first].id}): {failed[first]}. Publishing the same events again is safe: "
                "stored ones are recognised by their id and not stored twice.",
            )
            error.index, error.event_id, error.stored, error.acks = first, events[first].id, stored, acks  # type: ignore[attr-defined]
            raise error
        return acks  # type: ignore[return-value]

    async def _can_fast_ingest(self, subjects: set[str]) -> bool:
        # Decided from what the server says about itself, never by trying (2.11 would store
        # the batch control messages as ordinary messages).
        if self.api_level < FAST_INGEST_API_LEVEL:
            return False
        streams = {await self._stream_for(subject) for subject in subjects}
        if len(streams) != 1:
            return False
        stream = streams.pop()
        if stream not in self._batched:
            self._batched[stream] = bool((await self.js.stream_info(stream)).config.allow_batched)
        return self._batched[stream]

    async def _fast_ingest(
        self,
        prepared: list[tuple[int, str, bytes, dict[str, str]]],
        todo: list[int],
        results: list[PubAck | Exception | None],
        *,
        flow: int = 500,
        ahead: int = 3,
    ) -> None:
        """One fast-ingest batch (ADR-50): the batch state travels in each reply subject.

        Reply subject ``<inbox>.<batch>.<flow>.fail.<n>.<op>.$FI`` (op 0 start, 1 append, 2
        commit). The server answers ``{"type":"ack","seq":S}`` every ``flow`` messages (1..S
        are stored), ``{"type":"err","seq":n,...}`` for a refused message, and a PubAck with
        ``batch``/``count`` at the end; on a gap ("fail" mode) the batch ends early.
        """
        nc = self.nc
        inbox = nc.new_inbox()
        batch = uuid.uuid4().hex
        total = len(todo)
        acked = 0
        final: PubAck | None = None
        errors: dict[int, Exception] = {}
        progress = asyncio.Event()
        finished = asyncio.Event()
        last_reply = time.monotonic()

        async def on_reply(msg: Msg) -> None:
            nonlocal acked, final, last_reply
            last_reply = time.monotonic()
            try:
                resp = json.loads(msg.data)
            except ValueError:
                return
            kind = resp.get("type")
            if kind == "ack":
                acked = max(acked, int(resp.get("seq", 0)))
            elif kind == "err":
                error = resp.get("error", {})
                errors[int(resp["seq"])] = nats.js.errors.APIError(
                    code=error.get("code"), err_code=error.get("err_code"), description=error.get("description")
                )
            elif kind == "gap":  # a message was lost on the way: the final ack follows ("fail" mode)
                pass
            elif "stream" in resp and "error" not in resp and final is None:
                final = PubAck(
                    stream=resp["stream"],
                    seq=resp["seq"],
                    domain=resp.get("domain"),
                    batch_id=resp.get("batch"),
                    batch_size=resp.get("count"),
                )
                finished.set()
            elif "error" in resp and final is None:  # the batch itself was refused or is gone
                finished.set()
            progress.set()

        async def stalled(event: asyncio.Event) -> bool:
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), self.publish_timeout)
            except asyncio.TimeoutError:
                return time.monotonic() - last_reply > self.publish_timeout
            return False

        sub = await nc.subscribe(inbox + ".>", cb=on_reply)
        try:
            for n, i in enumerate(todo, 1):
                while n - acked > flow * ahead and not finished.is_set():  # flow control
                    if await stalled(progress):
                        break
                if finished.is_set() or n - acked > flow * ahead:
                    break
                op = 0 if n == 1 else 2 if n == total else 1
                _, subject, data, headers = prepared[i]
                await _publish_fast(nc, subject, data, f"{inbox}.{batch}.{flow}.fail.{n}.{op}.$FI", headers)
            while not finished.is_set():
                if await stalled(finished):
                    break
        finally:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        # What is known stored: the final ack's `count` (in "fail" mode a gap or a refused
        # message ends the batch there); without a final ack, what the flow acks covered.
        stored = (final.batch_size or 0) if final is not None else acked
        ack = final or PubAck(stream=await self._stream_for(prepared[todo[0]][1]), seq=0, batch_id=batch)
        for n, i in enumerate(todo, 1):
            if n in errors:
                results[i] = errors[n]
            elif n <= stored:
                results[i] = ack
            # else: left None, so the caller retries it (same Nats-Msg-Id: stored once)

    async def _windowed(
        self,
        prepared: list[tuple[int, str, bytes, dict[str, str]]],
        todo: list[int],
        results: list[PubAck | Exception | None],
        window: int,
    ) -> None:
        """Core publishes with a reply subject each into one wildcard inbox; ``window`` outstanding."""
        nc = self.nc
        prefix = nc.new_inbox() + "."
        cut = len(prefix)
        outstanding = 0
        room = asyncio.Event()
        settled = asyncio.Event()
        last_reply = time.monotonic()

        async def on_reply(msg: Msg) -> None:
            nonlocal outstanding, last_reply
            last_reply = time.monotonic()
            i = int(msg.subject[cut:])
            if results[i] is None:
                try:
                    results[i] = _parse_ack(msg)
                except Exception as err:  # never leave a reply unaccounted for
                    results[i] = BusError(f"unreadable acknowledgement ({type(err).__name__}: {err})")
                outstanding -= 1
                if outstanding < window:
                    room.set()
                if outstanding == 0:
                    settled.set()

        sub = await nc.subscribe(prefix + "*", cb=on_reply)
        try:
            for i in todo:
                while outstanding >= window:
                    room.clear()
                    try:
                        await asyncio.wait_for(room.wait(), self.publish_timeout)
                    except asyncio.TimeoutError:
                        if time.monotonic() - last_reply > self.publish_timeout:
                            return  # stalled: the caller retries what is unanswered
                _, subject, data, headers = prepared[i]
                outstanding += 1
                settled.clear()
                try:
                    await _publish_fast(nc, subject, data, prefix + str(i), headers)
                except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as err:
                    results[i] = err
                    outstanding -= 1
            while outstanding > 0:
                try:
                    await asyncio.wait_for(settled.wait(), self.publish_timeout)
                except asyncio.TimeoutError:
                    if time.monotonic() - last_reply > self.publish_timeout:
                        return
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # connection closed: nothing to clean up
                pass

    # -- subscribing ------------------------------------------------------------------
    async def subscribe(
        self,
        target: type[Event] | str,
        *,
        group: str,
        handler: Handler,
        event_type: type[Event] | None = None,
        concurrency: int = 1,
        retry: Retry | None = None,
        dead_letters: DeadLetterSink | None = None,
        ack_wait: float = 30.0,
        stream: str | None = None,
        update: bool = False,
        prefetch: int = 512,
        pull_expires: float = 30.0,
    ) -> Subscription:
        """Join a consumer group: each message of ``target`` goes to one instance of ``group``.

        Args:
            target: an ``Event`` subclass, or a subject (wildcards allowed).
            group: the group name; instances with the same name share the messages.
            handler: ``async def handle(event, ctx: MessageContext) -> None``; it gets the
                decoded event (raw ``bytes`` for a subject without ``event_type``). It must
                not block the event loop (use ``await asyncio.to_thread(...)`` for slow
                sync work), or keep-alives and other handlers stall.
            event_type: for a subject target, the type to decode into (``Event`` itself:
                whichever type the ``ce-type`` header names).
            concurrency: handlers running at once in this instance.
            retry: the retry policy (``Retry()`` by default); sets ``max_deliver``.
            dead_letters: ``async def sink(failure: Failure)``, called before a message is
                terminated (rejected, retries exhausted, undecodable).
            ack_wait: seconds before the server redelivers an unacknowledged message (a
                crashed worker); running handlers are kept alive automatically.
            stream: the stream (default: the one that stores the subject).
            update: change an existing durable whose config differs (else ConfigDriftError).
            prefetch: at most this many messages pulled ahead of the handlers; fewer when
                handlers are slow (only what they start within a quarter of ``ack_wait``,
                measured as they run), so buffered messages do not time out.
            pull_expires: seconds each pull request lives (heartbeats at 1/6 of it).

        Returns:
            The running ``Subscription`` (``.stats``, ``await .stop()``).

        Raises:
            ValueError: empty or invalid group, concurrency < 1.
            SubjectError: invalid subject.
            ConfigDriftError: the durable exists with other settings and ``update`` is False.
        """
        group = _check_group(group)
        subject = check_subject(_subject_of(target), wildcards=True)
        if isinstance(target, type):
            event_type = target
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}.")
        if not _is_async_callable(handler):
            raise TypeError(
                f"handler must be an async function `async def handle(event, ctx): ...`, got {handler!r}. "
                "A plain `def` would block every other handler of this process while it runs."
            )
        if ack_wait < 0.5:
            raise ValueError(f"ack_wait is in seconds and must be at least 0.5, got {ack_wait}.")
        if stream is None:
            try:
                stream = await self.js.find_stream_name_by_subject(subject)
            except nats.js.errors.NotFoundError:
                if not self.auto_create_streams:
                    raise BusError(
                        f"No stream stores {subject!r}. Create it with await bus.ensure_stream(...)."
                    ) from None
                stream = (await self.ensure_stream(subject)).config.name
        sub = Subscription(
            self,
            subject=subject,
            stream=stream,
            group=group,
            handler=handler,
            target=event_type,
            concurrency=concurrency,
            retry=retry or Retry(),
            dead_letters=dead_letters,
            ack_wait=ack_wait,
            prefetch=prefetch,
            pull_expires=pull_expires,
        )
        await sub._start(update=update)
        self._subscriptions.add(sub)
        return sub


def _is_async_callable(handler: object) -> bool:
    call = type(handler).__dict__.get("__call__") if not inspect.isroutine(handler) else None
    return inspect.iscoroutinefunction(handler) or (call is not None and inspect.iscoroutinefunction(call))


def _subject_of(target: type[Event] | str) -> str:
    if isinstance(target, type) and issubclass(target, Event):
        return target.subject()
    if isinstance(target, str):
        return target
    raise TypeError(f"Expected an Event subclass or a subject string, got {target!r}.")


def _header_block(headers: Mapping[str, str]) -> bytes:
    # NATS/1.0 header block; values must not break lines (nats-py replaces CR/LF the same way)
    lines = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
        return b""  # a value with a line break: let nats-py encode (and clean) it
    return ("NATS/1.0\r\n" + lines + "\r\n").encode()


async def _publish_fast(nc: Client, subject: str, data: bytes, reply: str, headers: Mapping[str, str]) -> None:
    """``nc.publish`` with our own header encoding (nats-py's costs ~40 us for ten headers).

    Falls back to ``nc.publish`` whenever the connection is not plainly connected, so
    nats-py's own checks and buffering during reconnects apply.
    """
    send = getattr(nc, "_send_command", None)
    block = _header_block(headers) if send is not None and nc.is_connected and not nc.is_draining else b""
    if not block or len(block) + len(data) > nc.max_payload:
        await nc.publish(subject, data, reply=reply, headers=dict(headers))
        return
    await send(
        b"HPUB %s %s %d %d\r\n%s%s\r\n"
        % (subject.encode(), reply.encode(), len(block), len(block) + len(data), block, data)
    )
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def _delivery_info(msg: Msg) -> tuple[str, int, int]:
    """(stream, num_delivered, stream sequence) from the ack subject; nats-py's
    ``msg.metadata`` builds several frozen dataclasses for it (~5 us a message)."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>
        return tokens[2], int(tokens[4]), int(tokens[5])
    if len(tokens) >= 11:  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>...
        return tokens[4], int(tokens[6]), int(tokens[7])
    meta = msg.metadata
    return meta.stream, meta.num_delivered, meta.sequence.stream


_WHITESPACE = re.compile(r"\s")
_BYTES_WHITESPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() removes


def _parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's header parser, same results, without its per-character loop over names.

    nats-py 2.16 checks every header name character by character in Python; with the ten
    CloudEvents and bus headers that is most of the cost of receiving a message.
    """
    try:
        text = raw.decode("ascii")  # the usual case: one decode for the whole block
    except UnicodeDecodeError:
        return _parse_header_bytes(raw)
    out: dict[str, str] = {}
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip(_BYTES_WHITESPACE)
            if not _WHITESPACE.search(key):
                out[key] = value.strip(_BYTES_WHITESPACE)
    return out


def _parse_header_bytes(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _WHITESPACE.search(key):
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def _use_fast_header_parser(nc: Client) -> None:
    # Only for connections the bus made itself, and only where nats-py has the same hook.
    if callable(getattr(type(nc), "_parse_header_lines", None)):
        nc._parse_header_lines = _parse_header_lines  # type: ignore[method-assign]


async def _ack(msg: Msg) -> None:
    """``msg.ack()`` without nats-py's per-call subject validation (the hot path of a consumer)."""
    nc = msg._client
    send = getattr(nc, "_send_command", None)
    if msg._ackd:  # the handler settled it itself (lessons sometimes do)
        return
    if send is None or not nc.is_connected or not msg.reply:
        await msg.ack()
        return
    await send(b"PUB %s 0\r\n\r\n" % msg.reply.encode())
    msg._ackd = True
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def _parse_ack(msg: Msg) -> PubAck | Exception:
    if msg.headers and msg.headers.get("Status") == "503":
        return nats.js.errors.NoStreamResponseError()
    try:
        resp = json.loads(msg.data)
    except ValueError:
        return BusError(f"unreadable acknowledgement {msg.data[:80]!r}")
    if "error" in resp:
        try:
            nats.js.errors.APIError.from_error(resp["error"])  # raises the matching subclass
        except nats.js.errors.APIError as err:
            return err
    try:
        return PubAck(
            stream=resp["stream"], seq=resp["seq"], domain=resp.get("domain"), duplicate=resp.get("duplicate")
        )
    except KeyError:
        return PubAck.from_response(resp)


def _retryable(result: object) -> bool:
    return isinstance(result, (nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError))


def _describe(result: object) -> str:
    if result is None:
        return "no acknowledgement arrived (timeout)"
    if isinstance(result, nats.js.errors.NoStreamResponseError):
        return "no stream stores its subject"
    if isinstance(result, nats.js.errors.APIError):
        return f"the server refused it: {result.description} (error {result.err_code})"
    return f"{type(result).__name__}: {result}"
