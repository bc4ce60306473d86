"""What the lessons use beside the bus: small helpers, live views, and the doctor.

>>> from buslib.teaching import expect_error, timed, wait_until, status_panel, WorkerCounts
>>> with expect_error(ZeroDivisionError) as caught:
...     1 / 0

Modules: ``helpers`` (``expect_error``, ``timed``, ``wait_until``, ``wait_for_stream``, ``stored_ids``: lesson
cells that assert, never sleep; ``delete_streams``: a clean slate), ``status_panel`` (a live view of a server), ``cluster_panel``
(of a cluster: nodes, leaders, each node's copy), ``lag_view`` (a live view of consumer
groups' lag and the alerts), ``charts`` (worker counts, delivery timelines), ``tables``
(dead letters), ``doctor`` (checks this machine).
"""

from buslib.teaching.charts import WorkerCounts, delivery_timeline, handling_order, late_events
from buslib.teaching.cluster_panel import ClusterPanel, cluster_panel, cluster_snapshot
from buslib.teaching.helpers import delete_streams, expect_error, stored_ids, timed, wait_for_stream, wait_until
from buslib.teaching.lag_view import LagView, lag_view
from buslib.teaching.status_panel import StatusPanel, status_panel
from buslib.teaching.tables import DeadLetterTable, dead_letter_table

__all__ = [
    "ClusterPanel",
    "DeadLetterTable",
    "LagView",
    "StatusPanel",
    "WorkerCounts",
    "cluster_panel",
    "cluster_snapshot",
    "dead_letter_table",
    "delete_streams",
    "delivery_timeline",
    "expect_error",
    "handling_order",
    "lag_view",
    "late_events",
    "status_panel",
    "stored_ids",
    "timed",
    "wait_for_stream",
    "wait_until",
]
