"""The instructor's board as a live notebook widget (``notebooks/instructor_board.ipynb``).

>>> board = board_widget(instructor_url, sys_url=sys_url, learners=room.learners)   # doctest: +SKIP
>>> board                         # displays, then refreshes every 2 s
>>> view = await board.refresh()  # now; ``view.stuck``, ``view.most_failing``
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from collections.abc import Iterable
from typing import Any

import ipywidgets as widgets

from buslib.connection import connect
from buslib.teaching._html import STYLE, LiveView, table_html
from buslib.workshop.board import (
    BoardState,
    BoardView,
    ago,
    format_board,
    marks_by_exercise,
    server_stats,
    servers_label,
)
from buslib.workshop.config import Learner
from buslib.workshop.progress import ProgressReader, connect_instructor, ensure_progress_stream

__all__ = ["BoardWidget", "board_widget"]

_COLOUR = {"correct": "#2e7d32", "incorrect": "#c62828", "error": "#ef6c00", "not attempted": "#757575"}


class BoardWidget(LiveView):
    """A live board of a workshop room: who is where, who is stuck, which question fails most.

    It reads the room's PROGRESS stream as the instructor (records arrive as learners
    check), and the server's load as the system user when ``sys_url`` is given. Once
    displayed it refreshes itself every ``refresh`` seconds; it never raises into the
    notebook (an error is shown on the board). ``close()`` stops it.

    Attributes:
        view: the last :class:`~buslib.workshop.board.BoardView` (None before the first refresh).
        error: why the last refresh failed, or None.
    """

    def __init__(
        self,
        url: str,
        *,
        sys_url: str | None = None,
        learners: Iterable[Learner] | None = None,
        refresh: float | None = 2.0,
        tls: Any = None,
    ) -> None:
        self._html = widgets.HTML()
        super().__init__(children=[self._html])
        self.add_class("buslib-workshop-board")
        self.url, self.sys_url, self.interval, self.tls = url, sys_url, refresh, tls
        self.state = BoardState(learners)
        self.view: BoardView | None = None
        self.error: str | None = None
        self._nc: Any = None
        self._sys: Any = None
        self._reader: ProgressReader | None = None
        self._lock: asyncio.Lock | None = None
        self._go_live()
        self._render()

    async def refresh(self) -> BoardView | None:
        """Read new records and the server's load now, and redraw. Returns the new view."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                reader = await self._ensure_reader()
                await reader.catch_up(timeout=5.0)
                self.state.add(await reader.read())
                stats = await server_stats(self._sys) if self._sys is not None else None
                self.view, self.error = self.state.view(server=stats), None
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the board says what happened; the notebook goes on
                self.error = f"{type(err).__name__}: {err}"
            self._render()
            return self.view

    async def aclose(self) -> None:
        """Stop refreshing and close the board's connections and the widget."""
        self.stop()
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None
        for nc in (self._nc, self._sys):
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
        self._nc = self._sys = None
        self.close()

    @property
    def text(self) -> str:
        if self.view is None:
            return "Workshop board: " + (self.error or "waiting for the first refresh")
        return format_board(self.view) + (f"\n({self.error})" if self.error else "")

    async def _ensure_reader(self) -> ProgressReader:
        if self._nc is None or self._nc.is_closed:
            self._nc = await connect_instructor(self.url, name="buslib-workshop-board", tls=self.tls)
            await ensure_progress_stream(self._nc.jetstream(timeout=5))  # a room served by docker compose
            self._reader = await ProgressReader(self._nc).start()
        if self.sys_url and (self._sys is None or self._sys.is_closed):
            self._sys = await connect(
                self.sys_url, name="buslib-workshop-board-stats", instructor=True, require_jetstream=False, tls=self.tls
            )
        assert self._reader is not None
        return self._reader

    def _render(self) -> None:
        parts = [f'<div style="{STYLE}"><b>Workshop board</b> ']
        view = self.view
        if view is None:
            parts.append(f'<span style="color:#666">{html.escape(self.error or "connecting…")}</span></div>')
            self._html.value = "".join(parts)
            return
        started = sum(r.current is not None for r in view.learners)
        parts.append(f"{started} of {len(view.learners)} learners started, {view.records} checks recorded")
        if view.server:
            s = view.server
            where = servers_label(s).lower()
            parts.append(f" &nbsp; {where}: CPU {s.cpu:.0f}%, {s.mem / 1024**2:.0f} MiB, {s.connections} connections")
        if self.error:
            parts.append(f'<div style="color:#c62828">{html.escape(self.error)}</div>')
        if view.stuck:
            items = "".join(
                f"<li><b>{html.escape(r.user)}</b> on {html.escape(r.current or '')} ({r.tries} tries, "
                f"{ago(view.updated - (r.failing_since or view.updated))}): {html.escape(r.message[:120])}</li>"
                for r in view.stuck
            )
            parts.append(f'<div style="color:#c62828;margin-top:4px">Stuck:<ul style="margin:0">{items}</ul></div>')
        if view.most_failing:
            rows = [(q.key, q.title, q.failing, q.correct) for q in view.most_failing[:5]]
            parts.append("<div style='margin-top:4px'>Failing most</div>")
            parts.append(table_html(["question", "asks", "failing", "correct"], rows, numeric={2, 3}))
        keys = [q.key for q in view.questions]
        exercises = list(dict.fromkeys(key.split("/", 1)[0] for key in keys))
        rows_html = []
        for r in view.learners:
            colour = _COLOUR.get(r.status or "", "#212121")
            marks = "".join(f"<td style='padding:2px 6px'>{m}</td>" for m in marks_by_exercise(r, keys))
            seen = f"{ago(view.updated - r.last_seen)} ago" if r.last_seen else ""
            rows_html.append(
                f"<tr{' style=background:#ffebee' if r.stuck else ''}><td style='padding:2px 8px'>{html.escape(r.user)}</td>"
                f"<td style='padding:2px 8px;text-align:right'>{r.done}/{r.total}</td>"
                f"<td style='padding:2px 8px'>{html.escape(r.current or '-')}</td>"
                f"<td style='padding:2px 8px;color:{colour}'>{html.escape(r.status or '')}</td>"
                f"<td style='padding:2px 8px;text-align:right'>{r.tries or ''}</td>"
                f"<td style='padding:2px 8px'>{seen}</td>{marks}</tr>"
            )
        head = "".join(
            f"<th style='padding:2px 8px;text-align:left'>{h}</th>"
            for h in ["learner", "done", "now at", "status", "tries", "last seen", *exercises]
        )
        parts.append(
            f"<table style='border-collapse:collapse;margin-top:4px'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows_html)}</tbody></table>"
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(view.updated))
        parts.append(f'<div style="color:#999;font-size:11px">updated {stamp}</div></div>')
        self._html.value = "".join(parts)


def board_widget(
    url: str,
    *,
    sys_url: str | None = None,
    learners: Iterable[Learner] | None = None,
    refresh: float | None = 2.0,
    tls: Any = None,
) -> BoardWidget:
    """A live board of a workshop room.

    Args:
        url: the instructor's URL (``BUSLIB_WORKSHOP_URL`` in the room's ``instructor.env``).
        sys_url: the system user's URL, for the server's load (``BUSLIB_WORKSHOP_SYS_URL``).
        learners: the room's learners (``Room.load(folder).learners``), listed before their first check.
        refresh: seconds between refreshes once displayed; ``None`` for ``await board.refresh()`` only.
        tls: an SSL context for a server with a self-signed certificate.
    """
    return BoardWidget(url, sys_url=sys_url, learners=learners, refresh=refresh, tls=tls)
