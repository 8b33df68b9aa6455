"""The feed's security rules: tokens expire live (4001), ``op: auth`` refreshes and authenticates
first frames, subscribe rate, sockets per user (429) and bounded replays."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import SECRET
from tests.webgate.conftest import recv, recv_until, token_for, ws_connect
from webgate.core.auth import make_token
from webgate.feed.endpoint import REPLAY_BOUND
from webgate.feed.hub import FeedSettings, id_key


def uid(tag: str = "a") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def short_token(user: str, ttl: int = 3, admin: bool = False) -> tuple[str, float]:
    token = make_token(SECRET, user, admin=admin, ttl=ttl)
    return token, float(jwt.decode(token, options={"verify_signature": False})["exp"])


async def until_closed(ws: ClientConnection, timeout: float = 15.0) -> tuple[list[dict[str, Any]], int, float]:
    """Frames received until the server closed the socket, the close code and when (``time.time()``)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            raw = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as exc:
            at = time.time()
            assert exc.rcvd is not None, "closed without a close frame"
            return got, exc.rcvd.code, at
        got.append(json.loads(raw))


async def authenticate(ws: ClientConnection, token: str) -> dict[str, Any]:
    await ws.send(json.dumps({"op": "auth", "token": token}))
    ack = await recv(ws)
    assert ack["type"] == "ack" and ack["op"] == "auth", ack
    return ack


async def subscribed(ws: ClientConnection, user_id: str) -> None:
    """Subscribe to the user's own topic and take its snapshot."""
    await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{user_id}"}))
    assert (await recv(ws))["type"] == "snapshot"


@asynccontextmanager
async def on_own_topic(gw: Any, user_id: str, token: str) -> AsyncIterator[ClientConnection]:
    """A socket authenticated by ``token`` in its URL, subscribed to the user's topic, the snapshot taken."""
    async with ws_connect(f"{gw.ws_url}?token={token}") as ws:
        await subscribed(ws, user_id)
        yield ws


async def pong(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"op": "ping"}))
    assert await recv(ws) == {"type": "pong"}


# -- expiry and refresh ----------------------------------------------------------------------------------
async def test_socket_is_closed_with_4001_when_its_token_expires(feed_gateway, publisher):
    gw = await feed_gateway()
    me = uid()
    token, exp = short_token(me)
    async with on_own_topic(gw, me, token) as ws:
        eid = publisher.progress("t-" + me, me, 5.0)
        assert (await recv(ws))["id"] == eid  # served while the token is valid
        frames, code, at = await until_closed(ws)
    assert code == 4001
    assert all(f["type"] == "event" for f in frames), frames
    assert exp <= at + 0.05 and at - exp < 1.0, f"closed {at - exp:+.2f} s from exp"
    assert not gw.hub.conns and gw.hub.per_user == {}


async def test_refresh_with_op_auth_keeps_the_socket_open_past_the_first_exp(feed_gateway, publisher):
    gw = await feed_gateway()
    me = uid()
    first, exp = short_token(me)
    async with on_own_topic(gw, me, first) as ws:
        # A bad refresh is refused with an error; the connection goes on with the old token.
        for bad in ["garbage", jwt.encode({"sub": me, "exp": int(exp) + 60}, "x" * 40, algorithm="HS256"), 42]:
            await ws.send(json.dumps({"op": "auth", "token": bad}))
            err = await recv(ws)
            assert err["type"] == "error" and err["op"] == "auth", err
            assert err["code"] == ("bad_request" if bad == 42 else "unauthorized")
        second, exp2 = short_token(me, ttl=60)
        ack = await authenticate(ws, second)
        assert ack == {"type": "ack", "op": "auth", "user_id": me, "exp": exp2}
        await asyncio.sleep(max(0.0, exp - time.time()) + 1.5)
        await pong(ws)  # still open past the first token's exp
        eid = publisher.progress("t-" + me, me, 7.0)
        assert (await recv(ws))["id"] == eid


async def test_refresh_for_another_user_is_refused_and_closed_with_4003(feed_gateway):
    gw = await feed_gateway()
    me, other = uid(), uid()
    async with ws_connect(gw.url(me)) as ws:
        await ws.send(json.dumps({"op": "auth", "token": token_for(other)}))
        frames, code, _ = await until_closed(ws)
    assert code == 4003
    assert frames and frames[0]["type"] == "error" and frames[0]["code"] == "forbidden", frames
    # The same user with admin rights is another identity too: no upgrade of an open socket.
    async with ws_connect(gw.url(me)) as ws:
        await ws.send(json.dumps({"op": "auth", "token": token_for(me, admin=True)}))
        frames, code, _ = await until_closed(ws)
    assert code == 4003 and frames[0]["code"] == "forbidden"


# -- first-frame auth ------------------------------------------------------------------------------------
async def test_first_frame_auth_serves_the_connection_and_expires_it_too(feed_gateway, publisher, tracker):
    gw = await feed_gateway()
    me = uid()
    task = tracker.create_task("t-" + me, user_id=me, status="running")
    tracker.flush()
    token, exp = short_token(me)
    async with ws_connect(gw.ws_url) as ws:  # no token on the upgrade
        # Nothing is served before auth: not a subscribe, not a ping, not a pause.
        for op in [{"op": "subscribe", "topic": f"user:{me}"}, {"op": "ping"}, {"op": "pause", "task_id": task}]:
            await ws.send(json.dumps(op))
            err = await recv(ws)
            assert err["type"] == "error" and err["code"] == "unauthorized", err
        ack = await authenticate(ws, token)
        assert ack["user_id"] == me and ack["exp"] == exp
        await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{me}"}))
        snap = await recv(ws)
        assert snap["type"] == "snapshot" and [t["task_id"] for t in snap["tasks"]] == [task]
        eid = publisher.progress(task, me, 3.0)
        assert (await recv(ws))["id"] == eid
        _, code, at = await until_closed(ws)
    assert code == 4001 and at - exp < 1.0
    assert tracker.get(task).status == "running"  # the refused pause did nothing


async def test_first_frame_with_a_bad_token_is_closed_with_4001(feed_gateway):
    gw = await feed_gateway()
    now = int(time.time())
    expired = jwt.encode({"sub": "x", "iat": now - 60, "exp": now - 1}, SECRET, algorithm="HS256")
    for token in ["not-a-jwt", expired, "", {"a": 1}]:
        async with ws_connect(gw.ws_url) as ws:
            await ws.send(json.dumps({"op": "auth", "token": token}))
            frames, code, _ = await until_closed(ws)
        assert code == 4001, token
        assert [f["type"] for f in frames] == ["error"] and frames[0]["op"] == "auth", frames


async def test_a_socket_that_does_not_authenticate_is_closed_after_5_s(feed_gateway):
    gw = await feed_gateway()
    async with ws_connect(gw.ws_url) as silent, ws_connect(gw.ws_url) as chatty:
        opened = time.time()
        await chatty.send(json.dumps({"op": "ping"}))  # frames that are not auth do not extend the wait
        assert (await recv(chatty))["code"] == "unauthorized"
        assert len(gw.hub.unauthenticated) == 2 and not gw.hub.conns
        (frames, code, at), (_, code2, at2) = await asyncio.gather(until_closed(silent), until_closed(chatty))
    assert code == code2 == 4001
    assert frames and frames[-1]["code"] == "unauthorized"
    assert at - opened >= 4.9 and at2 - opened >= 4.9
    assert not gw.hub.unauthenticated


# -- limits ----------------------------------------------------------------------------------------------
def test_feed_limits_are_read_from_the_environment(monkeypatch):
    assert FeedSettings().subscribe_rate == 20 and FeedSettings().max_connections_per_user == 50
    assert FeedSettings().max_replay == 10_000 and FeedSettings().auth_timeout == 5
    for name, value in {"TRACKER_FEED_SUBSCRIBE_RATE": "5", "TRACKER_FEED_MAX_CONNECTIONS_PER_USER": "7",
                        "TRACKER_FEED_MAX_REPLAY": "100", "TRACKER_FEED_AUTH_TIMEOUT": "2.5"}.items():
        monkeypatch.setenv(name, value)
    s = FeedSettings.from_env()
    assert (s.subscribe_rate, s.max_connections_per_user, s.max_replay, s.auth_timeout) == (5, 7, 100, 2.5)


async def test_subscribe_flood_gets_rate_limited_and_the_socket_stays_open(feed_gateway):
    gw = await feed_gateway()
    me = uid()
    async with ws_connect(gw.url(me)) as ws:
        # Cheap refused subscribes (bad topics) count like any other.
        for _ in range(200):
            await ws.send(json.dumps({"op": "subscribe", "topic": "bogus"}))
        replies = [await recv(ws) for _ in range(200)]
        codes = [r["code"] for r in replies]
        assert set(codes) == {"bad_topic", "rate_limited"}, set(codes)
        assert 20 <= codes.count("bad_topic") < 200
        limited = next(r for r in replies if r["code"] == "rate_limited")
        assert limited["type"] == "error" and "per second" in limited["message"]
        await pong(ws)
        # Once the bucket refills, subscribes are served again.
        await asyncio.sleep(0.5)
        await subscribed(ws, me)


async def test_socket_51_of_one_user_is_refused_with_429(feed_gateway):
    gw = await feed_gateway()
    me, other = uid(), uid()
    sockets = list(await asyncio.gather(*(ws_connect(gw.url(me)) for _ in range(50))))
    try:
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(gw.url(me)):
                pass
        assert info.value.response.status_code == 429
        assert json.loads(info.value.response.body)["error"]["code"] == "too_many_connections"
        # A first-frame auth over the limit: an error and close 4029.
        async with ws_connect(gw.ws_url) as ws:
            await ws.send(json.dumps({"op": "auth", "token": token_for(me)}))
            frames, code, _ = await until_closed(ws)
        assert code == 4029 and frames[0]["code"] == "too_many_connections"
        async with ws_connect(gw.url(other)) as ws:  # other users are not affected
            await pong(ws)
        assert gw.hub.per_user[me] == 50
        await sockets.pop().close()
        for _ in range(100):
            if gw.hub.per_user[me] == 49:
                break
            await asyncio.sleep(0.05)
        async with ws_connect(gw.url(me)) as ws:  # a closed socket frees its slot
            await pong(ws)
    finally:
        await asyncio.gather(*(s.close() for s in sockets))


async def test_resume_further_back_than_the_replay_bound_gets_a_snapshot(feed_gateway, publisher, tracker):
    me = uid()
    tracker.create_task("t-" + me, user_id=me)
    tracker.flush()

    async def check(ws: ClientConnection, ids: list[str]) -> None:
        await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{me}", "since": "0"}))
        got = await recv_until(ws, lambda f: f["type"] == "recovered")
        assert got == [{"type": "recovered", "topic": f"user:{me}", "complete": False}]  # nothing replayed
        snap = await recv(ws)
        assert snap["type"] == "snapshot" and [t["task_id"] for t in snap["tasks"]] == ["t-" + me]
        # Within the bound (exactly 50 entries back) the missed events are replayed.
        await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{me}", "since": ids[-51]}))
        got = await recv_until(ws, lambda f: f["type"] == "recovered")
        assert [f["id"] for f in got[:-1]] == ids[-50:] and got[-1]["complete"] is True
        # One entry further back is past it.
        await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{me}", "since": ids[-52]}))
        got = await recv_until(ws, lambda f: f["type"] == "recovered")
        assert got == [{"type": "recovered", "topic": f"user:{me}", "complete": False}]
        assert (await recv(ws))["type"] == "snapshot"

    # Entries from before the gateway started: bounded through Redis (one lookup).
    before = [publisher.progress("t-" + me, me, float(i % 100)) for i in range(120)]
    gw = await feed_gateway(settings=FeedSettings(max_replay=50))
    async with ws_connect(gw.url(me)) as ws:
        await check(ws, before)
    # Entries the gateway routed itself: bounded from its own marks, no Redis call.
    scans = gw.app[REPLAY_BOUND].scans
    ids = [publisher.progress("t-" + me, me, float(i % 100)) for i in range(120)]
    while gw.hub.last_id is None or id_key(gw.hub.last_id) < id_key(ids[-1]):
        await asyncio.sleep(0.02)
    async with ws_connect(gw.url(me)) as ws:
        await check(ws, before + ids)
    assert gw.app[REPLAY_BOUND].scans == scans == 1
