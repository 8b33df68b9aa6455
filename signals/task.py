"""``TrackedTask``: a Celery base class adding progress, logs, metrics and control."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, TypeVar

from celery import Task
from celery.utils.log import get_task_logger
from pydantic import Field, TypeAdapter, ValidationError

from signals import logcapture
from signals.arguments import LogArgs, MetricArgs, progress_value
from signals.hooks import TaskCancelled
from signals.runtime import ActiveTask
from tracker.validation import clear_error

__all__ = ["TrackedTask", "TaskLogger", "TaskCancelled"]

T = TypeVar("T")


#: The types ``progress()``'s cheap check takes as they are (``bool`` is not among them).
_NUMBERS = (float, int)


def _steps_ok(step_index: Any, total_steps: Any) -> bool:
    """The cheap check of ``progress()``'s step counts (see ``ProgressArgs`` for the full one)."""
    return ((step_index is None or (step_index.__class__ is int and step_index >= 0))
            and (total_steps is None or (total_steps.__class__ is int and total_steps >= 1))
            and (step_index is None or total_steps is None or step_index <= total_steps))


#: ``track()``'s ``total``.
_COUNT: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=0, strict=True)])


def _check(model: Any, value: Any) -> Any:
    """``value`` validated by ``model`` (a model class or a TypeAdapter), or the public API's
    TypeError/ValueError (a dict without a needed key, e.g. an attachment's name, is a TypeError)."""
    try:
        return model.validate_python(value) if isinstance(model, TypeAdapter) else model.model_validate(value)
    except ValidationError as exc:
        raise clear_error(exc, also=("missing",)) from None


def _log_args(context: Any, attachments: Any) -> list[dict[str, Any]] | None:
    """Check ``self.log``'s extras; the attachments as ``{name, content_type, size, url | data}``."""
    if context is None and attachments is None:
        return None
    files: list[dict[str, Any]] | None = _check(LogArgs, {"context": context, "attachments": attachments}).files()
    return files


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
        files = _log_args(context, attachments)
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


class TrackedTask(Task):
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
        # The common calls - a number in range, or current of total - with text or no step, and no
        # step counts or sane ones, pass one cheap expression: progress() is the hot path, and
        # ProgressArgs on every call measured 3.8 us a call in `python -m bench progress` against
        # 1.5 us with this check. Everything else goes through ProgressArgs, which accepts it or
        # raises the TypeError/ValueError that says why.
        if percent.__class__ in _NUMBERS and current is None and total is None and 0 <= percent <= 100:
            value = float(percent)
        elif (percent is None and current.__class__ in _NUMBERS and total.__class__ in _NUMBERS
              and 0 < total < math.inf and 0 <= current <= total):
            value = current * 100.0 / total
        else:
            value = -1.0
        if value < 0 or not ((step is None or step.__class__ is str) and (message is None or message.__class__ is str)
                             and (step_index is None and total_steps is None or _steps_ok(step_index, total_steps))):
            value = progress_value(percent=percent, current=current, total=total, step=step, step_index=step_index,
                                   total_steps=total_steps, message=message)
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
            _check(_COUNT, total)
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
        args = _check(MetricArgs, {"name": name, "value": value, "unit": unit, "labels": labels})
        active = self._active()
        if active is None:
            return
        active.runtime.reporter.metric(name, args.value, unit=unit, labels=labels, task_id=active.task_id,
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
