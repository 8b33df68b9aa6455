"""Retention: purging old rows in bounded batches, through the index, leaving newer rows intact."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import BindParameter, literal
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.visitors import replacement_traverse

from tracker import retention
from tracker.models import TaskLog
from tracker.recorder import Recorder

DAY = 86400.0


def count(sql: Any, query: str, *args: Any) -> int:
    return int(sql.execute(query, args).fetchone()[0])


def explainable(stmt: Any) -> str:
    """A purge batch with its parameters written in (a cutoff 30 days ago, 10,000 rows), to EXPLAIN."""
    values = {"cutoff": datetime.now(UTC) - timedelta(days=30), "n": 10_000}

    def given(element: Any) -> Any:
        if isinstance(element, BindParameter) and element.key in values:
            return literal(values[element.key], element.type)
        return None

    bound = replacement_traverse(stmt, {}, given)
    return str(bound.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def test_parse_age() -> None:
    assert retention.parse_age("30d") == timedelta(days=30)
    assert retention.parse_age("12h") == timedelta(hours=12)
    assert retention.parse_age("90m") == timedelta(minutes=90)
    assert retention.parse_age("2w") == timedelta(weeks=2)
    assert retention.parse_age("45s") == timedelta(seconds=45)
    assert retention.parse_age("7") == timedelta(days=7)
    assert retention.parse_age(1.5) == timedelta(days=1.5)
    for bad in ("0d", "-3d", "thirty days", "", "3x"):
        with pytest.raises(ValueError):
            retention.parse_age(bad)
    for wrong in (None, True, [30]):
        with pytest.raises(TypeError):
            retention.parse_age(wrong)
    with pytest.raises(ValueError):
        retention.check_batch(0)
    with pytest.raises(TypeError):
        retention.check_batch("100")


def test_every_purge_batch_walks_an_index(tracker_env: dict[str, str], sql: Any) -> None:
    # With these off, a plan without Sort proves an index returns the rows in time order
    # (on a large table that is what the planner picks by itself, see the next test).
    for setting in ("enable_seqscan", "enable_sort", "enable_bitmapscan"):
        sql.execute(f"SET {setting} = off")
    try:
        for name, table, column, condition in retention.TARGETS:
            if table.name == "tracker_workers":
                continue  # one row per worker process: nothing to index
            stmt = explainable(retention.batch_statement(table, column, condition))
            plan = "\n".join(r[0] for r in sql.execute("EXPLAIN " + stmt).fetchall())
            assert "Index" in plan and f"ix_{table.name}" in plan, f"{name}: {plan}"
            assert "Sort" not in plan, f"{name} sorts instead of reading the index in order: {plan}"
    finally:
        sql.execute("RESET ALL")


def test_purge_of_a_million_old_log_rows_keeps_newer_rows(tracker_env: dict[str, str], tracker: Any,
                                                          sql: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    old_task, new_task = f"old-{tag}", f"new-{tag}"
    # A million log lines two months old, loaded in one statement.
    sql.execute("INSERT INTO tracker_logs (task_id, ts, levelno, level, message) "
                "SELECT %s, now() - interval '60 days' + g * interval '1 ms', 20, 'INFO', 'old line' "
                "FROM generate_series(1, 1000000) g", (old_task,))
    # Newer lines: up to a day short of the cutoff, and fresh ones.
    sql.execute("INSERT INTO tracker_logs (task_id, ts, levelno, level, message) "
                "SELECT %s, now() - interval '29 days' + g * interval '1 s', 20, 'INFO', 'recent line' "
                "FROM generate_series(1, 2000) g", (new_task,))
    sql.execute("ANALYZE tracker_logs")
    stmt = explainable(retention.batch_statement(TaskLog.__table__, TaskLog.__table__.c.ts))
    plan = "\n".join(r[0] for r in sql.execute("EXPLAIN " + stmt).fetchall())
    assert "ix_tracker_logs_ts" in plan, plan

    # Tasks, progress, metrics and notifications on both sides of the cutoff.
    tasks = {f"{kind}-{tag}": kind for kind in ("old_done", "old_running", "new_done", "old_failed")}
    sql.execute(
        "INSERT INTO tracker_tasks (task_id, name, status, started_at, finished_at) VALUES "
        "(%s, 't', 'completed', now() - interval '41 days', now() - interval '40 days'), "
        "(%s, 't', 'running', now() - interval '40 days', NULL), "
        "(%s, 't', 'completed', now() - interval '2 days', now() - interval '1 day'), "
        "(%s, 't', 'failed', now() - interval '41 days', now() - interval '35 days')", tuple(tasks))
    recorder = Recorder(tracker_env["TRACKER_DATABASE_URL"], flush_interval=0.05)
    try:
        now = time.time()
        for i in range(30):
            recorder.progress(old_task, now - 45 * DAY + i, float(i), "old", None, None, None)
            recorder.metric("purge.metric", float(i), task_id=old_task, ts=now - 45 * DAY + i)
        recorder.flush(10)  # each flush is its own batch of progress points
        for i in range(5):
            recorder.progress(new_task, now - 3 * DAY + i, float(i), "new", None, None, None)
            recorder.metric("purge.metric", float(i), task_id=new_task, ts=now - 3 * DAY + i)
        assert recorder.flush(10)
    finally:
        recorder.close()
    sql.execute(
        "INSERT INTO tracker_notifications (user_id, title, is_read, read_at, created_at) VALUES "
        "(%s, 'old read', true, now() - interval '39 days', now() - interval '40 days'), "
        "(%s, 'old unread', false, NULL, now() - interval '40 days'), "
        "(%s, 'new read', true, now(), now() - interval '1 day')", (tag, tag, tag))

    result = retention.purge(tracker.engine, "30d", batch_size=10_000)
    assert not result.skipped
    assert result.deleted["logs"] >= 1_000_000
    assert result.batches >= 100  # bounded statements, each committed on its own

    assert count(sql, "SELECT count(*) FROM tracker_logs WHERE task_id = %s", old_task) == 0
    assert count(sql, "SELECT count(*) FROM tracker_logs WHERE task_id = %s", new_task) == 2000
    assert count(sql, "SELECT count(*) FROM tracker_progress WHERE task_id = %s", old_task) == 0
    assert count(sql, "SELECT count(*) FROM tracker_progress WHERE task_id = %s", new_task) >= 1
    assert [p.progress for p in tracker.progress_history(new_task)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert count(sql, "SELECT count(*) FROM tracker_metrics WHERE task_id = %s", old_task) == 0
    assert count(sql, "SELECT count(*) FROM tracker_metrics WHERE task_id = %s", new_task) == 5
    left = {r[0] for r in sql.execute("SELECT task_id FROM tracker_tasks WHERE task_id = ANY(%s)", (list(tasks),))}
    assert left == {f"old_running-{tag}", f"new_done-{tag}"}  # unfinished tasks are never purged
    titles = {r[0] for r in sql.execute("SELECT title FROM tracker_notifications WHERE user_id = %s", (tag,))}
    assert titles == {"old unread", "new read"}  # unread notifications are kept

    again = retention.purge(tracker.engine, "30d")
    assert again.total == 0


def test_purges_do_not_overlap(tracker_env: dict[str, str], tracker: Any, sql: Any) -> None:
    sql.execute("SELECT pg_advisory_lock(%s)", (retention.PURGE_LOCK,))  # another purge is running
    try:
        assert retention.purge(tracker.engine, "30d").skipped
    finally:
        sql.execute("SELECT pg_advisory_unlock(%s)", (retention.PURGE_LOCK,))
    assert not retention.purge(tracker.engine, "30d").skipped


async def test_async_purge_in_small_batches(tracker_env: dict[str, str], sql: Any) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from tracker.config import sqlalchemy_url

    engine = create_async_engine(sqlalchemy_url(tracker_env["TRACKER_DATABASE_URL"]))
    try:
        await retention.purge_async(engine, "2h", pause=0)  # whatever older rows other tests left
        tag = uuid.uuid4().hex[:8]
        sql.execute("INSERT INTO tracker_metrics (name, value, task_id, ts) "
                    "SELECT 'async.purge', g, %s, now() - interval '3 hours' - g * interval '1 s' "
                    "FROM generate_series(1, 23) g", (tag,))
        sql.execute("INSERT INTO tracker_metrics (name, value, task_id, ts) VALUES ('async.purge', 0, %s, now())",
                    (tag,))
        result = await retention.purge_async(engine, "2h", batch_size=5, pause=0)
    finally:
        await engine.dispose()
    assert result.deleted["metrics"] == 23
    assert result.batches == 5 + len(retention.TARGETS) - 1  # 23 rows at 5 per statement take 5
    assert count(sql, "SELECT count(*) FROM tracker_metrics WHERE task_id = %s", tag) == 1


def test_cli_purge(tracker_env: dict[str, str], sql: Any) -> None:
    from tracker.cli import main

    tag = uuid.uuid4().hex[:8]
    sql.execute("INSERT INTO tracker_logs (task_id, ts, levelno, level, message) VALUES "
                "(%s, now() - interval '31 days', 20, 'INFO', 'old'), (%s, now(), 20, 'INFO', 'new')", (tag, tag))
    out = CliRunner().invoke(main, ["purge", "--older-than", "30d", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["deleted"]["logs"] >= 1 and data["skipped"] is False
    assert [r[0] for r in sql.execute("SELECT message FROM tracker_logs WHERE task_id = %s", (tag,))] == ["new"]
    text = CliRunner().invoke(main, ["purge", "--older-than", "30d"])
    assert text.exit_code == 0 and "deleted 0 rows" in text.output
    for bad in (["--older-than", "0d"], ["--older-than", "soon"], ["--batch-size", "0"]):
        res = CliRunner().invoke(main, ["purge", *bad])
        assert res.exit_code == 2, (bad, res.output)
    assert [r[0] for r in sql.execute("SELECT message FROM tracker_logs WHERE task_id = %s", (tag,))] == ["new"]
