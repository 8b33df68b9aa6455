"""Plain immutable records returned by :class:`tracker.Tracker` and the REST API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

__all__ = ["TaskRecord", "LogRecord", "MetricRecord", "NotificationRecord", "ProgressPoint", "GroupProgress",
           "WorkerRecord", "QueueRecord", "QueueReport", "to_jsonable",
           "task_record", "notification_record"]


def to_jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


R = TypeVar("R", bound="_Record")


class _Record:
    @classmethod
    def from_row(cls: type[R], row: Any) -> R:
        """The one row-to-record mapping: a SQLAlchemy row (or a mapping) with the column names
        of the query builders. A field missing from the row takes a column of its name with a
        trailing underscore (``metadata_``: the models' name where ``metadata`` is reserved)."""
        m = row._mapping if hasattr(row, "_mapping") else row
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in m:
                values[f.name] = m[f.name]
            elif f.name + "_" in m:
                values[f.name] = m[f.name + "_"]
        for name, empty in _EMPTY_WHEN_NULL.get(cls, {}).items():
            values[name] = empty(values.get(name) or ())
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class TaskRecord(_Record):
    task_id: str
    name: str | None = None
    task_type: str | None = None
    user_id: str | None = None
    status: str = "pending"
    progress: float = 0.0
    current_step: str | None = None
    step_index: int | None = None
    total_steps: int | None = None
    eta_seconds: float | None = None
    queue: str | None = None
    worker: str | None = None
    retries: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    created_at: datetime | None = None
    published_at: datetime | None = None
    received_at: datetime | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    stalled_at: datetime | None = None
    #: Positional and keyword arguments as stored (redacted, bounded); None when not stored.
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    #: The task this one re-ran (``Tracker.rerun``, ``POST /tasks/{id}/rerun``).
    rerun_of: str | None = None

    @property
    def duration(self) -> float | None:
        """Run time in seconds (so far, for a running task)."""
        if self.started_at is None:
            return None
        end = self.finished_at or self.updated_at
        return None if end is None else max(0.0, (end - self.started_at).total_seconds())


#: Fields stored as nullable JSON or array columns whose NULL means "empty" in the record. Kept
#: outside the classes: a ClassVar would show in ``__dataclass_fields__`` (the export's columns).
_EMPTY_WHEN_NULL: dict[type[_Record], dict[str, Callable[[Any], Any]]] = {
    TaskRecord: {"metadata": dict, "tags": list},
}


def task_record(row: Any) -> TaskRecord:
    """A task row (``tracker_tasks`` columns, ``metadata_`` or ``metadata``) as a record."""
    return TaskRecord.from_row(row)


@dataclass(frozen=True, slots=True)
class ProgressPoint(_Record):
    ts: datetime
    progress: float
    current_step: str | None = None


@dataclass(frozen=True, slots=True)
class LogRecord(_Record):
    id: int
    task_id: str | None
    ts: datetime
    level: str
    message: str
    source: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    traceback: str | None = None
    attachments: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MetricRecord(_Record):
    name: str
    value: float
    unit: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    user_id: str | None = None
    ts: datetime | None = None


@dataclass(frozen=True, slots=True)
class NotificationRecord(_Record):
    id: int
    user_id: str | None
    title: str
    message: str = ""
    type: str = "info"
    priority: str = "normal"
    channels: list[str] = field(default_factory=list)
    task_id: str | None = None
    action_url: str | None = None
    is_read: bool = False
    read_at: datetime | None = None
    created_at: datetime | None = None
    delivery: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


_EMPTY_WHEN_NULL[NotificationRecord] = {"channels": list, "metadata": dict, "delivery": dict}


def notification_record(row: Any) -> NotificationRecord:
    """A notification row (or a mapping of its columns) as a record."""
    return NotificationRecord.from_row(row)


@dataclass(frozen=True, slots=True)
class GroupProgress(_Record):
    """Combined progress of a group, chord header or chain (:meth:`tracker.Tracker.group_progress`).

    ``progress`` is the mean of the members' progress, a finished member counting 100: it is 100
    exactly when ``done`` (every member finished). ``counts`` maps each status to its members.
    """

    group_id: str
    total: int = 0
    finished: int = 0
    done: bool = False
    progress: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class WorkerRecord(_Record):
    """A Celery worker (node name ``hostname``) as its record and its processes' heartbeats show it."""

    hostname: str
    status: str = "offline"
    pid: int | None = None
    concurrency: int | None = None
    active: list[str] = field(default_factory=list)
    processed: int = 0
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    last_heartbeat: datetime | None = None
    started_at: datetime | None = None
    queues: list[str] = field(default_factory=list)
    stopped_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class QueueRecord(_Record):
    """A broker queue: messages waiting, online workers reading it, age of its oldest message."""

    name: str
    depth: int
    consumers: int = 0
    oldest_age_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class QueueReport(_Record):
    """The queues as last measured; ``reason`` says why ``items`` is empty when it cannot be measured."""

    items: list[QueueRecord] = field(default_factory=list)
    reason: str | None = None
    sampled_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": [i.to_dict() for i in self.items], "reason": self.reason,
                               "sampled_at": to_jsonable(self.sampled_at)}
        for item in out["items"]:
            if item["oldest_age_seconds"] is None:
                del item["oldest_age_seconds"]  # optional in the reply: only when known
        return out
