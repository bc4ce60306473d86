"""Helpers shared by the bus tests: per-test event types and streams, event-based waits."""

from __future__ import annotations

import asyncio
import functools
import types
from typing import Any

from buslib import Event, teaching


def make_event(type_name: str, class_name: str = "Order", *, event_version: int = 1, **fields: Any) -> type[Event]:
    """An Event subclass with its own type name (so each test owns its subject and stream)."""
    namespace = {"__annotations__": fields or {"order_id": str}, "__module__": __name__}
    kwds = {"type": type_name, "version": event_version}
    return types.new_class(class_name, (Event,), kwds, lambda ns: ns.update(namespace))


# buslib.teaching's wait_until, more patient: the test machine is shared
wait_until = functools.partial(teaching.wait_until, timeout=15.0, interval=0.02)


class HoldingProxy:
    """A TCP relay to a real server whose server-to-client direction can be held.

    A network hiccup on demand: while held, what the server sends (acknowledgements,
    messages) waits in the relay; the client's publishes still reach the server.
    """

    def __init__(self, target_url: str) -> None:
        self.target_port = int(target_url.rsplit(":", 1)[1])
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        for task in (self._pipe(client_r, server_w, None), self._pipe(server_r, client_w, self._open)):
            t = asyncio.create_task(task)
            self._tasks.add(t)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event | None) -> None:
        try:
            while data := await src.read(65536):
                if gate is not None:
                    await gate.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            dst.close()
