"""``EventBus.connect(...)``: the awaitable and async context manager it returns, and option checks.

>>> async with EventBus.connect(service="billing") as bus:    # doctest: +SKIP
...     ...
>>> bus = await EventBus.connect(service="billing")           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, Protocol, TypeVar

from buslib.bus.attempts import PUBLISH_DEADLINE


class _Closable(Protocol):
    async def close(self) -> None: ...


B = TypeVar("B", bound=_Closable)  # the EventBus (this module sits below the facade, so it cannot name it)

__all__ = ["BUS_OPTIONS", "Connecting", "check_bus_options"]

# the EventBus's own connect options
BUS_OPTIONS = ("auto_create_streams", "publish_timeout", "publish_deadline", "publish_attempts")


class Connecting(Generic[B]):
    """``EventBus.connect(...)``: await it, or use it with ``async with``."""

    def __init__(self, factory: Callable[[], Awaitable[B]]) -> None:
        self._factory = factory
        self._bus: B | None = None

    def __await__(self) -> Generator[Any, None, B]:
        return self._factory().__await__()

    async def __aenter__(self) -> B:
        self._bus = await self._factory()
        return self._bus

    async def __aexit__(self, *exc: object) -> None:
        if self._bus is not None:
            await self._bus.close()


def check_bus_options(
    service: object,
    *,
    publish_timeout: float = 2.0,
    publish_deadline: float | None = PUBLISH_DEADLINE,
    publish_attempts: int | None = None,
    **_: Any,
) -> None:
    """Refuse a bus that cannot work, before connecting (nothing to clean up then).

    Raises:
        ValueError: an empty service name, ``publish_timeout`` or ``publish_deadline`` <= 0,
            ``publish_attempts`` < 1, or neither a deadline nor a count (it would never give up).
    """
    if not isinstance(service, str) or not service.strip():
        raise ValueError(f"service must be a non-empty name such as 'billing', got {service!r}.")
    if not (isinstance(publish_timeout, (int, float)) and publish_timeout > 0):
        raise ValueError(f"publish_timeout is in seconds and must be > 0, got {publish_timeout!r}.")
    if publish_deadline is not None and not (isinstance(publish_deadline, (int, float)) and publish_deadline > 0):
        raise ValueError(
            f"publish_deadline is in seconds and must be > 0 (or None: no limit by time), got {publish_deadline!r}."
        )
    if publish_attempts is not None and not (isinstance(publish_attempts, int) and publish_attempts >= 1):
        raise ValueError(f"publish_attempts must be >= 1 (or None: no limit by count), got {publish_attempts!r}.")
    if publish_deadline is None and publish_attempts is None:
        raise ValueError("publish_deadline and publish_attempts cannot both be None: a publish would never give up.")
