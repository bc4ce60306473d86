"""Dead letters: a stream of messages that did not succeed, with reasons, alerts and replay.

>>> dlq = await DeadLetterQueue(bus, on_dead_letter=alerts.append).setup()  # doctest: +SKIP
>>> await bus.subscribe(OrderCreated, group="billing", handler=handle,      # doctest: +SKIP
...                     retry=Retry(max_deliver=3), dead_letters=dlq)       # dlq is the sink
>>> [(d.id, d.kind, d.reason) for d in await dlq.list()]                    # doctest: +SKIP
[(1, 'rejected', 'amount must be positive')]
>>> await dlq.replay(ids=[1])                                               # doctest: +SKIP
ReplayResult(replayed=[1], duplicates=[], failed={})

JetStream has no dead-letter queue of its own: an exhausted message stays in its stream and
the server only publishes an advisory. Here a failed message becomes an *entry* in a
dead-letter stream: the original payload and headers plus ``Bus-DLQ-*`` headers saying where
it came from and why it failed. Entries are written idempotently (``Nats-Msg-Id`` =
``<stream>:<consumer>:<seq>``), so a worker that crashes between writing the entry and
terminating the delivery cannot make two. Each new entry calls ``on_dead_letter`` and
publishes a small JSON alert on ``deadletters.alerts``. ``replay`` republishes entries to
their original subjects (with a ``Bus-Replayed-From`` header) and removes each one only
after its PubAck; ``purge`` removes entries on purpose. Messages whose handler never saw the
last failure (crashed or hung workers) are caught from the server's advisories:
see :mod:`buslib.dlq.advisories` and ``reconcile()``.

A replayed copy is for the group that failed: it carries ``Bus-Replay-Group: <group>``, and
every other group's subscription acknowledges it without calling its handler (they handled
the original already). Go or Node consumers of the same subjects should do the same.

On the command line: ``buslib dlq ls | show ID | replay [IDS] [filters] | purge [IDS] [filters]``.
"""

from __future__ import annotations

import base64
import builtins
import inspect
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js.api import RawStreamMsg, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from buslib._nats.headers import parse_header_block
from buslib._nats.protocol import MSG_ID, ErrorCode, wire_size
from buslib.dlq.advisories import ADVISORY_STREAM, Advisory, consumer_config, ensure_advisory_stream
from buslib.dlq.entry import REPLAY_GROUP, REPLAYED_FROM, DeadLetter
from buslib.dlq.filters import DeadLetterFilter
from buslib.dlq.reconcile import ReconcileResult, reconcile, run_reconciler
from buslib.errors import ConfigDriftError, DeadLetterNotFound, FilterError
from buslib.retry import Failure

__all__ = ["ALERT_SUBJECT", "DEAD_LETTER_STREAM", "DeadLetterQueue", "ReplayResult"]

log = logging.getLogger(__name__)

DEAD_LETTER_STREAM = "DEAD_LETTERS"
ALERT_SUBJECT = "deadletters.alerts"


@dataclass
class ReplayResult:
    """What ``replay`` did.

    Attributes:
        replayed: ids republished (and removed from the dead-letter stream).
        duplicates: of those, ids the target stream already had (an earlier replay was
            interrupted before removal): stored once, not twice.
        failed: id -> why it could not be replayed (those stay in the dead-letter stream).
    """

    replayed: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


class DeadLetterQueue:
    """A dead-letter stream: the sink for a bus subscription, plus list/replay/purge.

    Args:
        bus_or_nc: an ``EventBus`` or a connected nats-py ``Client``.
        stream: the dead-letter stream's name.
        subject_prefix: entries are stored on ``<prefix>.<stream>.<consumer>.<seq>``
            (default ``deadletters.<stream name>``, so several queues can share a server).
        on_dead_letter: called with each new ``DeadLetter`` (sync or async). Its errors are
            logged and kept in ``hook_errors``; they never stop an entry from being stored.
        alert_subject: where a JSON alert is published for each new entry (``None``: no alert).
        watch: source streams whose advisories ``reconcile()`` handles (``None``: all).
        advisory_stream: the stream capturing delivery advisories (shared per server).
        duplicate_window: seconds the stream remembers entry ids (idempotent writes).
    """

    def __init__(
        self,
        bus_or_nc: Any,
        *,
        stream: str = DEAD_LETTER_STREAM,
        subject_prefix: str | None = None,
        on_dead_letter: Callable[[DeadLetter], Any] | None = None,
        alert_subject: str | None = ALERT_SUBJECT,
        watch: Sequence[str] | None = None,
        advisory_stream: str = ADVISORY_STREAM,
        duplicate_window: float = 600.0,
    ) -> None:
        self.nc = _client_of(bus_or_nc)
        self.js = self.nc.jetstream()
        self.stream = stream
        self.prefix = subject_prefix or f"deadletters.{stream}"
        self.on_dead_letter = on_dead_letter
        self.alert_subject = alert_subject
        self.watch = list(watch) if watch is not None else None
        self.advisory_stream = advisory_stream
        self.advisory_consumer = f"dlq_{stream}"
        self.duplicate_window = duplicate_window
        self.hook_errors: list[BaseException] = []
        self.reconciler_errors: list[BaseException] = []

    # -- setup ----------------------------------------------------------------------------
    async def setup(self) -> DeadLetterQueue:
        """Create the dead-letter stream, the advisory stream and this queue's advisory consumer.

        Idempotent. Returns self, so ``dlq = await DeadLetterQueue(bus).setup()`` reads well.

        Raises:
            ConfigDriftError: a stream of that name exists for other subjects.
        """
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.*.*.*"],  # never covers the alert subject
            storage=StorageType.FILE,
            duplicate_window=self.duplicate_window,
            description="buslib dead letters: original payload + headers, Bus-DLQ-* says why",
        )
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            info = await self.js.add_stream(config)
        if info.config.subjects != config.subjects:
            raise ConfigDriftError(
                f"Stream {self.stream} exists with subjects {info.config.subjects}, but a dead-letter queue "
                f"needs {config.subjects}. Pick another stream name, or delete that stream if it is stale."
            )
        self.advisory_stream = await ensure_advisory_stream(self.js, self.advisory_stream)
        wanted = consumer_config(self.advisory_consumer, self.watch)
        try:
            await self.js.add_consumer(self.advisory_stream, wanted)
        except BadRequestError:  # exists with other filters: this queue's watch list changed
            await self.js.delete_consumer(self.advisory_stream, self.advisory_consumer)
            await self.js.add_consumer(self.advisory_stream, wanted)
        return self

    # -- writing entries ------------------------------------------------------------------
    async def __call__(self, failure: Failure) -> DeadLetter:
        """The sink a bus subscription calls: store ``failure`` as an entry, then alert.

        Returns once the entry is stored; the bus then terminates the original delivery.
        Raises when the entry could not be stored (the bus then retries later: nothing lost).
        """
        try:
            consumer = failure.msg.metadata.consumer or failure.group
        except Exception:  # not a JetStream delivery (a hand-made Failure): name it by group
            consumer = failure.group
        return await self._write(
            DeadLetter(
                id=0,
                subject=failure.subject,
                reason=failure.reason,
                kind=failure.kind,
                group=failure.group,
                consumer=consumer,
                stream=failure.stream,
                stream_seq=failure.stream_seq,
                num_delivered=failure.num_delivered,
                first_failure_at=failure.first_failure_at,
                last_failure_at=failure.last_failure_at,
                trace_id=failure.trace_id,
                data=getattr(failure.msg, "data", b"") or b"",
                headers=dict(getattr(failure.msg, "headers", None) or {}),
            )
        )

    async def write_from_advisory(self, advisory: Advisory) -> DeadLetter:
        """Dead-letter the message a MAX_DELIVERIES advisory names (used by ``reconcile``)."""
        try:
            raw = await self.js.get_msg(advisory.stream, advisory.stream_seq)
        except NotFoundError:  # removed by limits or by hand since
            return await self._write(advisory.dead_letter(None))
        return await self._write(advisory.dead_letter((raw.subject or "", raw.data or b"", _headers_of(raw))))

    async def has_entry_for(self, stream: str, consumer: str, stream_seq: int) -> bool:
        """Whether a message (source stream, consumer, sequence) is already in the queue."""
        try:
            await self.js.get_last_msg(self.stream, self._entry_subject(stream, consumer, stream_seq))
            return True
        except NotFoundError as err:
            if err.err_code == ErrorCode.STREAM_NOT_FOUND:  # the dead-letter stream itself is gone: do not guess
                raise self._missing() from None
            return False

    async def _write(self, entry: DeadLetter) -> DeadLetter:
        stored = _stored_headers(entry)
        if wire_size(entry.data, stored) > self.nc.max_payload:  # the server would close the connection
            entry = entry.without_original(wire_size(entry.data, entry.headers), self.nc.max_payload)
            stored = _stored_headers(entry)
        subject = self._entry_subject(entry.stream, entry.consumer, entry.stream_seq)
        ack = await self.js.publish(subject, entry.data, headers=stored)
        entry = DeadLetter.from_stored(ack.seq, entry.data, stored)
        if ack.duplicate:  # written before (a crash, a retry): already announced
            try:
                return await self.get(ack.seq)
            except DeadLetterNotFound:  # ... and already replayed or purged since
                return entry
        await self._announce(entry)
        return entry

    async def _original(self, entry: DeadLetter) -> tuple[bytes, dict[str, str]]:
        """The original's payload and headers: the entry's copy, or from its stream if it was too large to copy."""
        if not entry.not_copied:
            return entry.data, entry.headers
        try:
            raw = await self.js.get_msg(entry.stream, entry.stream_seq)
        except NotFoundError:
            raise DeadLetterNotFound(
                f"Entry {entry.id} holds no copy of its original (it was too large), and stream {entry.stream} "
                f"no longer has it at sequence {entry.stream_seq}: there is nothing to replay."
            ) from None
        return raw.data or b"", _headers_of(raw)

    def _entry_subject(self, stream: str, consumer: str, seq: int) -> str:
        return f"{self.prefix}.{stream}.{consumer}.{seq}"

    async def _announce(self, entry: DeadLetter) -> None:
        if self.on_dead_letter is not None:
            try:
                result = self.on_dead_letter(entry)
                if inspect.isawaitable(result):
                    await result
            except Exception as err:  # an alert hook's bug must not block dead-lettering
                self.hook_errors.append(err)
                log.warning("on_dead_letter hook failed for entry %s: %r", entry.id, err)
        if self.alert_subject and self.nc is not None:
            alert = {"dlq": self.stream, **entry.summary()}
            await self.nc.publish(self.alert_subject, json.dumps(alert).encode())

    # -- safety net -----------------------------------------------------------------------
    async def reconcile(self) -> ReconcileResult:
        """Dead-letter every message whose MAX_DELIVERIES advisory arrived since the last pass.

        Each advisory is handled once (a durable consumer on the advisory stream). See
        :mod:`buslib.dlq.advisories` for when the server sends them.
        """
        return await reconcile(self)

    async def run_reconciler(self, *, interval: float = 5.0) -> None:
        """Reconcile every ``interval`` seconds until cancelled (``asyncio.create_task(dlq.run_reconciler())``).

        Errors are kept in ``reconciler_errors`` and the loop goes on: a server restart
        must not end the safety net.
        """
        await run_reconciler(self, interval=interval, errors=self.reconciler_errors)

    # -- operations -----------------------------------------------------------------------
    async def entries(self) -> list[DeadLetter]:
        """Every entry, oldest first."""
        found: list[DeadLetter] = []
        seq = 1
        while True:
            try:
                raw = await self.js.get_msg(self.stream, seq=seq, subject=f"{self.prefix}.>", next=True)
            except NotFoundError as err:
                if err.err_code == ErrorCode.STREAM_NOT_FOUND:  # the stream itself is missing
                    raise self._missing() from None
                return found
            seq = raw.seq or seq
            found.append(DeadLetter.from_stored(seq, raw.data, _headers_of(raw)))
            seq += 1

    async def list(self, filters: DeadLetterFilter | None = None) -> list[DeadLetter]:
        """Entries matching ``filters`` (all when ``None``), oldest first."""
        return [e for e in await self.entries() if filters is None or filters.matches(e)]

    async def count(self) -> int:
        """How many entries the queue holds."""
        try:
            return (await self.js.stream_info(self.stream)).state.messages
        except NotFoundError:
            raise self._missing() from None

    async def get(self, entry_id: int) -> DeadLetter:
        """One entry by id.

        Raises:
            DeadLetterNotFound: no entry has that id (never existed, replayed or purged).
        """
        try:
            raw = await self.js.get_msg(self.stream, int(entry_id))
        except NotFoundError as err:
            if err.err_code == ErrorCode.STREAM_NOT_FOUND:
                raise self._missing() from None
            raise DeadLetterNotFound(
                f"No dead letter with id {entry_id} in {self.stream}: it never existed, or it was replayed or "
                "purged. `buslib dlq ls` lists the ids there are."
            ) from None
        return DeadLetter.from_stored(raw.seq or int(entry_id), raw.data, _headers_of(raw))

    async def replay(
        self, filters: DeadLetterFilter | None = None, *, ids: Iterable[int] | None = None
    ) -> ReplayResult:
        """Republish entries to their original subjects, for the group that failed; remove each after its PubAck.

        The copy is for the entry's group only: it carries ``Bus-Replay-Group: <group>``, and
        the subscriptions of every other group acknowledge it without handling it (each
        group's durable still receives it: one stream, one subject). The copy keeps the original headers (``Nats-*`` publish instructions dropped), adds
        ``Bus-Replayed-From: <dlq stream>:<id>`` and gets ``Nats-Msg-Id: replay:<dlq stream>:<id>``:
        a fresh id (the original event id may still be in the stream's duplicate window and
        would silently drop the copy) that is the same for every replay of one entry, so an
        interrupted replay repeated later stores one copy, not two.

        Args:
            filters: which entries (ignored ids aside, ``None`` means all).
            ids: exact entry ids instead of filters.
        """
        result = ReplayResult()
        for entry in await self._select(filters, ids, result.failed):
            try:
                data, original = await self._original(entry)
            except DeadLetterNotFound as err:
                result.failed[entry.id] = str(err)
                continue
            headers = {k: v for k, v in original.items() if not k.lower().startswith("nats-")}
            headers[REPLAYED_FROM] = f"{self.stream}:{entry.id}"
            if entry.group:
                headers[REPLAY_GROUP] = entry.group  # the other groups handled the original already
            headers[MSG_ID] = f"replay:{self.stream}:{entry.id}"
            if (size := wire_size(data, headers)) > self.nc.max_payload:
                result.failed[entry.id] = (
                    f"The copy would be {size} bytes with its replay headers, over the server's max_payload "
                    f"of {self.nc.max_payload}: it cannot be replayed as it is (the entry stays)."
                )
                continue
            try:
                ack = await self.js.publish(entry.subject, data, headers=headers)
            except Exception as err:  # no stream for the subject any more, server refused, ...
                result.failed[entry.id] = f"{type(err).__name__}: {err}"
                continue
            await self.js.delete_msg(self.stream, entry.id)
            result.replayed.append(entry.id)
            if ack.duplicate:
                result.duplicates.append(entry.id)
        return result

    async def purge(
        self, filters: DeadLetterFilter | None = None, *, ids: Iterable[int] | None = None, everything: bool = False
    ) -> builtins.list[int]:
        """Delete entries on purpose; return their ids.

        Raises:
            FilterError: neither filters, ids nor ``everything=True`` were given (a safety catch).
        """
        if ids is None and (filters is None or filters.empty) and not everything:
            raise FilterError(
                "purge needs ids, a filter, or everything=True: it deletes entries for good. Nothing was deleted."
            )
        missing: dict[int, str] = {}
        removed = []
        for entry in await self._select(filters, ids, missing):
            await self.js.delete_msg(self.stream, entry.id)
            removed.append(entry.id)
        if missing and not removed and len(set(missing.values())) == 1:
            raise DeadLetterNotFound(next(iter(missing.values())))  # one cause, e.g. no such stream: say it plainly
        if missing:
            raise DeadLetterNotFound(f"Purged {removed}, but these ids are not in {self.stream}: {sorted(missing)}.")
        return removed

    async def _select(
        self, filters: DeadLetterFilter | None, ids: Iterable[int] | None, missing: dict[int, str]
    ) -> builtins.list[DeadLetter]:
        if ids is None:
            return await self.list(filters)
        chosen = []
        for entry_id in ids:
            try:
                entry = await self.get(entry_id)
            except DeadLetterNotFound as err:
                missing[int(entry_id)] = str(err)
                continue
            if filters is None or filters.matches(entry):
                chosen.append(entry)
        return chosen

    def _missing(self) -> DeadLetterNotFound:
        return DeadLetterNotFound(
            f"There is no dead-letter stream {self.stream} on this server yet. It is created by "
            "`await DeadLetterQueue(bus).setup()`. Check the stream name and which server you are connected to."
        )


# -- helpers ---------------------------------------------------------------------------------
def _client_of(bus_or_nc: Any) -> Client:
    if isinstance(bus_or_nc, Client):
        return bus_or_nc
    nc = getattr(bus_or_nc, "nc", None)  # an EventBus
    if isinstance(nc, Client):
        return nc
    raise TypeError(
        f"DeadLetterQueue needs an EventBus or a connected nats Client, not {type(bus_or_nc).__name__}. "
        "(A JetStream context is not enough: alerts are published on the connection.)"
    )


def _stored_headers(entry: DeadLetter) -> dict[str, str]:
    stored = entry.stored_headers()
    # The same message always gets the same id: a second write is dropped as a duplicate.
    stored[MSG_ID] = f"{entry.stream}:{entry.consumer}:{entry.stream_seq}"
    return stored


def _headers_of(raw: RawStreamMsg) -> dict[str, str]:
    # nats-py's get_msg parses headers with the email parser, which mangles non-ASCII
    # values; the raw block is still there, so read it ourselves.
    if not raw.hdrs:
        return {}
    return parse_header_block(base64.b64decode(raw.hdrs))
