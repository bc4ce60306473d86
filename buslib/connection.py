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

import asyncio
import atexit
import os
import re
import socket
import threading
from collections import deque
from typing import Any
from urllib.parse import urlparse

import nats
import nats.errors
from nats.aio.client import Client, Server

from buslib._nats.info import jetstream_enabled
from buslib.errors import ConnectError
from buslib.retry import backoff_delay
from buslib.server import EmbeddedServer

__all__ = ["URL_ENV", "check_url", "connect", "embedded_server", "ensure_server", "redact", "server_urls"]

URL_ENV = "NATS_URL"
_SCHEMES = {"nats", "tls", "ws", "wss"}

_shared: EmbeddedServer | None = None
_shared_lock = threading.Lock()


def embedded_server() -> EmbeddedServer:
    """The process's shared embedded server, started on first call (and stopped at exit).

    If that server died (killed by the OS, a crash demo), it is started again on the same
    ports and store, so existing connections reconnect by themselves.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = EmbeddedServer().start()
            atexit.register(_shared.stop)
        elif not _shared.running:
            _shared.start()
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


def check_url(url: str) -> str:
    """Validate a NATS URL such as ``nats://localhost:4222``; return it unchanged.

    A comma-separated list (``nats://a:4222,nats://b:4222``, as the ``nats`` CLI accepts in
    ``NATS_URL``) is checked entry by entry.

    Raises:
        ConnectError: the URL cannot be a NATS server address.
    """
    for entry in url.split(","):
        entry = entry.strip()
        parsed = urlparse(entry if "://" in entry else f"nats://{entry}")
        try:
            port = parsed.port
        except ValueError:  # not a number, or out of range
            port = -1
        if parsed.scheme not in _SCHEMES or not parsed.hostname or port == -1:
            raise ConnectError(
                f"{redact(url)!r} is not a valid NATS URL. Expected something like nats://localhost:4222 "
                f"(scheme one of {', '.join(sorted(_SCHEMES))}, then host and optional port). "
                f"Check {URL_ENV} or the url you passed."
            )
    return url


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print in an error."""
    return re.sub(r"(://[^:/@,]*:)[^@/,]*@", r"\1***@", url)


def server_urls(url: str | list[str]) -> list[str]:
    """The server URLs in ``url``: a list, or one string, comma-separated like ``NATS_URL`` for a cluster.

    nats-py takes a list but refuses a comma-separated string (Go clients and the ``nats``
    CLI accept both).

    Raises:
        ConnectError: a URL is malformed.
    """
    entries = url if isinstance(url, list) else url.split(",")
    urls = [check_url(entry.strip()) for entry in entries if entry.strip()]
    if not urls:
        raise ConnectError(f"No NATS URL given ({url!r}). Expected something like nats://localhost:4222.")
    return urls


def _backoff_handler(servers: list[Server], server_info: dict[str, Any]) -> tuple[Server | None, float]:
    # nats-py waits a fixed reconnect_time_wait; this hook gives exponential backoff with jitter.
    server = min(servers, key=lambda s: s.reconnects)
    return server, backoff_delay(server.reconnects)


async def connect(
    url: str | list[str] | None = None,
    *,
    name: str | None = None,
    connect_timeout: float = 1.5,
    require_jetstream: bool = True,
    **options: Any,
) -> Client:
    """Connect to NATS, failing fast the first time and reconnecting forever afterwards.

    Args:
        url: the server, or several (a list, or comma-separated like ``NATS_URL``) for a
            cluster; defaults to ``ensure_server()`` (``NATS_URL`` or the embedded one).
        name: a connection name shown in the server's monitoring.
        connect_timeout: seconds per connection attempt; two attempts are made, and the whole
            first connect gives up after ``2 * connect_timeout + 1`` seconds (4 s by default).
        require_jetstream: raise if the server has JetStream disabled.
        **options: passed to ``nats.connect`` (callbacks, credentials, ...).

    Returns:
        A connected nats-py client.

    Raises:
        ConnectError: the URL is malformed, nothing answered, or JetStream is off.
    """
    servers = server_urls(url or ensure_server())
    url = ",".join(servers)
    problems: deque[BaseException] = deque(maxlen=1)  # the last thing that went wrong, for the message
    user_error_cb = options.pop("error_cb", None)

    async def on_error(err: BaseException) -> None:
        problems.append(err)
        if user_error_cb is not None:
            await user_error_cb(err)

    settings: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "connect_timeout": connect_timeout,
        "max_reconnect_attempts": 1,  # the first connect: one retry, then a clear error
        "reconnect_time_wait": 0.1,
        "reconnect_to_server_handler": _backoff_handler,
        "error_cb": on_error,
        "disconnected_cb": _quiet,
        "reconnected_cb": _quiet,
        "closed_cb": _quiet,
    }
    settings.update(options)
    nc = Client()
    try:
        # Each handshake step has its own timeout in nats-py (TCP, INFO, TLS, PONG); a server
        # slow at several of them could add up past the promise, so bound the whole.
        await asyncio.wait_for(nc.connect(**settings), timeout=2 * connect_timeout + 1)
    except (OSError, asyncio.TimeoutError, nats.errors.Error) as err:  # NoServersError is a nats.errors.Error
        await nc.close()  # a half-open socket from an interrupted handshake
        cause = err if isinstance(err, asyncio.TimeoutError) else problems[-1] if problems else err
        raise ConnectError(
            f"Could not connect to a NATS server at {redact(url)} ({_describe(cause)}).\n"
            "What to try: is the server running? `buslib doctor` checks your setup; "
            "`buslib server` starts a local one; `docker compose up -d` starts one in Docker. "
            f"If {URL_ENV} is set, check it (unset it to use the embedded server)."
        ) from None
    nc.options["max_reconnect_attempts"] = -1  # connected once: from now on, never give up
    if require_jetstream and not await jetstream_enabled(nc):
        await nc.close()
        raise ConnectError(
            f"The NATS server at {redact(url)} has JetStream disabled, and the kit needs it to store messages.\n"
            "Start the server with JetStream (nats-server -js, or `jetstream {}` in its config), "
            f"or unset {URL_ENV} to use the embedded server."
        )
    return nc


def _describe(err: BaseException) -> str:
    if isinstance(err, asyncio.TimeoutError):
        return "no answer in time: nothing listening, a firewall, or not a NATS server"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused: nothing listens on that port"
    if isinstance(err, socket.gaierror):
        return f"unknown host ({err.strerror}): check the host name's spelling"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


async def _quiet(*_: Any) -> None:
    # nats-py prints errors of its own callbacks; reconnects are expected in lessons.
    return None
