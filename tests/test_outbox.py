"""The transactional outbox and inbox on SQLite, with a relay that crashes where the test decides."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from _bus_helpers import wait_until

from buslib import Inbox, Outbox, Relay
from buslib.errors import OutboxError, PublishError


class RelayCrashed(RuntimeError):
    pass


def crash_at(row_number: int):
    """An on_published hook that "crashes" the relay right after its n-th row is stored."""
    seen = []

    def hook(row, ack):
        seen.append(row.id)
        if len(seen) == row_number:
            raise RelayCrashed(f"the relay died after storing {row_number} rows, before marking them")

    return hook


@pytest.fixture
def shop(tmp_path, bus):
    outbox = Outbox(bus, tmp_path / "shop.db")
    outbox.db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, amount REAL NOT NULL CHECK (amount > 0))")
    yield outbox
    outbox.close()


def place(outbox, Order, order_id, amount=10.0):
    with outbox.transaction() as db:
        db.execute("INSERT INTO orders VALUES (?, ?)", (order_id, amount))
        outbox.add(db, Order(order_id=order_id))


async def test_the_change_and_its_event_commit_together_or_not_at_all(shop, Order):
    place(shop, Order, "A-1")
    with pytest.raises(sqlite3.IntegrityError):
        place(shop, Order, "BAD", amount=-1)  # the CHECK fails after the event was added: both roll back
    assert shop.db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 1
    assert shop.counts() == {"rows": 1, "unsent": 1}
    row = shop.unsent()[0]
    assert row.subject == Order.subject() and json.loads(row.payload)["order_id"] == "A-1"
    assert row.headers["Nats-Msg-Id"] == row.msg_id and "traceparent" in row.headers


async def test_adding_outside_a_transaction_or_twice_is_refused(shop, Order):
    with pytest.raises(OutboxError, match="must run inside `with outbox.transaction"):
        shop.add(shop.db, Order(order_id="A-1"))
    event = Order(order_id="A-2")
    with pytest.raises(OutboxError, match="already in the outbox"):
        with shop.transaction() as db:
            shop.add(db, event)
            shop.add(db, event)
    assert shop.counts() == {"rows": 0, "unsent": 0}


async def test_a_relay_that_dies_between_publishing_and_marking_stores_each_event_once(bus, shop, Order, stream):
    for i in range(5):
        place(shop, Order, f"A-{i}")
    with pytest.raises(RelayCrashed):
        await Relay(shop, on_published=crash_at(3)).run_once()
    assert (await bus.js.stream_info(stream)).state.messages == 3
    assert shop.counts() == {"rows": 5, "unsent": 5}  # nothing was marked
    result = await Relay(shop).drain()  # a new relay publishes all five again
    assert (result.published, result.duplicates, result.marked) == (2, 3, 5)
    assert (await bus.js.stream_info(stream)).state.messages == 5
    assert shop.counts() == {"rows": 5, "unsent": 0}
    stored = [(await bus.js.get_msg(stream, seq)).headers["Nats-Msg-Id"] for seq in range(1, 6)]
    assert stored == [row for (row,) in shop.db.execute("SELECT msg_id FROM bus_outbox ORDER BY id")]


async def test_past_the_duplicate_window_the_stream_stores_copies_and_the_inbox_applies_each_once(
    bus, shop, Order, tmp_path
):
    stream = (await bus.ensure_stream(Order, duplicate_window=0.5)).config.name
    for i in range(4):
        place(shop, Order, f"A-{i}")
    with pytest.raises(RelayCrashed):
        await Relay(shop, on_published=crash_at(2)).run_once()
    await asyncio.sleep(0.7)  # the relay stays down longer than the duplicate window
    result = await Relay(shop).drain()
    assert (result.published, result.duplicates) == (4, 0)
    assert (await bus.js.stream_info(stream)).state.messages == 6  # two events stored twice

    inbox = Inbox(tmp_path / "billing.db")
    inbox.db.execute("CREATE TABLE charges (order_id TEXT)")
    applied, skipped = [], []

    async def charge(event, ctx):
        done = inbox.apply_once(
            ctx.event_id, lambda db: db.execute("INSERT INTO charges VALUES (?)", (event.order_id,))
        )
        (applied if done else skipped).append(event.order_id)

    sub = await bus.subscribe(Order, group="billing", handler=charge)
    await wait_until(lambda: len(applied) + len(skipped) == 6)
    await sub.stop()
    assert sorted(applied) == ["A-0", "A-1", "A-2", "A-3"] and sorted(skipped) == ["A-0", "A-1"]
    assert inbox.db.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == 4
    inbox.close()
    await bus.js.delete_stream(stream)


async def test_an_effect_that_fails_is_not_recorded_so_the_retry_applies_it(tmp_path):
    inbox = Inbox(tmp_path / "billing.db")
    inbox.db.execute("CREATE TABLE charges (order_id TEXT)")

    def failing(db):
        db.execute("INSERT INTO charges VALUES ('A-1')")
        raise RuntimeError("the payment provider is down")

    with pytest.raises(RuntimeError):
        inbox.apply_once("m-1", failing)
    assert not inbox.applied("m-1") and inbox.db.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == 0
    assert inbox.apply_once("m-1", lambda db: db.execute("INSERT INTO charges VALUES ('A-1')")) is True
    assert inbox.apply_once("m-1", lambda db: db.execute("INSERT INTO charges VALUES ('A-1')")) is False
    with pytest.raises(ValueError, match="needs the message's id"):
        inbox.apply_once(None, lambda db: None)
    inbox.close()


async def test_a_row_the_stream_refuses_stops_the_relay_and_keeps_the_order(bus, shop, Order, stream, unique):
    """Rows before the refused one are marked sent; it and those after stay unsent, in order."""
    place(shop, Order, "A-1")
    with shop.transaction() as db:
        shop.add(db, Order(order_id="A-2"))
        db.execute("UPDATE bus_outbox SET subject = ? WHERE id = 2", (f"nowhere{unique.lower()}.x.v1",))
    place(shop, Order, "A-3")
    bus.streams.auto_create = False
    with pytest.raises(PublishError, match="No stream stores subject"):
        await Relay(shop).run_once()
    assert [row.id for row in shop.unsent()] == [2, 3]


async def test_run_relays_until_cancelled_and_purge_drops_old_sent_rows(bus, shop, Order, stream):
    relay = Relay(shop, batch=2)
    task = asyncio.create_task(relay.run(interval=0.05))
    for i in range(5):
        place(shop, Order, f"A-{i}")
    await wait_until(lambda: shop.counts()["unsent"] == 0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert relay.total.marked == 5 and (await bus.js.stream_info(stream)).state.messages == 5
    assert shop.purge_sent(older_than=3600) == 0
    assert shop.purge_sent(older_than=0) == 5 and shop.counts() == {"rows": 0, "unsent": 0}
