"""Event contracts: versions and converters, JSON Schemas, the wire codec, compatibility.

>>> from buslib.contracts import upcaster, subjects_readable_by, check, Compatibility
>>> from buslib.contracts.examples import OrderCreatedV1, OrderCreatedV2
>>> subjects_readable_by(OrderCreatedV2)
['orders.created.v1', 'orders.created.v2']
>>> check(OrderCreatedV2, OrderCreatedV1, Compatibility.BACKWARD).compatible
True

Modules, from the contract outwards:

- ``versions``: which contracts exist, upcasters and down-converters between versions;
- ``schema``: a contract's JSON Schema and its URN (``ce-dataschema``);
- ``codec``: events to NATS messages and back (JSON payload, CloudEvents headers, upcasting);
- ``compat``: compatibility checks between schema versions (BACKWARD, FORWARD, FULL, transitive);
- ``snapshot``: the CI gate, the committed snapshot in ``contracts/`` and the check against it;
- ``registry``: a schema registry on NATS KV that refuses incompatible revisions;
- ``asyncapi``: an AsyncAPI 3.0 document of the contracts;
- ``examples``: the kit's example contracts (the seed article's OrderCreated, v1 and v2).
"""

from buslib.contracts.compat import Compatibility, CompatibilityReport, check, compatible_modes
from buslib.contracts.registry import SchemaRegistry
from buslib.contracts.schema import SCHEMA_DIALECT, dataschema, json_schema, parse_dataschema
from buslib.contracts.versions import (
    contracts,
    convert,
    downcast,
    downcast_targets,
    filters_readable_by,
    import_contract_modules,
    require_contract,
    subjects_readable_by,
    upcaster,
    versions_of,
)
from buslib.errors import IncompatibleContractError

__all__ = [
    "SCHEMA_DIALECT",
    "Compatibility",
    "CompatibilityReport",
    "IncompatibleContractError",
    "SchemaRegistry",
    "check",
    "compatible_modes",
    "contracts",
    "convert",
    "dataschema",
    "downcast",
    "downcast_targets",
    "filters_readable_by",
    "import_contract_modules",
    "json_schema",
    "parse_dataschema",
    "require_contract",
    "subjects_readable_by",
    "upcaster",
    "versions_of",
]
