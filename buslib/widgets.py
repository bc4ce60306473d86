"""Small live views for the lessons: server status, per-worker counts, delivery timelines, dead letters.

>>> from buslib.widgets import WorkerCounts, dead_letter_table, delivery_timeline, status_panel
>>> panel = status_panel()                  # doctest: +SKIP
>>> panel                                   # doctest: +SKIP  (displays, then refreshes every 2 s)
>>> await panel.refresh()                   # doctest: +SKIP
>>> panel.data["streams"]["ORDERS"]         # doctest: +SKIP
{'messages': 3, 'consumers': 1, 'subjects': ['orders.>'], 'bytes': 231}
>>> counts = WorkerCounts(["w1", "w2"])     # doctest: +SKIP
>>> counts.increment("w1")                  # doctest: +SKIP
1
>>> delivery_timeline({"nak()": [0.0, 0.001], "nak(delay=1)": [0.0, 1.0]}, title="Retries")  # doctest: +SKIP
>>> dead_letter_table([{"seq": 7, "reason": "KeyError: 'amount'"}])  # doctest: +SKIP

The views are ipywidgets, so they update in place while the lesson runs. Each also has a
plain-text form (``.text``, and ``repr``) and an HTML form in its display bundle, for
frontends without a widget manager (GitHub, nbviewer, a terminal). Keep the numbers in
the view's attributes (``panel.data``, ``counts.counts``, ``figure.series``,
``table.rows``): a lesson asserts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import html
import json
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DeadLetterTable",
    "StatusPanel",
    "Timeline",  # noqa: F822 (made on first use by the module's __getattr__)
    "WorkerCounts",
    "dead_letter_table",
    "delivery_timeline",
    "status_panel",
]

_STYLE = "font-family: var(--jp-ui-font-family, sans-serif); font-size: 13px;"
_CELL = "padding: 2px 10px; text-align: left; border-bottom: 1px solid #ddd;"
_NUM = "padding: 2px 10px; text-align: right; border-bottom: 1px solid #ddd;"


def _bundle_with_html(widget: widgets.DOMWidget, text: str, html_text: str, **kwargs: Any) -> dict[str, Any]:
    """ipywidgets' display bundle plus a full text/plain and a static text/html fallback."""
    data = widgets.DOMWidget._repr_mimebundle_(widget, **kwargs) or {}
    data["text/plain"] = text
    data["text/html"] = html_text
    return data


def _table_html(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Collection[int] = ()) -> str:
    head = "".join(
        f'<th style="{_NUM if i in numeric else _CELL}">{html.escape(str(h))}</th>' for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td style="{_NUM if i in numeric else _CELL}">{html.escape(str(v))}</td>' for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table style="border-collapse: collapse;"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- server status ------------------------------------------------------------------------


class StatusPanel(widgets.VBox):
    """A live view of one NATS server: URL, version, JetStream, streams with messages and consumers.

    Create it with ``status_panel()``. It keeps its own connection (opened on the first
    refresh). ``await panel.refresh()`` updates it now; once displayed it also refreshes
    itself every ``refresh`` seconds from a background task on the running event loop.
    When the server goes away it shows "disconnected" and keeps trying; it never raises
    into the notebook. ``panel.close()`` stops it.

    Attributes:
        data: the last snapshot: ``url``, ``connected``, ``version``, ``jetstream``,
            ``streams`` (``{name: {"messages", "consumers", "subjects", "bytes"}}``),
            ``error`` (why it is disconnected, or ``None``) and ``updated`` (epoch seconds).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        refresh: float | None = 2.0,
        streams: str | None = None,
        max_rows: int = 20,
        timeout: float = 2.0,
    ) -> None:
        self._html = widgets.HTML()
        super().__init__(children=[self._html])
        self.add_class("buslib-status-panel")
        self.url = url
        self.interval = refresh
        self.pattern = streams
        self.max_rows = max_rows
        self.timeout = timeout
        self.data: dict[str, Any] = {
            "url": url,
            "connected": False,
            "version": None,
            "jetstream": None,
            "streams": {},
            "error": None,
            "updated": None,
        }
        self._nc: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        # Let the frontend count its views, so a panel whose output was cleared (cell re-run,
        # notebook closed) stops polling instead of running on unseen.
        self._view_count = 0
        self.observe(self._on_view_count, names="_view_count")
        self._render()

    # -- public -----------------------------------------------------------------------
    async def refresh(self) -> dict[str, Any]:
        """Ask the server for its status now and redraw.

        Returns:
            The new ``data`` snapshot. A server that cannot be reached gives
            ``connected=False`` and an ``error`` text instead of an exception.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # the background task and a lesson cell may refresh at once
            try:
                self.data = await self._snapshot()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # never into the kernel: the panel says what happened
                self.data = {
                    **self.data,
                    "connected": False,
                    "error": f"{type(err).__name__}: {err}",
                    "updated": time.time(),
                }
            self._render()
            return self.data

    def start(self) -> None:
        """Start refreshing every ``refresh`` seconds in the background (done on display)."""
        if not self.interval or (self._task is not None and not self._task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (a plain script): refresh() by hand instead
        self._task = loop.create_task(self._auto_refresh())

    def stop(self) -> None:
        """Stop the background refresh; the panel stays on screen with its last data."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def aclose(self) -> None:
        """Stop refreshing, close the panel's connection and the widget."""
        self.stop()
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        self._html.close()
        super().close()

    def close(self) -> None:
        """Stop refreshing and close the widget (the connection closes in the background)."""
        self.stop()
        self._drop_connection()
        self._html.close()
        super().close()

    @property
    def running(self) -> bool:
        """Whether the background refresh is active."""
        return self._task is not None and not self._task.done()

    @property
    def text(self) -> str:
        """The panel as plain text (for frontends without widgets)."""
        d = self.data
        state = self._state()
        lines = [f"NATS server {d['url'] or '(default)'}: {state}"]
        if d["connected"]:
            lines.append(f"version {d['version']}, JetStream {'on' if d['jetstream'] else 'off'}")
        if d["error"]:
            lines.append(f"({d['error']})")
        rows = self._rows()
        if rows:
            lines.append(_text_table(["stream", "subjects", "messages", "consumers"], rows))
        elif d["connected"] and d["jetstream"]:
            lines.append("no streams" + (f" matching {self.pattern!r}" if self.pattern else ""))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        self.start()  # displayed: keep it live
        return _bundle_with_html(self, self.text, self._html.value, **kwargs)

    # -- internals --------------------------------------------------------------------
    def _on_view_count(self, change: dict[str, Any]) -> None:
        old, new = change["old"] or 0, change["new"] or 0
        if new > 0:
            self.start()
        elif old > 0:  # was on screen, is not anymore (no frontend at all never gets here)
            self.stop()
            self._drop_connection()

    def _drop_connection(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule on
                asyncio.get_running_loop().create_task(_close_quietly(nc))

    async def _auto_refresh(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval or 2.0)

    async def _connection(self) -> Any:
        if self._nc is None or self._nc.is_closed:
            from buslib.connection import connect  # late: widgets must import without a server

            self._nc = await connect(
                self.url, name="buslib-status-panel", connect_timeout=self.timeout, require_jetstream=False
            )
        return self._nc

    async def _snapshot(self) -> dict[str, Any]:
        from buslib.connection import ensure_server

        url = self.url or ensure_server()
        nc = await self._connection()
        base = {
            "url": url,
            "updated": time.time(),
            "version": self.data.get("version"),
            "jetstream": self.data.get("jetstream"),
        }
        if not nc.is_connected:
            # nats-py reconnects in the background; asking now would only time out
            return {
                **base,
                "connected": False,
                "streams": self.data.get("streams", {}),
                "error": "server not reachable, reconnecting",
            }
        info = nc._server_info  # the INFO block the server sent on (re)connect
        jetstream = bool(info.get("jetstream"))
        streams: dict[str, dict[str, Any]] = {}
        if jetstream:
            js = nc.jetstream(timeout=self.timeout)
            for si in await _all_streams(js):
                name = si.config.name
                if self.pattern and not fnmatch.fnmatchcase(name, self.pattern):
                    continue
                streams[name] = {
                    "messages": si.state.messages,
                    "consumers": si.state.consumer_count,
                    "subjects": list(si.config.subjects or []),
                    "bytes": si.state.bytes,
                }
        return {
            **base,
            "connected": True,
            "version": info.get("version"),
            "jetstream": jetstream,
            "streams": streams,
            "error": None,
        }

    def _state(self) -> str:
        if self.data["connected"]:
            return "connected"
        return "connecting…" if self.data["updated"] is None else "disconnected"

    def _rows(self) -> list[tuple[str, str, int, int]]:
        items = sorted(self.data["streams"].items())
        return [(name, ", ".join(s.get("subjects", [])), s["messages"], s["consumers"]) for name, s in items]

    def _render(self) -> None:
        d = self.data
        dot = "#2e7d32" if d["connected"] else "#c62828"
        state = self._state()
        parts = [
            f'<div style="{_STYLE}">',
            f"<b>NATS server</b> <code>{html.escape(str(d['url'] or '(default)'))}</code> "
            f'<span style="color:{dot}">● {state}</span>',
        ]
        if d["connected"]:
            js = "on" if d["jetstream"] else "off"
            parts.append(f" &nbsp; version <code>{html.escape(str(d['version']))}</code> &nbsp; JetStream <b>{js}</b>")
        if d["error"]:
            parts.append(f'<div style="color:#666">{html.escape(d["error"])}</div>')
        rows = self._rows()
        if rows:
            shown = rows[: self.max_rows]
            parts.append(_table_html(["stream", "subjects", "messages", "consumers"], shown, numeric={2, 3}))
            if len(rows) > len(shown):
                parts.append(f'<div style="color:#666">… and {len(rows) - len(shown)} more streams</div>')
        elif d["connected"] and d["jetstream"]:
            parts.append('<div style="color:#666">no streams yet</div>')
        if d["updated"]:
            parts.append(
                f'<div style="color:#999; font-size: 11px">updated {time.strftime("%H:%M:%S", time.localtime(d["updated"]))}</div>'
            )
        parts.append("</div>")
        self._html.value = "".join(parts)


async def _all_streams(js: Any) -> list[Any]:
    # STREAM.LIST pages (256 per page); a shared teaching server can hold many streams.
    result: list[Any] = []
    while True:
        page = await js.streams_info(offset=len(result))
        result.extend(page)
        if not page or len(page) < 256:
            return result


async def _close_quietly(nc: Any) -> None:
    with contextlib.suppress(Exception):
        await nc.close()


def status_panel(url: str | None = None, *, refresh: float | None = 2.0, streams: str | None = None) -> StatusPanel:
    """A live status panel for a NATS server.

    Args:
        url: the server; defaults to ``NATS_URL`` or the embedded server.
        refresh: seconds between automatic refreshes once displayed; ``None`` for manual only.
        streams: show only streams whose name matches this glob (e.g. ``"LESSON00_*"``).

    Returns:
        A ``StatusPanel`` widget; display it, and ``await panel.refresh()`` to update it now.
    """
    return StatusPanel(url, refresh=refresh, streams=streams)


# -- worker counts -----------------------------------------------------------------------


class WorkerCounts(widgets.VBox):
    """A live bar chart of messages handled per worker.

    >>> counts = WorkerCounts(["w1", "w2"])
    >>> counts.increment("w1"); counts.increment("w1"); counts.set("w2", 1)
    >>> counts.counts
    {'w1': 2, 'w2': 1}

    Args:
        names: the workers, in display order (unknown names are added when counted).
        total: the bar's full scale (e.g. the number of messages); by default the
            largest count so far.
        title: a heading above the bars.
    """

    def __init__(
        self, names: Iterable[str] = (), *, total: int | None = None, title: str = "Messages per worker"
    ) -> None:
        self.total = total
        self.title = title
        self._counts: dict[str, int] = {}
        self._bars: dict[str, widgets.IntProgress] = {}
        self._labels: dict[str, widgets.Label] = {}
        self._heading = widgets.HTML(f"<b>{html.escape(title)}</b>")
        super().__init__(children=[self._heading])
        self.add_class("buslib-worker-counts")
        for name in names:
            self._add(str(name))

    @property
    def counts(self) -> dict[str, int]:
        """A copy of the counts, ``{worker: n}``."""
        return dict(self._counts)

    def increment(self, name: str, by: int = 1) -> int:
        """Add ``by`` to a worker's count; returns the new count."""
        return self.set(name, self._counts.get(name, 0) + by)

    def set(self, name: str, n: int) -> int:
        """Set a worker's count to ``n``; returns it."""
        if name not in self._counts:
            self._add(name)
        self._counts[name] = int(n)
        self._redraw()
        return self._counts[name]

    def reset(self) -> None:
        """Set every count back to zero."""
        for name in self._counts:
            self._counts[name] = 0
        self._redraw()

    @property
    def text(self) -> str:
        """The chart as text bars (for frontends without widgets)."""
        if not self._counts:
            return f"{self.title}: no workers"
        scale = self._scale()
        width = max(len(n) for n in self._counts)
        lines = [f"{self.title}:"]
        for name, n in self._counts.items():
            bar = "█" * round(30 * n / scale) if scale else ""
            lines.append(f"  {name.ljust(width)} {bar} {n}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        rows = [(name, n) for name, n in self._counts.items()]
        return _bundle_with_html(
            self,
            self.text,
            f"<b>{html.escape(self.title)}</b>" + _table_html(["worker", "messages"], rows, numeric={1}),
            **kwargs,
        )

    def _add(self, name: str) -> None:
        self._counts[name] = 0
        self._bars[name] = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="300px"))
        self._labels[name] = widgets.Label("0")
        row = widgets.HBox(
            [widgets.Label(name, layout=widgets.Layout(width="90px")), self._bars[name], self._labels[name]]
        )
        self.children = (*self.children, row)
        self._redraw()

    def _scale(self) -> int:
        return max(self.total or 0, *self._counts.values(), 1)

    def _redraw(self) -> None:
        scale = self._scale()
        for name, n in self._counts.items():
            bar = self._bars[name]
            bar.max = scale
            bar.value = min(n, scale)
            self._labels[name].value = str(n)


# -- delivery timeline --------------------------------------------------------------------


def _timeline_class() -> type[Figure]:
    # Built on first use: importing matplotlib costs about a second on a busy laptop, and
    # most lessons never draw a timeline.
    global _Timeline
    if _Timeline is None:
        from matplotlib.figure import Figure

        class Timeline(Figure):
            """A matplotlib Figure that remembers its data (``series``) and has a text form."""

            series: dict[str, list[float]]
            title: str

            @property
            def summary(self) -> str:
                """The chart as text: one line per series with its delivery times.

                (Named ``summary``, not ``text``: ``Figure.text()`` draws text on the figure.)
                """
                lines = [f"{self.title}:"]
                for name, times in self.series.items():
                    lines.append(f"  {name}: " + ", ".join(f"{t:.3f}s" for t in times))
                return "\n".join(lines)

            def __repr__(self) -> str:
                return self.summary

        Timeline.__module__, Timeline.__qualname__ = __name__, "Timeline"
        _Timeline = Timeline
    return _Timeline


_Timeline: type[Figure] | None = None


def __getattr__(name: str) -> Any:
    if name == "Timeline":  # ``from buslib.widgets import Timeline`` imports matplotlib only then
        return _timeline_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def delivery_timeline(
    series: Mapping[str, Sequence[float]],
    *,
    title: str = "Deliveries over time",
    relative: bool = True,
) -> Figure:
    """Draw one row per series with a marker at each delivery time.

    Args:
        series: ``{label: [delivery time, ...]}``, e.g. ``time.monotonic()`` readings.
        title: the chart title.
        relative: shift each row so its first delivery is at 0 s (rows from separate
            experiments then line up); ``False`` plots the times as given.

    Returns:
        A ``Timeline`` (a matplotlib Figure) whose ``series`` holds the plotted seconds and
        whose ``summary`` is the same as text.

    Raises:
        ValueError: ``series`` is empty.
    """
    if not series:
        raise ValueError("delivery_timeline() needs at least one series, e.g. {'nak()': [t1, t2, t3]}.")
    import matplotlib.pyplot as plt

    plotted = {}
    for name, times in series.items():
        ordered = sorted(float(t) for t in times)
        start = ordered[0] if (relative and ordered) else 0.0
        plotted[str(name)] = [t - start for t in ordered]

    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.7 * len(plotted)), FigureClass=_timeline_class())
    plt.close(fig)  # shown once, by the cell's return value, not again by the inline backend
    fig.series, fig.title = plotted, title
    labels = list(plotted)
    every = [t for times in plotted.values() for t in times]
    lo, hi = min(every, default=0.0), max(every, default=0.0)
    span = (hi - lo) or 1.0
    for row, name in enumerate(labels):
        times = plotted[name]
        ax.scatter(times, [row] * len(times), s=60, zorder=3)
        last = None
        for i, t in enumerate(times, start=1):
            if last is None or t - last > 0.03 * span:  # numbers of bunched deliveries would overlap
                ax.annotate(str(i), (t, row), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
                last = t
        if times:
            ax.hlines(row, times[0], times[-1], colors="#bbb", zorder=1)
            n, took = len(times), times[-1] - times[0]
            ax.annotate(
                f"{n} deliveries in {took:.3f} s" if n > 1 else "1 delivery",
                (times[-1], row),
                textcoords="offset points",
                xytext=(10, -3),
                fontsize=8,
                color="#555",
            )
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.invert_yaxis()
    ax.set_xlim(lo - 0.05 * span, hi + 0.3 * span)  # room on the right for the "n deliveries" notes
    ax.set_xlabel("seconds since first delivery" if relative else "seconds")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


# -- dead letters --------------------------------------------------------------------------


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
            return f'<div style="{_STYLE} color:#666">No dead letters.</div>'
        return f'<div style="{_STYLE}">' + _table_html(self.columns, self._cells()) + "</div>"

    @property
    def text(self) -> str:
        """The table as plain text."""
        return _text_table(self.columns, self._cells()) if self.rows else "No dead letters."

    def __repr__(self) -> str:
        return self.text

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return _bundle_with_html(self, self.text, self.html, **kwargs)


def dead_letter_table(rows: Iterable[Mapping[str, Any]], *, columns: Sequence[str] | None = None) -> DeadLetterTable:
    """An HTML table of dead letters with escaped cells.

    Args:
        rows: one dict per dead letter, e.g. ``{"seq": 7, "subject": ..., "reason": ...}``.
        columns: show only these columns, in this order.

    Returns:
        A ``DeadLetterTable`` widget; ``table.update(rows)`` redraws it in place.
    """
    return DeadLetterTable(rows, columns=columns)
