"""Contracts: declaration errors, JSON Schema export, converters, tolerant/strict decoding, dual publishing."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from pydantic import BaseModel

from buslib import EventBus
from buslib.contracts import (
    convert,
    dataschema,
    downcast,
    downcast_targets,
    json_schema,
    parse_dataschema,
    require_contract,
    subjects_readable_by,
    upcaster,
)
from buslib.contracts.codec import decode, encode, message_version
from buslib.errors import ContractError, DecodeError
from buslib.events import Event
from buslib.retry import Failure, Retry

# One type with three versions, linked by upcasters and a down-converter (type names unique to this file).


class ShipV1(Event, type="tcontracts.parcel.shipped", version=1):
    parcel_id: str
    weight_kg: float


class ShipV2(Event, type="tcontracts.parcel.shipped", version=2):
    parcel_id: str
    grams: int


class ShipV3(Event, type="tcontracts.parcel.shipped", version=3):
    parcel_id: str
    grams: int
    carrier: str


@upcaster(ShipV1, to=ShipV2)
def _ship_1_2(old: ShipV1) -> ShipV2:
    return ShipV2(parcel_id=old.parcel_id, grams=round(old.weight_kg * 1000))


@upcaster(ShipV2, to=ShipV3)
def _ship_2_3(old: ShipV2) -> dict:
    return {"parcel_id": old.parcel_id, "grams": old.grams, "carrier": "unknown"}  # a dict works too


@downcast(ShipV2, to=ShipV1)
def _ship_2_1(new: ShipV2) -> ShipV1:
    return ShipV1(parcel_id=new.parcel_id, weight_kg=new.grams / 1000)


class Address(BaseModel):
    city: str


class CustomerMoved(Event, type="tcontracts.customer.moved", version=1):
    customer_id: str
    address: Address


def _types(unique: str) -> str:
    return f"tcontracts.t{unique.lower()}"


# --- declaring contracts -----------------------------------------------------------------


class PlainModel(BaseModel):
    x: int


@dataclasses.dataclass
class PlainDataclass:
    x: int


@pytest.mark.parametrize(
    ("candidate", "says"),
    [
        (PlainModel, "not a buslib Event"),
        (PlainDataclass, "not a pydantic model"),
        (ShipV1(parcel_id="p", weight_kg=1.0), "pass the class itself"),
        ({"type": "object"}, "dict"),
        (Event, "base class itself"),
    ],
)
def test_require_contract_explains_what_is_wrong(candidate, says):
    with pytest.raises(ContractError, match=says) as err:
        require_contract(candidate)
    assert "class OrderCreated(Event" in str(err.value)  # ...and what to write instead


def test_json_schema_of_a_plain_model_is_refused():
    with pytest.raises(ContractError, match="not a buslib Event"):
        json_schema(PlainModel)


def test_duplicate_contract_names_raise(unique):
    name = _types(unique)

    class First(Event, type=name, version=1):
        a: int

    with pytest.raises(ContractError, match="Two classes declare event type"):

        class Second(Event, type=name, version=1):
            b: int


@pytest.mark.parametrize("version", [0, -1, "2", 1.5, True])
def test_invalid_versions_raise(unique, version):
    with pytest.raises(ContractError, match="version must be a whole number"):

        class Bad(Event, type=_types(unique), version=version):
            pass


def test_converters_refuse_a_version_going_backwards_or_skipping(unique):
    name = _types(unique)

    class A1(Event, type=name, version=1):
        pass

    class A2(Event, type=name, version=2):
        pass

    class A3(Event, type=name, version=3):
        pass

    with pytest.raises(ContractError, match="wrong way or skips a version"):
        upcaster(A2, to=A1)
    with pytest.raises(ContractError, match="wrong way or skips a version"):
        upcaster(A1, to=A3)
    with pytest.raises(ContractError, match="wrong way or skips a version"):
        downcast(A1, to=A2)
    with pytest.raises(ContractError, match="one event type"):
        upcaster(A1, to=ShipV2)
    with pytest.raises(ContractError, match="source of the upcaster is the pydantic model PlainModel"):
        upcaster(PlainModel, to=A2)


def test_a_second_upcaster_for_the_same_step_raises(unique):
    name = _types(unique)

    class B1(Event, type=name, version=1):
        pass

    class B2(Event, type=name, version=2):
        pass

    @upcaster(B1, to=B2)
    def first(old):
        return B2()

    with pytest.raises(ContractError, match="Two upcasters"):

        @upcaster(B1, to=B2)
        def second(old):
            return B2()


def test_json_schema_carries_id_type_and_version():
    schema = json_schema(CustomerMoved)
    assert schema["$id"] == "urn:buslib:schema:tcontracts.customer.moved:1" == dataschema(CustomerMoved)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert (schema["x-event-type"], schema["x-event-version"]) == ("tcontracts.customer.moved", 1)
    assert schema["properties"]["address"] == {"$ref": "#/$defs/Address"}
    assert set(schema["required"]) == {"customer_id", "address"}


def test_json_schema_of_an_unsupported_field_type_is_a_contract_error(unique):
    class Opaque:
        pass

    class Weird(Event, type=_types(unique), version=1, arbitrary_types_allowed=True):
        thing: Opaque

    with pytest.raises(ContractError, match="has no JSON Schema"):
        json_schema(Weird)


def test_parse_dataschema_round_trips_and_rejects_other_uris():
    assert parse_dataschema(dataschema(ShipV2)) == ("tcontracts.parcel.shipped", 2)
    with pytest.raises(ContractError, match="not a buslib schema URN"):
        parse_dataschema("https://example.com/schemas/orders.json")


# --- converters ----------------------------------------------------------------------------


def test_upcasters_chain_and_keep_the_identity():
    old = ShipV1(parcel_id="P-1", weight_kg=1.25)
    new = convert(old, ShipV3)
    assert isinstance(new, ShipV3)
    assert (new.parcel_id, new.grams, new.carrier, new.version) == ("P-1", 1250, "unknown", 3)
    assert (new.id, new.occurred_at) == (old.id, old.occurred_at)


def test_convert_names_the_missing_step():
    with pytest.raises(ContractError, match=r"No downcast from tcontracts.parcel.shipped v3 to v2"):
        convert(ShipV3(parcel_id="P", grams=1, carrier="x"), ShipV1)


def test_a_failing_converter_is_named(unique):
    name = _types(unique)

    class C1(Event, type=name, version=1):
        pass

    class C2(Event, type=name, version=2):
        n: int

    @upcaster(C1, to=C2)
    def broken(old):
        return 42

    with pytest.raises(ContractError, match="broken must return a C2"):
        convert(C1(), C2)


def test_subjects_readable_by_follows_upcasters():
    assert subjects_readable_by(ShipV3) == [f"tcontracts.parcel.shipped.v{n}" for n in (1, 2, 3)]
    assert subjects_readable_by(ShipV1) == ["tcontracts.parcel.shipped.v1"]
    assert subjects_readable_by(CustomerMoved) == ["tcontracts.customer.moved.v1"]
    assert downcast_targets(ShipV2) == [ShipV1] and downcast_targets(ShipV3) == []


# --- codec -------------------------------------------------------------------------------------


def test_encode_puts_cloudevents_headers_with_dataschema():
    (out,) = encode(CustomerMoved(customer_id="C", address=Address(city="Oslo")), source="crm")
    assert out.subject == "tcontracts.customer.moved.v1"
    assert out.headers["ce-dataschema"] == "urn:buslib:schema:tcontracts.customer.moved:1"
    assert out.headers["ce-specversion"] == "1.0" and out.headers["ce-source"] == "crm"
    assert out.headers["Bus-Event-Version"] == "1" and out.headers["Nats-Msg-Id"] == out.event.id


def test_encode_with_a_down_converter_emits_both_versions():
    event = ShipV2(parcel_id="P-2", grams=1500)
    v2, v1 = encode(event, source="shipping")
    assert (v2.subject, v1.subject) == ("tcontracts.parcel.shipped.v2", "tcontracts.parcel.shipped.v1")
    assert json.loads(v1.data)["weight_kg"] == 1.5 and json.loads(v1.data)["version"] == 1
    assert v1.headers["ce-id"] == v2.headers["ce-id"] == event.id  # one event, two shapes
    assert v1.headers["Nats-Msg-Id"] != v2.headers["Nats-Msg-Id"]  # ...that dedup must not merge
    assert v1.headers["Bus-Downcast-From"] == "2"
    assert [o.subject for o in encode(event, source="shipping", dual=False)] == ["tcontracts.parcel.shipped.v2"]


def test_encode_refuses_a_version_field_that_contradicts_the_class():
    with pytest.raises(ContractError, match="ShipV2 is version 2 but this event says version=1"):
        encode(ShipV2(parcel_id="P", grams=1, version=1), source="x")


def test_tolerant_reader_ignores_unknown_fields_strict_reader_rejects_them():
    payload = json.dumps({"customer_id": "C", "address": {"city": "Oslo", "zip": "0150"}, "vip": True}).encode()
    event = decode(payload, None, CustomerMoved)
    assert event.address.city == "Oslo" and not hasattr(event, "vip")
    with pytest.raises(DecodeError, match="strict reader for CustomerMoved does not know") as err:
        decode(payload, None, CustomerMoved, strict=True)
    assert "vip" in str(err.value) and "address.zip" in str(err.value)  # nested fields too


def test_decode_upcasts_an_old_message_through_the_chain():
    (out,) = encode(ShipV1(parcel_id="P-3", weight_kg=0.5), source="legacy")
    event = decode(out.data, out.headers, ShipV3)
    assert isinstance(event, ShipV3) and (event.grams, event.carrier, event.id) == (500, "unknown", out.event.id)


def test_decode_reads_the_version_from_the_payload_without_headers():
    data = ShipV1(parcel_id="P-4", weight_kg=2.0).to_json()
    assert message_version(data, None) == (None, 1)
    assert decode(data, None, ShipV2).grams == 2000


def test_decode_downcasts_a_newer_message_for_an_old_consumer():
    v2, _ = encode(ShipV2(parcel_id="P-5", grams=250), source="x")
    assert decode(v2.data, v2.headers, ShipV1).weight_kg == 0.25


def test_a_version_no_contract_knows_is_a_clear_decode_error():
    headers = {"ce-type": "tcontracts.parcel.shipped", "Bus-Event-Version": "9"}
    with pytest.raises(DecodeError, match=r"v9, a version no contract here knows \(known: v1, v2, v3\)"):
        decode(b'{"parcel_id": "P"}', headers, ShipV2)


def test_decode_errors_for_wrong_type_bad_json_bad_version():
    with pytest.raises(DecodeError, match="is a 'other.thing' event"):
        decode(b"{}", {"ce-type": "other.thing"}, ShipV1)
    with pytest.raises(DecodeError, match="not valid JSON"):
        decode(b"{nope", None, ShipV1)
    with pytest.raises(DecodeError, match="not a whole number"):
        decode(b"{}", {"Bus-Event-Version": "two"}, ShipV1)
    with pytest.raises(DecodeError, match="does not fit ShipV1"):
        decode(b'{"parcel_id": "P"}', None, ShipV1)


@pytest.mark.parametrize(
    ("headers", "payload"),
    [
        ({"Bus-Event-Version": " 2"}, b"{}"),  # int() would strip the space
        ({"Bus-Event-Version": "+2"}, b"{}"),
        ({"Bus-Event-Version": "\u0662"}, b"{}"),  # Arabic-Indic two: int() takes it
        ({"Bus-Event-Version": "\u00b2"}, b"{}"),  # superscript two: isdigit() takes it, int() does not
        (None, b'{"version": true}'),  # int(True) == 1
        (None, b'{"version": 2.5}'),
        (None, b'{"version": -1}'),
        ({"Bus-Event-Version": "1" * 5000}, b"{}"),  # more digits than int() converts
    ],
    ids=["space", "plus", "arabic-indic", "superscript", "json-true", "json-float", "negative", "5000-digits"],
)
def test_a_version_is_ascii_digits_or_a_json_integer_and_nothing_else(headers, payload):
    with pytest.raises(DecodeError, match="is not a whole number"):
        message_version(payload, headers)


def test_one_version_rule_reads_a_header_a_payload_and_a_urn():
    assert message_version(b'{"version": 2}', None) == (None, 2)
    assert message_version(b"{}", {"Bus-Event-Version": "2"}) == (None, 2)
    with pytest.raises(ContractError, match="not a buslib schema URN"):
        parse_dataschema("urn:buslib:schema:tcontracts.parcel.shipped:\u0662")


def test_decode_into_event_uses_the_contract_the_headers_name():
    (out,) = encode(ShipV3(parcel_id="P", grams=5, carrier="ups"), source="x")
    assert isinstance(decode(out.data, out.headers, Event), ShipV3)
    with pytest.raises(DecodeError, match="contract this process does not define"):
        decode(b"{}", {"ce-type": "tcontracts.nothing", "Bus-Event-Version": "1"}, Event)
    with pytest.raises(DecodeError, match="no ce-type"):
        decode(b"{}", None, Event)


def test_decode_reports_a_missing_upcaster():
    (v3,) = encode(ShipV3(parcel_id="P", grams=1, carrier="dhl"), source="x")
    with pytest.raises(DecodeError, match="v3 and cannot be read as ShipV1: No downcast from .* v3 to v2"):
        decode(v3.data, v3.headers, ShipV1)


# --- on the real server ------------------------------------------------------------------------


async def _collect(queue: asyncio.Queue, n: int) -> list:
    return [await asyncio.wait_for(queue.get(), timeout=15) for _ in range(n)]


async def test_dual_publish_reaches_v1_and_v2_consumers_side_by_side(js, nats_url, unique):
    stream = f"TCONTRACTS_{unique}"
    await js.add_stream(name=stream, subjects=["tcontracts.parcel.shipped.*"], storage="memory")
    try:
        async with EventBus.connect(service="shipping", url=nats_url) as bus:
            old_q, new_q = asyncio.Queue(), asyncio.Queue()

            async def old_consumer(event, ctx):
                await old_q.put(event)

            async def new_consumer(event, ctx):
                await new_q.put(event)

            await bus.subscribe(ShipV1, group=f"old{unique}", handler=old_consumer, stream=stream)
            await bus.subscribe(ShipV2, group=f"new{unique}", handler=new_consumer, stream=stream)
            event = ShipV2(parcel_id="P-9", grams=1200)
            await bus.publish(event)
            (seen_old,), (seen_new,) = await _collect(old_q, 1), await _collect(new_q, 1)
        info = await js.stream_info(stream)
        assert info.state.messages == 2  # one publish call, two stored messages
        assert isinstance(seen_old, ShipV1) and seen_old.weight_kg == 1.2
        assert isinstance(seen_new, ShipV2) and seen_new.grams == 1200
        assert seen_old.id == seen_new.id == event.id
    finally:
        await js.delete_stream(stream)


async def test_v3_consumer_reads_v1_history_through_upcasters(js, nats_url, unique):
    stream = f"TCONTRACTS_{unique}"
    await js.add_stream(name=stream, subjects=["tcontracts.parcel.shipped.*"], storage="memory")
    try:
        for out in encode(ShipV1(parcel_id="OLD", weight_kg=3.0), source="legacy"):
            await js.publish(out.subject, out.data, headers=out.headers)
        async with EventBus.connect(service="t", url=nats_url) as bus:
            queue = asyncio.Queue()

            async def handler(event, ctx):
                await queue.put(event)

            # a consumer filter that includes the older subjects (see subjects_readable_by)
            await bus.subscribe(
                "tcontracts.parcel.shipped.*", event_type=ShipV3, group=f"g{unique}", handler=handler, stream=stream
            )
            (event,) = await _collect(queue, 1)
        assert isinstance(event, ShipV3) and (event.parcel_id, event.grams, event.carrier) == ("OLD", 3000, "unknown")
    finally:
        await js.delete_stream(stream)


async def test_an_unknown_version_goes_to_the_dead_letter_sink_not_dropped(js, nats_url, unique):
    stream = f"TCONTRACTS_{unique}"
    await js.add_stream(name=stream, subjects=["tcontracts.parcel.shipped.*"], storage="memory")
    try:
        headers = {"ce-type": "tcontracts.parcel.shipped", "Bus-Event-Version": "7", "ce-id": "future-1"}
        await js.publish("tcontracts.parcel.shipped.v2", b'{"parcel_id": "F", "version": 7}', headers=headers)
        async with EventBus.connect(service="t", url=nats_url) as bus:
            failures: asyncio.Queue[Failure] = asyncio.Queue()

            async def handler(event, ctx):
                raise AssertionError("must not be called")

            await bus.subscribe(
                ShipV2,
                group=f"g{unique}",
                handler=handler,
                stream=stream,
                dead_letters=failures.put,
                retry=Retry(max_deliver=1),
            )
            (failure,) = await _collect(failures, 1)
        assert failure.kind == "undecodable"
        assert "v7, a version no contract here knows" in failure.reason
        assert failure.msg.data == b'{"parcel_id": "F", "version": 7}'  # the original, for the DLQ
        assert (await js.stream_info(stream)).state.messages == 1  # still in the stream too
    finally:
        await js.delete_stream(stream)
