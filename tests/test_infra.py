"""The repo's own machinery: docker-compose.yml, environment.yml, the Makefile and .ci/run.

Docker cannot run here, so the compose file is checked for structure and its server flags are
run with the real nats-server binary to prove the healthcheck URL answers OK.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from buslib.server import find_server_binary
from buslib.server.watchdog import watchdog

REPO = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


# -- docker-compose.yml ---------------------------------------------------------------------


def test_compose_runs_a_pinned_official_nats_image_with_jetstream():
    nats = _compose()["services"]["nats"]
    image, _, tag = nats["image"].partition(":")
    assert image == "nats"
    assert tag.startswith("2.") and tag.endswith("-alpine"), "a pinned 2.x tag; -alpine has wget for the healthcheck"
    command = nats["command"]
    assert "-js" in command
    assert command[command.index("-sd") + 1] == "/data"
    assert command[command.index("-m") + 1] == "8222"


def test_compose_publishes_both_ports_on_loopback_and_keeps_the_store_in_a_volume():
    compose = _compose()
    nats = compose["services"]["nats"]
    assert set(nats["ports"]) == {"127.0.0.1:4222:4222", "127.0.0.1:8222:8222"}
    volume, _, mount = nats["volumes"][0].partition(":")
    assert mount == "/data" and volume in compose["volumes"]


def test_compose_healthcheck_probes_jetstream_health():
    check = _compose()["services"]["nats"]["healthcheck"]
    test = check["test"]
    assert test[0] == "CMD" and test[1] == "wget"
    assert test[-1] == "http://127.0.0.1:8222/healthz?js-enabled-only=true"
    for key in ("interval", "timeout", "retries"):
        assert key in check


def test_compose_server_flags_give_a_server_whose_healthcheck_passes(tmp_path):
    """Run the compose command's flags with the real binary (ports: any free ones the server picks
    itself, read from its log, so no other program can take them in between; store: temporary)."""
    command = list(_compose()["services"]["nats"]["command"])
    command[command.index("-sd") + 1] = str(tmp_path / "data")
    command[command.index("-m") + 1] = "-1"  # the server picks a free monitoring port
    log = tmp_path / "nats-server.log"
    proc = subprocess.Popen(
        [str(find_server_binary()), *command, "-a", "127.0.0.1", "-p", "-1", "-l", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    watchdog().guard(proc.pid, None)  # killed even if this test run is killed
    try:
        deadline = time.monotonic() + 20
        while not (monitor := re.search(r"Starting http monitor on 127\.0\.0\.1:(\d+)", _read(log))):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"the server never said where it monitors (exit code {proc.poll()}):\n{_read(log)}")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{monitor.group(1)}/healthz?js-enabled-only=true"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200 and b'"ok"' in response.read()
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"{url} never answered OK (server exit code {proc.poll()})")
                time.sleep(0.05)
        assert (tmp_path / "data" / "jetstream").is_dir()
    finally:
        proc.terminate()
        proc.wait(10)
        watchdog().release(proc.pid)


CLUSTER = ("nats-1", "nats-2", "nats-3")


def test_compose_cluster_profile_runs_three_named_nodes_that_route_to_each_other():
    compose = _compose()
    single = compose["services"]["nats"]
    assert "profiles" not in single  # `docker compose up -d` still starts the one server only
    names = []
    for service in CLUSTER:
        node = compose["services"][service]
        assert node["profiles"] == ["cluster"] and node["image"] == single["image"]
        command = node["command"]
        assert "-js" in command and command[command.index("-sd") + 1] == "/data"
        assert command[command.index("--cluster_name") + 1] == "lab"
        routes = command[command.index("--routes") + 1].split(",")
        assert routes == [f"nats://{other}:6222" for other in CLUSTER]
        names.append(command[command.index("--name") + 1])
        volume, _, mount = node["volumes"][0].partition(":")
        assert mount == "/data" and volume in compose["volumes"]
        assert all(port.startswith("127.0.0.1:") for port in node["ports"])  # loopback only
        assert node["healthcheck"] == single["healthcheck"]
    assert names == ["n1", "n2", "n3"]
    client_ports = [compose["services"][s]["ports"][0].split(":")[1] for s in CLUSTER]
    assert client_ports == ["4223", "4224", "4225"]  # the NATS_URL the README gives
    readme = (REPO / "README.md").read_text()
    assert "NATS_URL=nats://localhost:4223,nats://localhost:4224,nats://localhost:4225" in readme


def test_compose_cluster_flags_give_three_nodes_that_elect_a_leader(tmp_path):
    """The cluster services' flags with the real binary: service names moved to 127.0.0.1, route
    ports chosen below the OS's automatic range (every node must know them all before it starts),
    monitoring ports picked by each server and read from its log."""
    import json

    from buslib.server.ports import restartable_ports

    routes = dict(zip(CLUSTER, restartable_ports(3), strict=True))
    procs, logs = [], {}
    try:
        for service in CLUSTER:
            command = list(_compose()["services"][service]["command"])
            command[command.index("-sd") + 1] = str(tmp_path / service)
            command[command.index("-m") + 1] = "-1"
            command[command.index("--cluster") + 1] = f"nats://127.0.0.1:{routes[service]}"
            command[command.index("--routes") + 1] = ",".join(f"nats://127.0.0.1:{routes[s]}" for s in CLUSTER)
            logs[service] = tmp_path / f"{service}.log"
            proc = subprocess.Popen(
                [str(find_server_binary()), *command, "-a", "127.0.0.1", "-p", "-1", "-l", str(logs[service])],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            watchdog().guard(proc.pid, None)
            procs.append(proc)
        deadline = time.monotonic() + 30
        leaders: set[str | None] = set()
        while True:
            leaders = set()
            for service in CLUSTER:
                monitor = re.search(r"Starting http monitor on 127\.0\.0\.1:(\d+)", _read(logs[service]))
                try:
                    assert monitor is not None
                    with urllib.request.urlopen(f"http://127.0.0.1:{monitor.group(1)}/jsz", timeout=2) as response:
                        leaders.add((json.load(response).get("meta_cluster") or {}).get("leader"))
                except (AssertionError, OSError):
                    leaders.add(None)
            if len(leaders) == 1 and None not in leaders:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail(f"no agreed meta leader: {leaders} (exit codes {[p.poll() for p in procs]})")
            time.sleep(0.05)
        assert leaders <= {"n1", "n2", "n3"}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
            watchdog().release(proc.pid)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# -- environment.yml --------------------------------------------------------------------------


def test_environment_yml_installs_python_the_server_and_the_kit():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    deps = env["dependencies"]
    assert any(str(dep).startswith("python>=3.10") for dep in deps)
    assert any(str(dep).startswith("nats-server") for dep in deps)
    pip = next(dep["pip"] for dep in deps if isinstance(dep, dict))
    assert "-e .[test]" in pip


def test_environment_yml_says_why_each_dependency_is_there():
    lines = (REPO / "environment.yml").read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("- ") and not line.strip().startswith("- conda-forge"):
            commented = "#" in line or lines[number - 1].strip().startswith("#")
            assert commented, f"environment.yml line {number + 1} has no comment: {line.strip()}"


# -- Makefile and .ci/run ---------------------------------------------------------------------

needs_make = pytest.mark.skipif(shutil.which("make") is None or os.name == "nt", reason="needs GNU make")


def _make(*args: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run make as a learner would, not as a sub-make of `make test` (no inherited MAKEFLAGS)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=cwd, env=env, capture_output=True, text=True, check=check
    )


@needs_make
def test_make_help_lists_the_two_commands():
    result = _make("-s", "help")
    assert "make lab" in result.stdout and "make test" in result.stdout


@needs_make
def test_make_refuses_a_python_older_than_3_10_with_a_clear_message(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'Python 3.9.18' && exit 0\nexit 1\n")
    old.chmod(0o755)
    result = _make("setup", f"PYTHON={old}", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "needs Python 3.10 or newer" in result.stderr and "Python 3.9.18" in result.stderr
    assert not (tmp_path / ".venv").exists()


@needs_make
def test_make_test_runs_lint_every_test_and_the_notebooks_in_lax_mode():
    result = _make("-n", "test", f"STAMP={REPO / 'pyproject.toml'}")  # dry run; pretend the venv is current
    commands = result.stdout
    assert "ruff check ." in commands
    assert "buslib contracts check" in commands
    pytest_line = next(line for line in commands.splitlines() if "-m pytest" in line)
    assert " tests " in pytest_line and "--nbval-lax" in pytest_line
    assert "--nbval-sanitize-with tests/nbval_sanitize.cfg" in pytest_line
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{notebook.name}" in pytest_line
    for solution in sorted((REPO / "exercises" / "solutions").glob("*.ipynb")):
        assert f"exercises/solutions/{solution.name}" in pytest_line


@needs_make
def test_make_lab_binds_loopback_and_passes_port_and_lab_args():
    result = _make("-n", "lab", "PORT=8765", "LAB_ARGS=--no-browser", f"STAMP={REPO / 'pyproject.toml'}")
    lab = " ".join(result.stdout.split())
    assert "jupyter lab --ip 127.0.0.1 --port 8765" in lab
    assert lab.rstrip().endswith("--no-browser")
    assert "00_start_here.ipynb" in lab
    assert ("--allow-root" in lab) == (os.geteuid() == 0)


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists() or os.name == "nt", reason="would install Chromium")
def test_ci_run_requires_the_browser_test_and_runs_make_test(tmp_path):
    stub = tmp_path / "bin"
    stub.mkdir()
    record = tmp_path / "make-called"
    (stub / "make").write_text(f'#!/bin/sh\necho "$PWD|$BUSLIB_REQUIRE_BROWSER|$*" > {record}\n')
    (stub / "make").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}{os.pathsep}{os.environ['PATH']}", "CI": "true"}
    subprocess.run(["bash", str(REPO / ".ci" / "run")], cwd=tmp_path, env=env, check=True, timeout=60)
    assert record.read_text().strip() == f"{REPO}|1|test"
