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

On a workshop server (``buslib workshop serve``: one account per learner, see
docs/workshop.md) a refused password says to ask for the current roster, the instructor's
credentials are refused in a learner's notebook, and a connection whose password stopped
working (a new roster) is closed instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import re
import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlparse

import nats
import nats.errors
from nats.aio.client import Client, Server

from buslib._nats.info import connection_account, jetstream_enabled, server_info
from buslib.errors import ConnectError, CredentialsError
from buslib.retry import backoff_delay
from buslib.server import EmbeddedServer

__all__ = [
    "INSTRUCTOR_ACCOUNT",
    "SYSTEM_ACCOUNT",
    "URL_ENV",
    "WORKSHOP_SERVER_PREFIX",
    "check_url",
    "connect",
    "embedded_server",
    "ensure_server",
    "is_workshop_server",
    "redact",
    "server_urls",
]

URL_ENV = "NATS_URL"
_SCHEMES = {"nats", "tls", "ws", "wss"}
WORKSHOP_SERVER_PREFIX = "buslib-workshop-"  # the server_name of every `buslib workshop serve` server
INSTRUCTOR_ACCOUNT = "INSTRUCTOR"  # a workshop's instructor account: the room's progress records
SYSTEM_ACCOUNT = "SYS"  # a workshop's system account: server statistics
_LOG = logging.getLogger("buslib")
_AUTH_ERRORS = ("authorization violation", "authentication expired", "authentication revoked")

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
    instructor: bool = False,
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
        instructor: allow a workshop's instructor and system accounts (the workshop tools
            do); a learner's connection to them is refused.
        **options: passed to ``nats.connect`` (callbacks, credentials, ...).

    Returns:
        A connected nats-py client.

    Raises:
        CredentialsError: the server refused the user and password, or (on a workshop
            server) they are the instructor's.
        ConnectError: the URL is malformed, nothing answered, or JetStream is off.
    """
    servers = server_urls(url or ensure_server())
    url = ",".join(servers)
    problems: list[BaseException] = []  # everything that went wrong during the first connect
    user_error_cb = options.pop("error_cb", None)
    user_closed_cb = options.pop("closed_cb", None)
    nc = Client()
    connected = False
    told = False

    def tell_refused() -> None:  # a password that stopped working: say so once, in plain words
        nonlocal told
        if not told:
            told = True
            _LOG.error("%s", _refused_message(url, server_info(nc), later=True))

    async def on_error(err: BaseException) -> None:
        if not connected:
            if len(problems) < 32:  # bounded: one or two per attempt
                problems.append(err)
        elif _is_auth_error(err) and not nc.is_closed:
            # Reconnecting with a password the server no longer accepts (a new roster, a
            # restarted workshop) would loop forever: stop, and say why.
            tell_refused()
            asyncio.get_running_loop().create_task(_close_quietly(nc))
        if user_error_cb is not None:
            await user_error_cb(err)

    async def on_closed() -> None:
        if connected and _is_auth_error(nc.last_error):  # a config reload dropped this user
            tell_refused()
        if user_closed_cb is not None:
            await user_closed_cb()

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
        "closed_cb": on_closed,
    }
    settings.update(options)
    try:
        # Each handshake step has its own timeout in nats-py (TCP, INFO, TLS, PONG); a server
        # slow at several of them could add up past the promise, so bound the whole.
        await asyncio.wait_for(nc.connect(**settings), timeout=2 * connect_timeout + 1)
    except (OSError, asyncio.TimeoutError, nats.errors.Error) as err:  # NoServersError is a nats.errors.Error
        await _close_quietly(nc)  # a half-open socket from an interrupted handshake
        raise _connect_error(url, [*problems, err], server_info(nc)) from None
    connected = True
    nc.options["max_reconnect_attempts"] = -1  # connected once: from now on, never give up
    if not instructor and is_workshop_server(nc):
        await _refuse_instructor_accounts(nc, url)
    if require_jetstream and not await jetstream_enabled(nc):
        await nc.close()
        raise ConnectError(
            f"The NATS server at {redact(url)} has JetStream disabled, and the kit needs it to store messages.\n"
            "Start the server with JetStream (nats-server -js, or `jetstream {}` in its config), "
            f"or unset {URL_ENV} to use the embedded server."
        )
    return nc


def is_workshop_server(nc: Client) -> bool:
    """Whether ``nc`` is connected to a workshop server (``buslib workshop serve``)."""
    return str(server_info(nc).get("server_name") or "").startswith(WORKSHOP_SERVER_PREFIX)


async def _refuse_instructor_accounts(nc: Client, url: str) -> None:
    account = await connection_account(nc)
    if account not in (INSTRUCTOR_ACCOUNT, SYSTEM_ACCOUNT):
        return
    await nc.close()
    whose = "the instructor's" if account == INSTRUCTOR_ACCOUNT else "the workshop's system user's"
    raise CredentialsError(
        f"The URL {redact(url)} holds {whose} credentials (account {account}), not a learner's. "
        "Lessons and exercises create and delete streams, and must not do it in that account.\n"
        f"What to do: set {URL_ENV} to your own line of the roster (nats://learnerNN:PASSWORD@host:port; "
        "ask your instructor for it), then restart the kernel."
    )


def _is_auth_error(err: BaseException | None) -> bool:
    if isinstance(err, nats.errors.AuthorizationError):  # what a reload that removed this user leaves
        return True
    return err is not None and any(text in str(err).lower() for text in _AUTH_ERRORS)


def _where(url: str) -> str:
    parsed = urlparse(url.split(",")[0] if "://" in url else f"nats://{url.split(',')[0]}")
    return f"{parsed.hostname}:{parsed.port or 4222}"


def _refused_message(url: str, info: dict[str, Any], *, later: bool = False) -> str:
    parsed = urlparse(url.split(",")[0])
    where = _where(url)
    workshop = str(info.get("server_name") or "").startswith(WORKSHOP_SERVER_PREFIX)
    if not parsed.username:
        if workshop:
            return (
                f"The workshop server at {where} needs a user name and password, and the URL {redact(url)} has none.\n"
                f"What to do: set {URL_ENV} to your whole line of the roster (nats://learnerNN:PASSWORD@{where}; "
                "ask your instructor for it), then restart the kernel."
            )
        return (
            f"The NATS server at {where} needs a user name and password, and the URL {redact(url)} has none.\n"
            f"What to do: put them in the URL: nats://USER:PASSWORD@{where}."
        )
    when = "no longer accepts" if later else "refused"
    if workshop:
        return (
            f"The workshop server at {where} {when} the user and password in your {URL_ENV} "
            f"(user {parsed.username!r}): they are wrong, or from an older roster (every new workshop "
            "gets new passwords).\n"
            f"What to do: ask your instructor for your line of the current roster, set {URL_ENV} to it, "
            "and restart the kernel."
        )
    return (
        f"The NATS server at {where} {when} the user and password in {redact(url)} "
        f"(user {parsed.username!r}, 'Authorization Violation').\nWhat to do: check the user name and password."
    )


def _connect_error(url: str, problems: list[BaseException], info: dict[str, Any]) -> ConnectError:
    if any(_is_auth_error(err) for err in problems):
        return CredentialsError(_refused_message(url, info))
    where = _where(url)
    if any(
        isinstance(err, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(err) for err in problems
    ):
        return ConnectError(
            f"The NATS server at {where} uses TLS with a certificate this Python does not trust "
            "(CERTIFICATE_VERIFY_FAILED).\n"
            "What to do: if you were given the workshop's CA file (ca.pem), set SSL_CERT_FILE=/path/to/ca.pem "
            "in the environment that starts Jupyter, and restart the kernel; otherwise ask your instructor."
        )
    if any("maximum account active connections" in str(err).lower() for err in problems):
        return ConnectError(
            f"The NATS server at {where} refused one more connection for your account: it already has as many "
            "open as the server allows ('maximum account active connections exceeded').\n"
            "What to do: shut down the kernels of notebooks you are not using (Kernel > Shut Down Kernel), "
            "then try again."
        )
    # The last thing that went wrong says most: the whole connect timing out, else what the
    # error callback saw last (NoServersError, the final exception, only says "gave up").
    last = problems[-1]
    cause = last if isinstance(last, asyncio.TimeoutError) or len(problems) == 1 else problems[-2]
    return ConnectError(
        f"Could not connect to a NATS server at {redact(url)} ({_describe(cause)}).\n"
        "What to try: is the server running? `buslib doctor` checks your setup; "
        "`buslib server` starts a local one; `docker compose up -d` starts one in Docker. "
        f"If {URL_ENV} is set, check it (unset it to use the embedded server)."
    )


async def close_connection(nc: Client) -> None:
    """Drain ``nc`` and close it for good, raising nothing: the server may be gone.

    While the client reconnects a drain fails: then it closes. A reconnect attempt that fails
    during nats-py's close() can set the status back to RECONNECTING, so it closes until it sticks.
    """
    if nc.is_closed:
        return
    try:
        await nc.drain()
    except Exception as err:  # reconnecting or lost: nothing left to drain
        _LOG.debug("drain on close: %s", err)
    for _ in range(3):
        if nc.is_closed:
            return
        with contextlib.suppress(Exception):
            await nc.close()


async def _close_quietly(nc: Client) -> None:
    # Bounded: nats-py can wait forever for a socket whose TLS handshake failed (nats.py #718).
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), timeout=2.0)


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
