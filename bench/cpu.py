"""CPU seconds used by the processes a benchmark involves: a worker's tree, PostgreSQL, Redis.

Throughput alone says *that* tracking costs something; the split says *where* (the worker's
own hooks and writer threads, or the servers' work on what they send).
"""

from __future__ import annotations

from typing import Any

import psutil
import psycopg
import redis

__all__ = ["CpuMeter"]


def _tree_cpu(root: psutil.Process) -> float:
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


class CpuMeter:
    """``snapshot()`` returns CPU seconds so far of ``worker`` (and its pool), PostgreSQL and Redis."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
        backend = psutil.Process(int(row[0])) if row else None
        self.postmaster = backend.parent() if backend is not None else None
        client = redis.Redis.from_url(redis_url)
        try:
            self.redis = psutil.Process(int(client.info("server")["process_id"]))
        finally:
            client.close()

    def snapshot(self, worker_pid: int) -> dict[str, float]:
        out: dict[str, Any] = {"worker": _tree_cpu(psutil.Process(worker_pid))}
        out["postgres"] = _tree_cpu(self.postmaster) if self.postmaster is not None else 0.0
        t = self.redis.cpu_times()
        out["redis"] = t.user + t.system
        return out

    @staticmethod
    def per_task_ms(before: dict[str, float], after: dict[str, float], tasks: int) -> dict[str, float]:
        return {k: round((after[k] - before[k]) * 1000.0 / tasks, 4) for k in before}
