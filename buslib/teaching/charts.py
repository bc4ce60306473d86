"""Charts for the lessons: messages handled per worker (live), delivery timelines, handling order.

>>> from buslib.teaching import WorkerCounts, delivery_timeline, handling_order
>>> counts = WorkerCounts(["w1", "w2"])     # doctest: +SKIP
>>> counts.increment("w1")                  # doctest: +SKIP
1
>>> delivery_timeline({"nak()": [0.0, 0.001], "nak(delay=1)": [0.0, 1.0]}, title="Retries")  # doctest: +SKIP
>>> handling_order({"C-1": [0, 1, 2], "C-2": [0, 2, 1]}).late                                   # doctest: +SKIP
{'C-1': [], 'C-2': [1]}

Keep the numbers in the view's attributes (``counts.counts``, ``figure.series``): a lesson
asserts on them.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from buslib.teaching._html import bundle_with_html, table_html

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Timeline", "WorkerCounts", "delivery_timeline", "handling_order", "late_events"]  # noqa: F822 (Timeline is made on first use)


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
        return bundle_with_html(
            self,
            self.text,
            f"<b>{html.escape(self.title)}</b>" + table_html(["worker", "messages"], rows, numeric={1}),
            **kwargs,
        )

    def _add(self, name: str) -> None:
        self._counts[name] = 0
        self._bars[name] = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="300px"))
        self._labels[name] = widgets.Label("0")
        row = widgets.HBox(
            [widgets.Label(name, layout=widgets.Layout(width="90px")), self._bars[name], self._labels[name]]
        )
        self.children = (*self.children, row)  # type: ignore[has-type]
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
            summary_lines: list[str] | None = None  # set by handling_order(): event numbers instead of times

            @property
            def summary(self) -> str:
                """The chart as text: one line per series with its delivery times.

                (Named ``summary``, not ``text``: ``Figure.text()`` draws text on the figure.)
                """
                lines = [f"{self.title}:"]
                if self.summary_lines:  # a handling-order chart: event numbers
                    return "\n".join(lines + self.summary_lines)
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
    fig.series, fig.title = plotted, title  # type: ignore[attr-defined]
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


def late_events(order: Sequence[int]) -> list[int]:
    """The events handled after a later one of the same key: ``[0, 2, 1]`` -> ``[1]``.

    >>> late_events([0, 1, 2, 4, 5, 3]), late_events([1, 0, 2])
    ([3], [0])
    """
    late, highest = [], None
    for n in order:
        if highest is not None and n < highest:
            late.append(n)
        highest = n if highest is None else max(highest, n)
    return late


def handling_order(handled: Mapping[str, Sequence[int]], *, title: str = "Handling order per key") -> Figure:
    """Draw each key's events in the order they were handled; an event handled late is red.

    Args:
        handled: ``{key: [event number, ...]}`` in handling order, e.g. ``{"C-2": [0, 1, 2, 4, 3]}``.
        title: the chart title.

    Returns:
        A matplotlib Figure with ``series`` (the data), ``late`` (``{key: late events}``,
        see :func:`late_events`) and ``summary`` (the same as text).

    Raises:
        ValueError: ``handled`` is empty.
    """
    if not handled:
        raise ValueError("handling_order() needs at least one key, e.g. {'C-1': [0, 1, 2]}.")
    import matplotlib.pyplot as plt

    series = {str(k): [int(n) for n in v] for k, v in handled.items()}
    late = {k: late_events(v) for k, v in series.items()}
    width = max(len(v) for v in series.values())
    fig, ax = plt.subplots(figsize=(1.6 + 0.45 * width, 0.6 + 0.45 * len(series)), FigureClass=_timeline_class())
    plt.close(fig)  # shown once, by the cell's return value
    fig.series, fig.title, fig.late = series, title, late  # type: ignore[attr-defined]
    fig.summary_lines = [  # type: ignore[attr-defined]
        f"  {k}: " + " ".join(f"[{n}]" if n in late[k] else str(n) for n in v) for k, v in series.items()
    ]
    for row, (key, order) in enumerate(series.items()):
        for x, n in enumerate(order):
            red = n in late[key]
            ax.text(
                x,
                row,
                str(n),
                ha="center",
                va="center",
                fontsize=10,
                color="white",
                bbox={"boxstyle": "round,pad=0.3", "fc": "#c62828" if red else "#2e7d32", "ec": "none"},
            )
    ax.set_xlim(-0.7, width - 0.3)
    ax.set_ylim(-0.7, len(series) - 0.3)
    ax.invert_yaxis()
    ax.set_yticks(range(len(series)), list(series))
    ax.set_xticks(range(width), [str(i + 1) for i in range(width)])
    ax.set_xlabel("handled 1st, 2nd, ... (red: handled after a later event of the same key)")
    ax.set_title(title)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig
