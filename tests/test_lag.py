"""Group lag, the monitoring endpoints, the lag watcher's alerts and the live lag view, on a real server."""

from __future__ import annotations

import asyncio
import logging

import pytest
from _bus_helpers import make_event, wait_until
from nats.js.api import AckPolicy, ConsumerConfig

import buslib
from buslib import EventBus, LagWatcher
from buslib.bus.lag import consumers_lag
from buslib.server import consumer_rows, read_endpoint
from buslib.subjects import durable_name
from buslib.teaching import lag_view


async def idle_group(bus, Order, group):
    """Create the group's durable and leave it: nobody consumes."""

    async def handle(event, ctx):
        pass

    sub = await bus.subscribe(Order, group=group, handler=handle, deliver="new")
    await sub.stop()


async def counted(bus, Order, group, pending):
    """Wait until the server counts ``pending`` for the group: it counts a message just after acknowledging it."""

    async def arrived():
        return (await bus.group_lag(Order, group=group)).num_pending == pending

    await wait_until(arrived, what=f"the server to count {pending} pending for group {group}")


async def test_lag_is_pending_plus_unacknowledged_while_a_handler_holds_one(bus, Order, stream):
    for i in range(20):
        await bus.publish(Order(order_id=str(i)))
    holding, release = asyncio.Event(), asyncio.Event()

    async def handle(event, ctx):
        if event.order_id == "5":
            holding.set()
            await asyncio.wait_for(release.wait(), 15)

    sub = await bus.subscribe(Order, group="billing", handler=handle, ordered=True)
    await asyncio.wait_for(holding.wait(), 15)
    lag = await bus.group_lag(Order, group="billing")
    assert (lag.num_pending, lag.num_ack_pending, lag.behind, lag.ack_floor) == (14, 1, 15, 5)
    assert lag.consumers == (durable_name("billing", Order.subject()),)
    release.set()
    await wait_until(lambda: sub.stats.acked == 20)
    await sub.stop()

    async def finished():  # the server applies the last acks a moment after they arrive
        return (await bus.group_lag(Order, group="billing")).behind == 0

    await wait_until(finished, what="the server to apply the last acks")


async def test_redelivered_counts_unacknowledged_messages_delivered_again(nc, js, bus, Order, stream):
    for i in range(20):
        await bus.publish(Order(order_id=str(i)))
    await js.add_consumer(stream, ConsumerConfig(durable_name="raw", ack_policy=AckPolicy.EXPLICIT, ack_wait=60))
    puller = await js.pull_subscribe_bind("raw", stream=stream)
    msgs = await puller.fetch(5, timeout=5)
    for msg in msgs[:2]:
        await msg.ack_sync()
    await nc.request(msgs[2].reply, b"-NAK", timeout=5)  # a nak, answered: applied before we look
    again = await puller.fetch(1, timeout=5)
    assert again[0].metadata.num_delivered == 2
    lag = await consumers_lag(js, stream, ["raw"])
    assert (lag.num_pending, lag.num_ack_pending, lag.num_redelivered, lag.behind) == (15, 3, 1, 18)


async def test_jsz_shows_the_same_numbers_and_healthz_says_ok(server):
    Order = make_event("tjsz.order.placed")
    async with EventBus.connect(service="ops", url=server.url) as bus:
        await bus.ensure_stream(Order)
        await idle_group(bus, Order, "audit")
        for i in range(7):
            await bus.publish(Order(order_id=str(i)))
        await counted(bus, Order, "audit", 7)
        assert read_endpoint(server.monitor_url, "/healthz?js-enabled-only=true") == (200, {"status": "ok"})
        status, jsz = read_endpoint(server.monitor_url, "/jsz?consumers=true")
        (row,) = [r for r in consumer_rows(jsz) if r["name"] == durable_name("audit", Order.subject())]
        lag = await bus.group_lag(Order, group="audit")
        assert status == 200 and row["stream_name"] == "TJSZ"
        assert (row["num_pending"], row["num_ack_pending"]) == (lag.num_pending, lag.num_ack_pending) == (7, 0)


async def test_the_watcher_alerts_once_when_a_group_stays_behind_and_once_when_it_recovers(bus, Order, stream):
    await idle_group(bus, Order, "reports")
    alerts, sync_alerts = [], []

    async def page(alert):
        alerts.append((alert.state, alert.group, alert.history))

    watcher = LagWatcher(bus, [(Order, "reports")], threshold=50, on_alert=page)
    other = LagWatcher(bus, [(Order, "reports")], threshold=50, on_alert=lambda a: sync_alerts.append(a.state))
    for burst in range(1, 4):
        await bus.publish_many(Order(order_id="x") for _ in range(60))
        await counted(bus, Order, "reports", 60 * burst)
        await watcher.poll_once()
        await other.poll_once()
    assert alerts == [("lagging", "reports", [60, 120, 180])] and sync_alerts == ["lagging"]
    await watcher.poll_once()  # still behind, not shrinking: no second alert
    assert len(alerts) == 1 and watcher.lagging == {"reports"}

    async def handle(event, ctx):
        pass

    sub = await bus.subscribe(Order, group="reports", handler=handle)
    await wait_until(lambda: sub.stats.acked == 180)
    await sub.stop()
    await watcher.poll_once()
    assert [a[0] for a in alerts] == ["lagging", "recovered"] and watcher.lagging == set()


async def test_a_burst_being_worked_off_is_not_an_alert(bus, Order, stream):
    """Behind more than the threshold, but shrinking: the group is catching up."""
    await idle_group(bus, Order, "reports")
    watcher = LagWatcher(bus, [(Order, "reports")], threshold=10)
    await bus.publish_many(Order(order_id="x") for _ in range(60))
    await counted(bus, Order, "reports", 60)
    js, name = bus.js, durable_name("reports", Order.subject())
    puller = await js.pull_subscribe_bind(name, stream=stream)
    for _ in range(3):
        await watcher.poll_once()
        for msg in await puller.fetch(10, timeout=5):
            await msg.ack_sync()
    assert list(watcher.history["reports"]) == [60, 50, 40] and watcher.alerts == []


async def test_a_failing_alert_hook_is_logged_and_watching_goes_on(bus, Order, stream, caplog):
    await idle_group(bus, Order, "reports")

    def broken(alert):
        raise RuntimeError("the pager is down")

    watcher = LagWatcher(bus, [(Order, "reports"), (Order, "nobody")], threshold=0, on_alert=broken, samples=2)
    await bus.publish(Order(order_id="x"))
    await counted(bus, Order, "reports", 1)
    with caplog.at_level(logging.ERROR, logger="buslib"):
        assert set(await watcher.poll_once()) == {"reports"}  # "nobody" has no durable: left out
        await watcher.poll_once()
    assert [a.state for a in watcher.alerts] == ["lagging"] and "the alert hook failed" in caplog.text
    with pytest.raises(ValueError, match="samples must be at least 2"):
        LagWatcher(bus, [], threshold=1, samples=1)


async def test_retention_overtakes_a_group_that_does_not_read(bus, unique):
    Order = make_event(f"t{unique.lower()}.order.placed")
    info = await bus.ensure_stream(Order, max_msgs=10)
    try:
        await idle_group(bus, Order, "late")
        for i in range(30):
            await bus.publish(Order(order_id=str(i)))
        await counted(bus, Order, "late", 10)
        lag = await bus.group_lag(Order, group="late")
        assert (lag.behind, lag.overtaken, lag.first_seq) == (10, 20, 21)
    finally:
        await bus.js.delete_stream(info.config.name)


async def test_a_group_that_never_subscribed_has_no_lag_to_read(bus, Order, stream):
    with pytest.raises(LookupError, match="has none of the consumers"):
        await bus.group_lag(Order, group="ghost")


async def test_the_lag_view_records_each_refresh_and_shows_the_alert(bus, Order, stream):
    await idle_group(bus, Order, "reports")
    view = lag_view(bus, [(Order, "reports")], threshold=30, refresh=None, samples=2)
    for burst in range(1, 3):
        await bus.publish_many(Order(order_id="x") for _ in range(40))
        await counted(bus, Order, "reports", 40 * burst)
        await view.refresh()
    assert view.history["reports"] == [40, 80] and [a.state for a in view.alerts] == ["lagging"]
    assert "reports  80" in view.text and "LAGGING" in view.text
    assert "<polyline" in view._html.value and "LAGGING" in view._html.value
    assert isinstance(view, buslib.teaching.LagView) and not view.running
    view.close()


async def test_the_lag_view_polls_by_itself_once_displayed_and_stops_when_told(bus, Order, stream):
    await idle_group(bus, Order, "reports")
    await bus.publish(Order(order_id="x"))
    await counted(bus, Order, "reports", 1)
    view = lag_view(bus, [(Order, "reports")], threshold=30, refresh=0.05)
    bundle = view._repr_mimebundle_()  # what displaying it does: show, then keep it live
    assert "Consumer group lag" in bundle["text/plain"] and view.running
    await wait_until(lambda: len(view.history["reports"]) >= 3)
    view.stop()
    assert not view.running and set(view.history["reports"]) == {1}
    polled = len(view.history["reports"])
    await asyncio.sleep(0.2)  # stopped: no more polls
    assert len(view.history["reports"]) == polled
    view.close()
