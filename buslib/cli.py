"""The ``buslib`` command (also ``python -m buslib``).

>>> main(["server", "--help"])   # doctest: +SKIP

Subcommands live next to what they operate on; each module offers ``add_cli(subparsers)``:
``server`` (here), ``doctor`` (buslib.doctor), ``dlq`` (buslib.dlq), ``contracts``
(buslib.contracts), ``progress`` (buslib.progress).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from pathlib import Path

from buslib.errors import BusError
from buslib.server import EmbeddedServer

__all__ = ["main"]

_FEATURE_MODULES = ("buslib.doctor", "buslib.dlq", "buslib.contracts", "buslib.progress")


def _run_server(args: argparse.Namespace) -> int:
    server = EmbeddedServer(port=args.port, monitor_port=args.monitor_port, store_dir=args.store_dir)
    server.start()
    print(f"nats-server {server.version} with JetStream is ready.")
    print(f"  URL:        {server.url}")
    print(f"  monitoring: {server.monitor_url}")
    print(f"  store:      {server.store_dir}")
    print(f"Use it from notebooks with:  NATS_URL={server.url} make lab")
    print("Press Ctrl-C to stop.", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        if not server.running:
            print("nats-server exited unexpectedly; see its log:", server.log_path, file=sys.stderr)
            return 1
    server.stop()
    print("Stopped. Messages are kept in", args.store_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="buslib", description="JetStream Bus Lab tools.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    server = commands.add_parser("server", help="run a persistent local nats-server (the no-Docker option)")
    server.add_argument("--port", type=int, default=4222, help="client port (default 4222; 0 = any free port)")
    server.add_argument("--monitor-port", type=int, default=8222, help="monitoring port (default 8222)")
    server.add_argument("--store-dir", type=Path, default=Path(".buslib/store"), help="where messages are kept")
    server.set_defaults(func=_run_server)

    for name in _FEATURE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue  # feature not built yet
        module.add_cli(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
