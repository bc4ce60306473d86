"""The throughput benchmark runs end to end (a smoke run: tiny and once; no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_bench(name: str = "bench_bus"):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_bench_bus_measures_every_method_and_writes_the_ratios(tmp_path):
    bench = _load_bench()
    out = tmp_path / "results.json"
    report = await bench.main(["-n", "300", "--runs", "1", "--sequential", "50", "--no-faststream", "--json", str(out)])
    written = json.loads(out.read_text())
    assert written["ratios"] == report["ratios"]
    assert {"publish_many_vs_publish_async", "consume_vs_fetch"} <= set(written["ratios"])
    assert all(value > 0 for value in written["ratios"].values())
    assert all(result["messages"] in (300, 50) and result["min"] > 0 for result in written["results"].values())


async def test_bench_cpu_reports_client_and_server_cpu_for_every_method():
    results = await _load_bench("bench_cpu").main(["-n", "300", "--runs", "1"])
    assert set(results) == {
        "bus.publish_many",
        "bus group consumer",
        "server stores the bus's messages (-00)",
        "the same, trace sampled (-01)",
    }
    assert all(
        r["msgs_per_s"] > 0 and r["client_us_per_msg"] >= 0 and r["server_us_per_msg"] >= 0 for r in results.values()
    )
