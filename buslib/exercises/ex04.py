"""Exercise 04, retries and dead letters: a retry policy, a rejection, a replay after the fix.

>>> from buslib.exercises.ex04 import *                         # doctest: +SKIP
>>> await reset(js)                                              # doctest: +SKIP
>>> dlq = await DeadLetterQueue(bus, stream=DLQ_STREAM).setup()  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from buslib.dlq import DeadLetterNotFound, DeadLetterQueue, ReplayResult
from buslib.events import Event
from buslib.exercises.checks import ConsumerConfigIs, _json_object, delete_streams
from buslib.exercises.core import Check, Checks, Context, Fail, IsInstance, Question, Satisfies, ____, wait_until
from buslib.retry import Retry
from buslib.subjects import durable_name

__all__ = [
    "____",
    "q1",
    "q2",
    "q3",
    "QUESTIONS",
    "reset",
    "wait_until",
    "STREAM",
    "DLQ_STREAM",
    "GROUP",
    "OrderPlaced",
    "Shipping",
    "new_orders",
    "in_dead_letters",
]

STREAM = "EX04"
DLQ_STREAM = "EX04_DLQ"
GROUP = "shipping"


class OrderPlaced(Event, type="ex04.orders.placed", version=1):
    """An order to ship."""

    order_id: str
    amount: float
    coupon: str | None = None


def new_orders() -> list[OrderPlaced]:
    """Fresh events for question 1: one fine, one flaky (fails once), one poison (a coupon bug)."""
    return [
        OrderPlaced(order_id="ok", amount=10.0),
        OrderPlaced(order_id="flaky", amount=20.0),
        OrderPlaced(order_id="poison", amount=30.0, coupon="SPRING"),
    ]


@dataclass
class Shipping:
    """The shipping service under test. It records every delivery it sees.

    Its handler fails the first delivery of order "flaky" (a timeout: worth a retry) and,
    until it is fixed, every order with a coupon (a bug: retrying will not help).
    """

    deliveries: list[tuple[str, int, float]] = field(default_factory=list)  # (order id, delivery no., time)
    shipped: list[str] = field(default_factory=list)

    def handler(self, *, fixed: bool = False) -> Any:
        """The handler to subscribe; ``fixed=True`` is the version with the coupon bug fixed."""

        async def ship(order: OrderPlaced, ctx: Any) -> None:
            self.deliveries.append((order.order_id, ctx.num_delivered, time.monotonic()))
            if order.order_id == "flaky" and ctx.num_delivered == 1:
                raise ConnectionError("the warehouse API timed out")
            if order.coupon and not fixed:
                raise KeyError(f"coupon {order.coupon!r} is unknown to the price service")
            self.shipped.append(order.order_id)

        return ship


async def reset(js: Any) -> None:
    """Start over: delete the orders stream EX04 and the dead-letter stream EX04_DLQ."""
    await delete_streams(js, STREAM, DLQ_STREAM)


async def in_dead_letters(dlq: DeadLetterQueue, order_id: str) -> bool:
    """Whether order ``order_id`` is in the dead-letter queue (use it with wait_until)."""
    return any(_json_object(entry.data).get("order_id") == order_id for entry in await dlq.list())


# -- checks ------------------------------------------------------------------------------
@dataclass
class DeadLetters(Check):
    """The dead-letter stream holds these orders: order id -> (kind, deliveries).

    Args:
        exact: no other order may be there.
    """

    stream: str
    expected: Mapping[str, tuple[str, int]]
    exact: bool = False

    async def verify(self, ctx: Context) -> None:
        try:
            entries = await DeadLetterQueue(await ctx.nc(), stream=self.stream).list()
        except DeadLetterNotFound:
            raise Fail(
                f"There is no dead-letter stream {self.stream}. Create it with "
                f"`dlq = await DeadLetterQueue(bus, stream={self.stream!r}).setup()` (the setup cell does)."
            ) from None
        found = {_json_object(entry.data).get("order_id"): entry for entry in entries}
        found.pop(None, None)  # not an order
        for order_id, (kind, deliveries) in self.expected.items():
            entry = found.get(order_id)
            if entry is None:
                raise Fail(
                    f"No dead letter for order {order_id!r} in {self.stream} (it holds {sorted(map(str, found))}). "
                    "Is the queue the subscription's dead_letters sink, and did you wait for it?"
                )
            if (entry.kind, entry.num_delivered) != (kind, deliveries):
                raise Fail(
                    f"Order {order_id!r} was dead-lettered as {entry.kind!r} after {entry.num_delivered} "
                    f"deliveries; expected {kind!r} after {deliveries}."
                )
        extra = sorted(set(map(str, found)) - set(self.expected))
        if self.exact and extra:
            raise Fail(f"The dead-letter queue still holds order(s) {extra}; expected only {sorted(self.expected)}.")


@dataclass
class RetriesSpaced(Check):
    """``order_id`` was delivered ``tries`` times, at least ``min_gap`` seconds apart."""

    shipping: Any
    order_id: str
    tries: int
    min_gap: float

    async def verify(self, ctx: Context) -> None:
        times = [t for order, _, t in self.shipping.deliveries if order == self.order_id]
        if len(times) != self.tries:
            raise Fail(f"Order {self.order_id!r} was delivered {len(times)} time(s); expected {self.tries}.")
        gaps = [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)]
        if any(gap < self.min_gap for gap in gaps):
            raise Fail(f"The retries of order {self.order_id!r} came {gaps} s apart; expected about 1 s each.")


def _policy(policy: Any, shipping: Any) -> Checks:
    yield IsInstance("policy", policy, Retry, "Use buslib.retry.Retry(max_deliver=..., delays=[...]).")
    yield Satisfies(
        "policy",
        policy,
        lambda p: p.max_deliver == 3,
        f"policy allows {policy.max_deliver} deliveries; expected 3 (the first try and 2 retries).",
    )
    yield Satisfies(
        "policy",
        policy,
        lambda p: all(abs(d - 1.0) <= 0.001 for d in list(p.delays)[:2]),
        f"policy waits {list(policy.delays)[:2]} s before the retries; expected 1 s each.",
    )
    yield Satisfies(
        "policy",
        policy,
        lambda p: p.jitter == 0,
        f"policy has jitter={policy.jitter}, so its delays vary by up to {policy.jitter:.0%}; the "
        "question asks for no jitter: jitter=0.",
    )
    yield ConsumerConfigIs(STREAM, durable_name(GROUP, OrderPlaced.subject()), max_deliver=3)
    yield DeadLetters(DLQ_STREAM, {"poison": ("exhausted", 3)})
    yield RetriesSpaced(shipping, "poison", tries=3, min_gap=0.8)
    yield Satisfies(
        "shipping.shipped",
        shipping,
        lambda s: {"ok", "flaky"} <= set(s.shipped),
        f"shipping.shipped is {shipping.shipped}; expected 'ok' and 'flaky' (after one retry).",
    )


q1 = Question(
    "q1",
    "Retry the flaky, dead-letter the poison",
    uses=["policy", "shipping"],
    checks=_policy,
    hint=[
        "`Retry(max_deliver=..., delays=[...], jitter=...)`: max_deliver counts the first delivery too.",
        "Three deliveries, 1 s apart: `Retry(max_deliver=3, delays=[1.0], jitter=0)`. Pass it as `retry=` and the "
        "queue as `dead_letters=dlq` to bus.subscribe, publish new_orders(), then wait for the dead letter.",
    ],
    solution="""
policy = Retry(max_deliver=3, delays=[1.0], jitter=0)
sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=shipping.handler(), retry=policy, dead_letters=dlq)
for order in new_orders():
    await bus.publish(order)
await wait_until(lambda: in_dead_letters(dlq, "poison"), timeout=15, what="the poison order in the dead-letter queue")
await sub.stop()
""",
    exercise="04",
)


VALID = "valid"  # question 2's order that must still be shipped


def _rejected(ship_checked: Any, shipping: Any) -> Checks:
    yield DeadLetters(DLQ_STREAM, {"negative": ("rejected", 1)})
    yield Satisfies(
        "shipping.shipped",
        shipping,
        lambda s: VALID in s.shipped,
        f"Order {VALID!r} was not shipped (shipping.shipped is {shipping.shipped}). ship_checked must "
        "hand every order with a positive amount to shipping.handler(); publish it and wait until "
        "it is shipped.",
    )


q2 = Question(
    "q2",
    "Reject what can never succeed",
    uses=["ship_checked", "shipping"],
    checks=_rejected,
    hint=[
        "Retrying an order with a negative amount is pointless: every try fails the same way.",
        '`raise Reject("amount must be positive")` (from buslib.retry) sends it to the dead letters at once, '
        "without retries.",
    ],
    solution="""
async def ship_checked(order, ctx):
    if order.amount <= 0:
        raise Reject(f"amount must be positive, got {order.amount}")
    await shipping.handler()(order, ctx)


sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=ship_checked, retry=policy, dead_letters=dlq)
await bus.publish(OrderPlaced(order_id="negative", amount=-5.0))
await bus.publish(OrderPlaced(order_id="valid", amount=5.0))
await wait_until(lambda: in_dead_letters(dlq, "negative"), timeout=15, what="the rejected order in the dead letters")
await wait_until(lambda: "valid" in shipping.shipped, what="the valid order to be shipped")
await sub.stop()
""",
    exercise="04",
)


def _replayed(replayed: Any, shipping: Any) -> Checks:
    yield IsInstance("replayed", replayed, ReplayResult, "Keep what `await dlq.replay(...)` returns.")
    yield Satisfies(
        "shipping.shipped",
        shipping,
        lambda s: "poison" in s.shipped,
        "Order 'poison' was not shipped after the replay. Subscribe the fixed handler "
        "(shipping.handler(fixed=True)) in group GROUP, before or after the replay, and wait until "
        "it has shipped it.",
    )
    yield DeadLetters(DLQ_STREAM, {"negative": ("rejected", 1)}, exact=True)
    everything = sorted(["flaky", "ok", "poison", VALID])
    yield Satisfies(
        "shipping.shipped",
        shipping,
        lambda s: sorted(set(s.shipped)) == everything,
        f"shipping.shipped is {sorted(set(shipping.shipped))}; expected {', '.join(everything)}: with "
        "'negative' in the dead letters, shipped + dead letters = every order published.",
    )


q3 = Question(
    "q3",
    "Fix, then replay the dead letter",
    uses=["replayed", "shipping"],
    checks=_replayed,
    hint=[
        "The replayed copy is stored in EX04 again, and group GROUP's durable consumer keeps it until a "
        "handler of the group takes it: subscribe the fixed handler before or after the replay, then wait "
        "until it has shipped the order.",
        "Replay only what the fix repairs: the coupon order (`dlq.replay(ids=[...])` with the ids of entries "
        "whose kind is 'exhausted', or a DeadLetterFilter on the reason). The negative order would only "
        "be rejected again.",
    ],
    solution="""
sub = await bus.subscribe(
    OrderPlaced, group=GROUP, handler=shipping.handler(fixed=True), retry=policy, dead_letters=dlq
)
broken = [entry.id for entry in await dlq.list() if entry.kind == "exhausted"]
replayed = await dlq.replay(ids=broken)
await wait_until(lambda: "poison" in shipping.shipped, what="the replayed order to be shipped")
await sub.stop()
""",
    exercise="04",
)

QUESTIONS = [q1, q2, q3]
