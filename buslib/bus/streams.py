"""Streams for the bus: which stream stores a subject, created on demand, checked for drift.

>>> streams = StreamDirectory(nc)                                  # doctest: +SKIP
>>> (await streams.ensure("orders.created.v1")).config.subjects    # doctest: +SKIP
['orders.>']
>>> await streams.stream_for("orders.created.v1")                  # doctest: +SKIP
'ORDERS'

By convention ``orders.created.v1`` lives in stream ``ORDERS`` with subjects ``orders.>``,
file storage and a 120 s duplicate window. A lookup is asked of the server once per subject
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
from buslib.bus.drift import differences
from buslib.errors import BusError, ConfigDriftError, PublishError
from buslib.events import Event
from buslib.subjects import check_subject, stream_name_for, subject_matches

__all__ = ["DUPLICATE_WINDOW", "FAST_INGEST_API_LEVEL", "StreamDirectory", "subject_of"]

log = logging.getLogger("buslib")

DUPLICATE_WINDOW = 120.0  # seconds: a retried publish within this window is stored once
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

    async def ensure(
        self,
        target: type[Event] | str,
        *,
        name: str | None = None,
        subjects: list[str] | None = None,
        storage: StorageType = StorageType.FILE,
        duplicate_window: float = DUPLICATE_WINDOW,
        replicas: int | None = None,
        **overrides: Any,
    ) -> StreamInfo:
        """Create the stream for an event type or subject, or check the existing one.

        See :meth:`buslib.EventBus.ensure_stream` for the arguments.

        Raises:
            ConfigDriftError: the stream exists with different settings (says which).
            SubjectError: the subject is not valid.
            BusError: the server refused the stream (e.g. subjects overlap another stream).
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
        wanted: dict[str, Any] = {
            "name": name,
            "subjects": subjects,
            "storage": storage,
            "retention": overrides.pop("retention", RetentionPolicy.LIMITS),
            "duplicate_window": duplicate_window,
            **overrides,
        }
        try:
            info = await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            info = await self._create(StreamConfig(**wanted), batched="allow_batched" not in overrides)
        diffs = differences(info.config, {k: v for k, v in wanted.items() if k != "name"}, unordered=("subjects",))
        if diffs:
            raise ConfigDriftError(
                f"Stream {name!r} already exists with a different configuration:\n  " + "\n  ".join(diffs) + "\n"
                "Nothing was changed. Either update it deliberately (await bus.js.update_stream(name=..., ...), "
                f"knowing what the change does to stored messages) or delete it (await bus.js.delete_stream({name!r}))."
            )
        for s in subjects:
            self._stream_of_subject[s] = name
        self._batched[name] = bool(info.config.allow_batched)
        return info

    async def _create(self, config: StreamConfig, *, batched: bool) -> StreamInfo:
        if batched and await api_level(self.nc) >= FAST_INGEST_API_LEVEL:
            config.allow_batched = True  # lets publish_many use fast-ingest batches
        try:
            info = await self._add(config)
        except nats.js.errors.APIError as err:
            if err.err_code == ErrorCode.STREAM_NAME_IN_USE:  # created meanwhile by another instance
                return await self.js.stream_info(config.name or "")
            if err.err_code in (ErrorCode.REPLICAS_NOT_SUPPORTED, ErrorCode.NO_SUITABLE_PEERS):
                raise BusError(
                    f"Stream {config.name!r} cannot have {config.num_replicas} replicas here: {err.description} "
                    f"(error {err.err_code}). Each replica lives on its own server, so replicas={config.num_replicas} "
                    f"needs a cluster of at least {config.num_replicas} nodes (buslib.EmbeddedCluster, or "
                    "`buslib server --cluster 3`); a single server keeps replicas=1."
                ) from None
            if not isinstance(err, nats.js.errors.BadRequestError):
                raise
            raise BusError(
                f"The server refused to create stream {config.name!r} with subjects {config.subjects}: "
                f"{err.description} (error {err.err_code}). If another stream already covers these subjects, "
                "use that one (pass name=... and subjects=...) or delete it."
            ) from None
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
            return
        stream = self._stream_of_subject.get(subject)
        self._stream_of_subject = {k: v for k, v in self._stream_of_subject.items() if v != stream}
        self._batched.pop(stream or "", None)

    async def allows_batches(self, stream: str) -> bool:
        """Whether ``stream`` accepts fast-ingest batches (``allow_batched``)."""
        if stream not in self._batched:
            self._batched[stream] = bool((await self.js.stream_info(stream)).config.allow_batched)
        return self._batched[stream]
