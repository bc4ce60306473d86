"""The EventBus: typed publish and consumer-group subscribe on NATS JetStream.

>>> from buslib.bus import EventBus
>>> async with EventBus.connect(service="billing") as bus:                 # doctest: +SKIP
...     await bus.publish(OrderCreated(order_id="A-1"))

Modules, from the facade down: ``eventbus`` (:class:`EventBus`), ``streams`` (which stream
stores a subject; created on demand; drift), ``publisher`` (one event, acked and retried),
``batch`` with ``prepared``, ``fast_ingest`` and ``windowed`` (``publish_many``), ``consumer``
(a group's durable consumer), ``subscription`` (a member's pull loop), ``settlement``
(decode, handle, ack / retry later / dead-letter), ``drift`` (what differs from what).
"""

from buslib.bus.consumer import ConsumerSpec
from buslib.bus.eventbus import EventBus
from buslib.bus.publisher import Publisher
from buslib.bus.settlement import HANDLER_TIMEOUT, REPLAY_GROUP, Handler, MessageContext, Settlement, SubscriptionStats
from buslib.bus.streams import DUPLICATE_WINDOW, StreamDirectory
from buslib.bus.subscription import Subscription

__all__ = [
    "DUPLICATE_WINDOW",
    "HANDLER_TIMEOUT",
    "REPLAY_GROUP",
    "ConsumerSpec",
    "EventBus",
    "Handler",
    "MessageContext",
    "Publisher",
    "Settlement",
    "StreamDirectory",
    "Subscription",
    "SubscriptionStats",
]
