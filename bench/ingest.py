"""Recorder ingest: log rows/s into PostgreSQL from one process vs a raw psycopg ``COPY``.

The Recorder is fed as a task would feed it (``Recorder.log`` from the caller's thread while
its writer thread commits in the background) and timed until ``flush()`` reports everything
committed. The baseline writes the same rows with one hand-written ``COPY`` in one
transaction. Rounds alternate, each into freshly truncated tables of a scratch database.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.common import Result, Servers
from bench.scratch import scratch_database
from bench.sizes import size
from tracker.recorder import Recorder

__all__ = ["run"]

TARGET = 50_000.0

Row = tuple[str, float, int, str, str, str, str, dict[str, Any], None, None]


def _rows(n: int) -> list[Row]:
    now = time.time()
    return [(f"bench-ingest-{i % 1000}", now + i * 1e-6, 20, "INFO",
             f"processed batch {i} of part-{i % 97}.csv: {i % 1000} rows ok", "bench.ingest", f"u-{i % 50}",
             {"batch": i, "file": f"part-{i % 97}.csv"}, None, None) for i in range(n)]


def _recorder_round(url: str, rows: list[Row]) -> float:
    rec = Recorder(url, flush_interval=0.2, buffer_max=len(rows) + 1, name="bench-ingest")
    try:
        rec.flush(10)  # connected and idle before the clock starts
        t0 = time.perf_counter()
        log = rec.log
        for r in rows:
            log(*r)
        if not rec.flush(timeout=300):
            raise RuntimeError("recorder did not flush in 300 s")
        elapsed = time.perf_counter() - t0
        if rec.dropped["logs"] or rec.written["logs"] != len(rows):
            raise RuntimeError(f"recorder lost rows: {rec.stats()}")
    finally:
        rec.close()
    return len(rows) / elapsed


def _copy_round(url: str, rows: list[Row]) -> float:
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
                "COPY tracker_logs (task_id, ts, levelno, level, message, source, user_id, context, traceback, "
                "attachments) FROM STDIN") as cp:
            for r in rows:
                cp.write_row((r[0], datetime.fromtimestamp(r[1], UTC), r[2], r[3], r[4], r[5], r[6],
                              json.dumps(r[7]), None, "[]"))
        conn.commit()
        elapsed = time.perf_counter() - t0
    return len(rows) / elapsed


def _count_and_truncate(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM tracker_logs").fetchone()
        conn.execute("TRUNCATE tracker_logs")
        conn.execute("CHECKPOINT")
    return int(row[0]) if row else 0


def run(servers: Servers) -> list[Result]:
    n = size("ingest_rows", 200_000, 20_000)
    rounds = size("rounds", 3, 1)
    rows = _rows(n)
    results = []
    with scratch_database(servers.database_url, "bench_ingest") as url:
        results.append(_measure(url, rows, rounds, "ingest: Recorder log rows/s (one process)",
                                "all of the schema's indexes, incl. the full-text GIN"))
        # The same without the full-text index: how much of the cost is the writer's own.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP INDEX IF EXISTS ix_tracker_logs_search")
        results.append(_measure(url, rows, rounds, "ingest: same, without full-text index",
                                "the schema's indexes except the full-text GIN"))
    return results


def _measure(url: str, rows: list[Row], rounds: int, name: str, indexes: str) -> Result:
    n = len(rows)
    figures: dict[str, list[float]] = {"recorder": [], "copy": []}
    for r in range(rounds):
        order = ("recorder", "copy") if r % 2 == 0 else ("copy", "recorder")
        for kind in order:
            rate = _recorder_round(url, rows) if kind == "recorder" else _copy_round(url, rows)
            stored = _count_and_truncate(url)
            if stored != n:
                raise RuntimeError(f"{kind}: {stored} rows stored, {n} sent")
            figures[kind].append(rate)
            print(f"   round {r + 1}/{rounds} {kind:8} {rate:10,.0f} rows/s ({indexes})", flush=True)
    value = statistics.median(figures["recorder"])
    return Result(
        name=name, value=value, unit="rows/s",
        baseline_name="raw psycopg COPY of the same rows, one transaction",
        baseline_value=statistics.median(figures["copy"]), target=">= 50,000/s", higher_is_better=True,
        met=value >= TARGET,
        extra={"rows_per_round": n, "rounds": rounds, "recorder_runs": figures["recorder"],
               "copy_runs": figures["copy"], "indexes": indexes},
    )
