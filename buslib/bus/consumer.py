"""A group's durable consumer: the configuration the bus wants, and binding to it without silent drift.

>>> spec = ConsumerSpec(group="billing", stream="ORDERS", subjects=["orders.created.v1"])   # doctest: +SKIP
>>> spec.durable, spec.config().max_deliver                                               # doctest: +SKIP
('billing__orders_created_v1', 5)
>>> info = await bind(js, spec, update=False)                                             # doctest: +SKIP

nats-py's ``pull_subscribe`` never updates an existing consumer (nats.py #506), so a changed
retry policy would silently keep the old one; :func:`bind` compares and says what differs,
and where each wanted setting comes from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo

from buslib._nats.protocol import ErrorCode
from buslib.bus.deliver import Deliver, deliver_settings, describe
from buslib.bus.drift import differences, normalized
from buslib.errors import BusError, ConfigDriftError
from buslib.events import Event
from buslib.retry import Retry
from buslib.subjects import durable_name

__all__ = ["ConsumerSpec", "StreamGone", "bind"]

log = logging.getLogger("buslib")


class StreamGone(Exception):
    """The consumer's stream does not exist (deleted, or never created)."""


@dataclass
class ConsumerSpec:
    """What a group's durable consumer must be.

    Args:
        group: the consumer group.
        stream: the stream it reads.
        subjects: the subjects it filters on: one, or a contract's history (v1, v2, ...);
            the durable is named after the last.
        retry: the retry policy (gives ``max_deliver`` and the ack-timeout backoff).
        ack_wait: seconds before an unacknowledged message is redelivered.
        event_type: the contract being read, for messages that name it.
        deliver: where the group starts when it is created (:mod:`buslib.bus.deliver`); None
            is "all" for a new group and is not compared with an existing one.
        max_ack_pending: messages delivered and not yet acknowledged at most (None: the
            server's default, 1000); 1 for an ordered group's lane.
        name: the durable's name, when not ``<group>__<last subject>`` (keyed contracts, lanes).
    """

    group: str
    stream: str
    subjects: list[str]
    retry: Retry = field(default_factory=Retry)
    ack_wait: float = 30.0
    event_type: type[Event] | None = None
    deliver: Deliver | None = None
    max_ack_pending: int | None = None
    name: str | None = None
    start: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.start = deliver_settings(
            "all" if self.deliver is None else self.deliver
        )  # a timedelta becomes one instant, now

    @property
    def durable(self) -> str:
        """The durable name: ``<group>__<subject>`` (``billing__orders_created_v1``)."""
        return self.name or durable_name(self.group, self.subjects[-1])

    def ack_timers(self) -> list[float]:
        """The ack timeout of delivery 1, 2, ...: ``ack_wait``, then growing with the retry delays."""
        # Ack timeouts (a hung or crashed worker) start at ack_wait and grow with the retry
        # delays when those are longer; the server wants fewer backoff values than max_deliver.
        backoff = [self.ack_wait] + [max(self.ack_wait, d) for d in self.retry.consumer_backoff()]
        backoff = backoff[: max(self.retry.max_deliver - 1, 0)]
        return backoff if len(set(backoff)) > 1 else [self.ack_wait]

    def config(self) -> ConsumerConfig:
        """The durable consumer configuration this group needs."""
        timers = self.ack_timers()
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.retry.max_deliver,
            max_ack_pending=self.max_ack_pending,
            backoff=timers if len(timers) > 1 else None,
            filter_subject=self.subjects[0] if len(self.subjects) == 1 else None,
            filter_subjects=self.subjects if len(self.subjects) > 1 else None,  # server 2.10+
            **self.start,
        )

    def origins(self) -> dict[str, str]:
        """Where each wanted consumer setting comes from, for a drift message a learner can act on."""
        retry = self.retry
        delays = [float(d) for d in retry.delays]
        if len(self.subjects) > 1:
            name = getattr(self.event_type, "__name__", "the contract")
            filters = (
                f"every subject {name} can read: its own and the older versions its upcasters convert "
                "(contracts.subjects_readable_by)"
            )
        else:
            filters = f"the subscribe() target {self.subjects[0]!r}"
        if self.config().backoff:
            backoff = (
                f"derived, not passed: ack_wait={normalized(self.ack_wait)} followed by the retry delays {delays} of "
                f"retry=Retry(max_deliver={retry.max_deliver}, ...), so a crashed worker's messages come back as "
                "slowly as failed ones; it changes whenever ack_wait or the retry policy changes"
            )
        else:
            backoff = (
                f"derived, not passed: none needed, because no retry delay {delays} is longer than "
                f"ack_wait={normalized(self.ack_wait)}"
            )
        return {
            "filter_subject": filters,
            "filter_subjects": filters,
            "ack_wait": f"from subscribe(ack_wait={normalized(self.ack_wait)}); the default is 30 s",
            "max_deliver": f"from retry=Retry(max_deliver={retry.max_deliver}); Retry() allows 5 deliveries",
            "backoff": backoff,
            "ack_policy": "fixed by the bus: explicit acks",
            "deliver_policy": (
                f"from subscribe({describe(self.start['deliver_policy'])}); it only chooses where a new group "
                "starts, and the server cannot change it on an existing group (error 10012), not even with "
                "update=True"
            ),
            "max_ack_pending": (
                "from subscribe(ordered=True): one message in flight at a time, so a retry holds back what follows it"
            ),
        }

    def drift(self, have: ConsumerConfig) -> list[str]:
        """How an existing consumer's config differs from this spec (empty: it matches)."""
        wanted = self.config()
        keys = ["ack_policy", "ack_wait", "max_deliver", "backoff"]
        if self.deliver is not None:  # where a group starts: compared only when asked for
            keys.append("deliver_policy")
        if self.max_ack_pending is not None:  # compared only when asked for (ordered groups)
            keys.append("max_ack_pending")
        diffs = differences(have, {k: getattr(wanted, k) for k in keys})
        have_filters = list(have.filter_subjects or []) or ([have.filter_subject] if have.filter_subject else [])
        if sorted(have_filters) != sorted(self.subjects):
            have_shown: object
            want_shown: object
            if len(have_filters) <= 1 and len(self.subjects) == 1:
                have_shown, want_shown, key = (
                    have_filters[0] if have_filters else None,
                    self.subjects[0],
                    "filter_subject",
                )
            else:
                have_shown, want_shown, key = have_filters or None, self.subjects, "filter_subjects"
            diffs.insert(0, f"{key}: the server has {have_shown!r}, this code asks for {want_shown!r}")
        return diffs


async def bind(
    js: JetStreamContext,
    spec: ConsumerSpec,
    *,
    update: bool,
    announce_recreate: bool = False,
    timeout: float | None = None,
) -> ConsumerInfo:
    """Create the group's durable, or check the existing one (and update it if asked).

    Args:
        update: change an existing durable whose settings differ, instead of raising.
        announce_recreate: log a warning when the durable was gone and is created again.
        timeout: seconds to wait for the server's answer about the durable (None: nats-py's
            default, 5 s). A re-bind asks again soon anyway: during an election no leader answers.

    Raises:
        StreamGone: the stream does not exist.
        ConfigDriftError: the durable exists with other settings and ``update`` is False.
    """
    wanted = spec.config()
    try:
        info = await js.consumer_info(spec.stream, spec.durable, timeout=timeout)
    except nats.js.errors.NotFoundError as err:
        if err.err_code == ErrorCode.STREAM_NOT_FOUND:
            raise StreamGone(spec.stream) from None
        if announce_recreate:
            log.warning("consumer %s/%s was gone: re-creating it", spec.stream, spec.durable)
        return await _create(js, spec, wanted)
    diffs = spec.drift(info.config)
    fixed = [d for d in diffs if d.startswith("deliver_policy:")]  # the server refuses to change it (10012)
    if diffs and update and not fixed:
        log.info("updating consumer %s/%s: %s", spec.stream, spec.durable, "; ".join(diffs))
        return await _create(js, spec, wanted)  # create-or-update
    if diffs:
        origins = spec.origins()
        lines = [f"{diff}\n      ({origins.get(diff.split(':', 1)[0], 'set by the bus')})" for diff in diffs]
        head = (
            f"The consumer group {spec.group!r} (durable {spec.durable!r} on stream {spec.stream!r}) already "
            f"exists with a different configuration:\n  " + "\n  ".join(lines) + "\n"
        )
        delete = f"await bus.js.delete_consumer({spec.stream!r}, {spec.durable!r})"
        if fixed:
            raise ConfigDriftError(
                head + "deliver= only chooses where a group starts when it is created; this group already exists "
                "and keeps its position (what it acknowledged is not delivered again). What to do:\n"
                f"  - to start the group over at the new point, delete it first: {delete}, then subscribe again;\n"
                "  - or subscribe with the deliver= it was created with (to read from another point without "
                "touching this group, use a new group name)."
            )
        raise ConfigDriftError(
            head + "nats-py's pull_subscribe never updates an existing consumer, so subscribing anyway would silently "
            "keep the old settings. What to do:\n"
            "  - to change the group's settings deliberately, pass update=True to subscribe() (the group keeps "
            "its position: what it already acknowledged is not delivered again);\n"
            f"  - to start the group over from the oldest message, delete the consumer first: {delete};\n"
            "  - or, if the old settings are right, subscribe with the same arguments as before."
        )
    return info


async def _create(js: JetStreamContext, spec: ConsumerSpec, wanted: ConsumerConfig) -> ConsumerInfo:
    """Create (or update) the durable; a refusal becomes a BusError that says what the server said."""
    try:
        return await js.add_consumer(spec.stream, config=wanted)
    except nats.js.errors.NotFoundError as err:
        if err.err_code in (ErrorCode.STREAM_NOT_FOUND, None):  # the stream went away in between
            raise StreamGone(spec.stream) from None
        raise BusError(_refusal(spec, err)) from None
    except nats.js.errors.APIError as err:
        raise BusError(_refusal(spec, err)) from None


def _refusal(spec: ConsumerSpec, err: nats.js.errors.APIError) -> str:
    said = f"{err.description} (error {err.err_code})"
    reasons: dict[int, str] = {
        ErrorCode.WORKQUEUE_NOT_UNIQUE: "stream {s} is a work queue: each message goes to one consumer and is "
        "deleted when acknowledged, so only one group may read a subject. Use a limits or interest stream for "
        "several groups, or give each group its own subjects.",
        ErrorCode.WORKQUEUE_FILTER_OVERLAP: "stream {s} is a work queue, and another group already reads some of "
        "these subjects: on a work queue every subject has one reader.",
        ErrorCode.WORKQUEUE_DELIVER_ALL: "stream {s} is a work queue: a group there must read from the start "
        "(deliver='all').",
        ErrorCode.DELIVER_POLICY_NEEDS_FILTER: "this starting point needs a filter subject or a start time.",
    }
    why = reasons.get(err.err_code or 0, "")
    return (
        f"The server refused to create group {spec.group!r} (durable {spec.durable!r}) on stream {spec.stream!r}: "
        f"{said}. {why.format(s=repr(spec.stream))}"
    ).strip()
