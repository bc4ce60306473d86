"""How long a publish keeps trying: a time budget, short backoff between tries, and what went wrong.

>>> attempts = Attempts(deadline=15.0, limit=None, timeout=2.0)                  # doctest: +SKIP
>>> while await attempts.another():                                              # doctest: +SKIP
...     try:
...         return await js.publish(subject, data, timeout=attempts.timeout(), headers=headers)
...     except nats.js.errors.NoStreamResponseError as err:
...         attempts.saw(err)
>>> raise PublishError(f"... {attempts.summary()}. {attempts.explanation()}")  # doctest: +SKIP

Bounded by time (``publish_deadline``), not by a count of tries: in a cluster, the leader of a
stream whose node crashed is replaced 4-12 s later (server timers; no option shortens them),
and every try in between fails at once (no responders) or times out. A count of quick tries
would give up long before that. The pause between tries starts at 50 ms and stays short
(0.5 s at most, with jitter): each second of pause after the new leader is there is a second
added to the failover the caller sees. Every retry carries the same ``Nats-Msg-Id``, so a try
that was stored although its answer was lost is stored once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import nats.errors
import nats.js.errors

from buslib._nats.protocol import ErrorCode
from buslib.retry import backoff_delay

__all__ = ["PUBLISH_DEADLINE", "Attempts", "retryable"]

# Seconds a publish keeps trying by default. The longest leader election measured after a
# SIGKILL was 11.8 s (2.15; median 6.9 s) and 7.5 s (2.11), on a busy 2-core machine.
PUBLISH_DEADLINE = 15.0
BACKOFF_BASE = 0.05  # seconds: the first pause between tries
BACKOFF_CAP = 0.5  # seconds: the longest pause
SHORTEST_TRY = 0.05  # seconds: a try's timeout is never cut below this

# The answer was lost or never came; the same Nats-Msg-Id may be sent again.
_LOST = (
    nats.errors.TimeoutError,  # no answer in time (nats-py's is also an asyncio.TimeoutError)
    asyncio.TimeoutError,  # the stream lookup took too long (no meta leader)
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,  # JetStream not (yet) there
    nats.errors.OutboundBufferLimitError,  # not sent: nats-py's outage buffer was full
    nats.js.errors.NoStreamResponseError,  # no stream answered: no stream, or no leader (an election)
)


def retryable(result: object) -> bool:
    """Whether a publish with this result should be tried again with the same ``Nats-Msg-Id``.

    Yes for no answer, no responders, not sent, a 503 that means "not now" (2.11 answers
    "raft: not leader", without an error code, from a leader that just handed over; 10008:
    no meta leader), and "duplicate message id is in process" (an earlier try of the same id
    is still being replicated). No for every other refusal, 503s with a code included: 10077
    "maximum messages exceeded" is a 503 too, and a limit does not lift by waiting.
    """
    if isinstance(result, _LOST):
        return True
    if isinstance(result, nats.js.errors.ServiceUnavailableError):
        return not result.err_code or result.err_code == ErrorCode.JETSTREAM_UNAVAILABLE
    return isinstance(result, nats.js.errors.APIError) and result.err_code == ErrorCode.DUPLICATE_IN_PROCESS


class Attempts:
    """The tries of one publish (or one ``publish_many`` call).

    Args:
        deadline: seconds after the first try within which another may start; None: no limit
            by time (then ``limit`` must be set).
        limit: at most this many tries; None: as many as fit in ``deadline``.
        timeout: seconds each try waits for its answer (cut to what is left of ``deadline``).
    """

    def __init__(self, *, deadline: float | None, limit: int | None, timeout: float) -> None:
        if deadline is None and limit is None:
            raise ValueError("A publish needs a deadline or a limit of attempts (or both).")
        self.deadline = deadline
        self.limit = limit
        self.per_try = timeout
        self.started = time.monotonic()
        self.made = 0
        self.seen: Counter[str] = Counter()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - self.elapsed

    async def another(self) -> bool:
        """Whether another try may start; before a retry, pause (short, growing, with jitter)."""
        if self.made:
            if self.limit is not None and self.made >= self.limit:
                return False
            if self._left() <= 0:
                return False
            await asyncio.sleep(min(backoff_delay(self.made - 1, base=BACKOFF_BASE, cap=BACKOFF_CAP), self._left()))
            if self._left() <= 0:
                return False
        self.made += 1
        return True

    def timeout(self) -> float:
        """Seconds this try may wait: ``timeout``, cut to what is left of the deadline."""
        return max(SHORTEST_TRY, min(self.per_try, self._left()))

    def saw(self, what: object, *, connected: bool = True) -> None:
        """Note what a try got instead of an acknowledgement (None: no answer at all).

        Args:
            connected: whether the client was connected when the try failed (a timeout while
                disconnected means the server was not reachable, not that it did not answer).
        """
        self.seen[_kind(what) + ("" if connected else " while disconnected")] += 1

    def summary(self) -> str:
        """What the tries got, e.g. ``12x NoStreamResponseError, 1x TimeoutError``."""
        return ", ".join(f"{count}x {kind}" for kind, count in self.seen.most_common()) or "nothing"

    def explanation(self) -> str:
        """What the failed tries mean, in a learner's words."""
        return explain(self.seen)

    def how_long(self) -> str:
        """``2 attempts in 0.6 s``."""
        return f"{self.made} attempt{'s' if self.made != 1 else ''} in {self.elapsed:.1f} s"


def _kind(what: object) -> str:
    if what is None:
        return "no answer"
    if isinstance(what, nats.js.errors.APIError) and not isinstance(what, nats.js.errors.NoStreamResponseError):
        return f"{type(what).__name__} {what.err_code or what.code} ({what.description})"
    if isinstance(what, asyncio.TimeoutError):
        return "TimeoutError"
    return type(what).__name__


def explain(seen: Counter[str] | dict[str, int]) -> str:
    """Why tries that got these answers were not confirmed, and what that means for the message.

    One explanation per cause, the most telling first: a try that got "no responders" says
    more than one that timed out around it (an election produces both).
    """

    def saw(*prefixes: str) -> bool:
        return any(kind.startswith(prefixes) and not kind.endswith("while disconnected") for kind in seen)

    parts = []
    if any(kind.endswith("while disconnected") for kind in seen) or saw(
        "ConnectionReconnectingError", "OutboundBufferLimitError"
    ):
        parts.append(
            "The connection to the server was lost and not back in time: is the server up (buslib doctor)? "
            "The client keeps reconnecting in the background."
        )
    if saw("NoStreamResponseError", "NoRespondersError"):
        parts.append(
            "No stream answered: is the server up (buslib doctor), does a stream cover the subject? In a cluster, "
            "the stream has no leader: an election takes seconds after a node crashes, and none can be elected "
            "while most of the stream's replicas are down."
        )
    elif saw("TimeoutError", "no answer", "APIError 10158"):
        parts.append(
            "No confirmation came back: the server is stuck, or, in a cluster, the stream's leader cannot reach a "
            "majority of its replicas (most nodes down); what it accepted is stored once they are back."
        )
    elif saw("ServiceUnavailableError"):
        parts.append("JetStream answered 503: in a cluster, a leader is being elected or most nodes are down.")
    return " ".join(parts)
