"""W3C trace context: format, parsing, nesting, isolation between tasks."""

from __future__ import annotations

import asyncio
import re

from buslib import tracing

OTEL_EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # from the W3C spec


def test_outside_any_trace_there_is_no_current_trace_and_each_header_is_a_new_trace():
    assert tracing.current_trace() is None
    first, second = tracing.traceparent(), tracing.traceparent()
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", first)  # not sampled: buslib records nothing
    assert first.split("-")[1] != second.split("-")[1]


def test_trace_continues_an_incoming_header_with_the_same_trace_id_and_a_new_span():
    with tracing.trace(OTEL_EXAMPLE) as span:
        assert span.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert span.parent_span_id == "00f067aa0ba902b7"
        assert span.span_id != "00f067aa0ba902b7"
        assert tracing.current_trace() is span
        assert tracing.traceparent() == f"00-{span.trace_id}-{span.span_id}-01"  # the tracer's flags, kept
    assert tracing.current_trace() is None


def test_nested_traces_restore_the_outer_one():
    with tracing.trace(None) as outer:
        with tracing.trace(tracing.traceparent()) as inner:
            assert inner.trace_id == outer.trace_id
            assert inner.parent_span_id == outer.span_id
        assert tracing.current_trace() is outer


def test_malformed_or_invalid_headers_start_a_new_trace():
    bad = [
        None,
        "",
        "garbage",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "ff-" + OTEL_EXAMPLE[3:],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
        OTEL_EXAMPLE + "-extra",
    ]
    for value in bad:
        assert tracing.parse_traceparent(value) is None, value
        with tracing.trace(value) as span:
            assert span.parent_span_id is None and span.trace_id != "0" * 32


def test_header_parsing_accepts_bytes_uppercase_and_future_versions():
    assert tracing.parse_traceparent(OTEL_EXAMPLE.encode()).trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracing.parse_traceparent(OTEL_EXAMPLE.upper()) is not None
    assert tracing.parse_traceparent("01" + OTEL_EXAMPLE[2:] + "-more") is not None  # newer versions may append


async def test_concurrent_tasks_keep_their_own_traces():
    seen: dict[str, tuple[str, str | None]] = {}

    async def job(name: str) -> None:
        with tracing.trace(None) as span:
            await asyncio.sleep(0.01)
            current = tracing.current_trace()
            seen[name] = (span.trace_id, current.trace_id if current else None)

    await asyncio.gather(*(job(str(i)) for i in range(5)))
    assert all(own == current for own, current in seen.values())
    assert len({own for own, _ in seen.values()}) == 5
