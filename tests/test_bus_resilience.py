"""The bus against a server that goes away: restarts, crashes."""

from __future__ import annotations

import asyncio
import logging

import pytest
from _bus_helpers import wait_until

from buslib import EventBus


async def test_worker_resumes_consuming_after_a_server_restart(server, Order):
    got: list[str] = []

    async def handle(event, ctx):
        got.append(event.order_id)

    async with EventBus.connect(service="resilient", url=server.url) as bus:
        sub = await bus.subscribe(Order, group="billing", handler=handle, ack_wait=2)
        await bus.publish(Order(order_id="before"))
        await wait_until(lambda: got == ["before"])
        server.restart()
        await wait_until(lambda: bus.nc.is_connected, what="reconnect")
        await bus.publish(Order(order_id="after"))  # retried until JetStream is back
        await wait_until(lambda: "after" in got, timeout=20, what="consuming after the restart")
        assert got == ["before", "after"]
        assert sub.stats.rebinds >= 1 and sub.running


async def test_publish_during_a_short_outage_is_stored_once(server, Order):
    async with EventBus.connect(service="resilient", url=server.url, publish_timeout=1.0, publish_attempts=8) as bus:
        await bus.ensure_stream(Order)
        server.crash()
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, server.restart)
        ack = await bus.publish(Order(order_id="during"))
        await wait_until(lambda: bus.nc.is_connected)
        info = await bus.js.stream_info(ack.stream)
        assert info.state.messages == 1


@pytest.mark.parametrize("fast_ingest", [True, False], ids=["fast-ingest", "windowed"])
async def test_publish_many_through_an_outage_stores_every_event_once(server, Order, fast_ingest):
    """The server crashes mid-call: what nats-py buffers while reconnecting and what the retries
    send again (same ids) end up stored exactly once."""
    events = [Order(order_id=f"O-{i}") for i in range(20_000)]
    async with EventBus.connect(service="resilient", url=server.url, publish_timeout=1.0, publish_attempts=8) as bus:
        stream = (await bus.ensure_stream(Order)).config.name
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, server.crash)  # a 20k-event call takes ~0.3 s or more
        loop.call_later(0.6, server.restart)
        acks = await bus.publish_many(events, fast_ingest=fast_ingest)
        assert len(acks) == 20_000 and all(ack.stream == stream for ack in acks)
        info = await bus.js.stream_info(stream)
        assert info.state.messages == 20_000
        assert bus.publish_retries > 0  # the crash really hit the call


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
        server.restart()
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
        with caplog.at_level(logging.INFO, logger="buslib"):
            await bus.js.delete_stream(stream)
            await wait_until(lambda: any("no longer exists" in r.getMessage() for r in caplog.records), what="warning")
            await asyncio.sleep(6)  # several re-bind attempts
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1, warnings  # one clear warning, then quiet
            assert f"stream {stream} no longer exists" in warnings[0] and "stop()" in warnings[0]
            assert sub.running
            await bus.ensure_stream(Order)  # it comes back: the group resumes from the new stream
            await bus.publish(Order(order_id="after"))
            await wait_until(lambda: "after" in got, timeout=20, what="consuming from the re-created stream")
        assert got == ["before", "after"]
        assert any("exists again" in r.getMessage() for r in caplog.records)
        await bus.js.delete_stream(stream)
