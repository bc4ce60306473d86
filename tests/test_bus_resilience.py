"""The bus against a server that goes away: restarts, crashes, a deleted stream.

Every fault happens at a point the test decides (after the k-th acknowledgement, once a pull
request is waiting, once the bus has retried), never at a moment a timer happens to catch.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from _bus_helpers import wait_until

from buslib import EventBus


async def _settled(bus: EventBus, stream: str, durable: str) -> bool:
    """The group has acknowledged everything it received (the server applied the acks)."""
    info = await bus.js.consumer_info(stream, durable)
    return info.num_ack_pending == 0 and info.num_pending == 0


async def _pull_waiting(bus: EventBus, stream: str, durable: str) -> bool:
    """A pull request of the group waits on the server (it dies with a restart)."""
    return (await bus.js.consumer_info(stream, durable)).num_waiting > 0


async def test_worker_resumes_consuming_after_a_server_restart(server, Order):
    got: list[str] = []

    async def handle(event, ctx):
        got.append(event.order_id)

    async with EventBus.connect(service="resilient", url=server.url) as bus:
        sub = await bus.subscribe(Order, group="billing", handler=handle, ack_wait=2)
        await bus.publish(Order(order_id="before"))
        await wait_until(lambda: got == ["before"])
        # restart once the server has applied the ack and holds the worker's next pull request
        await wait_until(lambda: _settled(bus, sub.stream, sub.durable), what="the ack of 'before'")
        await wait_until(lambda: _pull_waiting(bus, sub.stream, sub.durable), what="a waiting pull request")
        server.restart()
        await bus.publish(Order(order_id="after"))  # retried until JetStream is back
        await wait_until(lambda: "after" in got, timeout=20, what="consuming after the restart")
        assert got == ["before", "after"]
        assert sub.stats.rebinds >= 1 and sub.running  # the lost pull request was re-created


async def test_publish_during_a_short_outage_is_stored_once(server, Order):
    async with EventBus.connect(service="resilient", url=server.url, publish_timeout=1.0, publish_attempts=8) as bus:
        await bus.ensure_stream(Order)
        server.crash()
        publishing = asyncio.create_task(bus.publish(Order(order_id="during")))
        # the server comes back once the bus has retried: the first attempt surely met the outage
        await wait_until(lambda: bus.publish_retries > 0 or publishing.done(), what="a retried publish")
        server.restart()
        ack = await publishing
        assert bus.publish_retries > 0
        info = await bus.js.stream_info(ack.stream)
        assert info.state.messages == 1


@pytest.mark.parametrize("fast_ingest", [True, False], ids=["fast-ingest", "windowed"])
async def test_publish_many_through_an_outage_stores_every_event_once(server, Order, fast_ingest):
    """The server crashes mid-call, right after the 5,000th acknowledgement: what nats-py buffers
    while reconnecting and what the retries send again (same ids) end up stored exactly once."""
    total, crash_after = 20_000, 5_000  # at most 4096 (window) or 4064 (8 flow acks) are ahead of the acks
    events = [Order(order_id=f"O-{i}") for i in range(total)]
    crashed_at: list[int] = []

    def crash_at_the_kth_ack(stored: int) -> None:
        if stored >= crash_after and not crashed_at:
            crashed_at.append(stored)
            server.crash()  # here, inside the call: the rest is not acknowledged yet

    async with EventBus.connect(service="resilient", url=server.url, publish_timeout=1.0, publish_attempts=8) as bus:
        stream = (await bus.ensure_stream(Order)).config.name
        publishing = asyncio.create_task(
            bus.publish_many(events, fast_ingest=fast_ingest, progress=crash_at_the_kth_ack)
        )
        await wait_until(lambda: bus.publish_retries > 0 or publishing.done(), what="publish_many to retry")
        server.restart()
        acks = await publishing
        assert crash_after <= crashed_at[0] < total and bus.publish_retries > 0  # the crash really hit the call
        assert len(acks) == total and all(ack.stream == stream for ack in acks)
        info = await bus.js.stream_info(stream)
        assert info.state.messages == total


async def test_worker_without_reconnect_hook_resumes_via_heartbeats(server, Order):
    """A bus wrapped around your own connection: lost pull requests are noticed by missing heartbeats."""
    import buslib

    got: list[str] = []

    async def handle(event, ctx):
        got.append(event.order_id)

    nc = await buslib.connect(server.url)
    bus = EventBus(nc, service="own-connection")
    try:
        sub = await bus.subscribe(Order, group="billing", handler=handle, pull_expires=3)
        await wait_until(lambda: _pull_waiting(bus, sub.stream, sub.durable), what="a waiting pull request")
        server.restart()  # the waiting pull request dies with the server; nothing tells the worker
        await wait_until(lambda: nc.is_connected, what="reconnect")
        await bus.publish(Order(order_id="after"))
        await wait_until(lambda: got == ["after"], timeout=20, what="consuming after the restart")
        assert sub.stats.rebinds >= 1
    finally:
        await bus.close()
        await nc.close()


async def test_deleting_the_stream_under_a_subscription_warns_once_then_resumes_when_it_is_back(
    nats_url, Order, caplog
):
    got: list[str] = []

    async def handle(event, ctx):
        got.append(event.order_id)

    async with EventBus.connect(service="orphaned", url=nats_url) as bus:
        stream = (await bus.ensure_stream(Order)).config.name
        sub = await bus.subscribe(Order, group="billing", handler=handle, pull_expires=3)
        await bus.publish(Order(order_id="before"))
        await wait_until(lambda: got == ["before"])
        # each re-bind attempt asks the server for the group's consumer: count them there
        lookups = await bus.nc.subscribe(f"$JS.API.CONSUMER.INFO.{stream}.{sub.durable}")
        with caplog.at_level(logging.INFO, logger="buslib"):
            await bus.js.delete_stream(stream)
            await wait_until(lambda: any("no longer exists" in r.getMessage() for r in caplog.records), what="warning")
            seen = lookups.pending_msgs
            await wait_until(lambda: lookups.pending_msgs >= seen + 3, what="three more re-bind attempts")
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1, warnings  # one clear warning, then quiet
            assert f"stream {stream} no longer exists" in warnings[0] and "stop()" in warnings[0]
            assert sub.running
            await bus.ensure_stream(Order)  # it comes back: the group resumes from the new stream
            await bus.publish(Order(order_id="after"))
            await wait_until(lambda: "after" in got, timeout=20, what="consuming from the re-created stream")
        await lookups.unsubscribe()
        assert got == ["before", "after"]
        assert any("exists again" in r.getMessage() for r in caplog.records)
        await bus.js.delete_stream(stream)
