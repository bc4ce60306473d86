"""Real nats-servers for lessons, tests and local development, and nothing left behind.

>>> from buslib.server import EmbeddedServer
>>> with EmbeddedServer() as server:          # a fresh temp store, free ports, 127.0.0.1 only
...     server.url.startswith("nats://127.0.0.1:")
True

Modules: ``process`` (:class:`EmbeddedServer`: start, stop, restart, crash), ``cluster``
(:class:`EmbeddedCluster`: N of them as one JetStream cluster) and ``node`` (one of its
nodes), ``binary`` (finding nats-server), ``ports`` (ports a crashed server gets back),
``stores`` (temporary and claimed store folders), ``watchdog`` (kills an owner's servers
when the owner dies, even by SIGKILL), ``monitoring`` (the HTTP endpoints: ``/healthz``,
``/jsz``).
"""

from buslib.server.binary import BINARY_ENV, HOW_TO_GET_A_SERVER, find_server_binary
from buslib.server.cluster import EmbeddedCluster
from buslib.server.monitoring import consumer_rows, read_endpoint
from buslib.server.node import ClusterNode
from buslib.server.process import EmbeddedServer
from buslib.server.stores import pid_alive, remove_dead_owners_stores, temp_store_root

__all__ = [
    "BINARY_ENV",
    "HOW_TO_GET_A_SERVER",
    "ClusterNode",
    "EmbeddedCluster",
    "EmbeddedServer",
    "consumer_rows",
    "find_server_binary",
    "pid_alive",
    "read_endpoint",
    "remove_dead_owners_stores",
    "temp_store_root",
]
