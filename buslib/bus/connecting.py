"""``EventBus.connect(...)``: the awaitable and async context manager it returns, and option checks.

>>> async with EventBus.connect(service="billing") as bus:    # doctest: +SKIP
...     ...
>>> bus = await EventBus.connect(service="billing")           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, Protocol, TypeVar


class _Closable(Protocol):
    async def close(self) -> None: ...


B = TypeVar("B", bound=_Closable)  # the EventBus (this module sits below the facade, so it cannot name it)

__all__ = ["BUS_OPTIONS", "Connecting", "check_bus_options"]

BUS_OPTIONS = ("auto_create_streams", "publish_timeout", "publish_attempts")  # the EventBus's own connect options


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


def check_bus_options(service: object, *, publish_timeout: float = 2.0, publish_attempts: int = 5, **_: Any) -> None:
    """Refuse a bus that cannot work, before connecting (nothing to clean up then).

    Raises:
        ValueError: an empty service name, ``publish_attempts`` < 1 or ``publish_timeout`` <= 0.
    """
    if not isinstance(service, str) or not service.strip():
        raise ValueError(f"service must be a non-empty name such as 'billing', got {service!r}.")
    if publish_attempts < 1 or publish_timeout <= 0:
        raise ValueError(
            f"publish_attempts must be >= 1 and publish_timeout > 0 seconds, got {publish_attempts} and {publish_timeout}."
        )
