"""How long the embedded nats-server takes from start() to ready (a benchmark, not a test).

    python benchmarks/bench_server_start.py            # 10 starts
    python benchmarks/bench_server_start.py --runs 30

Each run starts a fresh server on a fresh temporary store and free ports, waits for
"Server is ready" (no sleep), then stops it. Prints min / median / max in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

from buslib.server import EmbeddedServer


def measure(runs: int) -> tuple[list[float], str | None]:
    """Start and stop ``runs`` servers; return each start-to-ready time in seconds, and the version."""
    times, version = [], None
    for _ in range(runs):
        server = EmbeddedServer()
        started = time.perf_counter()
        server.start()
        times.append(time.perf_counter() - started)
        version = server.version
        server.stop()
    return times, version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    EmbeddedServer().start().stop()  # warm-up: binary in the page cache, watchdog running
    times, version = measure(args.runs)
    times_ms = [t * 1000 for t in times]
    print(f"embedded nats-server {version}, {args.runs} starts to ready:")
    print(f"  min {min(times_ms):.1f} ms   median {statistics.median(times_ms):.1f} ms   max {max(times_ms):.1f} ms")


if __name__ == "__main__":
    main()
