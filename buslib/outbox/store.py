"""The outbox table: events written in the same SQLite transaction as the change that causes them.

>>> outbox = Outbox(bus, "shop.db")                                   # doctest: +SKIP
>>> outbox.db.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)")   # doctest: +SKIP
>>> with outbox.transaction() as db:                                  # doctest: +SKIP
...     db.execute("INSERT INTO orders VALUES ('A-1')")
...     outbox.add(db, OrderPlaced(order_id="A-1"))
>>> outbox.counts()                                                   # doctest: +SKIP
{'rows': 1, 'unsent': 1}

Each row is one message, encoded when it is added (subject, JSON payload, headers, with the
trace of the code that added it): what the relay later publishes is exactly what the bus
would have published then. The row keeps the message's ``Nats-Msg-Id`` (the event's id),
so every attempt to relay it is the same message to the stream's deduplication. The
service's own tables live in the same database: ``outbox.db`` is the connection.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buslib._nats.protocol import MSG_ID
from buslib.errors import OutboxError
from buslib.events import Event
from buslib.outbox.database import open_database, transaction

__all__ = ["Outbox", "OutboxRow"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS bus_outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the relay's order
    msg_id     TEXT NOT NULL UNIQUE,               -- Nats-Msg-Id: the event's id
    subject    TEXT NOT NULL,
    payload    BLOB NOT NULL,
    headers    TEXT NOT NULL,                      -- JSON
    created_at REAL NOT NULL,
    sent_at    REAL,                               -- NULL until the relay has it stored
    stream_seq INTEGER
);
CREATE INDEX IF NOT EXISTS bus_outbox_unsent ON bus_outbox(id) WHERE sent_at IS NULL;
"""


@dataclass(frozen=True)
class OutboxRow:
    """One message waiting in (or sent from) the outbox."""

    id: int
    msg_id: str
    subject: str
    payload: bytes
    headers: dict[str, str]


class Outbox:
    """An outbox table in a SQLite database (created if missing), for one bus.

    Args:
        bus: the ``EventBus`` whose service publishes these events (encoding, and the relay).
        database: a path to the SQLite file (the service's own database), or ``":memory:"``.

    Attributes:
        bus: the bus.
        db: the SQLite connection (autocommit; transactions through :meth:`transaction`).
    """

    def __init__(self, bus: Any, database: str | Path) -> None:
        self.bus = bus
        self._encode = bus.publisher.outgoing  # the messages bus.publish would send, headers and trace included
        self.db: sqlite3.Connection = open_database(database)
        self.db.executescript(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``with outbox.transaction() as db:`` one SQLite transaction: all of it commits, or none."""
        with transaction(self.db):
            yield self.db

    def add(self, db: sqlite3.Connection, event: Event) -> list[int]:
        """Queue ``event`` inside the caller's transaction (``db`` from :meth:`transaction`).

        Returns:
            The new rows' ids: one, or more for an event that is dual-published.

        Raises:
            OutboxError: not inside a transaction (the point is one commit for both writes),
                or the same event added twice.
            TypeError: ``event`` is not an ``Event``.
        """
        if db is not self.db or not db.in_transaction:
            raise OutboxError(
                "outbox.add(db, event) must run inside `with outbox.transaction() as db:` and get that db: "
                "the change and its event commit together, or neither does."
            )
        ids = []
        now = time.time()
        for subject, data, headers in self._encode(event):
            try:
                cur = db.execute(
                    "INSERT INTO bus_outbox (msg_id, subject, payload, headers, created_at) VALUES (?, ?, ?, ?, ?)",
                    (headers[MSG_ID], subject, data, json.dumps(headers), now),
                )
            except sqlite3.IntegrityError:
                raise OutboxError(
                    f"Event {event.id} is already in the outbox (its id is the message's Nats-Msg-Id). "
                    "Create a new event for a new fact."
                ) from None
            ids.append(int(cur.lastrowid or 0))
        return ids

    def unsent(self, limit: int = 100) -> list[OutboxRow]:
        """The oldest unsent rows, in the order they were committed."""
        rows = self.db.execute(
            "SELECT id, msg_id, subject, payload, headers FROM bus_outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [OutboxRow(i, m, s, bytes(p), json.loads(h)) for i, m, s, p, h in rows]

    def mark_sent(self, sent: list[tuple[int, int]]) -> None:
        """Record rows as stored by the stream: ``[(row id, stream sequence), ...]``."""
        if not sent:
            return
        now = time.time()
        with transaction(self.db):
            self.db.executemany(
                "UPDATE bus_outbox SET sent_at = ?, stream_seq = ? WHERE id = ?", [(now, seq, i) for i, seq in sent]
            )

    def counts(self) -> dict[str, int]:
        """``{"rows": all rows, "unsent": rows the relay has not had stored yet}``."""
        total, unsent = self.db.execute("SELECT COUNT(*), COUNT(*) - COUNT(sent_at) FROM bus_outbox").fetchone()
        return {"rows": int(total), "unsent": int(unsent)}

    def purge_sent(self, *, older_than: float = 7 * 24 * 3600.0) -> int:
        """Delete rows sent more than ``older_than`` seconds ago (the table must not grow forever).

        Returns:
            How many rows were deleted.
        """
        with transaction(self.db):
            cur = self.db.execute(
                "DELETE FROM bus_outbox WHERE sent_at IS NOT NULL AND sent_at < ?", (time.time() - older_than,)
            )
        return int(cur.rowcount)

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()
