"""``buslib progress``: run the exercise notebooks headless and print each question's status."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from buslib.exercises.progress import format_table, progress


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "progress",
        help="run the exercise notebooks and show which questions are correct",
        description="Execute every exercise notebook headless (a fresh kernel each, NATS_URL inherited) "
        "and report each question's status: correct, incorrect, not attempted, or not checked.",
    )
    parser.add_argument("--dir", default="exercises", help="folder with the exercise notebooks (default: exercises)")
    parser.add_argument("--only", metavar="TEXT", help="only notebooks whose file name contains TEXT, e.g. 01")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per cell (default 120)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rows = progress(args.dir, only=args.only, timeout=args.timeout)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(format_table(rows))
    return 0
