"""A small room at once: 3 learners run every exercise solution against one workshop server.

The same run as ``benchmarks/bench_workshop.py`` (30 learners there), asserting correctness
only: every check passes in every learner's own account, and the instructor's board has
every learner's every question correct. No timing is asserted (the machine is shared).
Exercise 06 is not in the default run (it starts a cluster of its own per learner).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from buslib.exercises import EXERCISES
from buslib.workshop.board import catalogue

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_workshop", BENCHMARKS / "bench_workshop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_three_learners_run_every_solution_at_once_and_the_board_sees_it_all(tmp_path):
    bench = _bench()
    result = await bench.main(["--learners", "3", "--json", str(tmp_path / "result.json")])
    assert result["problems"] == []
    assert result["exercises"] == [ex for ex in EXERCISES if ex != "06"]  # 06 starts clusters of its own
    every = sum(key.split("/")[0] in result["exercises"] for key in catalogue())  # every question of those
    assert result["checks"] == result["correct"] == 3 * every
    assert result["records"] == 3 * every
    assert result["learners_all_correct_on_board"] == 3
    assert result["server_cpu_s"] >= 0 and result["check_ms"]["p95"] >= result["check_ms"]["p50"] > 0
