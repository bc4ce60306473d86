"""An ordered consumer group member: one lane per partition, each keeping its keys in order.

>>> await bus.ensure_stream(OrderPlaced, partitions=4)                                   # doctest: +SKIP
>>> sub = await bus.subscribe(OrderPlaced, group="billing", handler=charge, ordered=True)  # doctest: +SKIP
>>> sorted(sub.lanes), sub.durables[0]                                                    # doctest: +SKIP
([0, 1, 2, 3], 'billing__orders_placed_v1__p0')

``subscribe(..., ordered=True)`` returns an :class:`OrderedSubscription`. Each *lane* is an
ordinary :class:`~buslib.bus.subscription.Subscription` on a durable of its own with
``max_ack_pending=1``: the server hands out a lane's next message only after the previous
one is acknowledged, so a retry (``nak`` with a delay) holds back the messages behind it
and a key's events are handled in the order they were stored, by whichever instance of the
group pulls them. On a partitioned stream there is one lane per partition
(``billing__orders_placed_v1__p2``, filter ``orders.placed.v1.2.*``) and the lanes run in
parallel; on a stream without partitions the whole group is one lane.

Scaling out: every instance may run every lane (the default): they then take turns per
message, order still holds, and a crashed instance's lane continues elsewhere after
``ack_wait``. Or give each instance some lanes (``partitions=[0, 1]``); a lane nobody
runs does not move. What order costs: a lane handles one message per round trip (plus
the handler), and a message that keeps failing blocks its lane until it is dead-lettered,
which leaves a gap in that key's history (lesson 07).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import fields

from buslib.bus.settlement import SubscriptionStats
from buslib.bus.subscription import Subscription

__all__ = ["OrderedSubscription"]


class OrderedSubscription:
    """This instance's part of an ordered group: one :class:`Subscription` per lane it runs.

    Create with ``await bus.subscribe(..., ordered=True)``.

    Args:
        lanes: partition -> its lane's subscription (partition 0 alone when the stream is
            not partitioned).
        subject: the subscribed subject (the contract's, without key or partition).
        partitions: the stream's partition count (None: not partitioned).
        on_stopped: called once ``stop()`` has finished.

    Attributes:
        lanes: partition -> the lane's :class:`Subscription` (its ``.durable``, ``.stats``).
    """

    def __init__(
        self,
        lanes: dict[int, Subscription],
        *,
        subject: str,
        partitions: int | None,
        on_stopped: Callable[[OrderedSubscription], None] | None = None,
    ) -> None:
        if not lanes:
            raise ValueError("An ordered subscription needs at least one lane.")
        self.lanes = dict(sorted(lanes.items()))
        self.partition_count = partitions
        self._on_stopped = on_stopped
        self._stopped = False
        first = next(iter(self.lanes.values()))
        self.group, self.stream, self.subject = first.group, first.stream, subject

    @property
    def partitions(self) -> list[int]:
        """The partitions this instance runs (``[0]`` on a stream without partitions)."""
        return list(self.lanes)

    @property
    def durables(self) -> list[str]:
        """The durable consumers of the lanes this instance runs."""
        return [lane.durable for lane in self.lanes.values()]

    @property
    def stats(self) -> SubscriptionStats:
        """This instance's counters, summed over its lanes (each lane has its own ``.stats``)."""
        total = SubscriptionStats()
        for lane in self.lanes.values():
            for f in fields(SubscriptionStats):
                setattr(total, f.name, getattr(total, f.name) + getattr(lane.stats, f.name))
        return total

    @property
    def running(self) -> bool:
        """Whether any lane is pulling messages."""
        return any(lane.running for lane in self.lanes.values())

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` has finished for every lane."""
        return self._stopped

    async def stop(self, *, timeout: float | None = 30.0) -> None:
        """Stop every lane (each lets its running handler finish); the durables stay.

        Args:
            timeout: seconds to wait for each lane's handler (see :meth:`Subscription.stop`).
        """
        try:
            await asyncio.gather(*(lane.stop(timeout=timeout) for lane in self.lanes.values()))
        finally:
            if not self._stopped:
                self._stopped = True
                if self._on_stopped is not None:
                    self._on_stopped(self)

    def __repr__(self) -> str:
        count = f"{self.partition_count} partitions" if self.partition_count else "not partitioned"
        return (
            f"<OrderedSubscription {self.stream} group={self.group!r} ({count}) lanes={self.partitions} {self.stats}>"
        )
