"""``buslib doctor``: check this machine for the kit; one OK/FAIL line per check, the fix under each failure."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from buslib.teaching.doctor import Finding, run_checks


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("doctor", help="check Python, packages, the server, JetStream and widgets")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print("buslib doctor: checking this machine for JetStream Bus Lab", flush=True)
    return report(run_checks())


def report(findings: list[Finding], *, write: Callable[[str], object] = print) -> int:
    """Print findings as OK/FAIL lines with the fix under each failure; return the exit code."""
    for finding in findings:
        write(f"  {'OK  ' if finding.ok else 'FAIL'}  {finding.name}: {finding.detail}")
        if not finding.ok:
            for number, line in enumerate(finding.fix.splitlines()):
                write(("          fix: " if number == 0 else "               ") + line)
    failed = [finding.name for finding in findings if not finding.ok]
    write(
        "All checks passed: run `make lab`." if not failed else f"{len(failed)} check(s) failed: {', '.join(failed)}."
    )
    return 1 if failed else 0
