"""The ``buslib`` command (also ``python -m buslib``): every argparse and print of the kit lives here.

>>> main(["server", "--help"])   # doctest: +SKIP

One module per command, each with ``add_parser(commands)`` and ``run(args) -> exit code``;
the table below is the whole list. The library underneath returns data and raises errors.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from buslib.cli import contracts, dlq, doctor, progress, server, workshop
from buslib.errors import BusError

__all__ = ["COMMANDS", "build_parser", "main"]

# name -> the module that adds and runs it, in the order `buslib --help` lists them
COMMANDS: dict[str, ModuleType] = {
    "server": server,
    "doctor": doctor,
    "dlq": dlq,
    "contracts": contracts,
    "progress": progress,
    "workshop": workshop,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="buslib", description="JetStream Bus Lab tools.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except BusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
