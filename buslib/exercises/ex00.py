"""Exercise 00, warm-up: talk to the server and store your first message.

>>> from buslib.exercises.ex00 import *     # doctest: +SKIP
>>> await reset(js)                          # doctest: +SKIP
>>> q1.check()                               # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from nats.js.api import PubAck

from buslib.exercises.checks import MessageAt, delete_streams
from buslib.exercises.core import Check, Checks, Context, Fail, IsInstance, Question, Satisfies, ____
from buslib.teaching.helpers import wait_for_stream

__all__ = ["____", "q1", "q2", "QUESTIONS", "reset", "HELLO_STREAM", "HELLO_SUBJECT"]

HELLO_STREAM = "EX00_HELLO"
HELLO_SUBJECT = "ex00.hello"


async def reset(js: Any) -> None:
    """Start over: recreate this exercise's stream, empty."""
    await delete_streams(js, HELLO_STREAM)
    await js.add_stream(name=HELLO_STREAM, subjects=[HELLO_SUBJECT])
    await wait_for_stream(js, HELLO_SUBJECT)  # on a cluster: until this node knows the stream


def _version_forms(version: Any) -> tuple[str, set[str]]:
    """The server's version as "major.minor.patch", and every string that names it.

    A release such as 2.11.6 has one form; a pre-release such as 2.12.0-RC.1 is also
    accepted without its suffix (both say which server it is).
    """
    short = f"{version.major}.{version.minor}.{version.patch}"
    suffix = f"-{version.prerelease}" if version.prerelease else ""
    suffix += f"+{version.build}" if version.build else ""
    return short, {short, short + suffix}


class ServerVersionIs(Check):
    """The learner's ``server_version`` is the version the server reports, as "major.minor.patch"."""

    def __init__(self, value: Any) -> None:
        self.value = value

    async def verify(self, ctx: Context) -> None:
        short, accepted = _version_forms((await ctx.nc()).connected_server_version)
        build_it = "Build the string from the version's parts: `major`, `minor` and `patch`."
        if hasattr(self.value, "major") and hasattr(self.value, "patch"):
            raise Fail(
                f"server_version is the object {self.value!r}, not a string. The question asks for a "
                f"string such as {short!r}. {build_it}"
            )
        if not isinstance(self.value, str):
            raise Fail(
                f"server_version is a {type(self.value).__name__} ({self.value!r}); expected a string "
                f"such as {short!r}."
            )
        if self.value.strip().removeprefix("v") in accepted:
            return
        if short in self.value:
            why = "str() of the version object adds words around it. " if self.value.startswith("<nats server") else ""
            raise Fail(f"server_version is {self.value!r}; expected just the version, {short!r}. {why}{build_it}")
        raise Fail(
            f"server_version is {self.value!r}, but the server you are connected to is {short!r}. "
            f"Ask the connection rather than typing it. {build_it}"
        )


q1 = Question(
    "q1",
    "Which server version are you connected to?",
    uses=["server_version"],
    checks=lambda server_version: [ServerVersionIs(server_version)],
    hint=[
        "The connection knows: look at the attributes of `nc` starting with `connected_`.",
        "`nc.connected_server_version` is an object with `major`, `minor` and `patch` (lesson 00 prints "
        "them); `str()` of the object is '<nats server v...>', not the bare version.",
    ],
    solution="""
version = nc.connected_server_version  # an object with major, minor and patch
server_version = f"{version.major}.{version.minor}.{version.patch}"
""",
    exercise="00",
)


def _stored_hello(ack: Any) -> Checks:
    yield IsInstance(
        "ack", ack, PubAck, "Keep what `await js.publish(...)` returns: a PubAck means the server stored it."
    )
    yield Satisfies(
        "ack",
        ack,
        lambda a: a.stream == HELLO_STREAM,
        f"ack says the message was stored in stream {ack.stream!r}; expected {HELLO_STREAM!r} "
        f"(publish to the subject {HELLO_SUBJECT!r}).",
    )
    yield MessageAt(HELLO_STREAM, ack.seq, subject=HELLO_SUBJECT, data=b"hello")


q2 = Question(
    "q2",
    "Store 'hello' with JetStream",
    uses=["ack"],
    checks=_stored_hello,
    hint=[
        f"JetStream publishes are awaited: `await js.publish(subject, data)`. The subject is {HELLO_SUBJECT!r}.",
        'The data is bytes: b"hello".',
    ],
    solution=f'ack = await js.publish("{HELLO_SUBJECT}", b"hello")',
    exercise="00",
)

QUESTIONS = [q1, q2]
