"""A room's files: the configuration nats-server accepts, secrets kept private, the Docker profile.

The configurations are checked by the real binary (``nats-server -t``) and by serving them.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import shutil
import stat
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from _workshop import free_port, served_room

from buslib.errors import WorkshopError
from buslib.server import EmbeddedServer, find_server_binary
from buslib.workshop import Limits, Room, WorkshopServer, create_room, extend_room, parse_valid_until, read_roster
from buslib.workshop.config import render_server_config
from buslib.workshop.serve import preflight

REPO = Path(__file__).resolve().parents[1]


def _valid(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_server_binary()), "-t", "-c", str(config)], capture_output=True, text=True, timeout=30
    )


def test_a_room_is_a_configuration_nats_server_accepts_with_one_account_per_learner(tmp_path):
    room = create_room(tmp_path / "room", learners=30, limits=Limits(max_mem=32 * 1024**2, max_file=128 * 1024**2))
    folder = room.folder
    for config in ("workshop.conf", "docker.conf"):
        result = _valid(folder / config)
        assert result.returncode == 0, result.stdout + result.stderr
    accounts = (folder / "accounts.conf").read_text()
    assert len(re.findall(r"^  L\d\d \{", accounts, re.MULTILINE)) == 30
    assert accounts.count("max_mem: 33554432, max_file: 134217728, max_streams: 32, max_consumers: 128") == 30
    assert accounts.count('to: "progress.L') == 30 and accounts.count("exports: [") == 30
    assert "no_auth_user" not in accounts and "system_account: SYS" in accounts
    server = (folder / "workshop.conf").read_text()
    memory, disk = room.totals()
    assert f"max_memory_store: {memory}" in server and f"max_file_store: {disk}" in server
    assert f'server_name: "buslib-workshop-{room.id}"' in server
    assert f'http: "127.0.0.1:{room.monitor_port}"' in server  # monitoring: never on the network


def test_passwords_are_bcrypt_hashes_in_the_config_and_plain_only_in_the_roster(tmp_path):
    folder = create_room(tmp_path / "room", learners=3).folder
    roster = read_roster(folder)
    everything = "".join(
        (folder / f).read_text() for f in ("accounts.conf", "workshop.conf", "docker.conf", "workshop.json")
    )
    for line in roster:
        assert line.password not in everything
        assert line.nats_url == f"nats://{line.user}:{line.password}@127.0.0.1:4222"
        assert line.nats_url in (folder / "handouts.txt").read_text()
    assert len(re.findall(r'password: "\$2b\$04\$', (folder / "accounts.conf").read_text())) == 3 + 2
    assert len({line.password for line in roster}) == 3 and all(len(line.password) >= 22 for line in roster)


def test_the_room_folder_and_every_file_are_private(tmp_path):
    folder = create_room(tmp_path / "room", learners=2).folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_roster_csv_has_every_learners_line(tmp_path):
    folder = create_room(tmp_path / "room", learners=12, host="lab.example.org", port=4333).folder
    with (folder / "roster.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["user"] for r in rows] == [f"learner{n:02d}" for n in range(1, 13)]
    assert all(r["nats_url"].endswith("@lab.example.org:4333") for r in rows)
    assert len({r["valid_until"] for r in rows}) == 1


def test_where_it_listens_follows_the_instructors_choice(tmp_path):
    rooms = iter(range(100))

    def room(**options):
        return create_room(tmp_path / str(next(rooms)), learners=1, **options)

    assert (room().listen, room().host) == ("127.0.0.1", "127.0.0.1")
    assert (room(host="192.168.1.20").listen, room(host="192.168.1.20").host) == ("192.168.1.20", "192.168.1.20")
    assert room(host="lab.example.org").listen == "0.0.0.0"  # a name: every interface
    assert room(host="lab.example.org", listen="10.0.0.5").listen == "10.0.0.5"
    assert room(listen="10.0.0.5").host == "10.0.0.5"


def test_no_tls_on_a_network_is_warned_about_and_loopback_is_not(tmp_path):
    network = create_room(tmp_path / "net", learners=1, host="192.168.1.20")
    assert any("without TLS" in w and "plain text" in w for w in preflight(network))
    assert not any("TLS" in w for w in preflight(create_room(tmp_path / "local", learners=1)))


def test_limits_the_machine_cannot_keep_are_warned_about(tmp_path):
    huge = Limits(max_mem=1024**4, max_file=1024**5)
    warnings = preflight(create_room(tmp_path / "room", learners=2, limits=huge))
    assert any("memory" in w for w in warnings) and any("free" in w for w in warnings)


def test_valid_until_takes_a_duration_or_a_time():
    now = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone.utc)
    assert parse_valid_until("12h", now=now) == now + dt.timedelta(hours=12)
    assert parse_valid_until("2h30m", now=now) == now + dt.timedelta(hours=2, minutes=30)
    assert parse_valid_until("1d", now=now) == now + dt.timedelta(days=1)
    assert parse_valid_until("2026-12-01T18:00+01:00", now=now) == dt.datetime(2026, 12, 1, 17, tzinfo=dt.timezone.utc)
    with pytest.raises(WorkshopError, match="not a time"):
        parse_valid_until("tomorrow", now=now)
    with pytest.raises(WorkshopError, match="not in the future"):
        parse_valid_until("2026-11-30T10:00+00:00", now=now)


def test_extend_keeps_the_passwords_and_moves_every_date(tmp_path):
    folder = create_room(tmp_path / "room", learners=2).folder
    before = read_roster(folder)
    later = parse_valid_until("2d")
    extend_room(folder, later)
    after = read_roster(folder)
    assert [x.nats_url for x in after] == [x.nats_url for x in before]
    assert {x.valid_until for x in after} == {later.isoformat()} and Room.load(folder).valid_until == later
    assert later.isoformat() in (folder / "workshop.conf").read_text()


def test_a_served_room_needs_credentials_and_monitors_on_loopback_only(tmp_path):
    with served_room(tmp_path / "room", learners=1) as server:
        log = server.log_path.read_text()
        assert f"Starting http monitor on 127.0.0.1:{server.room.monitor_port}" in log
        assert "Plaintext passwords detected" not in log  # bcrypt only
        with urllib.request.urlopen(f"http://127.0.0.1:{server.room.monitor_port}/varz", timeout=5) as reply:
            varz = json.loads(reply.read())
        assert varz["server_name"] == server.room.server_name and varz["auth_required"] is True


def test_a_moved_room_is_served_from_where_it_is_now(tmp_path):
    create_room(tmp_path / "old", learners=1, port=free_port(), monitor_port=free_port())
    shutil.move(tmp_path / "old", tmp_path / "new")
    server = WorkshopServer(tmp_path / "new").start()
    try:
        assert str(tmp_path / "new" / "store") in (tmp_path / "new" / "workshop.conf").read_text()
        assert (tmp_path / "new" / "store" / "jetstream").is_dir() and server.running
    finally:
        server.stop()


def test_the_docker_config_is_the_same_room_for_the_official_image(tmp_path):
    room = create_room(tmp_path / "room", learners=2, host="192.168.1.20", port=4333, monitor_port=8333)
    docker = render_server_config(room, docker=True)
    assert 'listen: "0.0.0.0:4222"' in docker and 'store_dir: "/data"' in docker
    assert 'include "accounts.conf"' in docker and room.server_name in docker
    env = dict(
        line.split("=", 1)
        for line in (room.folder / "compose.env").read_text().splitlines()
        if not line.startswith("#")
    )
    assert env == {
        "WORKSHOP_DIR": str(room.folder.resolve()),
        "WORKSHOP_LISTEN": "192.168.1.20",
        "WORKSHOP_PORT": "4333",
        "WORKSHOP_MONITOR_PORT": "8333",
    }


def test_compose_has_a_workshop_profile_running_the_rooms_docker_config():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    workshop = compose["services"]["workshop"]
    assert workshop["profiles"] == ["workshop"]
    assert workshop["image"] == compose["services"]["nats"]["image"]  # the same pinned official image
    assert workshop["command"] == ["-c", "/etc/nats/workshop/docker.conf"]
    assert "${WORKSHOP_DIR:-./.buslib/workshop}:/etc/nats/workshop:ro" in workshop["volumes"]
    assert workshop["ports"] == [
        "${WORKSHOP_LISTEN:-127.0.0.1}:${WORKSHOP_PORT:-4222}:4222",  # loopback unless the room says otherwise
        "127.0.0.1:${WORKSHOP_MONITOR_PORT:-8222}:8222",
    ]
    assert "profiles" not in compose["services"]["nats"]  # plain `docker compose up` is unchanged


def test_the_docker_config_runs_with_the_real_binary(tmp_path):
    """docker.conf with its container paths moved to temporary ones, served: what the image runs."""
    room = create_room(tmp_path / "room", learners=2, port=free_port(), monitor_port=free_port())
    text = render_server_config(room, docker=True)
    text = text.replace('"0.0.0.0:4222"', f'"127.0.0.1:{room.port}"')
    text = text.replace('"0.0.0.0:8222"', f'"127.0.0.1:{room.monitor_port}"')
    text = text.replace('"/data"', f'"{tmp_path / "data"}"')
    (room.folder / "docker-local.conf").write_text(text)
    with EmbeddedServer(config_file=room.folder / "docker-local.conf", store_dir=tmp_path / "data") as server:
        with urllib.request.urlopen(f"{server.monitor_url}/healthz?js-enabled-only=true", timeout=5) as reply:
            assert reply.status == 200  # what the compose healthcheck asks


def test_a_room_served_twice_is_refused_with_a_reason(tmp_path):
    create_room(tmp_path / "room", learners=1, port=free_port(), monitor_port=free_port())
    first = WorkshopServer(tmp_path / "room").start()
    try:
        with pytest.raises(WorkshopError, match="did not start") as caught:
            WorkshopServer(tmp_path / "room").start()
        assert "already" in str(caught.value) and first.running
    finally:
        first.stop()
