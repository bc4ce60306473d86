"""An AsyncAPI 3.0 document of the contracts: channels = subjects, messages = contracts.

>>> from buslib.contracts.asyncapi import asyncapi_document
>>> from buslib.contracts.examples import OrderCreatedV1
>>> doc = asyncapi_document([OrderCreatedV1])
>>> doc["asyncapi"], doc["channels"]["orders.created.v1"]["address"]
('3.0.0', 'orders.created.v1')

Each contract gets a channel (its subject), a message (payload = the contract's JSON Schema,
headers = the CloudEvents headers the codec sends) and two operations: ``send`` (what a
producer does) and ``receive`` (what a consumer does). Nested models land once in
``components.schemas``. The CLI: ``buslib contracts asyncapi --out asyncapi.json``.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from buslib.contracts.codec import CONTENT_TYPE
from buslib.contracts.schema import dataschema
from buslib.contracts.versions import downcast_targets, require_contract
from buslib.errors import ContractError
from buslib.events import Event

__all__ = ["asyncapi_document"]

_HEADERS = {
    "type": "object",
    "description": "CloudEvents 1.0 attributes in binary content mode, plus JetStream's dedup id.",
    "properties": {
        "ce-specversion": {"type": "string", "const": "1.0"},
        "ce-id": {
            "type": "string",
            "description": "The event's id (the same in every version of a dual-published event).",
        },
        "ce-source": {"type": "string", "description": "The publishing service."},
        "ce-type": {"type": "string", "description": "The event type, e.g. orders.created."},
        "ce-datacontenttype": {"type": "string", "const": "application/json"},
        "ce-dataschema": {"type": "string", "description": "urn:buslib:schema:<type>:<major version>"},
        "Bus-Event-Version": {"type": "string", "description": "The contract's major version."},
        "Nats-Msg-Id": {"type": "string", "description": "JetStream deduplication id."},
        "Bus-Downcast-From": {
            "type": "string",
            "description": "On a dual-published older copy only: the major version it was converted from.",
        },
        "traceparent": {"type": "string", "description": "W3C trace context."},
    },
    "required": ["ce-specversion", "ce-id", "ce-source", "ce-type", "Bus-Event-Version"],
}


def _key(cls: type[Event]) -> str:
    return cls.subject().replace(".", "_")


def asyncapi_document(
    contracts: list[type[Event]],
    *,
    title: str = "JetStream Bus Lab events",
    version: str = "1.0.0",
    server: str = "127.0.0.1:4222",
) -> dict[str, Any]:
    """Build an AsyncAPI 3.0 document describing the given contracts.

    Args:
        contracts: the event classes to describe.
        title: ``info.title``.
        version: ``info.version`` (the API's version, not a contract's).
        server: the NATS ``host:port`` listed under ``servers``.

    Returns:
        The document as a dict (``json.dumps`` it to write a file).

    Raises:
        ContractError: an entry is not a contract, or has no JSON Schema.
    """
    classes = [require_contract(cls) for cls in contracts]
    try:
        refs, top = models_json_schema(
            [(cls, "validation") for cls in classes], ref_template="#/components/schemas/{model}"
        )
    except Exception as err:  # pydantic cannot describe a field type
        raise ContractError(f"Cannot describe the contracts as JSON Schema: {err}") from None
    schemas = dict(top.get("$defs", {}))
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for cls in classes:
        key, subject = _key(cls), cls.subject()
        summary = (
            (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else f"{cls.event_type} v{cls.event_version}"
        )
        messages[key] = {
            "name": cls.__name__,
            "title": f"{cls.event_type} v{cls.event_version}",
            "summary": summary,
            "contentType": CONTENT_TYPE,
            "headers": {"$ref": "#/components/schemas/CloudEventHeaders"},
            "payload": refs[(cls, "validation")],  # pydantic disambiguates equal class names
            "x-dataschema": dataschema(cls),
        }
        channels[subject] = {
            "address": subject,
            "description": f"{cls.event_type} events, major version {cls.event_version}.",
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        }
        if older := downcast_targets(cls):
            channels[subject]["x-dual-publishes-to"] = [c.subject() for c in older]
        for action in ("send", "receive"):
            operations[f"{action}_{key}"] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{subject}"},
                "messages": [{"$ref": f"#/channels/{subject}/messages/{key}"}],
            }
    schemas["CloudEventHeaders"] = _HEADERS
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Events on NATS JetStream. Subjects are <type>.v<major version>; see docs/contracts.md.",
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {"local": {"host": server, "protocol": "nats", "description": "A NATS server with JetStream."}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
