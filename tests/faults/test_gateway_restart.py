"""The gateway restarted under 100 subscribed clients.

Events flow into the stream throughout; the gateway is stopped (SIGTERM: sockets closed with
1001) and started again on the same port. Each client reconnects and resubscribes with the id
of the last event it saw; afterwards its sequence of event ids must be exactly the stream's
events for its topic: no gap, no duplicate, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis as redis_lib

from tests.conftest import make_token
from tests.faults.feedclient import FeedClient, caught_up, expected_by_topic, stream_tail
from tracker.bus import EventBus

N_CLIENTS = 100
N_USERS = 40
RATE = 300  # events per second into the stream


async def _publish(bus: EventBus, stop: asyncio.Event, counter: list[int]) -> None:
    kinds = ("task.log", "task.metric", "task.progress", "task.started", "task.completed")
    k = 0
    while not stop.is_set():
        for _ in range(RATE // 100):
            user = f"gw-u{k % N_USERS}"
            bus.publish(kinds[k % len(kinds)], f"gw-task-{k % 200}", user, {"n": k, "message": f"event {k}"})
            k += 1
        counter[0] = k
        await asyncio.sleep(0.01)


async def test_gateway_restart_with_100_clients(gateway_process: Any, tracker_env: dict[str, str],
                                                ws_session: Any) -> None:
    gw = await asyncio.to_thread(gateway_process)
    rdb = redis_lib.Redis.from_url(tracker_env["TRACKER_REDIS_URL"])
    since = stream_tail(rdb)
    clients = []
    for i in range(N_CLIENTS):
        if i < 20:
            clients.append(FeedClient(gw.ws_url, make_token("gw-admin", admin=True), "all", since))
        else:
            user = f"gw-u{i % N_USERS}"
            clients.append(FeedClient(gw.ws_url, make_token(user), f"user:{user}", since))
    bus = EventBus(tracker_env["TRACKER_REDIS_URL"], name="faults-gw-bus")
    stop = asyncio.Event()
    counter = [0]
    publisher = None
    try:
        for c in clients:
            c.start(ws_session)
        await asyncio.wait_for(asyncio.gather(*(c.subscribed.wait() for c in clients)), 30)
        publisher = asyncio.create_task(_publish(bus, stop, counter))
        await asyncio.sleep(2.0)
        before = counter[0]
        await asyncio.to_thread(gw.restart)
        await asyncio.sleep(2.0)
        stop.set()
        await publisher
        assert await asyncio.to_thread(bus.flush, 10)
        assert counter[0] > before > 0

        want = expected_by_topic(rdb, sorted({c.topic for c in clients}), since)
        await caught_up(clients, want, since, timeout=60, interval=0.1)
        for c in clients:
            assert c.duplicates() == 0, c.topic
            assert c.ids == want[c.topic], f"{c.topic}: {len(c.ids)} events, stream has {len(want[c.topic])}"
            assert c.connects >= 2, "every client lived through the restart"
            assert not c.errors, c.errors[:3]
        assert {code for c in clients for code in c.close_codes} <= {1001, 1006, None}
        print(f"{counter[0]} events published; {sum(len(c.ids) for c in clients)} delivered to "
              f"{len(clients)} clients across a gateway restart")
    finally:
        stop.set()
        if publisher is not None and not publisher.done():
            publisher.cancel()
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        bus.close()
        rdb.close()
