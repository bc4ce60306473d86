"""The dead-letter invariants at scale and under a crash.

1. 1,000 events, 10% always fail, 10% fail twice then succeed, two workers in one group:
   every flaky event is processed exactly once, every poison event is in the DLQ exactly once
   with its reason, processed + dead == published; after a fix, a replay processes them all
   and nothing is processed twice.
2. A worker SIGKILLed on its last allowed delivery: no handler ever reports the failure, yet
   the message becomes a dead letter through the server's MAX_DELIVERIES advisory.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter

from buslib import Event, EventBus, Retry
from buslib.dlq import DeadLetterQueue
from buslib.teaching import wait_until


class InvItem(Event, type="dlqinv.item"):
    n: int
    kind: str  # "ok", "flaky" or "poison"


class KillItem(Event, type="dlqkill.item"):
    n: int


async def test_1000_events_flaky_once_poison_dead_lettered_once_replay_processes_all(nats_url, unique):
    stream, dlq_stream = f"INV{unique}", f"INVDL{unique}"
    events = [InvItem(n=i, kind="poison" if i % 10 == 0 else "flaky" if i % 10 == 1 else "ok") for i in range(1000)]
    poison = {e.id: e.n for e in events if e.kind == "poison"}
    flaky = {e.id for e in events if e.kind == "flaky"}
    done: dict[str, int] = {}  # event id -> the delivery that succeeded
    successes: Counter[str] = Counter()
    fixed = False

    async def handle(event: InvItem, ctx) -> None:
        if event.kind == "poison" and not fixed:
            raise RuntimeError(f"poison {event.n}")
        if event.kind == "flaky" and ctx.num_delivered <= 2:
            raise ConnectionError("flaky dependency")
        successes[event.id] += 1  # counts every successful run, duplicates included
        done.setdefault(event.id, ctx.num_delivered)  # the idempotent effect

    retry = Retry(max_deliver=3, delays=[0.1], jitter=0.2)
    buses = [await EventBus.connect(service=f"worker{i}", url=nats_url) for i in range(2)]
    try:
        await buses[0].ensure_stream(InvItem, name=stream)
        dlqs = [await DeadLetterQueue(b, stream=dlq_stream, alert_subject=None).setup() for b in buses]
        subs = [
            await b.subscribe(InvItem, group="inv", handler=handle, retry=retry, dead_letters=d, concurrency=8)
            for b, d in zip(buses, dlqs, strict=True)
        ]
        await buses[0].publish_many(events)

        async def settled() -> bool:  # the counters too: each is counted after its sink or ack returned
            dead = sum(s.stats.dead_lettered for s in subs)
            return len(done) == 900 and dead == 100 and await dlqs[0].count() == 100

        await wait_until(settled, timeout=90, interval=0.2, what="900 processed and 100 dead-lettered")

        assert all(done[i] == 3 for i in flaky)  # failed twice, succeeded on the third delivery
        entries = await dlqs[0].list()
        assert Counter(e.headers["ce-id"] for e in entries) == Counter(list(poison))  # each poison once
        assert all(e.reason == f"RuntimeError: poison {poison[e.headers['ce-id']]}" for e in entries)
        assert all(e.kind == "exhausted" and e.num_delivered == 3 and e.group == "inv" for e in entries)
        assert len(done) + len(entries) == len(events)  # processed + dead == published
        assert sum(s.stats.dead_lettered for s in subs) == 100
        assert all(s.stats.acked > 0 for s in subs)  # both workers of the group took a share

        fixed = True  # the bug is fixed: replay the dead letters
        result = await dlqs[1].replay()
        assert sorted(result.replayed) == sorted(e.id for e in entries) and result.failed == {}
        await wait_until(lambda: len(done) == 1000, timeout=60, interval=0.1, what="all replays processed")

        assert await dlqs[0].count() == 0
        assert set(successes.values()) == {1}  # nothing processed twice
        assert (await buses[0].js.stream_info(stream)).state.messages == 1100  # 1000 + one copy per poison event
        assert (await dlqs[0].replay()).replayed == []  # nothing left to replay
    finally:
        for b in buses:
            await b.close()
        async with EventBus.connect(service="cleanup", url=nats_url) as b:
            for name in (stream, dlq_stream):
                await b.js.delete_stream(name)
            await b.js.delete_consumer(dlqs[0].advisory_stream, dlqs[0].advisory_consumer)


_DOOMED_WORKER = """
import asyncio, sys
from buslib import Event, EventBus, Retry
from buslib.dlq import DeadLetterQueue

class KillItem(Event, type="dlqkill.item"):
    n: int

async def main(stream, dlq_stream):
    async with EventBus.connect(service="doomed") as bus:
        dlq = DeadLetterQueue(bus, stream=dlq_stream)
        async def handle(event, ctx):
            if ctx.num_delivered < 2:
                raise RuntimeError("the first delivery fails")
            print("LAST", ctx.stream_seq, flush=True)  # the last allowed delivery: hang until killed
            await asyncio.sleep(3600)
        await bus.subscribe(KillItem, group="kill", handler=handle, stream=stream, dead_letters=dlq,
                            retry=Retry(max_deliver=2, delays=[0.1], jitter=0), ack_wait=1.0)
        print("READY", flush=True)
        await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_a_worker_killed_on_its_last_delivery_still_yields_a_dead_letter(nats_url, unique):
    stream, dlq_stream = f"KILL{unique}", f"KILLDL{unique}"
    async with EventBus.connect(service="survivor", url=nats_url) as bus:
        await bus.ensure_stream(KillItem, name=stream)
        dlq = await DeadLetterQueue(bus, stream=dlq_stream, watch=[stream]).setup()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _DOOMED_WORKER,
            stream,
            dlq_stream,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "NATS_URL": nats_url},
        )
        try:
            assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"READY"
            ack = await bus.publish(KillItem(n=1))
            assert (await asyncio.wait_for(proc.stdout.readline(), 30)).split() == [b"LAST", str(ack.seq).encode()]
            os.kill(proc.pid, signal.SIGKILL)  # mid-message, on its last allowed delivery
            assert await proc.wait() == -signal.SIGKILL
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

        seen = []

        async def handle(event, ctx) -> None:
            seen.append(event)

        # A second worker of the group keeps a pull pending: only then does the server
        # notice the exhausted message and publish MAX_DELIVERIES.
        sub = await bus.subscribe(
            KillItem,
            group="kill",
            handler=handle,
            stream=stream,
            dead_letters=dlq,
            retry=Retry(max_deliver=2, delays=[0.1], jitter=0),
            ack_wait=1.0,
        )
        written = []

        async def reconciled() -> bool:
            written.extend((await dlq.reconcile()).written)
            return bool(written)

        await wait_until(reconciled, timeout=30, interval=0.3, what="the advisory to be reconciled")

        (entry,) = written
        assert (entry.stream, entry.stream_seq, entry.kind, entry.source) == (stream, ack.seq, "exhausted", "advisory")
        assert entry.num_delivered == 2 and entry.group == "kill" and entry.consumer == sub.durable
        assert KillItem.model_validate_json(entry.data).n == 1 and entry.headers["ce-type"] == "dlqkill.item"
        assert seen == []  # nobody handled it: it would have vanished without the advisory
        assert (await dlq.list())[0].id == entry.id
        await sub.stop()
        for name in (stream, dlq_stream):
            await bus.js.delete_stream(name)
        await bus.js.delete_consumer(dlq.advisory_stream, dlq.advisory_consumer)
