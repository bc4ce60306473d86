"""Which dead letters an operation applies to: subject, reason, time window, group.

>>> from buslib.dlq import DeadLetterFilter
>>> chosen = DeadLetterFilter.parse(subject="orders.>", reason="KeyError", since="2h")
>>> chosen.empty
False

Times are ISO 8601 or an age (``30s``, ``10m``, ``2h``, ``1d``: that long ago); a reason is
text it contains (case-insensitive) or a ``/regex/``; subjects take NATS wildcards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from buslib.dlq.entry import DeadLetter, parse_timestamp
from buslib.errors import FilterError, SubjectError
from buslib.subjects import check_subject, subject_matches

__all__ = ["DeadLetterFilter"]


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which entries an operation applies to; every given field must match.

    Attributes:
        subject: the original subject; NATS wildcards work (``orders.*.v1``, ``orders.>``).
        reason: text the reason contains (case-insensitive), or ``/regex/``.
        since / until: the last failure happened in ``[since, until]`` (UTC).
        group: the consumer group (or consumer name).
    """

    subject: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    group: str | None = None
    _pattern: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(
        cls,
        *,
        subject: str | None = None,
        reason: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        group: str | None = None,
        now: datetime | None = None,
    ) -> DeadLetterFilter:
        """Build a filter from user input; times may be ISO 8601 or relative (``10m`` = 10 minutes ago).

        Raises:
            FilterError: a value cannot be understood; the message says what is accepted.
        """
        now = now or datetime.now(timezone.utc)
        if subject is not None and not _valid_subject_pattern(subject):
            raise FilterError(
                f"The subject filter {subject!r} is not a valid NATS subject pattern. Use dot-separated tokens, "
                "'*' for one token and '>' for the rest, e.g. orders.created.v1, orders.*.v1 or orders.>."
            )
        start, end = _parse_time(since, "since", now), _parse_time(until, "until", now)
        if start and end and start > end:
            raise FilterError(f"since ({start.isoformat()}) is after until ({end.isoformat()}): nothing can match.")
        if group is not None and not group.strip():
            raise FilterError("The group filter is empty. Give the consumer group's name, e.g. billing.")
        return cls(subject, reason, start, end, group, _compile_reason(reason))

    def matches(self, entry: DeadLetter) -> bool:
        """Whether ``entry`` passes every condition of this filter."""
        if self.subject and not subject_matches(self.subject, entry.subject):
            return False
        if self.reason:
            pattern = self._pattern or re.compile(re.escape(self.reason), re.IGNORECASE)
            if not pattern.search(entry.reason):
                return False
        when = entry.last_failure_at
        if self.since and (when is None or when < self.since):
            return False
        if self.until and (when is None or when > self.until):
            return False
        return not self.group or self.group in (entry.group, entry.consumer)

    @property
    def empty(self) -> bool:
        """True when the filter matches everything."""
        return not any((self.subject, self.reason, self.since, self.until, self.group))


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def _parse_time(value: str | datetime | None, name: str, now: datetime) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or timezone.utc) if value else None
    relative = _RELATIVE.match(value)
    if relative:
        return now - timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2).lower()])
    try:
        return parse_timestamp(value)
    except ValueError:
        raise FilterError(
            f"{name} {value!r} is not a time. Use an ISO 8601 time (2026-11-26T19:30, 2026-11-26T19:30:00+01:00; "
            "without a zone it means UTC) or an age like 30s, 10m, 2h, 1d (that long ago)."
        ) from None


def _compile_reason(reason: str | None) -> re.Pattern[str] | None:
    if reason is None:
        return None
    if not reason.strip():
        raise FilterError("The reason filter is empty. Give text the reason contains (e.g. ValueError) or /regex/.")
    if len(reason) >= 2 and reason.startswith("/") and reason.endswith("/"):
        try:
            return re.compile(reason[1:-1], re.IGNORECASE)
        except re.error as err:
            raise FilterError(
                f"The reason filter {reason!r} is not a valid regular expression ({err}). "
                "Without the surrounding slashes it is matched as plain text."
            ) from None
    return re.compile(re.escape(reason), re.IGNORECASE)


def _valid_subject_pattern(pattern: str) -> bool:
    try:
        check_subject(pattern, wildcards=True)
    except SubjectError:
        return False
    return True
