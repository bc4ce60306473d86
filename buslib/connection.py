"""Connecting to NATS: the URL to use, a shared embedded server, fail-fast connects.

>>> import buslib
>>> nc = await buslib.connect()            # doctest: +SKIP
>>> nc.connected_url.netloc                # doctest: +SKIP
'127.0.0.1:41234'

Which server? ``NATS_URL`` when it is set (docker compose, an instructor's server), else
one embedded server per process (per notebook kernel), started on first use.

Why not plain ``nats.connect()``? Its defaults hang for about two minutes when the server
is down (60 attempts, 2 s apart) and reconnect at a fixed interval. Here the first
connect fails within a few seconds with an error that says what to try, and once
connected the client reconnects forever with exponential backoff and jitter, so a fleet
of services does not hammer a restarting server in lockstep.
"""

from __future__ import annotations

import atexit
import os
import random
import threading
from typing import Any
from urllib.parse import urlparse

import nats
from nats.aio.client import Client, Server

from buslib.errors import ConnectError
from buslib.server import EmbeddedServer

__all__ = ["connect", "ensure_server", "embedded_server", "nats_url", "reconnect_delay"]

URL_ENV = "NATS_URL"
_SCHEMES = {"nats", "tls", "ws", "wss"}

_shared: EmbeddedServer | None = None
_shared_lock = threading.Lock()


def embedded_server() -> EmbeddedServer:
    """The process's shared embedded server, started on first call (and stopped at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.running:
            _shared = EmbeddedServer().start()
            atexit.register(_shared.stop)
        return _shared


def ensure_server() -> str:
    """Return the URL to use: ``$NATS_URL`` if set, else the shared embedded server's URL.

    Raises:
        ConnectError: ``NATS_URL`` is malformed.
        ServerError: no embedded server could be started.
    """
    url = os.environ.get(URL_ENV, "").strip()
    if url:
        return check_url(url)
    return embedded_server().url


nats_url = ensure_server


def check_url(url: str) -> str:
    """Validate a NATS URL such as ``nats://localhost:4222``; return it unchanged.

    Raises:
        ConnectError: the URL cannot be a NATS server address.
    """
    parsed = urlparse(url if "://" in url else f"nats://{url}")
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if parsed.scheme not in _SCHEMES or not parsed.hostname or port == -1:
        raise ConnectError(
            f"{url!r} is not a valid NATS URL. Expected something like nats://localhost:4222 "
            f"(scheme one of {', '.join(sorted(_SCHEMES))}, then host and optional port). "
            f"Check {URL_ENV} or the url you passed."
        )
    return url


def reconnect_delay(attempt: int, *, base: float = 0.1, cap: float = 5.0) -> float:
    """Exponential backoff with full jitter: a random delay in [0, min(cap, base * 2**attempt)].

    Args:
        attempt: how many reconnect attempts failed so far (0 for the first).
    """
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


def _backoff_handler(servers: list[Server], server_info: dict[str, Any]) -> tuple[Server | None, float]:
    server = min(servers, key=lambda s: s.reconnects)
    return server, reconnect_delay(server.reconnects)


async def connect(
    url: str | None = None,
    *,
    name: str | None = None,
    connect_timeout: float = 2.0,
    require_jetstream: bool = True,
    **options: Any,
) -> Client:
    """Connect to NATS, failing fast the first time and reconnecting forever afterwards.

    Args:
        url: the server; defaults to ``ensure_server()`` (``NATS_URL`` or the embedded one).
        name: a connection name shown in the server's monitoring.
        connect_timeout: seconds per connection attempt (two attempts are made).
        require_jetstream: raise if the server has JetStream disabled.
        **options: passed to ``nats.connect`` (callbacks, credentials, ...).

    Returns:
        A connected nats-py client.

    Raises:
        ConnectError: the URL is malformed, nothing answered, or JetStream is off.
    """
    url = check_url(url) if url else ensure_server()
    settings: dict[str, Any] = {
        "servers": [url],
        "name": name,
        "connect_timeout": connect_timeout,
        "max_reconnect_attempts": 1,  # the first connect: one retry, then a clear error
        "reconnect_time_wait": 0.1,
        "reconnect_to_server_handler": _backoff_handler,
        "error_cb": _quiet,
        "disconnected_cb": _quiet,
        "reconnected_cb": _quiet,
        "closed_cb": _quiet,
    }
    settings.update(options)
    try:
        nc = await nats.connect(**settings)
    except Exception as err:  # NoServersError, OSError, TimeoutError: all mean the same here
        raise ConnectError(
            f"Could not connect to a NATS server at {url} ({type(err).__name__}: {err or 'no answer'}).\n"
            "What to try: is the server running? `buslib doctor` checks your setup; "
            "`buslib server` starts a local one; `docker compose up -d` starts one in Docker. "
            f"If {URL_ENV} is set, check it (unset it to use the embedded server)."
        ) from None
    nc.options["max_reconnect_attempts"] = -1  # connected once: from now on, never give up
    if require_jetstream and not nc._server_info.get("jetstream"):
        await nc.close()
        raise ConnectError(
            f"The NATS server at {url} has JetStream disabled, and the kit needs it to store messages.\n"
            "Start the server with JetStream (nats-server -js, or `jetstream {}` in its config), "
            f"or unset {URL_ENV} to use the embedded server."
        )
    return nc


async def _quiet(*_: Any) -> None:
    # nats-py prints errors of its own callbacks; reconnects are expected in lessons.
    return None
