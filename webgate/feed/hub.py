"""Subscriptions and fan-out of the WebSocket feed.

One :class:`Hub` per gateway holds every connection and the topics it subscribed to. The
stream reader hands it each batch of events read from Redis; the hub serialises every event
once, appends the same bytes to the pending list of every subscriber, and then writes each
socket's frames of the batch with a single ``transport.write`` (through the socket's
:class:`webgate.feed.wire.FrameWriter`, which states when that is allowed). There is no queue or
writer task per connection: the transport's own buffer is the queue while a client keeps up.

A client that does not keep up (its transport buffer is above ``high_water``) gets its frames
held in a small ordered dict where progress is coalesced to the latest per task; a sweeper
writes them once the buffer drains below ``low_water``. Past ``max_queue`` held frames the
socket is closed with 1013 (try again later) and the client resumes with ``since``.

The hub also keeps the feed's limits: one timer per connection closes it with 4001 when its
token expires (moved by a refresh), a token bucket per connection bounds subscribes, a count
per user bounds open sockets, and marks of the routed stream ids let the replay bound be
decided without reading the stream (:mod:`webgate.feed.replay_bound`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

from aiohttp import WSCloseCode, web

from tracker.events import Event
from tracker.vocabulary import CloseCode
from webgate.feed import frames
from webgate.feed.settings import FeedSettings
from webgate.feed.wire import FrameWriter, close_code

__all__ = ["FeedSettings", "Conn", "Hub", "Item", "id_key", "TOPIC_KINDS"]

logger = logging.getLogger("webgate.feed.endpoint")

#: ``(coalescing key, frame bytes)``: the key is the task id of a progress event, else None.
Item = tuple[str | None, bytes]

TOPIC_KINDS = ("task", "user", "group")
_STARTS = frozenset({"task.pending", "task.started"})
_unique = itertools.count()


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair; raises ValueError for anything else."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _close_ws(ws: web.WebSocketResponse, code: WSCloseCode | CloseCode, message: str) -> None:
    try:
        await ws.close(code=close_code(code), message=message.encode())
    except Exception:  # the peer may already be gone
        pass


class Conn:
    """One WebSocket client: kept small, there may be tens of thousands."""

    __slots__ = ("ws", "writer", "user_id", "admin", "topics", "pending", "held", "loading", "mark", "floor",
                 "closed", "exp", "expiry", "allowance", "allowance_at")

    def __init__(self, ws: web.WebSocketResponse, writer: FrameWriter, user_id: str, admin: bool) -> None:
        self.ws = ws
        #: Every frame to this client goes through it (:mod:`webgate.feed.wire`).
        self.writer = writer
        self.user_id = user_id
        self.admin = admin
        #: Expiry (epoch seconds) of the token the connection runs on, and the timer that closes it then (4001).
        self.exp: float | None = None
        self.expiry: asyncio.TimerHandle | None = None
        #: Subscribe token bucket: subscribes left and when it was last topped up (monotonic seconds).
        self.allowance = 0.0
        self.allowance_at = 0.0
        self.topics: set[str] = set()
        #: Frames of the batch being routed.
        self.pending: list[Item] | None = None
        #: Backlog while the transport buffer is full (insertion-ordered; progress keyed by task).
        self.held: dict[Any, bytes] | None = None
        #: Live frames that arrive while a subscribe assembles its snapshot or replay.
        self.loading: list[Item] | None = None
        #: Sequence number of the last event routed here (one frame per event however many topics match).
        self.mark = 0
        #: Skip live events up to this stream id (a client resuming from a gateway that was ahead).
        self.floor: tuple[int, int] | None = None
        self.closed = False


class Hub:
    """Topic index, fan-out and backpressure; everything runs on the event loop."""

    def __init__(self, settings: FeedSettings | None = None) -> None:
        self.settings = settings or FeedSettings()
        self.conns: set[Conn] = set()
        self.topics: dict[str, set[Conn]] = {}
        #: Id of the last stream entry routed; replays stop here, live routing starts after it.
        self.last_id: str | None = None
        self.backlogged: set[Conn] = set()
        self._wake = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._seq = 0
        #: task id -> (user id, group id) of recently published/started tasks.
        self.recent: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        #: task id -> group id, for the groups somebody subscribed to.
        self.group_of: dict[str, str] = {}
        self.group_members: dict[str, set[str]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        #: Replay bound bookkeeping: ``(stream id, ordinal)`` of every ``mark_every``-th event routed (ordinal =
        #: events routed so far), enough of them to look ``max_replay`` entries back; ``origin`` is the stream's
        #: tail when reading began (ordinal 0). See :mod:`webgate.feed.replay_bound`.
        bound = self.settings.max_replay
        self.mark_every = max(1, bound // 100)
        self.marks: deque[tuple[str, int]] = deque(maxlen=bound // self.mark_every + 8 if bound > 0 else 1)
        self._next_mark = self.mark_every if bound > 0 else -1
        self.origin: str | None = None
        #: Open sockets per user, claimed before the upgrade and released when the handler ends.
        self.per_user: dict[str, int] = {}
        #: Sockets opened without a token, waiting for their first-frame ``auth`` (closed on shutdown).
        self.unauthenticated: set[web.WebSocketResponse] = set()
        # Counters for /metrics and the benchmark.
        self.events = 0
        self.messages = 0
        self.writes = 0
        self.coalesced = 0
        self.slow_closed = 0

    # -- connections and subscriptions ---------------------------------------------------------
    def claim(self, user_id: str) -> bool:
        """Reserve one of ``user_id``'s sockets; False when the user already has the maximum open."""
        limit = self.settings.max_connections_per_user
        n = self.per_user.get(user_id, 0)
        if limit > 0 and n >= limit:
            return False
        self.per_user[user_id] = n + 1
        return True

    def release(self, user_id: str) -> None:
        n = self.per_user.get(user_id, 0) - 1
        if n > 0:
            self.per_user[user_id] = n
        else:
            self.per_user.pop(user_id, None)

    def connect(self, ws: web.WebSocketResponse, writer: FrameWriter, user_id: str, admin: bool, *,
                exp: float | None = None) -> Conn:
        writer.set_send_buffer(self.settings.send_buffer)
        conn = Conn(ws, writer, user_id, admin)
        conn.allowance = self.settings.subscribe_rate
        conn.allowance_at = time.monotonic()
        self.conns.add(conn)
        self.set_expiry(conn, exp)
        return conn

    def set_expiry(self, conn: Conn, exp: float | None) -> None:
        """Close ``conn`` with 4001 when its token reaches ``exp``: one timer per connection, moved on refresh."""
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
        conn.exp = exp
        if exp is None or conn.closed:
            return
        loop = asyncio.get_running_loop()
        # Wall-clock expiry turned into a loop deadline (the loop's clock is monotonic).
        conn.expiry = loop.call_at(loop.time() + max(0.0, exp - time.time()), self._expire, conn)

    def expired(self, conn: Conn) -> bool:
        """Whether the token has run out (also when the timer is late, e.g. on a busy loop)."""
        return conn.exp is not None and time.time() >= conn.exp

    def _expire(self, conn: Conn) -> None:
        conn.expiry = None
        if not conn.closed:
            self.close(conn, CloseCode.TOKEN_EXPIRED, "token expired")

    def take_subscribe(self, conn: Conn) -> bool:
        """Spend one subscribe of the connection's allowance (a token bucket refilled at ``subscribe_rate``)."""
        rate = self.settings.subscribe_rate
        if rate <= 0:
            return True
        now = time.monotonic()
        conn.allowance = min(rate, conn.allowance + (now - conn.allowance_at) * rate)
        conn.allowance_at = now
        if conn.allowance < 1.0:
            return False
        conn.allowance -= 1.0
        return True

    def disconnect(self, conn: Conn) -> None:
        conn.closed = True
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
        conn.held = conn.pending = conn.loading = None
        self.backlogged.discard(conn)
        for topic in list(conn.topics):
            self.unsubscribe(conn, topic)
        self.conns.discard(conn)

    def subscribe(self, conn: Conn, topic: str) -> str | None:
        """Route ``topic`` to ``conn`` from the next batch on; returns the last id routed so far."""
        self.topics.setdefault(topic, set()).add(conn)
        conn.topics.add(topic)
        self._subscribed.set()
        return self.last_id

    async def idle_gap(self) -> None:
        """Wait ``idle_read_gap`` while nobody subscribes (see :class:`FeedSettings`); a subscribe ends it."""
        self._subscribed.clear()
        if self.topics or self.settings.idle_read_gap <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.idle_read_gap):
                await self._subscribed.wait()

    def unsubscribe(self, conn: Conn, topic: str) -> None:
        conn.topics.discard(topic)
        subs = self.topics.get(topic)
        if subs is None:
            return
        subs.discard(conn)
        if not subs:
            del self.topics[topic]
            if topic.startswith("group:"):
                for task_id in self.group_members.pop(topic[6:], ()):
                    self.group_of.pop(task_id, None)

    def add_group_members(self, group_id: str, task_ids: Iterable[str]) -> None:
        members = self.group_members.setdefault(group_id, set())
        for task_id in task_ids:
            members.add(task_id)
            self.group_of[task_id] = group_id

    def recent_group_members(self, group_id: str) -> list[tuple[str, str | None]]:
        """``(task id, user id)`` of remembered tasks of ``group_id`` (not yet in the database, maybe)."""
        return [(tid, uid) for tid, (uid, gid) in self.recent.items() if gid == group_id]

    # -- routing -------------------------------------------------------------------------------------
    def routing_data(self, event_type: str, data_text: str) -> bool:
        """Whether routing an event needs its data while nobody subscribes: only :meth:`_learn`
        reads it then, and only a start event's ``group_id`` (most carry none)."""
        return event_type in _STARTS and '"group_id"' in data_text

    def _learn(self, ev: Event) -> None:
        task_id = ev.task_id
        if task_id is None or ev.type not in _STARTS:
            return
        group = ev.data.get("group_id")
        group = group if isinstance(group, str) and group else None
        recent = self.recent
        recent[task_id] = (ev.user_id, group)
        recent.move_to_end(task_id)
        if len(recent) > self.settings.known_tasks:
            recent.popitem(last=False)
        if group is not None and group in self.group_members:
            self.add_group_members(group, (task_id,))

    def topics_of(self, ev: Event) -> list[tuple[str, bool]]:
        """``(topic, owner_only)`` pairs an event is published on.

        A notification belongs to its user: it goes to ``user:<id>`` and ``all`` only. A group
        topic may be held by a non-admin owner: it only gets that user's events.
        """
        uid = ev.user_id
        if ev.type == "notification":
            return [("user:" + uid, False), ("all", False)] if uid else [("all", False)]
        out: list[tuple[str, bool]] = [("all", False)]
        tid = ev.task_id
        if tid:
            out.append(("task:" + tid, False))
        if uid:
            out.append(("user:" + uid, False))
        if tid and self.group_of:
            gid = self.group_of.get(tid)
            if gid is None and ev.type in _STARTS:
                g = ev.data.get("group_id")
                gid = g if isinstance(g, str) and g in self.group_members else None
            if gid is not None:
                out.append(("group:" + gid, True))
        return out

    def matches(self, topic: str, ev: Event, conn: Conn) -> bool:
        """Whether ``ev`` belongs on ``topic`` for ``conn`` (used by replays; same rules as routing)."""
        if topic.startswith("group:") and ev.type in _STARTS and ev.data.get("group_id") == topic[6:]:
            self.add_group_members(topic[6:], (ev.task_id,) if ev.task_id else ())
        for t, owner_only in self.topics_of(ev):
            if t == topic:
                return not owner_only or conn.admin or ev.user_id == conn.user_id
        return False

    @staticmethod
    def item(ev: Event) -> Item:
        return (ev.task_id if ev.type == "task.progress" else None), frames.encode(ev.to_frame())

    def route(self, events: list[Event]) -> None:
        """Fan a batch of stream events out: one write per subscribed socket."""
        dirty: list[Conn] = []
        topics = self.topics
        for ev in events:
            self.events += 1
            self._learn(ev)
            if self.events == self._next_mark:
                self._next_mark += self.mark_every
                if ev.id:
                    self.marks.append((ev.id, self.events))
            if not topics:
                continue
            self._seq += 1
            seq = self._seq
            item: Item | None = None
            ev_key: tuple[int, int] | None = None
            for topic, owner_only in self.topics_of(ev):
                subs = topics.get(topic)
                if not subs:
                    continue
                for conn in subs:
                    if conn.mark == seq:
                        continue
                    if owner_only and not conn.admin and conn.user_id != ev.user_id:
                        continue
                    if conn.floor is not None:
                        if ev_key is None:
                            ev_key = id_key(ev.id or "0")
                        if ev_key <= conn.floor:
                            continue
                        conn.floor = None
                    conn.mark = seq
                    if item is None:
                        item = self.item(ev)
                    if conn.pending is None:
                        conn.pending = [item]
                        dirty.append(conn)
                    else:
                        conn.pending.append(item)
        for conn in dirty:
            items = conn.pending
            conn.pending = None
            if items is None or conn.closed:
                continue
            if conn.loading is not None:
                conn.loading.extend(items)
                if len(conn.loading) > self.settings.max_replay_backlog:
                    self.close(conn, WSCloseCode.TRY_AGAIN_LATER, "too slow: reconnect and resume with since")
            else:
                self.deliver(conn, items)

    # -- writing -------------------------------------------------------------------------------------
    def send(self, conn: Conn, frame: bytes) -> None:
        """A reply of the server (pong, error, ack, snapshot), in order with the events."""
        self.deliver(conn, [(None, frame)])

    def deliver(self, conn: Conn, items: list[Item], coalesce: bool = True) -> None:
        """Write ``items`` now, or hold them while the client is behind."""
        if conn.closed or not items:
            return
        writer = conn.writer
        if writer.is_closing():
            conn.closed = True
            return
        if conn.held is not None or writer.buffered() > self.settings.high_water:
            self._hold(conn, items, coalesce)
            return
        data = items[0][1] if len(items) == 1 else b"".join([frame for _, frame in items])
        writer.write(data)
        self.messages += len(items)
        self.writes += 1

    def _hold(self, conn: Conn, items: list[Item], coalesce: bool) -> None:
        held = conn.held
        if held is None:
            held = conn.held = {}
        for key, frame in items:
            if key is not None and coalesce:
                if held.pop(key, None) is not None:
                    self.coalesced += 1
                held[key] = frame
            else:
                held[next(_unique)] = frame
        if len(held) > self.settings.max_queue:
            self.close(conn, WSCloseCode.TRY_AGAIN_LATER, "too slow: reconnect and resume with since")
            return
        if conn not in self.backlogged:
            self.backlogged.add(conn)
            self._wake.set()

    def begin_loading(self, conn: Conn) -> None:
        if conn.loading is None:
            conn.loading = []

    def end_loading(self, conn: Conn) -> None:
        """Send what arrived during a snapshot or replay, right after it."""
        items = conn.loading
        conn.loading = None
        if not items or conn.closed:
            return
        if conn.held is not None or conn.writer.is_closing():
            self.deliver(conn, items)  # behind what is already held, in order
            return
        # Part of the catch-up like the replay itself: written whole (the bound above capped it), never
        # coalesced.
        conn.writer.write(b"".join([frame for _, frame in items]))
        self.messages += len(items)
        self.writes += 1

    def behind(self, conn: Conn) -> bool:
        return conn.held is not None or conn.writer.buffered() > self.settings.high_water

    async def drained(self, conn: Conn, timeout: float) -> bool:
        """Wait until ``conn`` has caught up (for long replays); False if it did not in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not conn.closed and self.behind(conn):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return not conn.closed

    async def run_backlog(self) -> None:
        """Write held frames of clients that caught up (the only polling, and only while some are behind)."""
        low = self.settings.low_water
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.backlogged:
                await asyncio.sleep(0.01)
                for conn in list(self.backlogged):
                    if conn.closed or conn.held is None:
                        self.backlogged.discard(conn)
                        continue
                    writer = conn.writer
                    if writer.is_closing():
                        conn.closed = True
                        self.backlogged.discard(conn)
                        continue
                    if writer.buffered() <= low:
                        held = conn.held
                        conn.held = None
                        self.backlogged.discard(conn)
                        writer.write(b"".join(held.values()))
                        self.messages += len(held)
                        self.writes += 1

    # -- closing -------------------------------------------------------------------------------------
    def close(self, conn: Conn, code: WSCloseCode | CloseCode, message: str = "") -> None:
        """Stop routing to ``conn`` and close it with ``code`` (in the background)."""
        if conn.closed and conn not in self.conns:
            return
        if code == WSCloseCode.TRY_AGAIN_LATER:
            self.slow_closed += 1
            logger.info("feed: closing a slow client of user %s (1013)", conn.user_id)
        self.disconnect(conn)
        task = asyncio.ensure_future(self._close(conn, code, message))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, conn: Conn, code: WSCloseCode | CloseCode, message: str) -> None:
        loop = asyncio.get_running_loop()
        # A client that never reads never answers the close: drop it after the grace period.
        handle = loop.call_later(self.settings.close_grace, conn.writer.abort)
        await conn.writer.close(code, message, drain=False)
        if conn.writer.buffered() == 0:
            handle.cancel()

    async def shutdown(self, code: WSCloseCode | CloseCode = WSCloseCode.GOING_AWAY, timeout: float = 5.0) -> None:
        """Close every socket (1001 going away) and wait for the closes, bounded."""
        for conn in list(self.conns):
            self.close(conn, code, "server shutting down")
        for ws in list(self.unauthenticated):
            task = asyncio.ensure_future(_close_ws(ws, code, "server shutting down"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=timeout)

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self.conns), "topics": len(self.topics), "events": self.events,
                "messages": self.messages, "writes": self.writes, "coalesced": self.coalesced,
                "slow_closed": self.slow_closed, "backlogged": len(self.backlogged), "last_id": self.last_id,
                "unauthenticated": len(self.unauthenticated)}
