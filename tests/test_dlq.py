"""The dead-letter queue against a real server: entries, idempotence, alerts, list/get/replay/purge,
filters, and the advisory safety net. Deliveries come from raw nats-py pull consumers here;
tests/test_dlq_bus.py drives the same queue through the EventBus."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest
from nats.js.api import ConsumerConfig

import buslib
from buslib.dlq import DeadLetter, DeadLetterFilter, DeadLetterNotFound, DeadLetterQueue, FilterError
from buslib.dlq.entry import REPLAYED_FROM
from buslib.errors import ConfigDriftError
from buslib.retry import Failure
from buslib.subjects import subject_matches
from buslib.teaching import wait_until


class Env:
    """A source stream, a pull consumer on it and a dead-letter queue, all unique to one test."""

    def __init__(self, nc, js, unique: str) -> None:
        self.nc, self.js = nc, js
        self.stream, self.prefix, self.consumer = f"SRC{unique}", f"src{unique.lower()}", "billing__x"
        self.dlq_stream = f"DLQ{unique}"
        self.hooked: list[DeadLetter] = []
        self.dlq = DeadLetterQueue(
            nc,
            stream=self.dlq_stream,
            watch=[self.stream],
            on_dead_letter=self.hooked.append,
            alert_subject=f"alerts{unique.lower()}",
        )

    async def delivered(self, subject: str, data: bytes, headers: dict | None = None, *, max_deliver: int = 3):
        """Publish one message and fetch its first delivery."""
        ack = await self.js.publish(f"{self.prefix}.{subject}", data, headers=headers)
        sub = await self.js.pull_subscribe(
            f"{self.prefix}.>",
            durable=self.consumer,
            stream=self.stream,
            config=ConsumerConfig(max_deliver=max_deliver, ack_wait=1.0),
        )
        while True:
            (msg,) = await sub.fetch(1, timeout=5)
            if msg.metadata.sequence.stream == ack.seq:
                return msg

    def failure(self, msg, *, kind="rejected", reason="ValueError: amount must be positive", **extra) -> Failure:
        return Failure(
            kind=kind,
            reason=reason,
            msg=msg,
            group="billing",
            stream=self.stream,
            stream_seq=msg.metadata.sequence.stream,
            subject=msg.subject,
            num_delivered=msg.metadata.num_delivered,
            **extra,
        )


@pytest.fixture
async def env(nc, js, unique):
    e = Env(nc, js, unique)
    await js.add_stream(name=e.stream, subjects=[f"{e.prefix}.>"])
    await e.dlq.setup()
    yield e
    for name in (e.stream, e.dlq_stream):
        await js.delete_stream(name)
    await js.delete_consumer(e.dlq.advisory_stream, e.dlq.advisory_consumer)


async def test_an_entry_keeps_the_payload_and_headers_and_says_where_from_and_why(env):
    first = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    headers = {
        "ce-id": "E-1",
        "Nats-Msg-Id": "E-1",
        "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "note": "prix négatif",
    }
    msg = await env.delivered("created", b'{"amount": -1}', headers)
    entry = await env.dlq(
        env.failure(
            msg, reason="ValueError: amount must be positive\n  at line 3", trace_id="a" * 32, first_failure_at=first
        )
    )

    stored = await env.dlq.get(entry.id)
    assert stored == entry
    assert stored.data == b'{"amount": -1}'
    assert stored.headers == headers  # unchanged, non-ASCII included, the original Nats-Msg-Id kept
    assert (stored.stream, stored.stream_seq, stored.subject) == (env.stream, 1, f"{env.prefix}.created")
    assert (stored.group, stored.consumer, stored.num_delivered, stored.kind) == (
        "billing",
        env.consumer,
        1,
        "rejected",
    )
    assert stored.reason == "ValueError: amount must be positive | at line 3"  # one line: headers cannot break
    assert stored.first_failure_at == first and stored.last_failure_at is not None
    assert stored.trace_id == "a" * 32 and stored.source == "worker"
    raw = await env.js.get_msg(env.dlq_stream, entry.id)
    assert raw.headers["Nats-Msg-Id"] == f"{env.stream}:{env.consumer}:1"


async def test_writing_the_same_failure_twice_stores_one_entry_and_alerts_once(env):
    alerts = []

    async def collect(msg):
        alerts.append(json.loads(msg.data))

    await env.nc.subscribe(env.dlq.alert_subject, cb=collect)
    msg = await env.delivered("created", b"{}")
    one = await env.dlq(env.failure(msg))
    two = await env.dlq(env.failure(msg))  # a worker crashed after writing, before terminating
    # a marker after both writes on the same connection: a second alert would arrive before it
    await env.nc.publish(env.dlq.alert_subject, b'{"marker": true}')

    assert one.id == two.id
    assert await env.dlq.count() == 1
    await wait_until(lambda: alerts and alerts[-1] == {"marker": True}, what="the alert, then the marker")
    alerts.pop()
    assert len(alerts) == 1 and len(env.hooked) == 1
    assert alerts[0]["id"] == one.id and alerts[0]["dlq"] == env.dlq_stream
    assert alerts[0]["reason"] == "ValueError: amount must be positive"


async def test_a_failing_or_async_alert_hook_never_blocks_dead_lettering(env):
    seen = []

    async def async_hook(entry):
        seen.append(entry.id)

    env.dlq.on_dead_letter = async_hook
    msg = await env.delivered("a", b"1")
    await env.dlq(env.failure(msg))
    assert seen == [1]

    def broken_hook(entry):
        raise RuntimeError("pager is down")

    env.dlq.on_dead_letter = broken_hook
    msg = await env.delivered("b", b"2")
    entry = await env.dlq(env.failure(msg))
    assert (await env.dlq.get(entry.id)).subject == f"{env.prefix}.b"
    assert [str(e) for e in env.dlq.hook_errors] == ["pager is down"]


async def test_nats_control_headers_of_the_original_are_kept_inert(env):
    """An original Nats-Expected-* header must neither break the DLQ write nor a replay."""
    msg = await env.delivered("c", b"x", {"Nats-Expected-Stream": env.stream, "k": "v"})
    entry = await env.dlq(env.failure(msg))
    assert entry.headers == {"Nats-Expected-Stream": env.stream, "k": "v"}
    result = await env.dlq.replay(ids=[entry.id])
    assert result.replayed == [entry.id]
    copy = await env.js.get_msg(env.stream, 2)
    assert "Nats-Expected-Stream" not in copy.headers and copy.headers["k"] == "v"


async def test_an_original_too_large_to_copy_is_dead_lettered_by_reference_and_replayed_from_its_stream(env):
    """The entry's own headers would take it over max_payload (the server would close the connection):
    the entry keeps no copy, says why, and replay reads the original from its stream."""
    limit = env.nc.max_payload
    big = (bytes(range(256)) * (limit // 256))[: limit - 300]  # fits alone, not beside the Bus-DLQ headers
    msg = await env.delivered("big", big, {"k": "v"})
    entry = await env.dlq(env.failure(msg))

    stored = await env.dlq.get(entry.id)
    assert stored.data == b"" and stored.headers == {} and stored == entry
    assert f"does not fit in a dead-letter entry beside its Bus-DLQ headers (the server's max_payload is {limit}" in (
        stored.not_copied
    )
    assert f"stream {env.stream} at sequence {msg.metadata.sequence.stream}" in stored.not_copied
    assert env.nc.is_connected and env.hooked == [entry]
    result = await env.dlq.replay(ids=[entry.id])
    assert result.replayed == [entry.id] and result.failed == {}
    copy = await env.js.get_msg(env.stream, 2)
    assert copy.data == big and copy.headers["k"] == "v"  # the original, read from its stream


async def test_a_replay_too_large_for_max_payload_fails_with_the_reason_and_keeps_the_entry(env):
    limit = env.nc.max_payload
    msg = await env.delivered("full", b"x" * limit)  # exactly max_payload: no room for the replay headers
    entry = await env.dlq(env.failure(msg))
    assert entry.not_copied

    result = await env.dlq.replay(ids=[entry.id])

    assert result.replayed == [] and "over the server's max_payload" in result.failed[entry.id]
    assert "the entry stays" in result.failed[entry.id]
    assert await env.dlq.count() == 1 and env.nc.is_connected


async def test_replaying_an_entry_whose_uncopied_original_is_gone_says_so(env, js):
    msg = await env.delivered("gone", b"y" * env.nc.max_payload)
    entry = await env.dlq(env.failure(msg))
    await js.delete_msg(env.stream, msg.metadata.sequence.stream)

    result = await env.dlq.replay(ids=[entry.id])

    assert result.replayed == [] and "holds no copy of its original" in result.failed[entry.id]
    assert f"stream {env.stream} no longer has it at sequence {msg.metadata.sequence.stream}" in result.failed[entry.id]


async def test_list_filters_by_subject_reason_time_and_group(env):
    m1 = await env.delivered("orders.created", b"1")
    await env.dlq(
        env.failure(
            m1, reason="ValueError: negative amount", last_failure_at=datetime.now(timezone.utc) - timedelta(hours=2)
        )
    )
    m2 = await env.delivered("orders.paid", b"2")
    await env.dlq(env.failure(m2, kind="undecodable", reason="DecodeError: The payload is not valid JSON"))

    async def ids(**kw):
        return [e.id for e in await env.dlq.list(DeadLetterFilter.parse(**kw))]

    assert [e.id for e in await env.dlq.list()] == [1, 2]
    assert await ids(subject=f"{env.prefix}.orders.created") == [1]
    assert await ids(subject=f"{env.prefix}.orders.*") == [1, 2]
    assert await ids(subject=f"{env.prefix}.>") == [1, 2]
    assert await ids(subject="other.>") == []
    assert await ids(reason="not valid json") == [2]  # case-insensitive substring
    assert await ids(reason=r"/^value\w+:/") == [1]  # a /regex/
    assert await ids(since="1h") == [2]
    assert await ids(until="1h") == [1]
    assert await ids(since=datetime.now(timezone.utc) - timedelta(days=1), group="billing") == [1, 2]
    assert await ids(group="shipping") == []


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"since": "yesterday"}, "is not a time"),
        ({"until": "10 parsecs"}, "is not a time"),
        ({"since": "1m", "until": "1h"}, "is after until"),
        ({"subject": "orders..created"}, "not a valid NATS subject pattern"),
        ({"subject": "orders.>.v1"}, "not a valid NATS subject pattern"),
        ({"subject": "ord*rs"}, "not a valid NATS subject pattern"),
        ({"reason": "/([a-z/"}, "not a valid regular expression"),
        ({"reason": "  "}, "reason filter is empty"),
        ({"group": ""}, "group filter is empty"),
    ],
)
def test_bad_filters_are_refused_with_a_clear_reason(kwargs, words):
    with pytest.raises(FilterError, match=words):
        DeadLetterFilter.parse(**kwargs)


def test_filter_times_accept_iso_with_or_without_zone_and_relative_ages():
    now = datetime(2026, 11, 26, 20, 0, tzinfo=timezone.utc)
    f = DeadLetterFilter.parse(since="2026-11-26T19:30", until="2026-11-26T21:00:00+01:00", now=now)
    assert f.since == datetime(2026, 11, 26, 19, 30, tzinfo=timezone.utc)  # no zone: UTC
    assert f.until == datetime(2026, 11, 26, 20, 0, tzinfo=timezone.utc)
    assert DeadLetterFilter.parse(since="90s", now=now).since == now - timedelta(seconds=90)
    assert DeadLetterFilter.parse(since="2d", now=now).since == now - timedelta(days=2)
    assert DeadLetterFilter.parse(since="2026-11-26T19:30:00Z", now=now).since.tzinfo is not None


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("*.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.b.c", "a.b", False),
    ],
)
def test_subject_matching_follows_nats_wildcards(pattern, subject, expected):
    assert subject_matches(pattern, subject) is expected


async def test_get_of_an_unknown_id_says_what_to_do(env):
    with pytest.raises(DeadLetterNotFound, match="buslib dlq ls"):
        await env.dlq.get(999)


async def test_a_missing_dlq_stream_is_explained(nc, unique):
    dlq = DeadLetterQueue(nc, stream=f"NOPE{unique}")
    with pytest.raises(DeadLetterNotFound, match="no dead-letter stream"):
        await dlq.list()
    with pytest.raises(DeadLetterNotFound, match="no dead-letter stream"):
        await dlq.get(1)


async def test_replay_republishes_with_provenance_and_removes_the_entry_after_the_puback(env):
    msg = await env.delivered("created", b'{"n": 1}', {"ce-id": "E-7", "Nats-Msg-Id": "E-7"})
    entry = await env.dlq(env.failure(msg))
    await msg.term()

    result = await env.dlq.replay(ids=[entry.id])

    assert result.replayed == [entry.id] and result.duplicates == [] and result.failed == {}
    copy = await env.js.get_msg(env.stream, 2)
    assert copy.subject == f"{env.prefix}.created" and copy.data == b'{"n": 1}'
    assert copy.headers["ce-id"] == "E-7"
    assert copy.headers[REPLAYED_FROM] == f"{env.dlq_stream}:{entry.id}"
    # a fresh id: the original "E-7" is still in the stream's duplicate window and would drop the copy
    assert copy.headers["Nats-Msg-Id"] == f"replay:{env.dlq_stream}:{entry.id}"
    assert await env.dlq.count() == 0


async def test_an_interrupted_replay_repeated_stores_one_copy(env):
    msg = await env.delivered("created", b"once")
    entry = await env.dlq(env.failure(msg))
    # the first replay published, then crashed before removing the entry:
    headers = {
        **entry.headers,
        REPLAYED_FROM: f"{env.dlq_stream}:{entry.id}",
        "Nats-Msg-Id": f"replay:{env.dlq_stream}:{entry.id}",
    }
    await env.js.publish(entry.subject, entry.data, headers=headers)

    result = await env.dlq.replay(ids=[entry.id])

    assert result.replayed == [entry.id] and result.duplicates == [entry.id]
    assert (await env.js.stream_info(env.stream)).state.messages == 2  # the original + one copy
    assert await env.dlq.count() == 0


async def test_a_replay_that_cannot_be_stored_keeps_the_entry(env, js):
    msg = await env.delivered("created", b"x")
    entry = await env.dlq(env.failure(msg))
    await js.delete_stream(env.stream)  # nothing stores the original subject any more

    result = await env.dlq.replay()

    assert result.replayed == [] and "NoStreamResponseError" in result.failed[entry.id]
    assert (await env.dlq.get(entry.id)).data == b"x"
    await js.add_stream(name=env.stream, subjects=[f"{env.prefix}.>"])  # for the fixture's cleanup


async def test_replay_and_purge_by_filter_and_purge_needs_something_explicit(env):
    for i, reason in enumerate(["ValueError: a", "KeyError: b", "ValueError: c"]):
        msg = await env.delivered(f"s{i}", str(i).encode())
        await env.dlq(env.failure(msg, reason=reason))

    with pytest.raises(FilterError, match="Nothing was deleted"):
        await env.dlq.purge()
    assert await env.dlq.count() == 3

    assert (await env.dlq.replay(DeadLetterFilter.parse(reason="KeyError"))).replayed == [2]
    assert await env.dlq.purge(DeadLetterFilter.parse(reason="ValueError: c")) == [3]
    with pytest.raises(DeadLetterNotFound, match="not in"):
        await env.dlq.purge(ids=[1, 42])
    assert await env.dlq.count() == 0


async def test_setup_is_idempotent_and_refuses_a_stream_with_other_subjects(env, js, nc, unique):
    await env.dlq.setup()
    await env.dlq.setup()
    await js.add_stream(name=f"TAKEN{unique}", subjects=[f"taken{unique.lower()}.>"])
    try:
        with pytest.raises(ConfigDriftError, match="Pick another stream name"):
            await DeadLetterQueue(nc, stream=f"TAKEN{unique}").setup()
    finally:
        await js.delete_stream(f"TAKEN{unique}")


async def test_an_ack_timeout_on_the_last_delivery_is_caught_from_the_max_deliveries_advisory(env):
    """No handler verdict at all (the worker hung): the advisory path makes the entry."""
    msg = await env.delivered(
        "hung", b'{"slow": true}', {"traceparent": "00-" + "c" * 32 + "-" + "d" * 16 + "-01"}, max_deliver=2
    )
    sub = await env.js.pull_subscribe_bind(durable=env.consumer, stream=env.stream)
    redelivered = []
    for _ in range(20):  # keep a pull pending: the server only then sends MAX_DELIVERIES
        try:
            redelivered += await sub.fetch(1, timeout=0.5)
        except asyncio.TimeoutError:  # nats-py raises its own subclass or the plain one
            pass
        info = await env.js.consumer_info(env.dlq.advisory_stream, env.dlq.advisory_consumer)
        if info.num_pending:  # this queue's advisory consumer sees the advisory
            break
    assert [m.metadata.num_delivered for m in redelivered] == [2]

    result = await env.dlq.reconcile()

    (entry,) = result.written
    assert (entry.kind, entry.source, entry.stream_seq, entry.num_delivered) == ("exhausted", "advisory", 1, 2)
    assert entry.data == b'{"slow": true}' and entry.trace_id == "c" * 32
    assert entry.group == "billing" and entry.consumer == env.consumer
    assert "never acknowledged" in entry.reason
    assert env.hooked == [entry]
    assert msg.metadata.sequence.stream == 1
    again = await env.dlq.reconcile()  # each advisory is handled once
    assert again.written == [] and await env.dlq.count() == 1


async def test_reconcile_skips_messages_already_dead_lettered_and_counts_terminations(env):
    msg = await env.delivered("t", b"x")
    await env.dlq(env.failure(msg))
    await msg.term()  # the normal bus path: entry first, then terminate
    other = await env.delivered("u", b"y")
    await other.term()  # a handler terminated it itself: no entry

    async def advisories():
        info = await env.js.consumer_info(env.dlq.advisory_stream, env.dlq.advisory_consumer)
        return info.num_pending >= 2

    await wait_until(advisories, what="two MSG_TERMINATED advisories captured")
    result = await env.dlq.reconcile()
    assert result.written == [] and result.terminated_matched == 1
    assert [(a.stream, a.stream_seq) for a in result.terminated_unmatched] == [(env.stream, 2)]


async def test_the_background_reconciler_survives_a_missing_dlq_stream_and_catches_up(env, js):
    task = asyncio.create_task(env.dlq.run_reconciler(interval=0.1))
    try:
        await js.delete_stream(env.dlq_stream)  # an operator's mistake, or the server lost it
        await env.delivered("hung", b"late", max_deliver=1)  # one delivery, never acknowledged
        sub = await js.pull_subscribe_bind(durable=env.consumer, stream=env.stream)

        async def failed_once() -> bool:
            try:
                await sub.fetch(1, timeout=0.3)  # a pending pull, so the advisory is sent
            except asyncio.TimeoutError:
                pass
            return bool(env.dlq.reconciler_errors)

        await wait_until(failed_once, timeout=20, what="the reconciler to hit the missing stream")
        assert "no dead-letter stream" in str(env.dlq.reconciler_errors[0])
        assert not task.done()  # it keeps going
        await env.dlq.setup()

        async def caught_up() -> bool:
            return [e.data for e in await env.dlq.list()] == [b"late"]

        await wait_until(caught_up, timeout=20, what="the nak'ed advisory to be reconciled")
        assert (await env.dlq.list())[0].source == "advisory"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_setup_uses_a_stream_that_already_captures_the_advisories(server):
    """Only one stream per server may capture a subject: the queue joins it instead of failing."""
    client = await buslib.connect(server.url)
    try:
        js = client.jetstream()
        await js.add_stream(name="EVERY_ADVISORY", subjects=["$JS.EVENT.ADVISORY.>"])
        dlq = await DeadLetterQueue(client, stream="DLQ").setup()
        assert dlq.advisory_stream == "EVERY_ADVISORY"
        assert (await js.consumer_info("EVERY_ADVISORY", dlq.advisory_consumer)).config.filter_subjects == [
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>",
        ]
        assert (await dlq.reconcile()).written == []
    finally:
        await client.close()
