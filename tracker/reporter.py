"""One place that turns "something happened to a task" into a stored state and an event.

Celery signal hooks, ``TrackedTask`` and the REST API's writes for non-Celery producers all
go through :class:`Reporter`, so a task looks the same in the store and on the feed
whoever drove it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tracker.bus import EventBus
from tracker.events import STATUS_EVENTS
from tracker.recorder import Recorder
from tracker.redaction import Redactor, redactor_for
from tracker.status import TERMINAL, Status

__all__ = ["Reporter"]

_LEVEL_NAMES = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
#: Status by value: ``Status(value)`` goes through the enum's metaclass call, in every hook.
_STATUS_BY_VALUE: dict[str, Status] = {s.value: s for s in Status}


class Reporter:
    """Writes through a :class:`Recorder` and publishes through an :class:`EventBus`.

    Either may be ``None`` (tracking without a store, or without a live feed). ``redactor``
    (default: the default redact keys) cleans log context before it is stored or published.
    """

    def __init__(self, recorder: Recorder | None, bus: EventBus | None, redactor: Redactor | None = None) -> None:
        self.recorder = recorder
        self.bus = bus
        self.redactor = redactor or redactor_for(None)

    def _publish(self, type: str, task_id: str | None, user_id: str | None, data: dict[str, Any],
                 ts: float) -> None:
        if self.bus is not None:
            self.bus.publish(type, task_id, user_id, data, ts)

    def pending(self, task_id: str, *, user_id: str | None = None, name: str | None = None,
                task_type: str | None = None, tags: list[str] | None = None, ts: float | None = None,
                publisher: bool = True, **fields: Any) -> None:
        """A task was published (or created by a non-Celery producer).

        A publisher's pending state has the lowest precedence: it never rolls back a state a
        worker already recorded.
        """
        ts = time.time() if ts is None else ts
        if self.recorder is not None:
            self.recorder.task(task_id, status=Status.PENDING.value, status_ts=0.0 if publisher else ts,
                               user_id=user_id, name=name, task_type=task_type or name, tags=tags,
                               published_at=ts, updated_at=ts, **fields)
        data = {"status": "pending", "name": name, "task_type": task_type or name, "tags": tags or [],
                "published_at": ts}
        for key in ("queue", "parent_id", "root_id", "group_id", "metadata", "total_steps", "progress"):
            if fields.get(key) is not None:
                data[key] = fields[key]
        self._publish("task.pending", task_id, user_id, data, ts)

    def received(self, task_id: str, *, ts: float | None = None, **fields: Any) -> None:
        if self.recorder is not None:
            ts = time.time() if ts is None else ts
            self.recorder.task(task_id, received_at=ts, updated_at=ts, **fields)

    def started(self, task_id: str, *, user_id: str | None = None, name: str | None = None,
                task_type: str | None = None, tags: list[str] | None = None, ts: float | None = None,
                eta_seconds: float | None = None, **fields: Any) -> None:
        ts = time.time() if ts is None else ts
        if self.recorder is not None:
            self.recorder.task(task_id, status=Status.RUNNING.value, status_ts=ts, user_id=user_id, name=name,
                               task_type=task_type or name, tags=tags, started_at=ts, updated_at=ts,
                               heartbeat_at=ts, eta_seconds=eta_seconds, **fields)
        data = {"status": "running", "name": name, "task_type": task_type or name, "tags": tags or [],
                "started_at": ts, "eta_seconds": eta_seconds, "retries": fields.get("retries", 0),
                "worker": fields.get("worker")}
        # The feed routes `group:<id>` topics from these (as it does from task.pending).
        for key in ("parent_id", "root_id", "group_id"):
            if fields.get(key) is not None:
                data[key] = fields[key]
        self._publish("task.started", task_id, user_id, data, ts)

    def progress(self, task_id: str, user_id: str | None, progress: float, *, current_step: str | None = None,
                 step_index: int | None = None, total_steps: int | None = None,
                 eta_seconds: float | None = None, message: str | None = None, ts: float | None = None) -> None:
        """The hot path of ``TrackedTask.progress()``: two buffer appends, no I/O."""
        ts = time.time() if ts is None else ts
        if self.recorder is not None:
            self.recorder.progress(task_id, ts, progress, current_step, step_index, total_steps, eta_seconds)
        if self.bus is not None:
            self.bus.progress(task_id, user_id, ts, progress, current_step, step_index, total_steps, eta_seconds,
                              message)

    def status(self, task_id: str, status: str, *, user_id: str | None = None, ts: float | None = None,
               event: str | None = None, **fields: Any) -> None:
        """A status change. Like everything else it is committed at the next group commit
        (within ``flush_interval``): waking the writer per task would cost a round trip each."""
        ts = time.time() if ts is None else ts
        st = _STATUS_BY_VALUE.get(status) or Status(status)  # Status() raises the ValueError of a bad one
        if st in TERMINAL:
            fields.setdefault("finished_at", ts)
            fields.setdefault("eta_seconds", 0.0)
        if self.recorder is not None:
            self.recorder.task(task_id, status=st.value, status_ts=ts, user_id=user_id, updated_at=ts, **fields)
        data: dict[str, Any] = {"status": st.value}
        for key in ("progress", "started_at", "finished_at", "error_type", "error_message", "retries",
                    "current_step", "name", "task_type", "eta_seconds", "worker", "reason"):
            if fields.get(key) is not None:
                data[key] = fields[key]
        self._publish(event or STATUS_EVENTS[st.value], task_id, user_id, data, ts)

    def log(self, task_id: str | None, levelno: int, message: str, *, user_id: str | None = None,
            source: str | None = None, context: dict[str, Any] | None = None, traceback: str | None = None,
            attachments: list[Any] | None = None, ts: float | None = None, level: str | None = None) -> None:
        ts = time.time() if ts is None else ts
        level = level or _LEVEL_NAMES.get(levelno) or logging.getLevelName(levelno)
        if context:
            context = self.redactor.redact(context)  # a secret in `extra=` or `context=` is never stored
        if self.recorder is not None:
            self.recorder.log(task_id, ts, levelno, level, message, source, user_id, context, traceback,
                              attachments)
        if task_id is not None:
            data: dict[str, Any] = {"level": level, "message": message, "source": source}
            if traceback:
                data["traceback"] = traceback
            self._publish("task.log", task_id, user_id, data, ts)

    def figures(self, task_id: str, **values: float) -> None:
        """The automatic figures of a run that ended (``run_time``, ``cpu_time``,
        ``memory_growth``): columns of its task row, read as metric samples (tracker.figures)."""
        if self.recorder is not None:
            self.recorder.task(task_id, **values)

    def metric(self, name: str, value: float, *, unit: str | None = None, labels: dict[str, Any] | None = None,
               task_id: str | None = None, task_type: str | None = None, user_id: str | None = None,
               ts: float | None = None, publish: bool = True) -> None:
        ts = time.time() if ts is None else ts
        if self.recorder is not None:
            self.recorder.metric(name, value, unit, labels, task_id, task_type, user_id, ts)
        if publish and task_id is not None:
            self._publish("task.metric", task_id, user_id,
                          {"name": name, "value": value, "unit": unit, "labels": labels or {}}, ts)

    def flush(self, timeout: float = 10.0) -> bool:
        ok = True
        if self.bus is not None:
            ok = self.bus.flush(timeout) and ok
        if self.recorder is not None:
            ok = self.recorder.flush(timeout) and ok
        return ok

    def close(self, timeout: float = 10.0) -> None:
        if self.bus is not None:
            self.bus.close(timeout)
        if self.recorder is not None:
            self.recorder.close(timeout)
