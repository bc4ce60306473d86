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
from collections.abc import Iterable

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import PubAck

from buslib import tracing
from buslib._nats.headers import header_lines
from buslib._nats.protocol import MSG_ID
from buslib.bus import batch
from buslib.bus.attempts import PUBLISH_DEADLINE, Attempts, retryable
from buslib.bus.streams import StreamDirectory
from buslib.contracts import codec
from buslib.contracts.versions import downcast_targets
from buslib.errors import PublishError
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
        if not (isinstance(cls, type) and issubclass(cls, Event)) or downcast_targets(cls):
            return None
        subject = self.check_subject(cls.subject())
        lines = header_lines(codec.constant_headers(cls, self.service) | {tracing.HEADER: span.traceparent})
        if lines is None:
            return None
        block = "NATS/1.0\r\n" + lines.replace("%", "%%") + f"\r\nce-id: %s\r\n{MSG_ID}: %s\r\n\r\n"
        return subject, subject.encode(), block

    async def publish(self, event: Event) -> PubAck:
        """Publish an event and wait until the server has stored it.

        Args:
            event: the event; its id is the ``Nats-Msg-Id`` (a retry is stored once).

        Returns:
            The server's ``PubAck`` (stream, seq, duplicate) for the event's first subject.

        Raises:
            TypeError: ``event`` is not an ``Event``.
            PublishError: not confirmed within ``publish_deadline`` (or ``publish_attempts``), or
                refused. It names the event (``.event_id``) and what the tries got.
        """
        acks = [await self.publish_one(subject, data, headers) for subject, data, headers in self.outgoing(event)]
        return acks[0]

    async def publish_one(self, subject: str, data: bytes, headers: dict[str, str]) -> PubAck:
        """Publish one message and wait for its acknowledgement, retrying with the same ``Nats-Msg-Id``."""
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

    async def publish_many(
        self, events: Iterable[Event], *, window: int = 4096, fast_ingest: bool = True
    ) -> list[PubAck]:
        """Publish many events with many acknowledgements in flight; see :func:`buslib.bus.batch.publish_many`."""
        return await batch.publish_many(self, events, window=window, fast_ingest=fast_ingest)

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
