"""The room's progress records, read by the instructor: the ``PROGRESS`` stream of the instructor's account.

>>> reader = await ProgressReader(js).start()       # doctest: +SKIP
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
import json
import time
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from buslib._nats.info import connection_account
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


def progress_stream_config() -> StreamConfig:
    """The PROGRESS stream: one subject per learner, bounded per learner."""
    return StreamConfig(
        name=PROGRESS_STREAM,
        description="buslib workshop: every learner's check results (progress.<ACCOUNT>)",
        subjects=[f"{PROGRESS_PREFIX}.>"],
        storage=StorageType.FILE,
        max_msgs_per_subject=RECORDS_PER_LEARNER,
        max_msg_size=MAX_RECORD_BYTES,
        discard=DiscardPolicy.OLD,
    )


async def ensure_progress_stream(js: Any) -> None:
    """Create the PROGRESS stream in the instructor's account (or bring an older one up to date)."""
    config = progress_stream_config()
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as err:
        if err.err_code != 10058:  # exists with another configuration
            raise
        await js.update_stream(config)


class ProgressReader:
    """Reads the PROGRESS stream from its start and keeps following it (an ordered consumer).

    Args:
        js: a JetStream context of the instructor's account.
    """

    def __init__(self, js: Any) -> None:
        self._js = js
        self._sub: Any = None
        self._pending: list[Record] = []
        self.last_seq = 0
        self.skipped = 0  # messages that were not records (garbage a learner published)

    async def start(self) -> ProgressReader:
        if self._sub is None:
            self._sub = await self._js.subscribe(
                f"{PROGRESS_PREFIX}.>", stream=PROGRESS_STREAM, ordered_consumer=True, cb=self._on_message
            )
        return self

    async def _on_message(self, msg: Any) -> None:
        seq = msg.metadata.sequence.stream
        self.last_seq = max(self.last_seq, seq)
        stamp = msg.metadata.timestamp  # the server's clock: the same for every learner, and not theirs to set
        record = parse_record(msg.subject, msg.data, seq, received=stamp.timestamp() if stamp else None)
        if record is None:
            self.skipped += 1
        else:
            self._pending.append(record)

    async def read(self) -> list[Record]:
        """The records that arrived since the last call (the first call: all so far)."""
        records, self._pending = self._pending, []
        return records

    async def catch_up(self, *, timeout: float = 10.0) -> bool:
        """Wait until every record stored when called has arrived; False if ``timeout`` passed first."""
        info = await self._js.stream_info(PROGRESS_STREAM)
        target = info.state.last_seq if info.state.messages else 0
        deadline = time.monotonic() + timeout
        while self.last_seq < target:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be closing already
                pass


async def read_progress(js: Any, *, timeout: float = 10.0) -> list[Record]:
    """Every record in the PROGRESS stream now, oldest first.

    Raises:
        WorkshopError: the stream does not exist (nothing prepared it yet).
    """
    try:
        await js.stream_info(PROGRESS_STREAM)
    except nats.js.errors.NotFoundError:
        raise WorkshopError(
            "This workshop server has no PROGRESS stream, so no check has been recorded. `buslib workshop serve` "
            "and the board create it; start the board before learners begin when the room runs in Docker."
        ) from None
    reader = await ProgressReader(js).start()
    try:
        await reader.catch_up(timeout=timeout)
        return await reader.read()
    finally:
        await reader.stop()


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
