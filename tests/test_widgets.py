"""The lesson widgets: status panel against a real server, worker counts, timeline, dead-letter table."""

from __future__ import annotations

import asyncio

import ipywidgets
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from buslib.teaching import (
    DeadLetterTable,
    StatusPanel,
    WorkerCounts,
    dead_letter_table,
    delivery_timeline,
    status_panel,
)
from buslib.teaching.charts import Timeline


async def _wait_for(predicate, *, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# -- status panel --------------------------------------------------------------------------


async def test_status_panel_refresh_reports_stream_messages_and_consumers(js, nats_url, unique):
    stream = f"WIDGETS_{unique}"
    await js.add_stream(name=stream, subjects=[f"widgets.{unique}.>"])
    try:
        for i in range(3):
            await js.publish(f"widgets.{unique}.x", f"m{i}".encode())
        await js.add_consumer(stream, durable_name="panel-test")
        panel = status_panel(nats_url, refresh=None)
        assert isinstance(panel, StatusPanel) and isinstance(panel, ipywidgets.Widget)
        try:
            data = await panel.refresh()
            assert data is panel.data
            assert data["url"] == nats_url
            assert data["connected"] is True and data["error"] is None
            assert data["jetstream"] is True
            assert data["version"] and data["version"][0].isdigit()
            assert data["streams"][stream]["messages"] == 3
            assert data["streams"][stream]["consumers"] == 1
            assert data["streams"][stream]["subjects"] == [f"widgets.{unique}.>"]
            assert stream in panel.text and nats_url in panel.text
            assert stream in panel.children[0].value  # the HTML the widget shows
        finally:
            await panel.aclose()
    finally:
        await js.delete_stream(stream)


async def test_status_panel_stream_filter_shows_only_matching_streams(js, nats_url, unique):
    mine, other = f"PANELA_{unique}", f"PANELB_{unique}"
    await js.add_stream(name=mine, subjects=[f"pa.{unique}"])
    await js.add_stream(name=other, subjects=[f"pb.{unique}"])
    panel = status_panel(nats_url, refresh=None, streams="PANELA_*")
    try:
        data = await panel.refresh()
        assert mine in data["streams"] and other not in data["streams"]
    finally:
        await panel.aclose()
        await js.delete_stream(mine)
        await js.delete_stream(other)


async def test_status_panel_background_refresh_follows_new_messages(js, nats_url, unique):
    stream = f"LIVE_{unique}"
    await js.add_stream(name=stream, subjects=[f"live.{unique}"])
    panel = status_panel(nats_url, refresh=0.1, streams=stream)
    try:
        bundle = panel._repr_mimebundle_()  # what displaying it does
        assert "application/vnd.jupyter.widget-view+json" in bundle
        assert panel.running
        await _wait_for(lambda: panel.data["streams"].get(stream, {}).get("messages") == 0)
        await js.publish(f"live.{unique}", b"1")
        await js.publish(f"live.{unique}", b"2")
        await _wait_for(lambda: panel.data["streams"][stream]["messages"] == 2)
        panel.stop()
        assert not panel.running
    finally:
        await panel.aclose()
        await js.delete_stream(stream)


async def test_status_panel_stops_when_its_last_view_goes_away(nats_url):
    """A re-run cell clears the old output: the old panel must stop polling, not run on unseen."""
    panel = status_panel(nats_url, refresh=0.1)
    try:
        panel._view_count = 1  # what JupyterLab's widget manager reports when it shows the panel
        assert panel.running
        await _wait_for(lambda: panel.data["connected"])
        panel._view_count = 0  # the output was cleared
        assert not panel.running
        await asyncio.sleep(0)  # let the scheduled close run
        assert panel._nc is None
    finally:
        await panel.aclose()


async def test_status_panel_shows_disconnected_when_server_goes_away(server):
    panel = status_panel(server.url, refresh=0.1)
    try:
        panel.start()
        await _wait_for(lambda: panel.data["connected"])
        server.stop()
        await _wait_for(lambda: not panel.data["connected"])
        assert panel.running, "the background refresh must survive a lost server"
        assert "disconnected" in panel.text
        assert "disconnected" in panel.children[0].value
        data = await panel.refresh()  # an explicit refresh does not raise either
        assert data["connected"] is False and data["error"]
    finally:
        await panel.aclose()
    assert not panel.running


async def test_status_panel_unreachable_url_gives_disconnected_data_not_an_exception():
    panel = status_panel("nats://127.0.0.1:1", refresh=None)
    data = await panel.refresh()
    assert data["connected"] is False
    assert "127.0.0.1:1" in data["error"]
    assert "disconnected" in panel.text
    await panel.aclose()


def test_status_panel_without_event_loop_does_not_start_a_task():
    panel = status_panel("nats://127.0.0.1:4222")
    panel._repr_mimebundle_()
    assert not panel.running
    panel.close()


# -- worker counts ---------------------------------------------------------------------------


def test_worker_counts_increment_set_and_bars():
    counts = WorkerCounts(["w1", "w2"], total=10)
    assert counts.counts == {"w1": 0, "w2": 0}
    assert counts.increment("w1") == 1
    counts.increment("w1", by=2)
    counts.set("w2", 4)
    assert counts.counts == {"w1": 3, "w2": 4}
    bars = {name: bar for name, bar in counts._bars.items()}
    assert (bars["w1"].value, bars["w1"].max) == (3, 10)
    assert (bars["w2"].value, bars["w2"].max) == (4, 10)
    assert "w1" in counts.text and "4" in counts.text


def test_worker_counts_adds_unknown_workers_and_rescales():
    counts = WorkerCounts()
    counts.increment("late")
    counts.set("busy", 7)
    assert counts.counts == {"late": 1, "busy": 7}
    assert counts._bars["late"].max == 7  # without total, the largest count is full scale
    counts.reset()
    assert counts.counts == {"late": 0, "busy": 0}


def test_worker_counts_counts_is_a_copy():
    counts = WorkerCounts(["w1"])
    snapshot = counts.counts
    snapshot["w1"] = 99
    assert counts.counts == {"w1": 0}


# -- timeline ----------------------------------------------------------------------------------


def test_delivery_timeline_plots_one_marker_per_delivery():
    fig = delivery_timeline(
        {"nak()": [100.0, 100.001, 100.002], "nak(delay=1)": [50.0, 51.0, 52.1, 53.2]}, title="Retries"
    )
    assert isinstance(fig, Figure) and isinstance(fig, Timeline)
    (ax,) = fig.axes
    points = [len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)]  # the scatter markers
    assert sorted(points) == [3, 4]
    assert ax.get_title() == "Retries"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["nak()", "nak(delay=1)"]
    assert fig.series["nak(delay=1)"] == pytest.approx([0.0, 1.0, 2.1, 3.2])
    assert "nak(delay=1)" in repr(fig)


def test_delivery_timeline_absolute_times_and_empty_input():
    fig = delivery_timeline({"a": [1002.0, 1001.0], "b": [1001.5]}, title="t", relative=False)
    assert fig.series == {"a": [1001.0, 1002.0], "b": [1001.5]}
    left, right = fig.axes[0].get_xlim()
    assert 1000 < left <= 1001.0 and 1002.0 <= right < 1003, "the axis frames the data, not 0..max"
    with pytest.raises(ValueError, match="at least one series"):
        delivery_timeline({}, title="t")


# -- dead letters ---------------------------------------------------------------------------------


def test_dead_letter_table_escapes_cells():
    rows = [{"seq": 7, "subject": "orders.created.v1", "reason": "<script>alert('x')</script> & more", "data": b"<b>"}]
    table = dead_letter_table(rows)
    assert isinstance(table, DeadLetterTable) and isinstance(table, ipywidgets.HTML)
    assert "<script>" not in table.value
    assert "&lt;script&gt;" in table.value and "&amp; more" in table.value and "&lt;b&gt;" in table.value
    assert "<th" in table.value and "reason" in table.value
    assert "<script>alert('x')</script>" in table.text  # plain text stays readable
    assert table.rows == rows


def test_dead_letter_table_update_columns_and_empty():
    table = dead_letter_table([], columns=["seq", "reason"])
    assert "No dead letters" in table.value and table.text == "No dead letters."
    table.update([{"seq": 1, "reason": "boom", "extra": "hidden"}])
    assert "boom" in table.value and "hidden" not in table.value
    assert table.text.splitlines()[0].split() == ["seq", "reason"]


# -- cluster panel -------------------------------------------------------------------------


@pytest.mark.slow
async def test_cluster_panel_shows_nodes_leaders_and_each_nodes_copy_through_a_crash():
    from buslib import EmbeddedCluster
    from buslib.connection import connect
    from buslib.teaching import ClusterPanel, cluster_panel
    from buslib.teaching.helpers import wait_for_stream

    async with EmbeddedCluster() as cluster:
        nc = await connect(cluster.urls)
        js = nc.jetstream(timeout=15)  # a new R3 stream's first consumer waits for elections: under load > 5 s
        await js.add_stream(name="PANEL", subjects=["panel.>"], num_replicas=3)
        await js.add_stream(name="ALONE", subjects=["alone.>"], num_replicas=1)
        await js.add_consumer("PANEL", durable_name="billing")
        await wait_for_stream(js, "panel.x")  # a new stream answers through every node a moment later
        await wait_for_stream(js, "alone.x")
        for _ in range(5):
            await js.publish("panel.x", b"x")
        await js.publish("alone.x", b"x")
        panel = cluster_panel(cluster, refresh=None)
        assert isinstance(panel, ClusterPanel) and isinstance(panel, ipywidgets.Widget)
        data = await panel.refresh()
        assert data is panel.data and set(data["nodes"]) == {"n0", "n1", "n2"}
        assert data["meta_leader"] == cluster.meta_leader() and data["nodes"][data["meta_leader"]]["meta_leader"]
        panel_stream = data["streams"]["PANEL"]
        assert panel_stream["leader"] == cluster.leader_of("PANEL") and panel_stream["replicas"] == 3
        await _wait_for(lambda: cluster.stored("PANEL") == {"n0": 5, "n1": 5, "n2": 5})
        data = await panel.refresh()
        assert {name: copy["messages"] for name, copy in data["streams"]["PANEL"]["copies"].items()} == {
            "n0": 5,
            "n1": 5,
            "n2": 5,
        }
        assert data["streams"]["PANEL"]["consumers"] == {"billing": cluster.leader_of("PANEL", "billing")}
        alone = cluster.leader_of("ALONE")
        assert data["streams"]["ALONE"]["replicas"] == 1 and list(data["streams"]["ALONE"]["copies"]) == [alone]
        assert "PANEL" in panel.text and "R3" in panel.text and "PANEL" in panel.children[0].value

        await cluster.move_leader("PANEL", alone)  # one crash: the R1 stream's node and the R3 stream's leader
        cluster.crash(alone)
        data = await panel.refresh()
        assert not data["nodes"][alone]["running"] and f"{alone} down" in panel.text
        assert data["streams"]["ALONE"]["leader"] is None  # still shown: its node is down
        assert data["streams"]["ALONE"]["copies"][alone]["messages"] is None
        assert data["streams"]["PANEL"]["copies"][alone]["messages"] is None  # known from the others' view
        assert data["streams"]["PANEL"]["leader"] in (None, *[n for n in cluster.names if n != alone])
        await nc.close()
        panel.close()
