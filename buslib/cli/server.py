"""``buslib server``: a persistent local nats-server with JetStream, for ``NATS_URL`` (the no-Docker option)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from buslib.errors import ServerError
from buslib.server import EmbeddedServer

FLAGS_HINT = "(On the command line: --port 0 and --monitor-port 0 pick free ports, --store-dir another store.)"

DEFAULT_PORT = 4222
DEFAULT_MONITOR_PORT = 8222


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("server", help="run a persistent local nats-server (the no-Docker option)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"client port (default {DEFAULT_PORT}; 0 = any free port)"
    )
    parser.add_argument(
        "--monitor-port",
        type=int,
        help=f"monitoring port (default {DEFAULT_MONITOR_PORT} with the default --port, else any free port)",
    )
    parser.add_argument("--store-dir", type=Path, default=Path(".buslib/store"), help="where messages are kept")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    monitor_port = args.monitor_port
    if monitor_port is None:  # a second server on other ports must not collide on the monitoring port
        monitor_port = DEFAULT_MONITOR_PORT if args.port == DEFAULT_PORT else 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before saying "ready": a stop may follow at once
        signal.signal(sig, lambda *_: stop.set())
    server = EmbeddedServer(port=args.port, monitor_port=monitor_port, store_dir=args.store_dir)
    try:
        server.start()
    except ServerError as err:
        print(f"error: {err}\n{FLAGS_HINT}", file=sys.stderr)
        return 1
    print(f"nats-server {server.version} with JetStream is ready.")
    print(f"  URL:        {server.url}")
    print(f"  monitoring: {server.monitor_url}")
    print(f"  store:      {server.store_dir}")
    print(f"Use it from notebooks with:  NATS_URL={server.url} make lab")
    print("Press Ctrl-C to stop.", flush=True)
    while not stop.wait(0.5):
        if not server.running:
            print("nats-server exited unexpectedly; see its log:", server.log_path, file=sys.stderr)
            return 1
    server.stop()
    print("Stopped. Messages are kept in", args.store_dir)
    return 0
