"""Celery's in-thread test worker (no fork, no worker_process_init) is tracked too."""

from __future__ import annotations

from celery.contrib.testing.worker import start_worker

from tests.conftest import wait_for


def test_in_thread_worker_records_progress_and_logs(tracked_app, tracker):
    from tests.apps.tasks import build

    queue = "inthread"
    tracked_app.conf.task_default_queue = queue
    try:
        with start_worker(tracked_app, pool="solo", concurrency=1, perform_ping_check=False, queues=[queue],
                          shutdown_timeout=10):
            res = build.apply_async((4, 0.0), queue=queue)
            rec = wait_for(lambda: (r := tracker.get(res.id)) is not None and r.status == "completed" and r,
                           timeout=30)
    finally:
        tracked_app.conf.task_default_queue = "tests"
    assert rec.progress == 100.0 and rec.result == 4
    assert [p.progress for p in tracker.progress_history(res.id)][:5] == [0.0, 25.0, 50.0, 75.0, 100.0]
    logs = wait_for(lambda: len(found := tracker.logs(task_id=res.id)) == 4 and found)
    assert {entry.message for entry in logs} == {"wrote 10 rows", "stdlib line 1", "task logger line",
                                                 "handled error"}
