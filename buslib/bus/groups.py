"""How ``subscribe()`` turns its arguments into a consumer group: filters, durables, lanes.

>>> from buslib import Event
>>> class Parcel(Event, type="parcels.sent", key="parcel_id"):
...     parcel_id: str
>>> target_filters(Parcel, None)[:2]
('parcels.sent.v1', ['parcels.sent.v1.>'])
>>> spec = ConsumerSpec(group="billing", stream="PARCELS", subjects=["parcels.sent.v1.>"],
...                     name="billing__parcels_sent_v1")
>>> {p: s.durable for p, s in lane_specs(spec, "parcels.sent.v1", 2, None).items()}
{0: 'billing__parcels_sent_v1__p0', 1: 'billing__parcels_sent_v1__p1'}

The facade (:meth:`buslib.EventBus.subscribe`) checks the arguments here, finds the stream,
then builds one :class:`~buslib.bus.subscription.Subscription` (a plain group) or one per
lane (an ordered group, :mod:`buslib.bus.ordered`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable, MutableSet
from dataclasses import replace
from typing import Any

from nats.aio.client import Client

from buslib.bus.consumer import ConsumerSpec
from buslib.bus.partitions import lane_durable, lane_filter
from buslib.bus.settlement import Handler, Settlement
from buslib.bus.subscription import Subscription, fast_ack
from buslib.contracts.versions import filters_readable_by
from buslib.errors import BusError
from buslib.events import Event
from buslib.retry import DeadLetterSink
from buslib.subjects import check_subject

__all__ = ["check_options", "lane_specs", "member", "start_members", "target_filters"]


def check_options(
    handler: object, *, concurrency: int, ack_wait: float, handler_timeout: float | None, ordered: bool
) -> None:
    """Refuse arguments that cannot work, with what to do instead.

    Raises:
        TypeError: the handler is not an async function.
        ValueError: concurrency < 1 (or > 1 with ``ordered``), ack_wait < 0.5, handler_timeout <= 0.
    """
    if handler_timeout is not None and not handler_timeout > 0:
        raise ValueError(
            f"handler_timeout is in seconds and must be > 0 (or None for no limit), got {handler_timeout}."
        )
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}.")
    if ordered and concurrency != 1:
        raise ValueError(
            f"ordered=True handles one message of each lane at a time, so concurrency must be 1, got {concurrency}. "
            "For parallel work, give the stream more partitions: ensure_stream(..., partitions=N)."
        )
    if not _is_async_callable(handler):
        raise TypeError(
            f"handler must be an async function `async def handle(event, ctx): ...`, got {handler!r}. "
            "A plain `def` would block every other handler of this process while it runs."
        )
    if ack_wait < 0.5:
        raise ValueError(f"ack_wait is in seconds and must be at least 0.5, got {ack_wait}.")


def target_filters(
    target: type[Event] | str, event_type: type[Event] | None
) -> tuple[str, list[str], type[Event] | None]:
    """(subject, consumer filters, event type) for a subscribe target.

    A contract class reads its whole history (its own subject and, through upcasters, its
    older versions'); a keyed version's messages carry the key as one more token, so its
    filter ends in ``.>``. A subject string is the filter itself.
    """
    if isinstance(target, type) and issubclass(target, Event):
        return target.subject(), filters_readable_by(target), target
    if not isinstance(target, str):
        raise TypeError(f"Expected an Event subclass or a subject string, got {target!r}.")
    subject = check_subject(target, wildcards=True)
    return subject, [subject], event_type


def lane_specs(
    spec: ConsumerSpec, subject: str, partitions: int | None, chosen: Iterable[int] | None
) -> dict[int, ConsumerSpec]:
    """The lanes of an ordered group: one durable per partition (or one for the whole group).

    Args:
        spec: the group's plain consumer spec (its durable name is the lanes' stem).
        subject: the keyed subject the stream partitions (``orders.placed.v1``).
        partitions: the stream's partition count, None if not partitioned.
        chosen: the partitions this instance runs (None: all).

    Raises:
        ValueError: a chosen partition does not exist.
        BusError: partitions chosen on a stream without them, or a contract history on a
            partitioned stream (a stream partitions one subject).
    """
    if partitions is None:
        if chosen is not None:
            raise BusError(
                f"partitions={list(chosen)} was asked for, but stream {spec.stream!r} does not partition "
                f"{subject!r}. Create it with await bus.ensure_stream(..., partitions=N) first, or leave "
                "partitions out (the whole group is then one lane)."
            )
        return {0: replace(spec, max_ack_pending=1)}
    if len(spec.subjects) > 1:
        raise BusError(
            f"Stream {spec.stream!r} partitions {subject!r}, but this contract also reads {spec.subjects[:-1]} "
            "(older versions, through upcasters). A stream partitions one subject: subscribe to the older "
            "versions separately, or without ordered=True."
        )
    picked = sorted(set(range(partitions) if chosen is None else chosen))
    wrong = [p for p in picked if not (isinstance(p, int) and 0 <= p < partitions)]
    if wrong or not picked:
        raise ValueError(
            f"partitions={picked} does not fit stream {spec.stream!r}, which has {partitions} partitions "
            f"(0 to {partitions - 1}) of {subject!r}."
        )
    base = spec.durable
    return {
        p: replace(spec, subjects=[lane_filter(subject, p)], max_ack_pending=1, name=lane_durable(base, p))
        for p in picked
    }


def member(
    nc: Client,
    spec: ConsumerSpec,
    *,
    handler: Handler,
    dead_letters: DeadLetterSink | None,
    strict: bool,
    handler_timeout: float | None,
    concurrency: int,
    prefetch: int,
    pull_expires: float,
    on_stopped: Callable[[Subscription], None] | None,
) -> Subscription:
    """One member of a group on one durable: its settlement and its pull loop (not started yet)."""
    settlement = Settlement(
        group=spec.group,
        durable=spec.durable,
        handler=handler,
        event_type=spec.event_type,
        retry=spec.retry,
        dead_letters=dead_letters,
        strict=strict,
        handler_timeout=handler_timeout,
        ack_timers=spec.ack_timers(),
        ack=fast_ack(nc),
    )
    return Subscription(
        nc,
        spec,
        settlement,
        concurrency=concurrency,
        prefetch=prefetch,
        pull_expires=pull_expires,
        on_stopped=on_stopped,
    )


async def start_members(
    nc: Client,
    specs: dict[int, ConsumerSpec],
    *,
    update: bool,
    register: MutableSet[Subscription],
    **options: Any,
) -> dict[int, Subscription]:
    """Start one member per spec (a plain group: one; an ordered group: one per lane).

    Each started member is added to ``register`` (and removed from it when it stops). If
    one fails to start (drift, a refused consumer), those already started are stopped and
    the error is raised.

    Args:
        options: ``member()``'s keyword arguments, but ``on_stopped``.
    """
    members: dict[int, Subscription] = {}
    try:
        for key, spec in specs.items():
            members[key] = member(nc, spec, on_stopped=register.discard, **options)
            await members[key].start(update=update)
            register.add(members[key])
    except BaseException:
        await asyncio.gather(*(m.stop() for m in members.values() if m.running), return_exceptions=True)
        raise
    return members


def _is_async_callable(handler: Any) -> bool:
    call = type(handler).__dict__.get("__call__") if not inspect.isroutine(handler) else None
    return inspect.iscoroutinefunction(handler) or (call is not None and inspect.iscoroutinefunction(call))
