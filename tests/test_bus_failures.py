"""What happens to messages that fail: retries, Reject, bad input, the dead-letter sink."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from _bus_helpers import wait_until

from buslib import Event, Failure, Reject, Retry
from buslib.subjects import durable_name


async def consumer_settled(bus, stream, durable, timeout: float = 15.0) -> bool:
    """Whether the consumer has nothing pending or unacknowledged (acks are asynchronous: poll).

    Once it has, nothing more is delivered: a terminated or acknowledged message never comes back.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        info = await bus.js.consumer_info(stream, durable)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)


async def test_handler_failure_retries_with_delay_then_sink_gets_exhausted(bus, Order, stream):
    deliveries: list[tuple[int, float]] = []
    failures: list[Failure] = []

    async def always_fails(event, ctx):
        deliveries.append((ctx.num_delivered, asyncio.get_running_loop().time()))
        raise RuntimeError("payment provider down")

    async def sink(failure: Failure) -> None:
        failures.append(failure)

    sub = await bus.subscribe(
        Order,
        group="billing",
        handler=always_fails,
        ack_wait=2,
        retry=Retry(max_deliver=3, delays=[0.2], jitter=0),
        dead_letters=sink,
    )
    ack = await bus.publish(Order(order_id="E-1"))
    await wait_until(lambda: failures, what="the dead letter")
    assert await consumer_settled(bus, stream, sub.durable)  # terminated: nothing more will arrive
    assert [n for n, _ in deliveries] == [1, 2, 3]
    gaps = [b - a for (_, a), (_, b) in zip(deliveries, deliveries[1:], strict=False)]
    assert all(gap >= 0.15 for gap in gaps), gaps  # nak(delay), not a retry storm
    [failure] = failures
    assert (failure.kind, failure.reason) == ("exhausted", "RuntimeError: payment provider down")
    assert (failure.num_delivered, failure.stream, failure.stream_seq, failure.group) == (3, stream, ack.seq, "billing")
    assert failure.subject == Order.subject() and failure.trace_id and failure.first_failure_at is not None
    assert (sub.stats.retried, sub.stats.exhausted, sub.stats.dead_lettered, sub.stats.acked) == (2, 1, 1, 0)


async def test_reject_goes_to_the_sink_at_once_with_one_delivery(bus, Order, stream):
    deliveries, failures = [], []

    async def rejects(event, ctx):
        deliveries.append(ctx.num_delivered)
        raise Reject("order id is blocked")

    async def sink(failure):
        failures.append(failure)

    sub = await bus.subscribe(Order, group="billing", handler=rejects, retry=Retry(max_deliver=5), dead_letters=sink)
    await bus.publish(Order(order_id="R-1"))
    await wait_until(lambda: failures)
    assert await consumer_settled(bus, stream, sub.durable)  # terminated: nothing more will arrive
    assert deliveries == [1]
    assert (failures[0].kind, failures[0].reason, failures[0].num_delivered) == ("rejected", "order id is blocked", 1)
    assert failures[0].first_failure_at is None  # never failed before in this worker
    assert sub.stats.rejected == 1 and sub.stats.retried == 0


async def test_bad_input_is_terminated_counted_and_sent_to_the_sink_and_the_worker_keeps_going(bus, Order, stream):
    handled, failures = [], []

    async def handle(event, ctx):
        handled.append(event.order_id)

    async def sink(failure):
        failures.append(failure)

    sub = await bus.subscribe(Order, group="billing", handler=handle, dead_letters=sink)
    subject = Order.subject()
    await bus.js.publish(subject, b"this is not json")
    await bus.js.publish(subject, b'{"amount": 3}')  # JSON, but no order_id
    await bus.publish(Order(order_id="OK-1"))
    await wait_until(lambda: sub.stats.acked == 1 and len(failures) == 2)  # acked: counted after the ack is sent
    assert handled == ["OK-1"]
    assert [f.kind for f in failures] == ["undecodable", "undecodable"]
    assert "not valid JSON" in failures[0].reason and "order_id" in failures[1].reason
    assert failures[0].reason.startswith("DecodeError: ")
    assert failures[0].msg.data == b"this is not json"  # the sink gets the original bytes
    assert (sub.stats.undecodable, sub.stats.acked, sub.stats.received) == (2, 1, 3)
    assert await consumer_settled(bus, stream, sub.durable)


async def test_unknown_or_missing_event_type_is_undecodable(bus, Order, stream):
    failures = []

    async def sink(failure):
        failures.append(failure)

    async def handle(event, ctx):
        pass

    prefix = Order.subject().split(".")[0]
    await bus.subscribe(f"{prefix}.>", group="any", handler=handle, event_type=Event, dead_letters=sink)
    await bus.js.publish(f"{prefix}.mystery.v1", b"{}", headers={"ce-type": f"{prefix}.mystery"})
    await bus.js.publish(f"{prefix}.untyped.v1", b"{}")
    await wait_until(lambda: len(failures) == 2)
    reasons = sorted(f.reason for f in failures)
    assert reasons[0].startswith("ContractError: No event class for type") and "ce-type" in reasons[1]


async def test_without_a_sink_failures_are_terminated_logged_and_counted(bus, Order, stream, caplog):
    async def rejects(event, ctx):
        raise Reject("nope")

    sub = await bus.subscribe(Order, group="billing", handler=rejects)
    with caplog.at_level(logging.WARNING, logger="buslib"):
        await bus.publish(Order(order_id="N-1"))
        await wait_until(lambda: sub.stats.dropped == 1)
    assert any("terminated without a dead-letter sink: nope" in r.getMessage() for r in caplog.records)
    assert await consumer_settled(bus, stream, sub.durable)


async def test_a_failing_sink_does_not_lose_the_message(bus, Order, stream):
    attempts, stored = [], []

    async def rejects(event, ctx):
        raise Reject("bad order")

    async def flaky_sink(failure):
        attempts.append(failure.num_delivered)
        if len(attempts) == 1:
            raise ConnectionError("dead-letter store unavailable")
        stored.append(failure)

    sub = await bus.subscribe(
        Order,
        group="billing",
        handler=rejects,
        dead_letters=flaky_sink,
        retry=Retry(max_deliver=3, delays=[0.2], jitter=0),
    )
    await bus.publish(Order(order_id="L-1"))
    await wait_until(lambda: sub.stats.dead_lettered == 1, what="the second, successful sink call")
    assert len(stored) == 1 and attempts == [1, 2]  # nak'ed after the sink failed, so it came back
    assert sub.stats.sink_errors == 1 and sub.stats.dead_lettered == 1
    assert await consumer_settled(bus, stream, durable_name("billing", Order.subject()))


async def test_a_strict_subscriber_dead_letters_unknown_fields_a_tolerant_one_accepts_them(bus, Order, stream):
    strict_got, tolerant_got, failures = [], [], []

    async def sink(failure):
        failures.append(failure)

    async def to(target):
        async def handle(event, ctx):
            target.append(event.order_id)

        return handle

    strict = await bus.subscribe(Order, group="strict", handler=await to(strict_got), strict=True, dead_letters=sink)
    await bus.subscribe(Order, group="tolerant", handler=await to(tolerant_got), dead_letters=sink)
    payload = Order(order_id="X-1").model_dump(mode="json") | {"coupon": "NEW-FIELD"}  # a producer added a field
    await bus.js.publish(Order.subject(), json.dumps(payload).encode())
    await bus.publish(Order(order_id="X-2"))
    await wait_until(lambda: len(tolerant_got) == 2 and strict.stats.acked == 1 and failures, what="both groups")
    assert await consumer_settled(bus, stream, strict.durable)  # nothing more will arrive
    assert tolerant_got == ["X-1", "X-2"] and strict_got == ["X-2"]
    [failure] = failures
    assert (failure.kind, failure.group) == ("undecodable", "strict")
    assert (
        failure.reason.startswith("DecodeError: ") and "strict reader" in failure.reason and "coupon" in failure.reason
    )
    assert strict.stats.undecodable == 1 and strict.stats.acked == 1


@pytest.mark.parametrize("concurrency", [1, 3])  # the handler runs in nats-py's task, or in a worker of ours
async def test_a_stuck_handler_is_cancelled_after_handler_timeout_and_retried(bus, Order, stream, concurrency):
    deliveries, cancelled, failures = [], [], []

    async def stuck(event, ctx):
        deliveries.append(ctx.num_delivered)
        if event.order_id != "H-1":
            return
        try:
            await asyncio.Event().wait()  # never returns on its own
        except asyncio.CancelledError:
            cancelled.append(ctx.num_delivered)
            raise

    async def sink(failure):
        failures.append(failure)

    sub = await bus.subscribe(
        Order,
        group="billing",
        handler=stuck,
        handler_timeout=0.5,
        concurrency=concurrency,
        retry=Retry(max_deliver=2, delays=[0.1], jitter=0),
        dead_letters=sink,
    )
    await bus.publish(Order(order_id="H-1"))
    await wait_until(lambda: failures, what="the timed-out message to be dead-lettered")
    assert deliveries == cancelled == [1, 2]  # retried once after the first timeout, cancelled both times
    [failure] = failures
    assert failure.kind == "exhausted"
    assert failure.reason.startswith("TimeoutError: the handler did not finish within handler_timeout=0.5 s")
    assert sub.stats.retried == 1 and sub.running
    assert await consumer_settled(bus, stream, sub.durable)
    await bus.publish(Order(order_id="H-2"))  # the cancelled task still works: it handles the next one
    await wait_until(lambda: sub.stats.acked == 1, what="the next message handled")


async def test_handler_timeout_must_be_positive(bus, Order):
    async def handle(event, ctx):
        pass

    for bad in (0, -1):
        with pytest.raises(ValueError, match="handler_timeout is in seconds"):
            await bus.subscribe(Order, group="g", handler=handle, handler_timeout=bad)


async def test_closing_a_bus_whose_server_is_gone_raises_nothing(server, unique):
    """close() after the server died: it closes the connection and raises nothing (also when drain fails)."""
    from buslib import EventBus

    bus = await EventBus.connect(service="closing", url=server.url)
    await bus.ensure_stream(f"tclose{unique.lower()}.x")
    server.crash()
    await wait_until(lambda: not bus.nc.is_connected, what="the client noticed the crash")
    await bus.close()
    assert bus.nc.is_closed
