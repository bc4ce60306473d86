"""Serving a workshop room with the bundled nats-server, and a small local room for rehearsals and tests.

>>> server = WorkshopServer(".buslib/workshop").start()     # doctest: +SKIP
>>> await server.prepare()                                  # doctest: +SKIP  (the PROGRESS stream)
>>> server.warnings                                         # doctest: +SKIP
['listening on 0.0.0.0 without TLS: ...']
>>> server.stop()                                           # doctest: +SKIP

>>> async with LocalRoom(learners=3) as room:               # doctest: +SKIP
...     room.learner_urls[0], room.instructor_url

The server is an :class:`~buslib.server.EmbeddedServer` running the room's own
configuration, so it is guarded like every other server of the kit: it never outlives the
process that started it. The room decides the interface (the instructor's choice), and every
connection must authenticate. ``start`` refuses an expired room.

A cluster room (``nodes`` > 1) runs on an :class:`~buslib.server.EmbeddedCluster`: each node
its own ``workshop-nN.conf`` (its ``server_name``, ports, store, routes on 127.0.0.1) around
the same ``accounts.conf``, and ``prepare`` keeps the PROGRESS stream on 3 nodes, so the
records survive a lost node. ``revive`` restarts a node that exited by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import socket
import ssl
import tempfile
from pathlib import Path
from types import TracebackType

from buslib.connection import INSTRUCTOR_ACCOUNT
from buslib.errors import ServerError, WorkshopError
from buslib.exercises.recording import PROGRESS_SUBJECT
from buslib.server import EmbeddedCluster, EmbeddedServer
from buslib.server.ports import restartable_port_block
from buslib.workshop.config import DEFAULT_CLUSTER_PORT, PROGRESS_STREAM, Limits, Room
from buslib.workshop.progress import connect_instructor, ensure_progress_stream
from buslib.workshop.room import create_room, instructor_urls, read_roster, resize_room, write_room_files

__all__ = ["MAX_REVIVALS", "LocalRoom", "WorkshopServer", "instructor_tls", "preflight"]

MAX_REVIVALS = 3  # restarts of one node that keeps exiting by itself; then it stays down (its log says why)


def preflight(room: Room, *, now: dt.datetime | None = None) -> list[str]:
    """What ``serve`` checks first: refuse an expired room; warn about what could go wrong later.

    Returns:
        Warnings, in plain words (no TLS on a network; limits the machine cannot keep).

    Raises:
        WorkshopError: the room's credentials have expired.
    """
    if room.expired(now):
        raise WorkshopError(
            f"This room's credentials expired at {room.valid_until.isoformat()} (workshop {room.id}, {room.folder}).\n"
            "What to do: for a new session create a new room (new passwords: hand out the new roster), "
            "or, to keep these passwords a while longer, extend the room (buslib workshop extend)."
        )
    warnings = []
    if not room.tls and not room.loopback_only:
        warnings.append(
            f"listening on {room.listen} without TLS: passwords and messages cross the network as plain text. "
            "Fine on a trusted classroom network; elsewhere create the room with a TLS certificate and key."
        )
    memory, disk = room.totals()
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 0
    if ram and memory > ram // 2:
        warnings.append(
            f"the accounts may keep {memory / 1024**3:.1f} GiB in memory streams together, more than half of this "
            f"machine's {ram / 1024**3:.1f} GiB: lower the per-learner memory limit."
        )
    store = room.store
    existing = next((p for p in (store, *store.parents) if p.exists()), None)
    free = shutil.disk_usage(existing).free if existing else 0
    if existing and disk > free:
        warnings.append(
            f"the accounts may store {disk / 1024**3:.1f} GiB together, but {existing} has {free / 1024**3:.1f} GiB "
            "free: lower the per-learner file limit or choose another store folder."
        )
    return warnings


def instructor_tls(folder: str | Path) -> ssl.SSLContext | None:
    """An SSL context that trusts the room's ``ca.pem``, when it has one (a self-signed certificate)."""
    ca = Path(folder) / "ca.pem"
    return ssl.create_default_context(cafile=str(ca)) if ca.is_file() else None


class WorkshopServer:
    """A room's nats-server (or its cluster's nodes): the room's configuration, the bundled binary, the watchdog.

    Args:
        folder: the room (written by ``buslib workshop init``).
        binary: the nats-server to run; the bundled one when omitted.
        nodes: serve the room on this many nodes from now on (see :func:`resize_room`: only a
            room never served changes); ``None`` serves it as it is.

    Attributes:
        server: the one server of a single-server room while it runs.
        cluster: the nodes of a cluster room while they run.
        revived: how often each node was restarted by :meth:`revive`.
    """

    def __init__(self, folder: str | Path, *, binary: str | Path | None = None, nodes: int | None = None) -> None:
        self.folder = Path(folder)
        self.room = Room.load(self.folder)
        self.warnings: list[str] = []
        self._binary = binary
        self._nodes = nodes
        self.server: EmbeddedServer | None = None
        self.cluster: EmbeddedCluster | None = None
        self.revived: dict[str, int] = {}

    def start(self) -> WorkshopServer:
        """Check the room, write its server configuration again, start the server(s), wait until ready.

        Raises:
            WorkshopError: the room has expired, cannot change its number of nodes, or the
                server did not start (its own words included).
        """
        self.room = Room.load(self.folder) if self._nodes is None else resize_room(self.folder, self._nodes)
        self.warnings = preflight(self.room)
        write_room_files(self.room)  # the server part follows workshop.json (e.g. after the folder moved)
        room = self.room
        try:
            if room.clustered:
                self.cluster = EmbeddedCluster(
                    room.nodes,
                    name=room.server_name,
                    store_root=room.store,
                    node_names=[room.node_name(n) for n in range(room.nodes)],
                    config_files=[room.config_path(n) for n in range(room.nodes)],
                    account=INSTRUCTOR_ACCOUNT,
                    binary=self._binary,
                ).start()
            else:
                server = EmbeddedServer(config_file=room.config_path(), store_dir=room.store, binary=self._binary)
                self.server = server.start()
        except ServerError as err:
            raise WorkshopError(
                f"The workshop server did not start.\n{err}\nIf a port is taken: stop the program that uses it "
                f"(maybe this room is already being served), or create the room with other ports."
            ) from None
        return self

    async def prepare(self) -> None:
        """Create the PROGRESS stream in the instructor's account (where every check is recorded): 3 copies on a cluster."""
        url, _ = instructor_urls(self.folder)
        nc = await connect_instructor(url, name="buslib-workshop-serve", tls=instructor_tls(self.folder))
        try:
            await ensure_progress_stream(nc.jetstream(timeout=10), replicas=min(3, self.room.nodes))
        finally:
            await nc.close()
        if self.cluster is not None:
            await self._wait_until_records_route()

    async def _wait_until_records_route(self, timeout: float = 15.0) -> None:
        """Wait until every node knows where a learner's records go (bounded; a warning if not).

        A record is a plain publish: a node that has not yet heard, over the routes, that the
        node leading PROGRESS takes ``buslib.progress`` of every learner account drops it. Right
        after the room starts (and more so on a busy machine) that takes a moment.
        """
        learners = {learner.account for learner in self.room.learners}
        deadline = asyncio.get_running_loop().time() + timeout
        while (missing := await asyncio.to_thread(self._nodes_without_record_routes, learners)) and (
            asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.05)
        if missing:
            self.warnings.append(
                f"After {timeout:g} s, node(s) {', '.join(missing)} did not yet route the learners' records to "
                "the PROGRESS stream: checks made there may be missing from the board for a while."
            )

    def _nodes_without_record_routes(self, learners: set[str]) -> list[str]:
        """The running nodes, other than PROGRESS's leader, that lack the leader's interest in some learner's records."""
        assert self.cluster is not None
        leader = self.cluster.leader_of(PROGRESS_STREAM)
        if leader is None:
            return ["(PROGRESS has no leader yet)"]
        missing = []
        for node in self.cluster.nodes:
            if node.name == leader or not node.running:
                continue
            _, body = node.monitor("/routez?subs=detail")
            heard = {  # a route subscription's sid reads "R <ACCOUNT> <subject>"
                detail.get("sid", "").split(" ")[1]
                for route in (body or {}).get("routes") or []
                for detail in route.get("subscriptions_list_detail") or []
                if detail.get("subject") == PROGRESS_SUBJECT and detail.get("sid", "").startswith("R ")
            }
            if not learners <= heard:
                missing.append(node.name)
        return missing

    def revive(self) -> list[str]:
        """Start again every node of a cluster room that exited by itself (at most ``MAX_REVIVALS`` times each).

        Returns:
            The names of the nodes restarted now.

        Raises:
            WorkshopError: a node could not be started again (its log says why).
        """
        if self.cluster is None:
            return []
        restarted = []
        for node in self.cluster.nodes:
            if node.running or self.revived.get(node.name, 0) >= MAX_REVIVALS:
                continue
            self.revived[node.name] = self.revived.get(node.name, 0) + 1
            try:
                self.cluster.restart(node.name, wait=False)
            except ServerError as err:
                raise WorkshopError(f"The workshop node {node.name} exited and did not start again.\n{err}") from None
            restarted.append(node.name)
        return restarted

    @property
    def running(self) -> bool:
        """Whether the server runs (a cluster: at least one node)."""
        if self.cluster is not None:
            return bool(self.cluster.running())
        return self.server is not None and self.server.running

    @property
    def version(self) -> str | None:
        """The running nats-server's version."""
        if self.cluster is not None:
            return self.cluster.version
        return self.server.version if self.server else None

    @property
    def pids(self) -> list[int]:
        """The running nats-servers' process ids (one per node)."""
        servers = self.cluster.nodes if self.cluster is not None else [self.server] if self.server else []
        return [server.pid for server in servers if server.pid is not None and server.running]

    @property
    def pid(self) -> int | None:
        return next(iter(self.pids), None)

    @property
    def log_paths(self) -> list[Path]:
        """Each node's log (one for a single server)."""
        servers = self.cluster.nodes if self.cluster is not None else [self.server] if self.server else []
        return [server.log_path for server in servers]

    @property
    def log_path(self) -> Path | None:
        return next(iter(self.log_paths), None)

    def node_log(self, name: str) -> Path | None:
        """The log of the cluster node called ``name``."""
        return self.cluster.node(name).log_path if self.cluster is not None else self.log_path

    def stop(self) -> None:
        server, self.server = self.server, None
        cluster, self.cluster = self.cluster, None
        if server is not None:
            server.stop()
        if cluster is not None:
            cluster.stop()

    async def __aenter__(self) -> WorkshopServer:
        await asyncio.to_thread(self.start)  # a cluster elects its leaders meanwhile: keep the loop free
        try:
            await self.prepare()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalRoom:
    """A small room on 127.0.0.1 in a temporary folder, served while the ``async with`` lasts.

    For a rehearsal on one laptop, the board notebook's demonstration, and tests. Nothing
    is left behind: the server stops and the folder is removed at the end.

    Args:
        learners: how many learner accounts.
        limits: each learner account's limits.
        binary: the nats-server to run.
        nodes: 1 server, or a cluster of ``nodes`` (its ports are restartable: a test may
            crash a node and start it again).
    """

    def __init__(
        self, learners: int = 3, *, limits: Limits | None = None, binary: str | Path | None = None, nodes: int = 1
    ) -> None:
        self.learners = learners
        self.limits = limits
        self.binary = binary
        self.nodes = nodes
        self.folder: Path | None = None
        self.server: WorkshopServer | None = None

    @property
    def room(self) -> Room:
        if self.server is None:
            raise WorkshopError("The local room is not running: use it as `async with LocalRoom() as room:`.")
        return self.server.room

    @property
    def learner_urls(self) -> list[str]:
        """Each learner's NATS_URL, in roster order."""
        return [line.nats_url for line in read_roster(self.room.folder)]

    @property
    def instructor_url(self) -> str:
        return instructor_urls(self.room.folder)[0]

    @property
    def sys_url(self) -> str:
        return instructor_urls(self.room.folder)[1]

    async def start(self) -> LocalRoom:
        """Create and serve the room (what ``async with`` does; for notebooks, where a block cannot span cells)."""
        return await self.__aenter__()

    async def stop(self) -> None:
        """Stop the server and remove the room's folder."""
        await self.__aexit__(None, None, None)

    async def __aenter__(self) -> LocalRoom:
        self.folder = Path(tempfile.mkdtemp(prefix="buslib-workshop-"))
        try:
            if self.nodes > 1:  # consecutive ports: node i uses port + i, and so on
                first = restartable_port_block(3 * self.nodes)
                port, monitor_port, cluster_port = first, first + self.nodes, first + 2 * self.nodes
            else:
                port, monitor_port, cluster_port = free_port(), free_port(), DEFAULT_CLUSTER_PORT
            create_room(
                self.folder / "room",
                learners=self.learners,
                limits=self.limits,
                nodes=self.nodes,
                port=port,
                monitor_port=monitor_port,
                cluster_port=cluster_port,
            )
            self.server = await WorkshopServer(self.folder / "room", binary=self.binary).__aenter__()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        server, self.server = self.server, None
        if server is not None:
            await asyncio.to_thread(server.stop)
        if self.folder is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.folder)
            self.folder = None

    def __repr__(self) -> str:
        if self.server is None:
            return "<LocalRoom stopped>"
        nodes = f" ({self.nodes} nodes from there)" if self.nodes > 1 else ""
        return f"<LocalRoom workshop {self.room.id}: {self.learners} learners on 127.0.0.1:{self.room.port}{nodes}>"
