"""How long a publish keeps trying (buslib.bus.attempts), and publish_many's retries after 503s.

The first tests run a fake clock (no server, no waiting); the others use the shared real server.
"""

from __future__ import annotations

import asyncio
import re

import nats.errors
import nats.js.errors
import pytest
from _bus_helpers import HoldingProxy, wait_until

from buslib import EventBus, PublishError
from buslib.bus import attempts as attempts_module
from buslib.bus.attempts import Attempts, explain, retryable


class FakeClock:
    """time.monotonic and asyncio.sleep for the attempts module: sleeping moves the clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 100.0
        self.pauses: list[float] = []
        monkeypatch.setattr(attempts_module.time, "monotonic", lambda: self.now)

        async def sleep(seconds: float) -> None:
            self.pauses.append(seconds)
            self.now += seconds

        monkeypatch.setattr(attempts_module.asyncio, "sleep", sleep)

    def spend(self, seconds: float) -> None:
        self.now += seconds


async def test_tries_go_on_until_the_deadline_with_short_capped_pauses(monkeypatch):
    clock = FakeClock(monkeypatch)
    attempts = Attempts(deadline=15.0, limit=None, timeout=2.0)
    while await attempts.another():
        clock.spend(0.02)  # each try fails at once: no responders during an election
    assert 15.0 <= clock.now - 100.0 <= 15.0 + 0.02  # no try starts after the deadline
    assert attempts.made > 30  # many quick tries, not 5
    assert max(clock.pauses) <= attempts_module.BACKOFF_CAP  # never a long wait past the new leader


async def test_the_first_try_always_happens_and_a_limit_caps_the_count(monkeypatch):
    clock = FakeClock(monkeypatch)
    once = Attempts(deadline=0.001, limit=None, timeout=2.0)
    assert await once.another()
    clock.spend(0.01)
    assert not await once.another() and once.made == 1
    limited = Attempts(deadline=None, limit=3, timeout=2.0)
    tries = 0
    while await limited.another():
        tries += 1
    assert tries == 3


async def test_a_try_waits_no_longer_than_the_deadline_leaves(monkeypatch):
    clock = FakeClock(monkeypatch)
    attempts = Attempts(deadline=3.0, limit=None, timeout=2.0)
    assert await attempts.another() and attempts.timeout() == 2.0
    clock.spend(2.5)
    assert attempts.timeout() == pytest.approx(0.5)
    clock.spend(0.49)
    assert attempts.timeout() == attempts_module.SHORTEST_TRY


def test_neither_a_deadline_nor_a_limit_is_refused():
    with pytest.raises(ValueError, match="deadline or a limit"):
        Attempts(deadline=None, limit=None, timeout=1.0)


@pytest.mark.parametrize(
    "result",
    [
        nats.js.errors.NoStreamResponseError(),
        nats.errors.TimeoutError(),
        asyncio.TimeoutError(),
        nats.errors.ConnectionReconnectingError(),
        nats.errors.NoRespondersError(),
        nats.errors.OutboundBufferLimitError(),
        nats.js.errors.ServiceUnavailableError(code=503, description="raft: not leader"),
        nats.js.errors.ServiceUnavailableError(code=503, err_code=10008, description="temporarily unavailable"),
        nats.js.errors.APIError(code=409, err_code=10158, description="duplicate message id is in process"),
    ],
    ids=type,
)
def test_what_an_election_or_a_lost_answer_looks_like_is_retried(result):
    assert retryable(result)


@pytest.mark.parametrize(
    "result",
    [
        nats.js.errors.BadRequestError(code=400, err_code=10060, description="expected stream does not match"),
        nats.js.errors.ServiceUnavailableError(code=503, err_code=10077, description="maximum messages exceeded"),
        nats.js.errors.ServiceUnavailableError(code=503, err_code=10023, description="insufficient resources"),
        nats.js.errors.APIError(code=400, err_code=10071, description="wrong last sequence"),
        ValueError("unreadable acknowledgement"),
        None,
    ],
    ids=repr,
)
def test_a_refusal_is_final(result):
    """A limit or a wrong sequence does not lift by waiting: not retried, 503s with a code included."""
    assert not retryable(result)


def test_the_explanation_names_what_the_tries_saw():
    no_leader = explain({"NoStreamResponseError": 40})
    assert "the stream has no leader" in no_leader and "most of the stream's replicas are down" in no_leader
    no_quorum = explain({"TimeoutError": 1, "APIError 10158 (duplicate message id is in process)": 3})
    assert "cannot reach a majority of its replicas" in no_quorum and "stored once they are back" in no_quorum


async def test_publish_gives_up_at_its_deadline_and_says_what_each_try_got(nats_url, Order, stream):
    async with HoldingProxy(nats_url) as proxy:
        async with EventBus.connect(service="flaky", url=proxy.url, publish_timeout=0.2, publish_deadline=0.8) as bus:
            await bus.ensure_stream(Order)
            proxy.hold()  # no acknowledgement comes back
            event = Order(order_id="late")
            with pytest.raises(PublishError) as caught:
                await bus.publish(event)
            proxy.release()
    message = str(caught.value)
    assert re.search(r"was not confirmed after \d+ attempts in \d+\.\d s \(\d+x TimeoutError\)", message), message
    assert "No confirmation came back" in message and "publishing it again is safe" in message
    assert caught.value.event_id == event.id
    assert bus.publish_retries >= 1  # more than one try within the deadline


async def test_bus_options_are_checked_before_connecting():
    with pytest.raises(ValueError, match="publish_deadline is in seconds and must be > 0"):
        EventBus.connect(service="x", publish_deadline=0)
    with pytest.raises(ValueError, match="cannot both be None"):
        EventBus.connect(service="x", publish_deadline=None, publish_attempts=None)
    with pytest.raises(ValueError, match="publish_attempts must be >= 1"):
        EventBus.connect(service="x", publish_attempts=0)


@pytest.mark.parametrize("fast_ingest", [False, True], ids=["windowed", "fast-ingest-then-windowed"])
async def test_publish_many_succeeds_on_a_retry_after_no_stream_answered(nats_url, Order, fast_ingest):
    """The stream is gone during the first try (every publish answered 503, as during an election)
    and back for the next: the retry's acknowledgements count (they were ignored before: each slot
    still held the first try's error)."""
    async with (
        EventBus.connect(service="returning", url=nats_url) as bus,
        EventBus.connect(service="admin", url=nats_url) as admin,
    ):
        info = await bus.ensure_stream(Order)  # the bus now knows the stream
        name, config = info.config.name, info.config
        await admin.js.delete_stream(name)  # gone behind the bus's back

        async def bring_it_back() -> None:
            await wait_until(lambda: bus.publish_retries > 0, what="the first try failed")
            await admin.js.add_stream(config)

        comeback = asyncio.create_task(bring_it_back())
        events = [Order(order_id=f"B-{n}") for n in range(300)]
        acks = await bus.publish_many(events, fast_ingest=fast_ingest)
        await comeback
        assert len(acks) == 300 and all(ack.stream == name for ack in acks)
        assert (await admin.js.stream_info(name)).state.messages == 300  # each stored once
        await admin.js.delete_stream(name)
