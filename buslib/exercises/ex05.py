"""Exercise 05, contracts and versioning: a BACKWARD-compatible v2, an upcaster, the schema registry.

>>> from buslib.exercises.ex05 import *                         # doctest: +SKIP
>>> await reset(js)                                              # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from buslib.contracts.codec import decode
from buslib.contracts.compat import Compatibility, check
from buslib.events import Event
from buslib.exercises.checks import EventContract, _json_object, _same, _stream_info, delete_streams, stored_messages
from buslib.exercises.core import Check, Checks, Context, Fail, Question, ____, wait_until

__all__ = [
    "____",
    "q1",
    "q2",
    "q3",
    "QUESTIONS",
    "reset",
    "wait_until",
    "STREAM",
    "REGISTRY_BUCKET",
    "CustomerRegisteredV1",
    "ProductAddedV1",
    "ProductAddedV2",
    "publish_product_history",
]

STREAM = "EX05"
REGISTRY_BUCKET = "EX05_SCHEMAS"
CUSTOMER_TYPE = "ex05.customers.registered"


class CustomerRegisteredV1(Event, type=CUSTOMER_TYPE, version=1):
    """Version 1 of the customer contract (questions 1 and 3)."""

    customer_id: str
    email: str


class ProductAddedV1(Event, type="ex05.products.added", version=1):
    """Products as the catalogue published them last year: prices in cents."""

    sku: str
    price_cents: int


class ProductAddedV2(Event, type="ex05.products.added", version=2):
    """Products today: a decimal price and its currency."""

    sku: str
    price: float
    currency: str


HISTORY = [("LAMP-1", 1999), ("DESK-7", 14900), ("PEN-3", 250)]


async def reset(js: Any) -> None:
    """Start over: delete stream EX05 and the registry bucket EX05_SCHEMAS."""
    await delete_streams(js, STREAM, f"KV_{REGISTRY_BUCKET}")


async def publish_product_history(bus: Any) -> None:
    """Store three v1 product events in EX05: the history a v2 consumer must read."""
    await bus.ensure_stream(ProductAddedV1)
    for sku, cents in HISTORY:
        await bus.publish(ProductAddedV1(sku=sku, price_cents=cents))


# -- checks ------------------------------------------------------------------------------
class CompatibleWith(Check):
    """``new`` passes ``mode`` against ``old`` (buslib.contracts.compat); a failure quotes the report."""

    def __init__(self, name: str, new: Any, old: Any, mode: Compatibility) -> None:
        self.name, self.new, self.old, self.mode = name, new, old, mode

    async def verify(self, ctx: Context) -> None:
        report = check(self.new, self.old, self.mode)
        if not report.compatible:
            raise Fail(f"{self.name} fails the {self.mode.value} check against {self.old.__name__}:\n{report}")


class ReadsHistoryAs(Check):
    """Every stored message on ``subject`` decodes (through the upcasters) into ``target`` as expected."""

    def __init__(self, stream: str, subject: str, target: type[Event], expected: dict[str, dict[str, Any]]) -> None:
        self.stream, self.subject, self.target, self.expected = stream, subject, target, expected

    async def verify(self, ctx: Context) -> None:
        await _stream_info(ctx, self.stream)
        messages = await stored_messages(await ctx.js(), self.stream, self.subject)
        if len(messages) < len(self.expected):
            raise Fail(
                f"Stream {self.stream} has {len(messages)} message(s) on {self.subject}; expected the "
                f"{len(self.expected)} of the history. Run the setup cell again."
            )
        for msg in messages:
            raw = _json_object(msg.data)
            sku = str(raw.get("sku"))
            try:
                event = decode(msg.data, msg.headers, self.target)
            except Exception as err:
                raise Fail(
                    f"Reading stored message {msg.seq} ({sku}) as {self.target.__name__} failed: {err}"
                ) from None
            for field_name, want in self.expected.get(sku, {}).items():
                got = getattr(event, field_name)
                if not _same(got, want):
                    raise Fail(
                        f"The v1 event {raw} became {event.__class__.__name__} with {field_name}={got!r}; "
                        f"expected {want!r}."
                    )


def _is_string(prop: dict[str, Any]) -> bool:
    """Whether a JSON Schema property allows strings (``{"type": "string"}``, or a union with null)."""
    kinds = prop.get("type")
    if kinds == "string" or (isinstance(kinds, list) and "string" in kinds):
        return True
    return any(_is_string(option) for option in prop.get("anyOf", []) + prop.get("oneOf", []))


class SchemaRevisions(Check):
    """The registry holds two revisions of a subject: the contract as it is, then with one new optional field.

    Args:
        contract: the Event class revision 1 must be (same properties, same required ones).
        field: the field revision 2 adds, optional, a string.
    """

    def __init__(self, bucket: str, contract: type[Event], field: str) -> None:
        self.bucket, self.contract, self.field = bucket, contract, field

    async def verify(self, ctx: Context) -> None:
        from buslib.contracts import json_schema
        from buslib.contracts.registry import SchemaRegistry

        js = await ctx.js()
        try:
            registry = await SchemaRegistry.open(js, bucket=self.bucket, create=False)
        except Exception:
            raise Fail(
                f"There is no schema registry bucket {self.bucket!r}. Open it with "
                f"SchemaRegistry.open(js, bucket={self.bucket!r})."
            ) from None
        event_type, version = self.contract.event_type, self.contract.event_version
        revisions = await registry.history(event_type, version)
        subject = f"{event_type}.v{version}"
        if len(revisions) != 2:
            raise Fail(
                f"The registry holds {len(revisions)} revision(s) of {subject}; expected 2: "
                f"{self.contract.__name__} as it is, then the revision with the new field {self.field}. "
                "(Run the setup cell again to start from an empty registry.)"
            )
        expected = json_schema(self.contract)
        first, second = (r.schema for r in revisions)
        names = sorted(expected["properties"])
        if sorted(first.get("properties", {})) != names or sorted(first.get("required", [])) != sorted(
            expected.get("required", [])
        ):
            raise Fail(
                f"Revision 1 of {subject} has the properties {sorted(first.get('properties', {}))} "
                f"(required: {sorted(first.get('required', []))}); expected {self.contract.__name__}'s: "
                f"{names} (required: {sorted(expected.get('required', []))}). Register the class itself."
            )
        added = sorted(set(second.get("properties", {})) - set(names))
        removed = sorted(set(names) - set(second.get("properties", {})))
        if removed:
            raise Fail(
                f"Revision 2 of {subject} drops {removed}, which revision 1 has (an Event's id, version and "
                f"occurred_at are part of its contract). Start from revision 1's schema, "
                f"json_schema({self.contract.__name__}), and add the new field to it."
            )
        if added != [self.field]:
            raise Fail(f"Revision 2 of {subject} adds {added or 'nothing'}; expected one new field, {self.field!r}.")
        if self.field in second.get("required", []):
            raise Fail(f"Revision 2 of {subject} makes {self.field!r} required; expected it optional.")
        if not _is_string(second["properties"][self.field]):
            raise Fail(
                f"Revision 2 of {subject} declares {self.field!r} as {second['properties'][self.field]}; "
                'expected a string ({"type": "string"}).'
            )


def _v2(CustomerRegisteredV2: Any) -> Checks:
    yield EventContract(
        "CustomerRegisteredV2",
        CustomerRegisteredV2,
        type=CUSTOMER_TYPE,
        version=2,
        fields={"customer_id": str, "email": str, "marketing_opt_in": (bool, bool | None)},
    )
    yield CompatibleWith("CustomerRegisteredV2", CustomerRegisteredV2, CustomerRegisteredV1, Compatibility.BACKWARD)


q1 = Question(
    "q1",
    "A v2 that still reads v1",
    uses=["CustomerRegisteredV2"],
    checks=_v2,
    hint=[
        "BACKWARD: consumers on the new contract can read events written with the old one. v1 events "
        "have no marketing_opt_in field...",
        "...so v2 must not require it: give it a default (`marketing_opt_in: bool = False`). Check yourself "
        "with buslib.contracts.compat.check(CustomerRegisteredV2, CustomerRegisteredV1, 'BACKWARD').",
    ],
    solution="""
class CustomerRegisteredV2(Event, type="ex05.customers.registered", version=2):
    customer_id: str
    email: str
    marketing_opt_in: bool = False


report = check(CustomerRegisteredV2, CustomerRegisteredV1, "BACKWARD")
""",
    exercise="05",
)


def _upcaster(product_v1_to_v2: Any) -> Checks:
    yield ReadsHistoryAs(
        STREAM,
        ProductAddedV1.subject(),
        ProductAddedV2,
        {
            "LAMP-1": {"sku": "LAMP-1", "price": 19.99, "currency": "EUR"},
            "DESK-7": {"sku": "DESK-7", "price": 149.0, "currency": "EUR"},
            "PEN-3": {"sku": "PEN-3", "price": 2.5, "currency": "EUR"},
        },
    )


q2 = Question(
    "q2",
    "An upcaster for the v1 history",
    uses=["product_v1_to_v2"],
    checks=_upcaster,
    hint=[
        "Decorate a function with `@upcaster(ProductAddedV1, to=ProductAddedV2)`; it takes a v1 event and "
        "returns the v2 event (id and time are carried over for you).",
        "Cents to euros: price = price_cents / 100; every old price was in EUR.",
    ],
    solution="""
@upcaster(ProductAddedV1, to=ProductAddedV2)
def product_v1_to_v2(old):
    return ProductAddedV2(sku=old.sku, price=old.price_cents / 100, currency="EUR")
""",
    exercise="05",
)


def _registered(registry: Any) -> Checks:
    yield SchemaRevisions(REGISTRY_BUCKET, CustomerRegisteredV1, field="phone")


q3 = Question(
    "q3",
    "Evolve a contract through the registry",
    uses=["registry"],
    checks=_registered,
    hint=[
        "`registry = await SchemaRegistry.open(js, bucket=REGISTRY_BUCKET)`, then "
        "`await registry.register(CustomerRegisteredV1)` stores revision 1.",
        "For revision 2, do as lesson 05 section 9: `schema = json_schema(CustomerRegisteredV1)`, add "
        '`schema["properties"]["phone"] = {"type": "string"}` (not in "required"), then '
        "`await registry.register(schema)`.",
    ],
    solution="""
registry = await SchemaRegistry.open(js, bucket=REGISTRY_BUCKET)
await registry.register(CustomerRegisteredV1)
with_phone = json_schema(CustomerRegisteredV1)  # the v1 contract as a JSON Schema dict
with_phone["properties"]["phone"] = {"type": "string"}  # new and optional: not added to "required"
revision = await registry.register(with_phone)
""",
    exercise="05",
)

QUESTIONS = [q1, q2, q3]
