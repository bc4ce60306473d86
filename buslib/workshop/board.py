"""The instructor's board: where each learner is, who is stuck, which question fails most, the server's load.

>>> state = BoardState(room.learners)                  # doctest: +SKIP
>>> state.add(await reader.read())                     # records from the PROGRESS stream
>>> view = state.view(server=await server_stats(sys_nc))
>>> print(format_board(view))                          # doctest: +SKIP
learner    done   now at  status     tries  for   last seen  00 01  02  03  04  05
learner01  17/17  05/q3   correct        1        12s ago    ✔✔ ✔✔✔ ✔✔✔ ...

Data only: the terminal (``buslib workshop board``) and the notebook widget draw it.
A learner is *stuck* when their latest check of the question they are on failed at least
``STUCK_TRIES`` times in a row, or has been failing for ``STUCK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import nats.errors

from buslib.exercises import EXERCISES, questions
from buslib.workshop.config import Learner
from buslib.workshop.progress import Record

__all__ = [
    "STUCK_SECONDS",
    "STUCK_TRIES",
    "BoardState",
    "BoardView",
    "LearnerRow",
    "QuestionRow",
    "ServerStats",
    "catalogue",
    "format_board",
    "server_stats",
    "servers_label",
]

STUCK_TRIES = 3
STUCK_SECONDS = 300.0
MARK = {"correct": "✔", "incorrect": "✘", "not attempted": "○", "error": "!"}
FAILING = ("incorrect", "error")


def catalogue() -> dict[str, str]:
    """Every exercise question, in order: ``{"00/q1": title, ...}``."""
    return {f"{ex}/{q.id}": q.title for ex in EXERCISES for q in questions(ex)}


@dataclass(frozen=True)
class LearnerRow:
    """One learner on the board.

    Attributes:
        account / user: ``L07`` / ``learner07``.
        done: questions whose latest check is correct; ``total``: questions in the kit.
        marks: the latest status of each question checked (``{"01/q2": "incorrect"}``).
        current: the question of their latest check (None: nothing checked yet).
        status: that check's status; ``tries``: checks of it in a row without a correct one.
        failing_since: when the current run of failed checks began (epoch seconds).
        last_seen: the time of their latest check.
        stuck: failing on ``current`` for ``STUCK_TRIES`` checks or ``STUCK_SECONDS``.
        message: the feedback of their latest check.
    """

    account: str
    user: str
    done: int
    total: int
    marks: dict[str, str]
    current: str | None = None
    status: str | None = None
    tries: int = 0
    failing_since: float | None = None
    last_seen: float | None = None
    stuck: bool = False
    message: str = ""


@dataclass(frozen=True)
class QuestionRow:
    """One question across the room: how many learners have it correct, failing, checked at all."""

    key: str
    title: str
    correct: int
    failing: int
    attempted: int


@dataclass(frozen=True)
class ServerStats:
    """The server's load and each account's storage (from the system account).

    On a cluster room: the nodes that answered, added up (CPU in % of one core, so 3 busy
    nodes may show over 100%; storage counts each copy), and how many were asked.
    """

    version: str
    cpu: float
    mem: int
    connections: int
    storage: dict[str, int] = field(default_factory=dict)
    servers: int = 1
    asked: int = 1


@dataclass(frozen=True)
class BoardView:
    """A snapshot of the room."""

    learners: list[LearnerRow]
    questions: list[QuestionRow]
    records: int
    updated: float
    server: ServerStats | None = None

    @property
    def stuck(self) -> list[LearnerRow]:
        """Learners who are stuck, longest-failing first."""
        return sorted((r for r in self.learners if r.stuck), key=lambda r: r.failing_since or 0.0)

    @property
    def most_failing(self) -> list[QuestionRow]:
        """Questions that learners are failing now, most learners first."""
        return sorted((q for q in self.questions if q.failing), key=lambda q: (-q.failing, q.key))


@dataclass
class _Track:
    marks: dict[str, str] = field(default_factory=dict)
    last: Record | None = None
    tries: int = 0
    failing_since: float | None = None


class BoardState:
    """The room folded from its records: the latest status of every question of every learner.

    Args:
        learners: the room's learners (listed even before their first check); ``None``
            lists only learners who have checked something.
        questions: ``{"00/q1": title}``; defaults to every exercise question of the kit.
    """

    def __init__(self, learners: Iterable[Learner] | None = None, questions: dict[str, str] | None = None) -> None:
        self.users = {learner.account: learner.user for learner in learners or ()}
        self.questions = dict(questions or catalogue())
        self._tracks: dict[str, _Track] = {account: _Track() for account in self.users}
        self.records = 0

    def add(self, records: Iterable[Record]) -> None:
        """Fold more records in (in stream order)."""
        for record in records:
            self.records += 1
            track = self._tracks.setdefault(record.account, _Track())
            track.marks[record.key] = record.status
            if record.key not in self.questions and record.title:
                self.questions[record.key] = record.title
            same = track.last is not None and track.last.key == record.key
            if record.status in FAILING:
                track.tries = track.tries + 1 if same and track.tries else 1
                if not (same and track.failing_since is not None):
                    track.failing_since = record.time
            else:
                track.tries = 0
                track.failing_since = None
            track.last = record

    def view(self, *, now: float | None = None, server: ServerStats | None = None) -> BoardView:
        """The board now."""
        now = time.time() if now is None else now
        rows = [self._row(account, track, now) for account, track in sorted(self._tracks.items())]
        keys = list(self.questions)
        question_rows = [
            QuestionRow(
                key,
                self.questions[key],
                correct=sum(t.marks.get(key) == "correct" for t in self._tracks.values()),
                failing=sum(t.marks.get(key) in FAILING for t in self._tracks.values()),
                attempted=sum(key in t.marks for t in self._tracks.values()),
            )
            for key in keys
        ]
        return BoardView(rows, question_rows, self.records, now, server)

    def _row(self, account: str, track: _Track, now: float) -> LearnerRow:
        last = track.last
        user = self.users.get(account, account)
        done = sum(status == "correct" for key, status in track.marks.items() if key in self.questions)
        if last is None:
            return LearnerRow(account, user, done, len(self.questions), dict(track.marks))
        failing = last.status in FAILING
        stuck = failing and (
            track.tries >= STUCK_TRIES
            or (track.failing_since is not None and now - track.failing_since >= STUCK_SECONDS)
        )
        return LearnerRow(
            account,
            user,
            done,
            len(self.questions),
            dict(track.marks),
            current=last.key,
            status=last.status,
            tries=track.tries,
            failing_since=track.failing_since if failing else None,
            last_seen=last.time,
            stuck=stuck,
            message=last.message,
        )


async def server_stats(sys_nc: Any, *, servers: int | None = None, timeout: float = 2.0) -> ServerStats | None:
    """The server's CPU, memory and connections, and each account's stored bytes; None if it does not say.

    Args:
        sys_nc: a connection as the room's system user (``BUSLIB_WORKSHOP_SYS_URL``).
        servers: how many servers answer (a cluster room's nodes); default: as many as the
            connection's URL lists (the room's system URL lists every node). A node that is
            down is waited for until ``timeout``, then left out.
    """
    if servers is None:
        servers = max(1, len(sys_nc.servers) - len(sys_nc.discovered_servers))
    query = json.dumps({"accounts": True}).encode()
    try:
        varz, jsz = await asyncio.gather(  # at once: a node that is down costs one timeout, not two
            _ask_every_server(sys_nc, "$SYS.REQ.SERVER.PING.VARZ", b"", servers, timeout),
            _ask_every_server(sys_nc, "$SYS.REQ.SERVER.PING.JSZ", query, servers, timeout),
        )
    except Exception:  # not the system user, or an old server: the board works without it
        return None
    if not varz:
        return None
    storage: dict[str, int] = {}
    for answer in jsz:
        for account in answer.get("account_details") or []:
            name = str(account.get("name"))
            storage[name] = storage.get(name, 0) + int(account.get("storage") or 0)
    return ServerStats(
        version=str(varz[0].get("version", "")),
        cpu=sum(float(v.get("cpu") or 0.0) for v in varz),
        mem=sum(int(v.get("mem") or 0) for v in varz),
        connections=sum(int(v.get("connections") or 0) for v in varz),
        storage=storage,
        servers=len(varz),
        asked=servers,
    )


async def _ask_every_server(nc: Any, subject: str, payload: bytes, servers: int, timeout: float) -> list[Any]:
    """Each server's ``data`` in its answer to a ``$SYS.REQ.SERVER.PING...`` request (every server answers)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=servers)
    answers: list[Any] = []
    try:
        await nc.publish(subject, payload, reply=inbox)
        deadline = time.monotonic() + timeout
        while len(answers) < servers and (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                break
            answers.append(json.loads(msg.data)["data"])
    finally:
        with contextlib.suppress(Exception):  # gone already after max_msgs
            await sub.unsubscribe()
    return answers


def ago(seconds: float | None) -> str:
    """``"12s"``, ``"4m"``, ``"2h"``; empty for None."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m"
    return f"{seconds // 3600:.0f}h"


def marks_by_exercise(row: LearnerRow, keys: Iterable[str]) -> list[str]:
    """Per exercise, one mark per question (``·``: not checked yet): ``["✔✔", "✔✘·", ...]``."""
    groups: dict[str, str] = {}
    for key in keys:
        exercise = key.split("/", 1)[0]
        groups[exercise] = groups.get(exercise, "") + MARK.get(row.marks.get(key, ""), "·")
    return list(groups.values())


def format_board(view: BoardView, *, width: int = 60) -> str:
    """The board as plain text for a terminal."""
    keys = [q.key for q in view.questions]
    exercises = list(dict.fromkeys(key.split("/", 1)[0] for key in keys))
    headers = ["learner", "done", "now at", "status", "tries", "for", "last seen", *exercises]
    table = [
        [
            r.user,
            f"{r.done}/{r.total}",
            r.current or "-",
            ("STUCK " if r.stuck else "") + (r.status or ""),
            str(r.tries or ""),
            ago(view.updated - r.failing_since) if r.failing_since else "",
            f"{ago(view.updated - r.last_seen)} ago" if r.last_seen else "",
            *marks_by_exercise(r, keys),
        ]
        for r in view.learners
    ]
    lines = [_columns(headers, table)]
    stuck = view.stuck
    if stuck:
        lines.append("\nStuck:")
        lines += [f"  {r.user} on {r.current} ({r.tries} tries): {_clip(r.message, width)}" for r in stuck]
    failing = view.most_failing[:5]
    if failing:
        lines.append("\nFailing most (learners whose latest check failed):")
        lines += [
            f"  {q.key}  {q.failing:3d} failing, {q.correct:3d} correct  {_clip(q.title, width)}" for q in failing
        ]
    started = sum(r.current is not None for r in view.learners)
    summary = f"\n{started} of {len(view.learners)} learners started; {view.records} checks recorded."
    if view.server:
        s = view.server
        summary += (
            f" {servers_label(s)} {s.version}: CPU {s.cpu:.0f}%, memory {s.mem / 1024**2:.0f} MiB, "
            f"{s.connections} connections."
        )
    lines.append(summary)
    return "\n".join(lines)


def servers_label(stats: ServerStats) -> str:
    """``"Server"``; on a cluster room ``"3 servers"``, or ``"2 of 3 servers"`` while a node is down."""
    if stats.asked == 1:
        return "Server"
    return f"{stats.servers} servers" if stats.servers == stats.asked else f"{stats.servers} of {stats.asked} servers"


def _columns(headers: list[str], rows: list[list[str]]) -> str:
    cells = [headers, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip() for row in cells)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
