"""``tracker_durable=True``: a task's terminal state and logs are committed before the worker
reports the task done; without it they follow within the flush interval."""

from __future__ import annotations

import re

import psycopg

from tests.conftest import wait_for


def _succeeded_ids(worker) -> set[str]:
    return set(re.findall(r"Task tests\.build\[([0-9a-f-]+)\] succeeded", worker.log()))


def test_durable_commits_before_the_task_is_reported_done(make_worker, database_url):
    from tests.apps.tasks import build

    # A long flush interval: only the durable path can have written anything when the
    # worker's main process logs the task as succeeded.
    worker = make_worker(extra_env={"TRACKER_DURABLE": "true", "TRACKER_FLUSH_INTERVAL": "30"})
    ids = [build.apply_async((3, 0.0), queue=worker.queue).id for _ in range(5)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for task_id in ids:
            wait_for(lambda task_id=task_id: task_id in _succeeded_ids(worker), timeout=30)
            status = conn.execute("SELECT status FROM tracker_tasks WHERE task_id = %s", (task_id,)).fetchone()
            assert status == ("completed",)
            n_logs = conn.execute("SELECT count(*) FROM tracker_logs WHERE task_id = %s", (task_id,)).fetchone()
            assert n_logs == (4,)


def test_without_durable_the_flush_interval_bounds_the_delay(make_worker, database_url):
    from tests.apps.tasks import build

    worker = make_worker(extra_env={"TRACKER_FLUSH_INTERVAL": "30"}, concurrency=1)
    # The pool process's writer starts with a commit; the task after it waits for the next one.
    warm = build.apply_async((1, 0.0), queue=worker.queue).id
    wait_for(lambda: warm in _succeeded_ids(worker), timeout=30)
    task_id = build.apply_async((3, 0.0), queue=worker.queue).id
    wait_for(lambda: task_id in _succeeded_ids(worker), timeout=30)
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Not yet: the next group commit is up to 30 s away ...
        assert conn.execute("SELECT status FROM tracker_tasks WHERE task_id = %s", (task_id,)).fetchone() in (
            None, ("running",))
        # ... but a graceful shutdown flushes everything.
        worker.stop()
        assert conn.execute("SELECT status FROM tracker_tasks WHERE task_id = %s", (task_id,)).fetchone() == (
            "completed",)
        assert conn.execute("SELECT count(*) FROM tracker_logs WHERE task_id = %s", (task_id,)).fetchone() == (4,)
