"""``tracker demo``: the main job, run for real in a subprocess.

``--once`` with throw-away servers (what a fresh machine does), ``--once`` against the
suite's servers (so the stored records can be inspected afterwards), and an interactive run
stopped with SIGINT/SIGTERM, after which nothing the demo started may be left running.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import psutil
import pytest

from tests.conftest import ROOT, wait_for

TRACKER = str(Path(sys.executable).parent / "tracker")
_SERVER_VARS = ("TRACKER_DATABASE_URL", "TRACKER_REDIS_URL", "TRACKER_DEMO_BROKER_URL", "TRACKER_SECRET")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SERVER_VARS}
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ports(output: str) -> dict[str, int]:
    found = {
        "gateway": re.search(r"Dashboard: http://127\.0\.0\.1:(\d+)/#token=", output),
        "database": re.search(r"Database:\s+postgresql://\S+?:(\d+)/", output),
        "redis": re.search(r"Redis:\s+redis://\S+?:(\d+)/", output),
    }
    assert all(found.values()), f"URLs missing from the demo's output:\n{output[-3000:]}"
    return {k: int(m.group(1)) for k, m in found.items() if m}


def _run_once(env: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    out = tmp_path / "demo.out"
    with out.open("wb") as f:
        proc = subprocess.run([TRACKER, "demo", "--once", "--scale", "0.3", "--timeout", "90", "--port", "0"],
                              env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=240)
    return proc.returncode, out.read_text(errors="replace")


def _fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode(errors="replace")


def _table_rows(output: str) -> list[list[str]]:
    """Rows of the summary table (task id, name, user, status, ...)."""
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 11 and re.fullmatch(r"[0-9a-f-]{36}", cells[0]):
            rows.append(cells)
    return rows


def test_demo_once_with_throwaway_servers(tmp_path: Path) -> None:
    code, output = _run_once(_env(), tmp_path)
    assert code == 0, output[-4000:]
    assert "starting a throw-away PostgreSQL" in output and "starting a throw-away Redis" in output
    token = re.search(r"/#token=(\S+)", output)
    assert token is not None
    claims = jwt.decode(token.group(1), options={"verify_signature": False})
    assert claims["admin"] is True and claims["sub"] == "admin"
    rows = _table_rows(output)
    assert len(rows) == 13, output[-4000:]
    statuses = {(r[1], r[3]) for r in rows}
    assert ("demo.export_report", "failed") in statuses
    assert {r[3] for r in rows if r[1] != "demo.export_report"} == {"completed"}
    assert "all 13 tasks finished as expected" in output
    # Everything it started is gone: servers, gateway, worker.
    for name, port in _ports(output).items():
        assert not _listening(port), f"{name} still listening on {port} after the demo exited"


def test_demo_once_uses_configured_servers(tracker_env: dict[str, str], tracker: Any, tmp_path: Path) -> None:
    env = _env(TRACKER_DATABASE_URL=tracker_env["TRACKER_DATABASE_URL"],
               TRACKER_REDIS_URL=tracker_env["TRACKER_REDIS_URL"])
    code, output = _run_once(env, tmp_path)
    assert code == 0, output[-4000:]
    assert "throw-away" not in output
    tag_match = re.search(r"\(tag (demo-[0-9a-f]+)\)", output)
    assert tag_match is not None
    tag = tag_match.group(1)

    records = {r.task_id: r for r in tracker.tasks(tag=tag, limit=100)}
    assert len(records) == 13
    by_name: dict[str, list[Any]] = {}
    for r in records.values():
        by_name.setdefault(r.name, []).append(r)
    assert sorted((n, len(v)) for n, v in by_name.items()) == [
        ("demo.export_report", 1), ("demo.import_csv", 2), ("demo.nightly_backup", 1), ("demo.resize_images", 1),
        ("demo.send_email", 1), ("demo.sync_crm", 1), ("demo.thumbnail", 6)]

    failed = by_name["demo.export_report"][0]
    assert failed.status == "failed" and failed.error_type == "ValueError"
    assert "missing the 'rows' section" in failed.error_message and "Traceback" in failed.traceback
    assert failed.user_id == "carol" and failed.progress == 45.0

    retried = by_name["demo.sync_crm"][0]
    assert retried.status == "completed" and retried.retries == 1 and retried.result == "synced acme"

    thumbs = by_name["demo.thumbnail"]
    assert len({t.group_id for t in thumbs}) == 1 and thumbs[0].group_id is not None
    assert all(t.status == "completed" and t.user_id == "bob" for t in thumbs)

    for imp in by_name["demo.import_csv"]:
        assert imp.status == "completed" and imp.user_id == "alice"
        assert imp.metadata == {"source": "demo"} and "import" in imp.tags
        assert imp.result["rows"] == 40
        points = tracker.progress_history(imp.task_id)
        # track() over 40 rows (41 values) and two steps: every value is stored.
        assert len(points) == 43
        assert [p.current_step for p in points][-2:] == ["validating", "saving"]
        messages = [log.message for log in tracker.logs(task_id=imp.task_id)]
        assert messages[0].startswith("importing ") and messages[-1] == "saved 40 rows"
        names = {m.name for m in tracker.metrics(task_id=imp.task_id)}
        assert {"rows_imported", "import.amount_total", "task.run_time"} <= names

    plain = by_name["demo.send_email"][0]
    assert plain.status == "completed" and plain.result == "carol@example.com"
    assert [log.message for log in tracker.logs(task_id=plain.task_id)] == [
        "email 'Your reports' sent to carol@example.com"]
    # The live view saw the run on the stream.
    seen = re.search(r"(\d+) live events seen\)", output)
    assert seen is not None and int(seen.group(1)) >= 13 * 2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interactive_demo_stops_everything_on_signal(sig: int, tmp_path: Path) -> None:
    out = tmp_path / "demo.out"
    with out.open("wb") as f:
        proc = subprocess.Popen([TRACKER, "demo", "--scale", "0.2", "--port", "0"], env=_env(), cwd=ROOT,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "Still serving" in out.read_text(errors="replace") or proc.poll() is not None,
                 timeout=120, what="demo serving")
        output = out.read_text(errors="replace")
        assert proc.poll() is None, output[-4000:]
        ports = _ports(output)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['gateway']}/healthz", timeout=5) as r:
            assert r.status == 200
        dashboard_url = re.search(r"Dashboard: (http://\S+)", output)
        assert dashboard_url is not None
        dashboard = _fetch(dashboard_url.group(1))
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "celery" in names and "gateway" in names and "redis-server" in names

        proc.send_signal(sig)
        assert proc.wait(60) == 0
        output = out.read_text(errors="replace")
        assert "interrupted: everything the demo started has been stopped" in output
        deadline = time.monotonic() + 10
        left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [c for c in left if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"left running: {[c.cmdline() for c in left]}"
        for name, port in ports.items():
            assert not _listening(port), f"{name} still listening on {port}"
        # The printed URL (with its admin token) opened the dashboard while the demo ran.
        status, content_type, body = dashboard
        assert status == 200 and content_type.startswith("text/html"), (status, content_type, body[:300])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
