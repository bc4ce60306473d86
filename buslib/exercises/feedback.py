"""How a check's outcome, a hint and a solution look: a coloured box in Jupyter, plain text elsewhere.

>>> print(Outcome("01", "q1", "A stream", Status.INCORRECT, "Stream EX01_ORDERS uses storage='memory'."))
[q1] Incorrect: Stream EX01_ORDERS uses storage='memory'.

Every outcome is also shown as ``application/vnd.buslib.check+json`` (``MIME_TYPE``), which
``buslib progress`` collects from a notebook's outputs.
"""

from __future__ import annotations

import html
import re
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

__all__ = ["MIME_TYPE", "Feedback", "Outcome", "Status", "show"]

MIME_TYPE = "application/vnd.buslib.check+json"


class Status(str, Enum):
    """What a check found."""

    CORRECT = "correct"
    INCORRECT = "incorrect"
    NOT_ATTEMPTED = "not attempted"
    ERROR = "error"  # the check itself could not run (e.g. no server); not the learner's fault


_STYLE = {  # (border, background, symbol, label)
    Status.CORRECT: ("#2e7d32", "#e8f5e9", "✔", "Correct"),
    Status.INCORRECT: ("#c62828", "#ffebee", "✘", "Incorrect"),
    Status.NOT_ATTEMPTED: ("#757575", "#f5f5f5", "○", "Not attempted"),
    Status.ERROR: ("#ef6c00", "#fff3e0", "!", "Could not check"),
    "hint": ("#1565c0", "#e3f2fd", "➜", "Hint"),  # no emoji: not every browser has an emoji font
    "solution": ("#6a1b9a", "#f3e5f5", "✎", "Solution"),
}


def _box(style_key: Any, heading: str, body_html: str) -> str:
    border, background, symbol, label = _STYLE[style_key]
    return (
        f'<div style="border-left:6px solid {border};background:{background};color:#212121;'
        f'padding:0.5em 0.9em;margin:0.3em 0;border-radius:3px;font-family:sans-serif">'
        f'<strong style="color:{border}">{symbol} {label}</strong>{heading}'
        f'<div style="margin-top:0.25em">{body_html}</div></div>'
    )


def _text_html(text: str) -> str:
    # Escape, keep line breaks, and show `code` as code: messages and hints quote Python.
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text)).replace("\n", "<br>")


@dataclass(frozen=True)
class Outcome:
    """The result of checking one question.

    Attributes:
        exercise: the exercise, e.g. ``"01"``.
        question: the question id, e.g. ``"q1"``.
        title: what the question asks, in a few words.
        status: correct, incorrect, not attempted, or error.
        message: for a learner: what the server shows vs what was expected.
    """

    exercise: str
    question: str
    title: str
    status: Status
    message: str

    @property
    def correct(self) -> bool:
        """Whether every check passed."""
        return self.status is Status.CORRECT

    def to_json(self) -> dict[str, str]:
        """A JSON-ready dict (what ``buslib progress`` collects)."""
        return {**asdict(self), "status": self.status.value}

    def __str__(self) -> str:
        label = _STYLE[self.status][3]
        return f"[{self.question}] {label}: {self.message}" if self.message else f"[{self.question}] {label}."

    def __repr__(self) -> str:
        return f"Outcome({self.exercise!r}, {self.question!r}, {self.status.value!r}, {self.message!r})"

    def _repr_html_(self) -> str:
        body = _text_html(self.message)
        return _box(
            self.status, f" &nbsp;<span style='color:#555'>{self.question}: {html.escape(self.title)}</span>", body
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"text/plain": str(self), "text/html": self._repr_html_(), MIME_TYPE: self.to_json()}


@dataclass(frozen=True)
class Feedback:
    """A hint or a solution, shown in a coloured box (plain text outside Jupyter)."""

    kind: str  # "hint" or "solution"
    question: str
    text: str
    code: bool = False

    def __str__(self) -> str:
        return f"[{self.question}] {_STYLE[self.kind][3]}:\n{self.text}"

    def _repr_html_(self) -> str:
        escaped = html.escape(self.text)
        if self.code:
            body = f"<pre style='margin:0;white-space:pre-wrap'>{escaped}</pre>"
        else:
            body = _text_html(self.text)
        return _box(self.kind, f" &nbsp;<span style='color:#555'>{self.question}</span>", body)


def show(obj: Any) -> None:
    """Display ``obj`` in Jupyter, or print it."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python
        print(obj)
        return
    if get_ipython() is None:
        print(obj)
    else:
        display(obj)
