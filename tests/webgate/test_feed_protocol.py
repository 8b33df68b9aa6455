"""The WebSocket feed's wire protocol: auth, topics, snapshots, events, resume, error frames."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import SECRET, strict_json
from tests.webgate.conftest import recv, recv_until, token_for, ws_connect
from webgate.feed.hub import FeedSettings, id_key


async def wait_until(pred, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def caught_up(gw, entry_id: str) -> None:
    """Wait until the gateway has read the stream up to ``entry_id`` (so a resume replays it rather than
    sending it live after ``recovered``: both are correct, the tests check the exact sequence)."""
    await wait_until(lambda: gw.hub.last_id is not None and id_key(gw.hub.last_id) >= id_key(entry_id),
                     f"gateway read up to {entry_id}")


def uid(tag: str = "u") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


async def subscribe(ws, topic: str, since: str | None = None) -> dict:
    msg = {"op": "subscribe", "topic": topic}
    if since is not None:
        msg["since"] = since
    await ws.send(json.dumps(msg))
    if since is None:
        frame = await recv(ws)
        assert frame["type"] == "snapshot", frame
        assert frame["topic"] == topic
        return frame
    return {}


# -- authentication -----------------------------------------------------------------------------------
# (An upgrade without any token is accepted and must authenticate with its first frame: test_feed_auth.py.)
@pytest.mark.parametrize("token", ["not-a-jwt", "expired", "just-expired", "wrong-secret"])
async def test_upgrade_refused_with_401_for_a_bad_token(feed_gateway, token):
    gw = await feed_gateway()
    now = int(time.time())
    if token == "expired":
        token = jwt.encode({"sub": "u1", "admin": True, "exp": now - 60}, SECRET, algorithm="HS256")
    elif token == "just-expired":  # inside the decoder's clock-skew leeway, but spent all the same
        token = jwt.encode({"sub": "u1", "admin": True, "iat": now - 60, "exp": now - 1}, SECRET,
                           algorithm="HS256")
    elif token == "wrong-secret":
        token = jwt.encode({"sub": "u1", "admin": True, "exp": now + 600}, "an-other-secret-that-is-long-enough-0123",
                           algorithm="HS256")
    url = f"{gw.ws_url}?token={token}"
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(url):
            pass
    assert info.value.response.status_code == 401
    body = json.loads(info.value.response.body)
    assert body["error"]["code"] == "unauthorized"


async def test_bearer_header_is_accepted(feed_gateway):
    gw = await feed_gateway()
    user = uid()
    async with ws_connect(gw.ws_url, additional_headers={"Authorization": f"Bearer {token_for(user)}"}) as ws:
        await ws.send(json.dumps({"op": "ping"}))
        assert await recv(ws) == {"type": "pong"}


# -- events and snapshots -------------------------------------------------------------------------------
async def test_user_topic_gets_own_events_in_order_and_not_others(feed_gateway, publisher, tracker):
    gw = await feed_gateway()
    me, other = uid(), uid()
    tracker.create_task("t-" + me, user_id=me, task_type="import", tags=["x"])
    tracker.flush()
    async with ws_connect(gw.url(me)) as ws:
        snap = await subscribe(ws, f"user:{me}")
        assert [t["task_id"] for t in snap["tasks"]] == ["t-" + me]
        assert snap["tasks"][0]["user_id"] == me and snap["tasks"][0]["status"] == "pending"
        ids = []
        for i in range(20):
            publisher.progress("t-" + other, other, float(i))  # someone else's: never delivered
            ids.append(publisher.progress("t-" + me, me, float(i)))
        ids.append(publisher.publish("task.completed", "t-" + me, me, {"status": "completed"}))
        frames = await recv_until(ws, lambda f: f.get("event") == "task.completed")
    assert [f["id"] for f in frames] == ids
    assert all(f["type"] == "event" and f["task_id"] == "t-" + me and f["user_id"] == me for f in frames)
    assert [f["data"]["progress"] for f in frames[:-1]] == [float(i) for i in range(20)]
    assert set(frames[0]) == {"type", "id", "event", "task_id", "user_id", "ts", "data"}


async def test_non_finite_values_reach_clients_as_null_not_as_invalid_json(feed_gateway, publisher, tracker, sql):
    # Rows and entries with a NaN or an infinity (written by other means than this version's
    # Recorder and bus) must not break a client's frames: the dashboard parses them strictly.
    gw = await feed_gateway()
    me = uid()
    task = "t-" + me
    tracker.create_task(task, user_id=me)
    tracker.flush()
    sql.execute("UPDATE tracker_tasks SET eta_seconds = 'NaN' WHERE task_id = %s", (task,))
    try:
        await _expect_strict_frames(gw, publisher, me, task)
    finally:  # other tests share the database
        sql.execute("DELETE FROM tracker_tasks WHERE task_id = %s", (task,))


async def _expect_strict_frames(gw, publisher, me: str, task: str) -> None:
    async with ws_connect(gw.url(me)) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{me}"}))
        snap = strict_json(await asyncio.wait_for(ws.recv(), 10))
        assert snap["type"] == "snapshot" and [t["task_id"] for t in snap["tasks"]] == [task]
        assert snap["tasks"][0]["eta_seconds"] is None
        foreign = publisher.client.xadd(publisher.key, {
            "v": "1", "type": "task.progress", "task_id": task, "user_id": me, "ts": repr(time.time()),
            "data": '{"progress": 40.0, "eta_seconds": Infinity, "rate": NaN}'}).decode()
        ours = publisher.publish("task.progress", task, me, {"progress": 50.0, "eta_seconds": float("nan")})
        frames = [strict_json(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
    assert [f["id"] for f in frames] == [foreign, ours]
    assert frames[0]["data"] == {"progress": 40.0, "eta_seconds": None, "rate": None}
    assert frames[1]["data"] == {"progress": 50.0, "eta_seconds": None}


async def test_event_on_two_matching_topics_is_sent_once_and_unsubscribe_stops(feed_gateway, publisher, tracker):
    gw = await feed_gateway()
    me = uid()
    task = "t-" + me
    tracker.create_task(task, user_id=me)
    tracker.flush()
    async with ws_connect(gw.url(me)) as ws:
        await subscribe(ws, f"user:{me}")
        snap = await subscribe(ws, f"task:{task}")
        assert [t["task_id"] for t in snap["tasks"]] == [task]
        first = publisher.progress(task, me, 1.0)
        assert (await recv(ws))["id"] == first
        await ws.send(json.dumps({"op": "unsubscribe", "topic": f"user:{me}"}))
        await ws.send(json.dumps({"op": "unsubscribe", "topic": f"task:{task}"}))
        await ws.send(json.dumps({"op": "ping"}))
        assert await recv(ws) == {"type": "pong"}  # unsubscribes are done
        publisher.progress(task, me, 2.0)
        await ws.send(json.dumps({"op": "ping"}))
        # Wait for the gateway to have read the event, then check it was not sent.
        hub = gw.hub
        deadline = time.monotonic() + 5
        while hub.events < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert hub.events >= 2
        assert await recv(ws) == {"type": "pong"}
        with pytest.raises(asyncio.TimeoutError):
            await recv(ws, timeout=0.3)


async def test_admin_all_topic_and_notifications_route_to_their_user(feed_gateway, publisher):
    gw = await feed_gateway()
    me, other = uid(), uid()
    async with ws_connect(gw.url("root", admin=True)) as admin, ws_connect(gw.url(me)) as mine:
        snap = await subscribe(admin, "all")
        assert isinstance(snap["tasks"], list)
        await subscribe(mine, f"user:{me}")
        a = publisher.progress("t-" + other, other, 5.0)
        n_other = publisher.publish("notification", None, other, {"title": "not yours"})
        n_mine = publisher.publish("notification", "t-" + me, me, {"title": "done", "priority": "high"})
        got_admin = await recv_until(admin, lambda f: f.get("id") == n_mine)
        assert [f["id"] for f in got_admin] == [a, n_other, n_mine]
        got_mine = await recv(mine)
        assert got_mine["id"] == n_mine and got_mine["event"] == "notification"
        assert got_mine["data"] == {"title": "done", "priority": "high"}


# -- authorisation ----------------------------------------------------------------------------------------
async def test_users_cannot_subscribe_to_what_is_not_theirs(feed_gateway, tracker, publisher):
    gw = await feed_gateway()
    me, other = uid(), uid()
    tracker.create_task("t-" + other, user_id=other)
    tracker.create_task("t-" + me, user_id=me)
    tracker.flush()
    async with ws_connect(gw.url(me)) as ws:
        for topic, code in [(f"user:{other}", "forbidden"), ("all", "forbidden"), (f"task:t-{other}", "forbidden"),
                            (f"task:nope-{me}", "not_found"), (f"group:g-{other}", "forbidden")]:
            await ws.send(json.dumps({"op": "subscribe", "topic": topic}))
            frame = await recv(ws)
            assert frame["type"] == "error" and frame["code"] == code, (topic, frame)
            assert frame["topic"] == topic and frame["message"]
        # Still open, and the refused topics deliver nothing; its own task works.
        await subscribe(ws, f"task:t-{me}")
        publisher.progress("t-" + other, other, 1.0)
        mine = publisher.progress("t-" + me, me, 1.0)
        assert (await recv(ws))["id"] == mine
        assert gw.hub.topics.get(f"user:{other}") is None and gw.hub.topics.get("all") is None
    async with ws_connect(gw.url("boss", admin=True)) as ws:
        snap = await subscribe(ws, f"task:t-{other}")
        assert snap["tasks"][0]["user_id"] == other


async def test_control_ops_need_ownership_and_reply_ack_or_error(feed_gateway, tracker, rdb, prefix):
    gw = await feed_gateway()
    me, other = uid(), uid()
    tracker.create_task("t-" + me, user_id=me)
    tracker.set_status("t-" + me, "running", user_id=me)
    tracker.create_task("t-" + other, user_id=other)
    tracker.flush()
    async with ws_connect(gw.url(me)) as ws:
        await ws.send(json.dumps({"op": "pause", "task_id": "t-" + me}))
        assert await recv(ws) == {"type": "ack", "op": "pause", "task_id": "t-" + me}
        assert rdb.get(f"{prefix}:control:t-{me}") == b"pause"
        await ws.send(json.dumps({"op": "resume", "task_id": "t-" + me}))
        assert (await recv(ws))["type"] == "ack"
        assert rdb.get(f"{prefix}:control:t-{me}") is None
        await ws.send(json.dumps({"op": "cancel", "task_id": "t-" + other}))
        frame = await recv(ws)
        assert frame["type"] == "error" and frame["code"] == "forbidden" and frame["task_id"] == "t-" + other
        assert rdb.get(f"{prefix}:control:t-{other}") is None
        await ws.send(json.dumps({"op": "cancel", "task_id": 42}))
        assert (await recv(ws))["code"] == "bad_request"
        await ws.send(json.dumps({"op": "pause", "task_id": "missing-" + me}))
        assert (await recv(ws))["code"] == "not_found"
    tracker.complete("t-" + me, user_id=me)
    tracker.flush()
    async with ws_connect(gw.url("boss", admin=True)) as ws:
        await ws.send(json.dumps({"op": "cancel", "task_id": "t-" + me}))
        frame = await recv(ws)
        assert frame["code"] == "conflict" and "completed" in frame["message"]
        await ws.send(json.dumps({"op": "cancel", "task_id": "t-" + other}))  # pending: cancelled at once
        assert (await recv(ws))["type"] == "ack"
    # Recorded by the gateway's own write path (batched): wait for it.
    await wait_until(lambda: tracker.get("t-" + other).status == "cancelled", "the cancellation stored")


# -- malformed input --------------------------------------------------------------------------------------
async def test_malformed_messages_get_error_frames_and_the_connection_stays(feed_gateway, publisher):
    gw = await feed_gateway()
    me = uid()
    cases = [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_request"),
        ('"subscribe"', "bad_request"),
        ('{"topic": "all"}', "bad_request"),
        ('{"op": 7}', "bad_request"),
        ('{"op": "explode"}', "unknown_op"),
        ('{"op": "subscribe"}', "bad_topic"),
        ('{"op": "subscribe", "topic": 12}', "bad_topic"),
        ('{"op": "subscribe", "topic": "tasks:1"}', "bad_topic"),
        ('{"op": "subscribe", "topic": "user:"}', "bad_topic"),
        (json.dumps({"op": "subscribe", "topic": f"user:{me}", "since": 5}), "bad_request"),
        (json.dumps({"op": "subscribe", "topic": f"user:{me}", "since": "yesterday"}), "bad_request"),
        ('{"op": "unsubscribe", "topic": null}', "bad_topic"),
    ]
    async with ws_connect(gw.url(me)) as ws:
        for raw, code in cases:
            await ws.send(raw)
            frame = await recv(ws)
            assert frame["type"] == "error" and frame["code"] == code, (raw, frame)
            assert isinstance(frame["message"], str) and frame["message"]
        await ws.send(b"\x00\x01binary")
        assert (await recv(ws))["code"] == "bad_request"
        await subscribe(ws, f"user:{me}")
        eid = publisher.progress("t-" + me, me, 3.0)
        assert (await recv(ws))["id"] == eid


async def test_oversized_message_closes_with_1009_and_others_are_served(feed_gateway, publisher):
    gw = await feed_gateway(settings=FeedSettings(max_msg_size=4096))
    me = uid()
    async with ws_connect(gw.url(me)) as bystander, ws_connect(gw.url(me), max_size=None) as big:
        await subscribe(bystander, f"user:{me}")
        await big.send(json.dumps({"op": "ping", "pad": "x" * 10_000}))
        with pytest.raises(ConnectionClosed) as info:
            await recv(big)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        eid = publisher.progress("t-" + me, me, 9.0)
        assert (await recv(bystander))["id"] == eid
        await bystander.send(json.dumps({"op": "ping"}))
        assert await recv(bystander) == {"type": "pong"}


async def test_a_subscribe_ends_the_readers_idle_wait(feed_gateway, publisher):
    # With nobody subscribed the reader waits after a short read so the next XREAD takes a batch;
    # here the wait is far longer than the test, and a subscribe must end it at once.
    gw = await feed_gateway(settings=FeedSettings(idle_read_gap=3600.0))
    me = uid()
    await caught_up(gw, publisher.progress("t-" + me, me, 1.0))  # read while nobody listens: it waits now
    async with ws_connect(gw.url(me)) as ws:
        await subscribe(ws, f"user:{me}")
        eid = publisher.progress("t-" + me, me, 2.0)
        assert (await recv(ws))["id"] == eid


# -- resume ------------------------------------------------------------------------------------------------
async def test_resume_with_since_gets_exactly_the_missed_events(feed_gateway, publisher):
    gw = await feed_gateway()
    me, other = uid(), uid()
    async with ws_connect(gw.url(me)) as ws:
        await subscribe(ws, f"user:{me}")
        seen = [publisher.progress("t-" + me, me, float(i)) for i in range(3)]
        frames = [await recv(ws) for _ in range(3)]
        assert [f["id"] for f in frames] == seen
    last = seen[-1]
    missed = []
    for i in range(30):
        missed.append(publisher.progress("t-" + me, me, float(10 + i)))
        publisher.progress("t-" + other, other, float(i))
    await caught_up(gw, missed[-1])
    async with ws_connect(gw.url(me)) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{me}", "since": last}))
        got = await recv_until(ws, lambda f: f["type"] == "recovered")
        assert got[-1] == {"type": "recovered", "topic": f"user:{me}", "complete": True}
        assert [f["id"] for f in got[:-1]] == missed  # exactly the missed ones, in order, once
        live = publisher.progress("t-" + me, me, 99.0)
        assert (await recv(ws))["id"] == live
        with pytest.raises(asyncio.TimeoutError):
            await recv(ws, timeout=0.3)


async def test_resume_from_before_what_the_stream_keeps_is_incomplete_with_snapshot(feed_gateway, publisher,
                                                                                    tracker):
    gw = await feed_gateway()
    me = uid()
    tracker.create_task("t-" + me, user_id=me)
    tracker.flush()
    old = publisher.progress("t-" + me, me, 1.0)
    for i in range(10):
        publisher.progress("t-" + me, me, float(i))
    kept = [publisher.publish("task.progress", "t-" + me, me, {"progress": 50.0 + i}, maxlen=3) for i in range(3)]
    await caught_up(gw, kept[-1])
    async with ws_connect(gw.url(me)) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{me}", "since": old}))
        got = await recv_until(ws, lambda f: f["type"] == "recovered")
        assert [f["id"] for f in got[:-1]] == kept
        assert got[-1]["complete"] is False
        snap = await recv(ws)
        assert snap["type"] == "snapshot" and [t["task_id"] for t in snap["tasks"]] == ["t-" + me]
        # A resume from the newest kept id is complete and replays nothing.
        await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{me}", "since": kept[-1]}))
        assert await recv(ws) == {"type": "recovered", "topic": f"user:{me}", "complete": True}


async def test_events_published_during_a_resume_are_not_lost_or_doubled(feed_gateway, publisher):
    gw = await feed_gateway()
    me = uid()
    start = publisher.progress("t-" + me, me, 0.0)
    expected = [publisher.progress("t-" + me, me, float(i)) for i in range(1, 2001)]

    async def keep_publishing() -> list[str]:
        out = []
        for i in range(200):
            out.append(await asyncio.to_thread(publisher.progress, "t-" + me, me, float(i)))
        return out

    async with ws_connect(gw.url(me)) as ws:
        pub = asyncio.create_task(keep_publishing())
        await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{me}", "since": start}))
        later = await pub
        last = later[-1]
        got = await recv_until(ws, lambda f: f.get("id") == last, timeout=30)
    ids = [f["id"] for f in got if f["type"] == "event"]
    assert ids == expected + later
    assert sum(1 for f in got if f["type"] == "recovered") == 1


async def test_several_gateways_each_read_the_whole_stream(feed_gateway, publisher):
    gws = [await feed_gateway(), await feed_gateway()]
    me = uid()
    async with ws_connect(gws[0].url(me)) as a, ws_connect(gws[1].url("root", admin=True)) as b:
        await subscribe(a, f"user:{me}")
        await subscribe(b, "all")
        ids = [publisher.progress("t-" + me, me, float(i)) for i in range(50)]
        got_a = await recv_until(a, lambda f: f.get("id") == ids[-1])
        got_b = await recv_until(b, lambda f: f.get("id") == ids[-1])
    assert [f["id"] for f in got_a] == ids == [f["id"] for f in got_b]


async def test_client_js_is_served(feed_gateway):
    import aiohttp

    gw = await feed_gateway()
    async with aiohttp.ClientSession() as s, s.get(f"{gw.base}/static/tracker-client.js") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/javascript")
        body = await r.text()
    assert "class TrackerClient" in body and "since" in body


async def test_resume_from_a_gateway_that_was_ahead_skips_what_the_client_already_has(feed_gateway, publisher):
    gw = await feed_gateway()
    me = uid()
    publisher.progress("t-" + me, me, 1.0)
    # The client saw everything up to 400 ms from now (on a gateway that had read further than this one).
    ahead = f"{int(time.time() * 1000) + 400}-0"
    async with ws_connect(gw.url(me)) as ws:
        await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{me}", "since": ahead}))
        assert await recv(ws) == {"type": "recovered", "topic": f"user:{me}", "complete": True}
        seen_already = publisher.progress("t-" + me, me, 2.0)
        assert id_key(seen_already) <= id_key(ahead)
        await asyncio.sleep(0.5)
        new = publisher.progress("t-" + me, me, 3.0)
        frame = await recv(ws)
        assert frame["id"] == new  # the one at or before `since` was not sent again
