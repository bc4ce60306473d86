"""One node of an embedded cluster: an EmbeddedServer with a name, routes, and a monitoring view.

>>> node = ClusterNode(name="n0", cluster_name="lab", cluster_port=16222,      # doctest: +SKIP
...                    routes=["nats://127.0.0.1:16222", "nats://127.0.0.1:16223"])
>>> node.start().monitor("/healthz")                                        # doctest: +SKIP
(200, {'status': 'ok'})

:class:`buslib.server.cluster.EmbeddedCluster` makes these; a node is everything an
:class:`~buslib.server.process.EmbeddedServer` is (binary lookup, ready when its log says so,
``crash()``, restart on the same ports and store, the watchdog), plus ``server_name`` and a
``cluster {}`` block in its config. Its route port is chosen by the cluster (every node must
know every other's), below the OS's automatic port range like its client and monitoring
ports, so a crashed node restarts on the same addresses.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from buslib.errors import ServerError
from buslib.server.process import EmbeddedServer, explain_failed_start

__all__ = ["ClusterNode"]

# Monitoring requests go straight to 127.0.0.1, never through an http_proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClusterNode(EmbeddedServer):
    """One nats-server of a cluster, on 127.0.0.1.

    Args:
        name: the server's name (``server_name``), e.g. ``"n0"``: leaders are reported by it.
        cluster_name: the cluster's name; every node of one cluster has the same.
        cluster_port: the port this node listens on for routes from the other nodes.
        routes: the route URLs of all nodes (its own may be among them).
        extra_config: lines appended to the config file.
        **options: ``EmbeddedServer`` options (ports, ``store_dir``, limits, ``binary``).

    Attributes:
        down_since: ``time.time()`` when the node was last crashed or stopped; None while it runs.
    """

    def __init__(
        self,
        *,
        name: str,
        cluster_name: str,
        cluster_port: int,
        routes: list[str],
        extra_config: str = "",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.name = name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = routes
        self.extra_config = extra_config
        self.down_since: float | None = None

    def config_text(self) -> str:
        """EmbeddedServer's config plus this node's name and its ``cluster {}`` block."""
        return (
            super().config_text()
            + f'server_name: "{self.name}"\n'
            + f'cluster {{\n  name: "{self.cluster_name}"\n  listen: "127.0.0.1:{self.cluster_port}"\n'
            + f"  routes: [{', '.join(self.routes)}]\n}}\n"
            + self.extra_config
        )

    def start(self) -> ClusterNode:
        super().start()
        self.down_since = None
        return self

    def crash(self) -> None:
        super().crash()
        self.down_since = time.time()

    def shutdown(self, timeout: float = 5.0) -> None:
        super().shutdown(timeout)
        self.down_since = time.time()

    def monitor(self, path: str, timeout: float = 1.0) -> tuple[int, Any]:
        """GET a monitoring endpoint: (HTTP status, parsed JSON or None); (0, None) when unreachable."""
        if not self.running:
            return 0, None
        try:
            with _HTTP.open(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:  # /healthz answers 503 with a JSON body
            try:
                return err.code, json.loads(err.read() or b"null")
            except ValueError:
                return err.code, None
        except (OSError, ValueError):
            return 0, None

    def jsz(self, query: str = "") -> dict[str, Any] | None:
        """This node's ``/jsz`` (JetStream as it sees it), or None when it does not answer."""
        status, info = self.monitor(f"/jsz{query}")
        return info if status == 200 and isinstance(info, dict) else None

    def streams(self, account: str = "$G") -> list[dict[str, Any]]:
        """The streams this node holds a copy of, as ``/jsz`` describes them (with their consumers)."""
        info = self.jsz(f"?acc={account}&streams=true&consumers=true&config=true") or {}
        return [detail for acc in info.get("account_details") or [] for detail in acc.get("stream_detail") or []]

    def stream_detail(self, stream: str, account: str = "$G") -> dict[str, Any] | None:
        """This node's copy of ``stream`` in ``account``, as ``/jsz`` describes it; None if it holds none."""
        return next((detail for detail in self.streams(account) if detail.get("name") == stream), None)

    def leads(self, stream: str, consumer: str | None = None, account: str = "$G") -> bool:
        """Whether this node reports itself as the leader of ``stream`` (or of its ``consumer``)."""
        detail = self.stream_detail(stream, account) or {}
        if consumer is not None:
            detail = next((c for c in detail.get("consumer_detail") or [] if c.get("name") == consumer), {})
        return bool((detail.get("cluster") or {}).get("leader") == self.name)

    def route_peers(self) -> set[str] | None:
        """The names of the nodes this node has a route to (``/routez``), or None when it does not answer.

        After a node crashes, the others keep their routes to it until they notice (its sockets close with it).
        """
        status, body = self.monitor("/routez")
        if status != 200 or not isinstance(body, dict):
            return None
        return {route.get("remote_name") for route in body.get("routes") or []} - {None}

    def healthy(self) -> bool:
        """``/healthz`` says 200: it knows the meta leader and everything it holds is current."""
        return self.monitor("/healthz")[0] == 200

    def log_tail(self, lines: int = 4) -> str:
        """The last lines of this node's log (empty if it has none yet)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except (OSError, ServerError):
            return ""

    def __repr__(self) -> str:
        state = f"port={self.port}" if self.running else "down"
        return f"<ClusterNode {self.name} {state}>"


def meta_state(nodes: list[ClusterNode], size: int) -> tuple[str | None, str]:
    """(the meta leader every running node agrees on, "") or (None, what is still missing)."""
    for node in nodes:
        if node.down_since is None and not node.running:  # died by itself, e.g. its route port was taken
            log = node.log_path.read_text(errors="replace")
            if "[FTL]" in log:
                raise explain_failed_start(log)
    running = [node for node in nodes if node.running]
    if not running:
        return None, "no node is running"
    leaders = set()
    for node in running:  # /jsz first: each failing /healthz writes a warning into the node's log
        meta = (node.jsz() or {}).get("meta_cluster") or {}
        if not meta.get("leader"):
            return None, f"{node.name} knows no meta leader yet"
        leaders.add(meta["leader"])
        if meta["leader"] == node.name:
            if meta.get("cluster_size", 0) < size:
                return None, f"the meta leader {node.name} knows {meta.get('cluster_size')} of {size} nodes"
            # Placement asks the meta leader, which may still count a running peer offline (2.11: an
            # R3 stream created then is refused, "peer offline").
            online = {peer.get("name") for peer in meta.get("replicas") or [] if not peer.get("offline")}
            away = sorted(other.name for other in running if other is not node and other.name not in online)
            if away:
                return None, f"the meta leader {node.name} does not see {', '.join(away)} online yet"
    if len(leaders) != 1:
        return None, f"the nodes disagree about the meta leader: {sorted(leaders)}"
    for node in running:
        status, health = node.monitor("/healthz")
        if status != 200:
            return None, f"{node.name} is not healthy yet ({status}: {health})"
    return leaders.pop(), ""
