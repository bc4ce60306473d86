"""Settlement without a server: every outcome of one delivery, and the ack verb it ends with.

A delivery here is a small stand-in with the fields a JetStream delivery has (data, headers,
subject, an ack subject as reply) that records the verbs sent. The bus tests check the same
paths against a real server; these pin down each branch exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from buslib import Event, Reject, Retry
from buslib.bus import REPLAY_GROUP, Settlement
from buslib.retry import Failure


class Parcel(Event, type="tsettle.parcel.sent"):
    parcel_id: str
    grams: int


@dataclass
class Delivery:
    """What settlement reads of a delivery, and the ack verbs it sends back."""

    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    num_delivered: int = 1
    subject: str = "tsettle.parcel.sent.v1"
    verbs: list[tuple[str, float | None]] = field(default_factory=list)

    @property
    def reply(self) -> str:  # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
        return f"$JS.ACK.PARCELS.shipping__x.{self.num_delivered}.7.7.0.0"

    @property
    def is_acked(self) -> bool:
        return bool(self.verbs)

    async def ack(self) -> None:
        self.verbs.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.verbs.append(("nak", delay))

    async def term(self) -> None:
        self.verbs.append(("term", None))

    async def in_progress(self) -> None:
        self.verbs.append(("in_progress", None))


def parcel(**fields: object) -> bytes:
    return Parcel(**{"parcel_id": "P-1", "grams": 500, **fields}).to_json()


class Recorder:
    """A handler that records what it got, and fails as told."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.seen: list[Parcel] = []
        self.fail = fail

    async def __call__(self, event: Parcel, ctx: object) -> None:
        self.seen.append(event)
        if self.fail is not None:
            raise self.fail


def settlement(handler: Recorder, *, sink: list[Failure] | None = None, max_deliver: int = 3) -> Settlement:
    async def dead_letters(failure: Failure) -> None:
        assert sink is not None
        sink.append(failure)

    return Settlement(
        group="shipping",
        durable="shipping__x",
        handler=handler,
        event_type=Parcel,
        retry=Retry(max_deliver=max_deliver, delays=[0.5, 2.0], jitter=0),
        dead_letters=dead_letters if sink is not None else None,
    )


async def test_a_handler_that_returns_acks_the_message():
    handler = Recorder()
    s = settlement(handler)
    msg = Delivery(parcel())
    await s.process(msg)  # type: ignore[arg-type]
    assert msg.verbs == [("ack", None)] and handler.seen[0].parcel_id == "P-1"
    assert (s.stats.received, s.stats.acked, s.stats.retried) == (1, 1, 0)


async def test_a_failing_handler_naks_with_the_policys_delay_until_the_last_delivery():
    sink: list[Failure] = []
    s = settlement(Recorder(fail=ValueError("scale offline")), sink=sink)
    first, last = Delivery(parcel(), num_delivered=1), Delivery(parcel(), num_delivered=3)
    await s.process(first)  # type: ignore[arg-type]
    await s.process(last)  # type: ignore[arg-type]
    assert first.verbs == [("nak", 0.5)]
    assert last.verbs == [("term", None)] and sink[0].kind == "exhausted"
    assert sink[0].reason == "ValueError: scale offline" and sink[0].num_delivered == 3
    assert (s.stats.retried, s.stats.exhausted, s.stats.dead_lettered) == (1, 1, 1)


async def test_reject_dead_letters_at_once_and_terminates():
    sink: list[Failure] = []
    s = settlement(Recorder(fail=Reject("parcel weighs nothing")), sink=sink)
    msg = Delivery(parcel(grams=0))
    await s.process(msg)  # type: ignore[arg-type]
    assert msg.verbs == [("term", None)]
    assert (sink[0].kind, sink[0].reason, sink[0].stream, sink[0].stream_seq) == (
        "rejected",
        "parcel weighs nothing",
        "PARCELS",
        7,
    )


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"not json", "DecodeError: The payload is not valid JSON"),
        (json.dumps({"parcel_id": 5}).encode(), "DecodeError: The payload does not fit Parcel"),
        (b"[" * 100_000 + b"]" * 100_000, "RecursionError: the payload is nested too deeply"),
        (b'{"parcel_id": "P", "grams": 1, "version": "two"}', "DecodeError"),
    ],
    ids=["not-json", "wrong-shape", "nested-too-deep", "bad-version"],
)
async def test_anything_that_cannot_be_decoded_is_dead_lettered_as_undecodable(data, words):
    sink: list[Failure] = []
    handler = Recorder()
    s = settlement(handler, sink=sink)
    msg = Delivery(data)
    await s.process(msg)  # type: ignore[arg-type]
    assert handler.seen == [] and msg.verbs == [("term", None)]
    assert sink[0].kind == "undecodable" and sink[0].reason.startswith(words)


async def test_a_decoder_error_of_any_type_is_undecodable_not_a_crash():
    class Strict(Event, type="tsettle.strict"):
        n: int

        def model_post_init(self, _: object) -> None:  # a contract whose own code raises something odd
            raise LookupError("no such warehouse")

    sink: list[Failure] = []

    async def record(failure: Failure) -> None:
        sink.append(failure)

    s = Settlement(group="g", durable="g__x", handler=Recorder(), event_type=Strict, retry=Retry(), dead_letters=record)
    msg = Delivery(b'{"n": 1}', subject="tsettle.strict.v1")
    await s.process(msg)  # type: ignore[arg-type]
    assert msg.verbs == [("term", None)] and sink[0].kind == "undecodable"
    assert "LookupError" in sink[0].reason


async def test_a_failing_sink_keeps_the_message_with_a_nak_instead_of_a_term():
    async def broken_sink(failure: Failure) -> None:
        raise ConnectionError("dead-letter stream unreachable")

    s = settlement(Recorder(fail=Reject("never")))
    s.dead_letters = broken_sink
    msg = Delivery(parcel())
    await s.process(msg)  # type: ignore[arg-type]
    assert msg.verbs == [("nak", 0.5)] and s.stats.sink_errors == 1 and s.stats.dead_lettered == 0


async def test_without_a_sink_the_message_is_terminated_and_counted_as_dropped():
    s = settlement(Recorder(fail=Reject("never")), sink=None)
    msg = Delivery(parcel())
    await s.process(msg)  # type: ignore[arg-type]
    assert msg.verbs == [("term", None)] and s.stats.dropped == 1


async def test_a_replay_for_another_group_is_acked_unhandled_and_one_for_this_group_is_handled():
    handler = Recorder()
    s = settlement(handler)
    for_billing = Delivery(parcel(), headers={REPLAY_GROUP: "billing"})
    for_shipping = Delivery(parcel(parcel_id="P-2"), headers={REPLAY_GROUP: "shipping"})
    await s.process(for_billing)  # type: ignore[arg-type]
    await s.process(for_shipping)  # type: ignore[arg-type]
    assert for_billing.verbs == [("ack", None)] and for_shipping.verbs == [("ack", None)]
    assert [p.parcel_id for p in handler.seen] == ["P-2"]
    assert (s.stats.skipped_replays, s.stats.acked) == (1, 1)
