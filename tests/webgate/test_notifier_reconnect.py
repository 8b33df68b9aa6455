"""The notifier's consume loop retries through tenacity (tracker.retry): when its consumer group
disappears under it (the stream was deleted), it creates the group again and goes on notifying."""

from __future__ import annotations

import time
import uuid

import redis as redis_lib

from tests.conftest import eventually
from tests.webgate.test_notifications import failed_event, new_prefix, serve
from tracker import Tracker
from tracker.config import TrackerConfig
from tracker.events import encode


async def test_the_consume_loop_recreates_a_deleted_group_and_goes_on(tracker_env: dict[str, str],
                                                                     rdb: redis_lib.Redis) -> None:
    prefix = new_prefix()
    stream, group = f"{prefix}:events", f"{prefix}:notifier"
    cfg = TrackerConfig.from_env().replace(prefix=prefix,
                  notifications=[{"id": "r", "on": ["failed"], "channels": ["websocket"]}])
    user = f"reconnect-{uuid.uuid4().hex[:6]}"
    t = Tracker(config=cfg)
    try:
        async with serve(cfg):
            rdb.xadd(stream, encode(failed_event("before", user, time.time())))
            await eventually(lambda: len(t.notifications(user_id=user)) == 1, what="first notification")
            rdb.delete(stream)  # takes the consumer group with it: the next read answers NOGROUP
            await eventually(lambda: rdb.exists(stream) and any(g["name"] in (group, group.encode())
                                                           for g in rdb.xinfo_groups(stream)),
                        what="group created again")
            rdb.xadd(stream, encode(failed_event("after", user, time.time())))
            await eventually(lambda: len(t.notifications(user_id=user)) == 2, what="notified after the retry")
        assert sorted(n.task_id for n in t.notifications(user_id=user)) == ["after", "before"]
    finally:
        t.close()
