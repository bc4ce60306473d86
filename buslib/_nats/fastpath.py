"""Fast paths: nats-py's publish, ack and header parsing without its per-call overhead.

>>> from buslib._nats import fastpath
>>> fastpath.ENABLED            # False with BUSLIB_FAST_PATHS=0, or on a nats-py without the hooks
True

This is the one module that touches nats-py's private attributes (``Client._send_command``,
``_flush_pending``, ``_flush_queue``, ``_parse_header_lines``, ``Msg._ackd``). Each fast path
does what a public call does, measured cheaper, and has that public call beside it as the
fallback, taken when:

- ``BUSLIB_FAST_PATHS=0`` is set (``make test`` runs the bus tests that way too), or
- the probe below finds that this nats-py lacks one of the hooks (a newer release, or a
  successor client), or
- the connection is not plainly connected (reconnecting, draining): then nats-py's own
  buffering and errors apply.

``tests/test_bus_publish.py`` checks that both ways read and write the same bytes.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from buslib._nats.headers import STATUS_LINE, parse_header_lines
from buslib._nats.protocol import wire_size

__all__ = ["ENABLED", "ENV", "Outbound", "ack", "install_header_parser", "publish_frames", "writes_frames"]

ENV = "BUSLIB_FAST_PATHS"

# A message nats-py must encode itself: (subject, reply, data, header block, headers or None
# when the block says it all). A ready frame is plain bytes.
Outbound = tuple[str, str, bytes, bytes, Mapping[str, str] | None]


def _probe() -> bool:
    """Whether this nats-py has every hook the fast paths use, with the expected shape."""
    send = getattr(Client, "_send_command", None)
    flush = getattr(Client, "_flush_pending", None)
    return (
        inspect.iscoroutinefunction(send)
        and inspect.iscoroutinefunction(flush)
        and "_ackd" in getattr(Msg, "__dataclass_fields__", {})
    )


ENABLED: bool = os.environ.get(ENV, "1").strip() != "0" and _probe()


def writes_frames(nc: Client) -> bool:
    """Whether ready protocol frames may go straight to the connection (fast paths on, plainly connected)."""
    return ENABLED and nc.is_connected and not nc.is_draining and getattr(nc, "_flush_queue", None) is not None


async def publish_frames(nc: Client, chunk: Sequence[bytes | Outbound]) -> None:
    """Publish a chunk of messages in order: ready frames in one write, the rest through nats-py.

    A frame (bytes) may only be in ``chunk`` while ``writes_frames(nc)``; an ``Outbound``
    goes through ``nc.publish``, so its checks, its buffering during reconnects and its
    errors apply. nats-py's ``publish`` renders ten headers in ~40 us and writes each
    message on its own; a chunk of ready frames costs a fraction of that.
    """
    frames: list[bytes] = []
    for item in chunk:
        if isinstance(item, bytes):
            frames.append(item)
            continue
        if frames:  # keep the order: what came before goes first
            await nc._send_command(b"".join(frames))
            frames.clear()
        await _publish(nc, *item)
    if frames:
        await nc._send_command(b"".join(frames))
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()


async def _publish(
    nc: Client, subject: str, reply: str, data: bytes, block: bytes, headers: Mapping[str, str] | None
) -> None:
    size = len(block) + len(data) if block else wire_size(data, headers)
    if size > nc.max_payload:  # nats-py checks the payload alone; the server would close
        raise nats.errors.MaxPayloadError  # the connection for good, so refuse it here, as nats-py would
    if headers is None:
        headers = parse_header_lines(block[len(STATUS_LINE) :])
    await nc.publish(subject, data, reply=reply, headers=dict(headers))


async def ack(msg: Msg, nc: Client) -> None:
    """``msg.ack()`` without nats-py's per-call subject validation (the hot path of a consumer).

    Does nothing when the message was already settled (a handler may ack or nak itself).
    """
    if msg.is_acked:
        return
    if not ENABLED or not msg.reply or not nc.is_connected:
        await msg.ack()
        return
    await nc._send_command(b"PUB %s 0\r\n\r\n" % msg.reply.encode())
    msg._ackd = True
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def install_header_parser(nc: Client) -> None:
    """Let ``nc`` parse incoming headers with :func:`buslib._nats.headers.parse_header_lines`.

    Only for connections the bus made itself, and only where nats-py has the same hook
    (2.15+): the results are the same, the cost a fifth.
    """
    if ENABLED and callable(getattr(type(nc), "_parse_header_lines", None)):
        nc._parse_header_lines = parse_header_lines  # type: ignore[method-assign]
