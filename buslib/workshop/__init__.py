"""Workshop mode: one nats-server for a room of learners, one NATS account each, and a live board.

>>> from buslib.workshop import create_room, WorkshopServer, LocalRoom
>>> room = create_room(".buslib/workshop", learners=30, host="192.168.1.20")   # doctest: +SKIP

Modules: ``config`` (a room's settings and its nats-server configuration), ``room``
(creating a room: passwords, roster, handouts; ``resize_room``: one server or a cluster),
``serve`` (running it, on one server or an :class:`~buslib.server.EmbeddedCluster`;
``LocalRoom`` for rehearsals and tests), ``progress`` (the instructor's records of every
check), ``board`` (who is where, who is stuck, which question fails most), ``widget`` (the
board in a notebook).
The instructor's guide is docs/workshop.md; the commands are ``buslib workshop ...``.

A learner changes nothing but ``NATS_URL``: their account has its own JetStream namespace,
so the exercises' fixed stream names never collide, and each ``check()`` is recorded for the
instructor by :mod:`buslib.exercises.recording`.
"""

from buslib.workshop.config import DEFAULT_ROOM, Learner, Limits, Room, parse_valid_until
from buslib.workshop.progress import ProgressReader, Record, read_progress
from buslib.workshop.room import create_room, extend_room, instructor_urls, read_roster, resize_room
from buslib.workshop.serve import LocalRoom, WorkshopServer

__all__ = [
    "DEFAULT_ROOM",
    "Learner",
    "Limits",
    "LocalRoom",
    "ProgressReader",
    "Record",
    "Room",
    "WorkshopServer",
    "create_room",
    "extend_room",
    "instructor_urls",
    "parse_valid_until",
    "read_progress",
    "read_roster",
    "resize_room",
]
