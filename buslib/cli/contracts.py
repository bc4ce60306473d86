"""``buslib contracts snapshot | check | asyncapi | ls``: the CI gate for event contracts, and an AsyncAPI document.

The modules come from ``[tool.buslib] contracts`` in the nearest pyproject.toml (or
``--module``); the snapshot folder is ``contracts/`` next to that pyproject.toml, so the
commands work from any subfolder of the project.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from buslib.contracts.asyncapi import asyncapi_document
from buslib.contracts.snapshot import check_snapshot, project_settings, write_snapshot
from buslib.contracts.versions import contracts, downcast_targets, import_contract_modules, subjects_readable_by
from buslib.errors import ContractError, IncompatibleContractError


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("contracts", help="event contracts: snapshot, CI check, AsyncAPI, list")
    actions = parser.add_subparsers(dest="contracts_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser, *, with_dir: bool = True) -> None:
        p.add_argument(
            "--module",
            action="append",
            dest="modules",
            metavar="MODULE",
            help="a module defining contracts (repeatable; default: [tool.buslib] contracts in pyproject.toml)",
        )
        if with_dir:
            p.add_argument(
                "--dir", type=Path, help="snapshot folder (default: contracts/ next to the project's pyproject.toml)"
            )

    snap = actions.add_parser("snapshot", help="write the current JSON Schemas to the snapshot folder")
    common(snap)
    snap.add_argument("--mode", help="compatibility mode to record (default: keep the folder's, else BACKWARD)")
    snap.add_argument("--force", action="store_true", help="record even an incompatible change (prefer a new version)")
    snap.set_defaults(run=_snapshot)

    chk = actions.add_parser("check", help="compare the code's contracts with the snapshot (exit 1 if incompatible)")
    common(chk)
    chk.set_defaults(run=_check)

    api = actions.add_parser("asyncapi", help="write an AsyncAPI 3.0 document of the contracts")
    common(api, with_dir=False)
    api.add_argument("--out", type=Path, help="output file (default: stdout)")
    api.add_argument("--title", default="JetStream Bus Lab events", help="document title")
    api.add_argument("--server", default="127.0.0.1:4222", help="NATS host:port put in the document")
    api.set_defaults(run=_asyncapi)

    ls = actions.add_parser("ls", help="list the contracts, their subjects and converters")
    common(ls, with_dir=False)
    ls.set_defaults(run=_ls)


def _modules(args: argparse.Namespace) -> list[str]:
    if args.modules:
        return import_contract_modules(args.modules)
    settings = project_settings()
    if str(settings.root) not in sys.path:  # the project's own modules import from any subfolder
        sys.path.insert(0, str(settings.root))
    return import_contract_modules(settings.modules)


def _snapshot_dir(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return args.dir
    try:
        return project_settings().snapshot_dir
    except ContractError:  # no pyproject.toml (modules given with --module): contracts/ here
        return Path("contracts")


def _error(err: ContractError) -> int:
    print(
        f"error: {err}\n(Options: --module MODULE names a contract module, --dir DIR the snapshot folder.)",
        file=sys.stderr,
    )
    return 2


def _snapshot(args: argparse.Namespace) -> int:
    try:
        result = write_snapshot(_snapshot_dir(args), modules=_modules(args), mode=args.mode, force=args.force)
    except IncompatibleContractError as err:
        print(f"error: {err}\n(On the command line: --force.)", file=sys.stderr)
        return 1
    except ContractError as err:
        return _error(err)
    print(result)
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        result = check_snapshot(_snapshot_dir(args), modules=_modules(args))
    except ContractError as err:
        return _error(err)
    print(result)
    return 0 if result.ok else 1


def _asyncapi(args: argparse.Namespace) -> int:
    try:
        document = asyncapi_document(contracts(_modules(args)), title=args.title, server=args.server)
    except ContractError as err:
        return _error(err)
    text = json.dumps(document, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
        print(f"Wrote {args.out} ({len(document['channels'])} channels).")
    else:
        sys.stdout.write(text)
    return 0


def _ls(args: argparse.Namespace) -> int:
    try:
        found = contracts(_modules(args))
    except ContractError as err:
        return _error(err)
    if not found:
        print("No contracts found in the given modules.")
    for cls in found:
        extra = []
        if older := downcast_targets(cls):
            extra.append("dual-publishes " + ", ".join(c.subject() for c in older))
        if len(readable := subjects_readable_by(cls)) > 1:
            extra.append("reads " + ", ".join(readable))
        note = f"  ({'; '.join(extra)})" if extra else ""
        print(f"{cls.subject():40} {cls.__module__}.{cls.__qualname__}{note}")
    return 0
