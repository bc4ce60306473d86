"""The EventBus: typed publish and consumer-group subscribe on NATS JetStream.

>>> from buslib.bus import EventBus
>>> async with EventBus.connect(service="billing") as bus:                 # doctest: +SKIP
...     await bus.publish(OrderCreated(order_id="A-1"))

Modules, from the facade down: ``eventbus`` (:class:`EventBus`; ``connecting`` for
``EventBus.connect``), ``streams`` (which stream stores a subject; created on demand with
default limits; drift), ``partitions`` (a stream that splits a keyed type into partitions),
``publisher`` (one event, acked and retried; optimistic concurrency), ``batch`` with
``prepared``, ``fast_ingest`` and ``windowed`` (``publish_many``), ``groups`` (what a
``subscribe()`` call becomes), ``consumer`` (a group's durable consumer), ``deliver`` (where
a new group starts), ``subscription`` (a member's pull loop), ``ordered`` (an ordered
group's lanes), ``settlement`` (decode, handle, ack / retry later / dead-letter), ``lag``
(how far behind a group is; the lag watcher), ``drift`` (what differs from what).
"""

from buslib.bus.consumer import ConsumerSpec
from buslib.bus.deliver import Deliver
from buslib.bus.eventbus import EventBus
from buslib.bus.lag import GroupLag, LagAlert, LagWatcher
from buslib.bus.ordered import OrderedSubscription
from buslib.bus.publisher import Publisher
from buslib.bus.settlement import HANDLER_TIMEOUT, REPLAY_GROUP, Handler, MessageContext, Settlement, SubscriptionStats
from buslib.bus.streams import DEFAULT_MAX_AGE, DUPLICATE_WINDOW, StreamDirectory
from buslib.bus.subscription import Subscription

__all__ = [
    "DEFAULT_MAX_AGE",
    "DUPLICATE_WINDOW",
    "HANDLER_TIMEOUT",
    "REPLAY_GROUP",
    "ConsumerSpec",
    "Deliver",
    "EventBus",
    "GroupLag",
    "Handler",
    "LagAlert",
    "LagWatcher",
    "MessageContext",
    "OrderedSubscription",
    "Publisher",
    "Settlement",
    "StreamDirectory",
    "Subscription",
    "SubscriptionStats",
]
