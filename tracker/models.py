"""SQLAlchemy 2.0 models of everything celery-tracking stores."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Double,
    Index,
    Integer,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tracker.vocabulary import ACTIVE, TERMINAL, Status, status_sql_list

__all__ = [
    "Base",
    "Task",
    "ProgressBatch",
    "TaskLog",
    "Metric",
    "Notification",
    "Worker",
    "WorkerProcess",
    "Dashboard",
]

_STATUSES = status_sql_list()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONB, list[str]: ARRAY(Text), datetime: DateTime(timezone=True)}


class Task(Base):
    """One row per Celery task id: its latest known state."""

    __tablename__ = "tracker_tasks"

    task_id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    task_type: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    # Source-side timestamp of the status: a late write from another process never
    # rolls a newer status back (the publisher's pending row uses 0).
    status_ts: Mapped[float] = mapped_column(Double, server_default="0")
    progress: Mapped[float] = mapped_column(Double, server_default="0")
    current_step: Mapped[str | None] = mapped_column(Text)
    step_index: Mapped[int | None] = mapped_column(Integer)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    eta_seconds: Mapped[float | None] = mapped_column(Double)
    queue: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(Text)
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    retries: Mapped[int] = mapped_column(Integer, server_default="0")
    parent_id: Mapped[str | None] = mapped_column(Text)
    root_id: Mapped[str | None] = mapped_column(Text)
    group_id: Mapped[str | None] = mapped_column(Text)
    #: Redacted, bounded arguments (migration 0005); a re-run names the task it repeats.
    args: Mapped[Any | None] = mapped_column(JSONB)
    kwargs: Mapped[Any | None] = mapped_column(JSONB)
    rerun_of: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any | None] = mapped_column(JSONB)
    error_type: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=text("'{}'::jsonb"))
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    published_at: Mapped[datetime | None] = mapped_column()
    received_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    progress_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    stalled_at: Mapped[datetime | None] = mapped_column()
    # The automatic per-task figures (seconds, seconds, seconds, bytes) of the last run; queries
    # read them as the samples task.queue_wait, task.run_time, task.cpu_time, task.memory_growth.
    queue_wait: Mapped[float | None] = mapped_column(Double)
    run_time: Mapped[float | None] = mapped_column(Double)
    cpu_time: Mapped[float | None] = mapped_column(Double)
    memory_growth: Mapped[float | None] = mapped_column(Double)

    __table_args__ = (
        CheckConstraint(f"status IN {_STATUSES}", name="tracker_tasks_status_check"),
        CheckConstraint("progress >= 0 AND progress <= 100", name="tracker_tasks_progress_check"),
        Index("ix_tracker_tasks_created", text("created_at DESC"), text("task_id DESC")),
        Index("ix_tracker_tasks_user_created", "user_id", text("created_at DESC"), text("task_id DESC")),
        Index("ix_tracker_tasks_status_created", "status", text("created_at DESC"), text("task_id DESC")),
        Index("ix_tracker_tasks_type_status", "task_type", "status"),
        Index("ix_tracker_tasks_user_status", "user_id", "status"),
        Index("ix_tracker_tasks_tags", "tags", postgresql_using="gin"),
        Index("ix_tracker_tasks_group", "group_id", postgresql_where=text("group_id IS NOT NULL")),
        Index("ix_tracker_tasks_root", "root_id", postgresql_where=text("root_id IS NOT NULL")),
        Index(
            "ix_tracker_tasks_active",
            "heartbeat_at",
            postgresql_where=text(f"status IN {status_sql_list(ACTIVE)}"),
        ),
        Index("ix_tracker_tasks_finished", "task_type", "finished_at",
              postgresql_where=text(f"status = '{Status.COMPLETED.value}'")),
        # Retention purges finished tasks by age (migration 0002).
        Index("ix_tracker_tasks_purge", "finished_at",
              postgresql_where=text(f"status IN {status_sql_list(TERMINAL)}")),
        Index("ix_tracker_tasks_rerun_of", "rerun_of", postgresql_where=text("rerun_of IS NOT NULL")),
    )


class ProgressBatch(Base):
    """Every progress value a task reported, for history charts.

    One row holds the points one task reported between two group commits, as arrays: a
    task calling ``progress()`` in a tight loop costs one row per flush, not one per call.
    """

    __tablename__ = "tracker_progress"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(Text)
    #: Time of the first and last point in the batch.
    ts: Mapped[datetime] = mapped_column()
    ts_last: Mapped[datetime] = mapped_column()
    n: Mapped[int] = mapped_column(Integer)
    times: Mapped[list[float]] = mapped_column(ARRAY(Double))
    vals: Mapped[list[float]] = mapped_column(ARRAY(Double))
    steps: Mapped[list[str | None]] = mapped_column(ARRAY(Text))

    __table_args__ = (Index("ix_tracker_progress_task_ts", "task_id", "ts"), Index("ix_tracker_progress_ts", "ts"))


class TaskLog(Base):
    """A log line emitted by or about a task."""

    __tablename__ = "tracker_logs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[str | None] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column()
    levelno: Mapped[int] = mapped_column(SmallInteger)
    level: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    traceback: Mapped[str | None] = mapped_column(Text)
    attachments: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    #: The message's words, computed once at insert: searches never recompute it per row.
    search: Mapped[Any] = mapped_column(TSVECTOR, Computed("to_tsvector('simple', message)", persisted=True))

    __table_args__ = (
        Index("ix_tracker_logs_task_ts", "task_id", "ts", "id"),
        Index("ix_tracker_logs_ts", "ts", "id"),
        Index("ix_tracker_logs_level_ts", "levelno", "ts"),
        Index("ix_tracker_logs_search_vector", "search", postgresql_using="gin"),
    )


class Metric(Base):
    """A numeric sample: automatic per-task figures, worker figures or user metrics."""

    __tablename__ = "tracker_metrics"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text)
    value: Mapped[float] = mapped_column(Double)
    unit: Mapped[str | None] = mapped_column(Text)
    labels: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    task_id: Mapped[str | None] = mapped_column(Text)
    task_type: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column()

    __table_args__ = (
        Index("ix_tracker_metrics_name_ts", "name", "ts"),
        Index("ix_tracker_metrics_task", "task_id"),
        Index("ix_tracker_metrics_ts", "ts"),
    )


class Notification(Base):
    """An in-app notification and the state of its delivery on every channel."""

    __tablename__ = "tracker_notifications"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text, server_default="")
    type: Mapped[str] = mapped_column(Text, server_default="info")
    priority: Mapped[str] = mapped_column(Text, server_default="normal")
    channels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    task_id: Mapped[str | None] = mapped_column(Text)
    action_url: Mapped[str | None] = mapped_column(Text)
    is_read: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    read_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    delivery: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=text("'{}'::jsonb"))
    #: Identity of the stream event (or digest) that produced it: several gateways never store it twice.
    dedup_key: Mapped[str | None] = mapped_column(Text, unique=True)
    #: Who made it, set by the server (never by a request body): ``rule``, ``api`` or ``rest``.
    #: Only ``rule`` notifications use a rule's targets; ``rest`` ones never reach Slack or webhooks.
    origin: Mapped[str] = mapped_column(Text, server_default="rest")

    __table_args__ = (
        CheckConstraint("priority IN ('urgent','high','normal','low')", name="tracker_notifications_priority_check"),
        CheckConstraint("origin IN ('rule','api','rest')", name="tracker_notifications_origin_check"),
        CheckConstraint(
            "type IN ('info','success','warning','error','progress')", name="tracker_notifications_type_check"
        ),
        Index("ix_tracker_notifications_user_read", "user_id", "is_read", text("created_at DESC")),
        Index("ix_tracker_notifications_created", text("created_at DESC"), text("id DESC")),
    )


class Worker(Base):
    """One Celery worker (its node name, e.g. ``w1@host``): written by its main process when it
    is ready and when it stops gracefully; ``heartbeat_at`` is advanced by the heartbeats of its
    processes. Rows outlive the worker: "when was it last seen" survives restarts."""

    __tablename__ = "tracker_workers"

    hostname: Mapped[str] = mapped_column(Text, primary_key=True)
    pid: Mapped[int | None] = mapped_column(Integer)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    #: Set by a graceful shutdown (offline at once); cleared when the worker is ready again.
    stopped_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (Index("ix_tracker_workers_heartbeat", "heartbeat_at"),)


class WorkerProcess(Base):
    """The last heartbeat of each process (pool child or main) of a worker."""

    __tablename__ = "tracker_worker_processes"

    worker_id: Mapped[str] = mapped_column(Text, primary_key=True)  # hostname:pid
    hostname: Mapped[str] = mapped_column(Text)  # the worker's node name
    pid: Mapped[int] = mapped_column(Integer)
    heartbeat_at: Mapped[datetime] = mapped_column()
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    cpu_percent: Mapped[float | None] = mapped_column(Double)
    rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: Ids of the tasks the process was running at its last heartbeat.
    active: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    #: Tasks the process finished since it started.
    processed: Mapped[int] = mapped_column(BigInteger, server_default="0")

    __table_args__ = (
        Index("ix_tracker_worker_processes_host", "hostname", "heartbeat_at"),
        Index("ix_tracker_worker_processes_heartbeat", "heartbeat_at"),
    )


class Dashboard(Base):
    """A saved dashboard: a named list of chart widgets."""

    __tablename__ = "tracker_dashboards"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    widgets: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
