"""The schema registry on NATS KV, against the real server (one bucket per test)."""

from __future__ import annotations

import asyncio

import jsonschema
import pytest

from buslib.contracts import IncompatibleContractError, json_schema
from buslib.contracts.codec import encode
from buslib.contracts.compat import Compatibility
from buslib.contracts.registry import SchemaRegistry
from buslib.errors import ContractError
from buslib.events import Event


class TicketV1(Event, type="tregistry.ticket.sold", version=1):
    ticket_id: str
    price: float


class TicketV2(Event, type="tregistry.ticket.sold", version=2):
    ticket_id: str
    cents: int


def evolved(**changes) -> dict:
    """TicketV1's schema with fields changed: ``name=schema`` adds/replaces, ``name=None`` removes."""
    schema = json_schema(TicketV1)
    props, required = dict(schema["properties"]), list(schema["required"])
    for name, field in changes.items():
        if field is None:
            props.pop(name)
            required = [r for r in required if r != name]
        else:
            props[name] = field
            if "default" not in field:
                required.append(name)
    return {**schema, "properties": props, "required": required}


@pytest.fixture
async def registry(js, unique):
    bucket = f"schemas_{unique}"
    yield await SchemaRegistry.open(js, bucket=bucket)
    await js.delete_key_value(bucket)


async def test_register_stores_revision_one_and_is_idempotent(registry):
    first = await registry.register(TicketV1)
    assert (first.subject, first.revision, first.created) == ("tregistry.ticket.sold.v1", 1, True)
    again = await registry.register(TicketV1)
    assert (again.revision, again.created) == (1, False)
    assert len(await registry.history("tregistry.ticket.sold", 1)) == 1
    entry = await registry.kv.get("schema.tregistry.ticket.sold.v1.1")  # where it lives in KV
    assert b'"revision": 1' in entry.value


async def test_a_compatible_change_becomes_the_next_revision(registry):
    await registry.register(TicketV1)
    added = evolved(note={"type": "string", "default": ""})
    second = await registry.register(added)  # x-event-type/x-event-version in the schema name the subject
    assert (second.subject, second.revision, second.created) == ("tregistry.ticket.sold.v1", 2, True)
    assert (await registry.latest("tregistry.ticket.sold", 1)).schema == added


async def test_an_incompatible_change_is_refused_with_the_report(registry):
    await registry.register(TicketV1)
    with pytest.raises(IncompatibleContractError, match="refuses this schema for tregistry.ticket.sold.v1") as err:
        await registry.register(evolved(seat={"type": "string"}))
    report = err.value.reports["tregistry.ticket.sold.v1"]
    assert report.mode is Compatibility.BACKWARD
    assert [(p.path, p.rule) for p in report.problems] == [("seat", "required-field-added")]
    assert len(await registry.history("tregistry.ticket.sold", 1)) == 1  # nothing stored


async def test_each_subject_has_its_own_mode(registry):
    await registry.register(TicketV1)
    assert await registry.mode("tregistry.ticket.sold", 1) is Compatibility.BACKWARD
    # removing a required field is fine under BACKWARD, not under FULL
    await registry.set_mode("tregistry.ticket.sold", 1, "FULL")
    with pytest.raises(IncompatibleContractError, match="under FULL"):
        await registry.register(evolved(price=None))
    await registry.set_mode("tregistry.ticket.sold", 1, Compatibility.NONE)
    assert (await registry.register(evolved(price=None))).revision == 2
    with pytest.raises(ContractError, match="Unknown compatibility mode 'LOOSE'"):
        await registry.set_mode("tregistry.ticket.sold", 1, "LOOSE")


async def test_transitive_mode_checks_every_revision(registry):
    await registry.set_mode("tregistry.ticket.sold", 1, "BACKWARD_TRANSITIVE")
    await registry.register(TicketV1)
    await registry.register(evolved(price=None))  # drop price: readable backward
    with pytest.raises(IncompatibleContractError, match="under BACKWARD_TRANSITIVE"):
        await registry.register(evolved(price={"type": "string", "default": ""}))  # revision 1 wrote a number


async def test_a_new_major_version_is_a_new_subject(registry):
    await registry.register(TicketV1)
    v2 = await registry.register(TicketV2)  # incompatible with v1, but another subject
    assert (v2.subject, v2.revision) == ("tregistry.ticket.sold.v2", 1)
    assert await registry.subjects() == ["tregistry.ticket.sold.v1", "tregistry.ticket.sold.v2"]


async def test_a_consumer_fetches_the_schema_of_a_message_and_validates_it(registry):
    await registry.register(TicketV1)
    (out,) = encode(TicketV1(ticket_id="T-1", price=12.5), source="box-office")
    entry = await registry.schema_for(out.headers)
    assert entry.subject == "tregistry.ticket.sold.v1"
    jsonschema.validate(__import__("json").loads(out.data), entry.schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"ticket_id": "T-2"}, entry.schema)  # price missing
    by_type = await registry.schema_for({"ce-type": "tregistry.ticket.sold", "Bus-Event-Version": "1"})
    assert by_type == entry


async def test_schema_for_explains_missing_headers_and_unregistered_subjects(registry):
    with pytest.raises(ContractError, match="names no schema"):
        await registry.schema_for({"Content-Type": "application/json"})
    with pytest.raises(ContractError, match="names no schema"):  # "²" passes isdigit() but is no version
        await registry.schema_for({"ce-type": "tregistry.ticket.sold", "Bus-Event-Version": "\u00b2"})
    with pytest.raises(ContractError, match="No schema registered for tregistry.ticket.sold.v2"):
        await registry.schema_for({"ce-dataschema": "urn:buslib:schema:tregistry.ticket.sold:2"})


async def test_bad_input_is_refused_clearly(registry):
    with pytest.raises(ContractError, match="not a buslib Event"):
        from pydantic import BaseModel

        class Plain(BaseModel):
            x: int

        await registry.register(Plain)
    with pytest.raises(ContractError, match="needs its event type and major version"):
        await registry.register({"type": "object", "properties": {}})
    with pytest.raises(ContractError, match="not the JSON Schema of an object"):
        await registry.register({"type": "string"}, event_type="a.b", version=1)


async def test_concurrent_registrations_of_one_schema_store_it_once(registry):
    results = await asyncio.gather(*(registry.register(TicketV1) for _ in range(5)))
    assert {r.revision for r in results} == {1}
    assert sum(r.created for r in results) == 1
    assert len(await registry.history("tregistry.ticket.sold", 1)) == 1


async def test_open_without_create_on_a_missing_bucket_is_a_clear_error(js, unique):
    with pytest.raises(ContractError, match="No schema registry bucket"):
        await SchemaRegistry.open(js, bucket=f"missing_{unique}", create=False)
