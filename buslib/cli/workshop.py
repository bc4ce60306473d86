"""``buslib workshop``: one server for a room of learners (init, serve, board, extend, roster).

The instructor's guide is docs/workshop.md.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from buslib.errors import WorkshopError
from buslib.workshop import DEFAULT_ROOM, Limits, Room, WorkshopServer, create_room, extend_room, parse_valid_until
from buslib.workshop.board import BoardState, format_board, server_stats
from buslib.workshop.config import DEFAULT_CLUSTER_PORT, MAX_NODES
from buslib.workshop.progress import ProgressReader, connect_instructor, ensure_progress_stream
from buslib.workshop.room import INSTRUCTOR_URL_ENV, MAX_LEARNERS, SYS_URL_ENV, instructor_urls, read_roster
from buslib.workshop.serve import instructor_tls

LONGEST_RUN = 24 * 3600.0  # seconds: serve and board never run longer than this


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "workshop",
        help="one server for a room of learners: init, serve, board, extend, roster",
        description="A workshop: one nats-server, one NATS account per learner (isolated, with limits), and a "
        "live board of every learner's checks. Guide: docs/workshop.md.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    room_help = f"the room's folder (default {DEFAULT_ROOM})"

    init = actions.add_parser("init", help="write a room: server config, accounts, roster, handouts")
    init.add_argument("--learners", type=int, required=True, help=f"how many learner accounts (1-{MAX_LEARNERS})")
    init.add_argument("--out", type=Path, default=DEFAULT_ROOM, help=room_help)
    init.add_argument("--host", help="host name or address learners put in NATS_URL (default: --listen, or 127.0.0.1)")
    init.add_argument("--listen", help="interface to listen on (default: --host if an address, 0.0.0.0 for a name)")
    init.add_argument("--port", type=int, default=4222, help="client port (default 4222)")
    init.add_argument("--monitor-port", type=int, default=8222, help="monitoring port, on 127.0.0.1 (default 8222)")
    init.add_argument("--valid-until", default="12h", help="a duration (12h, 90m, 1d) or a time (default 12h)")
    init.add_argument("--tls-cert", type=Path, help="TLS certificate for --host (with --tls-key)")
    init.add_argument("--tls-key", type=Path, help="its private key")
    init.add_argument("--tls-ca", type=Path, help="the CA file learners need for a self-signed certificate")
    init.add_argument("--mem", default="64M", help="memory-stream bytes per learner (default 64M)")
    init.add_argument("--file", default="256M", help="file-stream bytes per learner (default 256M)")
    init.add_argument("--streams", type=int, default=Limits.max_streams, help="streams per learner (default 32)")
    init.add_argument("--consumers", type=int, default=Limits.max_consumers, help="consumers per learner (default 128)")
    init.add_argument("--connections", type=int, default=Limits.max_connections, help="connections per learner (64)")
    init.add_argument("--store-dir", type=Path, help="JetStream store (default: <room>/store)")
    init.add_argument(
        "--cluster",
        type=int,
        metavar="N",
        default=1,
        help=f"serve the room on a cluster of N nodes on this machine (2-{MAX_NODES}; 3 keeps serving when one fails)",
    )
    init.add_argument("--cluster-port", type=int, default=DEFAULT_CLUSTER_PORT, help="first route port (6222)")
    init.add_argument("--force", action="store_true", help="replace a room already in --out (new passwords!)")
    init.set_defaults(run=run_init)

    serve = actions.add_parser("serve", help="run the room's server with the bundled nats-server (Ctrl-C stops)")
    serve.add_argument("--room", type=Path, default=DEFAULT_ROOM, help=room_help)
    serve.add_argument("--for", dest="seconds", type=float, help="stop after this many seconds (default: at expiry)")
    serve.add_argument(
        "--cluster",
        type=int,
        metavar="N",
        help="serve on N nodes (3: records and learners survive a lost node); a room never served yet is changed, "
        "its roster rewritten with every node (same passwords); default: as the room was created",
    )
    serve.set_defaults(run=run_serve)

    board = actions.add_parser("board", help="a live table of the room in this terminal")
    board.add_argument("--room", type=Path, default=DEFAULT_ROOM, help=room_help)
    board.add_argument("--url", help=f"the instructor's URL instead of the room's (default ${INSTRUCTOR_URL_ENV})")
    board.add_argument("--sys-url", help=f"the system user's URL, for the server's load (${SYS_URL_ENV})")
    board.add_argument("--once", action="store_true", help="print the board once and exit")
    board.add_argument("--every", type=float, default=2.0, help="seconds between refreshes (default 2)")
    board.add_argument("--for", dest="seconds", type=float, default=8 * 3600, help="stop after this long (8 h)")
    board.set_defaults(run=run_board)

    extend = actions.add_parser("extend", help="keep the room's passwords valid longer (a running serve follows)")
    extend.add_argument("--room", type=Path, default=DEFAULT_ROOM, help=room_help)
    extend.add_argument("--until", required=True, help="a duration from now (4h) or a time")
    extend.set_defaults(run=run_extend)

    roster = actions.add_parser("roster", help="print the roster, or one learner's line")
    roster.add_argument("--room", type=Path, default=DEFAULT_ROOM, help=room_help)
    roster.add_argument("--learner", type=int, help="only this learner's line (their number)")
    roster.set_defaults(run=run_roster)


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str, what: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise WorkshopError(f"--{what} {text!r} is not a size: write it like 64M, 512M or 1G.")
    number, unit = int(match.group(1)), match.group(2).lower()
    return number * 1024 ** " kmgt".index(unit or " ")


def run_init(args: argparse.Namespace) -> int:
    if (args.out / "workshop.json").exists() and not args.force:
        old = Room.load(args.out)
        print(
            f"error: {args.out} already holds workshop {old.id} ({len(old.learners)} learners, valid until "
            f"{old.valid_until.isoformat()}). Your learners may have its roster: a new room gives everyone new "
            "passwords.\n  Keep it: buslib workshop serve (or extend --until 4h)\n"
            f"  Another room: --out another/folder\n  Replace it on purpose: add --force",
            file=sys.stderr,
        )
        return 1
    limits = Limits(
        max_mem=parse_size(args.mem, "mem"),
        max_file=parse_size(args.file, "file"),
        max_streams=args.streams,
        max_consumers=args.consumers,
        max_connections=args.connections,
    )
    room = create_room(
        args.out,
        learners=args.learners,
        host=args.host,
        listen=args.listen,
        port=args.port,
        monitor_port=args.monitor_port,
        valid_until=parse_valid_until(args.valid_until),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        limits=limits,
        store_dir=args.store_dir,
        overwrite=args.force,
        nodes=args.cluster,
        cluster_port=args.cluster_port,
    )
    print(f"Workshop {room.id}: {len(room.learners)} learners, valid until {room.valid_until.isoformat()}.")
    print(f"  roster (one line per learner):  {room.folder / 'roster.csv'}")
    print(f"  handouts to print or paste:     {room.folder / 'handouts.txt'}")
    print(f"  your credentials (board):       {room.folder / 'instructor.env'}")
    if room.clustered:
        configs = f"{room.config_path(0)} ... -n{room.nodes - 1}.conf (+ accounts.conf, routes.conf)"
    else:
        configs = f"{room.config_path()} (+ accounts.conf, docker.conf)"
    print(f"  server configuration:           {configs}")
    print(f"Learners connect to {_addresses(room)} with their own NATS_URL.")
    if room.loopback_only:
        print("It listens on 127.0.0.1 only: a rehearsal on this machine. For a room, pass --host with this machine's")
        print("address on the room's network (and --tls-cert/--tls-key on any network you do not trust).")
    elif not room.tls:
        print(
            "WARNING: no TLS certificate: passwords and messages cross the network as plain text. Fine on a trusted\n"
            "         classroom network; elsewhere run init again with --tls-cert and --tls-key.",
            file=sys.stderr,
        )
    print(f"Next: buslib workshop serve{_room_arg(args.out)}")
    return 0


def _room_arg(folder: Path) -> str:
    return "" if folder == DEFAULT_ROOM else f" --room {folder}"


def _ports(first: int, room: Room) -> str:
    return f"{first}-{first + room.nodes - 1}" if room.clustered else str(first)


def _addresses(room: Room) -> str:
    where = f"{room.scheme}://{room.host}:{_ports(room.port, room)}"
    return f"{where} (a cluster of {room.nodes} nodes)" if room.clustered else where


def run_serve(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before saying "serving": a stop may follow at once
        signal.signal(sig, lambda *_: stop.set())
    before = Room.load(args.room).nodes
    server = WorkshopServer(args.room, nodes=args.cluster)
    server.start()
    try:
        asyncio.run(server.prepare())
        room = server.room
        for warning in server.warnings:
            print(f"WARNING: {warning}", file=sys.stderr)
        if room.nodes != before:
            print(
                f"The room now runs on {room.nodes} server{'s' if room.clustered else ''}: its roster, handouts and "
                "instructor.env list every node (same passwords). Hand out the new lines; an older line still "
                "reaches the first node, without another to fail over to."
            )
        on = f" on a {room.nodes}-node cluster" if room.clustered else ""
        print(f"Workshop {room.id} is serving {len(room.learners)} learners{on} (nats-server {server.version}).")
        print(f"  learners:   {room.url('learnerNN', 'PASSWORD')}  (their line of the roster)")
        print(
            f"  listening:  {room.listen}:{_ports(room.port, room)}; "
            f"monitoring on 127.0.0.1:{_ports(room.monitor_port, room)} only"
        )
        if room.clustered:
            print(
                f"  routes:     127.0.0.1:{_ports(room.cluster_port, room)} only (with a password); the progress "
                "records are kept on 3 nodes"
            )
        print(f"  the board:  buslib workshop board{_room_arg(args.room)}")
        print(f"Stops at {room.valid_until.isoformat()} (when the passwords expire) or on Ctrl-C.", flush=True)
        return _serve_until_stopped(server, args.seconds, stop)
    finally:
        server.stop()
        print(f"Stopped. Learners' streams stay in {server.room.store} until you delete the room's folder.")


def _serve_until_stopped(server: WorkshopServer, seconds: float | None, stop: threading.Event) -> int:
    end = time.monotonic() + min(seconds if seconds is not None else LONGEST_RUN, LONGEST_RUN)
    checked = 0.0
    while not stop.wait(0.5):
        if not server.running:
            logs = ", ".join(str(path) for path in server.log_paths)
            print(f"error: nats-server exited unexpectedly; see its log: {logs}", file=sys.stderr)
            return 1
        for name in server.revive():  # a cluster node that exited: the others serve meanwhile
            print(
                f"WARNING: node {name} exited unexpectedly and was started again (its log: {server.node_log(name)}). "
                "Learners' streams kept on it are back once it has caught up.",
                file=sys.stderr,
            )
        if time.monotonic() >= end:
            return 0
        if time.monotonic() - checked > 2:  # `buslib workshop extend` may have moved the end
            checked = time.monotonic()
            try:
                room = Room.load(server.folder)
            except WorkshopError:  # being rewritten, or damaged: keep serving, check again later
                continue
            if room.expired():
                print(f"The room's credentials expired at {room.valid_until.isoformat()}: stopping.")
                return 0
    return 0


def run_board(args: argparse.Namespace) -> int:
    return asyncio.run(_board(args))


async def _board(args: argparse.Namespace) -> int:
    import os

    learners = None
    url, sys_url, tls = args.url or os.environ.get(INSTRUCTOR_URL_ENV), args.sys_url, None
    if url is None:
        url, sys_url = instructor_urls(args.room)
        learners, tls = Room.load(args.room).learners, instructor_tls(args.room)
    sys_url = sys_url or os.environ.get(SYS_URL_ENV)
    nc = await connect_instructor(url, name="buslib-workshop-board", tls=tls)
    sys_nc = None
    if sys_url:
        from buslib.connection import connect

        sys_nc = await connect(sys_url, instructor=True, require_jetstream=False, tls=tls, name="buslib-board-stats")
    await ensure_progress_stream(nc.jetstream(timeout=5))  # a room served by docker compose: the board makes it
    reader = await ProgressReader(nc).start()
    state = BoardState(learners)
    end = time.monotonic() + min(max(args.seconds, 0.0), LONGEST_RUN)
    try:
        while True:
            problem = ""
            if not await reader.catch_up(timeout=5.0):  # e.g. reconnecting after a cluster room lost a node
                problem = "\n(the server did not answer in time: the latest checks may be missing; asking again)"
            state.add(await reader.read())
            text = format_board(state.view(server=await server_stats(sys_nc) if sys_nc else None)) + problem
            if args.once:
                print(text)
                return 0
            print("\033[2J\033[H" + text + f"\n\n(refreshes every {args.every:g} s; Ctrl-C stops)", flush=True)
            if time.monotonic() >= end:
                return 0
            await asyncio.sleep(max(args.every, 0.5))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    finally:
        await reader.stop()
        for conn in (nc, sys_nc):
            if conn is not None:
                await conn.close()


def run_extend(args: argparse.Namespace) -> int:
    room = extend_room(args.room, parse_valid_until(args.until))
    print(f"Workshop {room.id} is valid until {room.valid_until.isoformat()} (same passwords; roster updated).")
    return 0


def run_roster(args: argparse.Namespace) -> int:
    lines = read_roster(args.room)
    if args.learner is not None:
        lines = [line for line in lines if line.learner == args.learner]
        if not lines:
            raise WorkshopError(f"There is no learner {args.learner} in {args.room}'s roster.")
    for line in lines:
        print(f"{line.user}  NATS_URL={line.nats_url}")
    return 0
