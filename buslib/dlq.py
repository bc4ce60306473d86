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
see ``buslib.advisories`` and ``reconcile()``.

On the command line: ``buslib dlq ls | show ID | replay [IDS] [filters] | purge [IDS] [filters]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from buslib import advisories
from buslib.advisories import ADVISORY_STREAM, Advisory, ReconcileResult
from buslib.errors import BusError, ConfigDriftError
from buslib.retry import Failure
from buslib.subjects import subject_matches
from buslib.tracing import parse_traceparent

__all__ = [
    "DEAD_LETTER_STREAM",
    "ALERT_SUBJECT",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterQueue",
    "DeadLetterNotFound",
    "FilterError",
    "ReplayResult",
    "add_cli",
]

log = logging.getLogger(__name__)

DEAD_LETTER_STREAM = "DEAD_LETTERS"
ALERT_SUBJECT = "deadletters.alerts"
REPLAYED_FROM = "Bus-Replayed-From"
_P = "Bus-DLQ-"  # every header the queue adds starts with this
_ORIGINAL = _P + "Original-"  # the original's Nats-* headers, kept but made inert
_REASON_LIMIT = 2000


class FilterError(BusError, ValueError):
    """A dead-letter filter (subject, reason, time, group) cannot be understood."""


class DeadLetterNotFound(BusError, LookupError):
    """No dead-letter entry has the asked-for id."""


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

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly dict of everything but the payload (alerts, tables, ``--json``)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("data", "headers")}
        for key in ("first_failure_at", "last_failure_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out

    @classmethod
    def from_stored(cls, seq: int, data: bytes | None, headers: dict[str, str]) -> DeadLetter:
        """Rebuild an entry from a stored message (raises ``DeadLetterNotFound`` if not one)."""
        if _P + "Subject" not in headers:
            raise DeadLetterNotFound(f"Message {seq} is not a dead-letter entry (it has no {_P}Subject header).")
        # Nats-Msg-Id here is the entry's own id; the original's is under Bus-DLQ-Original-.
        original = {k: v for k, v in headers.items() if not k.startswith(_P) and k.lower() != "nats-msg-id"}
        original.update({k[len(_ORIGINAL) :]: v for k, v in headers.items() if k.startswith(_ORIGINAL)})
        get = headers.get
        return cls(
            id=seq,
            subject=get(_P + "Subject", ""),
            reason=get(_P + "Reason", ""),
            kind=get(_P + "Kind", ""),
            group=get(_P + "Group", ""),
            consumer=get(_P + "Consumer", ""),
            stream=get(_P + "Stream", ""),
            stream_seq=int(get(_P + "Stream-Seq", "0")),
            num_delivered=int(get(_P + "Deliveries", "0")),
            first_failure_at=_time_or_none(get(_P + "First-Failure")),
            last_failure_at=_time_or_none(get(_P + "Last-Failure")),
            trace_id=get(_P + "Trace-Id") or None,
            data=data or b"",
            headers=original,
            source=get(_P + "Source", "worker"),
        )


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which entries an operation applies to; every given field must match.

    Attributes:
        subject: the original subject; NATS wildcards work (``orders.*.v1``, ``orders.>``).
        reason: text the reason contains (case-insensitive), or ``/regex/``.
        since / until: the last failure happened in ``[since, until]`` (UTC).
        group: the consumer group (or consumer name).
    """

    subject: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    group: str | None = None
    _pattern: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(
        cls,
        *,
        subject: str | None = None,
        reason: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        group: str | None = None,
        now: datetime | None = None,
    ) -> DeadLetterFilter:
        """Build a filter from user input; times may be ISO 8601 or relative (``10m`` = 10 minutes ago).

        Raises:
            FilterError: a value cannot be understood; the message says what is accepted.
        """
        now = now or datetime.now(timezone.utc)
        if subject is not None and not _valid_subject_pattern(subject):
            raise FilterError(
                f"--subject {subject!r} is not a valid NATS subject pattern. Use dot-separated tokens, "
                "'*' for one token and '>' for the rest, e.g. orders.created.v1, orders.*.v1 or orders.>."
            )
        start, end = _parse_time(since, "since", now), _parse_time(until, "until", now)
        if start and end and start > end:
            raise FilterError(f"--since ({start.isoformat()}) is after --until ({end.isoformat()}): nothing can match.")
        if group is not None and not group.strip():
            raise FilterError("--group is empty. Give the consumer group's name, e.g. --group billing.")
        return cls(subject, reason, start, end, group, _compile_reason(reason))

    def matches(self, entry: DeadLetter) -> bool:
        """Whether ``entry`` passes every condition of this filter."""
        if self.subject and not subject_matches(self.subject, entry.subject):
            return False
        if self.reason:
            pattern = self._pattern or _compile_reason(self.reason)
            if not pattern.search(entry.reason):
                return False
        when = entry.last_failure_at
        if self.since and (when is None or when < self.since):
            return False
        if self.until and (when is None or when > self.until):
            return False
        return not self.group or self.group in (entry.group, entry.consumer)

    @property
    def empty(self) -> bool:
        """True when the filter matches everything."""
        return not any((self.subject, self.reason, self.since, self.until, self.group))


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
        bus_or_js: an ``EventBus``, a nats-py ``Client`` or a ``JetStreamContext``.
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
        bus_or_js: Any,
        *,
        stream: str = DEAD_LETTER_STREAM,
        subject_prefix: str | None = None,
        on_dead_letter: Callable[[DeadLetter], Any] | None = None,
        alert_subject: str | None = ALERT_SUBJECT,
        watch: Sequence[str] | None = None,
        advisory_stream: str = ADVISORY_STREAM,
        duplicate_window: float = 600.0,
    ) -> None:
        self.js, self.nc = _js_and_nc(bus_or_js)
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
        self.advisory_stream = await advisories.ensure_advisory_stream(self.js, self.advisory_stream)
        wanted = advisories.consumer_config(self.advisory_consumer, self.watch)
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
            data=getattr(failure.msg, "data", b"") or b"",
            headers=dict(getattr(failure.msg, "headers", None) or {}),
            subject=failure.subject,
            stream=failure.stream,
            stream_seq=failure.stream_seq,
            consumer=consumer,
            group=failure.group,
            kind=failure.kind,
            reason=failure.reason,
            num_delivered=failure.num_delivered,
            trace_id=failure.trace_id,
            first=failure.first_failure_at,
            last=failure.last_failure_at,
            source="worker",
        )

    async def write_from_advisory(self, advisory: Advisory) -> DeadLetter:
        """Dead-letter the message a MAX_DELIVERIES advisory names (used by ``reconcile``)."""
        try:
            raw = await self.js.get_msg(advisory.stream, advisory.stream_seq)
            data, headers, subject = raw.data or b"", _headers_of(raw), raw.subject or ""
            reason = (
                f"Delivered {advisory.deliveries} times without an acknowledgement: every ack timeout expired "
                "(the worker hung or crashed). Found from the server's MAX_DELIVERIES advisory."
            )
        except NotFoundError:
            data, headers, subject = b"", {}, ""
            reason = (
                f"Delivered {advisory.deliveries} times without an acknowledgement, and the original is no "
                f"longer in stream {advisory.stream} (removed by limits or by hand): the payload is lost."
            )
        trace = parse_traceparent(headers.get("traceparent"))
        return await self._write(
            data=data,
            headers=headers,
            subject=subject,
            stream=advisory.stream,
            stream_seq=advisory.stream_seq,
            consumer=advisory.consumer,
            group=advisory.consumer.split("__")[0],  # the bus names durables <group>__<subject>
            kind="exhausted",
            reason=reason,
            num_delivered=advisory.deliveries,
            trace_id=trace.trace_id if trace else None,
            first=None,
            last=advisory.timestamp,
            source="advisory",
        )

    async def has_entry_for(self, stream: str, consumer: str, stream_seq: int) -> bool:
        """Whether a message (source stream, consumer, sequence) is already in the queue."""
        try:
            await self.js.get_last_msg(self.stream, self._entry_subject(stream, consumer, stream_seq))
            return True
        except NotFoundError as err:
            if err.err_code == 10059:  # the dead-letter stream itself is gone: do not guess
                raise self._missing() from None
            return False

    async def _write(
        self,
        *,
        data: bytes,
        headers: dict[str, str],
        subject: str,
        stream: str,
        stream_seq: int,
        consumer: str,
        group: str,
        kind: str,
        reason: str,
        num_delivered: int,
        trace_id: str | None,
        first: datetime | None,
        last: datetime | None,
        source: str,
    ) -> DeadLetter:
        stored = {(_ORIGINAL + k if k.lower().startswith("nats-") else k): str(v) for k, v in headers.items()}
        added = {
            "Subject": subject,
            "Stream": stream,
            "Stream-Seq": str(stream_seq),
            "Consumer": consumer,
            "Group": group,
            "Deliveries": str(num_delivered),
            "Kind": kind,
            "Reason": _one_line(reason),
            "First-Failure": first.isoformat() if first else "",
            "Last-Failure": (last or datetime.now(timezone.utc)).isoformat(),
            "Trace-Id": trace_id or "",
            "Source": source,
        }
        stored.update({_P + k: v for k, v in added.items() if v})
        # The same message always gets the same id: a second write is dropped as a duplicate.
        stored["Nats-Msg-Id"] = f"{stream}:{consumer}:{stream_seq}"
        ack = await self.js.publish(self._entry_subject(stream, consumer, stream_seq), data, headers=stored)
        entry = DeadLetter.from_stored(ack.seq, data, stored)
        if ack.duplicate:  # written before (a crash, a retry): already announced
            try:
                return await self.get(ack.seq)
            except DeadLetterNotFound:  # ... and already replayed or purged since
                return entry
        await self._announce(entry)
        return entry

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
        ``buslib.advisories`` for when the server sends them.
        """
        return await advisories.reconcile(self)

    async def run_reconciler(self, *, interval: float = 5.0) -> None:
        """Reconcile every ``interval`` seconds until cancelled (``asyncio.create_task(dlq.run_reconciler())``).

        Errors are kept in ``reconciler_errors`` and the loop goes on: a server restart
        must not end the safety net.
        """
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.reconciler_errors.append(err)
                log.warning("dead-letter reconcile failed, will retry in %.1f s: %r", interval, err)
            await asyncio.sleep(interval)

    # -- operations -----------------------------------------------------------------------
    async def entries(self) -> list[DeadLetter]:
        """Every entry, oldest first."""
        found: list[DeadLetter] = []
        seq = 1
        while True:
            try:
                raw = await self.js.get_msg(self.stream, seq=seq, subject=f"{self.prefix}.>", next=True)
            except NotFoundError as err:
                if err.err_code == 10059:  # the stream itself is missing
                    raise self._missing() from None
                return found
            found.append(DeadLetter.from_stored(raw.seq, raw.data, _headers_of(raw)))
            seq = raw.seq + 1

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
            if err.err_code == 10059:
                raise self._missing() from None
            raise DeadLetterNotFound(
                f"No dead letter with id {entry_id} in {self.stream}: it never existed, or it was replayed or "
                "purged. `buslib dlq ls` lists the ids there are."
            ) from None
        return DeadLetter.from_stored(raw.seq or int(entry_id), raw.data, _headers_of(raw))

    async def replay(
        self, filters: DeadLetterFilter | None = None, *, ids: Iterable[int] | None = None
    ) -> ReplayResult:
        """Republish entries to their original subjects; remove each after its PubAck.

        The copy keeps the original headers (``Nats-*`` publish instructions dropped), adds
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
            headers = {k: v for k, v in entry.headers.items() if not k.lower().startswith("nats-")}
            headers[REPLAYED_FROM] = f"{self.stream}:{entry.id}"
            headers["Nats-Msg-Id"] = f"replay:{self.stream}:{entry.id}"
            try:
                ack = await self.js.publish(entry.subject, entry.data, headers=headers)
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
    ) -> list[int]:
        """Delete entries on purpose; return their ids.

        Raises:
            FilterError: neither filters, ids nor ``everything=True`` were given (a safety catch).
        """
        if ids is None and (filters is None or filters.empty) and not everything:
            raise FilterError(
                "purge needs ids, a filter, or everything=True (on the command line: IDS, --subject/--reason/"
                "--since/--until/--group, or --all). Nothing was deleted."
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
    ) -> list[DeadLetter]:
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
            "`await DeadLetterQueue(bus).setup()`; check --stream and NATS_URL."
        )


# -- helpers ---------------------------------------------------------------------------------
def _js_and_nc(bus_or_js: Any) -> tuple[Any, Any]:
    if hasattr(bus_or_js, "jetstream") and callable(bus_or_js.jetstream):  # a nats-py Client
        return bus_or_js.jetstream(), bus_or_js
    if hasattr(bus_or_js, "js") and hasattr(bus_or_js, "nc"):  # an EventBus
        return bus_or_js.js, bus_or_js.nc
    if hasattr(bus_or_js, "publish") and hasattr(bus_or_js, "_nc"):  # a JetStreamContext
        return bus_or_js, bus_or_js._nc
    raise TypeError(
        f"DeadLetterQueue needs an EventBus, a nats Client or a JetStream context, not {type(bus_or_js).__name__}."
    )


def _headers_of(raw: Any) -> dict[str, str]:
    # nats-py's get_msg parses headers with the email parser, which mangles non-ASCII
    # values; the raw block is still there, so read it as UTF-8 ourselves.
    if not getattr(raw, "hdrs", None):
        return {}
    block = base64.b64decode(raw.hdrs).decode("utf-8", "replace")
    headers = {}
    for line in block.split("\r\n")[1:]:  # the first line is "NATS/1.0"
        name, sep, value = line.partition(":")
        if sep and name.strip():
            headers[name.strip()] = value.strip()
    return headers


def _one_line(text: str) -> str:
    # Header values cannot hold line breaks; long tracebacks are cut.
    flat = " | ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return flat if len(flat) <= _REASON_LIMIT else flat[: _REASON_LIMIT - 1] + "…"


def _time_or_none(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def _parse_time(value: str | datetime | None, name: str, now: datetime) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or timezone.utc) if value else None
    relative = _RELATIVE.match(value)
    if relative:
        return now - timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2).lower()])
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(
            f"--{name} {value!r} is not a time. Use an ISO 8601 time (2026-11-26T19:30, 2026-11-26T19:30:00+01:00; "
            "without a zone it means UTC) or an age like 30s, 10m, 2h, 1d (that long ago)."
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _compile_reason(reason: str | None) -> re.Pattern[str] | None:
    if reason is None:
        return None
    if not reason.strip():
        raise FilterError("--reason is empty. Give text the reason contains (e.g. --reason ValueError) or /regex/.")
    if len(reason) >= 2 and reason.startswith("/") and reason.endswith("/"):
        try:
            return re.compile(reason[1:-1], re.IGNORECASE)
        except re.error as err:
            raise FilterError(
                f"--reason {reason!r} is not a valid regular expression ({err}). "
                "Without the surrounding slashes it is matched as plain text."
            ) from None
    return re.compile(re.escape(reason), re.IGNORECASE)


def _valid_subject_pattern(pattern: str) -> bool:
    tokens = pattern.split(".")
    if any(not t or any(c.isspace() for c in t) for t in tokens):
        return False
    if any(("*" in t and t != "*") or (">" in t and t != ">") for t in tokens):
        return False
    return ">" not in tokens[:-1]


# -- command line ----------------------------------------------------------------------------
def add_cli(subparsers: Any) -> None:
    """Add ``buslib dlq ls | show | replay | purge`` to the ``buslib`` command."""
    dlq = subparsers.add_parser(
        "dlq",
        help="list, show, replay and purge dead letters",
        description="Inspect and operate the dead-letter stream.",
    )
    dlq.add_argument("--url", help="NATS server (default: $NATS_URL, else an embedded server)")
    dlq.add_argument("--stream", default=DEAD_LETTER_STREAM, help=f"dead-letter stream (default {DEAD_LETTER_STREAM})")
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--subject", help="original subject; wildcards ok (orders.*.v1, orders.>)")
        p.add_argument("--reason", help="text the reason contains, or /regex/")
        p.add_argument("--since", help="failed at or after: ISO time (UTC if no zone) or an age like 10m, 2h, 1d")
        p.add_argument("--until", help="failed at or before: ISO time or an age")
        p.add_argument("--group", help="consumer group")

    ls = actions.add_parser("ls", help="list dead letters")
    filters(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    show = actions.add_parser("show", help="show one dead letter with its payload and headers")
    show.add_argument("id", type=_entry_id, help="the entry id (see ls)")
    show.add_argument("--json", action="store_true", help="as JSON")
    replay = actions.add_parser("replay", help="republish dead letters to their original subjects")
    replay.add_argument("ids", nargs="*", type=_entry_id, help="entry ids (default: all matching the filters)")
    filters(replay)
    purge = actions.add_parser("purge", help="delete dead letters")
    purge.add_argument("ids", nargs="*", type=_entry_id, help="entry ids")
    filters(purge)
    purge.add_argument("--all", action="store_true", help="delete every entry (when no ids or filters are given)")
    for p in (ls, show, replay, purge):
        p.set_defaults(func=_run_cli)
        # also accepted after the action: `buslib dlq ls --stream X`
        p.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--stream", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _entry_id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an entry id: ids are whole numbers >= 1 (see `buslib dlq ls`)."
        )
    return int(text)


def _run_cli(args: argparse.Namespace) -> int:
    try:
        chosen = DeadLetterFilter.parse(
            subject=getattr(args, "subject", None),
            reason=getattr(args, "reason", None),
            since=getattr(args, "since", None),
            until=getattr(args, "until", None),
            group=getattr(args, "group", None),
        )
    except FilterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return asyncio.run(_cli(args, chosen))


async def _cli(args: argparse.Namespace, chosen: DeadLetterFilter) -> int:
    from buslib.connection import connect

    nc = await connect(args.url, name="buslib-dlq")
    try:
        dlq = DeadLetterQueue(nc, stream=args.stream, alert_subject=None)
        command = args.dlq_command
        if command == "ls":
            try:
                rows = await dlq.list(chosen)
            except DeadLetterNotFound:
                print(
                    f"No dead letters: there is no stream {args.stream} on this server yet (nothing has failed here)."
                )
                return 0
            if args.json:
                for entry in rows:
                    print(json.dumps(entry.summary()))
            else:
                _print_table(rows, args.stream)
        elif command == "show":
            entry = await dlq.get(args.id)
            if args.json:
                print(
                    json.dumps(
                        {**entry.summary(), "headers": entry.headers, "data": entry.data.decode("utf-8", "replace")},
                        indent=2,
                    )
                )
            else:
                _print_entry(entry)
        elif command == "replay":
            result = await dlq.replay(chosen, ids=args.ids or None)
            print(
                f"replayed {len(result.replayed)} ({len(result.duplicates)} already there from an earlier replay), "
                f"failed {len(result.failed)}"
            )
            for entry_id, why in sorted(result.failed.items()):
                print(f"  {entry_id}: {why}", file=sys.stderr)
            return 1 if result.failed else 0
        else:
            if not args.ids and chosen.empty and not args.all:
                print(
                    "error: purge deletes entries for good: give ids, a filter, or --all. Nothing was deleted.",
                    file=sys.stderr,
                )
                return 2
            removed = await dlq.purge(chosen, ids=args.ids or None, everything=True)
            print(f"purged {len(removed)}: {' '.join(map(str, removed))}".rstrip(": "))
        return 0
    finally:
        await nc.close()


def _print_table(rows: list[DeadLetter], stream: str) -> None:
    if not rows:
        print(f"No dead letters in {stream} match.")
        return
    table = [("ID", "LAST FAILURE", "KIND", "GROUP", "SUBJECT", "DELIV", "REASON")]
    for e in rows:
        when = e.last_failure_at.strftime("%Y-%m-%d %H:%M:%S") if e.last_failure_at else "-"
        reason = e.reason if len(e.reason) <= 60 else e.reason[:59] + "…"
        table.append((str(e.id), when, e.kind, e.group, e.subject, str(e.num_delivered), reason))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    print(f"{len(rows)} dead letter(s). `buslib dlq show ID` shows one; `buslib dlq replay ID` republishes it.")


def _print_entry(entry: DeadLetter) -> None:
    for key, value in entry.summary().items():
        print(f"{key:>17}: {value}")
    print(f"{'headers':>17}:")
    for key, value in entry.headers.items():
        print(f"{'':>19}{key}: {value}")
    print(f"{'data':>17}: {entry.data.decode('utf-8', 'replace')}")
