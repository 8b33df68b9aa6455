"""Query builders: every read of the store is constructed here, once.

Each function returns a SQLAlchemy Core statement; :class:`tracker.Tracker` executes it
synchronously and the webgate asynchronously, so there is no second copy of a query.
Lists use keyset pagination with an opaque cursor.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo
from sqlalchemy import (
    BigInteger,
    Column,
    Delete,
    Integer,
    Select,
    Table,
    Update,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    extract,
    false,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, JSONPATH, aggregate_order_by, distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.elements import ColumnClause, ColumnElement
from sqlalchemy.types import Double, Text

from tracker.figures import BY_NAME, FIGURE_COLUMNS, FIGURES, Figure
from tracker.models import Dashboard, Metric, Notification, ProgressBatch, Task, TaskLog, Worker, WorkerProcess
from tracker.records import GroupProgress
from tracker.status import check_status
from tracker.validation import checked, clear_error
from tracker.vocabulary import ACTIVE, STATUSES, TERMINAL, Status

__all__ = [
    "group_progress", "group_progress_summary", "GROUP_PROGRESS_CAP",
    "encode_cursor", "decode_cursor", "parse_time", "parse_bucket", "level_number",
    "task_columns", "task_by_id", "tasks", "count_tasks", "logs", "progress_history", "metrics", "metric_series",
    "stats", "notifications", "notification_stats", "log_stats", "TaskFilters",
    "MAX_LIMIT", "export_tasks", "delete_task", "delete_task_logs", "task_metrics", "status_counts",
    "throughput_series", "activity_heatmap", "notification_by_id", "mark_notification_read", "delete_notification",
    "mark_notification_unread", "undelivered_notifications",
    "dashboards", "dashboard_by_id", "insert_dashboard", "delete_dashboard", "task_counts",
    "notification_deliveries", "metric_samples_after", "max_metric_id", "finished_figures_after", "store_now",
    "QUEUE_DEPTH_METRIC", "worker_online", "count_online_workers", "workers", "queue_consumers", "recent_queues",
    "latest_queue_depths", "queue_depth_series", "glob_like", "failure_rate", "worker_heartbeat_age",
    "database_clock", "recent_median_runtime", "purge_batch", "try_advisory_lock", "advisory_unlock",
]

MAX_LIMIT = 1000
if TYPE_CHECKING:
    #: A SELECT whose row shape depends on the query.
    Stmt = Select[*tuple[Any, ...]]
else:
    Stmt = Select
_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "WARN": 30, "ERROR": 40, "CRITICAL": 50, "FATAL": 50}
_AGGS = ("avg", "sum", "min", "max", "count", "p50", "p95", "p99")
# The builders' arguments of one kind, as Python gives them (no "5" for 5, no True for 1).
_TEXT: TypeAdapter[str] = TypeAdapter(Annotated[str, Field(strict=True)])
_INT: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(strict=True)])
_BOOL: TypeAdapter[bool] = TypeAdapter(Annotated[bool, Field(strict=True)])
_LIMIT: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(strict=True, ge=1, le=MAX_LIMIT)])
_GROUP_ID: TypeAdapter[str] = TypeAdapter(Annotated[str, Field(strict=True, min_length=1, max_length=255)])
_UTC_OFFSET: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(strict=True, ge=-14 * 60, le=14 * 60)])
if TYPE_CHECKING:
    _AGG: TypeAdapter[str] = TypeAdapter(str)
else:
    _AGG = TypeAdapter(Literal[_AGGS])
_GROUPS = {"task_type": Task.task_type, "user_id": Task.user_id, "queue": Task.queue, "worker": Task.worker,
           "status": Task.status}


# -- argument checking -------------------------------------------------------------------------
def encode_cursor(*values: Any) -> str:
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, n: int) -> list[Any]:
    cursor = checked(_TEXT, cursor, "cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, TypeError):
        raise ValueError("malformed cursor") from None
    if not isinstance(values, list) or len(values) != n:
        raise ValueError("malformed cursor")
    return values


def parse_time(value: Any, name: str = "time") -> datetime | None:
    """Accept a datetime, epoch seconds, an ISO 8601 string or a relative ``-15m``/``2h``."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a datetime, epoch seconds or ISO 8601 text")
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        m = re.fullmatch(r"-?(\d+(?:\.\d+)?)([smhdw])", value.strip())
        if m:
            return datetime.now(UTC) - _duration(float(m.group(1)), m.group(2))
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name}: cannot read {value!r} as a time") from None
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    raise TypeError(f"{name} must be a datetime, epoch seconds or ISO 8601 text")


def _duration(n: float, unit: str) -> timedelta:
    return timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit])


def parse_bucket(bucket: Any) -> timedelta:
    if isinstance(bucket, timedelta):
        if bucket.total_seconds() <= 0:
            raise ValueError("bucket must be positive")
        return bucket
    if not isinstance(bucket, str):
        raise TypeError("bucket must be text such as '1m', '5m', '1h'")
    m = re.fullmatch(r"(\d+)([smhdw])", bucket.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"bad bucket {bucket!r}; use e.g. '10s', '1m', '1h', '1d'")
    return _duration(float(m.group(1)), m.group(2))


def level_number(level: Any) -> int:
    if isinstance(level, bool):
        raise TypeError("level must be a name such as 'INFO' or a number")
    if isinstance(level, int):
        return level
    if isinstance(level, str):
        if level.isdigit():
            return int(level)
        n = _LEVELS.get(level.upper())
        if n is not None:
            return n
        raise ValueError(f"unknown log level {level!r}")
    raise TypeError("level must be a name such as 'INFO' or a number")


def check_limit(limit: Any, default: int = 100) -> int:
    return default if limit is None else checked(_LIMIT, limit, "limit")


def _opt_str(name: str, value: Any) -> str | None:
    return None if value is None else checked(_TEXT, value, name)


def _in_range(q: Stmt, column: Any, since: Any, until: Any) -> Stmt:
    """``q`` limited to ``since <= column < until`` (either bound optional)."""
    t0, t1 = parse_time(since, "since"), parse_time(until, "until")
    if t0 is not None:
        q = q.where(column >= t0)
    if t1 is not None:
        q = q.where(column < t1)
    return q


def _where_eq(q: Stmt, column: Any, name: str, value: Any) -> Stmt:
    """``q`` limited to ``column == value`` when ``value`` (a string filter) is given."""
    value = _opt_str(name, value)
    return q if value is None else q.where(column == value)


# -- tasks -----------------------------------------------------------------------------------------
def task_columns() -> list[Any]:
    # The automatic figures are read as metric samples (tracker.figures), not as task fields.
    hidden = {"status_ts", "worker_pid", "progress_at", *FIGURE_COLUMNS}
    cols = [c for c in Task.__table__.c if c.name not in hidden]
    return cols


def _statuses(status: Any) -> list[str] | None:
    """One status, a comma-separated list or a sequence of them, as status values."""
    if status is None:
        return None
    if isinstance(status, (list, tuple)):
        return [check_status(s).value for s in status]
    if isinstance(status, str) and "," in status:
        return [check_status(s.strip()).value for s in status.split(",")]
    return [check_status(status).value]


def _time(value: Any, info: ValidationInfo) -> datetime | None:
    return parse_time(value, info.field_name or "time")


Filter = Annotated[str, Field(strict=True)]
When = Annotated[datetime | None, BeforeValidator(_time)]


class TaskFilters(BaseModel):
    """Validated filters shared by ``tasks``, ``count`` and exports. Built from keyword arguments;
    bad ones raise TypeError (a value of the wrong kind, an unknown filter) or ValueError."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: Filter | None = None
    status: Annotated[list[str] | None, BeforeValidator(_statuses)] = None
    task_type: Filter | None = None
    tag: Filter | None = None
    since: When = None
    until: When = None
    search: Filter | None = None
    group_id: Filter | None = None
    root_id: Filter | None = None
    parent_id: Filter | None = None

    def __init__(self, **filters: Any) -> None:
        try:
            super().__init__(**filters)
        except ValidationError as exc:
            # An unknown filter was a TypeError (an unexpected keyword argument): it stays one.
            raise clear_error(exc, also=("extra_forbidden",)) from None

    def where(self) -> list[ColumnElement[bool]]:
        w: list[ColumnElement[bool]] = []
        if self.user_id is not None:
            w.append(Task.user_id == self.user_id)
        if self.status:
            w.append(Task.status == self.status[0] if len(self.status) == 1 else Task.status.in_(self.status))
        if self.task_type is not None:
            w.append(Task.task_type == self.task_type)
        if self.tag is not None:
            w.append(Task.tags.contains(cast([self.tag], ARRAY(Text))))
        if self.since is not None:
            w.append(Task.created_at >= self.since)
        if self.until is not None:
            w.append(Task.created_at < self.until)
        if self.group_id is not None:
            w.append(Task.group_id == self.group_id)
        if self.root_id is not None:
            w.append(Task.root_id == self.root_id)
        if self.parent_id is not None:
            w.append(Task.parent_id == self.parent_id)
        if self.search:
            pattern = "%" + self.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            w.append(or_(Task.task_id.ilike(pattern), Task.name.ilike(pattern), Task.task_type.ilike(pattern),
                         Task.current_step.ilike(pattern), Task.error_message.ilike(pattern)))
        return w


def _task_select() -> Stmt:
    return select(*task_columns()).select_from(Task)


def task_by_id(task_id: str) -> Stmt:
    checked(_TEXT, task_id, "task_id")
    return _task_select().where(Task.task_id == task_id)


def tasks(filters: TaskFilters, limit: Any = None, cursor: Any = None) -> Stmt:
    """Newest first; fetches ``limit + 1`` rows so the caller can tell if there is a next page."""
    n = check_limit(limit)
    q = _task_select().where(*filters.where())
    if cursor is not None:
        created, task_id = decode_cursor(cursor, 2)
        if not isinstance(task_id, str) or not isinstance(created, str):
            raise ValueError("malformed cursor")
        created_dt = parse_time(created, "cursor")
        q = q.where(or_(Task.created_at < created_dt, and_(Task.created_at == created_dt, Task.task_id < task_id)))
    return q.order_by(Task.created_at.desc(), Task.task_id.desc()).limit(n + 1)


def task_cursor(row: Any) -> str:
    m = row._mapping if hasattr(row, "_mapping") else row
    return encode_cursor(m["created_at"], m["task_id"])


def count_tasks(filters: TaskFilters) -> Stmt:
    return select(func.count()).select_from(Task).where(*filters.where())


# -- logs ----------------------------------------------------------------------------------------------
def logs(task_id: Any = None, min_level: Any = None, search: Any = None, since: Any = None, until: Any = None,
         limit: Any = None, cursor: Any = None, user_id: Any = None, newest_first: bool = False,
         level: Any = None) -> Stmt:
    """Log lines in time order (``newest_first`` reverses it); ``search`` is full-text."""
    n = check_limit(limit)
    q = select(TaskLog.id, TaskLog.task_id, TaskLog.ts, TaskLog.level, TaskLog.message, TaskLog.source,
               TaskLog.context, TaskLog.traceback, TaskLog.attachments).select_from(TaskLog)
    q = _where_eq(q, TaskLog.task_id, "task_id", task_id)
    q = _where_eq(q, TaskLog.user_id, "user_id", user_id)
    if min_level is not None:
        q = q.where(TaskLog.levelno >= level_number(min_level))
    if level is not None:
        q = q.where(TaskLog.levelno == level_number(level))
    q = _in_range(q, TaskLog.ts, since, until)
    search = _opt_str("search", search)
    if search:
        q = q.where(TaskLog.search.op("@@")(func.websearch_to_tsquery(literal_column("'simple'"), search)))
    if cursor is not None:
        ts, log_id = decode_cursor(cursor, 2)
        if not isinstance(ts, str) or isinstance(log_id, bool) or not isinstance(log_id, int):
            raise ValueError("malformed cursor")
        ts_dt = parse_time(ts, "cursor")
        if newest_first:
            q = q.where(or_(TaskLog.ts < ts_dt, and_(TaskLog.ts == ts_dt, TaskLog.id < int(log_id))))
        else:
            q = q.where(or_(TaskLog.ts > ts_dt, and_(TaskLog.ts == ts_dt, TaskLog.id > int(log_id))))
    order = (TaskLog.ts.desc(), TaskLog.id.desc()) if newest_first else (TaskLog.ts.asc(), TaskLog.id.asc())
    return q.order_by(*order).limit(n + 1)


def log_cursor(row: Any) -> str:
    m = row._mapping if hasattr(row, "_mapping") else row
    return encode_cursor(m["ts"], m["id"])


def log_stats(task_id: Any = None, since: Any = None, until: Any = None, user_id: Any = None) -> Stmt:
    q: Stmt = select(TaskLog.level, func.count().label("count")).select_from(TaskLog)
    q = _where_eq(q, TaskLog.task_id, "task_id", task_id)
    q = _where_eq(q, TaskLog.user_id, "user_id", user_id)
    q = _in_range(q, TaskLog.ts, since, until)
    return q.group_by(TaskLog.level)


# -- progress and metrics ------------------------------------------------------------------------------
def progress_history(task_id: str, limit: int = 100_000) -> Stmt:
    """Every progress point of a task in order: ``(ts, progress, current_step)`` rows."""
    checked(_TEXT, task_id, "task_id")
    points = (func.unnest(ProgressBatch.times, ProgressBatch.vals, ProgressBatch.steps)
              .table_valued("t", "p", "s", with_ordinality="i").render_derived().lateral())
    q: Stmt = (select(func.to_timestamp(points.c.t).label("ts"), points.c.p.label("progress"),
                      points.c.s.label("current_step"))
               .select_from(ProgressBatch).join(points, true())
               .where(ProgressBatch.task_id == task_id)
               .order_by(ProgressBatch.ts, ProgressBatch.id, points.c.i).limit(limit))
    return q


def _figure_samples(fig: Figure) -> tuple[Stmt, Any]:
    """Samples of one automatic figure from the task rows, and the column giving their time."""
    ts = getattr(Task, fig.at)
    q: Stmt = select(literal(fig.name, Text).label("name"), cast(getattr(Task, fig.column), Double).label("value"),
                     literal(fig.unit, Text).label("unit"), literal_column("'{}'::jsonb").label("labels"),
                     Task.task_id, Task.task_type, Task.user_id, ts.label("ts"), literal(0, BigInteger).label("id"))
    if fig.at == "started_at":
        # While a retried task waits (pending again), the column still holds the retried run's
        # wait, which that run stored as a row: the next start replaces it.
        return q.where(Task.queue_wait.is_not(None), Task.status != "pending"), ts
    # Ended runs only (the columns are written as a run ends); this also lets the finished_at
    # range use the retention index.
    return q.where(Task.run_time.is_not(None), Task.status.in_(_FINISHED)), ts


def _samples(name: Any = None, *, task_id: Any = None, user_id: Any = None, task_type: Any = None,
             since: Any = None, until: Any = None) -> Any:
    """Every metric sample as one subquery (``name, value, unit, labels, task_id, task_type,
    user_id, ts, id``): the rows of ``tracker_metrics`` and the automatic figures of the task
    rows (:mod:`tracker.figures`). Each filter goes into each part so its indexes serve it."""
    name = _opt_str("name", name)
    task_id = _opt_str("task_id", task_id)
    user_id = _opt_str("user_id", user_id)
    task_type = _opt_str("task_type", task_type)
    t0, t1 = parse_time(since, "since"), parse_time(until, "until")

    def narrowed(q: Stmt, model: Any, ts: Any) -> Stmt:
        for column, value in ((model.task_id, task_id), (model.user_id, user_id), (model.task_type, task_type)):
            if value is not None:
                q = q.where(column == value)
        return _in_range(q, ts, t0, t1)

    rows: Stmt = select(Metric.name, Metric.value, Metric.unit, Metric.labels, Metric.task_id, Metric.task_type,
                        Metric.user_id, Metric.ts, Metric.id)
    if name is not None:
        rows = rows.where(Metric.name == name)
    parts = [narrowed(rows, Metric, Metric.ts)]
    for fig in FIGURES if name is None else [BY_NAME[name]] if name in BY_NAME else []:
        q, ts = _figure_samples(fig)
        parts.append(narrowed(q, Task, ts))
    return (parts[0] if len(parts) == 1 else union_all(*parts)).subquery("samples")


def metrics(name: Any = None, task_id: Any = None, since: Any = None, until: Any = None, limit: Any = None,
            user_id: Any = None) -> Stmt:
    n = check_limit(limit)
    s = _samples(name, task_id=task_id, user_id=user_id, since=since, until=until)
    q: Stmt = select(s.c.name, s.c.value, s.c.unit, s.c.labels, s.c.task_id, s.c.user_id, s.c.ts)
    return q.order_by(s.c.ts.desc(), s.c.id.desc()).limit(n)


def metric_series(name: Any, bucket: Any = "1m", agg: Any = "avg", since: Any = None, until: Any = None,
                  task_type: Any = None, user_id: Any = None) -> Stmt:
    """``(bucket_start, value)`` rows of one metric aggregated per time bucket."""
    if not isinstance(name, str) or not name:
        raise TypeError("metric name must be a non-empty string")
    width = parse_bucket(bucket)
    checked(_AGG, agg, "agg")
    s = _samples(name, task_type=task_type, user_id=user_id, since=since, until=until)
    start = func.date_bin(literal(width), s.c.ts, literal(datetime(2000, 1, 1, tzinfo=UTC))).label("bucket")
    value: Any
    if agg == "avg":
        value = func.avg(s.c.value)
    elif agg == "sum":
        value = func.sum(s.c.value)
    elif agg == "min":
        value = func.min(s.c.value)
    elif agg == "max":
        value = func.max(s.c.value)
    elif agg == "count":
        value = func.count()
    else:
        value = func.percentile_cont(int(agg[1:]) / 100.0).within_group(s.c.value)
    q: Stmt = select(start, value.label("value")).select_from(s)
    # Grouped by the same expression object: its parameters are the same ones, so PostgreSQL
    # sees one expression in the select list and in GROUP BY.
    return q.group_by(start).order_by(start)


# -- canvas: groups, chords and chains -----------------------------------------------------------------
#: Combined progress stays below this until every member has finished, so 100 means "all done".
GROUP_PROGRESS_CAP = 99.9
_FINISHED = tuple(s.value for s in STATUSES if s in TERMINAL)
_ALL_STATUSES = tuple(s.value for s in STATUSES)


def group_progress(group_id: str) -> Select[Any]:
    """One row: members of a group (or chord header) or chain, counted by status, with the
    sum of the unfinished members' progress. :func:`group_progress_summary` turns it into
    the combined progress.

    Members are the tasks whose ``group_id`` is ``group_id`` or, for a chain (whose tasks
    share the first task's id as ``root_id``), whose ``root_id`` is it.
    """
    checked(_GROUP_ID, group_id, "group_id")
    unfinished = Task.status.not_in(_FINISHED)
    cols: list[Any] = [func.count().label("total")]
    cols += [func.count().filter(Task.status == st).label(st) for st in _ALL_STATUSES]
    cols.append(func.coalesce(func.sum(Task.progress).filter(unfinished), 0.0).label("unfinished_progress"))
    cols.append(func.max(Task.updated_at).label("updated_at"))
    return select(*cols).select_from(Task).where(or_(Task.group_id == group_id, Task.root_id == group_id))


def group_progress_summary(group_id: str, row: Any, size: int | None = None) -> GroupProgress:
    """Combined progress of the members in ``row`` (from :func:`group_progress`).

    ``progress`` is the mean of the members' progress, a finished member (completed, failed
    or cancelled) counting 100; it is 100 exactly when every member has finished and stays
    at most :data:`GROUP_PROGRESS_CAP` before. ``size`` is the number of members expected
    (e.g. ``len(group.tasks)``): members not recorded yet then count as pending at 0 %.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError("size must be a non-negative integer")
    m = row._mapping if hasattr(row, "_mapping") else (row or {})
    known = int(m.get("total") or 0)
    counts = {st: int(m.get(st) or 0) for st in _ALL_STATUSES}
    total = max(known, size or 0)
    counts["pending"] += total - known
    finished = sum(counts[st] for st in _FINISHED)
    if total == 0:
        progress = 0.0
    elif finished == total:
        progress = 100.0
    else:
        mean = (float(m.get("unfinished_progress") or 0.0) + 100.0 * finished) / total
        progress = min(mean, GROUP_PROGRESS_CAP)
    return GroupProgress(group_id=group_id, total=total, finished=finished, done=total > 0 and finished == total,
                         progress=progress, counts=counts, updated_at=m.get("updated_at"))


# -- stats --------------------------------------------------------------------------------------------
def stats(since: Any = None, until: Any = None, group_by: Any = "task_type", user_id: Any = None) -> Stmt:
    """Per group: counts by status, success rate, p50/p95 duration and throughput per minute."""
    if group_by is not None and group_by not in _GROUPS:
        raise ValueError(f"group_by must be one of {sorted(_GROUPS)} or None")
    t0, t1 = parse_time(since, "since"), parse_time(until, "until")
    key = _GROUPS[group_by].label("group") if group_by else literal("all").label("group")
    duration = extract("epoch", Task.finished_at - Task.started_at)
    finished = Task.status.in_(_FINISHED)
    cols: list[Any] = [key, func.count().label("total")]
    for st in _ALL_STATUSES:
        cols.append(func.count().filter(Task.status == st).label(st))
    done = func.count().filter(Task.status.in_(("completed", "failed")))
    cols.append((cast(func.count().filter(Task.status == "completed"), Double) / func.nullif(done, 0))
                .label("success_rate"))
    cols.append(func.percentile_cont(0.5).within_group(duration).filter(finished).label("p50_duration"))
    cols.append(func.percentile_cont(0.95).within_group(duration).filter(finished).label("p95_duration"))
    cols.append(func.avg(duration).filter(finished).label("avg_duration"))
    lo: Any = literal(t0) if t0 is not None else func.min(Task.created_at)
    hi: Any = literal(t1) if t1 is not None else func.now()
    minutes = func.greatest(extract("epoch", hi - lo), 60.0) / 60.0
    cols.append((cast(func.count().filter(finished), Double) / minutes).label("throughput_per_min"))
    q = select(*cols).select_from(Task)
    if t0 is not None:
        q = q.where(Task.created_at >= t0)
    if t1 is not None:
        q = q.where(Task.created_at < t1)
    q = _where_eq(q, Task.user_id, "user_id", user_id)
    if group_by:
        q = q.group_by(_GROUPS[group_by]).order_by(_GROUPS[group_by])
    return q


# -- notifications ---------------------------------------------------------------------------------------
def notification_columns() -> list[Any]:
    return [c.label("metadata") if c.name == "metadata" else c for c in Notification.__table__.c
            if c.name != "dedup_key"]


def notifications(user_id: Any = None, unread: Any = None, limit: Any = None, cursor: Any = None,
                  type: Any = None, priority: Any = None) -> Stmt:
    n = check_limit(limit)
    q = select(*notification_columns())
    q = _where_eq(q, Notification.user_id, "user_id", user_id)
    if unread is not None:
        checked(_BOOL, unread, "unread")
        q = q.where(Notification.is_read == (false() if unread else true()))
    if type is not None:
        q = q.where(Notification.type == _opt_str("type", type))
    if priority is not None:
        q = q.where(Notification.priority == _opt_str("priority", priority))
    if cursor is not None:
        (last_id,) = decode_cursor(cursor, 1)
        if isinstance(last_id, bool) or not isinstance(last_id, int):
            raise ValueError("malformed cursor")
        q = q.where(Notification.id < last_id)
    return q.order_by(Notification.id.desc()).limit(n + 1)


def insert_notifications(rows: Sequence[Mapping[str, Any]]) -> Any:
    """One INSERT of all ``rows`` (column values); a ``dedup_key`` already stored is skipped (not
    returned)."""
    stmt = pg_insert(Notification).values(list(rows))
    return stmt.on_conflict_do_nothing(index_elements=["dedup_key"]).returning(
        *notification_columns(), Notification.dedup_key)


def notification_by_dedup(key: str) -> Stmt:
    return select(*notification_columns()).where(Notification.dedup_key == key)


def delivery_update(notification_id: int, channel: str, state: Mapping[str, Any]) -> Update:
    """Set one channel's delivery state; a JSONB merge inside one UPDATE, so concurrent
    updates of other channels of the same row are never lost."""
    return (update(Notification).where(Notification.id == notification_id)
            .values(delivery=Notification.delivery.op("||")(literal({channel: dict(state)}, JSONB))))


def notification_stats(user_id: Any = None) -> Stmt:
    q: Stmt = select(
        func.count().label("total"),
        func.count().filter(Notification.is_read.is_(False)).label("unread"),
        func.count().filter(Notification.priority == "urgent").label("urgent"),
        func.count().filter(Notification.priority == "high").label("high"),
    ).select_from(Notification)
    q = _where_eq(q, Notification.user_id, "user_id", user_id)
    return q


def page(rows: Sequence[Any], limit: int, cursor_of: Any) -> tuple[list[Any], str | None]:
    """Split ``limit + 1`` fetched rows into a page and the cursor of the next one."""
    rows = list(rows)
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, cursor_of(rows[-1])
    return rows, None


# -- webgate views: exports, deletes, charts, dashboards, Prometheus ------------------------------------
def export_tasks(filters: TaskFilters) -> Stmt:
    """Every task matching ``filters``, newest first, without a limit: for streamed exports."""
    return _task_select().where(*filters.where()).order_by(Task.created_at.desc(), Task.task_id.desc())


def delete_task(task_id: str) -> list[Any]:
    """Statements deleting a task with its progress history, logs and metrics (run in one transaction)."""
    checked(_TEXT, task_id, "task_id")
    return [delete(model).where(model.task_id == task_id) for model in (Task, ProgressBatch, TaskLog, Metric)]


def delete_task_logs(task_id: str) -> Any:
    checked(_TEXT, task_id, "task_id")
    return delete(TaskLog).where(TaskLog.task_id == task_id)


def task_metrics(task_id: str, name: Any = None, limit: Any = None) -> Stmt:
    """Raw samples recorded for one task, oldest first."""
    n = check_limit(limit)
    checked(_TEXT, task_id, "task_id")
    s = _samples(name, task_id=task_id)
    q: Stmt = select(s.c.name, s.c.value, s.c.unit, s.c.labels, s.c.task_id, s.c.user_id, s.c.ts)
    return q.order_by(s.c.ts, s.c.id).limit(n)


def status_counts(filters: TaskFilters) -> Stmt:
    """``(status, count)`` of the tasks matching ``filters``."""
    q: Stmt = (select(Task.status, func.count().label("count")).where(*filters.where())
               .group_by(Task.status).order_by(Task.status))
    return q


def throughput_series(bucket: Any = "5m", since: Any = None, until: Any = None, user_id: Any = None,
                      task_type: Any = None) -> Stmt:
    """``(bucket, task_type, finished, failed)``: tasks finished per time bucket and task type."""
    width = parse_bucket(bucket)
    start = func.date_bin(literal(width), Task.finished_at, literal(datetime(2000, 1, 1, tzinfo=UTC))).label("bucket")
    q = select(start, Task.task_type, func.count().label("finished"),
               func.count().filter(Task.status == "failed").label("failed"))
    q = q.where(Task.finished_at.is_not(None))
    q = _in_range(q, Task.finished_at, since, until)
    q = _where_eq(q, Task.user_id, "user_id", user_id)
    q = _where_eq(q, Task.task_type, "task_type", task_type)
    return q.group_by(start, Task.task_type).order_by(start, Task.task_type)


def activity_heatmap(since: Any = None, until: Any = None, user_id: Any = None, task_type: Any = None,
                     utc_offset_minutes: int = 0) -> Stmt:
    """``(dow, hour, count)`` of tasks created, ISO weekday (1 = Monday) x hour in the given UTC offset."""
    checked(_UTC_OFFSET, utc_offset_minutes, "utc_offset")
    local = func.timezone("UTC", Task.created_at) + literal(timedelta(minutes=utc_offset_minutes))
    dow = cast(extract("isodow", local), Integer).label("dow")
    hour = cast(extract("hour", local), Integer).label("hour")
    q: Stmt = select(dow, hour, func.count().label("count"))
    q = _in_range(q, Task.created_at, since, until)
    q = _where_eq(q, Task.user_id, "user_id", user_id)
    q = _where_eq(q, Task.task_type, "task_type", task_type)
    return q.group_by(dow, hour)


def _one_notification(stmt: Any, notification_id: Any, user_id: Any) -> Any:
    """``stmt`` limited to one notification id (an integer), and to ``user_id``'s when given."""
    checked(_INT, notification_id, "notification_id")
    return _where_eq(stmt.where(Notification.id == notification_id), Notification.user_id, "user_id", user_id)


def notification_by_id(notification_id: int, user_id: Any = None) -> Stmt:
    """One notification; with ``user_id`` only if it is that user's."""
    return _one_notification(select(*notification_columns()), notification_id, user_id)


def mark_notification_read(notification_id: int, user_id: Any = None) -> Any:
    """Mark read (keeping the first read time); returns the updated row."""
    stmt = _one_notification(update(Notification), notification_id, user_id)
    stmt = stmt.values(is_read=True, read_at=func.coalesce(Notification.read_at, func.now()))
    return stmt.returning(*notification_columns())


def mark_notification_unread(notification_id: int, user_id: Any = None) -> Any:
    """Mark unread again; returns the updated row."""
    stmt = _one_notification(update(Notification), notification_id, user_id)
    return stmt.values(is_read=False, read_at=None).returning(*notification_columns())


def delete_notification(notification_id: int, user_id: Any = None) -> Any:
    """Delete one notification (only ``user_id``'s when given); returns its id when one matched."""
    return _one_notification(delete(Notification), notification_id, user_id).returning(Notification.id)


def undelivered_notifications(created_after: datetime, created_before: datetime, limit: int = 500) -> Stmt:
    """``(id, delivery)`` of notifications with a channel still pending or retrying: the notifier
    queues them again when their entry in Redis was lost (a crash between storing and queueing)."""
    waiting: Any = literal_column("""'$.* ? (@.status == "pending" || @.status == "retrying")'""")
    q: Stmt = select(Notification.id, Notification.delivery)
    return (q.where(Notification.created_at >= created_after, Notification.created_at < created_before,
                    func.jsonb_path_exists(Notification.delivery, cast(waiting, JSONPATH)))
            .order_by(Notification.id).limit(limit))


def dashboard_columns() -> list[Any]:
    return list(Dashboard.__table__.c)


def dashboards(user_id: Any = None, limit: Any = None, cursor: Any = None) -> Stmt:
    n = check_limit(limit)
    q = select(*dashboard_columns())
    q = _where_eq(q, Dashboard.user_id, "user_id", user_id)
    if cursor is not None:
        (last_id,) = decode_cursor(cursor, 1)
        if isinstance(last_id, bool) or not isinstance(last_id, int):
            raise ValueError("malformed cursor")
        q = q.where(Dashboard.id < last_id)
    return q.order_by(Dashboard.id.desc()).limit(n + 1)


def dashboard_by_id(dashboard_id: int) -> Stmt:
    checked(_INT, dashboard_id, "dashboard_id")
    return select(*dashboard_columns()).where(Dashboard.id == dashboard_id)


def insert_dashboard(user_id: str | None, name: str, widgets: list[Any]) -> Any:
    return insert(Dashboard).values(user_id=user_id, name=name, widgets=widgets).returning(*dashboard_columns())


def delete_dashboard(dashboard_id: int) -> Any:
    checked(_INT, dashboard_id, "dashboard_id")
    return delete(Dashboard).where(Dashboard.id == dashboard_id).returning(Dashboard.id)


def task_counts() -> Stmt:
    """``(task_type, status, count)`` over the whole store, for Prometheus gauges."""
    q: Stmt = select(Task.task_type, Task.status, func.count().label("count"))
    return q.group_by(Task.task_type, Task.status)


def notification_deliveries() -> Stmt:
    """``(channel, status, count)`` of notification deliveries (the ``delivery`` JSON of each row)."""
    entry = func.jsonb_each(Notification.delivery).table_valued("key", "value").render_derived("d")
    status = entry.c.value.op("->>")(literal_column("'status'"))
    return (select(entry.c.key.label("channel"), status.label("status"), func.count().label("count"))
            .select_from(Notification).join(entry, true())
            .where(func.jsonb_typeof(Notification.delivery) == "object")
            .group_by(entry.c.key, status))


def metric_samples_after(names: Sequence[str], after_id: int, limit: int = 10_000) -> Stmt:
    """``(id, name, value, task_type)`` of samples newer than ``after_id``, for Prometheus histograms."""
    q: Stmt = select(Metric.id, Metric.name, Metric.value, Metric.task_type)
    return q.where(Metric.id > after_id, Metric.name.in_(list(names))).order_by(Metric.id).limit(limit)


def max_metric_id() -> Stmt:
    return select(func.coalesce(func.max(Metric.id), 0))


def finished_figures_after(after: datetime, limit: int = 10_000) -> Stmt:
    """``(task_id, task_type, run_time, queue_wait, finished_at)`` of runs that ended after
    ``after``, oldest first: the automatic figures kept in task rows, for Prometheus histograms."""
    q: Stmt = select(Task.task_id, Task.task_type, Task.run_time, Task.queue_wait, Task.finished_at)
    q = q.where(Task.status.in_(_FINISHED), Task.finished_at > after, Task.run_time.is_not(None))
    return q.order_by(Task.finished_at).limit(limit)


def store_now() -> Stmt:
    return select(func.now())


# -- workers and queues -----------------------------------------------------------------------------------
#: Name and label of the stored queue-depth samples (the gateway's sampler writes them).
QUEUE_DEPTH_METRIC = "tracker.queue.depth"


def _lost_cutoff(worker_lost_after: Any) -> Any:
    if isinstance(worker_lost_after, bool) or not isinstance(worker_lost_after, (int, float)) \
            or not worker_lost_after > 0:
        raise ValueError(f"worker_lost_after must be a positive number of seconds, got {worker_lost_after!r}")
    return func.now() - timedelta(seconds=float(worker_lost_after))


def worker_online(worker_lost_after: float) -> ColumnElement[bool]:
    """A worker is online while it has not stopped gracefully and heartbeats within ``worker_lost_after``."""
    return and_(Worker.stopped_at.is_(None), Worker.heartbeat_at > _lost_cutoff(worker_lost_after))


def count_online_workers(worker_lost_after: float, queues: Sequence[str] | None = None) -> Stmt:
    """How many workers are online (optionally: consuming one of ``queues``)."""
    q: Stmt = select(func.count()).select_from(Worker).where(worker_online(worker_lost_after))
    if queues:
        q = q.where(Worker.queues.overlap(cast(list(queues), ARRAY(Text))))
    return q


def workers(worker_lost_after: float, hostname: Any = None, status: Any = None) -> Stmt:
    """Worker records, online first: the worker row plus what its processes' heartbeats say.

    The load (CPU, RSS) sums the processes of the worker's current run that heartbeated
    within ``worker_lost_after`` of its last heartbeat (so an offline worker shows its last
    known load); ``processed`` sums its current run's processes; ``active`` lists the tasks
    its processes run, and is empty once it is offline.
    """
    online = worker_online(worker_lost_after)
    p = WorkerProcess
    run = and_(p.hostname == Worker.hostname, p.started_at >= Worker.started_at)
    recent = and_(run, p.heartbeat_at > Worker.heartbeat_at - timedelta(seconds=float(worker_lost_after)))
    ids = func.unnest(p.active).table_valued("task_id").render_derived("a")
    task_id = ids.c.task_id
    active = (select(func.coalesce(func.array_agg(aggregate_order_by(task_id, task_id)), cast([], ARRAY(Text))))
              .select_from(p).join(ids, true()).where(recent, online).scalar_subquery())
    status_col = case((online, "online"), else_="offline")
    q: Stmt = select(
        Worker.hostname, status_col.label("status"), Worker.pid, Worker.concurrency,
        active.label("active"),
        select(func.coalesce(func.sum(p.processed), 0)).where(run).scalar_subquery().label("processed"),
        select(func.sum(p.cpu_percent)).where(recent).scalar_subquery().label("cpu_percent"),
        select(func.sum(p.rss_bytes)).where(recent).scalar_subquery().label("rss_bytes"),
        Worker.heartbeat_at.label("last_heartbeat"), Worker.started_at, Worker.stopped_at, Worker.queues,
    )
    q = _where_eq(q, Worker.hostname, "hostname", hostname)
    if status is not None:
        if status not in ("online", "offline"):
            raise ValueError("status must be 'online' or 'offline'")
        q = q.where(online if status == "online" else ~online)
    return q.order_by(status_col.desc(), Worker.hostname).limit(MAX_LIMIT)


def queue_consumers(worker_lost_after: float) -> Stmt:
    """``(queue, consumers)``: how many online workers read each queue."""
    name = func.unnest(Worker.queues).label("queue")
    inner = select(name).where(worker_online(worker_lost_after)).subquery()
    q: Stmt = select(inner.c.queue, func.count().label("consumers")).group_by(inner.c.queue)
    return q


def recent_queues(within_seconds: float = 3600.0, limit: int = 200) -> Stmt:
    """Queues that tasks created in the last ``within_seconds`` were published to."""
    recent = select(Task.queue).where(Task.created_at > func.now() - timedelta(seconds=within_seconds),
                                      Task.queue.is_not(None)).subquery()
    q: Stmt = select(recent.c.queue).distinct().limit(limit)
    return q


def latest_queue_depths(within_seconds: float = 300.0) -> Stmt:
    """``(queue, depth, ts)``: the newest stored depth sample of each queue, among the samples of the
    last ``within_seconds`` (an older one says nothing about the queue now)."""
    queue = Metric.labels.op("->>")(literal_column("'queue'"))
    q: Stmt = (select(queue.label("queue"), Metric.value.label("depth"), Metric.ts)
               .where(Metric.name == QUEUE_DEPTH_METRIC, Metric.ts > _seconds_ago(within_seconds), queue.is_not(None))
               .ext(distinct_on(queue)).order_by(queue, Metric.ts.desc()))
    return q


def queue_depth_series(bucket: Any = "1m", since: Any = None, until: Any = None) -> Stmt:
    """``(bucket, queue, depth)``: the largest depth sampled per queue and time bucket."""
    width = parse_bucket(bucket)
    start = func.date_bin(literal(width), Metric.ts, literal(datetime(2000, 1, 1, tzinfo=UTC))).label("bucket")
    queue = Metric.labels.op("->>")(literal_column("'queue'"))
    q: Stmt = select(start, queue.label("queue"), func.max(Metric.value).label("depth"))
    q = _in_range(q.where(Metric.name == QUEUE_DEPTH_METRIC), Metric.ts, since, until)
    return q.group_by(start, queue).order_by(start, queue)


# -- aggregate measurements (alert rules) ----------------------------------------------------------------
def _seconds_ago(seconds: float) -> Any:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"a positive number of seconds is needed, got {seconds!r}")
    return func.now() - timedelta(seconds=float(seconds))


def glob_like(pattern: str) -> str:
    """A ``*``/``?`` wildcard pattern (as rules write them) as a LIKE pattern with ``\\`` escapes."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _matching(column: Any, patterns: Sequence[str]) -> ColumnElement[bool]:
    return or_(*(column.like(glob_like(p), escape="\\") for p in patterns))


def failure_rate(window: float, task_types: Sequence[str] = (), queues: Sequence[str] = ()) -> Stmt:
    """One row ``(finished, failed)``: tasks that finished (completed, failed or cancelled) in the
    last ``window`` seconds, of the given task types and queues (``*``/``?`` wildcards), and how
    many of them failed. Time is the database's, the same for every gateway."""
    stmt: Stmt = select(func.count().label("finished"), func.count().filter(Task.status == "failed").label("failed"))
    stmt = stmt.select_from(Task).where(Task.status.in_(_FINISHED), Task.finished_at >= _seconds_ago(window))
    if task_types:
        stmt = stmt.where(_matching(Task.task_type, task_types))
    if queues:
        stmt = stmt.where(_matching(Task.queue, queues))
    return stmt


def worker_heartbeat_age() -> Stmt:
    """One row ``(age, now)``: seconds since the newest worker heartbeat (``None`` when no worker
    was ever seen) and the database's clock as epoch seconds."""
    return select(extract("epoch", func.now() - func.max(Worker.heartbeat_at)).label("age"),
                  extract("epoch", func.now()).label("now"))


def database_clock() -> Stmt:
    """The database's clock as epoch seconds: one time base for every gateway."""
    return select(extract("epoch", func.now()).label("now"))


def recent_median_runtime(task_type: Any, recent: int = 50) -> Stmt:
    """The median run time (seconds) of the ``recent`` latest completed runs of ``task_type``
    (through ``ix_tracker_tasks_finished``); one row, NULL before any run finished."""
    runs = (select(Task.started_at, Task.finished_at)
            .where(Task.task_type == task_type, Task.status == Status.COMPLETED.value,
                   Task.started_at.is_not(None), Task.finished_at.is_not(None))
            .order_by(Task.finished_at.desc()).limit(recent).subquery("r"))
    return select(func.percentile_cont(0.5).within_group(extract("epoch", runs.c.finished_at - runs.c.started_at)))


# -- retention ----------------------------------------------------------------------------------------------
def purge_batch(table: Table, column: Column[Any], condition: ColumnElement[bool] | None = None) -> Delete:
    """Delete the oldest ``:n`` rows of ``table`` whose ``column`` is before ``:cutoff`` (and that
    meet ``condition``).

    Rows are picked through the time index and deleted by ``ctid`` (no second lookup); the
    result's rowcount is the batch's size.
    """
    ctid: ColumnClause[Any] = literal_column("ctid")
    where = column < bindparam("cutoff")
    oldest = (select(ctid).select_from(table).where(where if condition is None else and_(condition, where))
              .order_by(column).limit(bindparam("n", type_=Integer)))
    return delete(table).where(ctid == any_(func.array(oldest.scalar_subquery())))


def try_advisory_lock(key: int) -> Stmt:
    """One row: whether this session took the advisory lock ``key`` (never waits)."""
    return select(func.pg_try_advisory_lock(literal(key, BigInteger)))


def advisory_unlock(key: int) -> Stmt:
    return select(func.pg_advisory_unlock(literal(key, BigInteger)))


# -- the health sweep ---------------------------------------------------------------------------------------
_ACTIVE = tuple(s.value for s in STATUSES if s in ACTIVE)


def _window(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def try_advisory_xact_lock(key: int) -> Stmt:
    """Try the transaction-level advisory lock ``key``; released by the transaction's end."""
    return select(func.pg_try_advisory_xact_lock(literal(key)))


def mark_lost_tasks(worker_lost_after: float) -> Update:
    """Mark tasks whose worker stopped heartbeating ``failed``/``worker-lost``; returns them.

    Only tasks that ran on a Celery worker (``worker_pid`` set) heartbeat; tasks reported
    through the REST API do not and are never taken for lost. The predicate matches the
    partial index on active tasks' ``heartbeat_at``.
    """
    after = _window("worker_lost_after", worker_lost_after)
    cutoff = func.now() - timedelta(seconds=after)
    message = f"worker lost: no heartbeat for more than {after:g} s (process killed or host down)"
    return (
        update(Task)
        .where(Task.status.in_(_ACTIVE), Task.worker_pid.is_not(None), Task.heartbeat_at < cutoff)
        .values(status=Status.FAILED.value, status_ts=func.extract("epoch", func.now()), error_type="worker-lost",
                error_message=message, finished_at=func.now(), updated_at=func.now(), eta_seconds=0.0)
        .returning(Task.task_id, Task.user_id, Task.name, Task.task_type, Task.progress, Task.current_step,
                   Task.worker, Task.started_at, Task.finished_at, Task.heartbeat_at, Task.error_type,
                   Task.error_message, Task.retries)
    )


def flag_stalled_tasks(stall_after: float) -> Update:
    """Flag running tasks without progress for ``stall_after``; returns the newly flagged ones.

    ``stalled_at`` is set once per stall: a task is flagged again only after it made
    progress since it was last flagged.
    """
    after = _window("stall_after", stall_after)
    last_move = func.coalesce(Task.progress_at, Task.started_at)
    return (
        update(Task)
        .where(Task.status == Status.RUNNING.value, last_move < func.now() - timedelta(seconds=after),
               (Task.stalled_at.is_(None)) | (Task.stalled_at < last_move))
        .values(stalled_at=func.now())
        .returning(Task.task_id, Task.user_id, Task.name, Task.task_type, Task.progress, Task.current_step,
                   Task.worker, Task.started_at, Task.stalled_at, last_move.label("last_progress_at"))
    )


def task_flag_states(task_ids: Sequence[str]) -> Stmt:
    """``(task_id, status, started_at)`` of ``task_ids``: whose control flag may go."""
    return select(Task.task_id, Task.status, Task.started_at).where(Task.task_id.in_(list(task_ids)))
