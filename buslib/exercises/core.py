"""The exercise framework: questions, checks against the real server, and their feedback.

>>> from buslib.exercises.core import ____, Question, Equals
>>> q1 = Question("q1", "Pick a name", uses=["NAME"], checks=lambda NAME: [Equals("NAME", NAME, "orders")],
...               hint="Streams are named in capitals.", solution='NAME = "orders"')
>>> q1.outcome({"NAME": ____}).status.value
'not attempted'
>>> print(q1.outcome({"NAME": "ORDERS"}))
[q1] Incorrect: NAME is 'ORDERS', expected 'orders'.

A learner runs ``q1.check()`` (feedback in a green, red or grey box), ``q1.hint()`` and
``q1.solution()``. Checks are small classes whose ``verify`` inspects the real server (and
the learner's objects) and raises :class:`Fail` with what it saw and what it expected.
How an outcome looks (a coloured box, plain text, JSON) is :mod:`buslib.exercises.feedback`.

``check()`` is synchronous: it runs the checks on a fresh connection in a worker thread, so
it behaves the same in JupyterLab, under nbval, in ``buslib progress`` and in plain
Python, never touches the kernel's event loop, and needs no ``await``. Every check's
outcome is also published as ``application/vnd.buslib.check+json`` so tools can collect it,
and on a workshop server it is recorded for the instructor (:mod:`buslib.exercises.recording`).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from buslib.exercises.feedback import MIME_TYPE, Feedback, Outcome, Status, show
from buslib.exercises.recording import record_check
from buslib.teaching.helpers import wait_until

__all__ = [
    "MIME_TYPE",
    "Check",
    "Checks",
    "Context",
    "Fail",
    "Feedback",
    "Outcome",
    "Placeholder",
    "Question",
    "Status",
    "Equals",
    "IsInstance",
    "Satisfies",
    "____",
    "is_placeholder",
    "strict_mode",
    "wait_until",
]

CHECK_TIMEOUT = 30.0  # seconds for one question's checks; server calls take milliseconds


class Placeholder:
    """The ``____`` blank a learner replaces with code.

    It tolerates being used (called, awaited, indexed, iterated, attribute access), so a cell
    such as ``info = await js.add_stream(name=____)`` never crashes: the check then says
    "not attempted" instead of the notebook stopping with an unrelated traceback.
    """

    _instance: Placeholder | None = None

    def __new__(cls) -> Placeholder:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "____"

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        return self

    def __getattr__(self, name: str) -> Placeholder:
        if name.startswith("__") and name.endswith("__"):  # keep copy/pickle/IPython protocols honest
            raise AttributeError(name)
        return self

    def __getitem__(self, key: Any) -> Placeholder:
        return self

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __await__(self) -> Generator[Any, None, Placeholder]:
        return self
        yield  # makes this a generator: `await ____` evaluates to ____

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0


____ = Placeholder()


def is_placeholder(value: Any) -> bool:
    """Whether ``value`` is ``____`` or a list/tuple/set/dict that still holds one."""
    if value is ____:
        return True
    if isinstance(value, Mapping):
        return any(is_placeholder(k) or is_placeholder(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(is_placeholder(v) for v in value)
    return False


class Fail(Exception):
    """Raised by a check: the message says what the server (or object) shows and what was expected."""


class Context:
    """What checks share while one question is checked: a lazily opened connection.

    Args:
        url: the server to check against; ``None`` means ``NATS_URL`` or the embedded server.
            A function returning it is called when the checks first connect, and may raise
            :class:`Fail` (exercise 06: "run the setup cell, it starts the cluster").
    """

    def __init__(self, url: str | list[str] | Callable[[], str | list[str] | None] | None = None) -> None:
        self.url = url
        self._nc: Any = None

    async def nc(self) -> Any:
        """The connection (opened on first use with ``buslib.connect``)."""
        if self._nc is None:
            from buslib.connection import connect

            url = self.url() if callable(self.url) else self.url
            self._nc = await connect(url, name="buslib-exercise-check")
        return self._nc

    @property
    def opened(self) -> Any:
        """The connection if a check opened one, else None."""
        return self._nc

    async def js(self) -> Any:
        """A JetStream context on the connection."""
        return (await self.nc()).jetstream()

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()
            self._nc = None


class Check:
    """Base class of checks. Subclasses implement ``async def verify(self, ctx)``.

    ``verify`` returns when the check passes and raises :class:`Fail` with a specific message
    otherwise. Keep checks small and declarative: the constructor says what is expected.
    """

    async def verify(self, ctx: Context) -> None:
        raise NotImplementedError


Checks = Iterator[Check]  # what a question's check function yields


@dataclass
class Equals(Check):
    """The learner's value ``name`` equals ``expected``."""

    name: str
    value: Any
    expected: Any

    async def verify(self, ctx: Context) -> None:
        if self.value != self.expected:
            raise Fail(f"{self.name} is {self.value!r}, expected {self.expected!r}.")


@dataclass
class IsInstance(Check):
    """The learner's value ``name`` is an instance of ``kind`` (a type or a tuple of types)."""

    name: str
    value: Any
    kind: type | tuple[type, ...]
    advice: str = ""

    async def verify(self, ctx: Context) -> None:
        if not isinstance(self.value, self.kind):
            kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
            wanted = " or ".join(k.__name__ for k in kinds)
            raise Fail(
                f"{self.name} is a {type(self.value).__name__} ({_short(self.value)}), expected a {wanted}. {self.advice}".strip()
            )


@dataclass
class Satisfies(Check):
    """A predicate on the learner's value holds; ``message`` explains the failure."""

    name: str
    value: Any
    predicate: Callable[[Any], bool]
    message: str

    async def verify(self, ctx: Context) -> None:
        try:
            ok = bool(self.predicate(self.value))
        except Exception as err:  # a learner object may not have the shape we need
            raise Fail(f"{self.message} (checking {self.name} raised {type(err).__name__}: {err})") from None
        if not ok:
            raise Fail(self.message)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_strict = False


def strict_mode(enabled: bool = True) -> None:
    """Make every ``check()`` raise AssertionError unless correct (solution notebooks under nbval).

    Solution notebooks call this in a cell tagged ``solution``, so learner copies never do.
    """
    global _strict
    _strict = enabled


class Question:
    """One exercise question: the learner variables it reads, its checks, a hint and a solution.

    Args:
        id: short id such as ``"q1"``.
        title: what the question asks, in a few words.
        uses: names of the learner's variables; while any holds ``____`` (or is undefined) the
            question is "not attempted".
        checks: a function taking those variables (by name) and returning the checks to run,
            in order; the first failure is reported.
        hint: one hint, or several shown one at a time.
        solution: the solution code.
        exercise: the exercise id, e.g. ``"01"`` (set by :func:`buslib.exercises.load`).
        server: where the checks look (see :class:`Context`); by default ``NATS_URL`` or
            the embedded server. Exercise 06 checks the cluster its setup cell started.
    """

    def __init__(
        self,
        id: str,
        title: str,
        *,
        uses: Sequence[str] = (),
        checks: Callable[..., Iterable[Check]],
        hint: str | Sequence[str] = (),
        solution: str = "",
        exercise: str = "",
        server: Callable[[], str | list[str] | None] | None = None,
    ) -> None:
        self.id = id
        self.title = title
        self.uses = tuple(uses)
        self.checks = checks
        self.hints = [hint] if isinstance(hint, str) else list(hint)
        self.solution_text = solution.strip("\n")
        self.exercise = exercise
        self.server = server
        self._hints_shown = 0

    def __repr__(self) -> str:
        return f"<Question {self.exercise}/{self.id} {self.title!r}: try .check(), .hint(), .solution()>"

    # -- running the checks -------------------------------------------------------------
    async def outcome_async(self, namespace: Mapping[str, Any], *, url: str | None = None) -> Outcome:
        """Run the checks against ``namespace`` (the learner's variables) and return the outcome.

        Args:
            namespace: the learner's variables.
            url: the server to check against; ``None`` means the question's own ``server``
                (exercise 06: its cluster), else ``NATS_URL`` or the embedded server.

        On a workshop server the outcome is also recorded for the instructor (best effort); a
        question checked on a server of its own records where ``NATS_URL`` points.
        """
        ctx = Context(url if url is not None else self.server)
        recorder = Context() if url is None and self.server is not None else ctx
        started = time.perf_counter()
        try:
            outcome = await self._evaluate(namespace, ctx)
            await record_check(recorder, outcome, seconds=time.perf_counter() - started)
            return outcome
        finally:
            await ctx.close()
            if recorder is not ctx:
                await recorder.close()

    async def _evaluate(self, namespace: Mapping[str, Any], ctx: Context) -> Outcome:
        values: dict[str, Any] = {}
        missing = [name for name in self.uses if name not in namespace or is_placeholder(namespace[name])]
        if missing:
            names = ", ".join(missing)
            return self._outcome(
                Status.NOT_ATTEMPTED, f"Fill in {names} (replace ____ with your code), run that cell, then check again."
            )
        for name in self.uses:
            values[name] = namespace[name]
        try:
            for check in self.checks(**values):
                await check.verify(ctx)
        except Fail as failure:
            return self._outcome(Status.INCORRECT, str(failure))
        except Exception as err:
            from buslib.errors import ConnectError

            if isinstance(err, ConnectError):
                return self._outcome(Status.ERROR, str(err))
            return self._outcome(Status.INCORRECT, f"Checking your answer raised {type(err).__name__}: {err}")
        return self._outcome(Status.CORRECT, "Well done.")

    def outcome(self, namespace: Mapping[str, Any] | None = None) -> Outcome:
        """Run the checks synchronously (in a worker thread) and return the outcome.

        Args:
            namespace: the learner's variables; defaults to the caller's globals (the notebook).
        """
        if namespace is None:
            namespace = sys._getframe(1).f_globals
        try:
            return _run_in_thread(self.outcome_async(namespace), timeout=CHECK_TIMEOUT)
        except TimeoutError as err:
            return self._outcome(Status.ERROR, str(err))

    def _outcome(self, status: Status, message: str) -> Outcome:
        return Outcome(self.exercise, self.id, self.title, status, message)

    # -- the learner's API --------------------------------------------------------------
    def check(self) -> None:
        """Check your answer against the server and show the feedback (green, red or grey).

        Raises:
            AssertionError: only in strict mode (solution notebooks) when not correct.
        """
        result = self.outcome(sys._getframe(1).f_globals)
        show(result)
        if _strict and not result.correct:
            raise AssertionError(str(result))

    def assert_check(self) -> None:
        """Like ``check()`` but raise AssertionError unless correct (for solutions and tests)."""
        result = self.outcome(sys._getframe(1).f_globals)
        show(result)
        if not result.correct:
            raise AssertionError(str(result))

    def hint(self, n: int | None = None) -> None:
        """Show the next hint (or hint number ``n``, counting from 1)."""
        if not self.hints:
            show(Feedback("hint", self.id, "No hint for this one: try q.solution() if you are stuck."))
            return
        if n is None:
            self._hints_shown = min(self._hints_shown + 1, len(self.hints))
            n = self._hints_shown
        n = max(1, min(n, len(self.hints)))
        more = f"\n(hint {n} of {len(self.hints)}: call .hint() again for the next)" if n < len(self.hints) else ""
        show(Feedback("hint", self.id, self.hints[n - 1] + more))

    def solution(self) -> None:
        """Show a solution."""
        show(Feedback("solution", self.id, self.solution_text or "(no solution text)", code=True))


def _run_in_thread(coro: Any, *, timeout: float) -> Any:
    """Run a coroutine to completion on a new event loop in a worker thread.

    Why a thread: a notebook kernel's loop is already running (``asyncio.run`` fails there)
    and patching it (nest_asyncio) changes how the learner's own tasks run. A private loop
    with its own connection leaves the kernel's loop alone.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(asyncio.wait_for(coro, timeout))
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="buslib-check", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        err = box["error"]
        if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
            raise TimeoutError(f"The check did not finish within {timeout:.0f} s. Is the server reachable?") from None
        raise err
    return box["value"]
