"""What the lesson views share: their look, tables as HTML and as text, a display bundle with fallbacks.

Every view is an ipywidget that also carries a plain-text and a static HTML form, for
frontends without a widget manager (GitHub, nbviewer, a terminal).
"""

from __future__ import annotations

import html
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import ipywidgets as widgets

__all__ = ["STYLE", "bundle_with_html", "table_html", "text_table"]

STYLE = "font-family: var(--jp-ui-font-family, sans-serif); font-size: 13px;"
CELL = "padding: 2px 10px; text-align: left; border-bottom: 1px solid #ddd;"
NUM = "padding: 2px 10px; text-align: right; border-bottom: 1px solid #ddd;"


def bundle_with_html(widget: widgets.DOMWidget, text: str, html_text: str, **kwargs: Any) -> dict[str, Any]:
    """ipywidgets' display bundle plus a full text/plain and a static text/html fallback."""
    data = widgets.DOMWidget._repr_mimebundle_(widget, **kwargs) or {}
    data["text/plain"] = text
    data["text/html"] = html_text
    return data


def table_html(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Collection[int] = ()) -> str:
    head = "".join(
        f'<th style="{NUM if i in numeric else CELL}">{html.escape(str(h))}</th>' for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td style="{NUM if i in numeric else CELL}">{html.escape(str(v))}</td>' for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f'<table style="border-collapse: collapse;"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
