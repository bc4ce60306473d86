"""Optimistic concurrency: publish only if the subject's last sequence is still the one we read."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from _bus_helpers import HoldingProxy, wait_until
from nats.js.errors import NotFoundError

from buslib import ConcurrencyError, Event, EventBus
from buslib.subjects import stream_name_for


def account_event(unique: str) -> type[Event]:
    namespace = {"__annotations__": {"account_id": str, "amount": float}, "__module__": __name__}
    return type(Event)(
        "AccountDebited", (Event,), namespace, type=f"t{unique.lower()}.accounts.debited", version=1, key="account_id"
    )


@pytest.fixture
async def Debited(unique, bus):
    cls = account_event(unique)
    yield cls
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_stream(stream_name_for(cls.subject()))


@pytest.mark.parametrize("partitions", [None, 4])
async def test_the_expected_sequence_is_per_key_and_a_second_writer_gets_a_concurrency_error(bus, Debited, partitions):
    await bus.ensure_stream(Debited, partitions=partitions)
    assert await bus.last_sequence(Debited, key="A-1") == 0
    first = await bus.publish(Debited(account_id="A-1", amount=5), expect_last_subject_seq=0)
    other_key = await bus.publish(Debited(account_id="B-9", amount=1), expect_last_subject_seq=0)  # its own sequence
    assert (first.seq, other_key.seq) == (1, 2)
    seen = await bus.last_sequence(Debited, key="A-1")  # both writers read 1
    assert seen == 1
    await bus.publish(Debited(account_id="A-1", amount=7), expect_last_subject_seq=seen)  # writer 1 wins
    with pytest.raises(ConcurrencyError) as caught:
        await bus.publish(Debited(account_id="A-1", amount=9), expect_last_subject_seq=seen)  # writer 2 loses
    err = caught.value
    assert (err.subject, err.expected, err.actual) == (Debited.subject_for("A-1"), 1, 3)
    assert "Another writer published" in str(err) and "Nothing was stored" in str(err)
    assert (await bus.js.stream_info(stream_name_for(Debited.subject()))).state.messages == 3


async def test_publishing_the_same_event_again_with_the_same_expectation_is_a_duplicate_on_every_server(bus, Debited):
    """Server 2.11 answers "duplicate"; 2.12+ answers 10071 first. The bus gives the same answer on both."""
    await bus.ensure_stream(Debited)
    event = Debited(account_id="A-1", amount=5)
    first = await bus.publish(event, expect_last_subject_seq=0)
    again = await bus.publish(event, expect_last_subject_seq=0)
    assert (again.seq, again.duplicate) == (first.seq, True)


async def test_a_retry_after_a_timeout_that_was_stored_after_all_counts_as_done(nats_url, Debited):
    """The ack is held until the bus has retried; the stored first attempt is recognised as ours."""
    async with HoldingProxy(nats_url) as proxy:
        async with EventBus.connect(service="flaky", url=proxy.url, publish_timeout=0.4) as bus:
            await bus.ensure_stream(Debited)
            proxy.hold()
            task = asyncio.create_task(bus.publish(Debited(account_id="A-1", amount=5), expect_last_subject_seq=0))
            await wait_until(lambda: bus.publish_retries >= 1, what="the first attempt to time out")
            proxy.release()
            ack = await task
            assert (ack.seq, ack.duplicate) == (1, True)
            assert (await bus.js.stream_info(stream_name_for(Debited.subject()))).state.messages == 1


async def test_last_sequence_of_a_plain_subject_and_bad_expectations(bus, Order, stream):
    assert await bus.last_sequence(Order) == 0
    await bus.publish(Order(order_id="A-1"))
    assert await bus.last_sequence(Order.subject()) == 1
    for bad in (-1, "1", 1.0, True):
        with pytest.raises(ValueError, match="whole number >= 0"):
            await bus.publish(Order(order_id="A-2"), expect_last_subject_seq=bad)
    with pytest.raises(ValueError, match="key= is for keyed event types"):
        await bus.last_sequence(Order, key="x")
