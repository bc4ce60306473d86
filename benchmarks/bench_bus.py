"""Throughput of the EventBus against raw nats-py, on an embedded server (a script, not a test).

    python benchmarks/bench_bus.py                       # 20k events, 3 runs each
    python benchmarks/bench_bus.py -n 5000 --runs 1      # a quick look
    python benchmarks/bench_bus.py --json results.json   # also write the figures

Every method publishes or consumes the same ~200-byte JSON events on a fresh file-storage
stream. Printed: min / median / max messages per second over the runs, and the ratios the
kit's claims rest on. Figures depend on the machine and its load: compare ratios, not
absolute numbers. Methods run round-robin and each ratio is the median of per-run ratios,
so load changes hit both sides.

Two baselines for each claim, because the bus sends more than a bare payload. Each bus
message carries ~360 B in nine headers (CloudEvents ``ce-*``, ``Bus-Event-Version``,
``Nats-Msg-Id``, ``traceparent``) next to its ~200 B of JSON:

- bare: raw nats-py with the payload alone (``publish_many_vs_publish_async``,
  ``consume_vs_fetch``), the comparison as the kit's claims were first stated;
- same messages: raw nats-py sending or fetching exactly what the bus sends
  (``..._same_msgs``), encoded before the clock starts. This isolates how the bus sends
  and receives from what it sends.

A third consumer baseline, ``raw_pull_callback``: a hand-written nats-py consumer using
the bus's technique (one callback subscription, two overlapping pull requests of 500,
validate and ack each message) without anything else (no contexts, tracing, retries,
keep-alives). Run on bare payloads and on the bus's messages, it shows what the headers
cost (``headers_cost_pull_callback``).

``store_ceiling`` is the server alone: the bus's messages encoded into protocol frames
before the clock starts and written without asking for acks. ``store_ceiling_sampled`` is
the same with the trace marked sampled (``-01``), which nats-server 2.11+ checks for message
tracing on every message (``sampled_traceparent_cost``; the bus starts traces unsampled).

What to expect (nats-server 2.15.1, 2 shared vCPUs, 20k events; each figure is the median of
per-run ratios over 3 runs, shown for three runs of the script; absolute rates vary +-30%
with the machine's load, so compare ratios):

- ``publish_many`` (fast-ingest, the default on 2.14+): 2.84 / 1.83 / 2.64x bare
  ``publish_async`` (8 runs: 1.83-2.84x, median 2.71x; it dips when ``publish_async`` has a
  fast run), 4.6 / 4.5 / 3.4x the same messages. Windowed (``fast_ingest=False``, and every
  server before 2.14): 1.7 / 1.3 / 1.8x bare, 2.9 / 2.9 / 2.0x the same messages. Where the
  time goes (``bench_cpu.py`` measures it): ~5.5-7.5 us of client CPU per event (pydantic
  JSON ~2 us, the frame ~1.5 us, the rest asyncio and nats-py) and ~11-12.5 us of server
  CPU (``Nats-Msg-Id`` dedup and the headers), on the same two cores. The server alone
  stores these messages 4-5x faster than bare ``publish_async`` (``store_ceiling``), so the
  client's CPU is what is left to win.
- The consumer: 1.52 / 1.27 / 1.47x ``fetch(500)`` + ack of bare payloads, 2.1 / 1.9 / 2.2x
  the same messages, ~1.0x ``raw_pull_callback`` on the same messages. It is bound by the
  client's CPU, ~30 us a message (``bench_cpu.py``). From a profile: nats-py's receive path
  (protocol parser, message objects, queue) ~17 us, the header block ~3 us even with the
  bus's parser (~5x cheaper than nats-py's), pydantic validation ~3 us, the bus's own work
  (context, trace, in-flight tracking, ack) ~7 us. The nine headers are what keep every
  consumer from the ~55k/s that bare payloads reach: the same hand-written consumer reads
  bare payloads ~2x faster (``headers_cost_pull_callback`` 0.4-0.56).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType

from buslib import EmbeddedServer, Event, EventBus, tracing
from buslib._nats.fastpath import publish_frames
from buslib._nats.headers import header_block
from buslib._nats.protocol import hpub_frame
from buslib.contracts.codec import encode
from buslib.teaching.helpers import delete_streams

STREAM = "BENCH"


class OrderPlaced(Event, type="bench.order.placed"):
    order_id: str
    customer: str
    amount: float
    currency: str
    items: int


def make_events(n: int) -> list[OrderPlaced]:
    return [
        OrderPlaced(
            order_id=f"ORD-{i:08d}",
            customer=f"customer-{i % 977:04d}",
            amount=19.99 + i % 100,
            currency="EUR",
            items=1 + i % 5,
        )
        for i in range(n)
    ]


def bus_messages(events: list[OrderPlaced]) -> list[tuple[bytes, dict[str, str]]]:
    """The payloads and headers the bus sends for these events (CloudEvents, Nats-Msg-Id, traceparent)."""
    span = tracing.new_trace()  # publish_many gives a batch one trace
    messages = []
    for event in events:
        (out,) = encode(event, source="bench")
        messages.append((out.data, {**out.headers, tracing.HEADER: span.traceparent}))
    return messages


async def fresh_stream(js) -> None:
    await delete_streams(js, STREAM)  # not a bare delete: see delete_streams (old messages can come back)
    await js.add_stream(name=STREAM, subjects=["bench.>"], storage=StorageType.FILE, duplicate_window=120)


# -- publishing -------------------------------------------------------------------------
async def raw_publish_async(url: str, events: list[OrderPlaced]) -> float:
    """``publish_async`` of bare payloads: the baseline as the issue defines it."""
    return await _publish_async(url, [(e.to_json(), None) for e in events])


async def raw_publish_async_same_msgs(url: str, events: list[OrderPlaced]) -> float:
    """``publish_async`` of exactly what the bus sends (headers included), encoded beforehand."""
    return await _publish_async(url, bus_messages(events))


async def _publish_async(url: str, messages: list[tuple[bytes, dict[str, str] | None]]) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await fresh_stream(js)
    subject = OrderPlaced.subject()
    start = time.perf_counter()
    for data, headers in messages:
        await js.publish_async(subject, data, headers=headers)
    await js.publish_async_completed()
    elapsed = time.perf_counter() - start
    assert (await js.stream_info(STREAM)).state.messages == len(messages)
    await nc.close()
    return elapsed


async def core_publish(url: str, events: list[OrderPlaced]) -> float:
    nc = await nats.connect(url)
    payloads = [e.to_json() for e in events]
    subject = "core.only"  # no stream: the ceiling of the client, nothing stored
    start = time.perf_counter()
    for data in payloads:
        await nc.publish(subject, data)
    await nc.flush()
    elapsed = time.perf_counter() - start
    await nc.close()
    return elapsed


async def store_ceiling(url: str, events: list[OrderPlaced]) -> float:
    """How fast the server stores the bus's messages when the client asks for no acks at all.

    The messages are encoded into protocol frames before the clock starts and written in
    large chunks, so the client costs next to nothing: what is measured is the server
    storing (and deduplicating) these messages. No acked publish can be faster.
    """
    return await _store_ceiling(url, bus_messages(events))


async def store_ceiling_sampled(url: str, events: list[OrderPlaced]) -> float:
    """The same, with the trace marked sampled (``...-01``): nats-server 2.11+ then checks each
    message for message tracing, even with tracing off (buslib starts traces unsampled)."""
    messages = bus_messages(events)
    for _, headers in messages:
        headers[tracing.HEADER] = headers[tracing.HEADER][:-2] + "01"
    return await _store_ceiling(url, messages)


async def store_ceiling_bare(url: str, events: list[OrderPlaced]) -> float:
    """The same ceiling for bare payloads (no headers, no Nats-Msg-Id, so no dedup work)."""
    return await _store_ceiling(url, [(e.to_json(), None) for e in events])


async def _store_ceiling(url: str, messages: list[tuple[bytes, dict[str, str] | None]]) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await fresh_stream(js)
    subject = OrderPlaced.subject().encode()
    frames = []
    for data, headers in messages:
        if headers is None:
            frames.append(b"PUB %s %d\r\n%s\r\n" % (subject, len(data), data))
        else:
            frames.append(hpub_frame(subject, b"", header_block(headers), data))  # no reply: no ack asked
    chunks = [b"".join(frames[i : i + 500]) for i in range(0, len(frames), 500)]
    start = time.perf_counter()
    for chunk in chunks:
        await publish_frames(nc, [chunk])  # raw protocol: nats-py's per-message work stays out of the figure
    await nc.flush()
    while (await js.stream_info(STREAM)).state.messages < len(messages):
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - start
    await nc.close()
    return elapsed


async def bus_publish_many(url: str, events: list[OrderPlaced]) -> float:
    """``bus.publish_many`` as called by default: fast-ingest batches on 2.14+ servers."""
    return await _bus_publish_many(url, events, fast_ingest=True)


async def bus_publish_many_windowed(url: str, events: list[OrderPlaced]) -> float:
    """``bus.publish_many(fast_ingest=False)``: one exact ack per event, any server."""
    return await _bus_publish_many(url, events, fast_ingest=False)


async def _bus_publish_many(url: str, events: list[OrderPlaced], *, fast_ingest: bool) -> float:
    async with EventBus.connect(service="bench", url=url) as bus:
        await delete_streams(bus.js, STREAM)
        await bus.ensure_stream(OrderPlaced, name=STREAM, subjects=["bench.>"])  # allow_batched on 2.14+
        await bus.publish(OrderPlaced(order_id="warm-up", customer="x", amount=1, currency="EUR", items=1))
        start = time.perf_counter()
        acks = await bus.publish_many(events, fast_ingest=fast_ingest)
        elapsed = time.perf_counter() - start
        assert len(acks) == len(events) and (await bus.js.stream_info(STREAM)).state.messages == len(events) + 1
    return elapsed


async def raw_sequential_publish(url: str, events: list[OrderPlaced]) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await fresh_stream(js)
    subject = OrderPlaced.subject()
    start = time.perf_counter()
    for event in events:
        await js.publish(subject, event.to_json())
    elapsed = time.perf_counter() - start
    await nc.close()
    return elapsed


async def bus_publish(url: str, events: list[OrderPlaced]) -> float:
    async with EventBus.connect(service="bench", url=url) as bus:
        await fresh_stream(bus.js)
        await bus.publish(OrderPlaced(order_id="warm-up", customer="x", amount=1, currency="EUR", items=1))
        start = time.perf_counter()
        for event in events:
            await bus.publish(event)
        elapsed = time.perf_counter() - start
    return elapsed


# -- consuming --------------------------------------------------------------------------
async def prefill(url: str, events: list[OrderPlaced]) -> None:
    async with EventBus.connect(service="bench", url=url) as bus:
        await fresh_stream(bus.js)
        await bus.publish_many(events)


async def prefill_bare(url: str, events: list[OrderPlaced]) -> None:
    await _publish_async(url, [(e.to_json(), None) for e in events])


async def raw_fetch_ack_bare(url: str, events: list[OrderPlaced]) -> float:
    """``fetch(500)`` + ack of bare payloads (no headers): the baseline as the issue defines it."""
    await prefill_bare(url, events)
    return await _fetch_ack(url, events)


async def raw_fetch_ack(url: str, events: list[OrderPlaced]) -> float:
    """``fetch(500)`` + ack of the messages the bus sends (headers included)."""
    await prefill(url, events)
    return await _fetch_ack(url, events)


async def _fetch_ack(url: str, events: list[OrderPlaced]) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        OrderPlaced.subject(), durable="raw", stream=STREAM, config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
    )
    got = 0
    start = time.perf_counter()
    while got < len(events):
        for msg in await sub.fetch(500, timeout=5):
            OrderPlaced.model_validate_json(msg.data)  # the same work the bus does
            await msg.ack()
            got += 1
    await nc.flush()
    elapsed = time.perf_counter() - start
    await nc.close()
    return elapsed


async def raw_pull_callback_bare(url: str, events: list[OrderPlaced]) -> float:
    """Hand-written nats-py consumer of bare payloads: the technique the bus uses, nothing else."""
    await prefill_bare(url, events)
    return await _pull_callback(url, events)


async def raw_pull_callback(url: str, events: list[OrderPlaced]) -> float:
    """Hand-written nats-py consumer of the messages the bus sends (nats-py's own header parser)."""
    await prefill(url, events)
    return await _pull_callback(url, events)


async def _pull_callback(url: str, events: list[OrderPlaced], *, batch: int = 500) -> float:
    # One callback subscription on an inbox, two pull requests of `batch` overlapping (a new
    # one when the outstanding count drops below `batch`), validate and ack each message.
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_consumer(STREAM, ConsumerConfig(durable_name="raw_cb", ack_policy=AckPolicy.EXPLICIT))
    inbox = nc.new_inbox()
    request = json.dumps({"batch": batch, "expires": 30_000_000_000}).encode()
    done = asyncio.Event()
    got = outstanding = 0

    async def pull() -> None:
        nonlocal outstanding
        outstanding += batch
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.raw_cb", request, reply=inbox)

    async def on_message(msg) -> None:
        nonlocal got, outstanding
        if not msg.reply:  # a status message (timeout, heartbeat): not expected here
            return
        outstanding -= 1
        OrderPlaced.model_validate_json(msg.data)  # the same work the bus does
        await msg.ack()
        got += 1
        if got == len(events):
            done.set()
        elif outstanding < batch:
            await pull()

    await nc.subscribe(inbox, cb=on_message)
    start = time.perf_counter()
    await pull()
    await pull()
    await asyncio.wait_for(done.wait(), 300)
    await nc.flush()
    elapsed = time.perf_counter() - start
    await nc.close()
    return elapsed


async def bus_consume(url: str, events: list[OrderPlaced]) -> float:
    await prefill(url, events)
    done = asyncio.Event()
    count = 0

    async def handle(event: OrderPlaced, ctx) -> None:
        nonlocal count
        count += 1
        if count == len(events):
            done.set()

    async with EventBus.connect(service="bench", url=url) as bus:
        start = time.perf_counter()
        sub = await bus.subscribe(OrderPlaced, group="bench", handler=handle)
        await asyncio.wait_for(done.wait(), 300)
        await bus.nc.flush()
        elapsed = time.perf_counter() - start
        assert sub.stats.acked == len(events)
    return elapsed


# -- FastStream (optional) --------------------------------------------------------------
async def faststream_publish(url: str, events: list[OrderPlaced]) -> float:
    from faststream.nats import NatsBroker

    broker = NatsBroker(url, logger=None)
    await broker.connect()
    nc = await nats.connect(url)
    await fresh_stream(nc.jetstream())
    await nc.close()
    payloads = [e.to_json() for e in events]
    start = time.perf_counter()
    for data in payloads:
        await broker.publish(data, OrderPlaced.subject(), stream=STREAM)  # acked, one at a time
    elapsed = time.perf_counter() - start
    await broker.stop()
    return elapsed


async def faststream_consume(url: str, events: list[OrderPlaced]) -> float:
    from faststream.nats import JStream, NatsBroker, PullSub

    await prefill(url, events)
    broker = NatsBroker(url, logger=None)
    done = asyncio.Event()
    count = 0

    @broker.subscriber(
        OrderPlaced.subject(),
        stream=JStream(STREAM, declare=False),
        durable="faststream",
        pull_sub=PullSub(batch_size=500),
    )
    async def handle(event: OrderPlaced) -> None:  # validated by FastStream (pydantic)
        nonlocal count
        count += 1
        if count == len(events):
            done.set()

    start = time.perf_counter()
    await broker.start()
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - start
    await broker.stop()
    return elapsed


Method = Callable[[str, list[OrderPlaced]], Awaitable[float]]


def summary(rates: list[float], messages: int) -> dict[str, float]:
    return {
        "min": min(rates),
        "median": statistics.median(rates),
        "max": max(rates),
        "messages": messages,
        "runs": rates,
    }


async def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=20_000, help="events per run (default 20000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per method (default 3)")
    parser.add_argument("--sequential", type=int, default=2_000, help="events for the one-at-a-time methods")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--no-faststream", action="store_true", help="skip FastStream even if installed")
    parser.add_argument("--only", help="comma-separated method keys to run (e.g. raw_publish_async,bus_publish_many)")
    args = parser.parse_args(argv)

    events = make_events(args.messages)
    few = make_events(args.sequential)
    print(f"payload ~{len(events[0].to_json())} B, {args.messages} events, {args.runs} runs\n")
    methods: dict[str, tuple[str, Method, list[OrderPlaced]]] = {
        "raw_publish_async": ("js.publish_async + completed (bare payload)", raw_publish_async, events),
        "raw_publish_async_same_msgs": (
            "js.publish_async, the bus's messages",
            raw_publish_async_same_msgs,
            events,
        ),
        "core_publish": ("core nc.publish (no ack, ceiling)", core_publish, events),
        "store_ceiling_bare": ("server stores bare payloads, no acks (ceiling)", store_ceiling_bare, events),
        "store_ceiling": ("server stores the bus's messages, no acks (ceiling)", store_ceiling, events),
        "store_ceiling_sampled": ("the same, traceparent marked sampled (-01)", store_ceiling_sampled, events),
        "bus_publish_many": ("bus.publish_many (default: fast-ingest)", bus_publish_many, events),
        "bus_publish_many_windowed": ("bus.publish_many(fast_ingest=False)", bus_publish_many_windowed, events),
        "raw_publish_sequential": ("await js.publish (one at a time)", raw_sequential_publish, few),
        "bus_publish_sequential": ("await bus.publish (one at a time)", bus_publish, few),
        "raw_fetch_ack_bare": ("pull fetch(500) + ack (bare payload)", raw_fetch_ack_bare, events),
        "raw_fetch_ack": ("pull fetch(500) + ack, the bus's messages", raw_fetch_ack, events),
        "raw_pull_callback_bare": ("callback sub + overlapping pulls (bare payload)", raw_pull_callback_bare, events),
        "raw_pull_callback": ("callback sub + overlapping pulls, bus's messages", raw_pull_callback, events),
        "bus_consume": ("bus group consumer (validated)", bus_consume, events),
    }
    if not args.no_faststream and importlib.util.find_spec("faststream") is not None:
        methods["faststream_publish"] = ("FastStream broker.publish (one at a time)", faststream_publish, few)
        methods["faststream_consume"] = ("FastStream pull subscriber (validated)", faststream_consume, events)
    else:
        print("(FastStream not installed or --no-faststream: skipped; pip install 'faststream[nats]')")
    only = set(args.only.split(",")) if args.only else set(methods)
    unknown = only - set(methods)
    if unknown:
        parser.error(f"unknown --only keys: {', '.join(sorted(unknown))}; choose from {', '.join(methods)}")
    chosen = [key for key in methods if key in only]
    rates: dict[str, list[float]] = {key: [] for key in chosen}
    with EmbeddedServer() as server:
        # Round-robin (one run of each method, then again): on a shared machine the load
        # changes over time, and pairing runs keeps the ratios fair.
        for run in range(args.runs):
            for key in chosen:
                label, method, batch = methods[key]
                elapsed = await method(server.url, batch)
                rates[key].append(len(batch) / elapsed)
            print(f"run {run + 1}/{args.runs} done", flush=True)
        version = server.version
    results = {key: summary(rates[key], len(methods[key][2])) for key in chosen}
    print(f"\n{'method (msgs/s)':<48} {'min':>10} {'median':>10} {'max':>10}")
    for key, result in results.items():
        print(f"{methods[key][0]:<48} {result['min']:>10,.0f} {result['median']:>10,.0f} {result['max']:>10,.0f}")

    def ratio(a: str, b: str) -> float:
        # the median of per-run ratios: each pair ran back to back under similar load
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    pairs = {
        "publish_many_vs_publish_async": ("bus_publish_many", "raw_publish_async"),
        "publish_many_windowed_vs_publish_async": ("bus_publish_many_windowed", "raw_publish_async"),
        "publish_many_vs_publish_async_same_msgs": ("bus_publish_many", "raw_publish_async_same_msgs"),
        "publish_many_windowed_vs_publish_async_same_msgs": (
            "bus_publish_many_windowed",
            "raw_publish_async_same_msgs",
        ),
        "consume_vs_fetch": ("bus_consume", "raw_fetch_ack_bare"),
        "consume_vs_fetch_same_msgs": ("bus_consume", "raw_fetch_ack"),
        "consume_vs_pull_callback_same_msgs": ("bus_consume", "raw_pull_callback"),
        "headers_cost_pull_callback": ("raw_pull_callback", "raw_pull_callback_bare"),
        "bus_publish_vs_js_publish": ("bus_publish_sequential", "raw_publish_sequential"),
        "publish_many_vs_core_ceiling": ("bus_publish_many", "core_publish"),
        # what the server alone could do with these messages, against bare publish_async
        "store_ceiling_same_msgs_vs_publish_async": ("store_ceiling", "raw_publish_async"),
        "store_ceiling_bare_vs_publish_async": ("store_ceiling_bare", "raw_publish_async"),
        "sampled_traceparent_cost": ("store_ceiling_sampled", "store_ceiling"),
        "consume_vs_faststream": ("bus_consume", "faststream_consume"),
        "bus_publish_vs_faststream_publish": ("bus_publish_sequential", "faststream_publish"),
    }
    ratios = {name: ratio(a, b) for name, (a, b) in pairs.items() if a in results and b in results}
    print()
    for name, value in ratios.items():
        print(f"{name:<46} {value:5.2f}x")
    report = {"server": version, "messages": args.messages, "runs": args.runs, "results": results, "ratios": ratios}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    sys.exit(asyncio.run(main()) and 0)
