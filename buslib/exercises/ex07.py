"""Exercise 07, running in production: per-key order, a sized stream, the group furthest behind.

>>> from buslib.exercises.ex07 import *                         # doctest: +SKIP
>>> await reset(js)                                              # doctest: +SKIP
>>> bus = await EventBus.connect(service="billing")             # doctest: +SKIP
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from nats.js.errors import APIError, NotFoundError

from buslib.bus.partitions import lane_durable, lane_filter, partition_count
from buslib.events import Event
from buslib.exercises.checks import _stream_info, delete_streams
from buslib.exercises.core import Check, Checks, Context, Fail, IsInstance, Question, ____, wait_until
from buslib.subjects import durable_name, subject_matches
from buslib.teaching.helpers import wait_for_stream

__all__ = [
    "____",
    "q1",
    "q2",
    "q3",
    "QUESTIONS",
    "reset",
    "wait_until",
    "PAYMENTS_STREAM",
    "AUDIT_STREAM",
    "EVENTS_STREAM",
    "PaymentCaptured",
    "AuditEntry",
    "ShipmentUpdated",
    "Ledger",
    "publish_payments",
    "GROUPS",
    "CUSTOMERS",
]

PAYMENTS_STREAM, AUDIT_STREAM, EVENTS_STREAM = "EX07_PAYMENTS", "EX07_AUDIT", "EX07_EVENTS"
CUSTOMERS = ["C-1", "C-2", "C-3", "C-4"]
PER_CUSTOMER = 8
FAILS_ONCE = ("C-2", 3)  # this payment fails on its first delivery (the bank timed out)
PARTITIONS = 4
GROUP = "ledger"
THIRTY_DAYS = 30 * 24 * 3600
GROUPS = ("billing", "shipping", "analytics")  # question 3's groups


class PaymentCaptured(Event, type="ex07.payments.captured", version=1, key="customer_id"):
    """A customer's n-th payment (question 1); keyed by customer."""

    customer_id: str
    n: int
    amount: float


class AuditEntry(Event, type="ex07.audit.recorded", version=1, key="order_id"):
    """Something that happened to an order (question 2); keyed by order."""

    order_id: str
    what: str


class ShipmentUpdated(Event, type="ex07.events.shipment", version=1):
    """What question 3's three groups read."""

    shipment_id: int


@dataclass
class Ledger:
    """Question 1's service: ``ledger.book`` books each payment, per customer, in the order it handles them.

    It fails the first delivery of C-2's payment 3 (the bank timed out), so that payment is
    retried. ``booked`` maps a customer to the payment numbers booked, in booking order.
    """

    booked: dict[str, list[int]] = field(default_factory=dict)

    async def book(self, payment: PaymentCaptured, ctx: Any) -> None:
        if (payment.customer_id, payment.n) == FAILS_ONCE and ctx.num_delivered == 1:
            raise RuntimeError("the bank timed out")  # fails once; the retry works
        self.booked.setdefault(payment.customer_id, []).append(payment.n)

    def count(self) -> int:
        """How many payments are booked."""
        return sum(len(v) for v in self.booked.values())

    def complete(self) -> bool:
        """Whether all 32 payments are booked (for ``wait_until``)."""
        return self.count() >= len(CUSTOMERS) * PER_CUSTOMER


async def publish_payments(bus: Any, ledger: Ledger) -> None:
    """Clear ``ledger``, then publish 8 payments for each of 4 customers, interleaved (C-1's 1st, C-2's 1st, ...)."""
    ledger.booked.clear()
    for n in range(PER_CUSTOMER):
        for customer in CUSTOMERS:
            await bus.publish(PaymentCaptured(customer_id=customer, n=n, amount=10.0 + n))


async def reset(js: Any) -> None:
    """Start over: delete the exercise's streams, then set up question 3's groups at known positions.

    ``EX07_EVENTS`` gets 30 ``ShipmentUpdated`` events; group billing has acknowledged 10 and
    holds 12 more unacknowledged (a stuck worker), shipping has acknowledged 15, analytics 27.
    """
    await delete_streams(js, PAYMENTS_STREAM, AUDIT_STREAM, EVENTS_STREAM)
    await js.add_stream(StreamConfig(name=EVENTS_STREAM, subjects=["ex07.events.>"]))
    await wait_for_stream(js, ShipmentUpdated.subject())  # on a cluster: until this node knows the stream
    for i in range(30):
        await js.publish(ShipmentUpdated.subject(), ShipmentUpdated(shipment_id=i).to_json())
    for group, acked, held in (("billing", 10, 12), ("shipping", 15, 0), ("analytics", 27, 0)):
        name = durable_name(group, ShipmentUpdated.subject())
        config = ConsumerConfig(
            durable_name=name, ack_policy=AckPolicy.EXPLICIT, ack_wait=3600, filter_subject=ShipmentUpdated.subject()
        )
        await js.add_consumer(EVENTS_STREAM, config)
        puller = await js.pull_subscribe_bind(name, stream=EVENTS_STREAM)
        taken = 0
        for _ in range(acked + held):  # fetch() may return fewer than asked: ask again (bounded)
            if taken == acked + held:
                break
            for msg in await puller.fetch(acked + held - taken, timeout=5):
                taken += 1
                if msg.metadata.sequence.stream <= acked:
                    await msg.ack_sync()  # answered: counted before the learner looks
        await puller.unsubscribe()


# -- question 1 ---------------------------------------------------------------------------
@dataclass
class Partitioned(Check):
    """``stream`` splits ``subject``'s keyed events into ``partitions`` partitions."""

    stream: str
    subject: str
    partitions: int

    async def verify(self, ctx: Context) -> None:
        config = (await _stream_info(ctx, self.stream)).config
        have = partition_count(config, self.subject)
        if have is None:
            raise Fail(
                f"Stream {self.stream} does not partition {self.subject}: without partitions an ordered group "
                f"is one lane, one payment at a time for every customer. Create it with "
                f"ensure_stream(..., partitions={self.partitions})."
            )
        if have != self.partitions:
            raise Fail(
                f"Stream {self.stream} splits {self.subject} into {have} partitions; expected {self.partitions}."
            )


@dataclass
class OrderedLanes(Check):
    """Group ``group`` has a lane per partition: a durable each, on its partition, one message in flight."""

    stream: str
    group: str
    subject: str
    partitions: int
    ledger: Any

    async def verify(self, ctx: Context) -> None:
        js = await ctx.js()
        plain = durable_name(self.group, self.subject)
        for p in range(self.partitions):
            try:
                config = (await js.consumer_info(self.stream, lane_durable(plain, p))).config
            except NotFoundError:
                raise Fail(self._no_lane(p, await _exists(js, self.stream, plain))) from None
            if config.max_ack_pending != 1 or config.filter_subject != lane_filter(self.subject, p):
                raise Fail(
                    f"Lane {lane_durable(plain, p)} has max_ack_pending={config.max_ack_pending} and filter "
                    f"{config.filter_subject!r}; expected 1 and {lane_filter(self.subject, p)!r}."
                )

    def _no_lane(self, p: int, plain_exists: bool) -> str:
        if plain_exists:
            c2 = self.ledger.booked.get("C-2") if self.ledger is not None else None
            seen = f" (the ledger shows C-2: {c2})" if c2 else ""
            return (
                f"Group {self.group!r} reads the payments through one durable that hands out many payments at "
                f"once, so a retried payment lets the ones behind it go first{seen}. Subscribe with "
                "ordered=True: one lane per partition, one payment in flight per lane."
            )
        return (
            f"Group {self.group!r} has no lane for partition {p} on stream {self.stream}. Subscribe with "
            f"group={self.group!r} and ordered=True (it creates the lanes)."
        )


async def _exists(js: Any, stream: str, durable: str) -> bool:
    try:
        await js.consumer_info(stream, durable)
    except NotFoundError:
        return False
    return True


@dataclass
class BookedInOrder(Check):
    """The ledger booked every customer's payments once each, in order."""

    ledger: Any

    async def verify(self, ctx: Context) -> None:
        booked = getattr(self.ledger, "booked", None)
        if not booked:
            raise Fail(
                "The ledger is empty: subscribe with handler=ledger.book, call "
                "await publish_payments(bus, ledger), then wait until ledger.complete()."
            )
        for customer in CUSTOMERS:
            got = booked.get(customer, [])
            twice = sorted(n for n, k in Counter(got).items() if k > 1)
            if twice:
                raise Fail(
                    f"{customer}'s payments {twice} were booked more than once. Did a group read payments "
                    "published by an earlier attempt? Run the setup cell again (it starts over), then this one."
                )
            if sorted(got) != list(range(PER_CUSTOMER)):
                missing = sorted(set(range(PER_CUSTOMER)) - set(got))
                raise Fail(
                    f"{customer}'s payments {missing} were never booked: is a lane not running (every "
                    "partition needs an instance), or did you stop before ledger.complete()?"
                )
            if got != list(range(PER_CUSTOMER)):
                raise Fail(
                    f"{customer}'s payments were booked as {got}, not in order: a retried payment let the "
                    "ones behind it go first. Subscribe with ordered=True."
                )


def _in_order(ledger_sub: Any, ledger: Any) -> Checks:
    yield IsInstance("ledger", ledger, Ledger, "Use the ledger = Ledger() from the setup cell.")
    yield Partitioned(PAYMENTS_STREAM, PaymentCaptured.subject(), PARTITIONS)
    yield OrderedLanes(PAYMENTS_STREAM, GROUP, PaymentCaptured.subject(), PARTITIONS, ledger)
    yield BookedInOrder(ledger)


q1 = Question(
    "q1",
    "Every customer's payments in order, four partitions in parallel",
    uses=["ledger_sub", "ledger"],
    checks=_in_order,
    hint=[
        "Two steps, as in lesson 07 section 1: a stream that partitions the keyed payments, then a group that "
        "takes one payment at a time per partition.",
        "`await bus.ensure_stream(PaymentCaptured, name=PAYMENTS_STREAM, subjects=['ex07.payments.>'], "
        "partitions=4)`, then `await bus.subscribe(PaymentCaptured, group='ledger', handler=ledger.book, "
        "ordered=True)`.",
    ],
    solution="""
await bus.ensure_stream(PaymentCaptured, name=PAYMENTS_STREAM, subjects=["ex07.payments.>"], partitions=4)
ledger_sub = await bus.subscribe(PaymentCaptured, group="ledger", handler=ledger.book, ordered=True)
await publish_payments(bus, ledger)
await wait_until(ledger.complete, what="all 32 payments to be booked")
await ledger_sub.stop()
""",
    exercise="07",
)


# -- question 2 ---------------------------------------------------------------------------
@dataclass
class AuditSized(Check):
    """``stream`` keeps 3 entries per order, refuses a 4th, and drops entries after 30 days."""

    stream: str

    async def verify(self, ctx: Context) -> None:
        config = (await _stream_info(ctx, self.stream)).config
        subject = AuditEntry.subject_for("A-1")
        if not any(subject_matches(f, subject) for f in config.subjects or []):
            raise Fail(
                f"Stream {self.stream} stores {config.subjects}, which does not cover {subject!r} (an "
                "AuditEntry of order A-1). Use subjects=['ex07.audit.>']."
            )
        age = config.max_age or 0
        if age and abs(age - THIRTY_DAYS * 1000) < 1:
            raise Fail(
                f"max_age is {age:.0f} s (about {age / 31_557_600:.0f} years): nats-py takes seconds, "
                f"not milliseconds. 30 days is {THIRTY_DAYS} s."
            )
        if abs(age - THIRTY_DAYS) > 1e-3:
            raise Fail(f"Stream {self.stream} has max_age={age:g} s; expected {THIRTY_DAYS} (30 days).")
        if config.max_msgs_per_subject != 3:
            hint = " (max_msgs counts the whole stream, not each order)" if config.max_msgs == 3 else ""
            raise Fail(
                f"Stream {self.stream} has max_msgs_per_subject={config.max_msgs_per_subject}; expected 3: "
                f"each order has a subject of its own{hint}."
            )
        discard = getattr(config.discard, "value", config.discard)
        if discard != "new":
            raise Fail(
                f"Stream {self.stream} has discard={discard!r}: when an order has 3 entries, a 4th makes room "
                "by silently dropping the oldest. Refuse it instead: discard=DiscardPolicy.NEW."
            )
        if not config.discard_new_per_subject:
            raise Fail(
                f"Stream {self.stream} has discard='new' but discard_new_per_subject={config.discard_new_per_subject}:"
                " new entries are then refused only when the whole stream is full, while a full order still "
                "drops its oldest. Set discard_new_per_subject=True."
            )
        await self._refuses_fourth(ctx)

    async def _refuses_fourth(self, ctx: Context) -> None:
        js = await ctx.js()
        order = f"check-{uuid.uuid4().hex[:8]}"
        subject = AuditEntry.subject_for(order)
        for i in range(3):
            await js.publish(subject, AuditEntry(order_id=order, what=f"entry {i}").to_json())
        try:
            await js.publish(subject, AuditEntry(order_id=order, what="entry 3").to_json())
        except APIError as err:
            if err.err_code != 10077:
                raise Fail(
                    f"The 4th entry for order {order} was refused with error {err.err_code} "
                    f"({err.description}); expected 10077 (maximum messages per subject exceeded)."
                ) from None
            return
        raise Fail(f"The check published 4 entries for order {order} and the 4th was stored; expected it refused.")


def _sized(audit: Any) -> Checks:
    yield AuditSized(AUDIT_STREAM)


q2 = Question(
    "q2",
    "An audit stream sized per order",
    uses=["audit"],
    checks=_sized,
    hint=[
        "AuditEntry is keyed by order_id, so every order has a subject of its own: a limit per subject is a "
        "limit per order.",
        "max_msgs_per_subject=3, discard=DiscardPolicy.NEW with discard_new_per_subject=True, and max_age in "
        "seconds (30 * 24 * 3600).",
    ],
    solution="""
audit = await bus.ensure_stream(
    AuditEntry,
    name=AUDIT_STREAM,
    subjects=["ex07.audit.>"],
    max_age=30 * 24 * 3600,
    max_msgs_per_subject=3,
    discard=DiscardPolicy.NEW,
    discard_new_per_subject=True,
)
""",
    exercise="07",
)


# -- question 3 ---------------------------------------------------------------------------
@dataclass
class LagsRight(Check):
    """``lags`` gives each group's lag (pending + unacknowledged) as the server has it, and ``worst`` the largest."""

    lags: Any
    worst: Any

    async def verify(self, ctx: Context) -> None:
        js = await ctx.js()
        truth: dict[str, tuple[int, int]] = {}
        for group in GROUPS:
            info = await js.consumer_info(EVENTS_STREAM, durable_name(group, ShipmentUpdated.subject()))
            truth[group] = (info.num_pending or 0, info.num_ack_pending or 0)
        if not isinstance(self.lags, Mapping) or set(self.lags) != set(GROUPS):
            raise Fail(f"lags must be a dict with one entry per group, {list(GROUPS)}; got {self.lags!r:.120}.")
        for group, (pending, unacked) in truth.items():
            given = self.lags[group]
            if given != pending + unacked:
                why = ""
                if given == pending and unacked:
                    why = (
                        f": it also holds {unacked} delivered, unacknowledged messages (num_ack_pending). "
                        "Lag = num_pending + num_ack_pending"
                    )
                raise Fail(f"lags[{group!r}] is {given!r}, but group {group} is {pending + unacked} behind{why}.")
        furthest = max(truth, key=lambda g: sum(truth[g]))
        if self.worst != furthest:
            said = f" ({sum(truth[self.worst])} behind)" if self.worst in truth else ""
            raise Fail(f"worst is {self.worst!r}{said}, but {furthest!r} is furthest behind ({sum(truth[furthest])}).")


def _lagging(lags: Any, worst: Any) -> Checks:
    yield LagsRight(lags, worst)


q3 = Question(
    "q3",
    "The group furthest behind",
    uses=["lags", "worst"],
    checks=_lagging,
    hint=[
        "A group's lag is what it has not finished: waiting to be delivered, and delivered but not acknowledged.",
        "`(await bus.group_lag(ShipmentUpdated, group=g)).behind` for each g in GROUPS, or num_pending + "
        "num_ack_pending from `await js.consumer_info(EVENTS_STREAM, durable)`.",
    ],
    solution="""
lags = {group: (await bus.group_lag(ShipmentUpdated, group=group)).behind for group in GROUPS}
worst = max(lags, key=lags.get)
""",
    exercise="07",
)

QUESTIONS = [q1, q2, q3]
