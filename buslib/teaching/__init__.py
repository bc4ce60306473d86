"""What the lessons use beside the bus: small helpers, live views, and the doctor.

>>> from buslib.teaching import expect_error, timed, wait_until, status_panel, WorkerCounts
>>> with expect_error(ZeroDivisionError) as caught:
...     1 / 0

Modules: ``helpers`` (``expect_error``, ``timed``, ``wait_until``: lesson cells that assert,
never sleep), ``status_panel`` (a live view of a server), ``charts`` (worker counts,
delivery timelines), ``tables`` (dead letters), ``doctor`` (checks this machine).
"""

from buslib.teaching.charts import WorkerCounts, delivery_timeline
from buslib.teaching.helpers import expect_error, timed, wait_until
from buslib.teaching.status_panel import StatusPanel, status_panel
from buslib.teaching.tables import DeadLetterTable, dead_letter_table

__all__ = [
    "DeadLetterTable",
    "StatusPanel",
    "WorkerCounts",
    "dead_letter_table",
    "delivery_timeline",
    "expect_error",
    "status_panel",
    "timed",
    "wait_until",
]
