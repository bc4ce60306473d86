"""``buslib dlq ls | show ID | replay [IDS] | purge [IDS]``: operate a dead-letter stream from a terminal.

It always says which server it looked at, and never starts one of its own: the dead letters
a lesson made live in that notebook's server, so the command needs ``--url`` or ``NATS_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from buslib.connection import URL_ENV, connect, redact
from buslib.dlq import DEAD_LETTER_STREAM, DeadLetter, DeadLetterFilter, DeadLetterNotFound, DeadLetterQueue
from buslib.errors import FilterError

NO_SERVER = (
    "error: which server holds the dead letters? Neither --url nor NATS_URL says, and buslib dlq does not start a "
    "server of its own (it would be empty).\n"
    "A lesson's embedded server belongs to its notebook kernel. To reach its dead letters from a terminal, run "
    "`buslib server` in one terminal, start JupyterLab with NATS_URL=nats://127.0.0.1:4222 make lab, re-run the "
    "lesson, then: NATS_URL=nats://127.0.0.1:4222 buslib dlq ls. Or list them in the notebook: await dlq.list()."
)


def add_parser(commands: Any) -> None:
    dlq = commands.add_parser(
        "dlq",
        help="list, show, replay and purge dead letters",
        description="Inspect and operate the dead-letter stream.",
    )
    dlq.add_argument("--url", help="the NATS server holding the dead letters (default: $NATS_URL)")
    dlq.add_argument("--stream", default=DEAD_LETTER_STREAM, help=f"dead-letter stream (default {DEAD_LETTER_STREAM})")
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--subject", help="original subject; wildcards ok (orders.*.v1, orders.>)")
        p.add_argument("--reason", help="text the reason contains, or /regex/")
        p.add_argument("--since", help="failed at or after: ISO time (UTC if no zone) or an age like 10m, 2h, 1d")
        p.add_argument("--until", help="failed at or before: ISO time or an age")
        p.add_argument("--group", help="consumer group")

    ls = actions.add_parser("ls", help="list dead letters")
    filters(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    show = actions.add_parser("show", help="show one dead letter with its payload and headers")
    show.add_argument("id", type=_entry_id, help="the entry id (see ls)")
    show.add_argument("--json", action="store_true", help="as JSON")
    replay = actions.add_parser("replay", help="republish dead letters to their original subjects")
    replay.add_argument("ids", nargs="*", type=_entry_id, help="entry ids (default: all matching the filters)")
    filters(replay)
    purge = actions.add_parser("purge", help="delete dead letters")
    purge.add_argument("ids", nargs="*", type=_entry_id, help="entry ids")
    filters(purge)
    purge.add_argument("--all", action="store_true", help="delete every entry (when no ids or filters are given)")
    for p in (ls, show, replay, purge):
        p.set_defaults(run=run)
        # also accepted after the action: `buslib dlq ls --stream X`
        p.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--stream", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _entry_id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an entry id: ids are whole numbers >= 1 (see `buslib dlq ls`)."
        )
    return int(text)


def run(args: argparse.Namespace) -> int:
    try:
        chosen = DeadLetterFilter.parse(
            subject=getattr(args, "subject", None),
            reason=getattr(args, "reason", None),
            since=getattr(args, "since", None),
            until=getattr(args, "until", None),
            group=getattr(args, "group", None),
        )
    except FilterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    url = args.url or os.environ.get(URL_ENV, "").strip()
    if not url:
        print(NO_SERVER, file=sys.stderr)
        return 2
    return asyncio.run(_run(args, chosen, url))


async def _run(args: argparse.Namespace, chosen: DeadLetterFilter, url: str) -> int:
    nc = await connect(url, name="buslib-dlq")
    where = f"on {redact(url)}"
    try:
        dlq = DeadLetterQueue(nc, stream=args.stream, alert_subject=None)
        command = args.dlq_command
        if command == "ls":
            try:
                rows = await dlq.list(chosen)
            except DeadLetterNotFound:
                print(
                    f"error: there is no dead-letter stream {args.stream} {where}: nothing was ever dead-lettered "
                    "into it there. Is this the server and the queue you meant? (--url or NATS_URL, --stream)",
                    file=sys.stderr,
                )
                return 1
            if args.json:
                for entry in rows:
                    print(json.dumps(entry.summary()))
            else:
                print(f"Dead letters in {args.stream} {where}:")
                _print_table(rows, args.stream)
        elif command == "show":
            entry = await dlq.get(args.id)
            if args.json:
                print(
                    json.dumps(
                        {**entry.summary(), "headers": entry.headers, "data": entry.data.decode("utf-8", "replace")},
                        indent=2,
                    )
                )
            else:
                _print_entry(entry)
        elif command == "replay":
            result = await dlq.replay(chosen, ids=args.ids or None)
            print(
                f"replayed {len(result.replayed)} ({len(result.duplicates)} already there from an earlier replay), "
                f"failed {len(result.failed)}"
            )
            for entry_id, why in sorted(result.failed.items()):
                print(f"  {entry_id}: {why}", file=sys.stderr)
            return 1 if result.failed else 0
        else:
            if not args.ids and chosen.empty and not args.all:
                print(
                    "error: purge deletes entries for good: give ids, a filter, or --all. Nothing was deleted.",
                    file=sys.stderr,
                )
                return 2
            removed = await dlq.purge(chosen, ids=args.ids or None, everything=True)
            print(f"purged {len(removed)}: {' '.join(map(str, removed))}".rstrip(": "))
        return 0
    finally:
        await nc.close()


def _print_table(rows: list[DeadLetter], stream: str) -> None:
    if not rows:
        print(f"No dead letters in {stream} match.")
        return
    table = [("ID", "LAST FAILURE", "KIND", "GROUP", "SUBJECT", "DELIV", "REASON")]
    for e in rows:
        when = e.last_failure_at.strftime("%Y-%m-%d %H:%M:%S") if e.last_failure_at else "-"
        reason = e.reason if len(e.reason) <= 60 else e.reason[:59] + "…"
        table.append((str(e.id), when, e.kind, e.group, e.subject, str(e.num_delivered), reason))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    print(f"{len(rows)} dead letter(s). `buslib dlq show ID` shows one; `buslib dlq replay ID` republishes it.")


def _print_entry(entry: DeadLetter) -> None:
    for key, value in entry.summary().items():
        print(f"{key:>17}: {value}")
    print(f"{'headers':>17}:")
    for key, value in entry.headers.items():
        print(f"{'':>19}{key}: {value}")
    print(f"{'data':>17}: {entry.data.decode('utf-8', 'replace')}")
