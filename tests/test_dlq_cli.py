"""`buslib dlq ls | show | replay | purge` against the real shared server (NATS_URL), plus one
run of the real entry point against an embedded server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from nats.js.api import ConsumerConfig

import buslib
from buslib.cli import main
from buslib.dlq import DeadLetterQueue
from buslib.retry import Failure


@dataclass
class Filled:
    stream: str
    dlq: str
    prefix: str


async def _fill(url: str, names: Filled) -> None:
    nc = await buslib.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=names.stream, subjects=[f"{names.prefix}.>"])
    dlq = await DeadLetterQueue(nc, stream=names.dlq, alert_subject=None).setup()
    sub = await js.pull_subscribe(
        f"{names.prefix}.>", durable="billing__x", stream=names.stream, config=ConsumerConfig(max_deliver=3)
    )
    cases = [
        ("orders.created", b'{"n": 1}', "ValueError: amount must be positive", "billing"),
        ("orders.paid", b'{"n": 2}', "KeyError: 'customer'", "billing"),
        ("shipments.sent", b'{"n": 3}', "DecodeError: The payload is not valid JSON", "shipping"),
    ]
    for subject, data, _, _ in cases:
        await js.publish(f"{names.prefix}.{subject}", data, headers={"ce-id": subject})
    msgs = []
    while len(msgs) < 3:
        msgs += await sub.fetch(3 - len(msgs), timeout=5)
    for (_, _, reason, group), msg in zip(cases, msgs, strict=True):
        await dlq(
            Failure(
                kind="rejected",
                reason=reason,
                msg=msg,
                group=group,
                stream=names.stream,
                stream_seq=msg.metadata.sequence.stream,
                subject=msg.subject,
                num_delivered=1,
            )
        )
        await msg.term()
    await nc.close()


async def _cleanup(url: str, names: Filled) -> None:
    nc = await buslib.connect(url)
    js = nc.jetstream()
    for name in (names.stream, names.dlq):
        await js.delete_stream(name)
    await js.delete_consumer("DLQ_ADVISORIES", f"dlq_{names.dlq}")
    await nc.close()


async def _stream_messages(url: str, stream: str) -> int:
    nc = await buslib.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


@pytest.fixture
def filled(nats_url: str, unique: str) -> Iterator[Filled]:
    names = Filled(stream=f"CLISRC{unique}", dlq=f"CLIDL{unique}", prefix=f"cli{unique.lower()}")
    asyncio.run(_fill(nats_url, names))
    yield names
    asyncio.run(_cleanup(nats_url, names))


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["dlq", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_lists_every_entry_with_its_reason(filled, capsys):
    code, out, _ = run(capsys, "--stream", filled.dlq, "ls")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"Dead letters in {filled.dlq} on nats://127.0.0.1:")  # which server it looked at
    assert lines[1].split()[:5] == ["ID", "LAST", "FAILURE", "KIND", "GROUP"]
    assert [line.split()[0] for line in lines[2:5]] == ["1", "2", "3"]
    assert "ValueError: amount must be positive" in lines[2] and f"{filled.prefix}.orders.created" in lines[2]
    assert "3 dead letter(s)" in lines[-1]


def test_ls_filters_and_json(filled, capsys):
    code, out, _ = run(
        capsys, "--stream", filled.dlq, "ls", "--json", "--subject", f"{filled.prefix}.orders.*", "--since", "10m"
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == [1, 2] and rows[0]["stream"] == filled.stream
    code, out, _ = run(capsys, "--stream", filled.dlq, "ls", "--json", "--group", "shipping")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [3]
    code, out, _ = run(capsys, "--stream", filled.dlq, "ls", "--reason", "/^keyerror/")
    assert code == 0 and "KeyError" in out and "ValueError" not in out
    code, out, _ = run(capsys, "--stream", filled.dlq, "ls", "--until", "1h")
    assert code == 0 and "No dead letters" in out


def test_show_prints_payload_headers_and_reason(filled, capsys):
    code, out, _ = run(capsys, "--stream", filled.dlq, "show", "2")
    assert code == 0
    assert "KeyError: 'customer'" in out and '{"n": 2}' in out and "ce-id: orders.paid" in out
    code, out, _ = run(capsys, "--stream", filled.dlq, "show", "2", "--json")
    shown = json.loads(out)
    assert shown["data"] == '{"n": 2}' and shown["headers"] == {"ce-id": "orders.paid"} and shown["stream_seq"] == 2


def test_show_of_a_missing_id_is_a_clear_error(filled, capsys):
    code, _, err = run(capsys, "--stream", filled.dlq, "show", "99")
    assert code == 1 and "No dead letter with id 99" in err and "buslib dlq ls" in err


def test_purge_on_a_stream_that_does_not_exist_says_so(capsys, unique):
    code, _, err = run(capsys, "--stream", f"NO_DLQ_{unique}", "purge", "3")
    assert code == 1 and f"no dead-letter stream NO_DLQ_{unique}" in err and "Purged" not in err


def test_replay_republishes_and_removes_only_the_chosen_entries(filled, capsys, nats_url):
    code, out, _ = run(capsys, "--stream", filled.dlq, "replay", "--reason", "ValueError")
    assert code == 0 and out.startswith("replayed 1 ")
    code, out, _ = run(capsys, "--stream", filled.dlq, "replay", "3")
    assert code == 0 and out.startswith("replayed 1 ")
    code, out, _ = run(capsys, "--stream", filled.dlq, "ls", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [2]
    assert asyncio.run(_stream_messages(nats_url, filled.stream)) == 5  # 3 originals + 2 replayed copies


def test_purge_needs_ids_filters_or_all(filled, capsys):
    code, _, err = run(capsys, "--stream", filled.dlq, "purge")
    assert code == 2 and "Nothing was deleted" in err
    code, out, _ = run(capsys, "--stream", filled.dlq, "purge", "--group", "shipping")
    assert code == 0 and out.strip() == "purged 1: 3"
    code, out, _ = run(capsys, "--stream", filled.dlq, "purge", "--all")
    assert code == 0 and out.strip() == "purged 2: 1 2"
    code, out, _ = run(capsys, "--stream", filled.dlq, "ls")
    assert "No dead letters" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["ls", "--since", "last tuesday"], "is not a time"),
        (["ls", "--since", "5m", "--until", "1h"], "is after until"),
        (["ls", "--subject", "orders..x"], "not a valid NATS subject pattern"),
        (["replay", "--reason", "/(unclosed/"], "not a valid regular expression"),
        (["purge", "--group", " "], "group filter is empty"),
    ],
)
def test_bad_filters_exit_2_with_a_clear_message_and_change_nothing(filled, capsys, args, words, nats_url):
    code, _, err = run(capsys, "--stream", filled.dlq, *args)
    assert code == 2 and err.startswith("error: ") and words in err
    assert asyncio.run(_stream_messages(nats_url, filled.dlq)) == 3


def test_a_bad_id_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["dlq", "show", "seven"])
    assert exit_info.value.code == 2 and "'seven' is not an entry id" in capsys.readouterr().err


def test_without_a_server_named_it_refuses_instead_of_reporting_an_empty_throwaway_server():
    """An embedded server started just for `ls` would be empty: a reassuring answer about the wrong server."""
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "buslib", "dlq", "ls"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "Neither --url nor NATS_URL says" in done.stderr and "buslib server" in done.stderr


def test_ls_of_a_queue_that_does_not_exist_names_the_server_and_fails(capsys, unique, nats_url):
    code, out, err = run(capsys, "--stream", f"NO_DLQ_{unique}", "ls")
    assert code == 1 and out == ""
    assert f"no dead-letter stream NO_DLQ_{unique} on {nats_url}" in err and "Is this the server" in err
