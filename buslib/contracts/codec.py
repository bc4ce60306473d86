"""How events become NATS messages and back: payload, headers, versions, decoding.

>>> from buslib import Event
>>> from buslib.contracts.codec import encode
>>> class Pinged(Event, type="pings.sent"):
...     n: int
>>> [(out.subject, out.headers["ce-type"]) for out in encode(Pinged(n=1), source="lab")]
[('pings.sent.v1', 'pings.sent')]

The payload is the event's JSON (``version`` inside, as the seed article asks). Metadata
travels as CloudEvents headers in binary content mode (``ce-id``, ``ce-type``,
``ce-dataschema``, ...), so any tool can route on them without parsing the payload. The
codec also sets ``Nats-Msg-Id`` (JetStream's dedup key); the bus adds ``traceparent``.
The content type goes as ``ce-datacontenttype`` (where the NATS binding puts it); the optional
CloudEvents ``time`` is left out: ``occurred_at`` is in every payload (docs/contracts.md says why).

Versions: :func:`encode` also emits the older forms of an event whose contract declares a
down-converter (dual publishing); :func:`decode` reads an older version through upcasters.
Readers are tolerant (unknown fields ignored) unless asked to be strict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from buslib._nats.protocol import MSG_ID
from buslib.contracts.schema import dataschema, version_number
from buslib.contracts.versions import convert, downcast_targets, versions_of
from buslib.errors import ContractError, DecodeError
from buslib.events import Event

__all__ = [
    "Outgoing",
    "encode",
    "published_subject",
    "constant_headers",
    "decode",
    "message_version",
    "CONTENT_TYPE",
    "VERSION_HEADER",
]

CONTENT_TYPE = "application/json"  # of every payload, sent as ce-datacontenttype
VERSION_HEADER = "Bus-Event-Version"
DOWNCAST_HEADER = "Bus-Downcast-From"


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: subject, JSON payload and headers."""

    subject: str
    data: bytes
    headers: dict[str, str]
    event: Event


def _outgoing(event: Event, source: str, msg_id: str) -> Outgoing:
    cls = type(event)
    headers = constant_headers(cls, source) | {"ce-id": event.id, MSG_ID: msg_id}
    return Outgoing(published_subject(event), event.to_json(), headers, event)


def published_subject(event: Event) -> str:
    """The subject ``event`` is published on: its type's, plus its key for a keyed type.

    Raises:
        ContractError: a keyed event whose key field is empty (it cannot end a subject).
    """
    cls = type(event)
    subject = _constants(cls)[0]
    if cls.event_key is None:
        return subject
    key = getattr(event, cls.event_key)
    try:
        return cls.subject_for(key)
    except ValueError:  # SubjectError: None, "", or a type that is not a key
        raise ContractError(
            f"{cls.__name__}.{cls.event_key} is {key!r}, but it is the event's key: a non-empty string or an "
            f"integer, which becomes the last token of the subject ({subject}.<{cls.event_key}>)."
        ) from None


_CONSTANTS: dict[type[Event], tuple[str, str, str, str]] = {}
_HEADERS: dict[tuple[type[Event], str], dict[str, str]] = {}


def _constants(cls: type[Event]) -> tuple[str, str, str, str]:
    """(subject, ce-type, ce-dataschema, version) of a contract, worked out once per class."""
    # A class's type name and version are fixed when it is defined, so these never change.
    found = _CONSTANTS.get(cls)
    if found is None:
        found = _CONSTANTS[cls] = (cls.subject(), cls.event_type, dataschema(cls), str(cls.event_version))
    return found


def constant_headers(cls: type[Event], source: str) -> dict[str, str]:
    """The headers every event of ``cls`` published by ``source`` carries: all but its ids.

    An encoded event's headers are exactly these plus ``ce-id`` (the event's id) and
    ``Nats-Msg-Id``, so a publisher of many events can render them once (``publish_many``
    does). The dict is shared: copy it before changing it.
    """
    found = _HEADERS.get((cls, source))
    if found is None:
        _, event_type, schema, version = _constants(cls)
        # CloudEvents requires id, source, specversion and type; datacontenttype says how to
        # read the payload (the NATS binding maps it to ce-datacontenttype). Not sent: `time`,
        # a copy of the payload's occurred_at.
        found = {
            "ce-specversion": "1.0",
            "ce-source": source,
            "ce-type": event_type,
            "ce-datacontenttype": CONTENT_TYPE,
            "ce-dataschema": schema,
            VERSION_HEADER: version,
        }
        if len(_HEADERS) < 1024:  # bounded: sources are service names, but anything may call this
            _HEADERS[(cls, source)] = found
    return found


def encode(event: Event, *, source: str, dual: bool = True) -> list[Outgoing]:
    """Turn an event into the message(s) to publish, one per subject it goes to.

    With a down-converter declared for its contract (``@downcast(V2, to=V1)``), the list
    holds the event itself first, then each older form (dual publishing). Every copy keeps
    the event's ``id`` (``ce-id``) but gets its own ``Nats-Msg-Id`` (``<id>:<subject>``), so a
    stream that stores several subjects does not drop a copy as a duplicate.

    Args:
        event: the event.
        source: the publishing service's name (CloudEvents ``source``).
        dual: also emit the older forms declared by down-converters (default True).

    Raises:
        TypeError: ``event`` is not a :class:`~buslib.events.Event`.
        ContractError: the event's ``version`` field disagrees with its class, or a
            down-converter failed.
    """
    if not isinstance(event, Event):
        raise TypeError(
            f"Only buslib.Event instances can be published, got {type(event).__name__}. "
            "Define a class like `class OrderCreated(Event, type='orders.created'): ...`."
        )
    cls = type(event)
    if event.version != cls.event_version:
        raise ContractError(
            f"{cls.__name__} is version {cls.event_version} but this event says version={event.version}. "
            "Leave `version` alone (the class sets it); to publish another version, build that version's class."
        )
    messages = [_outgoing(event, source, event.id)]
    for older in downcast_targets(cls) if dual else []:
        copy = _outgoing(convert(event, older), source, f"{event.id}:{older.subject()}")
        copy.headers[DOWNCAST_HEADER] = str(cls.event_version)
        messages.append(copy)
    return messages


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    if name in headers:
        return headers[name]
    lowered = name.lower()
    return next((value for key, value in headers.items() if key.lower() == lowered), None)


def message_version(data: bytes, headers: Mapping[str, str] | None) -> tuple[str | None, int | None]:
    """The (type name, major version) a message says it carries.

    Read from the ``ce-type`` and ``Bus-Event-Version`` headers, else from the payload's
    ``version`` field. Either may be None when the message does not say.

    Raises:
        DecodeError: the version header is not a whole number.
    """
    event_type, raw = _header(headers, "ce-type"), _header(headers, VERSION_HEADER)
    if raw is None:
        try:
            payload = json.loads(data)
        except ValueError:
            return event_type, None  # decoding reports the bad JSON with the details
        raw = payload.get("version") if isinstance(payload, dict) else None
        if raw is None:
            return event_type, None
    version = version_number(raw)
    if version is None:
        raise DecodeError(
            f"The message's version {raw!r} is not a whole number (from the {VERSION_HEADER} header or the "
            "payload's 'version' field). It cannot be matched to a contract."
        )
    return event_type, version


def _validate(data: bytes, target: type[Event], strict: bool) -> Event:
    try:
        return target.model_validate_json(data, extra="forbid" if strict else None)
    except ValidationError as err:
        errors = err.errors()
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<payload>'}: {e['msg']}" for e in errors[:5])
        if any(e["type"] == "json_invalid" for e in errors):
            kind = "is not valid JSON"
        elif strict and all(e["type"] == "extra_forbidden" for e in errors):
            kind = f"has fields the strict reader for {target.__name__} does not know"
        else:
            kind = f"does not fit {target.__name__}"
        raise DecodeError(f"The payload {kind}: {problems}") from None


def decode(data: bytes, headers: Mapping[str, str] | None, target: type[Event], *, strict: bool = False) -> Event:
    """Parse a message into ``target``, upcasting an older version when needed.

    The message's type and version come from its headers (``ce-type``,
    ``Bus-Event-Version``) or its payload's ``version``. An older version is parsed with
    its own contract then converted through the declared upcasters (v1 -> v2 -> v3); a
    newer one through down-converters.

    Args:
        data: the payload.
        headers: the message headers (may be None).
        target: the contract the consumer reads (``Event`` itself: whichever the headers name).
        strict: reject fields the contract does not declare (``extra="forbid"``); the
            default tolerant reader ignores them.

    Raises:
        DecodeError: not JSON, does not fit, another event type, or a version no contract
            or converter here knows. The bus sends such messages to the dead-letter sink.
    """
    event_type, version = message_version(data, headers)
    if target is Event:  # "any event": the message says which contract
        if event_type is None or version is None:
            raise DecodeError("The message has no ce-type/Bus-Event-Version headers, so its contract is unknown.")
        known = versions_of(event_type)
        if version not in known:
            raise DecodeError(
                f"The message is {event_type} v{version}, a contract this process does not define "
                f"(known versions of it: {', '.join(f'v{v}' for v in known) or 'none'}). Import its module."
            )
        target = known[version]
    if event_type is not None and event_type != target.event_type:
        raise DecodeError(
            f"The message is a {event_type!r} event, but this consumer reads {target.event_type!r} "
            f"({target.__name__}). Check the subscription's subject."
        )
    if version is None or version == target.event_version:
        return _validate(data, target, strict)
    known = versions_of(target.event_type)
    source = known.get(version)
    if source is None:
        versions = ", ".join(f"v{v}" for v in known) or "none"
        raise DecodeError(
            f"The message is {target.event_type} v{version}, a version no contract here knows (known: {versions}). "
            f"Define the v{version} class and a converter to {target.__name__}, or upgrade this consumer."
        )
    try:
        return convert(_validate(data, source, strict), target)
    except ContractError as err:
        raise DecodeError(
            f"The message is {target.event_type} v{version} and cannot be read as {target.__name__}: {err}"
        ) from None
