"""Soak: 1,000 WebSocket clients while 1,000 events/s flow through the gateway.

Most clients follow their own user's topic, a few admins follow ``all``, and a few clients
never read (deliberately slow). Every client that reads must end up with exactly the
stream's events for its topic, and the gateway's resident memory must stay flat after the
warm-up. The default run lasts 10 s to fit the suite's time budget; set
``TRACKER_SOAK_SECONDS=60`` for the full soak (``TRACKER_SOAK_CLIENTS`` and
``TRACKER_SOAK_RATE`` change the other two figures).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import psutil
import redis as redis_lib

from tests.conftest import make_token
from tests.faults.feedclient import FeedClient, caught_up, expected_by_topic, stream_tail
from tracker.bus import EventBus

SECONDS = float(os.environ.get("TRACKER_SOAK_SECONDS", "10"))
CLIENTS = int(os.environ.get("TRACKER_SOAK_CLIENTS", "1000"))
RATE = int(os.environ.get("TRACKER_SOAK_RATE", "1000"))
ADMINS = 3
SLOW = 10
USERS = CLIENTS - ADMINS - SLOW
#: Allowed RSS growth after warm-up (a leak of even a few hundred bytes per event would exceed it).
RSS_SLACK = 16 * 1024 * 1024


async def _publish(bus: EventBus, seconds: float) -> int:
    """``RATE`` events/s for ``seconds``, spread over the users (no progress: nothing coalesces)."""
    kinds = ("task.log", "task.metric", "task.started", "task.completed")
    k = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * RATE)
        while k < due:
            user = f"soak-u{k % USERS}"
            bus.publish(kinds[k % len(kinds)], f"soak-t{k % 5000}", user, {"n": k, "message": f"line {k}"})
            k += 1
        await asyncio.sleep(0.005)
    return k


async def _sample_rss(pid: int, out: list[tuple[float, int]], stop: asyncio.Event) -> None:
    proc = psutil.Process(pid)
    t0 = time.monotonic()
    while not stop.is_set():
        out.append((time.monotonic() - t0, proc.memory_info().rss))
        await asyncio.sleep(0.25)


async def test_soak_1000_clients(gateway_process: Any, tracker_env: dict[str, str], ws_session: Any) -> None:
    gw = await asyncio.to_thread(gateway_process)
    rdb = redis_lib.Redis.from_url(tracker_env["TRACKER_REDIS_URL"])
    since = stream_tail(rdb)
    stalled = asyncio.Event()
    stalled.set()
    admin = make_token("soak-admin", admin=True)
    clients = [FeedClient(gw.ws_url, admin, "all", since) for _ in range(ADMINS)]
    slow = [FeedClient(gw.ws_url, admin, "all", since, stalled=stalled, reconnect=False) for _ in range(SLOW)]
    clients += [FeedClient(gw.ws_url, make_token(f"soak-u{i}"), f"user:soak-u{i}", since) for i in range(USERS)]
    bus = EventBus(tracker_env["TRACKER_REDIS_URL"], name="faults-soak-bus")
    rss: list[tuple[float, int]] = []
    stop = asyncio.Event()
    sampler = None
    t0 = time.monotonic()
    try:
        for i in range(0, len(clients), 100):  # connect in waves rather than all in one burst
            batch = clients[i:i + 100]
            for c in batch:
                c.start(ws_session)
            try:
                await asyncio.wait_for(asyncio.gather(*(c.subscribed.wait() for c in batch)), 60)
            except TimeoutError:
                waiting = [c for c in batch if not c.subscribed.is_set()]
                raise AssertionError(f"{len(waiting)} of wave {i // 100} not subscribed: "
                                     f"connects {[c.connects for c in waiting[:5]]} "
                                     f"errors {[c.errors[:1] for c in waiting[:3]]} "
                                     f"closes {[c.close_codes[:3] for c in waiting[:3]]}\n"
                                     f"{gw.logfile.read_text(errors='replace')[-2000:]}") from None
        for c in slow:
            c.start(ws_session)
        connected = time.monotonic() - t0
        sampler = asyncio.create_task(_sample_rss(gw.proc.pid, rss, stop))
        published = await _publish(bus, SECONDS)
        assert await asyncio.to_thread(bus.flush, 30)
        stop.set()
        await sampler

        t1 = time.monotonic()
        want = expected_by_topic(rdb, sorted({c.topic for c in clients}), since)
        t2 = time.monotonic()
        await caught_up(clients, want, since, timeout=60, interval=0.2)
        print(f"phases: connect {connected:.1f}s, expected ids {t2 - t1:.1f}s, catch-up {time.monotonic() - t2:.1f}s")
        assert len(want["all"]) >= published
        missed = [c.topic for c in clients if c.ids != want[c.topic]]
        assert not missed, f"{len(missed)} reading clients missed or repeated events, e.g. {missed[:5]}"
        assert sum(len(want[c.topic]) for c in clients if c.topic != "all") >= published

        # Memory: flat after the warm-up (the first third of the run).
        after = [r for t, r in rss if t >= max(3.0, SECONDS / 3)]
        assert len(after) >= 4, rss
        third = max(1, len(after) // 3)
        early, late = statistics.median(after[:third]), statistics.median(after[-third:])
        growth = late - early
        print(f"soak: {CLIENTS} clients ({SLOW} never reading), {published} events in {SECONDS:g}s; gateway RSS "
              f"{early / 2**20:.1f} MiB -> {late / 2**20:.1f} MiB after warm-up; slow clients closed: "
              f"{sum(1 for c in slow if c.close_codes)}")
        assert growth <= RSS_SLACK, f"gateway RSS grew by {growth / 2**20:.1f} MiB after warm-up"
        assert gw.proc.poll() is None
    finally:
        stop.set()
        if sampler is not None and not sampler.done():
            sampler.cancel()
        stalled.clear()
        await asyncio.gather(*(c.stop() for c in clients + slow), return_exceptions=True)
        bus.close()
        rdb.close()
