"""JetStream Bus Lab's library: a small, typed message bus on NATS JetStream.

>>> import buslib
>>> async with buslib.EventBus.connect(service="billing") as bus:   # doctest: +SKIP
...     await bus.publish(OrderCreated(order_id="A-1", amount=9.5))

Modules, one concern each: ``server`` (embedded nats-server), ``connection`` (which server,
fail-fast connect), ``events`` (typed events), ``bus`` (EventBus), ``errors``.
"""

from buslib.bus import EventBus, MessageContext, SubjectError, Subscription, SubscriptionStats
from buslib.connection import connect, embedded_server, ensure_server
from buslib.dlq import DeadLetter, DeadLetterFilter, DeadLetterQueue
from buslib.errors import (
    BusError,
    ConfigDriftError,
    ConnectError,
    ContractError,
    DecodeError,
    PublishError,
    ServerError,
)
from buslib.events import Event, event_types, lookup_event_type
from buslib.retry import Failure, Reject, Retry
from buslib.server import EmbeddedServer, find_server_binary

__all__ = [
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterQueue",
    "EventBus",
    "Failure",
    "MessageContext",
    "Reject",
    "Retry",
    "SubjectError",
    "Subscription",
    "SubscriptionStats",
    "BusError",
    "ConfigDriftError",
    "ConnectError",
    "ContractError",
    "DecodeError",
    "EmbeddedServer",
    "Event",
    "PublishError",
    "ServerError",
    "connect",
    "embedded_server",
    "ensure_server",
    "event_types",
    "find_server_binary",
    "lookup_event_type",
]
