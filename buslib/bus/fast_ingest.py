"""Fast-ingest batches (ADR-50, server 2.14+): publish_many's fast way, acknowledged every 500 messages.

The batch's state travels in each message's reply subject; the server answers with a flow
ack every ``flow`` messages (everything up to its ``seq`` is stored), an error for a refused
message, and a final PubAck for the batch. Not atomic: a crash mid-batch keeps what the last
flow ack covered, and the caller sends the rest again with the same ids.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import PubAck

from buslib._nats.fastpath import publish_frames, writes_frames
from buslib._nats.info import api_level
from buslib.bus.prepared import PreparedMessages, Result, Sender
from buslib.bus.streams import FAST_INGEST_API_LEVEL

__all__ = ["available", "send"]

CHUNK = 64  # messages written to the socket at once


async def available(sender: Sender, subjects: set[str]) -> bool:
    """Whether these subjects can go in fast-ingest batches: one stream that allows them, on a 2.14+ server.

    Decided from what the server says about itself, never by trying: 2.11 would store the
    batch control messages as ordinary messages.
    """
    if await api_level(sender.nc) < FAST_INGEST_API_LEVEL:
        return False
    streams = {await sender.streams.stream_for(subject) for subject in subjects}
    return len(streams) == 1 and await sender.streams.allows_batches(streams.pop())


async def send(
    sender: Sender,
    prepared: PreparedMessages,
    todo: list[int],
    results: list[Result],
    *,
    flow: int = 500,
    ahead: int = 8,
    on_stored: Callable[[int], None] | None = None,
) -> None:
    """One fast-ingest batch (ADR-50): the batch state travels in each reply subject.

    Reply subject ``<inbox>.<batch>.<flow>.fail.<n>.<op>.$FI`` (op 0 start, 1 append, 2
    commit). The server answers ``{"type":"ack","seq":S}`` every ``flow`` messages (1..S
    are stored), ``{"type":"err","seq":n,...}`` for a refused message, and a PubAck with
    ``batch``/``count`` at the end; on a gap ("fail" mode) the batch ends early. At most
    ``ahead`` flow acks are awaited at once (8: ~10% faster than 3 in benchmarks/bench_bus.py).
    ``on_stored(n)`` is called with how many more messages are known stored, as acks arrive.
    """
    nc = sender.nc
    inbox = nc.new_inbox()
    batch = uuid.uuid4().hex
    total = len(todo)
    acked = 0
    reported = 0  # how many stored messages on_stored has been told about
    final: PubAck | None = None
    errors: dict[int, Exception] = {}
    progress = asyncio.Event()
    finished = asyncio.Event()
    last_reply = time.monotonic()

    async def on_reply(msg: Msg) -> None:
        nonlocal acked, final, last_reply, reported
        last_reply = time.monotonic()
        try:
            resp = json.loads(msg.data)
        except ValueError:
            return
        kind = resp.get("type")
        if kind == "ack":
            acked = max(acked, int(resp.get("seq", 0)))
        elif kind == "err":
            error = resp.get("error", {})
            errors[int(resp["seq"])] = nats.js.errors.APIError(
                code=error.get("code"), err_code=error.get("err_code"), description=error.get("description")
            )
        elif kind == "gap":  # a message was lost on the way: the final ack follows ("fail" mode)
            pass
        elif "stream" in resp and "error" not in resp and final is None:
            final = PubAck(
                stream=resp["stream"],
                seq=resp["seq"],
                domain=resp.get("domain"),
                batch_id=resp.get("batch"),
                batch_size=resp.get("count"),
            )
            finished.set()
        elif "error" in resp and final is None:  # the batch itself was refused or is gone
            finished.set()
        if on_stored is not None:
            known = (final.batch_size or 0) if final is not None else acked
            if known > reported:
                on_stored(known - reported)
                reported = known
        progress.set()

    async def stalled(event: asyncio.Event) -> bool:
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), sender.publish_timeout)
        except asyncio.TimeoutError:
            return time.monotonic() - last_reply > sender.publish_timeout
        return False

    reply_prefix = f"{inbox}.{batch}.{flow}.fail.".encode()
    sub = await nc.subscribe(inbox + ".>", cb=on_reply)
    cut_off: Exception | None = None  # why sending stopped early: the connection went away
    try:
        n = 0  # messages sent
        while n < total and not finished.is_set():
            if not nc.is_connected and not await sender.reconnected():
                cut_off = nats.errors.ConnectionClosedError() if nc.is_closed else None
                break  # the batch died with the connection: the caller retries the rest
            room = flow * ahead - (n - acked)  # flow control: at most `ahead` flow acks outstanding
            if room <= 0:
                if await stalled(progress):
                    break
                continue
            chunk = []
            limit = nc.max_payload if writes_frames(nc) else 0  # 0: everything through nats-py
            for seq in range(n + 1, n + 1 + min(room, CHUNK, total - n)):  # the batch counts from 1
                op = 0 if seq == 1 else 2 if seq == total else 1
                reply = b"%s%d.%d.$FI" % (reply_prefix, seq, op)
                chunk.append(prepared.frame(todo[seq - 1], reply, limit) or prepared.message(todo[seq - 1], reply))
            try:
                await publish_frames(nc, chunk)
            except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as err:
                cut_off = err
                break
            n += len(chunk)
            await asyncio.sleep(0)  # let nats-py's flusher write it now: the server starts on it
        while not finished.is_set() and nc.is_connected:
            if await stalled(finished):
                break
    finally:
        try:
            await sub.unsubscribe()
        except Exception:
            pass
    # What is known stored: the final ack's `count` (in "fail" mode a gap or a refused
    # message ends the batch there); without a final ack, what the flow acks covered.
    stored = (final.batch_size or 0) if final is not None else acked
    ack = final or PubAck(stream=await sender.streams.stream_for(prepared.subject(todo[0])), seq=0, batch_id=batch)
    for n, i in enumerate(todo, 1):
        if n in errors:
            results[i] = errors[n]
        elif n <= stored:
            results[i] = ack
        elif cut_off is not None:
            results[i] = cut_off  # retried unless the connection is closed for good
        # else: left None, so the caller retries it (same Nats-Msg-Id: stored once)
