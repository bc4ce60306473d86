"""The dead-letter safety net: capture JetStream's delivery advisories and reconcile them.

>>> Advisory.parse(b'{"type": "io.nats.jetstream.advisory.v1.max_deliver", "stream": "ORDERS",'
...                b' "consumer": "billing__orders_created_v1", "stream_seq": 42, "deliveries": 5}').stream_seq
42

JetStream never moves an exhausted message anywhere: it stays in its stream and the server
publishes a core-NATS advisory, ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>``.
Core messages are lost when nobody listens, so a stream captures them (a stream may store
``$JS.EVENT.>`` subjects like any other). This module knows the advisories and that stream;
:mod:`buslib.dlq.reconcile` reads it with a durable consumer (each advisory is handled once,
even across restarts) and turns every MAX_DELIVERIES advisory into a dead-letter entry.

When does that happen? When the handler never saw its last failure: the worker hung past
the ack timeout or crashed (SIGKILL, power cut) on the last allowed delivery. Caveat: for a
pull consumer the server sends MAX_DELIVERIES only while a pull request is pending, so the
advisory appears once some worker of the group pulls again (a bus worker keeps a pull
pending whenever it has room for another message). Why: the ack timer's own check counts
redeliveries, so it does not fire on the last delivery; the server finds the exhausted
message only when it looks for the next one to deliver, which it does to answer a pull.

MSG_TERMINATED advisories are captured too: the bus terminates a delivery right after
writing its dead letter, so each one normally matches an entry; ``reconcile()`` counts the
ones that do not (a handler terminated a message itself, or the entry was replayed since).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from buslib._nats.protocol import ErrorCode
from buslib.dlq.entry import DeadLetter, parse_timestamp
from buslib.tracing import parse_traceparent

__all__ = [
    "ADVISORY_STREAM",
    "MAX_DELIVERIES_PREFIX",
    "TERMINATED_PREFIX",
    "Advisory",
    "consumer_config",
    "ensure_advisory_stream",
]

ADVISORY_STREAM = "DLQ_ADVISORIES"
MAX_DELIVERIES_PREFIX = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
TERMINATED_PREFIX = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED"
_ADVISORY_MAX_AGE = 7 * 24 * 3600.0  # a week: long enough to reconcile after a weekend outage


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
            kind = {
                "io.nats.jetstream.advisory.v1.max_deliver": "max_deliveries",
                "io.nats.jetstream.advisory.v1.terminated": "terminated",
            }[body["type"]]
            stamp = body.get("timestamp")
            return cls(
                kind=kind,
                stream=str(body["stream"]),
                consumer=str(body["consumer"]),
                stream_seq=int(body["stream_seq"]),
                deliveries=int(body.get("deliveries", 0)),
                timestamp=parse_timestamp(stamp) if stamp else None,
                reason=body.get("reason") or None,
            )
        except (ValueError, KeyError, TypeError):
            return None

    def dead_letter(self, original: tuple[str, bytes, dict[str, str]] | None) -> DeadLetter:
        """The dead letter for this MAX_DELIVERIES advisory: ``original`` is (subject, data, headers)
        from the stream, or None when the stream no longer has it."""
        if original is not None:
            subject, data, headers = original
            reason = (
                f"The last of {self.deliveries} deliveries was never acknowledged (the worker hung past its ack "
                "timeout or crashed on it). Found from the server's MAX_DELIVERIES advisory."
            )
        else:
            subject, data, headers = "", b"", {}
            reason = (
                f"Delivered {self.deliveries} times without an acknowledgement, and the original is no "
                f"longer in stream {self.stream} (removed by limits or by hand): the payload is lost."
            )
        trace = parse_traceparent(headers.get("traceparent"))
        return DeadLetter(
            id=0,
            subject=subject,
            reason=reason,
            kind="exhausted",
            group=self.consumer.split("__")[0],  # the bus names durables <group>__<subject>
            consumer=self.consumer,
            stream=self.stream,
            stream_seq=self.stream_seq,
            num_delivered=self.deliveries,
            first_failure_at=None,
            last_failure_at=self.timestamp,
            trace_id=trace.trace_id if trace else None,
            data=data,
            headers=headers,
            source="advisory",
        )


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
        if err.err_code == ErrorCode.STREAM_NAME_IN_USE:
            return name  # same name, a tuned config (e.g. another max_age): use it as it is
        if err.err_code != ErrorCode.SUBJECTS_OVERLAP:
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
