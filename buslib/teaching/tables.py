"""A table of dead letters for the lessons (reasons, subjects, deliveries).

>>> from buslib.teaching import dead_letter_table
>>> dead_letter_table([{"seq": 7, "reason": "KeyError: 'amount'"}])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets

from buslib.teaching._html import STYLE, bundle_with_html, table_html, text_table

__all__ = ["DeadLetterTable", "dead_letter_table"]


class DeadLetterTable(widgets.HTML):
    """An HTML table of dead letters (or any list of dicts); every cell is escaped.

    Args:
        rows: one dict per message; columns are the keys, in order of first appearance.
        columns: show only these columns, in this order.
        max_chars: longer cell values are cut with "…".
    """

    def __init__(
        self, rows: Iterable[Mapping[str, Any]] = (), *, columns: Sequence[str] | None = None, max_chars: int = 120
    ) -> None:
        super().__init__()
        self.add_class("buslib-dead-letters")
        self.columns_wanted = list(columns) if columns else None
        self.max_chars = max_chars
        self.rows: list[dict[str, Any]] = []
        self.update(rows)

    def update(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the rows and redraw."""
        self.rows = [dict(r) for r in rows]
        self.value = self.html

    @property
    def columns(self) -> list[str]:
        if self.columns_wanted:
            return self.columns_wanted
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def _cells(self) -> list[list[str]]:
        return [[self._cell(row.get(c, "")) for c in self.columns] for row in self.rows]

    def _cell(self, value: Any) -> str:
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        text = str(value)
        return text if len(text) <= self.max_chars else text[: self.max_chars - 1] + "…"

    @property
    def html(self) -> str:
        """The table as HTML (cells escaped)."""
        if not self.rows:
            return f'<div style="{STYLE} color:#666">No dead letters.</div>'
        return f'<div style="{STYLE}">' + table_html(self.columns, self._cells()) + "</div>"

    @property
    def text(self) -> str:
        """The table as plain text."""
        return text_table(self.columns, self._cells()) if self.rows else "No dead letters."

    def __repr__(self) -> str:
        return self.text

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return bundle_with_html(self, self.text, self.html, **kwargs)


def dead_letter_table(rows: Iterable[Mapping[str, Any]], *, columns: Sequence[str] | None = None) -> DeadLetterTable:
    """An HTML table of dead letters with escaped cells.

    Args:
        rows: one dict per dead letter, e.g. ``{"seq": 7, "subject": ..., "reason": ...}``.
        columns: show only these columns, in this order.

    Returns:
        A ``DeadLetterTable`` widget; ``table.update(rows)`` redraws it in place.
    """
    return DeadLetterTable(rows, columns=columns)
