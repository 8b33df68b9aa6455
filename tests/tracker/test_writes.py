"""The write path's statements come from the tables: a column added to a model reaches them."""

from __future__ import annotations

import inspect
import json
import time
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, Text, bindparam, select
from sqlalchemy.dialects.postgresql import JSONB

from tracker import writes
from tracker.config import psycopg_url as psycopg_url_of
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


def _plan(conn: Any, statement: str, rows: list[dict[str, Any]]) -> str:
    """The plan psycopg's prepared ``statement`` runs with on ``conn`` (its cached plan once generic)."""
    name = conn.execute("SELECT name FROM pg_prepared_statements WHERE statement = %s",
                        (statement.replace("%s", "$1"),)).fetchone()
    assert name is not None, "the statement was not prepared"
    text = json.dumps(rows).replace("'", "''")
    return "\n".join(r[0] for r in conn.execute(f"EXPLAIN EXECUTE {name[0]}('{text}')").fetchall())


@pytest.mark.parametrize("settings", [True, False], ids=["writer", "plain"])
def test_the_cached_task_update_probes_the_key_after_the_table_grew(database_url: str, settings: bool) -> None:
    # psycopg prepares a statement from its fifth run and PostgreSQL keeps the generic plan it made
    # then. Made on a small table, that plan scanned all of tracker_tasks for every batch once the
    # table had grown; on the writer's connection the cached plan probes the key whatever its size.
    # The plain connection shows the trap the writer's settings avoid.
    from tracker.demo.services import ensure_database
    from tracker.migrate import upgrade
    from tracker.recorder import _task_rows, _write_tasks, connect_writer

    base = psycopg_url_of(database_url)
    name = f"plan_{uuid.uuid4().hex[:10]}"
    ensure_database(base, name)
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url)
        conn = connect_writer(url) if settings else psycopg.connect(url)
        with conn:
            for batch in range(8):  # the UPDATE runs often enough to be prepared, on a near-empty table
                ids = [f"{batch}-{i}" for i in range(5)]
                with conn.cursor() as cur:
                    _write_tasks(cur, {t: {"status": "pending", "status_ts": 0.0, "published_at": 1.0} for t in ids})
                    _write_tasks(cur, {t: {"status": "completed", "status_ts": 2.0, "finished_at": 2.0} for t in ids})
                conn.commit()
            conn.execute("INSERT INTO tracker_tasks (task_id) SELECT 'grown-' || g FROM generate_series(1, 30000) g")
            conn.commit()
            plan = _plan(conn, writes.TASK_UPDATE.sql,
                         _task_rows(["grown-7"], {"grown-7": {"status": "running", "status_ts": 3.0}}))
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    scans_table = "Seq Scan on tracker_tasks" in plan
    assert scans_table is not settings, plan
    if settings:
        assert "Index Scan using tracker_tasks_pkey" in plan, plan


def test_a_producer_and_a_worker_writing_the_same_rows_do_not_deadlock(database_url: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The interleaving that deadlocked: a worker's batch updates a row the producer created before
    # (and holds it); the producer's batch inserts a row of that worker's batch, then waits on the
    # row the worker holds; the worker goes on to insert the row the producer holds. Each writer
    # now commits what one statement wrote before its next: no writer waits while holding rows.
    import threading

    from tracker import recorder
    from tracker.recorder import _write_tasks, connect_writer

    tag = uuid.uuid4().hex
    new, old = f"dl-1-{tag}", f"dl-2-{tag}"  # writers take rows in task_id order: new before old
    paused = {name: threading.Event() for name in ("worker", "producer")}
    go = {name: threading.Event() for name in ("worker", "producer")}
    real_apply = recorder._apply
    calls: dict[str, int] = {}

    def apply(cur: Any, statement: str, rows: list[dict[str, Any]]) -> Any:
        name = threading.current_thread().name
        rest = real_apply(cur, statement, rows)
        calls[name] = calls.get(name, 0) + 1
        if name in paused and calls[name] == 1:  # hold here, after the writer's first statement
            paused[name].set()
            assert go[name].wait(10)
        return rest

    monkeypatch.setattr(recorder, "_apply", apply)
    url = psycopg_url_of(database_url)
    with connect_writer(url) as setup:
        with setup.cursor() as cur:
            _write_tasks(cur, {old: {"status": "pending", "status_ts": 0.0, "published_at": 1.0, "queue": "q"}})
        setup.commit()
    errors: list[BaseException] = []

    def write(tasks: dict[str, dict[str, Any]]) -> None:
        try:
            with connect_writer(url) as conn:
                conn.execute("SET deadlock_timeout = '100ms'")  # a deadlock shows at once
                with conn.cursor() as cur:
                    _write_tasks(cur, tasks)
                conn.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    done = {"status": "completed", "status_ts": 5.0, "finished_at": 5.0, "worker": "w1"}
    worker = threading.Thread(target=write, name="worker", args=({old: dict(done), new: dict(done)},))
    producer = threading.Thread(target=write, name="producer", args=({
        old: {"status": "pending", "status_ts": 0.0, "published_at": 1.0, "queue": "q"},
        new: {"status": "pending", "status_ts": 0.0, "published_at": 2.0, "queue": "q"}},))
    worker.start()
    assert paused["worker"].wait(10)  # the worker updated old (new did not exist yet)
    producer.start()  # inserts new, then waits for old
    time.sleep(0.3)
    go["worker"].set()  # the worker goes on to insert new
    paused["producer"].wait(10)
    time.sleep(0.3)
    go["producer"].set()
    worker.join(15)
    producer.join(15)
    assert not worker.is_alive() and not producer.is_alive()
    assert errors == []
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT task_id, status, queue, worker, extract(epoch FROM published_at) "
                            "FROM tracker_tasks WHERE task_id = ANY(%s) ORDER BY task_id", ([new, old],)).fetchall()
    assert rows == [(new, "completed", "q", "w1", 2), (old, "completed", "q", "w1", 1)]
