"""Learners on one workshop server cannot see, touch or forge each other's things (real server, 127.0.0.1).

Learner A is account L01, learner B is L02. B owns a stream B_ONLY (3 messages, durable
consumer "workers"), a KV bucket "notes" and EX01_ORDERS. Everything A tries goes through
nats-py itself, not the kit: it is what any program holding A's password can do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from _bus_helpers import wait_until
from _workshop import raw_connect, served_room, urls
from nats.js.api import ConsumerConfig, StorageType

import buslib
from buslib.errors import ConnectError
from buslib.workshop import Limits, read_progress
from buslib.workshop.progress import RECORDS_PER_LEARNER

SMALL = Limits(
    max_mem=2 * 1024**2, max_file=4 * 1024**2, max_streams=5, max_consumers=6, max_connections=6, max_subscriptions=200
)


async def _b_owns_things(url: str) -> None:
    b = await raw_connect(url)
    jb = b.jetstream(timeout=5)
    await jb.add_stream(name="B_ONLY", subjects=["bonly.>"])
    for i in range(3):
        await jb.publish("bonly.x", b"B secret %d" % i)
    await jb.add_consumer("B_ONLY", ConsumerConfig(durable_name="workers", ack_wait=60))
    kv = await jb.create_key_value(bucket="notes")
    await kv.put("k", b"B's value")
    await jb.add_stream(name="EX01_ORDERS", subjects=["ex01.orders.>"])
    await jb.publish("ex01.orders.created", b"B order")
    await b.close()


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A served room of 3; B already owns its things."""
    folder = tmp_path_factory.mktemp("iso") / "room"
    with served_room(folder, learners=3):
        found = urls(folder)
        asyncio.run(_b_owns_things(found["L02"]))
        yield found


@pytest.fixture
async def a(room) -> AsyncIterator[object]:
    nc = await raw_connect(room["L01"])
    yield nc
    await nc.close()


@pytest.fixture
async def b(room) -> AsyncIterator[object]:
    nc = await raw_connect(room["L02"])
    yield nc
    await nc.close()


@pytest.fixture
async def instructor(room) -> AsyncIterator[object]:
    nc = await raw_connect(room["INSTRUCTOR"])
    yield nc
    await nc.close()


async def test_every_learner_has_their_own_ex01_orders(a, b):
    ja, jb = a.jetstream(), b.jetstream()
    await ja.add_stream(name="EX01_ORDERS", subjects=["ex01.orders.>"])
    await ja.purge_stream("EX01_ORDERS")
    for _ in range(2):
        await ja.publish("ex01.orders.created", b"A order")
    assert (await ja.stream_info("EX01_ORDERS")).state.messages == 2
    assert (await jb.stream_info("EX01_ORDERS")).state.messages >= 1
    assert (await jb.get_msg("EX01_ORDERS", 1)).data == b"B order"


async def test_a_lists_only_its_own_streams_and_buckets(a):
    await a.jetstream().add_stream(name="A_OWN", subjects=["aown.>"])
    names = {si.config.name for si in await a.jetstream().streams_info()}
    assert "A_OWN" in names and not names & {"B_ONLY", "KV_notes"}
    raw = json.loads((await a.request("$JS.API.STREAM.NAMES", b"", timeout=2)).data)
    assert "B_ONLY" not in raw["streams"] and "KV_notes" not in raw["streams"]


async def test_a_cannot_read_bs_stream_or_bucket(a):
    ja = a.jetstream(timeout=2)
    with pytest.raises(nats.js.errors.NotFoundError):
        await ja.stream_info("B_ONLY")
    with pytest.raises(nats.js.errors.NotFoundError):
        await ja.get_msg("B_ONLY", 1)
    reply = await a.request("$JS.API.STREAM.MSG.GET.B_ONLY", b'{"seq":1}', timeout=2)
    assert b"B secret" not in reply.data and json.loads(reply.data)["error"]["err_code"] == 10059
    with pytest.raises(nats.errors.NoRespondersError):
        await a.request("$JS.API.DIRECT.GET.B_ONLY", b'{"seq":1}', timeout=2)
    with pytest.raises(nats.js.errors.BucketNotFoundError):
        await ja.key_value("notes")


async def test_a_listening_to_everything_hears_nothing_of_b(a, b):
    heard: list[str] = []

    async def hear(msg) -> None:
        heard.append(msg.subject)

    everything = await a.subscribe(">", cb=hear)
    kv_changes = await a.subscribe("$KV.notes.>", cb=hear)
    await a.flush()
    jb = b.jetstream()
    await (await jb.key_value("notes")).put("k2", b"B's second value")
    await jb.publish("bonly.x", b"B secret 4")
    await b.publish("ex01.orders.created", b"B core message")
    await b.publish("buslib.progress", b'{"exercise": "00", "question": "q1", "status": "correct"}')
    await b.flush()
    await a.publish("a.control", b"")  # A's own message arrives: A's subscription works
    await wait_until(lambda: "a.control" in heard, what="A's own control message")
    await everything.unsubscribe()
    await kv_changes.unsubscribe()
    assert heard == ["a.control"]
    await jb.delete_msg("B_ONLY", 4)  # leave B_ONLY as the other tests expect it


async def test_a_cannot_publish_into_bs_stream_and_its_bucket_is_its_own(a, b):
    ja, jb = a.jetstream(timeout=2), b.jetstream()
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await ja.publish("bonly.x", b"from A")
    assert (await jb.stream_info("B_ONLY")).state.messages == 3
    kv_a = await ja.create_key_value(bucket="notes")
    await kv_a.put("k", b"A's value")
    assert (await (await jb.key_value("notes")).get("k")).value == b"B's value"
    await ja.delete_key_value("notes")
    assert (await (await jb.key_value("notes")).get("k")).value == b"B's value"


async def test_a_cannot_see_or_drive_bs_consumer(a, b):
    ja, jb = a.jetstream(timeout=2), b.jetstream()
    with pytest.raises(nats.js.errors.NotFoundError):
        await ja.consumer_info("B_ONLY", "workers")
    reply = await a.request("$JS.API.CONSUMER.LIST.B_ONLY", b"{}", timeout=2)
    assert json.loads(reply.data)["error"]["err_code"] == 10059
    with pytest.raises(nats.errors.NoRespondersError):
        await a.request("$JS.API.CONSUMER.MSG.NEXT.B_ONLY.workers", b'{"batch":1}', timeout=2)
    # B holds a message un-acked; A sends +ACK to B's ack subject, in A's own account
    pull = await jb.pull_subscribe_bind("workers", stream="B_ONLY")
    [held] = await pull.fetch(1, timeout=5)
    await a.publish(held.reply, b"+ACK")
    await a.flush()
    for _ in range(5):  # several round trips to B's server: the count never drops
        assert (await jb.consumer_info("B_ONLY", "workers")).num_ack_pending == 1
    await held.nak()


async def test_a_cannot_delete_bs_stream_consumer_or_bucket(a, b):
    ja, jb = a.jetstream(timeout=2), b.jetstream()
    with pytest.raises(nats.js.errors.NotFoundError):
        await ja.delete_stream("B_ONLY")
    with pytest.raises(nats.js.errors.NotFoundError):
        await ja.delete_consumer("B_ONLY", "workers")
    with pytest.raises(nats.js.errors.NotFoundError):
        await ja.delete_stream("KV_notes")
    await ja.add_stream(name="EX01_ORDERS", subjects=["ex01.orders.>"])
    await ja.delete_stream("EX01_ORDERS")  # A's own: B's is untouched
    assert (await jb.stream_info("EX01_ORDERS")).state.messages >= 1
    assert (await jb.consumer_info("B_ONLY", "workers")).config.durable_name == "workers"


async def test_a_cannot_read_the_instructors_records_or_the_servers_stats(a, instructor):
    with pytest.raises(nats.js.errors.NotFoundError):
        await a.jetstream(timeout=2).stream_info("PROGRESS")
    with pytest.raises(nats.errors.NoRespondersError):
        await a.request("$SYS.REQ.SERVER.PING.VARZ", b"", timeout=2)
    # and the instructor, for their part, sees only their own stream
    assert [si.config.name for si in await instructor.jetstream().streams_info()] == ["PROGRESS"]


async def test_a_cannot_record_progress_as_b(room, a, instructor):
    forged = {"learner": "learner02", "account": "L02", "exercise": "05", "question": "q3", "status": "correct"}
    payload = json.dumps({**forged, "title": "forged", "time": 1.0}).encode()
    await a.publish("buslib.progress", payload)
    await a.publish("progress.L02", payload)  # stays in A's own account: nobody there listens
    await a.publish("progress.L02.buslib.progress", payload)
    await a.flush()

    async def forged_records() -> list:
        return [r for r in await read_progress(instructor) if r.key == "05/q3"]

    found = await wait_until(forged_records, what="A's record in PROGRESS")
    assert [r.account for r in found] == ["L01"]  # the server says who sent it, whatever the payload claims
    assert found[0].time > 1e9  # and when: the server's clock, not the payload's "time": 1.0


async def test_a_flooding_progress_only_pushes_out_its_own_records(a, b, instructor):
    await b.publish("buslib.progress", b'{"exercise": "00", "question": "q1", "status": "correct", "time": 2}')
    await b.flush()
    js = instructor.jetstream()

    async def counts() -> dict[str, int]:
        return (await js.stream_info("PROGRESS", subjects_filter=">")).state.subjects or {}

    # A floods in batches until its subject is full. A core publish that a busy server cannot
    # store in time is dropped (a record is best effort), so the loop sends until the cap is
    # reached rather than a fixed number; bounded at 40 batches of 100.
    sent = 0
    for _ in range(40):
        for _ in range(100):
            await a.publish("buslib.progress", b'{"exercise": "99", "question": "q%d", "status": "error"}' % sent)
            sent += 1
        await a.flush()
        if (await counts()).get("progress.L01", 0) >= RECORDS_PER_LEARNER and sent > RECORDS_PER_LEARNER:
            break
    found = await counts()
    assert found["progress.L01"] == RECORDS_PER_LEARNER  # full, and never more: A's oldest went first
    assert found["progress.L02"] >= 1
    assert any(r.account == "L02" and r.key == "00/q1" for r in await read_progress(instructor))


# -- limits: filling one account does not affect another -------------------------------------
@pytest.fixture(scope="module")
def small_room(tmp_path_factory) -> Iterator[dict[str, str]]:
    folder: Path = tmp_path_factory.mktemp("limits") / "room"
    with served_room(folder, learners=2, limits=SMALL):
        yield urls(folder)


async def test_filling_a_leaves_b_untouched(small_room):
    a = await raw_connect(small_room["L01"])
    b = await raw_connect(small_room["L02"])
    ja, jb = a.jetstream(timeout=5), b.jetstream(timeout=5)
    try:
        with pytest.raises(nats.js.errors.APIError):  # more than the account may ever store
            await ja.add_stream(name="BIG", subjects=["big.>"], max_bytes=64 * 1024**2)
        with pytest.raises(nats.js.errors.APIError):
            await ja.add_stream(name="BIGM", subjects=["bigm.>"], storage=StorageType.MEMORY, max_bytes=64 * 1024**2)
        for i in range(SMALL.max_streams):
            await ja.add_stream(name=f"S{i}", subjects=[f"s{i}.>"])
        with pytest.raises(nats.js.errors.BadRequestError) as streams:
            await ja.add_stream(name="ONE_TOO_MANY", subjects=["more.>"])
        assert streams.value.err_code == 10027  # maximum number of streams reached
        for i in range(SMALL.max_consumers):
            await ja.add_consumer("S0", ConsumerConfig(durable_name=f"c{i}"))
        with pytest.raises(nats.js.errors.BadRequestError) as consumers:
            await ja.add_consumer("S0", ConsumerConfig(durable_name="one_too_many"))
        assert consumers.value.err_code == 10026  # maximum consumers limit reached
        payload = b"x" * 65536
        refused = None
        for _ in range(2 * SMALL.max_file // len(payload)):  # bounded: twice what fits
            try:
                await ja.publish("s1.fill", payload)
            except nats.js.errors.APIError as err:
                refused = err
                break
        assert refused is not None, "A's file storage never filled up"
        # B, while A is full: streams, messages, consumers as usual
        await jb.add_stream(name="B2", subjects=["b2.>"])
        for _ in range(20):
            await jb.publish("b2.x", payload)
        for i in range(3):
            await jb.add_consumer("B2", ConsumerConfig(durable_name=f"bc{i}"))
        info = await jb.account_info()
        assert (info.streams, info.consumers) == (1, 3) and info.storage >= 20 * len(payload)
    finally:
        await a.close()
        await b.close()


async def test_a_at_its_connection_limit_gets_a_clear_error_and_b_still_connects(small_room):
    held = [await raw_connect(small_room["L01"]) for _ in range(SMALL.max_connections)]
    try:
        with pytest.raises(ConnectError, match="Kernel > Shut Down Kernel"):
            await buslib.connect(small_room["L01"])
        other = await buslib.connect(small_room["L02"])
        assert other.is_connected
        await other.close()
    finally:
        for nc in held:
            await nc.close()
