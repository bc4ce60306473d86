"""A live view of an embedded cluster: its nodes, who leads what, and each node's copy of each stream.

>>> from buslib.teaching import cluster_panel
>>> panel = cluster_panel(cluster)          # doctest: +SKIP
>>> panel                                   # doctest: +SKIP  (displays, then refreshes every second)
>>> data = await panel.refresh()            # doctest: +SKIP
>>> data["streams"]["ORDERS"]["copies"]     # doctest: +SKIP
{'n0': {'messages': 10000, 'current': True, 'lag': 0}, 'n1': ..., 'n2': {'messages': None, ...}}

Everything comes from each running node's monitoring endpoint (``/jsz``), not from a client
connection, so the panel keeps working while clients reconnect and leaders are elected. A
stream's leader is the node that reports itself as leader; ``current`` and ``lag`` are the
leader's view of each follower (``lag`` counts raft entries behind the leader, not messages);
``messages`` is what each node's own copy holds.
"""

from __future__ import annotations

import asyncio
import fnmatch
import html
import time
from typing import Any

import ipywidgets as widgets

from buslib.server import EmbeddedCluster
from buslib.teaching._html import STYLE, LiveView, table_html, text_table

__all__ = ["ClusterPanel", "cluster_panel", "cluster_snapshot"]


def cluster_snapshot(cluster: EmbeddedCluster, streams: str | None = None) -> dict[str, Any]:
    """The cluster as its nodes report it now (blocking: a few HTTP requests to 127.0.0.1).

    Args:
        streams: only streams whose name matches this glob (e.g. ``"LESSON06_*"``).

    Returns:
        ``{"nodes": {name: {"running", "meta_leader", "down_since"}}, "meta_leader": name or None,
        "streams": {name: {"leader", "replicas", "copies": {node: {"messages", "current", "lag"}},
        "consumers": {name: leader}}}, "updated": epoch seconds}``.
    """
    meta = cluster.meta_leader() if cluster.nodes else None
    nodes = {
        node.name: {"running": node.running, "meta_leader": node.name == meta, "down_since": node.down_since}
        for node in cluster.nodes
    }
    found: dict[str, dict[str, Any]] = {}
    for node in cluster.nodes:
        if not node.running:
            continue
        for detail in node.streams():
            name = detail.get("name", "")
            if streams and not fnmatch.fnmatchcase(name, streams):
                continue
            entry = found.setdefault(name, {"leader": None, "replicas": 0, "copies": {}, "consumers": {}})
            info = detail.get("cluster") or {}
            entry["copies"].setdefault(node.name, {"current": None, "lag": None})
            entry["copies"][node.name]["messages"] = (detail.get("state") or {}).get("messages", 0)
            entry["replicas"] = max(entry["replicas"], (detail.get("config") or {}).get("num_replicas") or 1)
            for peer in info.get("replicas") or []:  # every node's view names its peers, down ones too
                entry["copies"].setdefault(peer["name"], {"messages": None, "current": None, "lag": None})
            if info.get("leader") == node.name:  # the leader's view of its followers
                entry["leader"] = node.name
                entry["copies"][node.name].update(current=True, lag=0)
                for peer in info.get("replicas") or []:
                    copy = entry["copies"].setdefault(peer["name"], {"messages": None})
                    copy.update(current=bool(peer.get("current")), lag=peer.get("lag") or 0)
            for consumer in detail.get("consumer_detail") or []:
                if (consumer.get("cluster") or {}).get("leader") == node.name:
                    entry["consumers"][consumer.get("name")] = node.name
                else:
                    entry["consumers"].setdefault(consumer.get("name"), None)
    for entry in found.values():  # replicas on nodes that are down: no copy to read
        entry["replicas"] = max(entry["replicas"], len(entry["copies"]))
        for copy in entry["copies"].values():
            copy.setdefault("messages", None)
    return {"nodes": nodes, "meta_leader": meta, "streams": dict(sorted(found.items())), "updated": time.time()}


class ClusterPanel(LiveView):
    """A live view of an :class:`~buslib.server.EmbeddedCluster`: nodes, leaders, each node's copy.

    Create it with ``cluster_panel(cluster)``. ``await panel.refresh()`` updates it now; once
    displayed it also refreshes itself every ``refresh`` seconds from a background task. It
    never raises into the notebook; ``panel.close()`` stops it.

    Attributes:
        data: the last :func:`cluster_snapshot` (``{}`` before the first refresh).
    """

    def __init__(self, cluster: EmbeddedCluster, *, refresh: float | None = 1.0, streams: str | None = None) -> None:
        self._html = widgets.HTML()
        super().__init__(children=[self._html])
        self.add_class("buslib-cluster-panel")
        self.cluster = cluster
        self.interval = refresh
        self.pattern = streams
        self.data: dict[str, Any] = {}
        self.error: str | None = None
        self._go_live()
        self._render()

    async def refresh(self) -> dict[str, Any]:
        """Ask every node now and redraw; returns the new ``data``."""
        try:
            data = await asyncio.to_thread(cluster_snapshot, self.cluster, self.pattern)
            self.data, self.error = _keep_unreachable(self.data, data), None
        except Exception as err:  # never into the kernel: the panel says what happened
            self.error = f"{type(err).__name__}: {err}"
        self._render()
        return self.data

    @property
    def text(self) -> str:
        """The panel as plain text (for frontends without widgets)."""
        if not self.data:
            return f"Cluster {self.cluster.name!r}: not read yet" + (f" ({self.error})" if self.error else "")
        lines = [f"Cluster {self.cluster.name!r}: " + ", ".join(self._node_words(n) for n in self.data["nodes"])]
        rows = self._rows()
        if rows:
            lines.append(text_table(self._headers(), rows))
        for stream, entry in self.data["streams"].items():
            for consumer, leader in entry["consumers"].items():
                lines.append(f"consumer {stream}/{consumer}: leader {leader or '(election)'}")
        return "\n".join(lines)

    def _node_words(self, name: str) -> str:
        node = self.data["nodes"][name]
        if not node["running"]:
            since = f" for {time.time() - node['down_since']:.0f} s" if node["down_since"] else ""
            return f"{name} down{since}"
        return f"{name} up" + (" (meta leader)" if node["meta_leader"] else "")

    def _headers(self) -> list[str]:
        return ["stream", "replicas", "leader", *self.data["nodes"]]

    def _rows(self) -> list[list[Any]]:
        rows = []
        for stream, entry in self.data["streams"].items():
            cells = []
            for name in self.data["nodes"]:
                copy = entry["copies"].get(name)
                if copy is None:
                    cells.append("-")  # holds no copy
                elif copy["messages"] is None:
                    cells.append("down")
                else:
                    behind = "" if copy["current"] in (True, None) else f" (behind, lag {copy['lag']})"
                    cells.append(f"{copy['messages']:,}{behind}")
            rows.append([stream, f"R{entry['replicas']}", entry["leader"] or "(election)", *cells])
        return rows

    def _render(self) -> None:
        parts = [f'<div style="{STYLE}"><b>Cluster</b> <code>{html.escape(self.cluster.name)}</code> ']
        for name in self.data.get("nodes", {}):
            node = self.data["nodes"][name]
            colour = "#2e7d32" if node["running"] else "#c62828"
            parts.append(f'<span style="color:{colour}">● {html.escape(self._node_words(name))}</span> &nbsp; ')
        if self.error:
            parts.append(f'<div style="color:#666">{html.escape(self.error)}</div>')
        rows = self._rows() if self.data else []
        if rows:
            parts.append(table_html(self._headers(), rows, numeric=set(range(3, 3 + len(self.data["nodes"])))))
            consumers = [
                f"{html.escape(stream)}/{html.escape(str(consumer))}: leader {html.escape(leader or '(election)')}"
                for stream, entry in self.data["streams"].items()
                for consumer, leader in entry["consumers"].items()
            ]
            if consumers:
                parts.append('<div style="color:#444">consumers: ' + "; ".join(consumers) + "</div>")
        elif self.data:
            parts.append('<div style="color:#666">no streams yet</div>')
        if self.data.get("updated"):
            stamp = time.strftime("%H:%M:%S", time.localtime(self.data["updated"]))
            parts.append(
                f'<div style="color:#999; font-size: 11px">each cell: messages in that node\'s copy; updated {stamp}</div>'
            )
        parts.append("</div>")
        self._html.value = "".join(parts)


def _keep_unreachable(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Keep showing a stream whose every copy is on nodes that are down now (an R1 stream's node died)."""
    for name, entry in (old.get("streams") or {}).items():
        if name in new["streams"]:
            continue
        if any(not new["nodes"].get(node, {}).get("running") for node in entry["copies"]):
            new["streams"][name] = {
                "leader": None,
                "replicas": entry["replicas"],
                "copies": {node: {"messages": None, "current": False, "lag": None} for node in entry["copies"]},
                "consumers": dict.fromkeys(entry["consumers"]),
            }
    new["streams"] = dict(sorted(new["streams"].items()))
    return new


def cluster_panel(cluster: EmbeddedCluster, *, refresh: float | None = 1.0, streams: str | None = None) -> ClusterPanel:
    """A live panel of ``cluster``: nodes up or down, leaders, and each node's copy of each stream.

    Args:
        refresh: seconds between automatic refreshes once displayed; ``None`` for manual only.
        streams: show only streams whose name matches this glob.
    """
    return ClusterPanel(cluster, refresh=refresh, streams=streams)
