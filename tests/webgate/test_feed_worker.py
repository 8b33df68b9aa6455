"""The feed end to end: real prefork workers publish, the gateway relays, a WebSocket client watches."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from celery import group

from signals import tracking_context
from tests.apps.tasks import feed_steps, slow
from tests.conftest import make_token
from tests.webgate.conftest import recv, recv_until, ws_connect
from webgate.feed.hub import id_key


def uid() -> str:
    return f"w-{uuid.uuid4().hex[:8]}"


def url(gateway, user: str) -> str:
    return f"{gateway.ws_url}?token={make_token(user)}"


async def test_progress_from_a_worker_reaches_the_client_in_order(gateway, worker, tracked_app):
    me = uid()
    async with ws_connect(url(gateway, me)) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{me}"}))
        assert (await recv(ws))["type"] == "snapshot"
        with tracking_context(user_id=me):
            res = feed_steps.apply_async((20, 0.02), queue=worker.queue)
        frames = await recv_until(ws, lambda f: f.get("event") == "task.completed", timeout=30)
    mine = [f for f in frames if f.get("task_id") == res.id]
    assert len(mine) == len(frames)  # nothing of anybody else's
    types = [f["event"] for f in mine]
    assert types[-1] == "task.completed"
    assert types.index("task.started") < types.index("task.progress")
    progress = [f["data"]["progress"] for f in mine if f["event"] == "task.progress"]
    assert len(progress) >= 2 and progress == sorted(progress) and progress[-1] == 100.0
    last = [f for f in mine if f["event"] == "task.progress"][-1]["data"]
    assert last["current_step"] == "step 20" and last["step_index"] == 20 and last["total_steps"] == 20
    keys = [id_key(f["id"]) for f in mine]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all(f["user_id"] == me for f in mine)
    assert mine[-1]["data"]["status"] == "completed"


async def test_owner_pauses_resumes_and_cancels_a_running_task_over_the_socket(gateway, worker, tracked_app,
                                                                               tracker):
    me = uid()
    with tracking_context(user_id=me):
        res = slow.apply_async((15.0,), queue=worker.queue)
    async with ws_connect(url(gateway, me)) as ws, ws_connect(url(gateway, uid())) as stranger:
        await ws.send(json.dumps({"op": "subscribe", "topic": f"task:{res.id}"}))
        snap = await recv(ws)
        assert snap["type"] == "snapshot" and snap["topic"] == f"task:{res.id}"
        assert [t["task_id"] for t in snap["tasks"]] in ([], [res.id])
        if not snap["tasks"] or snap["tasks"][0]["status"] != "running":
            await recv_until(ws, lambda f: f.get("event") == "task.progress", timeout=30)
        await stranger.send(json.dumps({"op": "cancel", "task_id": res.id}))
        assert (await recv(stranger))["code"] == "forbidden"

        await ws.send(json.dumps({"op": "pause", "task_id": res.id}))
        got = await recv_until(ws, lambda f: f.get("event") == "task.paused", timeout=10)
        assert {"type": "ack", "op": "pause", "task_id": res.id} in got
        await ws.send(json.dumps({"op": "resume", "task_id": res.id}))
        got = await recv_until(ws, lambda f: f.get("event") == "task.resumed", timeout=10)
        assert {"type": "ack", "op": "resume", "task_id": res.id} in got
        await ws.send(json.dumps({"op": "cancel", "task_id": res.id}))
        got = await recv_until(ws, lambda f: f.get("event") == "task.cancelled", timeout=10)
        assert {"type": "ack", "op": "cancel", "task_id": res.id} in got
        # Once the store has the final state, another cancel is refused.
        deadline = time.monotonic() + 10
        while tracker.get(res.id).status != "cancelled":
            assert time.monotonic() < deadline, "cancelled state never stored"
            await asyncio.sleep(0.05)
        await ws.send(json.dumps({"op": "cancel", "task_id": res.id}))
        frame = await recv_until(ws, lambda f: f["type"] in ("ack", "error"), timeout=10)
        assert frame[-1]["type"] == "error" and frame[-1]["code"] == "conflict"


async def test_group_topic_combines_the_canvas_members_progress(gateway, worker, tracked_app, rdb, tracker):
    me = uid()
    # Where the stream stands now ("0-0" when this test is the first to write to it).
    last = rdb.xrevrange(tracker.config.stream_key, count=1)
    start = last[0][0].decode() if last else "0-0"
    with tracking_context(user_id=me):
        res = group(feed_steps.s(5, 0.05) for _ in range(3)).apply_async(queue=worker.queue)
        other = feed_steps.apply_async((3, 0.01), queue=worker.queue)  # same user, not in the group
    members = {r.id for r in res.results}
    # Group topics are authorised from the store: wait for the publisher's rows (one flush).
    for _ in range(100):
        if tracker.count(group_id=res.id, user_id=me) == len(members):
            break
        await asyncio.sleep(0.05)
    async with ws_connect(url(gateway, me)) as ws:
        # Subscribed after the publish: resume from before it replays what already happened.
        await ws.send(json.dumps({"op": "subscribe", "topic": f"group:{res.id}", "since": start}))
        done: set[str] = set()
        frames: list[dict] = []
        while done != members:
            frames += await recv_until(ws, lambda f: f.get("event") == "task.completed", timeout=30)
            done.add(frames[-1]["task_id"])
    events = [f for f in frames if f["type"] == "event"]
    assert {f["task_id"] for f in events} == members and other.id not in {f["task_id"] for f in events}
    assert sum(1 for f in frames if f["type"] == "recovered") == 1
    for tid in members:
        mine = [f["event"] for f in events if f["task_id"] == tid]
        assert mine[-1] == "task.completed" and "task.progress" in mine
    async with ws_connect(url(gateway, uid())) as stranger:
        await stranger.send(json.dumps({"op": "subscribe", "topic": f"group:{res.id}"}))
        assert (await recv(stranger))["code"] == "forbidden"
    async with ws_connect(url(gateway, me)) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": f"group:{res.id}"}))
        snap = await recv(ws)
        assert snap["type"] == "snapshot" and {t["task_id"] for t in snap["tasks"]} <= members
