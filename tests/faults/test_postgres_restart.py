"""PostgreSQL restarted while tasks run: the records equal what ran, nothing lost, nothing twice.

The worker's Recorder keeps buffering while the server is away and writes the backlog when it
is back; a batch cut off by the restart is retried, and a retried batch must not double rows.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import psycopg

from tests.conftest import wait_for
from tests.faults.conftest import final_count, producer
from tracker import Tracker

N = 300
LOGS_PER_TASK = 4  # tests.build: self.log.info, a stdlib logger, the Celery task logger, self.log.exception


def _ran(worker: Any) -> set[str]:
    return set(re.findall(r"Task tests\.build\[([0-9a-f-]+)\] succeeded", worker.log()))


def test_postgres_restart_while_tasks_run(own_pg: Any, make_worker: Any, tracker_env: dict[str, str]) -> None:
    worker = make_worker(concurrency=2, extra_env={"TRACKER_DATABASE_URL": own_pg.url})
    ids = [str(uuid.uuid4()) for _ in range(N)]
    with producer(tracker_env["TRACKER_TEST_BROKER_URL"], own_pg.url, tracker_env["TRACKER_REDIS_URL"]) as app:
        for task_id in ids:
            app.send_task("tests.build", args=(2, 0.01), queue=worker.queue, task_id=task_id)
    sql = psycopg.connect(own_pg.url, autocommit=True)
    try:
        wait_for(lambda: final_count(sql, ids) >= 40, 60, 0.02, "40 tasks stored")
        sql.close()
        own_pg.stop("fast")
        stopped_at = len(_ran(worker))
        time.sleep(1.5)
        own_pg.start()
        sql = psycopg.connect(own_pg.url, autocommit=True)

        wait_for(lambda: _ran(worker) >= set(ids), 120, 0.2, "all tasks ran")
        assert stopped_at < N, "the restart should happen while tasks are still running"
        wait_for(lambda: final_count(sql, ids) == N, 60, 0.2, "all task records final")
        # Logs and progress of the last tasks follow within a flush interval or two.
        def logs() -> int:
            row: Any = sql.execute("SELECT count(*) FROM tracker_logs WHERE task_id = ANY(%s)", (ids,)).fetchone()
            return int(row[0])
        wait_for(lambda: logs() >= N * LOGS_PER_TASK, 30, 0.2, "all log rows")
        time.sleep(1.0)  # anything extra (a duplicated batch) would have arrived by now

        statuses: dict[str, int] = dict(sql.execute(
            "SELECT status, count(*) FROM tracker_tasks WHERE task_id = ANY(%s) GROUP BY status", (ids,)).fetchall())
        assert statuses == {"completed": N}
        per_task: dict[str, int] = dict(sql.execute(
            "SELECT task_id, count(*) FROM tracker_logs WHERE task_id = ANY(%s) GROUP BY task_id", (ids,)).fetchall())
        assert len(per_task) == N and set(per_task.values()) == {LOGS_PER_TASK}, (
            f"log rows per task: {sorted(set(per_task.values()))}")
        with Tracker(database_url=own_pg.url) as store:
            histories = {[p.progress for p in store.progress_history(t)] == [0.0, 50.0, 100.0, 50.0, 25.0]
                         for t in ids}
        assert histories == {True}, "every task's progress history is exactly what it reported"
        metrics: Any = sql.execute("SELECT count(*) FROM tracker_metrics WHERE task_id = ANY(%s) AND name = "
                                   "'rows_written'", (ids,)).fetchone()
        assert metrics[0] == N
        print(f"PostgreSQL stopped with {stopped_at}/{N} tasks run")
        assert "cannot write to PostgreSQL" in worker.log()
    finally:
        sql.close()
