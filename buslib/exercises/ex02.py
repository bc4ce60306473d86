"""Exercise 02, the event bus: a typed event, a publish through EventBus, a trace across a hop.

>>> from buslib.exercises.ex02 import *                         # doctest: +SKIP
>>> await reset(js)                                              # doctest: +SKIP
>>> bus = await EventBus.connect(service="warehouse")            # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from nats.js.api import PubAck

from buslib.events import Event
from buslib.exercises.checks import EventContract, MessageAt, TraceCarried, delete_streams
from buslib.exercises.core import Checks, IsInstance, Question, ____, wait_until

__all__ = ["____", "q1", "q2", "q3", "QUESTIONS", "reset", "wait_until", "STREAM", "InvoiceRequested"]

STREAM = "EX02"  # the bus's convention: subjects ex02.> live in stream EX02
SHIPMENT_TYPE = "ex02.shipments.dispatched"


class InvoiceRequested(Event, type="ex02.invoices.requested", version=1):
    """What billing publishes for each dispatched shipment (question 3)."""

    shipment_id: str
    amount: float


async def reset(js: Any) -> None:
    """Start over: delete stream EX02 (the bus creates it again on the first publish)."""
    await delete_streams(js, STREAM)


def _contract(ShipmentDispatched: Any) -> Checks:
    yield EventContract(
        "ShipmentDispatched",
        ShipmentDispatched,
        type=SHIPMENT_TYPE,
        version=1,
        fields={"shipment_id": str, "weight_kg": float},
    )


q1 = Question(
    "q1",
    "A typed event",
    uses=["ShipmentDispatched"],
    checks=_contract,
    hint=[
        'Subclass Event with class arguments: `class ShipmentDispatched(Event, type="...", version=1):`.',
        "Fields are annotated class attributes, as in any pydantic model: `shipment_id: str`.",
    ],
    solution="""
class ShipmentDispatched(Event, type="ex02.shipments.dispatched", version=1):
    shipment_id: str
    weight_kg: float
""",
    exercise="02",
)


def _published(ack: Any) -> Checks:
    yield IsInstance("ack", ack, PubAck, "Keep what `await bus.publish(event)` returns.")
    yield MessageAt(
        STREAM,
        ack.seq,
        subject=f"{SHIPMENT_TYPE}.v1",
        headers={"ce-type": SHIPMENT_TYPE, "ce-source": "warehouse"},
        json_fields={"shipment_id": "S-1", "weight_kg": 2.5},
    )


q2 = Question(
    "q2",
    "Publish through the bus",
    uses=["ack"],
    checks=_published,
    hint=[
        "`await bus.publish(ShipmentDispatched(...))`: the bus picks the subject, adds the headers and "
        "creates the stream on first use.",
        "The checker looks for shipment_id 'S-1' and weight_kg 2.5, published by the service 'warehouse' "
        "(the bus of the setup cell).",
    ],
    solution='ack = await bus.publish(ShipmentDispatched(shipment_id="S-1", weight_kg=2.5))',
    exercise="02",
)


def _traced(bill: Any) -> Checks:
    yield TraceCarried(
        STREAM, cause=f"{SHIPMENT_TYPE}.v1", effect=InvoiceRequested.subject(), key="shipment_id", every_cause=True
    )


q3 = Question(
    "q3",
    "Keep the trace across a hop",
    uses=["bill"],
    checks=_traced,
    hint=[
        "The bus runs each handler inside the incoming message's trace, and bus.publish() stamps the "
        "current trace on what it publishes.",
        "So: publish the InvoiceRequested with `await bus.publish(...)` from inside the handler. A raw "
        "js.publish has no traceparent; `tracing.trace(None)` would start a new trace.",
    ],
    solution="""
invoices = []


async def bill(event, ctx):
    ack = await bus.publish(InvoiceRequested(shipment_id=event.shipment_id, amount=round(event.weight_kg * 4, 2)))
    invoices.append(ack)


billing = await bus.subscribe(ShipmentDispatched, group="billing", handler=bill)
await bus.publish(ShipmentDispatched(shipment_id="S-2", weight_kg=1.5))
await wait_until(lambda: len(invoices) >= 2, what="an invoice for S-1 and S-2")
await billing.stop()
""",
    exercise="02",
)

QUESTIONS = [q1, q2, q3]
