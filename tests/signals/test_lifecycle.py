"""Each lifecycle path ends in the right stored state, on a real prefork worker."""

from __future__ import annotations

import uuid

from tests.conftest import wait_for


def _final(tracker, task_id, statuses=("completed", "failed", "cancelled"), timeout=30):
    return wait_for(lambda: (r := tracker.get(task_id)) is not None and r.status in statuses and r,
                    timeout=timeout, what=f"{task_id} in {statuses}")


def test_success_records_the_whole_lifecycle(tracked_app, worker, tracker, sql):
    from tests.apps.tasks import add

    res = add.apply_async((2, 3), queue=worker.queue)
    _final(tracker, res.id)
    # The producer's pending row and the worker's states arrive from two processes in any order.
    rec = wait_for(lambda: (r := tracker.get(res.id)).published_at and r)
    assert rec.status == "completed"
    assert rec.result == 5
    assert rec.name == "tests.add" and rec.task_type == "tests.add"
    assert rec.progress == 100.0
    assert rec.queue == worker.queue
    assert rec.worker == worker.name
    assert rec.published_at and rec.received_at and rec.started_at and rec.finished_at
    assert rec.published_at <= rec.started_at <= rec.finished_at
    metrics = {m.name for m in wait_for(lambda: len(tracker.metrics(task_id=res.id)) >= 5
                                        and tracker.metrics(task_id=res.id))}
    assert {"task.queue_wait", "task.run_time", "task.cpu_time", "task.memory_growth", "task.retries"} <= metrics
    # They are columns of the task row (one write with its states), not rows of tracker_metrics,
    # and the queries answer for them by name as for any metric.
    row = sql.execute("SELECT queue_wait, run_time, cpu_time, memory_growth FROM tracker_tasks WHERE task_id = %s",
                      (res.id,)).fetchone()
    assert row is not None and None not in row and row[0] >= 0 and row[1] > 0
    assert sql.execute("SELECT count(*) FROM tracker_metrics WHERE task_id = %s", (res.id,)).fetchone() == (0,)
    (run_time,) = tracker.metrics(name="task.run_time", task_id=res.id)
    assert (run_time.value, run_time.unit, run_time.ts) == (row[1], "seconds", rec.finished_at)
    (wait,) = tracker.metrics(name="task.queue_wait", task_id=res.id)
    assert (wait.value, wait.ts) == (row[0], rec.started_at)
    assert sum(v for _, v in tracker.metric_series("task.run_time", agg="count", task_type="tests.add")) >= 1


def test_failure_records_error_and_traceback(tracked_app, worker, tracker):
    from tests.apps.tasks import fail

    res = fail.apply_async(("bad input",), queue=worker.queue)
    rec = _final(tracker, res.id)
    assert rec.status == "failed"
    assert rec.error_type == "ValueError"
    assert rec.error_message == "bad input"
    assert "Traceback" in rec.traceback and "raise ValueError(message)" in rec.traceback


def test_retry_then_success(tracked_app, worker, tracker):
    from tests.apps.tasks import retry_once

    res = retry_once.apply_async(queue=worker.queue)
    rec = _final(tracker, res.id)
    assert rec.status == "completed"
    assert rec.retries == 1
    assert rec.result == "ok"
    # The error of the retried attempt does not stick to the completed task.
    assert (rec.error_type, rec.error_message, rec.traceback) == (None, None, None)
    # Each run keeps its figures: the retried one as rows, the last one in the task row.
    samples = wait_for(lambda: len(ms := tracker.metrics(task_id=res.id)) >= 10 and ms)
    by_name: dict[str, list[float]] = {}
    for m in samples:
        by_name.setdefault(m.name, []).append(m.value)
    assert sorted(by_name["task.retries"]) == [0.0, 1.0]
    assert len(by_name["task.run_time"]) == len(by_name["task.queue_wait"]) == len(by_name["task.cpu_time"]) == 2


def test_published_but_never_consumed_is_pending(tracked_app, tracker):
    from tests.apps.tasks import add

    res = add.apply_async((1, 1), queue=f"nobody-{uuid.uuid4().hex}")
    rec = wait_for(lambda: tracker.get(res.id))
    assert rec.status == "pending"
    assert rec.published_at is not None and rec.started_at is None


def test_time_limit_is_a_failure(tracked_app, worker, tracker):
    from tests.apps.tasks import hard_limit

    res = hard_limit.apply_async(queue=worker.queue)
    rec = _final(tracker, res.id, timeout=40)
    assert rec.status == "failed"
    assert rec.error_type == "TimeLimitExceeded"


def test_reject_is_a_failure(tracked_app, worker, tracker):
    from tests.apps.tasks import reject

    res = reject.apply_async(queue=worker.queue)
    rec = _final(tracker, res.id)
    assert rec.status == "failed"
    assert rec.error_type in ("Reject", "rejected")


def test_unknown_task_is_a_failure(tracked_app, worker, tracker):
    res = tracked_app.send_task("tests.does_not_exist", queue=worker.queue)
    rec = _final(tracker, res.id)
    assert rec.status == "failed"
    assert rec.error_type == "unknown-task"
    assert rec.name == "tests.does_not_exist"


def test_revoked_before_start_is_cancelled(tracked_app, worker, tracker):
    from tests.apps.tasks import add

    task_id = str(uuid.uuid4())
    tracked_app.control.revoke(task_id)
    add.apply_async((1, 2), queue=worker.queue, task_id=task_id, countdown=0.5)
    rec = _final(tracker, task_id)
    assert rec.status == "cancelled"


def test_terminated_running_task_is_cancelled(tracked_app, worker, tracker):
    from tests.apps.tasks import sleep

    res = sleep.apply_async((20,), queue=worker.queue)
    wait_for(lambda: (r := tracker.get(res.id)) is not None and r.status == "running")
    tracked_app.control.revoke(res.id, terminate=True)
    rec = _final(tracker, res.id)
    assert rec.status == "cancelled"
    assert rec.error_type == "terminated"
