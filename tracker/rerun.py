"""Re-run: publish a recorded task again, with its stored arguments, through a Celery app.

Shared by ``Tracker.rerun``, ``POST /tasks/{id}/rerun`` and ``tracker rerun``. The new task
goes to the original queue and carries the original user's tracking context in its message
headers; its record names the task it repeats in ``rerun_of``.
"""

from __future__ import annotations

import uuid
from typing import Any

from tracker.records import TaskRecord
from tracker.redaction import contains_redacted
from tracker.reporter import Reporter

__all__ = ["RERUN_HEADER", "NotRerunnable", "rerun_reason", "publish_rerun"]

from tracker.vocabulary import RERUN_HEADER, context_headers


class NotRerunnable(Exception):
    """The task cannot be published again as it was; the message says why."""


def rerun_reason(record: TaskRecord, celery_app: Any) -> str | None:
    """Why ``record`` cannot be re-run through ``celery_app`` (None when it can)."""
    if record.args is None or record.kwargs is None:
        return "its arguments were not stored (tracker_store_args=False, or recorded before arguments were kept)"
    if not isinstance(record.args, list) or not isinstance(record.kwargs, dict):
        return "its arguments were too large to store in full"
    if contains_redacted(record.args) or contains_redacted(record.kwargs):
        return "its arguments were redacted"
    if not record.name or record.name not in celery_app.tasks:
        return f"the Celery app does not know the task {record.name!r}"
    return None


def publish_rerun(celery_app: Any, record: TaskRecord, reporter: Reporter | None) -> str:
    """Publish ``record``'s task again and return the new task id; raises :class:`NotRerunnable`.

    The new task's pending state (with ``rerun_of``) is written through ``reporter`` first, so
    the link exists even when the publishing process has no tracking hooks installed.
    """
    reason = rerun_reason(record, celery_app)
    if reason is not None:
        raise NotRerunnable(reason)
    assert record.name is not None and record.args is not None and record.kwargs is not None
    new_id = str(uuid.uuid4())
    # The original user's tracking context, as tracking_context() would have set it.
    headers: dict[str, Any] = {
        **context_headers(record.user_id, record.tags,
                          task_type=record.task_type if record.task_type != record.name else None),
        RERUN_HEADER: record.task_id,
    }
    if reporter is not None:
        reporter.pending(new_id, user_id=record.user_id, name=record.name, task_type=record.task_type,
                         tags=list(record.tags), queue=record.queue, args=record.args, kwargs=record.kwargs,
                         rerun_of=record.task_id)
    options: dict[str, Any] = {"queue": record.queue} if record.queue else {}
    celery_app.send_task(record.name, args=record.args, kwargs=record.kwargs, task_id=new_id, headers=headers,
                         **options)
    return new_id
