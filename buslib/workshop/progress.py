"""The room's progress records, read by the instructor: the ``PROGRESS`` stream of the instructor's account.

>>> reader = await ProgressReader(nc).start()       # doctest: +SKIP
>>> await reader.catch_up()                         # doctest: +SKIP
>>> records = await reader.read()                   # every record so far, then only new ones
>>> records[0].account, records[0].key, records[0].status        # doctest: +SKIP
('L07', '01/q2', 'incorrect')

Each learner's ``check()`` publishes on ``buslib.progress`` in their own account (see
:mod:`buslib.exercises.recording`); the server delivers it to the instructor's account as
``progress.<ACCOUNT>``. The learner is taken from that subject only: a ``learner`` (or any
other name) in the payload is ignored, so nobody can record for somebody else. Each learner
has one subject, and the stream keeps at most ``RECORDS_PER_LEARNER`` of each, so a learner
who floods it only pushes out their own oldest records.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from buslib._nats.info import connection_account
from buslib._nats.protocol import API_PREFIX, ErrorCode
from buslib.connection import INSTRUCTOR_ACCOUNT, connect, is_workshop_server, redact
from buslib.errors import WorkshopError
from buslib.workshop.config import PROGRESS_PREFIX, PROGRESS_STREAM

__all__ = [
    "MAX_RECORD_BYTES",
    "RECORDS_PER_LEARNER",
    "STATUSES",
    "ProgressReader",
    "Record",
    "connect_instructor",
    "ensure_progress_stream",
    "parse_record",
    "progress_stream_config",
    "read_progress",
]

RECORDS_PER_LEARNER = 1000  # a learner checking each of 17 questions ten times writes 170
MAX_RECORD_BYTES = 4096  # a record is about 300 bytes; larger ones are refused by the stream
STATUSES = ("correct", "incorrect", "not attempted", "error")
BATCH = 256  # records per direct get request


@dataclass(frozen=True)
class Record:
    """One check, as the instructor sees it.

    Attributes:
        seq: its position in the PROGRESS stream.
        account: the learner's account (``L07``), from the subject the server set.
        exercise / question / title: which question (``"01"``, ``"q2"``, what it asks).
        status: correct, incorrect, not attempted or error.
        message: the feedback the learner saw (shortened).
        time: when it was checked (epoch seconds, when the server stored the record).
        check_ms: how long the check took.
    """

    seq: int
    account: str
    exercise: str
    question: str
    title: str
    status: str
    message: str
    time: float
    check_ms: float | None = None

    @property
    def key(self) -> str:
        """``"01/q2"``: exercise and question."""
        return f"{self.exercise}/{self.question}"


def parse_record(subject: str, data: bytes, seq: int = 0, *, received: float | None = None) -> Record | None:
    """A record from one PROGRESS message, or None when it is not one (anything can be published).

    The account comes from ``subject`` (``progress.<ACCOUNT>``), never from ``data``; the time
    is ``received`` (when the server stored it) when given, else the learner's own clock.
    """
    prefix = PROGRESS_PREFIX + "."
    account = subject[len(prefix) :] if subject.startswith(prefix) else ""
    if not account or "." in account:
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    status = payload.get("status")
    exercise, question = payload.get("exercise"), payload.get("question")
    if status not in STATUSES or not isinstance(exercise, str) or not isinstance(question, str):
        return None
    try:
        when = received if received is not None else float(payload.get("time") or 0.0)
        check_ms = float(payload["check_ms"]) if payload.get("check_ms") is not None else None
    except (TypeError, ValueError):
        return None
    return Record(
        seq=seq,
        account=account,
        exercise=exercise[:16],
        question=question[:16],
        title=str(payload.get("title") or "")[:200],
        status=status,
        message=str(payload.get("message") or "")[:1000],
        time=when,
        check_ms=check_ms,
    )


def progress_stream_config(*, replicas: int = 1) -> StreamConfig:
    """The PROGRESS stream: one subject per learner, bounded per learner; ``replicas`` copies (3 on a cluster)."""
    return StreamConfig(
        name=PROGRESS_STREAM,
        description="buslib workshop: every learner's check results (progress.<ACCOUNT>)",
        subjects=[f"{PROGRESS_PREFIX}.>"],
        storage=StorageType.FILE,
        max_msgs_per_subject=RECORDS_PER_LEARNER,
        max_msg_size=MAX_RECORD_BYTES,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        allow_direct=True,  # the board reads by sequence, from any copy (ProgressReader)
    )


async def ensure_progress_stream(js: Any, *, replicas: int | None = None) -> None:
    """Create the PROGRESS stream in the instructor's account (or bring an older one up to date).

    Args:
        replicas: copies on that many nodes (3 on a cluster room, so the records survive a lost
            node); ``None`` keeps an existing stream's (the board's call), 1 for a new one.
    """
    if replicas is None:
        try:
            replicas = (await js.stream_info(PROGRESS_STREAM)).config.num_replicas or 1
        except nats.js.errors.NotFoundError:
            replicas = 1
    config = progress_stream_config(replicas=replicas)
    timeouts, refusals = 0, 0
    while True:  # asking again is safe: the same config is accepted
        try:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError as err:
                if err.err_code != ErrorCode.STREAM_NAME_IN_USE:  # exists with another configuration
                    raise
                await js.update_stream(config)
            return
        except nats.errors.TimeoutError:  # a fresh cluster's first R3 stream waits for elections: seen > 5 s on 2.11
            timeouts += 1
            if timeouts == 3:
                raise
        except nats.js.errors.BadRequestError as err:
            # A fresh cluster's meta leader may count a running node offline for a moment (2.11, under
            # load, even after the cluster was ready): "no suitable peers for placement, peer offline".
            refusals += 1
            if err.err_code != ErrorCode.NO_SUITABLE_PEERS or "offline" not in str(err.description) or refusals == 20:
                raise  # anything else, e.g. more copies than nodes, is not going to change
            await asyncio.sleep(0.5)


class ProgressReader:
    """Reads the PROGRESS stream from its start, then what is new at each ``catch_up``.

    No consumer: it asks the stream for the records after the last one it has, in batches
    (JetStream's direct get), which any node holding a copy answers. So on a cluster room it
    keeps reading while a lost node's streams elect new leaders, and a board leaves nothing
    behind on the server.

    Args:
        nc: a connection to the instructor's account (:func:`connect_instructor`).
        timeout: seconds to wait for one answer of the server.
    """

    def __init__(self, nc: Any, *, timeout: float = 5.0) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._timeout = timeout
        self._pending: list[Record] = []
        self.last_seq = 0
        self.skipped = 0  # messages that were not records (garbage a learner published)

    async def start(self, *, timeout: float = 10.0) -> ProgressReader:
        """Make sure the stream answers direct gets (a room made by an older kit: switched on here).

        Args:
            timeout: seconds to keep asking for the stream's info. Only the stream's leader
                answers it, and a cluster room's fresh stream may have none for a moment
                (seen unanswered under load on 2.11), so an unanswered request is asked again.

        Raises:
            WorkshopError: the stream does not exist (nothing prepared it yet).
            nats.errors.TimeoutError: no answer within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = await self._js.stream_info(PROGRESS_STREAM)
                break
            except nats.js.errors.NotFoundError:
                raise WorkshopError(
                    "This workshop server has no PROGRESS stream, so no check has been recorded. `buslib workshop "
                    "serve` and the board create it; start the board before learners begin when the room runs in Docker."
                ) from None
            except nats.errors.TimeoutError:
                if time.monotonic() >= deadline:
                    raise
        if not info.config.allow_direct:
            info.config.allow_direct = True
            await self._js.update_stream(info.config)
        return self

    async def read(self) -> list[Record]:
        """The records that arrived since the last call (the first call: all so far)."""
        records, self._pending = self._pending, []
        return records

    async def catch_up(self, *, timeout: float = 10.0) -> bool:
        """Fetch every record stored when called; False if ``timeout`` passed first.

        "Stored" as the stream's leader counts it; while the stream has no leader (a cluster
        room electing one), what the copies that answer hold.
        """
        deadline = time.monotonic() + timeout
        try:
            info = await self._js.stream_info(PROGRESS_STREAM)
            target = info.state.last_seq if info.state.messages else 0
        except (nats.errors.Error, asyncio.TimeoutError):  # no leader right now: read what the copies have
            target = None
        while time.monotonic() < deadline:
            try:
                pending = await self._fetch(min(self._timeout, max(0.1, deadline - time.monotonic())))
            except nats.errors.TimeoutError:  # no copy answered in time (e.g. reconnecting): ask again
                continue
            if not pending and (target is None or self.last_seq >= target):
                return True
            if not pending:  # a copy a little behind the leader answered: ask again
                await asyncio.sleep(0.02)
        return False

    async def _fetch(self, timeout: float) -> int:
        """One batch of records after ``last_seq``; returns how many more the stream holds after it."""
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        request = {"seq": self.last_seq + 1, "next_by_subj": f"{PROGRESS_PREFIX}.>", "batch": BATCH}
        try:
            await self._nc.publish(f"{API_PREFIX}.DIRECT.GET.{PROGRESS_STREAM}", json.dumps(request).encode(), inbox)
            while True:
                msg = await sub.next_msg(timeout=timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "404":  # nothing after last_seq
                    return 0
                if status:  # 204: the end of this batch
                    return int(headers.get("Nats-Num-Pending") or 0)
                self._take(headers, msg.data)
        finally:
            with contextlib.suppress(Exception):  # the connection may be closing already
                await sub.unsubscribe()

    def _take(self, headers: dict[str, str], data: bytes) -> None:
        seq = int(headers["Nats-Sequence"])
        self.last_seq = max(self.last_seq, seq)
        # The time the server stored it: the same clock for every learner, and not theirs to set.
        received = _timestamp(headers.get("Nats-Time-Stamp", ""))
        record = parse_record(headers.get("Nats-Subject", ""), data, seq, received=received)
        if record is None:
            self.skipped += 1
        else:
            self._pending.append(record)

    async def stop(self) -> None:
        """Nothing to release on the server (no consumer); kept for symmetry with ``start``."""


def _timestamp(text: str) -> float | None:
    """Epoch seconds from a JetStream time stamp (``2026-12-01T23:45:28.335447105Z``), or None."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if not match:
        return None
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    whole = dt.datetime.fromisoformat(match.group(1) + zone).timestamp()
    return whole + float("0." + match.group(2)) if match.group(2) else whole


async def read_progress(nc: Any, *, timeout: float = 10.0) -> list[Record]:
    """Every record in the PROGRESS stream now, oldest first.

    Args:
        nc: a connection to the instructor's account (:func:`connect_instructor`).
        timeout: seconds to wait for the stream to answer, and then again to read its records.

    Raises:
        WorkshopError: the stream does not exist (nothing prepared it yet).
    """
    reader = await ProgressReader(nc).start(timeout=timeout)
    await reader.catch_up(timeout=timeout)
    return await reader.read()


async def connect_instructor(url: str, *, name: str = "buslib-workshop", tls: Any = None) -> Any:
    """Connect as a workshop's instructor, or say clearly why this URL is not that.

    Raises:
        WorkshopError: the server is not a workshop server, or the URL is not the instructor's.
        ConnectError: the server cannot be reached, or refused the credentials.
    """
    nc = await connect(url, name=name, instructor=True, tls=tls, require_jetstream=False)
    try:
        if not is_workshop_server(nc):
            raise WorkshopError(
                f"{redact(url)} is not a workshop server (buslib workshop serve names its server buslib-workshop-...). "
                "Give the instructor's URL of the room (BUSLIB_WORKSHOP_URL in its instructor.env)."
            )
        account = await connection_account(nc)
        if account != INSTRUCTOR_ACCOUNT:
            raise WorkshopError(
                f"{redact(url)} is not the instructor's URL: it logs in to account {account}. "
                "The room's progress is in the instructor's account: use BUSLIB_WORKSHOP_URL from the room's instructor.env."
            )
    except BaseException:
        await nc.close()
        raise
    return nc
