"""The feed under stress: slow clients, Redis restarts, gateway restarts and shutdowns."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import ConnectionClosed

from tests.webgate.conftest import Publisher, recv, recv_until, token_for, ws_connect
from tracker.bus import EventBus
from tracker.demo.services import RedisServer
from webgate.feed.endpoint import STREAM_READER


def uid() -> str:
    return f"r-{uuid.uuid4().hex[:8]}"


async def subscribe(ws, topic: str, since: str | None = None) -> None:
    msg = {"op": "subscribe", "topic": topic, **({"since": since} if since else {})}
    await ws.send(json.dumps(msg))
    if since is None:
        assert (await recv(ws))["type"] == "snapshot"


async def wait_until(pred, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def small_window_socket(url: str) -> socket.socket:
    """A connected socket with a tiny receive buffer: a client that never reads stalls at once."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    return sock


async def test_a_client_that_never_reads_is_closed_with_1013_and_slows_nobody(gateway_process, publisher, prefix):
    # A gateway process of its own (clients in this process must not share its event loop), on this
    # test's stream, with a smaller bound than the default 1000 frames.
    gp = gateway_process(extra_env={"TRACKER_PREFIX": prefix, "TRACKER_FEED_MAX_QUEUE": "400",
                                    "TRACKER_FEED_CLOSE_GRACE": "30"})
    me = uid()
    n = 3000
    pad = "x" * 2000
    url = f"{gp.ws_url}?token={token_for(me)}"
    async with ws_connect(url, sock=small_window_socket(gp.ws_url), max_queue=1) as slow, \
            ws_connect(url) as fast1, ws_connect(f"{gp.ws_url}?token={token_for('root', True)}") as fast2:
        await subscribe(slow, f"user:{me}")
        await subscribe(fast1, f"user:{me}")
        await subscribe(fast2, "all")

        def publish_all() -> list[str]:
            ids: list[str] = []
            for start in range(0, n, 100):  # 5,000 events (about 5 MB) a second: busy, not absurd
                pipe = publisher.client.pipeline(transaction=False)
                for i in range(start, start + 100):
                    if i % 2:
                        publisher.queue(pipe, "task.log", "t-" + me, me, {"level": "INFO", "message": pad})
                    else:
                        publisher.queue(pipe, "task.progress", "t-" + me, me, {"progress": i * 100.0 / n})
                ids += [x.decode() for x in pipe.execute()]
                time.sleep(0.02)
            ids.append(publisher.publish("task.completed", "t-" + me, me, {"status": "completed"}))
            return ids

        def done(f: dict) -> bool:
            return f.get("event") == "task.completed" and f["task_id"] == "t-" + me

        # The fast clients read while the events are published.
        ids, got1, got2 = await asyncio.gather(
            asyncio.to_thread(publish_all),
            recv_until(fast1, done, timeout=60, limit=2 * n),
            recv_until(fast2, done, timeout=60, limit=2 * n))
        # Every event, in order, to both clients that keep up (progress included: nothing coalesced).
        assert [f["id"] for f in got1] == ids
        assert [f["id"] for f in got2 if f["task_id"] == "t-" + me] == ids
        # The slow client, reading at last, finds part of the stream and then the 1013 close.
        seen = 0
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv(slow, timeout=15)
                seen += 1
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        assert seen < n + 1
        # The others are still served.
        eid = publisher.progress("t-" + me, me, 100.0)
        assert (await recv(fast1))["id"] == eid
        await fast2.send(json.dumps({"op": "ping"}))
        assert (await recv_until(fast2, lambda f: f["type"] == "pong"))[-1] == {"type": "pong"}


async def test_redis_restart_under_the_gateway_loses_nothing_that_reached_the_stream(feed_gateway, prefix):
    rs = RedisServer(appendonly=True).start()
    pub = Publisher(rs.url, prefix)
    bus = EventBus(rs.url, prefix=prefix, progress_interval=0.0)
    try:
        gw = await feed_gateway(redis_url=rs.url)
        me = uid()
        async with ws_connect(gw.url(me)) as ws:
            await subscribe(ws, f"user:{me}")
            before = [pub.progress("t-" + me, me, float(i)) for i in range(5)]
            got = [await recv(ws) for _ in before]
            assert [f["id"] for f in got] == before
            # Events that reach the stream while the gateway is not reading it.
            reader = gw.app[STREAM_READER]
            pub.client.close()
            await asyncio.to_thread(rs.stop)
            await wait_until(lambda: not reader.connected, what="reader noticed Redis is gone")
            for i in range(5):  # a producer buffers these while Redis is down
                bus.publish("task.log", "t-" + me, me, {"level": "INFO", "message": f"while down {i}"})
            await asyncio.to_thread(rs.start)
            pub = Publisher(rs.url, prefix)
            after = [pub.progress("t-" + me, me, float(10 + i)) for i in range(5)]
            assert await asyncio.to_thread(bus.flush, 10)
            stored = [e[0].decode() for e in pub.client.xrange(pub.key, min="(" + before[-1])]
            assert len(stored) == 10 and set(after) <= set(stored)
            frames = await recv_until(ws, lambda f: f.get("id") == stored[-1], timeout=20)
            assert [f["id"] for f in frames] == stored  # all of them, in stream order, once
            assert reader.reconnects >= 1 and reader.connected
    finally:
        bus.close(timeout=1)
        pub.close()
        rs.cleanup()


def test_resume_across_a_gateway_restart_and_1001_on_shutdown(gateway_process, tracker_env):
    gp = gateway_process()
    pub = Publisher(tracker_env["TRACKER_REDIS_URL"], "tracker")
    me = uid()
    url = f"{gp.ws_url}?token={token_for(me)}"

    async def scenario() -> None:
        async with ws_connect(url) as ws:
            await subscribe(ws, f"user:{me}")
            seen = [pub.progress("t-" + me, me, float(i)) for i in range(3)]
            assert [(await recv(ws))["id"] for _ in seen] == seen
            stopping = asyncio.create_task(asyncio.to_thread(gp.stop, signal.SIGTERM))
            with pytest.raises(ConnectionClosed) as info:
                await recv(ws, timeout=15)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001  # going away
            assert await stopping == 0
        missed = [pub.progress("t-" + me, me, float(10 + i)) for i in range(7)]
        pub.progress("t-other-" + me, "other-" + me, 1.0)
        await asyncio.to_thread(gp.start)
        after_restart = pub.progress("t-" + me, me, 50.0)
        async with ws_connect(url) as ws:
            await ws.send(json.dumps({"op": "subscribe", "topic": f"user:{me}", "since": seen[-1]}))
            frames = await recv_until(ws, lambda f: f.get("id") == after_restart)
            if not any(f["type"] == "recovered" for f in frames):  # after_restart was replayed, not live
                frames += await recv_until(ws, lambda f: f["type"] == "recovered")
            assert [f["id"] for f in frames if f["type"] == "event"] == [*missed, after_restart]
            assert [f for f in frames if f["type"] != "event"] == [
                {"type": "recovered", "topic": f"user:{me}", "complete": True}]
            live = pub.progress("t-" + me, me, 60.0)
            assert (await recv(ws))["id"] == live

    try:
        asyncio.run(scenario())
    finally:
        pub.close()


async def test_in_process_shutdown_closes_sockets_with_1001(feed_gateway):
    gw = await feed_gateway()
    me = uid()
    async with ws_connect(gw.url(me)) as a, ws_connect(gw.url(me)) as b:
        await subscribe(a, f"user:{me}")
        await gw.stop()
        for ws in (a, b):
            with pytest.raises(ConnectionClosed) as info:
                await recv(ws, timeout=10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
