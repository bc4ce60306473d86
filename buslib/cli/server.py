"""``buslib server``: a persistent local nats-server with JetStream, for ``NATS_URL`` (the no-Docker option).

``buslib server --cluster 3`` runs a persistent local cluster instead: three nodes on
127.0.0.1, one store each under ``.buslib/cluster/``, and a comma-separated ``NATS_URL``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from buslib.errors import ServerError
from buslib.server import EmbeddedCluster, EmbeddedServer

FLAGS_HINT = "(On the command line: --port 0 and --monitor-port 0 pick free ports, --store-dir another store.)"

DEFAULT_PORT = 4222
DEFAULT_MONITOR_PORT = 8222
DEFAULT_ROUTE_PORT = 6222  # a cluster's routes: 6222, 6223, ... (the port nats-server's docs use)
DEFAULT_STORE = Path(".buslib/store")
DEFAULT_CLUSTER_STORE = Path(".buslib/cluster")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("server", help="run a persistent local nats-server (the no-Docker option)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"client port (default {DEFAULT_PORT}; with --cluster the first of N; 0 = any free port)",
    )
    parser.add_argument(
        "--monitor-port",
        type=int,
        help=f"monitoring port (default {DEFAULT_MONITOR_PORT} with the default --port, else any free port)",
    )
    parser.add_argument(
        "--store-dir",
        type=Path,
        help=f"where messages are kept (default {DEFAULT_STORE}; with --cluster {DEFAULT_CLUSTER_STORE}/n0, n1, ...)",
    )
    parser.add_argument(
        "--cluster",
        type=int,
        metavar="N",
        help="run a cluster of N nodes (3 keeps working when one fails); prints a comma-separated NATS_URL",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    monitor_port = args.monitor_port
    if monitor_port is None:  # a second server on other ports must not collide on the monitoring port
        monitor_port = DEFAULT_MONITOR_PORT if args.port == DEFAULT_PORT else 0
    stop = threading.Event()  # set by Ctrl-C or SIGTERM, from the moment the server may exist
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.cluster is not None:
        return run_cluster(args, monitor_port, stop)
    store = args.store_dir or DEFAULT_STORE
    server = EmbeddedServer(port=args.port, monitor_port=monitor_port, store_dir=store)
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
    print("Stopped. Messages are kept in", store)
    return 0


def run_cluster(args: argparse.Namespace, monitor_port: int, stop: threading.Event) -> int:
    size = args.cluster
    if size < 1:
        print(f"error: --cluster needs a number of nodes, 1 or more (3 is usual), got {size}.", file=sys.stderr)
        return 2
    store = args.store_dir or DEFAULT_CLUSTER_STORE

    def ports(first: int) -> list[int] | None:
        return [first + i for i in range(size)] if first else None  # 0: free ports

    route = DEFAULT_ROUTE_PORT if args.port == DEFAULT_PORT else 0
    cluster = EmbeddedCluster(
        size,
        store_root=store,
        ports=ports(args.port),
        monitor_ports=ports(monitor_port),
        cluster_ports=ports(route),
    )
    try:
        cluster.start()
    except ServerError as err:
        print(f"error: {err}\n{FLAGS_HINT}", file=sys.stderr)
        return 1
    print(
        f"A {size}-node nats-server {cluster.version} cluster {cluster.name!r} with JetStream is ready "
        f"(meta leader {cluster.meta_leader()})."
    )
    for node in cluster.nodes:
        print(f"  {node.name}  {node.url}  monitoring {node.monitor_url}  store {node.store_dir}")
    print(f"  NATS_URL:   {cluster.url}")
    print(f"Use it from notebooks with:  NATS_URL={cluster.url} make lab")
    print("Streams get copies on several nodes with ensure_stream(..., replicas=3). Press Ctrl-C to stop.", flush=True)
    reported: set[str] = set()
    while not stop.wait(0.5):
        for node in cluster.nodes:
            if not node.running and node.name not in reported:
                reported.add(node.name)
                print(f"node {node.name} exited; see its log: {node.log_path}", file=sys.stderr, flush=True)
        if not cluster.running():
            print("Every node has exited.", file=sys.stderr)
            cluster.stop()
            return 1
    cluster.stop()
    print("Stopped. Messages are kept in", store)
    return 0
