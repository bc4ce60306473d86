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
from buslib.exercises.core import Context, Fail
from buslib.teaching.helpers import wait_for_stream


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


async def test_wait_for_stream_returns_once_the_stream_answers_and_stores_nothing(js, stream):
    name, prefix = stream
    await wait_for_stream(js, f"{prefix}.x")
    assert (await js.stream_info(name)).state.messages == 0


async def test_wait_for_stream_says_which_subject_no_stream_answers(js, unique):
    with pytest.raises(TimeoutError, match=rf"a stream answering publishes to nostream{unique}\.x"):
        await wait_for_stream(js, f"nostream{unique}.x", timeout=0.5)


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


async def test_stream_has_rejects_a_stream_that_captures_a_subject_it_must_avoid(ctx, stream):
    name, prefix = stream
    await StreamHas(name, avoids=[f"other{prefix}.x"]).verify(ctx)
    with pytest.raises(Fail, match=rf"'{prefix}.>' also matches '{prefix}.recent.1', which does not belong"):
        await StreamHas(name, avoids=[f"{prefix}.recent.1"]).verify(ctx)


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

    async def remembered_in_memory(js, key, data, _seen=set()):  # noqa: B006 (the point: state in the process)
        if key not in _seen:
            _seen.add(key)
            return await js.publish(f"{prefix}.orders", data)

    async def no_return(js, key, data):
        await js.publish(f"{prefix}.orders", data, headers={"Nats-Msg-Id": key})

    await CallsStoreOnce(name, idempotent).verify(ctx)
    with pytest.raises(Fail, match=r"stored for key 'check-\w+' has no Nats-Msg-Id header, so the server cannot"):
        await CallsStoreOnce(name, remembered_in_memory).verify(ctx)
    with pytest.raises(Fail, match=r"publish\(js, 'check-\w+', data\) returned None; expected the PubAck"):
        await CallsStoreOnce(name, no_return).verify(ctx)
    with pytest.raises(
        Fail, match=r"same key 'check-\w+' stored 2 messages .* expected 1. Give each publish a Nats-Msg-Id"
    ):
        await CallsStoreOnce(name, no_id).verify(ctx)
    with pytest.raises(Fail, match=r"two different keys .* stored only 1 message; expected 2"):
        await CallsStoreOnce(name, constant_id).verify(ctx)


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
