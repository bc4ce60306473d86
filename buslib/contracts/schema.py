"""The JSON Schema of a contract, its URN, and one canonical text form of a schema.

>>> from buslib.contracts.examples import OrderCreatedV2
>>> json_schema(OrderCreatedV2)["$id"]
'urn:buslib:schema:orders.created:2'
>>> parse_dataschema("urn:buslib:schema:orders.created:2")
('orders.created', 2)

Every message carries its contract's URN as the CloudEvents ``ce-dataschema`` header;
:class:`buslib.contracts.registry.SchemaRegistry` resolves it, and the snapshot in
``contracts/`` keeps each schema as canonical JSON so a diff shows real changes only.
"""

from __future__ import annotations

import json
from typing import Any

from buslib.contracts.versions import require_contract
from buslib.errors import ContractError
from buslib.events import Event

__all__ = ["SCHEMA_DIALECT", "canonical_json", "dataschema", "json_schema", "parse_dataschema", "version_number"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_URN_PREFIX = "urn:buslib:schema:"


def dataschema(contract: type[Event]) -> str:
    """The contract's schema URI, sent as the CloudEvents ``ce-dataschema`` header.

    A URN names the contract (type + major version), not a server: the same event means the
    same thing wherever it is stored. :class:`buslib.contracts.registry.SchemaRegistry` resolves it.
    """
    cls = require_contract(contract)
    return f"{_URN_PREFIX}{cls.event_type}:{cls.event_version}"


def version_number(raw: object) -> int | None:
    """A major version as a header, URN or payload field gives it; None if it is not a whole number.

    A header or URN gives ASCII digits (``"2"``), a payload a JSON integer (``2``); nothing
    else is read as a version: not ``" 2"``, ``"+2"``, ``"²"``, ``"٢"``, ``2.5`` or ``true``,
    which Python's ``int()`` or ``str.isdigit()`` would take. Any language can write it the same way.
    """
    if isinstance(raw, str):
        if not (raw.isascii() and raw.isdigit()):
            return None
        try:
            return int(raw)
        except ValueError:  # more digits than int() converts (4,300): no contract has such a version
            return None
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None


def parse_dataschema(uri: str) -> tuple[str, int]:
    """Split a ``ce-dataschema`` URN into (type name, major version).

    Raises:
        ContractError: the URI is not a buslib schema URN.
    """
    name, _, text = uri.removeprefix(_URN_PREFIX).rpartition(":")
    version = version_number(text)
    if not uri.startswith(_URN_PREFIX) or not name or version is None:
        raise ContractError(
            f"{uri!r} is not a buslib schema URN. Expected the form 'urn:buslib:schema:orders.created:1'."
        )
    return name, version


def json_schema(contract: type[Event]) -> dict[str, Any]:
    """The contract's JSON Schema (draft 2020-12), with ``$id`` and the type and version.

    Raises:
        ContractError: not a contract, or a field type has no JSON Schema (e.g. a custom class).
    """
    cls = require_contract(contract)
    try:
        schema = cls.model_json_schema()
    except Exception as err:  # pydantic's PydanticInvalidForJsonSchema and friends
        raise ContractError(
            f"{cls.__name__} has no JSON Schema: {err}. Contract fields must be JSON types "
            "(str, int, float, bool, lists, dicts, enums, datetimes, nested pydantic models)."
        ) from None
    head = {"$schema": SCHEMA_DIALECT, "$id": dataschema(cls)}
    tail = {"x-event-type": cls.event_type, "x-event-version": cls.event_version}
    return {**head, **schema, **tail}


def canonical_json(schema: dict[str, Any]) -> str:
    """One text per schema (sorted keys, two-space indent, a final newline): compare and store this."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
