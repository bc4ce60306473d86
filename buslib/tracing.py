"""W3C trace context across events: one trace id follows a chain of handlers.

>>> from buslib import tracing
>>> with tracing.trace(None) as root:               # start a new trace
...     header = tracing.traceparent()               # what the bus puts on each message
...     with tracing.trace(header) as child:         # what a handler of that message runs in
...         child.trace_id == root.trace_id, child.span_id != root.span_id
(True, True)

The bus adds a ``traceparent`` header (``00-<trace id>-<span id>-<flags>``, the W3C format
OpenTelemetry also uses) to every message it publishes, and runs each handler inside the
incoming message's trace: same trace id, a new span id. So when A publishes, B handles and
publishes, and C handles, all three share A's trace id, and a log line or a dead letter
can be tied back to the request that started it all. The current trace lives in a
``contextvars.ContextVar``, so concurrent handlers (asyncio tasks) never mix theirs up.
No OpenTelemetry dependency: if you use it, its propagator reads the same header.

Traces the bus starts are marked not sampled (flags ``00``): buslib records no spans itself,
which is what the flag says. It also matters to the server: nats-server 2.11+ takes a
sampled ``traceparent`` (``...-01``) as a request for message tracing and checks every such
message for it, even with tracing switched off, which costs ~30% more server CPU per stored
bus message (``sampled_traceparent_cost`` in benchmarks/bench_bus.py). An incoming trace
keeps its flags: a real tracer's sampled ``01`` is passed on unchanged.
"""

from __future__ import annotations

import contextvars
import random
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "HEADER",
    "TraceContext",
    "current_trace",
    "enter",
    "exit_span",
    "new_trace",
    "parse_traceparent",
    "trace",
    "traceparent",
]

HEADER = "traceparent"
_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_random = random.Random()
_current: contextvars.ContextVar[TraceContext | _Deferred | None] = contextvars.ContextVar("buslib_trace", default=None)


@dataclass(frozen=True)
class TraceContext:
    """One span of a trace.

    Attributes:
        trace_id: 32 hex digits shared by every span of the trace.
        span_id: 16 hex digits naming this span.
        parent_span_id: the span this one continues (``None`` for a trace's root).
        flags: W3C trace flags: ``"00"`` for traces buslib starts (it records nothing
            itself), an incoming trace's own (``"01"``: sampled by a tracer upstream).
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None = None
    flags: str = "00"

    @property
    def traceparent(self) -> str:
        """This span as a ``traceparent`` header value."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        """A new span in the same trace, continuing this one."""
        return TraceContext(self.trace_id, _span_id(), self.span_id, self.flags)


def _span_id() -> str:
    # Span ids need to be unique, not secret: the fast generator is fine (trace ids use secrets).
    return f"{_random.getrandbits(64) or 1:016x}"


def new_trace() -> TraceContext:
    """A new root span with a fresh random trace id (not made current; see :func:`trace`)."""
    trace_id = secrets.token_hex(16)
    return TraceContext(trace_id if trace_id != "0" * 32 else secrets.token_hex(16), _span_id())


def parse_traceparent(value: str | bytes | None) -> TraceContext | None:
    """Read a ``traceparent`` header; ``None`` when absent or malformed (per W3C, start anew).

    Args:
        value: the header value, e.g. ``00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01``.
    """
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not value:
        return None
    if value == _last_parsed[0]:  # events of one batch share a header: parse it once
        return _last_parsed[1]
    parsed = _parse(value)
    _last_parsed[:] = [value, parsed]
    return parsed


_last_parsed: list = [None, None]


def _parse(value: str) -> TraceContext | None:
    match = _TRACEPARENT_RE.match(value.strip().lower())
    if not match:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceContext(trace_id, span_id, None, flags)


class _Deferred:
    """A handler's span, made when first asked for.

    Most handlers never ask, and making a span per message (a random id, a frozen
    dataclass) is a measurable part of consuming. Once made, it stays the same for the
    handler and for the tasks it starts (they share this object through the context).
    """

    __slots__ = ("parent", "span")

    def __init__(self, parent: TraceContext) -> None:
        self.parent = parent
        self.span: TraceContext | None = None

    def resolve(self) -> TraceContext:
        if self.span is None:
            self.span = self.parent.child()
        return self.span


def current_trace() -> TraceContext | None:
    """The span this code runs in, or ``None`` outside any trace."""
    span = _current.get()
    return span.resolve() if isinstance(span, _Deferred) else span


@contextmanager
def trace(parent: str | TraceContext | None = None) -> Iterator[TraceContext]:
    """Run a block inside a span: a child of ``parent``, or the root of a new trace.

    Args:
        parent: a ``traceparent`` header value or a :class:`TraceContext` to continue;
            ``None`` (or a malformed header) starts a new trace.

    Returns:
        A context manager yielding the new current :class:`TraceContext`.
    """
    span, token = enter(parent)
    try:
        yield span
    finally:
        _current.reset(token)


def enter(parent: str | TraceContext | None) -> tuple[TraceContext, contextvars.Token[TraceContext | _Deferred | None]]:
    """The non-``with`` form of :func:`trace` for hot paths: returns the span and a token.

    Pass the token to ``exit_span`` when done (in a ``finally``).
    """
    incoming = parse_traceparent(parent) if not isinstance(parent, TraceContext) else parent
    span = incoming.child() if incoming is not None else new_trace()
    return span, _current.set(span)


def _enter_lazily(header: str | bytes | None) -> tuple[str, contextvars.Token[TraceContext | _Deferred | None]]:
    # enter() for the consumer's hot path: the same trace, but the child span (its id) is
    # only made if the handler asks for it (current_trace(), traceparent(), publishing).
    incoming = parse_traceparent(header)
    if incoming is None:
        span = new_trace()
        return span.trace_id, _current.set(span)
    return incoming.trace_id, _current.set(_Deferred(incoming))


def exit_span(token: contextvars.Token[TraceContext | _Deferred | None]) -> None:
    """Restore the span that was current before :func:`enter`."""
    _current.reset(token)


def traceparent() -> str:
    """The ``traceparent`` header for a message sent now (a new trace outside any span)."""
    return (current_trace() or new_trace()).traceparent
