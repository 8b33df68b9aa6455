"""``tracker_durable=True``: a task's terminal state and logs are committed before its message
is acknowledged; without it they follow within the flush interval or at a graceful shutdown."""

from __future__ import annotations

import re

import psycopg
import redis as redis_lib

from tests.conftest import wait_for


def _unacked(broker: redis_lib.Redis, task_id: str) -> bool:
    """Whether the Redis transport still holds ``task_id``'s message as delivered-not-acked."""
    return any(task_id.encode() in raw for raw in broker.hvals("unacked"))


def _succeeded(worker, task_id: str) -> bool:
    return task_id in re.findall(r"Task tests\.build_late\[([0-9a-f-]+)\] succeeded", worker.log())


def test_durable_commits_before_the_message_is_acknowledged(make_worker, database_url, broker_url):
    from tests.apps.tasks import build_late

    # A long flush interval: only the durable path can have written anything by the ack.
    worker = make_worker(extra_env={"TRACKER_DURABLE": "true", "TRACKER_FLUSH_INTERVAL": "30"})
    broker = redis_lib.Redis.from_url(broker_url)
    ids = [build_late.apply_async((3,), queue=worker.queue).id for _ in range(5)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for task_id in ids:
            wait_for(lambda task_id=task_id: _succeeded(worker, task_id) and not _unacked(broker, task_id),
                     timeout=30, what="acknowledged")
            row = conn.execute("SELECT status FROM tracker_tasks WHERE task_id = %s", (task_id,)).fetchone()
            assert row == ("completed",)
            n_logs = conn.execute("SELECT count(*) FROM tracker_logs WHERE task_id = %s", (task_id,)).fetchone()
            assert n_logs == (1,)
    broker.close()


def test_without_durable_a_graceful_shutdown_still_flushes(make_worker, database_url, broker_url):
    from tests.apps.tasks import build_late

    worker = make_worker(extra_env={"TRACKER_FLUSH_INTERVAL": "30"}, concurrency=1)
    broker = redis_lib.Redis.from_url(broker_url)
    # The pool process's writer starts with a commit; the task after it waits for the next one.
    warm = build_late.apply_async((1,), queue=worker.queue).id
    wait_for(lambda: _succeeded(worker, warm) and not _unacked(broker, warm), timeout=30)
    task_id = build_late.apply_async((3,), queue=worker.queue).id
    wait_for(lambda: _succeeded(worker, task_id) and not _unacked(broker, task_id), timeout=30)
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Acknowledged, but not committed yet: the next group commit is up to 30 s away ...
        assert conn.execute("SELECT status FROM tracker_tasks WHERE task_id = %s", (task_id,)).fetchone() in (
            None, ("running",))
        # ... and a graceful shutdown writes everything.
        worker.stop()
        assert conn.execute("SELECT status FROM tracker_tasks WHERE task_id = %s", (task_id,)).fetchone() == (
            "completed",)
        assert conn.execute("SELECT count(*) FROM tracker_logs WHERE task_id = %s", (task_id,)).fetchone() == (1,)
    broker.close()
