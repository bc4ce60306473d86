"""A live view of one NATS server: URL, version, JetStream, streams with their messages and consumers.

>>> from buslib.teaching import status_panel
>>> panel = status_panel()                  # doctest: +SKIP
>>> panel                                   # doctest: +SKIP  (displays, then refreshes every 2 s)
>>> await panel.refresh()                   # doctest: +SKIP
>>> panel.data["streams"]["ORDERS"]         # doctest: +SKIP
{'messages': 3, 'consumers': 1, 'subjects': ['orders.>'], 'bytes': 231}
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import html
import time
from typing import Any

import ipywidgets as widgets

from buslib._nats.info import jetstream_enabled, server_version
from buslib.connection import connect, ensure_server
from buslib.teaching._html import STYLE, LiveView, table_html, text_table

__all__ = ["StatusPanel", "status_panel"]


class StatusPanel(LiveView):
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
        self._lock: asyncio.Lock | None = None
        self._go_live()
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
            lines.append(text_table(["stream", "subjects", "messages", "consumers"], rows))
        elif d["connected"] and d["jetstream"]:
            lines.append("no streams" + (f" matching {self.pattern!r}" if self.pattern else ""))
        return "\n".join(lines)

    # -- internals --------------------------------------------------------------------
    def _on_view_count(self, change: dict[str, Any]) -> None:
        super()._on_view_count(change)
        if not change["new"] and change["old"]:  # off screen: its connection goes too
            self._drop_connection()

    def _drop_connection(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule on
                asyncio.get_running_loop().create_task(_close_quietly(nc))

    async def _connection(self) -> Any:
        if self._nc is None or self._nc.is_closed:
            self._nc = await connect(
                self.url, name="buslib-status-panel", connect_timeout=self.timeout, require_jetstream=False
            )
        return self._nc

    async def _snapshot(self) -> dict[str, Any]:
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
        jetstream = await jetstream_enabled(nc, timeout=self.timeout)
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
            "version": server_version(nc),
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
            f'<div style="{STYLE}">',
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
            parts.append(table_html(["stream", "subjects", "messages", "consumers"], shown, numeric={2, 3}))
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
