"""Dead letters: a stream of messages that did not succeed, with reasons, alerts, replay and a safety net.

>>> from buslib.dlq import DeadLetterQueue
>>> dlq = await DeadLetterQueue(bus).setup()                               # doctest: +SKIP
>>> await bus.subscribe(OrderCreated, group="billing", handler=handle,      # doctest: +SKIP
...                     retry=Retry(max_deliver=3), dead_letters=dlq)

Modules: ``entry`` (one dead letter and its ``Bus-DLQ-*`` headers), ``filters`` (which
entries an operation applies to), ``queue`` (:class:`DeadLetterQueue`: the sink, list,
replay, purge), ``advisories`` (JetStream's delivery advisories, captured in a stream) and
``reconcile`` (advisories of exhausted messages that no worker dead-lettered, made entries).
"""

from buslib.dlq.entry import DeadLetter
from buslib.dlq.filters import DeadLetterFilter
from buslib.dlq.queue import ALERT_SUBJECT, DEAD_LETTER_STREAM, DeadLetterQueue, ReplayResult
from buslib.dlq.reconcile import ReconcileResult
from buslib.errors import DeadLetterNotFound, FilterError

__all__ = [
    "ALERT_SUBJECT",
    "DEAD_LETTER_STREAM",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterNotFound",
    "DeadLetterQueue",
    "FilterError",
    "ReconcileResult",
    "ReplayResult",
]
