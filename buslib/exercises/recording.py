"""Workshop mode, the learner's side: every check's outcome, recorded for the instructor.

>>> record = progress_record(outcome, seconds=0.012)      # doctest: +SKIP
>>> await record_outcome(nc, outcome, seconds=0.012)      # doctest: +SKIP  (only on a workshop server)

On a workshop server (``buslib workshop serve``) each learner has an account of their own,
and the server's configuration exports the subject ``buslib.progress`` of every learner
account to the instructor's account as ``progress.<ACCOUNT>``. A learner publishes the
outcome of each ``check()`` there, in their own account; the instructor's ``PROGRESS``
stream stores it. Who the record is from is therefore set by the server, never by the
record: a learner cannot publish as another (the reader ignores any name in the payload).

Recording is best effort: it never changes the feedback, and on any other server (the
embedded one, docker compose) it does nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from buslib.connection import is_workshop_server

__all__ = ["MAX_MESSAGE", "PROGRESS_SUBJECT", "RECORD_VERSION", "progress_record", "record_check", "record_outcome"]

PROGRESS_SUBJECT = "buslib.progress"  # in the learner's own account; the server maps it to progress.<ACCOUNT>
RECORD_VERSION = 1
MAX_MESSAGE = 400  # characters of the feedback kept: a record stays below the stream's 4 KiB limit
RECORD_TIMEOUT = 2.0  # seconds at most spent recording one outcome


def progress_record(outcome: Any, *, seconds: float, now: float | None = None) -> dict[str, Any]:
    """The record of one check: its outcome (exercise, question, title, status, message), time, duration.

    Args:
        outcome: an :class:`~buslib.exercises.core.Outcome`.
        seconds: how long the check took.
        now: the time of the check (epoch seconds); defaults to now.
    """
    record = outcome.to_json()
    record["message"] = record["message"][:MAX_MESSAGE]
    record.update(v=RECORD_VERSION, time=round(now if now is not None else time.time(), 3))
    record["check_ms"] = round(seconds * 1000, 1)
    return dict(record)


async def record_outcome(nc: Any, outcome: Any, *, seconds: float) -> bool:
    """Publish the outcome on ``buslib.progress`` if ``nc`` is connected to a workshop server.

    Returns:
        Whether a record was sent. Never raises: a record that cannot be sent is dropped.
    """
    try:
        if nc is None or not nc.is_connected or not is_workshop_server(nc):
            return False
        payload = json.dumps(progress_record(outcome, seconds=seconds)).encode()
        await asyncio.wait_for(nc.publish(PROGRESS_SUBJECT, payload), RECORD_TIMEOUT)
        await nc.flush(timeout=RECORD_TIMEOUT)
    except Exception:  # best effort: the learner's feedback matters, the board can miss one
        return False
    return True


async def record_check(ctx: Any, outcome: Any, *, seconds: float) -> bool:
    """What ``Question.outcome_async`` calls after every check: record it on the check's connection.

    A check that never connected (not attempted) connects only when a server was named
    (``NATS_URL``, or the check's ``url``): an embedded server is never a workshop server.
    A check that could not reach the server records nothing.

    Args:
        ctx: the check's :class:`~buslib.exercises.core.Context`.
        outcome: its :class:`~buslib.exercises.core.Outcome`.
        seconds: how long the check took.
    """
    if outcome.status.value == "error":  # the server could not be reached, or refused us
        return False
    if ctx.opened is None:
        if ctx.url is None and not os.environ.get("NATS_URL", "").strip():
            return False
        try:
            await asyncio.wait_for(ctx.nc(), RECORD_TIMEOUT)
        except Exception:  # no server, refused credentials: the feedback says so already
            return False
    return await record_outcome(ctx.opened, outcome, seconds=seconds)
