"""Tracking overhead end to end, in the shape a deployment runs, with Flower as the peer.

Per round a separate producer process (:mod:`bench.producer`) publishes N no-op tasks while a
prefork worker (``-c 2``) already consumes their queue; throughput runs from the first publish
to the moment the queue and the broker's unacknowledged set are empty (the last task ended).
Three kinds of round, each with its own long-running worker, same settings otherwise:

- ``plain``: plain Celery producer and worker;
- ``tracked``: the producer and the worker have ``signals.install`` (pending rows and
  ``task.pending`` events in the producer), and a real ``tracker gateway`` (feed, notifier,
  sweeper) reads the stream;
- ``flower``: plain producer, a worker with ``-E`` (task events) and Flower consuming them.

Rounds rotate the order of the three kinds so drift on a busy machine hits all of them; the
figures are the medians of the per-round ratios against the plain round of the same round.
Two variants: every process free on all cores, and the workers pinned alone on CPU 0 with
everything else (producer, PostgreSQL, Redis, gateway, Flower, this process) on CPU 1.

A CPU ledger in CPU ms per task by process group (producer, worker main process, pool
processes, PostgreSQL, Redis, gateway or Flower) is taken around each timed part. The worker's
processes are split by thread: the main thread (dispatching in the main process, the tasks and
the hooks in a pool process) and the others (Celery's own, a tracked process's writers).
"""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from bench.apps import make_app
from bench.common import Result, Servers
from bench.cpu import children_thread_split, ledger_ms, own_cpu, own_thread_split, pin, server_processes, tree_cpu
from bench.peers import Service, start_flower, start_gateway
from bench.sizes import size
from bench.workers import ROOT, BenchWorker
from tracker.config import psycopg_url

__all__ = ["run", "GROUPS"]

MODES = ("plain", "tracked", "flower")
#: Ledger rows, in print order.
#: "worker main" is the worker main process's main thread (it dispatches every message), "main
#: threads" its other threads (Celery's own, and a tracked worker's Recorder and bus writers);
#: "pool tasks" is the pool processes' main threads (tasks and hooks), "pool threads" their other
#: threads (a tracked process's Recorder and bus writers; none in a plain pool process).
GROUPS = ("producer", "worker main", "main threads", "pool tasks", "pool threads", "postgres", "redis",
          "gateway/flower")
#: Every order of the three kinds; round r uses ORDERS[r % 6].
ORDERS = list(itertools.permutations(MODES))
TARGETS = {"2 cores": 0.90, "pinned": 0.95}
#: Group names as the per-round lines print them.
_SHORT = {"worker main": "main", "main threads": "main-threads", "pool tasks": "pool", "pool threads": "threads",
          "gateway/flower": "peer"}


@dataclass
class Rig:
    """The processes that live across rounds."""

    workers: dict[str, BenchWorker]
    gateway: Service
    flower: Service
    postmaster: int
    redis_pid: int
    broker: redis.Redis
    env: dict[str, str]
    ratios: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def snapshot(self, mode: str) -> dict[str, float]:
        w = self.workers[mode].pid
        peer = self.gateway.pid if mode == "tracked" else self.flower.pid if mode == "flower" else None
        pool_tasks, pool_threads = children_thread_split(w)
        main, main_threads = own_thread_split(w)
        return {"worker main": main, "main threads": main_threads, "pool tasks": pool_tasks,
                "pool threads": pool_threads, "postgres": tree_cpu(self.postmaster),
                "redis": own_cpu(self.redis_pid), "gateway/flower": tree_cpu(peer) if peer else 0.0}

    def background(self) -> list[int]:
        """Every pid that is not a worker: what the pinned variant puts on CPU 1."""
        return [self.postmaster, self.redis_pid, self.gateway.pid, self.flower.pid, os.getpid()]


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


def _expect(proc: subprocess.Popen[str], word: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith(word):
        proc.kill()
        raise RuntimeError(f"producer said {line!r}, expected {word!r}")
    return line[len(word):].strip()


def _round(rig: Rig, mode: str, n: int, pinned: bool) -> tuple[float, dict[str, float]]:
    """One timed round of ``mode``: tasks/s and CPU ms per task by group."""
    worker = rig.workers[mode]
    queue = f"bench-{mode}-{uuid.uuid4().hex[:8]}"
    worker.add_consumer(queue)
    taskset = ["taskset", "-c", "1"] if pinned else []
    env = {**os.environ, **rig.env,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([*taskset, sys.executable, "-m", "bench.producer", mode, queue, str(n)], env=env,
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        _expect(proc, "ready")
        before = rig.snapshot(mode)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        t0 = float(_expect(proc, "start"))
        _expect(proc, "published")
        _drain(rig.broker, queue, timeout=max(60.0, n / 50))
        elapsed = time.time() - t0
        producer_cpu = float(_expect(proc, "cpu"))
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.3)  # the last group commit, XADDs and the gateway's reading belong to this round
    ledger = ledger_ms(before, rig.snapshot(mode), n)
    ledger["producer"] = round(producer_cpu * 1000.0 / n, 4)
    worker.cancel_consumer(queue)
    return n / elapsed, ledger


def _variant(rig: Rig, label: str, n: int, rounds: int) -> tuple[list[Result], dict[str, dict[str, float]]]:
    pinned = label == "pinned"
    if pinned:
        pin([w.pid for w in rig.workers.values()], "0")
        pin(rig.background(), "1")
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    ledgers: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    ratios: dict[str, list[float]] = {"tracked": [], "flower": []}
    try:
        for r in range(rounds):
            got: dict[str, float] = {}
            for mode in ORDERS[r % len(ORDERS)]:
                rate, ledger = _round(rig, mode, n, pinned)
                got[mode] = rate
                rates[mode].append(rate)
                ledgers[mode].append(ledger)
                split = " ".join(f"{_SHORT.get(g, g)} {ledger[g]:.3f}" for g in GROUPS)
                print(f"   [{label}] round {r + 1}/{rounds} {mode:8} {rate:7.0f} tasks/s   cpu ms/task: {split}",
                      flush=True)
            for mode in ("tracked", "flower"):
                ratios[mode].append(got[mode] / got["plain"])
    finally:
        if pinned:
            pin([w.pid for w in rig.workers.values()] + rig.background(), "0,1")
    med = {m: statistics.median(v) for m, v in rates.items()}
    ledger_med = {m: _median_split(ledgers[m]) for m in MODES}
    _print_ledger(label, ledger_med)
    tracked, flower = statistics.median(ratios["tracked"]), statistics.median(ratios["flower"])
    target = TARGETS[label]
    extra = {"tasks_per_round": n, "rounds": rounds, "rates": rates, "round_ratios": ratios,
             "cpu_ms_per_task": ledger_med, "concurrency": 2, "cpus": os.cpu_count()}
    where = ("all processes on both cores" if not pinned else
             "workers alone on CPU 0, producer/PostgreSQL/Redis/gateway/Flower on CPU 1")
    return [
        Result(name=f"overhead ({label}): tracked / plain, end to end", value=tracked, unit="x",
               baseline_name=(f"median of {rounds} round ratios; plain {med['plain']:.0f}, tracked "
                              f"{med['tracked']:.0f} tasks/s ({where})"),
               target=f">= {target:.2f} x", higher_is_better=True, met=tracked >= target, extra=extra),
        Result(name=f"overhead ({label}): Flower -E / plain (peer)", value=flower, unit="x",
               baseline_name=f"median of {rounds} round ratios; Flower -E {med['flower']:.0f} tasks/s",
               target="< tracked ratio", higher_is_better=True, met=flower < tracked),
    ], ledger_med


def _print_ledger(label: str, ledger: dict[str, dict[str, float]]) -> None:
    print(f"   CPU ledger ({label}), CPU ms per task, median of rounds:")
    print(f"   {'group':16} {'plain':>8} {'tracked':>8} {'flower':>8} {'tracked-plain':>14} {'flower-plain':>13}")
    for g in (*GROUPS, "total"):
        row = {m: (sum(ledger[m].values()) if g == "total" else ledger[m].get(g, 0.0)) for m in MODES}
        print(f"   {g:16} {row['plain']:8.3f} {row['tracked']:8.3f} {row['flower']:8.3f} "
              f"{row['tracked'] - row['plain']:14.3f} {row['flower'] - row['plain']:13.3f}", flush=True)


def _median_split(samples: list[dict[str, float]]) -> dict[str, float]:
    if not samples:
        return {}
    return {k: round(statistics.median(s[k] for s in samples), 4) for k in GROUPS}


def _recorded(database_url: str) -> int:
    """Tracked tasks the store holds as completed (proof the tracked rounds really tracked)."""
    time.sleep(1.0)  # a flush interval or two for the last batch
    with psycopg.connect(psycopg_url(database_url)) as conn:
        row = conn.execute("SELECT count(*) FROM tracker_tasks WHERE status = 'completed' "
                           "AND queue LIKE 'bench-tracked-%'").fetchone()
    return int(row[0]) if row else 0


def _variants() -> list[str]:
    """``BENCH_OVERHEAD_VARIANTS`` (``cores``, ``pinned`` or both, comma-separated); default both
    (pinned needs two CPUs)."""
    wanted = os.environ.get("BENCH_OVERHEAD_VARIANTS", "cores,pinned").replace(" ", "").split(",")
    labels = ["2 cores"] if "cores" in wanted else []
    if "pinned" in wanted and (os.cpu_count() or 1) >= 2:
        labels.append("pinned")
    return labels


def run(servers: Servers) -> list[Result]:
    n = size("overhead_tasks", 3000, 300)
    rounds = size("rounds", 5, 2)
    env = {"BENCH_BROKER_URL": servers.broker_url, "TRACKER_DATABASE_URL": servers.database_url,
           "TRACKER_REDIS_URL": servers.redis_url}
    control_app = make_app("bench_control")
    control_app.conf.broker_url = servers.broker_url
    postmaster, redis_pid = server_processes(servers.database_url, servers.redis_url)
    broker = redis.Redis.from_url(servers.broker_url)
    results: list[Result] = []
    ledgers: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        started: list[BenchWorker | Service] = []
        try:
            workers = {
                "plain": BenchWorker("bench.apps.plain", control_app, env, Path(tmp)),
                "tracked": BenchWorker("bench.apps.tracked", control_app, env, Path(tmp)),
                "flower": BenchWorker("bench.apps.plain", control_app, env, Path(tmp), events=True),
            }
            started.extend(workers.values())
            gateway = start_gateway(env, Path(tmp))
            started.append(gateway)
            flower = start_flower("bench.apps.plain", env, Path(tmp))
            started.append(flower)
            rig = Rig(workers, gateway, flower, postmaster, redis_pid, broker, env)
            # Warm-up: pool processes import and connect, writer threads start, Flower sees the worker.
            for mode in MODES:
                _round(rig, mode, min(n, 300), pinned=False)
            labels = _variants()
            for label in labels:
                res, ledgers[label] = _variant(rig, label, n, rounds)
                results.extend(res)
            recorded = _recorded(servers.database_url)
            expected = n * rounds * len(labels) + min(n, 300)
            print(f"   tracked tasks stored as completed: {recorded} of {expected}", flush=True)
            for r in results:
                r.extra["tracked_tasks_recorded_completed"] = recorded
                r.extra["tracked_tasks_published"] = expected
        finally:
            for proc in reversed(started):
                proc.stop()
            broker.close()
    return results
