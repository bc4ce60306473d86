"""JetStream Bus Lab's library: a small, typed message bus on NATS JetStream.

>>> import buslib
>>> async with buslib.EventBus.connect(service="billing") as bus:   # doctest: +SKIP
...     await bus.publish(OrderCreated(order_id="A-1", amount=9.5))

The package, bottom to top (each layer imports only from layers below it):

- base modules: ``errors`` (every exception), ``subjects`` (names, keys, partitions),
  ``events`` (typed events), ``retry`` (policies and the one backoff formula),
  ``tracing`` (W3C traceparent);
- ``server/``: real nats-servers (one, or a cluster), nothing left behind; ``_nats/``: the one place that
  touches nats-py's internals; ``connection``: which server, fail-fast connect;
- ``contracts/``: versions, schemas, the wire codec, compatibility, the registry;
- ``bus/``: the EventBus, streams, publishing, consumer groups (ordered ones too),
  settlement, lag;
- ``dlq/``: dead letters, advisories, reconcile; ``outbox/``: the transactional outbox
  and inbox on SQLite;
- ``teaching/`` and ``exercises/``: what the lessons and exercises use;
- ``cli/``: the ``buslib`` command.
"""

from buslib.bus import (
    EventBus,
    GroupLag,
    LagAlert,
    LagWatcher,
    MessageContext,
    OrderedSubscription,
    Subscription,
    SubscriptionStats,
)
from buslib.connection import connect, embedded_server, ensure_server
from buslib.dlq import DeadLetter, DeadLetterFilter, DeadLetterQueue
from buslib.errors import (
    BusError,
    ConcurrencyError,
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
from buslib.outbox import Inbox, Outbox, Relay
from buslib.retry import Failure, Reject, Retry
from buslib.server import EmbeddedCluster, EmbeddedServer, find_server_binary
from buslib.subjects import partition_of

__all__ = [
    "BusError",
    "ConcurrencyError",
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
    "GroupLag",
    "Inbox",
    "LagAlert",
    "LagWatcher",
    "MessageContext",
    "OrderedSubscription",
    "Outbox",
    "PublishError",
    "PublishManyError",
    "Reject",
    "Relay",
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
    "partition_of",
]
