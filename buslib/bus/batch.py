"""``publish_many``: many events, thousands of acknowledgements in flight, each event stored once.

>>> acks = await bus.publish_many(OrderCreated(order_id=str(i)) for i in range(1000))   # doctest: +SKIP

The events are prepared once (:mod:`buslib.bus.prepared`), sent as fast-ingest batches where
the server and the stream allow them (:mod:`buslib.bus.fast_ingest`) or windowed
(:mod:`buslib.bus.windowed`), and what got no answer is sent again with the same ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import nats.errors
import nats.js.errors
from nats.js.api import PubAck

from buslib import tracing
from buslib.bus.attempts import retryable
from buslib.bus.fast_ingest import available as fast_ingest_available
from buslib.bus.fast_ingest import send as send_fast_ingest
from buslib.bus.prepared import PreparedMessages, Result, Sender, describe
from buslib.bus.windowed import send as send_windowed
from buslib.errors import PublishManyError
from buslib.events import Event

__all__ = ["publish_many"]


async def publish_many(
    sender: Sender,
    events: Iterable[Event],
    *,
    window: int = 4096,
    fast_ingest: bool = True,
    progress: Callable[[int], object] | None = None,
) -> list[PubAck]:
    """Publish many events with many acknowledgements in flight; each stored once.

    Two ways, both keeping ``Nats-Msg-Id`` (a retry or a repeat is stored once):

    - fast-ingest batches (ADR-50, the default where possible): when the server has API
      level 4+ (2.14+) and the stream ``allow_batched`` (``ensure_stream`` sets it there).
      The server acknowledges every 500 messages instead of each one, so each event's
      ``PubAck`` is its *batch's* ack: ``seq`` is the batch's last sequence,
      ``batch_id``/``batch_size`` are set, and ``duplicate`` is unknown (the server drops
      a repeated id without a word). Decided from what the server says about itself,
      never by trying: 2.11 would store the batch's control messages as ordinary ones.
    - windowed (any server, or ``fast_ingest=False``): each message is a core publish
      with its own reply subject into one wildcard inbox, ``window`` awaiting their ack
      at once. Every event gets its own exact ``PubAck`` (``seq``, ``duplicate``).

    Events are encoded as they are sent, so encoding overlaps with the server storing
    what came before; every item's type and version are checked before the first is sent.

    Outside a trace the whole call gets one new trace id (it is one operation).

    Args:
        events: the events, in order.
        window: how many publishes may await their acknowledgement at once (windowed).
        fast_ingest: use fast-ingest batches where available (see above); False for an
            exact ``PubAck`` per event.
        progress: called with how many messages the server has confirmed stored so far in
            this call, each time that number grows (every ack when windowed, every flow ack
            of a fast-ingest batch): a progress bar, or a test's fault at a point the code
            decides. It runs inside nats-py's message callback: keep it quick, and do not
            await anything from it.

    Returns:
        One ``PubAck`` per event, in input order (for the event's first subject).

    Unanswered messages are sent again (same ids) for up to ``publish_deadline`` seconds, long
    enough to ride out a cluster's leader election (:mod:`buslib.bus.attempts`).

    Raises:
        TypeError: an item is not an ``Event``.
        PublishManyError: some events were not stored: names the first one (index and id),
            what the tries got, and how many were stored (also as ``.index``, ``.event_id``, ``.stored``,
            and ``.acks``: the PubAck or None per event). Publishing them all again is safe.
    """
    events = list(events)
    span = tracing.current_trace() or tracing.new_trace()  # the batch is one operation: one trace
    prepared = PreparedMessages(sender, events, span)
    subjects = prepared.subjects()
    results: list[Result] = [None] * len(prepared)
    todo = list(range(len(prepared)))
    fast: bool | None = None if fast_ingest and len(prepared) > 1 else False  # None: not decided yet
    on_stored = None if progress is None else _counter(progress)
    attempts = sender.attempts()
    while await attempts.another():
        if attempts.made > 1:
            sender.retries += len(todo)
        try:
            # bounded: without a meta leader (a crashed node, most nodes down) a lookup waits 5 s
            fast = await asyncio.wait_for(_lookup(sender, subjects, fast), attempts.timeout())
        except (asyncio.TimeoutError, nats.errors.Error) as err:  # nats.js.errors.APIError is one too
            if not retryable(err):
                raise
            attempts.saw(err, connected=sender.nc.is_connected)
            continue
        for i in todo:  # a slot still holds the last try's error: empty it, or this try's answer is ignored
            results[i] = None
        if fast and len(todo) > 1:
            await send_fast_ingest(sender, prepared, todo, results, on_stored=on_stored)
            # A refused message ends a fast batch: the windowed way gets the rest an exact answer each.
            # So does silence: while a cluster elects the stream's leader, a fast batch gets no answer
            # at all (a publish_timeout per try), a windowed publish an instant 503.
            answered = any(results[i] is not None for i in todo)
            fast = answered and not any(isinstance(results[i], nats.js.errors.APIError) for i in todo)
        else:
            await send_windowed(sender, prepared, todo, results, window, on_stored=on_stored)
        todo = [i for i in todo if results[i] is None or retryable(results[i])]
        for kind in {type(results[i]) for i in todo}:  # what this try got, once per kind
            attempts.saw(next(results[i] for i in todo if type(results[i]) is kind), connected=sender.nc.is_connected)
        if not todo:
            break
    acks: list[PubAck | None] = [None] * len(events)
    failed: dict[int, str] = {}
    for k, result in enumerate(results):
        index = prepared.index(k)
        if isinstance(result, PubAck):
            if acks[index] is None:
                acks[index] = result
        elif index not in failed:
            failed[index] = describe(result)
    if failed:
        first = min(failed)
        stored = len(events) - len(failed)
        tried = f" after {attempts.how_long()} ({attempts.summary()}). {attempts.explanation()}" if todo else "."
        raise PublishManyError(
            f"publish_many stored {stored} of {len(events)} events. The first not stored is #{first} "
            f"(id {events[first].id}): {failed[first]}{tried} Publishing the same events again is safe: "
            "stored ones are recognised by their id and not stored twice.",
            index=first,
            event_id=events[first].id,
            stored=stored,
            acks=acks,
        )
    return [ack for ack in acks if ack is not None]  # every event has its ack here


async def _lookup(sender: Sender, subjects: set[str], fast: bool | None) -> bool:
    """Find (or create) the stream of every subject; decide once whether fast-ingest batches may be used."""
    for subject in subjects:
        await sender.streams.stream_for(subject)
    if fast is None:
        return await fast_ingest_available(sender, subjects)
    return fast


def _counter(progress: Callable[[int], object]) -> Callable[[int], None]:
    """Adds up what each send reports newly stored and tells ``progress`` the running total."""
    stored = 0

    def add(newly_stored: int) -> None:
        nonlocal stored
        stored += newly_stored
        progress(stored)

    return add
