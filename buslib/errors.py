"""The kit's exceptions: one hierarchy, each message says what happened and what to do.

>>> from buslib.errors import BusError, ConnectError
>>> issubclass(ConnectError, BusError)
True

Every error is written for a learner: the first sentence says what happened, the
rest says what was expected and what to try next.
"""

from __future__ import annotations

__all__ = [
    "BusError",
    "ServerError",
    "ConnectError",
    "ConfigDriftError",
    "PublishError",
    "ContractError",
    "DecodeError",
]


class BusError(Exception):
    """Base class of every error raised by buslib."""


class ServerError(BusError):
    """The embedded nats-server could not be found, started or stopped."""


class ConnectError(BusError):
    """No connection to a NATS server (unreachable, malformed URL, no JetStream)."""


class ConfigDriftError(BusError):
    """A stream or consumer already exists with a configuration different from the one asked for."""


class PublishError(BusError):
    """An event was not stored (no stream covers the subject, or the server refused it)."""


class ContractError(BusError):
    """An event contract is invalid, unknown or incompatible."""


class DecodeError(BusError):
    """A message could not be decoded into the expected event type (bad JSON, wrong shape)."""
