"""Settling one delivery: decode, run the handler, then ack, retry later, or dead-letter.

>>> settlement = Settlement(group="billing", durable="billing__orders_created_v1",   # doctest: +SKIP
...                         handler=handle, event_type=OrderCreated, retry=Retry())
>>> await settlement.process(msg)                                                   # doctest: +SKIP
>>> settlement.stats.acked                                                          # doctest: +SKIP
1

What each outcome means (the ack verbs, named for what they mean):

- the handler returns: **ack**, the group is done with the message;
- the handler raises: **retry later**, ``nak(delay)`` with the retry policy's delay, until
  the last allowed delivery; then it is *exhausted*;
- the handler raises ``Reject``, or the message cannot be decoded (any error while decoding,
  of any type: bad JSON, wrong shape, nesting too deep): **dead-letter** at once;
- dead-lettering hands a ``Failure`` to the sink, then **terminates** the delivery (``term``:
  never redelivered). If the sink fails, the message is nak'ed instead: nothing is lost.
- a dead-letter replay meant for another group (``Bus-Replay-Group``) is acked unhandled.

It needs only a message object with ``data``, ``headers``, ``subject``, ``reply`` and the
ack verbs, so it is tested without a server (``tests/test_settlement.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from nats.aio.msg import Msg

from buslib import tracing
from buslib._nats.protocol import MSG_ID, delivery_info
from buslib.contracts import codec
from buslib.contracts.schema import version_number
from buslib.errors import DecodeError
from buslib.events import Event, lookup_event_type
from buslib.retry import DeadLetterSink, Failure, FailureKind, Reject, Retry

__all__ = [
    "HANDLER_TIMEOUT",
    "REPLAY_GROUP",
    "Delivery",
    "Handler",
    "MessageContext",
    "Settlement",
    "SubscriptionStats",
]

log = logging.getLogger("buslib")

HANDLER_TIMEOUT = 300.0  # seconds: a handler still running after this is cancelled and retried
REPLAY_GROUP = "Bus-Replay-Group"  # a dead-letter replay for this group only (set by DeadLetterQueue.replay)
Handler = Callable[[Any, "MessageContext"], Awaitable[None]]


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
    _delivery: Delivery | None = field(default=None, repr=False)

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
    skipped_replays: int = 0  # dead-letter replays meant for another group: acked, not handled

    @property
    def processed(self) -> int:
        """Messages handled successfully (acked)."""
        return self.acked


@dataclass(eq=False, slots=True)  # identity: kept in a set while its handler runs
class Delivery:
    """One delivery being handled: kept alive with ``in_progress``, cancelled at ``handler_timeout``."""

    msg: Msg
    timer: float  # this delivery's ack timeout, seconds
    last_progress: float
    started: float  # when handling began (handler_timeout counts from here)
    task: asyncio.Task[Any] | None  # the task running the handler: cancelled at handler_timeout
    timed_out: bool = False


async def _plain_ack(msg: Msg) -> None:
    await msg.ack()


class Settlement:
    """Decodes, handles and settles the deliveries of one subscription.

    Args:
        group / durable: the consumer group and its durable (for logs and ``Failure``).
        handler: ``async def handle(event, ctx)``.
        event_type: the contract to decode into; ``Event``: the one the headers name; None: raw bytes.
        retry: the retry policy; dead_letters: the sink (None: terminate with a warning).
        strict: reject payload fields the contract does not declare.
        handler_timeout: seconds a handler may run before it is cancelled and retried.
        ack_timers: the ack timeout of delivery 1, 2, ... (the last repeats).
        ack: how to acknowledge (the subscription passes the fast path).
        after_handler: called after the first handler and every 16th (the pull loop follows handler speed).

    Attributes:
        stats: the counters; in_flight: deliveries whose handler runs now;
        avg_handler_s: a moving average of handler time (None before the first).
    """

    def __init__(
        self,
        *,
        group: str,
        durable: str,
        handler: Handler,
        event_type: type[Event] | None,
        retry: Retry,
        dead_letters: DeadLetterSink | None = None,
        strict: bool = False,
        handler_timeout: float | None = HANDLER_TIMEOUT,
        ack_timers: list[float] | None = None,
        ack: Callable[[Msg], Awaitable[None]] = _plain_ack,
        after_handler: Callable[[], None] | None = None,
    ) -> None:
        self.group = group
        self.durable = durable
        self.handler = handler
        self.event_type = event_type
        self.retry = retry
        self.dead_letters = dead_letters
        self.strict = strict
        self.handler_timeout = handler_timeout
        self.ack_timers = ack_timers or [30.0]
        self.stats = SubscriptionStats()
        self.in_flight: set[Delivery] = set()
        self.avg_handler_s: float | None = None
        self.handled = 0
        self._ack = ack
        self.after_handler = after_handler
        self._first_failure: dict[int, datetime] = {}

    def decode(self, data: bytes, headers: Mapping[str, str]) -> Any:
        """The handler's argument: raw bytes, or the event the message carries.

        Raises:
            DecodeError: the message cannot become the expected event.
        """
        target = self.event_type
        if target is None:
            return data
        if target is Event:
            # Any event type: the headers say which. Stricter than codec.decode(..., Event), which
            # falls back to the payload's version: a bus message always names its type, and a
            # missing version header means v1 (messages from other tools).
            type_name, version = headers.get("ce-type"), headers.get(codec.VERSION_HEADER, "1")
            if not type_name:
                raise DecodeError("The message has no ce-type header, so its event type is unknown.")
            number = version_number(version)
            if number is None:
                raise DecodeError(f"The {codec.VERSION_HEADER} header {version!r} is not a whole number.")
            target = lookup_event_type(type_name, number)
        return codec.decode(data, headers, target, strict=self.strict)

    async def process(self, msg: Msg, task: asyncio.Task[Any] | None = None, *, received: float | None = None) -> None:
        """Decode, run the handler in ``task`` (the one running this), settle the message.

        ``received`` is when the message arrived (``time.monotonic()``): its ack timer runs
        from then, so the first keep-alive is due half a timer after it, not after handling starts.
        """
        self.stats.received += 1
        stream, num, seq = delivery_info(msg)
        headers = msg.headers or {}
        if headers.get(REPLAY_GROUP, self.group) != self.group:  # a replay for the group that failed
            self.stats.skipped_replays += 1
            await self.settle(self._ack(msg))
            return
        now = time.monotonic()
        timer = self.ack_timers[min(num, len(self.ack_timers)) - 1]
        delivery = Delivery(msg, timer, received if received is not None else now, now, task)
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
                event = self.decode(msg.data, headers)
            except Exception as err:  # any failure to decode: the message can never succeed as it is
                await self.dead_letter(ctx, "undecodable", _decode_failure(err))
                return
            self.in_flight.add(delivery)
            try:
                await self.handler(event, ctx)
                if delivery.timed_out:  # the handler swallowed the cancellation and finished anyway
                    _uncancel()
            except asyncio.CancelledError:
                if not delivery.timed_out:
                    raise  # stop() or shutdown: not ours to swallow
                _uncancel()
                await self._failed(ctx, _handler_timed_out(self.handler_timeout))
                return
            except Exception as err:
                await self._failed(ctx, err)
                return
            finally:  # inline, not a method: this runs for every message
                self.in_flight.discard(delivery)
                elapsed = time.monotonic() - now
                avg = self.avg_handler_s
                self.avg_handler_s = elapsed if avg is None else avg * 0.9 + elapsed * 0.1
                self.handled += 1
                if self.after_handler is not None and (self.handled == 1 or not self.handled % 16):
                    self.after_handler()  # the pull loop follows handler speed, checked now and then
            if await self.settle(self._ack(msg)):
                self.stats.acked += 1
                self._first_failure.pop(seq, None)
        finally:
            tracing.exit_span(token)

    async def _failed(self, ctx: MessageContext, err: Exception) -> None:
        """A handler failed: dead-letter a rejection or the last delivery, else retry later."""
        if isinstance(err, Reject):
            await self.dead_letter(ctx, "rejected", err.reason)
            return
        reason = f"{type(err).__name__}: {err}"
        self._first_failure.setdefault(ctx.stream_seq, datetime.now(timezone.utc))
        if len(self._first_failure) > 10_000:  # bounded memory: forget the oldest
            self._first_failure.pop(next(iter(self._first_failure)))
        if self.retry.exhausted(ctx.num_delivered):
            await self.dead_letter(ctx, "exhausted", reason)
            return
        delay = self.retry.delay_for(ctx.num_delivered)
        log.info(
            "%s: handler failed on %s seq %d delivery %d (%s); retry in %.2f s",
            self.durable,
            ctx.subject,
            ctx.stream_seq,
            ctx.num_delivered,
            reason,
            delay,
        )
        self.stats.retried += 1
        await self.settle(ctx.msg.nak(delay=delay))

    async def settle(self, action: Awaitable[None]) -> bool:
        """Send an ack verb; False (and a warning) if it could not be sent."""
        try:
            await action
            return True
        except Exception as err:  # connection lost: the server redelivers after the ack timeout
            log.warning(
                "%s: could not settle a message (%s: %s); it will be redelivered", self.durable, type(err).__name__, err
            )
            return False

    async def dead_letter(self, ctx: MessageContext, kind: FailureKind, reason: str) -> None:
        """Hand the delivery to the dead-letter sink, then terminate it (nak it if the sink fails)."""
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
                await self.settle(ctx.msg.nak(delay=self.retry.delay_for(ctx.num_delivered)))
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
        if await self.settle(ctx.msg.term()):
            self._first_failure.pop(ctx.stream_seq, None)


def _decode_failure(err: BaseException) -> str:
    if isinstance(err, RecursionError):
        return "RecursionError: the payload is nested too deeply to decode"
    return f"{type(err).__name__}: {err}"


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
