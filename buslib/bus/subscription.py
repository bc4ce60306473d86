"""A consumer group member: one instance's pull loop over a group's durable consumer.

>>> sub = await bus.subscribe(OrderCreated, group="billing", handler=handle)   # doctest: +SKIP
>>> sub.stats.acked, sub.durable                                               # doctest: +SKIP
(3, 'billing__orders_created_v1')
>>> await sub.stop()                                                           # doctest: +SKIP

A :class:`Subscription` is made by :meth:`buslib.EventBus.subscribe` (its docstring says
what a group does). It gets the connection, a :class:`~buslib.bus.consumer.ConsumerSpec`
and a :class:`~buslib.bus.settlement.Settlement`, not the bus. Here is how it pulls:

- one inbox subscription with pull requests kept overlapping (a new one goes out before
  the last is used up), so messages keep arriving while handlers run;
- only as many messages pulled ahead as the handlers start within 0.1 s (measured as they
  run; at most ``prefetch``), so the members of a group share a backlog;
- keep-alives (``in_progress``) for running handlers, and ``handler_timeout``;
- re-binding after a server restart (pull requests do not survive one: nats.py #504), and
  waiting quietly for a deleted stream to come back;
- on a cluster: a "409 Leadership Change" (the consumer's leader moved) means pull again; a
  503 (no leader yet: an election) means re-bind, retried every second at most and logged
  quietly for the first 15 s; after the node it is connected to dies, the client reconnects
  to another node and the pull loop carries on.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from buslib._nats import fastpath
from buslib._nats.protocol import DESCRIPTION, PENDING_MESSAGES, STATUS, pull_subject
from buslib.bus.consumer import ConsumerSpec, StreamGone, bind
from buslib.bus.settlement import Settlement, SubscriptionStats
from buslib.errors import BusError, ConfigDriftError
from buslib.retry import backoff_delay

__all__ = ["LOOKAHEAD_S", "Subscription"]

log = logging.getLogger("buslib")

LOOKAHEAD_S = 0.1  # pull ahead at most this much measured handler work, so a group shares a backlog
# A cluster elects a new consumer leader 4-12 s after its node crashed, at a moment nobody knows:
# re-bind tries wait at most BIND_TIMEOUT for an answer and at most REBIND_PAUSE between them, so
# the group resumes soon after the election, and they log quietly for ELECTION_GRACE seconds.
BIND_TIMEOUT = 1.0
REBIND_PAUSE = 1.0
ELECTION_GRACE = 15.0


class Subscription:
    """One instance's membership in a consumer group. Create with :meth:`buslib.EventBus.subscribe`.

    Args:
        nc: the connection.
        spec: the group's durable consumer.
        settlement: decodes, handles and settles each delivery.
        concurrency: handlers running at once in this instance.
        prefetch: at most this many messages pulled ahead of the handlers.
        pull_expires: seconds each pull request lives (heartbeats at 1/6 of it).
        on_stopped: called once ``stop()`` has finished (the bus forgets the subscription).
    """

    def __init__(
        self,
        nc: Client,
        spec: ConsumerSpec,
        settlement: Settlement,
        *,
        concurrency: int = 1,
        prefetch: int = 512,
        pull_expires: float = 30.0,
        on_stopped: Callable[[Subscription], None] | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.spec = spec
        self.settlement = settlement
        settlement.after_handler = self._after_handler  # the pull target follows handler speed
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.pull_expires = pull_expires
        self._on_stopped = on_stopped
        self._timers = spec.ack_timers()
        self._queue: asyncio.Queue[tuple[Msg, float]] = asyncio.Queue()  # with when each arrived
        self._pending = 0  # messages asked for in pull requests, not yet received
        self._last_heard = time.monotonic()
        self._wanted_in_flight = concurrency  # messages to have in flight, buffered or asked for
        self._wake = asyncio.Event()
        self._rebind = False
        self._stopping = False
        self._inbox = ""
        self._sub: Any = None
        self._runner: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._inline_task: asyncio.Task[Any] | None = None  # runs the handler when concurrency == 1
        self._stopper: asyncio.Task[None] | None = None
        self._stopped = False
        self._stream_gone = False  # warned once that the stream was deleted; waiting for it quietly

    # -- what it is ---------------------------------------------------------------------
    @property
    def group(self) -> str:
        return self.spec.group

    @property
    def stream(self) -> str:
        return self.spec.stream

    @property
    def durable(self) -> str:
        return self.spec.durable

    @property
    def subjects(self) -> list[str]:
        """The consumer's filter: the subject, or a contract's history (oldest first)."""
        return self.spec.subjects

    @property
    def subject(self) -> str:
        """The subscribed subject (the contract's own, for a contract)."""
        return self.spec.subjects[-1]

    @property
    def stats(self) -> SubscriptionStats:
        return self.settlement.stats

    @property
    def handler_timeout(self) -> float | None:
        return self.settlement.handler_timeout

    def __repr__(self) -> str:
        shown = repr(self.subject) if len(self.subjects) == 1 else repr(self.subjects)
        return f"<Subscription {self.stream}/{self.durable} filter={shown} {self.stats}>"

    # -- lifecycle --------------------------------------------------------------------
    async def start(self, *, update: bool = False) -> None:
        """Bind the durable (create it, or check it for drift) and start pulling."""
        try:
            await bind(self.js, self.spec, update=update)
        except StreamGone:
            raise BusError(
                f"Stream {self.stream!r} does not exist, so group {self.group!r} cannot consume from it. "
                "Create it first (await bus.ensure_stream(...)) or pass the right stream=... to subscribe()."
            ) from None
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_message)
        if self.concurrency > 1:  # with one at a time, the subscription's own task runs the handler
            self._workers = [asyncio.create_task(self._work()) for _ in range(self.concurrency)]
        self._runner = asyncio.create_task(self._run())

    async def stop(self, *, timeout: float | None = 30.0) -> None:
        """Stop pulling, let the handlers finish what they received (drain); keep the durable.

        Called from inside a handler, it returns at once and stops in the background once
        that handler has returned.

        The server drops this instance's pull requests once its inbox is gone, so the rest of
        the group takes over at once. JetStream cannot cancel a pull request, though: a message
        the server had already sent when the unsubscribe arrived is lost in transit and comes
        back to the group after ``ack_wait``, like any message that is never acked.

        Args:
            timeout: seconds to wait for handlers; after that they are cancelled and their
                messages are redelivered after ``ack_wait``. ``None`` waits forever.
        """
        current = asyncio.current_task()
        if current is not None and (current in self._workers or current is self._inline_task):
            # Called from one of our own handlers: waiting here for the handlers would wait for itself.
            if self._stopper is None and not self._stopping:
                self._stopper = asyncio.create_task(self.stop(timeout=timeout))
            return
        if self._stopping:  # another caller is stopping it: wait for that
            while not self._stopped:
                await asyncio.sleep(0.01)
            return
        self._stopping = True
        try:
            self._wake.set()
            if self._runner is not None:
                self._runner.cancel()
                await asyncio.gather(self._runner, return_exceptions=True)

            async def drain() -> None:
                if self._sub is not None and not self.nc.is_closed:
                    try:
                        await self._sub.drain()  # what arrived still goes through the handlers
                    except Exception as err:  # closed or reconnecting: the rest is redelivered later
                        log.debug("draining %s: %s", self.durable, err)
                await self._queue.join()

            try:
                await asyncio.wait_for(drain(), timeout)
            except asyncio.TimeoutError:
                log.warning("%s: handlers still running after %s s; cancelling them", self.durable, timeout)
                if self._inline_task is not None:
                    self._inline_task.cancel()  # nats-py's task for this subscription runs the inline handler
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            if self.nc.is_connected:
                try:
                    await self.nc.flush(timeout=2)  # the last acks reach the server before stop() returns
                except Exception as err:
                    log.debug("flush on stop: %s", err)
        finally:
            self._stopped = True
            if self._on_stopped is not None:
                self._on_stopped(self)

    @property
    def running(self) -> bool:
        """Whether this subscription is pulling messages."""
        return self._runner is not None and not self._runner.done()

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` has finished: handlers done, last acks flushed."""
        return self._stopped

    def rebind(self) -> None:
        """Re-create the pull request soon (the bus calls this after a reconnect)."""
        self._rebind = True
        self._wake.set()

    # -- the pull loop ----------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        failing_since = 0.0
        while not self._stopping:
            try:
                if self._rebind:
                    await bind(
                        self.js,
                        self.spec,
                        update=False,
                        announce_recreate=not self._stream_gone,
                        timeout=BIND_TIMEOUT,
                    )
                    self._rebind = False
                    self.stats.rebinds += 1
                    self._pending = 0
                    self._last_heard = time.monotonic()
                    if self._stream_gone:
                        self._stream_gone = False
                        log.warning("%s: stream %s exists again; consuming resumed", self.durable, self.stream)
                    else:
                        log.info("re-bound to %s/%s", self.stream, self.durable)
                failures, failing_since = 0, 0.0
                await self._pull()
                await self._keep_alive()
                self._check_liveness()
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._tick())
                except asyncio.TimeoutError:
                    pass
            except asyncio.CancelledError:
                raise
            except ConfigDriftError as err:  # someone changed the consumer under us: say so, keep trying
                log.error("%s", err)
                self._rebind = True
                await asyncio.sleep(5)
            except StreamGone:
                # Deleted on purpose, most likely: say so once, then check back quietly (every 5 s at most).
                failures += 1
                self._rebind = True
                if not self._stream_gone:
                    self._stream_gone = True
                    log.warning(
                        "%s: stream %s no longer exists (deleted?). Group %r waits for it and resumes if it is "
                        "created again; call stop() on this subscription if it is gone for good.",
                        self.durable,
                        self.stream,
                        self.group,
                    )
                await asyncio.sleep(backoff_delay(failures, cap=5.0))
            except Exception as err:  # server restarting, JetStream not ready yet, connection lost, an election
                failures += 1
                failing_since = failing_since or time.monotonic()
                self._rebind = True
                delay = backoff_delay(failures, cap=REBIND_PAUSE)
                quiet = time.monotonic() - failing_since < ELECTION_GRACE  # an election is expected, not alarming
                log.log(
                    logging.INFO if quiet else logging.WARNING,
                    "%s: pulling from %s failed (%s: %s); retrying in %.1f s",
                    self.durable,
                    self.stream,
                    type(err).__name__,
                    err,
                    delay,
                )
                await asyncio.sleep(delay)

    def _tick(self) -> float:
        tick = min(1.0, min(self._timers) / 4)
        if self.handler_timeout is not None:
            tick = min(tick, self.handler_timeout / 4)
        return max(0.05, tick)

    def _ahead_limit(self) -> int:
        """How many messages may wait unstarted: what the handlers start within ``LOOKAHEAD_S``.

        Short on purpose: what one member has pulled ahead no other member of its group can
        take, so a long look-ahead lets the first member grab a backlog ("56/2/2"). Never
        more than a quarter of the ack timeout (buffered messages must not time out) nor
        ``prefetch``. Fast handlers still get up to ``prefetch`` (0.1 s of 20 us handlers is 5000).
        """
        avg = self.settlement.avg_handler_s
        if avg is None:
            return 0  # nothing measured yet: only what the handlers can start right now
        per_second = self.concurrency / max(avg, 1e-6)
        horizon = min(LOOKAHEAD_S, min(self._timers) / 4)
        return max(0, min(self.prefetch, int(per_second * horizon)))

    def _after_handler(self) -> None:
        self._wanted_in_flight = self.concurrency + self._ahead_limit()  # the pull target follows handler speed

    def _want(self) -> int:
        """How many messages to ask for now (0: not worth a pull request yet)."""
        target = self._wanted_in_flight
        have = len(self.settlement.in_flight) + self._queue.qsize() + self._sub.pending_msgs + self._pending
        want = target - have
        if want <= 0 or (self._pending and want < max(1, target // 2)):
            return 0  # enough is on its way: ask again when half of it is used up
        return want

    async def _pull(self) -> None:
        if self._stopping or not self.nc.is_connected:
            return
        want = self._want()
        if not want:
            return
        expires_ns = int(self.pull_expires * 1e9)
        request = {"batch": want, "expires": expires_ns, "idle_heartbeat": expires_ns // 6}
        if self._pending == 0:
            self._last_heard = time.monotonic()
        self._pending += want
        await self.nc.publish(pull_subject(self.stream, self.durable), json.dumps(request).encode(), reply=self._inbox)

    def _check_liveness(self) -> None:
        # Pull requests die with a server restart; heartbeats (every expires/6) prove they live.
        silent = time.monotonic() - self._last_heard
        busy = self.settlement.in_flight or self._sub.pending_msgs  # heartbeats may wait behind a handler
        if self._pending and not busy and silent > self.pull_expires / 3 + 1:
            log.info("%s: no heartbeat for %.1f s; re-binding", self.durable, silent)
            self.rebind()

    async def _keep_alive(self) -> None:
        now = time.monotonic()
        limit = self.handler_timeout
        in_flight = self.settlement.in_flight
        for delivery in list(in_flight):
            if limit is not None and now - delivery.started >= limit:
                # Checked here, once a tick, rather than with a timer per message (which costs ~15 us each).
                if delivery in in_flight and not delivery.timed_out and delivery.task is not None:
                    delivery.timed_out = True
                    delivery.task.cancel()  # the settlement turns it into a retryable TimeoutError
                continue
            if now - delivery.last_progress >= delivery.timer / 2:
                delivery.last_progress = now
                try:
                    await delivery.msg.in_progress()
                except Exception as err:  # reconnecting: the next tick tries again
                    log.debug("in_progress failed: %s", err)

    async def _on_message(self, msg: Msg) -> None:
        self._last_heard = time.monotonic()
        if msg.reply:  # a JetStream delivery: its reply subject is the ack subject
            self._pending = max(0, self._pending - 1)
            if self._workers:
                self._queue.put_nowait((msg, self._last_heard))
                return
            if self._inline_task is None:  # nats-py's task for this subscription runs every handler
                self._inline_task = asyncio.current_task()
            try:
                await self.settlement.process(msg, self._inline_task)
            except Exception:  # a bug here must not kill the subscription
                log.exception("%s: unexpected error while handling a message", self.durable)
            if self._want():  # wake the pull loop only when a pull request is due
                self._wake.set()
            return
        headers = msg.headers or {}
        status, description = headers.get(STATUS, ""), headers.get(DESCRIPTION, "")
        if status == "100":  # idle heartbeat: the pull request is alive
            return
        left = headers.get(PENDING_MESSAGES)
        if left is not None and left.isdigit():
            self._pending = max(0, self._pending - int(left))
        else:
            self._pending = 0
        # 503: no consumer leader to take the pull (an election): ask again once re-bound. A "409
        # Leadership Change" ends the pull requests of a leader that handed over: pull again (below).
        if status == "503" or (status == "409" and ("Deleted" in description or "Shutdown" in description)):
            self.rebind()
        elif status not in ("404", "408", "409"):
            log.warning("%s: unexpected pull status %s %s", self.durable, status, description)
        elif status == "409" and "Exceeded" in description:
            log.warning("%s: pull refused: %s", self.durable, description)
        self._wake.set()

    async def _work(self) -> None:
        queue, task = self._queue, asyncio.current_task()
        while True:
            msg, received = await queue.get()
            try:
                await self.settlement.process(msg, task, received=received)
            except Exception:  # a bug here must not kill the worker
                log.exception("%s: unexpected error while handling a message", self.durable)
            finally:
                queue.task_done()
                if self._want():
                    self._wake.set()


def fast_ack(nc: Client) -> Callable[[Msg], Awaitable[None]]:
    """The ack a subscription on ``nc`` uses: the fast path where it is on (no extra coroutine per ack)."""
    return functools.partial(fastpath.ack, nc=nc)
