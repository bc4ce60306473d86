"""Every server check accepts the right state and rejects a plausible wrong one with a specific message."""

from __future__ import annotations

import pytest
from nats.js.api import StorageType

from buslib.exercises.checks import (
    CallsStoreOnce,
    ConsumerConfigIs,
    MessageAt,
    MessagesStored,
    StreamHas,
    delete_streams,
    subject_matches,
)
from buslib.exercises.core import Context, Fail, Status


@pytest.fixture
async def ctx():
    context = Context()
    yield context
    await context.close()


@pytest.fixture
async def stream(js, unique):
    name = f"CHK_{unique}"
    await js.add_stream(name=name, subjects=[f"chk{unique}.>"], storage=StorageType.FILE, max_msgs=5)
    yield name, f"chk{unique}"
    await delete_streams(js, name)


def test_subject_matches_wildcards():
    assert subject_matches("a.>", "a.b.c") and subject_matches("a.*.c", "a.b.c") and subject_matches("a.b", "a.b")
    assert not subject_matches("a.>", "a") and not subject_matches("a.*", "a.b.c") and not subject_matches("a.b", "a.c")


async def test_stream_has_accepts_the_configured_stream(ctx, stream):
    name, prefix = stream
    await StreamHas(name, covers=[f"{prefix}.x", f"{prefix}.y.z"], storage="file", max_msgs=5).verify(ctx)


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ({"covers": ["other.x"]}, r"captures \['chk\w+\.>'\], which does not cover 'other.x'"),
        ({"storage": "memory"}, r"uses storage='file'; expected 'memory'"),
        ({"max_msgs": 10}, r"has max_msgs=5; expected max_msgs=10"),
        ({"min_duplicate_window": 600}, r"duplicate_window=120.0 s; expected at least 600 s"),
    ],
)
async def test_stream_has_rejects_a_wrong_config_saying_what_differs(ctx, stream, expect, message):
    with pytest.raises(Fail, match=message):
        await StreamHas(stream[0], **expect).verify(ctx)


async def test_stream_has_rejects_a_missing_stream(ctx, unique):
    with pytest.raises(Fail, match=f"There is no stream named 'NOPE_{unique}'"):
        await StreamHas(f"NOPE_{unique}").verify(ctx)


async def test_messages_stored_counts_and_checks_the_limit_dropped_the_oldest(ctx, js, stream):
    name, prefix = stream
    for n in range(7):
        await js.publish(f"{prefix}.{n % 2}", b"x")
    await MessagesStored(name, count=5, first_seq=3).verify(ctx)
    await MessagesStored(name, count=2, subject=f"{prefix}.1").verify(ctx)
    with pytest.raises(Fail, match=rf"The stream {name} holds 5 message\(s\); expected 7"):
        await MessagesStored(name, count=7).verify(ctx)
    with pytest.raises(Fail, match=rf"on '{prefix}.0' holds 3 message\(s\); expected 2"):
        await MessagesStored(name, count=2, subject=f"{prefix}.0").verify(ctx)
    with pytest.raises(Fail, match=r"oldest message .* has sequence 3; expected 1"):
        await MessagesStored(name, count=5, first_seq=1).verify(ctx)


async def test_message_at_checks_subject_data_and_headers(ctx, js, stream):
    name, prefix = stream
    ack = await js.publish(f"{prefix}.a", b"hello", headers={"k": "v"})
    await MessageAt(name, ack.seq, subject=f"{prefix}.a", data=b"hello", headers={"k": "v"}).verify(ctx)
    with pytest.raises(Fail, match=r"holds b'hello'; expected b'bye'"):
        await MessageAt(name, ack.seq, data=b"bye").verify(ctx)
    with pytest.raises(Fail, match=rf"was published on '{prefix}.a'; expected '{prefix}.b'"):
        await MessageAt(name, ack.seq, subject=f"{prefix}.b").verify(ctx)
    with pytest.raises(Fail, match=r"has header k='v'; expected 'w'"):
        await MessageAt(name, ack.seq, headers={"k": "w"}).verify(ctx)
    with pytest.raises(Fail, match=r"has no message with sequence 99"):
        await MessageAt(name, 99).verify(ctx)


async def test_consumer_config_is_compares_fields_and_names_the_difference(ctx, js, stream):
    from nats.js.api import ConsumerConfig

    name, prefix = stream
    await js.add_consumer(name, ConsumerConfig(durable_name="workers", max_deliver=3, ack_wait=2.0, backoff=None))
    await ConsumerConfigIs(name, "workers", max_deliver=3, ack_wait=2.0, ack_policy="explicit").verify(ctx)
    with pytest.raises(Fail, match=r"Consumer workers on CHK_\w+ has max_deliver=3; expected max_deliver=5"):
        await ConsumerConfigIs(name, "workers", max_deliver=5).verify(ctx)
    with pytest.raises(Fail, match=r"has no consumer named 'others'"):
        await ConsumerConfigIs(name, "others").verify(ctx)


async def test_calls_store_once_accepts_an_idempotent_publisher_and_rejects_two_wrong_ones(ctx, stream):
    name, prefix = stream

    async def idempotent(js, key, data):
        return await js.publish(f"{prefix}.orders", data, headers={"Nats-Msg-Id": key})

    async def no_id(js, key, data):
        return await js.publish(f"{prefix}.orders", data)

    async def constant_id(js, key, data):
        return await js.publish(f"{prefix}.orders", data, headers={"Nats-Msg-Id": "order"})

    await CallsStoreOnce(name, idempotent).verify(ctx)
    with pytest.raises(
        Fail, match=r"same key 'check-\w+' stored 2 messages .* expected 1. Give each publish a Nats-Msg-Id"
    ):
        await CallsStoreOnce(name, no_id).verify(ctx)
    with pytest.raises(Fail, match=r"two different keys .* stored only 1 message; expected 2"):
        await CallsStoreOnce(name, constant_id).verify(ctx)


# -- whole questions with a wrong answer a learner would plausibly give -------------------
async def test_ex01_questions_reject_plausible_wrong_answers(js):
    from buslib.exercises import ex01

    await ex01.reset(js)
    memory = await js.add_stream(name=ex01.ORDERS_STREAM, subjects=["ex01.orders.created"], storage=StorageType.MEMORY)
    outcome = await ex01.q1.outcome_async({"orders": memory})
    assert outcome.status is Status.INCORRECT and "does not cover 'ex01.orders.paid'" in outcome.message
    await js.update_stream(name=ex01.ORDERS_STREAM, subjects=["ex01.orders.>"], storage=StorageType.MEMORY)
    outcome = await ex01.q1.outcome_async({"orders": memory})
    assert outcome.status is Status.INCORRECT and "storage='memory'; expected 'file'" in outcome.message
    outcome = await ex01.q1.outcome_async({"orders": "EX01_ORDERS"})
    assert outcome.status is Status.INCORRECT and "orders is a str" in outcome.message

    async def publish_order(js, order_id, data):  # forgot the Nats-Msg-Id
        return await js.publish("ex01.orders.created", data)

    outcome = await ex01.q2.outcome_async({"publish_order": publish_order})
    assert outcome.status is Status.INCORRECT and "stored 2 messages" in outcome.message

    def sync_publish(js, order_id, data):
        return None

    outcome = await ex01.q2.outcome_async({"publish_order": sync_publish})
    assert outcome.status is Status.INCORRECT and "must be an `async def`" in outcome.message

    recent = await js.add_stream(name=ex01.RECENT_STREAM, subjects=["ex01.recent.>"], max_msgs=5)
    for n in range(5):  # the limit is set but never reached
        await js.publish(f"ex01.recent.{n}", b"x")
    outcome = await ex01.q3.outcome_async({"recent": recent})
    assert outcome.status is Status.INCORRECT and "has sequence 1; expected 4" in outcome.message
    await ex01.reset(js)


async def test_ex00_rejects_a_typed_version_and_a_core_publish(js, nc):
    from nats.js.api import PubAck

    from buslib.exercises import ex00

    await ex00.reset(js)
    outcome = await ex00.q1.outcome_async({"server_version": "1.0.0"})
    assert outcome.status is Status.INCORRECT and "but the server says it is" in outcome.message
    assert (await ex00.q1.outcome_async({"server_version": nc.connected_server_version})).correct
    await nc.publish("ex00.hello", b"hello")  # core publish returns None, not a PubAck
    outcome = await ex00.q2.outcome_async({"ack": None})
    assert outcome.status is Status.INCORRECT and "ack is a NoneType" in outcome.message
    ack = await js.publish("ex00.hello", b"Hello")
    outcome = await ex00.q2.outcome_async({"ack": ack})
    assert outcome.status is Status.INCORRECT and "holds b'Hello'; expected b'hello'" in outcome.message
    assert isinstance(ack, PubAck)


async def test_group_consumed_needs_every_message_handled(ctx, js, nats_url, unique):
    from buslib import EventBus
    from buslib.exercises.ex03 import GroupConsumed

    subject = f"grp{unique.lower()}.jobs.v1"
    async with EventBus.connect(service="t", url=nats_url) as bus:
        stream = (await bus.ensure_stream(subject)).config.name
        seen = []

        async def handle(data, c):
            seen.append(data)

        sub = await bus.subscribe(subject, group="workers", handler=handle)
        await sub.stop()  # the durable stays
        for n in range(3):
            await js.publish(subject, b"%d" % n)
        with pytest.raises(Fail, match=r"Group 'workers' still has 3 message\(s\) waiting and 0 unacknowledged"):
            await GroupConsumed(stream, "workers", subject, 3).verify(ctx)
        sub = await bus.subscribe(subject, group="workers", handler=handle)
        from buslib.exercises.core import wait_until

        await wait_until(lambda: len(seen) == 3)
        await sub.stop()
        await GroupConsumed(stream, "workers", subject, 3).verify(ctx)
        with pytest.raises(Fail, match=r"received 3 message\(s\); expected 5"):
            await GroupConsumed(stream, "workers", subject, 5).verify(ctx)
        await delete_streams(js, stream)


async def test_calls_store_once_explains_a_publisher_that_raises(ctx, stream):
    async def broken(js, key, data):
        raise RuntimeError("no connection")

    with pytest.raises(
        Fail,
        match=r"Calling publish\(js, 'check-\w+', data\) raised RuntimeError: no connection. It must publish "
        r"with the `js` it receives",
    ):
        await CallsStoreOnce(stream[0], broken).verify(ctx)
