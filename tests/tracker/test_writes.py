"""The write path's statements come from the tables: a column added to a model reaches them."""

from __future__ import annotations

import inspect
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, Text, bindparam, select
from sqlalchemy.dialects.postgresql import JSONB

from tracker import writes
from tracker.models import Metric, Task, TaskLog, WorkerProcess
from tracker.recorder import Recorder


def _copy(table: Any, name: str, *extra: Column[Any]) -> Table:
    """A copy of a model's table under another name, with ``extra`` columns."""
    copy = table.to_metadata(MetaData(), name=name)
    for col in extra:
        copy.append_column(col)
    return copy


def test_task_fields_are_the_task_table_columns() -> None:
    table = Task.__table__
    assert set(writes.TASK_FIELDS) == {c.name for c in table.c} - {"task_id", "created_at"}
    # One parameter, the batch's JSON rows, whose record type lists every column but created_at.
    assert writes.TASK_UPDATE.order == writes.TASK_INSERT.order == ("p_rows",)
    for statement in (writes.TASK_UPDATE, writes.TASK_INSERT):
        assert "json_to_recordset(CAST(%s AS JSON)) AS u(task_id TEXT, " in statement.sql
        assert all(f" {name} " in statement.sql.split("AS u(", 1)[1] for name in writes.TASK_FIELDS)
    assert not writes.TASK_UPDATE.constants and not writes.TASK_INSERT.constants


def test_a_column_added_to_the_table_reaches_the_task_statements() -> None:
    copy = _copy(Task.__table__, "tracker_tasks_copy", Column("attempts_left", Integer, server_default="3"),
                 Column("labels", JSONB), Column("paused_at", DateTime(timezone=True)))
    kinds = writes.task_columns(copy)
    assert kinds.fields[-3:] == ("attempts_left", "labels", "paused_at")
    assert "attempts_left" in kinds.ints and "labels" in kinds.json and "paused_at" in kinds.timestamps
    update, insert = writes.task_update(copy), writes.task_insert(copy)
    # The record type of the JSON rows: JSON as text, timestamps as epoch seconds.
    for statement in (update, insert):
        assert "attempts_left INTEGER, labels TEXT, paused_at DOUBLE PRECISION)" in statement.sql
    assert "UPDATE tracker_tasks_copy AS t" in update.sql
    assert "attempts_left=coalesce(u.attempts_left, t.attempts_left)" in update.sql
    assert "labels=coalesce(CAST(u.labels AS JSONB), t.labels)" in update.sql
    assert "paused_at=coalesce(to_timestamp(u.paused_at), t.paused_at)" in update.sql
    # A new row takes the column's server default, as the table declares it.
    assert "coalesce(u.attempts_left, CAST('3' AS INTEGER))" in insert.sql
    assert writes.task_update(Task.__table__).sql == writes.TASK_UPDATE.sql


def test_copy_and_insert_columns_are_the_tables_columns() -> None:
    assert writes.LOG_COLUMNS == tuple(c.name for c in TaskLog.__table__.c if c.name not in ("id", "search"))
    assert writes.METRIC_COLUMNS == tuple(c.name for c in Metric.__table__.c if c.name != "id")
    assert writes.WORKER_PROCESS_COLUMNS == tuple(c.name for c in WorkerProcess.__table__.c)
    copy = _copy(TaskLog.__table__, "tracker_logs_copy", Column("span_id", Text))
    assert writes.copy_columns(copy)[-1] == "span_id"
    assert writes.copy_statement(copy).startswith("COPY tracker_logs_copy (task_id, ts, ")
    assert writes.copy_statement(copy).endswith(", attachments, span_id) FROM STDIN")


def test_the_recorder_rows_have_the_tables_layout() -> None:
    # Recorder.log() and .metric() buffer their arguments as the COPY rows: a column added to the
    # table without its argument fails here, not in a flush.
    for method, columns in ((Recorder.log, writes.LOG_COLUMNS), (Recorder.metric, writes.METRIC_COLUMNS)):
        assert tuple(inspect.signature(method).parameters)[1:] == columns


def _rows(kinds: writes.TaskColumns, states: dict[str, dict[str, Any]]) -> tuple[str]:
    """The statements' one parameter: a JSON array of rows, JSON columns as JSON text."""
    return (json.dumps([{"task_id": task_id, **{k: json.dumps(v) if k in kinds.json else v for k, v in st.items()}}
                        for task_id, st in states.items()]),)


def test_the_statements_of_a_table_copy_write_its_new_columns(sql: Any) -> None:
    name = f"tracker_tasks_{uuid.uuid4().hex[:8]}"
    sql.execute(f"CREATE TEMP TABLE {name} (LIKE tracker_tasks INCLUDING DEFAULTS INCLUDING INDEXES)")
    sql.execute(f"ALTER TABLE {name} ADD COLUMN attempts_left integer NOT NULL DEFAULT 3, ADD COLUMN labels jsonb")
    copy = _copy(Task.__table__, name, Column("attempts_left", Integer, server_default="3"), Column("labels", JSONB))
    kinds = writes.task_columns(copy)
    with sql.cursor() as cur:
        cur.execute(writes.task_insert(copy).sql, _rows(kinds, {
            "a": {"status": "pending", "status_ts": 0.0, "labels": {"team": "x"}, "tags": ["t1"]},
            "b": {"status": "pending", "status_ts": 0.0, "attempts_left": 1}}))
        assert sorted(r[0] for r in cur.fetchall()) == ["a", "b"]
        cur.execute(writes.task_update(copy).sql, _rows(kinds, {
            "a": {"status": "running", "status_ts": 5.0, "attempts_left": 2, "metadata": {"k": 1}},
            "b": {"status": "completed", "status_ts": 9.0}}))
        assert sorted(r[0] for r in cur.fetchall()) == ["a", "b"]
        rows = cur.execute(f"SELECT task_id, status, attempts_left, labels, tags, metadata FROM {name} "
                           "ORDER BY task_id").fetchall()
    assert rows == [("a", "running", 2, {"team": "x"}, ["t1"], {"k": 1}), ("b", "completed", 1, None, [], {})]


def test_a_hot_statement_binding_more_than_its_inputs_is_refused_at_compile_time() -> None:
    # The Recorder hands psycopg its arrays as they are: a stray bound constant would shift them.
    table = Task.__table__
    stray = select(table.c.task_id).where(table.c.task_id == bindparam("p_id"), table.c.status == "running")
    with pytest.raises(RuntimeError, match="binds"):
        writes.compile_for_psycopg(stray, ["p_id"])
    compiled = writes.compile_for_psycopg(stray, ["p_id"], constants=True)
    assert compiled.args(p_id="x") == ("x", "running")


def test_the_recorder_writes_a_batch_through_its_json_rows(sql: Any) -> None:
    # What the Recorder puts in the batch's JSON: pre-encoded JSON as is, other JSON encoded, NULs
    # out of text, a non-finite float left out (not reported: the stored value stays); a missing
    # field keeps the stored value, and a field no column has is left out.
    from tracker.events import RawJSON
    from tracker.recorder import _write_tasks

    a, b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    with sql.cursor() as cur:
        _write_tasks(cur, {
            a: {"status": "pending", "status_ts": 0.0, "published_at": 100.0, "args": RawJSON("[1,\"x\"]"),
                "kwargs": RawJSON("{}"), "tags": ["t1", "t2"], "metadata": {"k": "é"}, "queue": "q"},
            b: {"status": "pending", "status_ts": 0.0, "published_at": 100.0, "name": "n\x00m", "no_such_column": 1}})
        _write_tasks(cur, {
            a: {"status": "running", "status_ts": 5.0, "eta_seconds": float("inf"), "worker_pid": 7.0,
                "current_step": "s\x00", "progress": 40.0},
            b: {"status": "completed", "status_ts": 9.0, "result": {"ok": True}, "eta_seconds": float("nan"),
                "run_time": float("-inf")}})
        _write_tasks(cur, {a: {"eta_seconds": 12.5}, b: {"eta_seconds": float("nan")}})
        rows = cur.execute(
            "SELECT task_id, status, args, kwargs, tags, metadata, queue, name, eta_seconds, worker_pid, current_step, "
            "result, extract(epoch FROM published_at), progress, run_time FROM tracker_tasks "
            "WHERE task_id = ANY(%s) ORDER BY task_id",
            ([a, b],)).fetchall()
    # The same batch's finite values are written; the later finite eta replaces the missing one.
    assert rows[0] == (a, "running", [1, "x"], {}, ["t1", "t2"], {"k": "é"}, "q", None, 12.5, 7, "s\ufffd",
                       None, 100, 40.0, None)
    task_id, status, *_, name, eta, _, _, result, _, _, run_time = rows[1]
    assert (task_id, status, name, result, eta, run_time) == (b, "completed", "n\ufffdm", {"ok": True}, None, None)


def test_a_non_finite_float_in_a_log_or_metric_does_not_cost_its_batch(sql: Any, database_url: str) -> None:
    # JSON has no NaN: one such value in a log's context once made PostgreSQL reject the COPY of
    # every log of the batch. Now it is stored as null and its neighbours are written with it.
    tag = uuid.uuid4().hex[:8]
    task = f"nan-{tag}"
    recorder = Recorder(database_url, flush_interval=0.05)
    try:
        for i in range(5):
            context = {"i": i, "ratio": float("nan") if i == 2 else i / 2, "bounds": [0.0, float("inf")]}
            recorder.log(task, 1_000.0 + i, 20, "INFO", f"line {i}", context=context,
                         attachments=[{"score": float("-inf")}] if i == 3 else None)
            recorder.metric(f"nan.metric.{tag}", float(i), labels={"limit": float("inf"), "i": i}, task_id=task)
        assert recorder.flush(10)
        assert recorder.dropped["logs"] == 0 and recorder.dropped["metrics"] == 0
    finally:
        recorder.close()
    logs = sql.execute("SELECT message, context, attachments FROM tracker_logs WHERE task_id = %s ORDER BY ts",
                       (task,)).fetchall()
    assert [m for m, _, _ in logs] == [f"line {i}" for i in range(5)]
    assert logs[2][1] == {"i": 2, "ratio": None, "bounds": [0.0, None]}
    assert logs[1][1] == {"i": 1, "ratio": 0.5, "bounds": [0.0, None]}
    assert logs[3][2] == [{"score": None}]
    labels = sql.execute("SELECT labels FROM tracker_metrics WHERE name = %s ORDER BY value",
                         (f"nan.metric.{tag}",)).fetchall()
    assert [r[0] for r in labels] == [{"limit": None, "i": i} for i in range(5)]
