"""Keyed events, partitioned streams and ordered groups, against a real server.

What an ordered group promises: every key's events are handled in the order they were
stored, retries included, with several instances of the group, and each message is handled
successfully once per group.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict

import pytest
from _bus_helpers import wait_until
from hypothesis import given
from hypothesis import strategies as st
from nats.js.errors import NotFoundError

from buslib import ConfigDriftError, Event, EventBus, OrderedSubscription, Reject, Retry, partition_of
from buslib.errors import BusError, ContractError, SubjectError
from buslib.subjects import key_from_token, key_token, stream_name_for

KEYS = ["C-1", "C-2", "C-3", "C-4", "C-5", "C-6"]
FAST_RETRY = Retry(max_deliver=5, delays=[0.2], jitter=0)


def keyed(unique: str, *, key: str = "customer_id") -> type[Event]:
    """A keyed event type of its own for each test (its own stream)."""
    namespace = {"__annotations__": {"customer_id": str, "n": int}, "__module__": __name__}
    return type(Event)("OrderPlaced", (Event,), namespace, type=f"t{unique.lower()}.orders.placed", version=1, key=key)


@pytest.fixture
async def Keyed(unique, bus):
    cls = keyed(unique)
    yield cls
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_stream(f"T{unique}")


async def publish_interleaved(bus, cls, keys=KEYS, per_key=8):
    for n in range(per_key):
        for key in keys:
            await bus.publish(cls(customer_id=key, n=n))


# -- keys and subjects (no server) -----------------------------------------------------------
@given(st.text(min_size=1, max_size=40))
def test_any_key_becomes_one_valid_token_and_back(key):
    token = key_token(key)
    assert token and not any(c in token for c in ".*> \t\r\n")
    assert key_from_token(token) == key


def test_a_key_must_be_a_non_empty_string_or_an_integer():
    assert key_token(7) == "7"
    for bad in ("", None, 1.5, True):
        with pytest.raises(SubjectError, match="non-empty string or an integer"):
            key_token(bad)


def test_a_keyed_contract_publishes_on_its_subject_plus_the_key(unique):
    cls = keyed(unique)
    assert cls.subject_for("ann@example.com") == f"t{unique.lower()}.orders.placed.v1.ann%40example%2Ecom"
    with pytest.raises(ContractError, match="has no field of that name"):
        keyed(unique + "X", key="customer")


# -- partitioned streams ---------------------------------------------------------------------
async def test_the_server_stores_each_key_in_the_partition_partition_of_predicts(bus, Keyed):
    await bus.ensure_stream(Keyed, partitions=4)
    keys = [f"K-{i}" for i in range(40)]
    for key in keys:
        await bus.publish(Keyed(customer_id=key, n=0))
    base, stream = Keyed.subject(), stream_name_for(Keyed.subject())
    for seq, key in enumerate(keys, start=1):
        assert (await bus.js.get_msg(stream, seq)).subject == f"{base}.{partition_of(key, 4)}.{key}"
    assert sorted(Counter(partition_of(k, 4) for k in keys)) == [0, 1, 2, 3]  # every partition gets keys


async def test_unkeyed_subjects_in_a_partitioned_stream_are_stored_unchanged(bus, Keyed, unique):
    info = await bus.ensure_stream(Keyed, partitions=2)
    ack = await bus.js.publish(f"t{unique.lower()}.orders.created.v1", b"{}")
    assert (await bus.js.get_msg(info.config.name, ack.seq)).subject == f"t{unique.lower()}.orders.created.v1"


async def test_another_partition_count_for_an_existing_stream_is_drift(bus, Keyed):
    await bus.ensure_stream(Keyed, partitions=4)
    await bus.ensure_stream(Keyed, partitions=4)  # the same again: fine
    await bus.ensure_stream(Keyed)  # not asked: not compared
    with pytest.raises(ConfigDriftError, match="server has 4 partitions, this code asks for 8 partitions"):
        await bus.ensure_stream(Keyed, partitions=8)


async def test_partitions_need_a_keyed_contract_and_a_sane_count(bus, Order, Keyed):
    with pytest.raises(ValueError, match="has no key, so there is nothing to partition on"):
        await bus.ensure_stream(Order, partitions=4)
    with pytest.raises(ValueError, match="partitions must be a whole number from 1 to 256"):
        await bus.ensure_stream(Keyed, partitions=0)


# -- ordered groups ----------------------------------------------------------------------------
def recorder(handled, *, fail_once=None, hold=None):
    """A handler that records (key -> [n, ...]); ``fail_once`` = (key, n) fails its first delivery."""

    async def handle(event, ctx):
        if (event.customer_id, event.n) == fail_once and ctx.num_delivered == 1:
            raise RuntimeError("fails once, then works")
        if hold is not None:
            await hold(event)
        handled[event.customer_id].append(event.n)

    return handle


async def test_a_plain_group_reorders_a_key_when_one_event_is_retried(bus, Keyed):
    """The reference point: without ordered=True a retry lets the key's later events go first."""
    await bus.ensure_stream(Keyed)
    await publish_interleaved(bus, Keyed, keys=["C-1", "C-2"], per_key=6)
    handled = defaultdict(list)
    sub = await bus.subscribe(Keyed, group="plain", handler=recorder(handled, fail_once=("C-1", 2)), retry=FAST_RETRY)
    await wait_until(lambda: sum(map(len, handled.values())) == 12)
    await sub.stop()
    assert handled["C-1"].index(2) > handled["C-1"].index(3)  # event 3 was handled before the retried 2


async def test_two_instances_of_an_ordered_group_keep_every_key_in_order_and_handle_each_event_once(
    nats_url, bus, Keyed
):
    await bus.ensure_stream(Keyed, partitions=4)
    await publish_interleaved(bus, Keyed)
    handled = defaultdict(list)
    handle = recorder(handled, fail_once=("C-2", 3))
    async with EventBus.connect(service="second", url=nats_url) as other:
        subs = [
            await bus.subscribe(Keyed, group="billing", handler=handle, ordered=True, retry=FAST_RETRY),
            await other.subscribe(Keyed, group="billing", handler=handle, ordered=True, retry=FAST_RETRY),
        ]
        await wait_until(lambda: sum(map(len, handled.values())) == len(KEYS) * 8)
        for sub in subs:
            await sub.stop()
    assert {key: handled[key] for key in KEYS} == {key: list(range(8)) for key in KEYS}
    assert sum(sub.stats.retried for sub in subs) == 1
    assert sum(sub.stats.acked for sub in subs) == len(KEYS) * 8

    async def finished():  # the server applies the last acks a moment after they arrive
        lag = await bus.group_lag(Keyed, group="billing")
        return lag.behind == 0 and len(lag.consumers) == 4

    await wait_until(finished, what="group billing's four lanes to have nothing left")


async def test_an_ordered_group_runs_one_lane_per_partition_with_one_message_in_flight(bus, Keyed):
    info = await bus.ensure_stream(Keyed, partitions=3)
    sub = await bus.subscribe(Keyed, group="billing", handler=recorder(defaultdict(list)), ordered=True)
    try:
        assert isinstance(sub, OrderedSubscription) and sub.partitions == [0, 1, 2]
        durable = f"billing__{Keyed.subject().replace('.', '_')}"
        assert sub.durables == [f"{durable}__p{p}" for p in range(3)]
        for p, name in enumerate(sub.durables):
            config = (await bus.js.consumer_info(info.config.name, name)).config
            assert (config.filter_subject, config.max_ack_pending) == (f"{Keyed.subject()}.{p}.*", 1)
    finally:
        await sub.stop()


async def test_an_instance_can_run_some_partitions_and_only_those_move(bus, Keyed):
    await bus.ensure_stream(Keyed, partitions=4)
    await publish_interleaved(bus, Keyed)
    handled = defaultdict(list)
    mine = [0, 1]
    sub = await bus.subscribe(Keyed, group="billing", handler=recorder(handled), ordered=True, partitions=mine)
    expected = {k for k in KEYS if partition_of(k, 4) in mine}
    await wait_until(lambda: sum(map(len, handled.values())) == 8 * len(expected))
    await sub.stop()
    assert set(handled) == expected
    with pytest.raises(ValueError, match="has 4 partitions"):
        await bus.subscribe(Keyed, group="billing", handler=recorder(handled), ordered=True, partitions=[4])


async def test_ordered_on_a_stream_without_partitions_makes_the_whole_group_one_ordered_lane(bus, Keyed):
    info = await bus.ensure_stream(Keyed)
    await publish_interleaved(bus, Keyed, keys=["C-1", "C-2"], per_key=5)
    handled = defaultdict(list)
    sub = await bus.subscribe(
        Keyed, group="billing", handler=recorder(handled, fail_once=("C-1", 1)), ordered=True, retry=FAST_RETRY
    )
    await wait_until(lambda: sum(map(len, handled.values())) == 10)
    await sub.stop()
    assert dict(handled) == {"C-1": list(range(5)), "C-2": list(range(5))}
    config = (await bus.js.consumer_info(info.config.name, sub.durables[0])).config
    assert sub.durables == [f"billing__{Keyed.subject().replace('.', '_')}"] and config.max_ack_pending == 1
    with pytest.raises(BusError, match="does not partition"):
        await bus.subscribe(Keyed, group="other", handler=recorder(handled), ordered=True, partitions=[0])


async def test_a_dead_lettered_event_leaves_a_gap_and_its_lane_moves_on(bus, Keyed):
    await bus.ensure_stream(Keyed, partitions=2)
    await publish_interleaved(bus, Keyed, keys=["C-1"], per_key=4)
    handled, dead = defaultdict(list), []

    async def handle(event, ctx):
        if event.n == 1:
            raise Reject("cannot be charged")
        handled[event.customer_id].append(event.n)

    async def sink(failure):
        dead.append(failure)

    sub = await bus.subscribe(Keyed, group="billing", handler=handle, ordered=True, dead_letters=sink)
    await wait_until(lambda: len(handled["C-1"]) == 3)
    await sub.stop()
    assert handled["C-1"] == [0, 2, 3] and len(dead) == 1


async def test_stopping_an_instance_mid_backlog_lets_another_continue_at_once(bus, Keyed):
    """The server drops a pull request whose inbox is gone, so a stopped lane does not wait for ack_wait.

    The first instance is stopped while its handler still holds event 2: one message in flight
    per lane, so nothing else can be on its way to it. A message the server had already sent
    when the unsubscribe arrived would be lost in transit and come back only after ack_wait
    (JetStream cannot cancel a pull request); holding event 2 keeps this test out of that race.
    """
    stream = (await bus.ensure_stream(Keyed)).config.name
    await publish_interleaved(bus, Keyed, keys=["C-1"], per_key=10)
    handled = defaultdict(list)
    third, release = asyncio.Event(), asyncio.Event()

    async def hold(event):
        if event.n == 2:
            third.set()
            await release.wait()

    first = await bus.subscribe(Keyed, group="billing", handler=recorder(handled, hold=hold), ordered=True, ack_wait=60)
    await asyncio.wait_for(third.wait(), 15)

    async def pull_requests_waiting():  # the server's count drops requests whose inbox is gone
        return (await bus.js.consumer_info(stream, first.durables[0])).num_waiting

    async def none_waiting():
        return await pull_requests_waiting() == 0

    assert await pull_requests_waiting() >= 1  # the first instance's pull request waits for event 3
    stopping = asyncio.create_task(first.stop())
    await wait_until(none_waiting, what="the server to drop the stopped instance's pull request")
    release.set()  # event 2 is acked after the server dropped the first instance's pull request
    await stopping
    second = await bus.subscribe(Keyed, group="billing", handler=recorder(handled), ordered=True, ack_wait=60)
    await wait_until(lambda: len(handled["C-1"]) == 10)  # well within ack_wait=60
    await second.stop()
    assert handled["C-1"] == list(range(10))


async def test_ordered_needs_concurrency_one_and_partitions_need_ordered(bus, Keyed):
    await bus.ensure_stream(Keyed, partitions=2)
    handle = recorder(defaultdict(list))
    with pytest.raises(ValueError, match="concurrency must be 1"):
        await bus.subscribe(Keyed, group="billing", handler=handle, ordered=True, concurrency=4)
    with pytest.raises(ValueError, match="pass ordered=True as well"):
        await bus.subscribe(Keyed, group="billing", handler=handle, partitions=[0])


async def test_a_plain_group_on_a_keyed_contract_reads_every_key_and_partition(bus, Keyed):
    info = await bus.ensure_stream(Keyed, partitions=4)
    await publish_interleaved(bus, Keyed, per_key=2)
    handled = defaultdict(list)
    sub = await bus.subscribe(Keyed, group="audit", handler=recorder(handled))
    await wait_until(lambda: sum(map(len, handled.values())) == len(KEYS) * 2)
    await sub.stop()
    config = (await bus.js.consumer_info(info.config.name, sub.durable)).config
    assert config.filter_subject == f"{Keyed.subject()}.>"
    assert sub.durable == f"audit__{Keyed.subject().replace('.', '_')}"


async def test_an_empty_key_is_refused_before_anything_is_sent(bus, Keyed):
    with pytest.raises(ContractError, match="is the event's key"):
        await bus.publish(Keyed(customer_id="", n=0))


@pytest.mark.parametrize("fast_ingest", [True, False])
async def test_publish_many_sends_each_keyed_event_to_its_key_and_partition(bus, Keyed, fast_ingest):
    await bus.ensure_stream(Keyed, partitions=4)
    events = [Keyed(customer_id=key, n=n) for n in range(5) for key in KEYS]
    acks = await bus.publish_many(events, fast_ingest=fast_ingest)  # fast-ingest acks are the batch's
    stream = stream_name_for(Keyed.subject())
    assert len(acks) == len(events) and (await bus.js.stream_info(stream)).state.messages == len(events)
    for seq, event in enumerate(events, start=1):  # stored in the order published
        stored = await bus.js.get_msg(stream, seq)
        assert stored.subject == f"{Keyed.subject()}.{partition_of(event.customer_id, 4)}.{event.customer_id}"
        assert stored.headers["Nats-Msg-Id"] == event.id


async def test_an_ordered_group_keeps_a_key_in_order_through_a_server_restart(server, unique):
    """Restarted after the key's third event: nothing lost, never out of order (a redelivery may repeat one)."""
    cls = keyed(unique)
    handled: list[int] = []
    third = asyncio.Event()

    async def handle(event, ctx):
        handled.append(event.n)
        if event.n == 2:
            third.set()

    async with EventBus.connect(service="restart", url=server.url) as bus:
        await bus.ensure_stream(cls, partitions=2)
        for n in range(10):
            await bus.publish(cls(customer_id="C-1", n=n))
        sub = await bus.subscribe(cls, group="billing", handler=handle, ordered=True, ack_wait=1)
        await asyncio.wait_for(third.wait(), 15)
        server.restart()  # here, between two events of the key, at a point the test decides
        await wait_until(lambda: sorted(set(handled)) == list(range(10)), timeout=30, what="all 10 after the restart")
        # The bus re-binds every lane after the reconnect; the key's events may all be handled first
        # (the durable consumer outlives the restart), so the re-bind is waited for, not raced.
        await wait_until(lambda: sum(lane.stats.rebinds for lane in sub.lanes.values()) >= 1, what="a lane re-bound")
        await sub.stop()
    assert handled == sorted(handled)  # in order; at most a repeat of an event whose ack the restart lost
