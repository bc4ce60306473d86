"""One real nats-server for the whole run, plus per-test servers for restart/crash tests.

The shared server starts in ``pytest_configure`` and its URL is exported as ``NATS_URL``:
nbval's notebook kernels inherit the environment, while session fixtures never run for
nbval items. Tests that restart or kill a server get their own with ``server``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from _bus_helpers import make_event

import buslib
from buslib import Event, EventBus
from buslib.server import EmbeddedServer
from buslib.subjects import stream_name_for

_shared: EmbeddedServer | None = None
_previous_url: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _shared, _previous_url
    if hasattr(config, "workerinput"):  # pytest-xdist worker: the controller owns the server
        return
    _previous_url = os.environ.get("NATS_URL")
    _shared = EmbeddedServer().start()
    os.environ["NATS_URL"] = _shared.url


def pytest_unconfigure(config: pytest.Config) -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None
        if _previous_url is None:
            os.environ.pop("NATS_URL", None)
        else:
            os.environ["NATS_URL"] = _previous_url


@pytest.fixture
def nats_url() -> str:
    """The shared server's URL."""
    return os.environ["NATS_URL"]


@pytest.fixture
def unique() -> str:
    """A short unique suffix so each test owns its streams and consumers."""
    return uuid.uuid4().hex[:8].upper()


@pytest.fixture
def server(tmp_path) -> Iterator[EmbeddedServer]:
    """A private server on a persistent store under tmp_path: restart it, crash it."""
    with EmbeddedServer(store_dir=tmp_path / "store") as srv:
        yield srv


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[object]:
    """A connection to the shared server."""
    client = await buslib.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
async def js(nc):
    return nc.jetstream()


# -- the EventBus tests' chain: bus -> a per-test event type -> its stream ----------------
@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[EventBus]:
    """An EventBus on the shared server, as service "test-bus"."""
    async with EventBus.connect(service="test-bus", url=nats_url) as bus:
        yield bus


@pytest.fixture
def Order(unique: str) -> type[Event]:
    """An event type of its own for each test, so streams and groups never collide."""
    return make_event(f"t{unique.lower()}.order.placed")


@pytest.fixture
async def stream(bus: EventBus, Order: type[Event]) -> AsyncIterator[str]:
    """Order's conventional stream, created before the test and deleted after it."""
    await bus.ensure_stream(Order)
    yield stream_name_for(Order.subject())
    await bus.js.delete_stream(stream_name_for(Order.subject()))
