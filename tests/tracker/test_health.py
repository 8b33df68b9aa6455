"""Heartbeats, lost workers and stalled tasks, with real workers, PostgreSQL and Redis."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import wait_for
from tracker import health
from tracker.config import TrackerConfig
from tracker.control import index_key

STREAM = "tracker:events"
FAST = {"TRACKER_HEARTBEAT_INTERVAL": "0.5", "TRACKER_WORKER_LOST_AFTER": "3"}


def stream_tail(rdb: Any) -> str:
    last = rdb.xrevrange(STREAM, count=1)
    return last[0][0].decode() if last else "0-0"


def events_of(rdb: Any, task_id: str, since: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for _id, fields in rdb.xrange(STREAM, min=f"({since}" if since != "0-0" else "-"):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if f.get("task_id") == task_id:
            out.append((f["type"], json.loads(f["data"])))
    return out


@pytest.fixture()
def sweeper(tracker_env: dict[str, str]) -> Iterator[Any]:
    """A bus-only Reporter like ``tracker sweep`` uses; closed (flushed) after the test."""
    reporter = health.cli_reporter(TrackerConfig.from_env())
    yield reporter
    if reporter is not None:
        reporter.close(5)


def fake_task(sql: Any, status: str = "running", *, heartbeat_age: float | None = None, worker_pid: int | None = 4242,
              progress_age: float | None = None, started_age: float = 10.0, name: str = "fake.task") -> str:
    """A task row as a worker would have left it, with timestamps ``*_age`` seconds old."""
    task_id = f"fake-{uuid.uuid4().hex[:12]}"
    sql.execute(
        "INSERT INTO tracker_tasks (task_id, name, task_type, status, status_ts, worker, worker_pid, started_at, "
        "heartbeat_at, progress_at, updated_at, finished_at) VALUES (%s, %s, %s, %s, extract(epoch FROM now()) - 60, "
        "'w@host', %s, now() - make_interval(secs => %s), now() - make_interval(secs => %s), "
        "now() - make_interval(secs => %s), now(), CASE WHEN %s IN ('completed','failed','cancelled') "
        "THEN now() END)",
        (task_id, name, name, status, worker_pid, started_age,
         heartbeat_age if heartbeat_age is not None else None,
         progress_age if progress_age is not None else None, status))
    return task_id


def row(sql: Any, task_id: str) -> dict[str, Any]:
    cur = sql.execute("SELECT * FROM tracker_tasks WHERE task_id = %s", (task_id,))
    names = [d.name for d in cur.description]
    return dict(zip(names, cur.fetchone(), strict=True))


# -- the whole worker dies ----------------------------------------------------------------------------
def test_sigkill_of_whole_worker_marks_task_lost_and_spares_living_one(
        tracked_app: Any, make_worker: Any, tracker: Any, rdb: Any, sql: Any, sweeper: Any) -> None:
    from tests.apps.tasks import steps

    config = TrackerConfig.from_env().replace(heartbeat_interval=0.5, worker_lost_after=3.0, stall_after=3600.0)
    doomed = make_worker(concurrency=1, extra_env=FAST)
    alive = make_worker(concurrency=1, extra_env=FAST)
    since = stream_tail(rdb)
    dead = steps.apply_async((1200, 0.05), queue=doomed.queue)  # a minute: it is killed long before
    live = steps.apply_async((260, 0.05), queue=alive.queue)  # ~13 s: outlives the lost window
    def running(task_id: str) -> Any:
        t = tracker.get(task_id)
        return t if t is not None and t.status == "running" and t.heartbeat_at else None

    recs = {r.id: wait_for(partial(running, r.id), what="running") for r in (dead, live)}

    def beat_since(task_id: str, first: Any) -> bool:
        return bool(tracker.get(task_id).heartbeat_at > first.heartbeat_at)

    # Both pool processes heartbeat: each task's heartbeat moves and each process has a fresh row.
    for task_id, first in recs.items():
        wait_for(partial(beat_since, task_id, first), timeout=10, what="heartbeat advances")
    pids = [row(sql, r.id)["worker_pid"] for r in (dead, live)]
    assert len(set(pids)) == 2
    fresh = sql.execute("SELECT pid FROM tracker_worker_processes WHERE pid = ANY(%s) "
                        "AND heartbeat_at > now() - interval '5s'", (pids,)).fetchall()
    assert {p for (p,) in fresh} == set(pids)

    assert doomed.children(), "the pool child runs the task"
    doomed.kill()  # SIGKILL to the process group: main process and pool child, no goodbye
    killed_at = time.time()
    first = health.sweep(tracker.engine, config, redis=rdb, reporter=sweeper)
    assert dead.id not in [r["task_id"] for r in first.lost], "its last heartbeat is still fresh"
    assert tracker.get(dead.id).status == "running"

    def swept() -> bool:
        health.sweep(tracker.engine, config, redis=rdb, reporter=sweeper)
        return tracker.get(dead.id).status != "running"

    wait_for(swept, timeout=15, interval=0.25, what="lost task failed by the sweep")
    marked_at = time.time()
    rec = tracker.get(dead.id)
    assert rec.status == "failed"
    assert rec.error_type == "worker-lost"
    assert rec.finished_at is not None
    # Not before the window: its last heartbeat is at least worker_lost_after old when marked.
    assert (rec.finished_at - rec.heartbeat_at).total_seconds() >= config.worker_lost_after
    assert marked_at - killed_at < config.worker_lost_after + 10

    sweeper.flush(5)
    failed = [d for t, d in events_of(rdb, dead.id, since) if t == "task.failed"]
    assert len(failed) == 1
    assert failed[0]["error_type"] == "worker-lost" and failed[0]["status"] == "failed"

    # The living slow task was never touched; paused for longer than the window, it still
    # heartbeats and is not taken for lost either.
    assert tracker.get(live.id).status == "running"
    assert tracker.pause(live.id)
    wait_for(lambda: tracker.get(live.id).status == "paused", what="paused")
    pause_end = time.monotonic() + config.worker_lost_after + 1.5
    while time.monotonic() < pause_end:
        assert live.id not in [r["task_id"] for r in health.sweep(tracker.engine, config, redis=rdb,
                                                                   reporter=sweeper).lost]
        time.sleep(0.5)
    assert tracker.get(live.id).status == "paused"
    assert tracker.resume(live.id)
    done = wait_for(lambda: (t := tracker.get(live.id)).status in ("completed", "failed", "cancelled") and t,
                    timeout=30, what="live task finished")
    assert done.status == "completed" and done.error_type is None
    health.sweep(tracker.engine, config, redis=rdb, reporter=sweeper)
    assert tracker.get(dead.id).status == "failed" and tracker.get(live.id).status == "completed"
    assert not [t for t, _ in events_of(rdb, live.id, since) if t in ("task.failed", "task.stalled")]


# -- stalls -------------------------------------------------------------------------------------------
def test_stalled_task_is_flagged_once_and_not_failed(tracked_app: Any, worker: Any, tracker: Any, rdb: Any,
                                                     sweeper: Any) -> None:
    from tests.apps.tasks import sleep, steps

    config = TrackerConfig.from_env().replace(stall_after=1.0)
    since = stream_tail(rdb)
    quiet = sleep.apply_async((5,), queue=worker.queue)  # never reports progress
    busy = steps.apply_async((80, 0.05), queue=worker.queue)  # reports progress all along
    def running(task_id: str) -> bool:
        t = tracker.get(task_id)
        return t is not None and t.status == "running"

    for r in (quiet, busy):
        wait_for(partial(running, r.id), what="running")

    def stalled() -> list[str]:
        return [r["task_id"] for r in health.sweep(tracker.engine, config, redis=rdb, reporter=sweeper).stalled]

    flagged = wait_for(lambda: quiet.id in (ids := stalled()) and ids, timeout=10, what="stall flagged")
    assert busy.id not in flagged
    first_flag = tracker.get(quiet.id)
    assert first_flag.status == "running"
    assert quiet.id not in stalled()  # flagged once per stall, not at every pass
    assert busy.id not in stalled()
    sweeper.flush(5)
    evs = [d for t, d in events_of(rdb, quiet.id, since) if t == "task.stalled"]
    assert len(evs) == 1
    assert evs[0]["status"] == "running" and evs[0]["stalled_for"] >= 1.0
    assert not [t for t, _ in events_of(rdb, busy.id, since) if t == "task.stalled"]
    assert wait_for(lambda: (t := tracker.get(quiet.id)).status == "completed" and t, timeout=15)


def test_stall_is_flagged_again_only_after_progress(tracker_env: dict[str, str], tracker: Any, sql: Any) -> None:
    config = TrackerConfig.from_env().replace(stall_after=1.0)
    task_id = fake_task(sql, heartbeat_age=0.0, progress_age=5.0)
    first = health.sweep(tracker.engine, config)
    assert task_id in [r["task_id"] for r in first.stalled]
    stalled_at = row(sql, task_id)["stalled_at"]
    assert stalled_at is not None
    assert task_id not in [r["task_id"] for r in health.sweep(tracker.engine, config).stalled]
    assert row(sql, task_id)["stalled_at"] == stalled_at
    sql.execute("UPDATE tracker_tasks SET progress_at = now() WHERE task_id = %s", (task_id,))  # it moved
    assert task_id not in [r["task_id"] for r in health.sweep(tracker.engine, config).stalled]
    time.sleep(1.2)
    assert task_id in [r["task_id"] for r in health.sweep(tracker.engine, config).stalled]
    assert row(sql, task_id)["stalled_at"] > stalled_at
    sql.execute("UPDATE tracker_tasks SET status = 'completed' WHERE task_id = %s", (task_id,))


def test_only_worker_tasks_with_stale_heartbeats_are_lost(tracker_env: dict[str, str], tracker: Any, sql: Any) -> None:
    config = TrackerConfig.from_env().replace(worker_lost_after=5.0, stall_after=3600.0)
    lost = fake_task(sql, heartbeat_age=60)
    paused_lost = fake_task(sql, "paused", heartbeat_age=60)
    fresh = fake_task(sql, heartbeat_age=1)
    rest_task = fake_task(sql, heartbeat_age=None, worker_pid=None)  # reported through the REST API
    old_done = fake_task(sql, "completed", heartbeat_age=60)
    result = health.sweep(tracker.engine, config)
    ids = {r["task_id"] for r in result.lost}
    assert {lost, paused_lost} <= ids
    assert not ids & {fresh, rest_task, old_done}
    assert row(sql, lost)["status"] == row(sql, paused_lost)["status"] == "failed"
    assert row(sql, paused_lost)["error_type"] == "worker-lost"
    assert row(sql, fresh)["status"] == "running" and row(sql, rest_task)["status"] == "running"
    assert row(sql, old_done)["status"] == "completed"
    assert not {lost, paused_lost} & {r["task_id"] for r in health.sweep(tracker.engine, config).lost}
    sql.execute("UPDATE tracker_tasks SET status = 'completed' WHERE task_id = ANY(%s)", ([fresh, rest_task],))


def test_bad_windows_are_refused(tracker_env: dict[str, str], tracker: Any) -> None:
    bad_values: list[Any] = [0, -1, "30", True]
    for bad in bad_values:
        with pytest.raises(ValueError):
            health.lost_statement(bad)
        with pytest.raises(ValueError):
            health.stalled_statement(bad)
    assert health.sweep_interval(TrackerConfig.from_env().replace(worker_lost_after=30.0)) == 7.5


# -- control flags of ended tasks ----------------------------------------------------------------------
def test_sweep_deletes_flags_of_ended_tasks_only(tracker_env: dict[str, str], tracker: Any, sql: Any,
                                                 rdb: Any) -> None:
    config = TrackerConfig.from_env().replace(stall_after=3600.0)
    ended = fake_task(sql, "completed", heartbeat_age=60)
    running = fake_task(sql, heartbeat_age=0.0)
    never_started = fake_task(sql, "cancelled", heartbeat_age=None)
    sql.execute("UPDATE tracker_tasks SET started_at = NULL WHERE task_id = %s", (never_started,))
    unknown = f"unknown-{uuid.uuid4().hex[:8]}"
    old = time.time() - 60
    for task_id, value in ((ended, "pause"), (running, "pause"), (never_started, "cancel"), (unknown, "cancel")):
        rdb.set(f"tracker:control:{task_id}", value, ex=3600)
        rdb.zadd(index_key("tracker"), {task_id: old})
    result = health.sweep(tracker.engine, config, redis=rdb)
    assert result.flags_cleared >= 1
    assert not rdb.exists(f"tracker:control:{ended}") and rdb.zscore(index_key("tracker"), ended) is None
    # A running task still needs its flag; a task cancelled while queued keeps it so a worker
    # still discards its message; an unknown id may not be stored yet.
    for task_id in (running, never_started, unknown):
        assert rdb.exists(f"tracker:control:{task_id}")
        assert rdb.zscore(index_key("tracker"), task_id) is not None
    for task_id in (running, never_started, unknown):
        rdb.delete(f"tracker:control:{task_id}")
        rdb.zrem(index_key("tracker"), task_id)
    sql.execute("UPDATE tracker_tasks SET status = 'completed' WHERE task_id = %s", (running,))


# -- tracker sweep -------------------------------------------------------------------------------------
def test_cli_sweep(tracker_env: dict[str, str], tracker: Any, sql: Any, rdb: Any) -> None:
    from tracker.cli import main

    since = stream_tail(rdb)
    lost = fake_task(sql, heartbeat_age=20)
    out = CliRunner().invoke(main, ["sweep", "--lost-after", "10", "--stall-after", "3600", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert lost in data["lost"] and data["skipped"] is False
    assert row(sql, lost)["status"] == "failed"
    assert [t for t, _ in events_of(rdb, lost, since)] == ["task.failed"]  # published before the command exits
    text = CliRunner().invoke(main, ["sweep", "--lost-after", "10", "--stall-after", "3600"])
    assert text.exit_code == 0 and "lost: 0" in text.output
    bad = CliRunner().invoke(main, ["sweep", "--lost-after", "0"])
    assert bad.exit_code == 2


# -- the gateway sweeps on its own ----------------------------------------------------------------------
async def test_gateways_sweep_continuously_and_report_once(tracker_env: dict[str, str], sql: Any, rdb: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from aiohttp import web

    from webgate import create_app
    from webgate.ops import health as gate_health

    monkeypatch.setattr(gate_health, "_RETENTION_FIRST", 0.2)
    config = TrackerConfig.from_env().replace(worker_lost_after=2.0, stall_after=3600.0, retention_days=30.0)
    since = stream_tail(rdb)
    old_log = sql.execute("INSERT INTO tracker_logs (task_id, ts, levelno, level, message) VALUES "
                          "('gone', now() - interval '40 days', 20, 'INFO', 'old') RETURNING id").fetchone()[0]
    runners = []
    for _ in range(2):  # two gateways side by side
        runner = web.AppRunner(create_app(config))
        await runner.setup()  # starts the background loops
        runners.append(runner)
    try:
        lost = fake_task(sql, heartbeat_age=1.0)  # goes stale while the gateways run

        async def failed() -> bool:
            return bool(row(sql, lost)["status"] == "failed")

        deadline = time.monotonic() + 15
        while not await failed():
            assert time.monotonic() < deadline, "the gateways never marked the lost task"
            await asyncio.sleep(0.2)
        assert row(sql, lost)["error_type"] == "worker-lost"
        while sql.execute("SELECT 1 FROM tracker_logs WHERE id = %s", (old_log,)).fetchone():
            assert time.monotonic() < deadline, "the retention pass never ran"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)  # a few more passes of both gateways
        assert all(r.app[gate_health.LAST_SWEEP].get("result") for r in runners)
    finally:
        for runner in runners:
            await runner.cleanup()
    failed_events = [t for t, _ in events_of(rdb, lost, since) if t == "task.failed"]
    assert failed_events == ["task.failed"]  # once, not once per gateway or per pass


def test_sweep_without_redis_still_marks_lost_tasks(tracker_env: dict[str, str], tracker: Any, sql: Any) -> None:
    import redis as redis_lib

    from tracker.demo.services import free_port

    config = TrackerConfig.from_env().replace(worker_lost_after=5.0, stall_after=3600.0)
    lost = fake_task(sql, heartbeat_age=60)
    nowhere = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        result = health.sweep(tracker.engine, config, redis=nowhere)
    finally:
        nowhere.close()
    assert lost in [r["task_id"] for r in result.lost]
    assert row(sql, lost)["status"] == "failed"
