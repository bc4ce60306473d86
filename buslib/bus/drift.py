"""Config drift: what an existing stream or consumer has, against what this code asks for.

>>> differences(StreamConfig(name="S", max_msgs=5), {"max_msgs": 10})   # doctest: +SKIP
['max_msgs: the server has 5, this code asks for 10']

nats-py's ``add_stream`` fails on any difference and its ``pull_subscribe`` silently keeps an
existing consumer's settings, so the bus compares first and says exactly what differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["differences", "normalized"]


def normalized(value: Any) -> Any:
    """A setting in the form the server reports it: enums as their value, whole floats as ints."""
    value = getattr(value, "value", value)  # enums -> their wire value
    if isinstance(value, (list, tuple)):
        return [normalized(v) for v in value] or None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def differences(existing: object, wanted: Mapping[str, Any], *, unordered: Iterable[str] = ()) -> list[str]:
    """One line per setting of ``wanted`` that ``existing`` (a stream or consumer config) has otherwise."""
    diffs = []
    for key, want in wanted.items():
        have, want_n = normalized(getattr(existing, key, None)), normalized(want)
        if key in unordered and have and want_n:
            same = sorted(have) == sorted(want_n)
        elif isinstance(have, float) or isinstance(want_n, float):
            same = have is not None and want_n is not None and abs(have - want_n) < 1e-6
        else:
            same = have == want_n
        if not same:
            diffs.append(f"{key}: the server has {have!r}, this code asks for {want_n!r}")
    return diffs
