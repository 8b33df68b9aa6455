"""Aggregate alerts against real servers: PostgreSQL, Redis, prefork workers, gateway processes
and an HTTP webhook receiver. Each test has its own stream prefix (so its own episode state) and
its own queues; rule ids start with ``atest-`` and their notifications are deleted at the end."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import redis as redis_lib
from aiohttp import web

from tests.conftest import Worker, forget_notifications, user_ids, wait_for
from tests.conftest import eventually as until  # the suite's async poll, under this module's old name
from tests.webgate.test_notifications import Receiver, serve
from tracker import Tracker
from tracker import alerts as al
from tracker import notify as nt
from tracker import queries as q
from tracker.config import TrackerConfig
from tracker.demo.services import free_port
from webgate import create_app
from webgate.notify.alerts import ALERTS
from webgate.notify.channels import SIGNATURE_HEADER, verify_signature

HOOK_SECRET = "alert-hook-secret"
#: Workers heartbeat often and gateways take them for lost soon.
FAST = {"TRACKER_HEARTBEAT_INTERVAL": "0.5", "TRACKER_WORKER_LOST_AFTER": "3"}
#: Gateways sweep (and evaluate the alerts) every 0.25 s: the interval follows the stall bound.
QUICK_SWEEPS = {"TRACKER_STALL_AFTER": "1"}


#: This module's user ids (and alert rules): their notifications are deleted when the module ends.
uid = user_ids("atest")
_forget_test_alerts = forget_notifications("metadata->>'rule' LIKE 'atest-%'")

@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def alert_rows(sql: psycopg.Connection[Any], rule_id: str) -> list[dict[str, Any]]:
    cur = sql.execute("SELECT id, user_id, channels, task_id, type, priority, title, message, metadata, delivery, "
                      "dedup_key FROM tracker_notifications WHERE metadata->>'rule' = %s ORDER BY id", (rule_id,))
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def episode(rdb: redis_lib.Redis, prefix: str, field: str) -> dict[str, Any] | None:
    raw = rdb.hget(al.state_key(prefix), field)
    return json.loads(raw) if raw else None


def passes(rdb: redis_lib.Redis, prefix: str) -> int:
    return int(rdb.hget(al.state_key(prefix), "#passes") or 0)


def wait_passes(rdb: redis_lib.Redis, prefix: str, more: int) -> None:
    """Let the gateways evaluate ``more`` times (a duplicate would have had its chance)."""
    target = passes(rdb, prefix) + more
    wait_for(lambda: passes(rdb, prefix) >= target, timeout=30, what=f"{more} alert passes")


# -- rules: syntax and validation -------------------------------------------------------------------------
def test_aggregate_rules_parse_with_their_defaults_and_filters():
    fr, qd, nw = nt.parse_rules([
        {"id": "fr", "on": ["failure_rate>50%"], "task_types": ["tests.*"], "queues": ["q-?"], "users": ["a"]},
        {"id": "qd", "on": "queue_depth>20", "queues": ["orders"], "window": 60},
        {"id": "nw", "on": ["no_workers"], "window": 120, "channels": ["websocket", "webhook"],
         "webhook_url": "https://hooks.example/x"}])
    assert fr.conditions == (nt.Condition("failure_rate", 50.0),) and fr.triggers == ()
    assert fr.conditions[0].label == "failure_rate>50%"
    assert (fr.window, fr.min_tasks, fr.task_types, fr.queues, fr.users) == (300.0, 10, ("tests.*",), ("q-?",), ("a",))
    assert qd.conditions[0].threshold == 20.0 and qd.queues == ("orders",)
    assert nw.conditions[0].kind == "no_workers" and nw.window == 120.0
    # Aggregate rules never react to task events.
    assert nt.triggers_of([fr, qd, nw]) == frozenset()

    m = al.Measurements(failure={al.failure_key(fr): (9, 9)}, depths={"orders": 21.0, "other": 99.0}, online=1)
    seen = {(o.rule.id, o.scope): o for o in al.observe([fr, qd, nw], m)}
    assert not seen[("fr", "")].active  # 100% failed, but fewer than min_tasks finished
    assert seen[("qd", "orders")].active and ("qd", "other") not in seen
    assert not seen[("nw", "")].active
    m = al.Measurements(failure={al.failure_key(fr): (10, 5)}, online=0, offline_for=119.0)
    seen = {(o.rule.id, o.scope): o for o in al.observe([fr, qd, nw], m)}
    assert not seen[("fr", "")].active and seen[("fr", "")].value == 50.0  # not above 50%
    assert not seen[("nw", "")].active  # offline, but not for the whole window yet
    assert al.glob_match(["q-?"], "q-1") and not al.glob_match(["q-?"], "q-12")


@pytest.mark.parametrize(("rule", "message"), [
    ({"on": ["failure_rate>50"]}, "bad aggregate condition 'failure_rate>50'"),
    ({"on": ["failure_rate>100%"]}, "below 100%"),
    ({"on": ["queue_depth>=5"]}, "write 'failure_rate>N%'"),
    ({"on": ["failed", "no_workers"]}, "mixes task triggers and aggregate conditions"),
    ({"on": ["failed"], "window": 60}, "'window' only for aggregate conditions"),
    ({"on": ["no_workers"], "queues": ["a"]}, "'queues' filters failure_rate and queue_depth only"),
    ({"on": ["queue_depth>5"], "task_types": ["a"]}, "'task_types' filters failure_rate only"),
    ({"on": ["no_workers"], "tags": ["a"]}, "'tags' only for task triggers"),
    ({"on": ["failure_rate>5%"], "min_tasks": 0}, "min_tasks must be >= 1, got 0"),
    ({"on": ["failure_rate>5%"], "window": -1}, "window must be > 0"),
])
def test_invalid_aggregate_rules_stop_the_gateway(tracker_env, rule, message):
    # The same check_config as every rule: `tracker gateway` exits with this message (as
    # test_notifications shows for a process).
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("?", r"\?")):
        create_app(TrackerConfig.from_env().replace(notifications=[rule]))


# -- failure rate: two gateways, real tasks, a webhook ---------------------------------------------------------
def test_failure_rate_fires_once_per_episode_across_two_gateways(
        make_worker: Callable[..., Worker], gateway_process, receiver, sql, rdb):
    from tests.apps.tasks import add, fail

    worker = make_worker(extra_env=FAST)
    prefix = f"ta-{uuid.uuid4().hex[:8]}"
    rule_id, alice, bob = uid("rate"), uid("alice"), uid("bob")
    rules = [{"id": rule_id, "on": ["failure_rate>50%"], "queues": [worker.queue], "min_tasks": 10,
              "users": [alice, bob], "channels": ["websocket", "webhook"]}]
    env = {**FAST, **QUICK_SWEEPS, "TRACKER_PREFIX": prefix, "TRACKER_NOTIFICATIONS": json.dumps(rules),
           "TRACKER_WEBHOOK_URL": receiver.url, "TRACKER_WEBHOOK_SECRET": HOOK_SECRET}
    # Both gateways start side by side (a start mostly waits on imports).
    with ThreadPoolExecutor(2) as pool:
        gateways = list(pool.map(lambda _i: gateway_process(extra_env=env), range(2)))
    field = f"{rule_id}|failure_rate>50%|"

    # 6 failures out of 10 tasks: 60% > 50% once the tenth has finished.
    for i in range(10):
        (fail.apply_async((f"boom-{i}",), queue=worker.queue) if i % 5 < 3
         else add.apply_async((i, i), queue=worker.queue))
    rows = wait_for(lambda: len(alert_rows(sql, rule_id)) >= 3 and alert_rows(sql, rule_id), timeout=60,
                    what="the failure-rate alert")
    wait_for(lambda: receiver.requests, timeout=30, what="the webhook")
    wait_passes(rdb, prefix, 4)
    rows = alert_rows(sql, rule_id)
    assert len(rows) == 3 and len(receiver.requests) == 1
    assert all(gp.proc is not None and gp.proc.poll() is None for gp in gateways)

    by_user = {r["user_id"]: r for r in rows}
    assert set(by_user) == {alice, bob, None}
    first = episode(rdb, prefix, field)
    assert first is not None and first["notified"] is True
    for r in rows:
        m = r["metadata"]
        assert m["trigger"] == "failure_rate>50%" and m["value"] == 60.0
        assert (m["failed"], m["finished"], m["episode"]) == (6, 10, first["episode"])
        assert r["task_id"] is None and r["type"] == "error" and r["priority"] == "high"
        assert r["title"] == "Failure rate 60% is above 50%"
        assert r["message"] == f"6 of 10 tasks that finished in the last 300s failed (queues {worker.queue})."
    # In-app for each user of the rule; the webhook once, from the notification of no user.
    assert by_user[alice]["channels"] == by_user[bob]["channels"] == ["websocket"]
    assert by_user[None]["channels"] == ["webhook"]
    wait_for(lambda: all(r["delivery"][ch]["status"] == "sent" for r in alert_rows(sql, rule_id)
                         for ch in r["channels"]), what="deliveries recorded as sent")
    _ts, headers, body = receiver.requests[0]
    assert verify_signature(HOOK_SECRET, headers[SIGNATURE_HEADER], body)
    payload = json.loads(body)["notification"]
    assert payload["id"] == by_user[None]["id"] and payload["metadata"]["trigger"] == "failure_rate>50%"
    assert payload["metadata"]["value"] == 60.0 and payload["task_id"] is None

    # Enough successes clear the condition (6 of 18 failed): the episode ends, nothing is sent.
    for i in range(8):
        add.apply_async((i, 1), queue=worker.queue)
    wait_for(lambda: episode(rdb, prefix, field) is None, timeout=60, what="the episode to clear")
    wait_passes(rdb, prefix, 2)
    assert len(alert_rows(sql, rule_id)) == 3 and len(receiver.requests) == 1

    # Failures again (18 of 30): a new episode fires once more.
    for i in range(12):
        fail.apply_async((f"again-{i}",), queue=worker.queue)
    wait_for(lambda: len(alert_rows(sql, rule_id)) >= 6, timeout=60, what="the second episode")
    wait_for(lambda: len(receiver.requests) >= 2, timeout=30, what="the second webhook")
    wait_passes(rdb, prefix, 4)
    rows = alert_rows(sql, rule_id)
    assert len(rows) == 6 and len(receiver.requests) == 2
    second = episode(rdb, prefix, field)
    assert second is not None and second["episode"] != first["episode"]
    assert {r["metadata"]["episode"] for r in rows[3:]} == {second["episode"]}
    assert all(r["metadata"]["value"] > 50.0 for r in rows[3:])
    hooked = [json.loads(b)["notification"]["metadata"]["episode"] for _t, _h, b in receiver.requests]
    assert hooked == [first["episode"], second["episode"]]


# -- queue depth: samples written through the metric path, as the gateway's sampler writes them --------------
async def test_queue_depth_fires_once_per_queue_and_episode_across_a_restart(tracker_env, tracker: Tracker, sql, rdb):
    prefix = f"ta-{uuid.uuid4().hex[:8]}"
    rule_id, user = uid("depth"), uid("ops")
    qa, qb, qc = (f"{prefix}-{n}" for n in ("a", "b", "c"))
    rule = {"id": rule_id, "on": "queue_depth>20", "queues": [f"{prefix}-*"], "users": [user]}
    cfg = TrackerConfig.from_env().replace(prefix=prefix, notifications=[rule], stall_after=1.0)

    def sample(**depths: float) -> None:
        for queue, depth in depths.items():
            tracker.reporter.metric(q.QUEUE_DEPTH_METRIC, depth, labels={"queue": queue})
        tracker.flush()

    def fired(queue: str) -> list[dict[str, Any]]:
        return [r for r in alert_rows(sql, rule_id) if r["metadata"]["queue"] == queue]

    async def wait_passes_here(app: Any, more: int) -> None:
        target = app[ALERTS].passes + more
        await until(lambda: app[ALERTS].passes >= target, what=f"{more} alert passes")

    # An episode of a rule that is no longer configured is forgotten.
    rdb.hset(al.state_key(prefix), "atest-gone|queue_depth>1|x", json.dumps({"episode": "1", "notified": True}))
    async with serve(cfg) as app:
        # A sample older than tracker_alert_sample_max_age says nothing: qc never fires.
        tracker.reporter.metric(q.QUEUE_DEPTH_METRIC, 500, labels={"queue": qc}, ts=time.time() - 120)
        sample(**{qa: 25, qb: 5})
        await until(lambda: fired(qa), what="the queue-depth alert")
        sample(**{qa: 30, qb: 10})
        await wait_passes_here(app, 3)
        assert episode(rdb, prefix, "atest-gone|queue_depth>1|x") is None
        (row,) = alert_rows(sql, rule_id)
        assert row["user_id"] == user and row["channels"] == ["websocket"] and row["type"] == "warning"
        assert row["metadata"]["trigger"] == "queue_depth>20" and row["metadata"]["value"] == 25.0
        assert row["metadata"]["queue"] == qa
        assert row["title"] == f"Queue {qa} has 25 messages waiting (above 20)"
        await until(lambda: tracker.notification(row["id"]).delivery["websocket"]["status"] == "sent",
                    what="in-app delivery")

        # Another queue has its own episode.
        sample(**{qb: 21})
        await until(lambda: fired(qb), what="the second queue's alert")
        assert fired(qb)[0]["metadata"]["value"] == 21.0 and len(fired(qa)) == 1

    # A restarted gateway carries on with the same episodes: both queues are still deep, nothing new.
    async with serve(cfg) as app:
        sample(**{qa: 35, qb: 22})
        await wait_passes_here(app, 3)
        assert len(fired(qa)) == 1 and len(fired(qb)) == 1

        # Back under the threshold and over it again: a new episode for qa.
        sample(**{qa: 3})
        await until(lambda: episode(rdb, prefix, f"{rule_id}|queue_depth>20|{qa}") is None,
                    what="qa's episode to clear")
        sample(**{qa: 40})
        await until(lambda: len(fired(qa)) == 2, what="qa's second episode")
        await wait_passes_here(app, 3)
        assert [r["metadata"]["value"] for r in fired(qa)] == [25.0, 40.0]
        assert len({r["metadata"]["episode"] for r in fired(qa)}) == 2
        assert len(fired(qb)) == 1 and fired(qc) == []


async def test_queue_depth_alert_from_the_gateways_own_sampler(tracker_env, tracked_app, make_worker, sql, rdb):
    """End to end: real messages waiting in a real broker queue, measured by the gateway's sampler
    (the Celery app it was started with), fire ``queue_depth>20`` once; a worker drains the queue
    and the episode clears."""
    from tests.apps.tasks import add

    prefix = f"ta-{uuid.uuid4().hex[:8]}"
    rule_id, user = uid("sampled"), uid("ops")
    queue = f"{prefix}-q"
    rule = {"id": rule_id, "on": "queue_depth>20", "queues": [queue], "users": [user]}
    cfg = TrackerConfig.from_env().replace(prefix=prefix, notifications=[rule], stall_after=1.0,
                  queue_sample_interval=0.3)
    for i in range(25):
        add.apply_async((i, 1), queue=queue)  # nobody consumes this queue yet
    app = create_app(cfg, celery_app=tracked_app)
    port = free_port()
    runner = web.AppRunner(app, shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        (row,) = await until(lambda: alert_rows(sql, rule_id), timeout=30, what="the sampled queue-depth alert")
        assert row["user_id"] == user and row["metadata"]["trigger"] == "queue_depth>20"
        assert row["metadata"]["queue"] == queue and row["metadata"]["value"] == 25.0
        field = f"{rule_id}|queue_depth>20|{queue}"
        assert episode(rdb, prefix, field) is not None
        make_worker(queue=queue, extra_env=FAST)
        await until(lambda: episode(rdb, prefix, field) is None, timeout=30, what="the episode to clear")
        assert len(alert_rows(sql, rule_id)) == 1
    finally:
        await runner.cleanup()


# -- no workers ---------------------------------------------------------------------------------------------
async def test_no_workers_fires_only_once_no_worker_was_online_for_the_window(
        tracker_env, make_worker: Callable[..., Worker], tracker: Tracker, sql):
    from tests.apps.tasks import sleep

    worker = make_worker(extra_env=FAST)
    busy = sleep.apply_async((60,), queue=worker.queue)  # busy: its pool process heartbeats

    def online() -> int:
        with tracker.engine.connect() as conn:
            return int(conn.execute(q.count_online_workers(3.0)).scalar_one())

    wait_for(online, timeout=30, what="the worker online")
    prefix = f"ta-{uuid.uuid4().hex[:8]}"
    rule_id, alice, bob = uid("workers"), uid("alice"), uid("bob")
    rule = {"id": rule_id, "on": ["no_workers"], "window": 2, "users": [alice, bob], "priority": "urgent"}
    cfg = TrackerConfig.from_env().replace(prefix=prefix, notifications=[rule], worker_lost_after=3.0,
                  stall_after=1.0)
    async with serve(cfg) as app:
        evaluator = app[ALERTS]
        await until(lambda: evaluator.passes >= 5, what="five passes")
        assert online() > 0  # the worker was online through those passes: nothing fired
        assert alert_rows(sql, rule_id) == []

        worker.kill()
        rows = await until(lambda: len(alert_rows(sql, rule_id)) >= 2 and alert_rows(sql, rule_id), timeout=30,
                           what="the no-workers alert")
        target = evaluator.passes + 3
        await until(lambda: evaluator.passes >= target, what="three more passes")
        rows = alert_rows(sql, rule_id)
        assert len(rows) == 2 and {r["user_id"] for r in rows} == {alice, bob}
        for r in rows:
            assert r["metadata"]["trigger"] == "no_workers" and r["metadata"]["online"] == 0
            assert r["metadata"]["value"] >= 2.0 and r["priority"] == "urgent"
            assert r["channels"] == ["websocket"] and r["task_id"] is None
        # The same sweeper took the killed worker's task for lost (no stale running row is left behind).
        await until(lambda: getattr(tracker.get(busy.id), "status", None) == "failed", what="the task marked lost")
        assert tracker.get(busy.id).error_type == "worker-lost"
