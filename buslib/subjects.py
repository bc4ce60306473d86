"""Subjects and the names derived from them: validation, matching, stream and durable names, keys.

>>> from buslib.subjects import check_subject, stream_name_for, durable_name
>>> stream_name_for(check_subject("orders.created.v1")), durable_name("billing", "orders.created.v1")
('ORDERS', 'billing__orders_created_v1')
>>> key_token("ann@example.com"), partition_of("C-1", 4)
('ann%40example%2Ecom', 0)

A *keyed* event (``class OrderPlaced(Event, type="orders.placed", key="customer_id")``) is
published on its subject plus the key as one more token (``orders.placed.v1.C-1``):
:func:`key_token` turns any key into one valid token, and :func:`partition_of` says which
partition a stream's ``{{partition(n,i)}}`` subject transform puts it in.
"""

from __future__ import annotations

import re

from buslib.errors import SubjectError

__all__ = [
    "check_subject",
    "durable_name",
    "fnv1a32",
    "key_from_token",
    "key_token",
    "partition_of",
    "stream_name_for",
    "subject_matches",
]

_TOKEN_RE = re.compile(r"^[^\s.*>]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY_SAFE = re.compile(r"[A-Za-z0-9_=+-]")
_ESCAPED = re.compile(r"(?:%[0-9A-F]{2})+")


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


def key_token(key: object) -> str:
    """Any key as one valid subject token: letters, digits and ``_=+-`` kept, the rest %-escaped.

    >>> key_token("C-17"), key_token("a b"), key_token(42)
    ('C-17', 'a%20b', '42')

    Raises:
        SubjectError: the key is None, empty, or not a str or int.
    """
    if isinstance(key, bool) or not isinstance(key, (str, int)) or key == "":
        raise SubjectError(
            f"A partition key must be a non-empty string or an integer, got {key!r}. It becomes the last "
            "token of the event's subject (orders.placed.v1.<key>), so every event needs one."
        )
    return "".join(c if _KEY_SAFE.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in str(key))


def key_from_token(token: str) -> str:
    """The key a token was made from (the inverse of :func:`key_token`).

    >>> key_from_token("ann%40example%2Ecom")
    'ann@example.com'
    """
    return _ESCAPED.sub(lambda m: bytes.fromhex(m.group(0).replace("%", "")).decode(), token)


def fnv1a32(data: bytes) -> int:
    """The 32-bit FNV-1a hash, the one nats-server's ``partition()`` transform uses."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def partition_of(key: object, partitions: int) -> int:
    """The partition a stream with ``partitions`` partitions stores ``key`` in.

    The server computes FNV-1a 32 of the key's subject token, modulo the number of
    partitions; this is the same computation, so a client can say in advance where a key goes.

    >>> [partition_of(f"C-{i}", 4) for i in range(6)]
    [3, 0, 1, 2, 3, 0]
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}.")
    return fnv1a32(key_token(key).encode()) % partitions
