"""A worker killed with SIGKILL: its task ends ``failed`` with ``error_type`` ``worker-lost``.

Two ways a worker dies: the pool process running the task (Celery's main process sees it go
and reports WorkerLostError), and the whole worker at once (nobody is left to report: the
heartbeat goes stale and ``tracker sweep`` marks the task lost).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, wait_for

FAST = {"TRACKER_HEARTBEAT_INTERVAL": "0.5", "TRACKER_WORKER_LOST_AFTER": "3"}


def _running_pid(sql: Any, task_id: str) -> int | None:
    row = sql.execute("SELECT worker_pid FROM tracker_tasks WHERE task_id = %s AND status = 'running'",
                      (task_id,)).fetchone()
    return int(row[0]) if row and row[0] else None


def test_sigkill_of_pool_process_marks_task_worker_lost(tracked_app: Any, make_worker: Any, tracker: Any,
                                                        sql: Any) -> None:
    from tests.apps.tasks import add, slow

    worker = make_worker(concurrency=2)
    res = slow.apply_async((60.0,), queue=worker.queue)
    pid = wait_for(lambda: _running_pid(sql, res.id), 30, what="task running with its pid")
    assert pid in worker.children()
    os.kill(pid, signal.SIGKILL)

    rec = wait_for(lambda: (r := tracker.get(res.id)) is not None and r.status == "failed" and r, 30,
                   what="task failed after its pool process was killed")
    assert rec.error_type == "worker-lost"
    assert rec.finished_at is not None
    # The worker replaced its pool process and goes on.
    after = add.apply_async((2, 2), queue=worker.queue)
    done = wait_for(lambda: (r := tracker.get(after.id)) is not None and r.status == "completed" and r, 30)
    assert done.result == 4


def test_sigkill_of_whole_worker_then_tracker_sweep(tracked_app: Any, make_worker: Any, tracker: Any,
                                                    sql: Any, tracker_env: dict[str, str]) -> None:
    from tests.apps.tasks import slow

    worker = make_worker(concurrency=1, extra_env=FAST)
    res = slow.apply_async((60.0,), queue=worker.queue)
    wait_for(lambda: _running_pid(sql, res.id), 30, what="task running")
    worker.kill()  # SIGKILL to the whole process group: main process and pool
    assert tracker.get(res.id).status == "running"  # nobody is left to say otherwise

    def sweep() -> str:
        out = subprocess.run([str(Path(sys.executable).parent / "tracker"), "sweep", "--lost-after", "3"],
                             env={**os.environ, **tracker_env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    # Within the lost window the task is spared; after it, one sweep marks it.
    outputs: list[str] = []

    def lost() -> bool:
        outputs.append(sweep())
        return res.id in outputs[-1]

    wait_for(lost, 30, 0.5, "sweep marks the task lost")
    rec = tracker.get(res.id)
    assert rec.status == "failed" and rec.error_type == "worker-lost"
    assert f"failed (worker-lost)  {res.id}" in outputs[-1]
    # A second pass finds nothing more to do for it.
    assert res.id not in sweep()
