"""Schema compatibility: each contract change (v1 -> v2) and its verdict under every mode."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from buslib.contracts.compat import (
    Compatibility,
    CompatibilityReport,
    Incompatibility,
    check,
    compatible_modes,
    read_problems,
)
from buslib.errors import ContractError

B, BT = Compatibility.BACKWARD, Compatibility.BACKWARD_TRANSITIVE
F, FT = Compatibility.FORWARD, Compatibility.FORWARD_TRANSITIVE
FULL, FULLT = Compatibility.FULL, Compatibility.FULL_TRANSITIVE
NONE = Compatibility.NONE


# --- contract versions -------------------------------------------------------------------------


class Base(BaseModel):
    id: str


class WithNote(BaseModel):
    id: str
    note: str | None = None


class WithEmail(BaseModel):
    id: str
    email: str


class Sku(BaseModel):
    sku: str


class ProductId(BaseModel):
    product_id: str


class ProductIdWithDefault(BaseModel):
    product_id: str = ""


class AmountInt(BaseModel):
    amount: int


class AmountFloat(BaseModel):
    amount: float


class AmountStr(BaseModel):
    amount: str


class AmountIntOrStr(BaseModel):
    amount: int | str


class StatusV1(Enum):
    PAID = "paid"
    SHIPPED = "shipped"


class StatusV2(Enum):
    PAID = "paid"
    SHIPPED = "shipped"
    REFUNDED = "refunded"


class OrderStatusV1(BaseModel):
    status: StatusV1


class OrderStatusV2(BaseModel):
    status: StatusV2


class ChannelV1(BaseModel):
    channel: Literal["email"]


class ChannelV2(BaseModel):
    channel: Literal["email", "sms"]


class AddressV1(BaseModel):
    city: str


class AddressV2(BaseModel):
    city: str
    zip: str


class CustomerV1(BaseModel):
    address: AddressV1


class CustomerV2(BaseModel):
    address: AddressV2


class LineV1(BaseModel):
    sku: str


class LineV2(BaseModel):
    sku: str
    qty: int


class CartV1(BaseModel):
    lines: list[LineV1]


class CartV2(BaseModel):
    lines: list[LineV2]


class TagsInt(BaseModel):
    tags: list[int]


class TagsStr(BaseModel):
    tags: list[str]


class AttrsInt(BaseModel):
    attrs: dict[str, int]


class AttrsStr(BaseModel):
    attrs: dict[str, str]


class Qty(BaseModel):
    qty: int


class QtyWithDefault(BaseModel):
    qty: int = 1


class StrictBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str


class StrictWithNote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    note: str | None = None


class NoteOptional(BaseModel):
    note: str | None = None


class NoteNullable(BaseModel):
    note: str | None  # required, but may be null


class NoteRequired(BaseModel):
    note: str


class WhenStr(BaseModel):
    when: str


class WhenDatetime(BaseModel):
    when: datetime


class NodeV1(BaseModel):
    name: str
    children: list[NodeV1] = []


class NodeV2(BaseModel):
    name: str
    kind: str
    children: list[NodeV2] = []


# --- the table: v1 -> v2 and the rules each direction must report -------------------------------


@dataclass
class Change:
    id: str
    old: type[BaseModel]
    new: type[BaseModel]
    backward: set[str]  # problems when the new schema reads old data
    forward: set[str]  # problems when the old schema reads new data

    def expected(self, mode: Compatibility) -> set[str]:
        """Rules expected under a mode (transitive = non-transitive with a one-version history)."""
        backward = self.backward if mode in (B, BT, FULL, FULLT) else set()
        forward = self.forward if mode in (F, FT, FULL, FULLT) else set()
        return backward | forward


CHANGES = [
    Change("identical", Base, Base, set(), set()),
    Change("add-optional-field-tolerant-reader", Base, WithNote, set(), set()),
    Change("add-required-field", Base, WithEmail, {"required-field-added"}, set()),
    Change("remove-optional-field", WithNote, Base, set(), set()),
    Change("remove-required-field", WithEmail, Base, set(), {"field-removed-without-default"}),
    Change("rename-required-field", Sku, ProductId, {"required-field-added"}, {"field-removed-without-default"}),
    Change("rename-to-field-with-default", Sku, ProductIdWithDefault, set(), {"field-removed-without-default"}),
    Change("widen-int-to-float", AmountInt, AmountFloat, set(), {"type-widened"}),
    Change("narrow-float-to-int", AmountFloat, AmountInt, {"type-narrowed"}, set()),
    Change("change-str-to-int", AmountStr, AmountInt, {"type-changed"}, {"type-changed"}),
    Change("int-to-union-int-or-str", AmountInt, AmountIntOrStr, set(), {"type-changed"}),
    Change("str-to-datetime", WhenStr, WhenDatetime, {"type-narrowed"}, set()),
    Change("datetime-to-str", WhenDatetime, WhenStr, set(), {"type-widened"}),
    Change("enum-value-added", OrderStatusV1, OrderStatusV2, set(), {"enum-value-added"}),
    Change("enum-value-removed", OrderStatusV2, OrderStatusV1, {"enum-value-removed"}, set()),
    Change("literal-value-added", ChannelV1, ChannelV2, set(), {"enum-value-added"}),
    Change("nested-required-field-added", CustomerV1, CustomerV2, {"required-field-added"}, set()),
    Change("nested-required-field-removed", CustomerV2, CustomerV1, set(), {"field-removed-without-default"}),
    Change("list-item-type-changed", TagsInt, TagsStr, {"type-changed"}, {"type-changed"}),
    Change("list-item-model-field-added", CartV1, CartV2, {"required-field-added"}, set()),
    Change("dict-value-type-changed", AttrsInt, AttrsStr, {"type-changed"}, {"type-changed"}),
    Change("default-added", Qty, QtyWithDefault, set(), {"field-may-be-missing"}),
    Change("default-removed", QtyWithDefault, Qty, {"field-may-be-missing"}, set()),
    Change("strict-reader-field-added", StrictBase, StrictWithNote, set(), {"unknown-field-rejected"}),
    Change("strict-reader-field-removed", StrictWithNote, StrictBase, {"unknown-field-rejected"}, set()),
    Change("optional-to-required", NoteOptional, NoteRequired, {"field-may-be-missing", "nullable-removed"}, set()),
    Change("required-to-optional", NoteRequired, NoteOptional, set(), {"field-may-be-missing", "nullable-added"}),
    Change("nullable-to-not-null", NoteNullable, NoteRequired, {"nullable-removed"}, set()),
    Change("recursive-model-required-field-added", NodeV1, NodeV2, {"required-field-added"}, set()),
]


@pytest.mark.parametrize(
    ("change", "mode"),
    [pytest.param(change, mode, id=f"{change.id}-{mode.value}") for change in CHANGES for mode in Compatibility],
)
def test_change_verdict_under_every_mode(change: Change, mode: Compatibility) -> None:
    """Transitive modes get the history as a list, the others the old model itself."""
    old = [change.old] if mode.value.endswith("_TRANSITIVE") else change.old
    report = check(change.new, old, mode)
    expected = change.expected(mode)
    assert set(report.rules) == expected, str(report)
    assert report.compatible is (not expected)
    assert report.mode is mode


@pytest.mark.parametrize("change", CHANGES, ids=lambda change: change.id)
def test_json_schemas_give_the_same_verdict_as_models(change: Change) -> None:
    for mode in (B, F):
        from_models = check(change.new, change.old, mode)
        from_schemas = check(change.new.model_json_schema(), change.old.model_json_schema(), mode)
        assert from_schemas.problems == from_models.problems


@pytest.mark.parametrize("model", sorted({c.old for c in CHANGES} | {c.new for c in CHANGES}, key=lambda m: m.__name__))
def test_every_contract_is_fully_compatible_with_itself(model: type[BaseModel]) -> None:
    assert compatible_modes(model, [model, model]) == set(Compatibility)


# --- three-version histories: v3 fits v2 but not v1 -------------------------------------------


class NoteStrV1(BaseModel):
    id: str
    note: str | None = None


class NoteGoneV2(BaseModel):
    id: str


class NoteIntV3(BaseModel):
    id: str
    note: int | None = None  # re-added with another type: v1 events have a string there


class PayV1(BaseModel):
    method: Literal["card", "cash", "voucher"]


class PayV2(BaseModel):
    method: Literal["card", "cash"]


class PayV3(BaseModel):
    method: Literal["card", "cash", "crypto"]


HISTORIES = [
    pytest.param(
        [NoteStrV1, NoteGoneV2],
        NoteIntV3,
        {B: set(), BT: {"type-changed"}, F: set(), FT: {"type-changed"}, FULL: set(), FULLT: {"type-changed"}},
        id="field-removed-then-readded-with-another-type",
    ),
    pytest.param(
        [PayV1, PayV2],
        PayV3,
        {
            B: set(),
            BT: {"enum-value-removed"},
            F: {"enum-value-added"},
            FT: {"enum-value-added"},
            FULL: {"enum-value-added"},
            FULLT: {"enum-value-added", "enum-value-removed"},
        },
        id="enum-value-dropped-then-another-added",
    ),
]


@pytest.mark.parametrize(("history", "new", "expected"), HISTORIES)
@pytest.mark.parametrize("mode", list(Compatibility), ids=lambda mode: mode.value)
def test_history_verdict_under_every_mode(history, new, expected, mode: Compatibility) -> None:
    report = check(new, history, mode)
    assert set(report.rules) == expected.get(mode, set()), str(report)
    assert report.compatible is (not expected.get(mode))


def test_transitive_problems_name_the_old_version_they_come_from() -> None:
    report = check(NoteIntV3, [NoteStrV1, NoteGoneV2], FULLT)
    assert {p.direction for p in report.problems} == {"new reads v1", "v1 reads new"}
    assert all(p.path == "note" for p in report.problems)


def test_empty_history_is_a_first_version_and_always_compatible() -> None:
    assert check(Base, [], BT).compatible


# --- details: paths, directions, rule names, warnings, the report ------------------------------


@pytest.mark.parametrize(
    ("old", "new", "mode", "path", "rule"),
    [
        pytest.param(CustomerV1, CustomerV2, B, "address.zip", "required-field-added", id="nested-model"),
        pytest.param(CartV1, CartV2, B, "lines[].qty", "required-field-added", id="list-of-models"),
        pytest.param(TagsInt, TagsStr, B, "tags[]", "type-changed", id="list-item"),
        pytest.param(AttrsInt, AttrsStr, F, "attrs{}", "type-changed", id="dict-value"),
        pytest.param(NodeV1, NodeV2, B, "kind", "required-field-added", id="recursive-model-stops"),
        pytest.param(OrderStatusV1, OrderStatusV2, F, "status", "enum-value-added", id="enum"),
    ],
)
def test_problem_paths_point_at_the_field(old, new, mode, path, rule) -> None:
    assert [(p.path, p.rule) for p in check(new, old, mode).problems] == [(path, rule)]


def test_full_labels_the_direction_of_each_problem() -> None:
    report = check(ProductId, Sku, FULL)
    assert {(p.direction, p.path, p.rule) for p in report.problems} == {
        ("new reads old", "product_id", "required-field-added"),
        ("old reads new", "sku", "field-removed-without-default"),
    }


def test_rename_with_default_is_backward_compatible_but_warned_about() -> None:
    report = check(ProductIdWithDefault, Sku, B)
    assert report.compatible
    assert [(w.path, w.rule) for w in report.warnings] == [("sku", "possible-rename")]
    assert "product_id" in report.warnings[0].message
    assert compatible_modes(ProductIdWithDefault, Sku) == {B, BT, NONE}


def test_enum_value_added_is_backward_but_not_forward() -> None:
    assert compatible_modes(OrderStatusV2, OrderStatusV1) == {B, BT, NONE}
    assert compatible_modes(OrderStatusV1, OrderStatusV2) == {F, FT, NONE}


def test_read_problems_names_rules_by_which_side_is_newer() -> None:
    assert [p.rule for p in read_problems(WithEmail, Base)] == ["required-field-added"]
    assert [p.rule for p in read_problems(WithEmail, Base, reader_is_newer=False)] == ["field-removed-without-default"]
    assert read_problems(Base, WithEmail) == []


def test_none_mode_accepts_anything() -> None:
    assert check(AmountStr, AmountInt, NONE).compatible
    assert check(AmountStr, AmountInt, "none").mode is NONE


def test_report_text_gives_mode_verdict_direction_path_and_rule() -> None:
    text = str(check(ProductId, Sku, FULL))
    assert text.splitlines()[0] == "FULL: NOT compatible (2 problems)"
    assert "[new reads old] product_id: required-field-added: The new schema requires 'product_id'" in text
    assert "[old reads new] sku: field-removed-without-default:" in text
    assert "possible-rename" in text
    assert str(check(WithNote, Base, FULL)) == "FULL: compatible"


def test_report_and_problem_types() -> None:
    report = check(WithEmail, Base)
    assert isinstance(report, CompatibilityReport) and report.mode is B
    problem = report.problems[0]
    assert isinstance(problem, Incompatibility)
    with pytest.raises(AttributeError):
        problem.rule = "other"  # type: ignore[misc]


def test_hand_written_json_schema_with_type_list_and_closed_object() -> None:
    old = {"type": "object", "properties": {"note": {"type": ["string", "null"]}}, "required": ["note"]}
    new = {
        "type": "object",
        "properties": {"note": {"type": "string"}, "id": {"type": "string", "default": ""}},
        "required": ["note", "id"],  # id has a default, so old events without it still validate
        "additionalProperties": False,
    }
    assert check(new, old, B).rules == ["nullable-removed"]
    assert check(new, old, F).compatible


# --- bad input ---------------------------------------------------------------------------------


class NotAModel:
    id: str


@pytest.mark.parametrize(
    ("contract", "said"),
    [
        pytest.param(42, "int 42", id="int"),
        pytest.param(NotAModel, "the class NotAModel, which is not a pydantic BaseModel subclass", id="plain-class"),
        pytest.param(Base(id="A-1"), "an instance of Base; pass the class itself", id="model-instance"),
        pytest.param('{"type": "object"}', "json.loads", id="json-text"),
        pytest.param({"name": "Order"}, "a dict but not the JSON Schema of an object", id="dict-not-a-schema"),
    ],
)
@pytest.mark.parametrize("side", ["new", "old"])
def test_bad_contract_raises_contract_error_saying_what_was_given(contract, said, side) -> None:
    new, old = (contract, Base) if side == "new" else (Base, contract)
    with pytest.raises(ContractError) as caught:
        check(new, old)
    message = str(caught.value)
    assert f"The {side} contract is" in message
    assert said in message
    assert "pydantic model class" in message and "model_json_schema()" in message


def test_bad_contract_in_history_names_its_position() -> None:
    with pytest.raises(ContractError, match=r"history\[1\] contract is int"):
        check(Base, [Base, 7], BT)


def test_unknown_mode_lists_the_valid_ones() -> None:
    with pytest.raises(ContractError, match="Unknown compatibility mode 'SIDEWAYS'.*BACKWARD_TRANSITIVE"):
        check(WithNote, Base, "SIDEWAYS")


def test_dangling_ref_raises_contract_error() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}, "required": ["a"]}
    with pytest.raises(ContractError, match="points nowhere"):
        check(schema, schema)


# --- the kit's own Event base --------------------------------------------------------------------


def test_kit_events_evolve_like_plain_models() -> None:
    """buslib's Event base (id, version, occurred_at) does not disturb the verdict."""
    from buslib.events import Event

    class CompatOrderV1(Event, type="compat.test.order", version=1):
        order_id: str

    class CompatOrderV2(Event, type="compat.test.order", version=2):
        order_id: str
        coupon: str | None = None

    class CompatOrderV3(Event, type="compat.test.order", version=3):
        order_id: int

    assert compatible_modes(CompatOrderV2, CompatOrderV1) == set(Compatibility)
    assert check(CompatOrderV3, CompatOrderV2, FULL).rules == ["type-changed"]
