"""Subjects and the names derived from them: validation, matching, stream and durable names.

>>> from buslib.subjects import check_subject, stream_name_for, durable_name
>>> stream_name_for(check_subject("orders.created.v1")), durable_name("billing", "orders.created.v1")
('ORDERS', 'billing__orders_created_v1')
"""

from __future__ import annotations

import re

from buslib.errors import SubjectError

__all__ = ["check_subject", "durable_name", "stream_name_for", "subject_matches"]

_TOKEN_RE = re.compile(r"^[^\s.*>]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def check_subject(subject: object, *, wildcards: bool = False) -> str:
    """Validate a subject such as ``orders.created.v1``; return it unchanged.

    Args:
        subject: the subject.
        wildcards: allow ``*`` (one token) and a final ``>`` (the rest), as filters may.

    Raises:
        SubjectError: empty, not a string, an empty token, whitespace, or a misplaced wildcard.
    """
    if not isinstance(subject, str) or not subject:
        raise SubjectError(f"A subject must be a non-empty string like 'orders.created.v1', got {subject!r}.")
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if wildcards and (token == "*" or (token == ">" and i == len(tokens) - 1)):
            continue
        if not _TOKEN_RE.match(token):
            where = "an empty token (two dots in a row, or a dot at an end)" if not token else f"the token {token!r}"
            rule = (
                "'*' matches one token and '>' the rest (only at the end)"
                if wildcards
                else "wildcards (* and >) are for subscribing, not publishing"
            )
            raise SubjectError(
                f"{subject!r} is not a valid subject: it has {where}. Subjects are dot-separated tokens "
                f"without spaces, like 'orders.created.v1'; {rule}."
            )
    return subject


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` falls under ``pattern`` (``*`` one token, a final ``>`` the rest).

    >>> subject_matches("orders.>", "orders.created.v1"), subject_matches("orders.*", "orders.created.v1")
    (True, False)
    """
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def stream_name_for(subject: str) -> str:
    """The stream that by convention holds a subject: its first token, upper case.

    >>> stream_name_for("orders.created.v1")
    'ORDERS'

    Raises:
        SubjectError: the subject starts with a wildcard (no name can be derived).
    """
    first = check_subject(subject, wildcards=True).split(".")[0]
    if first in ("*", ">"):
        raise SubjectError(
            f"Cannot derive a stream name from {subject!r}: it starts with a wildcard. "
            "Create the stream yourself with bus.ensure_stream(..., name=...) first."
        )
    return re.sub(r"[^A-Za-z0-9_-]", "_", first).upper()


def durable_name(group: str, subject: str) -> str:
    """The durable consumer behind a group for one filter subject (deterministic).

    >>> durable_name("billing", "orders.created.v1")
    'billing__orders_created_v1'
    """
    token = subject.replace(".", "_").replace("*", "any").replace(">", "all")
    return f"{group}__{re.sub(r'[^A-Za-z0-9_-]', '-', token)}"


def check_group(group: object) -> str:
    if not isinstance(group, str) or not group.strip():
        raise ValueError(
            f"group must be a non-empty name such as 'billing', got {group!r}. The group names the durable "
            "consumer that all instances of one service share; each group receives every message once."
        )
    if not _NAME_RE.match(group):
        raise ValueError(
            f"group {group!r} may only contain letters, digits, '_' and '-' (it becomes part of the "
            "durable consumer's name, where dots, spaces and wildcards are not allowed)."
        )
    return group
