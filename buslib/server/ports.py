"""Ports for servers that crash and restart: free ones below the range the OS hands out by itself.

>>> 1024 < restartable_port() < automatic_port_range()[0]
True

A port picked by the OS (``-p -1``) is in its automatic range (32768-60999 on Linux), from
which it hands ports to every other program's outgoing connections too. While a crashed
server is down, one of those may take its port, and the restart on the same port fails
("address already in use"). A free port below that range is not handed out to anyone
unasked, so a lesson can crash a server and bring it back on the same URL.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

from buslib.errors import ServerError

__all__ = ["automatic_port_range", "restartable_port", "restartable_port_block", "restartable_ports"]

_LOWEST = 10_000  # above the well-known and most registered service ports


def automatic_port_range() -> tuple[int, int]:
    """The OS's range of automatically assigned (ephemeral) ports."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535  # IANA's dynamic range: macOS and Windows use it


def restartable_port(*, attempts: int = 50) -> int:
    """A port free on 127.0.0.1 now, below the automatic range; 0 if none was found (the server picks)."""
    low = automatic_port_range()[0]
    if low - 1 <= _LOWEST:
        return 0
    for _ in range(attempts):
        port = random.randrange(_LOWEST, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return 0


def restartable_ports(count: int) -> list[int]:
    """``count`` different restartable ports, e.g. a cluster's route ports (known before any node starts).

    Raises:
        ServerError: not enough free ones below the automatic range.
    """
    chosen: list[int] = []
    for _ in range(count * 20):
        port = restartable_port()
        if port and port not in chosen:
            chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise ServerError(f"Could not find {count} free ports below the OS's automatic port range; pass them explicitly.")


def restartable_port_block(count: int, *, attempts: int = 50) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 now, below the automatic range.

    For servers whose ports follow one another (a workshop cluster's node i uses ``port + i``).

    Raises:
        ServerError: no such block was found.
    """
    low = automatic_port_range()[0]
    for _ in range(attempts if low - count > _LOWEST else 0):
        first = random.randrange(_LOWEST, low - count)
        if all(_free(port) for port in range(first, first + count)):
            return first
    raise ServerError(f"Could not find {count} consecutive free ports below the OS's automatic port range.")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
