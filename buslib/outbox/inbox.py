"""The receiving side of exactly-once effects: apply each message's effect once.

>>> inbox = Inbox("billing.db")                                      # doctest: +SKIP
>>> inbox.db.execute("CREATE TABLE IF NOT EXISTS charges (order_id TEXT, amount REAL)")   # doctest: +SKIP
>>> async def charge(event, ctx):                                    # doctest: +SKIP
...     inbox.apply_once(ctx.event_id, lambda db: db.execute(
...         "INSERT INTO charges VALUES (?, ?)", (event.order_id, event.amount)))

The effect and the record "this message id was applied" commit in one SQLite transaction,
so a redelivery (a worker crashed before its ack, a late duplicate the stream stored
because the window had passed) finds the record and does nothing. The bus acknowledges the
message after the handler returns: a crash after the commit and before the ack only means
one more delivery, which the inbox absorbs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buslib.outbox.database import open_database, transaction

__all__ = ["Inbox"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS bus_inbox (
    msg_id     TEXT PRIMARY KEY,  -- the message's Nats-Msg-Id (ctx.event_id in a bus handler)
    applied_at REAL NOT NULL
);
"""


class Inbox:
    """Applies an effect at most once per message id, in one transaction with the record of it.

    Args:
        database: a path to the SQLite file (the service's own database), or ``":memory:"``.

    Attributes:
        db: the SQLite connection (the service's tables live here too).
    """

    def __init__(self, database: str | Path) -> None:
        self.db: sqlite3.Connection = open_database(database)
        self.db.executescript(SCHEMA)

    def apply_once(self, msg_id: str | None, effect: Callable[[sqlite3.Connection], Any]) -> bool:
        """Run ``effect(db)`` and record ``msg_id``, in one transaction; skip a known id.

        Args:
            msg_id: the message's id (``ctx.event_id``).
            effect: the change, made on the ``db`` it is given (inside the transaction).

        Returns:
            True if the effect ran now, False if this id was applied before.

        Raises:
            ValueError: no message id (publish through the bus, which sets ``Nats-Msg-Id``).
            Whatever ``effect`` raises (nothing is recorded then, and the bus retries).
        """
        if not msg_id:
            raise ValueError(
                "apply_once needs the message's id (ctx.event_id), but it is empty: the publisher set no "
                "Nats-Msg-Id. Events published through the bus always have one."
            )
        with transaction(self.db) as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO bus_inbox (msg_id, applied_at) VALUES (?, ?)", (msg_id, time.time())
            )
            if cur.rowcount == 0:
                return False
            effect(db)
        return True

    def applied(self, msg_id: str) -> bool:
        """Whether the effect of ``msg_id`` has been applied."""
        return self.db.execute("SELECT 1 FROM bus_inbox WHERE msg_id = ?", (msg_id,)).fetchone() is not None

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()
