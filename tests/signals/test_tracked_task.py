"""TrackedTask: progress, steps, ETA, logs (own and stdlib), metrics and context propagation."""

from __future__ import annotations

import uuid

import pytest

from signals import tracking_context
from tests.conftest import wait_for


def _done(tracker, task_id, timeout=30):
    return wait_for(lambda: (r := tracker.get(task_id)) is not None and r.status in ("completed", "failed") and r,
                    timeout=timeout, what=f"{task_id} finished")


def test_progress_logs_and_metrics_are_stored(tracked_app, worker, tracker):
    from tests.apps.tasks import build

    res = build.apply_async((20,), {"delay": 0.01}, queue=worker.queue)
    rec = _done(tracker, res.id)
    assert rec.status == "completed", rec.error_message
    assert rec.progress == 100.0
    assert rec.current_step == "verifying" or rec.current_step is not None

    history = tracker.progress_history(res.id)
    values = [p.progress for p in history]
    # track() reports 0 then each of 20 items; then 50% and 10/40 = 25%.
    assert values[:21] == [i * 5.0 for i in range(21)]
    assert values[21:] == [50.0, 25.0]
    assert [p.current_step for p in history[:21]] == ["processing"] * 21
    assert history[21].current_step == "verifying"
    assert all(a.ts <= b.ts for a, b in zip(history, history[1:], strict=False))

    logs = wait_for(lambda: len(lp := tracker.logs(task_id=res.id)) >= 4 and lp)
    by_message = {entry.message: entry for entry in logs}
    own = by_message["wrote 10 rows"]
    assert own.level == "INFO" and own.source == "tests.build" and own.context == {"table": "x"}
    stdlib = by_message["stdlib line 1"]
    assert stdlib.level == "INFO" and stdlib.source == "tests.apps.stdlib"
    assert by_message["task logger line"].level == "WARNING"
    handled = by_message["handled error"]
    assert handled.level == "ERROR" and "KeyError: 'boom'" in handled.traceback
    # Each record is stored once, even though it passes through two loggers.
    assert sum(1 for entry in logs if entry.message == "wrote 10 rows") == 1

    assert [entry.message for entry in tracker.logs(task_id=res.id, min_level="WARNING")] == \
        ["task logger line", "handled error"]
    assert [entry.message for entry in tracker.logs(task_id=res.id, search="stdlib")] == ["stdlib line 1"]

    metrics = tracker.metrics(name="rows_written", task_id=res.id)
    assert len(metrics) == 1
    assert metrics[0].value == 1200 and metrics[0].unit == "count" and metrics[0].labels == {"table": "x"}


def test_eta_is_estimated_while_running(tracked_app, worker, tracker):
    from tests.apps.tasks import slow

    res = slow.apply_async((2.0,), queue=worker.queue)
    running = wait_for(lambda: (r := tracker.get(res.id)) is not None and r.status == "running"
                       and r.progress > 20 and r)
    assert running.eta_seconds is not None and 0 < running.eta_seconds < 10
    assert running.current_step == "sleeping"
    done = _done(tracker, res.id)
    assert done.eta_seconds == 0


def test_context_propagates_to_the_worker(tracked_app, worker, tracker):
    from tests.apps.tasks import echo_context, spawn

    with tracking_context(user_id="u-42", tags=["import"], metadata={"file": "a.csv"}):
        with tracking_context(tags=["nightly"], metadata={"rows": 3}):
            res = echo_context.apply_async(queue=worker.queue)
    rec = _done(tracker, res.id)
    assert rec.user_id == "u-42"
    assert rec.tags == ["import", "nightly"]
    assert rec.metadata == {"file": "a.csv", "rows": 3}
    assert rec.progress == 100.0

    # A task published from inside a task inherits the user.
    with tracking_context(user_id="u-7"):
        parent = spawn.apply_async(queue=worker.queue)
    done = _done(tracker, parent.id)
    child = _done(tracker, done.result)
    assert child.user_id == "u-7"
    assert child.parent_id == parent.id and child.root_id == parent.id
    assert tracker.tasks(user_id="u-7", limit=10) and {r.task_id for r in tracker.tasks(user_id="u-7")} >= {
        parent.id, child.task_id}


def test_queries_filter_and_paginate(tracked_app, worker, tracker):
    from tests.apps.tasks import add

    with tracking_context(user_id="pager", tags=["page"]):
        ids = [add.apply_async((i, i), queue=worker.queue).id for i in range(7)]
    for task_id in ids:
        _done(tracker, task_id)
    assert tracker.count(user_id="pager") == 7
    assert tracker.count(user_id="pager", status="completed", tag="page") == 7
    assert tracker.count(user_id="pager", status="failed") == 0
    seen = []
    cursor = None
    while True:
        page = tracker.tasks(user_id="pager", limit=3, cursor=cursor)
        seen.extend(r.task_id for r in page)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 7
    stats = tracker.stats(group_by="task_type")
    add_stats = next(g for g in stats["groups"] if g["group"] == "tests.add")
    assert add_stats["completed"] >= 7 and add_stats["success_rate"] == 1.0
    assert add_stats["p50_duration"] is not None and add_stats["p95_duration"] >= add_stats["p50_duration"]


def test_eta_before_any_progress_comes_from_the_median_run_time(tracked_app, make_worker, tracker):
    from tests.apps.tasks import sleep

    worker = make_worker(concurrency=1)
    # A task type of its own: other tests' runs of tests.sleep must not shift the median.
    with tracking_context(task_type=f"eta-probe-{uuid.uuid4().hex[:8]}"):
        for _ in range(3):
            _done(tracker, sleep.apply_async((0.3,), queue=worker.queue).id)
        res = sleep.apply_async((1.5,), queue=worker.queue)
    running = wait_for(lambda: (r := tracker.get(res.id)) is not None and r.status == "running" and r)
    # tests.sleep never reports progress: the estimate is the median of its recent runs.
    assert running.eta_seconds is not None and 0.25 <= running.eta_seconds <= 0.6
    assert _done(tracker, res.id).status == "completed"


def test_a_task_notifies_its_user(tracked_app, worker, tracker):
    from tests.apps.tasks import announce

    me = f"notified-{uuid.uuid4().hex[:8]}"
    with tracking_context(user_id=me):
        res = announce.apply_async(("import finished",), queue=worker.queue)
    rec = _done(tracker, res.id)
    assert rec.status == "completed", rec.error_message
    (note,) = tracker.notifications(user_id=me)
    assert note.id == rec.result
    assert (note.title, note.message, note.type, note.priority, note.task_id, note.metadata) == (
        "import finished", "rows are ready", "success", "high", res.id, {"rows": 3})
    assert note.is_read is False
    # Outside a worker the same call only validates its input.
    with pytest.raises(ValueError):
        announce.notify("")
    assert announce.notify("fine") is None
