"""``buslib progress``: each question's status, from the exercise notebooks or from a workshop's records."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from buslib.exercises.progress import format_table, progress


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "progress",
        help="show which questions are correct: run the exercise notebooks, or read a workshop's records",
        description="Execute every exercise notebook headless (a fresh kernel each, NATS_URL inherited) "
        "and report each question's status: correct, incorrect, not attempted, or not checked. "
        "With --workshop, read instead every learner's latest checks from a workshop server.",
    )
    parser.add_argument("--dir", default="exercises", help="folder with the exercise notebooks (default: exercises)")
    parser.add_argument("--only", metavar="TEXT", help="only notebooks whose file name contains TEXT, e.g. 01")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per cell (default 120)")
    parser.add_argument(
        "--workshop",
        nargs="?",
        const="",
        metavar="URL",
        help="read a workshop's records: the instructor's URL (default $BUSLIB_WORKSHOP_URL, else the --room's)",
    )
    parser.add_argument("--room", type=Path, help="with --workshop: the room's folder (default .buslib/workshop)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    output.add_argument(
        "--csv", action="store_true", help="print CSV (with --workshop: one row per learner and question)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.workshop is not None:
        return asyncio.run(_workshop(args))
    rows = progress(args.dir, only=args.only, timeout=args.timeout)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    elif args.csv:
        _write_csv([asdict(r) for r in rows])
    else:
        print(format_table(rows))
    return 0


async def _workshop(args: argparse.Namespace) -> int:
    from buslib.workshop import DEFAULT_ROOM, Room, instructor_urls, read_progress
    from buslib.workshop.board import BoardState, catalogue
    from buslib.workshop.progress import connect_instructor
    from buslib.workshop.serve import instructor_tls

    room_dir = args.room or DEFAULT_ROOM
    url = args.workshop or (None if args.room else os.environ.get("BUSLIB_WORKSHOP_URL"))
    learners, tls = None, None
    if not url:
        url = instructor_urls(room_dir)[0]
        learners, tls = Room.load(room_dir).learners, instructor_tls(room_dir)
    nc = await connect_instructor(url, name="buslib-progress", tls=tls)
    try:
        records = await read_progress(nc)
    finally:
        await nc.close()
    state = BoardState(learners)
    state.add(records)
    titles = catalogue()
    attempts: dict[tuple[str, str], int] = {}
    latest: dict[tuple[str, str], Any] = {}
    for record in records:
        attempts[record.account, record.key] = attempts.get((record.account, record.key), 0) + 1
        latest[record.account, record.key] = record
    rows = []
    for row in state.view().learners:
        for key in titles:
            found = latest.get((row.account, key))
            rows.append(
                {
                    "learner": row.user,
                    "account": row.account,
                    "question": key,
                    "title": titles[key],
                    "status": found.status if found else "not checked",
                    "checks": attempts.get((row.account, key), 0),
                    "time": found.time if found else None,
                    "detail": found.message if found else "",
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.csv:
        _write_csv(rows)
    else:
        _print_workshop_table(rows, len(records))
    return 0


def _print_workshop_table(rows: list[dict[str, Any]], records: int) -> None:
    shown = [r for r in rows if r["checks"]]
    headers = ("learner", "question", "status", "checks", "detail")
    cells = [(r["learner"], r["question"], r["status"], str(r["checks"]), _clip(r["detail"], 60)) for r in shown]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(headers)]
    for line in [headers, *cells]:
        print("  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)).rstrip())
    learners = {r["learner"] for r in rows}
    correct = sum(r["status"] == "correct" for r in rows)
    print(f"\n{len(learners)} learners, {correct} of {len(rows)} learner-questions correct, {records} checks recorded.")


def _write_csv(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
