"""Exercise 06, clusters and failover: an R3 stream, publishing through a leader crash, a retry after a lost quorum.

>>> from buslib.exercises.ex06 import *                          # doctest: +SKIP
>>> cluster = start_cluster()                                    # doctest: +SKIP
>>> bus = await EventBus.connect(service="ex06", url=cluster.url)  # doctest: +SKIP

This exercise runs its own three-node cluster (``start_cluster``), whatever ``NATS_URL`` says:
replicas need several nodes, and the checks crash nothing of anyone else's. Its checks read
the cluster's real state: the stream's replicas and where they are, who leads and since when,
which nodes are down, and what each event id is stored as.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.js.api import PubAck, StreamInfo
from nats.js.errors import APIError

from buslib.errors import PublishError
from buslib.events import Event
from buslib.exercises.checks import StreamHas, _stream_info, stored_messages
from buslib.exercises.core import Check, Checks, Context, Fail, IsInstance, Question, ____, wait_until
from buslib.server import EmbeddedCluster

__all__ = [
    "____",
    "q1",
    "q2",
    "q3",
    "QUESTIONS",
    "start_cluster",
    "wait_until",
    "STREAM",
    "OrderPlaced",
    "ORDERS",
    "LATE",
]

STREAM = "EX06_ORDERS"
ANSWER_WITHIN = 20.0  # seconds a check waits for the cluster to answer (an election after a crash)


class OrderPlaced(Event, type="ex06.orders.placed", version=1):
    """An order (questions 2 and 3)."""

    order_id: str


ORDERS = [OrderPlaced(order_id=f"A-{n}") for n in range(100)]  # question 2 publishes these
LATE = OrderPlaced(order_id="LATE-1")  # question 3 publishes this one, twice

_cluster: EmbeddedCluster | None = None


def start_cluster() -> EmbeddedCluster:
    """Start this exercise's own 3-node cluster (stopping the one a previous run started).

    ``NATS_URL`` is not used here: a single server cannot hold replicas, and crashing nodes of a
    shared cluster would disturb others. The nodes run on 127.0.0.1 with temporary stores; they
    stop with the kernel.
    """
    global _cluster
    if _cluster is not None:
        _cluster.stop()
    _cluster = EmbeddedCluster(name="ex06").start()
    return _cluster


def _the_cluster() -> EmbeddedCluster:
    if _cluster is None or not _cluster.nodes:
        raise Fail("This exercise's cluster is not running: run the setup cell (it calls start_cluster()).")
    return _cluster


def _urls() -> list[str]:
    cluster = _the_cluster()
    return [node.url for node in cluster.nodes if node.running] or cluster.urls


def _when(value: dt.datetime | None) -> float:
    """A server timestamp (nats-py gives datetimes) as epoch seconds, comparable with ``time.time()``."""
    return value.timestamp() if value is not None else 0.0


async def _info(ctx: Context) -> Any:
    """The stream's info, once the cluster can answer (after a crash, leaders may still be elected)."""
    deadline = time.monotonic() + ANSWER_WITHIN
    while True:
        try:
            return await _stream_info(ctx, STREAM)
        except (asyncio.TimeoutError, nats.errors.Error) as err:
            if time.monotonic() > deadline or (isinstance(err, APIError) and err.code != 503):
                raise
            await asyncio.sleep(0.2)


async def _stream_leader(ctx: Context) -> Any:
    """The stream's cluster info once it has a leader (an election may be going on)."""
    cluster = _the_cluster()
    await wait_until(lambda: cluster.leader_of(STREAM), timeout=ANSWER_WITHIN, what=f"a leader of {STREAM}")
    return (await _info(ctx)).cluster


# -- checks ------------------------------------------------------------------------------
@dataclass
class ReplicasOnEveryNode(Check):
    """The stream has ``replicas`` copies, one on each node of the cluster."""

    replicas: int

    async def verify(self, ctx: Context) -> None:
        cluster = _the_cluster()
        info = await _info(ctx)
        holders = sorted([info.cluster.leader] + [peer.name for peer in info.cluster.replicas or []])
        have = info.config.num_replicas or 1
        if have != self.replicas:
            where = " and ".join(holders)
            consequence = (
                f"its only copy is on {where}, so when {where} is lost the stream is gone with it"
                if have == 1
                else f"a majority of {have} is {have // 2 + 1}, so losing any one of {where} stops it"
            )
            raise Fail(
                f"Stream {STREAM} has {have} replica{'s' if have > 1 else ''}: {consequence}. It must keep "
                f"working when any one node is lost: ask for {self.replicas} (replicas={self.replicas} with "
                f"ensure_stream, num_replicas={self.replicas} with js.add_stream)."
            )
        if holders != sorted(cluster.names):
            raise Fail(f"Stream {STREAM} has copies on {holders}; expected one on each of {cluster.names}.")


@dataclass
class CrashedItsLeader(Check):
    """``crashed`` names a node that went down while it led the stream (a new leader came after)."""

    crashed: Any

    async def verify(self, ctx: Context) -> None:
        cluster = _the_cluster()
        if self.crashed not in cluster.names:
            raise Fail(f"crashed is {self.crashed!r}; expected the name of a node: one of {cluster.names}.")
        downs = [when for when, action, node in cluster.history if node == self.crashed and action in ("crash", "stop")]
        if not downs:
            raise Fail(
                f"{self.crashed} never went down: crash it with cluster.crash({self.crashed!r}) "
                "(or stop it with cluster.stop_node)."
            )
        info = await _stream_leader(ctx)
        if info.leader == self.crashed or _when(info.leader_since) < downs[-1]:
            raise Fail(
                f"{STREAM} has been led by {info.leader} since before {self.crashed} went down: {self.crashed} was "
                f"a follower. Crash the node that leads the stream (cluster.leader_of({STREAM!r}) or "
                f"(await bus.js.stream_info({STREAM!r})).cluster.leader names it). To try again, restart "
                f"{self.crashed} (cluster.restart({self.crashed!r}))."
            )


@dataclass
class StoredOnceEach(Check):
    """Each of ``events`` is stored exactly once, under its own id; after ``after_node_went_down`` went down, if given."""

    events: list[OrderPlaced]
    what: str
    after_node_went_down: str | None = None

    async def verify(self, ctx: Context) -> None:
        messages = await stored_messages(await ctx.js(), STREAM, "ex06.orders.>")
        ids = Counter((msg.headers or {}).get("Nats-Msg-Id") for msg in messages)
        by_order = Counter(json.loads(msg.data).get("order_id") for msg in messages)
        wanted = {event.id: event.order_id for event in self.events}
        missing = [order for event_id, order in wanted.items() if ids[event_id] == 0]
        for order in wanted.values():
            if by_order[order] > 1 or (by_order[order] and order in missing):
                raise Fail(
                    f"Order {order} is stored under {by_order[order]} event id(s), and not under the id of {self.what}: "
                    f"the retry published a new event. Publish {self.what} itself again: its id lets the stream "
                    "recognise a first try that was stored after all."
                )
        if missing:
            raise Fail(
                f"{len(missing)} of {len(wanted)} order(s) of {self.what} are not in {STREAM} (e.g. {missing[0]}). "
                "Publish them all, and wait until the publish returns."
            )
        if self.after_node_went_down is not None:
            cluster = _the_cluster()
            went_down = max(
                w for w, a, n in cluster.history if n == self.after_node_went_down and a in ("crash", "stop")
            )
            first = next(msg for msg in messages if (msg.headers or {}).get("Nats-Msg-Id") in wanted)
            if _when(first.time) < went_down:
                raise Fail(
                    f"The orders were stored before {self.after_node_went_down} went down. Crash the leader first, "
                    "then publish: the point is to publish through the election. Run the setup cell to start over."
                )


@dataclass
class TwoDownAtOnce(Check):
    """At some moment two nodes were down together (the cluster's history of crashes and restarts)."""

    async def verify(self, ctx: Context) -> None:
        down: set[str] = set()
        most = 0
        for _, action, node in _the_cluster().history:
            (down.discard if action == "restart" else down.add)(node)
            most = max(most, len(down))
        if most < 2:
            raise Fail(
                "Two nodes were never down at the same time, so a majority (2 of 3) was always up: the error "
                "came from something else (an election, if you crashed a leader). Crash two nodes, then publish."
            )


@dataclass
class AllNodesUp(Check):
    async def verify(self, ctx: Context) -> None:
        cluster = _the_cluster()
        down = [name for name in cluster.names if name not in cluster.running()]
        if down:
            raise Fail(
                f"{' and '.join(down)} {'is' if len(down) == 1 else 'are'} still down: restart every node you "
                f"crashed ({', '.join(f'cluster.restart({n!r})' for n in down)}) before publishing again."
            )


@dataclass
class FailedForLate(Check):
    error: Any

    async def verify(self, ctx: Context) -> None:
        if isinstance(self.error, PubAck):
            raise Fail(
                "error holds a PubAck: that publish was acknowledged, so a majority of the nodes was up. Crash "
                "two of the three nodes first, then publish LATE with publish_deadline=2.0."
            )
        if self.error is None:
            raise Fail(
                "error is None: publishing LATE did not fail, so a majority of the nodes was up. Crash two of "
                "the three nodes first, then publish LATE with publish_deadline=2.0."
            )
        if not isinstance(self.error, PublishError):
            raise Fail(
                f"error is a {type(self.error).__name__} ({self.error!r:.80}); expected the PublishError that "
                "publishing LATE raised (catch it: `except PublishError as err: error = err`)."
            )
        if self.error.event_id != LATE.id:
            raise Fail(f"error is about event {self.error.event_id}, not LATE (id {LATE.id}): publish LATE itself.")


def _r3(orders: Any) -> Checks:
    yield IsInstance("orders", orders, StreamInfo, "Keep what ensure_stream (or js.add_stream) returns.")
    yield StreamHas(STREAM, covers=["ex06.orders.placed.v1", "ex06.orders.paid.v1"])
    yield ReplicasOnEveryNode(replicas=3)


q1 = Question(
    "q1",
    "An R3 stream with a copy on every node",
    uses=["orders"],
    checks=_r3,
    hint=[
        "A stream's replicas say how many nodes keep a copy. Which count survives the loss of any one of "
        "three nodes? (A write needs a majority of the copies.)",
        'await bus.ensure_stream(OrderPlaced, name=STREAM, subjects=["ex06.orders.>"], replicas=3), or '
        "js.add_stream(name=..., subjects=[...], num_replicas=3).",
    ],
    solution="""
orders = await bus.ensure_stream(OrderPlaced, name=STREAM, subjects=["ex06.orders.>"], replicas=3)
""",
    exercise="06",
    server=_urls,
)


def _through_a_crash(crashed: Any) -> Checks:
    yield ReplicasOnEveryNode(replicas=3)
    yield CrashedItsLeader(crashed)
    yield StoredOnceEach(ORDERS, "ORDERS", after_node_went_down=crashed)


q2 = Question(
    "q2",
    "Publish through a leader crash",
    uses=["crashed"],
    checks=_through_a_crash,
    hint=[
        f"cluster.leader_of({STREAM!r}) names the leader; cluster.crash(name) kills it with SIGKILL. Then "
        "publish: the bus retries each event with its id until a new leader is elected.",
        "crashed = cluster.leader_of(STREAM); cluster.crash(crashed); await bus.publish_many(ORDERS). The "
        "publish returns once a new leader has acknowledged everything, a few seconds later.",
    ],
    solution="""
crashed = cluster.leader_of(STREAM)
cluster.crash(crashed)
acks = await bus.publish_many(ORDERS)
""",
    exercise="06",
    server=_urls,
)


def _after_a_lost_quorum(error: Any, ack: Any) -> Checks:
    yield FailedForLate(error)
    yield IsInstance("ack", ack, PubAck, "Keep the PubAck of the second publish of LATE.")
    yield TwoDownAtOnce()
    yield AllNodesUp()
    yield StoredOnceEach([LATE], "LATE")


q3 = Question(
    "q3",
    "A retry after a lost quorum",
    uses=["error", "ack"],
    checks=_after_a_lost_quorum,
    hint=[
        "With two of three nodes down nothing can be acknowledged. A bus that gives up sooner: "
        'EventBus(bus.nc, service="ex06", publish_deadline=2.0).',
        "Catch the PublishError (`except PublishError as err: error = err`), restart the two nodes with "
        "cluster.restart(name), then `ack = await bus.publish(LATE)`: the same event, the same id.",
    ],
    solution="""
for name in cluster.names:  # all three up first (question 2 crashed one)
    if name not in cluster.running():
        cluster.restart(name)
keep = cluster.meta_leader()  # any one may stay; this one is back quickest
down = [cluster.crash(name) for name in cluster.names if name != keep]
impatient = EventBus(bus.nc, service="ex06", publish_deadline=2.0)
error = None
try:
    await impatient.publish(LATE)
except PublishError as err:
    error = err
for name in down:
    cluster.restart(name, wait=False)
ack = await bus.publish(LATE)
""",
    exercise="06",
    server=_urls,
)

QUESTIONS = [q1, q2, q3]
