"""Reconcile: turn captured MAX_DELIVERIES advisories into dead letters (the safety net).

>>> result = await dlq.reconcile()                     # doctest: +SKIP
>>> [entry.stream_seq for entry in result.written]     # doctest: +SKIP
[42]

A worker that crashes or hangs on a message's last allowed delivery never writes its dead
letter, and the server never redelivers it: only the MAX_DELIVERIES advisory says it
happened (:mod:`buslib.dlq.advisories`). A pass reads the captured advisories with a durable
consumer and, for each, asks the queue whether it already has an entry and writes one if
not, with the original copied from its stream. Each advisory is acknowledged only after its
entry is stored, so a pass that dies is repeated, never lost.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from nats.js.errors import NotFoundError

from buslib.dlq.advisories import Advisory
from buslib.dlq.entry import DeadLetter

__all__ = ["DeadLetterWriter", "ReconcileResult", "reconcile", "run_reconciler"]

log = logging.getLogger("buslib.dlq")


class DeadLetterWriter(Protocol):
    """What a reconcile pass needs of a dead-letter queue (a :class:`DeadLetterQueue` is one)."""

    js: Any
    advisory_stream: str
    advisory_consumer: str

    async def has_entry_for(self, stream: str, consumer: str, stream_seq: int) -> bool: ...

    async def write_from_advisory(self, advisory: Advisory) -> DeadLetter: ...


@dataclass
class ReconcileResult:
    """What one ``reconcile()`` pass did.

    Attributes:
        written: new dead letters made from MAX_DELIVERIES advisories.
        already_dead_lettered: MAX_DELIVERIES advisories whose message already had an entry.
        terminated_matched: MSG_TERMINATED advisories matching an entry (the normal bus path).
        terminated_unmatched: MSG_TERMINATED advisories without an entry: terminated by a
            handler itself, or already replayed and removed (listed, not dead-lettered).
        skipped: unreadable advisories, and ones older than their stream (they belong to a
            deleted stream of the same name, whose sequence numbers meant other messages).
    """

    written: list[DeadLetter] = field(default_factory=list)
    already_dead_lettered: int = 0
    terminated_matched: int = 0
    terminated_unmatched: list[Advisory] = field(default_factory=list)
    skipped: int = 0


async def reconcile(dlq: DeadLetterWriter, *, batch: int = 100) -> ReconcileResult:
    """Turn captured MAX_DELIVERIES advisories into dead letters, one pass (see the module docstring).

    Raises:
        Whatever stopped an entry from being written (e.g. the dead-letter stream is gone);
        that advisory and the rest of its batch are nak'ed, so the next pass retries them.
    """
    result = ReconcileResult()
    js = dlq.js
    sub = await js.pull_subscribe_bind(durable=dlq.advisory_consumer, stream=dlq.advisory_stream)
    created: dict[str, datetime | None] = {}
    try:
        while True:
            info = await js.consumer_info(dlq.advisory_stream, dlq.advisory_consumer)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return result
            try:  # a short wait when only redeliveries (nak'ed by a failed pass) may come
                msgs = await sub.fetch(batch, timeout=1.0 if info.num_pending else 0.25)
            except asyncio.TimeoutError:  # nats-py raises its own subclass or the plain one
                return result  # nothing due now (or taken by a concurrent pass)
            for i, msg in enumerate(msgs):
                try:
                    await _handle(dlq, Advisory.parse(msg.data), result, created)
                except Exception:
                    for unhandled in msgs[i:]:
                        await unhandled.nak(delay=1.0)
                    raise
                await msg.ack()  # only after the entry is stored: a crash re-reads the advisory
    finally:
        await sub.unsubscribe()


async def run_reconciler(dlq: DeadLetterWriter, *, interval: float = 5.0, errors: list[BaseException]) -> None:
    """Reconcile every ``interval`` seconds until cancelled; keep each pass's error in ``errors`` and go on."""
    while True:
        try:
            await reconcile(dlq)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            errors.append(err)
            log.warning("dead-letter reconcile failed, will retry in %.1f s: %r", interval, err)
        await asyncio.sleep(interval)


async def _handle(
    dlq: DeadLetterWriter, advisory: Advisory | None, result: ReconcileResult, created: dict[str, datetime | None]
) -> None:
    if advisory is None or not await _current(dlq.js, advisory, created):
        result.skipped += 1
    elif advisory.kind == "terminated":
        if await dlq.has_entry_for(advisory.stream, advisory.consumer, advisory.stream_seq):
            result.terminated_matched += 1
        else:
            result.terminated_unmatched.append(advisory)
    elif await dlq.has_entry_for(advisory.stream, advisory.consumer, advisory.stream_seq):
        result.already_dead_lettered += 1
    else:
        result.written.append(await dlq.write_from_advisory(advisory))


async def _current(js: Any, advisory: Advisory, created: dict[str, datetime | None]) -> bool:
    # An advisory older than its stream belongs to a deleted stream of the same name (a
    # re-run notebook): its sequence numbers now point at other messages.
    if advisory.stream not in created:
        try:
            born = (await js.stream_info(advisory.stream)).created
            created[advisory.stream] = born.replace(tzinfo=born.tzinfo or timezone.utc) if born else None
        except NotFoundError:
            created[advisory.stream] = None
    born = created[advisory.stream]
    if born is None:
        return advisory.kind == "terminated"  # stream gone: nothing left to copy
    return advisory.timestamp is None or advisory.timestamp >= born
