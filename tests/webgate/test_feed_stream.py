"""The feed's stream decoding: while nobody subscribes, only what routing reads is parsed."""

from __future__ import annotations

import uuid
from typing import Any

from tracker.events import Event, encode
from webgate.feed.hub import Hub
from webgate.feed.stream import _decode_all


def _entries(rdb: Any, events: list[Event]) -> list[Any]:
    key = f"test:events:{uuid.uuid4().hex}"
    for ev in events:
        rdb.xadd(key, encode(ev))
    try:
        return rdb.xrange(key)
    finally:
        rdb.delete(key)


def test_an_unsubscribed_feed_parses_only_the_start_events_that_name_a_group(rdb: Any) -> None:
    events = [Event("task.pending", "t1", "u1", 1.0, {"status": "pending", "group_id": "g1"}),
              Event("task.started", "t2", "u1", 2.0, {"status": "running"}),
              Event("task.completed", "t1", "u1", 3.0, {"status": "completed", "progress": 100.0})]
    entries = _entries(rdb, events)
    hub = Hub()
    light, last = _decode_all(entries, hub.routing_data)
    assert last == entries[-1][0].decode()
    assert [e.data for e in light] == [{"status": "pending", "group_id": "g1"}, {}, {}]
    assert [(e.type, e.task_id, e.user_id, e.ts) for e in light] == [(e.type, e.task_id, e.user_id, e.ts)
                                                                      for e in events]
    hub.route(light)
    # What routing learns without the data is what it learns with it.
    assert hub.recent_group_members("g1") == [("t1", "u1")]
    assert dict(hub.recent) == {"t1": ("u1", "g1"), "t2": ("u1", None)}
    # With a subscriber (the reader passes no filter), every event keeps its data for the frames.
    full, _ = _decode_all(entries)
    assert [e.data for e in full] == [e.data for e in events]
