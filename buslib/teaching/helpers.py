"""Small helpers that keep lesson cells short and honest.

>>> from buslib.teaching import expect_error, timed
>>> with expect_error(ZeroDivisionError) as caught:
...     1 / 0
>>> type(caught.error).__name__
'ZeroDivisionError'
>>> with timed() as clock:
...     pass
>>> clock.seconds < 1
True

Why ``expect_error``: nbval's ``# NBVAL_RAISES_EXCEPTION`` tolerates an exception but does
not fail when none is raised, so a lesson that claims "this raises" would pass even if it
did not. ``expect_error`` fails loudly when nothing (or something else) is raised, and
keeps the error so the next line can show the learner its message. Both helpers work with
``with`` and ``async with``; ``wait_until`` waits for a condition instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import nats.errors
from nats.js.api import StorageType
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from buslib._nats.protocol import ErrorCode

__all__ = ["delete_streams", "expect_error", "stored_ids", "timed", "wait_for_stream", "wait_until"]


class expect_error:  # noqa: N801 - used like a function: `with expect_error(X) as caught:`
    """Assert that the block raises one of ``types``; keep the error for display.

    Args:
        *types: the exception classes the block must raise.
        match: text the error's message must contain (optional).

    Raises:
        AssertionError: the block finished without an error, or the message lacks ``match``.
        The original exception: the block raised something not in ``types`` (it propagates).
    """

    def __init__(self, *types: type[BaseException], match: str | None = None) -> None:
        if not types:
            raise TypeError("expect_error needs at least one exception class, e.g. expect_error(ValueError).")
        self.types = types
        self.match = match
        self.error: BaseException | None = None

    def __enter__(self) -> expect_error:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        names = " or ".join(t.__name__ for t in self.types)
        if exc is None:
            raise AssertionError(f"Expected {names} to be raised, but the block finished without an error.")
        if not isinstance(exc, self.types):
            return False  # a different error: let it propagate unchanged
        if self.match is not None and self.match not in str(exc):
            raise AssertionError(
                f"{type(exc).__name__} was raised, but its message does not contain {self.match!r}: {exc}"
            )
        self.error = exc
        return True

    async def __aenter__(self) -> expect_error:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        if self.error is None:
            return f"<expect_error {', '.join(t.__name__ for t in self.types)}: nothing caught yet>"
        return f"{type(self.error).__name__}: {self.error}"


class timed:  # noqa: N801 - used like a function: `with timed() as clock:`
    """Measure how long a block takes (monotonic clock); read ``.seconds`` afterwards."""

    def __init__(self) -> None:
        self._start = 0.0
        self.seconds = 0.0

    def __enter__(self) -> timed:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start

    async def __aenter__(self) -> timed:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


async def wait_until(
    check: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "the condition",
) -> Any:
    """Wait until ``check()`` returns something truthy (it may be a coroutine function).

    Args:
        check: called every ``interval`` seconds; its truthy result ends the wait.
        timeout: seconds before giving up (generous: lessons run on busy laptops).
        interval: seconds between checks.
        what: words for the error message, e.g. ``"all 30 messages handled"``.

    Returns:
        The first truthy result of ``check()``.

    Raises:
        TimeoutError: still not true after ``timeout`` seconds (a lesson cell fails on it; in an
            exercise, the message points at the usual cause).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Waited {timeout:g} s for {what}, in vain (the last check returned {result!r}). If a handler "
                "should have made it true: is its subscription started, on the right group and event type?"
            )
        await asyncio.sleep(interval)


async def stored_ids(js: Any, stream: str, *, batch: int = 1000, timeout: float = 30.0) -> Counter[str]:
    """How many times each ``Nats-Msg-Id`` is stored in ``stream``: every message read once.

    Read by a temporary consumer that needs no acks (it is gone a few seconds after the last
    read), so nothing of the stream changes. ``max(ids.values()) == 1``: nothing stored twice.

    Raises:
        TimeoutError: the messages did not all arrive within ``timeout`` seconds.
    """
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        inactive_threshold=5.0,
        mem_storage=True,
        num_replicas=1,
    )
    deadline = time.monotonic() + timeout
    while True:  # on a cluster that just lost a node, the API may need a new meta leader first
        try:
            total = (await asyncio.wait_for(js.stream_info(stream), 2.0)).state.messages
            consumer = await asyncio.wait_for(js.add_consumer(stream, config), 2.0)
            break
        except Exception as err:  # a timeout or a 503 while a leader is elected; anything else is final
            if time.monotonic() > deadline or not (isinstance(err, asyncio.TimeoutError) or _unavailable(err)):
                raise
            await asyncio.sleep(0.2)
    pull = await js.pull_subscribe_bind(consumer.name, stream=stream)
    ids: Counter[str] = Counter()
    try:
        while sum(ids.values()) < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Read {sum(ids.values())} of {total} messages of {stream} in {timeout:g} s.")
            try:
                messages = await pull.fetch(min(batch, total - sum(ids.values())), timeout=1.0)
            except asyncio.TimeoutError:  # nats-py's TimeoutError is one: nothing arrived in time, ask again
                continue
            except Exception as err:  # 503: the consumer's node is not ready yet (a cluster node restarting)
                if not _unavailable(err):
                    raise
                await asyncio.sleep(0.2)
                continue
            ids.update((msg.headers or {}).get("Nats-Msg-Id", "") for msg in messages)
    finally:
        await pull.unsubscribe()
        try:
            await js.delete_consumer(stream, consumer.name)  # else it lingers a few seconds
        except Exception:  # gone already, or no leader to ask right now: it expires by itself
            pass
    return ids


def _unavailable(err: Exception) -> bool:
    # nats.js.errors.ServiceUnavailableError (a 503), which nats-py raises with code None for a pull
    return getattr(err, "code", None) == 503 or type(err).__name__ == "ServiceUnavailableError"


async def wait_for_stream(js: Any, subject: str, *, timeout: float = 10.0) -> None:
    """Wait until a publish to ``subject`` from this connection reaches its stream.

    On a cluster a new stream's subjects reach the other nodes over the routes a moment after
    ``add_stream`` returns: a publish sent at once, through another node, can get "no response
    from stream". The probe names another stream (``Nats-Expected-Stream``), so the stream
    answers with an error and stores nothing.
    """

    async def answered() -> bool:
        try:
            await js.publish(subject, b"", stream="buslib-probe-not-a-stream", timeout=min(timeout, 2.0))
        except NoStreamResponseError:
            return False
        except APIError as err:
            if err.err_code == ErrorCode.STREAM_MISMATCH:
                return True
            raise
        raise RuntimeError(f"a stream named buslib-probe-not-a-stream stored the probe sent to {subject}")

    await wait_until(answered, timeout=timeout, what=f"a stream answering publishes to {subject}")


async def _delete_if_there(js: Any, name: str) -> None:
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(name)


async def _answered(request: Callable[..., Awaitable[Any]], *args: Any, tries: int = 3, **kwargs: Any) -> Any:
    """Send a stream create or delete again if it goes unanswered (both are safe to repeat).

    On a loaded cluster the meta leader can be changing for a moment, and a request that
    arrives then gets no answer (seen in a workshop room's exercise reset).
    """
    for tried in range(1, tries + 1):
        try:
            return await request(*args, **kwargs)
        except nats.errors.TimeoutError:
            if tried == tries:
                raise


async def delete_streams(js: Any, *names: str, attempts: int = 5) -> None:
    """Delete these streams if they exist, so that a stream created again under a name starts empty.

    nats-server removes a deleted stream's files in the background. If the same name is
    deleted again before that ends (delete, create, delete within moments: a reset run twice,
    a test, a benchmark), the second delete leaves the stream's folder behind, and the next
    stream of that name recovers its old messages (seen on nats-server 2.15.1,
    under load; ``tests/test_teaching_helpers.py`` shows it). So after each delete a probe
    stream takes the name: if it holds anything, it was that folder, and it is deleted again.
    The probe stores nothing, so whatever its own delete leaves behind is empty. On a cluster
    the probe sits on one node, which may not be the one holding a folder left behind.

    Raises:
        RuntimeError: a stream of that name still came back with old contents after ``attempts``.
    """
    for name in names:
        for attempt in range(attempts):
            await _answered(_delete_if_there, js, name)
            try:  # a subject nobody publishes to: the probe stores nothing of anyone's
                probe = await _answered(
                    js.add_stream, name=name, subjects=[f"_buslib.probe.{name}"], storage=StorageType.FILE
                )
            except APIError:  # refused (e.g. the account's stream limit): nothing more can be checked
                break
            left_behind = probe.state.last_seq or probe.state.consumer_count
            await _answered(_delete_if_there, js, name)
            if not left_behind:
                break
            await asyncio.sleep(0.05 * 2**attempt)  # the earlier removal is still running: give it a moment
        else:
            raise RuntimeError(
                f"Stream {name!r} kept coming back with old messages after {attempts} deletes: the server "
                "could not remove its folder. Restart the server (or delete the folder) and try again."
            )
