"""Creating a workshop room: passwords, the configuration, the roster and the learners' handouts.

>>> room = create_room(".buslib/workshop", learners=30, host="192.168.1.20")   # doctest: +SKIP
>>> read_roster(room.folder)[0].nats_url                                      # doctest: +SKIP
'nats://learner01:...@192.168.1.20:4222'

Files (all readable by their owner only; the folder too):

- ``roster.csv``: learner, account, user, password, nats_url, valid_until: one line per
  learner, for the instructor to hand out (each learner gets only their own line);
- ``handouts.txt``: the same as slips to print or paste, one per learner;
- ``instructor.env``: ``BUSLIB_WORKSHOP_URL`` (the instructor's account, for the board) and
  ``BUSLIB_WORKSHOP_SYS_URL`` (the system user, for server statistics);
- ``compose.env``: the interface and ports for ``docker compose --env-file`` (one server only);
- ``tls/cert.pem``, ``tls/key.pem`` (and ``ca.pem`` to hand out) when TLS is on;
- the configuration files of :mod:`buslib.workshop.config` (one per node in a cluster room).

Each ``create_room`` makes new passwords: every URL of an earlier roster stops working.
``resize_room`` makes a room that was never served a cluster (or one server again): same
passwords, every URL listing every node.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import re
import secrets
import shutil
import string
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from buslib.errors import WorkshopError
from buslib.server.stores import store_in_use
from buslib.workshop.config import (
    DEFAULT_CLUSTER_PORT,
    INSTRUCTOR_LIMITS,
    ROOM_FILE,
    Learner,
    Limits,
    Room,
    check_ports,
    render_accounts_config,
    render_routes_config,
    render_server_config,
    write_private,
)
from buslib.workshop.progress import MAX_RECORD_BYTES, RECORDS_PER_LEARNER

__all__ = [
    "INSTRUCTOR_URL_ENV",
    "MAX_LEARNERS",
    "SYS_URL_ENV",
    "RosterLine",
    "create_room",
    "extend_room",
    "hash_password",
    "instructor_urls",
    "read_roster",
    "resize_room",
    "write_room_files",
]

INSTRUCTOR_URL_ENV = "BUSLIB_WORKSHOP_URL"
SYS_URL_ENV = "BUSLIB_WORKSHOP_SYS_URL"
MAX_LEARNERS = 500
BCRYPT_COST = 4  # the passwords are random (130 bits): a higher cost buys nothing and costs the server CPU per connect
PROGRESS_COPIES = 3  # the instructor's budget holds PROGRESS 3 times: a cluster room keeps it on 3 nodes
_ALPHABET = string.ascii_letters + string.digits  # nothing to escape in a URL


@dataclass(frozen=True)
class RosterLine:
    """One learner's line of the roster."""

    learner: int
    account: str
    user: str
    password: str
    nats_url: str
    valid_until: str


def new_password(length: int = 22) -> str:
    """About 130 random bits from [A-Za-z0-9]: safe in a URL as it is."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def hash_password(password: str, *, cost: int = BCRYPT_COST) -> str:
    """A bcrypt hash nats-server accepts in place of the password (``$2b$04$...``)."""
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def create_room(
    folder: str | Path,
    *,
    learners: int,
    host: str | None = None,
    listen: str | None = None,
    port: int = 4222,
    monitor_port: int = 8222,
    valid_until: dt.datetime | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls_ca: str | Path | None = None,
    limits: Limits | None = None,
    store_dir: str | Path | None = None,
    overwrite: bool = False,
    bcrypt_cost: int = BCRYPT_COST,
    nodes: int = 1,
    cluster_port: int = DEFAULT_CLUSTER_PORT,
) -> Room:
    """Write a new room into ``folder``: configuration, roster, handouts, instructor credentials.

    Args:
        learners: how many learner accounts (1 to 500).
        host: the host name or address learners put in their URL; defaults to ``listen``
            (or 127.0.0.1, a rehearsal on this machine).
        listen: the interface the server listens on; defaults to ``host`` when it is an
            address, every interface (``0.0.0.0``) when it is a name, else 127.0.0.1.
        port / monitor_port: client port; monitoring port (always on 127.0.0.1).
        valid_until: when the credentials expire; defaults to 12 hours from now.
        tls_cert / tls_key: a certificate and key for the host (copied into the room);
            without them traffic, passwords included, is plain text.
        tls_ca: the CA file learners need to trust a self-signed certificate (copied as ``ca.pem``).
        limits: each learner account's limits.
        store_dir: the JetStream store; defaults to ``<folder>/store``.
        overwrite: replace a room already in ``folder``: its roster stops working, and its
            streams and progress records are deleted (refused while it is being served).
        nodes: 1 server, or a cluster of ``nodes`` on this machine (3 keeps serving when one
            fails); node i uses ``port + i``, ``monitor_port + i`` and routes on ``cluster_port + i``.

    Raises:
        WorkshopError: a setting is out of range, a TLS file is missing, or ``folder``
            already holds a room and ``overwrite`` is false.
    """
    folder = Path(folder)
    if not 1 <= learners <= MAX_LEARNERS:
        raise WorkshopError(f"A room has 1 to {MAX_LEARNERS} learners, not {learners}.")
    check_ports(nodes, port, monitor_port, cluster_port)
    if bool(tls_cert) != bool(tls_key):
        raise WorkshopError("TLS needs both the certificate and its private key (or neither, for no TLS).")
    for path in (tls_cert, tls_key, tls_ca):
        if path and not Path(path).is_file():
            raise WorkshopError(f"The TLS file {path} does not exist.")
    if (folder / ROOM_FILE).exists() and not overwrite:
        old = Room.load(folder)
        raise WorkshopError(
            f"{folder} already holds workshop {old.id} ({len(old.learners)} learners, valid until "
            f"{old.valid_until.isoformat()}). Its roster may be in your learners' hands: a new room there gives "
            "everyone new passwords. Serve that room, extend it, or choose another folder; replace it only on purpose."
        )
    if overwrite and (folder / ROOM_FILE).exists():
        _forget_old_room(Room.load(folder))
    host, listen = _host_and_listen(host, listen)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    width = max(2, len(str(learners)))
    room = Room(
        folder=folder,
        id=secrets.token_hex(3),
        created=now,
        valid_until=valid_until or now + dt.timedelta(hours=12),
        listen=listen,
        host=host,
        port=port,
        monitor_port=monitor_port,
        tls=bool(tls_cert),
        learners=[Learner(n, f"L{n:0{width}d}", f"learner{n:0{width}d}") for n in range(1, learners + 1)],
        limits=limits or Limits(),
        # room for every learner's progress records at their largest (in as many copies as a
        # cluster room keeps), plus the instructor's own streams
        instructor_limits=dataclasses.replace(
            INSTRUCTOR_LIMITS,
            max_file=INSTRUCTOR_LIMITS.max_file + PROGRESS_COPIES * learners * RECORDS_PER_LEARNER * MAX_RECORD_BYTES,
        ),
        store_dir=str(Path(store_dir).resolve()) if store_dir else None,
        nodes=nodes,
        cluster_port=cluster_port,
    )
    if room.valid_until <= now:
        raise WorkshopError(
            f"The room would be valid until {room.valid_until.isoformat()}, which is not in the future."
        )
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    passwords = {"sys": new_password(), "instructor": new_password()}
    passwords.update({learner.user: new_password() for learner in room.learners})
    hashes = {user: hash_password(password, cost=bcrypt_cost) for user, password in passwords.items()}
    if room.tls:
        assert tls_cert and tls_key
        (folder / "tls").mkdir(mode=0o700, exist_ok=True)
        write_private(folder / "tls" / "cert.pem", Path(tls_cert).read_text())
        write_private(folder / "tls" / "key.pem", Path(tls_key).read_text())
    if tls_ca:
        shutil.copyfile(tls_ca, folder / "ca.pem")  # public: learners get it
    write_private(folder / "accounts.conf", render_accounts_config(room, hashes))
    _write_instructor_env(room, passwords)
    _write_roster(room, passwords)
    write_room_files(room)
    return room


def _write_instructor_env(room: Room, passwords: dict[str, str]) -> None:
    write_private(
        room.folder / "instructor.env",
        f"# buslib workshop {room.id}, valid until {room.valid_until.isoformat()}. Keep it to yourself.\n"
        f"{INSTRUCTOR_URL_ENV}={room.url('instructor', passwords['instructor'])}\n"
        f"{SYS_URL_ENV}={room.url('sys', passwords['sys'])}\n",
    )


def _stores(room: Room) -> list[Path]:
    return [room.node_store(node) for node in range(room.nodes)]


def _forget_old_room(old: Room) -> None:
    """A new room starts empty: the old room's streams and progress records would show up in it."""
    for store in _stores(old):
        pid = store_in_use(store)
        if pid is not None:
            raise WorkshopError(
                f"Workshop {old.id} is being served right now (process {pid}). Stop it first (Ctrl-C where "
                "it runs), then create the new room."
            )
    for store in _stores(old):
        shutil.rmtree(store / "jetstream", ignore_errors=True)


def resize_room(folder: str | Path, nodes: int) -> Room:
    """Serve a room on ``nodes`` servers from now on (a cluster, or one server): same passwords, new URLs.

    The roster, the handouts and ``instructor.env`` are written again: every URL lists every
    node (a learner's older line still reaches the first node, without the others to fail over to).

    Raises:
        WorkshopError: the room holds streams already (it has been served with its current
            number of servers: they would not move), or ``nodes`` is out of range, or its
            ports would collide.
    """
    room = Room.load(folder)
    if nodes == room.nodes:
        return room
    check_ports(nodes, room.port, room.monitor_port, room.cluster_port)
    served = [store for store in _stores(room) if (store / "jetstream").exists()]
    if served:
        layout = f"a cluster of {room.nodes}" if room.clustered else "one server"
        raise WorkshopError(
            f"Workshop {room.id} has been served on {layout} already: its learners' streams and the progress "
            f"records are in {served[0]}, and would not move to {nodes} server{'s' if nodes > 1 else ''}.\n"
            f"What to do: serve it as it is (on {room.nodes} server{'s' if room.clustered else ''}), or create a new "
            f"room for {nodes} (new passwords: hand out its roster)."
        )
    room.nodes = nodes
    lines = [dataclasses.replace(x, nats_url=room.url(x.user, x.password)) for x in read_roster(folder)]
    instructor, system = (urlparse(url.split(",")[0]).password or "" for url in instructor_urls(folder))
    write_room_files(room)
    _save_roster(room, lines)
    _write_instructor_env(room, {"instructor": instructor, "sys": system})
    return room


def _host_and_listen(host: str | None, listen: str | None) -> tuple[str, str]:
    if host in ("0.0.0.0", "::"):
        raise WorkshopError(
            f"{host} means every interface, so it cannot be the address learners put in their URL. Give this "
            "machine's address on the room's network (e.g. 192.168.1.20) or its name."
        )
    if host is None and listen is None:
        return "127.0.0.1", "127.0.0.1"
    if host is None:
        assert listen is not None
        if listen in ("0.0.0.0", "::"):
            raise WorkshopError(
                f"Listening on every interface ({listen}) needs the host name or address learners will put in "
                "their URL (this machine's address on the room's network, e.g. 192.168.1.20)."
            )
        return listen, listen
    if listen is None:
        looks_like_address = all(part.isdigit() for part in host.split(".")) or ":" in host
        return host, host if looks_like_address or host == "localhost" else "0.0.0.0"
    return host, listen


_ROUTE_PASSWORD = re.compile(r'^authorization \{ user: "route", password: "([A-Za-z0-9]+)"', re.MULTILINE)


def write_room_files(room: Room) -> None:
    """(Re)write the files made from the room's settings: workshop.json, the server configs, compose.env.

    One server: ``workshop.conf``, ``docker.conf``, ``compose.env``. A cluster: one
    ``workshop-nN.conf`` per node and ``routes.conf`` (its route password is made once and
    kept: a node restarted later must still be let in by the others). The files of the other
    layout are removed. The roster and the accounts (passwords) are not touched.
    """
    room.save()
    folder = room.folder
    single = ("workshop.conf", "docker.conf", "compose.env")
    if room.clustered:
        for name in single:
            (folder / name).unlink(missing_ok=True)
        routes = folder / "routes.conf"
        found = _ROUTE_PASSWORD.search(routes.read_text()) if routes.exists() else None
        write_private(routes, render_routes_config(room, found.group(1) if found else new_password()))
        for node in range(room.nodes):
            write_private(room.config_path(node), render_server_config(room, node=node))
        return
    for stale in [folder / "routes.conf", *folder.glob("workshop-n*.conf")]:
        stale.unlink(missing_ok=True)
    write_private(room.config_path(), render_server_config(room))
    write_private(folder / "docker.conf", render_server_config(room, docker=True))
    publish = "0.0.0.0" if room.listen in ("0.0.0.0", "::") else room.listen
    write_private(
        folder / "compose.env",
        f"# docker compose --env-file {folder}/compose.env up -d workshop\n"
        f"WORKSHOP_DIR={folder.resolve()}\nWORKSHOP_LISTEN={publish}\n"
        f"WORKSHOP_PORT={room.port}\nWORKSHOP_MONITOR_PORT={room.monitor_port}\n",
    )


def _write_roster(room: Room, passwords: dict[str, str]) -> None:
    until = room.valid_until.isoformat()
    lines = [
        RosterLine(
            learner.number,
            learner.account,
            learner.user,
            passwords[learner.user],
            room.url(learner.user, passwords[learner.user]),
            until,
        )
        for learner in room.learners
    ]
    _save_roster(room, lines)


def _save_roster(room: Room, lines: list[RosterLine]) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["learner", "account", "user", "password", "nats_url", "valid_until"])
    writer.writerows([[x.learner, x.account, x.user, x.password, x.nats_url, x.valid_until] for x in lines])
    write_private(room.folder / "roster.csv", out.getvalue())
    ca = (
        "Your instructor also gives you ca.pem: save it and set SSL_CERT_FILE=/path/to/ca.pem next to NATS_URL.\n"
        if (room.folder / "ca.pem").exists()
        else ""
    )
    slips = [
        f"JetStream Bus Lab workshop: {line.user}\n"
        f"  export NATS_URL={line.nats_url}\n"
        f"  make lab        (in the kit's folder)\n"
        f"Valid until {line.valid_until}. This URL is yours only: do not share it.\n{ca}"
        for line in lines
    ]
    write_private(room.folder / "handouts.txt", ("-" * 78 + "\n").join(slips))


def read_roster(folder: str | Path) -> list[RosterLine]:
    """The roster's lines.

    Raises:
        WorkshopError: there is no roster, or it is damaged.
    """
    path = Path(folder) / "roster.csv"
    try:
        with path.open(newline="") as handle:
            return [
                RosterLine(
                    int(row["learner"]),
                    row["account"],
                    row["user"],
                    row["password"],
                    row["nats_url"],
                    row["valid_until"],
                )
                for row in csv.DictReader(handle)
            ]
    except FileNotFoundError:
        raise WorkshopError(f"{folder} has no roster.csv: create the room first (buslib workshop init).") from None
    except (KeyError, ValueError, TypeError) as err:
        raise WorkshopError(f"{path} is damaged ({type(err).__name__}: {err}).") from None


def instructor_urls(folder: str | Path) -> tuple[str, str]:
    """The instructor's and the system user's URLs, from the room's ``instructor.env``.

    Raises:
        WorkshopError: the file is missing or incomplete.
    """
    path = Path(folder) / "instructor.env"
    try:
        values = dict(
            line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")
        )
        return values[INSTRUCTOR_URL_ENV], values[SYS_URL_ENV]
    except (OSError, KeyError) as err:
        raise WorkshopError(
            f"Cannot read the instructor's credentials from {path} ({type(err).__name__}: {err}). "
            "Give the room's folder, or create the room (buslib workshop init)."
        ) from None


def extend_room(folder: str | Path, valid_until: dt.datetime) -> Room:
    """Keep a room (and its passwords) valid until ``valid_until``; a running ``serve`` picks it up.

    Raises:
        WorkshopError: no room in ``folder``.
    """
    room = Room.load(folder)
    room.valid_until = valid_until
    write_room_files(room)
    lines = [
        RosterLine(x.learner, x.account, x.user, x.password, x.nats_url, valid_until.isoformat())
        for x in read_roster(folder)
    ]
    _save_roster(room, lines)
    return room
