"""Retry policies and the failure record a dead-letter sink receives.

>>> from buslib.retry import Retry
>>> policy = Retry(max_deliver=4, delays=[0.5, 2, 10], jitter=0)
>>> [policy.delay_for(n) for n in (1, 2, 3)]
[0.5, 2, 10]
>>> policy.exhausted(4)
True

A handler exception means "try again later": the bus naks with the policy's delay for that
delivery (never a plain nak, which redelivers at once: the retry storm of lesson 04).
``raise Reject("why")`` means "this will never succeed": no retries, straight to the sink.
When deliveries run out, or a message is rejected or cannot be decoded, the bus hands a
``Failure`` to the subscription's dead-letter sink and then terminates the delivery.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

__all__ = ["Retry", "Reject", "Failure", "FailureKind", "DeadLetterSink", "backoff_delay"]


def backoff_delay(attempt: int, *, base: float = 0.1, cap: float = 5.0) -> float:
    """Exponential backoff with full jitter: a random delay in [0, min(cap, base * 2**attempt)].

    The one formula for every wait-and-try-again of the kit (reconnects, publish retries,
    a pull loop that lost its server): the jitter keeps many clients from retrying in
    lockstep, the cap keeps a long outage from growing the wait without bound.

    Args:
        attempt: how many tries failed so far (0 for the first retry).
        base: seconds of the first step; each failure doubles it.
        cap: the longest wait, in seconds.
    """
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


class Reject(Exception):
    """Raise from a handler when a message can never succeed: it is dead-lettered at once.

    Args:
        reason: why, in words an operator will read in the dead-letter queue.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Retry:
    """How often and how far apart a failing message is retried.

    Args:
        max_deliver: deliveries in total (the first one included) before it is dead-lettered.
        delays: seconds to wait before retry 1, 2, ...; the last value repeats.
        jitter: a random +/- fraction added to each delay so retries of many messages spread out.
    """

    max_deliver: int = 5
    delays: Sequence[float] = (0.5, 2.0, 10.0)
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_deliver < 1:
            raise ValueError(f"max_deliver must be at least 1 (one delivery, no retries); got {self.max_deliver}.")
        if not self.delays or any(d < 0 for d in self.delays):
            raise ValueError(f"delays must be a non-empty list of seconds >= 0; got {list(self.delays)}.")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter is a fraction between 0 and 1; got {self.jitter}.")

    def delay_for(self, num_delivered: int) -> float:
        """Seconds to wait before redelivering after delivery number ``num_delivered`` failed."""
        base = self.delays[min(num_delivered, len(self.delays)) - 1]
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(base, 0.0)

    def exhausted(self, num_delivered: int) -> bool:
        """Whether delivery number ``num_delivered`` was the last one allowed."""
        return num_delivered >= self.max_deliver

    def consumer_backoff(self) -> list[float]:
        """The consumer's ``backoff`` (used for ack timeouts: a hung or crashed worker).

        The server requires fewer backoff values than ``max_deliver``; it repeats the last.
        Empty when only one delivery is allowed.
        """
        values = [float(d) for d in self.delays][: max(self.max_deliver - 1, 0)]
        return [max(v, 1.0) for v in values]  # an ack timeout shorter than 1 s cuts off healthy handlers


FailureKind = Literal["rejected", "exhausted", "undecodable"]


@dataclass
class Failure:
    """Everything a dead-letter sink needs to record why a message did not succeed."""

    kind: FailureKind
    reason: str
    msg: Any  # nats.aio.msg.Msg: the delivery (data, headers, metadata)
    group: str
    stream: str
    stream_seq: int
    subject: str
    num_delivered: int
    trace_id: str | None = None
    first_failure_at: datetime | None = None
    last_failure_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


DeadLetterSink = Callable[[Failure], Awaitable[None]]
