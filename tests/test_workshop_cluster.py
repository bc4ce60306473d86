"""A workshop room served on a 3-node cluster (``buslib workshop serve --cluster 3``), against real servers.

Each node runs its own configuration (name, ports, store, routes on 127.0.0.1 with a password)
around the same ``accounts.conf``; the learners' URLs list every node; the PROGRESS stream has
3 copies. The tests prove what the room promises: every connection authenticates, a learner's
check reaches the board, learners stay apart across nodes, and when a node is killed the board
still reads every record and learners keep working. Every wait is for a state the servers
report (a new leader, a reconnect, a copy caught up), bounded; no
timing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import re
import stat
import subprocess
from collections.abc import Iterator
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from _bus_helpers import wait_until
from _workshop import free_port, raw_connect, room_ports, served_room, urls

import buslib
from buslib._nats.info import server_name
from buslib.cli import main as cli
from buslib.errors import CredentialsError, WorkshopError
from buslib.exercises import ex00
from buslib.exercises.feedback import Outcome, Status
from buslib.exercises.recording import record_outcome
from buslib.server import ClusterNode, EmbeddedCluster, find_server_binary, pid_alive
from buslib.server.ports import restartable_port
from buslib.teaching.helpers import wait_for_stream
from buslib.workshop import Room, WorkshopServer, create_room, instructor_urls, read_progress, read_roster
from buslib.workshop.board import BoardState, server_stats
from buslib.workshop.progress import ProgressReader, connect_instructor, ensure_progress_stream
from buslib.workshop.room import resize_room

pytestmark = pytest.mark.slow


# -- the room's files ---------------------------------------------------------------------
def test_a_cluster_room_has_one_configuration_per_node_around_the_same_accounts(tmp_path):
    room = create_room(tmp_path / "room", learners=4, nodes=3, port=24222, monitor_port=28222, cluster_port=26222)
    folder = room.folder
    assert not (folder / "docker.conf").exists() and not (folder / "compose.env").exists()  # one server only
    assert not (folder / "workshop.conf").exists()
    routes = (folder / "routes.conf").read_text()
    password = re.search(r'password: "([A-Za-z0-9]{22})"', routes)
    assert password is not None
    for i in range(3):
        config = (folder / f"workshop-n{i}.conf").read_text()
        checked = subprocess.run(
            [str(find_server_binary()), "-t", "-c", str(folder / f"workshop-n{i}.conf")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f'server_name: "buslib-workshop-{room.id}-n{i}"' in config
        assert f'listen: "127.0.0.1:{24222 + i}"' in config
        assert f'http: "127.0.0.1:{28222 + i}"' in config  # monitoring: never on the network
        assert f'store_dir: "{(folder / "store" / f"n{i}").resolve()}"' in config
        assert f'listen: "127.0.0.1:{26222 + i}"' in config  # routes: this machine only
        assert "no_advertise: true" in config and 'include "routes.conf"' in config
        assert config.rstrip().endswith('include "accounts.conf"')  # the same accounts on every node
        assert password.group(1) not in config  # the route password is in routes.conf only
    assert routes.count(f"nats-route://route:{password.group(1)}@127.0.0.1:") == 3
    for i in range(3):
        assert f"@127.0.0.1:{26222 + i}" in routes
    for path in folder.iterdir():
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    for line in read_roster(folder):  # every learner's URL lists every node, with their password
        entries = line.nats_url.split(",")
        assert entries == [f"nats://{line.user}:{line.password}@127.0.0.1:{24222 + i}" for i in range(3)]
    env = (folder / "instructor.env").read_text()
    assert env.count("@127.0.0.1:2422") == 6  # the instructor's and the system user's URL, 3 nodes each
    assert Room.load(folder).nodes == 3


def test_tls_is_on_every_node_when_the_room_has_a_certificate(tmp_path):
    (tmp_path / "cert.pem").write_text("not checked here\n")
    (tmp_path / "key.pem").write_text("not checked here\n")
    room = create_room(
        tmp_path / "room", learners=1, nodes=3, tls_cert=tmp_path / "cert.pem", tls_key=tmp_path / "key.pem"
    )
    for i in range(3):
        config = (room.folder / f"workshop-n{i}.conf").read_text()
        assert f'cert_file: "{(room.folder / "tls" / "cert.pem").resolve()}"' in config
    assert read_roster(room.folder)[0].nats_url.count("tls://") == 3


def test_a_room_written_before_clusters_is_one_server(tmp_path):
    room = create_room(tmp_path / "room", learners=1)
    data = json.loads((room.folder / "workshop.json").read_text())
    del data["nodes"], data["cluster_port"]
    (room.folder / "workshop.json").write_text(json.dumps(data))
    loaded = Room.load(room.folder)
    assert loaded.nodes == 1 and loaded.config_path() == room.folder / "workshop.conf"


def test_bad_cluster_settings_are_refused_with_a_reason(tmp_path):
    with pytest.raises(WorkshopError, match="cluster of 2 to 7"):
        create_room(tmp_path / "a", learners=1, nodes=9)
    with pytest.raises(WorkshopError, match="24222-24224, 24223-24225"):
        create_room(tmp_path / "b", learners=1, nodes=3, port=24222, monitor_port=24223)
    with pytest.raises(WorkshopError, match="65535"):
        create_room(tmp_path / "c", learners=1, nodes=3, port=65534)


async def test_serving_a_never_served_room_as_a_cluster_rewrites_its_urls_and_a_served_one_is_refused(tmp_path):
    folder = tmp_path / "room"
    create_room(folder, learners=2, port=free_port(), monitor_port=free_port())
    before, staff = read_roster(folder), instructor_urls(folder)
    room = resize_room(folder, 3)  # what `serve --cluster 3` does first
    after = read_roster(folder)
    assert room.nodes == 3 and Room.load(folder).nodes == 3
    for old, new in zip(before, after, strict=True):
        assert new.password == old.password  # the same passwords: only the URLs list every node
        assert new.nats_url.split(",")[0] == old.nats_url and len(new.nats_url.split(",")) == 3
        assert new.nats_url in (folder / "handouts.txt").read_text()
    for old_url, new_url in zip(staff, instructor_urls(folder), strict=True):  # the instructor's, the system user's
        assert new_url.split(",")[0] == old_url and len(new_url.split(",")) == 3
    assert not (folder / "docker.conf").exists() and (folder / "workshop-n2.conf").exists()
    room = resize_room(folder, 1)  # and back, still never served
    assert read_roster(folder) == before and instructor_urls(folder) == staff and (folder / "docker.conf").exists()
    assert not (folder / "routes.conf").exists() and not list(folder.glob("workshop-n*.conf"))
    async with WorkshopServer(folder):  # served once on one server: its streams are in that store
        pass
    with pytest.raises(WorkshopError, match="has been served on one server already") as refused:
        resize_room(folder, 3)
    assert "create a new room" in str(refused.value)
    assert Room.load(folder).nodes == 1 and read_roster(folder) == before  # nothing changed


# -- a served 3-node room ------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster_room(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A served room of 4 learners on 3 nodes (nothing in it is crashed: see the failover test)."""
    folder = tmp_path_factory.mktemp("cluster") / "room"
    with served_room(folder, learners=4, nodes=3) as server:
        yield {"server": server, "folder": folder, **urls(folder)}


def _first(url: str, port: int) -> str:
    """The comma-separated ``url`` with the node on ``port`` first (with ``dont_randomize``: connect there)."""
    return ",".join(sorted(url.split(","), key=lambda entry: not entry.endswith(f":{port}")))


async def test_a_check_recorded_the_moment_the_room_is_ready_reaches_the_board_through_any_node(tmp_path):
    """A record is a plain publish: serve is ready only once every node routes it to PROGRESS's leader."""
    folder = tmp_path / "room"
    create_room(folder, learners=2, nodes=3, **room_ports(3))
    async with WorkshopServer(folder) as server:
        assert server.cluster is not None
        found, wanted = urls(folder), set()
        for node in server.cluster.nodes:  # at once, one learner connection on each node
            nc = await buslib.connect(_first(found["L01"], node.port), dont_randomize=True)
            assert nc.connected_url.port == node.port
            outcome = Outcome("00", f"via-{node.name[-2:]}", "a record", Status.INCORRECT, "sent through this node")
            assert await record_outcome(nc, outcome, seconds=0.01)
            await nc.close()
            wanted.add(("L01", f"00/via-{node.name[-2:]}", "incorrect"))
        assert {(r.account, r.key, r.status) for r in await _records(found["INSTRUCTOR"], wanted=wanted)} == wanted
        assert not any("did not yet route" in warning for warning in server.warnings)
        assert len(server._nodes_without_record_routes({"L01", "L99"})) == 2  # what it waited for can be missing


async def test_every_node_serves_the_room_under_its_own_name_and_progress_has_three_copies(cluster_room):
    server: WorkshopServer = cluster_room["server"]
    room = server.room
    assert server.cluster is not None and server.running and len(server.pids) == 3
    for i in range(3):
        nc = await raw_connect(_first(cluster_room["L01"], room.port + i), dont_randomize=True)
        assert nc.connected_url.port == room.port + i
        assert server_name(nc) == room.node_name(i) == server.cluster.names[i]
        assert buslib.connection.is_workshop_server(nc)  # recognised as a workshop: checks are recorded
        await nc.close()
    instructor = await raw_connect(cluster_room["INSTRUCTOR"])
    js = instructor.jetstream(timeout=3)

    async def progress_info():
        # A loaded cluster can be between two leaders for a moment, and a request that arrives
        # while no node leads PROGRESS is never answered (seen on 2.11): ask again.
        try:
            return await js.stream_info("PROGRESS")
        except nats.errors.TimeoutError:
            return None

    info = await wait_until(progress_info, timeout=30, what="an answer about PROGRESS")
    await instructor.close()
    assert info.config.num_replicas == 3
    assert info.cluster is not None and {info.cluster.leader, *(p.name for p in info.cluster.replicas)} == set(
        server.cluster.names
    )


async def test_nothing_connects_to_any_node_without_credentials(cluster_room):
    room: Room = cluster_room["server"].room
    for i in range(3):
        with pytest.raises((nats.errors.Error, OSError)):
            await raw_connect(f"nats://127.0.0.1:{room.port + i}")
        with pytest.raises(CredentialsError, match="needs a user name and password"):
            await buslib.connect(f"nats://127.0.0.1:{room.port + i}")
    for log in cluster_room["server"].log_paths:  # monitoring and routes listen on this machine only
        text = log.read_text()
        assert "Starting http monitor on 127.0.0.1:" in text
        assert "Listening for route connections on 127.0.0.1:" in text


async def test_a_route_without_the_rooms_route_password_is_refused(cluster_room):
    room: Room = cluster_room["server"].room
    rogue = ClusterNode(
        name="rogue",
        cluster_name=room.server_name,
        cluster_port=restartable_port(),
        routes=[f"nats-route://127.0.0.1:{room.cluster_port}"],
        jetstream=False,
    ).start()
    try:
        await wait_until(
            lambda: "Authorization Violation" in rogue.log_path.read_text(), what="the room's node refusing the route"
        )
    finally:
        rogue.stop()
    for node in cluster_room["server"].cluster.nodes:
        routes = node.monitor("/routez")[1]["routes"]
        assert {r.get("remote_name") for r in routes} <= set(cluster_room["server"].cluster.names)


async def _solve_ex00(nc: Any) -> dict[str, Any]:
    """The exercise's solution, on a learner's own connection (as the board notebook's rehearsal does)."""
    js = nc.jetstream(timeout=10)
    await ex00.reset(js)
    ack = await js.publish("ex00.hello", b"hello")
    version = nc.connected_server_version
    return {"server_version": f"{version.major}.{version.minor}.{version.patch}", "ack": ack}


async def _records(instructor_url: str, *, wanted: set[tuple[str, str, str]] | None = None) -> list[Any]:
    """Every record, read afresh (a new board, ``buslib progress``); with ``wanted``: once those are stored.

    A learner's record is a plain publish that the server then stores in PROGRESS: it is waited
    for, not expected at the instant the check returns.
    """
    nc = await connect_instructor(instructor_url)
    try:

        async def complete() -> list[Any] | None:
            found = await read_progress(nc, timeout=30)
            return found if not wanted or wanted <= {(r.account, r.key, r.status) for r in found} else None

        return await wait_until(complete, timeout=30, what=f"the records {sorted(wanted or ())}")
    finally:
        await nc.close()


async def _follow(reader: ProgressReader, wanted: set[tuple[str, str, str]]) -> list[Any]:
    """What a live board's reader gets, until it has the records ``wanted``."""
    seen: list[Any] = []

    async def complete() -> bool:
        await reader.catch_up(timeout=30)
        seen.extend(await reader.read())
        return wanted <= {(r.account, r.key, r.status) for r in seen}

    await wait_until(complete, timeout=30, what=f"the board's reader getting {sorted(wanted)}")
    return seen


async def test_a_learners_check_is_recorded_and_read_back_by_the_board(cluster_room, capsys):
    url = cluster_room["L01"]
    nc = await buslib.connect(url)
    answers = await _solve_ex00(nc)
    await nc.close()
    assert (await ex00.q1.outcome_async(answers, url=url)).correct
    assert (await ex00.q2.outcome_async(answers, url=url)).correct
    mine = {("L01", "00/q1", "correct"), ("L01", "00/q2", "correct")}
    records = [r for r in await _records(cluster_room["INSTRUCTOR"], wanted=mine) if r.account == "L01"]
    assert {(r.key, r.status) for r in records} >= {("00/q1", "correct"), ("00/q2", "correct")}
    state = BoardState(Room.load(cluster_room["folder"]).learners)
    state.add(records)
    row = next(r for r in state.view().learners if r.user == "learner01")
    assert row.done == 2 and row.marks == {"00/q1": "correct", "00/q2": "correct"}
    sys_nc = await buslib.connect(cluster_room["SYS"], instructor=True, require_jetstream=False)
    stats = await server_stats(sys_nc)  # every node answers: its URL lists all three
    await sys_nc.close()
    assert stats is not None and (stats.servers, stats.asked) == (3, 3) and "L01" in stats.storage
    folder = str(cluster_room["folder"])  # the commands, each in a thread (they run an event loop of their own)
    assert await asyncio.to_thread(cli, ["workshop", "board", "--room", folder, "--once"]) == 0
    board = capsys.readouterr().out
    assert re.search(r"learner01\s+2/23\s+00/q2\s+correct", board) and "3 servers" in board
    assert await asyncio.to_thread(cli, ["progress", "--workshop", "--room", folder, "--csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert {(r["question"], r["status"]) for r in rows if r["learner"] == "learner01"} >= {
        ("00/q1", "correct"),
        ("00/q2", "correct"),
    }


async def test_a_learner_cannot_see_another_learners_streams_on_any_node(cluster_room):
    room: Room = cluster_room["server"].room
    b = await raw_connect(_first(cluster_room["L02"], room.port), dont_randomize=True)
    a = await raw_connect(_first(cluster_room["L01"], room.port + 2), dont_randomize=True)
    try:
        assert (a.connected_url.port, b.connected_url.port) == (room.port + 2, room.port)  # different nodes
        jb, ja = b.jetstream(timeout=10), a.jetstream(timeout=10)
        await jb.add_stream(name="B_CLUSTER", subjects=["bcluster.>"])
        await wait_for_stream(jb, "bcluster.x")  # a new stream answers through every node a moment later
        await jb.publish("bcluster.x", b"B's secret")
        assert "B_CLUSTER" not in {si.config.name for si in await ja.streams_info()}
        with pytest.raises(nats.js.errors.NotFoundError):
            await ja.stream_info("B_CLUSTER")
        with pytest.raises(nats.js.errors.NotFoundError):
            await ja.get_msg("B_CLUSTER", 1)
        await a.publish("bcluster.x", b"A writes into its own account")
        await a.flush()
        assert (await jb.stream_info("B_CLUSTER")).state.messages == 1
    finally:
        await a.close()
        await b.close()


# -- a node lost -----------------------------------------------------------------------------
async def _lead_progress_on(nc: Any, server: WorkshopServer, target: str) -> None:
    """Hand PROGRESS's leadership to node ``target``, as an operator would (a stepdown naming it)."""
    assert server.cluster is not None
    request = json.dumps({"placement": {"preferred": target}}).encode()
    for _ in range(10):  # bounded: the preferred node takes over unless its copy is behind
        if server.cluster.leader_of("PROGRESS") == target:
            return
        with contextlib.suppress(nats.errors.Error):  # during an election nobody answers
            await nc.request("$JS.API.STREAM.LEADER.STEPDOWN.PROGRESS", request, timeout=5)
        await server.cluster.wait_for_leader("PROGRESS")
    assert server.cluster.leader_of("PROGRESS") == target


async def test_a_lost_node_keeps_the_records_and_the_learners_working(tmp_path):
    """Kill the node that leads PROGRESS, with the board's reader and a learner connected to it.

    The learner's exercise stream is on another node (a one-copy stream lives on one node: the
    learner's streams on the lost node are back when it is), so the learner can keep working.
    """
    folder = tmp_path / "room"
    create_room(folder, learners=2, nodes=3, **room_ports(3))
    async with WorkshopServer(folder) as server:
        cluster = server.cluster
        assert cluster is not None
        found = urls(folder)
        done = await buslib.connect(found["L01"])  # learner01 finished exercise 00 before the loss
        answers = await _solve_ex00(done)
        await done.close()
        assert (await ex00.q1.outcome_async(answers, url=found["L01"])).correct
        assert (await ex00.q2.outcome_async(answers, url=found["L01"])).correct
        setup = await buslib.connect(found["L02"])  # learner02 ran the setup cell: EX00_HELLO is on one node
        await ex00.reset(setup.jetstream(timeout=10))
        await setup.close()
        holder = next(node.name for node in cluster.nodes if node.stream_detail(ex00.HELLO_STREAM, "L02"))
        victim = next(name for name in cluster.names if name != holder)
        port = cluster.node(victim).port

        instructor = await buslib.connect(_first(found["INSTRUCTOR"], port), instructor=True, dont_randomize=True)
        await _lead_progress_on(instructor, server, victim)
        learner = await buslib.connect(_first(found["L02"], port), dont_randomize=True)  # the notebook's connection
        reader = await ProgressReader(instructor).start()  # the live board's reader
        try:
            assert instructor.connected_url.port == port == learner.connected_url.port
            first = {("L01", "00/q1", "correct"), ("L01", "00/q2", "correct")}
            assert {(r.account, r.key, r.status) for r in await _follow(reader, first)} == first

            cluster.crash(victim)  # the PROGRESS leader, and the node both connections are on
            assert await cluster.wait_for_leader("PROGRESS", other_than=victim) != victim

            # The board: a fresh read (buslib progress, a new board) has every record, from 2 copies.
            records = await _records(found["INSTRUCTOR"])
            assert {(r.account, r.key, r.status) for r in records} == first
            assert cluster.stored("PROGRESS")[victim] is None  # its copy is gone with it

            # The learner: their connection moves to a live node by itself, and the exercise goes on.
            await wait_until(
                lambda: learner.is_connected and learner.connected_url.port != port,
                timeout=30,
                what="the learner's connection on a live node",
            )
            js = learner.jetstream(timeout=10)
            ack = await js.publish(ex00.HELLO_SUBJECT, b"hello")
            version = learner.connected_server_version
            answers = {"server_version": f"{version.major}.{version.minor}.{version.patch}", "ack": ack}
            url = found["L02"]
            assert (await ex00.q1.outcome_async(answers, url=url)).correct
            assert (await ex00.q2.outcome_async(answers, url=url)).correct

            # The live reader goes on reading from the copies left, the learner's checks included.
            then = {("L02", "00/q1", "correct"), ("L02", "00/q2", "correct")}
            assert {(r.account, r.key, r.status) for r in await _follow(reader, then)} == then
            sys_nc = await buslib.connect(found["SYS"], instructor=True, require_jetstream=False)
            stats = await server_stats(sys_nc)
            await sys_nc.close()
            assert stats is not None and (stats.servers, stats.asked) == (2, 3)  # the board says one is missing

            # serve revives a node that exited; it catches up with the records it missed.
            assert server.revive() == [victim] and server.revived == {victim: 1}
            await cluster.ready()
            total = len(await _records(found["INSTRUCTOR"], wanted=first | then))
            await wait_until(
                lambda: cluster.stored("PROGRESS")[victim] == total,
                timeout=30,
                what="the revived node's copy of PROGRESS caught up",
            )
        finally:
            await reader.stop()
            await learner.close()
            await instructor.close()
            pids = server.pids
    assert len(pids) == 3 and not any(pid_alive(pid) for pid in pids)  # stopped with the room, nothing left


async def test_the_boards_reader_asks_again_while_progress_has_no_leader(tmp_path):
    """Only a stream's leader answers its info; with 2 of 3 nodes down PROGRESS has none, and nobody answers.

    The reader keeps asking (a board opened during an election, a fresh room under load) until
    its ``timeout``, and starts as soon as the nodes are back.
    """
    with EmbeddedCluster(store_root=tmp_path) as cluster:
        nc = await raw_connect(cluster.url)
        try:
            await ensure_progress_stream(nc.jetstream(timeout=10), replicas=3)
            leader = await cluster.wait_for_leader("PROGRESS")
            kept = next(name for name in cluster.names if name != leader)  # a follower: it cannot lead alone
            follower = next(name for name in cluster.names if name not in (leader, kept))
            others = [follower, leader]
            for name in others:  # killed, the follower first: no leadership is handed over on the way
                cluster.crash(name)
            await nc.close()
            nc = await raw_connect(cluster.node(kept).url)
            with pytest.raises(nats.errors.TimeoutError):  # bounded: a room that stays down is reported
                await ProgressReader(nc, timeout=1).start(timeout=2)

            starting = asyncio.create_task(ProgressReader(nc, timeout=1).start(timeout=60))
            await asyncio.sleep(1.5)  # its first request (1 s) goes unanswered: the nodes are still down
            assert not starting.done()
            for name in others:
                cluster.restart(name, wait=False)
            reader = await starting
            assert await reader.catch_up(timeout=30) and await reader.read() == []
        finally:
            await nc.close()


async def test_progress_asking_for_more_copies_than_nodes_is_refused_at_once_not_asked_again(tmp_path):
    """Only "peer offline" is asked again (a fresh cluster's moment, seen on 2.11); a refusal that will not change is raised."""
    with EmbeddedCluster(store_root=tmp_path) as cluster:
        nc = await raw_connect(cluster.url)
        try:

            def api_requests() -> int:
                return sum(((node.jsz() or {}).get("api") or {}).get("total", 0) for node in cluster.nodes)

            before = api_requests()
            with pytest.raises(nats.js.errors.BadRequestError, match="no suitable peers") as refused:
                await ensure_progress_stream(nc.jetstream(timeout=10), replicas=5)
            assert "offline" not in str(refused.value.description)
            assert api_requests() - before == 1  # one create, not asked again
        finally:
            await nc.close()


def test_serve_cluster_runs_the_room_on_three_nodes_and_stops_them(tmp_path, capsys):
    folder = tmp_path / "room"
    ports = room_ports(3)
    first, routes = ports["port"], ports["cluster_port"]
    create_room(folder, learners=1, **ports)
    assert cli(["workshop", "serve", "--room", str(folder), "--cluster", "3", "--for", "1"]) == 0
    out = capsys.readouterr().out
    assert "The room now runs on 3 servers" in out and "on a 3-node cluster" in out
    assert f"127.0.0.1:{first}-{first + 2}" in out and f"routes:     127.0.0.1:{routes}-{routes + 2} only" in out
    assert Room.load(folder).nodes == 3 and len(read_roster(folder)[0].nats_url.split(",")) == 3
    for i in range(3):  # every node is gone, its claim on its store released
        assert not (folder / "store" / f"n{i}" / ".buslib-owner").exists()


async def test_the_board_widget_reads_a_cluster_room(cluster_room):
    from buslib.workshop.widget import board_widget

    board = board_widget(
        cluster_room["INSTRUCTOR"],
        sys_url=cluster_room["SYS"],
        learners=Room.load(cluster_room["folder"]).learners,
        refresh=None,
    )
    try:
        view = await board.refresh()
        assert board.error is None and view is not None and view.server is not None
        assert view.server.servers == 3 and "3 servers: CPU" in board._html.value
    finally:
        await board.aclose()
