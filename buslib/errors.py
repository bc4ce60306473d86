"""The kit's exceptions: one hierarchy, each message says what happened and what to do.

>>> from buslib.errors import BusError, ConnectError
>>> issubclass(ConnectError, BusError)
True

Every error is written for a learner: the first sentence says what happened, the
rest says what was expected and what to try next. Catch ``BusError`` for all of them.

    BusError
    ├── ServerError            the embedded nats-server: not found, not started, not stopped
    ├── ConnectError           no connection: unreachable, malformed URL, no JetStream
    │   └── CredentialsError   the server refused the URL's user/password, or they are not a learner's
    ├── ConfigDriftError       a stream or consumer exists with other settings
    ├── PublishError           an event was not stored
    │   ├── PublishManyError   some events of a publish_many call were not stored
    │   └── ConcurrencyError   another writer published to the subject first (expected sequence)
    ├── SubjectError           a subject or group name is not valid (also a ValueError)
    ├── ContractError          a contract is invalid, unknown or incompatible
    │   └── IncompatibleContractError
    ├── DecodeError            a message cannot become the expected event
    ├── FilterError            a dead-letter filter cannot be understood (also a ValueError)
    ├── OutboxError            the transactional outbox was used outside a transaction, or twice
    ├── DeadLetterNotFound     no such dead-letter entry or stream (also a LookupError)
    └── WorkshopError          a workshop room cannot be created, served or read
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing only: nats-py's acknowledgement type
    from nats.js.api import PubAck

__all__ = [
    "BusError",
    "ServerError",
    "ConnectError",
    "CredentialsError",
    "ConfigDriftError",
    "PublishError",
    "PublishManyError",
    "ConcurrencyError",
    "SubjectError",
    "ContractError",
    "IncompatibleContractError",
    "DecodeError",
    "FilterError",
    "OutboxError",
    "DeadLetterNotFound",
    "WorkshopError",
]


class BusError(Exception):
    """Base class of every error raised by buslib."""


class ServerError(BusError):
    """The embedded nats-server could not be found, started or stopped."""


class ConnectError(BusError):
    """No connection to a NATS server (unreachable, malformed URL, no JetStream)."""


class CredentialsError(ConnectError):
    """The server refused the user and password in the URL, or they belong to an account a learner must not use."""


class ConfigDriftError(BusError):
    """A stream or consumer already exists with a configuration different from the one asked for."""


class PublishError(BusError):
    """An event was not stored (no stream covers the subject, the server refused it, or no confirmation came).

    Attributes:
        event_id: the event's id (its ``Nats-Msg-Id``), when the error is about one event:
            publishing the same event again is safe.
    """

    def __init__(self, message: str, *, event_id: str | None = None) -> None:
        super().__init__(message)
        self.event_id = event_id


class PublishManyError(PublishError):
    """Some events of one ``publish_many`` call were not stored. Publishing them all again is safe.

    Attributes:
        index: the position of the first event not stored, in the call's input.
        event_id: that event's id.
        stored: how many of the call's events were stored.
        acks: one entry per event, in input order: its ``PubAck``, or ``None`` if not stored.
    """

    def __init__(self, message: str, *, index: int, event_id: str, stored: int, acks: list[PubAck | None]) -> None:
        super().__init__(message, event_id=event_id)
        self.index = index
        self.stored = stored
        self.acks = acks


class ConcurrencyError(PublishError):
    """Optimistic concurrency: the subject's last sequence is not the one this publish expected.

    Raised by ``bus.publish(event, expect_last_subject_seq=n)`` when another writer stored a
    message on the event's subject after sequence ``n`` (JetStream error 10071). Nothing was
    stored: read the current state again, decide again, publish with the new sequence.

    Attributes:
        subject: the subject the event was published on.
        expected: the sequence this publish expected to be the subject's last.
        actual: the subject's last sequence according to the server (None if it did not say).
    """

    def __init__(self, message: str, *, subject: str, expected: int, actual: int | None) -> None:
        super().__init__(message)
        self.subject = subject
        self.expected = expected
        self.actual = actual


class SubjectError(BusError, ValueError):
    """A subject or group name is not valid for NATS."""


class ContractError(BusError):
    """An event contract is invalid, unknown or incompatible."""


class IncompatibleContractError(ContractError):
    """A contract change breaks the compatibility mode; ``reports`` say where and which rule.

    Attributes:
        reports: subject -> :class:`buslib.contracts.compat.CompatibilityReport` of each failing contract.
    """

    def __init__(self, message: str, reports: dict[str, Any]) -> None:
        super().__init__(message)
        self.reports = reports


class DecodeError(BusError):
    """A message could not be decoded into the expected event type (bad JSON, wrong shape)."""


class FilterError(BusError, ValueError):
    """A dead-letter filter (subject, reason, time, group) cannot be understood."""


class OutboxError(BusError):
    """The transactional outbox was used in a way that would break its promise (outside a transaction)."""


class DeadLetterNotFound(BusError, LookupError):
    """No dead-letter entry has the asked-for id (or the dead-letter stream does not exist)."""


class WorkshopError(BusError):
    """A workshop room cannot be created, served or read (bad settings, expired, files missing or damaged)."""
