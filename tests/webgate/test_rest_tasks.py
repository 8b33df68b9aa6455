"""REST tasks: reads scoped to the caller, writes for non-Celery producers through the Reporter
(stored and published like a Celery task), validation before any write, control on real
workers, delete, stats, pagination and streamed exports."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import eventually, wait_for
from tests.webgate.rest_client import Api, new_user, stream_events


@pytest.fixture()
async def api(gateway):
    async with aiohttp.ClientSession() as session:
        yield Api(session, gateway.api)


def task_rows(sql, task_id: str) -> int:
    return sql.execute("SELECT count(*) FROM tracker_tasks WHERE task_id = %s", (task_id,)).fetchone()[0]




# -- reads and scoping -----------------------------------------------------------------------------------
async def test_create_then_read_only_by_owner_or_admin(api):
    owner, other = new_user(), new_user()
    created = await api.create(owner, task_id=f"t-{owner}", status="running", total_steps=3,
                               metadata={"file": "a.csv"}, tags=["import"])
    assert created["task_id"] == f"t-{owner}" and created["status"] == "running"
    assert created["user_id"] == owner and created["metadata"] == {"file": "a.csv"} and created["tags"] == ["import"]
    assert created["started_at"] is not None and created["total_steps"] == 3 and created["progress"] == 0

    got = await api.call("GET", f"/tasks/t-{owner}", owner)
    assert got.status == 200 and got.body["task_id"] == f"t-{owner}" and got.body["name"] == "Import"
    assert (await api.call("GET", f"/tasks/t-{owner}", other)).error_code() == "forbidden"
    assert (await api.call("GET", f"/tasks/t-{owner}", other)).status == 403
    assert (await api.call("GET", "/tasks/no-such-task", owner)).status == 404
    assert (await api.admin("GET", f"/tasks/t-{owner}")).status == 200

    mine = await api.call("GET", "/tasks", owner)
    assert [t["task_id"] for t in mine.body["items"]] == [f"t-{owner}"] and mine.body["next_cursor"] is None
    assert (await api.call("GET", "/tasks", other)).body["items"] == []
    assert (await api.call("GET", "/tasks", other, params={"user_id": owner})).status == 403
    as_admin = await api.admin("GET", "/tasks", params={"user_id": owner})
    assert [t["task_id"] for t in as_admin.body["items"]] == [f"t-{owner}"]


async def test_token_in_query_parameter_is_refused_except_for_exports(api):
    from tests.conftest import make_token

    user = new_user()
    await api.create(user)
    # Tokens in URLs end up in access logs and proxies: REST reads them from the header only.
    r = await api.call("GET", "/tasks", params={"token": make_token(user)})
    assert r.status == 401 and r.body["error"]["code"] == "unauthorized"
    r = await api.call("GET", "/export/tasks.json", params={"token": make_token(user)})
    assert r.status == 200


async def test_pagination_and_filters(api):
    user = new_user()
    ids = []
    for i in range(5):
        t = await api.create(user, task_type="even" if i % 2 == 0 else "odd", tags=[f"n{i}"],
                             status="completed" if i < 2 else "pending")
        ids.append(t["task_id"])
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await api.call("GET", "/tasks", user, params=params)
        assert page.status == 200 and len(page.body["items"]) <= 2
        seen += [t["task_id"] for t in page.body["items"]]
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each exactly once
    by_type = await api.call("GET", "/tasks", user, params={"task_type": "even"})
    assert {t["task_id"] for t in by_type.body["items"]} == {ids[0], ids[2], ids[4]}
    by_status = await api.call("GET", "/tasks", user, params={"status": "completed,failed"})
    assert {t["task_id"] for t in by_status.body["items"]} == {ids[0], ids[1]}
    by_tag = await api.call("GET", "/tasks", user, params={"tag": "n3"})
    assert [t["task_id"] for t in by_tag.body["items"]] == [ids[3]]
    search = await api.call("GET", "/tasks", user, params={"search": ids[2][:12]})
    assert ids[2] in [t["task_id"] for t in search.body["items"]]
    recent = await api.call("GET", "/tasks", user, params={"since": "-10m", "until": str(time.time() + 60)})
    assert len(recent.body["items"]) == 5
    assert (await api.call("GET", "/tasks", user, params={"since": "2999-01-01"})).body["items"] == []


@pytest.mark.parametrize("params, needle", [
    ({"limit": "0"}, "limit"), ({"limit": "abc"}, "limit"), ({"limit": "5000"}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor"), ({"status": "exploded"}, "status"), ({"since": "yesterday"}, "since"),
    ({"colour": "red"}, "colour"), ({"since": "-99999999999999w"}, "range"), ({"task_type": "a\x00b"}, "NUL"),
])
async def test_bad_list_parameters_are_400(api, params, needle):
    r = await api.call("GET", "/tasks", new_user(), params=params)
    assert r.status == 400, r.text
    assert r.error_code() == "bad_request" and needle in r.body["error"]["message"]


# -- creation ---------------------------------------------------------------------------------------------
async def test_create_needs_admin_and_writes_nothing(api, sql):
    user = new_user()
    r = await api.call("POST", "/tasks", user, json_body={"task_id": f"t-{user}", "user_id": user})
    assert r.status == 403 and r.error_code() == "forbidden"
    assert task_rows(sql, f"t-{user}") == 0


@pytest.mark.parametrize("body", [
    {"progress": 150}, {"progress": "half"}, {"progress": True}, {"status": "exploded"}, {"status": 3},
    {"total_steps": 0}, {"total_steps": 2**40}, {"total_steps": 1.5}, {"tags": "import"}, {"tags": [1, 2]},
    {"metadata": [1]}, {"metadata": {"k": "x" * 70_000}}, {"unknown": 1}, {"task_name": "a\x00b"},
    {"user_id": ""}, {"metadata": {"bad\x00key": 1}}, {"task_id": "x" * 300},
])
async def test_create_rejects_bad_input_without_writing(api, sql, body):
    task_id = f"bad-{new_user()}"
    r = await api.admin("POST", "/tasks", json_body={"task_id": task_id, "user_id": "u", **body})
    assert r.status == 400, r.text
    assert r.error_code() == "bad_request"
    await asyncio.sleep(0.3)  # longer than a flush interval: a write would have landed
    assert task_rows(sql, task_id) == 0


@pytest.mark.parametrize("raw, ctype", [
    (b"{not json", "application/json"), (b"[1, 2]", "application/json"), (b"\xff\xfe", "application/json"),
    (b'{"progress": NaN}', "application/json"), (b"", "application/json"), (b'"text"', "text/plain"),
])
async def test_malformed_bodies_are_400(api, sql, raw, ctype):
    user = new_user()
    task = await api.create(user, status="running")
    r = await api.call("PATCH", f"/tasks/{task['task_id']}/progress", user, data=raw,
                       headers={"Content-Type": ctype})
    assert r.status == 400 and r.error_code() == "bad_request", r.text
    assert (await api.call("GET", f"/tasks/{task['task_id']}/progress", user)).body["items"] == []


async def test_oversized_body_is_413_json(api, sql):
    task_id = f"big-{new_user()}"
    r = await api.admin("POST", "/tasks", data=json.dumps({"task_id": task_id, "metadata": {"x": "y" * 2_000_000}}),
                        headers={"Content-Type": "application/json"})
    assert r.status == 413 and "error" in r.body
    assert task_rows(sql, task_id) == 0


async def test_duplicate_create_is_409_and_changes_nothing(api):
    user = new_user()
    t = await api.create(user, task_id=f"dup-{user}", task_name="first")
    r = await api.admin("POST", "/tasks", json_body={"task_id": t["task_id"], "task_name": "second"})
    assert r.status == 409 and r.error_code() == "conflict"
    assert (await api.admin("GET", f"/tasks/{t['task_id']}")).body["name"] == "first"


async def test_create_without_id_generates_one(api):
    r = await api.admin("POST", "/tasks", json_body={"task_type": "report"})
    assert r.status == 201 and len(r.body["task_id"]) == 36 and r.body["user_id"] is None
    assert r.body["name"] == "report" and r.body["task_type"] == "report" and r.body["status"] == "pending"


# -- producer writes publish the same events as Celery tasks ------------------------------------------------
async def test_progress_status_and_complete_are_stored_and_published(api, rdb):
    user = new_user()
    t = await api.create(user, status="running", total_steps=4)
    tid = t["task_id"]
    for pct in (10, 55.5):
        r = await api.call("PATCH", f"/tasks/{tid}/progress", user,
                           json_body={"progress": pct, "current_step": f"at {pct}", "step_index": 2, "message": "hi"})
        assert r.status == 200, r.text
        assert r.body["progress"] == pct and r.body["current_step"] == f"at {pct}" and r.body["step_index"] == 2
        assert r.body["eta_seconds"] is not None and r.body["eta_seconds"] >= 0
    r = await api.call("PATCH", f"/tasks/{tid}/status", user, json_body={"status": "paused"})
    assert r.status == 200 and r.body["status"] == "paused"
    r = await api.call("PATCH", f"/tasks/{tid}/status", user, json_body={"status": "running"})
    assert r.body["status"] == "running"
    r = await api.call("POST", f"/tasks/{tid}/complete", user, json_body={"result": {"rows": 12}})
    assert r.status == 200 and r.body["status"] == "completed" and r.body["progress"] == 100
    assert r.body["result"] == {"rows": 12} and r.body["finished_at"] is not None

    history = await api.call("GET", f"/tasks/{tid}/progress", user)
    assert [p["progress"] for p in history.body["items"]] == [10, 55.5]
    assert history.body["items"][1]["current_step"] == "at 55.5"

    def published() -> list[str]:
        return [t for t, _ in stream_events(rdb, tid)]
    types = wait_for(lambda: (lambda ts: ts if "task.completed" in ts else None)(published()), 10)
    assert types[0] == "task.pending"
    for expected in ("task.started", "task.progress", "task.paused", "task.resumed", "task.completed"):
        assert expected in types
    assert types.index("task.paused") < types.index("task.resumed") < types.index("task.completed")
    progress = [d for ty, d in stream_events(rdb, tid) if ty == "task.progress"]
    assert progress[-1]["progress"] == 55.5 and progress[-1]["current_step"] == "at 55.5"


async def test_fail_records_error(api, rdb):
    user = new_user()
    t = await api.create(user, status="running")
    r = await api.call("POST", f"/tasks/{t['task_id']}/fail", user,
                       json_body={"error_message": "disk full", "error_type": "IOError", "traceback": "tb"})
    assert r.status == 200 and r.body["status"] == "failed"
    assert r.body["error_message"] == "disk full" and r.body["error_type"] == "IOError" and r.body["traceback"] == "tb"
    wait_for(lambda: any(ty == "task.failed" for ty, _ in stream_events(rdb, t["task_id"])), 10)


async def test_finished_task_refuses_further_writes(api):
    user = new_user()
    t = await api.create(user, status="running")
    assert (await api.call("POST", f"/tasks/{t['task_id']}/complete", user)).status == 200
    for method, path, body in [("PATCH", "/progress", {"progress": 5}), ("PATCH", "/status", {"status": "running"}),
                               ("POST", "/complete", None), ("POST", "/fail", {"error_message": "x"}),
                               ("POST", "/pause", None), ("POST", "/cancel", None)]:
        r = await api.call(method, f"/tasks/{t['task_id']}{path}", user, json_body=body)
        assert r.status == 409 and r.error_code() == "conflict", (path, r.text)
    got = await api.call("GET", f"/tasks/{t['task_id']}", user)
    assert got.body["status"] == "completed" and got.body["progress"] == 100


async def test_other_users_cannot_write(api):
    owner, other = new_user(), new_user()
    t = await api.create(owner, status="running")
    for method, path, body in [("PATCH", "/progress", {"progress": 5}), ("PATCH", "/status", {"status": "paused"}),
                               ("POST", "/complete", None), ("POST", "/fail", None), ("POST", "/pause", None),
                               ("POST", "/resume", None), ("POST", "/cancel", None), ("DELETE", "", None),
                               ("DELETE", "/logs", None), ("GET", "/logs", None), ("GET", "/progress", None),
                               ("GET", "/metrics", None)]:
        r = await api.call(method, f"/tasks/{t['task_id']}{path}", other, json_body=body)
        assert r.status == 403 and r.error_code() == "forbidden", (method, path, r.text)
    got = await api.call("GET", f"/tasks/{t['task_id']}", owner)
    assert got.body["status"] == "running" and got.body["progress"] == 0


@pytest.mark.parametrize("path, body", [
    ("/progress", {"progress": -1}), ("/progress", {}), ("/progress", {"progress": 10, "step_index": -1}),
    ("/progress", {"progress": 10, "extra": True}), ("/status", {"status": "done"}), ("/status", {}),
    ("/status", {"status": "failed", "error_message": 7}),
])
async def test_bad_updates_change_nothing(api, path, body):
    user = new_user()
    t = await api.create(user, status="running")
    r = await api.call("PATCH", f"/tasks/{t['task_id']}{path}", user, json_body=body)
    assert r.status == 400 and r.error_code() == "bad_request", r.text
    await asyncio.sleep(0.3)
    got = await api.call("GET", f"/tasks/{t['task_id']}", user)
    assert got.body["status"] == "running" and got.body["progress"] == 0 and got.body["updated_at"] == t["updated_at"]


# -- control, delete --------------------------------------------------------------------------------------
async def test_cancel_pending_producer_task(api, rdb):
    user = new_user()
    t = await api.create(user)
    r = await api.call("POST", f"/tasks/{t['task_id']}/cancel", user)
    assert r.status == 200 and r.body["accepted"] is True and r.body["action"] == "cancel"
    assert r.body["task"]["status"] == "cancelled"
    assert rdb.get(f"tracker:control:{t['task_id']}") == b"cancel"
    assert (await api.call("POST", f"/tasks/{t['task_id']}/cancel", user, json_body={"terminate": "yes"})).status == 400


async def test_pause_resume_cancel_a_running_worker_task(api, tracked_app, worker):
    from signals import tracking_context
    from tests.apps.tasks import slow

    user = new_user()
    with tracking_context(user_id=user):
        res = slow.apply_async((30,), {"step": 0.05}, queue=worker.queue)

    async def status() -> str | None:
        r = await api.call("GET", f"/tasks/{res.id}", user)
        return r.body["status"] if r.status == 200 else None

    await eventually(lambda: _is(status, "running"))
    r = await api.call("POST", f"/tasks/{res.id}/pause", user)
    assert r.status == 200 and r.body["accepted"]
    await eventually(lambda: _is(status, "paused"))
    r = await api.call("POST", f"/tasks/{res.id}/resume", user)
    assert r.status == 200
    await eventually(lambda: _is(status, "running"))
    assert (await api.call("DELETE", f"/tasks/{res.id}", user)).status == 409  # running: cancel first
    r = await api.call("POST", f"/tasks/{res.id}/cancel", user)
    assert r.status == 200
    await eventually(lambda: _is(status, "cancelled"))
    got = await api.call("GET", f"/tasks/{res.id}", user)
    assert got.body["progress"] < 99 and got.body["finished_at"] is not None


async def _is(status, expected: str) -> bool:
    return await status() == expected


async def test_delete_removes_task_and_history(api, sql):
    user = new_user()
    t = await api.create(user, status="running")
    tid = t["task_id"]
    await api.call("PATCH", f"/tasks/{tid}/progress", user, json_body={"progress": 40})
    assert (await api.call("POST", "/logs", user, json_body={"task_id": tid, "message": "hello"})).status == 201
    assert (await api.call("POST", f"/tasks/{tid}/complete", user)).status == 200
    r = await api.call("DELETE", f"/tasks/{tid}", user)
    assert r.status == 204
    assert (await api.call("GET", f"/tasks/{tid}", user)).status == 404
    assert task_rows(sql, tid) == 0
    assert sql.execute("SELECT count(*) FROM tracker_logs WHERE task_id = %s", (tid,)).fetchone()[0] == 0
    assert (await api.call("GET", "/logs", user, params={"task_id": tid})).body["items"] == []
    assert (await api.call("DELETE", f"/tasks/{tid}", user)).status == 404


# -- stats -------------------------------------------------------------------------------------------------
async def test_stats_scoped_to_the_caller(api):
    user = new_user()
    for status in ("completed", "completed", "failed", "running"):
        t = await api.create(user, task_type=f"kind-{user}", status="running")
        if status == "completed":
            await api.call("POST", f"/tasks/{t['task_id']}/complete", user)
        elif status == "failed":
            await api.call("POST", f"/tasks/{t['task_id']}/fail", user)
    r = await api.call("GET", "/tasks/stats", user)
    assert r.status == 200 and r.body["group_by"] == "task_type"
    (group,) = r.body["groups"]
    assert group["group"] == f"kind-{user}" and group["total"] == 4 and group["completed"] == 2
    assert group["failed"] == 1 and group["running"] == 1
    assert group["success_rate"] == pytest.approx(2 / 3)
    assert group["p50_duration"] is not None and group["throughput_per_min"] > 0
    assert r.body["overall"]["total"] == 4
    by_status = await api.call("GET", "/tasks/stats", user, params={"group_by": "status"})
    assert {g["group"]: g["total"] for g in by_status.body["groups"]} == {"completed": 2, "failed": 1, "running": 1}
    none = await api.call("GET", "/tasks/stats", user, params={"group_by": "none"})
    assert none.body["groups"] == [] and none.body["overall"]["total"] == 4
    assert (await api.call("GET", "/tasks/stats", user, params={"group_by": "colour"})).status == 400
    assert (await api.call("GET", "/tasks/stats", user, params={"user_id": "someone-else"})).status == 403
    admin = await api.admin("GET", "/tasks/stats", params={"user_id": user})
    assert admin.body["overall"]["total"] == 4


# -- a Celery task's history over REST ----------------------------------------------------------------------
async def test_celery_task_logs_progress_and_metrics(api, tracked_app, worker):
    from signals import tracking_context
    from tests.apps.tasks import build

    user = new_user()
    with tracking_context(user_id=user):
        res = build.apply_async((20,), queue=worker.queue)

    async def done() -> bool:
        r = await api.call("GET", f"/tasks/{res.id}", user)
        return r.status == 200 and r.body["status"] == "completed"

    await eventually(done, 30)
    logs = await eventually(lambda: _logs(api, res.id, user, {}), 10)
    assert any("wrote 10 rows" in ln["message"] for ln in logs)
    warnings = (await api.call("GET", f"/tasks/{res.id}/logs", user, params={"min_level": "WARNING"})).body["items"]
    assert warnings and all(ln["level"] in ("WARNING", "ERROR", "CRITICAL") for ln in warnings)
    found = (await api.call("GET", f"/tasks/{res.id}/logs", user, params={"search": "rows"})).body["items"]
    assert [ln["message"] for ln in found] == ["wrote 10 rows"]
    newest = (await api.call("GET", f"/tasks/{res.id}/logs", user, params={"order": "desc", "limit": "1"})).body
    assert len(newest["items"]) == 1 and newest["next_cursor"] is not None
    assert newest["items"][0]["id"] == max(ln["id"] for ln in logs)

    points = (await api.call("GET", f"/tasks/{res.id}/progress", user)).body["items"]
    assert len(points) >= 3 and any(p["current_step"] == "verifying" for p in points)
    metrics = await eventually(lambda: _metrics(api, res.id, user), 10)
    assert {"rows_written", "task.run_time"} <= {m["name"] for m in metrics}
    only = (await api.call("GET", f"/tasks/{res.id}/metrics", user, params={"name": "rows_written"})).body["items"]
    assert [(m["value"], m["unit"], m["labels"]) for m in only] == [(1200, "count", {"table": "x"})]


async def _logs(api: Api, task_id: str, user: str, params: dict[str, str]) -> list[dict[str, Any]]:
    r = await api.call("GET", f"/tasks/{task_id}/logs", user, params=params)
    return r.body["items"] if r.status == 200 and len(r.body["items"]) >= 3 else []


async def _metrics(api: Api, task_id: str, user: str) -> list[dict[str, Any]]:
    items = (await api.call("GET", f"/tasks/{task_id}/metrics", user)).body["items"]
    return items if any(m["name"] == "task.run_time" for m in items) else []


# -- export ---------------------------------------------------------------------------------------------
async def test_export_streams_csv_and_json(api):
    user = new_user()
    ids = {(await api.create(user, metadata={"i": i}, tags=["x", "y"]))["task_id"] for i in range(7)}
    r = await api.call("GET", "/export/tasks.csv", user)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert r.headers.get("Transfer-Encoding") == "chunked"  # streamed, not built whole
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["task_id"] for row in rows} == ids
    assert all(row["user_id"] == user and json.loads(row["tags"]) == ["x", "y"] for row in rows)
    r = await api.call("GET", "/export/tasks.json", user, params={"status": "pending"})
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    assert {t["task_id"] for t in r.body} == ids and {t["metadata"]["i"] for t in r.body} == set(range(7))
    assert (await api.call("GET", "/export/tasks.json", user, params={"status": "completed"})).body == []
    other = await api.call("GET", "/export/tasks.csv", new_user())
    assert other.status == 200 and len(list(csv.DictReader(io.StringIO(other.text)))) == 0
    assert (await api.call("GET", "/export/tasks.csv", new_user(), params={"user_id": user})).status == 403
    admin = await api.admin("GET", "/export/tasks.json", params={"user_id": user})
    assert len(admin.body) == 7
