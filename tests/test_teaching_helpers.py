"""``delete_streams``: a clean slate that stays clean, against a real nats-server.

nats-server deletes a stream by renaming its folder to ``.<name>`` and removing that in the
background. A second delete of the same name while that removal runs cannot rename, so the
folder stays, and the next stream of that name recovers its old messages. These tests hold
``.<name>`` in place (as a removal still running would) instead of hoping to hit the moment.
"""

from __future__ import annotations

import threading
from pathlib import Path

import nats
import pytest

from buslib import EmbeddedServer
from buslib.teaching import delete_streams

NAME = "SLATE"


def _folder(server: EmbeddedServer) -> Path:
    return server.store_dir / "jetstream" / "$G" / "streams" / NAME


async def _stream_with_old_messages(js) -> None:
    await js.add_stream(name=NAME, subjects=["slate.>"])
    for _ in range(5):
        await js.publish("slate.x", b"old")
    await js.add_consumer(NAME, durable_name="old-group")


def _removal_still_running(server: EmbeddedServer) -> Path:
    """The ``.SLATE`` folder a previous delete is still removing (non-empty: no rename over it)."""
    pending = _folder(server).parent / f".{NAME}"
    pending.mkdir(parents=True)
    (pending / "left").write_text("being removed")
    return pending


def _finish_removal_once_deleted(server: EmbeddedServer, pending: Path) -> threading.Thread:
    """Remove ``pending`` once the stream is deleted (its meta file gone), as the server's removal ends."""

    def finish() -> None:
        meta = _folder(server) / "meta.inf"
        for _ in range(10_000):  # bounded: at most ~10 s
            if not meta.exists():
                break
            threading.Event().wait(0.001)
        (pending / "left").unlink()
        pending.rmdir()

    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    return thread


@pytest.fixture
async def js(server):
    """A stream named SLATE with 5 old messages and a consumer, on the test's own server."""
    nc = await nats.connect(server.url)
    js = nc.jetstream(timeout=10)
    await _stream_with_old_messages(js)
    yield js
    await nc.close()


async def test_a_bare_delete_during_the_servers_removal_brings_old_messages_back(server, js):
    """Why delete_streams exists: the server's behaviour it works around."""
    _removal_still_running(server)
    await js.delete_stream(NAME)  # answered as deleted...
    assert (_folder(server) / "msgs").is_dir()  # ...but its messages stayed on disk
    info = await js.add_stream(name=NAME, subjects=["slate.>"])
    assert (info.state.messages, info.state.last_seq) == (5, 5)  # a "new" stream, with the old messages


async def test_delete_streams_leaves_the_name_free_for_an_empty_stream(server, js):
    removal = _finish_removal_once_deleted(server, _removal_still_running(server))
    await delete_streams(js, NAME)
    removal.join(timeout=15)
    info = await js.add_stream(name=NAME, subjects=["slate.>"])
    assert (info.state.messages, info.state.last_seq, info.state.consumer_count) == (0, 0, 0)
    assert [s.config.name for s in await js.streams_info()] == [NAME]  # no probe left behind
    await delete_streams(js, NAME, "NEVER_MADE")  # a name that does not exist is fine
    assert await js.streams_info() == []


async def test_delete_streams_says_so_when_the_old_stream_keeps_coming_back(server, js):
    _removal_still_running(server)  # and never ends
    with pytest.raises(RuntimeError, match="kept coming back with old messages after 3 deletes"):
        await delete_streams(js, NAME, attempts=3)
