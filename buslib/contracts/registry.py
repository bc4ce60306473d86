"""A schema registry on NATS KV: every revision of every contract, checked before it lands.

>>> from buslib.contracts import SchemaRegistry
>>> registry = await SchemaRegistry.open(js)                        # doctest: +SKIP
>>> entry = await registry.register(OrderCreatedV1)                 # doctest: +SKIP
>>> entry.subject, entry.revision                                   # doctest: +SKIP
('orders.created.v1', 1)
>>> schema = await registry.schema_for(msg.headers)                 # doctest: +SKIP

Like Confluent Schema Registry, but in a KV bucket of the server you already run. A
*subject* is a contract's type and major version (``orders.created.v1``); its schema can
evolve in revisions (1, 2, ...) as long as each new revision is compatible under the
subject's mode (default BACKWARD). Keys in the bucket (default ``schemas``):

- ``schema.<subject>.<revision>``: a JSON document ``{"subject", "revision", "schema"}``;
- ``mode.<subject>``: the subject's compatibility mode, when set.

Registering an identical schema again returns the existing revision (idempotent); an
incompatible one raises :class:`~buslib.contracts.IncompatibleContractError` with the report.
A consumer finds the schema of a message from its ``ce-dataschema`` header.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError

from buslib.contracts.compat import Compatibility, check, parse_mode
from buslib.contracts.schema import canonical_json, json_schema, parse_dataschema, version_number
from buslib.contracts.versions import require_contract
from buslib.errors import ContractError, IncompatibleContractError

__all__ = ["RegisteredSchema", "SchemaRegistry", "DEFAULT_BUCKET"]

DEFAULT_BUCKET = "schemas"


@dataclass(frozen=True)
class RegisteredSchema:
    """One stored revision of a subject's schema.

    Attributes:
        subject: ``<type>.v<major>``, e.g. ``orders.created.v1``.
        revision: 1, 2, ... within the subject (a compatible minor change adds one).
        schema: the JSON Schema.
        created: True when this call stored it, False when it was already there.
    """

    subject: str
    revision: int
    schema: dict[str, Any]
    created: bool = False


def _subject(event_type: str, version: int) -> str:
    return f"{event_type}.v{version}"


class SchemaRegistry:
    """Schemas per subject, with compatibility checks, stored in a JetStream KV bucket.

    Open with :meth:`open`; every method is a coroutine.
    """

    def __init__(self, kv: Any, *, default_mode: Compatibility = Compatibility.BACKWARD):
        self.kv = kv
        self.default_mode = Compatibility(default_mode)

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        *,
        bucket: str = DEFAULT_BUCKET,
        create: bool = True,
        default_mode: str | Compatibility = "BACKWARD",
    ) -> SchemaRegistry:
        """Open the registry's bucket, creating it when missing.

        Args:
            js: a JetStream context (``nc.jetstream()``).
            bucket: the KV bucket name.
            create: create the bucket if it does not exist (else raise).
            default_mode: the mode of subjects that have none set.

        Raises:
            ContractError: the bucket does not exist and ``create`` is False, or the mode is unknown.
        """
        mode = parse_mode(default_mode)
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            if not create:
                raise ContractError(
                    f"No schema registry bucket {bucket!r} on this server. Open it with create=True."
                ) from None
            kv = await js.create_key_value(bucket=bucket, history=1, description="buslib schema registry")
        return cls(kv, default_mode=mode)

    async def mode(self, event_type: str, version: int) -> Compatibility:
        """The compatibility mode of a subject (its own, else the registry's default)."""
        try:
            entry = await self.kv.get(f"mode.{_subject(event_type, version)}")
        except KeyNotFoundError:
            return self.default_mode
        return parse_mode(entry.value.decode())

    async def set_mode(self, event_type: str, version: int, mode: str | Compatibility) -> None:
        """Set a subject's compatibility mode (checked at the next registration).

        Raises:
            ContractError: unknown mode.
        """
        await self.kv.put(f"mode.{_subject(event_type, version)}", parse_mode(mode).value.encode())

    async def history(self, event_type: str, version: int) -> list[RegisteredSchema]:
        """Every revision of a subject, oldest first (empty if none)."""
        subject, found = _subject(event_type, version), list[RegisteredSchema]()
        while True:
            try:
                entry = await self.kv.get(f"schema.{subject}.{len(found) + 1}")
            except KeyNotFoundError:
                return found
            found.append(self._entry(entry.value, subject))

    def _entry(self, raw: bytes, subject: str) -> RegisteredSchema:
        try:
            doc = json.loads(raw)
            return RegisteredSchema(doc["subject"], int(doc["revision"]), doc["schema"])
        except (ValueError, KeyError, TypeError) as err:
            raise ContractError(
                f"The registry's entry for {subject} is corrupted ({err}). Delete and re-register it."
            ) from None

    async def latest(self, event_type: str, version: int) -> RegisteredSchema | None:
        """The newest revision of a subject, or None when nothing is registered."""
        revisions = await self.history(event_type, version)
        return revisions[-1] if revisions else None

    async def register(
        self, contract: Any, *, event_type: str | None = None, version: int | None = None
    ) -> RegisteredSchema:
        """Register a contract's schema as the next revision of its subject.

        Args:
            contract: an Event class, or a JSON Schema dict (then give ``event_type`` and
                ``version``, or include ``x-event-type``/``x-event-version`` in it).
            event_type: the type name, for a dict schema.
            version: the major version, for a dict schema.

        Returns:
            The stored revision (``created=False`` when an identical schema was already there).

        Raises:
            IncompatibleContractError: the schema breaks the subject's mode; ``.reports`` has details.
            ContractError: not a contract or schema, or its type/version are unknown.
        """
        if isinstance(contract, dict):
            schema = contract
            event_type = event_type or schema.get("x-event-type")
            version = version or schema.get("x-event-version")
            if not isinstance(event_type, str) or not isinstance(version, int):
                raise ContractError(
                    "A schema dict needs its event type and major version: pass event_type= and version=, "
                    "or register the Event class itself."
                )
            check(schema, [], Compatibility.BACKWARD)  # raises ContractError when it is no object schema
        else:
            cls = require_contract(contract)
            schema, event_type, version = json_schema(cls), cls.event_type, cls.event_version
        subject = _subject(event_type, version)
        for _ in range(5):  # another registrant may take the same revision number: re-read and retry
            revisions = await self.history(event_type, version)
            for known in revisions:
                if canonical_json(known.schema) == canonical_json(schema):
                    return known
            if revisions:
                mode = await self.mode(event_type, version)
                olds = [r.schema for r in revisions]
                report = check(schema, olds if len(olds) > 1 else olds[0], mode)
                if not report.compatible:
                    raise IncompatibleContractError(
                        f"The registry refuses this schema for {subject}: it is incompatible with revision "
                        f"{revisions[-1].revision} under {mode.value}.\n{report}\nMake the change compatible, or "
                        f"publish it as a new major version (v{version + 1}) on its own subject.",
                        {subject: report},
                    )
            revision = len(revisions) + 1
            doc = {"subject": subject, "revision": revision, "schema": schema}
            try:
                await self.kv.create(f"schema.{subject}.{revision}", json.dumps(doc).encode())
            except KeyWrongLastSequenceError:
                continue
            return RegisteredSchema(subject, revision, schema, created=True)
        raise ContractError(
            f"Could not register {subject}: other registrations kept taking the next revision. Try again."
        )

    async def schema_for(self, headers: Mapping[str, str] | None) -> RegisteredSchema:
        """The registered schema of a message, from its ``ce-dataschema`` header.

        Falls back to ``ce-type`` + ``Bus-Event-Version``. Returns the subject's newest
        revision (the header names the major version, not the revision).

        Raises:
            ContractError: the headers do not name a contract, or it is not registered.
        """
        lowered = {key.lower(): value for key, value in (headers or {}).items()}
        if "ce-dataschema" in lowered:
            event_type, version = parse_dataschema(lowered["ce-dataschema"])
        elif "ce-type" in lowered and (by_header := version_number(lowered.get("bus-event-version"))) is not None:
            event_type, version = lowered["ce-type"], by_header
        else:
            raise ContractError(
                "The message names no schema: it has neither a ce-dataschema header nor ce-type + Bus-Event-Version. "
                "Publish with buslib (codec.encode) to get them."
            )
        entry = await self.latest(event_type, version)
        if entry is None:
            raise ContractError(
                f"No schema registered for {_subject(event_type, version)}. Register the contract first."
            )
        return entry

    async def subjects(self) -> list[str]:
        """Every subject with at least one registered revision, sorted."""
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return []
        return sorted({key.removeprefix("schema.").rsplit(".", 1)[0] for key in keys if key.startswith("schema.")})
