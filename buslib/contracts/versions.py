"""Event contracts: which events exist, their JSON Schemas, and how versions convert.

>>> from buslib import Event
>>> from buslib.contracts import upcaster, subjects_readable_by
>>> class ParcelSentV1(Event, type="doc.parcels.sent", version=1):
...     weight: float                   # kilograms
>>> class ParcelSentV2(Event, type="doc.parcels.sent", version=2):
...     grams: int
>>> @upcaster(ParcelSentV1, to=ParcelSentV2)
... def _(old: ParcelSentV1) -> ParcelSentV2:
...     return ParcelSentV2(grams=round(old.weight * 1000))
>>> subjects_readable_by(ParcelSentV2)
['doc.parcels.sent.v1', 'doc.parcels.sent.v2']

A *contract* is an :class:`~buslib.events.Event` subclass: its type name and major version
give the subject (``orders.created.v1``). Additive changes (a new optional field) keep the
version; a breaking change is a new class with the next version, on its own subject.

Two kinds of converters link the versions of one type:

- an **upcaster** (``@upcaster(V1, to=V2)``) lets a v2 consumer read v1 history: the codec
  chains them (v1 -> v2 -> v3) when it decodes an older message;
- a **down-converter** (``@downcast(V2, to=V1)``) turns on dual publishing during a migration:
  one publish of a v2 event also emits its v1 form on the v1 subject.

Converted events keep their identity (``id``, ``occurred_at``). The JSON Schemas of the
contracts are in :mod:`buslib.contracts.schema`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import BaseModel

from buslib.errors import ContractError
from buslib.events import Event, event_types

__all__ = [
    "Converter",
    "contracts",
    "convert",
    "downcast",
    "downcast_targets",
    "import_contract_modules",
    "require_contract",
    "subjects_readable_by",
    "filters_readable_by",
    "upcaster",
    "versions_of",
]

E = TypeVar("E", bound=Event)
Converter = Callable[[Any], Any]
# (type, from version) -> (to class, function); one step each, so chains are explicit
_UPCASTERS: dict[tuple[str, int], tuple[type[Event], Converter]] = {}
_DOWNCASTERS: dict[tuple[str, int], tuple[type[Event], Converter]] = {}


def require_contract(obj: Any, *, what: str = "contract") -> type[Event]:
    """Check that ``obj`` is an event contract class and return it.

    Args:
        obj: the candidate, e.g. ``OrderCreatedV1``.
        what: how to name it in the error message.

    Raises:
        ContractError: ``obj`` is an instance, a plain pydantic model, a dataclass, a dict...
    """
    if isinstance(obj, type) and issubclass(obj, Event) and obj is not Event:
        return obj
    advice = "Declare it as `class OrderCreated(Event, type='orders.created', version=1): ...`."
    if obj is Event:
        got = "the Event base class itself"
    elif isinstance(obj, Event):
        got = f"an instance of {type(obj).__name__}; pass the class itself"
    elif isinstance(obj, type) and issubclass(obj, BaseModel):
        got = f"the pydantic model {obj.__name__}, which is not a buslib Event (it has no type name or version)"
    elif isinstance(obj, type):
        got = f"the class {obj.__name__}, which is not a pydantic model"
    else:
        got = f"{type(obj).__name__} {obj!r:.60}"
    raise ContractError(f"The {what} is {got}. A contract must be an Event subclass. {advice}")


def contracts(modules: Iterable[str] | None = None) -> list[type[Event]]:
    """The known contracts, sorted by type name then version.

    Args:
        modules: keep only contracts defined in these modules (or their submodules).
            Import them first, e.g. with :func:`import_contract_modules`.
    """
    wanted = list(modules) if modules is not None else None
    found = [
        cls
        for cls in event_types().values()
        if wanted is None or any(cls.__module__ == m or cls.__module__.startswith(m + ".") for m in wanted)
    ]
    return sorted(found, key=lambda cls: (cls.event_type, cls.event_version))


def versions_of(event_type: str) -> dict[int, type[Event]]:
    """Every known major version of one event type: ``{1: OrderCreatedV1, 2: OrderCreatedV2}``."""
    return {version: cls for (name, version), cls in sorted(event_types().items()) if name == event_type}


def import_contract_modules(modules: Iterable[str]) -> list[str]:
    """Import the modules that define contracts (so their classes register).

    Returns:
        The module names, in order.

    Raises:
        ContractError: a module cannot be imported (the message carries the reason).
    """
    names = list(modules)
    for name in names:
        try:
            importlib.import_module(name)
        except ContractError as err:
            raise ContractError(f"Module {name!r} declares an invalid contract: {err}") from None
        except Exception as err:  # noqa: BLE001 - any import failure becomes one clear message
            raise ContractError(
                f"Cannot import contract module {name!r}: {type(err).__name__}: {err}. "
                "Check the module name (in [tool.buslib] contracts of pyproject.toml, or as given) and that it is importable."
            ) from None
    return names


def _converter(table: dict, source: Any, to: Any, *, up: bool) -> Callable[[Converter], Converter]:
    kind = "upcaster" if up else "down-converter"
    src = require_contract(source, what=f"source of the {kind}")
    dst = require_contract(to, what=f"target of the {kind}")
    if src.event_type != dst.event_type:
        raise ContractError(
            f"A {kind} converts versions of one event type, but {src.__name__} is {src.event_type!r} "
            f"and {dst.__name__} is {dst.event_type!r}."
        )
    step = 1 if up else -1
    if dst.event_version != src.event_version + step:
        direction = "up to the next version (v1 -> v2)" if up else "down to the previous version (v2 -> v1)"
        raise ContractError(
            f"The {kind} {src.__name__} (v{src.event_version}) -> {dst.__name__} (v{dst.event_version}) "
            f"goes the wrong way or skips a version: a {kind} goes one step {direction}; "
            "the codec chains steps for longer paths."
        )

    def register(func: Converter) -> Converter:
        key = (src.event_type, src.event_version)
        existing = table.get(key)
        if existing is not None and _name(existing[1]) != _name(func):
            raise ContractError(
                f"Two {kind}s for {src.__name__} -> {dst.__name__}: {_name(existing[1])} and {_name(func)}. Keep one."
            )
        table[key] = (dst, func)  # a re-run notebook cell replaces its own converter
        return func

    return register


def _name(func: Converter) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def upcaster(source: type[Event], *, to: type[Event]) -> Callable[[Converter], Converter]:
    """Declare how an event of one version becomes the next version (decorator).

    The function takes the old event and returns the new one (or a dict of its fields);
    ``id`` and ``occurred_at`` are carried over for you.

    Args:
        source: the older contract, e.g. ``OrderCreatedV1``.
        to: the contract one version up, e.g. ``OrderCreatedV2``.

    Raises:
        ContractError: not contracts, different types, not exactly one version up, or a
            second upcaster for the same step.
    """
    return _converter(_UPCASTERS, source, to, up=True)


def downcast(source: type[Event], *, to: type[Event]) -> Callable[[Converter], Converter]:
    """Declare how an event becomes the previous version: turns on dual publishing (decorator).

    While it is declared, every publish of ``source`` also emits the ``to`` form on its own
    subject, so consumers still on the old version keep working during a migration.

    Args:
        source: the newer contract, e.g. ``OrderCreatedV2``.
        to: the contract one version down, e.g. ``OrderCreatedV1``.

    Raises:
        ContractError: not contracts, different types, not exactly one version down, or a
            second down-converter for the same step.
    """
    return _converter(_DOWNCASTERS, source, to, up=False)


def _step(event: Event, dst: type[Event], func: Converter) -> Event:
    src = type(event)
    try:
        result = func(event)
        if isinstance(result, dict):
            result = dst.model_validate({**result, "id": event.id, "occurred_at": event.occurred_at})
    except ContractError:
        raise
    except Exception as err:  # noqa: BLE001 - a converter bug must name the converter
        raise ContractError(
            f"Converting {src.__name__} to {dst.__name__} failed in {_name(func)}: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(result, dst):
        raise ContractError(
            f"{_name(func)} must return a {dst.__name__} (or a dict of its fields), got {type(result).__name__}."
        )
    # the same event in another shape: keep its identity, stamp the right version
    return result.model_copy(update={"id": event.id, "occurred_at": event.occurred_at, "version": dst.event_version})


def convert(event: Event, to: type[E]) -> E:
    """Convert an event to another version of its type through declared converters.

    Upcasters are chained going up (v1 -> v2 -> v3), down-converters going down.

    Raises:
        ContractError: another type, or a missing step (the message names it).
    """
    target = require_contract(to, what="target")
    src = type(event)
    if src.event_type != target.event_type:
        raise ContractError(
            f"Cannot convert a {src.event_type!r} event into {target.__name__} ({target.event_type!r})."
        )
    up = target.event_version > src.event_version
    table, word = (_UPCASTERS, "upcaster") if up else (_DOWNCASTERS, "downcast")
    while type(event).event_version != target.event_version:
        current = type(event)
        step = table.get((current.event_type, current.event_version))
        if step is None:
            nxt = current.event_version + (1 if up else -1)
            raise ContractError(
                f"No {word} from {current.event_type} v{current.event_version} to v{nxt}, so "
                f"{src.__name__} cannot become {target.__name__}. Declare one with "
                f"@{word}({current.__name__}, to=<the v{nxt} class>)."
            )
        event = _step(event, *step)
    return event  # type: ignore[return-value]


def downcast_targets(contract: type[Event]) -> list[type[Event]]:
    """The older versions a publish of ``contract`` also emits (dual publishing), newest first."""
    cls, found = require_contract(contract), []
    while (step := _DOWNCASTERS.get((cls.event_type, cls.event_version))) is not None:
        cls = step[0]
        found.append(cls)
    return found


def subjects_readable_by(contract: type[Event]) -> list[str]:
    """Every subject whose messages a consumer of ``contract`` can decode, oldest first.

    Its own subject plus those of older versions linked by upcasters. Subscribe to all of
    them (a consumer's ``filter_subjects``) to read v1 history with a v2 consumer.

    >>> subjects_readable_by(OrderCreatedV2)   # doctest: +SKIP
    ['orders.created.v1', 'orders.created.v2']
    """
    return [c.subject() for c in _readable_versions(contract)]


def filters_readable_by(contract: type[Event]) -> list[str]:
    """The consumer filters that read every message a consumer of ``contract`` can decode.

    Like :func:`subjects_readable_by`, but a keyed version's messages carry the key as one
    more token (``orders.placed.v1.C-1``; on a partitioned stream also the partition,
    ``orders.placed.v1.2.C-1``), so its filter is ``orders.placed.v1.>``.
    """
    return [f"{c.subject()}.>" if c.event_key else c.subject() for c in _readable_versions(contract)]


def _readable_versions(contract: type[Event]) -> list[type[Event]]:
    cls = require_contract(contract)
    found, version = [cls], cls.event_version
    while (cls.event_type, version - 1) in _UPCASTERS:  # each upcaster is exactly one step up
        version -= 1
        found.insert(0, event_types()[(cls.event_type, version)])
    return found
