"""SQLite for the outbox and the inbox: one way to open a database, one way to run a transaction.

>>> db = open_database(":memory:")
>>> with transaction(db):
...     _ = db.execute("CREATE TABLE t (x INTEGER)")
...     _ = db.execute("INSERT INTO t VALUES (1)")
>>> db.execute("SELECT COUNT(*) FROM t").fetchone()[0]
1

The connection runs in autocommit mode (``isolation_level=None``) so that transactions are
explicit: :func:`transaction` says ``BEGIN IMMEDIATE`` (the write lock at once, so outbox row
ids follow commit order), commits when the block ends and rolls back on any exception.
SQLite calls are synchronous and take microseconds on a local file; a busy service would run
them in ``asyncio.to_thread`` with a connection per thread.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

__all__ = ["open_database", "transaction"]


def open_database(path: str | Path) -> sqlite3.Connection:
    """Open (or create) a SQLite database with explicit transactions and write-ahead logging."""
    db = sqlite3.connect(str(path), isolation_level=None)
    if str(path) != ":memory:":
        db.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``with transaction(db):`` commits when the block ends, rolls back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
