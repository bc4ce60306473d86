"""JetStream Bus Lab's library: a small, typed message bus on NATS JetStream.

>>> import buslib
>>> async with buslib.EventBus.connect(service="billing") as bus:   # doctest: +SKIP
...     await bus.publish(OrderCreated(order_id="A-1", amount=9.5))

The package, bottom to top (each layer imports only from layers below it):

- base modules: ``errors`` (every exception), ``events`` (typed events), ``subjects``,
  ``retry`` (policies and the one backoff formula), ``tracing`` (W3C traceparent);
- ``server/``: real nats-servers (one, or a cluster), nothing left behind; ``_nats/``: the one place that
  touches nats-py's internals; ``connection``: which server, fail-fast connect;
- ``contracts/``: versions, schemas, the wire codec, compatibility, the registry;
- ``bus/``: the EventBus, streams, publishing, consumer groups, settlement;
- ``dlq/``: dead letters, advisories, reconcile;
- ``teaching/`` and ``exercises/``: what the lessons and exercises use;
- ``cli/``: the ``buslib`` command.
"""

from buslib.bus import EventBus, MessageContext, Subscription, SubscriptionStats
from buslib.connection import connect, embedded_server, ensure_server
from buslib.dlq import DeadLetter, DeadLetterFilter, DeadLetterQueue
from buslib.errors import (
    BusError,
    ConfigDriftError,
    ConnectError,
    ContractError,
    DecodeError,
    PublishError,
    PublishManyError,
    ServerError,
    SubjectError,
)
from buslib.events import Event, event_types, lookup_event_type
from buslib.retry import Failure, Reject, Retry
from buslib.server import EmbeddedCluster, EmbeddedServer, find_server_binary

__all__ = [
    "BusError",
    "ConfigDriftError",
    "ConnectError",
    "ContractError",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterQueue",
    "DecodeError",
    "EmbeddedCluster",
    "EmbeddedServer",
    "Event",
    "EventBus",
    "Failure",
    "MessageContext",
    "PublishError",
    "PublishManyError",
    "Reject",
    "Retry",
    "ServerError",
    "SubjectError",
    "Subscription",
    "SubscriptionStats",
    "connect",
    "embedded_server",
    "ensure_server",
    "event_types",
    "find_server_binary",
    "lookup_event_type",
]
