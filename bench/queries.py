"""Query latency over 1,000,000 tasks and 1,000,000 log lines, through ``Tracker``.

A scratch database is filled with ``generate_series`` (indexes dropped during the load and
rebuilt afterwards, then ``ANALYZE``): tasks spread over 30 days, 1,000 users, 20 task
types, a realistic status mix and tags; log lines with a Zipf-like vocabulary plus a few
phrases of known frequency. Each query runs warm with a different parameter each time
(another user, another type...), and the median latency is reported against the targets:
<= 5 ms for ``tasks(...)`` filters, <= 50 ms for full-text log search. The baseline is a
primary-key lookup (``Tracker.get``) through the same code path.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench.common import Result, Servers
from bench.scratch import scratch_database
from bench.sizes import size
from tracker.api import Tracker

__all__ = ["run"]

TASKS_TARGET_MS = 5.0
SEARCH_TARGET_MS = 50.0

_LOAD_TASKS = """
INSERT INTO tracker_tasks (task_id, name, task_type, user_id, status, status_ts, progress, queue, worker, retries,
                           tags, metadata, created_at, published_at, started_at, finished_at, updated_at,
                           error_type, error_message)
SELECT 'bench-' || lpad(i::text, 8, '0'), 'app.tasks.type_' || ty, 'type_' || ty, 'user-' || u, st, 0,
       CASE WHEN st = 'completed' THEN 100 WHEN st = 'running' THEN 50 ELSE 0 END,
       'celery', 'worker-' || (i %% 8) || '@host', (st = 'failed')::int,
       ARRAY['tag-' || (i %% 50), 'batch-' || (i %% 7)], '{}'::jsonb,
       created, created, created + interval '1 second',
       CASE WHEN st IN ('completed', 'failed', 'cancelled') THEN created + interval '5 seconds' END, created,
       CASE WHEN st = 'failed' THEN 'ValueError' END, CASE WHEN st = 'failed' THEN 'bad input ' || i END
FROM (
  SELECT i, (random() * 19)::int AS ty, (random() * 999)::int AS u,
         now() - (%(n)s - i) * (interval '30 days' / %(n)s) AS created,
         CASE WHEN r < 0.70 THEN 'completed' WHEN r < 0.80 THEN 'failed' WHEN r < 0.85 THEN 'running'
              WHEN r < 0.95 THEN 'pending' ELSE 'cancelled' END AS st
  FROM (SELECT i, random() AS r FROM generate_series(1, %(n)s) AS i) s
) t
"""

# Words: 5,000 synthetic ones drawn log-uniformly (a few very common, most rare), plus
# phrases of known frequency: "timeout" in 1 in 200 lines, "disk full" in 1 in 1,000.
_LOAD_LOGS = """
INSERT INTO tracker_logs (task_id, ts, levelno, level, message, source, user_id, context, attachments)
SELECT 'bench-' || lpad((1 + (random() * (%(tasks)s - 1))::int)::text, 8, '0'),
       now() - random() * interval '30 days', lv, (ARRAY['DEBUG','INFO','WARNING','ERROR'])[lv / 10],
       concat_ws(' ', 'processed', 'w' || floor(exp(random() * ln(5000)))::int,
                 'w' || floor(exp(random() * ln(5000)))::int, 'w' || floor(exp(random() * ln(5000)))::int,
                 'rows', 'w' || floor(exp(random() * ln(5000)))::int,
                 CASE WHEN i %% 200 = 0 THEN 'timeout talking to upstream' END,
                 CASE WHEN i %% 1000 = 7 THEN 'disk full on volume' END),
       'bench', 'user-' || (random() * 999)::int, '{}'::jsonb, '[]'::jsonb
FROM (SELECT i, CASE WHEN random() < 0.02 THEN 40 WHEN random() < 0.1 THEN 30 ELSE 20 END AS lv
      FROM generate_series(1, %(n)s) AS i) s
"""


def _secondary_indexes(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = %s AND i.schemaname = 'public' "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)", (table,)).fetchall()
    return [(r[0], r[1]) for r in rows]


def _load(url: str, n_tasks: int, n_logs: int) -> dict[str, float]:
    took: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute("SELECT setseed(0.42)")
        for table, sql, params in (("tracker_tasks", _LOAD_TASKS, {"n": n_tasks}),
                                   ("tracker_logs", _LOAD_LOGS, {"n": n_logs, "tasks": n_tasks})):
            t0 = time.perf_counter()
            indexes = _secondary_indexes(conn, table)
            for name, _ in indexes:
                conn.execute(f'DROP INDEX "{name}"')
            conn.execute(sql, params)  # type: ignore[arg-type]
            took[f"{table}_rows_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _, ddl in indexes:
                conn.execute(ddl)  # type: ignore[arg-type]
            conn.execute(f"VACUUM ANALYZE {table}")  # type: ignore[arg-type]
            took[f"{table}_indexes_s"] = time.perf_counter() - t0
            print(f"   loaded {table}: {took[f'{table}_rows_s']:.1f}s rows, "
                  f"{took[f'{table}_indexes_s']:.1f}s indexes", flush=True)
    return took


def _median_ms(fn: Callable[[int], Any], runs: int) -> tuple[float, int]:
    """Median latency in ms of ``fn(k)`` for k = 0..runs-1 (after 3 warm-up calls); rows of the last call."""
    for k in range(3):
        fn(10_000 + k)
    samples = []
    n = 0
    for k in range(runs):
        t0 = time.perf_counter()
        out = fn(k)
        samples.append((time.perf_counter() - t0) * 1000)
        n = len(out) if hasattr(out, "__len__") else int(out is not None)
    return statistics.median(samples), n


def run(servers: Servers) -> list[Result]:
    n = size("query_rows", 1_000_000, 100_000)
    runs = size("query_runs", 50, 10)
    results: list[Result] = []
    with scratch_database(servers.database_url, "bench_queries") as url:
        took = _load(url, n, n)
        with Tracker(database_url=url) as t:
            pk_ms, _ = _median_ms(lambda k: t.get(f"bench-{1 + (k * 7919) % n:08d}"), runs)
            page = t.tasks(user_id="user-5", limit=50)
            cursor = page.next_cursor
            task_queries: list[tuple[str, Callable[[int], Any]]] = [
                ("tasks(user_id=)", lambda k: t.tasks(user_id=f"user-{(k * 37) % 1000}", limit=50)),
                ("tasks(status='failed')", lambda k: t.tasks(status="failed", limit=50)),
                ("tasks(user_id=, status=)", lambda k: t.tasks(user_id=f"user-{(k * 37) % 1000}", status="failed",
                                                               limit=50)),
                ("tasks(task_type=, status=)", lambda k: t.tasks(task_type=f"type_{k % 20}", status="completed",
                                                                 limit=50)),
                ("tasks(tag=)", lambda k: t.tasks(tag=f"tag-{k % 50}", limit=50)),
                ("tasks(since='-1h')", lambda k: t.tasks(since="-1h", limit=50)),
                ("tasks(user_id=) next page", lambda k: t.tasks(user_id="user-5", limit=50, cursor=cursor)),
                ("tasks(search=) rare text", lambda k: t.tasks(search=f"bad input {(k * 7919) % n}", limit=50)),
            ]
            search_queries: list[tuple[str, Callable[[int], Any]]] = [
                ("logs(search='timeout')", lambda k: t.logs(search="timeout", limit=50)),
                ("logs(search='disk full')", lambda k: t.logs(search="disk full", limit=50)),
                ("logs(search=word) newest first", lambda k: t.logs(search=f"w{2 + k % 300}", limit=50,
                                                                    newest_first=True)),
                ("logs(search=, min_level='ERROR')", lambda k: t.logs(search="timeout", min_level="ERROR",
                                                                      limit=50)),
            ]
            for queries, target_ms in ((task_queries, TASKS_TARGET_MS), (search_queries, SEARCH_TARGET_MS)):
                for label, fn in queries:
                    ms, rows = _median_ms(fn, runs)
                    print(f"   {label:36} {ms:8.2f} ms ({rows} rows)", flush=True)
                    results.append(Result(f"query: {label}", ms, "ms", "Tracker.get(task_id) primary key", pk_ms,
                                          f"<= {target_ms:g} ms", False, ms <= target_ms,
                                          {"rows_returned": rows, "runs": runs, "table_rows": n}))
    results.append(Result("query: Tracker.get(task_id) (baseline)", pk_ms, "ms", higher_is_better=False,
                          extra={"load": took, "table_rows": n}))
    return results
