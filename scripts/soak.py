"""Run the same tests many times and report every test that ever failed: flakiness, measured.

    python scripts/soak.py --runs 10 notebooks/*.ipynb tests/test_bus_failures.py
    make soak RUNS=10                 # the lessons, exercise solutions, bus and server tests

Each run is a fresh ``pytest`` process (notebooks under nbval, as ``make test`` runs them,
with ``NATS_URL`` unset so every run starts its own servers) that writes a JUnit XML report
into ``test-artifacts/soak/``. At the end a table lists each test that failed in any run, with
how many of the runs it failed in and the first line of its first failure; "0 failures" when
none did. The exit code is 1 if anything failed, 0 otherwise.

Bounded: each run gets at most ``--run-timeout`` seconds; a run that takes longer is stopped
(its whole process group: pytest, its kernels and servers) and counted as a failure of that run.
Standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_ANSI = re.compile(r"(?:\x1b|#x1B)\[[0-9;]*m")  # terminal colours, raw or as JUnit XML escapes them
NBVAL_ARGS = ["--nbval-lax", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", help="test files and notebooks, as pytest takes them")
    parser.add_argument("--runs", type=int, default=10, help="how many times to run everything (default 10)")
    parser.add_argument(
        "--run-timeout", type=float, default=1800, help="seconds one run may take before it is stopped (default 1800)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "test-artifacts" / "soak", help="where the reports go")
    parser.add_argument("--pytest-args", default="", help="extra pytest options, e.g. '-k server'")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    return args


def failures_in(report: Path) -> dict[str, str]:
    """The tests that failed or errored in one JUnit XML report: test id -> first line of the message."""
    failed: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        for outcome in ("failure", "error"):
            element = case.find(outcome)
            if element is None:
                continue
            test_id = f"{_path_of(case.get('classname', ''))}::{case.get('name', '')}"
            failed.setdefault(test_id, _summary(element.get("message") or "", element.text or "") or outcome)
    return failed


def _summary(message: str, text: str) -> str:
    """One line saying what failed; for a notebook cell, the exception and the cell line that raised it."""
    message, text = _ANSI.sub("", message).strip(), _ANSI.sub("", text)
    if message.startswith("Notebook cell execution failed"):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        raising = next((m for line in lines if (m := re.match(r"-+>\s*(\d+)\s(.*)", line))), None)
        error = lines[-1] if lines else "an exception"
        where = f" at cell line {raising[1]}: {raising[2].strip()}" if raising else ""
        message = f"{error}{where}"
    return message.splitlines()[0][:200] if message else ""


def _path_of(classname: str) -> str:
    """A JUnit classname as the file it names: ``tests.test_x`` -> ``tests/test_x.py``,
    ``notebooks.00_start.ipynb`` -> ``notebooks/00_start.ipynb``, ``tests.test_x.TestY`` ->
    ``tests/test_x.py::TestY``."""
    if classname.endswith(".ipynb"):
        return classname[: -len(".ipynb")].replace(".", "/") + ".ipynb"
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        path = "/".join(parts[:cut]) + ".py"
        if (ROOT / path).exists():
            return "::".join([path, *parts[cut:]])
    return classname


def run_once(n: int, args: argparse.Namespace, env: dict[str, str]) -> tuple[dict[str, str], float]:
    """One pytest process over every target; returns its failures and its wall time."""
    report = args.out / f"run-{n:03d}.xml"
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", *args.targets, *NBVAL_ARGS, f"--junitxml={report}", "-q"]
    cmd += args.pytest_args.split()
    log = (args.out / f"run-{n:03d}.log").open("w")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        return {f"(run {n})": f"stopped after {args.run_timeout:g} s (--run-timeout)"}, time.monotonic() - started
    except KeyboardInterrupt:  # its own session does not see the terminal's Ctrl-C: stop it too
        _stop_group(proc)
        raise
    finally:
        log.close()
    elapsed = time.monotonic() - started
    failed = failures_in(report) if report.exists() else {}
    if code not in (0, 1) or (code == 1 and not failed):  # an internal error, a collection error, no tests
        failed[f"(run {n})"] = f"pytest exited with code {code}; see {report.with_suffix('.log')}"
    return failed, elapsed


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the run's process group (pytest and what it started): terminate, wait, then kill."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}  # every run starts its own servers
    counts: Counter[str] = Counter()
    first_message: dict[str, str] = {}
    times: list[float] = []
    for n in range(1, args.runs + 1):
        failed, elapsed = run_once(n, args, env)
        times.append(elapsed)
        counts.update(failed.keys())
        for test_id, message in failed.items():
            first_message.setdefault(test_id, message)
        print(f"run {n}/{args.runs}: {len(failed)} failed, {elapsed:.0f} s", flush=True)
    print(
        f"\n{args.runs} runs of {len(args.targets)} targets; wall time per run: "
        f"min {min(times):.0f} s, max {max(times):.0f} s, total {sum(times):.0f} s. Reports: {args.out}"
    )
    if not counts:
        print("0 failures")
        return 0
    width = max(len(test_id) for test_id in counts)
    print(f"\n{'test'.ljust(width)}  failed  first failure")
    for test_id, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"{test_id.ljust(width)}  {count:>2}/{args.runs:<3}  {first_message[test_id]}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
