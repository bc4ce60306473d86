"""The lesson helpers in buslib.teaching: they must fail when a lesson's claim is false."""

from __future__ import annotations

import asyncio
import time

import pytest

from buslib.teaching import expect_error, timed, wait_until


def test_expect_error_keeps_the_expected_error() -> None:
    with expect_error(KeyError) as caught:
        {}["missing"]
    assert isinstance(caught.error, KeyError)
    assert repr(caught) == "KeyError: 'missing'"


def test_expect_error_fails_when_nothing_is_raised() -> None:
    with pytest.raises(AssertionError, match="Expected ValueError to be raised"):
        with expect_error(ValueError):
            pass


def test_expect_error_lets_a_different_error_through() -> None:
    with pytest.raises(KeyError):
        with expect_error(ValueError):
            raise KeyError("not the one")


def test_expect_error_checks_the_message() -> None:
    with expect_error(ValueError, match="bad"):
        raise ValueError("a bad value")
    with pytest.raises(AssertionError, match="does not contain 'bad'"):
        with expect_error(ValueError, match="bad"):
            raise ValueError("something else")


def test_expect_error_accepts_several_types() -> None:
    with expect_error(KeyError, ValueError) as caught:
        raise ValueError("x")
    assert isinstance(caught.error, ValueError)


def test_expect_error_needs_a_type() -> None:
    with pytest.raises(TypeError):
        expect_error()


async def test_expect_error_works_with_async_with() -> None:
    async with expect_error(asyncio.TimeoutError) as caught:
        await asyncio.wait_for(asyncio.sleep(1), timeout=0.01)
    assert isinstance(caught.error, asyncio.TimeoutError)
    with pytest.raises(AssertionError):
        async with expect_error(ValueError):
            await asyncio.sleep(0)


async def test_timed_measures_at_least_the_time_spent() -> None:
    async with timed() as clock:
        await asyncio.sleep(0.05)
    assert clock.seconds >= 0.04
    before = time.perf_counter()
    with timed() as quick:
        pass
    assert 0 <= quick.seconds <= time.perf_counter() - before  # what it measured, not more


async def test_wait_until_returns_the_first_truthy_result() -> None:
    calls = []

    def check() -> list[int] | None:
        calls.append(1)
        return calls if len(calls) >= 3 else None

    assert await wait_until(check, interval=0.001) == [1, 1, 1]


async def test_wait_until_accepts_coroutine_functions() -> None:
    async def ready() -> str:
        return "yes"

    assert await wait_until(ready) == "yes"


async def test_wait_until_fails_with_a_readable_message() -> None:
    with pytest.raises(TimeoutError, match="for all 3 messages handled, in vain"):
        await wait_until(lambda: False, timeout=0.05, interval=0.01, what="all 3 messages handled")
