"""The messages of one ``publish_many`` call, and what the two ways of sending them share.

A ``publish_many`` call prepares its events once (:class:`PreparedMessages`: types and
versions checked, each message encoded only as it is sent), then hands them to
:mod:`buslib.bus.fast_ingest` or :mod:`buslib.bus.windowed`, which fill in one result per
message: a ``PubAck``, an error, or None (no answer: the caller retries it).
"""

from __future__ import annotations

from typing import Protocol

import nats.js.errors
from nats.aio.client import Client
from nats.js.api import PubAck

from buslib import tracing
from buslib._nats.fastpath import Outbound
from buslib._nats.headers import header_block
from buslib._nats.protocol import hpub_frame
from buslib.bus.attempts import Attempts, retryable
from buslib.bus.streams import StreamDirectory
from buslib.events import Event

__all__ = ["PreparedMessages", "Result", "Sender", "describe"]

# (event index, subject, JSON payload, rendered header block, headers or None when the block says it all)
Prepared = tuple[int, str, bytes, bytes, dict[str, str] | None]
Result = PubAck | Exception | None  # per message: stored, refused/failed, or no answer yet


class Sender(Protocol):
    """What sending a batch needs of the publisher (:class:`buslib.bus.publisher.Publisher` is one)."""

    nc: Client
    streams: StreamDirectory
    publish_timeout: float
    retries: int

    def attempts(self) -> Attempts: ...

    def outgoing(
        self, event: Event, span: tracing.TraceContext | None = None
    ) -> list[tuple[str, bytes, dict[str, str]]]: ...

    def head(self, cls: type, span: tracing.TraceContext) -> tuple[str, bytes, str] | None: ...

    async def reconnected(self) -> bool: ...


def _plain(event_id: object) -> bool:
    """An id that can go into a header as it is (a string without line breaks)."""
    return type(event_id) is str and "\n" not in event_id and "\r" not in event_id


def describe(result: object) -> str:
    """Why a message was not stored, in words."""
    if result is None:
        return "no acknowledgement arrived (timeout)"
    if isinstance(result, nats.js.errors.NoStreamResponseError):
        return "no stream answered (no stream stores its subject, or, in a cluster, the stream has no leader)"
    if retryable(result):
        return f"not confirmed ({type(result).__name__}: {result})"
    if isinstance(result, nats.js.errors.APIError):
        return f"the server refused it: {result.description} (error {result.err_code})"
    return f"{type(result).__name__}: {result}"


class PreparedMessages:
    """The messages of one ``publish_many`` call, each encoded as it is sent.

    Encoding while the server stores what was sent before hides most of its cost (encoding
    up front took about a quarter of the call for 20k events), and nothing is kept: a retry
    encodes again (the same bytes). Checked before anything is sent: every item's type and
    version. Events published in several versions (dual publishing) or with unusual ids are
    encoded in full right away and kept.
    """

    def __init__(self, sender: Sender, events: list[Event], span: tracing.TraceContext) -> None:
        self.events = events
        # per event class: (subject, the subject as bytes, header block with a %s for each id),
        # or None: encode each event in full
        self._heads: dict[type, tuple[str, bytes, str] | None] = {}
        self._encoded: list[Prepared | None] = []  # per message: encoded in full, or None: from its head
        self._owner: list[int] = []  # per message: its event's index (dual publishing sends several)
        heads, encoded, owner = self._heads, self._encoded, self._owner
        for index, event in enumerate(events):
            cls = type(event)
            head = heads[cls] if cls in heads else heads.setdefault(cls, sender.head(cls, span))
            if head is not None and event.version == cls.event_version and _plain(event.id):
                encoded.append(None)
                owner.append(index)
                continue
            try:
                messages = sender.outgoing(event, span)
            except TypeError as err:
                raise TypeError(f"publish_many: item {index}: {err}") from None
            encoded += [(index, s, d, header_block(h), h) for s, d, h in messages]
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
        return hpub_frame(subject, reply, block, data)

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
