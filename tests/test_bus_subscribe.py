"""EventBus consumer groups against a real server: sharing, fan-out, redelivery, tracing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from _bus_helpers import make_event, wait_until

from buslib import ConfigDriftError, Event, EventBus, MessageContext, Retry, SubjectError, tracing
from buslib.subjects import durable_name


async def test_workers_in_one_group_see_disjoint_sets_whose_union_is_everything(nats_url, bus, Order, stream):
    seen: dict[int, list[str]] = {0: [], 1: [], 2: []}

    async def worker(n: int) -> EventBus:
        other = await EventBus.connect(service=f"worker-{n}", url=nats_url)

        async def handle(event, ctx: MessageContext) -> None:
            seen[n].append(event.order_id)
            await asyncio.sleep(0.001)

        await other.subscribe(Order, group="billing", handler=handle)
        return other

    workers = [await worker(n) for n in range(3)]
    try:
        await bus.publish_many([Order(order_id=str(i)) for i in range(150)])
        await wait_until(lambda: sum(map(len, seen.values())) >= 150, what="150 deliveries")
        await asyncio.sleep(0.3)  # a duplicate would show up now
    finally:
        for other in workers:
            await other.close()
    everything = [order for orders in seen.values() for order in orders]
    assert sorted(everything, key=int) == [str(i) for i in range(150)]  # no duplicates, nothing missing
    assert sum(1 for orders in seen.values() if orders) >= 2  # shared, not one worker taking all


async def test_two_groups_each_receive_every_message(bus, Order, stream):
    billing, shipping = [], []

    async def to(target: list):
        async def handle(event, ctx):
            target.append(event.order_id)

        return handle

    await bus.subscribe(Order, group="billing", handler=await to(billing))
    await bus.subscribe(Order, group="shipping", handler=await to(shipping))
    await bus.publish_many([Order(order_id=str(i)) for i in range(40)])
    await wait_until(lambda: len(billing) >= 40 and len(shipping) >= 40, what="both groups")
    assert sorted(billing) == sorted(shipping) == sorted(str(i) for i in range(40))


async def test_one_group_can_consume_two_event_types_on_one_stream(bus, Order, unique, stream):
    Refund = make_event(f"t{unique.lower()}.refund.issued", class_name="Refund")
    got: list[str] = []

    async def handle(event, ctx):
        got.append(type(event).__name__)

    a = await bus.subscribe(Order, group="billing", handler=handle)
    b = await bus.subscribe(Refund, group="billing", handler=handle)
    assert a.durable != b.durable == durable_name("billing", Refund.subject())
    await bus.publish(Order(order_id="1"))
    await bus.publish(Refund(order_id="1"))
    await wait_until(lambda: len(got) == 2)
    assert sorted(got) == ["Order", "Refund"]


async def test_message_of_a_killed_worker_is_redelivered_after_ack_wait_to_another(nats_url, bus, Order, stream):
    started = asyncio.Event()
    survivor: list[tuple[str, int, float]] = []

    async def hang(event, ctx):
        started.set()
        await asyncio.Event().wait()  # never returns, never acks

    async def handle(event, ctx):
        survivor.append((event.order_id, ctx.num_delivered, time.monotonic()))

    doomed = await EventBus.connect(service="doomed", url=nats_url)
    doomed_sub = await doomed.subscribe(Order, group="billing", handler=hang, ack_wait=1.0)
    published_at = time.monotonic()  # the first delivery is after this, its redelivery ack_wait after that
    await bus.publish(Order(order_id="K-1"))
    await asyncio.wait_for(started.wait(), 10)
    await bus.subscribe(Order, group="billing", handler=handle, ack_wait=1.0)
    await doomed.nc.close()  # the process dies: its connection goes, no ack is ever sent
    await doomed_sub.stop(timeout=0)
    await wait_until(lambda: survivor, what="redelivery")
    [(order_id, num_delivered, redelivered_at)] = survivor
    assert (order_id, num_delivered) == ("K-1", 2)
    # not at once: after the ack timeout (a lower bound, so a slow machine only makes it larger)
    assert redelivered_at - published_at >= 0.95


async def test_in_progress_keeps_a_slow_handlers_message_from_redelivery(nats_url, bus, Order, stream):
    """The bus sends in_progress every half ack_wait (looked at every quarter): with ack_wait=2 s, a
    worker whose event loop stalls for up to 0.5 s at a time still keeps its message."""
    deliveries: list[int] = []
    finished = asyncio.Event()

    async def slow(event, ctx):
        deliveries.append(ctx.num_delivered)
        await asyncio.sleep(5.0)  # two and a half times ack_wait
        finished.set()

    second = await EventBus.connect(service="second", url=nats_url)
    try:
        await bus.subscribe(Order, group="billing", handler=slow, ack_wait=2.0)
        await second.subscribe(Order, group="billing", handler=slow, ack_wait=2.0)
        await bus.publish(Order(order_id="S-1"))
        await asyncio.wait_for(finished.wait(), 20)

        async def acked() -> bool:
            info = await bus.js.consumer_info(stream, durable_name("billing", Order.subject()))
            return info.num_ack_pending == 0

        await wait_until(acked, what="the ack")
    finally:
        await second.close()
    assert deliveries == [1]
    info = await bus.js.consumer_info(stream, durable_name("billing", Order.subject()))
    assert info.num_ack_pending == 0 and info.num_redelivered == 0


async def test_trace_id_is_preserved_across_a_hop(bus, Order, unique, stream):
    Payment = make_event(f"t{unique.lower()}.payment.taken", class_name="Payment")
    seen_by_c: list[str] = []
    seen_by_b: list[str] = []

    async def service_b(event, ctx):
        seen_by_b.append(ctx.trace_id)
        assert tracing.current_trace().trace_id == ctx.trace_id  # the handler runs inside the trace
        await bus.publish(Payment(order_id=event.order_id))

    async def service_c(event, ctx):
        seen_by_c.append(ctx.trace_id)

    await bus.subscribe(Order, group="b", handler=service_b)
    await bus.subscribe(Payment, group="c", handler=service_c)
    with tracing.trace(None) as origin:
        await bus.publish(Order(order_id="T-1"))
    await bus.publish(Order(order_id="T-2"))  # outside the trace: a trace of its own
    await wait_until(lambda: len(seen_by_c) == 2, what="C handling two payments")
    assert origin.trace_id in seen_by_b and origin.trace_id in seen_by_c
    assert len(set(seen_by_c)) == 2


async def test_concurrency_runs_up_to_n_handlers_at_once(bus, Order, stream):
    running = peak = done = 0
    gate = asyncio.Event()  # handlers hold until the test has seen four of them running

    async def handle(event, ctx):
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        done += 1

    await bus.subscribe(Order, group="billing", handler=handle, concurrency=4)
    await bus.publish_many([Order(order_id=str(i)) for i in range(12)])
    await wait_until(lambda: running == 4, what="four handlers running at once")
    gate.set()
    await wait_until(lambda: done == 12)
    assert peak == 4


async def test_stop_lets_the_running_handler_finish_and_keeps_the_durable(bus, Order, stream):
    started, acked = asyncio.Event(), []

    async def handle(event, ctx):
        started.set()
        await asyncio.sleep(0.5)
        acked.append(event.order_id)

    sub = await bus.subscribe(Order, group="billing", handler=handle)
    await bus.publish(Order(order_id="D-1"))
    await asyncio.wait_for(started.wait(), 10)
    await sub.stop()
    assert acked == ["D-1"] and sub.stats.acked == 1 and not sub.running and sub.stopped
    # stop() flushed the ack; the server applies it to the consumer asynchronously: poll briefly
    for _ in range(100):
        info = await bus.js.consumer_info(stream, sub.durable)
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.05)
    assert info.num_ack_pending == 0 and info.delivered.stream_seq == 1


async def test_subject_subscription_gives_raw_bytes_and_any_event_type_decodes_by_header(bus, Order, stream):
    raw, typed = [], []

    async def on_raw(data, ctx):
        raw.append(data)

    async def on_any(event, ctx):
        typed.append(event)

    prefix = Order.subject().split(".")[0]
    await bus.subscribe(f"{prefix}.>", group="audit", handler=on_raw)
    await bus.subscribe(f"{prefix}.>", group="typed", handler=on_any, event_type=Event)
    event = Order(order_id="R-1")
    await bus.publish(event)
    await wait_until(lambda: raw and typed)
    assert raw == [event.to_json()]
    assert typed == [event] and type(typed[0]) is Order


async def test_consumer_config_drift_raises_unless_update_is_asked_for(bus, Order, stream):
    async def handle(event, ctx):
        pass

    sub = await bus.subscribe(Order, group="billing", handler=handle, ack_wait=5)
    await sub.stop()
    with pytest.raises(ConfigDriftError, match=r"ack_wait: the server has 5, this code asks for 7") as caught:
        await bus.subscribe(Order, group="billing", handler=handle, ack_wait=7)
    assert "update=True" in str(caught.value)
    with pytest.raises(ConfigDriftError, match="max_deliver"):
        await bus.subscribe(Order, group="billing", handler=handle, ack_wait=5, retry=Retry(max_deliver=2))
    updated = await bus.subscribe(Order, group="billing", handler=handle, ack_wait=7, update=True)
    assert (await bus.js.consumer_info(stream, updated.durable)).config.ack_wait == 7


async def test_invalid_group_names_and_subjects_are_refused(bus, Order):
    async def handle(event, ctx):
        pass

    for group in ["", "   ", None]:
        with pytest.raises(ValueError, match="group must be a non-empty name"):
            await bus.subscribe(Order, group=group, handler=handle)
    with pytest.raises(ValueError, match="may only contain"):
        await bus.subscribe(Order, group="bill.ing", handler=handle)
    with pytest.raises(SubjectError):
        await bus.subscribe("orders..created", group="g", handler=handle)
    with pytest.raises(TypeError, match="async function"):
        await bus.subscribe(Order, group="g", handler=lambda event, ctx: None)


def test_group_durable_names_are_deterministic_and_distinct_per_filter():
    names = [durable_name("billing", s) for s in ["orders.created.v1", "orders.refunded.v1", "orders.*.v1", "orders.>"]]
    assert names == [
        "billing__orders_created_v1",
        "billing__orders_refunded_v1",
        "billing__orders_any_v1",
        "billing__orders_all",
    ]
    assert Counter(names).most_common(1)[0][1] == 1


async def test_slow_handlers_do_not_hoard_messages_other_workers_could_take(nats_url, bus, Order, stream):
    """Pulling ahead adapts to handler speed: slow handlers leave the rest to their group peers."""
    by_worker: dict[str, list[int]] = {"a": [], "b": []}

    def slow(name):
        async def handle(event, ctx):
            by_worker[name].append(ctx.num_delivered)
            await asyncio.sleep(0.4)

        return handle

    other = await EventBus.connect(service="peer", url=nats_url)
    try:
        await bus.subscribe(Order, group="billing", handler=slow("a"), ack_wait=1.0)
        await bus.publish_many([Order(order_id=str(i)) for i in range(8)])
        await wait_until(lambda: by_worker["a"], what="the first worker busy")  # then its peer joins
        await other.subscribe(Order, group="billing", handler=slow("b"), ack_wait=1.0)
        await wait_until(lambda: len(by_worker["a"]) + len(by_worker["b"]) >= 8, what="8 handled")
    finally:
        await other.close()
    assert by_worker["b"], "the first worker pulled everything although it could not start it in time"
    assert all(n == 1 for n in by_worker["a"] + by_worker["b"])  # nothing timed out in a buffer


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_handler_can_stop_its_own_subscription(bus, Order, stream, concurrency):
    handled: list[str] = []
    holder: list = []

    async def handle(event, ctx):
        handled.append(event.order_id)
        if len(handled) == 3:
            await holder[0].stop()  # returns at once; the stop completes after this handler

    holder.append(await bus.subscribe(Order, group="billing", handler=handle, concurrency=concurrency))
    await bus.publish_many([Order(order_id=str(i)) for i in range(3)])
    await wait_until(lambda: holder[0].stopped, what="the subscription to stop")
    assert not holder[0].running
    assert holder[0].stats.acked == 3


async def test_a_contract_subscriber_reads_the_older_versions_history_upcast(bus, unique):
    """subscribe(V2) filters on every subject V2 can read; v1 messages arrive as V2 events."""
    from buslib.contracts import subjects_readable_by, upcaster

    type_name = f"t{unique.lower()}.parcel.sent"
    V1 = make_event(type_name, "ParcelV1", weight_kg=float)
    V2 = make_event(type_name, "ParcelV2", event_version=2, grams=int)
    stream = (await bus.ensure_stream(V1)).config.name
    try:
        old = [V1(weight_kg=1.5), V1(weight_kg=0.25)]
        for event in old:
            await bus.publish(event)  # history written before v2 existed

        @upcaster(V1, to=V2)
        def _(event):
            return V2(grams=round(event.weight_kg * 1000))

        got: list = []

        async def handle(event, ctx):
            got.append((type(event), event.id, event.grams))

        sub = await bus.subscribe(V2, group="analytics", handler=handle)
        new = V2(grams=7)
        await bus.publish(new)
        await wait_until(lambda: len(got) == 3, what="the v1 history and the v2 event")
        assert got == [(V2, old[0].id, 1500), (V2, old[1].id, 250), (V2, new.id, 7)]
        info = await bus.js.consumer_info(stream, sub.durable)
        assert sub.durable == durable_name("analytics", V2.subject())  # named as before: by its own subject
        assert info.config.filter_subjects == subjects_readable_by(V2) == [V1.subject(), V2.subject()]
        assert sub.subjects == [V1.subject(), V2.subject()]
    finally:
        await bus.js.delete_stream(stream)


async def test_adding_an_upcaster_to_a_running_group_is_reported_as_drift_with_what_to_do(bus, unique):
    from buslib.contracts import upcaster

    type_name = f"t{unique.lower()}.parcel.lost"
    V1 = make_event(type_name, "LostV1", note=str)
    V2 = make_event(type_name, "LostV2", event_version=2, note=str)
    stream = (await bus.ensure_stream(V2)).config.name

    async def handle(event, ctx):
        pass

    try:
        await (await bus.subscribe(V2, group="audit", handler=handle)).stop()  # v2 only, no upcaster yet
        upcaster(V1, to=V2)(lambda event: V2(note=event.note))
        with pytest.raises(ConfigDriftError) as caught:
            await bus.subscribe(V2, group="audit", handler=handle)
        message = str(caught.value)
        assert f"filter_subjects: the server has ['{V2.subject()}'], this code asks for" in message
        assert "subjects_readable_by" in message and "update=True" in message and "delete_consumer" in message
        updated = await bus.subscribe(V2, group="audit", handler=handle, update=True)
        info = await bus.js.consumer_info(stream, updated.durable)
        assert sorted(info.config.filter_subjects) == [V1.subject(), V2.subject()]
    finally:
        await bus.js.delete_stream(stream)


async def test_drift_message_says_where_each_wanted_value_comes_from(bus, Order, stream):
    async def handle(event, ctx):
        pass

    await (await bus.subscribe(Order, group="billing", handler=handle)).stop()  # defaults: ack_wait 30
    with pytest.raises(ConfigDriftError) as caught:
        await bus.subscribe(Order, group="billing", handler=handle, ack_wait=5)
    message = str(caught.value)
    assert "ack_wait: the server has 30, this code asks for 5" in message
    assert "(from subscribe(ack_wait=5); the default is 30 s)" in message
    # the learner never passed a backoff: the message says it is derived, and from what
    assert "backoff: the server has None, this code asks for [5, 5, 5, 10]" in message
    assert "derived, not passed: ack_wait=5 followed by the retry delays [0.5, 2.0, 10.0]" in message
    assert "pass update=True to subscribe()" in message
    assert f"await bus.js.delete_consumer({stream!r}, 'billing__{Order.subject().replace('.', '_')}')" in message
    with pytest.raises(ConfigDriftError, match=r"max_deliver: .*\n.*from retry=Retry\(max_deliver=2\)"):
        await bus.subscribe(Order, group="billing", handler=handle, retry=Retry(max_deliver=2))


@pytest.mark.parametrize("start", ["workers-first", "backlog-first"])
async def test_a_group_shares_a_backlog_between_its_workers_by_default(nats_url, bus, Order, stream, start):
    """No worker grabs the backlog: with ~5 ms handlers each of 3 workers gets a real share.

    With the backlog first, a worker's first handler holds until all three have joined: how many
    messages the first one takes must not depend on how fast the machine connects the others.
    """
    seen: dict[int, list[str]] = {0: [], 1: [], 2: []}
    total = 150
    all_joined = asyncio.Event()

    async def worker(n: int) -> EventBus:
        other = await EventBus.connect(service=f"worker-{n}", url=nats_url)

        async def handle(event, ctx: MessageContext) -> None:
            seen[n].append(event.order_id)
            if len(seen[n]) == 1:
                await all_joined.wait()
            await asyncio.sleep(0.005)

        await other.subscribe(Order, group="billing", handler=handle)  # default prefetch
        return other

    workers = []
    try:
        if start == "backlog-first":
            await bus.publish_many([Order(order_id=str(i)) for i in range(total)])
        workers = [await worker(n) for n in range(3)]
        all_joined.set()
        if start == "workers-first":
            await bus.publish_many([Order(order_id=str(i)) for i in range(total)])
        await wait_until(lambda: sum(map(len, seen.values())) >= total, timeout=30, what=f"{total} deliveries")
        await asyncio.sleep(0.3)  # a duplicate would show up now
    finally:
        for other in workers:
            await other.close()
    everything = [order for orders in seen.values() for order in orders]
    assert sorted(everything, key=int) == [str(i) for i in range(total)]  # no duplicates, nothing missing
    shares = sorted(len(orders) for orders in seen.values())
    assert shares[0] >= 0.15 * total, shares  # e.g. not 146/2/2


async def test_subscribing_without_a_stream_and_auto_create_off_says_how_to_create_one(nats_url, Order):
    from buslib import BusError

    async def handle(event, ctx) -> None: ...

    async with EventBus.connect(service="strict", url=nats_url, auto_create_streams=False) as bus:
        with pytest.raises(BusError, match=r"No stream stores .*ensure_stream"):
            await bus.subscribe(Order, group="billing", handler=handle)
