"""EventBus publishing against a real server: streams, dedup, retries, publish_many."""

from __future__ import annotations

import asyncio

import pytest
from _bus_helpers import HoldingProxy, make_event, wait_until
from nats.errors import MaxPayloadError
from nats.js.api import DiscardPolicy, StorageType
from nats.js.errors import NotFoundError

from buslib import ConfigDriftError, EventBus, PublishError, SubjectError, tracing
from buslib.subjects import stream_name_for


@pytest.fixture
async def stream(bus, Order):
    """The conventional stream name for Order; deleted after the test."""
    name = stream_name_for(Order.subject())
    yield name
    try:
        await bus.js.delete_stream(name)
    except NotFoundError:  # the test never created it
        pass


async def test_first_publish_creates_the_conventional_stream(bus, Order, stream):
    ack = await bus.publish(Order(order_id="A-1"))
    info = await bus.js.stream_info(stream)
    assert ack.stream == stream == Order.subject().split(".")[0].upper()
    assert info.config.subjects == [f"{Order.subject().split('.')[0]}.>"]
    assert info.config.storage == StorageType.FILE
    assert info.config.duplicate_window == 120
    assert info.state.messages == 1


async def test_publish_sets_msg_id_trace_and_cloudevents_headers(bus, Order, stream):
    event = Order(order_id="A-2")
    with tracing.trace(None) as span:
        ack = await bus.publish(event)
    stored = await bus.js.get_msg(stream, ack.seq)
    assert stored.headers["Nats-Msg-Id"] == event.id
    assert stored.headers["traceparent"].split("-")[1] == span.trace_id
    assert stored.headers["ce-type"] == Order.event_type
    assert stored.headers["ce-source"] == "test-bus"  # the bus fixture's service name
    assert Order.model_validate_json(stored.data) == event


async def test_publish_outside_a_trace_starts_a_new_trace_per_event(bus, Order, stream):
    first, second = await bus.publish(Order(order_id="1")), await bus.publish(Order(order_id="2"))
    ids = [(await bus.js.get_msg(stream, a.seq)).headers["traceparent"].split("-")[1] for a in (first, second)]
    assert ids[0] != ids[1]


async def test_publishing_the_same_event_twice_stores_it_once(bus, Order, stream):
    event = Order(order_id="A-3")
    first, again = await bus.publish(event), await bus.publish(event)
    assert first.duplicate is None and again.duplicate is True
    assert again.seq == first.seq
    assert (await bus.js.stream_info(stream)).state.messages == 1


async def test_publish_retry_after_timeout_stores_exactly_once(nats_url, Order, stream):
    """The ack is held until the first attempt timed out and the bus retried; the retry (same
    Nats-Msg-Id) is recognised as a duplicate."""
    async with HoldingProxy(nats_url) as proxy:
        async with EventBus.connect(service="flaky", url=proxy.url, publish_timeout=0.5) as bus:
            await bus.ensure_stream(Order)
            proxy.hold()
            publishing = asyncio.create_task(bus.publish(Order(order_id="A-4")))
            await wait_until(
                lambda: bus.publish_retries >= 1 or publishing.done(), what="the first attempt to time out"
            )
            proxy.release()
            ack = await publishing
            assert bus.publish_retries >= 1
            assert ack.duplicate is True  # the first attempt was stored although it timed out
            assert (await bus.js.stream_info(stream)).state.messages == 1


async def test_publish_gives_up_after_bounded_attempts_with_a_clear_error(nats_url, Order, stream):
    async with HoldingProxy(nats_url) as proxy:
        async with EventBus.connect(service="flaky", url=proxy.url, publish_timeout=0.2, publish_attempts=2) as bus:
            await bus.ensure_stream(Order)
            proxy.hold()
            with pytest.raises(PublishError, match="not confirmed after 2 attempts.*safe"):
                await bus.publish(Order(order_id="A-5"))
            proxy.release()


async def test_publish_many_windowed_stores_each_event_once_and_returns_exact_acks_in_order(bus, Order, stream):
    events = [Order(order_id=f"M-{i}") for i in range(500)]
    acks = await bus.publish_many(events, fast_ingest=False)
    assert [a.seq for a in acks] == list(range(1, 501))
    assert (await bus.js.stream_info(stream)).state.messages == 500
    again = await bus.publish_many(events, fast_ingest=False)  # the same events again: recognised by id
    assert all(a.duplicate for a in again) and [a.seq for a in again] == [a.seq for a in acks]
    assert (await bus.js.stream_info(stream)).state.messages == 500
    last = await bus.js.get_msg(stream, 500)
    assert last.headers["Nats-Msg-Id"] == events[-1].id


async def test_publish_many_retries_unanswered_publishes_and_stores_each_once(nats_url, Order, stream):
    async with HoldingProxy(nats_url) as proxy:
        async with EventBus.connect(service="flaky", url=proxy.url, publish_timeout=0.4) as bus:
            await bus.ensure_stream(Order)
            events = [Order(order_id=f"R-{i}") for i in range(200)]
            proxy.hold()  # the acks wait in the relay until the bus has given up on them and retried
            publishing = asyncio.create_task(bus.publish_many(events, fast_ingest=False))
            await wait_until(lambda: bus.publish_retries >= 1 or publishing.done(), what="a retry")
            proxy.release()
            acks = await publishing
            assert bus.publish_retries >= 1
            assert [a.seq for a in acks] == list(range(1, 201))
            assert (await bus.js.stream_info(stream)).state.messages == 200


@pytest.mark.parametrize("fast_ingest", [True, False], ids=["fast-ingest", "windowed"])
async def test_publish_many_reports_progress_as_the_acks_arrive(bus, Order, stream, fast_ingest):
    seen: list[int] = []
    await bus.publish_many(
        [Order(order_id=f"P-{i}") for i in range(1200)], fast_ingest=fast_ingest, progress=seen.append
    )
    assert seen == sorted(set(seen)) and seen[-1] == 1200  # growing, up to every event
    if fast_ingest and await bus.api_level() >= 4:  # a fast-ingest batch: a flow ack every 500, then the final ack
        assert seen == [500, 1000, 1200]
    else:  # windowed: each ack
        assert seen == list(range(1, 1201))


async def test_publish_many_error_names_the_first_event_not_stored(bus, Order, stream):
    await bus.ensure_stream(Order, max_msgs=5, discard=DiscardPolicy.NEW)
    events = [Order(order_id=f"F-{i}") for i in range(8)]
    with pytest.raises(PublishError) as caught:
        await bus.publish_many(events, fast_ingest=False)
    message = str(caught.value)
    assert "stored 5 of 8" in message
    assert f"#5 (id {events[5].id})" in message
    assert (await bus.js.stream_info(stream)).state.messages == 5


async def test_an_event_too_large_with_its_headers_is_refused_with_a_clear_error_and_the_connection_stays(
    bus, Order, stream
):
    """nats-py checks only the payload; the server counts the headers too and would close the connection."""
    Big = make_event(Order.event_type.replace(".placed", ".big"), "Big", order_id=str, blob=str)  # same stream
    event = Big(order_id="B-1", blob="x" * (bus.nc.max_payload - 400))  # the payload fits, not with the headers
    with pytest.raises(
        PublishError, match=r"bytes with its headers, more than the server accepts.*Make the event smaller"
    ):
        await bus.publish(event)
    with pytest.raises(MaxPayloadError):
        await bus.publish_many([Order(order_id="small"), event])
    assert bus.nc.is_connected and not bus.nc.is_closed
    assert (await bus.publish(Order(order_id="after"))).stream == stream


async def test_publishing_something_that_is_not_an_event_raises_type_error(bus):
    with pytest.raises(TypeError, match="buslib.Event instance, got dict"):
        await bus.publish({"order_id": "A-1"})
    with pytest.raises(TypeError, match="item 1"):
        await bus.publish_many([make_event("tnotsent.order")(order_id="x"), b"raw"])


async def test_publish_without_a_stream_and_auto_create_off_explains_how_to_create_one(nats_url, Order):
    async with EventBus.connect(service="strict", url=nats_url, auto_create_streams=False) as bus:
        with pytest.raises(PublishError, match=r"(?s)No stream stores subject .*ensure_stream"):
            await bus.publish(Order(order_id="A-6"))


async def test_stream_config_drift_raises_and_names_the_field(bus, Order, stream):
    await bus.ensure_stream(Order)
    assert (await bus.ensure_stream(Order)).config.name == stream  # same config: idempotent
    with pytest.raises(
        ConfigDriftError, match=r"duplicate_window: the server has 120, this code asks for 60"
    ) as caught:
        await bus.ensure_stream(Order, duplicate_window=60)
    assert "update_stream" in str(caught.value) and "delete_stream" in str(caught.value)


async def test_bad_subjects_are_refused_with_a_clear_error(bus):
    for bad in ["orders..created", "orders created", "", "orders.>.x"]:
        with pytest.raises(SubjectError, match="not a valid subject|non-empty"):
            await bus.ensure_stream(bad)
    with pytest.raises(SubjectError, match="starts with a wildcard"):
        await bus.ensure_stream("*.created")


async def test_publish_many_fast_ingest_stores_each_event_once(bus, Order, stream):
    """Fast-ingest batches by default where the server has them (API level 4+), else windowed."""
    info = await bus.ensure_stream(Order)
    events = [Order(order_id=f"FI-{i}") for i in range(1200)]
    acks = await bus.publish_many(events)
    assert len(acks) == 1200 and all(a.stream == stream for a in acks)
    assert (await bus.js.stream_info(stream)).state.messages == 1200
    if await bus.api_level() >= 4:
        assert info.config.allow_batched  # ensure_stream enables batching where it exists
        assert acks[0].batch_id and acks[-1].seq == 1200 and acks[-1].batch_size == 1200
    else:
        assert not info.config.allow_batched and [a.seq for a in acks] == list(range(1, 1201))
    again = await bus.publish_many(events[:700] + [Order(order_id="FI-new")])
    assert len(again) == 701
    assert (await bus.js.stream_info(stream)).state.messages == 1201  # the repeats were dropped by id
    newest = await bus.js.get_msg(stream, 1201)
    assert Order.model_validate_json(newest.data).order_id == "FI-new"


async def test_publish_many_fast_ingest_error_names_the_first_event_not_stored(bus, Order, stream):
    await bus.ensure_stream(Order, max_msgs=5, discard=DiscardPolicy.NEW)
    events = [Order(order_id=f"FF-{i}") for i in range(9)]
    with pytest.raises(PublishError) as caught:
        await bus.publish_many(events, fast_ingest=True)
    assert caught.value.index == 5 and caught.value.stored == 5 and caught.value.event_id == events[5].id
    assert "maximum messages exceeded" in str(caught.value)
    assert (await bus.js.stream_info(stream)).state.messages == 5


def test_the_bus_header_parser_reads_headers_exactly_like_nats_py():
    from nats.aio.client import Client

    from buslib._nats.headers import parse_header_lines

    samples = [
        b"ce-id: 1\r\nce-type: orders.created\r\ntraceparent: 00-ab-cd-01\r\n\r\n",
        b"Name:Value\r\nTabbed:\tvalue \r\n\r\n",
        b"bad key: dropped\r\nok: kept\r\n",
        b"caf\xc3\xa9: non-ascii name dropped\r\nvalue: caf\xc3\xa9 \xff\r\n",
        b"no colon line\r\n: empty name\r\nx: a: b\r\n",
        b"ctl\x1c: name with a separator char\r\nv: \x1cvalue\x1f \x0b\r\n",
        b"",
    ]
    for raw in samples:
        assert parse_header_lines(raw) == Client._parse_header_lines(raw), raw


def test_header_blocks_are_what_nats_py_would_send_and_line_breaks_fall_back():
    from nats.aio.client import Client

    from buslib._nats.headers import header_block

    headers = {"ce-id": "1", "traceparent": "00-ab-cd-01", "Nats-Msg-Id": "x:y"}
    block = header_block(headers)
    assert block.startswith(b"NATS/1.0\r\n") and block.endswith(b"\r\n\r\n")
    assert Client._parse_header_lines(block[len(b"NATS/1.0\r\n") :]) == headers
    assert header_block({"a": "one\ntwo"}) == b"" and header_block({"a": "one\rtwo"}) == b""


@pytest.mark.parametrize("fast_ingest", [True, False], ids=["fast-ingest", "windowed"])
async def test_publish_many_sends_the_same_headers_as_publish_for_every_kind_of_event(
    bus, nats_url, unique, fast_ingest
):
    """publish_many renders each type's headers once; the result must equal what publish sends."""
    from buslib.contracts import downcast

    prefix = f"tmany{unique.lower()}"
    Plain = make_event(f"{prefix}.plain", "Plain")
    NewForm = make_event(f"{prefix}.shape", "NewForm", event_version=2, grams=int)
    OldForm = make_event(f"{prefix}.shape", "OldForm", event_version=1, kg=float)
    downcast(NewForm, to=OldForm)(lambda new: OldForm(kg=new.grams / 1000))  # dual publishing
    name = f"TMANY{unique}"
    await bus.ensure_stream(f"{prefix}.>", name=name, subjects=[f"{prefix}.>"])
    odd = Plain(order_id="odd", id="id-with\nline-break")  # cannot go into a header as it is
    events = [Plain(order_id="a"), NewForm(grams=1500), odd, Plain(order_id="b")]
    with tracing.trace() as trace:
        acks = await bus.publish_many(events, fast_ingest=fast_ingest)
        reference = await bus.publish(Plain(order_id="ref"))
    assert len(acks) == 4 and all(a.stream == name for a in acks)
    stored = [await bus.js.get_msg(name, seq) for seq in range(1, reference.seq + 1)]
    assert [m.subject for m in stored] == [
        Plain.subject(),
        NewForm.subject(),
        OldForm.subject(),
        Plain.subject(),
        Plain.subject(),
        Plain.subject(),
    ]
    first, new, old, with_odd_id, second, ref = stored
    ids = ("ce-id", "Nats-Msg-Id")
    same = {k: v for k, v in ref.headers.items() if k not in ids}
    for msg, event in [(first, events[0]), (second, events[3])]:
        assert {k: v for k, v in msg.headers.items() if k not in ids} == same
        assert msg.headers["ce-id"] == msg.headers["Nats-Msg-Id"] == event.id
        assert msg.data == event.to_json()
    assert trace.trace_id in first.headers["traceparent"]
    assert (
        new.headers["Nats-Msg-Id"] == events[1].id
        and old.headers["Nats-Msg-Id"] == f"{events[1].id}:{OldForm.subject()}"
    )
    assert old.headers["Bus-Downcast-From"] == "2" and OldForm.model_validate_json(old.data).kg == 1.5
    assert with_odd_id.headers["ce-id"] == "id-with line-break"  # cleaned by nats-py, as publish would
    await bus.js.delete_stream(name)


async def test_publish_many_by_default_retries_a_stalled_batch_and_stores_each_once(nats_url, Order, stream):
    async with HoldingProxy(nats_url) as proxy:
        async with EventBus.connect(service="flaky", url=proxy.url, publish_timeout=0.4) as bus:
            await bus.ensure_stream(Order)
            events = [Order(order_id=f"S-{i}") for i in range(3000)]
            proxy.hold()  # the batch's flow acks wait in the relay: the client sees a stall
            publishing = asyncio.create_task(bus.publish_many(events))
            await wait_until(lambda: bus.publish_retries >= 1 or publishing.done(), what="a retry")
            proxy.release()
            acks = await publishing
            assert bus.publish_retries >= 1 and len(acks) == 3000
            assert (await bus.js.stream_info(stream)).state.messages == 3000


async def test_publish_many_writes_what_it_cannot_frame_itself_through_nats_py_in_order(bus, unique):
    from nats.errors import MaxPayloadError

    from buslib._nats.fastpath import publish_frames
    from buslib._nats.headers import header_block
    from buslib._nats.protocol import hpub_frame

    sub = await bus.nc.subscribe(f"tblocks{unique}.>")
    headers = {"a": "one\ntwo"}  # a line break: nats-py encodes (and cleans) it
    await publish_frames(
        bus.nc,
        [
            hpub_frame(f"tblocks{unique}.x".encode(), b"", header_block({"k": "v"}), b"1"),
            (f"tblocks{unique}.y", "", b"2", header_block(headers), headers),
            (f"tblocks{unique}.z", "", b"3", header_block({"k": "w"}), None),  # headers read back from the block
            hpub_frame(f"tblocks{unique}.x".encode(), b"", header_block({"k": "u"}), b"4"),
        ],
    )
    got = [await sub.next_msg(timeout=2) for _ in range(4)]
    assert [(m.data, m.headers) for m in got] == [
        (b"1", {"k": "v"}),
        (b"2", {"a": "one two"}),
        (b"3", {"k": "w"}),
        (b"4", {"k": "u"}),
    ]
    with pytest.raises(MaxPayloadError):  # too large: nats-py's own error
        big = b"x" * (bus.nc.max_payload + 1)
        await publish_frames(bus.nc, [(f"tblocks{unique}.z", "", big, header_block({"k": "v"}), None)])
