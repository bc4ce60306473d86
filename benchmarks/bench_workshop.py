"""A room at once: N learners run every exercise solution against one workshop server (Linux).

    python benchmarks/bench_workshop.py                    # 30 learners, every exercise but 06
    python benchmarks/bench_workshop.py --learners 5 --exercises 00,01 --json out.json
    python benchmarks/bench_workshop.py --learners 3 --exercises all     # 06 too: 3 clusters of 3

Exercise 06 is left out by default: its notebook starts a three-node cluster of its own on
the learner's machine (``start_cluster()``) and keeps its streams there, so it does not load
the workshop server (only its 3 check records go there). Run for 30 simulated learners on one
machine it would start 90 extra nats-servers and measure those, not the room.

A room of N learners is created and served on 127.0.0.1 (bcrypt cost 4, the default). Each
learner is its own process, like a notebook kernel, with ``NATS_URL`` set to its line of the
roster; it runs the code cells of ``exercises/solutions/*.ipynb`` top to bottom (no Jupyter:
the cells' own code, top-level ``await`` included, in one namespace per notebook). The
solutions call ``strict_mode()``, so a check that is not correct raises. All learners import
first, then start at the same moment.

It prints: checks run and correct, check latency p50/p95/max (the ``qN.check()`` call as the
learner waits for it, and ``check_ms`` inside the check as recorded), the server's CPU
(process CPU seconds over the run, and the highest ``/varz`` CPU sample), and whether the
instructor's board got every check. Bounded: at most 40 learners; every learner and the whole
run have a time limit.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from buslib.exercises import EXERCISES

OWN_SERVERS = ("06",)  # exercises whose streams live on servers the notebook starts, not the workshop's
DEFAULT_EXERCISES = tuple(ex for ex in EXERCISES if ex not in OWN_SERVERS)
REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "exercises" / "solutions"
TICKS = os.sysconf("SC_CLK_TCK")
MAX_LEARNERS = 40


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# -- one learner (a worker process) ---------------------------------------------------------
def _exercise_of(notebook: Path) -> str | None:
    """``"01"`` for ``ex01_persistence.ipynb`` (or ``01_persistence.ipynb``)."""
    match = re.match(r"^(?:ex)?(\d\d)_", notebook.name)
    return match.group(1) if match else None


def code_cells(notebook: Path) -> list[str]:
    return [
        "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for cell in json.loads(notebook.read_text())["cells"]
        if cell["cell_type"] == "code"
    ]


async def run_notebook(notebook: Path, cell_timeout: float) -> list[dict[str, Any]]:
    """Run a notebook's code cells in one namespace; time every ``qN.check()`` cell."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    results = []
    for source in code_cells(notebook):
        stripped = source.strip()
        is_check = stripped.startswith("q") and stripped.endswith(".check()") and "\n" not in stripped
        code = compile(source, notebook.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        started = time.perf_counter()
        error = None
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                result = eval(code, namespace)  # noqa: S307 - the kit's own solution notebooks
                if inspect.iscoroutine(result):
                    await asyncio.wait_for(result, cell_timeout)
        except BaseException as err:  # a failed check (strict mode) or a broken cell
            error = f"{type(err).__name__}: {err}"[:300]
        seconds = time.perf_counter() - started
        if is_check:
            results.append(
                {"notebook": notebook.name, "question": stripped.split(".")[0], "seconds": seconds, "error": error}
            )
        elif error:
            results.append({"notebook": notebook.name, "question": None, "seconds": seconds, "error": error})
            break  # later cells depend on this one, as in "Run All"
    return results


def worker(exercises: list[str], cell_timeout: float) -> None:
    import buslib  # noqa: F401 - import before saying ready: the start is the same moment for all

    notebooks = [p for p in sorted(SOLUTIONS.glob("*.ipynb")) if _exercise_of(p) in exercises]
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    os.chdir(SOLUTIONS)
    results = []
    for notebook in notebooks:
        results += asyncio.run(run_notebook(notebook, cell_timeout))
    print(json.dumps(results), flush=True)


# -- the room --------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


async def run_room(args: argparse.Namespace) -> dict[str, Any]:
    import buslib
    from buslib.workshop import LocalRoom, read_progress
    from buslib.workshop.board import BoardState
    from buslib.workshop.progress import connect_instructor

    exercises = args.exercises.split(",")
    async with LocalRoom(learners=args.learners) as room:
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--exercises",
                    args.exercises,
                    "--cell-timeout",
                    str(args.cell_timeout),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**env, "NATS_URL": url},
            )
            for url in room.learner_urls
        ]
        deadline = time.monotonic() + args.timeout
        try:
            for proc in workers:  # everyone imported: start together
                assert proc.stdout is not None
                if await asyncio.to_thread(proc.stdout.readline) != "ready\n":
                    raise RuntimeError("a learner process did not start")
            pid = room.server.pid if room.server else None
            assert pid is not None
            sys_nc = await buslib.connect(room.sys_url, instructor=True, require_jetstream=False)
            samples: list[float] = []
            cpu0, wall0 = process_cpu(pid), time.perf_counter()
            for proc in workers:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            outputs = [asyncio.create_task(asyncio.to_thread(_output, proc, deadline)) for proc in workers]
            while not all(task.done() for task in outputs) and time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    reply = await sys_nc.request("$SYS.REQ.SERVER.PING.VARZ", b"", timeout=2)
                    samples.append(float(json.loads(reply.data)["data"]["cpu"]))
                await asyncio.sleep(1.0)
            per_learner = [await task for task in outputs]
            wall, server_cpu = time.perf_counter() - wall0, process_cpu(pid) - cpu0
            await sys_nc.close()
        finally:
            for proc in workers:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        instructor = await connect_instructor(room.instructor_url)
        records = await read_progress(instructor, timeout=30)
        await instructor.close()
        board = BoardState(room.room.learners)
        board.add(records)
        view = board.view()
    checks = [r for learner in per_learner for r in learner if r["question"]]
    broken = [r for learner in per_learner for r in learner if r["error"]]
    latency = [r["seconds"] * 1000 for r in checks]
    inside = [r.check_ms for r in records if r.check_ms is not None]
    asked = {f"{ex}/{q}" for ex in exercises for q in _questions(ex)}
    return {
        "learners": args.learners,
        "exercises": exercises,
        "checks": len(checks),
        "correct": sum(r["error"] is None for r in checks),
        "problems": broken[:10],
        "learners_all_correct_on_board": sum(
            all(row.marks.get(key) == "correct" for key in asked) for row in view.learners
        ),
        "records": len(records),
        "check_ms": {"p50": percentile(latency, 0.5), "p95": percentile(latency, 0.95), "max": max(latency, default=0)},
        "inside_check_ms": {"p50": percentile(inside, 0.5), "p95": percentile(inside, 0.95)},
        "wall_s": wall,
        "server_cpu_s": server_cpu,
        "server_cpu_percent_of_one_core": 100 * server_cpu / wall if wall else 0.0,
        "varz_cpu_max": max(samples, default=0.0),
    }


def _questions(exercise: str) -> list[str]:
    from buslib.exercises import questions

    return [q.id for q in questions(exercise)]


def _output(proc: subprocess.Popen[str], deadline: float) -> list[dict[str, Any]]:
    try:
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return [{"notebook": "-", "question": None, "seconds": 0.0, "error": "timed out"}]
    lines = out.strip().splitlines()
    return (
        json.loads(lines[-1]) if lines else [{"notebook": "-", "question": None, "seconds": 0.0, "error": "no output"}]
    )


def report(result: dict[str, Any]) -> str:
    c, i = result["check_ms"], result["inside_check_ms"]
    lines = [
        f"{result['learners']} learners x exercises {','.join(result['exercises'])}: "
        f"{result['correct']} of {result['checks']} checks correct; "
        f"{result['learners_all_correct_on_board']} of {result['learners']} learners all correct on the board "
        f"({result['records']} records)",
        f"check latency (q.check() as the learner waits): p50 {c['p50']:.0f} ms, p95 {c['p95']:.0f} ms, max {c['max']:.0f} ms",
        f"inside the check (recorded check_ms):          p50 {i['p50']:.0f} ms, p95 {i['p95']:.0f} ms",
        f"server CPU: {result['server_cpu_s']:.1f} s over {result['wall_s']:.1f} s "
        f"({result['server_cpu_percent_of_one_core']:.0f}% of one core on average; /varz max {result['varz_cpu_max']:.0f}%)",
    ]
    lines += [f"  problem: {p['notebook']} {p['question'] or ''} {p['error']}" for p in result["problems"]]
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--learners", type=int, default=30, help=f"learners at once (1-{MAX_LEARNERS}, default 30)")
    parser.add_argument(
        "--exercises",
        default=",".join(DEFAULT_EXERCISES),
        help=f"which solution notebooks, or 'all' (default: all but {','.join(OWN_SERVERS)}, which starts a "
        "cluster of its own per learner)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole run (default 900)")
    parser.add_argument("--cell-timeout", type=float, default=120.0, help="seconds per notebook cell (default 120)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not 1 <= args.learners <= MAX_LEARNERS:
        parser.error(f"--learners must be between 1 and {MAX_LEARNERS}")
    if args.exercises == "all":
        args.exercises = ",".join(EXERCISES)
    unknown = sorted(set(args.exercises.split(",")) - set(EXERCISES))
    if unknown:
        parser.error(f"--exercises: no exercise {', '.join(unknown)} (the kit has {', '.join(EXERCISES)})")
    result = await run_room(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker_args = argparse.ArgumentParser()
        worker_args.add_argument("--worker", action="store_true")
        worker_args.add_argument("--exercises")
        worker_args.add_argument("--cell-timeout", type=float)
        parsed = worker_args.parse_args()
        worker(parsed.exercises.split(","), parsed.cell_timeout)
    else:
        asyncio.run(main())
