"""Partitioned streams: the server splits a keyed event type's subjects into N partitions.

>>> transform_for("orders.placed.v1", 4).dest
'orders.placed.v1.{{partition(4,1)}}.{{wildcard(1)}}'
>>> config = StreamConfig(name="ORDERS", subjects=["orders.>"], subject_transform=transform_for("orders.placed.v1", 4))
>>> partition_count(config, "orders.placed.v1"), stored_subject(config, "orders.placed.v1.C-1")
(4, 'orders.placed.v1.0.C-1')
>>> lane_filter("orders.placed.v1", 2), lane_durable("billing__orders_placed_v1", 2)
('orders.placed.v1.2.*', 'billing__orders_placed_v1__p2')

A keyed event is published on ``<subject>.<key>`` (``orders.placed.v1.C-1``). A stream's
``subject_transform`` (server 2.10+, set through the JetStream API: no server config) rewrites
that to ``<subject>.<partition>.<key>`` as it stores the message: the server computes the
partition, FNV-1a 32 of the key token modulo N (:func:`buslib.subjects.partition_of` gives
the same answer). Publishers never know N; the stream does. An ordered group then reads
each partition with a durable of its own (a *lane*, filter ``orders.placed.v1.2.*``) and
``max_ack_pending=1``: one message of a partition in flight at a time, so a retry holds back
the events behind it and every key is handled in order, while the partitions run in parallel.

A stream has exactly one ``subject_transform``, so it partitions one keyed event type; a
subject that does not match the transform's source (``orders.created.v1``, or a replay to
``orders.placed.v1.2.C-1``) is stored unchanged.
"""

from __future__ import annotations

import re

from nats.js.api import StreamConfig, SubjectTransform

from buslib.subjects import fnv1a32

__all__ = [
    "MAX_PARTITIONS",
    "check_partitions",
    "lane_durable",
    "lane_filter",
    "partition_count",
    "stored_subject",
    "transform_for",
]

MAX_PARTITIONS = 256  # an ordered group runs one durable per partition: keep the count sane
_DEST = re.compile(
    r"^(?P<subject>.+)\.\{\{\s*partition\(\s*(?P<n>\d+)\s*,\s*1\s*\)\s*\}\}\.\{\{\s*wildcard\(\s*1\s*\)\s*\}\}$"
)


def check_partitions(partitions: object) -> int:
    """``partitions``, checked: a whole number from 1 to :data:`MAX_PARTITIONS`."""
    if isinstance(partitions, bool) or not isinstance(partitions, int) or not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(
            f"partitions must be a whole number from 1 to {MAX_PARTITIONS}, got {partitions!r}. It is how many "
            "lanes an ordered group runs in parallel (each key always in the same lane)."
        )
    return partitions


def transform_for(subject: str, partitions: int) -> SubjectTransform:
    """The stream transform that partitions ``<subject>.<key>`` into ``<subject>.<p>.<key>``."""
    check_partitions(partitions)
    return SubjectTransform(src=f"{subject}.*", dest=f"{subject}.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}")


def partition_count(config: StreamConfig, subject: str) -> int | None:
    """How many partitions ``config``'s transform splits ``subject``'s keyed events into (None: not partitioned)."""
    transform = config.subject_transform
    if transform is None or transform.src != f"{subject}.*":
        return None
    match = _DEST.match(transform.dest or "")
    if match is None or match["subject"] != subject:
        return None
    return int(match["n"])


def stored_subject(config: StreamConfig, subject: str) -> str:
    """The subject a message published on ``subject`` is stored under in a stream with ``config``.

    ``orders.placed.v1.C-1`` becomes ``orders.placed.v1.0.C-1`` in a stream partitioned on
    ``orders.placed.v1``; any other subject is stored as it is.
    """
    base, _, token = subject.rpartition(".")
    partitions = partition_count(config, base) if base else None
    if partitions is None:
        return subject
    return f"{base}.{fnv1a32(token.encode()) % partitions}.{token}"  # the server hashes the token as sent


def lane_filter(subject: str, partition: int) -> str:
    """The filter of an ordered group's lane for one partition: ``orders.placed.v1.2.*``."""
    return f"{subject}.{partition}.*"


def lane_durable(durable: str, partition: int) -> str:
    """The durable name of an ordered group's lane: the group's durable plus ``__p<partition>``."""
    return f"{durable}__p{partition}"
