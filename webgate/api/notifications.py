"""REST: in-app notifications of the caller (admins: anyone's) - list, mark read, delete, counts,
and posting new ones within the channel and rate limits of ``POST /notifications``."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from tracker import notify as nt
from tracker import queries as q
from tracker.records import NotificationRecord
from webgate.api.common import Call, Endpoints, no_content, owned_row, reply, scope_user, visible_task
from webgate.api.models import (
    NotificationBatch,
    NotificationFilters,
    NotificationIn,
    NotificationList,
    NotificationPath,
    UserPath,
    UserQuery,
)
from webgate.api.schema import ref
from webgate.core.db import execute, fetch_all, fetch_one
from webgate.core.errors import json_error
from webgate.core.keys import CONFIG

__all__ = ["routes", "USER_CHANNELS", "ADMIN_CHANNELS"]

routes = Endpoints()

async def _page(call: Call, user_id: str | None) -> web.Response:
    a = call.query
    n = a["limit"]
    rows = await fetch_all(call.app, q.notifications(user_id=user_id, unread=a.get("unread"), limit=n,
                                                     cursor=a.get("cursor"), type=a.get("type"),
                                                     priority=a.get("priority")))
    items, nxt = q.page(rows, n, lambda r: q.encode_cursor(r.id))
    return reply({"items": [NotificationRecord.from_row(r).to_dict() for r in items], "next_cursor": nxt})


@routes.operation("GET", "/notifications", operation_id="listNotifications", tag="notifications",
                  summary="The caller's notifications, newest first (admins: everyone's, or user_id's)",
                  query=NotificationList, ok=(200, "A page of notifications", ref("NotificationPage")),
                  errors=(403,))
async def list_notifications(call: Call) -> web.Response:
    return await _page(call, scope_user(call, call.query.get("user_id")))


@routes.operation("GET", "/users/{user_id}/notifications", operation_id="listUserNotifications", tag="notifications",
                  summary="One user's notifications (that user or an admin)",
                  path=UserPath, query=NotificationFilters,
                  ok=(200, "A page of notifications", ref("NotificationPage")), errors=(403,))
async def user_notifications(call: Call) -> web.Response:
    user_id = scope_user(call, call.path["user_id"])
    return await _page(call, user_id)


async def _own(call: Call) -> int:
    """The notification id if the caller may touch it: 404 when missing, 403 when another user's."""
    nid = call.path["notification_id"]
    await owned_row(call, q.notification_by_id(nid), "notification", nid)
    return int(nid)


@routes.operation("PATCH", "/notifications/{notification_id}/read", operation_id="markNotificationRead",
                  tag="notifications", summary="Mark a notification read", path=NotificationPath,
                  ok=(200, "The notification", ref("Notification")), errors=(403, 404))
async def mark_read(call: Call) -> web.Response:
    nid = await _own(call)
    rows = await execute(call.app, q.mark_notification_read(nid))
    if not rows:  # deleted in between
        raise json_error(404, "not_found", f"no notification {nid}")
    return reply(NotificationRecord.from_row(rows[0]).to_dict())


@routes.operation("DELETE", "/notifications/{notification_id}", operation_id="deleteNotification", tag="notifications",
                  summary="Delete a notification", path=NotificationPath, ok=(204, "Deleted", None), errors=(403, 404))
async def delete_notification(call: Call) -> web.Response:
    nid = await _own(call)
    await execute(call.app, q.delete_notification(nid))
    return no_content()


@routes.operation("GET", "/notifications/stats", operation_id="notificationStats", tag="notifications",
                  summary="Notification counts: total, unread, urgent, high", query=UserQuery,
                  ok=(200, "Counts", ref("NotificationStats")), errors=(403,))
async def notification_stats(call: Call) -> web.Response:
    row = await fetch_one(call.app, q.notification_stats(scope_user(call, call.query.get("user_id"))))
    counts = dict(row._mapping) if row is not None else {}
    return reply({k: int(counts.get(k) or 0) for k in ("total", "unread", "urgent", "high")})


#: Channels a caller may post on: users only in-app (their own feed); admins also e-mail, to the
#: addresses ``tracker_email["recipients"]`` gives the notified user. Slack and webhooks carry the
#: operators' alerts and are reached only by rules and server code (``Tracker.notify``).
USER_CHANNELS = frozenset({"websocket"})
ADMIN_CHANNELS = frozenset({"websocket", "email"})


@routes.operation("POST", "/notifications", operation_id="createNotifications", tag="notifications",
                  summary="Send in-app (admins: also e-mail) notifications: one object or {\"notifications\": [...]}",
                  description="Users notify themselves, on the websocket channel only; admins anyone, on websocket and "
                       "email (to the user's configured recipients). Other channels get 403 forbidden_channel. "
                       "action_url must be an http(s) URL. metadata is stored as given and selects nothing. "
                       "Per caller at most tracker_notify_rate_limit notifications per tracker_notify_rate_window "
                       "seconds (a batch counts each), else 429 rate_limited with Retry-After. A task_id must "
                       "name a task the caller may see. dedup_key makes a retry idempotent (per caller). "
                       "Delivery is recorded per channel.",
                  body=NotificationBatch | NotificationIn, body_required=True,
                  ok=(201, "The stored notification(s)", {"anyOf": [ref("Notification"), ref("NotificationPage")]}),
                  errors=(403, 404, 429))
async def create_notifications(call: Call) -> web.Response:
    from webgate.notify.notifier import NOTIFIER

    batch = "notifications" in call.body
    items: list[dict[str, Any]] = [dict(n) for n in (call.body["notifications"] if batch else [call.body])]
    p = call.principal
    allowed = ADMIN_CHANNELS if p.admin else USER_CHANNELS
    for item in items:
        item["user_id"] = item.get("user_id") or p.user_id
        if not p.can_see_user(item["user_id"]):
            raise json_error(403, "forbidden", "you may only notify yourself")
        refused = sorted(set(item.get("channels") or ()) - allowed)
        if refused:
            raise json_error(403, "forbidden_channel",
                             f"you may not post on {', '.join(refused)}: "
                             f"{'admins' if p.admin else 'users'} may post on {', '.join(sorted(allowed))} only")
        if item.get("dedup_key"):
            # Keys are namespaced by caller: nobody can fetch another caller's notification by its key.
            item["dedup_key"] = f"rest:{p.user_id}:{item['dedup_key']}"
        for key in [k for k, v in item.items() if v is None and k in ("message", "metadata", "action_url")]:
            item.pop(key)
    # Everything is checked before the post is counted: a refused post costs no budget.
    checked = nt.check_notifications(items, origin="rest")
    for item in items:
        if item.get("task_id"):
            await visible_task(call, item["task_id"])
    notifier = call.app[NOTIFIER]
    wait = await notifier.admit_posts(p.user_id, len(checked))
    if wait is not None:
        cfg = call.app[CONFIG]
        limit = f"at most {cfg.notify_rate_limit} notifications per {cfg.notify_rate_window:g} s per user"
        if len(checked) > cfg.notify_rate_limit:
            limit += f": a batch of {len(checked)} never fits, split it"
        exc = json_error(429, "rate_limited", limit)
        exc.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        raise exc
    records = await notifier.store(checked)
    if batch:
        return reply({"items": [r.to_dict() for r in records], "next_cursor": None}, 201)
    return reply(records[0].to_dict(), 201)
