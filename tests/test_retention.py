"""Where a group starts (deliver=) and what a stream keeps (the bus's default limits), on a real server."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone

import pytest
from _bus_helpers import make_event, wait_until
from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError

from buslib import ConfigDriftError, Event, EventBus
from buslib.bus import DEFAULT_MAX_AGE
from buslib.errors import BusError
from buslib.server import read_endpoint
from buslib.subjects import stream_name_for


def keyed(unique: str) -> type[Event]:
    namespace = {"__annotations__": {"sku": str, "n": int}, "__module__": __name__}
    return type(Event)("PriceSet", (Event,), namespace, type=f"t{unique.lower()}.prices.set", version=1, key="sku")


@pytest.fixture
async def Prices(unique, bus):
    cls = keyed(unique)
    await bus.ensure_stream(cls)
    # a0 b0 a1 b1 a2 b2: three prices for each of two products
    for n in range(3):
        for sku in ("a", "b"):
            await bus.publish(cls(sku=sku, n=n))
    yield cls
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_stream(stream_name_for(cls.subject()))


async def read_group(bus, cls, group, **options) -> list[str]:
    seen: list[str] = []

    async def handle(event, ctx):
        seen.append(f"{event.sku}{event.n}")

    sub = await bus.subscribe(cls, group=group, handler=handle, **options)
    await bus.publish(cls(sku="b", n=3))  # published after the group was created
    await wait_until(lambda: seen and seen[-1] == "b3", what=f"group {group} to reach b3")
    await sub.stop()
    return seen


# -- deliver= ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("deliver", "expected"),
    [
        ("all", ["a0", "b0", "a1", "b1", "a2", "b2", "b3"]),
        ("new", ["b3"]),
        ("last", ["b2", "b3"]),
        ("last_per_subject", ["a2", "b2", "b3"]),
        (4, ["b1", "a2", "b2", "b3"]),
    ],
)
async def test_deliver_says_where_a_new_group_starts(bus, Prices, deliver, expected):
    assert await read_group(bus, Prices, f"g-{deliver}", deliver=deliver) == expected


async def test_deliver_by_time_starts_at_the_first_message_stored_at_or_after_it(bus, Prices):
    stream = stream_name_for(Prices.subject())
    fifth = await bus.js.get_msg(stream, 5)
    assert await read_group(bus, Prices, "g-time", deliver=fifth.time) == ["a2", "b2", "b3"]
    assert (await read_group(bus, Prices, "g-hour", deliver=timedelta(hours=1)))[:2] == ["a0", "b0"]


async def test_an_existing_group_keeps_its_start_and_another_kind_of_start_is_drift_even_with_update(bus, Prices):
    await read_group(bus, Prices, "late", deliver="new")
    await read_group(bus, Prices, "late", deliver="new")  # the same kind again: fine
    assert await read_group(bus, Prices, "late") == ["b3"]  # not asked: not compared, and it keeps its position

    async def handle(event, ctx):
        pass

    for update in (False, True):
        with pytest.raises(ConfigDriftError) as caught:
            await bus.subscribe(Prices, group="late", handler=handle, deliver="all", update=update)
        message = str(caught.value)
        assert "deliver_policy: the server has 'new', this code asks for 'all'" in message
        assert "only chooses where a group starts when it is created" in message
        assert "delete_consumer" in message and "error 10012" in message


async def test_a_start_of_the_same_kind_at_another_point_is_not_drift(bus, Prices):
    await read_group(bus, Prices, "seq", deliver=2)
    assert await read_group(bus, Prices, "seq", deliver=5) == ["b3"]  # it continues where it was


@pytest.mark.parametrize(
    ("deliver", "match"),
    [
        ("yesterday", "is not a starting point"),
        (0, "stream sequences start at 1"),
        (datetime(2026, 1, 1), "has no time zone"),
        (timedelta(0), "positive timedelta"),
        (True, "is not a starting point"),
    ],
)
async def test_a_bad_starting_point_is_refused_before_anything_is_created(bus, Prices, deliver, match):
    async def handle(event, ctx):
        pass

    with pytest.raises(ValueError, match=match):
        await bus.subscribe(Prices, group="bad", handler=handle, deliver=deliver)
    with pytest.raises(NotFoundError):
        await bus.js.consumer_info(stream_name_for(Prices.subject()), f"bad__{Prices.subject().replace('.', '_')}")


async def test_a_start_time_in_another_time_zone_means_the_same_instant(bus, Prices):
    fifth = await bus.js.get_msg(stream_name_for(Prices.subject()), 5)
    elsewhere = fifth.time.astimezone(timezone(timedelta(hours=5)))
    assert await read_group(bus, Prices, "zone", deliver=elsewhere) == ["a2", "b2", "b3"]


# -- default limits ---------------------------------------------------------------------------
async def test_a_stream_the_bus_creates_keeps_messages_seven_days_with_no_size_limit(bus, Order, stream):
    config = (await bus.js.stream_info(stream)).config
    assert (config.max_age, config.max_bytes, config.max_msgs) == (DEFAULT_MAX_AGE, -1, -1) == (604800.0, -1, -1)
    assert config.discard == DiscardPolicy.OLD and config.duplicate_window == 120


async def test_an_existing_stream_without_the_default_is_not_drift(bus, unique):
    Order = make_event(f"t{unique.lower()}.order.placed")
    name = stream_name_for(Order.subject())
    await bus.js.add_stream(StreamConfig(name=name, subjects=[f"t{unique.lower()}.>"], duplicate_window=120))
    try:
        info = await bus.ensure_stream(Order)  # as a lesson written before the default re-runs
        assert info.config.max_age == 0
        with pytest.raises(ConfigDriftError, match="max_age: the server has 0, this code asks for 3600"):
            await bus.ensure_stream(Order, max_age=3600)  # asked for explicitly: compared
    finally:
        await bus.js.delete_stream(name)


async def test_max_age_none_keeps_forever_and_a_short_max_age_shortens_the_duplicate_window(bus, unique):
    forever = make_event(f"t{unique.lower()}a.order.placed")
    short = make_event(f"t{unique.lower()}b.order.placed")
    try:
        assert (await bus.ensure_stream(forever, max_age=None)).config.max_age == 0
        config = (await bus.ensure_stream(short, max_age=30)).config
        assert (config.max_age, config.duplicate_window) == (30, 30)
        await bus.ensure_stream(short, max_age=30)  # re-run: the same, no drift
    finally:
        for cls in (forever, short):
            with contextlib.suppress(NotFoundError):
                await bus.js.delete_stream(stream_name_for(cls.subject()))


async def test_max_bytes_is_reserved_at_creation_and_a_stream_that_does_not_fit_is_refused_clearly(server, unique):
    Big = make_event(f"t{unique.lower()}.order.placed")
    async with EventBus.connect(service="sizing", url=server.url) as bus:
        _, jsz = read_endpoint(server.monitor_url, "/jsz")
        free = jsz["config"]["max_storage"] - jsz["reserved_storage"]
        await bus.ensure_stream(Big, max_bytes=free // 2)
        _, after = read_endpoint(server.monitor_url, "/jsz")
        assert after["reserved_storage"] - jsz["reserved_storage"] == free // 2  # reserved while empty
        assert after["storage"] == jsz["storage"]
        Other = make_event(f"t{unique.lower()}x.order.placed")
        with pytest.raises(BusError, match=r"error 10047\).*reserved from the server's max_file_store"):
            await bus.ensure_stream(Other, max_bytes=free // 2 + 1024 * 1024)


async def test_a_second_group_on_a_work_queue_is_refused_with_what_a_work_queue_is(bus, unique):
    Job = make_event(f"t{unique.lower()}.job.queued")
    name = stream_name_for(Job.subject())
    await bus.ensure_stream(Job, retention=RetentionPolicy.WORK_QUEUE)

    async def handle(event, ctx):
        pass

    try:
        first = await bus.subscribe(Job, group="workers", handler=handle)
        with pytest.raises(BusError, match=r"error 10100\).*is a work queue, and another group already reads"):
            await bus.subscribe(Job, group="others", handler=handle)
        await first.stop()
    finally:
        await bus.js.delete_stream(name)
