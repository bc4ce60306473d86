"""The dead-letter queue as the EventBus's sink: rejections, exhausted retries, bad input
(with a hypothesis fuzz of the decode path), and a failing sink that loses nothing."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buslib import Event, EventBus, Reject, Retry
from buslib.dlq import DeadLetterQueue
from buslib.teaching import wait_until


class DlqTestOrder(Event, type="dlqtest.order"):
    order_id: str
    amount: float


class FuzzItem(Event, type="dlqfuzz.item"):
    name: str
    qty: int


@pytest.fixture
async def bus(nats_url, unique):
    async with EventBus.connect(service="dlq-tests", url=nats_url) as b:
        await b.ensure_stream(DlqTestOrder, name=f"DLQTEST{unique}")
        yield b
        await b.js.delete_stream(f"DLQTEST{unique}")


@pytest.fixture
async def dlq(bus, unique):
    queue = await DeadLetterQueue(bus, stream=f"DL{unique}", watch=[f"DLQTEST{unique}"]).setup()
    yield queue
    await bus.js.delete_stream(queue.stream)
    await bus.js.delete_consumer(queue.advisory_stream, queue.advisory_consumer)


async def test_rejected_exhausted_and_flaky_messages_end_where_they_should(bus, dlq):
    handled = []

    async def handle(event: DlqTestOrder, ctx) -> None:
        if event.amount < 0:
            raise Reject(f"amount must be positive, got {event.amount}")
        if event.order_id == "boom":
            raise RuntimeError("payment service down")
        if event.order_id == "flaky" and ctx.num_delivered < 2:
            raise TimeoutError("try again")
        handled.append((event.order_id, ctx.num_delivered))

    sub = await bus.subscribe(
        DlqTestOrder,
        group="billing",
        handler=handle,
        retry=Retry(max_deliver=3, delays=[0.05], jitter=0),
        dead_letters=dlq,
    )
    for order_id, amount in [("neg", -5), ("boom", 1), ("flaky", 1), ("ok", 2)]:
        await bus.publish(DlqTestOrder(order_id=order_id, amount=amount))
    await wait_until(lambda: len(handled) == 2 and sub.stats.dead_lettered == 2, timeout=20, what="2 handled, 2 dead")

    assert sorted(handled) == [("flaky", 2), ("ok", 1)]
    entries = {e.kind: e for e in await dlq.list()}
    assert set(entries) == {"rejected", "exhausted"}
    assert entries["rejected"].reason == "amount must be positive, got -5.0"
    assert entries["rejected"].num_delivered == 1  # no retries for a rejection
    assert entries["exhausted"].reason == "RuntimeError: payment service down"
    assert entries["exhausted"].num_delivered == 3
    assert entries["exhausted"].first_failure_at <= entries["exhausted"].last_failure_at
    assert entries["exhausted"].group == "billing" and entries["exhausted"].consumer == sub.durable
    assert entries["exhausted"].trace_id and len(entries["exhausted"].trace_id) == 32
    await sub.stop()


@pytest.mark.parametrize(
    ("data", "headers", "reason"),
    [
        (b"not json at all", {"ce-type": "dlqtest.order"}, "DecodeError: The payload is not valid JSON"),
        (b'{"order_id": 5}', {"ce-type": "dlqtest.order"}, "DecodeError: The payload does not fit DlqTestOrder"),
        (
            b'{"order_id": "A", "amount": 1}',
            {"ce-type": "dlqtest.nope"},
            "ContractError: No event class for type 'dlqtest.nope' version 1",
        ),
        (b'{"order_id": "A", "amount": 1}', {}, "DecodeError: The message has no ce-type header"),
        (
            b'{"order_id": "A", "amount": 1}',
            {"ce-type": "dlqtest.order", "Bus-Event-Version": "one"},
            "DecodeError: The Bus-Event-Version header 'one' is not a whole number",
        ),
        (  # a digit to str.isdigit(), but not to int(): found by the fuzz test below
            b'{"order_id": "A", "amount": 1}',
            {"ce-type": "dlqtest.order", "Bus-Event-Version": "\u00b2"},
            "DecodeError: The Bus-Event-Version header '\u00b2' is not a whole number",
        ),
    ],
    ids=["not-json", "wrong-shape", "unknown-type", "missing-headers", "bad-version-header", "superscript-version"],
)
async def test_bad_input_becomes_a_dead_letter_with_a_precise_reason_and_the_worker_goes_on(
    bus, dlq, data, headers, reason
):
    handled = []

    async def handle(event, ctx) -> None:
        handled.append(event)

    # event_type=Event: the ce-type header says which class to decode into
    sub = await bus.subscribe("dlqtest.>", group="any", event_type=Event, handler=handle, dead_letters=dlq)
    await bus.js.publish(DlqTestOrder.subject(), data, headers=headers)
    await bus.publish(DlqTestOrder(order_id="good", amount=1))
    await wait_until(lambda: handled and sub.stats.dead_lettered == 1, what="one dead letter, then a good event")

    (entry,) = await dlq.list()
    assert entry.kind == "undecodable" and entry.reason.startswith(reason)
    assert entry.data == data and entry.num_delivered == 1
    assert [e.order_id for e in handled] == ["good"] and sub.running
    await sub.stop()


async def test_a_failing_sink_loses_nothing(bus, dlq):
    """The DLQ stream is gone when the first rejection happens: the bus naks, a retry succeeds."""

    async def handle(event, ctx) -> None:
        raise Reject("never valid")

    await bus.js.delete_stream(dlq.stream)
    sub = await bus.subscribe(
        DlqTestOrder,
        group="billing",
        handler=handle,
        retry=Retry(max_deliver=4, delays=[0.3], jitter=0),
        dead_letters=dlq,
    )
    await bus.publish(DlqTestOrder(order_id="x", amount=1))
    await wait_until(lambda: sub.stats.sink_errors >= 1, what="the sink to fail")
    await dlq.setup()
    await wait_until(lambda: sub.stats.dead_lettered == 1, what="the retried rejection to be dead-lettered")

    (entry,) = await dlq.list()
    assert entry.reason == "never valid" and entry.num_delivered >= 2
    await sub.stop()


_headers_text = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=":"), max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
_payloads = st.one_of(
    st.binary(max_size=120),
    _json.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda n, q: FuzzItem(name=n, qty=q).to_json(), st.text(max_size=10), st.integers(-(10**6), 10**6)),
    st.fixed_dictionaries({"name": _json, "qty": _json}).map(lambda v: json.dumps(v).encode()),
)


_random_messages = st.tuples(
    _payloads,
    st.one_of(st.none(), st.sampled_from(["dlqfuzz.item", "dlqfuzz.other", "", " dlqfuzz.item"]), _headers_text),
    st.one_of(st.none(), st.sampled_from(["1", "2", "01", "x", "-1", ""]), _headers_text),
)
_valid_messages = st.tuples(  # so that about half the messages should be processed
    st.builds(lambda n, q: FuzzItem(name=n, qty=q).to_json(), st.text(max_size=10), st.integers(-(10**6), 10**6)),
    st.just("dlqfuzz.item"),
    st.sampled_from([None, "1"]),
)


def _expect_decodes(data: bytes, headers: dict[str, str]) -> bool:
    """The oracle: decodable iff the type header names FuzzItem v1 and the payload fits it."""
    ce_type = headers.get("ce-type", "").strip()
    version = headers.get("Bus-Event-Version", "1").strip()
    if ce_type != "dlqfuzz.item" or not (version.isascii() and version.isdigit()) or int(version) != 1:
        return False
    try:
        FuzzItem.model_validate_json(data)
        return True
    except ValueError:
        return False


@pytest.mark.slow
def test_fuzzed_messages_are_processed_or_dead_lettered_and_the_worker_never_dies(nats_url, unique):
    """A few hundred random payloads and type headers through one real subscription."""
    loop = asyncio.new_event_loop()
    outcomes: dict[int, str] = {}
    stream = f"FUZZ{unique}"

    async def start():
        bus = await EventBus.connect(service="fuzz", url=nats_url)
        await bus.ensure_stream(FuzzItem, name=stream)
        dlq = await DeadLetterQueue(
            bus,
            stream=f"FUZZDL{unique}",
            alert_subject=None,
            on_dead_letter=lambda e: outcomes.setdefault(e.stream_seq, "dead"),
        ).setup()

        async def handle(event, ctx) -> None:
            assert isinstance(event, FuzzItem)
            outcomes.setdefault(ctx.stream_seq, "processed")

        sub = await bus.subscribe(
            "dlqfuzz.>",
            group="fuzz",
            event_type=Event,
            handler=handle,
            dead_letters=dlq,
            retry=Retry(max_deliver=2, delays=[0.05]),
        )
        return bus, dlq, sub

    bus, dlq, sub = loop.run_until_complete(start())
    expected: dict[int, str] = {}

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(message=st.one_of(_valid_messages, _random_messages))
    def one_message(message: tuple[bytes, str | None, str | None]) -> None:
        data, ce_type, version = message
        headers = {k: v for k, v in (("ce-type", ce_type), ("Bus-Event-Version", version)) if v is not None}

        async def run() -> None:
            ack = await bus.js.publish(FuzzItem.subject(), data, headers=headers or None)
            expected[ack.seq] = "processed" if _expect_decodes(data, headers) else "dead"
            await wait_until(
                lambda: ack.seq in outcomes, timeout=15, interval=0.002, what=f"message {ack.seq} handled or dead"
            )
            assert outcomes[ack.seq] == expected[ack.seq], (data, headers)
            assert sub.running

        loop.run_until_complete(run())

    try:
        one_message()
        assert len(expected) >= 300
        assert outcomes == expected  # every message exactly one outcome, the right one
        dead = sum(1 for v in expected.values() if v == "dead")
        assert 0 < dead < len(expected)  # the fuzz really exercised both paths
        assert loop.run_until_complete(dlq.count()) == dead
        assert sub.stats.undecodable == dead and sub.stats.acked == len(expected) - dead
    finally:

        async def stop() -> None:
            await sub.stop()
            await bus.js.delete_stream(stream)
            await bus.js.delete_stream(dlq.stream)
            await bus.js.delete_consumer(dlq.advisory_stream, dlq.advisory_consumer)
            await bus.close()

        loop.run_until_complete(stop())
        loop.close()
