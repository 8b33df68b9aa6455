"""Task arguments with redaction, and re-run: real prefork worker, Redis broker, a ``tracker
--app tests.apps.worker gateway`` subprocess (the gateway's Celery app), PostgreSQL, and Chromium
for the task detail's arguments and Re-run button."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, GatewayProcess, make_token, wait_for
from tests.e2e.test_dashboard import until

SECRET_KWARGS = {"password": "s3cret", "nested": {"api_key": "k"}, "n": 1}
REDACTED_KWARGS = {"password": "[redacted]", "nested": {"api_key": "[redacted]"}, "n": 1}
ADMIN = make_token("ops-admin", admin=True)


@pytest.fixture(scope="module")
def gw(tracker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway for the module, started the way users start it: with the test Celery app."""
    gp = GatewayProcess(tracker_env, tmp_path_factory.mktemp("gw-args"))
    yield gp
    gp.stop()


def rest(gw: GatewayProcess, method: str, path: str, token: str = ADMIN, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(gw.api + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text and r.headers.get_content_type() == "application/json"
                              else text)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode() or "null")


def task(gw: GatewayProcess, task_id: str) -> dict[str, Any]:
    status, body = rest(gw, "GET", f"/tasks/{task_id}")
    assert status == 200, body
    return dict(body)


def finished(gw: GatewayProcess, task_id: str, status: str = "completed", timeout: float = 30) -> dict[str, Any]:
    """The task once it has ``status`` and its arguments: a tracked producer's pending row (which
    carries them) and the worker's states come from two processes, committed in any order."""
    def done() -> dict[str, Any] | None:
        code, body = rest(gw, "GET", f"/tasks/{task_id}")
        return body if code == 200 and body["status"] == status and body["args"] is not None else None

    return dict(wait_for(done, timeout=timeout, what=f"{task_id} {status}"))


def test_secret_arguments_are_redacted_everywhere(gw, worker, sql, rdb):
    import signals
    from tests.apps.tasks import app

    user = f"args-{uuid.uuid4().hex[:8]}"
    since = f"{int(time.time() * 1000) - 1}-0"
    # Published with no tracking in this process: the worker's hooks record the arguments.
    worker_only = str(uuid.uuid4())
    app.send_task("tests.accept", kwargs=SECRET_KWARGS, queue=worker.queue, task_id=worker_only)
    # Published through the producer's hook: it records them (the worker leaves them alone).
    task_id = str(uuid.uuid4())
    signals.install(app)
    try:
        with signals.tracking_context(user_id=user):
            app.send_task("tests.accept", args=["x", {"Auth_TOKEN": "s3cret"}], kwargs=SECRET_KWARGS,
                          queue=worker.queue, task_id=task_id)
    finally:
        signals.uninstall(app)
    assert finished(gw, worker_only)["kwargs"] == REDACTED_KWARGS
    record = finished(gw, task_id)
    assert record["kwargs"] == REDACTED_KWARGS
    assert record["args"] == ["x", {"Auth_TOKEN": "[redacted]"}]
    assert record["result"] == 5

    # The REST writes redact too: a task created with arguments, and a log line's context.
    rest_id = str(uuid.uuid4())
    status, created = rest(gw, "POST", "/tasks", body={"task_id": rest_id, "user_id": user, "task_name": "tests.accept",
                                                       "args": [{"secret": "s3cret"}], "kwargs": SECRET_KWARGS})
    assert status == 201, created
    assert created["kwargs"] == REDACTED_KWARGS and created["args"] == [{"secret": "[redacted]"}]
    status, _ = rest(gw, "POST", "/logs", body={"task_id": rest_id, "message": "calling the API",
                                                "context": {"headers": {"Authorization": "s3cret"}, "try": 2}})
    assert status == 201
    status, logs = rest(gw, "GET", f"/tasks/{rest_id}/logs")
    assert logs["items"][0]["context"] == {"headers": {"Authorization": "[redacted]"}, "try": 2}
    # The worker's captured log line kept its `extra=` context, redacted.
    status, logs = rest(gw, "GET", f"/tasks/{task_id}/logs")
    accepted = [ln for ln in logs["items"] if ln["message"].startswith("accepted")]
    assert accepted and accepted[0]["context"]["db_password"] == "[redacted]"
    assert accepted[0]["context"]["request"] == repr({"headers": {"Authorization": "[redacted]"}})

    # No table holds the secret: every text, JSON, array and tsvector column of every tracker table.
    columns = sql.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name LIKE 'tracker%%' AND data_type IN ('text', 'character varying', 'json', 'jsonb', "
        "'ARRAY', 'tsvector', 'USER-DEFINED')").fetchall()
    tables = {t for t, _ in columns}
    assert {"tracker_tasks", "tracker_logs", "tracker_metrics", "tracker_notifications"} <= tables
    found = {f"{t}.{c}": n for t, c in columns
             if (n := sql.execute(f'SELECT count(*) FROM "{t}" WHERE "{c}"::text LIKE %s',
                                  ("%s3cret%",)).fetchone()[0])}
    assert found == {}
    # ... while the same scan does see the redacted values (it would see the secret).
    hits = {f"{t}.{c}" for t, c in columns
            if sql.execute(f'SELECT count(*) FROM "{t}" WHERE "{c}"::text LIKE %s', ("%[redacted]%",)).fetchone()[0]}
    assert {"tracker_tasks.args", "tracker_tasks.kwargs", "tracker_logs.context"} <= hits

    # No stream entry holds it, though the stream has this task's events.
    entries = rdb.xrange("tracker:events", min=since)
    raw = [b" ".join(k + b"=" + v for k, v in fields.items()) for _, fields in entries]
    assert any(task_id.encode() in r for r in raw)
    assert not [r for r in raw if b"s3cret" in r]

    # No export holds it, though both exports list both tasks with their redacted arguments.
    for fmt in ("csv", "json"):
        status, text = rest(gw, "GET", f"/export/tasks.{fmt}?user_id={user}")
        assert status == 200
        text = text if isinstance(text, str) else json.dumps(text)
        assert task_id in text and rest_id in text and "[redacted]" in text
        assert "s3cret" not in text


def test_rerun_of_a_failed_task_runs_with_the_same_arguments(gw, tracked_app, worker, tmp_path):
    from signals import tracking_context

    marker = str(tmp_path / "first-run")
    task_id = str(uuid.uuid4())
    with tracking_context(user_id="rerun-owner", tags=["nightly"]):
        tracked_app.send_task("tests.fail_first", args=[marker], kwargs={"label": "report"}, queue=worker.queue,
                              task_id=task_id)
    failed = finished(gw, task_id, "failed")
    assert failed["args"] == [marker] and failed["kwargs"] == {"label": "report"}

    status, body = rest(gw, "POST", f"/tasks/{task_id}/rerun", token=make_token("rerun-owner"))
    assert status == 403 and body["error"]["code"] == "forbidden"

    status, body = rest(gw, "POST", f"/tasks/{task_id}/rerun")
    assert status == 202, body
    assert body["rerun_of"] == task_id and body["task_id"] != task_id
    new = finished(gw, body["task_id"])
    assert new["rerun_of"] == task_id
    assert (new["name"], new["args"], new["kwargs"]) == ("tests.fail_first", [marker], {"label": "report"})
    assert (new["queue"], new["user_id"], new["tags"]) == (worker.queue, "rerun-owner", ["nightly"])
    assert new["result"] == "ok report" and new["worker"] == worker.name

    # The CLI does the same through Tracker.rerun (the app from --app).
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "tracker.cli", "--app", "tests.apps.worker", "rerun", task_id,
                          "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    assert cli["rerun_of"] == task_id
    assert finished(gw, cli["task_id"])["rerun_of"] == task_id


def test_rerun_refuses_redacted_unstored_and_unknown_tasks(gw, tmp_path):
    redacted, bare, unknown = (str(uuid.uuid4()) for _ in range(3))
    for tid, body in ((redacted, {"task_name": "tests.accept", "args": [], "kwargs": {"token": "t0k"}}),
                      (bare, {"task_name": "tests.accept"}),
                      (unknown, {"task_name": "tests.no_such_task", "args": [1], "kwargs": {}})):
        status, created = rest(gw, "POST", "/tasks", body={"task_id": tid, **body})
        assert status == 201, created
    for tid, why in ((redacted, "redacted"), (bare, "not stored"), (unknown, "does not know")):
        status, body = rest(gw, "POST", f"/tasks/{tid}/rerun")
        assert status == 409 and body["error"]["code"] == "not_rerunnable", body
        assert why in body["error"]["message"]
    status, body = rest(gw, "POST", f"/tasks/{uuid.uuid4()}/rerun")
    assert status == 404
    # The CLI says the same, with a non-zero exit status.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "tracker.cli", "--app", "tests.apps.worker", "rerun", redacted],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "redacted" in out.stderr


async def test_rerun_without_a_celery_app_is_503(tracker_env):
    import aiohttp
    from aiohttp import web

    from tracker.config import TrackerConfig
    from tracker.demo.services import free_port
    from webgate import create_app

    port = free_port()
    runner = web.AppRunner(create_app(TrackerConfig.from_env(), celery_app=None), shutdown_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        api = f"http://127.0.0.1:{port}/api/v1/progress"
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            tid = str(uuid.uuid4())
            async with s.post(f"{api}/tasks", json={"task_id": tid, "task_name": "tests.add", "args": [1, 2]}) as r:
                assert r.status == 201
            async with s.post(f"{api}/tasks/{tid}/rerun") as r:
                body = await r.json()
                assert r.status == 503 and body["error"]["code"] == "no_celery_app"
                assert "celery -A" in body["error"]["message"]
    finally:
        await runner.cleanup()


def open_detail(browser: Any, gw: GatewayProcess, token: str, task_id: str) -> Any:
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(f"{gw.base}/#token={urllib.parse.quote(token)}")
    page.wait_for_selector("#app", state="visible")
    page.evaluate(f"window.trackerDashboard.select({json.dumps(task_id)})")
    until(page, "!!document.getElementById('detail-args-keyword')")
    return page


def test_dashboard_shows_arguments_and_reruns(browser, gw, worker, tmp_path):
    from tests.apps.tasks import app

    # No tracking in this process: the worker's hooks record both tasks and their arguments.
    secret_id, failing_id = str(uuid.uuid4()), str(uuid.uuid4())
    app.send_task("tests.accept", kwargs=SECRET_KWARGS, queue=worker.queue, task_id=secret_id)
    app.send_task("tests.fail_first", args=[str(tmp_path / "m")], queue=worker.queue, task_id=failing_id)
    finished(gw, secret_id)
    finished(gw, failing_id, "failed")
    shots = ROOT / "artifacts"
    shots.mkdir(exist_ok=True)

    page = open_detail(browser, gw, ADMIN, secret_id)
    shown = json.loads(page.text_content("#detail-args-keyword").removeprefix("kwargs: "))
    assert shown == REDACTED_KWARGS
    assert "s3cret" not in page.content()
    assert page.is_disabled("#detail-rerun")  # redacted: the button says why instead
    assert "redacted" in page.get_attribute("#detail-rerun", "title")
    page.screenshot(path=str(shots / "task-args-redacted.png"))

    page.evaluate(f"window.trackerDashboard.select({json.dumps(failing_id)})")
    until(page, f"document.getElementById('detail-id').textContent === {json.dumps(failing_id)} && "
                "!!document.getElementById('detail-rerun') && !document.getElementById('detail-rerun').disabled")
    page.click("#detail-rerun")
    # The page moves to the new task, which links back to the failed one and completes.
    until(page, f"(document.getElementById('detail-rerun-of') || {{}}).textContent === {json.dumps(failing_id)}")
    new_id = page.text_content("#detail-id")
    assert new_id and new_id != failing_id
    assert finished(gw, new_id)["rerun_of"] == failing_id
    page.screenshot(path=str(shots / "task-args-rerun.png"))
    assert not page.errors
    page.context.close()

    # A user sees the arguments of their own task but no Re-run button.
    status, _ = rest(gw, "POST", "/tasks", body={"task_id": (own := str(uuid.uuid4())), "user_id": "viewer",
                                                 "task_name": "tests.add", "args": [1, 2]})
    assert status == 201
    page = open_detail(browser, gw, make_token("viewer"), own)
    assert page.text_content("#detail-args-positional") == "args: [1,2]"
    assert page.query_selector("#detail-rerun") is None
    assert not page.errors
    page.context.close()
