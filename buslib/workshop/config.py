"""A workshop room: its settings, and the nats-server configuration that gives each learner an account.

>>> room = Room.load(".buslib/workshop")                     # doctest: +SKIP
>>> print(render_server_config(room))                        # doctest: +SKIP

A room is a folder written by :func:`buslib.workshop.room.create_room`:

- ``accounts.conf``: one NATS account per learner (``L01``, ``L02``, ...) with JetStream
  limits on memory, file storage, streams and consumers, and connection limits; an
  ``INSTRUCTOR`` account that imports every learner's ``buslib.progress`` as
  ``progress.<ACCOUNT>``; a ``SYS`` account for server statistics. Passwords are bcrypt
  hashes; there is no user without a password, so every connection must authenticate.
- ``workshop.conf``: the server (``server_name``, interface and port, monitoring on
  127.0.0.1 only, JetStream store and limits, TLS); it includes ``accounts.conf``.
- ``docker.conf``: the same for the official nats image (``docker compose up workshop``).
- A room served on a cluster of N nodes has instead ``workshop-n0.conf`` ... one per node
  (its own ``server_name``, ports and store, the same ``accounts.conf``) and ``routes.conf``
  (the routes between the nodes, on 127.0.0.1, with a password); no Docker files.
- ``workshop.json``: these settings, without secrets (:class:`Room`).

Each account has its own JetStream namespace, so every learner's ``EX01_ORDERS`` is their own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buslib.connection import INSTRUCTOR_ACCOUNT, SYSTEM_ACCOUNT, WORKSHOP_SERVER_PREFIX
from buslib.errors import WorkshopError
from buslib.exercises.recording import PROGRESS_SUBJECT

__all__ = [
    "DEFAULT_CLUSTER_PORT",
    "DEFAULT_ROOM",
    "DOCKER_ROOM",
    "MAX_NODES",
    "PROGRESS_PREFIX",
    "PROGRESS_STREAM",
    "Learner",
    "Limits",
    "Room",
    "check_ports",
    "parse_valid_until",
    "render_accounts_config",
    "render_routes_config",
    "render_server_config",
]

DEFAULT_ROOM = Path(".buslib/workshop")  # git ignores .buslib/: the room holds every password
DOCKER_ROOM = "/etc/nats/workshop"  # where docker-compose.yml mounts the room (read-only)
PROGRESS_PREFIX = "progress"  # the instructor's account sees progress.<ACCOUNT>
PROGRESS_STREAM = "PROGRESS"
ROOM_FILE = "workshop.json"
DEFAULT_CLUSTER_PORT = 6222  # node i's routes listen on 127.0.0.1:<cluster_port + i>
MAX_NODES = 7
MiB = 1024**2
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Limits:
    """What one account may use. The defaults leave a learner plenty of room.

    After every exercise a learner's account holds about 10 streams, 6 consumers and
    30 KiB; a notebook keeps 2 to 4 connections open.
    """

    max_mem: int = 64 * MiB  # bytes of memory-backed streams
    max_file: int = 256 * MiB  # bytes of file-backed streams
    max_streams: int = 32
    max_consumers: int = 128
    max_connections: int = 64
    max_subscriptions: int = 2000


INSTRUCTOR_LIMITS = Limits(max_mem=64 * MiB, max_file=256 * MiB, max_streams=16, max_consumers=256)


@dataclass(frozen=True)
class Learner:
    """One learner's account and user name (the password is in the roster only)."""

    number: int
    account: str
    user: str


@dataclass
class Room:
    """A workshop room's settings, as kept in ``workshop.json`` (no secrets).

    Attributes:
        folder: where the room's files are.
        id: a short random id; the server is named ``buslib-workshop-<id>``.
        valid_until: when the room's credentials expire (``serve`` refuses later, and stops then).
        listen: the interface the server listens on (``0.0.0.0`` for every interface).
        host: the host name or address in the learners' URLs.
        store_dir: the JetStream store; ``None`` means ``<folder>/store``.
        nodes: how many nats-servers serve the room: 1, or a cluster (node i listens on
            ``port + i``, monitors on ``monitor_port + i``, routes on ``cluster_port + i``).
    """

    folder: Path
    id: str
    created: dt.datetime
    valid_until: dt.datetime
    listen: str
    host: str
    port: int
    monitor_port: int
    tls: bool
    learners: list[Learner]
    limits: Limits = field(default_factory=Limits)
    instructor_limits: Limits = INSTRUCTOR_LIMITS
    store_dir: str | None = None
    nodes: int = 1
    cluster_port: int = DEFAULT_CLUSTER_PORT

    @property
    def server_name(self) -> str:
        """The server's name (a cluster's name, its nodes adding ``-n0``, ``-n1``...)."""
        return WORKSHOP_SERVER_PREFIX + self.id

    @property
    def clustered(self) -> bool:
        return self.nodes > 1

    def node_name(self, node: int) -> str:
        return f"{self.server_name}-n{node}" if self.clustered else self.server_name

    def node_store(self, node: int) -> Path:
        """Where node ``node`` keeps every account's streams."""
        return self.store / f"n{node}" if self.clustered else self.store

    def config_path(self, node: int = 0) -> Path:
        """The configuration file node ``node`` runs."""
        return self.folder / (f"workshop-n{node}.conf" if self.clustered else "workshop.conf")

    @property
    def scheme(self) -> str:
        return "tls" if self.tls else "nats"

    @property
    def store(self) -> Path:
        return Path(self.store_dir) if self.store_dir else self.folder / "store"

    @property
    def loopback_only(self) -> bool:
        return self.listen in _LOOPBACK

    def url(self, user: str, password: str) -> str:
        """A client URL with credentials, as written in the roster; comma-separated, one per node, in a cluster."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return ",".join(f"{self.scheme}://{user}:{password}@{host}:{self.port + i}" for i in range(self.nodes))

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.timezone.utc)) >= self.valid_until

    def totals(self) -> tuple[int, int]:
        """Memory and file bytes all accounts may use together (the server's JetStream limits)."""
        n = len(self.learners)
        return (
            self.limits.max_mem * n + self.instructor_limits.max_mem,
            self.limits.max_file * n + self.instructor_limits.max_file,
        )

    # -- workshop.json ----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("folder")
        data["created"] = self.created.isoformat()
        data["valid_until"] = self.valid_until.isoformat()
        return data

    def save(self) -> None:
        write_private(self.folder / ROOM_FILE, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> Room:
        """Read a room's settings.

        Raises:
            WorkshopError: the folder holds no room, or its ``workshop.json`` is damaged.
        """
        folder = Path(folder)
        path = folder / ROOM_FILE
        try:
            data = json.loads(path.read_text())
            return cls(
                folder=folder,
                id=data["id"],
                created=dt.datetime.fromisoformat(data["created"]),
                valid_until=dt.datetime.fromisoformat(data["valid_until"]),
                listen=data["listen"],
                host=data["host"],
                port=int(data["port"]),
                monitor_port=int(data["monitor_port"]),
                tls=bool(data["tls"]),
                learners=[Learner(**learner) for learner in data["learners"]],
                limits=Limits(**data["limits"]),
                instructor_limits=Limits(**data["instructor_limits"]),
                store_dir=data.get("store_dir"),
                nodes=int(data.get("nodes", 1)),  # rooms written before clusters: one server
                cluster_port=int(data.get("cluster_port", DEFAULT_CLUSTER_PORT)),
            )
        except FileNotFoundError:
            raise WorkshopError(
                f"{folder} holds no workshop room (no {ROOM_FILE}). Create one first (buslib workshop init), "
                "or give the folder the room was written to."
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise WorkshopError(
                f"{path} is damaged ({type(err).__name__}: {err}). Create the room again (buslib workshop init)."
            ) from None


def check_ports(nodes: int, port: int, monitor_port: int, cluster_port: int) -> None:
    """Refuse a number of nodes out of range, or client, monitoring and route ports out of range or colliding."""
    if not 1 <= nodes <= MAX_NODES:
        raise WorkshopError(f"A room is served by 1 server or a cluster of 2 to {MAX_NODES} (3 is usual), not {nodes}.")
    ranges = [range(first, first + nodes) for first in (port, monitor_port) + ((cluster_port,) if nodes > 1 else ())]
    taken = [p for r in ranges for p in r]
    if not all(0 < p < 65536 for p in taken) or len(set(taken)) != len(taken):
        each = f" ({nodes} each, one per node)" if nodes > 1 else ""
        raise WorkshopError(
            f"The client, monitoring{' and route' if nodes > 1 else ''} ports must be different numbers from 1 to "
            f"65535{each}; got {', '.join(f'{r.start}-{r.stop - 1}' if nodes > 1 else str(r.start) for r in ranges)}."
        )


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600), created that way: rooms hold passwords."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(partial, 0o600)
    os.replace(partial, path)  # readers (a running serve) see the old file or the new one, never half


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


def parse_valid_until(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """When a room expires: a duration from now (``12h``, ``90m``, ``1d``, ``2h30m``) or a time.

    A time is ISO 8601 (``2026-12-02T18:00``, ``2026-12-02 18:00+01:00``); without a time
    zone it is this machine's local time.

    Raises:
        WorkshopError: neither a duration nor a time, or not in the future.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    text = text.strip()
    match = _DURATION.match(text.lower())
    if text and match and any(match.groups()):
        days, hours, minutes = (int(g or 0) for g in match.groups())
        until = now + dt.timedelta(days=days, hours=hours, minutes=minutes)
    else:
        try:
            until = dt.datetime.fromisoformat(text)
        except ValueError:
            raise WorkshopError(
                f"{text!r} is not a time the room can be valid until. Give a duration from now "
                "(12h, 90m, 1d, 2h30m) or a date and time (2026-12-02T18:00, local time unless it has a zone)."
            ) from None
        if until.tzinfo is None:
            until = until.astimezone()  # local time
    if until <= now:
        raise WorkshopError(f"The room would be valid until {until.isoformat()}, which is not in the future.")
    return until.astimezone(dt.timezone.utc).replace(microsecond=0)


# -- the configuration files ---------------------------------------------------------------
def _q(value: str) -> str:
    """A double-quoted nats-server config string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_accounts_config(room: Room, hashes: dict[str, str]) -> str:
    """``accounts.conf``: every account, its users (``hashes``: user -> bcrypt hash), limits, progress wiring."""

    def js(limits: Limits) -> str:
        return (
            f"jetstream: {{ max_mem: {limits.max_mem}, max_file: {limits.max_file}, "
            f"max_streams: {limits.max_streams}, max_consumers: {limits.max_consumers} }}"
        )

    def conn(limits: Limits) -> str:
        return f"limits: {{ max_connections: {limits.max_connections}, max_subscriptions: {limits.max_subscriptions} }}"

    lines = [
        f"# buslib workshop {room.id}: the accounts of {len(room.learners)} learners, the instructor and the system.",
        "# Every user has a password (bcrypt hashes): no connection without credentials.",
        f"system_account: {SYSTEM_ACCOUNT}",
        "accounts {",
        f"  {SYSTEM_ACCOUNT} {{",
        f'    users: [ {{ user: "sys", password: {_q(hashes["sys"])} }} ]',
        "  }",
        f"  {INSTRUCTOR_ACCOUNT} {{",
        f'    users: [ {{ user: "instructor", password: {_q(hashes["instructor"])} }} ]',
        f"    {js(room.instructor_limits)}",
        f"    {conn(room.instructor_limits)}",
        "    # Each learner's check results, named by the account they came from: unforgeable.",
        "    imports: [",
    ]
    for learner in room.learners:
        lines.append(
            f"      {{ stream: {{ account: {learner.account}, subject: {_q(PROGRESS_SUBJECT)} }}, "
            f"to: {_q(f'{PROGRESS_PREFIX}.{learner.account}')} }}"
        )
    lines += ["    ]", "  }"]
    for learner in room.learners:
        lines += [
            f"  {learner.account} {{",
            f"    users: [ {{ user: {_q(learner.user)}, password: {_q(hashes[learner.user])} }} ]",
            f"    {js(room.limits)}",
            f"    {conn(room.limits)}",
            f"    exports: [ {{ stream: {_q(PROGRESS_SUBJECT)}, accounts: [{INSTRUCTOR_ACCOUNT}] }} ]",
            "  }",
        ]
    lines += ["}", ""]
    return "\n".join(lines)


def render_server_config(room: Room, *, docker: bool = False, node: int = 0) -> str:
    """``workshop.conf`` (or, with ``docker``, ``docker.conf``): the server around ``accounts.conf``.

    In a cluster room, node ``node``'s ``workshop-nN.conf``: its own name, ports and store, and
    a ``cluster {}`` block (routes on 127.0.0.1 only, with the password in ``routes.conf``).
    Monitoring has no authentication, so it listens on 127.0.0.1 only (in Docker: inside the
    container, published on the host's loopback by docker-compose.yml).

    Raises:
        WorkshopError: ``docker`` for a cluster room (the compose profile runs one server).
    """
    memory, disk = room.totals()
    if docker and room.clustered:
        raise WorkshopError("docker-compose.yml's workshop profile runs one server, not a cluster room's nodes.")
    if docker:
        listen, http, store, tls_dir = "0.0.0.0:4222", "0.0.0.0:8222", "/data", f"{DOCKER_ROOM}/tls"
    else:
        listen = _hostport(room.listen, room.port + node)
        http, store, tls_dir = (
            f"127.0.0.1:{room.monitor_port + node}",
            str(room.node_store(node).resolve()),
            str(room.folder.resolve() / "tls"),
        )
    which = f", node {node} of {room.nodes}" if room.clustered else ""
    lines = [
        f"# buslib workshop {room.id}{which} for {len(room.learners)} learners, "
        f"valid until {room.valid_until.isoformat()}.",
        "# Written by buslib workshop (init, serve): edit the room with its commands, not by hand.",
        f"server_name: {_q(room.node_name(node))}",
        f"listen: {_q(listen)}",
        f"http: {_q(http)}",
        f"max_connections: {len(room.learners) * room.limits.max_connections + room.instructor_limits.max_connections + 16}",
        "max_payload: 1048576",
        "jetstream {",
        f"  store_dir: {_q(store)}",
        "  # The sum of every account's limits: more, and the server refuses to start.",
        f"  max_memory_store: {memory}",
        f"  max_file_store: {disk}",
        "}",
    ]
    if room.clustered:
        lines += [
            "cluster {",
            f"  name: {_q(room.server_name)}",
            "  # The nodes talk to each other on this machine only, with the password in routes.conf.",
            f"  listen: {_q(f'127.0.0.1:{room.cluster_port + node}')}",
            "  # Learners' URLs list every node: no other addresses are advertised to clients (they would",
            "  # lack the credentials, and 127.0.0.1 means nothing on a learner's machine).",
            "  no_advertise: true",
            '  include "routes.conf"',
            "}",
        ]
    if room.tls:
        lines += [
            "tls {",
            f"  cert_file: {_q(tls_dir + '/cert.pem')}",
            f"  key_file: {_q(tls_dir + '/key.pem')}",
            "  timeout: 2",
            "}",
        ]
    lines += ['include "accounts.conf"', ""]
    return "\n".join(lines)


def render_routes_config(room: Room, password: str) -> str:
    """``routes.conf`` (inside each node's ``cluster {}``): who may connect as a route, and every node's route."""
    routes = ", ".join(
        _q(f"nats-route://route:{password}@127.0.0.1:{room.cluster_port + i}") for i in range(room.nodes)
    )
    return (
        f"# buslib workshop {room.id}: the routes between its {room.nodes} nodes. Keep it to yourself.\n"
        f'authorization {{ user: "route", password: {_q(password)}, timeout: 2 }}\n'
        f"routes: [ {routes} ]\n"
    )
