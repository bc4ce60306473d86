"""Bad input on a workshop server: each gets a clear error that says what to do (real server, 127.0.0.1).

Wrong or missing credentials, a URL from an older roster, an expired room, the instructor's
URL in a learner's notebook, a password that stops working under a live connection, and a
self-signed TLS certificate Python does not trust.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _bus_helpers import wait_until
from _workshop import free_port, raw_connect, served_room, urls

import buslib
from buslib.cli import main as cli
from buslib.errors import ConnectError, CredentialsError, WorkshopError
from buslib.exercises import ex00
from buslib.workshop import Room, WorkshopServer, create_room, read_roster
from buslib.workshop.config import render_accounts_config
from buslib.workshop.room import hash_password


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("auth") / "room"
    with served_room(folder, learners=2):
        yield urls(folder)


def _with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    user = rest.split(":", 1)[0]
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[1]}"


async def test_a_wrong_password_says_it_was_refused_and_to_ask_for_the_current_roster(room):
    wrong = _with_password(room["L01"], "WrongPassword123")
    with pytest.raises(CredentialsError) as caught:
        await buslib.connect(wrong)
    message = str(caught.value)
    assert "refused the user and password in your NATS_URL" in message and "'learner01'" in message
    assert "older roster" in message and "ask your instructor for your line of the current roster" in message
    assert "WrongPassword123" not in message  # the password is never printed
    assert "is the server running" not in message


async def test_another_learners_password_is_refused_the_same_way(room):
    crossed = _with_password(room["L01"], room["L02"].split(":")[2].split("@")[0])
    with pytest.raises(CredentialsError, match="current roster"):
        await buslib.connect(crossed)


async def test_no_credentials_says_to_use_the_whole_roster_line(room):
    bare = "nats://" + room["L01"].split("@", 1)[1]
    with pytest.raises(CredentialsError) as caught:
        await buslib.connect(bare)
    message = str(caught.value)
    assert "needs a user name and password" in message and "whole line of the roster" in message
    assert "nats://learnerNN:PASSWORD@127.0.0.1:" in message


async def test_nothing_connects_without_credentials_not_even_plain_nats_py(room):
    with pytest.raises(Exception, match="Authorization Violation|no servers"):
        await raw_connect("nats://" + room["L01"].split("@", 1)[1])


@pytest.mark.parametrize(("who", "words"), [("INSTRUCTOR", "the instructor's"), ("SYS", "system user")])
async def test_the_instructors_or_system_url_is_refused_in_a_learners_notebook(room, who, words):
    with pytest.raises(CredentialsError) as caught:
        await buslib.connect(room[who])
    message = str(caught.value)
    assert words in message and f"account {who}" in message and "your own line of the roster" in message
    # the workshop's own tools may use them
    nc = await buslib.connect(room[who], instructor=True, require_jetstream=who == "INSTRUCTOR")
    await nc.close()


def test_a_check_run_with_the_instructors_url_says_so_instead_of_checking(room, monkeypatch):
    monkeypatch.setenv("NATS_URL", room["INSTRUCTOR"])
    outcome = ex00.q1.outcome({"server_version": "2.15.1"})
    assert outcome.status.value == "error" and "instructor's credentials" in outcome.message


def test_an_expired_room_is_not_served_and_says_what_to_do(tmp_path, capsys):
    create_room(tmp_path / "room", learners=1, port=free_port(), monitor_port=free_port())
    room = Room.load(tmp_path / "room")
    room.valid_until = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    room.save()
    with pytest.raises(WorkshopError, match="expired at") as caught:
        WorkshopServer(tmp_path / "room").start()
    assert "create a new room" in str(caught.value) and "extend the room" in str(caught.value)
    assert cli(["workshop", "serve", "--room", str(tmp_path / "room")]) == 1
    assert "expired at" in capsys.readouterr().err
    # extending it serves it again, with the same passwords
    assert cli(["workshop", "extend", "--room", str(tmp_path / "room"), "--until", "1h"]) == 0
    assert not Room.load(tmp_path / "room").expired()


async def test_a_url_from_an_older_roster_is_refused_after_a_new_room(tmp_path):
    folder = tmp_path / "room"
    create_room(folder, learners=1, port=free_port(), monitor_port=free_port())
    old_url = read_roster(folder)[0].nats_url
    async with WorkshopServer(folder):
        nc = await buslib.connect(old_url)  # valid while its room is the one served
        await nc.close()
    room = Room.load(folder)
    create_room(folder, learners=1, port=room.port, monitor_port=room.monitor_port, overwrite=True)
    server = WorkshopServer(folder).start()
    try:
        with pytest.raises(CredentialsError, match="older roster"):
            await buslib.connect(old_url)
        nc = await buslib.connect(read_roster(folder)[0].nats_url)
        await nc.close()
    finally:
        server.stop()


async def test_a_live_connection_whose_password_stops_working_is_closed_not_retried_forever(tmp_path, caplog):
    """The instructor restarts the room with a new roster: the kit's reconnect-forever would loop on it."""
    folder = tmp_path / "room"
    create_room(folder, learners=1, port=free_port(), monitor_port=free_port())
    server = WorkshopServer(folder).start()
    nc = await buslib.connect(read_roster(folder)[0].nats_url)
    try:
        server.stop()
        room = Room.load(folder)
        create_room(folder, learners=1, port=room.port, monitor_port=room.monitor_port, overwrite=True)
        with caplog.at_level(logging.ERROR, logger="buslib"):
            server = WorkshopServer(folder).start()
            await wait_until(lambda: nc.is_closed, timeout=30, what="the stale connection to close")
        assert any("no longer accepts" in r.getMessage() and "current roster" in r.getMessage() for r in caplog.records)
    finally:
        await nc.close()
        server.stop()


async def test_a_live_connection_dropped_by_a_config_reload_says_why(tmp_path, caplog):
    folder = tmp_path / "room"
    create_room(folder, learners=1, port=free_port(), monitor_port=free_port())
    async with WorkshopServer(folder) as server:
        nc = await buslib.connect(read_roster(folder)[0].nats_url)
        room = Room.load(folder)
        hashes = {user: hash_password("a new password") for user in ("sys", "instructor", "learner01")}
        (folder / "accounts.conf").write_text(render_accounts_config(room, hashes))
        with caplog.at_level(logging.ERROR, logger="buslib"):
            os.kill(server.pid, signal.SIGHUP)  # nats-server reloads its configuration
            await wait_until(lambda: nc.is_closed, timeout=30, what="the dropped connection to close")
        await nc.close()
    assert any("no longer accepts" in r.getMessage() for r in caplog.records)


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1, made with the openssl command."""

    def run(*command: str) -> None:
        subprocess.run(command, check=True, capture_output=True, timeout=60, cwd=folder)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=buslib workshop test CA")  # fmt: skip
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_with_a_self_signed_certificate_needs_ssl_cert_file_and_says_so(tmp_path):
    ca, cert, key = _certificates(tmp_path)
    folder = tmp_path / "room"
    with served_room(folder, learners=1, tls_cert=cert, tls_key=key, tls_ca=ca):
        url = read_roster(folder)[0].nats_url
        assert url.startswith("tls://learner01:")
        script = (
            "import asyncio, buslib\n"
            "async def main():\n"
            "    try:\n"
            "        nc = await buslib.connect()\n"
            "    except buslib.ConnectError as err:\n"
            "        print('ERROR', err)\n"
            "    else:\n"
            "        print('OK', (await nc.jetstream().account_info()).limits.max_streams)\n"
            "        await nc.close()\n"
            "asyncio.run(main())\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
        untrusted = subprocess.run([sys.executable, "-c", script], env={**env, "NATS_URL": url},
                                   capture_output=True, text=True, timeout=120)  # fmt: skip
        trusted = subprocess.run([sys.executable, "-c", script], env={**env, "NATS_URL": url, "SSL_CERT_FILE": str(ca)},
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
    assert untrusted.stdout.startswith("ERROR"), untrusted.stdout + untrusted.stderr
    assert "does not trust" in untrusted.stdout and "SSL_CERT_FILE=/path/to/ca.pem" in untrusted.stdout
    assert trusted.stdout.strip() == "OK 32", trusted.stdout + trusted.stderr
    assert (folder / "ca.pem").read_text() == ca.read_text()  # the file to hand out


async def test_a_server_that_is_not_running_still_says_so(tmp_path):
    create_room(tmp_path / "room", learners=1, port=free_port(), monitor_port=free_port())
    with pytest.raises(ConnectError, match="is the server running") as caught:
        await buslib.connect(read_roster(tmp_path / "room")[0].nats_url)
    assert not isinstance(caught.value, CredentialsError)


def test_bad_room_settings_are_refused_with_a_reason(tmp_path):
    with pytest.raises(WorkshopError, match="1 to 500 learners"):
        create_room(tmp_path / "a", learners=0)
    with pytest.raises(WorkshopError, match="address learners will put in"):
        create_room(tmp_path / "b", learners=2, listen="0.0.0.0")
    with pytest.raises(WorkshopError, match="cannot be the address learners put in"):
        create_room(tmp_path / "b2", learners=2, host="0.0.0.0")
    with pytest.raises(WorkshopError, match="both the certificate and its private key"):
        create_room(tmp_path / "c", learners=2, tls_cert=tmp_path / "x.pem")
    with pytest.raises(WorkshopError, match="does not exist"):
        create_room(tmp_path / "d", learners=2, tls_cert=tmp_path / "x.pem", tls_key=tmp_path / "y.pem")
    create_room(tmp_path / "e", learners=1)
    with pytest.raises(WorkshopError, match="already holds workshop"):
        create_room(tmp_path / "e", learners=1)
    with pytest.raises(WorkshopError, match="holds no workshop room"):
        Room.load(tmp_path / "nothing")


def test_init_refuses_to_replace_a_room_unless_forced(tmp_path, capsys):
    folder = str(tmp_path / "room")
    assert cli(["workshop", "init", "--learners", "2", "--out", folder]) == 0
    first = read_roster(folder)[0].password
    assert cli(["workshop", "init", "--learners", "2", "--out", folder]) == 1
    assert "add --force" in capsys.readouterr().err
    assert read_roster(folder)[0].password == first
    assert cli(["workshop", "init", "--learners", "2", "--out", folder, "--force"]) == 0
    assert read_roster(folder)[0].password != first


def test_roster_prints_one_learners_line(tmp_path, capsys):
    folder = str(tmp_path / "room")
    assert cli(["workshop", "init", "--learners", "3", "--out", folder]) == 0
    capsys.readouterr()
    assert cli(["workshop", "roster", "--room", folder, "--learner", "2"]) == 0
    assert capsys.readouterr().out.strip() == f"learner02  NATS_URL={read_roster(folder)[1].nats_url}"
    assert cli(["workshop", "roster", "--room", folder, "--learner", "9"]) == 1


async def test_a_new_room_in_the_same_folder_starts_empty_and_is_refused_while_served(tmp_path):
    folder = tmp_path / "room"
    create_room(folder, learners=1, port=free_port(), monitor_port=free_port())
    async with WorkshopServer(folder):
        nc = await buslib.connect(read_roster(folder)[0].nats_url)
        await nc.jetstream().add_stream(name="FROM_LAST_SESSION", subjects=["last.>"])
        await nc.close()
        with pytest.raises(WorkshopError, match="being served right now"):
            create_room(folder, learners=1, overwrite=True)
    room = Room.load(folder)
    create_room(folder, learners=1, port=room.port, monitor_port=room.monitor_port, overwrite=True)
    async with WorkshopServer(folder):
        nc = await buslib.connect(read_roster(folder)[0].nats_url)
        assert await nc.jetstream().streams_info() == []  # the new learner01 sees nothing of the old one
        await nc.close()


def test_serve_stops_the_server_when_the_passwords_expire(tmp_path, capsys):
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3)
    create_room(tmp_path / "room", learners=1, port=free_port(), monitor_port=free_port(), valid_until=soon)
    assert cli(["workshop", "serve", "--room", str(tmp_path / "room"), "--for", "60"]) == 0
    out = capsys.readouterr().out
    assert "is serving 1 learners" in out and "expired at" in out and "stopping" in out
    assert not (tmp_path / "room" / "store" / ".buslib-owner").exists()  # the server is gone, its claim released
