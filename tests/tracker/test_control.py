"""Pause, resume and cancel end to end, on a real prefork worker through Redis and PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import wait_for
from tracker.control import ACTIONS, index_key, plan

STREAM = "tracker:events"


def stream_tail(rdb: Any) -> str:
    last = rdb.xrevrange(STREAM, count=1)
    return last[0][0].decode() if last else "0-0"


def events_of(rdb: Any, task_id: str, since: str) -> list[tuple[str, dict[str, Any], float]]:
    out = []
    for _id, fields in rdb.xrange(STREAM, min=f"({since}" if since != "0-0" else "-"):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if f.get("task_id") == task_id:
            out.append((f["type"], json.loads(f["data"]), float(f["ts"])))
    return out


def types_of(rdb: Any, task_id: str, since: str) -> list[str]:
    return [t for t, _, _ in events_of(rdb, task_id, since)]


def final(tracker: Any, task_id: str, timeout: float = 30) -> Any:
    return wait_for(lambda: (r := tracker.get(task_id)) is not None
                    and r.status in ("completed", "failed", "cancelled") and r, timeout=timeout,
                    what=f"{task_id} finished")


def status_is(tracker: Any, task_id: str, status: str, min_progress: float = -1.0, timeout: float = 20) -> Any:
    return wait_for(lambda: (r := tracker.get(task_id)) is not None and r.status == status
                    and r.progress > min_progress and r, timeout=timeout, what=f"{task_id} {status}")


def flag_gone(rdb: Any, task_id: str) -> bool:
    return not rdb.exists(f"tracker:control:{task_id}") and rdb.zscore(index_key("tracker"), task_id) is None


# -- the decision itself ----------------------------------------------------------------------------
def test_plan_rules() -> None:
    for action in ACTIONS:
        for st in ("completed", "failed", "cancelled"):
            p = plan(st, action)
            assert not p.allowed and st in p.reason
    assert plan("running", "pause").value == "pause"
    assert plan("paused", "resume").value is None
    running_cancel = plan("running", "cancel")
    assert running_cancel.value == "cancel" and not running_cancel.mark_cancelled
    assert plan("pending", "cancel").mark_cancelled
    with pytest.raises(ValueError, match="unknown action"):
        plan("running", "stop")
    with pytest.raises(ValueError):
        plan("sleeping", "pause")


def test_bad_requests_are_refused(tracked_app: Any, tracker: Any) -> None:
    with pytest.raises(KeyError):
        tracker.pause("no-such-task")
    tid = tracker.create_task(task_type="report", status="completed")
    tracker.flush()
    assert tracker.pause(tid) is False and tracker.cancel(tid) is False
    with pytest.raises(ValueError, match="Celery app"):
        tracker.cancel(tid, terminate=True)
    assert tracker.get(tid).status == "completed"


# -- pause and resume ---------------------------------------------------------------------------------
def test_pause_then_resume_continues_where_it_stopped(tracked_app: Any, worker: Any, tracker: Any, rdb: Any) -> None:
    from tests.apps.tasks import steps

    since = stream_tail(rdb)
    n = 40
    res = steps.apply_async((n, 0.05), queue=worker.queue)
    status_is(tracker, res.id, "running", min_progress=10)
    assert tracker.pause(res.id) is True
    paused = status_is(tracker, res.id, "paused")
    time.sleep(1.5)
    still = tracker.get(res.id)
    assert still.status == "paused"
    assert still.progress == paused.progress < 100  # no progress while paused
    assert tracker.resume(res.id) is True
    rec = final(tracker, res.id)
    assert rec.status == "completed"
    assert rec.result == list(range(n))  # every step ran exactly once: it went on where it stopped

    evs = events_of(rdb, res.id, since)
    kinds = [t for t, _, _ in evs]
    assert kinds.index("task.paused") < kinds.index("task.resumed") < kinds.index("task.completed")
    paused_ts = next(ts for t, _, ts in evs if t == "task.paused")
    resumed_ts = next(ts for t, _, ts in evs if t == "task.resumed")
    assert resumed_ts - paused_ts >= 1.4
    resumed = next(d for t, d, _ in evs if t == "task.resumed")
    assert resumed["status"] == "running" and resumed["progress"] == pytest.approx(paused.progress)

    history = tracker.progress_history(res.id)
    stamps = [p.ts.timestamp() for p in history]
    assert not [ts for ts in stamps if paused_ts + 0.05 < ts < resumed_ts - 0.05], "progress while paused"
    values = [p.progress for p in history]
    assert values == sorted(values)  # never went back
    after = [p.progress for p in history if p.ts.timestamp() >= resumed_ts]
    assert after and after[0] == pytest.approx(paused.progress + 100 / n)  # the very next step
    wait_for(lambda: flag_gone(rdb, res.id), timeout=10, what="control flag deleted")


# -- cancel -------------------------------------------------------------------------------------------
def test_cancel_running_task_runs_cleanup(tracked_app: Any, worker: Any, tracker: Any, rdb: Any,
                                          tmp_path: Path) -> None:
    from tests.apps.tasks import steps

    since = stream_tail(rdb)
    marker = tmp_path / "marker"
    res = steps.apply_async((400, 0.05), {"marker": str(marker)}, queue=worker.queue)
    status_is(tracker, res.id, "running", min_progress=1)
    assert tracker.cancel(res.id) is True
    rec = final(tracker, res.id)
    assert rec.status == "cancelled"
    assert rec.error_type == "cancelled"
    assert rec.progress < 100
    assert rec.finished_at is not None
    lines = marker.read_text().split()
    assert "finally" in lines and "on_cancel" in lines  # the finally block and the on_cancel hook ran
    kinds = types_of(rdb, res.id, since)
    assert "task.cancelled" in kinds and "task.failed" not in kinds
    wait_for(lambda: flag_gone(rdb, res.id), timeout=10, what="control flag deleted")


def test_cancel_paused_task(tracked_app: Any, worker: Any, tracker: Any, rdb: Any, tmp_path: Path) -> None:
    from tests.apps.tasks import steps

    marker = tmp_path / "marker"
    res = steps.apply_async((400, 0.05), {"marker": str(marker)}, queue=worker.queue)
    status_is(tracker, res.id, "running", min_progress=1)
    tracker.pause(res.id)
    status_is(tracker, res.id, "paused")
    assert tracker.cancel(res.id) is True
    rec = final(tracker, res.id)
    assert rec.status == "cancelled"
    assert sorted(marker.read_text().split()) == ["finally", "on_cancel"]
    wait_for(lambda: flag_gone(rdb, res.id), timeout=10, what="control flag deleted")


def test_cancel_queued_task_never_runs(tracked_app: Any, worker: Any, tracker: Any, rdb: Any,
                                       tmp_path: Path) -> None:
    """The Tracker here has no Celery app to revoke with: the worker discards it by the flag."""
    from tests.apps.tasks import sleep, steps

    busy = [sleep.apply_async((3,), queue=worker.queue) for _ in range(2)]  # both pool slots
    for b in busy:
        status_is(tracker, b.id, "running")
    marker = tmp_path / "marker"
    res = steps.apply_async((5, 0.01), {"marker": str(marker)}, queue=worker.queue)
    wait_for(lambda: tracker.get(res.id), what="pending row")
    assert tracker.get(res.id).status == "pending"
    assert tracker.cancel(res.id) is True
    assert tracker.get(res.id).status == "cancelled"  # recorded at once
    for b in busy:
        assert final(tracker, b.id).status == "completed"
    # The worker had it (prefetched) or got it after: either way it was discarded, not run.
    wait_for(lambda: "Discarding revoked task" in worker.log() and res.id in worker.log(), timeout=15,
             what="worker discarded the cancelled task")
    rec = tracker.get(res.id)
    assert rec.status == "cancelled" and rec.started_at is None
    assert not marker.exists()
    wait_for(lambda: flag_gone(rdb, res.id), timeout=10, what="control flag deleted once the message is gone")


# -- the command line -----------------------------------------------------------------------------------
def test_cli_pause_resume_cancel(tracked_app: Any, worker: Any, tracker: Any, tmp_path: Path) -> None:
    from tests.apps.tasks import steps
    from tracker.cli import main

    runner = CliRunner()
    marker = tmp_path / "marker"
    res = steps.apply_async((400, 0.05), {"marker": str(marker)}, queue=worker.queue)
    status_is(tracker, res.id, "running", min_progress=1)
    out = runner.invoke(main, ["pause", res.id])
    assert out.exit_code == 0, out.output
    assert "pause requested" in out.output
    status_is(tracker, res.id, "paused")
    out = runner.invoke(main, ["resume", res.id])
    assert out.exit_code == 0, out.output
    status_is(tracker, res.id, "running")
    out = runner.invoke(main, ["cancel", res.id])
    assert out.exit_code == 0, out.output
    assert final(tracker, res.id).status == "cancelled"
    assert "on_cancel" in marker.read_text()

    again = runner.invoke(main, ["resume", res.id])
    assert again.exit_code == 1 and "already cancelled" in again.output
    unknown = runner.invoke(main, ["pause", "no-such-task"])
    assert unknown.exit_code == 1 and "no task" in unknown.output
    no_app = runner.invoke(main, ["cancel", "--terminate", res.id])
    assert no_app.exit_code == 2 and "needs the Celery app" in no_app.output


def test_cli_cancel_terminate_kills_a_task_that_never_checks(tracked_app: Any, worker: Any, tracker: Any) -> None:
    from tests.apps.tasks import sleep
    from tracker.cli import main

    res = sleep.apply_async((30,), queue=worker.queue)
    status_is(tracker, res.id, "running")
    out = CliRunner().invoke(main, ["--app", "tests.apps.tasks", "cancel", "--terminate", res.id])
    assert out.exit_code == 0, out.output
    rec = final(tracker, res.id, timeout=20)
    assert rec.status == "cancelled"
    assert rec.error_type == "terminated"


async def test_async_apply_writes_the_same_flags(tracker_env: dict[str, str], tracker: Any, rdb: Any) -> None:
    """The gateway's path (REST, WebSocket op): asyncio Redis, same keys as the Python API."""
    import redis.asyncio as aioredis

    from tracker.control import apply_async

    tid = tracker.create_task(task_type="report", status="running")
    tracker.flush()
    record = tracker.get(tid)
    client = aioredis.Redis.from_url(tracker_env["TRACKER_REDIS_URL"])
    try:
        assert (await apply_async(client, "tracker", record, "pause")).allowed
        assert rdb.get(f"tracker:control:{tid}") == b"pause" and rdb.zscore(index_key("tracker"), tid)
        assert 0 < rdb.ttl(f"tracker:control:{tid}") <= 7 * 86400  # a flag never outlives its use for long
        assert (await apply_async(client, "tracker", record, "resume")).allowed
        assert flag_gone(rdb, tid)
        assert (await apply_async(client, "tracker", record, "cancel")).allowed
        assert rdb.get(f"tracker:control:{tid}") == b"cancel"
    finally:
        await client.aclose()
        rdb.delete(f"tracker:control:{tid}")
        rdb.zrem(index_key("tracker"), tid)
    tracker.complete(tid)
    tracker.flush()
