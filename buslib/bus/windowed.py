"""Windowed publishing: publish_many's way on any server, with an exact PubAck per event.

Each message is a core publish with its own reply subject in one wildcard inbox, and up to
``window`` of them await their acknowledgement at once (nats-py's ``publish_async`` keeps
a future and a subscription entry per message, which costs more than the publish itself).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import PubAck

from buslib._nats.fastpath import publish_frames, writes_frames
from buslib._nats.protocol import parse_pub_ack
from buslib.bus.fast_ingest import CHUNK
from buslib.bus.prepared import PreparedMessages, Result, Sender

__all__ = ["send"]


async def send(
    sender: Sender,
    prepared: PreparedMessages,
    todo: list[int],
    results: list[Result],
    window: int,
    *,
    on_stored: Callable[[int], None] | None = None,
) -> None:
    """Core publishes with a reply subject each into one wildcard inbox; ``window`` outstanding.

    ``on_stored(1)`` is called for each message the server acknowledges as stored.
    """
    nc = sender.nc
    prefix = nc.new_inbox() + "."
    reply_prefix = prefix.encode()
    cut = len(prefix)
    outstanding = 0
    room = asyncio.Event()
    settled = asyncio.Event()
    last_reply = time.monotonic()

    async def on_reply(msg: Msg) -> None:
        nonlocal outstanding, last_reply
        last_reply = time.monotonic()
        i = int(msg.subject[cut:])
        if results[i] is None:
            try:
                results[i] = parse_pub_ack(msg)
            except Exception as err:  # never leave a reply unaccounted for
                results[i] = ValueError(f"unreadable acknowledgement ({type(err).__name__}: {err})")
            if on_stored is not None and isinstance(results[i], PubAck):
                on_stored(1)
            outstanding -= 1
            if outstanding < window:
                room.set()
            if outstanding == 0:
                settled.set()

    sub = await nc.subscribe(prefix + "*", cb=on_reply)
    try:
        sent = 0
        while sent < len(todo):
            if not nc.is_connected and not await sender.reconnected():
                return  # the caller retries what is unanswered, with backoff
            if outstanding >= window:
                room.clear()
                try:
                    await asyncio.wait_for(room.wait(), sender.publish_timeout)
                except asyncio.TimeoutError:
                    if time.monotonic() - last_reply > sender.publish_timeout:
                        return  # stalled: the caller retries what is unanswered
                continue
            chunk = todo[sent : sent + min(CHUNK, window - outstanding)]
            sent += len(chunk)
            outstanding += len(chunk)
            settled.clear()
            limit = nc.max_payload if writes_frames(nc) else 0  # 0: everything through nats-py
            messages = []
            for i in chunk:
                reply = b"%s%d" % (reply_prefix, i)
                messages.append(prepared.frame(i, reply, limit) or prepared.message(i, reply))
            try:
                await publish_frames(nc, messages)
            except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as err:
                for i in chunk:  # not sent (or not all): the caller retries them, same ids
                    if results[i] is None:
                        results[i] = err
                        outstanding -= 1
            await asyncio.sleep(0)  # let nats-py's flusher write it now: the server starts on it
        while outstanding > 0:
            try:
                await asyncio.wait_for(settled.wait(), sender.publish_timeout)
            except asyncio.TimeoutError:
                if time.monotonic() - last_reply > sender.publish_timeout:
                    return
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # connection closed: nothing to clean up
            pass
