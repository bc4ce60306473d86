"""What the connected server is and can do, read through nats-py's public API.

>>> await api_level(nc)            # doctest: +SKIP
5
>>> server_version(nc)             # doctest: +SKIP
'2.15.1'
>>> await connection_account(nc)  # doctest: +SKIP
'L07'

The JetStream API level says which features a server has (2.11 -> 1, 2.12 -> 3,
2.14 -> 4, 2.15 -> 5); the bus decides from it, never by trying, because an older server
may accept a setting it does not understand and silently drop it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client

from buslib._nats.protocol import API_PREFIX, ErrorCode

__all__ = ["api_level", "connection_account", "jetstream_enabled", "server_info", "server_name", "server_version"]

_LEVELS: dict[tuple[int, str], int] = {}  # (id of client, connected URL) -> API level


def server_info(nc: Client) -> dict[str, Any]:
    """The INFO the server sent (nats-py keeps it even when authentication then failed)."""
    info = getattr(nc, "_server_info", None)
    return dict(info) if isinstance(info, dict) else {}


def server_name(nc: Client) -> str:
    """The server's configured ``server_name`` (a generated id when the config sets none)."""
    return str(server_info(nc).get("server_name") or "")


async def connection_account(nc: Client, *, timeout: float = 2.0) -> str | None:
    """The account this connection is bound to, as the server says (``$SYS.REQ.USER.INFO``), or None.

    Any connection may ask; the answer names only its own user and account.
    """
    try:
        reply = await nc.request("$SYS.REQ.USER.INFO", b"", timeout=timeout)
        data = json.loads(reply.data).get("data") or {}
    except (nats.errors.Error, asyncio.TimeoutError, ValueError, AttributeError):
        return None
    account = data.get("account") if isinstance(data, dict) else None  # 2.11 has no account_name
    return str(account) if account else None


def server_version(nc: Client) -> str:
    """The connected server's version as ``"2.15.1"``."""
    v = nc.connected_server_version
    return f"{v.major}.{v.minor}.{v.patch}"


async def api_level(nc: Client, *, timeout: float = 2.0) -> int:
    """The JetStream API level of the connected server (0 before 2.11), asked once per server.

    Read from the account-info reply (``$JS.API.INFO``), which every client can request.
    """
    key = (id(nc), str(nc.connected_url))
    level = _LEVELS.get(key)
    if level is None:
        reply = await nc.request(f"{API_PREFIX}.INFO", b"", timeout=timeout)
        try:
            level = int(json.loads(reply.data).get("api", {}).get("level", 0) or 0)
        except (ValueError, AttributeError, TypeError):
            level = 0
        if len(_LEVELS) > 64:  # bounded: one entry per client and server
            _LEVELS.clear()
        _LEVELS[key] = level
    return level


async def jetstream_enabled(nc: Client, *, timeout: float = 2.0) -> bool:
    """Whether JetStream is on for this connection's account (off on the server, or for the account).

    A cluster that lost its majority has JetStream on but cannot answer now: its servers take
    the request and time out, or say "temporarily unavailable" (10008). That counts as on.
    """
    try:
        await nc.jetstream(timeout=timeout).account_info()
    except nats.errors.TimeoutError:
        return True  # someone took the request: JetStream is there, without a meta leader right now
    except nats.js.errors.ServiceUnavailableError as err:  # no responders: no JetStream at all
        return err.err_code == ErrorCode.JETSTREAM_UNAVAILABLE
    except nats.errors.NoRespondersError:
        return False
    except nats.js.errors.APIError as err:
        return err.code != 503
    return True
