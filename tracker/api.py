"""``Tracker``: the queryable Python API over the store and the live stream."""

from __future__ import annotations

import csv
import io
import itertools
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, TypeVar

import redis
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import Row

from tracker import control
from tracker import queries as q
from tracker import queues as broker_queues
from tracker.arguments import new_task
from tracker.bus import EventBus
from tracker.config import TrackerConfig, sqlalchemy_url
from tracker.events import Event, decode
from tracker.jsonsafe import dumps as strict_dumps
from tracker.recorder import Recorder
from tracker.records import (
    GroupProgress,
    LogRecord,
    MetricRecord,
    NotificationRecord,
    ProgressPoint,
    QueueRecord,
    QueueReport,
    TaskRecord,
    WorkerRecord,
    notification_record,
    task_record,
    to_jsonable,
)
from tracker.redaction import redactor_for
from tracker.reporter import Reporter
from tracker.status import Status, check_progress, check_status

if TYPE_CHECKING:  # Celery only as the type of an app
    from celery import Celery

# task_record is re-exported: the gateway maps task rows through ``tracker.api.task_record``.
__all__ = ["Tracker", "Page", "EXPORT_FIELDS", "ExportEncoder", "export_chunks", "task_record"]

R = TypeVar("R")

EXPORT_FIELDS = [f for f in TaskRecord.__dataclass_fields__]


class Page(list[R]):
    """A list of records with the cursor of the next page (``None`` on the last one)."""

    next_cursor: str | None = None

    def __init__(self, items: list[R], next_cursor: str | None = None) -> None:
        super().__init__(items)
        self.next_cursor = next_cursor


class Tracker:
    """Query and control tracked tasks.

    ``Tracker.from_celery(app)`` reads the app's ``tracker_*`` settings;
    ``Tracker(database_url=..., redis_url=...)`` works without Celery. Records returned
    are immutable and detached from any database session.
    """

    def __init__(self, database_url: str | None = None, redis_url: str | None = None, *,
                 config: TrackerConfig | None = None, app: Any = None) -> None:
        base = config or (TrackerConfig.from_celery(app) if app is not None else TrackerConfig.from_env())
        overrides: dict[str, Any] = {}
        if database_url:
            overrides["database_url"] = database_url
        if redis_url:
            overrides["redis_url"] = redis_url
        if overrides:
            base = base.replace(**overrides)
        self.config = base
        self.app = app
        self._engine: Engine | None = None
        self._redis: redis.Redis | None = None
        self._reporter: Reporter | None = None

    @classmethod
    def from_celery(cls, app: Celery) -> Tracker:
        return cls(app=app)

    # -- connections -----------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(sqlalchemy_url(self.config.require_database()), pool_pre_ping=True,
                                         pool_size=5, max_overflow=5)
        return self._engine

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.config.require_redis(), socket_connect_timeout=3)
        return self._redis

    @property
    def reporter(self) -> Reporter:
        """Writer used by the producer-side methods (``create_task`` and friends)."""
        if self._reporter is None:
            cfg = self.config
            recorder = Recorder(cfg.require_database(), flush_interval=cfg.flush_interval,
                                buffer_max=cfg.buffer_max)
            bus = EventBus(cfg.redis_url, prefix=cfg.prefix, maxlen=cfg.stream_maxlen,
                           progress_interval=cfg.progress_interval) if cfg.redis_url else None
            self._reporter = Reporter(recorder, bus, redactor_for(cfg))
        return self._reporter

    def close(self) -> None:
        if self._reporter is not None:
            self._reporter.close()
            self._reporter = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _all(self, stmt: Any) -> list[Row[Any]]:
        with self.engine.connect() as conn:
            return list(conn.execute(stmt))

    # -- workers and queues ------------------------------------------------------------------------
    def workers(self, status: str | None = None) -> list[WorkerRecord]:
        """Every worker seen (kept after it stopped), online first; ``status`` 'online' or 'offline'."""
        return [WorkerRecord.from_row(r) for r in self._all(q.workers(self.config.worker_lost_after, status=status))]

    def worker(self, hostname: str) -> WorkerRecord | None:
        """One worker by its node name (``-n``, e.g. ``w1@host``)."""
        rows = self._all(q.workers(self.config.worker_lost_after, hostname=hostname))
        return WorkerRecord.from_row(rows[0]) if rows else None

    def queues(self) -> QueueReport:
        """Broker queues and their depth.

        With the Celery app (``Tracker.from_celery(app)``) they are measured now, in one
        pipelined round trip, for the queues of the app's configuration, of recent tasks and of
        online workers. Without it, the latest depths a gateway sampled are returned (or none,
        with the ``reason``).
        """
        lost_after = self.config.worker_lost_after
        consumers = {r.queue: int(r.consumers) for r in self._all(q.queue_consumers(lost_after))}
        if self.app is None:
            rows = self._all(q.latest_queue_depths())
            items = [QueueRecord(r.queue, int(r.depth), consumers.get(r.queue, 0)) for r in rows if r.queue]
            sampled = max((r.ts for r in rows), default=None)
            return QueueReport(items, None if items else broker_queues.NO_APP_REASON, sampled)
        url, reason = broker_queues.broker_url(self.app)
        if url is None:
            return QueueReport([], reason)
        names = {*broker_queues.app_queues(self.app), *consumers, *(r.queue for r in self._all(q.recent_queues()))}
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        try:
            measured = broker_queues.measure_sync(client, names)
        finally:
            client.close()
        return QueueReport([QueueRecord(n, d, consumers.get(n, 0), age) for n, d, age in measured], None,
                           datetime.now(UTC))

    # -- tasks -----------------------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord | None:
        rows = self._all(q.task_by_id(task_id))
        return task_record(rows[0]) if rows else None

    def tasks(self, *, user_id: str | None = None, status: str | list[str] | None = None,
              task_type: str | None = None, tag: str | None = None, since: Any = None, until: Any = None,
              search: str | None = None, limit: int | None = 100, cursor: str | None = None,
              group_id: str | None = None, root_id: str | None = None) -> Page[TaskRecord]:
        """Newest first. Pass ``cursor=page.next_cursor`` for the next page."""
        filters = q.TaskFilters(user_id=user_id, status=status, task_type=task_type, tag=tag, since=since,
                                until=until, search=search, group_id=group_id, root_id=root_id)
        n = q.check_limit(limit)
        rows, nxt = q.page(self._all(q.tasks(filters, n, cursor)), n, q.task_cursor)
        return Page([task_record(r) for r in rows], nxt)

    def count(self, **filters: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(q.count_tasks(q.TaskFilters(**filters))).scalar_one())

    def progress_history(self, task_id: str) -> list[ProgressPoint]:
        return [ProgressPoint.from_row(r) for r in self._all(q.progress_history(task_id))]

    # -- logs and metrics ------------------------------------------------------------------------
    def logs(self, *, task_id: str | None = None, min_level: Any = None, search: str | None = None,
             since: Any = None, until: Any = None, limit: int | None = 100, cursor: str | None = None,
             user_id: str | None = None, newest_first: bool = False) -> Page[LogRecord]:
        """Log lines in time order; ``search`` is full-text over the message."""
        n = q.check_limit(limit)
        stmt = q.logs(task_id=task_id, min_level=min_level, search=search, since=since, until=until, limit=n,
                      cursor=cursor, user_id=user_id, newest_first=newest_first)
        rows, nxt = q.page(self._all(stmt), n, q.log_cursor)
        return Page([LogRecord.from_row(r) for r in rows], nxt)

    def metrics(self, *, name: str | None = None, task_id: str | None = None, since: Any = None,
                until: Any = None, limit: int | None = 100) -> list[MetricRecord]:
        stmt = q.metrics(name=name, task_id=task_id, since=since, until=until, limit=limit)
        return [MetricRecord.from_row(r) for r in self._all(stmt)]

    def metric_series(self, name: str, bucket: str = "1m", agg: str = "avg", since: Any = None,
                      until: Any = None, task_type: str | None = None) -> list[tuple[datetime, float]]:
        stmt = q.metric_series(name, bucket=bucket, agg=agg, since=since, until=until, task_type=task_type)
        return [(r.bucket, float(r.value)) for r in self._all(stmt)]

    def stats(self, since: Any = None, until: Any = None, group_by: str | None = "task_type",
              user_id: str | None = None) -> dict[str, Any]:
        """Counts by status, success rate, p50/p95 duration (s) and throughput (finished/min)."""
        groups = [dict(r._mapping) for r in self._all(q.stats(since, until, group_by, user_id))] if group_by else []
        overall = [dict(r._mapping) for r in self._all(q.stats(since, until, None, user_id))]
        total = overall[0] if overall else {}
        total.pop("group", None)
        return {"group_by": group_by, "groups": groups, "overall": total}

    # -- notifications ---------------------------------------------------------------------------
    def notifications(self, user_id: str | None = None, unread: bool | None = None, limit: int | None = 100,
                      cursor: str | None = None) -> Page[NotificationRecord]:
        n = q.check_limit(limit)
        rows, nxt = q.page(self._all(q.notifications(user_id=user_id, unread=unread, limit=n, cursor=cursor)), n,
                           lambda r: q.encode_cursor(r.id))
        return Page([NotificationRecord.from_row(r) for r in rows], nxt)

    def mark_read(self, notification_id: int, user_id: str | None = None) -> bool:
        """Mark a notification read (only ``user_id``'s when given); False if there is none."""
        with self.engine.begin() as conn:
            return conn.execute(q.mark_notification_read(notification_id, user_id)).first() is not None

    def mark_unread(self, notification_id: int, user_id: str | None = None) -> bool:
        """Mark a notification unread again (only ``user_id``'s when given); False if there is none."""
        with self.engine.begin() as conn:
            return conn.execute(q.mark_notification_unread(notification_id, user_id)).first() is not None

    def notification(self, notification_id: int, user_id: str | None = None) -> NotificationRecord | None:
        """One notification; ``None`` if there is none or (with ``user_id``) it is another user's."""
        rows = self._all(q.notification_by_id(notification_id, user_id))
        return notification_record(rows[0]) if rows else None

    def delete_notification(self, notification_id: int, user_id: str | None = None) -> bool:
        """Delete a notification (only ``user_id``'s when given); False if there is none."""
        with self.engine.begin() as conn:
            return conn.execute(q.delete_notification(notification_id, user_id)).first() is not None

    def notification_stats(self, user_id: str | None = None) -> dict[str, Any]:
        """``total``, ``unread``, ``urgent`` and ``high`` counts."""
        rows = self._all(q.notification_stats(user_id))
        return dict(rows[0]._mapping) if rows else {"total": 0, "unread": 0, "urgent": 0, "high": 0}

    def notify(self, user_id: str | None, title: str, message: str = "", type: str = "info",
               priority: str = "normal", channels: Any = ("websocket",), task_id: str | None = None,
               action_url: str | None = None, metadata: dict[str, Any] | None = None,
               dedup_key: str | None = None) -> NotificationRecord:
        """Create a notification for ``user_id`` (from task code or an app): stored now, delivered
        on ``channels`` (websocket, email, slack, webhook) by a running gateway's notifier.
        A ``dedup_key`` already used returns the notification stored under it."""
        return self.notify_many([{"user_id": user_id, "title": title, "message": message, "type": type,
                                  "priority": priority, "channels": channels, "task_id": task_id,
                                  "action_url": action_url, "metadata": metadata, "dedup_key": dedup_key}])[0]

    def notify_many(self, items: Any) -> list[NotificationRecord]:
        """Create many notifications (dicts of :meth:`notify`'s arguments) in one transaction:
        all are validated first, so bad input raises ValueError/TypeError and stores nothing."""
        from tracker import notify as nt

        checked = nt.check_notifications(items)
        return nt.create_notifications(self.engine, self.redis, self.config.prefix, checked)

    # -- control -----------------------------------------------------------------------------------
    def _apply(self, task_id: str, action: str, terminate: bool = False) -> bool:
        plan = control.apply_sync(self.redis, self.config.prefix, self._require(task_id), action,
                                  reporter=self.reporter, celery_app=self.app, terminate=terminate)
        if plan.mark_cancelled:
            self.reporter.flush(5)
        return plan.allowed

    def pause(self, task_id: str) -> bool:
        """Ask a running ``TrackedTask`` to pause at its next progress()/checkpoint().

        Returns False when the task has already finished; raises KeyError for an unknown id.
        """
        return self._apply(task_id, "pause")

    def resume(self, task_id: str) -> bool:
        return self._apply(task_id, "resume")

    def cancel(self, task_id: str, terminate: bool = False) -> bool:
        """Cancel a task: a queued one never runs (it is revoked when the Tracker knows the
        Celery app), a running ``TrackedTask`` stops at its next progress()/checkpoint();
        ``terminate=True`` also kills it through Celery."""
        if terminate and self.app is None:
            raise ValueError("terminate=True needs the Celery app: use Tracker.from_celery(app)")
        return self._apply(task_id, "cancel", terminate)

    def rerun(self, task_id: str) -> str:
        """Publish ``task_id``'s task again with its stored arguments, on its original queue and
        for its original user; returns the new task's id (its record has ``rerun_of``).

        Needs the Celery app (``Tracker.from_celery(app)``). Raises KeyError for an unknown id and
        :class:`tracker.rerun.NotRerunnable` when the arguments were redacted or not stored, or the
        app does not know the task's name.
        """
        from tracker.rerun import publish_rerun

        if self.app is None:
            raise ValueError("rerun() needs the Celery app: use Tracker.from_celery(app)")
        new_id = publish_rerun(self.app, self._require(task_id), self.reporter)
        self.reporter.flush(5)
        return new_id

    def group_progress(self, group_id: str, size: int | None = None) -> GroupProgress:
        """Combined progress of a group, chord header or chain (pass the chain's first task id).

        Returns a :class:`GroupProgress` (``group_id``, ``total``, ``finished``, ``done``, ``progress``,
        ``counts``, ``updated_at``; ``to_dict()`` gives them as JSON):
        ``progress`` is the mean of the members' progress (finished members count 100) and
        is 100 exactly when all have finished; ``counts`` maps each status to its count.
        Give ``size`` (the number of members) so members not recorded yet count as pending.
        """
        stmt = q.group_progress(group_id)
        rows = self._all(stmt)
        return q.group_progress_summary(group_id, rows[0] if rows else None, size)

    def _require(self, task_id: str) -> TaskRecord:
        record = self.get(task_id)
        if record is None:
            raise KeyError(f"no task {task_id!r}")
        return record

    # -- writes for non-Celery producers ------------------------------------------------------------
    def create_task(self, task_id: str | None = None, *, user_id: str | None = None, task_type: str | None = None,
                    task_name: str | None = None, progress: float = 0.0, status: str = "pending",
                    total_steps: int | None = None, metadata: dict[str, Any] | None = None,
                    tags: list[str] | None = None) -> str:
        """Record a task that does not run on Celery; returns its id."""
        args = new_task(task_id=task_id or str(uuid.uuid4()), user_id=user_id, task_type=task_type,
                        task_name=task_name, progress=progress, status=status, total_steps=total_steps,
                        metadata=metadata, tags=tags)
        task_id, st, pct = args.task_id, Status(args.status), args.progress
        name = task_name or task_type
        now = time.time()
        self.reporter.pending(task_id, user_id=user_id, name=name, task_type=task_type or name, tags=tags,
                              publisher=False, metadata=metadata, total_steps=total_steps, progress=pct, ts=now)
        if st is not Status.PENDING:
            extra: dict[str, Any] = {"started_at": now} if st is Status.RUNNING else {}
            self.reporter.status(task_id, st.value, user_id=user_id, ts=now + 1e-6, progress=pct, name=name,
                                 task_type=task_type or name, **extra)
        return task_id

    def update_progress(self, task_id: str, progress: float, *, current_step: str | None = None,
                        step_index: int | None = None, total_steps: int | None = None,
                        message: str | None = None, user_id: str | None = None) -> None:
        pct = check_progress(progress)
        self.reporter.progress(task_id, user_id, pct, current_step=current_step, step_index=step_index,
                               total_steps=total_steps, message=message)

    def set_status(self, task_id: str, status: str, *, user_id: str | None = None, **fields: Any) -> None:
        st = check_status(status)
        self.reporter.status(task_id, st.value, user_id=user_id, **fields)

    def complete(self, task_id: str, result: Any = None, user_id: str | None = None) -> None:
        self.reporter.status(task_id, "completed", user_id=user_id, progress=100.0, result=to_jsonable(result))

    def fail(self, task_id: str, error_message: str, error_type: str = "error", user_id: str | None = None) -> None:
        self.reporter.status(task_id, "failed", user_id=user_id, error_type=error_type, error_message=error_message)

    def add_log(self, task_id: str | None, level: str | int, message: str, *, source: str | None = None,
                context: dict[str, Any] | None = None, user_id: str | None = None) -> None:
        levelno = q.level_number(level)
        if not isinstance(message, str):
            raise TypeError("message must be a string")
        self.reporter.log(task_id, levelno, message, user_id=user_id, source=source, context=context)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the producer-side writes above are stored and published."""
        return self._reporter.flush(timeout) if self._reporter is not None else True

    def delete(self, task_id: str) -> bool:
        """Delete a task with its progress history, logs and metrics."""
        with self.engine.begin() as conn:
            first, *rest = q.delete_task(task_id)
            n = conn.execute(first).rowcount
            for stmt in rest:
                conn.execute(stmt)
        return bool(n)

    # -- export and watch ----------------------------------------------------------------------------
    def iter_tasks(self, batch: int = 1000, **filters: Any) -> Iterator[TaskRecord]:
        """All tasks matching ``filters``, streamed with a server-side cursor."""
        f = q.TaskFilters(**filters)
        stmt = q.export_tasks(f)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
            for row in result:
                yield task_record(row)

    def export(self, fmt: str = "csv", out: IO[str] | None = None, **filters: Any) -> str | None:
        """Write matching tasks as CSV or JSON to ``out`` (returns the text when ``out`` is None)."""
        if fmt not in ("csv", "json"):
            raise ValueError("fmt must be 'csv' or 'json'")
        sink = out if out is not None else io.StringIO()
        for chunk in export_chunks(self.iter_tasks(**filters), fmt):
            sink.write(chunk)
        return sink.getvalue() if out is None and isinstance(sink, io.StringIO) else None

    def watch(self, task_id: str | None = None, user_id: str | None = None, since: str = "$",
              timeout: float | None = None, block_ms: int = 1000) -> Iterator[Event]:
        """Iterate live events from the stream (optionally of one task or user).

        ``since`` is a stream id to resume after ("$" means only new events, "0" everything
        the stream keeps). Stops after ``timeout`` seconds without an event if given.
        """
        last = since
        if last == "$":
            key = self.config.stream_key
            info = self.redis.xinfo_stream(key) if self.redis.exists(key) else None
            last = info["last-generated-id"] if info else "0-0"
            if isinstance(last, bytes):
                last = last.decode()
        idle_since = time.monotonic()
        while True:
            resp = self.redis.xread({self.config.stream_key: last}, count=500, block=block_ms)
            if not resp:
                if timeout is not None and time.monotonic() - idle_since > timeout:
                    return
                continue
            idle_since = time.monotonic()
            for _stream, entries in resp:  # type: ignore[str-unpack]
                for entry_id, fields in entries:  # type: ignore[union-attr, str-unpack]
                    event = decode(entry_id, fields)  # type: ignore[arg-type]
                    last = event.id or last
                    if task_id is not None and event.task_id != task_id:
                        continue
                    if user_id is not None and event.user_id != user_id:
                        continue
                    yield event


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula: text starting with ``=``, ``+``,
    ``-``, ``@``, tab or CR gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class ExportEncoder:
    """Incremental CSV or JSON text of task records: ``start()``, ``rows(batch)``..., ``end()``.

    Lets a caller that fetches batches asynchronously (the gateway) stream the same format
    as :func:`export_chunks`.
    """

    def __init__(self, fmt: str) -> None:
        if fmt not in ("csv", "json"):
            raise ValueError("fmt must be 'csv' or 'json'")
        self.fmt = fmt
        self._first = True

    def start(self) -> str:
        if self.fmt == "json":
            return "["
        buf = io.StringIO()
        csv.writer(buf).writerow(EXPORT_FIELDS)
        return buf.getvalue()

    def rows(self, records: Iterable[TaskRecord]) -> str:
        buf = io.StringIO()
        if self.fmt == "csv":
            writer = csv.writer(buf)
            for rec in records:
                d = rec.to_dict()
                writer.writerow([csv_cell(strict_dumps(d[f], compact=False) if isinstance(d[f], (dict, list))
                                          else ("" if d[f] is None else d[f])) for f in EXPORT_FIELDS])
        else:
            for rec in records:
                buf.write(("" if self._first else ",\n") + strict_dumps(rec.to_dict(), compact=False))
                self._first = False
        return buf.getvalue()

    def end(self) -> str:
        return "]\n" if self.fmt == "json" else ""


def export_chunks(records: Iterator[TaskRecord], fmt: str) -> Iterator[str]:
    """CSV or JSON text of ``records`` in chunks, for streaming to a file or a response."""
    enc = ExportEncoder(fmt)
    it = iter(records)
    yield enc.start()
    while batch := list(itertools.islice(it, 500)):
        yield enc.rows(batch)
    yield enc.end()
