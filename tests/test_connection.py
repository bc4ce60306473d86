"""Which server, and connecting to it: NATS_URL wins, fail fast, then reconnect forever.

The reconnect-through-restart tests live in test_server.py next to restart() and crash().
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

import buslib
import buslib.connection as connection
from buslib.connection import check_url, redact
from buslib.errors import ConnectError
from buslib.retry import backoff_delay
from buslib.server import EmbeddedServer

# The promise of issue 2: a dead or silent server is reported within 5 s (nats-py's default
# waits ~120 s). The design point is 2 attempts x connect_timeout 1.5 s = ~3.1 s.
FAIL_FAST_SECONDS = 5.0


@pytest.fixture
def own_embedded(monkeypatch) -> Iterator[None]:
    """No NATS_URL, and a fresh process-wide embedded server that is stopped afterwards."""
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.setattr(connection, "_shared", None)
    yield
    if connection._shared is not None:
        connection._shared.stop()


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP port that accepts connections and never says a word (not a NATS server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"nats://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- which server ------------------------------------------------------------------------


def test_nats_url_wins(monkeypatch):
    monkeypatch.setenv("NATS_URL", "nats://instructor.example:4222")
    assert buslib.ensure_server() == "nats://instructor.example:4222"


def test_without_nats_url_one_embedded_server_per_process(own_embedded):
    url = buslib.ensure_server()
    assert url.startswith("nats://127.0.0.1:")
    assert buslib.ensure_server() == url
    assert buslib.embedded_server() is buslib.embedded_server()


async def test_connect_without_arguments_uses_the_embedded_server(own_embedded):
    nc = await buslib.connect()
    try:
        assert nc.connected_url.port == buslib.embedded_server().port
        assert (await nc.jetstream().account_info()).api.level >= 1
    finally:
        await nc.close()


def test_a_dead_embedded_server_comes_back_on_the_same_port(own_embedded):
    first = buslib.embedded_server()
    port = first.port
    first.crash()
    again = buslib.embedded_server()
    assert again is first and again.running and again.port == port


# -- malformed URLs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://localhost:4222", "nats://", "nats://localhost:four", "nats://localhost:99999", "nats://a:4222,ftp://b"],
)
def test_malformed_url_is_explained(url):
    with pytest.raises(ConnectError) as caught:
        check_url(url)
    message = str(caught.value)
    assert "is not a valid NATS URL" in message and "nats://localhost:4222" in message
    assert "NATS_URL" in message


@pytest.mark.parametrize(
    "url", ["nats://localhost:4222", "localhost", "127.0.0.1:4222", "tls://demo.example:4443", "nats://a:1, nats://b:2"]
)
def test_wellformed_urls_pass_unchanged(url):
    assert check_url(url) == url


async def test_malformed_nats_url_env_fails_before_connecting(monkeypatch):
    monkeypatch.setenv("NATS_URL", "htp://localhost:4222")
    with pytest.raises(ConnectError, match="not a valid NATS URL"):
        await buslib.connect()


def test_passwords_never_reach_an_error_message():
    assert redact("nats://alice:s3cret@host:4222") == "nats://alice:***@host:4222"
    assert redact("nats://a:x@h1:1,nats://b:y@h2:2") == "nats://a:***@h1:1,nats://b:***@h2:2"
    assert redact("nats://token@host:4222") == "nats://token@host:4222"  # no password part
    with pytest.raises(ConnectError) as caught:
        check_url("http://alice:s3cret@host:4222")
    assert "s3cret" not in str(caught.value)


# -- fail fast ------------------------------------------------------------------------------


async def test_nothing_listening_fails_fast_with_what_to_try():
    url = f"nats://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(ConnectError) as caught:
        await buslib.connect(url)
    assert time.monotonic() - started < FAIL_FAST_SECONDS
    message = str(caught.value)
    assert url in message and "connection refused" in message
    for hint in ("buslib doctor", "buslib server", "docker compose up -d", "NATS_URL"):
        assert hint in message


async def test_a_silent_server_fails_within_five_seconds(silent_listener):
    """The worst case: TCP connects, then no INFO ever comes (a firewall, the wrong port)."""
    started = time.monotonic()
    with pytest.raises(ConnectError, match="no answer in time") as caught:
        await buslib.connect(silent_listener)
    elapsed = time.monotonic() - started
    assert elapsed < FAIL_FAST_SECONDS, f"took {elapsed:.1f} s"
    assert silent_listener in str(caught.value)


async def test_a_server_slow_at_every_handshake_step_still_fails_within_five_seconds():
    """INFO just before each attempt's timeout, then no PONG: per-step timeouts alone would add up to ~6 s."""

    async def slow_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1.3)  # under the 1.5 s step timeout
        writer.write(b'INFO {"server_id":"slow","version":"2.15.1","headers":true,"max_payload":1048576}\r\n')
        await writer.drain()
        await reader.read()  # read CONNECT and PING, never answer; returns when the client hangs up
        writer.close()

    peer = await asyncio.start_server(slow_peer, "127.0.0.1", 0)
    url = f"nats://127.0.0.1:{peer.sockets[0].getsockname()[1]}"
    try:
        started = time.monotonic()
        with pytest.raises(ConnectError, match="no answer in time"):
            await buslib.connect(url)
        elapsed = time.monotonic() - started
        assert elapsed < FAIL_FAST_SECONDS, f"took {elapsed:.1f} s"
    finally:
        peer.close()
        await peer.wait_closed()


async def test_the_monitoring_port_is_not_a_nats_server():
    """A classic slip: NATS_URL pointing at the HTTP monitoring port (8222 instead of 4222)."""
    with EmbeddedServer() as server:
        with pytest.raises(ConnectError, match="no answer in time|not a NATS server"):
            await buslib.connect(f"nats://127.0.0.1:{server.monitor_port}")


def test_an_unknown_host_is_named_as_such():
    """Unit-level: resolving a host may be slow or offline in CI, the wording must not depend on it."""
    text = connection._describe(socket.gaierror(-2, "Name or service not known"))
    assert text == "unknown host (Name or service not known): check the host name's spelling"


async def test_password_is_redacted_in_connect_errors():
    with pytest.raises(ConnectError) as caught:
        await buslib.connect(f"nats://alice:s3cret@127.0.0.1:{_free_port()}")
    assert "s3cret" not in str(caught.value) and "alice:***@" in str(caught.value)


async def test_user_error_callback_still_called():
    seen: list[Exception] = []

    async def on_error(err: Exception) -> None:
        seen.append(err)

    with pytest.raises(ConnectError):
        await buslib.connect(f"nats://127.0.0.1:{_free_port()}", error_cb=on_error)
    assert seen and all(isinstance(err, OSError) for err in seen)


# -- JetStream required ------------------------------------------------------------------------


async def test_a_server_without_jetstream_is_refused_with_the_fix():
    with EmbeddedServer(jetstream=False) as server:
        with pytest.raises(ConnectError) as caught:
            await buslib.connect(server.url)
        message = str(caught.value)
        assert "JetStream disabled" in message and "-js" in message
        assert "store messages" in message

        nc = await buslib.connect(server.url, require_jetstream=False)  # core NATS is fine when asked
        try:
            assert nc.is_connected
        finally:
            await nc.close()


# -- reconnect forever, with backoff and jitter ------------------------------------------------


def test_backoff_delay_grows_exponentially_up_to_the_cap():
    for attempt in range(12):
        ceiling = min(5.0, 0.1 * 2**attempt)
        delays = [backoff_delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # it does use the range: waits grow with attempts
    assert backoff_delay(10_000) <= 5.0  # no overflow for a very long outage


def test_backoff_delay_has_jitter():
    """Two clients that lost the same server must not retry in lockstep."""
    delays = {round(backoff_delay(5), 6) for _ in range(50)}
    assert len(delays) > 40


async def test_a_connected_client_survives_a_long_outage():
    """After many failed reconnect attempts the client is still reconnecting, not closed."""
    with EmbeddedServer() as server:
        reconnected = asyncio.Event()
        failures: list[Exception] = []

        async def on_reconnect() -> None:
            reconnected.set()

        async def on_error(err: Exception) -> None:
            failures.append(err)

        nc = await buslib.connect(server.url, reconnected_cb=on_reconnect, error_cb=on_error)
        try:
            server.crash()
            deadline = time.monotonic() + 20
            while len(failures) < 5 and time.monotonic() < deadline:  # well past the first connect's one retry
                await asyncio.sleep(0.1)
            assert len(failures) >= 5
            assert not nc.is_closed
            server.restart()
            await asyncio.wait_for(reconnected.wait(), timeout=30)
            assert (await nc.jetstream().account_info()).api.level >= 1
        finally:
            await nc.close()
