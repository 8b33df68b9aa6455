"""The write path: a per-process batched writer into PostgreSQL (group commit).

Callers only append to in-memory buffers (a few hundred nanoseconds, never a round trip);
one background thread commits everything gathered every ``flush_interval`` in one
transaction: task-state upserts with ``executemany`` (pipelined), logs, progress points and
metrics with ``COPY``. While PostgreSQL is away the buffers are kept (bounded) and the
writer retries with backoff; what the bound had to drop is counted and reported.
"""

from __future__ import annotations

import array
import json
import logging
import math
import struct
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from tracker.background import BackgroundWriter
from tracker.config import psycopg_url
from tracker.events import RawJSON, dumps
from tracker.retry import Backoff
from tracker.writes import (
    LOG_COPY,
    MEDIAN_RUNTIME,
    METRIC_COPY,
    PROGRESS_INSERT,
    SET_CONFIG,
    TASK_COLUMNS,
    TASK_FIELDS,
    TASK_INSERT,
    TASK_UPDATE,
    WORKER_NODE_BEAT,
    WORKER_PROCESS_COLUMNS,
    WORKER_PROCESS_UPSERT,
    WRITER_SETTINGS,
)

__all__ = ["Recorder", "TASK_FIELDS", "connect_writer"]

logger = logging.getLogger("tracker.recorder")

# The statements come from the query layer, built from the models and compiled once for psycopg.
_UPDATE = TASK_UPDATE.sql
_INSERT = TASK_INSERT.sql
_JSON_TEXT_FIELDS = TASK_COLUMNS.json
_FLOAT_FIELDS = TASK_COLUMNS.floats
_INT_FIELDS = TASK_COLUMNS.ints
_KNOWN = frozenset(TASK_FIELDS)


#: The encoder of a batch's rows. ``allow_nan=False``: JSON has no NaN or Infinity, and neither
#: can the REST API, the feed or the dashboard show one; a batch holding one is encoded again by
#: :func:`_encode_rows` without it.
_ENCODE_ROWS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _task_rows(ids: list[str], tasks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One JSON object per task (``task_id`` and the fields it reports) for :data:`_UPDATE`
    and :data:`_INSERT`."""
    rows: list[dict[str, Any]] = []
    for task_id in ids:
        row: dict[str, Any] = {"task_id": task_id}
        for f, v in tasks[task_id].items():
            if v is None or f not in _KNOWN:
                continue
            if f in _JSON_TEXT_FIELDS:
                row[f] = v if isinstance(v, RawJSON) else dumps(v)
            elif f in _FLOAT_FIELDS:
                row[f] = float(v)
            elif f in _INT_FIELDS:
                row[f] = int(v)
            else:
                row[f] = _clean(v) if isinstance(v, str) else str(v)
        rows.append(row)
    return rows


def _encode_rows(rows: list[dict[str, Any]]) -> str:
    try:
        return _ENCODE_ROWS(rows)
    except ValueError:
        # A NaN or an infinity (rare: the public calls validate their numbers) is "not reported":
        # stored, it would break every reader that shows the row (a snapshot of all tasks included).
        return _ENCODE_ROWS([{k: v for k, v in row.items() if not isinstance(v, float) or math.isfinite(v)}
                             for row in rows])


def _apply(cur: psycopg.Cursor[Any], statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Run :data:`_UPDATE` or :data:`_INSERT` on ``rows``; the rows it did not touch (by the ids
    it returns), or None when it touched them all."""
    cur.execute(statement, (_encode_rows(rows),))
    touched = {r[0] for r in cur.fetchall()}
    if len(touched) == len(rows):
        return None
    return rows if not touched else [row for row in rows if row["task_id"] not in touched]


def _write_tasks(cur: psycopg.Cursor[Any], tasks: dict[str, dict[str, Any]]) -> None:
    """Merge a batch of task states into ``tracker_tasks`` with as few row versions as possible.

    A worker's batch updates rows the producer created: UPDATE first, INSERT what was missing.
    A producer's batch (its first state is a publisher's pending, ``status_ts`` 0) creates rows:
    INSERT first, UPDATE what existed. A row another writer created between the two statements
    is updated last (``ON CONFLICT`` waited for that writer's commit), so nothing is lost.

    Every writer takes its rows in ``task_id`` order, and commits what one statement wrote before
    the next one runs. Otherwise a producer holding the rows it had just inserted while updating
    one a worker held, and that worker inserting one of those rows while holding the other,
    waited for each other until PostgreSQL's deadlock timeout (a second) broke the tie by
    failing one batch, which then waited for its retry. Each statement is idempotent (a merge
    by source timestamp), so a batch that fails after the first commit is simply written again.
    """
    first = next(iter(tasks.values()))
    ids = sorted(tasks)
    rows: list[dict[str, Any]] | None = _task_rows(ids, tasks)
    creates = first.get("status_ts") == 0.0 and first.get("published_at") is not None
    for n, statement in enumerate((_INSERT, _UPDATE) if creates else (_UPDATE, _INSERT, _UPDATE)):
        if rows is None:
            return
        if n:
            cur.connection.commit()
        rows = _apply(cur, statement, rows)


class Float8Array(list[float]):
    """A list of floats sent as a binary ``float8[]`` by :class:`_Float8ArrayDumper`."""


class _Float8ArrayDumper(Dumper):
    """Builds PostgreSQL's binary array format with a few C-level slice copies: psycopg's
    generic list dumper spends most of a progress flush converting floats one by one."""

    format = Format.BINARY
    oid = 1022  # float8[]

    def dump(self, obj: Any) -> bytes:
        n = len(obj)
        values = array.array("d", obj)
        if sys.byteorder == "little":
            values.byteswap()
        raw = values.tobytes()
        # Header: 1 dimension, no NULLs, element type float8 (701), n elements from index 1;
        # then each element as a 4-byte length (8) and its 8 bytes.
        out = bytearray(12 * n)
        out[3::12] = b"\x08" * n
        for k in range(8):
            out[4 + k::12] = raw[k::8]
        return struct.pack(">iiiii", 1, 0, 701, n, 1) + bytes(out)


def _progress_batches(points: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Group ``(task_id, ts, progress, step)`` points into one row of arrays per task."""
    by_task: dict[str, tuple[list[float], list[float], list[str | None]]] = {}
    for task_id, ts, value, step in points:
        arrays = by_task.get(task_id)
        if arrays is None:
            arrays = by_task[task_id] = ([], [], [])
        arrays[0].append(ts)
        arrays[1].append(value)
        arrays[2].append(step)
    return [(task_id, times[0], times[-1], len(times), Float8Array(times), Float8Array(vals), steps)
            for task_id, (times, vals, steps) in by_task.items()]


def _clean(text: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL characters.
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def merge_task_state(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Fold a newer partial update into a pending one: the status with the newer
    ``status_ts`` wins, metadata merges, everything else takes the latest non-None value."""
    for key, value in update.items():
        if value is None:
            continue
        if key == "status":
            if into.get("status") is not None and update.get("status_ts", 0.0) < into.get("status_ts", 0.0):
                continue
            into["status"] = value
            into["status_ts"] = update.get("status_ts", 0.0)
        elif key == "status_ts":
            continue
        elif key == "metadata" and into.get("metadata"):
            into["metadata"] = {**into["metadata"], **value}
        else:
            into[key] = value


def connect_writer(dsn: str) -> psycopg.Connection[Any]:
    """A connection for the write path: not in autocommit (a flush is one transaction), the
    binary float-array dumper, and planner settings under which every cached plan finds rows by
    key whatever the table's statistics were when it was made (:data:`tracker.writes.WRITER_SETTINGS`)."""
    conn = psycopg.connect(dsn, autocommit=False, connect_timeout=3)
    try:
        conn.adapters.register_dumper(Float8Array, _Float8ArrayDumper)
        for name, value in WRITER_SETTINGS:
            conn.execute(SET_CONFIG.sql, (name, value))
        conn.commit()  # at once: a batch rolled back later must not take the settings with it
    except BaseException:
        conn.close()
        raise
    return conn


class Recorder(BackgroundWriter):
    """Batched, buffered writer; every public method is non-blocking and never raises."""

    def __init__(
        self,
        database_url: str,
        *,
        flush_interval: float = 0.2,
        buffer_max: int = 100_000,
        name: str = "tracker-recorder",
    ) -> None:
        super().__init__()
        self.dsn = psycopg_url(database_url)
        self.flush_interval = flush_interval
        self.buffer_max = buffer_max
        #: Buffer length at which the writer is woken before its interval is up.
        self._early = max(100, buffer_max // 20)
        self._tasks: dict[str, dict[str, Any]] = {}
        self._logs: list[tuple[Any, ...]] = []
        self._progress: list[tuple[Any, ...]] = []
        self._metrics: list[tuple[Any, ...]] = []
        self._workers: dict[str, dict[str, Any]] = {}
        self._conn: psycopg.Connection[Any] | None = None
        #: Pause between tries while PostgreSQL is away (records keep buffering meanwhile).
        self._backoff = Backoff(first=0.05, most=2.0)
        self._medians: dict[str, tuple[float, float | None]] = {}
        self._median_wanted: set[str] = set()
        self.ticks: list[Callable[[], None]] = []
        self.dropped: dict[str, int] = {"logs": 0, "progress": 0, "metrics": 0, "tasks": 0}
        self.written: dict[str, int] = {"logs": 0, "progress": 0, "metrics": 0, "tasks": 0}
        self._reported_drops = 0
        self._start(name)

    # -- enqueue (hot path) -------------------------------------------------------------
    def task(self, task_id: str, **fields: Any) -> None:
        """Merge a partial task-state update (keys from :data:`TASK_FIELDS`)."""
        with self._lock:
            pending = self._tasks.get(task_id)
            if pending is None:
                if len(self._tasks) >= self.buffer_max:
                    self.dropped["tasks"] += 1
                    return
                if fields.get("status") is not None:
                    fields.setdefault("status_ts", 0.0)
                self._tasks[task_id] = fields
            else:
                merge_task_state(pending, fields)
            self._seq += 1

    def progress(self, task_id: str, ts: float, progress: float, current_step: str | None,
                 step_index: int | None, total_steps: int | None, eta_seconds: float | None) -> None:
        """A progress report: one history point plus the task's new state (the hot path)."""
        with self._lock:
            n = len(self._progress)
            if n < self.buffer_max:
                self._progress.append((task_id, ts, progress, current_step))
                if n == self._early:
                    self._wake.set()  # a burst: commit now rather than at the next tick
            else:
                self.dropped["progress"] += 1
            state = self._tasks.get(task_id)
            if state is None:
                if len(self._tasks) >= self.buffer_max:
                    self.dropped["tasks"] += 1
                    return
                state = self._tasks[task_id] = {}
            state["progress"] = progress
            state["progress_at"] = ts
            state["updated_at"] = ts
            if current_step is not None:
                state["current_step"] = current_step
            if step_index is not None:
                state["step_index"] = step_index
            if total_steps is not None:
                state["total_steps"] = total_steps
            if eta_seconds is not None:
                state["eta_seconds"] = eta_seconds
            self._seq += 1

    def progress_point(self, task_id: str, ts: float, progress: float, current_step: str | None) -> None:
        with self._lock:
            if len(self._progress) >= self.buffer_max:
                self.dropped["progress"] += 1
                return
            self._progress.append((task_id, ts, progress, current_step))
            self._seq += 1

    def log(
        self,
        task_id: str | None,
        ts: float,
        levelno: int,
        level: str,
        message: str,
        source: str | None = None,
        user_id: str | None = None,
        context: dict[str, Any] | None = None,
        traceback: str | None = None,
        attachments: list[Any] | None = None,
    ) -> None:
        with self._lock:
            n = len(self._logs)
            if n >= self.buffer_max:
                self.dropped["logs"] += 1
                return
            if n == self._early:
                self._wake.set()
            self._logs.append((task_id, ts, levelno, level, message, source, user_id, context, traceback,
                               attachments))
            self._seq += 1

    def metric(
        self,
        name: str,
        value: float,
        unit: str | None = None,
        labels: dict[str, Any] | None = None,
        task_id: str | None = None,
        task_type: str | None = None,
        user_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        with self._lock:
            n = len(self._metrics)
            if n >= self.buffer_max:
                self.dropped["metrics"] += 1
                return
            if n == self._early:
                self._wake.set()
            self._metrics.append((name, value, unit, labels, task_id, task_type, user_id,
                                  time.time() if ts is None else ts))
            self._seq += 1

    def worker(self, worker_id: str, hostname: str, pid: int, cpu: float | None, rss: int | None,
               active: list[str], processed: int = 0, started: float | None = None) -> None:
        """A heartbeat of worker process ``worker_id`` of worker ``hostname`` (its node name)."""
        now = time.time()
        # By column name: the upsert takes the table's columns in the table's order.
        beat = {"worker_id": worker_id, "hostname": hostname, "pid": pid, "heartbeat_at": _dt(now),
                "started_at": _dt(now if started is None else started), "cpu_percent": cpu, "rss_bytes": rss,
                "active": list(active), "processed": int(processed)}
        with self._lock:
            self._workers[worker_id] = beat
            self._seq += 1

    def wake(self) -> None:
        """Commit now instead of at the next interval (for terminal states)."""
        self._wake.set()

    # -- reads served from the writer's connection --------------------------------------
    def median_runtime(self, task_type: str) -> float | None:
        """Recent median run time of ``task_type`` (cached; refreshed in the background)."""
        cached = self._medians.get(task_type)
        # Refresh a known figure every minute; an unknown one (no finished runs yet) soon.
        if cached is None or time.monotonic() - cached[0] > (60 if cached[1] is not None else 2):
            self._median_wanted.add(task_type)
        return cached[1] if cached else None

    def finished_run(self, task_type: str) -> None:
        """A run of ``task_type`` finished here: refresh its median soon (at most every 5 s)."""
        cached = self._medians.get(task_type)
        if cached is None or cached[1] is None or time.monotonic() - cached[0] > 5:
            self._median_wanted.add(task_type)

    # -- synchronisation ------------------------------------------------------------------
    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            buffered = len(self._logs) + len(self._progress) + len(self._metrics) + len(self._tasks)
        return {"buffered": buffered, "dropped": dict(self.dropped), "written": dict(self.written),
                "failures": self.failures, "connected": self.connected}

    # -- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        next_tick = next_flush = time.monotonic()
        while True:
            # The interval runs from the start of the previous commit, not its end.
            wait = self._backoff.delay or max(0.0, next_flush - time.monotonic())
            self._wake.wait(wait)
            self._wake.clear()
            next_flush = time.monotonic() + self.flush_interval
            closing = self._closed
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + 1.0
                for tick in list(self.ticks):
                    try:
                        tick()
                    except Exception:
                        logger.debug("tracker tick failed", exc_info=True)
            try:
                self._flush_once()
            except Exception:
                logger.exception("tracker recorder: unexpected error")
            if closing:
                return

    def _take(self) -> tuple[int, dict[str, dict[str, Any]], list[Any], list[Any], list[Any], list[Any]]:
        with self._lock:
            seq = self._seq
            batch = (seq, self._tasks, self._logs, self._progress, self._metrics, list(self._workers.values()))
            self._tasks, self._logs, self._progress, self._metrics, self._workers = {}, [], [], [], {}
        return batch

    def _put_back(self, tasks: dict[str, dict[str, Any]], logs: list[Any], progress: list[Any],
                  metrics: list[Any]) -> None:
        """Return a failed batch to the front of the buffers, within the bound."""
        with self._lock:
            for task_id, state in tasks.items():
                newer = self._tasks.get(task_id)
                if newer is not None:
                    merge_task_state(state, newer)
                self._tasks[task_id] = state
            for name, old, attr in (("logs", logs, "_logs"), ("progress", progress, "_progress"),
                                    ("metrics", metrics, "_metrics")):
                merged = old + getattr(self, attr)
                over = len(merged) - self.buffer_max
                if over > 0:
                    self.dropped[name] += over
                    merged = merged[over:]
                setattr(self, attr, merged)

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect_writer(self.dsn)
        return self._conn

    def _flush_once(self) -> None:
        seq, tasks, logs, progress, metrics, workers = self._take()
        wanted = list(self._median_wanted)
        if not (tasks or logs or progress or metrics or workers or wanted):
            self._mark_done(seq)
            return
        try:
            conn = self._connect()
            with conn.cursor() as cur:
                self._write(cur, tasks, logs, progress, metrics, workers)
                for task_type in wanted:
                    cur.execute(MEDIAN_RUNTIME.sql, MEDIAN_RUNTIME.args(p_task_type=task_type))
                    row = cur.fetchone()
                    self._medians[task_type] = (time.monotonic(), float(row[0]) if row and row[0] is not None
                                                else None)
                    self._median_wanted.discard(task_type)
            conn.commit()
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            self._on_outage(exc)
            self._put_back(tasks, logs, progress, metrics)
            return
        except Exception as exc:
            # Bad data in one row must not poison the rest: write each kind on its own.
            logger.warning("tracker recorder: batch rejected (%s); writing it part by part", exc)
            self._rollback()
            self._write_parts(tasks, logs, progress, metrics, workers)
        if not self.connected and self.failures:
            logger.warning("tracker recorder: PostgreSQL is back; buffered records written")
        self.connected = True
        self._backoff.reset()
        self._report_drops()
        self._mark_done(seq)

    def _write(self, cur: psycopg.Cursor[Any], tasks: dict[str, dict[str, Any]], logs: list[Any],
               progress: list[Any], metrics: list[Any], workers: list[Any]) -> None:
        if tasks:
            _write_tasks(cur, tasks)
        if logs:
            with cur.copy(LOG_COPY) as cp:
                for r in logs:
                    cp.write_row((r[0], _dt(r[1]), r[2], r[3], _clean(r[4]), r[5], r[6],
                                  dumps(r[7]) if r[7] else "{}", _clean(r[8]), dumps(r[9]) if r[9] else "[]"))
        if progress:
            cur.executemany(PROGRESS_INSERT.sql, _progress_batches(progress))
        if metrics:
            with cur.copy(METRIC_COPY) as cp:
                for r in metrics:
                    cp.write_row((r[0], r[1], r[2], dumps(r[3]) if r[3] else "{}", r[4], r[5], r[6], _dt(r[7])))
        if workers:
            cur.executemany(WORKER_PROCESS_UPSERT.sql, [tuple(w[c] for c in WORKER_PROCESS_COLUMNS) for w in workers])
            # One row per worker, in a fixed order: two writers never lock rows in opposite orders.
            nodes = {w["hostname"]: (w["hostname"], w["started_at"], w["heartbeat_at"])
                     for w in sorted(workers, key=lambda w: w["heartbeat_at"])}
            cur.executemany(WORKER_NODE_BEAT.sql, [nodes[k] for k in sorted(nodes)])
        self.written["tasks"] += len(tasks)
        self.written["logs"] += len(logs)
        self.written["progress"] += len(progress)
        self.written["metrics"] += len(metrics)

    def _write_parts(self, tasks: dict[str, dict[str, Any]], logs: list[Any], progress: list[Any],
                     metrics: list[Any], workers: list[Any]) -> None:
        parts: list[tuple[str, tuple[Any, ...]]] = [
            ("tasks", ({k: v}, [], [], [], [])) for k, v in tasks.items()
        ]
        parts += [("logs", ({}, logs, [], [], [])), ("progress", ({}, [], progress, [], [])),
                  ("metrics", ({}, [], [], metrics, [])), ("workers", ({}, [], [], [], workers))]
        for kind, args in parts:
            if not any(args):
                continue
            try:
                conn = self._connect()
                with conn.cursor() as cur:
                    self._write(cur, *args)
                conn.commit()
            except Exception as exc:
                self._rollback()
                n = sum(len(a) for a in args)
                if kind in self.dropped:
                    self.dropped[kind] += n
                logger.error("tracker recorder: %d %s rejected by PostgreSQL and dropped: %s", n, kind, exc)

    def _rollback(self) -> None:
        if self._conn is not None:
            try:
                self._conn.rollback()
            except Exception:
                self._conn = None

    def _on_outage(self, exc: Exception) -> None:
        self.failures += 1
        if self.connected or self.failures == 1:
            logger.warning("tracker recorder: cannot write to PostgreSQL (%s); buffering", exc)
        self.connected = False
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
        self._backoff.failed()

    def _report_drops(self) -> None:
        total = sum(self.dropped.values())
        if total > self._reported_drops:
            logger.warning("tracker recorder: buffer bound dropped records: %s", self.dropped)
            self.metric("tracker.recorder.dropped", float(total - self._reported_drops), unit="count")
            self._reported_drops = total
