"""``self.progress()`` in a tight loop vs celery-progress's ``set_progress``, in one run.

Both run as real bound tasks through Celery's tracer (``task.apply()``: the task's request,
the signal hooks and, for the tracked one, its Recorder and EventBus threads are the same as
in a pool process). Calls are timed in batches of 100 (a timer call costs about as much as
the thing measured) and the median per-call cost is reported. Then, without asking for a
flush, the store is polled until every value is there: how long after the last call the
history was complete, and whether it is exactly the values sent.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg
from celery import Celery

import signals
from bench.common import Result, Servers
from bench.sizes import size
from signals import TrackedTask
from tracker.api import Tracker
from tracker.config import TrackerConfig

__all__ = ["run"]

BATCH = 100
#: Time a group commit itself may take on top of the flush interval.
COMMIT_ALLOWANCE = 0.05


def _tracked_app(servers: Servers) -> Celery:
    app = Celery("bench_progress", broker=servers.broker_url)
    app.conf.update(tracker_database_url=servers.database_url, tracker_redis_url=servers.redis_url,
                    task_ignore_result=True)

    @app.task(name="bench.progress_loop", base=TrackedTask, bind=True, shared=False)
    def loop(self: TrackedTask, n: int) -> dict[str, Any]:
        values = [i * 100.0 / n for i in range(n)]
        batches = [values[i:i + BATCH] for i in range(0, n, BATCH)]
        per_call: list[float] = []
        clock = time.perf_counter_ns
        progress = self.progress
        for batch in batches:
            t0 = clock()
            for v in batch:
                progress(v)
            per_call.append((clock() - t0) / len(batch) / 1000.0)
        return {"per_call_us": per_call, "last_call": time.time(), "values": values}

    return app


def _celery_progress_app(servers: Servers) -> Celery:
    from celery_progress.backend import ProgressRecorder

    app = Celery("bench_celery_progress", broker=servers.broker_url, backend=servers.redis_url)

    @app.task(name="bench.celery_progress_loop", bind=True, shared=False)
    def loop(self: Any, n: int) -> list[float]:
        recorder = ProgressRecorder(self)
        per_call: list[float] = []
        clock = time.perf_counter_ns
        for i in range(n):
            t0 = clock()
            recorder.set_progress(i, n)
            per_call.append((clock() - t0) / 1000.0)
        return per_call

    return app


def _stored(conn: psycopg.Connection[Any], task_id: str) -> int:
    row = conn.execute("SELECT coalesce(sum(n), 0) FROM tracker_progress WHERE task_id = %s", (task_id,)).fetchone()
    return int(row[0]) if row else 0


def run(servers: Servers) -> list[Result]:
    n = size("progress_calls", 50_000, 5_000)
    n_base = size("progress_baseline_calls", 2_000, 300)
    flush_interval = TrackerConfig().flush_interval

    # Baseline first, so the tracked run's writer threads are not competing with it.
    base_app = _celery_progress_app(servers)
    base_res = base_app.tasks["bench.celery_progress_loop"].apply(args=(n_base,))
    base_us = statistics.median(base_res.get())
    base_app.close()

    app = _tracked_app(servers)
    signals.install(app)
    try:
        res = app.tasks["bench.progress_loop"].apply(args=(n,))
        out = res.get()
        task_id = str(res.id)
        # No flush(): the values must reach the store on the Recorder's own schedule.
        deadline = out["last_call"] + 30
        stored = 0
        with psycopg.connect(servers.database_url, autocommit=True) as conn:
            while time.time() < deadline:
                stored = _stored(conn, task_id)
                if stored >= n:
                    break
                time.sleep(0.005)
        complete_after = time.time() - out["last_call"]
    finally:
        signals.uninstall(app)
    with Tracker(database_url=servers.database_url) as tracker:
        history = [p.progress for p in tracker.progress_history(task_id)]
    exact = history == out["values"]
    med = statistics.median(out["per_call_us"])
    print(f"   progress(): {med:.2f} us/call over {n} calls; celery-progress {base_us:.0f} us/call; "
          f"all {stored}/{n} values stored {complete_after:.3f}s after the last call, exact={exact}", flush=True)
    return [
        Result(
            name="progress(): median cost per call",
            value=med, unit="us",
            baseline_name="celery-progress ProgressRecorder.set_progress (Redis result backend)",
            baseline_value=base_us, target="<= 5 us", higher_is_better=False, met=med <= 5.0,
            extra={"calls": n, "baseline_calls": n_base, "batch": BATCH,
                   "p90_us": statistics.quantiles(out["per_call_us"], n=10)[-1]},
        ),
        Result(
            name="progress(): all values stored after last call",
            # The writer wakes every flush interval, then commits: allow the commit's own time.
            value=complete_after, unit="s", target=f"<= {flush_interval:g} s + commit", higher_is_better=False,
            met=exact and stored == n and complete_after <= flush_interval + COMMIT_ALLOWANCE,
            extra={"stored": stored, "sent": n, "history_matches_sent_values": exact,
                   "flush_interval": flush_interval, "commit_allowance": COMMIT_ALLOWANCE},
        ),
    ]
