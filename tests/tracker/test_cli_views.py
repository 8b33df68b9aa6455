"""``tracker tasks|show|logs|watch|stats|export`` against the real store; ``watch`` under a
pseudo-terminal follows a task run by a real worker until its bar reaches 100%."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import ROOT, strict_json, wait_for
from tracker.cli import main

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture()
def runner(tracker_env):
    # The tables are as wide as COLUMNS says when it is set (pytest-xdist's workers set it to 80):
    # these tests choose the width rather than inherit it.
    return CliRunner(env={"COLUMNS": "200"})


@pytest.fixture()
def user_tasks(tracker):
    """Three producer-recorded tasks of a fresh user: running at 40%, completed, failed."""
    user = f"cli-{uuid.uuid4().hex[:8]}"
    running = tracker.create_task(user_id=user, task_type="import", task_name="Import", status="running", tags=["a"])
    tracker.update_progress(running, 40.0, current_step="parsing")
    tracker.add_log(running, "INFO", "read 10 rows", user_id=user)
    tracker.add_log(running, "ERROR", "row 11 is broken", user_id=user)
    done = tracker.create_task(user_id=user, task_type="import", task_name="Import", status="running")
    tracker.complete(done, result={"rows": 3}, user_id=user)
    failed = tracker.create_task(user_id=user, task_type="report", task_name="Report", status="running")
    tracker.fail(failed, "no data", error_type="EmptyError", user_id=user)
    assert tracker.flush(10)
    return user, running, done, failed


def test_tasks_table_and_json(runner, user_tasks):
    user, running, done, failed = user_tasks
    r = runner.invoke(main, ["tasks", "--user", user])
    assert r.exit_code == 0, r.output
    assert running in r.output and done in r.output and failed in r.output
    assert "40.0%" in r.output and "parsing" in r.output and "completed" in r.output and "failed" in r.output
    r = runner.invoke(main, ["tasks", "--user", user, "--status", "failed", "--json"])
    page = json.loads(r.output)
    assert [t["task_id"] for t in page["items"]] == [failed] and page["next_cursor"] is None
    r = runner.invoke(main, ["tasks", "--user", user, "--limit", "2", "--json"])
    first = json.loads(r.output)
    r = runner.invoke(main, ["tasks", "--user", user, "--limit", "2", "--json", "--cursor", first["next_cursor"]])
    rest = json.loads(r.output)
    whole = json.loads(runner.invoke(main, ["tasks", "--user", user, "--json"]).output)
    assert [t["task_id"] for t in first["items"] + rest["items"]] == [t["task_id"] for t in whole["items"]]
    assert {t["task_id"] for t in whole["items"]} == {failed, done, running} and rest["next_cursor"] is None
    r = runner.invoke(main, ["tasks", "--status", "exploded"])
    assert r.exit_code != 0 and "unknown status" in r.output


def test_show_details_and_logs(runner, user_tasks):
    user, running, done, failed = user_tasks
    r = runner.invoke(main, ["show", running])
    assert r.exit_code == 0, r.output
    assert "Import" in r.output and "parsing" in r.output and "40.0%" in r.output
    assert "read 10 rows" in r.output and "row 11 is broken" in r.output
    r = runner.invoke(main, ["show", failed, "--json"])
    data = json.loads(r.output)
    assert data["status"] == "failed" and data["error_type"] == "EmptyError" and data["error_message"] == "no data"
    r = runner.invoke(main, ["show", "no-such-task"])
    assert r.exit_code != 0 and "no task" in r.output


def test_logs_filters_and_json(runner, user_tasks):
    user, running, *_ = user_tasks
    r = runner.invoke(main, ["logs", running])
    assert r.exit_code == 0
    assert r.output.index("read 10 rows") < r.output.index("row 11 is broken")
    r = runner.invoke(main, ["logs", running, "--level", "ERROR", "--json"])
    lines = [json.loads(x) for x in r.output.splitlines()]
    assert [(x["level"], x["message"]) for x in lines] == [("ERROR", "row 11 is broken")]
    r = runner.invoke(main, ["logs", "--user", user, "--search", "rows", "--json"])
    assert [json.loads(x)["message"] for x in r.output.splitlines()] == ["read 10 rows"]
    r = runner.invoke(main, ["logs", "--level", "LOUD"])
    assert r.exit_code != 0 and "unknown log level" in r.output


def test_logs_follow_prints_new_lines_until_the_task_ends(tracker, tracker_env):
    user = f"cli-{uuid.uuid4().hex[:8]}"
    task_id = tracker.create_task(user_id=user, task_type="job", status="running")
    tracker.add_log(task_id, "INFO", "before following", user_id=user)
    assert tracker.flush(10)
    proc = subprocess.Popen([sys.executable, "-m", "tracker.cli", "logs", task_id, "--follow", "--json",
                             "--timeout", "30"], env={**os.environ, **tracker_env, "PYTHONPATH": str(ROOT)},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert json.loads(first)["message"] == "before following"
        time.sleep(0.5)
        tracker.add_log(task_id, "WARNING", "while following", user_id=user)
        tracker.complete(task_id, user_id=user)
        tracker.flush(10)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(x["level"], x["message"]) for x in lines] == [("WARNING", "while following")]


def test_stats_table_and_json(runner, user_tasks):
    user, *_ = user_tasks
    r = runner.invoke(main, ["stats", "--user", user, "--json"])
    data = json.loads(r.output)
    groups = {g["group"]: g for g in data["groups"]}
    assert groups["import"]["total"] == 2 and groups["import"]["completed"] == 1
    assert groups["report"]["failed"] == 1 and data["overall"]["total"] == 3
    r = runner.invoke(main, ["stats", "--user", user])
    assert r.exit_code == 0 and "import" in r.output and "report" in r.output and "50.0%" in r.output


def test_export_csv_and_json(runner, user_tasks, tmp_path):
    user, running, done, failed = user_tasks
    r = runner.invoke(main, ["export", "--user", user])
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert {row["task_id"] for row in rows} == {running, done, failed}
    out = tmp_path / "tasks.json"
    r = runner.invoke(main, ["export", "--user", user, "--format", "json", "--status", "completed", "-o", str(out)])
    assert r.exit_code == 0
    assert [t["task_id"] for t in json.loads(out.read_text())] == [done]
    r = runner.invoke(main, ["export", "--since", "the day before"])
    assert r.exit_code != 0 and "cannot read" in r.output


def _read_pty(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode(errors="replace")


def test_watch_in_a_terminal_shows_the_bar_reaching_100(tracked_app, worker, tracker, tracker_env):
    from signals import tracking_context
    from tests.apps.tasks import steps

    with tracking_context(user_id="watcher"):
        # Starts in two seconds: the watch begins while the task is still pending.
        res = steps.apply_async((25,), {"delay": 0.1}, queue=worker.queue, countdown=2)
    wait_for(lambda: tracker.get(res.id), 10, what="pending row")
    leader, follower = pty.openpty()
    env = {**os.environ, **tracker_env, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLUMNS": "140",
           "LINES": "40"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "tracker.cli", "watch", res.id, "--timeout", "60"],
                            stdin=follower, stdout=follower, stderr=follower, env=env, cwd=Path(ROOT),
                            start_new_session=True)
    os.close(follower)
    try:
        raw = _read_pty(leader, proc, 60)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(leader)
    assert proc.returncode == 0, raw[-2000:]
    assert "\x1b[" in raw  # drawn as a live terminal display, not plain lines
    text = ANSI.sub("", raw)
    percents = {int(p) for p in re.findall(r"(\d+)%", text)}
    assert 100 in percents and 0 in percents, text[-2000:]
    assert len(percents) >= 4, percents  # it moved through intermediate values on its way
    assert "completed" in text and "step 25" in text


def test_json_output_stays_strict_with_a_nan_in_the_store(runner, user_tasks, sql, tmp_path):
    # A value JSON cannot hold (stored by other means than the Recorder) is null in the CLI's
    # JSON and in exports, which other programs parse.
    user, running, _, _ = user_tasks
    sql.execute("UPDATE tracker_tasks SET eta_seconds = 'NaN' WHERE task_id = %s", (running,))
    try:
        _check_strict_json(runner, user, running, tmp_path)
    finally:  # other tests share the database
        sql.execute("UPDATE tracker_tasks SET eta_seconds = NULL WHERE task_id = %s", (running,))


def _check_strict_json(runner, user: str, running: str, tmp_path) -> None:
    r = runner.invoke(main, ["show", running, "--json"])
    assert r.exit_code == 0, r.output
    assert strict_json(r.output)["eta_seconds"] is None
    out = tmp_path / "tasks.json"
    r = runner.invoke(main, ["export", "--user", user, "--format", "json", "-o", str(out)])
    assert r.exit_code == 0, r.output
    exported = {t["task_id"]: t for t in strict_json(out.read_text())}
    assert exported[running]["eta_seconds"] is None and exported[running]["progress"] == 40.0
