"""The exercise framework without a server: the ____ placeholder, outcomes, feedback, the generator."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from buslib.exercises import EXERCISES, MIME_TYPE, load, questions
from buslib.exercises.core import Equals, Fail, IsInstance, Outcome, Question, Satisfies, Status, ____, is_placeholder

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("make_exercises", ROOT / "scripts" / "make_exercises.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the placeholder ---------------------------------------------------------------------
async def test_placeholder_tolerates_use_in_learner_code():
    """`info = await js.add_stream(name=____)` style code must not crash a learner's notebook."""
    assert ____() is ____ and ____.anything.deeper is ____ and ____[3] is ____
    assert await ____ is ____
    assert list(____) == [] and not ____ and len(____) == 0 and repr(____) == "____"


def test_is_placeholder_sees_blanks_inside_containers():
    assert is_placeholder(____) and is_placeholder([1, ____]) and is_placeholder({"k": ____})
    assert not is_placeholder("____") and not is_placeholder([1, 2]) and not is_placeholder(None)


# -- questions and outcomes -------------------------------------------------------------
def _question() -> Question:
    return Question(
        "q1",
        "Name it",
        uses=["NAME"],
        checks=lambda NAME: [Equals("NAME", NAME, "orders")],
        hint=["first hint", "second hint"],
        solution='NAME = "orders"',
        exercise="99",
    )


def test_three_outcomes_correct_incorrect_not_attempted():
    q = _question()
    assert q.outcome({"NAME": "orders"}).status is Status.CORRECT
    wrong = q.outcome({"NAME": "ORDERS"})
    assert wrong.status is Status.INCORRECT and wrong.message == "NAME is 'ORDERS', expected 'orders'."
    assert q.outcome({"NAME": ____}).status is Status.NOT_ATTEMPTED
    assert q.outcome({}).status is Status.NOT_ATTEMPTED  # the cell defining it never ran


def test_checks_run_lazily_so_a_wrong_type_is_reported_before_it_breaks_the_next_check():
    def checks(x):
        yield IsInstance("x", x, int)
        yield Equals("x + 1", x + 1, 2)

    q = Question("q1", "t", uses=["x"], checks=checks)
    outcome = q.outcome({"x": "1"})
    assert outcome.status is Status.INCORRECT and outcome.message.startswith("x is a str ('1'), expected a int")


def test_a_check_that_crashes_is_incorrect_with_the_reason_not_a_traceback():
    q = Question("q1", "t", uses=["f"], checks=lambda f: [Satisfies("f", f, lambda v: v() > 1, "f() must exceed 1")])
    outcome = q.outcome({"f": lambda: None})
    assert (
        outcome.status is Status.INCORRECT and "TypeError" in outcome.message and "f() must exceed 1" in outcome.message
    )


async def test_outcome_works_inside_a_running_event_loop_like_a_kernel():
    """check() is sync: it must work while the caller's loop runs (a Jupyter kernel) without blocking it forever."""
    assert asyncio.get_running_loop().is_running()
    assert _question().outcome({"NAME": "orders"}).correct


def test_outcome_rich_display_and_machine_readable_output():
    outcome = Outcome("01", "q2", "Retry safely", Status.INCORRECT, "stored 2 messages; expected 1 <b>")
    bundle = outcome._repr_mimebundle_()
    assert bundle["text/plain"] == "[q2] Incorrect: stored 2 messages; expected 1 <b>"
    assert "#c62828" in bundle["text/html"] and "&lt;b&gt;" in bundle["text/html"]  # red, escaped
    assert bundle[MIME_TYPE] == {
        "exercise": "01",
        "question": "q2",
        "title": "Retry safely",
        "status": "incorrect",
        "message": "stored 2 messages; expected 1 <b>",
    }
    json.dumps(bundle[MIME_TYPE])
    assert "#2e7d32" in Outcome("01", "q1", "t", Status.CORRECT, "ok")._repr_html_()  # green
    assert "#757575" in Outcome("01", "q1", "t", Status.NOT_ATTEMPTED, "")._repr_html_()  # grey


def test_check_reads_the_callers_globals_and_prints_outside_jupyter(capsys):
    q = _question()
    globals()["NAME"] = "orders"
    try:
        q.check()
    finally:
        del globals()["NAME"]
    assert capsys.readouterr().out.strip() == "[q1] Correct: Well done."
    with pytest.raises(AssertionError, match="Not attempted"):
        q.assert_check()  # NAME is gone again


def test_hints_are_shown_one_at_a_time_and_solution_as_code(capsys):
    q = _question()
    q.hint()
    q.hint()
    q.hint()
    q.solution()
    out = capsys.readouterr().out
    assert out.count("first hint") == 1 and out.count("second hint") == 2 and 'NAME = "orders"' in out


def test_strict_mode_makes_check_raise_for_solution_notebooks():
    from buslib.exercises import strict_mode

    q = _question()
    strict_mode()
    try:
        with pytest.raises(AssertionError, match="Not attempted"):
            q.check()  # this module defines no NAME
    finally:
        strict_mode(False)
    q.check()  # not strict any more: shows "not attempted", raises nothing


async def test_equals_and_isinstance_reject_wrong_values():
    with pytest.raises(Fail, match=r"n is 2, expected 3"):
        await Equals("n", 2, 3).verify(None)
    await Equals("n", 3, 3).verify(None)
    with pytest.raises(Fail, match=r"expected a int or float"):
        await IsInstance("n", "3", (int, float)).verify(None)
    await IsInstance("n", 3, (int, float)).verify(None)


def test_load_every_exercise_and_reject_unknown_ones():
    for key in EXERCISES:
        qs = questions(key)
        assert qs and all(q.exercise == key and q.hints and q.solution_text for q in qs)
        assert [q.id for q in qs] == [f"q{i}" for i in range(1, len(qs) + 1)]
        if key != "00":
            assert len(qs) >= 3, f"exercise {key} needs at least three questions"
    assert load(1) is load("01")
    with pytest.raises(ValueError, match="There is no exercise '9'"):
        load("9")


# -- the generator ----------------------------------------------------------------------
def test_generator_blanks_every_name_the_solution_defines():
    gen = _generator()
    source = "# Create it.\n# solution\nfrom x import y\nstream = await js.add_stream(name='A')\nasync def handle(e, ctx):\n    pass\na, b = 1, 2"
    assert gen.blank_out(source) == (
        "# Create it.\nstream = ____  # your code here\nhandle = ____  # your code here\n"
        "a = ____  # your code here\nb = ____  # your code here"
    )
    assert gen.blank_out("# solution\nfor i in range(3):\n    print(i)") == "# your code here"
    assert gen.blank_out("q1.check()") == "q1.check()"


def test_generator_drops_solution_cells_and_clears_outputs():
    import nbformat

    gen = _generator()
    nb = nbformat.v4.new_notebook()
    keep = nbformat.v4.new_code_cell("# solution\nx = 1")
    keep.outputs = [nbformat.v4.new_output("stream", text="1")]
    keep.execution_count = 3
    keep.id = "keep-me"
    nb.cells = [keep, nbformat.v4.new_code_cell("strict_mode()", metadata={"tags": ["solution"]})]
    copy = gen.learner_copy(nb, source_name="99_x.ipynb")
    assert [c.source for c in copy.cells] == ["x = ____  # your code here"]
    assert copy.cells[0].outputs == [] and copy.cells[0].execution_count is None and copy.cells[0].id == "keep-me"


def test_generated_learner_copies_are_up_to_date():
    """Fails when someone edited a solution notebook without running scripts/make_exercises.py."""
    import subprocess

    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_exercises.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_staleness_check_fails_on_an_edited_learner_copy(tmp_path, monkeypatch):
    gen = _generator()
    (tmp_path / "solutions").mkdir()
    source = ROOT / "exercises" / "solutions" / "ex00_start_here.ipynb"
    (tmp_path / "solutions" / source.name).write_text(source.read_text())
    monkeypatch.setattr(gen, "SOLUTIONS", tmp_path / "solutions")
    monkeypatch.setattr(gen, "LEARNER", tmp_path)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1  # missing copy
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    copy = tmp_path / source.name
    copy.write_text(copy.read_text().replace("q1.check()", "q1.check()  # edited"))
    assert gen.main(["--check"]) == 1


def test_each_questions_solution_text_is_the_code_of_its_solution_notebook():
    """q.solution() must show what the solution notebook really runs (one source of truth, checked)."""
    import nbformat

    for path in sorted((ROOT / "exercises" / "solutions").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        solved = [
            c.source.split("# solution\n", 1)[1].strip()
            for c in nb.cells
            if c.cell_type == "code" and "# solution\n" in c.source
        ]
        texts = [q.solution_text.strip() for q in questions(path.name[2:4])]
        assert texts == solved, path.name


# -- names and links ----------------------------------------------------------------------
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLVED = sorted((ROOT / "exercises" / "solutions").glob("*.ipynb"))
LEARNER_COPIES = sorted((ROOT / "exercises").glob("*.ipynb"))


def test_exercises_are_named_exNN_so_their_tabs_differ_from_the_lessons():
    """A lesson and its exercise open side by side in JupyterLab: their tab titles must differ."""
    assert [p.name for p in SOLVED] == [p.name for p in LEARNER_COPIES] == [f"ex{p.name}" for p in LESSONS]
    assert not {p.name for p in LEARNER_COPIES} & {p.name for p in LESSONS}


@pytest.mark.parametrize("notebook", SOLVED + LEARNER_COPIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_of_an_exercise_notebook_resolves(notebook):
    import nbformat

    gen = _generator()
    targets = [
        m.group(2).partition("#")[0]
        for cell in nbformat.read(notebook, as_version=4).cells
        if cell.cell_type == "markdown"
        for m in gen._LINK.finditer(cell.source)
        if not gen._EXTERNAL.match(m.group(2))
    ]
    assert any(t.endswith(".ipynb") and "notebooks/" in t for t in targets), "no link to its lesson"
    broken = [t for t in targets if not (notebook.parent / t).exists()]
    assert broken == [], f"{notebook.name} links to missing files: {broken}"


def test_generator_rebases_links_from_solutions_to_learner_copies():
    gen = _generator()
    text = (
        "[lesson](../../notebooks/01_persistence.ipynb), [next](ex02_event_bus.ipynb#setup), "
        "[docs](../../docs/exercises.md), [web](https://docs.nats.io), [here](#done)"
    )
    assert gen.rebase_links(text) == (
        "[lesson](../notebooks/01_persistence.ipynb), [next](ex02_event_bus.ipynb#setup), "
        "[docs](../docs/exercises.md), [web](https://docs.nats.io), [here](#done)"
    )
