"""``TrackedTask``: a Celery base class adding progress, logs, metrics and control."""

from __future__ import annotations

import base64
import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from celery import Task
from celery.utils.log import get_task_logger

from signals import logcapture
from signals.hooks import TaskCancelled
from signals.runtime import ActiveTask
from tracker.status import check_progress

__all__ = ["TrackedTask", "TaskLogger", "TaskCancelled"]

T = TypeVar("T")


def _check_int(name: str, value: Any, minimum: int = 0) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _attachments(items: Any) -> list[dict[str, Any]] | None:
    """Normalise attachments to ``{name, content_type, size, url | data}`` dicts."""
    if items is None:
        return None
    if not isinstance(items, (list, tuple)):
        raise TypeError("attachments must be a list of dicts")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise TypeError("each attachment must be a dict with a string 'name'")
        entry: dict[str, Any] = {"name": item["name"],
                                 "content_type": item.get("content_type", "application/octet-stream")}
        data = item.get("data")
        if isinstance(data, bytes):
            entry["size"] = len(data)
            entry["data"] = base64.b64encode(data).decode()
            entry["encoding"] = "base64"
        elif isinstance(data, str):
            entry["size"] = len(data.encode())
            entry["data"] = data
        elif "url" in item:
            entry["url"] = str(item["url"])
            entry["size"] = item.get("size")
        else:
            raise TypeError(f"attachment {item['name']!r} needs 'data' (bytes or str) or 'url'")
        out.append(entry)
    return out


class TaskLogger:
    """``self.log`` of a :class:`TrackedTask`: stores every record in ``tracker_logs``.

    Records are stored whatever the logging configuration, and also passed to the task's
    Celery logger for the console. Extra keyword arguments: ``context`` (a dict stored with
    the record) and ``attachments`` (a list of ``{name, content_type, data | url}``).
    """

    def __init__(self, task: TrackedTask) -> None:
        self._task = task
        self._logger = get_task_logger(task.name)

    def log(self, level: int, msg: str, *args: Any, exc_info: Any = None, context: dict[str, Any] | None = None,
            attachments: list[dict[str, Any]] | None = None, stacklevel: int = 1) -> None:
        if context is not None and not isinstance(context, dict):
            raise TypeError("context must be a dict")
        files = _attachments(attachments)
        active = self._task._active()
        text = msg % args if args else str(msg)
        trace = None
        if exc_info:
            import sys
            import traceback

            info = sys.exc_info() if exc_info is True else exc_info
            if isinstance(info, BaseException):
                info = (type(info), info, info.__traceback__)
            if info and info[0] is not None:
                trace = "".join(traceback.format_exception(*info))
        if active is not None:
            active.runtime.reporter.log(active.task_id, level, text, user_id=active.user_id, source=self._task.name,
                                        context=context, traceback=trace, attachments=files)
        if self._logger.isEnabledFor(level):
            self._logger.log(level, msg, *args, exc_info=exc_info, extra={logcapture.STORED_FLAG: True},
                             stacklevel=stacklevel + 2)

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kw)

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(logging.INFO, msg, *args, **kw)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kw)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kw)

    def critical(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(logging.CRITICAL, msg, *args, **kw)

    def exception(self, msg: str, *args: Any, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self.log(logging.ERROR, msg, *args, **kw)


class TrackedTask(Task):  # type: ignore[misc]
    """Base class for tasks that report progress, logs and metrics and obey pause/cancel.

    Use as ``@app.task(base=TrackedTask, bind=True)``. Lifecycle tracking itself comes from
    ``signals.install(app)`` and works for any task; this class adds the in-task API.
    Outside a worker (a plain function call) the methods validate their input and do
    nothing else.
    """

    #: Recorded as the task's ``task_type`` (defaults to the task name; a
    #: ``tracking_context(task_type=...)`` at publish time wins).
    task_type: str | None = None
    #: Tags added to every run of this task.
    tracker_tags: tuple[str, ...] = ()

    # -- state ---------------------------------------------------------------------------
    def _active(self) -> ActiveTask | None:
        active = logcapture.current_task.get()
        # Compare names, not ``self.request.id``: reading the request costs about a microsecond.
        if active is None or active.name != self.name:
            return None
        return active

    @property
    def log(self) -> TaskLogger:
        """A logger whose records are stored with the task (see :class:`TaskLogger`)."""
        logger = self.__dict__.get("_tracker_log")
        if logger is None:
            logger = self.__dict__["_tracker_log"] = TaskLogger(self)
        return logger

    # -- progress --------------------------------------------------------------------------
    def progress(self, percent: float | None = None, *, current: float | None = None, total: float | None = None,
                 step: str | None = None, step_index: int | None = None, total_steps: int | None = None,
                 message: str | None = None) -> None:
        """Report progress as ``percent`` (0-100) or as ``current`` of ``total``.

        Costs a few microseconds: nothing here waits for Redis or PostgreSQL. Raises
        :class:`TaskCancelled` if the task was cancelled, and blocks while it is paused.
        """
        if type(percent) is float and 0.0 <= percent <= 100.0 and current is None and total is None:
            value = percent  # the common case, checked cheaply
        elif percent is None:
            if current is None or total is None:
                raise ValueError("progress() needs a percentage or both current= and total=")
            cur = _check_number("current", current)
            tot = _check_number("total", total)
            if tot <= 0:
                raise ValueError(f"total must be > 0, got {total!r}")
            if not 0 <= cur <= tot:
                raise ValueError(f"current must be between 0 and total ({tot:g}), got {current!r}")
            value = cur * 100.0 / tot
        else:
            if current is not None or total is not None:
                raise ValueError("give either a percentage or current=/total=, not both")
            value = check_progress(percent)
        if step is not None and not isinstance(step, str):
            raise TypeError(f"step must be a string, not {type(step).__name__}")
        if message is not None and not isinstance(message, str):
            raise TypeError(f"message must be a string, not {type(message).__name__}")
        _check_int("step_index", step_index)
        _check_int("total_steps", total_steps, 1)
        if step_index is not None and total_steps is not None and step_index > total_steps:
            raise ValueError(f"step_index ({step_index}) is beyond total_steps ({total_steps})")
        active = self._active()
        if active is None:
            return
        now = time.monotonic()
        active.progress = value
        eta = None
        if value > 0:
            elapsed = now - active.started
            eta = elapsed * (100.0 - value) / value
        active.runtime.reporter.progress(active.task_id, active.user_id, value, current_step=step,
                                         step_index=step_index, total_steps=total_steps, eta_seconds=eta,
                                         message=message)
        if now >= active.next_control:
            self._control(active, now)

    def track(self, iterable: Iterable[T], total: int | None = None, step: str | None = None) -> Iterator[T]:
        """Yield from ``iterable`` reporting progress after each item (percent and ETA)."""
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        else:
            _check_int("total", total)
        done = 0
        if total:
            self.progress(current=0, total=total, step=step)
        for item in iterable:
            yield item
            done += 1
            if total:
                self.progress(current=min(done, total), total=total, step=step)
            else:
                self.checkpoint()

    def metric(self, name: str, value: float, unit: str | None = None, labels: dict[str, Any] | None = None) -> None:
        """Record a numeric sample tied to this task (queryable with ``Tracker.metrics``)."""
        if not isinstance(name, str) or not name:
            raise TypeError("metric name must be a non-empty string")
        v = _check_number("value", value)
        if unit is not None and not isinstance(unit, str):
            raise TypeError("unit must be a string")
        if labels is not None and not isinstance(labels, dict):
            raise TypeError("labels must be a dict")
        active = self._active()
        if active is None:
            return
        active.runtime.reporter.metric(name, v, unit=unit, labels=labels, task_id=active.task_id,
                                       task_type=active.task_type, user_id=active.user_id)

    def notify(self, title: str, message: str = "", *, user_id: str | None = None, type: str = "info",
               priority: str = "normal", channels: Any = ("websocket",), action_url: str | None = None,
               metadata: dict[str, Any] | None = None) -> Any:
        """Send a custom notification about this task, to its user unless ``user_id`` is given.

        Stored at once (one write: this is for rare, meaningful messages, not per item) and
        delivered on ``channels`` by a running gateway. Returns the ``NotificationRecord``;
        outside a worker it only validates and returns None.
        """
        from tracker import notify as nt

        active = self._active()
        target = user_id if user_id is not None else (active.user_id if active else None)
        fields = {"user_id": target, "title": title, "message": message, "type": type, "priority": priority,
                  "channels": channels, "task_id": active.task_id if active else None, "action_url": action_url,
                  "metadata": metadata}
        nt.check_notifications([fields])
        if active is None:
            return None
        return active.runtime.tracker.notify(**fields)

    # -- control ---------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Honour pause and cancel without reporting progress."""
        active = self._active()
        if active is None:
            return
        now = time.monotonic()
        if now >= active.next_control:
            self._control(active, now)

    def _control(self, active: ActiveTask, now: float) -> None:
        rt = active.runtime
        active.next_control = now + rt.config.control_interval
        bus = rt.bus
        if bus is None:
            return
        state = bus.controls.get(active.task_id)
        if state == "cancel":
            raise TaskCancelled(f"task {active.task_id} was cancelled")
        if state != "pause":
            return
        paused_at = time.monotonic()
        active.paused = True
        rt.reporter.status(active.task_id, "paused", user_id=active.user_id, progress=active.progress)
        try:
            # Heartbeats go on from the recorder thread, so a paused task is never taken for lost.
            while bus.controls.get(active.task_id) == "pause":
                bus.wait_control_change(1.0)
        finally:
            active.paused = False
        # Time spent paused does not count towards the ETA's rate.
        active.started += time.monotonic() - paused_at
        if bus.controls.get(active.task_id) == "cancel":
            raise TaskCancelled(f"task {active.task_id} was cancelled")
        # progress_at restarts the stall clock: the pause was asked for, not a stall.
        rt.reporter.status(active.task_id, "running", user_id=active.user_id, event="task.resumed",
                           progress=active.progress, progress_at=time.time())

    # -- Celery hooks ----------------------------------------------------------------------
    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        super().before_start(task_id, args, kwargs)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        super().on_success(retval, task_id, args, kwargs)

    def on_retry(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        super().on_retry(exc, task_id, args, kwargs, einfo)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TaskCancelled):
            self.on_cancel(task_id, args, kwargs)
        super().on_failure(exc, task_id, args, kwargs, einfo)

    def on_cancel(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Called when the task ended because it was cancelled; override for clean-up."""

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        super().after_return(status, retval, task_id, args, kwargs, einfo)
