"""A live view of consumer groups' lag: how far behind each group is, its trend, and the alerts.

>>> from buslib.teaching import lag_view
>>> view = lag_view(bus, [(OrderPlaced, "billing"), (OrderPlaced, "audit")], threshold=100)  # doctest: +SKIP
>>> view                               # doctest: +SKIP  (displays, then refreshes every second)
>>> await view.refresh()               # doctest: +SKIP
>>> view.history["billing"], [a.state for a in view.alerts]   # doctest: +SKIP
([60, 120, 180], ['lagging'])

Each refresh is one poll of a :class:`~buslib.bus.lag.LagWatcher`: the view shows every
group's lag (pending + unacknowledged), a sparkline of its recent values, and whether the
watcher considers it lagging. The numbers stay in ``view.history`` and ``view.alerts`` for
a lesson to assert on; ``await view.refresh()`` polls at a moment the code decides.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Iterable
from typing import Any

import ipywidgets as widgets

from buslib.bus.lag import AlertHook, GroupLag, LagAlert, LagWatcher
from buslib.teaching._html import STYLE, LiveView, text_table

__all__ = ["LagView", "lag_view"]

KEEP = 120  # points of history per group (two minutes at the default refresh)
_CELL = "padding: 2px 10px; border-bottom: 1px solid #ddd;"


class LagView(LiveView):
    """A live table of groups' lag with a trend line each, fed by a :class:`LagWatcher`.

    Create it with ``lag_view(...)``. Once displayed it refreshes itself every ``refresh``
    seconds from a background task (and stops when its output is cleared); ``await
    view.refresh()`` polls now. A failed poll shows the error and never raises into the
    notebook.

    Attributes:
        watcher: the :class:`LagWatcher` (its ``threshold``, ``alerts``).
        history: group -> every polled ``behind`` value, oldest first (the last 120).
        latest: group -> the last :class:`GroupLag` read.
        error: why the last refresh failed, or None.
    """

    def __init__(
        self,
        bus: Any,
        groups: Iterable[tuple[Any, str]],
        *,
        threshold: int,
        refresh: float | None = 1.0,
        samples: int = 3,
        on_alert: AlertHook | None = None,
    ) -> None:
        self._html = widgets.HTML()
        super().__init__(children=[self._html])
        self.add_class("buslib-lag-view")
        self.watcher = LagWatcher(
            bus, groups, threshold=threshold, on_alert=on_alert, interval=refresh or 1.0, samples=samples
        )
        self.interval = refresh
        self.history: dict[str, list[int]] = {group: [] for _, group in self.watcher.groups}
        self.latest: dict[str, GroupLag] = {}
        self.error: str | None = None
        self.updated: float | None = None
        self._lock: asyncio.Lock | None = None
        self._go_live()
        self._render()

    @property
    def alerts(self) -> list[LagAlert]:
        """Every alert the watcher raised, oldest first."""
        return list(self.watcher.alerts)

    async def refresh(self) -> dict[str, GroupLag]:
        """Poll every group's lag now, record it and redraw.

        Returns:
            group -> its lag (empty if the poll failed; ``error`` says why).
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # the background task and a lesson cell may refresh at once
            try:
                found = await self.watcher.poll_once()
                self.error = None
            except asyncio.CancelledError:
                raise
            except Exception as err:  # never into the kernel: the view says what happened
                found, self.error = {}, f"{type(err).__name__}: {err}"
            for group, lag in found.items():
                self.latest[group] = lag
                points = self.history.setdefault(group, [])
                points.append(lag.behind)
                del points[:-KEEP]
            self.updated = time.time()
            self._render()
            return found

    @property
    def text(self) -> str:
        """The view as plain text (for frontends without widgets)."""
        rows = [
            (g, lag.behind, lag.num_pending, lag.num_ack_pending, lag.num_redelivered, self._state(g))
            for g, lag in self.latest.items()
        ]
        head = f"Consumer group lag (alert above {self.watcher.threshold} for {self.watcher.samples} polls)"
        if not rows:
            return head + ": nothing polled yet" + (f" ({self.error})" if self.error else "")
        table = text_table(["group", "behind", "pending", "unacked", "redelivered", "state"], rows)
        return head + "\n" + table + (f"\n({self.error})" if self.error else "")

    def _state(self, group: str) -> str:
        return "LAGGING" if group in self.watcher.lagging else "ok"

    def _render(self) -> None:
        threshold = self.watcher.threshold
        scale = max([threshold, *(max(p, default=0) for p in self.history.values())]) or 1
        rows = []
        for group, points in self.history.items():
            lag = self.latest.get(group)
            lagging = group in self.watcher.lagging
            colour = "#c62828" if lagging else "#2e7d32"
            numbers = (
                f"{lag.behind} behind <span style='color:#666'>({lag.num_pending} pending, "
                f"{lag.num_ack_pending} unacked, {lag.num_redelivered} redelivered)</span>"
                if lag
                else "<span style='color:#666'>no durable yet</span>"
            )
            rows.append(
                f"<tr><td style='{_CELL}'><b>{html.escape(group)}</b></td><td style='{_CELL}'>{numbers}</td>"
                f"<td style='{_CELL}'>{_sparkline(points, scale, threshold, colour)}</td>"
                f"<td style='{_CELL};color:{colour}'>● {self._state(group)}</td></tr>"
            )
        parts = [
            f'<div style="{STYLE}"><b>Consumer group lag</b> '
            f"<span style='color:#666'>(alert above {threshold} for {self.watcher.samples} polls; "
            "dashed line: the threshold)</span>",
            f"<table style='border-collapse: collapse;'>{''.join(rows)}</table>",
        ]
        if self.error:
            parts.append(f'<div style="color:#c62828">{html.escape(self.error)}</div>')
        if self.updated:
            stamp = time.strftime("%H:%M:%S", time.localtime(self.updated))
            parts.append(f'<div style="color:#999; font-size: 11px">updated {stamp}</div>')
        parts.append("</div>")
        self._html.value = "".join(parts)


def _sparkline(points: list[int], scale: int, threshold: int, colour: str, width: int = 160, height: int = 28) -> str:
    """A small inline SVG: the group's recent lag, and the threshold as a dashed line."""
    if not points:
        return ""
    step = width / max(len(points) - 1, 1)
    xy = " ".join(f"{i * step:.1f},{height - 2 - (height - 4) * p / scale:.1f}" for i, p in enumerate(points))
    limit = height - 2 - (height - 4) * threshold / scale
    return (
        f"<svg width='{width}' height='{height}' style='vertical-align: middle'>"
        f"<line x1='0' y1='{limit:.1f}' x2='{width}' y2='{limit:.1f}' stroke='#999' stroke-dasharray='3,3'/>"
        f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{xy}'/></svg>"
    )


def lag_view(
    bus: Any,
    groups: Iterable[tuple[Any, str]],
    *,
    threshold: int,
    refresh: float | None = 1.0,
    samples: int = 3,
    on_alert: AlertHook | None = None,
) -> LagView:
    """A live lag view of consumer groups.

    Args:
        bus: the ``EventBus`` to ask.
        groups: ``(target, group)`` pairs, e.g. ``[(OrderPlaced, "billing")]``.
        threshold: messages behind that count as too many (the watcher's alert line).
        refresh: seconds between automatic refreshes once displayed; ``None`` for manual only.
        samples: polls in a row above the threshold, not shrinking, before "lagging".
        on_alert: also call this with each :class:`LagAlert` (sync or async).

    Returns:
        A ``LagView`` widget; display it, and ``await view.refresh()`` to poll now.
    """
    return LagView(bus, groups, threshold=threshold, refresh=refresh, samples=samples, on_alert=on_alert)
