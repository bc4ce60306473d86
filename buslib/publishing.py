"""Publishing for the EventBus: one event acked, or many with thousands of acks in flight.

>>> ack = await bus.publish(OrderCreated(order_id="A-1"))            # doctest: +SKIP
>>> acks = await bus.publish_many(OrderCreated(order_id=str(i)) for i in range(1000))  # doctest: +SKIP

:class:`Publisher` is the publishing half of :class:`buslib.bus.EventBus` (a mixin: it
uses the bus's connection, settings and ``_stream_for``). Every message carries the
event's id as ``Nats-Msg-Id``, so a retry, or publishing the same events again, stores
each one once.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from buslib import codec, tracing
from buslib._wire import (
    Outbound,
    _describe,
    _frame,
    _header_block,
    _header_lines,
    _parse_ack,
    _publish_frames,
    _retryable,
    _writes_frames,
)
from buslib.contracts import downcast_targets
from buslib.errors import BusError, PublishError
from buslib.events import Event
from buslib.subjects import check_subject

__all__ = ["FAST_INGEST_API_LEVEL", "Publisher"]

MSG_ID = "Nats-Msg-Id"
FAST_INGEST_API_LEVEL = 4  # server API level that has fast-ingest batch publishing (2.14+)
CHUNK = 64  # messages written to the socket at once by publish_many

# (event index, subject, JSON payload, rendered header block, headers or None when the block says it all)
Prepared = tuple[int, str, bytes, bytes, "dict[str, str] | None"]


def _plain(event_id: object) -> bool:
    """An id that can go into a header as it is (a string without line breaks)."""
    return type(event_id) is str and "\n" not in event_id and "\r" not in event_id


class Publisher:
    """The publishing methods of :class:`~buslib.bus.EventBus`."""

    # provided by EventBus
    nc: Client
    js: JetStreamContext
    service: str
    publish_timeout: float
    publish_attempts: int
    publish_retries: int
    api_level: int
    _covered: dict[str, str]
    _batched: dict[str, bool]
    _valid_subjects: set[str]
    _stream_for: Callable[[str], Awaitable[str]]

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
        parent = span.traceparent
        messages = []
        for i, out in enumerate(codec.encode(event, source=self.service)):
            if out.subject not in self._valid_subjects:
                self._valid_subjects.add(check_subject(out.subject))
            headers = out.headers  # a fresh dict per message: ours to extend
            headers.setdefault(MSG_ID, event.id if i == 0 else f"{event.id}:{out.subject}")
            headers[tracing.HEADER] = parent
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
        self, events: Iterable[Event], *, window: int = 4096, fast_ingest: bool = True
    ) -> list[PubAck]:
        """Publish many events with many acknowledgements in flight; each stored once.

        Two ways, both keeping ``Nats-Msg-Id`` (a retry or a repeat is stored once):

        - fast-ingest batches (ADR-50, the default where possible): when the server has API
          level 4+ (2.14+) and the stream ``allow_batched`` (``ensure_stream`` sets it there).
          The server acknowledges every 500 messages instead of each one, so each event's
          ``PubAck`` is its *batch's* ack: ``seq`` is the batch's last sequence,
          ``batch_id``/``batch_size`` are set, and ``duplicate`` is unknown (the server drops
          a repeated id without a word). Decided from what the server says about itself,
          never by trying: 2.11 would store the batch's control messages as ordinary ones.
        - windowed (any server, or ``fast_ingest=False``): each message is a core publish
          with its own reply subject into one wildcard inbox, ``window`` awaiting their ack
          at once. Every event gets its own exact ``PubAck`` (``seq``, ``duplicate``).

        Events are encoded as they are sent, so encoding overlaps with the server storing
        what came before; every item's type and version are checked before the first is sent.

        Outside a trace the whole call gets one new trace id (it is one operation).

        Args:
            events: the events, in order.
            window: how many publishes may await their acknowledgement at once (windowed).
            fast_ingest: use fast-ingest batches where available (see above); False for an
                exact ``PubAck`` per event.

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
        prepared = _Messages(self, events, span)
        subjects = prepared.subjects()
        for subject in subjects:
            await self._stream_for(subject)
        results: list[PubAck | Exception | None] = [None] * len(prepared)
        todo = list(range(len(prepared)))
        fast = fast_ingest and len(prepared) > 1 and await self._can_fast_ingest(subjects)
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
        for k, result in enumerate(results):
            index = prepared.index(k)
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

    def _head(self, cls: type, span: tracing.TraceContext) -> tuple[str, bytes, str] | None:
        """(subject, as bytes, header block with ``%s`` for the ids) for events of ``cls``, or None.

        The headers of one event type from one service in one trace differ only in the
        event's id (``codec.constant_headers``), so the block is rendered once per type.
        """
        if not (isinstance(cls, type) and issubclass(cls, Event)) or downcast_targets(cls):
            return None
        subject = cls.subject()
        if subject not in self._valid_subjects:
            self._valid_subjects.add(check_subject(subject))
        lines = _header_lines(codec.constant_headers(cls, self.service) | {tracing.HEADER: span.traceparent})
        if lines is None:
            return None
        block = "NATS/1.0\r\n" + lines.replace("%", "%%") + f"\r\nce-id: %s\r\n{MSG_ID}: %s\r\n\r\n"
        return subject, subject.encode(), block

    async def _reconnected(self) -> bool:
        """Wait up to ``publish_timeout`` for a lost connection to come back.

        Sending on while nats-py reconnects would only fill its small outage buffer (a few MB);
        after a timeout the caller stops and retries what is unanswered, with backoff.
        """
        deadline = time.monotonic() + self.publish_timeout
        while not self.nc.is_connected:
            if self.nc.is_closed or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

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
        prepared: _Messages,
        todo: list[int],
        results: list[PubAck | Exception | None],
        *,
        flow: int = 500,
        ahead: int = 8,
    ) -> None:
        """One fast-ingest batch (ADR-50): the batch state travels in each reply subject.

        Reply subject ``<inbox>.<batch>.<flow>.fail.<n>.<op>.$FI`` (op 0 start, 1 append, 2
        commit). The server answers ``{"type":"ack","seq":S}`` every ``flow`` messages (1..S
        are stored), ``{"type":"err","seq":n,...}`` for a refused message, and a PubAck with
        ``batch``/``count`` at the end; on a gap ("fail" mode) the batch ends early. At most
        ``ahead`` flow acks are awaited at once (8: ~10% faster than 3 in benchmarks/bench_bus.py).
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

        reply_prefix = f"{inbox}.{batch}.{flow}.fail.".encode()
        sub = await nc.subscribe(inbox + ".>", cb=on_reply)
        cut_off: Exception | None = None  # why sending stopped early: the connection went away
        try:
            n = 0  # messages sent
            while n < total and not finished.is_set():
                if not nc.is_connected and not await self._reconnected():
                    cut_off = nats.errors.ConnectionClosedError() if nc.is_closed else None
                    break  # the batch died with the connection: the caller retries the rest
                room = flow * ahead - (n - acked)  # flow control: at most `ahead` flow acks outstanding
                if room <= 0:
                    if await stalled(progress):
                        break
                    continue
                chunk = []
                limit = nc.max_payload if _writes_frames(nc) else 0  # 0: everything through nats-py
                for seq in range(n + 1, n + 1 + min(room, CHUNK, total - n)):  # the batch counts from 1
                    op = 0 if seq == 1 else 2 if seq == total else 1
                    reply = b"%s%d.%d.$FI" % (reply_prefix, seq, op)
                    chunk.append(prepared.frame(todo[seq - 1], reply, limit) or prepared.message(todo[seq - 1], reply))
                try:
                    await _publish_frames(nc, chunk)
                except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as err:
                    cut_off = err
                    break
                n += len(chunk)
                await asyncio.sleep(0)  # let nats-py's flusher write it now: the server starts on it
            while not finished.is_set() and nc.is_connected:
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
        ack = final or PubAck(stream=await self._stream_for(prepared.subject(todo[0])), seq=0, batch_id=batch)
        for n, i in enumerate(todo, 1):
            if n in errors:
                results[i] = errors[n]
            elif n <= stored:
                results[i] = ack
            elif cut_off is not None:
                results[i] = cut_off  # retried unless the connection is closed for good
            # else: left None, so the caller retries it (same Nats-Msg-Id: stored once)

    async def _windowed(
        self,
        prepared: _Messages,
        todo: list[int],
        results: list[PubAck | Exception | None],
        window: int,
    ) -> None:
        """Core publishes with a reply subject each into one wildcard inbox; ``window`` outstanding."""
        nc = self.nc
        prefix = nc.new_inbox() + "."
        reply_prefix = prefix.encode()
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
            sent = 0
            while sent < len(todo):
                if not nc.is_connected and not await self._reconnected():
                    return  # the caller retries what is unanswered, with backoff
                if outstanding >= window:
                    room.clear()
                    try:
                        await asyncio.wait_for(room.wait(), self.publish_timeout)
                    except asyncio.TimeoutError:
                        if time.monotonic() - last_reply > self.publish_timeout:
                            return  # stalled: the caller retries what is unanswered
                    continue
                chunk = todo[sent : sent + min(CHUNK, window - outstanding)]
                sent += len(chunk)
                outstanding += len(chunk)
                settled.clear()
                limit = nc.max_payload if _writes_frames(nc) else 0  # 0: everything through nats-py
                messages = []
                for i in chunk:
                    reply = b"%s%d" % (reply_prefix, i)
                    messages.append(prepared.frame(i, reply, limit) or prepared.message(i, reply))
                try:
                    await _publish_frames(nc, messages)
                except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as err:
                    for i in chunk:  # not sent (or not all): the caller retries them, same ids
                        if results[i] is None:
                            results[i] = err
                            outstanding -= 1
                await asyncio.sleep(0)  # let nats-py's flusher write it now: the server starts on it
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


class _Messages:
    """The messages of one ``publish_many`` call, each encoded as it is sent.

    Encoding while the server stores what was sent before hides most of its cost (encoding
    up front took about a quarter of the call for 20k events), and nothing is kept: a retry
    encodes again (the same bytes). Checked before anything is sent: every item's type and
    version. Events published in several versions (dual publishing) or with unusual ids are
    encoded in full right away and kept.
    """

    def __init__(self, publisher: Publisher, events: list[Event], span: tracing.TraceContext) -> None:
        self.events = events
        # per event class: (subject, the subject as bytes, header block with a %s for each id),
        # or None: encode each event in full
        self._heads: dict[type, tuple[str, bytes, str] | None] = {}
        self._encoded: list[Prepared | None] = []  # per message: encoded in full, or None: from its head
        self._owner: list[int] = []  # per message: its event's index (dual publishing sends several)
        heads, encoded, owner = self._heads, self._encoded, self._owner
        for index, event in enumerate(events):
            cls = type(event)
            head = heads[cls] if cls in heads else heads.setdefault(cls, publisher._head(cls, span))
            if head is not None and event.version == cls.event_version and _plain(event.id):
                encoded.append(None)
                owner.append(index)
                continue
            try:
                messages = publisher._outgoing(event, span)
            except TypeError as err:
                raise TypeError(f"publish_many: item {index}: {err}") from None
            encoded += [(index, s, d, _header_block(h), h) for s, d, h in messages]
            owner += [index] * len(messages)

    def __len__(self) -> int:
        return len(self._encoded)

    def _render(self, k: int) -> tuple[bytes, bytes]:
        """(header block, payload) of message ``k``, built from its event's head; nothing kept."""
        event = self.events[self._owner[k]]
        head = self._heads[type(event)][2]  # type: ignore[index]
        return (head % (event.id, event.id)).encode(), event.to_json()

    def __getitem__(self, k: int) -> Prepared:
        found = self._encoded[k]
        if found is not None:
            return found
        block, data = self._render(k)
        return self._owner[k], self.subject(k), data, block, None

    def frame(self, k: int, reply: bytes, limit: int) -> bytes | None:
        """Message ``k`` as a ready protocol frame, or None: it goes through nats-py.

        Built straight from the event, nothing kept (a retry builds it again). None for
        headers nats-py must encode and for frames over ``limit`` bytes (0: no frames).
        """
        found = self._encoded[k]
        if found is None:
            subject = self._heads[type(self.events[self._owner[k]])][1]  # type: ignore[index]
            block, data = self._render(k)
        else:
            _, text, data, block, _ = found
            subject = text.encode()
        if not block or len(block) + len(data) > limit:
            return None
        return _frame(subject, reply, block, data)

    def message(self, k: int, reply: bytes) -> Outbound:
        """Message ``k`` for ``nc.publish``."""
        _, subject, data, block, headers = self[k]
        return subject, reply.decode(), data, block, headers

    def index(self, k: int) -> int:
        """The position of message ``k``'s event in the call's input."""
        return self._owner[k]

    def subject(self, k: int) -> str:
        found = self._encoded[k]
        if found is None:
            return self._heads[type(self.events[self._owner[k]])][0]  # type: ignore[index]
        return found[1]

    def subjects(self) -> set[str]:
        # a class with a head had an event here, and each of its events goes to the head's subject
        lazy = {head[0] for head in self._heads.values() if head is not None}
        return lazy | {found[1] for found in self._encoded if found is not None}
