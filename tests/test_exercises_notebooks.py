"""Exercise notebooks end to end: learner copies run clean and report "not attempted",
solutions report "correct", and `buslib progress` collects it all (real kernels, real server)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from buslib.cli import main as cli
from buslib.exercises import EXERCISES, questions
from buslib.exercises.progress import progress, run_notebook

ROOT = Path(__file__).resolve().parent.parent
LEARNER = sorted((ROOT / "exercises").glob("ex[0-9][0-9]_*.ipynb"))

pytestmark = pytest.mark.slow


def test_every_exercise_has_a_solution_and_a_learner_copy():
    names = [p.name for p in LEARNER]
    assert [n[2:4] for n in names] == list(EXERCISES)
    assert all((ROOT / "exercises" / "solutions" / n).exists() for n in names)


@pytest.mark.parametrize("notebook", LEARNER, ids=[p.stem for p in LEARNER])
def test_learner_copy_runs_top_to_bottom_and_every_question_is_not_attempted(notebook):
    outcomes, errors = run_notebook(notebook, timeout=60)
    assert errors == []
    expected = [q.id for q in questions(notebook.name[2:4])]
    assert [o["question"] for o in outcomes] == expected
    assert {o["status"] for o in outcomes} == {"not attempted"}


def test_progress_cli_on_the_solutions_reports_every_question_correct(capsys):
    assert cli(["progress", "--dir", str(ROOT / "exercises" / "solutions"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = [(p.name, q.id) for p in LEARNER for q in questions(p.name[2:4])]
    assert [(r["notebook"], r["question"]) for r in rows] == expected
    assert [r for r in rows if r["status"] != "correct"] == []


def test_progress_cli_table_for_a_learner_who_has_not_started(capsys):
    assert cli(["progress", "--dir", str(ROOT / "exercises"), "--only", "00_"]) == 0
    out = capsys.readouterr().out
    assert "ex00_start_here.ipynb  q1        not attempted" in out and "0 of 2 questions correct." in out


def test_progress_reports_a_wrong_answer_and_a_deleted_check(tmp_path):
    """A learner answer that stores a retry twice is 'incorrect' with the reason; a deleted check cell is 'not checked'."""
    nb = nbformat.read(ROOT / "exercises" / "ex01_persistence.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.source == "publish_order = ____  # your code here":
            cell.source = (
                "async def publish_order(js, order_id, data):\n    return await js.publish('ex01.orders.created', data)"
            )
        if cell.source == "orders = ____  # your code here":
            cell.source = "orders = await js.add_stream(name=ORDERS_STREAM, subjects=['ex01.orders.>'], storage='file')"
    nb.cells = [c for c in nb.cells if c.source != "q3.check()"]
    nbformat.write(nb, tmp_path / "ex01_persistence.ipynb")
    rows = {r.question: r for r in progress(tmp_path, timeout=60)}
    assert rows["q1"].status == "correct"
    assert rows["q2"].status == "incorrect" and "stored 2 messages" in rows["q2"].detail
    assert rows["q3"].status == "not checked"


def test_solution_in_strict_mode_fails_loudly_when_its_answer_is_wrong(tmp_path):
    """Under nbval a broken solution must fail: strict_mode() turns a red check into an error."""
    nb = nbformat.read(ROOT / "exercises" / "solutions" / "ex01_persistence.ipynb", as_version=4)
    for cell in nb.cells:
        cell.source = cell.source.replace('headers={"Nats-Msg-Id": f"order-created-{order_id}"}', "headers=None")
    nbformat.write(nb, tmp_path / "ex01_persistence.ipynb")
    outcomes, errors = run_notebook(tmp_path / "ex01_persistence.ipynb", timeout=60)
    assert [o["status"] for o in outcomes] == ["correct", "incorrect", "correct"]
    assert len(errors) == 1 and errors[0].startswith("AssertionError: [q2] Incorrect")


def test_progress_explains_a_wrong_folder_or_filter(tmp_path, capsys):
    assert cli(["progress", "--dir", str(tmp_path / "nope")]) == 1
    assert "is not a folder. Give the folder that holds the exercise notebooks" in capsys.readouterr().err
    assert cli(["progress", "--dir", str(ROOT / "exercises"), "--only", "42"]) == 1
    assert "No exercise notebooks (named like ex01_persistence.ipynb)" in capsys.readouterr().err
