"""A broken store or bus never fails a task; buffered records arrive once the server is back."""

from __future__ import annotations

import re
import uuid

import pytest
import redis as redis_lib

from tests.conftest import wait_for
from tracker import Tracker
from tracker.demo.services import PostgresServer, RedisServer
from tracker.events import decode
from tracker.migrate import upgrade

N = 20


def _succeeded(worker, ids) -> bool:
    done = set(re.findall(r"Task tests\.build\[([0-9a-f-]+)\] succeeded", worker.log()))
    return set(ids) <= done


@pytest.fixture()
def own_pg():
    server = PostgresServer().start()
    upgrade(server.url)
    yield server
    server.cleanup()


@pytest.fixture()
def own_redis():
    server = RedisServer().start()
    yield server
    server.cleanup()


def test_postgres_down_mid_run(own_pg, make_worker, tracker_env):
    from tests.apps.tasks import build

    worker = make_worker(extra_env={"TRACKER_DATABASE_URL": own_pg.url})
    store = Tracker(database_url=own_pg.url, redis_url=tracker_env["TRACKER_REDIS_URL"])
    try:
        warm = build.apply_async((2, 0.0), queue=worker.queue)
        wait_for(lambda: (r := store.get(warm.id)) is not None and r.status == "completed")

        own_pg.stop()
        ids = [build.apply_async((3, 0.0), queue=worker.queue).id for _ in range(N)]
        # Tasks keep running and succeed while PostgreSQL is away.
        wait_for(lambda: _succeeded(worker, ids), timeout=60, what="tasks succeeded during outage")

        own_pg.start()
        def stored():
            return store.count(status="completed") == N + 1
        wait_for(stored, timeout=60, what="buffered task states written")
        for task_id in ids:
            rec = store.get(task_id)
            assert rec is not None and rec.status == "completed" and rec.progress == 100.0
            assert len(store.logs(task_id=task_id)) == 4
            assert [p.progress for p in store.progress_history(task_id)][:4] == [0.0, 100 / 3, 200 / 3, 100.0]
            assert len(store.metrics(name="rows_written", task_id=task_id)) == 1
    finally:
        store.close()
    assert "cannot write to PostgreSQL" in worker.log()


def test_redis_bus_down_mid_run(own_redis, make_worker, tracker, tracker_env):
    from tests.apps.tasks import build

    worker = make_worker(extra_env={"TRACKER_REDIS_URL": own_redis.url})
    client = redis_lib.Redis.from_url(own_redis.url)
    try:
        warm = build.apply_async((2, 0.0), queue=worker.queue)
        wait_for(lambda: (r := tracker.get(warm.id)) is not None and r.status == "completed")

        own_redis.kill()
        ids = [build.apply_async((3, 0.0), queue=worker.queue, task_id=str(uuid.uuid4())).id for _ in range(N)]
        # The store still records everything while the bus is down.
        wait_for(lambda: all((r := tracker.get(i)) is not None and r.status == "completed" for i in ids),
                 timeout=60, what="tasks completed during bus outage")

        own_redis.start()
        def completed_events() -> set[str]:
            try:
                entries = client.xrange("tracker:events")
            except redis_lib.ConnectionError:
                return set()
            events = [decode(i, f) for i, f in entries]
            return {e.task_id for e in events if e.type == "task.completed" and e.task_id in ids}
        wait_for(lambda: completed_events() == set(ids), timeout=60, what="buffered events published")
        events = [decode(i, f) for i, f in client.xrange("tracker:events")]
        for task_id in ids:
            types = [e.type for e in events if e.task_id == task_id]
            assert types[0] == "task.started" and types[-1] == "task.completed"
            # The last progress value before the status change is always published.
            progress = [e.data["progress"] for e in events if e.task_id == task_id and e.type == "task.progress"]
            assert progress and progress[-1] == 25.0
    finally:
        client.close()
