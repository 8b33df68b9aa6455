"""REST: tasks - list, read, stats, history, control, export, and writes for non-Celery producers.

Writes go through the gateway's :class:`tracker.reporter.Reporter` (``app[REPORTER]``), the
same Recorder + EventBus path Celery tasks use, so a task created over REST is stored and
published exactly like one run by a worker. Every request is validated in full before the
first write.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from tracker import control
from tracker import queries as q
from tracker.api import ExportEncoder, task_record
from tracker.models import Task
from tracker.records import LogRecord, MetricRecord, ProgressPoint, TaskRecord
from tracker.redaction import redactor_for
from tracker.status import ACTIVE, TERMINAL, Status
from webgate.api.common import (
    Call,
    Endpoints,
    Reply,
    flush_writes,
    log_query,
    no_content,
    reply,
    scope_user,
    task_filters,
    visible_task,
    when,
)
from webgate.api.models import (
    Complete,
    Control,
    Fail,
    ProgressUpdate,
    StatusUpdate,
    TaskCreate,
    TaskFilters,
    TaskList,
    TaskLogs,
    TaskMetricsQuery,
    TaskPath,
    TaskStats,
)
from webgate.api.schema import ref
from webgate.core.db import fetch_all, fetch_one
from webgate.core.errors import json_error
from webgate.core.keys import CELERY_APP, CONFIG, ENGINE, REDIS, REPORTER

__all__ = ["routes", "setup"]

routes = Endpoints()

async def _fresh(call: Call, task_id: str) -> TaskRecord | None:
    row = await fetch_one(call.app, q.task_by_id(task_id))
    return task_record(row) if row is not None else None


async def _after_write(call: Call, task_id: str, fallback: TaskRecord, status: int = 200) -> web.Response:
    """Answer with the stored task once the write is committed (202 with what was sent if the store lags)."""
    if await flush_writes(call.app):
        record = await _fresh(call, task_id)
        if record is not None:
            return reply(record.to_dict(), status)
    return reply(fallback.to_dict(), 202)


async def _writable_task(call: Call) -> TaskRecord:
    """The task of the path if the caller may change it: 404, 403, or 409 once it has finished."""
    record = await visible_task(call, call.path["task_id"])
    if Status(record.status) in TERMINAL:
        raise json_error(409, "conflict", f"task already {record.status}")
    return record


#: The replies of a write: the task as stored, or as sent when the store has not caught up.
_STORED = (200, "The task as stored", ref("Task"))
_LAGGING: list[Reply] = [(202, "Accepted; the store has not committed it yet", ref("Task"), "application/json")]


# -- reads -------------------------------------------------------------------------------------------
@routes.operation("GET", "/tasks", operation_id="listTasks", summary="List tasks, newest first", tag="tasks",
                  query=TaskList, ok=(200, "A page of tasks", ref("TaskPage")),
                  errors=(403,))
async def list_tasks(call: Call) -> web.Response:
    filters = task_filters(call)
    n = call.query["limit"]
    rows = await fetch_all(call.app, q.tasks(filters, n, call.query.get("cursor")))
    items, nxt = q.page(rows, n, q.task_cursor)
    return reply({"items": [task_record(r).to_dict() for r in items], "next_cursor": nxt})


@routes.operation("GET", "/tasks/stats", operation_id="taskStats", tag="tasks",
                  summary="Counts by status, success rate, p50/p95 duration and throughput",
                  query=TaskStats,
                  ok=(200, "Statistics per group and overall", ref("Stats")), errors=(403,))
async def task_stats(call: Call) -> web.Response:
    a = call.query
    user_id = scope_user(call, a.get("user_id"))
    since, until = when(a.get("since")), when(a.get("until"))
    group_by = None if a["group_by"] == "none" else a["group_by"]
    groups = ([dict(r._mapping) for r in await fetch_all(call.app, q.stats(since, until, group_by, user_id))]
              if group_by else [])
    overall_rows = await fetch_all(call.app, q.stats(since, until, None, user_id))
    overall = dict(overall_rows[0]._mapping) if overall_rows else {}
    overall.pop("group", None)
    return reply({"group_by": group_by, "groups": groups, "overall": overall})


@routes.operation("GET", "/tasks/{task_id}", operation_id="getTask", summary="One task", tag="tasks",
                  path=TaskPath, ok=(200, "The task", ref("Task")), errors=(403, 404))
async def get_task(call: Call) -> web.Response:
    return reply((await visible_task(call, call.path["task_id"])).to_dict())


@routes.operation("GET", "/tasks/{task_id}/logs", operation_id="getTaskLogs", summary="Log lines of a task", tag="logs",
                  path=TaskPath, query=TaskLogs, ok=(200, "A page of log lines", ref("LogPage")),
                  errors=(403, 404))
async def task_logs(call: Call) -> web.Response:
    record = await visible_task(call, call.path["task_id"])
    n = call.query["limit"]
    rows = await fetch_all(call.app, log_query(call, record.task_id, None))
    items, nxt = q.page(rows, n, q.log_cursor)
    return reply({"items": [LogRecord.from_row(r).to_dict() for r in items], "next_cursor": nxt})


@routes.operation("DELETE", "/tasks/{task_id}/logs", operation_id="deleteTaskLogs", summary="Delete a task's log lines",
                  tag="logs", path=TaskPath, ok=(200, "How many lines were deleted", ref("Deleted")),
                  errors=(403, 404))
async def delete_task_logs(call: Call) -> web.Response:
    record = await visible_task(call, call.path["task_id"])
    await flush_writes(call.app)
    async with call.app[ENGINE].begin() as conn:
        n = (await conn.execute(q.delete_task_logs(record.task_id))).rowcount
    return reply({"deleted": n})


@routes.operation("GET", "/tasks/{task_id}/progress", operation_id="getTaskProgress", tag="tasks",
                  summary="Progress history of a task (oldest first)", path=TaskPath,
                  ok=(200, "Every progress value the task reported", ref("ProgressPage")), errors=(403, 404))
async def task_progress(call: Call) -> web.Response:
    record = await visible_task(call, call.path["task_id"])
    rows = await fetch_all(call.app, q.progress_history(record.task_id))
    return reply({"items": [ProgressPoint.from_row(r).to_dict() for r in rows], "next_cursor": None})


@routes.operation("GET", "/tasks/{task_id}/metrics", operation_id="getTaskMetrics", tag="metrics",
                  summary="Metric samples recorded for a task (oldest first)", path=TaskPath,
                  query=TaskMetricsQuery, ok=(200, "Metric samples", ref("MetricPage")), errors=(403, 404))
async def task_metrics(call: Call) -> web.Response:
    record = await visible_task(call, call.path["task_id"])
    rows = await fetch_all(call.app, q.task_metrics(record.task_id, call.query.get("name"), call.query["limit"]))
    return reply({"items": [MetricRecord.from_row(r).to_dict() for r in rows], "next_cursor": None})


# -- writes for non-Celery producers -------------------------------------------------------------------
@routes.operation("POST", "/tasks", operation_id="createTask", tag="tasks",
                  summary="Record a task that does not run on Celery (admin)", body=TaskCreate,
                  ok=(201, "The task as stored", ref("Task")), extra=_LAGGING, errors=(403, 409))
async def create_task(call: Call) -> web.Response:
    if not call.principal.admin:
        raise json_error(403, "forbidden", "creating tasks needs an admin token")
    b = call.body
    task_id = b.get("task_id") or str(uuid.uuid4())
    if await _fresh(call, task_id) is not None:
        raise json_error(409, "conflict", f"task {task_id!r} already exists")
    st = Status(b.get("status", "pending"))
    pct = float(b.get("progress", 0.0))
    name = b.get("task_name") or b.get("task_type")
    task_type = b.get("task_type") or name
    now = time.time()
    rep = call.app[REPORTER]
    arguments = stored_arguments(call.app[CONFIG], b)
    rep.pending(task_id, user_id=b.get("user_id"), name=name, task_type=task_type, tags=b.get("tags"),
                publisher=False, metadata=b.get("metadata"), total_steps=b.get("total_steps"), progress=pct, ts=now,
                **arguments)
    if st is not Status.PENDING:
        extra: dict[str, Any] = {"started_at": now} if st is Status.RUNNING else {}
        rep.status(task_id, st.value, user_id=b.get("user_id"), ts=now + 1e-6, progress=pct, name=name,
                   task_type=task_type, **extra)
    fallback = TaskRecord(task_id=task_id, name=name, task_type=task_type, user_id=b.get("user_id"), status=st.value,
                          progress=pct, total_steps=b.get("total_steps"), metadata=b.get("metadata") or {},
                          tags=b.get("tags") or [], **arguments)
    return await _after_write(call, task_id, fallback, 201)


def stored_arguments(config: Any, body: dict[str, Any]) -> dict[str, Any]:
    """``args``/``kwargs`` of a REST write as stored: redacted as they enter (the schema bounds
    them like results); nothing when ``tracker_store_args`` is off or none were given."""
    if not config.store_args or (body.get("args") is None and body.get("kwargs") is None):
        return {}
    args, kwargs = redactor_for(config).arguments(body.get("args"), body.get("kwargs"))
    return {"args": args, "kwargs": kwargs}


def _eta(record: TaskRecord, pct: float, now: float) -> float | None:
    """Remaining seconds from the task's own rate so far."""
    start = record.started_at or record.published_at or record.created_at
    if start is None or pct <= 0:
        return None
    if pct >= 100:
        return 0.0
    elapsed = max(0.0, now - start.timestamp())
    return elapsed * (100.0 - pct) / pct


@routes.operation("PATCH", "/tasks/{task_id}/progress", operation_id="updateProgress", tag="tasks",
                  summary="Report progress of a non-Celery task (owner or admin)", path=TaskPath,
                  body=ProgressUpdate, body_required=True, ok=_STORED, extra=_LAGGING,
                  errors=(403, 404, 409))
async def update_progress(call: Call) -> web.Response:
    record = await _writable_task(call)
    b = call.body
    pct = float(b["progress"])
    now = time.time()
    call.app[REPORTER].progress(record.task_id, record.user_id, pct, current_step=b.get("current_step"),
                                step_index=b.get("step_index"), total_steps=b.get("total_steps"),
                                eta_seconds=_eta(record, pct, now), message=b.get("message"), ts=now)
    return await _after_write(call, record.task_id, record)


def _status_fields(record: TaskRecord, st: Status, b: dict[str, Any], now: float) -> dict[str, Any]:
    fields: dict[str, Any] = {k: b[k] for k in ("progress", "current_step", "error_type", "error_message")
                              if b.get(k) is not None}
    if "result" in b:
        fields["result"] = b["result"]
    if st in (Status.RUNNING, Status.PAUSED) and record.started_at is None:
        fields["started_at"] = now
    if st is Status.COMPLETED:
        fields.setdefault("progress", 100.0)
    elif st is Status.FAILED:
        fields.setdefault("error_type", "error")
        fields.setdefault("error_message", "failed")
    elif st is Status.CANCELLED:
        fields.setdefault("error_type", "cancelled")
        fields.setdefault("reason", "cancelled")
    return fields


@routes.operation("PATCH", "/tasks/{task_id}/status", operation_id="updateStatus", tag="tasks",
                  summary="Change the status of a non-Celery task (owner or admin)", path=TaskPath,
                  body=StatusUpdate, body_required=True, ok=_STORED, extra=_LAGGING,
                  errors=(403, 404, 409))
async def update_status(call: Call) -> web.Response:
    record = await _writable_task(call)
    st = Status(call.body["status"])
    now = time.time()
    fields = _status_fields(record, st, call.body, now)
    event = "task.resumed" if record.status == Status.PAUSED and st is Status.RUNNING else None
    call.app[REPORTER].status(record.task_id, st.value, user_id=record.user_id, ts=now, event=event, **fields)
    return await _after_write(call, record.task_id, record)


@routes.operation("POST", "/tasks/{task_id}/complete", operation_id="completeTask", tag="tasks",
                  summary="Mark a non-Celery task completed (owner or admin)", path=TaskPath, body=Complete,
                  ok=_STORED, extra=_LAGGING,
                  errors=(403, 404, 409))
async def complete_task(call: Call) -> web.Response:
    return await _finish(call, Status.COMPLETED, {"result": call.body.get("result")})


@routes.operation("POST", "/tasks/{task_id}/fail", operation_id="failTask", tag="tasks",
                  summary="Mark a non-Celery task failed (owner or admin)", path=TaskPath, body=Fail,
                  ok=_STORED, extra=_LAGGING,
                  errors=(403, 404, 409))
async def fail_task(call: Call) -> web.Response:
    extra = {"traceback": call.body["traceback"]} if call.body.get("traceback") else {}
    return await _finish(call, Status.FAILED, call.body, **extra)


async def _finish(call: Call, st: Status, body: dict[str, Any], **extra: Any) -> web.Response:
    """Complete or fail a non-Celery task with the fields of ``body``."""
    record = await _writable_task(call)
    now = time.time()
    fields = {**_status_fields(record, st, body, now), **extra}
    call.app[REPORTER].status(record.task_id, st.value, user_id=record.user_id, ts=now, **fields)
    return await _after_write(call, record.task_id, record)


# -- control --------------------------------------------------------------------------------------------
async def _control(call: Call, action: str) -> web.Response:
    record = await visible_task(call, call.path["task_id"])
    terminate = bool((call.body or {}).get("terminate", False))
    app = call.app
    p = await control.apply_async(app[REDIS], app[CONFIG].prefix, record, action, reporter=app[REPORTER],
                                  celery_app=app[CELERY_APP], terminate=terminate)
    if not p.allowed:
        raise json_error(409, "conflict", p.reason)
    if p.mark_cancelled:
        await flush_writes(app)
    fresh = await _fresh(call, record.task_id) or record
    return reply({"task_id": record.task_id, "action": action, "accepted": True, "task": fresh.to_dict()})


_CONTROL_OK = (200, "The request was recorded; a running task acts on it at its next checkpoint",
               ref("ControlResult"))


@routes.operation("POST", "/tasks/{task_id}/pause", operation_id="pauseTask", tag="control",
                  summary="Pause a running TrackedTask at its next checkpoint (owner or admin)", path=TaskPath,
                  ok=_CONTROL_OK, errors=(403, 404, 409))
async def pause_task(call: Call) -> web.Response:
    return await _control(call, "pause")


@routes.operation("POST", "/tasks/{task_id}/resume", operation_id="resumeTask", tag="control",
                  summary="Resume a paused task (owner or admin)", path=TaskPath, ok=_CONTROL_OK,
                  errors=(403, 404, 409))
async def resume_task(call: Call) -> web.Response:
    return await _control(call, "resume")


@routes.operation("POST", "/tasks/{task_id}/cancel", operation_id="cancelTask", tag="control",
                  summary="Cancel a task: a queued one never runs, a running one stops (owner or admin)",
                  path=TaskPath, body=Control, ok=_CONTROL_OK, errors=(403, 404, 409))
async def cancel_task(call: Call) -> web.Response:
    return await _control(call, "cancel")


@routes.operation("DELETE", "/tasks/{task_id}", operation_id="deleteTask", tag="tasks",
                  summary="Delete a finished or pending task with its progress history, logs and metrics "
                          "(owner or admin)",
                  path=TaskPath, ok=(204, "Deleted", None), errors=(403, 404, 409))
async def delete_task(call: Call) -> web.Response:
    record = await visible_task(call, call.path["task_id"])
    if Status(record.status) in ACTIVE:
        # Its worker would write the row back at the next progress update.
        raise json_error(409, "conflict", f"task is {record.status}: cancel it first")
    await flush_writes(call.app)
    async with call.app[ENGINE].begin() as conn:
        for stmt in q.delete_task(record.task_id):
            await conn.execute(stmt)
    await call.app[REDIS].delete(call.app[CONFIG].control_key(record.task_id))
    return no_content()


# -- export --------------------------------------------------------------------------------------------
_EXPORT_PAGE = 500
#: Per app: exports in progress by user id (bounded by ``export_max_concurrent``).
_EXPORTS = web.AppKey("tracker_exports_running", dict)


def setup(app: web.Application) -> None:
    app[_EXPORTS] = {}


async def _export(call: Call, fmt: str) -> web.StreamResponse:
    """Stream matching tasks page by page (keyset on the export's order): a pool connection is held
    only while a page is read, never while the client reads. A client that takes no part of a write
    within ``export_write_timeout`` seconds is cut; each user runs at most ``export_max_concurrent``."""
    config = call.app[CONFIG]
    running: dict[str, int] = call.app[_EXPORTS]
    user = call.principal.user_id
    if running.get(user, 0) >= config.export_max_concurrent:
        raise json_error(429, "rate_limited",
                         f"at most {config.export_max_concurrent} exports at once per user: wait for one to finish")
    running[user] = running.get(user, 0) + 1
    try:
        return await _stream_export(call, fmt, config.export_write_timeout)
    finally:
        running[user] -= 1
        if running[user] <= 0:
            del running[user]


async def _stream_export(call: Call, fmt: str, write_timeout: float) -> web.StreamResponse:
    base = q.export_tasks(task_filters(call))
    enc = ExportEncoder(fmt)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/json; charset=utf-8",
        "Content-Disposition": f'attachment; filename="tasks.{fmt}"'})

    async def write(text: str) -> None:
        try:
            await asyncio.wait_for(resp.write(text.encode()), write_timeout)
        except TimeoutError:
            if call.request.transport is not None:
                call.request.transport.abort()
            raise ConnectionResetError(f"export reader made no progress for {write_timeout} s") from None

    page = await fetch_all(call.app, base.limit(_EXPORT_PAGE))
    await resp.prepare(call.request)
    await write(enc.start())
    while page:
        await write(enc.rows(task_record(r) for r in page))
        if len(page) < _EXPORT_PAGE:
            break
        last = page[-1]
        after = sa.or_(Task.created_at < last.created_at,
                       sa.and_(Task.created_at == last.created_at, Task.task_id < last.task_id))
        page = await fetch_all(call.app, base.where(after).limit(_EXPORT_PAGE))
    await write(enc.end())
    await resp.write_eof()
    return resp


@routes.operation("GET", "/export/tasks.csv", operation_id="exportTasksCsv", tag="export",
                  summary="All matching tasks as CSV (streamed)", query=TaskFilters,
                  ok=(200, "CSV with a header row", {"type": "string"}, "text/csv"), errors=(403, 429))
async def export_csv(call: Call) -> web.StreamResponse:
    return await _export(call, "csv")


@routes.operation("GET", "/export/tasks.json", operation_id="exportTasksJson", tag="export",
                  summary="All matching tasks as a JSON array (streamed)", query=TaskFilters,
                  ok=(200, "JSON array of tasks", {"type": "array", "items": ref("Task")}), errors=(403, 429))
async def export_json(call: Call) -> web.StreamResponse:
    return await _export(call, "json")
