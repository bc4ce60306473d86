"""The relay: publishes an outbox's unsent rows in order, then marks them sent.

>>> relay = Relay(outbox)                             # doctest: +SKIP
>>> await relay.run_once()                            # doctest: +SKIP
RelayResult(published=3, duplicates=0, marked=3)
>>> task = asyncio.create_task(relay.run())            # doctest: +SKIP   (until cancelled)

A round publishes up to ``batch`` rows, oldest first, each acknowledged by the stream
before the next (so a key's events keep their order), then marks them all sent in one
transaction. If the relay dies in between, the next round publishes those rows again:
each carries its fixed ``Nats-Msg-Id``, so within the stream's duplicate window the
server answers "duplicate" and stores nothing new (``RelayResult.duplicates``).

``on_published`` is called after each row is stored and before anything is marked: an
extension point for metrics, and where lesson 07 decides the relay "crashes" (the hook
raises at the third row).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.js.api import PubAck

from buslib.errors import PublishError
from buslib.outbox.store import Outbox, OutboxRow

__all__ = ["Relay", "RelayResult"]

log = logging.getLogger("buslib")

PublishedHook = Callable[[OutboxRow, PubAck], "Awaitable[None] | None"]


@dataclass
class RelayResult:
    """What relaying did.

    Attributes:
        published: rows the stream stored now.
        duplicates: rows the stream had already (a relay died after publishing them, before
            marking them): acknowledged as duplicates, stored once.
        marked: rows marked sent.
    """

    published: int = 0
    duplicates: int = 0
    marked: int = 0

    def __add__(self, other: RelayResult) -> RelayResult:
        return RelayResult(
            self.published + other.published, self.duplicates + other.duplicates, self.marked + other.marked
        )


class Relay:
    """Publishes an :class:`Outbox`'s unsent rows through its bus.

    Args:
        outbox: the outbox.
        batch: rows per round (published, then marked together).
        on_published: ``hook(row, ack)`` (or an async one) after each row is stored, before
            the round marks anything; an exception there ends the round like a crash.
    """

    def __init__(self, outbox: Outbox, *, batch: int = 100, on_published: PublishedHook | None = None) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1 row, got {batch}.")
        self.outbox = outbox
        self.batch = batch
        self.on_published = on_published
        self.total = RelayResult()

    async def run_once(self) -> RelayResult:
        """Publish up to ``batch`` unsent rows in order, then mark them sent.

        Raises:
            PublishError: a row could not be stored (the rows before it are marked sent;
                it and the rest stay unsent and go first next time).
            Whatever ``on_published`` raises (nothing is marked then).
        """
        result = RelayResult()
        sent: list[tuple[int, int]] = []
        try:
            for row in self.outbox.unsent(self.batch):
                ack = await self.outbox.bus.publisher.publish_one(row.subject, row.payload, dict(row.headers))
                if ack.duplicate:
                    result.duplicates += 1
                else:
                    result.published += 1
                sent.append((row.id, ack.seq))
                if self.on_published is not None:
                    outcome = self.on_published(row, ack)
                    if inspect.isawaitable(outcome):
                        await outcome
        except PublishError:
            self.outbox.mark_sent(sent)  # what was stored stays stored: mark it
            raise
        self.outbox.mark_sent(sent)
        result.marked = len(sent)
        self.total += result
        return result

    async def drain(self, *, max_rounds: int = 1000) -> RelayResult:
        """Relay until no row is unsent (at most ``max_rounds`` rounds)."""
        total = RelayResult()
        for _ in range(max_rounds):
            result = await self.run_once()
            total += result
            if result.marked < self.batch:
                break
        return total

    async def run(self, *, interval: float = 1.0) -> None:
        """Relay every ``interval`` seconds until cancelled; a failed round is logged and retried."""
        while True:
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("outbox relay: %s: %s; retrying in %.1f s", type(err).__name__, err, interval)
            await asyncio.sleep(interval)
