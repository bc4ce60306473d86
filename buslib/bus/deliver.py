"""Where a new consumer group starts reading: ``subscribe(..., deliver=...)``.

>>> deliver_settings("new")
{'deliver_policy': <DeliverPolicy.NEW: 'new'>}
>>> deliver_settings(42)
{'deliver_policy': <DeliverPolicy.BY_START_SEQUENCE: 'by_start_sequence'>, 'opt_start_seq': 42}
>>> from datetime import datetime, timedelta, timezone
>>> noon = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
>>> deliver_settings(timedelta(hours=1), now=noon)["opt_start_time"].isoformat()
'2026-12-01T11:00:00+00:00'
>>> describe(deliver_settings("last_per_subject")["deliver_policy"])
"deliver='last_per_subject'"

The starting point applies **when the group is created**, and only then: a group that exists
keeps its position (what it acknowledged is not delivered again), and the server refuses to
change a durable's deliver policy at all (error 10012, even as an update). So on an existing
group the bus compares only the *kind* of start ("all", "new", a time, ...), never the time
or sequence: ``timedelta(hours=1)`` is another instant at every run, and a group that
already runs has moved past its start anyway.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from nats.js.api import DeliverPolicy

__all__ = ["DELIVER_WORDS", "Deliver", "deliver_settings", "describe"]

Deliver = str | int | datetime | timedelta

DELIVER_WORDS = {
    "all": DeliverPolicy.ALL,  # the oldest stored message (the default)
    "new": DeliverPolicy.NEW,  # only what is published after the group is created
    "last": DeliverPolicy.LAST,  # the newest stored message, then new ones
    "last_per_subject": DeliverPolicy.LAST_PER_SUBJECT,  # the newest of each subject (of each key), then new ones
}

_HELP = (
    "Use 'all' (the default: the oldest stored message), 'new' (only what is published from now on), "
    "'last' (the newest message, then new ones), 'last_per_subject' (the newest message of each subject, "
    "e.g. of each key of a keyed event), a stream sequence (an int >= 1), a timezone-aware datetime, "
    "or a timedelta ('the last hour': timedelta(hours=1))."
)


def deliver_settings(deliver: Deliver, *, now: datetime | None = None) -> dict[str, Any]:
    """The ``ConsumerConfig`` fields that make a new group start at ``deliver``.

    Args:
        deliver: ``"all"``, ``"new"``, ``"last"``, ``"last_per_subject"``, a stream sequence
            (``int``), an aware ``datetime``, or a ``timedelta`` (that long before now).
        now: the current time, for a ``timedelta`` (default: the clock).

    Raises:
        ValueError: an unknown word, a sequence below 1, a naive datetime, a timedelta <= 0.
    """
    if isinstance(deliver, str):
        if deliver in DELIVER_WORDS:
            return {"deliver_policy": DELIVER_WORDS[deliver]}
        raise ValueError(f"deliver={deliver!r} is not a starting point. {_HELP}")
    if isinstance(deliver, bool):
        raise ValueError(f"deliver={deliver!r} is not a starting point. {_HELP}")
    if isinstance(deliver, int):
        if deliver < 1:
            raise ValueError(f"deliver={deliver}: stream sequences start at 1. {_HELP}")
        return {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": deliver}
    if isinstance(deliver, timedelta):
        if deliver <= timedelta(0):
            raise ValueError(
                f"deliver={deliver!r}: use a positive timedelta, e.g. timedelta(hours=1) for the last hour."
            )
        deliver = (now or datetime.now(timezone.utc)) - deliver
    if isinstance(deliver, datetime):
        if deliver.tzinfo is None:
            raise ValueError(
                f"deliver={deliver!r} has no time zone, so the server could read it as another instant. "
                "Use an aware datetime, e.g. datetime(..., tzinfo=timezone.utc)."
            )
        return {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": deliver.astimezone(timezone.utc)}
    raise ValueError(f"deliver={deliver!r} is not a starting point. {_HELP}")


def describe(policy: DeliverPolicy | str | None) -> str:
    """How a deliver policy is asked for in ``subscribe()``, for messages: ``deliver='new'``."""
    value = getattr(policy, "value", policy) or "all"
    words = {p.value: word for word, p in DELIVER_WORDS.items()}
    if value in words:
        return f"deliver={words[value]!r}"
    if value == DeliverPolicy.BY_START_SEQUENCE.value:
        return "deliver=<a stream sequence>"
    if value == DeliverPolicy.BY_START_TIME.value:
        return "deliver=<a time>"
    return f"deliver policy {value!r}"
