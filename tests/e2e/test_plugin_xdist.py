"""A user's suite under pytest-xdist on servers named by ``TRACKER_TEST_DATABASE_URL`` /
``TRACKER_TEST_REDIS_URL``: the installed plugin gives each xdist worker a PostgreSQL database and
a Redis database of its own, so the workers' tasks never meet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import redis as redis_lib
from sqlalchemy.engine import make_url

from tracker import Tracker

USER_TEST = '''
import json, os, pathlib
import pytest

@pytest.mark.parametrize("i", range(6))
def test_records_a_task(tracker, tracker_database_url, tracker_redis_url, i):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    task_id = tracker.create_task(user_id=f"xdist-{worker}", task_type="probe", status="running")
    assert tracker.flush(10)
    out = pathlib.Path(os.environ["PLUGIN_OUT"]) / f"{worker}-{i}.json"
    out.write_text(json.dumps({"worker": worker, "database": tracker_database_url, "redis": tracker_redis_url,
                               "task_id": task_id}))
'''


def test_each_xdist_worker_gets_its_own_databases(database_url: str, redis_url: str, tmp_path: Path) -> None:
    project = tmp_path / "userproj"
    project.mkdir()
    (project / "test_probe.py").write_text(textwrap.dedent(USER_TEST))
    out = tmp_path / "out"
    out.mkdir()
    # Redis database 5 and up: clear of the databases this session's own tests use.
    shared_redis = redis_url.rsplit("/", 1)[0] + "/5"
    env = {**os.environ, "TRACKER_TEST_DATABASE_URL": database_url, "TRACKER_TEST_REDIS_URL": shared_redis,
           "PLUGIN_OUT": str(out)}
    for var in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_ADDOPTS"):
        env.pop(var, None)  # the inner run is a suite of its own, whether or not this one runs under xdist
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "load",
                          "test_probe.py"], cwd=project, env=env, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert len(records) == 6
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_worker.setdefault(r["worker"], []).append(r)
    assert set(by_worker) == {"gw0", "gw1"}, by_worker.keys()  # both workers ran tests
    base = make_url(database_url)
    for worker, rows in by_worker.items():
        assert {r["database"] for r in rows} == {base.set(database=f"{base.database}_{worker}").render_as_string(
            hide_password=False)}
        assert {r["redis"] for r in rows} == {shared_redis.rsplit("/", 1)[0] + f"/{5 + int(worker[2:])}"}
        # The worker's tasks are in its database, migrated by the plugin, and in no other worker's.
        own = Tracker(database_url=rows[0]["database"], redis_url=rows[0]["redis"])
        try:
            found = {t.task_id for t in own.tasks(user_id=f"xdist-{worker}")}
            assert {r["task_id"] for r in rows} <= found
            other = "gw1" if worker == "gw0" else "gw0"
            assert own.tasks(user_id=f"xdist-{other}") == []
        finally:
            own.close()
        client = redis_lib.Redis.from_url(rows[0]["redis"])
        try:
            assert client.dbsize() > 0  # its events went to its own Redis database
        finally:
            client.close()
