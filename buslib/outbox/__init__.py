"""The transactional outbox: a database change and the events it causes, committed together.

>>> outbox = Outbox(bus, "shop.db")                                          # doctest: +SKIP
>>> with outbox.transaction() as db:                                         # doctest: +SKIP
...     db.execute("INSERT INTO orders VALUES (?, ?)", ("A-1", 9.5))
...     outbox.add(db, OrderPlaced(order_id="A-1", amount=9.5))
>>> await Relay(outbox).drain()                                              # doctest: +SKIP
RelayResult(published=1, duplicates=0, marked=1)

Why: "write to the database, then publish" loses the event when the process dies in
between; "publish, then write" announces something that may never be committed. The
outbox writes the event *into the service's database, in the same transaction* as the
change (SQLite from the standard library here). A :class:`Relay` publishes what is unsent,
in order, and marks it sent afterwards. A crash between publishing and marking publishes
those rows again: each row keeps its event's ``Nats-Msg-Id``, fixed when the transaction
committed, so the stream stores it once within its duplicate window. A relay that stays
down longer than the window does store a second copy, which is why the receiving side is
idempotent too: an :class:`Inbox` applies each message's effect once, in one transaction
with the record that it did. Exactly-once *effects* = deduplication at the stream +
an idempotent receiver; neither alone is enough (lesson 07).

Modules: ``database`` (opening SQLite, one transaction helper), ``store`` (:class:`Outbox`),
``relay`` (:class:`Relay`), ``inbox`` (:class:`Inbox`).
"""

from buslib.outbox.database import open_database, transaction
from buslib.outbox.inbox import Inbox
from buslib.outbox.relay import Relay, RelayResult
from buslib.outbox.store import Outbox, OutboxRow

__all__ = ["Inbox", "Outbox", "OutboxRow", "Relay", "RelayResult", "open_database", "transaction"]
