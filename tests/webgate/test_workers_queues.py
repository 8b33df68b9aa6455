"""Workers and broker queues with real prefork workers, a real Redis broker and a real gateway:
the worker record from heartbeats plus start and graceful stop, REST (admin), Prometheus, the
queue-depth sampler and its stored series, ``Tracker.workers()/queues()`` and the CLI."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner

from tests.conftest import eventually, wait_for
from tests.webgate.rest_client import Api, new_user
from tests.webgate.test_prometheus import scrape, value
from tracker.api import Tracker
from tracker.cli import main
from tracker.config import TrackerConfig
from tracker.demo.services import free_port

FAST = {"TRACKER_HEARTBEAT_INTERVAL": "0.5"}


@pytest.fixture(autouse=True)
def _fast_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    # Read by the gateway fixture's TrackerConfig.from_env(): a sample every 0.3 s.
    monkeypatch.setenv("TRACKER_QUEUE_SAMPLE_INTERVAL", "0.3")




async def test_workers_online_active_then_sigterm_and_sigkill(gateway: Any, tracked_app: Any, make_worker: Any,
                                                              config: TrackerConfig, tracker: Tracker) -> None:
    from tests.apps.tasks import slow

    with ThreadPoolExecutor(2) as pool:  # start both at once: each takes seconds to be ready
        w1, w2 = pool.map(lambda c: make_worker(concurrency=c, extra_env=FAST), (2, 3))
    # Tasks that run until they are cancelled: the checks below see them running however slow the machine.
    running = [slow.apply_async((120,), {"step": 0.05}, queue=w1.queue) for _ in range(2)]
    running.append(slow.apply_async((120,), {"step": 0.05}, queue=w2.queue))
    by_worker = {w1.name: sorted(r.id for r in running[:2]), w2.name: [running[2].id]}
    async with aiohttp.ClientSession() as session:
        api = Api(session, gateway.api)

        async def both_busy() -> Any:
            r = await api.admin("GET", "/workers")
            assert r.status == 200, r.text
            seen = {w["hostname"]: w for w in r.body["items"]}
            ok = all(seen.get(h, {}).get("status") == "online" and seen[h]["active"] == ids
                     for h, ids in by_worker.items())
            return seen if ok else None

        seen = await eventually(both_busy, what="both workers online running their tasks")
        for w, concurrency in ((w1, 2), (w2, 3)):
            rec = seen[w.name]
            assert rec["concurrency"] == concurrency and rec["pid"] == w.proc.pid
            assert rec["queues"] == [w.queue]
            assert rec["rss_bytes"] > 0 and rec["cpu_percent"] is not None
            assert rec["last_heartbeat"] and rec["started_at"] <= rec["last_heartbeat"]
        one = await api.admin("GET", f"/workers/{w1.name}")
        assert one.status == 200 and one.body["hostname"] == w1.name and one.body["active"] == by_worker[w1.name]
        assert (await api.call("GET", "/workers", new_user())).error_code() == "forbidden"
        assert (await api.call("GET", f"/workers/{w1.name}", new_user())).status == 403
        missing = await api.admin("GET", "/workers/nobody@nowhere")
        assert missing.status == 404 and missing.error_code() == "not_found"

        async def prometheus_busy() -> Any:
            s = await scrape(session, gateway.base)
            ok = (value(s, "tracker_worker_active_tasks", hostname=w1.name) == 2
                  and value(s, "tracker_worker_active_tasks", hostname=w2.name) == 1
                  and value(s, "tracker_workers", status="online") >= 2)
            return s if ok else None

        await eventually(prometheus_busy, what="Prometheus worker gauges")
        for r in running:
            tracker.cancel(r.id)

        async def idle_and_counted() -> Any:
            r = await api.admin("GET", f"/workers/{w1.name}")
            return r.body if r.body["active"] == [] and r.body["processed"] == 2 else None

        await eventually(idle_and_counted, what="w1 idle with 2 tasks processed")

        # SIGTERM: a graceful stop turns the worker offline at once (the lost window is 30 s).
        w1.stop()
        r = await api.admin("GET", f"/workers/{w1.name}")
        assert r.body["status"] == "offline" and r.body["stopped_at"] is not None and r.body["active"] == []
        assert (await api.admin("GET", f"/workers/{w2.name}")).body["status"] == "online"
        offline_only = await api.admin("GET", "/workers", params={"status": "offline"})
        assert w1.name in [w["hostname"] for w in offline_only.body["items"]]
        assert w2.name not in [w["hostname"] for w in offline_only.body["items"]]

        # SIGKILL: no goodbye, so it stays online until its heartbeat is older than the lost window.
        w2.kill()
        r = await api.admin("GET", f"/workers/{w2.name}")
        assert r.body["status"] == "online" and r.body["stopped_at"] is None
    short = Tracker(config=config.replace(worker_lost_after=1.5))
    try:
        lost = wait_for(lambda: (w := short.worker(w2.name)) is not None and w.status == "offline" and w,
                        timeout=15, what="SIGKILLed worker offline after the lost window")
        assert lost.stopped_at is None and lost.active == []
        # History: both stay listed with when they were last seen.
        names = {w.hostname: w for w in short.workers()}
        assert names[w1.name].status == "offline" and names[w1.name].last_heartbeat is not None
        runner = CliRunner(env={"COLUMNS": "200"})  # the table's width, whatever the environment says
        out = runner.invoke(main, ["workers", "--json"], env={"TRACKER_WORKER_LOST_AFTER": "1.5"})
        assert out.exit_code == 0, out.output
        cli = {w["hostname"]: w for w in json.loads(out.output)["items"]}
        assert cli[w2.name]["status"] == "offline" and cli[w1.name]["concurrency"] == 2
        table = runner.invoke(main, ["workers"])
        assert table.exit_code == 0 and w1.name in table.output and "offline" in table.output
    finally:
        short.close()


async def test_queue_depth_sampled_consumed_and_stored(gateway: Any, tracked_app: Any, make_worker: Any,
                                                       tracker: Tracker) -> None:
    from tests.apps.tasks import add

    queue = f"qd-{uuid.uuid4().hex[:8]}"
    for i in range(50):
        add.apply_async((i, 1), queue=queue)  # nobody consumes this queue yet
    async with aiohttp.ClientSession() as session:
        api = Api(session, gateway.api)

        async def item(depth: int, consumers: int) -> Any:
            r = await api.admin("GET", "/queues")
            assert r.status == 200, r.text
            found = [i for i in r.body["items"] if i["name"] == queue]
            return found[0] if found and found[0]["depth"] == depth and found[0]["consumers"] == consumers else None

        waiting = await eventually(lambda: item(50, 0), what="depth 50 with no consumer")
        assert waiting["oldest_age_seconds"] >= 0
        assert (await api.call("GET", "/queues", new_user())).status == 403
        live = Tracker.from_celery(tracked_app)
        try:
            report = live.queues()  # measured now, from the app's broker
            assert [(i.depth, i.consumers) for i in report.items if i.name == queue] == [(50, 0)]
        finally:
            live.close()
        s = await scrape(session, gateway.base)
        assert value(s, "tracker_queue_depth", queue=queue) == 50

        worker = make_worker(queue=queue, extra_env=FAST)
        await eventually(lambda: item(0, 1), what="depth 0 once a worker consumed the queue")
        assert "oldest_age_seconds" not in (await item(0, 1))
        series = await api.admin("GET", "/metrics", params={"name": "tracker.queue.depth", "since": "-5m",
                                                            "bucket": "1m", "agg": "max"})
        assert series.status == 200 and series.body["items"], series.text
        assert worker.proc.poll() is None

        # /queues answers from the sampler's memory; its samples reach the store at the next
        # group commit, so the stored 0 may land a flush interval after /queues showed it.
        def stored_depths() -> set[float]:
            return {m.value for m in tracker.metrics(name="tracker.queue.depth", since="-5m", limit=1000)
                    if m.labels.get("queue") == queue}

        await eventually(lambda: {50.0, 0.0} <= stored_depths(), what="the samples 50 and 0 stored")
    assert {50.0, 0.0} <= stored_depths()
    assert tracker.metric_series("tracker.queue.depth", bucket="1m", agg="max", since="-5m")
    out = CliRunner().invoke(main, ["queues", "--json"])  # no app: the depths the gateway sampled
    assert out.exit_code == 0, out.output
    assert [i["depth"] for i in json.loads(out.output)["items"] if i["name"] == queue] == [0]


async def test_queues_without_a_celery_app_say_why(tracker_env: dict[str, str]) -> None:
    from webgate import create_app

    port = free_port()
    app = create_app(TrackerConfig.from_env(), celery_app=None)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            r = await Api(session, f"http://127.0.0.1:{port}/api/v1/progress").admin("GET", "/queues")
        assert r.status == 200 and r.body["items"] == [] and "Celery app" in r.body["reason"]
    finally:
        await runner.cleanup()
