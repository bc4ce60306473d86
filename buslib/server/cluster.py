"""An embedded JetStream cluster: N nats-servers on 127.0.0.1, owned by this process, nothing left behind.

>>> from buslib.server import EmbeddedCluster
>>> with EmbeddedCluster() as cluster:                  # 3 nodes, temporary stores, ready in ~0.3 s
...     len(cluster.urls), cluster.meta_leader() in cluster.names
(3, True)

In a notebook or a test (``nats.connect`` wants the list; ``buslib.connect`` also takes the
comma-separated ``cluster.url``, the ``NATS_URL`` form)::

    async with EmbeddedCluster() as cluster:
        nc = await nats.connect(servers=cluster.urls)
        await nc.jetstream().add_stream(name="ORDERS", subjects=["orders.>"], num_replicas=3)
        old = await cluster.wait_for_leader("ORDERS")          # "n1"
        cluster.crash(old)                                     # SIGKILL: an election, 4-12 s
        new = await cluster.wait_for_leader("ORDERS", other_than=old)
        cluster.restart(old)                                   # same ports, same store; catches up

How it works:

- Every node is a :class:`~buslib.server.node.ClusterNode`: an EmbeddedServer with a
  ``server_name`` (``n0``, ...) and a ``cluster {}`` block listing every node's route; its
  ports lie below the OS's automatic range (a crashed node comes back on the same addresses).
- Ready means usable: every running node names the same JetStream meta leader, which knows
  all N nodes, and every node's ``/healthz`` says 200. Polled every 10 ms, never slept for.
- A fresh cluster elects its first meta leader in ~0.2-0.8 s, but in ~6% of starts (2.15) a
  split vote delays it 4-9 s (server timers no option changes). With temporary stores a new
  start is quicker: after ``BOOTSTRAP_PATIENCE`` seconds the nodes are replaced, at most twice.
- Who leads a stream or consumer comes from each node's ``/jsz`` (the node that reports itself
  as leader): no client needed, so it works while clients reconnect.
- Nothing left behind: the owner's watchdog guards every node, as for one EmbeddedServer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

from buslib.errors import ServerError
from buslib.server.node import ClusterNode, meta_state
from buslib.server.ports import restartable_ports

__all__ = ["BOOTSTRAP_PATIENCE", "EmbeddedCluster", "NodeRef"]

BOOTSTRAP_PATIENCE = 2.0  # seconds; a normal first meta election took 0.17-0.78 s (70 starts, 2 busy cores)
BOOTSTRAP_RETRIES = 2  # fresh starts after a split vote, temporary stores only
POLL = 0.01  # seconds between looks at the nodes' monitoring endpoints

NodeRef = int | str  # a node's index (0..N-1) or its name ("n0".."n{N-1}")


class EmbeddedCluster:
    """A JetStream cluster of ``size`` nats-servers on 127.0.0.1, owned by this process.

    Args:
        size: number of nodes; 3 keeps a quorum (2) when one is lost, and R3 streams need 3.
        name: the cluster's name (``cluster.name`` in each node's config).
        store_root: persistent stores in ``<store_root>/n0``, ``n1``...; ``None``: temporary
            ones, removed by ``stop()`` (and by the watchdog if this process dies first).
        ports / monitor_ports / cluster_ports: fixed client, monitoring and route ports, one
            per node; ``None`` picks free ones.
        max_memory_store / max_file_store: JetStream limits per node.
        ready_timeout: seconds ``start()`` and ``restart()`` wait for the cluster to be ready.
        binary: the nats-server to run (2.11+); found like EmbeddedServer's when omitted.
        extra_config: lines appended to every node's config file (e.g. ``"debug: true\\n"``).
        node_names: the nodes' ``server_name`` (default ``n0``, ``n1``, ...).
        config_files: a configuration per node to run instead (a workshop room's); it names the
            node's ports, store and ``cluster {}`` block: those options are then ignored.
        account: whose streams ``leader_of()``, ``stored()`` and ``move_leader()`` look at.

    Attributes:
        nodes: the :class:`ClusterNode` objects, ``n0`` first.
        history: ``(time.time(), action, node)`` for each crash, stop and restart of a node.
        bootstrap_attempts: how many fresh starts ``start()`` needed (1 normally).
    """

    def __init__(
        self,
        size: int = 3,
        *,
        name: str = "lab",
        store_root: str | Path | None = None,
        ports: list[int] | None = None,
        monitor_ports: list[int] | None = None,
        cluster_ports: list[int] | None = None,
        max_memory_store: str = "64MB",
        max_file_store: str = "256MB",
        ready_timeout: float = 30.0,
        binary: str | Path | None = None,
        extra_config: str = "",
        node_names: list[str] | None = None,
        config_files: list[str | Path] | None = None,
        account: str = "$G",
    ) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"A cluster needs at least one node, got size={size!r}.")
        per_node: dict[str, list[Any] | None] = {"ports": ports, "monitor_ports": monitor_ports}
        per_node.update(cluster_ports=cluster_ports, node_names=node_names, config_files=config_files)
        for option, given in per_node.items():
            if given is not None and len(given) != size:
                raise ValueError(f"{option} needs one entry per node ({size}), got {given!r}.")
        self.size = size
        self.name = name
        self.ready_timeout = ready_timeout
        self._store_root = Path(store_root).expanduser().resolve() if store_root else None
        self._ports = (ports, monitor_ports, cluster_ports)
        self._limits = {"max_memory_store": max_memory_store, "max_file_store": max_file_store}
        self._binary = binary
        self._extra_config = extra_config
        self._names = list(node_names or (f"n{i}" for i in range(size)))
        self._config_files = config_files
        self.account = account
        self.nodes: list[ClusterNode] = []
        self.history: list[tuple[float, str, str]] = []
        self.bootstrap_attempts = 0

    # -- facts ----------------------------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        """Client URLs of all nodes, for ``nats.connect(servers=cluster.urls)`` or ``buslib.connect``."""
        self._require_started()
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The comma-separated form, for ``NATS_URL`` (``buslib.connect`` splits it; nats-py does not)."""
        return ",".join(self.urls)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def version(self) -> str | None:
        return next((node.version for node in self.nodes if node.version), None)

    def node(self, ref: NodeRef) -> ClusterNode:
        """A node by index (``0``) or name (``"n0"``, as ``leader_of()`` returns it).

        Raises:
            ValueError: no such node.
        """
        self._require_started()
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(self.nodes):
            return self.nodes[ref]
        for node in self.nodes:
            if node.name == ref:
                return node
        raise ValueError(f"No node {ref!r} in this cluster: use 0..{self.size - 1} or one of {self.names}.")

    def running(self) -> list[str]:
        """Names of the nodes whose process is running."""
        return [node.name for node in self.nodes if node.running]

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> EmbeddedCluster:
        """Start every node (or the stopped ones) and wait until the cluster is ready.

        Raises:
            ServerError: a node did not start (its log says why), or no meta leader was
                elected within ``ready_timeout`` (the message shows what each node reports).
        """
        if self.nodes:
            for node in self.nodes:
                if not node.running:
                    node.start()
                    self.history.append((time.time(), "restart", node.name))
            self.wait_ready()
            return self
        retries = BOOTSTRAP_RETRIES if self._store_root is None else 0
        for attempt in range(retries + 1):
            self._launch_nodes()
            last = attempt == retries
            try:
                self.wait_ready(timeout=None if last else min(BOOTSTRAP_PATIENCE, self.ready_timeout))
            except ServerError as err:
                self.stop()
                if last or not _worth_a_fresh_start(err):
                    raise
                continue
            except BaseException:  # an interrupt while waiting: no half-started cluster
                self.stop()
                raise
            self.bootstrap_attempts = attempt + 1
            return self
        raise AssertionError("unreachable")  # the last attempt returned or raised

    def wait_ready(self, timeout: float | None = None) -> str:
        """Block until every running node is healthy and agrees on one meta leader; return its name.

        Raises:
            ServerError: a node died, or not ready within ``timeout`` (default ``ready_timeout``).
        """
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        while True:
            leader, problem = meta_state(self.nodes, self.size)
            if leader is not None:
                return leader
            if time.monotonic() > deadline:
                waited = self.ready_timeout if timeout is None else timeout
                raise ServerError(
                    f"The cluster {self.name!r} did not become ready within {waited:g} s: {problem}.\n"
                    f"What each node last logged:\n{self._log_tails()}"
                )
            time.sleep(POLL)

    async def ready(self, timeout: float | None = None) -> str:
        """``wait_ready()`` without blocking the event loop; returns the meta leader's name."""
        return await asyncio.to_thread(self.wait_ready, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node (SIGTERM to all at once, then wait) and remove temporary stores."""
        for node in self.nodes:
            node.terminate()  # all at once: no node waits for the others' leadership hand-overs
        for node in self.nodes:
            node.stop(timeout=timeout)
        self.nodes = []

    def crash(self, ref: NodeRef) -> str:
        """SIGKILL a node, as a crash would (no hand-over: an election follows). Returns its name."""
        node = self.node(ref)
        node.crash()
        self.history.append((time.time(), "crash", node.name))
        return node.name

    def stop_node(self, ref: NodeRef, timeout: float = 10.0) -> str:
        """Stop a node gracefully (SIGTERM: it hands its leaderships over first); its store is kept."""
        node = self.node(ref)
        node.shutdown(timeout)
        self.history.append((time.time(), "stop", node.name))
        return node.name

    def restart(self, ref: NodeRef, *, wait: bool = True, timeout: float | None = None) -> str:
        """Start a crashed or stopped node again (same ports, same store). Returns its name.

        Args:
            wait: block until the cluster is ready again: the node found the meta leader and
                its streams and consumers are current (``/healthz``; the last messages it
                missed may still be arriving: ``stored()`` counts each node's copy). ``False``: return once it runs (in async
                code, ``await cluster.ready()`` then waits without blocking the loop).

        Raises:
            ServerError: it did not start, or was not healthy within ``timeout`` seconds.
        """
        node = self.node(ref)
        if node.running:
            node.restart()
        else:
            node.start()
        self.history.append((time.time(), "restart", node.name))
        if wait:
            self.wait_ready(timeout)
        return node.name

    def routing_to(self, ref: NodeRef) -> list[str]:
        """The other running nodes that still route to node ``ref``, or do not say (after a crash: until they notice)."""
        name = self.node(ref).name
        return [n.name for n in self._up() if n.name != name and ((peers := n.route_peers()) is None or name in peers)]

    async def wait_until_noticed(self, ref: NodeRef, timeout: float = 10.0) -> None:
        """Wait until every other running node has dropped its routes to the crashed or stopped node ``ref``.

        Until then a request can still be sent toward the dead node and go unanswered; after, a
        publish to a stream only it held gets "no responders" at once.

        Raises:
            ServerError: some node still routes to it after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while still := await asyncio.to_thread(self.routing_to, ref):
            if time.monotonic() > deadline:
                raise ServerError(f"After {timeout:g} s, {', '.join(still)} still route to {self.node(ref).name}.")
            await asyncio.sleep(POLL)

    # -- who leads ------------------------------------------------------------------------
    def meta_leader(self) -> str | None:
        """The JetStream meta leader most running nodes report, or None."""
        views = [((node.jsz() or {}).get("meta_cluster") or {}).get("leader") for node in self._up()]
        named = Counter(v for v in views if v)
        return named.most_common(1)[0][0] if named else None

    def leader_of(self, stream: str, consumer: str | None = None) -> str | None:
        """The node that leads ``stream`` (or its ``consumer``) now; None during an election.

        The leader is the running node that reports itself as leader in its ``/jsz``.
        """
        return next((node.name for node in self._up() if node.leads(stream, consumer, self.account)), None)

    def stored(self, stream: str) -> dict[str, int | None]:
        """How many messages each node's copy of ``stream`` holds (None: the node is down or has no copy)."""
        counts: dict[str, int | None] = {name: None for name in self.names}
        for node in self._up():
            if (detail := node.stream_detail(stream, self.account)) is not None:
                counts[node.name] = (detail.get("state") or {}).get("messages", 0)
        return counts

    async def wait_for_leader(
        self, stream: str, consumer: str | None = None, *, other_than: str | None = None, timeout: float = 30.0
    ) -> str:
        """Wait (without blocking the event loop) for a leader of ``stream``/``consumer`` other than ``other_than``.

        Raises:
            ServerError: none within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = await asyncio.to_thread(self.leader_of, stream, consumer)
            if leader is not None and leader != other_than:
                return leader
            await asyncio.sleep(0.02)
        what = f"consumer {stream}/{consumer}" if consumer else f"stream {stream}"
        raise ServerError(f"No new leader for {what} within {timeout:g} s (running nodes: {self.running()}).")

    async def move_leader(self, stream: str, to: NodeRef, *, consumer: str | None = None, timeout: float = 10.0) -> str:
        """Hand the leadership of ``stream`` (or its ``consumer``) to node ``to``, as an operator would.

        Sends JetStream's leader stepdown request with ``to`` as the preferred node (what
        ``nats stream cluster step-down --preferred`` does) until ``to`` leads: a node that
        just restarted is passed over until its copy is current.

        Raises:
            ServerError: ``to`` holds no copy, or did not take over within ``timeout`` seconds
                (the message has the server's last answer).
        """
        import nats  # here: the rest of buslib.server needs no client
        import nats.errors

        target = self.node(to).name
        what = f"consumer {stream}/{consumer}" if consumer else f"stream {stream}"
        if self.node(target).stream_detail(stream, self.account) is None:
            raise ServerError(f"Cannot move the leader of {what} to {target}: {target} holds no copy of {stream}.")
        api = f"CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}" if consumer else f"STREAM.LEADER.STEPDOWN.{stream}"
        request = json.dumps({"placement": {"preferred": target}}).encode()
        deadline = time.monotonic() + timeout
        nc = None
        answer: dict[str, Any] = {}
        try:
            while (leader := await asyncio.to_thread(self.leader_of, stream, consumer)) != target:
                if time.monotonic() > deadline:
                    said = f"; the last answer: {answer['error']}" if answer.get("error") else ""
                    raise ServerError(
                        f"{target} did not take over {what} within {timeout:g} s (leader: {leader}{said})."
                    )
                if leader is not None:  # during an election there is nobody to ask
                    if nc is None:
                        servers = [node.url for node in self._up()]
                        nc = await nats.connect(servers=servers, connect_timeout=2, error_cb=_quiet)
                    # Refusals right after a change pass ("consumer not found" while its creation spreads,
                    # 503 without a leader); the loop asks again until the deadline.
                    try:
                        reply = await nc.request(f"$JS.API.{api}", request, timeout=2)
                        answer = json.loads(reply.data or b"{}")
                    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):  # busy, or mid-election
                        answer = {"error": "no answer to the stepdown request within 2 s"}
                await self._wait_leader(stream, consumer, target, min(deadline, time.monotonic() + 1.0))
        finally:
            if nc is not None:
                await nc.close()
        return target

    async def _wait_leader(self, stream: str, consumer: str | None, target: str, until: float) -> None:
        while time.monotonic() < until and await asyncio.to_thread(self.leader_of, stream, consumer) != target:
            await asyncio.sleep(0.02)

    # -- context managers -----------------------------------------------------------------
    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedCluster:
        return await asyncio.to_thread(self.start)  # an election takes a moment: keep the loop free

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        return f"<EmbeddedCluster {self.name!r} nodes={self.nodes!r}>"

    # -- internals ------------------------------------------------------------------------
    def _require_started(self) -> None:
        if not self.nodes:
            raise ServerError("The cluster has not been started yet: call start() or use it as a context manager.")

    def _up(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running]

    def _launch_nodes(self) -> None:
        """Create the nodes with their ports and start them at once, one thread each."""
        ports, monitor_ports, cluster_ports = self._ports
        routes_at = list(cluster_ports or restartable_ports(self.size))
        routes = [f"nats://127.0.0.1:{p}" for p in routes_at]
        self.nodes = [
            ClusterNode(
                name=self._names[i],
                cluster_name=self.name,
                cluster_port=routes_at[i],
                routes=routes,
                extra_config=self._extra_config,
                port=ports[i] if ports else 0,
                monitor_port=monitor_ports[i] if monitor_ports else 0,
                store_dir=self._store_root / f"n{i}" if self._store_root else None,
                binary=self._binary,
                config_file=self._config_files[i] if self._config_files else None,
                **self._limits,
            )
            for i in range(self.size)
        ]
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.size) as pool:
            futures = [pool.submit(node.start) for node in self.nodes]
        errors = [err for err in (f.exception() for f in futures) if err is not None]
        if errors:
            self.stop()
            raise errors[0]

    def _log_tails(self) -> str:
        return "\n".join(f"--- {node.name} ---\n{node.log_tail(4)}" for node in self.nodes)


def _worth_a_fresh_start(err: ServerError) -> bool:
    """A split vote (not ready in time) or a port taken meanwhile; not a missing binary or a bad store."""
    text = str(err)
    return "did not become ready" in text or "already in use" in text or "already taken" in text


async def _quiet(err: Exception) -> None:
    """nats-py prints a connection's errors unless told otherwise; a node going down is expected here."""
