"""Redis (the tracker's bus) SIGKILLed and restarted while 500 tasks run.

The tasks keep running; every one of the 500 reaches its final state in PostgreSQL; the
events buffered during the outage reach the stream; the gateway reconnects to Redis; and a
client that resumes with ``since`` has seen exactly the stream's events, each once, in order.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis as redis_lib

from tests.conftest import make_token, wait_for
from tests.faults.conftest import final_count, producer
from tests.faults.feedclient import FeedClient, expected_ids
from tracker.events import decode

N_SLEEP = 400
N_BUILD = 100


def _terminal_events(client: redis_lib.Redis, ids: set[str]) -> set[str]:
    try:
        entries: Any = client.xrange("tracker:events")
    except redis_lib.ConnectionError:
        return set()
    return {e.task_id for e in (decode(i, f) for i, f in entries)
            if e.type in ("task.completed", "task.failed") and e.task_id in ids}


async def test_redis_sigkill_while_500_tasks_run(own_redis: Any, make_worker: Any, gateway_process: Any,
                                                 tracker_env: dict[str, str], sql: Any, ws_session: Any) -> None:
    env = {"TRACKER_REDIS_URL": own_redis.url}
    worker = await asyncio.to_thread(make_worker, concurrency=2, extra_env=env)
    gw = await asyncio.to_thread(gateway_process, extra_env=env)
    bus = redis_lib.Redis.from_url(own_redis.url)
    client = FeedClient(gw.ws_url, make_token("admin", admin=True), "all", since="0-0").start(ws_session)
    try:
        await asyncio.wait_for(client.subscribed.wait(), 15)
        ids: list[str] = []
        with producer(tracker_env["TRACKER_TEST_BROKER_URL"], tracker_env["TRACKER_DATABASE_URL"],
                      own_redis.url) as app:
            for i in range(N_SLEEP + N_BUILD):
                task_id = str(uuid.uuid4())
                if i % 5 == 4:
                    app.send_task("tests.build", args=(2, 0.005), queue=worker.queue, task_id=task_id)
                else:
                    app.send_task("tests.sleep", args=(0.03,), queue=worker.queue, task_id=task_id)
                ids.append(task_id)
        # Kill -9 once a fifth of them are done, while the rest run.
        await asyncio.to_thread(wait_for, lambda: final_count(sql, ids) >= 100, 60, 0.02, "100 tasks done")
        own_redis.kill()
        killed_at = final_count(sql, ids)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(own_redis.start)

        # Every task reaches its final state in PostgreSQL...
        await asyncio.to_thread(wait_for, lambda: final_count(sql, ids) == len(ids), 120, 0.2, "500 final")
        assert killed_at < len(ids), "the outage should happen while tasks are still running"
        rows = sql.execute("SELECT status, count(*) FROM tracker_tasks WHERE task_id = ANY(%s) GROUP BY status",
                           (ids,)).fetchall()
        assert dict(rows) == {"completed": len(ids)}
        # ... every task's terminal event reaches the stream (buffered through the outage) ...
        await asyncio.to_thread(wait_for, lambda: _terminal_events(bus, set(ids)) == set(ids), 60, 0.2,
                                "terminal events in the stream")
        # ... and the resuming client has exactly the stream's events, in order, once each.
        want = expected_ids(bus, "all", "0-0")

        async def caught_up() -> None:
            while client.last_id != want[-1]:
                await asyncio.sleep(0.1)

        await asyncio.wait_for(caught_up(), 60)
        assert client.duplicates() == 0
        assert client.ids == want
        assert len(want) >= 3 * len(ids)  # pending, started and completed at least
        print(f"killed with {killed_at}/{len(ids)} final; {len(want)} events; client connected "
              f"{client.connects}x, closes {client.close_codes}")
        gw_log = gw.logfile.read_text(errors="replace")
        assert gw.proc.poll() is None, gw_log[-3000:]
    finally:
        await client.stop()
        bus.close()
        await asyncio.to_thread(gw.stop)
