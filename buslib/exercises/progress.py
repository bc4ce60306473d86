"""Progress: run the exercise notebooks headless and report every question's status (``buslib progress``).

>>> from buslib.exercises.progress import progress, format_table
>>> rows = progress("exercises")                       # doctest: +SKIP
>>> print(format_table(rows))                          # doctest: +SKIP
notebook             question  status         detail
ex01_persistence.ipynb q1      correct        Well done.

Each notebook is executed top to bottom in a fresh kernel (which inherits ``NATS_URL``), the
way a learner's "Run All" would, without changing the file. Every ``qN.check()`` publishes
its outcome as ``application/vnd.buslib.check+json``; the last one per question counts. A
question whose check never ran (its cell failed or was deleted) is "not checked".
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buslib.errors import BusError
from buslib.exercises import EXERCISES, questions
from buslib.exercises.feedback import MIME_TYPE

__all__ = ["NOT_CHECKED", "Row", "format_table", "progress", "run_notebook"]

NOT_CHECKED = "not checked"
_NAME_RE = re.compile(r"^(?:ex)?(\d\d)_.*\.ipynb$")  # ex01_persistence.ipynb (or 01_persistence.ipynb)


@dataclass(frozen=True)
class Row:
    """One question's status in one notebook."""

    notebook: str
    question: str
    title: str
    status: str  # correct | incorrect | not attempted | error | not checked
    detail: str


def run_notebook(path: Path, *, timeout: float = 120.0) -> tuple[list[dict[str, Any]], list[str]]:
    """Execute a notebook in a fresh kernel (the file is not changed).

    Args:
        path: the notebook.
        timeout: seconds allowed per cell; a cell that takes longer is interrupted.

    Returns:
        The check outcomes in the order they were shown, and the errors of failed cells.
    """
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=int(timeout),
        kernel_name="python3",
        allow_errors=True,  # a learner's broken cell must not hide the other questions
        interrupt_on_timeout=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    # The kernel's own stderr is only start-up noise (a transport warning); cell errors
    # arrive as outputs.
    client.execute(stderr=subprocess.DEVNULL)
    outcomes: list[dict[str, Any]] = []
    errors: list[str] = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if MIME_TYPE in output.get("data", {}):
                data = output["data"][MIME_TYPE]
                outcomes.append(json.loads(data) if isinstance(data, str) else dict(data))
            elif output.get("output_type") == "error":
                errors.append(f"{output.get('ename')}: {output.get('evalue')}")
    return outcomes, errors


def _exercise_of(path: Path) -> str | None:
    match = _NAME_RE.match(path.name)
    return match.group(1) if match and match.group(1) in EXERCISES else None


def progress(directory: str | Path = "exercises", *, only: str | None = None, timeout: float = 120.0) -> list[Row]:
    """Run every exercise notebook in ``directory`` and return one row per question.

    Args:
        directory: where the learner's notebooks are (``exercises`` or ``exercises/solutions``).
        only: run only notebooks whose name contains this text (e.g. ``"01"``).
        timeout: seconds allowed per cell.

    Raises:
        BusError: the directory does not exist or holds no exercise notebooks.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise BusError(
            f"{folder} is not a folder. Give the folder that holds the exercise notebooks (by default: exercises)."
        )
    notebooks = [p for p in sorted(folder.glob("*.ipynb")) if _exercise_of(p) and (only is None or only in p.name)]
    if not notebooks:
        raise BusError(
            f"No exercise notebooks (named like ex01_persistence.ipynb) in {folder}"
            + (f" matching {only!r}" if only else "")
            + "."
        )
    rows: list[Row] = []
    for path in notebooks:
        exercise = _exercise_of(path) or ""
        outcomes, errors = run_notebook(path, timeout=timeout)
        latest = {o["question"]: o for o in outcomes}  # the last check of each question counts
        for question in questions(exercise):
            found = latest.get(question.id)
            if found:
                rows.append(Row(path.name, question.id, question.title, found["status"], found["message"]))
            else:
                why = (
                    f"its check did not run; first error in the notebook: {errors[0]}"
                    if errors
                    else "its check did not run"
                )
                rows.append(Row(path.name, question.id, question.title, NOT_CHECKED, why))
    return rows


def format_table(rows: list[Row], *, width: int = 70) -> str:
    """A plain-text table of rows plus a one-line summary."""
    headers = ("notebook", "question", "status", "detail")
    cells = [(r.notebook, r.question, r.status, _clip(r.detail, width)) for r in rows]
    widths = (
        [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        if cells
        else [len(h) for h in headers]
    )
    lines = ["  ".join(text.ljust(w) for text, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(text.ljust(w) for text, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    correct = sum(r.status == "correct" for r in rows)
    lines.append(f"\n{correct} of {len(rows)} questions correct.")
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
