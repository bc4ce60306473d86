"""Exercise 01, persistence: a file-backed stream, idempotent publishing, a retention limit.

>>> from buslib.exercises.ex01 import *     # doctest: +SKIP
>>> await reset(js)                          # doctest: +SKIP
>>> q1.check(); q2.check(); q3.check()       # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import uuid
from typing import Any

from nats.js.api import StreamInfo

from buslib.exercises.checks import CallsStoreOnce, MessagesStored, StreamHas, delete_streams
from buslib.exercises.core import Checks, IsInstance, Question, Satisfies, ____

__all__ = ["____", "q1", "q2", "q3", "QUESTIONS", "reset", "ORDERS_STREAM", "RECENT_STREAM"]

ORDERS_STREAM = "EX01_ORDERS"
RECENT_STREAM = "EX01_RECENT"


async def reset(js: Any) -> None:
    """Start over: delete this exercise's streams (the questions create them)."""
    await delete_streams(js, ORDERS_STREAM, RECENT_STREAM)


def _orders_stream(orders: Any) -> Checks:
    yield IsInstance("orders", orders, StreamInfo, "Keep what `await js.add_stream(...)` returns.")
    yield StreamHas(ORDERS_STREAM, covers=["ex01.orders.created", "ex01.orders.paid"])
    # "any future ex01.orders.<event>": a name made up now, that no list of subjects can know
    yield StreamHas(ORDERS_STREAM, covers=[f"ex01.orders.future{uuid.uuid4().hex[:6]}"])
    yield StreamHas(ORDERS_STREAM, avoids=["ex01.recent.1", "ex01.customers.created"], storage="file")


q1 = Question(
    "q1",
    "A file-backed stream for every order event",
    uses=["orders"],
    checks=_orders_stream,
    hint=[
        "`await js.add_stream(name=..., subjects=[...], storage=...)`. Listing subjects cannot cover the "
        "events nobody has named yet: one wildcard subject covers them all.",
        '`*` matches one token, `>` one or more: "ex01.orders.>" or "ex01.orders.*". Storage: '
        "nats.js.api.StorageType.FILE.",
    ],
    solution="""
from nats.js.api import StorageType

orders = await js.add_stream(name=ORDERS_STREAM, subjects=["ex01.orders.>"], storage=StorageType.FILE)
""",
    exercise="01",
)


def _idempotent(publish_order: Any) -> Checks:
    yield Satisfies(
        "publish_order",
        publish_order,
        inspect.iscoroutinefunction,
        "publish_order must be an `async def` function taking (js, order_id, data).",
    )
    yield StreamHas(ORDERS_STREAM, min_duplicate_window=1)
    yield CallsStoreOnce(ORDERS_STREAM, publish_order, name="publish_order")


q2 = Question(
    "q2",
    "A publisher that is safe to retry",
    uses=["publish_order"],
    checks=_idempotent,
    hint=[
        "The server drops a message whose Nats-Msg-Id it has seen within the stream's duplicate window "
        "(lesson 01, section 6), and answers the retry with a PubAck marked duplicate=True.",
        'Pass headers={"Nats-Msg-Id": ...} to js.publish; the id must be the same for a retry of one '
        "order and different for different orders: build it from order_id.",
    ],
    solution="""
async def publish_order(js, order_id, data):
    return await js.publish("ex01.orders.created", data, headers={"Nats-Msg-Id": f"order-created-{order_id}"})
""",
    exercise="01",
)


def _retention(recent: Any) -> Checks:
    yield IsInstance("recent", recent, StreamInfo, "Keep what `await js.add_stream(...)` returns.")
    yield StreamHas(RECENT_STREAM, covers=["ex01.recent.x"], max_msgs=5)
    yield MessagesStored(RECENT_STREAM, count=5, first_seq=4)


q3 = Question(
    "q3",
    "Keep only the 5 newest messages",
    uses=["recent"],
    checks=_retention,
    hint=[
        "A stream limit does it: `max_msgs`. Then publish 8 messages to ex01.recent.<anything>.",
        "When a limit is reached the stream discards the oldest messages (DiscardPolicy.OLD, the default).",
    ],
    solution="""
recent = await js.add_stream(name=RECENT_STREAM, subjects=["ex01.recent.>"], max_msgs=5)
for n in range(8):
    await js.publish(f"ex01.recent.{n}", b"%d" % n)
""",
    exercise="01",
)

QUESTIONS = [q1, q2, q3]
