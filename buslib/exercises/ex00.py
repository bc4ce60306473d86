"""Exercise 00, warm-up: talk to the server and store your first message.

>>> from buslib.exercises.ex00 import *     # doctest: +SKIP
>>> await reset(js)                          # doctest: +SKIP
>>> q1.check()                               # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from nats.js.api import PubAck

from buslib.exercises.checks import MessageAt, delete_streams
from buslib.exercises.core import Check, Context, Fail, IsInstance, Question, ____

__all__ = ["____", "q1", "q2", "QUESTIONS", "reset", "HELLO_STREAM", "HELLO_SUBJECT"]

HELLO_STREAM = "EX00_HELLO"
HELLO_SUBJECT = "ex00.hello"


async def reset(js: Any) -> None:
    """Start over: recreate this exercise's stream, empty."""
    await delete_streams(js, HELLO_STREAM)
    await js.add_stream(name=HELLO_STREAM, subjects=[HELLO_SUBJECT])


class ServerVersionIs(Check):
    """The learner's ``server_version`` is the version the server reports."""

    def __init__(self, value: Any) -> None:
        self.value = value

    async def verify(self, ctx: Context) -> None:
        actual = str((await ctx.nc()).connected_server_version)
        if str(self.value).strip() != actual:
            raise Fail(f"server_version is {self.value!r}, but the server says it is {actual!r}. "
                       "Ask the connection rather than typing it: nc.connected_server_version.")


q1 = Question(
    "q1", "Which server version are you connected to?",
    uses=["server_version"],
    checks=lambda server_version: [ServerVersionIs(server_version)],
    hint="The connection knows: look at the attributes of `nc` starting with `connected_`.",
    solution="server_version = str(nc.connected_server_version)",
    exercise="00",
)

def _stored_hello(ack: Any):
    yield IsInstance("ack", ack, PubAck, "Keep what `await js.publish(...)` returns: a PubAck means the server stored it.")
    yield MessageAt(HELLO_STREAM, ack.seq, subject=HELLO_SUBJECT, data=b"hello")


q2 = Question(
    "q2", "Store 'hello' with JetStream",
    uses=["ack"],
    checks=_stored_hello,
    hint=[f"JetStream publishes are awaited: `await js.publish(subject, data)`. The subject is {HELLO_SUBJECT!r}.",
          "The data is bytes: b\"hello\"."],
    solution=f'ack = await js.publish("{HELLO_SUBJECT}", b"hello")',
    exercise="00",
)

QUESTIONS = [q1, q2]
