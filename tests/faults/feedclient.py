"""A resuming WebSocket feed client for the fault tests, and what the stream says it should get.

:class:`FeedClient` subscribes to one topic with ``since``, records every ``event`` frame, and
when its socket drops (gateway restart, 1013, Redis outage) reconnects and resubscribes with
the id of the last event it saw, as the DESIGN tells a client to. :func:`expected_ids` reads
the stream itself to say which events the client must have seen, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis as redis_lib

__all__ = ["FeedClient", "expected_ids", "expected_by_topic", "stream_tail", "matches", "caught_up"]

STREAM = "tracker:events"


def stream_tail(client: redis_lib.Redis, key: str = STREAM) -> str:
    """The newest entry id of the stream ("0-0" when empty)."""
    last: Any = client.xrevrange(key, count=1)
    return str(last[0][0].decode()) if last else "0-0"


def matches(topic: str, fields: dict[str, str]) -> bool:
    """Whether a stream entry belongs to ``topic`` (``all``, ``user:<id>``, ``task:<id>``)."""
    if topic == "all":
        return True
    kind, _, ident = topic.partition(":")
    if kind == "user":
        return fields.get("user_id") == ident
    if kind == "task":
        return fields.get("task_id") == ident
    raise ValueError(f"topic {topic!r} not supported here")


def expected_ids(client: redis_lib.Redis, topic: str, since: str, key: str = STREAM) -> list[str]:
    """Ids of the stream entries after ``since`` that belong to ``topic``, in stream order."""
    return expected_by_topic(client, [topic], since, key)[topic]


def expected_by_topic(client: redis_lib.Redis, topics: list[str], since: str,
                      key: str = STREAM) -> dict[str, list[str]]:
    """:func:`expected_ids` for many topics in one pass over the stream."""
    out: dict[str, list[str]] = {t: [] for t in topics}
    users = {t.partition(":")[2]: out[t] for t in topics if t.startswith("user:")}
    tasks = {t.partition(":")[2]: out[t] for t in topics if t.startswith("task:")}
    everything = out.get("all")
    start = f"({since}" if since != "0-0" else "-"
    while True:
        batch: Any = client.xrange(key, min=start, count=5000)
        if not batch:
            return out
        for entry_id, raw in batch:
            eid = entry_id.decode()
            if everything is not None:
                everything.append(eid)
            user = raw.get(b"user_id", b"").decode()
            if user in users:
                users[user].append(eid)
            task = raw.get(b"task_id", b"").decode()
            if task in tasks:
                tasks[task].append(eid)
        start = f"({batch[-1][0].decode()}"


@dataclass
class FeedClient:
    """One subscriber that resumes with ``since`` whenever its connection ends."""

    ws_url: str
    token: str
    topic: str
    since: str
    #: Seconds between the socket closing and the reconnect attempt.
    retry_delay: float = 0.2
    ids: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    recovered: list[dict[str, Any]] = field(default_factory=list)
    connects: int = 0
    #: Do not read frames while set (a deliberately slow client).
    stalled: asyncio.Event | None = None
    #: Resume after the connection ends (a deliberately slow client gives up instead).
    reconnect: bool = True
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _ws: aiohttp.ClientWebSocketResponse | None = None
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last_id(self) -> str:
        return self.ids[-1] if self.ids else self.since

    def start(self, session: aiohttp.ClientSession) -> FeedClient:
        self._task = asyncio.create_task(self._run(session))
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            try:
                await self._session(session)
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            if self._stop.is_set() or not self.reconnect:
                return
            await asyncio.sleep(self.retry_delay)

    async def _session(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(self.ws_url, headers={"Authorization": f"Bearer {self.token}"},
                                      heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
            self._ws = ws
            self.connects += 1
            await ws.send_str(json.dumps({"op": "subscribe", "topic": self.topic, "since": self.last_id}))
            while True:
                if self.stalled is not None and self.stalled.is_set():
                    await asyncio.sleep(0.05)
                    continue
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self._frame(json.loads(msg.data))
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                  aiohttp.WSMsgType.ERROR):
                    self.close_codes.append(ws.close_code)
                    return

    def _frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "event":
            self.ids.append(frame["id"])
        elif kind == "recovered":
            self.recovered.append(frame)
            self.subscribed.set()
        elif kind == "error":
            self.errors.append(frame)

    def duplicates(self) -> int:
        return len(self.ids) - len(set(self.ids))


async def caught_up(clients: list[FeedClient], want: dict[str, list[str]], since: str, timeout: float,
                    interval: float) -> None:
    """Wait until every client saw the last event ``want`` (:func:`expected_by_topic`) holds for its
    topic; fail naming the clients still behind."""
    def behind() -> list[FeedClient]:
        return [c for c in clients if c.last_id != (want[c.topic][-1] if want[c.topic] else since)]

    deadline = asyncio.get_running_loop().time() + timeout
    while late := behind():
        if asyncio.get_running_loop().time() > deadline:
            e_g = [(c.topic, len(c.ids), len(want[c.topic]), c.close_codes, c.errors[-1:]) for c in late[:5]]
            raise AssertionError(f"{len(late)} clients did not get every event after {timeout}s, e.g. {e_g}")
        await asyncio.sleep(interval)
