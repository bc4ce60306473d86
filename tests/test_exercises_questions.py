"""Exercises 02-05 against the real server: the right answer passes, plausible wrong ones are
rejected with a message that says what the server shows and what was expected."""

from __future__ import annotations

import asyncio

import pytest

from buslib import EventBus, events, tracing
from buslib.exercises.core import Status, wait_until


@pytest.fixture
async def bus(nats_url):
    async with EventBus.connect(service="warehouse", url=nats_url) as b:
        yield b


@pytest.fixture
def forget_event_classes():
    """Event classes defined in a test register globally by (type, version): drop them afterwards."""
    yield
    for key, cls in list(events._REGISTRY.items()):
        if cls.__module__ == __name__:
            del events._REGISTRY[key]


def _incorrect(outcome, text):
    assert outcome.status is Status.INCORRECT, outcome
    assert text in outcome.message, outcome.message


# -- 02 ------------------------------------------------------------------------------------
async def test_ex02_contract_rejects_a_wrong_type_name_and_a_wrong_field_type(forget_event_classes):
    from buslib import Event
    from buslib.exercises import ex02

    class ShipmentDispatched(Event, type="ex02.shipment.dispatched", version=1):
        shipment_id: str
        weight_kg: float

    _incorrect(
        await ex02.q1.outcome_async({"ShipmentDispatched": ShipmentDispatched}),
        "declares type 'ex02.shipment.dispatched' version 1 (subject ex02.shipment.dispatched.v1); expected type "
        "'ex02.shipments.dispatched'",
    )
    events._REGISTRY.pop(("ex02.shipment.dispatched", 1))

    class ShipmentDispatched(Event, type="ex02.shipments.dispatched", version=1):  # noqa: F811
        shipment_id: str
        weight_kg: int

    _incorrect(
        await ex02.q1.outcome_async({"ShipmentDispatched": ShipmentDispatched}),
        "ShipmentDispatched.weight_kg is declared as int; expected float.",
    )
    _incorrect(await ex02.q1.outcome_async({"ShipmentDispatched": dict}), "must be a class that extends buslib.Event")


async def test_ex02_publish_and_trace_accept_the_bus_and_reject_raw_and_new_traces(js, bus, forget_event_classes):
    from buslib import Event
    from buslib.exercises import ex02

    class ShipmentDispatched(Event, type="ex02.shipments.dispatched", version=1):
        shipment_id: str
        weight_kg: float

    await ex02.reset(js)
    assert (await ex02.q1.outcome_async({"ShipmentDispatched": ShipmentDispatched})).correct
    raw = await bus.publish(ShipmentDispatched(shipment_id="S-1", weight_kg=2.5))  # creates EX02
    assert (await ex02.q2.outcome_async({"ack": raw})).correct
    plain = await js.publish("ex02.shipments.dispatched.v1", b'{"shipment_id": "S-1", "weight_kg": 2.5}')
    _incorrect(
        await ex02.q2.outcome_async({"ack": plain}), "has header ce-type=None; expected 'ex02.shipments.dispatched'"
    )
    other = await bus.publish(ShipmentDispatched(shipment_id="S-9", weight_kg=2.5))
    _incorrect(await ex02.q2.outcome_async({"ack": other}), "has shipment_id='S-9' in its JSON payload; expected 'S-1'")

    _incorrect(await ex02.q3.outcome_async({"bill": object()}), "has no message on 'ex02.invoices.requested.v1'")
    invoices = []

    async def bill_raw(event, ctx):  # publishes around the bus: no traceparent
        invoice = ex02.InvoiceRequested(shipment_id=event.shipment_id, amount=1.0)
        invoices.append(await js.publish(invoice.subject(), invoice.to_json()))

    sub = await bus.subscribe(ShipmentDispatched, group="billing", handler=bill_raw)
    await wait_until(lambda: len(invoices) >= 2)
    await sub.stop()
    _incorrect(await ex02.q3.outcome_async({"bill": bill_raw}), "has no traceparent header")

    await ex02.reset(js)
    bus.streams.forget()
    await bus.publish(ShipmentDispatched(shipment_id="S-1", weight_kg=2.5))
    invoices.clear()

    async def bill_new_trace(event, ctx):
        with tracing.trace(None):  # starts a trace of its own
            invoices.append(await bus.publish(ex02.InvoiceRequested(shipment_id=event.shipment_id, amount=1.0)))

    sub = await bus.subscribe(ShipmentDispatched, group="billing", handler=bill_new_trace)
    await wait_until(lambda: invoices)
    await sub.stop()
    _incorrect(await ex02.q3.outcome_async({"bill": bill_new_trace}), "Publish from inside the handler, in its trace")
    await ex02.reset(js)


# -- 03 ------------------------------------------------------------------------------------
async def test_ex03_three_groups_instead_of_one_are_rejected_and_one_group_passes(js, bus):
    from buslib.exercises import ex03

    await ex03.reset(js)
    bus.streams.forget()
    handled = {"w1": [], "w2": [], "w3": []}

    def packer(name):
        async def handle(job, ctx):
            handled[name].append(job.job_id)
            await asyncio.sleep(0.01)

        return handle

    subs = [await bus.subscribe(ex03.PackingJob, group=f"packers-{name}", handler=packer(name)) for name in handled]
    await bus.publish_many(ex03.PackingJob(job_id=n) for n in range(ex03.JOBS))
    await wait_until(lambda: sum(map(len, handled.values())) >= 3 * ex03.JOBS, timeout=20)
    for sub in subs:
        await sub.stop()
    _incorrect(
        await ex03.q1.outcome_async({"handled": handled}),
        "30 job(s) were handled more than once, e.g. job 0 by w1, w2, w3",
    )
    _incorrect(
        await ex03.q1.outcome_async({"handled": {"w1": list(range(30)), "w2": [], "w3": []}}),
        "Worker(s) w2, w3 handled no job",
    )
    _incorrect(
        await ex03.q1.outcome_async({"handled": {"w1": list(range(30))}}), "handled has 1 worker(s) (w1); expected 3."
    )
    shared = {"w1": list(range(0, 30, 3)), "w2": list(range(1, 30, 3)), "w3": list(range(2, 30, 3))}
    _incorrect(await ex03.q1.outcome_async({"handled": shared}), "There is no consumer for group 'packers'")

    _incorrect(await ex03.q2.outcome_async({"audited": []}), "There is no consumer for group 'audit'")
    audited_events = []

    async def audit(job, ctx):
        audited_events.append(job)

    sub = await bus.subscribe(ex03.PackingJob, group="audit", handler=audit)
    await wait_until(lambda: len(audited_events) >= ex03.JOBS, timeout=20)
    await sub.stop()
    _incorrect(await ex03.q2.outcome_async({"audited": audited_events}), "keep their ids (audited.append(job.job_id))")
    _incorrect(await ex03.q2.outcome_async({"audited": list(range(20))}), "audited holds 20 job id(s), 20 distinct")


async def test_ex03_non_idempotent_handlers_charge_twice_and_are_rejected(js, bus):
    from buslib.exercises import ex03

    await ex03.reset(js)
    bus.streams.forget()
    ledger = ex03.Ledger()

    async def naive(event, ctx):
        ledger.charge(event.payment_id, event.amount)

    deliveries = await ex03.run_payments(bus, naive, ledger)
    assert deliveries == {"P-1": 1, "P-2": 2, "P-3": 2}
    _incorrect(
        await ex03.q3.outcome_async({"charge": naive, "ledger": ledger}),
        "Charged more than once: P-2 2 times, P-3 2 times",
    )

    seen = set()

    async def by_event_id(event, ctx):  # catches the redelivery, not the client retry
        if ctx.event_id not in seen:
            seen.add(ctx.event_id)
            ledger.charge(event.payment_id, event.amount)

    await ex03.run_payments(bus, by_event_id, ledger)
    _incorrect(
        await ex03.q3.outcome_async({"charge": by_event_id, "ledger": ledger}),
        "Charged more than once: P-2 2 times. P-2 came as two events",
    )

    charged = set()

    async def idempotent(event, ctx):
        if event.payment_id not in charged:
            charged.add(event.payment_id)
            ledger.charge(event.payment_id, event.amount)

    await ex03.run_payments(bus, idempotent, ledger)
    assert (await ex03.q3.outcome_async({"charge": idempotent, "ledger": ledger})).correct
    _incorrect(await ex03.q3.outcome_async({"charge": idempotent, "ledger": ex03.Ledger()}), "The ledger is empty")
    await ex03.reset(js)


# -- 04 ------------------------------------------------------------------------------------
async def test_ex04_wrong_policies_and_a_retried_rejection_are_rejected(js, bus):
    from buslib.dlq import DeadLetterQueue
    from buslib.exercises import ex04
    from buslib.retry import Retry

    await ex04.reset(js)
    bus.streams.forget()
    shipping = ex04.Shipping()
    _incorrect(
        await ex04.q1.outcome_async({"policy": Retry(max_deliver=3), "shipping": shipping}),
        "policy waits [0.5, 2.0] s before the retries; expected 1 s each.",
    )
    _incorrect(
        await ex04.q1.outcome_async({"policy": Retry(max_deliver=4, delays=[1]), "shipping": shipping}),
        "policy allows 4 deliveries; expected 3",
    )
    policy = Retry(max_deliver=3, delays=[1.0], jitter=0)
    _incorrect(await ex04.q1.outcome_async({"policy": policy, "shipping": shipping}), "There is no stream named 'EX04'")

    # A handler that raises ValueError instead of Reject: retried, then dead-lettered as exhausted.
    dlq = await DeadLetterQueue(bus, stream=ex04.DLQ_STREAM, watch=[ex04.STREAM]).setup()
    fast = Retry(max_deliver=2, delays=[0.1], jitter=0)

    async def ship_checked(order, ctx):
        raise ValueError("amount must be positive")

    sub = await bus.subscribe(
        ex04.OrderPlaced, group="shipping-test", handler=ship_checked, retry=fast, dead_letters=dlq
    )
    await bus.publish(ex04.OrderPlaced(order_id="negative", amount=-5.0))
    await wait_until(lambda: ex04.in_dead_letters(dlq, "negative"))
    await sub.stop()
    _incorrect(
        await ex04.q2.outcome_async({"ship_checked": ship_checked}),
        "Order 'negative' was dead-lettered as 'exhausted' after 2 deliveries; expected 'rejected' after 1.",
    )
    _incorrect(
        await ex04.q3.outcome_async({"replayed": await dlq.replay(ids=[]), "shipping": shipping}),
        "Order 'poison' was not shipped after the replay",
    )
    shipping.shipped += ["ok", "flaky", "poison"]
    await dlq.purge(everything=True)
    _incorrect(
        await ex04.q3.outcome_async({"replayed": await dlq.replay(ids=[]), "shipping": shipping}),
        "No dead letter for order 'negative' in EX04_DLQ (it holds [])",
    )
    await ex04.reset(js)


async def test_ex04_retries_spaced_rejects_retries_without_a_delay():
    from buslib.exercises.core import Context, Fail
    from buslib.exercises.ex04 import RetriesSpaced, Shipping

    storm = Shipping(deliveries=[("poison", 1, 10.0), ("poison", 2, 10.003), ("poison", 3, 10.006)])
    with pytest.raises(Fail, match=r"came \[0.0, 0.0\] s apart; expected about 1 s each"):
        await RetriesSpaced(storm, "poison", tries=3, min_gap=0.8).verify(Context())
    spaced = Shipping(deliveries=[("poison", 1, 10.0), ("poison", 2, 11.0), ("poison", 3, 12.01)])
    await RetriesSpaced(spaced, "poison", tries=3, min_gap=0.8).verify(Context())
    with pytest.raises(Fail, match=r"delivered 3 time\(s\); expected 4"):
        await RetriesSpaced(spaced, "poison", tries=4, min_gap=0.8).verify(Context())


# -- 05 ------------------------------------------------------------------------------------
async def test_ex05_a_required_new_field_fails_backward_and_a_default_passes(forget_event_classes):
    from buslib import Event
    from buslib.exercises import ex05

    class CustomerRegisteredV2(Event, type="ex05.customers.registered", version=2):
        customer_id: str
        email: str
        marketing_opt_in: bool

    _incorrect(await ex05.q1.outcome_async({"CustomerRegisteredV2": CustomerRegisteredV2}), "required-field-added")
    events._REGISTRY.pop(("ex05.customers.registered", 2))

    class CustomerRegisteredV2(Event, type="ex05.customers.registered", version=2):  # noqa: F811
        customer_id: str
        email: str
        marketing_opt_in: bool = False

    assert (await ex05.q1.outcome_async({"CustomerRegisteredV2": CustomerRegisteredV2})).correct


async def test_ex05_upcaster_and_registry(js, bus):
    from pydantic import BaseModel

    from buslib.contracts import versions
    from buslib.contracts.registry import SchemaRegistry
    from buslib.exercises import ex05

    await ex05.reset(js)
    bus.streams.forget()
    await ex05.publish_product_history(bus)
    key = ("ex05.products.added", 1)
    _incorrect(
        await ex05.q2.outcome_async({"product_v1_to_v2": lambda old: old}),
        "No upcaster from ex05.products.added v1 to v2",
    )

    def product_v1_to_v2(old):  # forgot the cents
        return ex05.ProductAddedV2(sku=old.sku, price=old.price_cents, currency="EUR")

    versions._UPCASTERS[key] = (ex05.ProductAddedV2, product_v1_to_v2)
    try:
        _incorrect(
            await ex05.q2.outcome_async({"product_v1_to_v2": product_v1_to_v2}), "with price=1999.0; expected 19.99"
        )
        versions._UPCASTERS[key] = (
            ex05.ProductAddedV2,
            lambda old: {"sku": old.sku, "price": old.price_cents / 100, "currency": "EUR"},
        )
        assert (await ex05.q2.outcome_async({"product_v1_to_v2": product_v1_to_v2})).correct
    finally:
        versions._UPCASTERS.pop(key, None)

    _incorrect(await ex05.q3.outcome_async({"registry": object()}), "no schema registry bucket 'EX05_SCHEMAS'")
    registry = await SchemaRegistry.open(js, bucket=ex05.REGISTRY_BUCKET)
    await registry.register(ex05.CustomerRegisteredV1)
    _incorrect(
        await ex05.q3.outcome_async({"registry": registry}),
        "holds 1 revision(s) of ex05.customers.registered.v1; expected 2",
    )

    class WithPhone(BaseModel):
        customer_id: str
        email: str
        phone: str | None = None

    await registry.register(WithPhone.model_json_schema(), event_type="ex05.customers.registered", version=1)
    assert (await ex05.q3.outcome_async({"registry": registry})).correct
    await ex05.reset(js)
