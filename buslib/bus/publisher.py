"""Publishing events: each stored once (its id is ``Nats-Msg-Id``), retried through timeouts and reconnects.

>>> ack = await bus.publish(OrderCreated(order_id="A-1"))                               # doctest: +SKIP
>>> acks = await bus.publish_many(OrderCreated(order_id=str(i)) for i in range(1000))   # doctest: +SKIP

:class:`Publisher` is the EventBus's publishing component: it gets the connection and the
stream directory, nothing else of the bus. ``publish`` waits for each acknowledgement and
retries with the same id (a timeout may hide a stored message: the grey zone of lesson 02)
for up to ``publish_deadline`` seconds, long enough to ride out a cluster's leader election
(:mod:`buslib.bus.attempts`);
``publish_many`` lives in :mod:`buslib.bus.batch`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import PubAck

from buslib import tracing
from buslib._nats.headers import header_lines
from buslib._nats.protocol import EXPECTED_LAST_SUBJECT_SEQUENCE, MSG_ID, ErrorCode, wire_size
from buslib.bus import batch
from buslib.bus.attempts import PUBLISH_DEADLINE, Attempts, retryable
from buslib.bus.streams import StreamDirectory, subject_of
from buslib.contracts import codec
from buslib.contracts.versions import downcast_targets
from buslib.errors import ConcurrencyError, PublishError
from buslib.events import Event
from buslib.subjects import check_subject

__all__ = ["Publisher"]

Outgoing = tuple[str, bytes, dict[str, str]]  # subject, payload, headers


class Publisher:
    """Publishes events for one service.

    Args:
        nc: a connected nats-py client.
        streams: which stream stores which subject (created on demand when allowed).
        service: the CloudEvents ``source`` of every event.
        publish_timeout: seconds each try waits for its acknowledgement.
        publish_deadline: seconds within which tries (same ``Nats-Msg-Id``) may start; None:
            no limit by time.
        publish_attempts: at most this many tries; None: as many as fit in ``publish_deadline``.

    Attributes:
        retries: publishes repeated after a timeout, a reconnect or an election, since the start.
    """

    def __init__(
        self,
        nc: Client,
        streams: StreamDirectory,
        *,
        service: str,
        publish_timeout: float,
        publish_deadline: float | None = PUBLISH_DEADLINE,
        publish_attempts: int | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.streams = streams
        self.service = service
        self.publish_timeout = publish_timeout
        self.publish_deadline = publish_deadline
        self.publish_attempts = publish_attempts
        self.retries = 0
        self._valid_subjects: set[str] = set()

    def attempts(self) -> Attempts:
        """The tries one publish may make, by this publisher's settings."""
        return Attempts(deadline=self.publish_deadline, limit=self.publish_attempts, timeout=self.publish_timeout)

    def outgoing(self, event: Event, span: tracing.TraceContext | None = None) -> list[Outgoing]:
        """The messages that publishing ``event`` sends: its own, and older forms when dual-published."""
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
            self.check_subject(out.subject)
            headers = out.headers  # a fresh dict per message: ours to extend
            headers.setdefault(MSG_ID, event.id if i == 0 else f"{event.id}:{out.subject}")
            headers[tracing.HEADER] = parent
            messages.append((out.subject, out.data, headers))
        return messages

    def check_subject(self, subject: str) -> str:
        """``subject``, checked once per subject for this publisher."""
        if subject not in self._valid_subjects:
            self._valid_subjects.add(check_subject(subject))
        return subject

    def head(self, cls: type, span: tracing.TraceContext) -> tuple[str, bytes, str] | None:
        """(subject, as bytes, header block with ``%s`` for the ids) for events of ``cls``, or None.

        The headers of one event type from one service in one trace differ only in the
        event's id (``codec.constant_headers``), so ``publish_many`` renders the block once
        per type. None: encode each event in full (dual publishing, unusual headers).
        """
        if not (isinstance(cls, type) and issubclass(cls, Event)) or downcast_targets(cls) or cls.event_key:
            return None  # several messages per event, or a subject per event (keyed)
        subject = self.check_subject(cls.subject())
        lines = header_lines(codec.constant_headers(cls, self.service) | {tracing.HEADER: span.traceparent})
        if lines is None:
            return None
        block = "NATS/1.0\r\n" + lines.replace("%", "%%") + f"\r\nce-id: %s\r\n{MSG_ID}: %s\r\n\r\n"
        return subject, subject.encode(), block

    async def publish(self, event: Event, *, expect_last_subject_seq: int | None = None) -> PubAck:
        """Publish an event and wait until the server has stored it.

        Args:
            event: the event; its id is the ``Nats-Msg-Id`` (a retry is stored once).
            expect_last_subject_seq: store it only if the last message on its subject has
                this stream sequence (0: none yet), else raise ``ConcurrencyError``
                (``Nats-Expected-Last-Subject-Sequence``). A retry of a publish that was
                stored after all counts as done, on every server version (see ``_conflict``).

        Returns:
            The server's ``PubAck`` (stream, seq, duplicate) for the event's first subject.

        Raises:
            TypeError: ``event`` is not an ``Event``.
            ValueError: ``expect_last_subject_seq`` is not a whole number >= 0.
            ConcurrencyError: another writer published to the subject after that sequence.
            PublishError: not confirmed within ``publish_deadline`` (or ``publish_attempts``), or
                refused. It names the event (``.event_id``) and what the tries got.
        """
        messages = self.outgoing(event)
        if expect_last_subject_seq is not None:
            expected = expect_last_subject_seq
            if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
                raise ValueError(
                    f"expect_last_subject_seq must be a whole number >= 0 (0: no message on the subject yet), "
                    f"got {expected!r}. Get it with await bus.last_sequence(...)."
                )
            messages[0][2][EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)  # the event's own subject only
        acks = [await self.publish_one(subject, data, headers) for subject, data, headers in messages]
        return acks[0]

    async def last_sequence(self, target: type[Event] | str, *, key: object = None) -> int:
        """The stream sequence of the last message on a subject, 0 if there is none.

        Args:
            target: an ``Event`` subclass or a subject (no wildcards).
            key: the key, for a keyed event type: its subject is ``<subject>.<key>``.

        Raises:
            ValueError: a key for a type without one.
            PublishError: no stream stores the subject (and streams are not created on demand).
        """
        if isinstance(target, type) and issubclass(target, Event) and target.event_key is not None:
            subject = target.subject_for(key)
        elif key is not None:
            raise ValueError(f"key= is for keyed event types; {target!r} has no key.")
        else:
            subject = check_subject(subject_of(target))
        stream = await self.streams.stream_for(subject)
        try:
            msg = await self.js.get_last_msg(stream, await self.streams.stored_subject(stream, subject))
        except nats.js.errors.NotFoundError:
            return 0
        return int(msg.seq or 0)

    async def publish_one(self, subject: str, data: bytes, headers: dict[str, str]) -> PubAck:
        """Publish one message and wait for its acknowledgement, retrying with the same ``Nats-Msg-Id``."""
        if (size := wire_size(data, headers)) > self.nc.max_payload:  # sent anyway, it would close the connection
            raise PublishError(
                f"The event {headers[MSG_ID]} on {subject!r} is {size} bytes with its headers, more than the server "
                f"accepts in one message (max_payload: {self.nc.max_payload} bytes). Make the event smaller: keep "
                "large data elsewhere (a file store, a NATS object store) and put a reference to it in the event.",
                event_id=headers[MSG_ID],
            )
        attempts = self.attempts()
        while await attempts.another():
            if attempts.made > 1:
                self.retries += 1
            try:
                # bounded too: without a meta leader (a crashed node, most nodes down) a lookup waits 5 s
                await asyncio.wait_for(self.streams.stream_for(subject), attempts.timeout())
                return await self.js.publish(subject, data, timeout=attempts.timeout(), headers=headers)
            except nats.js.errors.NoStreamResponseError as err:
                # no stream answered: JetStream still starting, a cluster electing the stream's leader, or the
                # stream vanished (looked up again, so auto_create_streams can create it again)
                attempts.saw(err)
                self.streams.forget(subject)
            except nats.js.errors.APIError as err:
                if err.err_code == ErrorCode.STREAM_WRONG_LAST_SEQUENCE and EXPECTED_LAST_SUBJECT_SEQUENCE in headers:
                    return await self._conflict(subject, headers, err)
                if not retryable(err):
                    raise self._refused(headers[MSG_ID], subject, err) from None
                attempts.saw(err, connected=self.nc.is_connected)  # 503, or the same id still in flight
            except nats.errors.ConnectionClosedError:
                raise PublishError(f"Cannot publish on {subject!r}: the connection is closed.") from None
            except (asyncio.TimeoutError, nats.errors.Error) as err:  # nats.js.errors.APIError is one too
                if not retryable(err):
                    raise self._refused(headers[MSG_ID], subject, err) from None
                attempts.saw(err, connected=self.nc.is_connected)  # maybe stored: the retry has the same id
        raise PublishError(
            f"The event {headers[MSG_ID]} on {subject!r} was not confirmed after {attempts.how_long()} "
            f"({attempts.summary()}). {attempts.explanation()} It may or may not be stored; publishing it again is "
            "safe (same id, so it is stored once).",
            event_id=headers[MSG_ID],
        )

    @staticmethod
    def _refused(event_id: str, subject: str, err: Exception) -> PublishError:
        if isinstance(err, nats.js.errors.APIError):
            return PublishError(
                f"The server refused the event {event_id} on {subject!r}: {err.description} "
                f"(error {err.err_code}). Check the stream's limits (bus.js.stream_info(...)).",
                event_id=event_id,
            )
        return PublishError(f"The event {event_id} on {subject!r} was not published: {type(err).__name__}: {err}")

    async def _conflict(self, subject: str, headers: dict[str, str], err: nats.js.errors.APIError) -> PubAck:
        """An expected-sequence refusal (10071): our own earlier attempt, or another writer's message.

        Retrying a publish that was stored after all (a timeout hid its ack) is answered as a
        duplicate by server 2.11, but refused with 10071 from 2.12 on: the sequence check
        runs before deduplication there. So look: if the subject's last message carries this
        event's ``Nats-Msg-Id``, it is ours and the publish is done (a duplicate ack).
        """
        stream = await self.streams.stream_for(subject)
        try:
            last = await self.js.get_last_msg(stream, await self.streams.stored_subject(stream, subject))
        except nats.js.errors.NotFoundError:
            last = None
        if last is not None and (last.headers or {}).get(MSG_ID) == headers[MSG_ID]:
            return PubAck(stream=stream, seq=int(last.seq or 0), duplicate=True)
        expected = int(headers[EXPECTED_LAST_SUBJECT_SEQUENCE])
        said = (err.description or "").rsplit(":", 1)[-1].strip()
        actual = int(said) if said.isdigit() else (int(last.seq or 0) if last is not None else None)
        raise ConcurrencyError(
            f"Another writer published to {subject!r} first: this publish expected the subject's last stream "
            f"sequence to be {expected}, but it is {actual}. Nothing was stored. Read the current state again "
            "(await bus.last_sequence(...) gives the new sequence), decide again, and publish with "
            "expect_last_subject_seq set to it.",
            subject=subject,
            expected=expected,
            actual=actual,
        )

    async def publish_many(
        self,
        events: Iterable[Event],
        *,
        window: int = 4096,
        fast_ingest: bool = True,
        progress: Callable[[int], object] | None = None,
    ) -> list[PubAck]:
        """Publish many events with many acknowledgements in flight; see :func:`buslib.bus.batch.publish_many`."""
        return await batch.publish_many(self, events, window=window, fast_ingest=fast_ingest, progress=progress)

    async def reconnected(self) -> bool:
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
