"""``GET /metrics``: valid Prometheus text whose figures move with real tasks, real WebSocket
clients and the gateway's own writes."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import eventually, make_token
from tests.webgate.rest_client import Api, new_user

FAMILIES = {
    "tracker_tasks", "tracker_task_duration_seconds", "tracker_task_queue_wait_seconds",
    "tracker_notification_deliveries", "tracker_recorder_buffered", "tracker_recorder_dropped",
    "tracker_recorder_written", "tracker_bus_dropped", "tracker_bus_sent", "tracker_websocket_connections",
    "tracker_events_relayed", "tracker_store_up", "tracker_notifier_deliveries", "tracker_notifier_stored",
}


async def scrape(session: aiohttp.ClientSession, base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with session.get(base + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)




async def test_exposition_parses_and_has_every_family(gateway):
    async with aiohttp.ClientSession() as session, session.get(gateway.base + "/metrics") as r:
        text = await r.text()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert FAMILIES <= names, FAMILIES - names
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["tracker_task_duration_seconds"] == "histogram" and types["tracker_events_relayed"] == "counter"
    assert types["tracker_tasks"] == "gauge"


async def test_counters_move_with_real_tasks(gateway, tracked_app, worker):
    from tests.apps.tasks import add, fail

    async with aiohttp.ClientSession() as session:
        before = await scrape(session, gateway.base)  # also sets where the histograms start counting
        done = value(before, "tracker_tasks", status="completed", task_type="tests.add")
        failed = value(before, "tracker_tasks", status="failed", task_type="tests.fail")
        runs = value(before, "tracker_task_duration_seconds_count", task_type="tests.add")
        waits = value(before, "tracker_task_queue_wait_seconds_count", task_type="tests.add")
        relayed = value(before, "tracker_events_relayed_total")
        for i in range(3):
            add.apply_async((i, i), queue=worker.queue)
        fail.apply_async(("boom",), queue=worker.queue)

        async def moved() -> dict[Any, float] | None:
            now = await scrape(session, gateway.base)
            ok = (value(now, "tracker_tasks", status="completed", task_type="tests.add") >= done + 3
                  and value(now, "tracker_tasks", status="failed", task_type="tests.fail") >= failed + 1
                  and value(now, "tracker_task_duration_seconds_count", task_type="tests.add") >= runs + 3
                  and value(now, "tracker_task_queue_wait_seconds_count", task_type="tests.add") >= waits + 3)
            return now if ok else None

        after = await eventually(moved)
        assert value(after, "tracker_task_duration_seconds_bucket", task_type="tests.add", le="+Inf") >= runs + 3
        assert value(after, "tracker_task_duration_seconds_sum", task_type="tests.add") > 0
        assert value(after, "tracker_events_relayed_total") > relayed  # the feed read the tasks' events
        assert value(after, "tracker_store_up") == 1


async def test_websocket_connections_and_write_path_figures(gateway):
    user = new_user()
    async with aiohttp.ClientSession() as session:
        before = await scrape(session, gateway.base)
        assert value(before, "tracker_websocket_connections") == 0
        written = value(before, "tracker_recorder_written_total", kind="tasks")
        sent = value(before, "tracker_bus_sent_total")
        async with session.ws_connect(gateway.ws_url + "?token=" + make_token(user)):
            during = await scrape(session, gateway.base)
            assert value(during, "tracker_websocket_connections") == 1
            await Api(session, gateway.api).create(user, status="running")
        after = await eventually(lambda: _closed(session, gateway.base))
        assert value(after, "tracker_recorder_written_total", kind="tasks") > written
        assert value(after, "tracker_bus_sent_total") >= sent + 2  # task.pending + task.started
        assert value(after, "tracker_recorder_dropped_total", kind="logs") == 0


async def _closed(session: aiohttp.ClientSession, base: str) -> dict[Any, float] | None:
    now = await scrape(session, base)
    return now if value(now, "tracker_websocket_connections") == 0 else None


async def test_notification_deliveries_by_channel_and_status(gateway, sql):
    import json

    user = new_user()
    async with aiohttp.ClientSession() as session:
        before = await scrape(session, gateway.base)
        # Sent through the notifier: its own counters move once the websocket channel delivered it.
        r = await Api(session, gateway.api).call("POST", "/notifications", user, json_body={"title": "hi"})
        assert r.status == 201

        async def delivered() -> bool:
            now = await scrape(session, gateway.base)
            return (value(now, "tracker_notifier_stored_total") >= value(before, "tracker_notifier_stored_total") + 1
                    and value(now, "tracker_notifier_deliveries_total", outcome="sent")
                    >= value(before, "tracker_notifier_deliveries_total", outcome="sent") + 1)

        await eventually(delivered, 15)
        sql.execute("INSERT INTO tracker_notifications (user_id, title, channels, delivery) VALUES "
                    "(%s, 't', ARRAY['slack'], %s::jsonb)",
                    (user, json.dumps({"slack": {"status": "failed", "attempts": 5, "last_error": "500"}})))
        base = value(before, "tracker_notification_deliveries", channel="slack", status="failed")

        async def counted() -> bool:
            now = await scrape(session, gateway.base)
            return value(now, "tracker_notification_deliveries", channel="slack", status="failed") == base + 1

        await eventually(counted, 10)
