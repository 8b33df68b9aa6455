"""REST: log lines - create (one or a batch), search across tasks, counts by level."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from tracker import queries as q
from tracker.api import task_record
from tracker.records import LogRecord
from webgate.api.common import (
    Call,
    Endpoints,
    flush_writes,
    log_query,
    reply,
    scope_user,
    when,
)
from webgate.api.models import LogBatch, LogIn, LogList, LogStatsQuery
from webgate.api.schema import ref
from webgate.core.db import fetch_all
from webgate.core.errors import json_error
from webgate.core.keys import REPORTER

__all__ = ["routes"]

routes = Endpoints()


async def _owners(call: Call, task_ids: set[str]) -> dict[str, str | None]:
    """``task_id -> user_id`` of the named tasks; 404/403 if one is missing or not the caller's."""
    owners: dict[str, str | None] = {}
    for task_id in sorted(task_ids):
        rows = await fetch_all(call.app, q.task_by_id(task_id))
        if not rows:
            raise json_error(404, "not_found", f"no task {task_id!r}")
        record = task_record(rows[0])
        if not call.principal.can_see_user(record.user_id):
            raise json_error(403, "forbidden", f"task {task_id!r} belongs to another user")
        owners[task_id] = record.user_id
    return owners


@routes.operation("POST", "/logs", operation_id="createLogs", tag="logs",
                  summary="Add log lines (one object, or {\"logs\": [...]} for a batch)",
                  description="A line about a task needs the task's owner or an admin; a line without a task is the "
                       "caller's own (admins may name another user_id). Stored and published like a Celery "
                       "task's log.",
                  body=LogBatch | LogIn, body_required=True,
                  ok=(201, "Stored", ref("Accepted")),
                  extra=[(202, "Accepted; the store has not committed them yet", ref("Accepted"), "application/json")],
                  errors=(403, 404))
async def create_logs(call: Call) -> web.Response:
    lines: list[dict[str, Any]] = call.body["logs"] if "logs" in call.body else [call.body]
    p = call.principal
    owners = await _owners(call, {ln["task_id"] for ln in lines if ln.get("task_id")})
    plan = []
    for ln in lines:
        if ln.get("task_id"):
            if ln.get("user_id") is not None and ln["user_id"] != owners[ln["task_id"]]:
                raise json_error(400, "bad_request", "user_id does not match the task's owner")
            user_id = owners[ln["task_id"]]
        else:
            user_id = ln.get("user_id") or p.user_id
            if not p.can_see_user(user_id):
                raise json_error(403, "forbidden", "you may only log as yourself")
        plan.append((ln, user_id))
    # Everything checked: now write.
    rep = call.app[REPORTER]
    now = time.time()
    for i, (ln, user_id) in enumerate(plan):
        level = ln.get("level", "INFO")
        rep.log(ln.get("task_id"), q.level_number(level), ln["message"], user_id=user_id, source=ln.get("source"),
                context=ln.get("context"), traceback=ln.get("traceback"), attachments=ln.get("attachments"),
                ts=now + i * 1e-6, level=level)
    stored = await flush_writes(call.app)
    return reply({"accepted": len(plan)}, 201 if stored else 202)


@routes.operation("GET", "/logs", operation_id="listLogs", tag="logs",
                  summary="Search log lines across tasks (full text, level, time range)",
                  query=LogList, ok=(200, "A page of log lines", ref("LogPage")),
                  errors=(403,))
async def list_logs(call: Call) -> web.Response:
    user_id = scope_user(call, call.query.get("user_id"))
    task_id = call.query.get("task_id")
    if task_id and not call.principal.admin and await _exists(call, task_id):
        await _owners(call, {task_id})  # another user's task: 403 rather than a silently empty page
    n = call.query["limit"]
    rows = await fetch_all(call.app, log_query(call, task_id, user_id))
    items, nxt = q.page(rows, n, q.log_cursor)
    return reply({"items": [LogRecord.from_row(r).to_dict() for r in items], "next_cursor": nxt})


async def _exists(call: Call, task_id: str) -> bool:
    return bool(await fetch_all(call.app, q.task_by_id(task_id)))


@routes.operation("GET", "/logs/stats", operation_id="logStats", tag="logs", summary="Log lines counted by level",
                  query=LogStatsQuery,
                  ok=(200, "Counts by level", ref("LogStats")), errors=(403,))
async def log_stats(call: Call) -> web.Response:
    a = call.query
    user_id = scope_user(call, a.get("user_id"))
    if a.get("task_id") and not call.principal.admin and await _exists(call, a["task_id"]):
        await _owners(call, {a["task_id"]})
    rows = await fetch_all(call.app, q.log_stats(a.get("task_id"), when(a.get("since")), when(a.get("until")),
                                                 user_id))
    levels = {r.level: int(r._mapping["count"]) for r in rows}
    return reply({"total": sum(levels.values()), "levels": levels})
