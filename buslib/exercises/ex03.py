"""Exercise 03, consumer groups: workers sharing a group, a second group, an idempotent handler.

>>> from buslib.exercises.ex03 import *                         # doctest: +SKIP
>>> await reset(js)                                              # doctest: +SKIP
>>> bus = await EventBus.connect(service="packing")             # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import NotFoundError

from buslib.events import Event
from buslib.exercises.checks import _stream_info, delete_streams
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
    "JOBS",
    "PackingJob",
    "PaymentRequested",
    "Ledger",
    "run_payments",
]

STREAM = "EX03"
JOBS = 30
SETTLE_S = 2.0  # how long a check gives the server to apply the last acks


class PackingJob(Event, type="ex03.packing.requested", version=1):
    """A parcel to pack (questions 1 and 2)."""

    job_id: int


class PaymentRequested(Event, type="ex03.payments.requested", version=1):
    """A payment to charge (question 3)."""

    payment_id: str
    amount: float


async def reset(js: Any) -> None:
    """Start over: delete stream EX03 and its consumers (the bus creates it again)."""
    await delete_streams(js, STREAM)


@dataclass
class Ledger:
    """The side effect of question 3: ``charge`` books money every time it is called."""

    lines: list[tuple[str, float]] = field(default_factory=list)

    def charge(self, payment_id: str, amount: float) -> None:
        self.lines.append((payment_id, amount))

    def total(self) -> float:
        return round(sum(amount for _, amount in self.lines), 2)


PAYMENTS = [("P-1", 10.0), ("P-2", 25.0), ("P-2", 25.0), ("P-3", 7.5)]  # P-2 twice: a client retried
PAYMENTS_GROUP = "payments"
AUDIT_GROUP = "audit"  # question 2's group


async def run_payments(bus: Any, handler: Callable[[Any, Any], Awaitable[None]], ledger: Ledger) -> Counter:
    """Run ``handler`` in group "payments" over 4 payment events, the way production would.

    The client sent payment P-2 twice (two events, two event ids), and the worker crashes
    right after handling P-3 the first time, before its ack, so P-3 is delivered again.
    Starts from a clean slate each time (ledger, payment events, consumer).

    Returns:
        How many times each payment id was delivered.
    """
    ledger.lines.clear()
    subject = PaymentRequested.subject()
    await bus.ensure_stream(PaymentRequested)
    await bus.js.purge_stream(STREAM, subject=subject)
    try:
        await bus.js.delete_consumer(STREAM, durable_name(PAYMENTS_GROUP, subject))
    except NotFoundError:
        pass
    deliveries: Counter = Counter()
    done: list[str] = []

    async def worker(event: PaymentRequested, ctx: Any) -> None:
        deliveries[event.payment_id] += 1
        await handler(event, ctx)
        if event.payment_id == "P-3" and ctx.num_delivered == 1:
            raise RuntimeError("the worker crashed after charging P-3, before acknowledging it")
        done.append(event.payment_id)

    sub = await bus.subscribe(
        PaymentRequested, group=PAYMENTS_GROUP, handler=worker, retry=Retry(max_deliver=3, delays=[0.1], jitter=0)
    )
    try:
        for payment_id, amount in PAYMENTS:
            await bus.publish(PaymentRequested(payment_id=payment_id, amount=amount))
        await wait_until(lambda: len(done) >= len(PAYMENTS), what="all 4 payments to be handled")
    finally:
        await sub.stop()
    return deliveries


# -- checks ------------------------------------------------------------------------------
@dataclass
class WorkShared(Check):
    """``handled`` maps each of ``workers`` worker names to the job ids it handled: all jobs, once each."""

    handled: Any
    total: int
    workers: int

    async def verify(self, ctx: Context) -> None:
        if len(self.handled) != self.workers:
            raise Fail(
                f"handled has {len(self.handled)} worker(s) ({', '.join(map(str, self.handled))}); "
                f"expected {self.workers}."
            )
        seen = Counter(job for jobs in self.handled.values() for job in jobs)
        twice = sorted(job for job, n in seen.items() if n > 1)
        if twice:
            who = [name for name, jobs in self.handled.items() if twice[0] in jobs]
            raise Fail(
                f"{len(twice)} job(s) were handled more than once, e.g. job {twice[0]} by {', '.join(map(str, who))}. "
                "In one group each message goes to one worker: give all workers the same group."
            )
        missing = sorted(set(range(self.total)) - set(seen))
        if missing:
            raise Fail(
                f"{len(missing)} of {self.total} jobs were not handled (e.g. job {missing[0]}). "
                "Wait until all are done before stopping the workers."
            )
        idle = [str(name) for name, jobs in self.handled.items() if not jobs]
        if idle:
            raise Fail(
                f"Worker(s) {', '.join(idle)} handled no job: one worker took everything. Start all "
                "workers before publishing, so they share the work."
            )


@dataclass
class GroupConsumed(Check):
    """Group ``group`` (its durable consumer on ``subject``) has acknowledged ``count`` messages, none pending."""

    stream: str
    group: str
    subject: str
    count: int

    async def verify(self, ctx: Context) -> None:
        await _stream_info(ctx, self.stream)
        js = await ctx.js()
        durable = durable_name(self.group, self.subject)
        try:
            info = await js.consumer_info(self.stream, durable)
        except NotFoundError:
            raise Fail(
                f"There is no consumer for group {self.group!r} on {self.subject} (durable {durable}). "
                f"Subscribe with group={self.group!r}."
            ) from None
        # The server applies acks (and counts new messages) a moment after they arrive: a group
        # stopped right after its last handler returned may still show that ack for that moment.
        deadline = time.monotonic() + SETTLE_S
        while (info.num_pending or info.num_ack_pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            info = await js.consumer_info(self.stream, durable)
        acked = info.ack_floor.stream_seq if info.ack_floor else 0
        if info.num_pending or info.num_ack_pending:
            raise Fail(
                f"Group {self.group!r} still has {info.num_pending} message(s) waiting and "
                f"{info.num_ack_pending} unacknowledged. Wait until all are handled."
            )
        if info.delivered.consumer_seq < self.count or not acked:
            raise Fail(
                f"Group {self.group!r} received {info.delivered.consumer_seq} message(s); expected {self.count}."
            )


@dataclass
class OneGroupConsumed(Check):
    """Exactly one group (other than ``others``) consumes ``subject``, and it consumed ``count`` messages.

    The group's name is the learner's choice: it is read from the durable consumers on the server.
    """

    stream: str
    subject: str
    count: int
    others: tuple[str, ...] = ()

    async def verify(self, ctx: Context) -> None:
        await _stream_info(ctx, self.stream)
        js = await ctx.js()
        suffix = durable_name("", self.subject)  # "__ex03_packing_requested_v1": a group's durable ends so
        groups = sorted(
            info.name[: -len(suffix)]
            for info in await js.consumers_info(self.stream)
            if info.name.endswith(suffix) and info.name[: -len(suffix)] not in self.others
        )
        if not groups:
            raise Fail(
                f"No group consumes {self.subject} on the server. Subscribe the workers with "
                "`bus.subscribe(PackingJob, group=..., handler=...)`."
            )
        if len(groups) > 1:
            raise Fail(
                f"{len(groups)} groups consume {self.subject}: {', '.join(groups)}. Each group receives every "
                "job, so workers in different groups each pack all of them. To start clean, run the setup "
                "cell again, then subscribe the three workers so that they share the work."
            )
        await GroupConsumed(self.stream, groups[0], self.subject, self.count).verify(ctx)


@dataclass
class ChargedOnce(Check):
    """The ledger holds each payment exactly once."""

    ledger: Any
    expected: Mapping[str, float]

    async def verify(self, ctx: Context) -> None:
        lines = getattr(self.ledger, "lines", None)
        if not lines:
            raise Fail(
                "The ledger is empty: run the cell that calls run_payments(bus, charge, ledger), and make "
                "charge call ledger.charge(payment_id, amount). run_payments empties the ledger first: if "
                "charge remembers what it charged elsewhere (a set), create it empty in the same cell."
            )
        counts = Counter(payment_id for payment_id, _ in lines)
        for payment_id in self.expected:
            if counts[payment_id] == 0:
                raise Fail(f"Payment {payment_id} was never charged; every payment must be charged once.")
        twice = {p: n for p, n in counts.items() if n > 1}
        if twice:
            detail = ", ".join(f"{p} {n} times" for p, n in sorted(twice.items()))
            why = (
                "P-2 came as two events with different event ids (a client retry): the event id tells "
                "deliveries of one event apart, not two events for one payment. Key on the payment, "
                "event.payment_id"
                if "P-2" in twice
                else "P-3 was delivered again after the crash: remember what you charged"
            )
            raise Fail(f"Charged more than once: {detail}. {why}.")
        total = round(sum(self.expected.values()), 2)
        if self.ledger.total() != total:
            raise Fail(f"The ledger's total is {self.ledger.total()}; expected {total}.")


def _shared(handled: Any) -> Checks:
    yield IsInstance("handled", handled, dict, "Keep a dict: worker name -> list of the job ids it handled.")
    yield WorkShared(handled, total=JOBS, workers=3)
    yield OneGroupConsumed(STREAM, PackingJob.subject(), JOBS, others=(AUDIT_GROUP,))


q1 = Question(
    "q1",
    "Three workers share the work",
    uses=["handled"],
    checks=_shared,
    hint=[
        "Each worker is one `await bus.subscribe(PackingJob, group=..., handler=...)`; what makes them share?",
        'The same group name for all three (any name but "audit"): they then share one durable consumer, and '
        "each message goes to one of them. Subscribe all three first, then publish the jobs.",
    ],
    solution="""
handled = {"w1": [], "w2": [], "w3": []}


def packer(name):
    async def handle(job, ctx):
        handled[name].append(job.job_id)
        await asyncio.sleep(0.01)  # packing takes a moment

    return handle


packers = [await bus.subscribe(PackingJob, group="packers", handler=packer(name)) for name in handled]
await bus.publish_many(PackingJob(job_id=n) for n in range(JOBS))
await wait_until(lambda: sum(map(len, handled.values())) >= JOBS, what="all jobs to be packed")
for sub in packers:
    await sub.stop()
""",
    exercise="03",
)


def _audited(audited: Any) -> Checks:
    yield IsInstance("audited", audited, list, "Keep a list of the job ids the audit group saw.")
    yield GroupConsumed(STREAM, AUDIT_GROUP, PackingJob.subject(), JOBS)
    yield Satisfies(
        "audited",
        audited,
        lambda seen: all(isinstance(job, int) for job in seen),
        "audited holds events; keep their ids (audited.append(job.job_id)).",
    )
    yield Satisfies(
        "audited",
        audited,
        lambda seen: sorted(seen) == list(range(JOBS)),
        f"audited holds {len(audited)} job id(s), {len(set(audited))} distinct; expected every job "
        f"0..{JOBS - 1} once. The bus starts a new group at the oldest stored message "
        "(DeliverPolicy.ALL): wait for all of them.",
    )


q2 = Question(
    "q2",
    "A second group sees every job",
    uses=["audited"],
    checks=_audited,
    hint=[
        "Another service (audit) wants every job too, even those packed before it started.",
        "A different group name is a different durable consumer: it receives every message. The bus creates "
        "a new group with DeliverPolicy.ALL, so it starts at the oldest message the stream holds.",
    ],
    solution="""
audited = []


async def audit(job, ctx):
    audited.append(job.job_id)


auditor = await bus.subscribe(PackingJob, group="audit", handler=audit)
await wait_until(lambda: len(audited) >= JOBS, what="the audit group to see every job")
await auditor.stop()
""",
    exercise="03",
)


def _idempotent(charge: Any, ledger: Any) -> Checks:
    yield IsInstance("ledger", ledger, Ledger, "Use the ledger = Ledger() from the setup cell.")
    yield ChargedOnce(ledger, {"P-1": 10.0, "P-2": 25.0, "P-3": 7.5})
    yield GroupConsumed(STREAM, PAYMENTS_GROUP, PaymentRequested.subject(), len(PAYMENTS) + 1)


q3 = Question(
    "q3",
    "An idempotent handler",
    uses=["charge", "ledger"],
    checks=_idempotent,
    hint=[
        "Delivery is at-least-once: the same payment can reach the handler twice. Remember what you charged.",
        "Keep a set of payment ids already charged (or look in the ledger); skip those. Why the payment id and "
        "not ctx.event_id, as in lesson 03? P-2's two events have two different event ids.",
    ],
    solution="""
charged = set()


async def charge(event, ctx):
    if event.payment_id in charged:
        return  # already booked: a redelivery or a client retry
    ledger.charge(event.payment_id, event.amount)
    charged.add(event.payment_id)


deliveries = await run_payments(bus, charge, ledger)
""",
    exercise="03",
)

QUESTIONS = [q1, q2, q3]
