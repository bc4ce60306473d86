"""How events become NATS messages and back: payload, headers, decoding.

>>> from buslib import Event
>>> from buslib.codec import encode
>>> class Pinged(Event, type="pings.sent"):
...     n: int
>>> [(out.subject, out.headers["ce-type"]) for out in encode(Pinged(n=1), source="lab")]
[('pings.sent.v1', 'pings.sent')]

The payload is the event's JSON (``version`` inside, as the seed article asks). Metadata
travels as CloudEvents headers in binary content mode (``ce-id``, ``ce-type``, ...), so
any tool can route on them without parsing the payload. The bus adds ``Nats-Msg-Id``
(dedup) and ``traceparent`` (tracing) on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from buslib.errors import DecodeError
from buslib.events import Event

__all__ = ["Outgoing", "encode", "decode", "CONTENT_TYPE"]

CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: subject, JSON payload and headers."""

    subject: str
    data: bytes
    headers: dict[str, str]
    event: Event


def encode(event: Event, *, source: str) -> list[Outgoing]:
    """Turn an event into the message(s) to publish (one per subject it goes to).

    Args:
        event: the event.
        source: the publishing service's name (CloudEvents ``source``).
    """
    if not isinstance(event, Event):
        raise TypeError(
            f"Only buslib.Event instances can be published, got {type(event).__name__}. "
            "Define a class like `class OrderCreated(Event, type='orders.created'): ...`."
        )
    cls = type(event)
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event.id,
        "ce-source": source,
        "ce-type": cls.event_type,
        "ce-time": event.occurred_at.isoformat(),
        "Bus-Event-Version": str(cls.event_version),
        "Content-Type": CONTENT_TYPE,
    }
    return [Outgoing(cls.subject(), event.to_json(), headers, event)]


def decode(data: bytes, headers: Mapping[str, str] | None, target: type[Event]) -> Event:
    """Parse a payload into ``target``.

    Raises:
        DecodeError: not JSON, or the JSON does not fit ``target``; the message says which.
    """
    try:
        return target.model_validate_json(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<payload>'}: {e['msg']}" for e in err.errors()[:5])
        kind = "is not valid JSON" if any(e["type"] == "json_invalid" for e in err.errors()) else f"does not fit {target.__name__}"
        raise DecodeError(f"The payload {kind}: {problems}") from None
