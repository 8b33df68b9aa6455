"""Capture stdlib and Celery task-logger records emitted while a task runs."""

from __future__ import annotations

import logging
import traceback as tb
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from signals.runtime import ActiveTask

__all__ = ["TaskLogHandler", "current_task", "handler", "ensure_attached", "detach", "STORED_FLAG"]

#: The task running in this thread/context, set by the prerun hook.
current_task: ContextVar[ActiveTask | None] = ContextVar("tracker_current_task", default=None)
#: Records already stored by ``TrackedTask.log`` carry this attribute.
STORED_FLAG = "_tracker_stored"
_IGNORED_PREFIXES = ("tracker.", "signals.", "celery.worker", "celery.app.trace", "celery.pool", "kombu",
                     "amqp", "urllib3", "asyncio")
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}


class TaskLogHandler(logging.Handler):
    """Stores log records of the current task; silent outside tasks and never raises."""

    def emit(self, record: logging.LogRecord) -> None:
        active = current_task.get()
        if active is None or getattr(record, STORED_FLAG, False):
            return
        name = record.name
        if name.startswith(_IGNORED_PREFIXES):
            return
        setattr(record, STORED_FLAG, True)  # seen via two handlers: store once
        try:
            message = record.getMessage()
            trace = None
            if record.exc_info and record.exc_info[0] is not None:
                trace = "".join(tb.format_exception(*record.exc_info))
            context: dict[str, Any] = {"logger": name, "module": record.module, "lineno": record.lineno,
                                       "func": record.funcName}
            for key, value in record.__dict__.items():
                if key not in _STD_ATTRS and not key.startswith("_") and key not in ("data", "task_name", "task_id"):
                    # A nested value is stored as its repr: redact inside it first (the Reporter
                    # redacts the context's own keys, but no longer sees into a repr string).
                    context[key] = value if isinstance(value, (str, int, float, bool, type(None))) \
                        else repr(active.runtime.reporter.redactor.redact(value))
            active.runtime.reporter.log(active.task_id, record.levelno, message, user_id=active.user_id,
                                        source=name, context=context, traceback=trace, ts=record.created)
        except Exception:
            pass  # a log line must never break the task that wrote it


handler = TaskLogHandler()


def ensure_attached(level: int | str = logging.INFO) -> None:
    """Attach the capture handler to the root and Celery task loggers (idempotent).

    Celery's worker may replace root handlers when it sets up logging, so this is
    called again at task start; it is a cheap membership test.
    """
    for logger in _loggers():
        if handler not in logger.handlers:
            handler.setLevel(level)
            logger.addHandler(handler)
            _lower_level(logger, handler.level)


_LOGGERS: tuple[logging.Logger, ...] = ()


def _loggers() -> tuple[logging.Logger, ...]:
    """The root and Celery task loggers (the same objects for the life of the process; looked
    up once: ``getLogger`` takes the logging lock, and this runs at every task start)."""
    global _LOGGERS
    if not _LOGGERS:
        _LOGGERS = (logging.getLogger(), logging.getLogger("celery.task"))
    return _LOGGERS


def _lower_level(logger: logging.Logger, wanted: int) -> None:
    """Let records down to ``wanted`` reach our handler without making other output louder."""
    current = logger.getEffectiveLevel()
    if current <= wanted:
        return
    for other in logger.handlers:
        if other is not handler and other.level < current:
            other.setLevel(current)
    logger.setLevel(wanted)


def detach() -> None:
    for logger in (logging.getLogger(), logging.getLogger("celery.task")):
        if handler in logger.handlers:
            logger.removeHandler(handler)
