"""Every exercise question against the real server: right answers pass, wrong ones get the feedback a learner sees.

Each answer below is what a learner could write in the notebook: it runs after the exercise's
own setup cell (read from the solution notebook), in a namespace like the notebook's, and the
question is then checked against that namespace. For every question there are at least two
different right answers (its solution, run from ``q.solution_text``, and another a learner
would plausibly write) and at least two wrong ones, each with the words of the feedback the
learner must see (``test_every_question_has_two_right_and_two_wrong_answers`` keeps it so).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest

from buslib import events
from buslib.contracts import versions
from buslib.exercises import EXERCISES, load, questions
from buslib.exercises.core import Status

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "exercises" / "solutions"

Learner = dict[str, Any]  # the notebook's global namespace
MODULES = [load(exercise) for exercise in EXERCISES]  # their event classes register now, before any snapshot


@dataclass(frozen=True)
class Answer:
    exercise: str
    question: str
    name: str
    build: Callable[[Learner], Awaitable[None]]
    feedback: tuple[str, ...]  # words the Incorrect message must contain; () for a right answer

    @property
    def right(self) -> bool:
        return not self.feedback

    def __str__(self) -> str:
        return f"ex{self.exercise}-{self.question}-{'right' if self.right else 'wrong'}-{self.name}"


ANSWERS: list[Answer] = []


def right(exercise: str, question: str):
    """Register a right answer: the check must say Correct."""

    def register(build):
        ANSWERS.append(Answer(exercise, question, build.__name__, build, ()))
        return build

    return register


def wrong(exercise: str, question: str, *feedback: str):
    """Register a wrong answer: the check must say Incorrect, with all these words."""
    assert feedback, "a wrong answer names the feedback the learner must see"

    def register(build):
        ANSWERS.append(Answer(exercise, question, build.__name__, build, feedback))
        return build

    return register


async def run(learner: Learner, code: str) -> None:
    """Run ``code`` as a notebook cell would: top-level ``await`` allowed, globals = ``learner``."""
    compiled = compile(textwrap.dedent(code), "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, learner)
    if inspect.iscoroutine(result):
        await result


async def solve(learner: Learner, exercise: str, question: str) -> None:
    """Run the question's solution (the code of its solution notebook)."""
    await run(learner, getattr(load(exercise), question).solution_text)


def solution(exercise: str, question: str, *, after: tuple[str, ...] = (), given: str = "") -> None:
    """Register the question's own solution as a right answer.

    Args:
        after: questions whose solutions run first (what the learner did before).
        given: code that runs first instead, e.g. a quick version of the earlier questions.
    """

    async def build(learner: Learner) -> None:
        if given:
            await run(learner, given)
        for earlier in after:
            await solve(learner, exercise, earlier)
        await solve(learner, exercise, question)

    build.__name__ = "solution"
    right(exercise, question)(build)


def setup_cell(exercise: str) -> str:
    """The exercise's setup cell: the first code cell of its solution notebook."""
    (path,) = SOLUTIONS.glob(f"ex{exercise}_*.ipynb")
    notebook = nbformat.read(path, as_version=4)
    return next(cell.source for cell in notebook.cells if cell.cell_type == "code")


@pytest.fixture
async def learner_of():
    """Start an exercise like a learner: run its setup cell; close what it opened afterwards."""
    saved = [(table, dict(table)) for table in (events._REGISTRY, versions._UPCASTERS, versions._DOWNCASTERS)]
    started: list[Learner] = []

    async def start(exercise: str) -> Learner:
        learner: Learner = {"__name__": "__main__", "_cleanup": []}
        started.append(learner)
        await run(learner, setup_cell(exercise))
        return learner

    yield start
    for learner in started:
        for cleanup in learner["_cleanup"]:
            await cleanup()
        for name in ("bus", "nc"):
            if learner.get(name) is not None:
                await learner[name].close()
        if learner.get("cluster") is not None:  # exercise 06 starts a cluster of its own
            await asyncio.to_thread(learner["cluster"].stop)
    for table, before in saved:  # classes and upcasters defined by answers are forgotten
        table.clear()
        table.update(before)


@pytest.mark.parametrize("answer", ANSWERS, ids=str)
async def test_the_learner_sees_this_feedback(answer: Answer, learner_of):
    learner = await learner_of(answer.exercise)
    await answer.build(learner)
    outcome = await getattr(load(answer.exercise), answer.question).outcome_async(learner)
    if answer.right:
        assert (outcome.status, outcome.message) == (Status.CORRECT, "Well done."), outcome
    else:
        assert outcome.status is Status.INCORRECT, outcome
        missing = [words for words in answer.feedback if words not in outcome.message]
        assert not missing, f"{missing} not in the feedback: {outcome.message}"


def test_every_question_has_two_right_and_two_wrong_answers():
    for exercise in EXERCISES:
        for question in questions(exercise):
            mine = [a for a in ANSWERS if (a.exercise, a.question) == (exercise, question.id)]
            rights = [a.name for a in mine if a.right]
            assert "solution" in rights, f"ex{exercise} {question.id}: its solution is not among the right answers"
            assert len(set(rights)) >= 2, f"ex{exercise} {question.id}: right answers {rights}"
            assert len([a for a in mine if not a.right]) >= 2, f"ex{exercise} {question.id}: fewer than 2 wrong answers"


# == 00 ======================================================================================
solution("00", "q1")


@right("00", "q1")
async def the_parts_joined(learner):
    await run(
        learner,
        """
        v = nc.connected_server_version
        server_version = ".".join(str(part) for part in (v.major, v.minor, v.patch))
    """,
    )


@right("00", "q1")
async def from_the_servers_info(learner):
    await run(learner, 'server_version = nc._server_info["version"]  # what the server sent on connect')


@wrong("00", "q1", "server_version is '<nats server v", "expected just the version", "`major`, `minor` and `patch`")
async def str_of_the_version_object(learner):
    await run(learner, "server_version = str(nc.connected_server_version)")


@wrong("00", "q1", "server_version is the object <nats server v", "not a string")
async def the_version_object(learner):
    await run(learner, "server_version = nc.connected_server_version")


@wrong("00", "q1", "server_version is '1.0.0', but the server you are connected to is", "Ask the connection")
async def a_typed_version(learner):
    await run(learner, 'server_version = "1.0.0"')


solution("00", "q2")


@right("00", "q2")
async def encoded_text_and_the_stream_named(learner):
    await run(learner, 'ack = await js.publish(HELLO_SUBJECT, "hello".encode(), stream=HELLO_STREAM)')


@wrong("00", "q2", "ack is a NoneType", "Keep what `await js.publish(...)` returns")
async def a_core_publish(learner):
    await run(learner, 'ack = await nc.publish("ex00.hello", b"hello")  # core NATS: no PubAck')


@wrong("00", "q2", "holds b'Hello'; expected b'hello'")
async def capital_hello(learner):
    await run(learner, 'ack = await js.publish("ex00.hello", b"Hello")')


@wrong("00", "q2", "stored in stream 'EX00_OTHER'; expected 'EX00_HELLO'", "publish to the subject 'ex00.hello'")
async def another_stream(learner):
    await run(
        learner,
        """
        await js.add_stream(name="EX00_OTHER", subjects=["ex00.other"])
        ack = await js.publish("ex00.other", b"hello")
    """,
    )
    learner["_cleanup"].append(lambda: learner["js"].delete_stream("EX00_OTHER"))


# == 01 ======================================================================================
solution("01", "q1")


@right("01", "q1")
async def one_token_wildcard_in_a_config(learner):
    await run(
        learner,
        """
        from nats.js.api import StorageType, StreamConfig

        orders = await js.add_stream(StreamConfig(name="EX01_ORDERS", subjects=["ex01.orders.*"], storage=StorageType.FILE))
    """,
    )


@wrong("01", "q1", "which does not cover 'ex01.orders.future", "(e.g. a wildcard)")
async def the_two_subjects_listed(learner):
    await run(
        learner,
        """
        orders = await js.add_stream(name=ORDERS_STREAM, subjects=["ex01.orders.created", "ex01.orders.paid"],
                                     storage="file")
    """,
    )


@wrong("01", "q1", "'ex01.>' also matches 'ex01.recent.1'", "Narrow the subject filter")
async def every_subject_of_the_exercise(learner):
    await run(learner, 'orders = await js.add_stream(name=ORDERS_STREAM, subjects=["ex01.>"], storage="file")')


@wrong("01", "q1", "uses storage='memory'; expected 'file'")
async def memory_storage(learner):
    await run(learner, 'orders = await js.add_stream(name=ORDERS_STREAM, subjects=["ex01.orders.>"], storage="memory")')


@wrong("01", "q1", "orders is a str", "Keep what `await js.add_stream(...)` returns")
async def the_name_kept_instead_of_the_info(learner):
    await run(
        learner,
        """
        await js.add_stream(name=ORDERS_STREAM, subjects=["ex01.orders.>"], storage="file")
        orders = ORDERS_STREAM
    """,
    )


solution("01", "q2", after=("q1",))


@right("01", "q2")
async def the_order_id_as_message_id(learner):
    await solve(learner, "01", "q1")
    await run(
        learner,
        """
        async def publish_order(js, order_id, data):
            return await js.publish("ex01.orders.created", data, headers={"Nats-Msg-Id": str(order_id)})
    """,
    )


@right("01", "q2")
async def acks_remembered_and_the_server_deduplicating(learner):
    await solve(learner, "01", "q1")
    await run(
        learner,
        """
        sent = {}

        async def publish_order(js, order_id, data):
            if order_id not in sent:  # a shortcut; the Nats-Msg-Id still guards retries from elsewhere
                sent[order_id] = await js.publish("ex01.orders.created", data, headers={"Nats-Msg-Id": order_id})
            return sent[order_id]
    """,
    )


@wrong(
    "01",
    "q2",
    "twice with the same key 'check-",
    "stored 2 messages in EX01_ORDERS; expected 1",
    "Give each publish a Nats-Msg-Id",
)
async def no_message_id(learner):
    await solve(learner, "01", "q1")
    await run(
        learner,
        """
        async def publish_order(js, order_id, data):
            return await js.publish("ex01.orders.created", data)
    """,
    )


@wrong("01", "q2", "has no Nats-Msg-Id header", "your function skipped it itself", "restarts")
async def a_set_of_ids_in_memory(learner):
    await solve(learner, "01", "q1")
    await run(
        learner,
        """
        seen = set()

        async def publish_order(js, order_id, data):
            if order_id in seen:
                return None
            seen.add(order_id)
            return await js.publish("ex01.orders.created", data)
    """,
    )


@wrong("01", "q2", "stored 2 messages in EX01_ORDERS; expected 1")
async def a_new_id_for_every_attempt(learner):
    await solve(learner, "01", "q1")
    await run(
        learner,
        """
        import uuid

        async def publish_order(js, order_id, data):
            return await js.publish("ex01.orders.created", data, headers={"Nats-Msg-Id": str(uuid.uuid4())})
    """,
    )


@wrong("01", "q2", "with two different keys", "stored only 1 message; expected 2")
async def one_id_for_every_order(learner):
    await solve(learner, "01", "q1")
    await run(
        learner,
        """
        async def publish_order(js, order_id, data):
            return await js.publish("ex01.orders.created", data, headers={"Nats-Msg-Id": "order"})
    """,
    )


@wrong("01", "q2", "returned None; expected the PubAck")
async def the_ack_not_returned(learner):
    await solve(learner, "01", "q1")
    await run(
        learner,
        """
        async def publish_order(js, order_id, data):
            await js.publish("ex01.orders.created", data, headers={"Nats-Msg-Id": order_id})
    """,
    )


@wrong("01", "q2", "publish_order must be an `async def` function")
async def not_async(learner):
    await solve(learner, "01", "q1")
    await run(
        learner,
        """
        def publish_order(js, order_id, data):
            return js.publish("ex01.orders.created", data, headers={"Nats-Msg-Id": order_id})
    """,
    )


solution("01", "q3")


@right("01", "q3")
async def discard_old_spelled_out_and_one_subject(learner):
    await run(
        learner,
        """
        from nats.js.api import DiscardPolicy, StreamConfig

        config = StreamConfig(name=RECENT_STREAM, subjects=["ex01.recent.>"], max_msgs=5, discard=DiscardPolicy.OLD)
        recent = await js.add_stream(config)
        for n in range(8):
            await js.publish("ex01.recent.x", str(n).encode())
    """,
    )


@wrong("01", "q3", "oldest message in stream EX01_RECENT has sequence 1; expected 4")
async def the_limit_never_reached(learner):
    await run(
        learner,
        """
        recent = await js.add_stream(name=RECENT_STREAM, subjects=["ex01.recent.>"], max_msgs=5)
        for n in range(5):
            await js.publish(f"ex01.recent.{n}", b"x")
    """,
    )


@wrong("01", "q3", "Stream EX01_RECENT has max_msgs=-1; expected max_msgs=5")
async def a_limit_per_subject(learner):
    await run(
        learner,
        """
        recent = await js.add_stream(name=RECENT_STREAM, subjects=["ex01.recent.>"], max_msgs_per_subject=5)
        for n in range(8):
            await js.publish("ex01.recent.x", b"x")
    """,
    )


@wrong("01", "q3", "Stream EX01_RECENT has max_msgs=8; expected max_msgs=5")
async def a_limit_of_eight(learner):
    await run(
        learner,
        """
        recent = await js.add_stream(name=RECENT_STREAM, subjects=["ex01.recent.>"], max_msgs=8)
        for n in range(8):
            await js.publish(f"ex01.recent.{n}", b"x")
    """,
    )


# == 02 ======================================================================================
solution("02", "q1")


@right("02", "q1")
async def validated_fields_in_another_order(learner):
    await run(
        learner,
        '''
        from pydantic import Field

        class ShipmentDispatched(Event, type="ex02.shipments.dispatched", version=1):
            """A parcel left the warehouse."""

            weight_kg: float = Field(gt=0)
            shipment_id: str = Field(min_length=1)
    ''',
    )


@wrong("02", "q1", "declares type 'ex02.shipment.dispatched' version 1", "expected type 'ex02.shipments.dispatched'")
async def singular_type_name(learner):
    await run(
        learner,
        """
        class ShipmentDispatched(Event, type="ex02.shipment.dispatched", version=1):
            shipment_id: str
            weight_kg: float
    """,
    )


@wrong("02", "q1", "ShipmentDispatched.weight_kg is declared as int; expected float.")
async def weight_as_int(learner):
    await run(
        learner,
        """
        class ShipmentDispatched(Event, type="ex02.shipments.dispatched", version=1):
            shipment_id: str
            weight_kg: int
    """,
    )


@wrong("02", "q1", "ShipmentDispatched must be a class that extends buslib.Event")
async def a_plain_dict(learner):
    await run(learner, 'ShipmentDispatched = {"shipment_id": "S-1", "weight_kg": 2.5}')


solution("02", "q2", after=("q1",))


@right("02", "q2")
async def publish_many_with_one_event(learner):
    await solve(learner, "02", "q1")
    await run(
        learner,
        """
        event = ShipmentDispatched(shipment_id="S-1", weight_kg=5 / 2)
        (ack,) = await bus.publish_many([event])
    """,
    )


@wrong("02", "q2", "has header ce-source='shipping'; expected 'warehouse'")
async def another_service_bus(learner):
    await solve(learner, "02", "q1")
    await run(
        learner,
        """
        shipping_bus = await EventBus.connect(service="shipping")
        ack = await shipping_bus.publish(ShipmentDispatched(shipment_id="S-1", weight_kg=2.5))
        await shipping_bus.close()
    """,
    )


@wrong("02", "q2", "has shipment_id='S-9' in its JSON payload; expected 'S-1'")
async def another_shipment(learner):
    await solve(learner, "02", "q1")
    await run(learner, 'ack = await bus.publish(ShipmentDispatched(shipment_id="S-9", weight_kg=2.5))')


@wrong("02", "q2", "has header ce-type=None; expected 'ex02.shipments.dispatched'")
async def a_raw_jetstream_publish(learner):
    await solve(learner, "02", "q1")
    await run(
        learner,
        """
        await bus.ensure_stream(ShipmentDispatched)
        ack = await js.publish("ex02.shipments.dispatched.v1", b'{"shipment_id": "S-1", "weight_kg": 2.5}')
    """,
    )


solution("02", "q3", after=("q1", "q2"))


@right("02", "q3")
async def waiting_on_the_subscription_stats(learner):
    await solve(learner, "02", "q1")
    await solve(learner, "02", "q2")
    await run(
        learner,
        """
        async def bill(event, ctx):
            await bus.publish(InvoiceRequested(shipment_id=event.shipment_id, amount=10.0))

        billing = await bus.subscribe(ShipmentDispatched, group="billing", handler=bill)
        await bus.publish(ShipmentDispatched(shipment_id="S-2", weight_kg=1.5))
        await wait_until(lambda: billing.stats.acked >= 2, what="both shipments billed")
        await billing.stop()
    """,
    )


@wrong("02", "q3", "has no traceparent header, so its trace is lost")
async def a_raw_publish_in_the_handler(learner):
    await solve(learner, "02", "q1")
    await solve(learner, "02", "q2")
    await run(
        learner,
        """
        async def bill(event, ctx):
            invoice = InvoiceRequested(shipment_id=event.shipment_id, amount=1.0)
            await js.publish(invoice.subject(), invoice.to_json())

        billing = await bus.subscribe(ShipmentDispatched, group="billing", handler=bill)
        await bus.publish(ShipmentDispatched(shipment_id="S-2", weight_kg=1.5))
        await wait_until(lambda: billing.stats.acked >= 2)
        await billing.stop()
    """,
    )


@wrong("02", "q3", "is in trace", "Publish from inside the handler, in its trace, without starting a new one")
async def a_new_trace_in_the_handler(learner):
    await solve(learner, "02", "q1")
    await solve(learner, "02", "q2")
    await run(
        learner,
        """
        from buslib import tracing

        async def bill(event, ctx):
            with tracing.trace(None):  # starts a trace of its own
                await bus.publish(InvoiceRequested(shipment_id=event.shipment_id, amount=1.0))

        billing = await bus.subscribe(ShipmentDispatched, group="billing", handler=bill)
        await bus.publish(ShipmentDispatched(shipment_id="S-2", weight_kg=1.5))
        await wait_until(lambda: billing.stats.acked >= 2)
        await billing.stop()
    """,
    )


@wrong("02", "q3", "answers shipment_id S-2 yet", "Wait until every one is answered")
async def stopped_before_the_second_shipment(learner):
    await solve(learner, "02", "q1")
    await solve(learner, "02", "q2")
    await run(
        learner,
        """
        async def bill(event, ctx):
            await bus.publish(InvoiceRequested(shipment_id=event.shipment_id, amount=1.0))

        billing = await bus.subscribe(ShipmentDispatched, group="billing", handler=bill)
        await wait_until(lambda: billing.stats.acked >= 1)
        await billing.stop()
        await bus.publish(ShipmentDispatched(shipment_id="S-2", weight_kg=1.5))  # nobody bills it
    """,
    )


@wrong("02", "q3", "Stream EX02 has no message on 'ex02.invoices.requested.v1'", "did the handler run")
async def never_subscribed(learner):
    await solve(learner, "02", "q1")
    await solve(learner, "02", "q2")
    await run(
        learner,
        """
        async def bill(event, ctx):
            await bus.publish(InvoiceRequested(shipment_id=event.shipment_id, amount=1.0))
    """,
    )


# == 03 ======================================================================================
solution("03", "q1")


@right("03", "q1")
async def three_connections_in_one_group(learner):
    await run(
        learner,
        """
        handled = {"w1": [], "w2": [], "w3": []}
        workers = {name: await EventBus.connect(service=f"packing-{name}") for name in handled}

        def packer(name):
            async def handle(job, ctx):
                handled[name].append(job.job_id)
                await asyncio.sleep(0.01)
            return handle

        subs = [await workers[name].subscribe(PackingJob, group="packing", handler=packer(name)) for name in handled]
        await bus.publish_many(PackingJob(job_id=n) for n in range(JOBS))
        await wait_until(lambda: sum(map(len, handled.values())) >= JOBS)
        for sub in subs:
            await sub.stop()
        for worker in workers.values():
            await worker.close()
    """,
    )


@wrong("03", "q1", "30 job(s) were handled more than once, e.g. job 0 by w1, w2, w3", "give all workers the same group")
async def a_group_per_worker(learner):
    await run(
        learner,
        """
        handled = {"w1": [], "w2": [], "w3": []}

        def packer(name):
            async def handle(job, ctx):
                handled[name].append(job.job_id)
            return handle

        subs = [await bus.subscribe(PackingJob, group=f"packer-{name}", handler=packer(name)) for name in handled]
        await bus.publish_many(PackingJob(job_id=n) for n in range(JOBS))
        await wait_until(lambda: sum(map(len, handled.values())) >= 3 * JOBS)
        for sub in subs:
            await sub.stop()
    """,
    )


@wrong("03", "q1", "There is no stream named 'EX03' on the server")
async def handled_written_by_hand(learner):
    await run(
        learner, 'handled = {"w1": list(range(0, 30, 3)), "w2": list(range(1, 30, 3)), "w3": list(range(2, 30, 3))}'
    )


@wrong("03", "q1", "No group consumes ex03.packing.requested.v1 on the server", "bus.subscribe(PackingJob")
async def jobs_published_and_handled_written_by_hand(learner):
    await run(
        learner,
        """
        await bus.publish_many(PackingJob(job_id=n) for n in range(JOBS))
        handled = {"w1": list(range(0, 30, 3)), "w2": list(range(1, 30, 3)), "w3": list(range(2, 30, 3))}
    """,
    )


@wrong("03", "q1", "Worker(s) w2, w3 handled no job: one worker took everything")
async def the_others_started_too_late(learner):
    await run(
        learner,
        """
        handled = {"w1": [], "w2": [], "w3": []}

        def packer(name):
            async def handle(job, ctx):
                handled[name].append(job.job_id)
            return handle

        first = await bus.subscribe(PackingJob, group="packers", handler=packer("w1"))
        await bus.publish_many(PackingJob(job_id=n) for n in range(JOBS))
        await wait_until(lambda: len(handled["w1"]) >= JOBS)
        late = [await bus.subscribe(PackingJob, group="packers", handler=packer(name)) for name in ("w2", "w3")]
        for sub in [first, *late]:
            await sub.stop()
    """,
    )


@wrong("03", "q1", "2 groups consume ex03.packing.requested.v1: packers, pakcers", "run the setup cell again")
async def a_group_left_from_an_earlier_try(learner):
    await run(
        learner,
        """
        async def pack(job, ctx):
            pass

        typo = await bus.subscribe(PackingJob, group="pakcers", handler=pack)
        await typo.stop()  # fixed the typo and ran the cell again, but the first group stays on the server
    """,
    )
    await solve(learner, "03", "q1")


solution("03", "q2", after=("q1",))


@right("03", "q2")
async def a_set_sorted_into_a_list(learner):
    await solve(learner, "03", "q1")
    await run(
        learner,
        """
        seen = set()

        async def audit(job, ctx):
            seen.add(job.job_id)

        auditor = await bus.subscribe(PackingJob, group="audit", handler=audit)
        await wait_until(lambda: auditor.stats.acked >= JOBS)
        await auditor.stop()
        audited = sorted(seen)
    """,
    )


@wrong("03", "q2", "audited holds events; keep their ids (audited.append(job.job_id))")
async def the_events_kept(learner):
    await solve(learner, "03", "q1")
    await run(
        learner,
        """
        audited = []

        async def audit(job, ctx):
            audited.append(job)

        auditor = await bus.subscribe(PackingJob, group="audit", handler=audit)
        await wait_until(lambda: len(audited) >= JOBS)
        await auditor.stop()
    """,
    )


@wrong("03", "q2", "There is no consumer for group 'audit'", "Subscribe with group='audit'")
async def audit_joined_the_packers(learner):
    await solve(learner, "03", "q1")
    await run(
        learner,
        """
        audited = []

        async def audit(job, ctx):
            audited.append(job.job_id)

        auditor = await bus.subscribe(PackingJob, group="packers", handler=audit)  # shares, sees nothing new
        await auditor.stop()
    """,
    )


@wrong("03", "q2", "audited is a set", "expected a list")
async def a_set_kept(learner):
    await solve(learner, "03", "q1")
    await run(
        learner,
        """
        audited = set()

        async def audit(job, ctx):
            audited.add(job.job_id)

        auditor = await bus.subscribe(PackingJob, group="audit", handler=audit)
        await wait_until(lambda: len(audited) >= JOBS)
        await auditor.stop()
    """,
    )


solution("03", "q3")


@right("03", "q3")
async def the_ledger_is_asked(learner):
    await run(
        learner,
        """
        async def charge(event, ctx):
            if all(payment_id != event.payment_id for payment_id, _ in ledger.lines):
                ledger.charge(event.payment_id, event.amount)

        deliveries = await run_payments(bus, charge, ledger)
    """,
    )


@wrong("03", "q3", "Charged more than once: P-2 2 times, P-3 2 times")
async def naive(learner):
    await run(
        learner,
        """
        async def charge(event, ctx):
            ledger.charge(event.payment_id, event.amount)

        deliveries = await run_payments(bus, charge, ledger)
    """,
    )
    assert learner["deliveries"] == {"P-1": 1, "P-2": 2, "P-3": 2}


@wrong(
    "03",
    "q3",
    "Charged more than once: P-2 2 times. P-2 came as two events with different event ids",
    "Key on the payment, event.payment_id",
)
async def keyed_on_the_event_id(learner):
    await run(
        learner,
        """
        charged = set()

        async def charge(event, ctx):
            if ctx.event_id not in charged:  # catches the redelivery of P-3, not the client's retry of P-2
                charged.add(ctx.event_id)
                ledger.charge(event.payment_id, event.amount)

        deliveries = await run_payments(bus, charge, ledger)
    """,
    )


@wrong("03", "q3", "The ledger is empty", "create it empty in the same cell")
async def a_set_left_from_the_previous_run(learner):
    await solve(learner, "03", "q3")
    await run(learner, "deliveries = await run_payments(bus, charge, ledger)  # ran again: `charged` still full")


# == 04 ======================================================================================
FAST_FAILURES = """
    # What questions 1 and 2 leave behind, quickly: poison exhausted, negative rejected,
    # ok, flaky and valid shipped.
    policy = Retry(max_deliver=3, delays=[0.05], jitter=0)
    sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=shipping.handler(), retry=policy, dead_letters=dlq)
    for order in new_orders():
        await bus.publish(order)
    await wait_until(lambda: in_dead_letters(dlq, "poison"))
    await sub.stop()

    async def ship_checked(order, ctx):
        if order.amount <= 0:
            raise Reject("amount must be positive")
        await shipping.handler()(order, ctx)

    sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=ship_checked, retry=policy, dead_letters=dlq)
    await bus.publish(OrderPlaced(order_id="negative", amount=-5.0))
    await bus.publish(OrderPlaced(order_id="valid", amount=5.0))
    await wait_until(lambda: in_dead_letters(dlq, "negative"))
    await wait_until(lambda: "valid" in shipping.shipped)
    await sub.stop()
"""

solution("04", "q1")


@right("04", "q1")
async def both_delays_given_as_whole_seconds(learner):
    await run(
        learner,
        """
        policy = Retry(max_deliver=3, delays=[1, 1], jitter=0.0)
        sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=shipping.handler(), retry=policy, dead_letters=dlq)
        for order in new_orders():
            await bus.publish(order)
        await wait_until(lambda: in_dead_letters(dlq, "poison"), timeout=15)
        await sub.stop()
    """,
    )


@wrong("04", "q1", "policy waits [0.5, 2.0] s before the retries; expected 1 s each.")
async def the_default_delays(learner):
    await run(learner, "policy = Retry(max_deliver=3)")


@wrong("04", "q1", "policy allows 4 deliveries; expected 3 (the first try and 2 retries).")
async def three_retries_instead_of_three_deliveries(learner):
    await run(learner, "policy = Retry(max_deliver=4, delays=[1.0], jitter=0)")


@wrong("04", "q1", "policy has jitter=0.1", "the question asks for no jitter: jitter=0")
async def the_default_jitter(learner):
    await run(learner, "policy = Retry(max_deliver=3, delays=[1.0])")


@wrong("04", "q1", "There is no stream named 'EX04' on the server")
async def never_subscribed_or_published(learner):
    await run(learner, "policy = Retry(max_deliver=3, delays=[1.0], jitter=0)")


@wrong("04", "q1", "No dead letter for order 'poison' in EX04_DLQ (it holds [])", "dead_letters sink")
async def no_dead_letter_sink(learner):
    await run(
        learner,
        """
        policy = Retry(max_deliver=3, delays=[1.0], jitter=0)
        sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=shipping.handler(), retry=policy)
        for order in new_orders():
            await bus.publish(order)
        await wait_until(lambda: sub.stats.exhausted >= 1, timeout=15)
        await sub.stop()
    """,
    )


solution("04", "q2", given="policy = Retry(max_deliver=3, delays=[1.0], jitter=0)  # question 1's")


@right("04", "q2")
async def rejected_below_zero_the_rest_returned(learner):
    await run(
        learner,
        """
        policy = Retry(max_deliver=3, delays=[1.0], jitter=0)

        async def ship_checked(order, ctx):
            if order.amount < 0:
                raise Reject("a negative amount")
            return await shipping.handler()(order, ctx)

        sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=ship_checked, retry=policy, dead_letters=dlq)
        await bus.publish(OrderPlaced(order_id="negative", amount=-5.0))
        await bus.publish(OrderPlaced(order_id="valid", amount=5.0))
        await wait_until(lambda: in_dead_letters(dlq, "negative"))
        await wait_until(lambda: "valid" in shipping.shipped)
        await sub.stop()
    """,
    )


@wrong("04", "q2", "Order 'negative' was dead-lettered as 'exhausted' after 3 deliveries; expected 'rejected' after 1.")
async def a_value_error_is_retried(learner):
    await run(
        learner,
        """
        policy = Retry(max_deliver=3, delays=[1.0], jitter=0)

        async def ship_checked(order, ctx):
            if order.amount <= 0:
                raise ValueError("amount must be positive")
            await shipping.handler()(order, ctx)

        sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=ship_checked, retry=policy, dead_letters=dlq)
        await bus.publish(OrderPlaced(order_id="negative", amount=-5.0))
        await bus.publish(OrderPlaced(order_id="valid", amount=5.0))
        await wait_until(lambda: in_dead_letters(dlq, "negative"), timeout=15)
        await sub.stop()
    """,
    )


@wrong("04", "q2", "Order 'valid' was not shipped", "hand every order with a positive amount to shipping.handler()")
async def every_order_rejected(learner):
    await run(
        learner,
        """
        policy = Retry(max_deliver=3, delays=[1.0], jitter=0)

        async def ship_checked(order, ctx):
            raise Reject(f"amount must be positive, got {order.amount}")

        sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=ship_checked, retry=policy, dead_letters=dlq)
        await bus.publish(OrderPlaced(order_id="negative", amount=-5.0))
        await bus.publish(OrderPlaced(order_id="valid", amount=5.0))
        await wait_until(lambda: in_dead_letters(dlq, "negative"))
        await wait_until(lambda: in_dead_letters(dlq, "valid"))
        await sub.stop()
    """,
    )


@wrong("04", "q2", "Order 'valid' was not shipped (shipping.shipped is [])")
async def the_good_orders_dropped(learner):
    await run(
        learner,
        """
        policy = Retry(max_deliver=3, delays=[1.0], jitter=0)

        async def ship_checked(order, ctx):
            if order.amount <= 0:
                raise Reject("amount must be positive")
            # forgot: await shipping.handler()(order, ctx)

        sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=ship_checked, retry=policy, dead_letters=dlq)
        await bus.publish(OrderPlaced(order_id="negative", amount=-5.0))
        await bus.publish(OrderPlaced(order_id="valid", amount=5.0))
        await wait_until(lambda: in_dead_letters(dlq, "negative"))
        await wait_until(lambda: sub.stats.acked >= 1)
        await sub.stop()
    """,
    )


solution("04", "q3", given=FAST_FAILURES)


@right("04", "q3")
async def replayed_first_by_reason_then_subscribed(learner):
    await run(learner, FAST_FAILURES)
    await run(
        learner,
        """
        from buslib.dlq import DeadLetterFilter

        replayed = await dlq.replay(DeadLetterFilter.parse(reason="coupon"))  # nobody consumes yet...
        sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=shipping.handler(fixed=True), retry=policy,
                                  dead_letters=dlq)  # ...the group's durable consumer kept it
        await wait_until(lambda: "poison" in shipping.shipped)
        await sub.stop()
    """,
    )


@wrong("04", "q3", "No dead letter for order 'negative' in EX04_DLQ")
async def everything_replayed(learner):
    await run(learner, FAST_FAILURES)
    await run(
        learner,
        """
        sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=shipping.handler(fixed=True), retry=policy,
                                  dead_letters=dlq)
        replayed = await dlq.replay()
        await wait_until(lambda: {"poison", "negative"} <= set(shipping.shipped))
        await sub.stop()
    """,
    )


@wrong("04", "q3", "Order 'poison' was not shipped after the replay", "before or after the replay")
async def replayed_with_nobody_to_ship_it(learner):
    await run(learner, FAST_FAILURES)
    await run(
        learner,
        """
        broken = [entry.id for entry in await dlq.list() if entry.kind == "exhausted"]
        replayed = await dlq.replay(ids=broken)
    """,
    )


@wrong("04", "q3", "Order 'poison' was not shipped after the replay", "shipping.handler(fixed=True)")
async def replayed_to_the_unfixed_handler(learner):
    await run(learner, FAST_FAILURES)
    await run(
        learner,
        """
        sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=shipping.handler(), retry=policy, dead_letters=dlq)
        broken = [entry.id for entry in await dlq.list() if entry.kind == "exhausted"]
        replayed = await dlq.replay(ids=broken)
        await wait_until(lambda: in_dead_letters(dlq, "poison"))  # failed again, dead-lettered again
        await sub.stop()
    """,
    )


@wrong("04", "q3", "replayed is a list", "Keep what `await dlq.replay(...)` returns")
async def the_ids_kept_instead_of_the_result(learner):
    await run(learner, FAST_FAILURES)
    await run(
        learner,
        """
        sub = await bus.subscribe(OrderPlaced, group=GROUP, handler=shipping.handler(fixed=True), retry=policy,
                                  dead_letters=dlq)
        replayed = [entry.id for entry in await dlq.list() if entry.kind == "exhausted"]
        await dlq.replay(ids=replayed)
        await wait_until(lambda: "poison" in shipping.shipped)
        await sub.stop()
    """,
    )


# == 05 ======================================================================================
solution("05", "q1")


@right("05", "q1")
async def optional_with_none(learner):
    await run(
        learner,
        """
        class CustomerRegisteredV2(Event, type="ex05.customers.registered", version=2):
            customer_id: str
            email: str
            marketing_opt_in: bool | None = None  # unknown for customers registered with v1
    """,
    )


@right("05", "q1")
async def extends_v1(learner):
    await run(
        learner,
        """
        from pydantic import Field

        class CustomerRegisteredV2(CustomerRegisteredV1, type="ex05.customers.registered", version=2):
            marketing_opt_in: bool = Field(default=False, description="agreed to receive marketing mail")
    """,
    )


@wrong("05", "q1", "CustomerRegisteredV2 fails the BACKWARD check against CustomerRegisteredV1", "required-field-added")
async def the_new_field_required(learner):
    await run(
        learner,
        """
        class CustomerRegisteredV2(Event, type="ex05.customers.registered", version=2):
            customer_id: str
            email: str
            marketing_opt_in: bool
    """,
    )


@wrong("05", "q1", "CustomerRegisteredV2.marketing_opt_in is declared as str; expected bool.")
async def a_yes_no_string(learner):
    await run(
        learner,
        """
        class CustomerRegisteredV2(Event, type="ex05.customers.registered", version=2):
            customer_id: str
            email: str
            marketing_opt_in: str = "no"
    """,
    )


@wrong("05", "q1", "CustomerRegisteredV2 has no field 'marketing_opt_in'; expected marketing_opt_in: bool.")
async def another_field_name(learner):
    await run(
        learner,
        """
        class CustomerRegisteredV2(Event, type="ex05.customers.registered", version=2):
            customer_id: str
            email: str
            opt_in: bool = False
    """,
    )


solution("05", "q2")


@right("05", "q2")
async def a_dict_with_rounded_prices(learner):
    await run(
        learner,
        """
        @upcaster(ProductAddedV1, to=ProductAddedV2)
        def product_v1_to_v2(old):
            return {"sku": old.sku, "price": round(old.price_cents * 0.01, 2), "currency": "EUR"}
    """,
    )


@wrong("05", "q2", "became ProductAddedV2 with price=1999.0; expected 19.99")
async def the_cents_kept(learner):
    await run(
        learner,
        """
        @upcaster(ProductAddedV1, to=ProductAddedV2)
        def product_v1_to_v2(old):
            return ProductAddedV2(sku=old.sku, price=old.price_cents, currency="EUR")
    """,
    )


@wrong(
    "05", "q2", "Reading stored message 1 (LAMP-1) as ProductAddedV2 failed", "No upcaster from ex05.products.added v1"
)
async def not_registered_as_an_upcaster(learner):
    await run(
        learner,
        """
        def product_v1_to_v2(old):  # the @upcaster decorator is missing
            return ProductAddedV2(sku=old.sku, price=old.price_cents / 100, currency="EUR")
    """,
    )


@wrong("05", "q2", "with currency='USD'; expected 'EUR'")
async def dollars(learner):
    await run(
        learner,
        """
        @upcaster(ProductAddedV1, to=ProductAddedV2)
        def product_v1_to_v2(old):
            return ProductAddedV2(sku=old.sku, price=old.price_cents / 100, currency="USD")
    """,
    )


solution("05", "q3")


@right("05", "q3")
async def revision_one_copied_from_the_registry(learner):
    await run(
        learner,
        """
        import copy

        registry = await SchemaRegistry.open(js, bucket=REGISTRY_BUCKET)
        first = await registry.register(CustomerRegisteredV1)
        schema = copy.deepcopy(first.schema)
        schema["properties"]["phone"] = {"type": "string", "description": "where to call the customer"}
        second = await registry.register(schema)
    """,
    )


@right("05", "q3")
async def a_nullable_phone_in_a_copy(learner):
    await run(
        learner,
        """
        registry = await SchemaRegistry.open(js, bucket=REGISTRY_BUCKET)
        first = await registry.register(CustomerRegisteredV1)
        schema = json_schema(CustomerRegisteredV1)
        schema = {**schema, "properties": {**schema["properties"], "phone": {"type": ["string", "null"], "default": None}}}
        second = await registry.register(schema)
    """,
    )


@wrong("05", "q3", "The registry holds 1 revision(s) of ex05.customers.registered.v1; expected 2")
async def only_revision_one(learner):
    await run(
        learner,
        """
        registry = await SchemaRegistry.open(js, bucket=REGISTRY_BUCKET)
        await registry.register(CustomerRegisteredV1)
    """,
    )


@wrong("05", "q3", "The registry holds 1 revision(s) of ex05.customers.registered.v1; expected 2")
async def a_required_phone_refused(learner):
    await run(
        learner,
        """
        from buslib.contracts import IncompatibleContractError

        registry = await SchemaRegistry.open(js, bucket=REGISTRY_BUCKET)
        await registry.register(CustomerRegisteredV1)
        with_phone = json_schema(CustomerRegisteredV1)
        with_phone["properties"]["phone"] = {"type": "string"}
        with_phone["required"].append("phone")
        try:
            await registry.register(with_phone)
        except IncompatibleContractError as refused:  # the learner's cell shows this error
            print(refused)
    """,
    )


@wrong("05", "q3", "declares 'phone' as {'type': 'integer'}; expected a string")
async def a_phone_number_as_a_number(learner):
    await run(
        learner,
        """
        registry = await SchemaRegistry.open(js, bucket=REGISTRY_BUCKET)
        await registry.register(CustomerRegisteredV1)
        with_phone = json_schema(CustomerRegisteredV1)
        with_phone["properties"]["phone"] = {"type": "integer"}
        revision = await registry.register(with_phone)
    """,
    )


@wrong(
    "05",
    "q3",
    "Revision 2 of ex05.customers.registered.v1 drops ['customer_id', 'email', 'id', 'occurred_at',",
    "Start from revision 1's schema, json_schema(CustomerRegisteredV1)",
)
async def only_the_new_field(learner):
    await run(
        learner,
        """
        registry = await SchemaRegistry.open(js, bucket=REGISTRY_BUCKET)
        await registry.register(CustomerRegisteredV1)
        revision = await registry.register({"type": "object", "properties": {"phone": {"type": "string"}}},
                                           event_type="ex05.customers.registered", version=1)
    """,
    )


@wrong(
    "05",
    "q3",
    "Revision 2 of ex05.customers.registered.v1 drops ['id', 'occurred_at', 'version']",
    "json_schema(CustomerRegisteredV1)",
)
async def a_pydantic_model_without_the_event_fields(learner):
    await run(
        learner,
        """
        class CustomerV1WithPhone(BaseModel):  # the v1 fields, but not the id, version and time every Event has
            customer_id: str
            email: str
            phone: str | None = None

        registry = await SchemaRegistry.open(js, bucket=REGISTRY_BUCKET)
        await registry.register(CustomerRegisteredV1)
        revision = await registry.register(CustomerV1WithPhone.model_json_schema(),
                                           event_type="ex05.customers.registered", version=1)
    """,
    )


@wrong("05", "q3", "Revision 2 of ex05.customers.registered.v1 adds ['mobile', 'phone']; expected one new field")
async def two_new_fields(learner):
    await run(
        learner,
        """
        registry = await SchemaRegistry.open(js, bucket=REGISTRY_BUCKET)
        await registry.register(CustomerRegisteredV1)
        with_phone = json_schema(CustomerRegisteredV1)
        with_phone["properties"]["phone"] = {"type": "string"}
        with_phone["properties"]["mobile"] = {"type": "string"}
        revision = await registry.register(with_phone)
    """,
    )


# == 06 ======================================================================================
# Each answer runs the setup cell, which starts a 3-node cluster of its own; a crash of the
# stream's leader costs an election (seconds), which the checks wait for.
solution("06", "q1")


@right("06", "q1")
async def num_replicas_with_plain_nats_py(learner):
    await run(
        learner,
        'orders = await bus.js.add_stream(name=STREAM, subjects=["ex06.orders.>"], num_replicas=3)',
    )


@wrong("06", "q1", "Stream EX06_ORDERS has 1 replica: its only copy is on n", "ask for 3 (replicas=3")
async def one_replica(learner):
    await run(learner, 'orders = await bus.ensure_stream(OrderPlaced, name=STREAM, subjects=["ex06.orders.>"])')


@wrong("06", "q1", "Stream EX06_ORDERS has 2 replicas: a majority of 2 is 2, so losing any one of")
async def two_replicas(learner):
    await run(
        learner,
        'orders = await bus.ensure_stream(OrderPlaced, name=STREAM, subjects=["ex06.orders.>"], replicas=2)',
    )


@wrong("06", "q1", "does not cover 'ex06.orders.paid.v1'")
async def only_the_placed_orders(learner):
    await run(
        learner,
        'orders = await bus.ensure_stream(OrderPlaced, name=STREAM, subjects=["ex06.orders.placed.>"], replicas=3)',
    )


solution("06", "q2", after=("q1",))


@right("06", "q2")
async def the_leader_from_stream_info_and_one_publish_at_a_time(learner):
    await solve(learner, "06", "q1")
    await run(
        learner,
        """
        info = await bus.js.stream_info(STREAM)
        crashed = info.cluster.leader
        cluster.crash(crashed)
        for order in ORDERS:
            await bus.publish(order)
    """,
    )


@wrong("06", "q2", "was a follower", "Crash the node that leads the stream")
async def a_follower_crashed(learner):
    await solve(learner, "06", "q1")
    await run(
        learner,
        """
        crashed = next(name for name in cluster.names if name != cluster.leader_of(STREAM))
        cluster.crash(crashed)
        await bus.publish_many(ORDERS)
    """,
    )


@wrong("06", "q2", "The orders were stored before", "Crash the leader first, then publish")
async def published_before_the_crash(learner):
    await solve(learner, "06", "q1")
    await run(
        learner,
        """
        await bus.publish_many(ORDERS)
        crashed = cluster.crash(cluster.leader_of(STREAM))
    """,
    )


@wrong("06", "q2", "50 of 100 order(s) of ORDERS are not in EX06_ORDERS (e.g. A-50)")
async def half_of_the_orders(learner):
    await solve(learner, "06", "q1")
    await run(
        learner,
        """
        crashed = cluster.crash(cluster.leader_of(STREAM))
        await bus.publish_many(ORDERS[:50])
    """,
    )


solution("06", "q3", after=("q1",))


@right("06", "q3")
async def two_crashed_a_bus_of_its_own_and_start_to_bring_them_back(learner):
    await solve(learner, "06", "q1")
    await run(
        learner,
        """
        for name in cluster.names[1:]:
            cluster.crash(name)
        impatient = await EventBus.connect(service="impatient", url=cluster.urls, publish_deadline=2.0)
        try:
            await impatient.publish(LATE)
        except PublishError as err:
            error = err
        await impatient.close()
        cluster.start()  # starts the nodes that are down and waits until all are healthy
        ack = await bus.publish(LATE)
    """,
    )


@wrong("06", "q3", "error is None: publishing LATE did not fail", "Crash two of the three nodes first")
async def only_one_node_down(learner):
    await solve(learner, "06", "q1")
    await run(
        learner,
        """
        # a node that neither leads the stream (an election), nor the meta layer (the new bus's stream
        # lookup), nor holds the bus's connection (a reconnect): the publish cannot be late
        here = next(n for n in cluster.names if cluster.node(n).port == bus.nc.connected_url.port)
        busy = {cluster.leader_of(STREAM), here, cluster.meta_leader()}
        if busy == set(cluster.names):
            await cluster.move_leader(STREAM, here)
            busy = {here, cluster.meta_leader()}
        down = cluster.crash(next(n for n in cluster.names if n not in busy))
        impatient = EventBus(bus.nc, service="ex06", publish_deadline=2.0)
        error = None
        try:
            await impatient.publish(LATE)
        except PublishError as err:
            error = err
        cluster.restart(down)
        ack = await bus.publish(LATE)
    """,
    )


@wrong("06", "q3", "Order LATE-1 is stored under", "the retry published a new event", "Publish LATE itself again")
async def the_retry_is_a_new_event(learner):
    await solve(learner, "06", "q1")
    await run(
        learner,
        """
        keep = cluster.meta_leader()
        down = [cluster.crash(name) for name in cluster.names if name != keep]
        impatient = EventBus(bus.nc, service="ex06", publish_deadline=2.0)
        try:
            await impatient.publish(LATE)
        except PublishError as err:
            error = err
        for name in down:
            cluster.restart(name, wait=False)
        ack = await bus.publish(OrderPlaced(order_id=LATE.order_id))  # a new event: a new id
    """,
    )


@wrong("06", "q3", "is still down: restart every node you crashed", "cluster.restart(")
async def one_node_left_down(learner):
    await solve(learner, "06", "q1")
    await run(
        learner,
        """
        keep = cluster.meta_leader()
        down = [cluster.crash(name) for name in cluster.names if name != keep]
        impatient = EventBus(bus.nc, service="ex06", publish_deadline=2.0)
        try:
            await impatient.publish(LATE)
        except PublishError as err:
            error = err
        cluster.restart(down[0])  # two of three is a majority again: the publish works
        ack = await bus.publish(LATE)
    """,
    )


@wrong("06", "q3", "Two nodes were never down at the same time", "an election, if you crashed a leader")
async def the_leader_alone_down(learner):
    await solve(learner, "06", "q1")
    await run(
        learner,
        """
        down = cluster.crash(cluster.leader_of(STREAM))  # an election: longer than 2 s, so the publish fails
        impatient = EventBus(bus.nc, service="ex06", publish_deadline=2.0)
        try:
            await impatient.publish(LATE)
        except PublishError as err:
            error = err
        cluster.restart(down)
        ack = await bus.publish(LATE)
    """,
    )


# == 07 ======================================================================================
def _payments(stream_partitions: int | None = 4, **subscribe: str) -> str:
    """A learner's question-1 cell: the payments stream, one instance of group ledger, the run."""
    stream = f", partitions={stream_partitions}" if stream_partitions else ""
    options = "".join(f", {k}={v}" for k, v in subscribe.items())
    return f"""
        await bus.ensure_stream(PaymentCaptured, name=PAYMENTS_STREAM, subjects=["ex07.payments.>"]{stream})
        ledger_sub = await bus.subscribe(PaymentCaptured, group="ledger", handler=ledger.book{options})
        await publish_payments(bus, ledger)
        await wait_until(lambda: ledger.count() >= {16 if "partitions" in subscribe else 32}, timeout=20)
        await ledger_sub.stop()
    """


solution("07", "q1")


@right("07", "q1")
async def two_instances_with_two_partitions_each(learner):
    await run(
        learner,
        """
        await bus.ensure_stream(PaymentCaptured, name=PAYMENTS_STREAM, subjects=["ex07.payments.>"], partitions=4)
        second = await EventBus.connect(service="billing-2")  # another process of the same service
        _cleanup.append(second.close)
        ledger_sub = [
            await bus.subscribe(PaymentCaptured, group="ledger", handler=ledger.book, ordered=True, partitions=[0, 1]),
            await second.subscribe(PaymentCaptured, group="ledger", handler=ledger.book, ordered=True, partitions=[2, 3]),
        ]
        await publish_payments(bus, ledger)
        await wait_until(ledger.complete, timeout=20)
        for sub in ledger_sub:
            await sub.stop()
    """,
    )


@wrong(
    "07",
    "q1",
    "Group 'ledger' reads the payments through one durable that hands out many payments at once, so a retried "
    "payment lets the ones behind it go first (the ledger shows C-2: [0, 1, 2, 4",
    "Subscribe with ordered=True",
)
async def a_plain_group(learner):
    await run(learner, _payments())
    assert learner["ledger"].booked["C-2"].index(4) < learner["ledger"].booked["C-2"].index(3)


@wrong(
    "07",
    "q1",
    "Stream EX07_PAYMENTS does not partition ex07.payments.captured.v1: without partitions an ordered group is one "
    "lane, one payment at a time for every customer. Create it with ensure_stream(..., partitions=4).",
)
async def ordered_without_partitions(learner):
    await run(learner, _payments(None, ordered="True"))


@wrong("07", "q1", "Stream EX07_PAYMENTS splits ex07.payments.captured.v1 into 2 partitions; expected 4.")
async def two_partitions(learner):
    await run(learner, _payments(2, ordered="True"))


@wrong(
    "07",
    "q1",
    "Group 'ledger' has no lane for partition 2 on stream EX07_PAYMENTS.",
    "Subscribe with group='ledger' and ordered=True",
)
async def only_half_the_lanes(learner):
    await run(learner, _payments(ordered="True", partitions="[0, 1]"))  # nobody runs partitions 2 and 3


@wrong(
    "07",
    "q1",
    "C-1's payments [0, 1, 2, 3, 4, 5, 6, 7] were booked more than once.",
    "Run the setup cell again (it starts over)",
)
async def payments_of_an_earlier_attempt_read_again(learner):
    await run(
        learner,
        """
        await bus.ensure_stream(PaymentCaptured, name=PAYMENTS_STREAM, subjects=["ex07.payments.>"], partitions=4)
        await publish_payments(bus, Ledger())  # an earlier run of the cell published too
        await publish_payments(bus, Ledger())
        ledger_sub = await bus.subscribe(PaymentCaptured, group="ledger", handler=ledger.book, ordered=True)
        await wait_until(lambda: ledger.count() >= 64, timeout=20)
        await ledger_sub.stop()
    """,
    )


def _audit(**changes: str) -> str:
    """A learner's question-2 cell, with some settings changed."""
    settings = {
        "name": "AUDIT_STREAM",
        "subjects": '["ex07.audit.>"]',
        "max_age": "30 * 24 * 3600",
        "max_msgs_per_subject": "3",
        "discard": "DiscardPolicy.NEW",
        "discard_new_per_subject": "True",
        **changes,
    }
    return "audit = await js.add_stream(" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"


solution("07", "q2")


@right("07", "q2")
async def a_raw_stream_in_memory_on_the_exact_subjects(learner):
    await run(
        learner,
        _audit(subjects='["ex07.audit.recorded.v1.*"]', storage="StorageType.MEMORY", max_age="2592000.0").replace(
            "audit = ", "from nats.js.api import StorageType\naudit = "
        ),
    )


@wrong(
    "07",
    "q2",
    "Stream EX07_AUDIT has discard='old': when an order has 3 entries, a 4th makes room by silently dropping the "
    "oldest. Refuse it instead: discard=DiscardPolicy.NEW.",
)
async def discard_old(learner):
    await run(learner, _audit(discard="DiscardPolicy.OLD", discard_new_per_subject="False"))


@wrong(
    "07",
    "q2",
    "Stream EX07_AUDIT has discard='new' but discard_new_per_subject=False: new entries are then refused only when "
    "the whole stream is full, while a full order still drops its oldest. Set discard_new_per_subject=True.",
)
async def discard_new_for_the_whole_stream(learner):
    await run(learner, _audit(discard_new_per_subject="False"))


@wrong(
    "07",
    "q2",
    "max_age is 2592000000 s (about 82 years): nats-py takes seconds, not milliseconds. 30 days is 2592000 s.",
)
async def max_age_in_milliseconds(learner):
    await run(learner, _audit(max_age="30 * 24 * 3600 * 1000"))


@wrong(
    "07",
    "q2",
    "Stream EX07_AUDIT has max_msgs_per_subject=-1; expected 3: each order has a subject of its own (max_msgs "
    "counts the whole stream, not each order).",
)
async def max_msgs_instead_of_per_order(learner):
    await run(learner, _audit(max_msgs_per_subject="-1", max_msgs="3", discard_new_per_subject="False"))


@wrong("07", "q2", "Stream EX07_AUDIT has max_age=604800 s; expected 2592000 (30 days).")
async def seven_days(learner):
    await run(learner, _audit(max_age="7 * 24 * 3600"))


@wrong("07", "q2", "Stream EX07_AUDIT stores ['ex07.audits.>'], which does not cover 'ex07.audit.recorded.v1.A-1'")
async def other_subjects(learner):
    await run(learner, _audit(subjects='["ex07.audits.>"]'))


solution("07", "q3")


@right("07", "q3")
async def pending_plus_unacked_from_consumer_info(learner):
    await run(
        learner,
        """
        from buslib.subjects import durable_name

        lags = {}
        for group in GROUPS:
            info = await js.consumer_info(EVENTS_STREAM, durable_name(group, ShipmentUpdated.subject()))
            lags[group] = info.num_pending + info.num_ack_pending
        worst = "billing"
    """,
    )
    assert learner["lags"] == {"billing": 20, "shipping": 15, "analytics": 3}


@wrong(
    "07",
    "q3",
    "lags['billing'] is 8, but group billing is 20 behind: it also holds 12 delivered, unacknowledged messages "
    "(num_ack_pending). Lag = num_pending + num_ack_pending.",
)
async def pending_only(learner):
    await run(
        learner,
        """
        from buslib.subjects import durable_name

        lags = {}
        for group in GROUPS:
            info = await js.consumer_info(EVENTS_STREAM, durable_name(group, ShipmentUpdated.subject()))
            lags[group] = info.num_pending
        worst = max(lags, key=lags.get)
    """,
    )


@wrong("07", "q3", "worst is 'shipping' (15 behind), but 'billing' is furthest behind (20).")
async def the_worst_by_pending(learner):
    await run(
        learner,
        """
        lags = {group: (await bus.group_lag(ShipmentUpdated, group=group)).behind for group in GROUPS}
        worst = "shipping"  # the most messages waiting to be delivered
    """,
    )


@wrong("07", "q3", "lags must be a dict with one entry per group, ['billing', 'shipping', 'analytics']")
async def one_group_only(learner):
    await run(learner, 'lags = {"billing": 20}\nworst = "billing"')
