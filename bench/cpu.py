"""CPU seconds used by the process groups a benchmark involves, and CPU pinning.

Throughput alone says *that* tracking costs something; the ledger says *where*: the
producer, the worker's main process, its pool processes, PostgreSQL, Redis, the gateway (or
Flower). A group's figure is the CPU of every live process of its tree plus what its members
have reaped (``children_user``/``children_system``), so a PostgreSQL backend that exits during
the timed part (a producer's connection) is still counted.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

import psutil
import psycopg
import redis

__all__ = ["tree_cpu", "own_cpu", "children_cpu", "children_thread_split", "own_thread_split",
           "server_processes", "pin", "ledger_ms"]


def _cpu(p: psutil.Process, reaped: bool = True) -> float:
    t = p.cpu_times()
    total = t.user + t.system
    if reaped:
        total += t.children_user + t.children_system
    return total


def own_cpu(pid: int) -> float:
    """CPU of one process (all its threads) and what it reaped."""
    try:
        return _cpu(psutil.Process(pid))
    except psutil.Error:
        return 0.0


def children_cpu(pid: int) -> float:
    """CPU of the descendants of ``pid`` (not ``pid`` itself)."""
    total = 0.0
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0.0
    for p in kids:
        try:
            total += _cpu(p)
        except psutil.Error:
            continue
    return total


def _thread_split(p: psutil.Process) -> tuple[float, float]:
    """(main thread, the rest) of a process: the rest is its other threads, live or exited, and
    what it reaped (as in :func:`own_cpu`, so the split adds up to the unsplit figure)."""
    total = _cpu(p)
    first = next((t.user_time + t.system_time for t in p.threads() if t.id == p.pid), total)
    return first, total - first


def own_thread_split(pid: int) -> tuple[float, float]:
    """CPU of one process split like :func:`children_thread_split` (main thread, the others)."""
    try:
        return _thread_split(psutil.Process(pid))
    except psutil.Error:
        return 0.0, 0.0


def children_thread_split(pid: int) -> tuple[float, float]:
    """CPU of the descendants of ``pid``, split into their main threads (where a pool process
    runs its tasks and the hooks) and every other thread (a tracked process's Recorder and
    bus writers). The main thread is the one whose id is the pid (Linux)."""
    main = rest = 0.0
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0.0, 0.0
    for p in kids:
        try:
            first, others = _thread_split(p)
        except psutil.Error:
            continue
        main += first
        rest += others
    return main, rest


def tree_cpu(pid: int) -> float:
    return own_cpu(pid) + children_cpu(pid)


def server_processes(database_url: str, redis_url: str) -> tuple[int, int]:
    """(PostgreSQL postmaster pid, redis-server pid) of the servers behind the two URLs."""
    from tracker.config import psycopg_url

    with psycopg.connect(psycopg_url(database_url)) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        # While the connection is open: its backend exits with it (a race seen on a busy machine).
        postmaster = psutil.Process(int(row[0])).parent()
    assert postmaster is not None
    client = redis.Redis.from_url(redis_url)
    try:
        redis_pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return postmaster.pid, redis_pid


def pin(pids: Iterable[int], cpus: str) -> None:
    """``taskset -a -p -c <cpus>`` each process of each tree (``-a``: all threads, including
    the writer threads a tracked process has already started; new children inherit it)."""
    for root in pids:
        try:
            procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(p.pid)], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ledger_ms(before: dict[str, float], after: dict[str, float], tasks: int) -> dict[str, float]:
    """CPU ms per task of each group between two snapshots."""
    return {k: round((after[k] - before[k]) * 1000.0 / tasks, 4) for k in before}
