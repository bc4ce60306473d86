"""The ``____`` blank of the exercises: harmless to run, recognised by the checks.

>>> from buslib.exercises.placeholder import ____, is_placeholder
>>> is_placeholder(____), is_placeholder([1, ____]), is_placeholder("done")
(True, True, False)
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from typing import Any

__all__ = ["Placeholder", "____", "is_placeholder"]


class Placeholder:
    """The ``____`` blank a learner replaces with code.

    It tolerates being used (called, awaited, indexed, iterated, attribute access), so a cell
    such as ``info = await js.add_stream(name=____)`` never crashes: the check then says
    "not attempted" instead of the notebook stopping with an unrelated traceback.
    """

    _instance: Placeholder | None = None

    def __new__(cls) -> Placeholder:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "____"

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        return self

    def __getattr__(self, name: str) -> Placeholder:
        if name.startswith("__") and name.endswith("__"):  # keep copy/pickle/IPython protocols honest
            raise AttributeError(name)
        return self

    def __getitem__(self, key: Any) -> Placeholder:
        return self

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __await__(self) -> Generator[Any, None, Placeholder]:
        return self
        yield  # makes this a generator: `await ____` evaluates to ____

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0


____ = Placeholder()


def is_placeholder(value: Any) -> bool:
    """Whether ``value`` is ``____`` or a list/tuple/set/dict that still holds one."""
    if value is ____:
        return True
    if isinstance(value, Mapping):
        return any(is_placeholder(k) or is_placeholder(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(is_placeholder(v) for v in value)
    return False
