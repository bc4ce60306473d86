"""The kit's own example contracts: the seed article's ``OrderCreatedEvent``, v1 and v2.

>>> from buslib.contracts.examples import OrderCreatedV1, OrderCreatedV2
>>> OrderCreatedV1.subject(), OrderCreatedV2.subject()
('orders.created.v1', 'orders.created.v2')

The seed's Go struct had ``ID``, ``UserID`` and ``Timestamp`` (here: ``id`` and
``occurred_at`` from :class:`~buslib.events.Event`, plus ``user_id``); its "v2" added
``Status``. Done right, that addition is a *minor* change: an optional field with a
default, same version, same subject (``status`` below). A *major* change is a new class:
v2 stores money as integer cents with a currency instead of a float amount. Upcaster and
down-converter link the two, so v2 consumers read v1 history and v1 consumers keep
receiving v1 during the migration (dual publishing).

``buslib contracts check`` guards this module in CI against the snapshot in ``contracts/``
(configured in pyproject.toml: ``[tool.buslib] contracts = ["buslib.contracts.examples"]``).
"""

from __future__ import annotations

from pydantic import Field

from buslib.contracts.versions import downcast, upcaster
from buslib.events import Event

__all__ = ["OrderCreatedV1", "OrderCreatedV2"]


class OrderCreatedV1(Event, type="orders.created", version=1):
    """An order was placed (v1: amount as a float in euros)."""

    order_id: str = Field(description="The order's id, e.g. 'A-1001'.")
    user_id: int = Field(description="Who placed it.")
    amount: float = Field(ge=0, description="Total in euros.")
    status: str = Field(default="created", description="Added later: optional with a default, so still v1.")


class OrderCreatedV2(Event, type="orders.created", version=2):
    """An order was placed (v2: money as integer cents plus a currency; floats lose cents)."""

    order_id: str = Field(description="The order's id, e.g. 'A-1001'.")
    user_id: int = Field(description="Who placed it.")
    amount_cents: int = Field(ge=0, description="Total in the currency's smallest unit.")
    currency: str = Field(default="EUR", min_length=3, max_length=3, description="ISO 4217 code.")
    status: str = Field(default="created", description="Order status when the event was written.")


@upcaster(OrderCreatedV1, to=OrderCreatedV2)
def _v1_to_v2(old: OrderCreatedV1) -> OrderCreatedV2:
    # v1 had no currency field: every v1 amount was in euros
    return OrderCreatedV2(
        order_id=old.order_id, user_id=old.user_id, amount_cents=round(old.amount * 100), status=old.status
    )


@downcast(OrderCreatedV2, to=OrderCreatedV1)
def _v2_to_v1(new: OrderCreatedV2) -> OrderCreatedV1:
    if new.currency != "EUR":
        # a v1 reader would take the number for euros: refuse rather than publish a wrong amount
        raise ValueError(f"v1 has no currency and means EUR; cannot express {new.currency} to v1 consumers")
    return OrderCreatedV1(order_id=new.order_id, user_id=new.user_id, amount=new.amount_cents / 100, status=new.status)
