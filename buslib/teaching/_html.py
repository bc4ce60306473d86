"""What the lesson views share: their look, tables as HTML and as text, a display bundle with fallbacks.

Every view is an ipywidget that also carries a plain-text and a static HTML form, for
frontends without a widget manager (GitHub, nbviewer, a terminal).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import ipywidgets as widgets

__all__ = ["STYLE", "LiveView", "bundle_with_html", "table_html", "text_table"]

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


class LiveView(widgets.VBox):
    """A view that redraws itself every ``interval`` seconds while it is on screen.

    A subclass sets ``interval`` and ``_html`` (its widget), calls ``_go_live()`` at the end of
    ``__init__``, and defines ``async refresh()`` and the ``text`` property.
    """

    interval: float | None
    _html: widgets.HTML

    def _go_live(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._view_count = 0  # the frontend counts its views: a cleared output stops the polling
        self.observe(self._on_view_count, names="_view_count")

    async def refresh(self) -> Any:
        raise NotImplementedError

    @property
    def text(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        """Refresh every ``interval`` seconds in the background (done when displayed)."""
        if not self.interval or self.running:
            return
        with contextlib.suppress(RuntimeError):  # no running loop (a plain script): refresh() by hand
            self._task = asyncio.get_running_loop().create_task(self._auto_refresh())

    def stop(self) -> None:
        """Stop the background refresh; the view keeps its last data."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def running(self) -> bool:
        """Whether the background refresh is active."""
        return self._task is not None and not self._task.done()

    def close(self) -> None:
        """Stop refreshing and close the widget."""
        self.stop()
        self._html.close()
        super().close()

    def __repr__(self) -> str:
        return self.text

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        self.start()  # displayed: keep it live
        return bundle_with_html(self, self.text, self._html.value, **kwargs)

    def _on_view_count(self, change: dict[str, Any]) -> None:
        if (change["new"] or 0) > 0:
            self.start()
        elif (change["old"] or 0) > 0:  # was on screen, is not anymore
            self.stop()

    async def _auto_refresh(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval or 1.0)
