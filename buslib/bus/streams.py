"""Streams for the bus: which stream stores a subject, created on demand, checked for drift.

>>> streams = StreamDirectory(nc)                                  # doctest: +SKIP
>>> (await streams.ensure("orders.created.v1")).config.subjects    # doctest: +SKIP
['orders.>']
>>> await streams.stream_for("orders.created.v1")                  # doctest: +SKIP
'ORDERS'

By convention ``orders.created.v1`` lives in stream ``ORDERS`` with subjects ``orders.>``,
file storage and a 120 s duplicate window. A stream the bus creates keeps messages for
:data:`DEFAULT_MAX_AGE` (7 days) unless told otherwise, with no size limit of its own (see
:meth:`StreamDirectory.ensure` for why). A lookup is asked of the server once per subject
and remembered; a stream that vanishes is forgotten and looked up again.
"""

from __future__ import annotations

import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StorageType, StreamConfig, StreamInfo

from buslib._nats.info import api_level
from buslib._nats.protocol import ErrorCode
from buslib.bus import partitions as parts
from buslib.bus.drift import differences, normalized
from buslib.errors import BusError, ConfigDriftError, PublishError
from buslib.events import Event
from buslib.subjects import check_subject, stream_name_for, subject_matches

__all__ = ["DEFAULT_MAX_AGE", "DUPLICATE_WINDOW", "FAST_INGEST_API_LEVEL", "StreamDirectory", "subject_of"]

log = logging.getLogger("buslib")

DUPLICATE_WINDOW = 120.0  # seconds: a retried publish within this window is stored once
DEFAULT_MAX_AGE = 7 * 24 * 3600.0  # seconds: what a stream the bus creates keeps, unless told otherwise
FAST_INGEST_API_LEVEL = 4  # server API level that has fast-ingest batch publishing (2.14+)


def subject_of(target: type[Event] | str) -> str:
    """The subject of an event type, or the subject itself."""
    if isinstance(target, type) and issubclass(target, Event):
        return target.subject()
    if isinstance(target, str):
        return target
    raise TypeError(f"Expected an Event subclass or a subject string, got {target!r}.")


class StreamDirectory:
    """Which stream stores which subject, for one connection.

    Args:
        nc: a connected nats-py client.
        auto_create: create the conventional stream for a subject no stream covers; if
            False, publishing there raises ``PublishError``.
    """

    def __init__(self, nc: Client, *, auto_create: bool = True) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.auto_create = auto_create
        self._stream_of_subject: dict[str, str] = {}  # a subject or a stream's pattern -> stream name
        self._batched: dict[str, bool] = {}  # stream name -> allow_batched
        self._configs: dict[str, StreamConfig] = {}  # stream name -> its config, as last read

    async def ensure(
        self,
        target: type[Event] | str,
        *,
        name: str | None = None,
        subjects: list[str] | None = None,
        storage: StorageType = StorageType.FILE,
        duplicate_window: float | None = None,
        replicas: int | None = None,
        partitions: int | None = None,
        **overrides: Any,
    ) -> StreamInfo:
        """Create the stream for an event type or subject, or check the existing one.

        See :meth:`buslib.EventBus.ensure_stream` for the arguments and the default limits.
        A new stream gets ``max_age`` 7 days unless ``max_age`` is given (``0`` or ``None``:
        keep forever). An existing stream is compared only on what this call asks for: the
        conventional subjects, storage, retention and duplicate window, ``partitions`` when
        given, and every override passed; never on the default ``max_age``, so a stream
        made before the default existed is not "drift".

        Raises:
            ConfigDriftError: the stream exists with different settings (says which).
            SubjectError: the subject is not valid.
            ValueError: ``partitions`` out of range, or asked for an event type without a key.
            BusError: the server refused the stream (subjects overlap, not enough storage, ...).
        """
        subject = check_subject(subject_of(target), wildcards=True)
        name = name or stream_name_for(subject)
        subjects = subjects or [f"{subject.split('.')[0]}.>"]
        unknown = set(overrides) - set(StreamConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"Unknown stream settings: {', '.join(sorted(unknown))}. See nats.js.api.StreamConfig.")
        if replicas is not None:
            if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= 5:
                raise ValueError(f"replicas is how many nodes keep a copy, 1 to 5 (3 is usual), got {replicas!r}.")
            overrides["num_replicas"] = replicas
        if "max_age" in overrides and overrides["max_age"] is None:
            overrides["max_age"] = 0  # "keep forever", the way the server says it
        max_age = overrides.get("max_age", DEFAULT_MAX_AGE)
        if duplicate_window is None:  # never longer than max_age: the server refuses that (10052)
            duplicate_window = min(DUPLICATE_WINDOW, max_age) if max_age else DUPLICATE_WINDOW
        wanted: dict[str, Any] = {
            "name": name,
            "subjects": subjects,
            "storage": storage,
            "retention": overrides.pop("retention", RetentionPolicy.LIMITS),
            "duplicate_window": duplicate_window,
            **overrides,
        }
        if partitions is not None:
            wanted["subject_transform"] = parts.transform_for(_keyed_subject(target, subject), partitions)
        try:
            info = await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            config = StreamConfig(**{"max_age": DEFAULT_MAX_AGE, **wanted})
            info = await self._create(config, batched="allow_batched" not in overrides)
        transform = wanted.pop("subject_transform", None)
        diffs = differences(info.config, {k: v for k, v in wanted.items() if k != "name"}, unordered=("subjects",))
        if transform is not None:
            diffs += _transform_drift(info.config, subject, transform, partitions or 0)
        if diffs:
            raise ConfigDriftError(
                f"Stream {name!r} already exists with a different configuration:\n  " + "\n  ".join(diffs) + "\n"
                "Nothing was changed. Either update it deliberately (await bus.js.update_stream(name=..., ...), "
                f"knowing what the change does to stored messages) or delete it (await bus.js.delete_stream({name!r}))."
            )
        for s in subjects:
            self._stream_of_subject[s] = name
        self._batched[name] = bool(info.config.allow_batched)
        self._configs[name] = info.config
        return info

    async def _create(self, config: StreamConfig, *, batched: bool) -> StreamInfo:
        if batched and await api_level(self.nc) >= FAST_INGEST_API_LEVEL:
            config.allow_batched = True  # lets publish_many use fast-ingest batches
        try:
            info = await self._add(config)
        except nats.js.errors.APIError as err:
            if err.err_code == ErrorCode.STREAM_NAME_IN_USE:  # created meanwhile by another instance
                return await self.js.stream_info(config.name or "")
            raise BusError(_refusal(config, err)) from None
        log.info("created stream %s %s", config.name, config.subjects)
        return info

    async def _add(self, config: StreamConfig, attempts: int = 3) -> StreamInfo:
        """``add_stream``, asked again when unanswered (the same config again is harmless).

        On a cluster the answer comes once the new stream's replicas have elected their leader,
        which a busy machine may not manage within nats-py's 5 s.
        """
        for attempt in range(attempts):
            try:
                return await self.js.add_stream(config)
            except nats.errors.TimeoutError:
                if attempt == attempts - 1:
                    raise BusError(
                        f"The server did not confirm creating stream {config.name!r} after {attempts} tries of 5 s. "
                        "On a cluster: are most of its nodes up (a new stream needs a majority to elect its "
                        "leader)? Check with `buslib doctor`, then try again: asking again is harmless."
                    ) from None
        raise AssertionError("unreachable")

    async def stream_for(self, subject: str) -> str:
        """The stream that stores ``subject`` (created on demand when allowed).

        Raises:
            PublishError: no stream stores it and ``auto_create`` is off.
        """
        stream = self._stream_of_subject.get(subject)
        if stream is not None:
            return stream
        for pattern, name in self._stream_of_subject.items():
            if subject_matches(pattern, subject):
                self._stream_of_subject[subject] = name
                return name
        stream = await self.find_or_create(
            subject,
            PublishError(
                f"No stream stores subject {subject!r}, so the event was not published.\n"
                f"Create one first: await bus.ensure_stream({subject!r}) (stream {stream_name_for(subject)!r} "
                f"with subjects ['{subject.split('.')[0]}.>']), or `nats stream add`."
            ),
        )
        self._stream_of_subject[subject] = stream
        return stream

    async def find_or_create(self, subject: str, missing: BusError) -> str:
        """The stream that stores ``subject``, asked of the server; created when missing, else ``missing`` is raised."""
        try:
            return await self.js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            if not self.auto_create:
                raise missing from None
            return (await self.ensure(subject)).config.name or ""

    async def find(self, subject: str) -> str | None:
        """The stream that stores ``subject`` according to the server, or None."""
        try:
            return await self.js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            return None

    def forget(self, subject: str | None = None) -> None:
        """Forget what was learned about the stream storing ``subject`` (every stream if None)."""
        if subject is None:
            self._stream_of_subject.clear()
            self._batched.clear()
            self._configs.clear()
            return
        stream = self._stream_of_subject.get(subject)
        self._stream_of_subject = {k: v for k, v in self._stream_of_subject.items() if v != stream}
        self._batched.pop(stream or "", None)
        self._configs.pop(stream or "", None)

    async def allows_batches(self, stream: str) -> bool:
        """Whether ``stream`` accepts fast-ingest batches (``allow_batched``)."""
        if stream not in self._batched:
            self._batched[stream] = bool((await self.js.stream_info(stream)).config.allow_batched)
        return self._batched[stream]

    async def config(self, stream: str, *, fresh: bool = False) -> StreamConfig:
        """The configuration of ``stream`` (read once and remembered, or now with ``fresh``)."""
        if fresh or stream not in self._configs:
            self._configs[stream] = (await self.js.stream_info(stream)).config
        return self._configs[stream]

    async def partitions(self, stream: str, subject: str, *, fresh: bool = False) -> int | None:
        """How many partitions ``stream`` splits the keyed events of ``subject`` into (None: not partitioned)."""
        return parts.partition_count(await self.config(stream, fresh=fresh), subject)

    async def stored_subject(self, stream: str, subject: str) -> str:
        """The subject a message published on ``subject`` is stored under (the partition added, if any)."""
        return parts.stored_subject(await self.config(stream), subject)


def _keyed_subject(target: type[Event] | str, subject: str) -> str:
    """The subject whose keyed events a partitioned stream splits: a keyed contract's, or a plain subject."""
    if isinstance(target, type) and target.event_key is None:
        raise ValueError(
            f"{target.__name__} has no key, so there is nothing to partition on: its events all share the "
            f"subject {subject!r}. Declare the key on the contract, e.g. "
            f'`class {target.__name__}(Event, type="{target.event_type}", key="customer_id")`.'
        )
    if "*" in subject or ">" in subject:
        raise ValueError(f"partitions= needs a subject without wildcards (its keys follow it), got {subject!r}.")
    return subject


def _transform_drift(config: StreamConfig, subject: str, transform: Any, partitions: int) -> list[str]:
    have = config.subject_transform
    if have is not None and (have.src, have.dest) == (transform.src, transform.dest):
        return []
    count = parts.partition_count(config, subject)
    shown = (
        f"{count} partitions" if count else (f"the transform {have.src} -> {have.dest}" if have else "no partitions")
    )
    return [
        f"subject_transform: the server has {shown}, this code asks for {partitions} partitions of {subject}.<key>. "
        "Changing the count moves keys to other partitions while their older events stay where they are, so "
        "per-key order breaks across the change: let every ordered group catch up (lag 0) first"
    ]


def _refusal(config: StreamConfig, err: nats.js.errors.APIError) -> str:
    """Why the server refused to create a stream, and what to do, for a learner."""
    code, name = err.err_code, config.name
    said = f"{err.description} (error {code})"
    if code in (ErrorCode.REPLICAS_NOT_SUPPORTED, ErrorCode.NO_SUITABLE_PEERS):
        return (
            f"Stream {name!r} cannot have {config.num_replicas} replicas here: {said}. Each replica lives on its own "
            f"server, so replicas={config.num_replicas} needs a cluster of at least {config.num_replicas} nodes "
            "(buslib.EmbeddedCluster, or `buslib server --cluster 3`); a single server keeps replicas=1."
        )
    if code in (ErrorCode.INSUFFICIENT_STORAGE, ErrorCode.INSUFFICIENT_MEMORY):
        where = "max_memory_store" if code == ErrorCode.INSUFFICIENT_MEMORY else "max_file_store"
        return (
            f"The server refused to create stream {name!r} with max_bytes={normalized(config.max_bytes)}: {said}. "
            f"A stream's max_bytes is reserved from the server's {where} when the stream is created, even while "
            "it is empty, and the other streams' reservations leave too little. Ask for less, delete streams you "
            "no longer need, or leave max_bytes out (the bus's streams are bounded by max_age)."
        )
    if code == ErrorCode.INVALID_STREAM_CONFIG:
        return (
            f"The server refused the configuration of stream {name!r}: {said}. For example duplicate_window "
            f"({normalized(config.duplicate_window)} s) may not be longer than max_age "
            f"({normalized(config.max_age)} s), and discard_new_per_subject needs discard=DiscardPolicy.NEW."
        )
    return (
        f"The server refused to create stream {name!r} with subjects {config.subjects}: {said}. If another "
        "stream already covers these subjects, use that one (pass name=... and subjects=...) or delete it."
    )
