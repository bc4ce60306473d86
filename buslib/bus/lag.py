"""How far behind a consumer group is, and a watcher that raises the alarm when it stays behind.

>>> lag = await bus.group_lag(OrderPlaced, group="billing")            # doctest: +SKIP
>>> lag.behind, lag.num_pending, lag.num_ack_pending, lag.num_redelivered  # doctest: +SKIP
(18, 15, 3, 1)
>>> watcher = LagWatcher(bus, [(OrderPlaced, "billing")], threshold=100, on_alert=page_someone)  # doctest: +SKIP
>>> await watcher.poll_once()                                           # doctest: +SKIP

A group's **lag** is what it has not finished: ``num_pending`` (stored, matching its
filter, not yet delivered) plus ``num_ack_pending`` (delivered, not yet acknowledged:
being handled, waiting for a retry, or held by a crashed worker until ``ack_wait``). One
``consumer_info`` request answers both, per durable; an ordered group has one durable per
partition and its lag is their sum. ``num_redelivered`` counts unacknowledged messages
delivered more than once: failures in progress.

Lag going down is not always progress: a stream limit (``max_age``, ``max_msgs``,
``max_bytes``) removes messages whether or not a group has read them, and they simply
vanish from its ``num_pending``. :attr:`GroupLag.overtaken` shows it: stream messages
older than the stream's first sequence that the group never acknowledged.

The HTTP monitoring endpoint ``/jsz?consumers=true`` has the same numbers for every
consumer of every stream in one call (lesson 07 compares the two).

The counts trail by a moment: the server acknowledges a publish before it tells the
stream's consumers about it, and it applies acks in the background too (nats-server's
``signalConsumersLoop`` and ``processInboundAcks``). A read right after a publish or an
ack may not count it yet; to assert on a count, wait until it arrives (``wait_until``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import nats.js.errors
from nats.js import JetStreamContext

__all__ = ["AlertHook", "GroupLag", "LagAlert", "LagWatcher", "consumers_lag"]

log = logging.getLogger("buslib")


@dataclass(frozen=True)
class GroupLag:
    """One group's lag on one stream (summed over its durables: one, or one per partition).

    Attributes:
        stream: the stream the group reads.
        consumers: the durables counted (a plain group has one; an ordered group one per partition).
        num_pending: stored messages matching the group's filter, not yet delivered.
        num_ack_pending: delivered, not yet acknowledged.
        num_redelivered: unacknowledged messages delivered more than once.
        num_waiting: pull requests waiting at the server (idle members).
        ack_floor: the stream sequence below which everything is acknowledged (the lowest of
            the group's durables).
        first_seq: the stream's oldest stored sequence when this was read.
    """

    stream: str
    consumers: tuple[str, ...]
    num_pending: int
    num_ack_pending: int
    num_redelivered: int
    num_waiting: int
    ack_floor: int
    first_seq: int

    @property
    def behind(self) -> int:
        """The lag: messages not yet finished (``num_pending + num_ack_pending``)."""
        return self.num_pending + self.num_ack_pending

    @property
    def overtaken(self) -> int:
        """Stream sequences the stream removed (limits) before the group acknowledged them.

        Exact for a group that reads every subject of its stream; for a filtered group an
        upper bound (some of those sequences were other subjects').
        """
        return max(0, self.first_seq - 1 - self.ack_floor)


async def consumers_lag(js: JetStreamContext, stream: str, consumers: Sequence[str]) -> GroupLag:
    """The summed lag of ``consumers`` (durable names) of ``stream``; missing ones are skipped.

    Raises:
        LookupError: none of the consumers exists.
    """
    infos = []
    for name in consumers:
        try:
            infos.append(await js.consumer_info(stream, name))
        except nats.js.errors.NotFoundError:
            continue
    if not infos:
        raise LookupError(f"Stream {stream!r} has none of the consumers {list(consumers)}.")
    first_seq = (await js.stream_info(stream)).state.first_seq
    return GroupLag(
        stream=stream,
        consumers=tuple(i.name for i in infos),
        num_pending=sum(i.num_pending or 0 for i in infos),
        num_ack_pending=sum(i.num_ack_pending or 0 for i in infos),
        num_redelivered=sum(i.num_redelivered or 0 for i in infos),
        num_waiting=sum(i.num_waiting or 0 for i in infos),
        ack_floor=min((i.ack_floor.stream_seq or 0) if i.ack_floor else 0 for i in infos),
        first_seq=first_seq,
    )


@dataclass(frozen=True)
class LagAlert:
    """What a :class:`LagWatcher` tells its hook.

    Attributes:
        state: ``"lagging"`` (behind more than the threshold, and not shrinking, for
            ``samples`` polls in a row) or ``"recovered"`` (back at or under the threshold).
        group: the group's name as given to the watcher.
        lag: the lag that triggered it.
        history: the group's last ``behind`` values, oldest first.
    """

    state: Literal["lagging", "recovered"]
    group: str
    lag: GroupLag
    history: list[int]


class _LagSource(Protocol):
    async def group_lag(self, target: Any, *, group: str) -> GroupLag: ...


AlertHook = Callable[[LagAlert], "Awaitable[None] | None"]


class LagWatcher:
    """Polls groups' lag and calls ``on_alert`` once when a group falls behind, once when it recovers.

    A group is *lagging* when it is more than ``threshold`` messages behind in each of the
    last ``samples`` polls and not shrinking over them (each value at least the one before):
    a stuck or too-slow group, not a burst it is already working off. It has *recovered*
    when it is back at or under ``threshold``. One alert per episode, not one per poll.

    Args:
        bus: anything with ``await group_lag(target, group=...)`` (an ``EventBus``).
        groups: ``(target, group)`` pairs to watch, e.g. ``[(OrderPlaced, "billing")]``.
        threshold: messages behind that count as too many.
        on_alert: ``def hook(alert: LagAlert)`` or an async one; its errors are logged, not raised.
        interval: seconds between polls of :meth:`run`.
        samples: polls in a row a group must be behind before it counts as lagging (>= 2).

    Attributes:
        history: group name -> its last ``samples`` values of ``behind``.
        alerts: every alert so far, oldest first.
    """

    def __init__(
        self,
        bus: _LagSource,
        groups: Iterable[tuple[Any, str]],
        *,
        threshold: int,
        on_alert: AlertHook | None = None,
        interval: float = 1.0,
        samples: int = 3,
    ) -> None:
        if samples < 2:
            raise ValueError(f"samples must be at least 2 (a trend needs two polls), got {samples}.")
        if threshold < 0 or interval <= 0:
            raise ValueError(f"threshold must be >= 0 and interval > 0 seconds, got {threshold} and {interval}.")
        self.bus = bus
        self.groups = list(groups)
        self.threshold = threshold
        self.on_alert = on_alert
        self.interval = interval
        self.samples = samples
        self.history: dict[str, deque[int]] = {group: deque(maxlen=samples) for _, group in self.groups}
        self.alerts: list[LagAlert] = []
        self.latest: dict[str, GroupLag] = {}
        self._lagging: set[str] = set()

    @property
    def lagging(self) -> set[str]:
        """The groups currently in a "lagging" episode."""
        return set(self._lagging)

    async def poll_once(self) -> dict[str, GroupLag]:
        """Read every group's lag once, update the history, and alert on a change.

        Returns:
            group -> its lag (groups whose durables do not exist yet are left out).
        """
        found: dict[str, GroupLag] = {}
        for target, group in self.groups:
            try:
                lag = await self.bus.group_lag(target, group=group)
            except LookupError:
                continue  # the group has not subscribed yet
            found[group] = self.latest[group] = lag
            history = self.history[group]
            history.append(lag.behind)
            values = list(history)
            steady = len(values) == self.samples and all(b >= a for a, b in zip(values, values[1:], strict=False))
            if group not in self._lagging and steady and all(v > self.threshold for v in values):
                self._lagging.add(group)
                await self._alert(LagAlert("lagging", group, lag, values))
            elif group in self._lagging and lag.behind <= self.threshold:
                self._lagging.discard(group)
                await self._alert(LagAlert("recovered", group, lag, values))
        return found

    async def run(self, *, duration: float | None = None) -> None:
        """Poll every ``interval`` seconds, for ``duration`` seconds (``None``: until cancelled).

        A failing poll (server restarting) is logged and retried at the next interval.
        """
        end = None if duration is None else time.monotonic() + duration
        while end is None or time.monotonic() < end:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("lag watcher: polling failed (%s: %s); trying again", type(err).__name__, err)
            await asyncio.sleep(self.interval)

    async def _alert(self, alert: LagAlert) -> None:
        self.alerts.append(alert)
        if self.on_alert is None:
            return
        try:
            result = self.on_alert(alert)
            if inspect.isawaitable(result):
                await result
        except Exception:  # an alert hook must not stop the watching
            log.exception("lag watcher: the alert hook failed for %s", alert.group)
