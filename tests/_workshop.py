"""Helpers shared by the workshop tests: a served room on 127.0.0.1, and plain nats-py connections."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats

from buslib.server.ports import restartable_port_block
from buslib.workshop import Limits, WorkshopServer, create_room, instructor_urls, read_roster


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def room_ports(nodes: int = 1) -> dict[str, int]:
    """Free ports for a room on 127.0.0.1; for a cluster, consecutive restartable ones (node i: port + i)."""
    if nodes == 1:
        return {"port": free_port(), "monitor_port": free_port()}
    first = restartable_port_block(3 * nodes)
    return {"port": first, "monitor_port": first + nodes, "cluster_port": first + 2 * nodes}


@contextlib.contextmanager
def served_room(
    folder: Path, learners: int = 3, limits: Limits | None = None, nodes: int = 1, **options: Any
) -> Iterator[WorkshopServer]:
    """A room created in ``folder`` and served on 127.0.0.1 (with its PROGRESS stream) for the block.

    ``nodes`` > 1: a cluster room, on consecutive restartable ports (a test may crash a node).
    """
    create_room(folder, learners=learners, limits=limits, nodes=nodes, **room_ports(nodes), **options)
    server = WorkshopServer(folder).start()
    try:
        asyncio.run(server.prepare())
        yield server
    finally:
        server.stop()


def urls(folder: Path) -> dict[str, str]:
    """account -> the learner's URL, plus "INSTRUCTOR" and "SYS"."""
    found = {line.account: line.nats_url for line in read_roster(folder)}
    found["INSTRUCTOR"], found["SYS"] = instructor_urls(folder)
    return found


async def raw_connect(url: str, **options: Any) -> Any:
    """nats-py itself (not the kit): what any client can do with these credentials.

    A cluster room's comma-separated URL is passed as nats-py's list of servers.
    """
    settings = {"connect_timeout": 2, "max_reconnect_attempts": 1, "reconnect_time_wait": 0.1, "allow_reconnect": False}
    settings.update(options)
    return await nats.connect(servers=url.split(","), **settings)
