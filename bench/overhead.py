"""Tracking overhead: no-op tasks through a Redis broker and a prefork worker, untracked vs tracked.

Two workers (concurrency 2, same settings, ``-l WARNING`` so Celery's own per-task log lines
do not dilute the difference) run side by side; only one has ``signals.install``. Each
round queues the same batch for one of them while it consumes nothing, then lets it in
(``add_consumer``) and times until the queue and the broker's unacked set are empty. Rounds
alternate plain/tracked (and which goes first) so drift on a busy machine hits both; the
figure is the ratio of the median throughputs.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis

import signals
from bench.apps import make_app
from bench.common import Result, Servers
from bench.cpu import CpuMeter
from bench.sizes import size
from bench.workers import BenchWorker

__all__ = ["run"]


def _drain(client: redis.Redis, queue: str, timeout: float) -> None:
    """Wait until ``queue`` is empty and no delivered message is still unacknowledged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        pipe.llen(queue)
        pipe.hlen("unacked")
        waiting, unacked = pipe.execute()
        if waiting == 0 and unacked == 0:
            return
        time.sleep(0.005)
    raise TimeoutError(f"queue {queue} not drained in {timeout}s")


def _fill(app: Any, queue: str, n: int) -> None:
    task = app.tasks["bench.noop"]
    with app.producer_or_acquire() as producer:
        for i in range(n):
            task.apply_async((i,), queue=queue, producer=producer)


def _round(kind: str, app: Any, worker: BenchWorker, client: redis.Redis, n: int, tracked: bool,
           meter: CpuMeter | None = None, cpu: dict[str, list[dict[str, float]]] | None = None) -> float:
    """Queue ``n`` tasks, let the worker in, return tasks/s (and CPU ms per task into ``cpu``)."""
    queue = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    if tracked:
        # The producer records pending rows as a real tracked project would; flushed before timing.
        signals.install(app)
        try:
            _fill(app, queue, n)
        finally:
            from signals.runtime import runtime_for

            runtime_for(signals.hooks.config_for(app)).flush(30)  # type: ignore[arg-type]
            signals.uninstall(app)
    else:
        _fill(app, queue, n)
    before = meter.snapshot(worker.proc.pid) if meter is not None else None
    t0 = time.perf_counter()
    worker.add_consumer(queue)
    _drain(client, queue, timeout=max(60.0, n / 50))
    elapsed = time.perf_counter() - t0
    if meter is not None and before is not None and cpu is not None:
        time.sleep(0.3)  # the last group commit and XADDs belong to this batch
        cpu[kind].append(CpuMeter.per_task_ms(before, meter.snapshot(worker.proc.pid), n))
    worker.cancel_consumer(queue)
    return n / elapsed


def run(servers: Servers) -> list[Result]:
    n = size("overhead_tasks", 3000, 300)
    rounds = size("rounds", 5, 2)
    env = {"BENCH_BROKER_URL": servers.broker_url, "TRACKER_DATABASE_URL": servers.database_url,
           "TRACKER_REDIS_URL": servers.redis_url}
    plain_app = make_app("bench_plain_producer")
    plain_app.conf.broker_url = servers.broker_url
    tracked_app = make_app("bench_tracked_producer")
    tracked_app.conf.update(broker_url=servers.broker_url, tracker_database_url=servers.database_url,
                            tracker_redis_url=servers.redis_url)
    client = redis.Redis.from_url(servers.broker_url)
    figures: dict[str, list[float]] = {"plain": [], "tracked": []}
    cpu: dict[str, list[dict[str, float]]] = {"plain": [], "tracked": []}
    meter = CpuMeter(servers.database_url, servers.redis_url)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        workers: dict[str, BenchWorker] = {}
        try:
            workers["plain"] = BenchWorker("bench.apps.plain", plain_app, env, Path(tmp))
            workers["tracked"] = BenchWorker("bench.apps.tracked", plain_app, env, Path(tmp))
            apps = {"plain": plain_app, "tracked": tracked_app}
            # Warm-up: pool processes import, connect and (tracked) start their writer threads.
            for kind in ("plain", "tracked"):
                _round(kind, apps[kind], workers[kind], client, min(n, 300), kind == "tracked")
            for r in range(rounds):
                order = ("plain", "tracked") if r % 2 == 0 else ("tracked", "plain")
                for kind in order:
                    rate = _round(kind, apps[kind], workers[kind], client, n, kind == "tracked", meter, cpu)
                    figures[kind].append(rate)
                    split = cpu[kind][-1] if cpu[kind] else {}
                    print(f"   round {r + 1}/{rounds} {kind:8} {rate:8.0f} tasks/s  cpu ms/task {split}", flush=True)
            recorded = _recorded(servers.database_url)
        finally:
            for w in workers.values():
                w.stop()
            client.close()
    plain = statistics.median(figures["plain"])
    tracked = statistics.median(figures["tracked"])
    ratio = tracked / plain
    return [Result(
        name="overhead: tracked no-op task throughput",
        value=tracked, unit="tasks/s",
        baseline_name="the same no-op tasks on plain Celery (prefork -c 2, Redis broker)",
        baseline_value=plain, target=">= 0.90 x", higher_is_better=True, met=ratio >= 0.90,
        extra={"tasks_per_round": n, "rounds": rounds, "plain_runs": figures["plain"],
               "tracked_runs": figures["tracked"], "tracked_tasks_recorded_completed": recorded,
               "concurrency": 2, "cpus": os.cpu_count(),
               # Where the time goes: CPU ms per task of the worker tree, PostgreSQL and Redis.
               "cpu_ms_per_task_plain": _median_split(cpu["plain"]),
               "cpu_ms_per_task_tracked": _median_split(cpu["tracked"])},
    )]


def _median_split(samples: list[dict[str, float]]) -> dict[str, float]:
    if not samples:
        return {}
    return {k: round(statistics.median(s[k] for s in samples), 4) for k in samples[0]}


def _recorded(database_url: str) -> int:
    """Tracked tasks the store holds as completed (proof the tracked worker really tracked)."""
    time.sleep(1.0)  # a flush interval or two for the last batch
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM tracker_tasks WHERE status = 'completed' "
                           "AND queue LIKE 'bench-tracked-%'").fetchone()
    return int(row[0]) if row else 0
