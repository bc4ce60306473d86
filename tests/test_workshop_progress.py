"""Every check() is recorded for the instructor on a workshop server, and the board reads it (real server).

Recording never changes a check's feedback, happens only on a workshop server, and the
board folds the records into who is where, who is stuck and which question fails most.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import pytest
from _bus_helpers import wait_until
from _workshop import served_room, urls

import buslib
from buslib.cli import main as cli
from buslib.exercises import ____, ex00
from buslib.exercises.core import Outcome, Status
from buslib.exercises.recording import PROGRESS_SUBJECT, progress_record, record_outcome
from buslib.workshop import Learner, Record, Room, read_progress
from buslib.workshop.board import STUCK_TRIES, BoardState, catalogue, format_board
from buslib.workshop.progress import connect_instructor, ensure_progress_stream, parse_record
from buslib.workshop.widget import board_widget


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("progress") / "room"
    with served_room(folder, learners=3):
        yield {**urls(folder), "folder": str(folder)}


async def _records(url: str, wanted: int) -> list[Record]:
    nc = await connect_instructor(url)
    try:

        async def enough() -> list[Record] | None:
            found = await read_progress(nc)
            return found if len(found) >= wanted else None

        return await wait_until(enough, what=f"{wanted} progress records")
    finally:
        await nc.close()


async def test_checks_in_a_learner_account_are_recorded_as_that_learner(room):
    url = room["L02"]
    nc = await buslib.connect(url)
    js = nc.jetstream()
    await ex00.reset(js)
    ack = await js.publish("ex00.hello", b"hello")
    await nc.close()
    right = await ex00.q2.outcome_async({"ack": ack}, url=url)
    wrong = await ex00.q1.outcome_async({"server_version": "0.0.1"}, url=url)
    blank = await ex00.q1.outcome_async({"server_version": ____}, url=url)
    assert [o.status for o in (right, wrong, blank)] == [Status.CORRECT, Status.INCORRECT, Status.NOT_ATTEMPTED]
    records = [r for r in await _records(room["INSTRUCTOR"], 3) if r.account == "L02"]
    assert [(r.key, r.status) for r in records[-3:]] == [
        ("00/q2", "correct"),
        ("00/q1", "incorrect"),
        ("00/q1", "not attempted"),
    ]
    assert records[-2].message == wrong.message and records[-2].title == ex00.q1.title
    assert all(r.check_ms is not None and r.check_ms >= 0 and r.time > 0 for r in records)


def test_a_learners_check_through_nats_url_is_recorded(room, monkeypatch):
    """What q1.check() runs in a notebook: NATS_URL set to the learner's line, a worker thread."""
    monkeypatch.setenv("NATS_URL", room["L03"])
    outcome = ex00.q1.outcome({"server_version": "0.0.3"})
    assert outcome.status is Status.INCORRECT
    records = asyncio.run(_records(room["INSTRUCTOR"], 1))
    assert any(r.account == "L03" and r.key == "00/q1" and r.message == outcome.message for r in records)


def test_a_question_checked_on_a_server_of_its_own_is_recorded_where_nats_url_points(room, monkeypatch):
    """Exercise 06 checks the cluster its notebook started; the record still goes to the workshop."""
    from buslib.exercises import ex06

    monkeypatch.setenv("NATS_URL", room["L01"])
    outcome = ex06.q1.outcome({"orders": "not what ensure_stream returns"})
    assert outcome.status is Status.INCORRECT and "expected a StreamInfo" in outcome.message
    records = asyncio.run(_records(room["INSTRUCTOR"], 1))
    assert any(r.account == "L01" and r.key == "06/q1" and r.message == outcome.message for r in records)


def test_the_cli_board_and_progress_export_read_the_room(room, capsys):
    folder = room["folder"]
    assert "BUSLIB_WORKSHOP_URL" not in os.environ  # the room's own instructor.env is used
    asyncio.run(ex00.q1.outcome_async({"server_version": "0.0.3"}, url=room["L03"]))
    asyncio.run(_records(room["INSTRUCTOR"], 1))
    assert cli(["workshop", "board", "--room", folder, "--once"]) == 0
    board = capsys.readouterr().out
    assert "learner01" in board and "learner03" in board and "checks recorded" in board and "Server 2." in board
    assert cli(["progress", "--workshop", "--room", folder, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 * len(catalogue()) and {r["learner"] for r in rows} == {"learner01", "learner02", "learner03"}
    l03 = next(r for r in rows if r["learner"] == "learner03" and r["question"] == "00/q1")
    assert l03["status"] == "incorrect" and l03["checks"] >= 1
    assert cli(["progress", "--workshop", room["INSTRUCTOR"], "--csv"]) == 0
    assert capsys.readouterr().out.startswith("learner,account,question,title,status,checks,time,detail")
    assert cli(["progress", "--workshop", room["L01"]]) == 1  # a learner's URL: a clear error
    assert "not the instructor's URL" in capsys.readouterr().err


async def test_nothing_is_recorded_on_a_server_that_is_not_a_workshop(nats_url):
    nc = await buslib.connect(nats_url)
    heard = []

    async def hear(msg) -> None:
        heard.append(msg.subject)

    sub = await nc.subscribe(">", cb=hear)
    await nc.flush()
    outcome = await ex00.q1.outcome_async({"server_version": "0.0.1"}, url=nats_url)
    await nc.publish("control", b"")
    await wait_until(lambda: "control" in heard, what="the control message")
    await sub.unsubscribe()
    await nc.close()
    assert outcome.status is Status.INCORRECT
    assert PROGRESS_SUBJECT not in heard


async def test_recording_never_breaks_a_check(room):
    outcome = Outcome("00", "q1", "title", Status.CORRECT, "Well done.")
    nc = await buslib.connect(room["L01"])
    await nc.close()
    assert await record_outcome(nc, outcome, seconds=0.1) is False  # a closed connection: dropped, no error
    assert await record_outcome(None, outcome, seconds=0.1) is False
    # the instructor's stream gone: the learner's check is still correct and as fast
    instructor = await connect_instructor(room["INSTRUCTOR"])
    js = instructor.jetstream()
    await js.delete_stream("PROGRESS")
    try:
        learner = await buslib.connect(room["L01"])
        await ex00.reset(learner.jetstream())
        ack = await learner.jetstream().publish("ex00.hello", b"hello")
        await learner.close()
        assert (await ex00.q2.outcome_async({"ack": ack}, url=room["L01"])).status is Status.CORRECT
    finally:
        await ensure_progress_stream(js)
        await instructor.close()


def test_a_record_names_its_learner_by_subject_only_and_garbage_is_skipped():
    data = json.dumps({"learner": "learner09", "exercise": "01", "question": "q2", "status": "correct", "time": 5})
    record = parse_record("progress.L01", data.encode(), seq=7)
    assert record is not None and (record.account, record.key, record.seq) == ("L01", "01/q2", 7)
    assert parse_record("progress.L01.extra", data.encode()) is None
    assert parse_record("other.L01", data.encode()) is None
    assert parse_record("progress.L01", b"not json") is None
    assert parse_record("progress.L01", b'{"exercise": "01", "question": "q1", "status": "hacked"}') is None
    assert parse_record("progress.L01", b"[1, 2]") is None


def test_progress_record_is_small_and_versioned():
    outcome = Outcome("01", "q2", "A publisher", Status.INCORRECT, "é" * 5000)
    record = progress_record(outcome, seconds=0.0123, now=100.0)
    assert record["v"] == 1 and record["time"] == 100.0 and record["check_ms"] == 12.3
    assert len(record["message"]) == 400 and len(json.dumps(record).encode()) < 4096


def _rec(seq: int, account: str, key: str, status: str, when: float) -> Record:
    exercise, question = key.split("/")
    return Record(seq, account, exercise, question, "title", status, f"message {seq}", when)


def test_the_board_says_who_is_where_who_is_stuck_and_what_fails_most():
    learners = [Learner(n, f"L0{n}", f"learner0{n}") for n in (1, 2, 3)]
    state = BoardState(learners)
    state.add(
        [
            _rec(1, "L01", "00/q1", "correct", 10),
            _rec(2, "L01", "00/q2", "correct", 20),
            _rec(3, "L02", "00/q1", "incorrect", 30),
            *[_rec(4 + i, "L02", "00/q1", "incorrect", 40 + i) for i in range(STUCK_TRIES - 1)],
            _rec(9, "L01", "01/q1", "incorrect", 50),
        ]
    )
    view = state.view(now=60)
    rows = {r.user: r for r in view.learners}
    assert rows["learner01"].done == 2 and rows["learner01"].current == "01/q1" and not rows["learner01"].stuck
    assert rows["learner02"].stuck and rows["learner02"].tries == STUCK_TRIES
    assert rows["learner02"].failing_since == 30
    assert rows["learner03"].current is None and rows["learner03"].done == 0  # listed before any check
    assert [r.user for r in view.stuck] == ["learner02"]
    assert [(q.key, q.failing) for q in view.most_failing] == [("00/q1", 1), ("01/q1", 1)]
    assert rows["learner01"].total == len(view.questions) == len(catalogue())
    # a correct check ends the streak
    state.add([_rec(10, "L02", "00/q1", "correct", 70)])
    after = {r.user: r for r in state.view(now=80).learners}["learner02"]
    assert not after.stuck and after.tries == 0 and after.done == 1
    text = format_board(state.view(now=80))
    assert "learner02" in text and "2 of 3 learners started" in text


def test_a_learner_failing_for_five_minutes_is_stuck_even_with_few_tries():
    state = BoardState()
    state.add([_rec(1, "L01", "03/q2", "incorrect", 1000)])
    assert not state.view(now=1000 + 299).learners[0].stuck
    assert state.view(now=1000 + 300).learners[0].stuck


async def test_the_widget_and_the_cli_show_the_rooms_records(room, capsys):
    folder = room["folder"]
    board = board_widget(room["INSTRUCTOR"], sys_url=room["SYS"], learners=Room.load(folder).learners, refresh=None)
    try:
        view = await board.refresh()
        assert board.error is None and view is not None
        assert {r.user for r in view.learners} == {"learner01", "learner02", "learner03"}
        assert view.server is not None and view.server.connections >= 1 and "L02" in view.server.storage
        seen = view.records
        await ex00.q1.outcome_async({"server_version": "9.9.9"}, url=room["L02"])

        async def next_record():
            view = await board.refresh()
            return view if view is not None and view.records > seen else None

        view = await wait_until(next_record, what="the new check on the board")
        row = next(r for r in view.learners if r.user == "learner02")
        assert (row.current, row.status) == ("00/q1", "incorrect")
        assert "learner02" in board._html.value and "learner02" in board.text
    finally:
        await board.aclose()
    # a learner's URL is not the instructor's: the board says so
    wrong = board_widget(room["L01"], refresh=None)
    await wrong.refresh()
    assert wrong.view is None and "not the instructor's URL" in (wrong.error or "")
    await wrong.aclose()
