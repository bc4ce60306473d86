"""One dead letter: the original message plus ``Bus-DLQ-*`` headers saying where it came from and why.

>>> entry = DeadLetter.from_stored(7, b'{"order_id": "A-1"}', {"Bus-DLQ-Subject": "orders.created.v1",
...                                "Bus-DLQ-Reason": "KeyError: 'sku'", "ce-id": "e-1"})
>>> entry.subject, entry.reason, entry.headers
('orders.created.v1', "KeyError: 'sku'", {'ce-id': 'e-1'})

An entry is an ordinary message in the dead-letter stream: the original payload and headers
unchanged (its ``Nats-*`` headers kept under ``Bus-DLQ-Original-``, where the server ignores
them), and these headers, plain text any client can read (docs/contracts.md lists them):
``Bus-DLQ-Subject``, ``-Stream``, ``-Stream-Seq``, ``-Consumer``, ``-Group``, ``-Deliveries``,
``-Kind``, ``-Reason``, ``-First-Failure``, ``-Last-Failure`` (ISO 8601), ``-Trace-Id``, ``-Source``,
and ``-Not-Copied`` on an entry whose original was too large to copy beside those headers
(within the server's ``max_payload``): it then holds no payload and no original headers, and
says why; the original stays in its stream, where ``replay`` reads it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

from buslib.bus.settlement import REPLAY_GROUP  # on a replayed copy: the one group it is for
from buslib.errors import DeadLetterNotFound

__all__ = [
    "HEADER_PREFIX",
    "ORIGINAL_PREFIX",
    "REPLAYED_FROM",
    "REPLAY_GROUP",
    "DeadLetter",
    "parse_timestamp",
]

HEADER_PREFIX = "Bus-DLQ-"  # every header the queue adds starts with this
ORIGINAL_PREFIX = HEADER_PREFIX + "Original-"  # the original's Nats-* headers, kept but made inert
REPLAYED_FROM = "Bus-Replayed-From"  # on a replayed copy: "<dlq stream>:<entry id>"
_REASON_LIMIT = 2000  # characters of a reason kept in its header


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the dead-letter stream.

    Attributes:
        id: the entry's sequence number in the dead-letter stream (what ``show``/``replay`` take).
        subject: the original subject (replay publishes there).
        reason: why it failed: exception type and message, or the rejection reason.
        kind: ``rejected``, ``exhausted`` or ``undecodable``.
        group / consumer: the consumer group and the JetStream consumer that gave up.
        stream / stream_seq: where the original still lives.
        num_delivered: how many deliveries were made.
        first_failure_at / last_failure_at: when it first and last failed (UTC).
        trace_id: the W3C trace id of the request, to find its logs.
        data / headers: the original payload and headers, unchanged.
        source: ``worker`` (the handler's verdict) or ``advisory`` (found by ``reconcile``).
        not_copied: why ``data`` and ``headers`` are empty: the original was too large to copy
            into the entry (it stays at ``stream``/``stream_seq``); ``""`` for a full copy.
    """

    id: int
    subject: str
    reason: str
    kind: str
    group: str
    consumer: str
    stream: str
    stream_seq: int
    num_delivered: int
    first_failure_at: datetime | None
    last_failure_at: datetime | None
    trace_id: str | None
    data: bytes
    headers: dict[str, str]
    source: str = "worker"
    not_copied: str = ""

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly dict of everything but the payload (alerts, tables, ``--json``)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("data", "headers")}
        for key in ("first_failure_at", "last_failure_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out

    def stored_headers(self) -> dict[str, str]:
        """The headers this entry is stored with: the original's (``Nats-*`` made inert) and ``Bus-DLQ-*``."""
        stored = {
            (ORIGINAL_PREFIX + k if k.lower().startswith("nats-") else k): str(v) for k, v in self.headers.items()
        }
        added = {
            "Subject": self.subject,
            "Stream": self.stream,
            "Stream-Seq": str(self.stream_seq),
            "Consumer": self.consumer,
            "Group": self.group,
            "Deliveries": str(self.num_delivered),
            "Kind": self.kind,
            "Reason": _one_line(self.reason),
            "First-Failure": self.first_failure_at.isoformat() if self.first_failure_at else "",
            "Last-Failure": (self.last_failure_at or datetime.now(timezone.utc)).isoformat(),
            "Trace-Id": self.trace_id or "",
            "Source": self.source,
            "Not-Copied": _one_line(self.not_copied),
        }
        stored.update({HEADER_PREFIX + k: v for k, v in added.items() if v})
        return stored

    @classmethod
    def from_stored(cls, seq: int, data: bytes | None, headers: dict[str, str]) -> DeadLetter:
        """Rebuild an entry from a stored message (raises ``DeadLetterNotFound`` if not one)."""
        if HEADER_PREFIX + "Subject" not in headers:
            raise DeadLetterNotFound(
                f"Message {seq} is not a dead-letter entry (it has no {HEADER_PREFIX}Subject header)."
            )
        # Nats-Msg-Id here is the entry's own id; the original's is under Bus-DLQ-Original-.
        original = {k: v for k, v in headers.items() if not k.startswith(HEADER_PREFIX) and k.lower() != "nats-msg-id"}
        original.update({k[len(ORIGINAL_PREFIX) :]: v for k, v in headers.items() if k.startswith(ORIGINAL_PREFIX)})
        get = headers.get
        return cls(
            id=seq,
            subject=get(HEADER_PREFIX + "Subject", ""),
            reason=get(HEADER_PREFIX + "Reason", ""),
            kind=get(HEADER_PREFIX + "Kind", ""),
            group=get(HEADER_PREFIX + "Group", ""),
            consumer=get(HEADER_PREFIX + "Consumer", ""),
            stream=get(HEADER_PREFIX + "Stream", ""),
            stream_seq=int(get(HEADER_PREFIX + "Stream-Seq", "0")),
            num_delivered=int(get(HEADER_PREFIX + "Deliveries", "0")),
            first_failure_at=_when(get(HEADER_PREFIX + "First-Failure")),
            last_failure_at=_when(get(HEADER_PREFIX + "Last-Failure")),
            trace_id=get(HEADER_PREFIX + "Trace-Id") or None,
            data=data or b"",
            headers=original,
            source=get(HEADER_PREFIX + "Source", "worker"),
            not_copied=get(HEADER_PREFIX + "Not-Copied", ""),
        )

    def without_original(self, size: int, limit: int) -> DeadLetter:
        """This entry without the original's payload and headers (``size`` bytes, over ``limit``), saying why."""
        why = (
            f"the original message ({size} bytes with its headers) does not fit in a dead-letter entry beside its "
            f"Bus-DLQ headers (the server's max_payload is {limit} bytes); it stays in stream {self.stream} at "
            f"sequence {self.stream_seq}, unless the stream's limits removed it since"
        )
        return replace(self, data=b"", headers={}, not_copied=why)


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 time as the server or a person writes it (``Z``, nanoseconds); UTC if no zone.

    Raises:
        ValueError: not an ISO 8601 time.
    """
    text = text.strip().replace("Z", "+00:00")
    head, _, tail = text.partition(".")
    if tail:  # Python 3.10 reads at most microseconds
        digits = re.match(r"\d*", tail).group()  # type: ignore[union-attr]
        text = f"{head}.{digits[:6]}{tail[len(digits) :]}"
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _one_line(text: str) -> str:
    # Header values cannot hold line breaks; long tracebacks are cut.
    flat = " | ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return flat if len(flat) <= _REASON_LIMIT else flat[: _REASON_LIMIT - 1] + "…"


def _when(text: str | None) -> datetime | None:
    return parse_timestamp(text) if text else None
