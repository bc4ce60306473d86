"""Schema compatibility: can producers and consumers on different contract versions still talk?

>>> from pydantic import BaseModel
>>> from buslib.contracts.compat import Compatibility, check, compatible_modes
>>> class OrderV1(BaseModel):
...     order_id: str
>>> class OrderV2(BaseModel):
...     order_id: str
...     email: str                      # new and required: old events do not have it
>>> report = check(OrderV2, OrderV1, mode=Compatibility.BACKWARD)
>>> report.compatible, report.rules
(False, ['required-field-added'])
>>> sorted(mode.value for mode in compatible_modes(OrderV2, OrderV1))
['FORWARD', 'FORWARD_TRANSITIVE', 'NONE']

Contracts are pydantic models or their JSON Schemas (``Model.model_json_schema()``). The
modes mean what they mean in Confluent Schema Registry:

- BACKWARD: consumers on the new schema can read events written with the last one.
- FORWARD: consumers still on the last schema can read events written with the new one.
- FULL: both. NONE: no check. ``*_TRANSITIVE``: against every earlier version, not just the last.

The core is :func:`read_problems`: "can reader schema R read the JSON written with writer
schema W?". BACKWARD asks it with R = new, W = old; FORWARD with R = old, W = new. The
walk over the two schemas, rule by rule, is :mod:`buslib.contracts.schema_walk`.

Open content model (a decision, unlike Confluent's JSON Schema rules): a field the writer
sends and the reader does not declare is fine for a tolerant reader (pydantic's default
``extra="ignore"``, no ``additionalProperties: false``) and ``unknown-field-rejected`` for a
strict one (``extra="forbid"``), as pydantic readers really behave. The catch: a rename is a
remove plus an add, which a tolerant reader "reads" by dropping the value. FORWARD and FULL
catch it when the old field was required; reports also warn (``possible-rename``).

Rule names describe the change from old to new (``enum-value-added`` breaks FORWARD,
``enum-value-removed`` breaks BACKWARD). A field missing from ``required`` may be absent.
Titles, descriptions, default values and constraints (``ge``, ``max_length``) are ignored.
See docs/compatibility.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from buslib.contracts.schema_walk import Incompatibility, Walk, to_schema
from buslib.errors import ContractError

__all__ = ["Compatibility", "CompatibilityReport", "Incompatibility", "check", "compatible_modes", "read_problems"]


class Compatibility(str, Enum):
    """A compatibility mode, with Confluent Schema Registry's names and meanings."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"


@dataclass
class CompatibilityReport:
    """The verdict of :func:`check`: ``compatible`` is True when there are no problems.

    ``warnings`` (such as ``possible-rename``) never change the verdict.
    """

    mode: Compatibility
    problems: list[Incompatibility] = field(default_factory=list)
    warnings: list[Incompatibility] = field(default_factory=list)

    @property
    def compatible(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def rules(self) -> list[str]:
        """The distinct rule identifiers of the problems, sorted."""
        return sorted({problem.rule for problem in self.problems})

    def __str__(self) -> str:
        count = len(self.problems)
        verdict = "compatible" if self.compatible else f"NOT compatible ({count} problem{'s' * (count != 1)})"
        lines = [f"{self.mode.value}: {verdict}"]
        lines += [f"  - {problem}" for problem in self.problems]
        if self.warnings:
            lines.append("Warnings (they do not change the verdict):")
            lines += [f"  - {warning}" for warning in self.warnings]
        return "\n".join(lines)


def read_problems(reader: Any, writer: Any, *, reader_is_newer: bool = True) -> list[Incompatibility]:
    """List why the reader contract cannot read events written with the writer contract.

    Args:
        reader: the consumer's contract (pydantic model class or its JSON Schema).
        writer: the producer's contract (pydantic model class or its JSON Schema).
        reader_is_newer: only picks rule names, which describe the change from old to new
            (e.g. ``required-field-added`` if True, ``field-removed-without-default`` if False).

    Returns:
        The problems found; an empty list means the reader can read everything the writer writes.

    Raises:
        ContractError: a contract is neither a pydantic model class nor an object JSON Schema.
    """
    walk = Walk(to_schema(reader, "reader"), to_schema(writer, "writer"), reader_is_newer=reader_is_newer)
    return walk.compare(walk.reader, walk.writer, "")


def check(new: Any, old_or_history: Any, mode: Compatibility | str = Compatibility.BACKWARD) -> CompatibilityReport:
    """Check a new contract version against the last one, or against a whole history.

    Args:
        new: the proposed contract (pydantic model class or its JSON Schema).
        old_or_history: the previous contract, or a list of all earlier ones, oldest first.
            Non-transitive modes use only the last; ``*_TRANSITIVE`` modes use every one.
        mode: a :class:`Compatibility` or its name, e.g. ``"FULL"``.

    Returns:
        A :class:`CompatibilityReport`; ``str(report)`` is a readable multi-line verdict.

    Raises:
        ContractError: a contract is not a model or schema, or the mode is unknown.
    """
    mode = parse_mode(mode)
    new_schema = to_schema(new, "new")
    if isinstance(old_or_history, (list, tuple)):
        olds = [(f"v{i}", to_schema(old, f"history[{i - 1}]")) for i, old in enumerate(old_or_history, 1)]
    else:
        olds = [("old", to_schema(old_or_history, "old"))]
    report = CompatibilityReport(mode)
    if mode is Compatibility.NONE:
        return report
    if not mode.value.endswith("_TRANSITIVE"):
        olds = olds[-1:]  # an empty history means a first version: always compatible
    for label, old in olds:
        walks = []
        if mode.value.startswith(("BACKWARD", "FULL")):
            walks.append(Walk(new_schema, old, reader_is_newer=True, names=("new", label)))
        if mode.value.startswith(("FORWARD", "FULL")):
            walks.append(Walk(old, new_schema, reader_is_newer=False, names=(label, "new")))
        for walk in walks:
            found = walk.compare(walk.reader, walk.writer, "")
            report.problems += [replace(p, direction=walk.direction) for p in found]
            report.warnings += [w for w in walk.warnings if w not in report.warnings]
    return report


def compatible_modes(new: Any, old_or_history: Any) -> set[Compatibility]:
    """The set of modes under which ``new`` may follow ``old_or_history``.

    Args:
        new: the proposed contract.
        old_or_history: the previous contract, or all earlier ones, oldest first.

    Returns:
        Every passing mode (NONE always passes), e.g. ``{BACKWARD, BACKWARD_TRANSITIVE, NONE}``.

    Raises:
        ContractError: a contract is neither a pydantic model class nor an object JSON Schema.
    """
    return {mode for mode in Compatibility if check(new, old_or_history, mode).compatible}


def parse_mode(mode: Compatibility | str, where: str | None = None) -> Compatibility:
    """A compatibility mode from its name (any case) or itself; a clear error for an unknown one.

    ``where`` names the setting in the error (a config file's key, a CLI option).
    """
    try:
        return Compatibility(mode.upper() if isinstance(mode, str) else mode)
    except ValueError:
        names = ", ".join(m.value for m in Compatibility)
        problem = f"unknown compatibility mode {mode!r}. Use one of: {names}."
        raise ContractError(f"{where}: {problem}" if where else problem[0].upper() + problem[1:]) from None
