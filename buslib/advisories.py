"""The dead-letter safety net: capture JetStream's delivery advisories and reconcile them.

>>> dlq = await DeadLetterQueue(js, watch=["ORDERS"]).setup()  # doctest: +SKIP
>>> result = await dlq.reconcile()                             # doctest: +SKIP
>>> [entry.stream_seq for entry in result.written]             # doctest: +SKIP
[42]

JetStream never moves an exhausted message anywhere: it stays in its stream and the server
publishes a core-NATS advisory, ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>``.
Core messages are lost when nobody listens, so a stream captures them (a stream may store
``$JS.EVENT.>`` subjects like any other). ``reconcile()`` reads that stream with a durable
consumer (each advisory is handled once, even across restarts) and turns every
MAX_DELIVERIES advisory into a dead-letter entry, with the original fetched by ``get_msg``.

When does that happen? When the handler never saw its last failure: the worker hung past
the ack timeout or crashed (SIGKILL, power cut) on the last allowed delivery. Caveat: for a
pull consumer the server sends MAX_DELIVERIES only while a pull request is pending, so the
advisory appears once some worker of the group pulls again (the bus's workers always keep a
pull pending).

MSG_TERMINATED advisories are captured too: the bus terminates a delivery right after
writing its dead letter, so each one normally matches an entry; ``reconcile()`` counts the
ones that do not (a handler terminated a message itself, or the entry was replayed since).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

if TYPE_CHECKING:
    from buslib.dlq import DeadLetter, DeadLetterQueue

__all__ = [
    "ADVISORY_STREAM",
    "MAX_DELIVERIES_PREFIX",
    "TERMINATED_PREFIX",
    "Advisory",
    "ReconcileResult",
    "ensure_advisory_stream",
    "reconcile",
]

ADVISORY_STREAM = "DLQ_ADVISORIES"
MAX_DELIVERIES_PREFIX = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
TERMINATED_PREFIX = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED"
_ADVISORY_MAX_AGE = 7 * 24 * 3600.0  # a week: long enough to reconcile after a weekend outage
_OVERLAP = 10065  # "subjects overlap with an existing stream"
_EXISTS = 10058  # "stream name already in use with a different configuration"


@dataclass(frozen=True)
class Advisory:
    """One MAX_DELIVERIES or MSG_TERMINATED advisory, as the server published it."""

    kind: str  # "max_deliveries" | "terminated"
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int
    timestamp: datetime | None
    reason: str | None = None  # a terminate reason, when the client sent one

    @classmethod
    def parse(cls, data: bytes) -> Advisory | None:
        """Read an advisory payload; ``None`` when it is not one of the two kinds we handle."""
        try:
            body: dict[str, Any] = json.loads(data)
            kind = {"io.nats.jetstream.advisory.v1.max_deliver": "max_deliveries",
                    "io.nats.jetstream.advisory.v1.terminated": "terminated"}[body["type"]]
            stamp = body.get("timestamp")
            return cls(
                kind=kind,
                stream=str(body["stream"]),
                consumer=str(body["consumer"]),
                stream_seq=int(body["stream_seq"]),
                deliveries=int(body.get("deliveries", 0)),
                timestamp=_parse_time(stamp) if stamp else None,
                reason=body.get("reason") or None,
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class ReconcileResult:
    """What one ``reconcile()`` pass did.

    Attributes:
        written: new dead letters made from MAX_DELIVERIES advisories.
        already_dead_lettered: MAX_DELIVERIES advisories whose message already had an entry.
        terminated_matched: MSG_TERMINATED advisories matching an entry (the normal bus path).
        terminated_unmatched: MSG_TERMINATED advisories without an entry: terminated by a
            handler itself, or already replayed and removed (listed, not dead-lettered).
        skipped: unreadable advisories, and ones older than their stream (they belong to a
            deleted stream of the same name, whose sequence numbers meant other messages).
    """

    written: list[DeadLetter] = field(default_factory=list)
    already_dead_lettered: int = 0
    terminated_matched: int = 0
    terminated_unmatched: list[Advisory] = field(default_factory=list)
    skipped: int = 0


async def ensure_advisory_stream(js: Any, name: str = ADVISORY_STREAM) -> str:
    """Create (or find) the stream that captures delivery advisories; return its name.

    Only one stream on a server may capture a subject, so every dead-letter queue shares
    one; if another stream already captures the advisories, that one is used.
    """
    config = StreamConfig(
        name=name,
        subjects=[f"{MAX_DELIVERIES_PREFIX}.>", f"{TERMINATED_PREFIX}.>"],
        storage=StorageType.FILE,
        max_age=_ADVISORY_MAX_AGE,
        description="Delivery advisories captured by buslib's dead-letter queues",
    )
    try:
        await js.add_stream(config)
        return name
    except BadRequestError as err:
        if err.err_code == _EXISTS:
            return name  # same name, a tuned config (e.g. another max_age): use it as it is
        if err.err_code != _OVERLAP:
            raise
    return await js.find_stream_name_by_subject(f"{MAX_DELIVERIES_PREFIX}.X.Y")


def consumer_config(durable: str, watch: list[str] | None) -> ConsumerConfig:
    """The durable consumer a dead-letter queue reads the advisory stream with."""
    if watch:
        filters = [f"{prefix}.{stream}.*" for stream in watch for prefix in (MAX_DELIVERIES_PREFIX, TERMINATED_PREFIX)]
    else:
        filters = [f"{MAX_DELIVERIES_PREFIX}.>", f"{TERMINATED_PREFIX}.>"]
    return ConsumerConfig(
        durable_name=durable,
        deliver_policy=DeliverPolicy.NEW,  # a new queue starts watching now, not last week
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=10.0,  # a pass that died mid-batch leaves its advisories to the next after this
        max_deliver=-1,
        filter_subjects=filters if len(filters) > 1 else None,
        filter_subject=filters[0] if len(filters) == 1 else None,
    )


async def reconcile(dlq: DeadLetterQueue, *, batch: int = 100) -> ReconcileResult:
    """Turn captured MAX_DELIVERIES advisories into dead letters (see the module docstring).

    Raises:
        Whatever stopped an entry from being written (e.g. the dead-letter stream is gone);
        that advisory and the rest of its batch are nak'ed, so the next pass retries them.
    """
    result = ReconcileResult()
    js = dlq.js
    sub = await js.pull_subscribe_bind(durable=dlq.advisory_consumer, stream=dlq.advisory_stream)
    created: dict[str, datetime | None] = {}
    try:
        while True:
            info = await js.consumer_info(dlq.advisory_stream, dlq.advisory_consumer)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return result
            try:  # a short wait when only redeliveries (nak'ed by a failed pass) may come
                msgs = await sub.fetch(batch, timeout=1.0 if info.num_pending else 0.25)
            except asyncio.TimeoutError:  # nats-py raises its own subclass or the plain one
                return result  # nothing due now (or taken by a concurrent pass)
            for i, msg in enumerate(msgs):
                try:
                    await _handle(dlq, Advisory.parse(msg.data), result, created)
                except Exception:
                    for unhandled in msgs[i:]:
                        await unhandled.nak(delay=1.0)
                    raise
                await msg.ack()  # only after the entry is stored: a crash re-reads the advisory
    finally:
        await sub.unsubscribe()


async def _handle(dlq: DeadLetterQueue, advisory: Advisory | None, result: ReconcileResult,
                  created: dict[str, datetime | None]) -> None:
    if advisory is None or not await _current(dlq.js, advisory, created):
        result.skipped += 1
    elif advisory.kind == "terminated":
        if await dlq.has_entry_for(advisory.stream, advisory.consumer, advisory.stream_seq):
            result.terminated_matched += 1
        else:
            result.terminated_unmatched.append(advisory)
    elif await dlq.has_entry_for(advisory.stream, advisory.consumer, advisory.stream_seq):
        result.already_dead_lettered += 1
    else:
        result.written.append(await dlq.write_from_advisory(advisory))


async def _current(js: Any, advisory: Advisory, created: dict[str, datetime | None]) -> bool:
    # An advisory older than its stream belongs to a deleted stream of the same name (a
    # re-run notebook): its sequence numbers now point at other messages.
    if advisory.stream not in created:
        try:
            born = (await js.stream_info(advisory.stream)).created
            created[advisory.stream] = born.replace(tzinfo=born.tzinfo or timezone.utc) if born else None
        except NotFoundError:
            created[advisory.stream] = None
    born = created[advisory.stream]
    if born is None:
        return advisory.kind == "terminated"  # stream gone: nothing left to copy
    return advisory.timestamp is None or advisory.timestamp >= born


def _parse_time(text: str) -> datetime:
    # The server writes nanoseconds and "Z"; Python 3.10 reads neither.
    text = text.replace("Z", "+00:00")
    head, _, tail = text.partition(".")
    if tail:
        digits = re.match(r"\d*", tail).group()
        zone = tail[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
