"""The rules of compatibility: walk a reader's and a writer's JSON Schemas side by side.

>>> walk = Walk(to_schema(OrderV2, "new"), to_schema(OrderV1, "old"), reader_is_newer=True)   # doctest: +SKIP
>>> [p.rule for p in walk.compare(walk.reader, walk.writer, "")]                             # doctest: +SKIP
['required-field-added']

Each :class:`Incompatibility` names the field (a path such as ``items[].sku``), the rule
broken and what goes wrong for the reader; docs/compatibility.md lists every rule.
:mod:`buslib.contracts.compat` turns walks into verdicts for each mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from buslib.errors import ContractError

__all__ = ["Incompatibility", "Schema", "Walk", "to_schema"]

Schema = dict[str, Any]
_IGNORED = {"title", "description", "default", "examples"}
_PYTHON_KINDS = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string"}


@dataclass(frozen=True)
class Incompatibility:
    """One reason why a reader cannot read what a writer writes.

    Attributes:
        path: where, as a field path like ``customer.address.city`` or ``items[].sku``
            (``[]`` is a list item, ``{}`` a dict value, ``""`` the event itself).
        rule: a short stable identifier, e.g. ``required-field-added``.
        message: a sentence saying what goes wrong and what to do.
        direction: which check found it, e.g. ``"new reads old"`` (set by :func:`check`).
    """

    path: str
    rule: str
    message: str
    direction: str = ""

    def __str__(self) -> str:
        where = f"[{self.direction}] " if self.direction else ""
        return f"{where}{self.path or '(event)'}: {self.rule}: {self.message}"


def _problem(path: str, rule: str, message: str) -> Incompatibility:
    return Incompatibility(path, rule, message[0].upper() + message[1:])


def to_schema(contract: Any, name: str) -> Schema:
    if isinstance(contract, type) and issubclass(contract, BaseModel):
        return contract.model_json_schema()
    expected = (
        "Expected a pydantic model class (class OrderPlaced(BaseModel): ...) "
        "or its JSON Schema as a dict (OrderPlaced.model_json_schema())."
    )
    if isinstance(contract, dict):
        if _kind(_deref(contract, contract)) == "object":
            return contract
        keys = ", ".join(map(repr, list(contract)[:6])) or "none"
        raise ContractError(
            f"The {name} contract is a dict but not the JSON Schema of an object (its keys: {keys}). "
            f"{expected} An object schema has 'type': 'object' and 'properties'."
        )
    if isinstance(contract, BaseModel):
        cls = type(contract).__name__
        got = f"an instance of {cls}; pass the class itself ({cls}, not {cls}(...))"
    elif isinstance(contract, type):
        got = f"the class {contract.__name__}, which is not a pydantic BaseModel subclass"
    elif isinstance(contract, str):
        got = "a str; if it is JSON text, parse it first with json.loads"
    else:
        got = f"{type(contract).__name__} {contract!r:.60}"
    raise ContractError(f"The {name} contract is {got}. {expected}")


def _deref(node: Schema, root: Schema) -> Schema:
    """Follow ``$ref`` (e.g. ``#/$defs/Address``) to its target; sibling keys such as ``default`` are kept."""
    for _ in range(50):
        ref = node.get("$ref")
        if ref is None:
            return node
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise ContractError(f"Cannot follow $ref {ref!r}: only local references like '#/$defs/Address' work.")
        target: Any = root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                known = ", ".join(sorted(root.get("$defs", {}))) or "none"
                raise ContractError(f"$ref {ref!r} points nowhere in the schema (names in $defs: {known}).")
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    raise ContractError("The schema's $ref entries point at each other in a loop without ever reaching a type.")


def _values(node: Schema) -> list[Any] | None:
    """The allowed values of an ``enum`` or ``const`` (Enum, Literal) node, else None."""
    if "const" in node:
        return [node["const"]]
    return list(node["enum"]) if "enum" in node else None


def _value_kind(value: Any) -> str:
    return _PYTHON_KINDS.get(type(value)) or ("array" if isinstance(value, list) else "object")


def _kind(node: Schema) -> str:
    """The JSON type of a single (non-union) node: ``integer``, ``object``, ... or ``any``."""
    if isinstance(node.get("type"), str):
        return node["type"]
    values = _values(node)
    if values:
        kinds = {_value_kind(v) for v in values}
        return kinds.pop() if len(kinds) == 1 else "any"
    if "properties" in node or "additionalProperties" in node:
        return "object"
    return "array" if "items" in node else "any"


def _kinds_match(writer_kind: str, reader_kind: str) -> bool:
    return writer_kind == reader_kind or {writer_kind, reader_kind} == {"integer", "number"}


def _strip(node: Any) -> Any:
    """The node without titles, descriptions and defaults (to spot a renamed field)."""
    if isinstance(node, dict):
        return {k: _strip_all(v) if k == "properties" else _strip(v) for k, v in node.items() if k not in _IGNORED}
    return [_strip(item) for item in node] if isinstance(node, list) else node


def _strip_all(properties: Schema) -> Schema:
    return {name: _strip(schema) for name, schema in properties.items()}  # a field may be called "title"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class Walk:
    """One reader-reads-writer comparison: both schemas, the names used in messages, recursion guard."""

    def __init__(self, reader: Schema, writer: Schema, *, reader_is_newer: bool, names: tuple[str, str] | None = None):
        self.reader, self.writer, self.reader_is_newer = reader, writer, reader_is_newer
        r_label, w_label = names or ("reader", "writer")
        self.direction = f"{r_label} reads {w_label}"
        names_in_messages = {
            "new": "the new schema",
            "old": "the old schema",
            "reader": "the reader",
            "writer": "the writer",
        }
        self.r_name, self.w_name = (names_in_messages.get(label, f"schema {label}") for label in (r_label, w_label))
        self.active: set[tuple[Any, Any]] = set()
        self.warnings: list[Incompatibility] = []

    def _rule(self, if_reader_is_newer: str, if_writer_is_newer: str) -> str:
        return if_reader_is_newer if self.reader_is_newer else if_writer_is_newer

    def _branches(self, node: Schema, root: Schema) -> list[Schema]:
        """Flatten ``anyOf``/``oneOf`` and ``type: [..]`` lists into single-type branches."""
        target = _deref(node, root)
        for key in ("anyOf", "oneOf"):
            if key in target:
                return [branch for option in target[key] for branch in self._branches(option, root)]
        if len(target.get("allOf", [])) == 1:
            return self._branches({**target["allOf"][0], **{k: v for k, v in target.items() if k != "allOf"}}, root)
        if isinstance(target.get("type"), list):
            return [{**target, "type": t} for t in target["type"]]
        return [node]  # keep an unresolved $ref: compare_one uses it to stop on recursive models

    def compare(self, reader: Schema, writer: Schema, path: str) -> list[Incompatibility]:
        """Problems reading data that matches ``writer`` with ``reader``; unions branch by branch."""
        r_branches, w_branches = self._branches(reader, self.reader), self._branches(writer, self.writer)
        if len(r_branches) == 1 and len(w_branches) == 1:
            return self._compare_one(r_branches[0], w_branches[0], path)
        problems: list[Incompatibility] = []
        r_kinds = [_kind(_deref(r, self.reader)) for r in r_branches]
        for w in w_branches:  # every writer branch must be readable by some reader branch
            attempts = [self._compare_one(r, w, path) for r in r_branches]
            if any(not attempt for attempt in attempts):
                continue
            w_kind = _kind(_deref(w, self.writer))
            similar: list[list[Incompatibility]] = [
                a for a, r_kind in zip(attempts, r_kinds, strict=True) if _kinds_match(w_kind, r_kind)
            ]
            if similar:
                fewest: list[Incompatibility] = min(similar, key=len)
                problems += fewest
            elif w_kind == "null":
                problems += attempts[0]  # the nullable rule
            else:
                where = path or "(event)"
                accepted = " or ".join(r_kinds)
                msg = f"{self.w_name} may write a {w_kind} for '{where}', but {self.r_name} accepts only {accepted}."
                problems.append(_problem(path, "type-changed", msg))
        return problems

    def _compare_one(self, reader: Schema, writer: Schema, path: str) -> list[Incompatibility]:
        key = (reader.get("$ref"), writer.get("$ref"))
        if key == (None, None):
            return self._compare_resolved(reader, writer, path)
        if key in self.active:  # a recursive model met itself again: already being compared
            return []
        self.active.add(key)
        try:
            return self._compare_resolved(_deref(reader, self.reader), _deref(writer, self.writer), path)
        finally:
            self.active.discard(key)

    def _compare_resolved(self, r: Schema, w: Schema, path: str) -> list[Incompatibility]:
        r_kind, w_kind, r_values, w_values = _kind(r), _kind(w), _values(r), _values(w)
        where, reader, writer = path or "(event)", self.r_name, self.w_name
        if r_values is None and r_kind == "any":
            return []
        if w_values is not None:
            if r_values is not None:
                unknown = [v for v in w_values if v not in r_values]
                rule = self._rule("enum-value-removed", "enum-value-added")
                msg = f"{writer} may write {unknown} for '{where}', unknown to {reader} (it knows {r_values})."
                return [_problem(path, rule, msg)] if unknown else []
            bad = [v for v in w_values if not _kinds_match(_value_kind(v), r_kind)]
            msg = f"{writer} may write {bad} for '{where}', but {reader} expects a {r_kind}."
            return [_problem(path, "type-changed", msg)] if bad else []
        if w_kind == "null":
            if r_kind == "null":
                return []
            rule = self._rule("nullable-removed", "nullable-added")
            msg = f"{writer} may write null for '{where}', but {reader} does not accept null there (make it Optional)."
            return [_problem(path, rule, msg)]
        narrowed = self._rule("type-narrowed", "type-widened")
        if r_values is not None and _kinds_match(w_kind, r_kind):
            msg = f"{writer} may write any {w_kind} for '{where}', but {reader} accepts only {r_values}."
            return [_problem(path, narrowed, msg)]
        if w_kind == "any":
            msg = f"{writer} may write any value for '{where}', but {reader} accepts only a {r_kind}."
            return [_problem(path, narrowed, msg)]
        if not _kinds_match(w_kind, r_kind) or r_values is not None:
            msg = f"{writer} writes a {w_kind} for '{where}', but {reader} expects a {r_kind}."
            return [_problem(path, "type-changed", msg)]
        if (w_kind, r_kind) == ("number", "integer"):
            msg = f"{writer} may write a number like 2.5 for '{where}', but {reader} accepts only an integer."
            return [_problem(path, narrowed, msg)]
        if w_kind == "string" and r.get("format") not in (None, w.get("format")):
            msg = f"{writer} may write any string for '{where}', but {reader} expects format {r['format']!r}."
            return [_problem(path, narrowed, msg)]
        if w_kind == "array":
            return self.compare(r.get("items", {}), w.get("items", {}), f"{path}[]")
        if w_kind == "object":
            return self._compare_objects(r, w, path)
        return []

    def _compare_objects(self, r: Schema, w: Schema, path: str) -> list[Incompatibility]:
        r_props, w_props = r.get("properties", {}), w.get("properties", {})
        r_needs = {n for n in r.get("required", []) if "default" not in r_props.get(n, {})}
        w_always = set(w.get("required", []))
        reader, writer = self.r_name, self.w_name
        problems: list[Incompatibility] = []
        for name, r_field in r_props.items():
            where = _join(path, name)
            if name in w_props:
                if name in r_needs and name not in w_always:
                    msg = f"{reader} requires '{where}' (no default), but {writer} lets events leave it out. Add a default."
                    problems.append(_problem(where, "field-may-be-missing", msg))
                problems += self.compare(r_field, w_props[name], where)
            elif name in r_needs:
                rule = self._rule("required-field-added", "field-removed-without-default")
                fix = self._rule("Give it a default.", "Keep writing it until no reader requires it.")
                msg = f"{reader} requires '{where}' (no default), but events written with {writer} never have it. {fix}"
                problems.append(_problem(where, rule, msg))
        r_extra = r.get("additionalProperties", True)
        for name, w_field in w_props.items():
            where = _join(path, name)
            if name in r_props:
                continue
            if r_extra is False:
                msg = f"{writer} writes '{where}', unknown to {reader}, which rejects unknown fields (extra='forbid')."
                problems.append(_problem(where, "unknown-field-rejected", msg))
            elif isinstance(r_extra, dict):
                problems += self.compare(r_extra, w_field, where)
        w_extra = w.get("additionalProperties")
        if isinstance(w_extra, dict) and r_extra is False:
            msg = f"{writer} may write any key in '{path or '(event)'}', but {reader} forbids unknown fields."
            problems.append(_problem(f"{path}{{}}", "unknown-field-rejected", msg))
        elif isinstance(w_extra, dict) and isinstance(r_extra, dict):
            problems += self.compare(r_extra, w_extra, f"{path}{{}}")
        self._spot_renames(r_props, w_props, path)
        return problems

    def _spot_renames(self, r_props: Schema, w_props: Schema, path: str) -> None:
        new_props, old_props = (r_props, w_props) if self.reader_is_newer else (w_props, r_props)
        added = [name for name in new_props if name not in old_props]
        for old_name in (name for name in old_props if name not in new_props):
            for new_name in added:
                if _strip(old_props[old_name]) == _strip(new_props[new_name]):
                    old_where, new_where = _join(path, old_name), _join(path, new_name)
                    msg = (
                        f"'{old_where}' disappeared and '{new_where}' (same type) appeared. If it is a rename, tolerant "
                        f"readers silently drop the value: keep the old field alongside the new one for a while."
                    )
                    warning = _problem(old_where, "possible-rename", msg)
                    if warning not in self.warnings:
                        self.warnings.append(warning)
                    break
