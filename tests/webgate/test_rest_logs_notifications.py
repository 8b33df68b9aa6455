"""REST logs (create, search, stats, delete) and notifications (list, per user, read, delete,
stats), each scoped to the caller."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.conftest import wait_for
from tests.webgate.rest_client import Api, new_user, stream_events


@pytest.fixture()
async def api(gateway):
    async with aiohttp.ClientSession() as session:
        yield Api(session, gateway.api)


def log_rows(sql, marker: str) -> int:
    return sql.execute("SELECT count(*) FROM tracker_logs WHERE message LIKE %s", (f"%{marker}%",)).fetchone()[0]


# -- logs ---------------------------------------------------------------------------------------------------
async def test_create_logs_single_and_batch_then_search(api, rdb):
    user = new_user()
    t = await api.create(user, status="running")
    tid = t["task_id"]
    r = await api.call("POST", "/logs", user, json_body={
        "task_id": tid, "level": "WARNING", "message": f"disk nearly full {user}", "source": "system",
        "context": {"free": "2%"}, "attachments": [{"name": "df.txt", "content_type": "text/plain", "size": 3,
                                                     "data": "99%"}]})
    assert r.status == 201 and r.body == {"accepted": 1}, r.text
    r = await api.call("POST", "/logs", user, json_body={"logs": [
        {"task_id": tid, "message": "step one done"}, {"task_id": tid, "level": "ERROR", "message": "step two broke",
                                                       "traceback": "Traceback: boom"},
        {"message": f"a note without a task {user}"}]})
    assert r.status == 201 and r.body == {"accepted": 3}

    lines = (await api.call("GET", f"/tasks/{tid}/logs", user)).body["items"]
    assert [ln["message"] for ln in lines] == [f"disk nearly full {user}", "step one done", "step two broke"]
    first = lines[0]
    assert first["level"] == "WARNING" and first["source"] == "system" and first["context"] == {"free": "2%"}
    assert first["attachments"][0]["name"] == "df.txt" and lines[2]["traceback"] == "Traceback: boom"

    search = await api.call("GET", "/logs", user, params={"search": "broke"})
    assert [ln["message"] for ln in search.body["items"]] == ["step two broke"]
    mine = await api.call("GET", "/logs", user)
    assert len(mine.body["items"]) == 4  # the task's three and the free-standing note
    errors = await api.call("GET", "/logs", user, params={"level": "ERROR"})
    assert [ln["message"] for ln in errors.body["items"]] == ["step two broke"]
    assert (await api.call("GET", "/logs", new_user())).body["items"] == []
    assert (await api.call("GET", "/logs", new_user(), params={"task_id": tid})).status == 403
    assert (await api.call("GET", "/logs", new_user(), params={"user_id": user})).status == 403
    admin = await api.admin("GET", "/logs", params={"task_id": tid, "min_level": "WARNING"})
    assert [ln["level"] for ln in admin.body["items"]] == ["WARNING", "ERROR"]

    stats = await api.call("GET", "/logs/stats", user)
    assert stats.status == 200 and stats.body == {"total": 4, "levels": {"WARNING": 1, "INFO": 2, "ERROR": 1}}
    task_stats = await api.call("GET", "/logs/stats", user, params={"task_id": tid})
    assert task_stats.body["total"] == 3
    assert (await api.call("GET", "/logs/stats", new_user(), params={"task_id": tid})).status == 403

    # Published like a Celery task's log line.
    wait_for(lambda: sum(1 for ty, _ in stream_events(rdb, tid) if ty == "task.log") == 3, 10)
    data = [d for ty, d in stream_events(rdb, tid) if ty == "task.log"]
    assert data[0]["level"] == "WARNING" and data[0]["message"] == f"disk nearly full {user}"


async def test_log_pages_chain_with_cursor(api):
    user = new_user()
    t = await api.create(user)
    assert (await api.call("POST", "/logs", user, json_body={"logs": [
        {"task_id": t["task_id"], "message": f"line {i}"} for i in range(5)]})).status == 201
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await api.call("GET", f"/tasks/{t['task_id']}/logs", user, params=params)).body
        seen += [ln["message"] for ln in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [f"line {i}" for i in range(5)]


@pytest.mark.parametrize("body", [
    {"message": 5}, {"level": "LOUD", "message": "x"}, {"message": "x", "context": "ctx"}, {"message": "x", "y": 1},
    {"logs": []}, {"logs": [{"message": "ok"}, {"message": "x", "level": "NOPE"}]}, {"logs": "x"},
    {"message": "x\x00y"}, {"message": "x", "attachments": [{"size": 3}]}, {},
])
async def test_bad_logs_are_400_and_nothing_is_written(api, sql, body):
    user = new_user()
    marker = f"m-{user}"
    body = json.loads(json.dumps(body).replace('"ok"', json.dumps(marker)).replace('"x"', json.dumps(marker)))
    r = await api.call("POST", "/logs", user, json_body=body)
    assert r.status == 400 and r.error_code() == "bad_request", r.text
    await asyncio.sleep(0.3)
    assert log_rows(sql, marker) == 0


async def test_logs_about_other_users_tasks_are_refused_whole(api, sql):
    owner, other = new_user(), new_user()
    theirs = await api.create(owner)
    mine = await api.create(other)
    marker = f"sneaky-{other}"
    r = await api.call("POST", "/logs", other, json_body={"logs": [
        {"task_id": mine["task_id"], "message": marker}, {"task_id": theirs["task_id"], "message": marker}]})
    assert r.status == 403 and r.error_code() == "forbidden"
    r = await api.call("POST", "/logs", other, json_body={"message": marker, "user_id": owner})
    assert r.status == 403
    r = await api.call("POST", "/logs", other, json_body={"task_id": "no-such-task", "message": marker})
    assert r.status == 404
    await asyncio.sleep(0.3)
    assert log_rows(sql, marker) == 0


async def test_delete_task_logs(api):
    user = new_user()
    t = await api.create(user)
    await api.call("POST", "/logs", user, json_body={"logs": [{"task_id": t["task_id"], "message": "a"},
                                                             {"task_id": t["task_id"], "message": "b"}]})
    assert (await api.call("DELETE", f"/tasks/{t['task_id']}/logs", new_user())).status == 403
    r = await api.call("DELETE", f"/tasks/{t['task_id']}/logs", user)
    assert r.status == 200 and r.body == {"deleted": 2}
    assert (await api.call("GET", f"/tasks/{t['task_id']}/logs", user)).body["items"] == []


# -- notifications ------------------------------------------------------------------------------------------
def add_notification(sql, user: str, title: str, priority: str = "normal", read: bool = False) -> int:
    row = sql.execute(
        "INSERT INTO tracker_notifications (user_id, title, message, type, priority, channels, delivery, is_read) "
        "VALUES (%s, %s, 'msg', 'error', %s, ARRAY['websocket','email'], %s::jsonb, %s) RETURNING id",
        (user, title, priority, json.dumps({"websocket": {"status": "sent", "attempts": 1},
                                            "email": {"status": "failed", "attempts": 3, "last_error": "refused"}}),
         read)).fetchone()
    return int(row[0])


async def test_notifications_are_the_callers_own(api, sql):
    user, other = new_user(), new_user()
    ids = [add_notification(sql, user, f"n{i}", priority="urgent" if i == 0 else "normal") for i in range(3)]
    theirs = add_notification(sql, other, "theirs", priority="high")

    r = await api.call("GET", "/notifications", user)
    assert r.status == 200 and [n["id"] for n in r.body["items"]] == list(reversed(ids))
    n = r.body["items"][-1]
    assert n["title"] == "n0" and n["channels"] == ["websocket", "email"] and n["is_read"] is False
    assert n["delivery"]["email"] == {"status": "failed", "attempts": 3, "last_error": "refused"}
    page = await api.call("GET", "/notifications", user, params={"limit": "2"})
    rest = await api.call("GET", "/notifications", user, params={"cursor": page.body["next_cursor"]})
    assert [x["id"] for x in page.body["items"] + rest.body["items"]] == list(reversed(ids))
    urgent = await api.call("GET", "/notifications", user, params={"priority": "urgent"})
    assert [x["id"] for x in urgent.body["items"]] == [ids[0]]

    assert (await api.call("GET", f"/users/{user}/notifications", user)).status == 200
    assert (await api.call("GET", f"/users/{other}/notifications", user)).status == 403
    admin_view = await api.admin("GET", f"/users/{other}/notifications")
    assert [x["id"] for x in admin_view.body["items"]] == [theirs]
    assert (await api.call("GET", "/notifications", user, params={"user_id": other})).status == 403

    stats = await api.call("GET", "/notifications/stats", user)
    assert stats.body == {"total": 3, "unread": 3, "urgent": 1, "high": 0}

    r = await api.call("PATCH", f"/notifications/{ids[1]}/read", user)
    assert r.status == 200 and r.body["is_read"] is True and r.body["read_at"] is not None
    unread = await api.call("GET", "/notifications", user, params={"unread": "true"})
    assert {x["id"] for x in unread.body["items"]} == {ids[0], ids[2]}
    read = await api.call("GET", "/notifications", user, params={"unread": "false"})
    assert [x["id"] for x in read.body["items"]] == [ids[1]]
    assert (await api.call("GET", "/notifications/stats", user)).body["unread"] == 2

    assert (await api.call("PATCH", f"/notifications/{theirs}/read", user)).status == 403
    assert (await api.call("DELETE", f"/notifications/{theirs}", user)).status == 403
    assert sql.execute("SELECT is_read FROM tracker_notifications WHERE id = %s", (theirs,)).fetchone()[0] is False
    assert (await api.call("PATCH", "/notifications/999999999/read", user)).status == 404
    assert (await api.call("PATCH", "/notifications/abc/read", user)).status == 404
    assert (await api.call("GET", "/notifications", user, params={"unread": "maybe"})).status == 400

    assert (await api.call("DELETE", f"/notifications/{ids[2]}", user)).status == 204
    assert (await api.call("DELETE", f"/notifications/{ids[2]}", user)).status == 404
    assert (await api.call("GET", "/notifications/stats", user)).body["total"] == 2
    assert (await api.admin("DELETE", f"/notifications/{theirs}")).status == 204


def user_notifications(sql, user: str) -> int:
    return sql.execute("SELECT count(*) FROM tracker_notifications WHERE user_id = %s", (user,)).fetchone()[0]


async def test_create_notifications_for_oneself_or_as_admin(api, sql, rdb):
    user, other = new_user(), new_user()
    t = await api.create(user)
    r = await api.call("POST", "/notifications", user, json_body={
        "title": "Import done", "message": "12 rows", "type": "success", "task_id": t["task_id"],
        "metadata": {"rows": 12}, "dedup_key": "import-1"})
    assert r.status == 201, r.text
    n = r.body
    assert n["user_id"] == user and n["title"] == "Import done" and n["channels"] == ["websocket"]
    assert n["task_id"] == t["task_id"] and n["metadata"] == {"rows": 12} and n["is_read"] is False
    again = await api.call("POST", "/notifications", user, json_body={"title": "Import done", "dedup_key": "import-1"})
    assert again.status == 201 and again.body["id"] == n["id"]  # idempotent per caller
    listed = await api.call("GET", "/notifications", user)
    assert [x["id"] for x in listed.body["items"]] == [n["id"]]

    def pushed() -> bool:  # the notifier delivers the websocket channel as a stream event
        return any(f.get(b"type") == b"notification" and json.loads(f[b"data"]).get("id") == n["id"]
                   for _id, f in rdb.xrange("tracker:events"))
    wait_for(pushed, 15)

    batch = await api.admin("POST", "/notifications", json_body={"notifications": [
        {"user_id": other, "title": "Maintenance", "priority": "high"},
        {"user_id": user, "title": "Hello", "type": "info"}]})
    assert batch.status == 201 and [x["user_id"] for x in batch.body["items"]] == [other, user]
    assert (await api.call("GET", "/notifications/stats", other)).body["high"] == 1


@pytest.mark.parametrize("body, status", [
    ({"title": "x", "user_id": "someone-else"}, 403), ({"title": "x", "task_id": "no-such-task"}, 404),
    ({"title": ""}, 400), ({"title": "   "}, 400), ({"title": "x", "channels": ["pigeon"]}, 400),
    ({"title": "x", "priority": "asap"}, 400), ({"title": "x", "colour": "red"}, 400),
    ({"notifications": [{"title": "fine"}, {"title": "x", "type": "shout"}]}, 400),
    ({"notifications": [{"title": "fine"}, {"title": "x", "user_id": "someone-else"}]}, 403),
])
async def test_refused_notifications_store_nothing(api, sql, body, status):
    user = new_user()
    r = await api.call("POST", "/notifications", user, json_body=body)
    assert r.status == status, r.text
    assert "error" in r.body
    assert user_notifications(sql, user) == 0 and user_notifications(sql, "someone-else") == 0
