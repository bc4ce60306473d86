"""Exercise 07 against the real server: two different right answers pass each question, plausible
wrong ones are rejected with the feedback a learner sees."""

from __future__ import annotations

import pytest
from nats.js.api import DiscardPolicy, StorageType

from buslib import EventBus
from buslib.exercises import ex07
from buslib.exercises.core import Status, ____, wait_until
from buslib.subjects import durable_name


@pytest.fixture
async def bus(nats_url, js):
    await ex07.reset(js)
    async with EventBus.connect(service="billing", url=nats_url) as b:
        yield b
    await ex07.reset(js)


def _incorrect(outcome, text):
    assert outcome.status is Status.INCORRECT, outcome
    assert text in outcome.message, outcome.message


async def _payments_stream(bus, partitions=4):
    await bus.ensure_stream(
        ex07.PaymentCaptured, name=ex07.PAYMENTS_STREAM, subjects=["ex07.payments.>"], partitions=partitions
    )


async def _run(bus, ledger, subs, *, count=32):
    await ex07.publish_payments(bus, ledger)
    await wait_until(lambda: ledger.count() >= count, what=f"{count} payments booked", timeout=20)
    for sub in subs:
        await sub.stop()
    return subs


# -- q1 ------------------------------------------------------------------------------------
async def test_q1_one_ordered_instance_passes(bus):
    ledger = ex07.Ledger()
    assert (await ex07.q1.outcome_async({"ledger_sub": ____, "ledger": ledger})).status is Status.NOT_ATTEMPTED
    await _payments_stream(bus)
    sub = await bus.subscribe(ex07.PaymentCaptured, group="ledger", handler=ledger.book, ordered=True)
    await _run(bus, ledger, [sub])
    assert (await ex07.q1.outcome_async({"ledger_sub": sub, "ledger": ledger})).correct


async def test_q1_two_instances_sharing_the_partitions_pass(nats_url, bus):
    ledger = ex07.Ledger()
    await _payments_stream(bus)
    async with EventBus.connect(service="billing-2", url=nats_url) as other:
        subs = [
            await bus.subscribe(
                ex07.PaymentCaptured, group="ledger", handler=ledger.book, ordered=True, partitions=[0, 1]
            ),
            await other.subscribe(
                ex07.PaymentCaptured, group="ledger", handler=ledger.book, ordered=True, partitions=[2, 3]
            ),
        ]
        await _run(bus, ledger, subs)
    assert (await ex07.q1.outcome_async({"ledger_sub": subs, "ledger": ledger})).correct


async def test_q1_a_plain_group_reorders_the_retried_payment_and_is_rejected(bus):
    ledger = ex07.Ledger()
    await _payments_stream(bus)
    sub = await bus.subscribe(ex07.PaymentCaptured, group="ledger", handler=ledger.book)
    await _run(bus, ledger, [sub])
    assert ledger.booked["C-2"].index(4) < ledger.booked["C-2"].index(3)  # what the feedback is about
    _incorrect(
        await ex07.q1.outcome_async({"ledger_sub": sub, "ledger": ledger}),
        "Group 'ledger' reads the payments through one durable that hands out many payments at once, so a retried "
        "payment lets the ones behind it go first (the ledger shows C-2: [0, 1, 2, 4",
    )


async def test_q1_ordered_without_partitions_is_rejected(bus):
    ledger = ex07.Ledger()
    await bus.ensure_stream(ex07.PaymentCaptured, name=ex07.PAYMENTS_STREAM, subjects=["ex07.payments.>"])
    sub = await bus.subscribe(ex07.PaymentCaptured, group="ledger", handler=ledger.book, ordered=True)
    await _run(bus, ledger, [sub])
    _incorrect(
        await ex07.q1.outcome_async({"ledger_sub": sub, "ledger": ledger}),
        "Stream EX07_PAYMENTS does not partition ex07.payments.captured.v1: without partitions an ordered group is "
        "one lane, one payment at a time for every customer. Create it with ensure_stream(..., partitions=4).",
    )


async def test_q1_two_partitions_or_half_the_lanes_are_rejected(bus):
    ledger = ex07.Ledger()
    await _payments_stream(bus, partitions=2)
    _incorrect(
        await ex07.q1.outcome_async({"ledger_sub": object(), "ledger": ledger}),
        "Stream EX07_PAYMENTS splits ex07.payments.captured.v1 into 2 partitions; expected 4.",
    )
    await ex07.reset(bus.js)
    await _payments_stream(bus)
    sub = await bus.subscribe(
        ex07.PaymentCaptured, group="ledger", handler=ledger.book, ordered=True, partitions=[0, 1]
    )
    await _run(bus, ledger, [sub], count=16)  # C-1 and C-2 only: nobody runs partitions 2 and 3
    _incorrect(
        await ex07.q1.outcome_async({"ledger_sub": sub, "ledger": ledger}),
        "Group 'ledger' has no lane for partition 2 on stream EX07_PAYMENTS. Subscribe with group='ledger' and "
        "ordered=True (it creates the lanes).",
    )


async def test_q1_payments_read_twice_after_an_earlier_attempt_are_rejected(bus):
    """An earlier attempt published the payments, the cell ran again without the setup: 64 to read."""
    ledger = ex07.Ledger()
    await _payments_stream(bus)
    for _ in range(2):
        await ex07.publish_payments(bus, ex07.Ledger())
    sub = await bus.subscribe(ex07.PaymentCaptured, group="ledger", handler=ledger.book, ordered=True)
    await wait_until(lambda: ledger.count() >= 64, what="64 payments booked", timeout=20)
    await sub.stop()
    _incorrect(
        await ex07.q1.outcome_async({"ledger_sub": sub, "ledger": ledger}),
        "C-1's payments [0, 1, 2, 3, 4, 5, 6, 7] were booked more than once. Did a group read payments published by "
        "an earlier attempt? Run the setup cell again",
    )


# -- q2 ------------------------------------------------------------------------------------
def _audit(**overrides):
    config = dict(
        name=ex07.AUDIT_STREAM,
        subjects=["ex07.audit.>"],
        max_age=30 * 24 * 3600,
        max_msgs_per_subject=3,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
    )
    return {**config, **overrides}


async def test_q2_the_bus_and_a_raw_memory_stream_both_pass(bus):
    assert (await ex07.q2.outcome_async({"audit": ____})).status is Status.NOT_ATTEMPTED
    audit = await bus.ensure_stream(ex07.AuditEntry, **_audit())
    assert (await ex07.q2.outcome_async({"audit": audit})).correct
    await bus.js.delete_stream(ex07.AUDIT_STREAM)
    raw = await bus.js.add_stream(
        **_audit(subjects=["ex07.audit.recorded.v1.*"], storage=StorageType.MEMORY, max_age=2592000.0)
    )
    assert (await ex07.q2.outcome_async({"audit": raw})).correct


@pytest.mark.parametrize(
    ("overrides", "feedback"),
    [
        (
            {"discard": DiscardPolicy.OLD, "discard_new_per_subject": False},
            "Stream EX07_AUDIT has discard='old': when an order has 3 entries, a 4th makes room by silently dropping "
            "the oldest. Refuse it instead: discard=DiscardPolicy.NEW.",
        ),
        (
            {"discard_new_per_subject": False},
            "Stream EX07_AUDIT has discard='new' but discard_new_per_subject=False: new entries are then refused only "
            "when the whole stream is full, while a full order still drops its oldest. Set discard_new_per_subject=True.",
        ),
        (
            {"max_age": 30 * 24 * 3600 * 1000},
            "max_age is 2592000000 s (about 82 years): nats-py takes seconds, not milliseconds. 30 days is 2592000 s.",
        ),
        (
            {"max_msgs_per_subject": -1, "max_msgs": 3, "discard_new_per_subject": False},
            "Stream EX07_AUDIT has max_msgs_per_subject=-1; expected 3: each order has a subject of its own (max_msgs "
            "counts the whole stream, not each order).",
        ),
        (
            {"max_age": 7 * 24 * 3600},
            "Stream EX07_AUDIT has max_age=604800 s; expected 2592000 (30 days).",
        ),
    ],
    ids=["discard-old", "discard-new-for-the-stream", "max-age-in-ms", "max-msgs-not-per-order", "seven-days"],
)
async def test_q2_wrong_sizes_are_rejected_with_what_they_do(bus, overrides, feedback):
    audit = await bus.js.add_stream(**_audit(**overrides))
    _incorrect(await ex07.q2.outcome_async({"audit": audit}), feedback)


async def test_q2_a_stream_on_other_subjects_is_rejected(bus):
    audit = await bus.js.add_stream(**_audit(subjects=["ex07.audits.>"]))
    _incorrect(
        await ex07.q2.outcome_async({"audit": audit}),
        "Stream EX07_AUDIT stores ['ex07.audits.>'], which does not cover 'ex07.audit.recorded.v1.A-1'",
    )


# -- q3 ------------------------------------------------------------------------------------
async def test_q3_the_bus_and_consumer_info_both_pass(bus):
    assert (await ex07.q3.outcome_async({"lags": ____, "worst": ____})).status is Status.NOT_ATTEMPTED
    lags = {g: (await bus.group_lag(ex07.ShipmentUpdated, group=g)).behind for g in ex07.GROUPS}
    assert lags == {"billing": 20, "shipping": 15, "analytics": 3}
    assert (await ex07.q3.outcome_async({"lags": lags, "worst": max(lags, key=lags.get)})).correct
    by_hand = {}
    for group in ex07.GROUPS:
        info = await bus.js.consumer_info(ex07.EVENTS_STREAM, durable_name(group, ex07.ShipmentUpdated.subject()))
        by_hand[group] = info.num_pending + info.num_ack_pending
    assert (await ex07.q3.outcome_async({"lags": by_hand, "worst": "billing"})).correct


async def test_q3_pending_only_and_the_wrong_worst_are_rejected(bus):
    pending = {}
    for group in ex07.GROUPS:
        info = await bus.js.consumer_info(ex07.EVENTS_STREAM, durable_name(group, ex07.ShipmentUpdated.subject()))
        pending[group] = info.num_pending
    _incorrect(
        await ex07.q3.outcome_async({"lags": pending, "worst": max(pending, key=pending.get)}),
        "lags['billing'] is 8, but group billing is 20 behind: it also holds 12 delivered, unacknowledged messages "
        "(num_ack_pending). Lag = num_pending + num_ack_pending.",
    )
    right = {"billing": 20, "shipping": 15, "analytics": 3}
    _incorrect(
        await ex07.q3.outcome_async({"lags": right, "worst": "shipping"}),
        "worst is 'shipping' (15 behind), but 'billing' is furthest behind (20).",
    )
    _incorrect(
        await ex07.q3.outcome_async({"lags": {"billing": 20}, "worst": "billing"}),
        "lags must be a dict with one entry per group, ['billing', 'shipping', 'analytics']",
    )
