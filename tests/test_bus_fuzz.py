"""Whatever arrives on a group's subject is processed or dead-lettered, and the worker goes on.

A property-based test against a real server (issue 11): hypothesis sends arbitrary payloads
(random bytes, JSON of the wrong shape or types, JSON nested tens of thousands deep, payloads
that fill the server's ``max_payload``) with arbitrary headers (the ones the bus reads, with
odd values, and odd names nats-py still sends) to one consumer group. After each example:

- every message the stream stored was either processed by the handler or dead-lettered into
  a real dead-letter stream, never both, never neither: processed + dead-lettered == published;
- the worker is still running, and a valid event published after the junk is handled.

Bounded and reproducible: a fixed number of examples, derandomized, no example database,
no deadline (the machine may be slow; the waits are bounded instead).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from _bus_helpers import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buslib import Event, EventBus, Retry
from buslib._nats.protocol import MSG_ID
from buslib.contracts import codec
from buslib.dlq import DeadLetterQueue


class PropItem(Event, type="fuzzprop.item"):
    name: str
    qty: int


Payload = Callable[[int], bytes]  # room (bytes the payload may take) -> the payload


def _fixed(data: bytes) -> Payload:
    return lambda room: data


def _filling(keep_free: int, byte: int) -> Payload:
    """Random-looking bytes up to the server's max_payload (keep_free 0: exactly up to it)."""
    return lambda room: (
        bytes((byte + i * 7919) % 256 for i in range(256)) * ((room - keep_free) // 256)
        + bytes((room - keep_free) % 256)
    )


def _big_valid_event(keep_free: int) -> Payload:
    def make(room: int) -> bytes:
        event = PropItem(name="", qty=1)
        return event.model_copy(update={"name": "x" * (room - keep_free - len(event.to_json()))}).to_json()

    return make


def _nested(depth: int, opener: bytes, closer: bytes, inside: bytes = b"1") -> bytes:
    return opener * depth + inside + closer * depth


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_payloads: st.SearchStrategy[Payload] = st.one_of(
    st.binary(max_size=200).map(_fixed),  # random bytes
    st.builds(lambda n, q: PropItem(name=n, qty=q).to_json(), st.text(max_size=20), st.integers()).map(_fixed),
    st.fixed_dictionaries({"name": _json_values, "qty": _json_values}).map(
        lambda v: _fixed(json.dumps(v).encode())  # the right fields, wrong types
    ),
    _json_values.map(lambda v: _fixed(json.dumps(v).encode())),  # JSON of any shape
    st.builds(_nested, st.integers(1, 60_000), st.just(b"["), st.just(b"]"), st.just(b"")).map(_fixed),
    st.builds(_nested, st.integers(1, 60_000), st.just(b'{"a":'), st.just(b"}")).map(_fixed),
    st.integers(1, 60_000).map(lambda d: _fixed(b'{"name": "n", "qty": ' + _nested(d, b"[", b"]") + b"}")),
    st.builds(_filling, st.integers(0, 300), st.integers(0, 255)),  # up to max_payload
    st.integers(0, 300).map(_big_valid_event),  # a valid event up to max_payload
)

_TOKEN = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # what nats-py sends
_names = st.one_of(
    st.sampled_from(
        [
            "ce-type",
            "CE-TYPE",
            "Ce-Type",
            codec.VERSION_HEADER,
            codec.VERSION_HEADER.lower(),
            "traceparent",
            "TRACEPARENT",
            "ce-id",
            "Nats-Msg-Id",
            "ce-specversion",
            "ce-source",
            "content-type",
            codec.DOWNCAST_HEADER,
            "Bus-DLQ-Reason",
            "Bus-DLQ-Subject",
            "Bus-Replayed-From",
        ]
    ),
    st.text(_TOKEN, min_size=1, max_size=30).filter(lambda name: not name.lower().startswith("nats-")),
)
_values = st.one_of(
    st.sampled_from(
        [
            "fuzzprop.item",
            " fuzzprop.item ",
            "fuzzprop.other",
            "1",
            "2",
            "0",
            "-1",
            "01",
            "²",  # a digit to str.isdigit(), not to int()
            "١",  # Arabic-Indic one
            "1" * 5000,  # more digits than int() converts by default
            "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
            "00-" + "0" * 32 + "-" + "0" * 16 + "-00",
            "ff-zz-yy-xx",
            "",
            "a\r\nb: c",  # nats-py turns the line break into a space
        ]
    ),
    st.text(max_size=40),
    st.integers(1, 20_000).map(lambda n: "v" * n),  # a long value
)
_headers = st.tuples(
    st.sampled_from(["bus", "none"]), st.dictionaries(_names, _values, max_size=5)
)  # the headers a bus publisher sets (or none), then odd ones on top
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})  # nats-py sends a line break in a value as a space
_examples = st.lists(st.tuples(_payloads, _headers), min_size=1, max_size=4)


# ce-type, Bus-Event-Version, ... as a bus publisher sets them (the id left out: one id is stored once)
BUS_HEADERS = {
    k: v for k, v in codec.encode(PropItem(name="h", qty=1), source="fuzz")[0].headers.items() if k != MSG_ID
}


def _rendered(headers: dict[str, str]) -> int:
    """The size of the header block nats-py sends for ``headers`` (the server counts it in max_payload)."""
    lines = b"".join(
        f"{k.strip()}: {v.strip().translate(_NEWLINES)}\r\n".encode() for k, v in headers.items() if k.strip()
    )
    return len(b"NATS/1.0\r\n" + lines + b"\r\n") if headers else 0


@pytest.fixture
async def group(nats_url, unique):
    """One consumer group on its own stream, dead-lettering into a real dead-letter stream."""
    outcomes: dict[int, list[str]] = {}  # stream seq -> what happened to it ("processed", "dead")
    async with EventBus.connect(service="fuzz", url=nats_url) as bus:
        stream = (await bus.ensure_stream(PropItem, name=f"FUZZPROP{unique}")).config.name
        dlq = await DeadLetterQueue(
            bus,
            stream=f"FUZZPROPDL{unique}",
            alert_subject=None,
            on_dead_letter=lambda entry: outcomes.setdefault(entry.stream_seq, []).append("dead"),
        ).setup()

        async def handle(event: Event, ctx) -> None:
            outcomes.setdefault(ctx.stream_seq, []).append("processed")

        sub = await bus.subscribe(
            "fuzzprop.>",
            group="fuzz",
            event_type=Event,
            handler=handle,
            dead_letters=dlq,
            retry=Retry(max_deliver=2, delays=[0.05]),
        )
        try:
            yield bus, stream, dlq, sub, outcomes
        finally:
            await sub.stop()
            for name in (stream, dlq.stream):
                await bus.js.delete_stream(name)
            await bus.js.delete_consumer(dlq.advisory_stream, dlq.advisory_consumer)


@settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(messages=_examples)
async def test_any_payload_and_headers_are_processed_or_dead_lettered_and_the_worker_goes_on(group, messages):
    bus, stream, dlq, sub, outcomes = group
    first = (await bus.js.stream_info(stream)).state.last_seq + 1
    max_payload = bus.nc.max_payload
    for payload, (base, extra) in messages:
        headers = {**(BUS_HEADERS if base == "bus" else {}), **extra}
        data = payload(max_payload - _rendered(headers))
        await bus.js.publish(PropItem.subject(), data, headers=headers or None)
    valid = await bus.publish(PropItem(name="after the junk", qty=len(messages)))  # stored after all of them
    published = set(range(first, valid.seq + 1))

    await wait_until(lambda: published <= outcomes.keys(), timeout=30, what="every message processed or dead")
    assert all(len(outcomes[seq]) == 1 for seq in published), {s: outcomes[s] for s in published}
    processed = {seq for seq in published if outcomes[seq] == ["processed"]}
    dead = {seq for seq in published if outcomes[seq] == ["dead"]}
    assert len(processed) + len(dead) == len(published)
    assert valid.seq in processed  # the valid event after the junk was handled
    assert sub.running
    assert await dlq.count() == sum(1 for seq, seen in outcomes.items() if seen == ["dead"])
