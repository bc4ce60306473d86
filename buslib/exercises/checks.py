"""Checks that inspect the real server: streams, messages, consumers.

>>> from buslib.exercises.checks import StreamHas, MessagesStored
>>> checks = [StreamHas("EX01_ORDERS", covers=["ex01.orders.created"], storage="file"),
...           MessagesStored("EX01_ORDERS", count=3)]

Each check is a small declarative class: the constructor says what is expected, ``verify``
asks the server and raises :class:`~buslib.exercises.core.Fail` saying what the server shows
and what was expected. Checks of later lessons (dead letters, contracts) live next to their
exercise in ``exNN.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from nats.js.errors import NotFoundError

from buslib.exercises.core import Check, Context, Fail, _short
from buslib.subjects import subject_matches
from buslib.teaching.helpers import delete_streams

__all__ = ["StreamHas", "MessagesStored", "MessageAt", "ConsumerConfigIs", "subject_matches"]


def _json_object(data: bytes | None) -> dict[str, Any]:
    try:
        payload = json.loads(data or b"")
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


async def stored_messages(js: Any, stream: str, subject: str) -> list[Any]:
    """Every message of ``stream`` on ``subject`` (wildcards allowed), oldest first."""
    found: list[Any] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return found
        found.append(msg)
        seq = msg.seq + 1


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _same(actual: Any, expected: Any) -> bool:
    actual, expected = _plain(actual), _plain(expected)
    if isinstance(expected, float) or isinstance(actual, float):
        return actual is not None and math.isclose(float(actual), float(expected), rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(expected, Sequence) and not isinstance(expected, str):
        return (
            actual is not None
            and len(actual) == len(expected)
            and all(_same(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return actual == expected


async def _stream_info(ctx: Context, stream: str, subjects_filter: str | None = None) -> Any:
    js = await ctx.js()
    try:
        return await js.stream_info(stream, subjects_filter=subjects_filter)
    except NotFoundError:
        raise Fail(
            f"There is no stream named {stream!r} on the server. Run the cell that creates it, then check again."
        ) from None


@dataclass
class StreamHas(Check):
    """Stream ``stream`` exists with this configuration (only the given fields are checked).

    Args:
        covers: concrete subjects the stream must capture (its subject filters match them).
        avoids: concrete subjects the stream must not capture.
        storage: ``"file"`` or ``"memory"``.
        min_duplicate_window: the dedup window must be at least this many seconds.
        limits: other config fields that must equal a value, e.g. ``max_msgs=5``.
    """

    stream: str
    covers: Sequence[str] = ()
    avoids: Sequence[str] = ()
    storage: str | None = None
    min_duplicate_window: float | None = None
    limits: Mapping[str, Any] = field(default_factory=dict)

    def __init__(
        self,
        stream: str,
        *,
        covers: Sequence[str] = (),
        avoids: Sequence[str] = (),
        storage: str | None = None,
        min_duplicate_window: float | None = None,
        **limits: Any,
    ) -> None:
        self.stream, self.covers, self.avoids, self.storage = stream, tuple(covers), tuple(avoids), storage
        self.min_duplicate_window, self.limits = min_duplicate_window, limits

    async def verify(self, ctx: Context) -> None:
        config = (await _stream_info(ctx, self.stream)).config
        filters = config.subjects or []
        for subject in self.covers:
            if not any(subject_matches(f, subject) for f in filters):
                raise Fail(
                    f"Stream {self.stream} captures {filters}, which does not cover {subject!r}. "
                    f"Add a subject filter that matches it (e.g. a wildcard)."
                )
        for subject in self.avoids:
            matching = [f for f in filters if subject_matches(f, subject)]
            if matching:
                raise Fail(
                    f"Stream {self.stream} captures {filters}: {matching[0]!r} also matches {subject!r}, which "
                    f"does not belong in this stream. Narrow the subject filter."
                )
        if self.storage is not None and _plain(config.storage) != self.storage:
            raise Fail(f"Stream {self.stream} uses storage={_plain(config.storage)!r}; expected {self.storage!r}.")
        if self.min_duplicate_window is not None and (config.duplicate_window or 0) < self.min_duplicate_window:
            raise Fail(
                f"Stream {self.stream} has duplicate_window={config.duplicate_window} s; expected at least "
                f"{self.min_duplicate_window} s so retried publishes are recognised as duplicates."
            )
        for name, expected in self.limits.items():
            actual = getattr(config, name)
            if not _same(actual, expected):
                raise Fail(f"Stream {self.stream} has {name}={_plain(actual)!r}; expected {name}={_plain(expected)!r}.")


@dataclass
class MessagesStored(Check):
    """Stream ``stream`` holds exactly ``count`` messages (on ``subject``, if given).

    Args:
        first_seq: if given, the oldest message kept must have this sequence (proves a limit
            removed the older ones).
    """

    stream: str
    count: int
    subject: str | None = None
    first_seq: int | None = None

    async def verify(self, ctx: Context) -> None:
        info = await _stream_info(ctx, self.stream, subjects_filter=self.subject)
        if self.subject is None:
            actual, where = info.state.messages, f"stream {self.stream}"
        else:
            actual = sum((info.state.subjects or {}).values())
            where = f"stream {self.stream} on {self.subject!r}"
        if actual != self.count:
            raise Fail(f"The {where} holds {actual} message(s); expected {self.count}.")
        if self.first_seq is not None and info.state.first_seq != self.first_seq:
            raise Fail(
                f"The oldest message in stream {self.stream} has sequence {info.state.first_seq}; expected "
                f"{self.first_seq} (the {self.first_seq - 1} oldest removed by the limit)."
            )


@dataclass
class MessageAt(Check):
    """The message at sequence ``seq`` of ``stream`` has this subject / data / headers / JSON fields."""

    stream: str
    seq: int
    subject: str | None = None
    data: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    json_fields: Mapping[str, Any] = field(default_factory=dict)

    async def verify(self, ctx: Context) -> None:
        await _stream_info(ctx, self.stream)
        js = await ctx.js()
        try:
            msg = await js.get_msg(self.stream, self.seq)
        except NotFoundError:
            raise Fail(f"Stream {self.stream} has no message with sequence {self.seq}.") from None
        if self.subject is not None and msg.subject != self.subject:
            raise Fail(
                f"Message {self.seq} in {self.stream} was published on {msg.subject!r}; expected {self.subject!r}."
            )
        if self.data is not None and msg.data != self.data:
            raise Fail(f"Message {self.seq} in {self.stream} holds {msg.data!r}; expected {self.data!r}.")
        for name, expected in self.headers.items():
            actual = (msg.headers or {}).get(name)
            if actual != expected:
                raise Fail(f"Message {self.seq} in {self.stream} has header {name}={actual!r}; expected {expected!r}.")
        if self.json_fields:
            payload = _json_object(msg.data)
            for name, expected in self.json_fields.items():
                if payload.get(name) != expected:
                    raise Fail(
                        f"Message {self.seq} in {self.stream} has {name}={payload.get(name)!r} in its JSON "
                        f"payload; expected {expected!r}."
                    )


@dataclass
class ConsumerConfigIs(Check):
    """Durable consumer ``durable`` on ``stream`` exists with these config fields.

    Example: ``ConsumerConfigIs("EX03_JOBS", "workers", max_deliver=3, ack_wait=1.0)``.
    """

    stream: str
    durable: str
    expected: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, stream: str, durable: str, **expected: Any) -> None:
        self.stream, self.durable, self.expected = stream, durable, expected

    async def verify(self, ctx: Context) -> None:
        await _stream_info(ctx, self.stream)
        js = await ctx.js()
        try:
            config = (await js.consumer_info(self.stream, self.durable)).config
        except NotFoundError:
            raise Fail(
                f"Stream {self.stream} has no consumer named {self.durable!r}. "
                "Create it (subscribing with that durable/group name creates it), then check again."
            ) from None
        for name, expected in self.expected.items():
            actual = getattr(config, name)
            if not _same(actual, expected):
                raise Fail(
                    f"Consumer {self.durable} on {self.stream} has {name}={_plain(actual)!r}; "
                    f"expected {name}={_plain(expected)!r}."
                )


@dataclass
class CallsStoreOnce(Check):
    """``publish(js, key, data)`` is safe to retry because the *server* recognises the retry.

    The check really calls the learner's async function, on its own connection: twice with
    one key, once with another. It passes when three calls stored two messages, the first
    call returned the PubAck, and each stored message carries a ``Nats-Msg-Id`` header (so
    the server, not the process's memory, drops a retry: a retry after a restart or from
    another instance is dropped too).
    """

    stream: str
    publish: Callable[[Any, str, bytes], Awaitable[Any]]
    name: str = "publish"

    async def verify(self, ctx: Context) -> None:
        import uuid

        from nats.js.api import PubAck

        js = await ctx.js()
        before = (await _stream_info(ctx, self.stream)).state.last_seq
        first, second = f"check-{uuid.uuid4().hex[:8]}", f"check-{uuid.uuid4().hex[:8]}"
        answers = []
        for key in (first, first, second):  # a retry of `first`, then a different key
            try:
                answers.append(await self.publish(js, key, b'{"check": true}'))
            except Exception as err:
                raise Fail(
                    f"Calling {self.name}(js, {key!r}, data) raised {type(err).__name__}: {err}. It must publish "
                    "with the `js` it receives as first argument (the checker passes its own connection; "
                    "a global one from the notebook is busy while the check runs)."
                ) from None
        if not isinstance(answers[0], PubAck):
            raise Fail(
                f"{self.name}(js, {first!r}, data) returned {_short(answers[0])}; expected the PubAck that "
                "`await js.publish(...)` returns."
            )
        stored = (await _stream_info(ctx, self.stream)).state.last_seq - before
        if stored == 3:
            raise Fail(
                f"Calling {self.name} twice with the same key {first!r} stored 2 messages in {self.stream}; "
                "expected 1. Give each publish a Nats-Msg-Id header derived from the key, so the "
                "server drops the retry as a duplicate."
            )
        if stored == 1:
            raise Fail(
                f"{self.name} with two different keys ({first!r}, {second!r}) stored only 1 message; expected 2. "
                "The Nats-Msg-Id must differ per key, or different messages are dropped as duplicates."
            )
        if stored != 2:
            raise Fail(
                f"Three calls of {self.name} (key {first!r} twice, {second!r} once) stored {stored} "
                f"message(s) in {self.stream}; expected 2."
            )
        msg = await js.get_msg(self.stream, answers[0].seq)
        if not (msg.headers or {}).get("Nats-Msg-Id"):
            raise Fail(
                f"The message {self.name} stored for key {first!r} has no Nats-Msg-Id header, so the server "
                "cannot recognise a retry: your function skipped it itself. A memory of what was sent is "
                "lost when the service restarts and is not shared with its other instances. Publish the "
                "retry again, with a Nats-Msg-Id derived from the key, and let the server drop it."
            )


__all__ += ["CallsStoreOnce"]


__all__ += ["delete_streams"]  # an exercise's setup starts from a clean slate (buslib.teaching.helpers)


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("NoneType", "None")


@dataclass
class EventContract(Check):
    """``cls`` is a buslib Event class with this type, version and fields.

    ``fields`` maps a field name to its type, or to a tuple of the types accepted
    (e.g. ``(bool, bool | None)``); the first one is named in the feedback.
    """

    name: str
    cls: Any
    type: str
    version: int
    fields: Mapping[str, Any]

    async def verify(self, ctx: Context) -> None:
        from buslib.events import Event

        if not (isinstance(self.cls, type) and issubclass(self.cls, Event)):
            raise Fail(
                f"{self.name} must be a class that extends buslib.Event, got {_short(self.cls)}. "
                f"Write `class {self.name}(Event, type=..., version=...):`."
            )
        if (self.cls.event_type, self.cls.event_version) != (self.type, self.version):
            raise Fail(
                f"{self.name} declares type {self.cls.event_type!r} version {self.cls.event_version} "
                f"(subject {self.cls.subject()}); expected type {self.type!r} version {self.version}."
            )
        model_fields = self.cls.model_fields
        for field_name, wanted in self.fields.items():
            accepted = wanted if isinstance(wanted, tuple) else (wanted,)
            if field_name not in model_fields:
                raise Fail(
                    f"{self.name} has no field {field_name!r}; expected {field_name}: {_type_name(accepted[0])}."
                )
            actual = model_fields[field_name].annotation
            if not any(actual == option for option in accepted):
                raise Fail(
                    f"{self.name}.{field_name} is declared as {_type_name(actual)}; expected {_type_name(accepted[0])}."
                )


@dataclass
class TraceCarried(Check):
    """Every message on ``effect`` belongs to the trace of the ``cause`` message with the same ``key``.

    Both subjects live in ``stream``; ``key`` is a JSON field they share (e.g. ``shipment_id``).

    Args:
        every_cause: also require an ``effect`` message for every ``cause`` message.
    """

    stream: str
    cause: str
    effect: str
    key: str
    every_cause: bool = False

    async def verify(self, ctx: Context) -> None:
        from buslib.tracing import parse_traceparent

        await _stream_info(ctx, self.stream)
        js = await ctx.js()
        effects = await stored_messages(js, self.stream, self.effect)
        if not effects:
            raise Fail(
                f"Stream {self.stream} has no message on {self.effect!r}: did the handler run and publish? "
                "Wait for it (wait_until) before checking."
            )
        causes = {}
        for msg in await stored_messages(js, self.stream, self.cause):
            causes[_json_object(msg.data).get(self.key)] = parse_traceparent((msg.headers or {}).get("traceparent"))
        for msg in effects:
            key = _json_object(msg.data).get(self.key)
            if key not in causes:
                raise Fail(
                    f"Message {msg.seq} on {self.effect} has {self.key}={key!r}, but no message on {self.cause} "
                    "has that value."
                )
            got = parse_traceparent((msg.headers or {}).get("traceparent"))
            if got is None:
                raise Fail(
                    f"Message {msg.seq} on {self.effect} has no traceparent header, so its trace is lost. "
                    "Publish it with bus.publish() inside the handler."
                )
            want = causes[key]
            if want is None or got.trace_id != want.trace_id:
                raise Fail(
                    f"Message {msg.seq} on {self.effect} is in trace {got.trace_id}, but the "
                    f"{self.cause} message it answers ({self.key}={key!r}) is in trace "
                    f"{want.trace_id if want else None}. Publish from inside the handler, in its trace, "
                    "without starting a new one."
                )
        answered = {_json_object(msg.data).get(self.key) for msg in effects}
        unanswered = sorted(str(key) for key in causes if key not in answered)
        if self.every_cause and unanswered:
            raise Fail(
                f"No message on {self.effect} answers {self.key} {', '.join(unanswered)} yet (stream {self.stream} "
                f"holds {len(causes)} on {self.cause}). Wait until every one is answered before checking."
            )


__all__ += ["EventContract", "TraceCarried", "stored_messages"]
