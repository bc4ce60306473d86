"""Exercises with instant checks against the real server, one module per lesson.

>>> from buslib.exercises.ex01 import *      # in the notebook's setup cell   # doctest: +SKIP
>>> q1.check()                                # green, red or grey box          # doctest: +SKIP
>>> q1.hint(); q1.solution()                                                    # doctest: +SKIP

Or ``ex = buslib.exercises.load("01")`` and ``ex.q1.check()``. ``buslib progress`` runs every
exercise notebook headless and reports each question's status (see :mod:`buslib.exercises.progress`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from buslib.exercises.core import MIME_TYPE, Check, Fail, Outcome, Placeholder, Question, Status, ____, strict_mode

__all__ = [
    "MIME_TYPE",
    "Check",
    "Fail",
    "Outcome",
    "Placeholder",
    "Question",
    "Status",
    "____",
    "load",
    "questions",
    "strict_mode",
]

EXERCISES = ("00", "01", "02", "03", "04", "05", "06", "07")


def load(exercise: str | int) -> ModuleType:
    """The module of one exercise (``"01"`` or ``1``): its questions are ``q1``, ``q2``, ...

    Raises:
        ValueError: there is no such exercise.
    """
    key = f"{int(exercise):02d}" if str(exercise).isdigit() else str(exercise)
    if key not in EXERCISES:
        raise ValueError(f"There is no exercise {exercise!r}; the exercises are {', '.join(EXERCISES)}.")
    return importlib.import_module(f"buslib.exercises.ex{key}")


def questions(exercise: str | int) -> list[Question]:
    """The questions of one exercise, in order."""
    module = load(exercise)
    return list(module.QUESTIONS)
