"""Where the CPU goes: client and server CPU per message (a script, not a test; Linux only).

    python benchmarks/bench_cpu.py                # 20k events, 3 runs each
    python benchmarks/bench_cpu.py -n 5000 --runs 1

``bench_bus.py`` says how fast; this says who is busy. For ``bus.publish_many``, the group
consumer, and the server storing the bus's messages without acks (``store_ceiling``, with
the trace marked unsampled as the bus sends it, and sampled ``-01``), it prints the medians
of: messages per second, this process's CPU per message (``os.times``: the client) and the
embedded server's CPU per message (``/proc/<pid>/stat``). Both sides share the machine's
cores, so when their sum per message approaches ``cores / rate`` the machine is saturated.
For the two store rows only the server column counts (the client encoded everything first).
Times have the kernel's tick resolution (10 ms): use thousands of messages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_bus, next to this file

import bench_bus  # noqa: E402
from bench_bus import STREAM, OrderPlaced, make_events  # noqa: E402

from buslib import EmbeddedServer, EventBus  # noqa: E402
from buslib.teaching.helpers import delete_streams  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def client_cpu() -> float:
    times = os.times()
    return times.user + times.system


@contextlib.asynccontextmanager
async def measured(into: list[tuple[float, float, float]], n: int, pid: int) -> AsyncIterator[dict[str, float]]:
    """Append (msgs/s, client us/msg, server us/msg) of the block to ``into``.

    The block may set ``["elapsed"]`` on what it gets when only part of it is the work timed.
    """
    timing: dict[str, float] = {}
    wall, client, srv = time.perf_counter(), client_cpu(), server_cpu(pid)
    yield timing
    elapsed = timing.get("elapsed", time.perf_counter() - wall)
    into.append((n / elapsed, (client_cpu() - client) / n * 1e6, (server_cpu(pid) - srv) / n * 1e6))


Measure = Callable[[], AbstractAsyncContextManager[dict[str, float]]]


async def publish_many(url: str, events: list[OrderPlaced], measure: Measure) -> None:
    async with EventBus.connect(service="bench", url=url) as bus:
        await delete_streams(bus.js, STREAM)
        await bus.ensure_stream(OrderPlaced, name=STREAM, subjects=["bench.>"])
        async with measure():
            await bus.publish_many(events)


async def consume(url: str, events: list[OrderPlaced], measure: Measure) -> None:
    await bench_bus.prefill(url, events)
    done, count = asyncio.Event(), 0

    async def handle(event: OrderPlaced, ctx) -> None:
        nonlocal count
        count += 1
        if count == len(events):
            done.set()

    async with EventBus.connect(service="bench", url=url) as bus:
        async with measure():
            await bus.subscribe(OrderPlaced, group="cpu", handler=handle)
            await asyncio.wait_for(done.wait(), 300)


def ceiling(method):
    async def run(url: str, events: list[OrderPlaced], measure: Measure) -> None:
        async with measure() as timing:
            timing["elapsed"] = await method(url, events)  # the method times the storing itself

    return run


async def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=20_000, help="events per run (default 20000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per method (default 3)")
    args = parser.parse_args(argv)
    methods = {
        "bus.publish_many": publish_many,
        "bus group consumer": consume,
        "server stores the bus's messages (-00)": ceiling(bench_bus.store_ceiling),
        "the same, trace sampled (-01)": ceiling(bench_bus.store_ceiling_sampled),
    }
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in methods}
    with EmbeddedServer() as server:
        for run in range(args.runs):
            for name, method in methods.items():
                events = make_events(args.messages)  # fresh ids: nothing is a duplicate
                measure = functools.partial(measured, samples[name], len(events), server.pid)
                await method(server.url, events, measure)
            print(f"run {run + 1}/{args.runs} done", flush=True)
    results = {
        name: {
            "msgs_per_s": statistics.median(s[0] for s in runs),
            "client_us_per_msg": statistics.median(s[1] for s in runs),
            "server_us_per_msg": statistics.median(s[2] for s in runs),
        }
        for name, runs in samples.items()
    }
    print(f"\n{'median of ' + str(args.runs) + ' runs':<40} {'msgs/s':>9} {'client us/msg':>14} {'server us/msg':>14}")
    for name, r in results.items():
        print(f"{name:<40} {r['msgs_per_s']:>9,.0f} {r['client_us_per_msg']:>14.1f} {r['server_us_per_msg']:>14.1f}")
    print(f"\n{os.cpu_count()} CPUs")
    return results


if __name__ == "__main__":
    sys.exit(asyncio.run(main()) and 0)
