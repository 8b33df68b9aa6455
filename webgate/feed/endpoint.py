"""The live feed: ``GET /api/v1/progress/ws`` and the JavaScript client.

Client to server (JSON text frames, the models of :mod:`webgate.feed.client_frames`)::

    {"op": "auth", "token": "<jwt>"}                                 -> {"type": "ack", "op": "auth", "user_id", "exp"}
    {"op": "subscribe", "topic": "task:<id>" | "user:<id>" | "group:<id>" | "all", "since": "<event id>"?}
    {"op": "unsubscribe", "topic": ...}
    {"op": "ping"}
    {"op": "pause" | "resume" | "cancel", "task_id": "<id>"}      -> {"type": "ack", "op": ..., "task_id": ...}

Server to client: ``snapshot`` after a subscribe without ``since``; ``event`` frames
(:meth:`tracker.events.Event.to_frame`); ``recovered`` after a subscribe with ``since`` (replayed
events come first; with ``complete: false`` a ``snapshot`` follows); ``error`` with ``code`` and
``message`` for refused or malformed messages (the connection stays open); ``pong``.

Authentication: the upgrade carries the token (``?token=`` or ``Authorization: Bearer``; a bad
one gets HTTP 401), or none: then the first frame must be ``op: auth`` within ``auth_timeout``
(5 s). Before it nothing else is served (``error`` code ``unauthorized``); a bad token there, or
silence, closes the socket with 4001. An open socket is closed with 4001 ("token expired") when
its token reaches ``exp``; ``op: auth`` with a new token of the same user (and admin flag) moves
that point, a token of anyone else gets an ``error`` and close 4003, a bad one an ``error`` (the
old token stays in force).

Limits (:class:`webgate.feed.settings.FeedSettings`, env ``TRACKER_FEED_*``): ``subscribe_rate`` subscribes
per second per connection (beyond: ``error`` code ``rate_limited``), ``max_connections_per_user``
open sockets per user in this process (beyond: HTTP 429 at the upgrade, close 4029 after a
first-frame auth), and ``max_replay``: a resume from further back answers ``recovered`` with
``complete: false`` and a snapshot instead of replaying.

Authorisation: a user may subscribe to ``user:<own id>``, to tasks it owns and to groups
holding its tasks (it then only sees its own tasks' events there); ``all``, other users'
topics and their tasks need an admin token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from tracker import control, queries
from tracker.api import task_record
from tracker.status import TERMINAL, Status
from tracker.vocabulary import CloseCode
from webgate.core.auth import AuthError, Principal, authenticate, decode_token, token_from_request
from webgate.core.db import fetch_all, fetch_one
from webgate.core.errors import json_error
from webgate.core.keys import CELERY_APP, CONFIG, REDIS, REPORTER
from webgate.feed import client_frames, frames
from webgate.feed.client_frames import Refused
from webgate.feed.hub import Conn, Hub, Item, id_key
from webgate.feed.replay_bound import ReplayBound
from webgate.feed.settings import FeedSettings
from webgate.feed.stream import StreamReader, is_complete, replay
from webgate.feed.wire import FrameWriter

__all__ = ["setup", "HUB", "FEED_SETTINGS", "STREAM_READER", "REPLAY_BOUND", "WS_PATH", "CLIENT_JS_PATH"]

logger = logging.getLogger("webgate.feed.endpoint")

WS_PATH = "/api/v1/progress/ws"
CLIENT_JS_PATH = "/static/tracker-client.js"
_CLIENT_JS = Path(__file__).parent / "static" / "tracker-client.js"

#: Override before the app starts to tune the feed (tests use small bounds).
FEED_SETTINGS = web.AppKey("tracker_feed_settings", FeedSettings)
HUB = web.AppKey("tracker_feed_hub", Hub)
STREAM_READER = web.AppKey("tracker_feed_reader", StreamReader)
REPLAY_BOUND = web.AppKey("tracker_feed_replay_bound", ReplayBound)

_UNFINISHED = [s.value for s in Status if s not in TERMINAL]
_UNAVAILABLE = (SQLAlchemyError, RedisError, OSError, TimeoutError)


# -- the WebSocket endpoint ----------------------------------------------------------------------------
async def ws_handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[FEED_SETTINGS]
    hub = app[HUB]
    principal: Principal | None = None
    if token_from_request(request, allow_query=True) is not None:
        principal = authenticate(request, allow_query=True)  # a JSON 401 before the upgrade
        if principal.exp is not None and principal.exp <= time.time():
            raise json_error(401, "unauthorized", "token expired")  # inside the decoder's leeway, but spent
        if not hub.claim(principal.user_id):
            raise json_error(429, "too_many_connections", _too_many(settings))
    # Without a token the upgrade is accepted; the first frame must be {"op": "auth"} (keeps tokens out of URLs).
    claimed = principal.user_id if principal is not None else None
    try:
        # No compression: the hub writes pre-encoded frames straight to the transport (webgate.feed.wire).
        ws = web.WebSocketResponse(heartbeat=settings.heartbeat, max_msg_size=settings.max_msg_size,
                                   compress=False, timeout=settings.close_grace)
        await ws.prepare(request)
        if request.transport is None:
            return ws
        writer = FrameWriter(ws, request.transport)
        if principal is None:
            principal = await _first_auth(app, ws, writer)
            if principal is None:
                return ws
            if not hub.claim(principal.user_id):
                writer.write(frames.error("too_many_connections", _too_many(settings), op="auth"))
                await writer.close(CloseCode.TOO_MANY_CONNECTIONS, "too many connections")
                return ws
            claimed = principal.user_id
            writer.write(_auth_ack(principal))
        conn = hub.connect(ws, writer, principal.user_id, principal.admin, exp=principal.exp)
        try:
            async for msg in ws:
                if conn.closed:
                    continue  # closed by the server (expiry, 4003, 1013): serve nothing, read until the close
                if msg.type is WSMsgType.TEXT:
                    await _handle(app, hub, conn, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    hub.send(conn, frames.error("bad_request", "binary frames are not accepted: send JSON text"))
        finally:
            hub.disconnect(conn)
        return ws
    finally:
        if claimed is not None:
            hub.release(claimed)


def _too_many(settings: FeedSettings) -> str:
    return (f"at most {settings.max_connections_per_user} open feed connections per user "
            "(TRACKER_FEED_MAX_CONNECTIONS_PER_USER)")


def _auth_ack(principal: Principal) -> bytes:
    return frames.ack("auth", user_id=principal.user_id, exp=principal.exp)


def _decode(app: web.Application, token: str) -> Principal:
    config = app[CONFIG]
    try:
        principal = decode_token(config.secret, token, max_ttl=config.token_max_ttl)
    except AuthError as exc:
        raise Refused("unauthorized", str(exc), op="auth", of="auth") from None
    if principal.exp is not None and principal.exp <= time.time():
        raise Refused("unauthorized", "token expired", op="auth", of="auth")
    return principal


async def _first_auth(app: web.Application, ws: web.WebSocketResponse, writer: FrameWriter) -> Principal | None:
    """Wait up to ``auth_timeout`` for ``{"op": "auth", "token": ...}``; serve nothing else meanwhile.

    Other frames get an ``error`` (code ``unauthorized``) and the wait goes on; a bad token gets an
    ``error`` and close 4001, and so does silence past the deadline. None when the socket was closed.
    """
    hub = app[HUB]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + app[FEED_SETTINGS].auth_timeout
    hub.unauthenticated.add(ws)
    try:
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            if msg.type is not WSMsgType.TEXT:
                if msg.type is WSMsgType.BINARY:
                    writer.write(frames.error("bad_request", "binary frames are not accepted: send JSON text"))
                    continue
                return None  # closed, closing or failed (e.g. 1009 for an oversized frame)
            try:
                frame = client_frames.parse(msg.data)
                if not isinstance(frame, client_frames.Auth):
                    writer.write(_unauthorized(frame.op))
                    continue
                return _decode(app, frame.token)
            except Refused as exc:
                if exc.of is None:  # not a frame with an op at all: said so, and the wait goes on
                    writer.write(exc.frame())
                    continue
                if exc.of != "auth":
                    writer.write(_unauthorized(exc.of))
                    continue
                # A malformed auth frame or a bad token: said so, and closed.
                writer.write(exc.frame())
                await writer.close(CloseCode.TOKEN_EXPIRED, "unauthorized")
                return None
        writer.write(frames.error("unauthorized", f"no auth frame within {app[FEED_SETTINGS].auth_timeout:g} s",
                                  op="auth"))
        await writer.close(CloseCode.TOKEN_EXPIRED, "authentication timeout")
        return None
    finally:
        hub.unauthenticated.discard(ws)


def _unauthorized(op: str) -> bytes:
    return Refused("unauthorized", 'authenticate first: send {"op": "auth", "token": "<jwt>"}', op=op[:40]).frame()


async def _handle(app: web.Application, hub: Hub, conn: Conn, raw: str) -> None:
    if conn.closed:
        return
    if hub.expired(conn):
        # The timer is due but has not run yet (a busy loop): an expired token gets nothing served.
        hub.close(conn, CloseCode.TOKEN_EXPIRED, "token expired")
        return
    try:
        try:
            frame = client_frames.parse(raw)
        except Refused as exc:
            # A malformed subscribe spends its token like any other (a flood of bad ones is limited too).
            if exc.of == "subscribe":
                _take_subscribe(hub, conn, exc.context.get("topic"))
            raise
        if isinstance(frame, client_frames.Ping):
            hub.send(conn, frames.pong())
        elif isinstance(frame, client_frames.Subscribe):
            _take_subscribe(hub, conn, frame.topic)
            await _subscribe(app, hub, conn, frame)
        elif isinstance(frame, client_frames.Unsubscribe):
            hub.unsubscribe(conn, frame.topic)
        elif isinstance(frame, client_frames.Auth):
            _refresh(app, hub, conn, frame)
        else:
            await _control(app, hub, conn, frame)
    except Refused as exc:
        hub.send(conn, exc.frame())
    except _UNAVAILABLE as exc:
        logger.warning("feed: store unavailable: %s", exc)
        hub.send(conn, frames.error("unavailable", "the store is unavailable; try again"))


def _take_subscribe(hub: Hub, conn: Conn, topic: str | None) -> None:
    if not hub.take_subscribe(conn):
        raise Refused("rate_limited", f"at most {hub.settings.subscribe_rate:g} subscribes per second per connection",
                      topic=topic if topic is not None and len(topic) <= 80 else None)


def _refresh(app: web.Application, hub: Hub, conn: Conn, frame: client_frames.Auth) -> None:
    """``op: auth`` on an open connection: a new token for the same user moves the expiry."""
    principal = _decode(app, frame.token)  # a bad token: an error, the connection goes on with the old one
    if principal.user_id != conn.user_id or principal.admin != conn.admin:
        # Another identity cannot take over a socket (nor change its admin rights): refuse and close.
        hub.send(conn, frames.error("forbidden", "the new token is for another user: reconnect with it", op="auth"))
        hub.close(conn, CloseCode.FORBIDDEN, "token for another user")
        return
    hub.set_expiry(conn, principal.exp)
    hub.send(conn, _auth_ack(principal))


# -- subscribe ---------------------------------------------------------------------------------------------
async def _subscribe(app: web.Application, hub: Hub, conn: Conn, frame: client_frames.Subscribe) -> None:
    topic, since = frame.topic, frame.since
    if topic not in conn.topics and len(conn.topics) >= hub.settings.max_topics:
        raise Refused("too_many_topics", f"at most {hub.settings.max_topics} topics per connection", topic=topic)
    await _authorize(app, hub, conn, topic)
    hub.begin_loading(conn)
    upto = hub.subscribe(conn, topic)
    try:
        if since is None:
            hub.deliver(conn, [(None, frames.snapshot(topic, await _snapshot(app, conn, topic)))])
            return
        redis = app[REDIS]
        key = app[CONFIG].prefix + ":events"
        complete = await is_complete(redis, key, since)
        if complete and await app[REPLAY_BOUND].too_far(redis, key, since):
            # Further back than TRACKER_FEED_MAX_REPLAY: a snapshot is cheaper than replaying that much.
            complete = False
            upto = None
        if upto is not None:
            async for chunk in replay(redis, key, since, upto, batch=500):
                items: list[Item] = [hub.item(ev) for ev in chunk if hub.matches(topic, ev, conn)]
                # Replayed events are exact (never coalesced): wait for the client to take the previous
                # chunk; one that cannot in time is closed like any slow client.
                if hub.behind(conn) and not await hub.drained(conn, hub.settings.close_grace):
                    hub.close(conn, WSCloseCode.TRY_AGAIN_LATER, "too slow: reconnect and resume with since")
                    return
                if conn.closed:
                    return
                hub.deliver(conn, items, coalesce=False)
            if hub.behind(conn) and not await hub.drained(conn, hub.settings.close_grace):
                hub.close(conn, WSCloseCode.TRY_AGAIN_LATER, "too slow: reconnect and resume with since")
                return
            if id_key(since) > id_key(upto) and conn.topics == {topic}:
                # The client saw events this gateway has not read yet: do not send them twice. (The floor is
                # per connection: with other topics live, a few doubles beat losing their events.)
                conn.floor = max(conn.floor or (0, 0), id_key(since))
        hub.deliver(conn, [(None, frames.recovered(topic, complete))])
        if not complete:
            hub.deliver(conn, [(None, frames.snapshot(topic, await _snapshot(app, conn, topic)))])
    except BaseException:
        hub.unsubscribe(conn, topic)
        raise
    finally:
        hub.end_loading(conn)


def _flush_wait(app: web.Application) -> float:
    return min(1.0, app[CONFIG].flush_interval * 2 + 0.05)


async def _task_owner(app: web.Application, hub: Hub, task_id: str) -> tuple[bool, str | None]:
    known = hub.recent.get(task_id)
    if known is not None:
        return True, known[0]
    row = await fetch_one(app, queries.task_by_id(task_id))
    if row is None:
        return False, None
    return True, row._mapping["user_id"]


async def _authorize(app: web.Application, hub: Hub, conn: Conn, topic: str) -> None:
    kind, _, ident = topic.partition(":")
    if kind == "group":
        await _authorize_group(app, hub, conn, ident)
        return
    if conn.admin:
        return
    if kind == "all":
        raise Refused("forbidden", "the 'all' topic needs an admin token", topic=topic)
    if kind == "user":
        if ident != conn.user_id:
            raise Refused("forbidden", "you may only subscribe to your own user topic", topic=topic)
        return
    found, owner = await _task_owner(app, hub, ident)
    if not found:
        # Its pending row may still be in a producer's write batch: give it one flush interval.
        await asyncio.sleep(_flush_wait(app))
        found, owner = await _task_owner(app, hub, ident)
    if not found:
        raise Refused("not_found", f"no task {ident[:80]!r}", topic=topic)
    if owner != conn.user_id:
        raise Refused("forbidden", "this task belongs to another user", topic=topic)


async def _authorize_group(app: web.Application, hub: Hub, conn: Conn, group_id: str) -> None:
    """Learn the group's tasks (for routing) and check the user owns one of them."""
    recent = hub.recent_group_members(group_id)
    rows = await fetch_all(app, queries.tasks(queries.TaskFilters(group_id=group_id),
                                              limit=hub.settings.group_snapshot_limit))
    members = [(r._mapping["task_id"], r._mapping["user_id"]) for r in rows] + recent
    if not conn.admin and not any(uid == conn.user_id for _, uid in members):
        raise Refused("forbidden", "this group holds none of your tasks", topic="group:" + group_id)
    hub.add_group_members(group_id, (tid for tid, _ in members))


async def _snapshot(app: web.Application, conn: Conn, topic: str) -> list[dict[str, Any]]:
    """Current state of the topic's tasks from PostgreSQL, bounded."""
    settings = app[FEED_SETTINGS]
    kind, _, ident = topic.partition(":")
    if kind == "task":
        rows = await fetch_all(app, queries.task_by_id(ident))
        return [task_record(r).to_dict() for r in rows]
    if kind == "group":
        filters = queries.TaskFilters(group_id=ident, user_id=None if conn.admin else conn.user_id)
        rows = await fetch_all(app, queries.tasks(filters, limit=settings.group_snapshot_limit))
        return [task_record(r).to_dict() for r in rows[:settings.group_snapshot_limit]]
    user = ident if kind == "user" else None
    limit = settings.snapshot_limit
    # Active tasks first (however old), then the most recent others.
    active = await fetch_all(app, queries.tasks(queries.TaskFilters(user_id=user, status=_UNFINISHED),
                                                limit=limit))
    recent = await fetch_all(app, queries.tasks(queries.TaskFilters(user_id=user), limit=limit))
    out: dict[str, dict[str, Any]] = {}
    for row in [*active[:limit], *recent[:limit]]:
        if len(out) >= limit:
            break
        record = task_record(row)
        out.setdefault(record.task_id, record.to_dict())
    return list(out.values())


# -- control ----------------------------------------------------------------------------------------------
async def _control(app: web.Application, hub: Hub, conn: Conn, frame: client_frames.Control) -> None:
    op, task_id = frame.op, frame.task_id
    row = await fetch_one(app, queries.task_by_id(task_id))
    if row is None and task_id in hub.recent:
        # Known from the stream but not stored yet: its row is in a write batch.
        await asyncio.sleep(_flush_wait(app))
        row = await fetch_one(app, queries.task_by_id(task_id))
    if row is None:
        raise Refused("not_found", f"no task {task_id[:80]!r}", op=op, task_id=task_id)
    task = task_record(row)
    if not conn.admin and task.user_id != conn.user_id:
        raise Refused("forbidden", "this task belongs to another user", op=op, task_id=task_id)
    plan = await control.apply_async(app[REDIS], app[CONFIG].prefix, task, op, reporter=app[REPORTER],
                                     celery_app=app[CELERY_APP])
    if not plan.allowed:
        raise Refused("conflict", plan.reason, op=op, task_id=task_id)
    hub.send(conn, frames.ack(op, task_id=task_id))


# -- the JavaScript client ---------------------------------------------------------------------------------
async def client_js(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(_CLIENT_JS, headers={"Content-Type": "application/javascript; charset=utf-8",
                                                 "Cache-Control": "no-cache"})


# -- lifecycle ---------------------------------------------------------------------------------------------
async def _feed_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    settings = app[FEED_SETTINGS]
    hub = app[HUB] = Hub(settings)
    app[REPLAY_BOUND] = ReplayBound(settings.max_replay, hub)
    reader = app[STREAM_READER] = StreamReader(config.require_redis(), config.prefix + ":events", hub,
                                               block_ms=settings.block_ms, count=settings.read_count)
    await reader.start()
    hub.origin = hub.last_id  # where reading began: the replay bound counts routed events from here
    tasks = [asyncio.create_task(reader.run(), name="feed-reader"),
             asyncio.create_task(hub.run_backlog(), name="feed-backlog")]
    yield
    reader.stop()
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=2)
    await reader.aclose()  # also breaks a read that ignored the cancellation
    if pending:
        await asyncio.wait(pending, timeout=2)


async def _on_shutdown(app: web.Application) -> None:
    hub = app.get(HUB)
    if hub is not None:
        await hub.shutdown(WSCloseCode.GOING_AWAY, timeout=min(5.0, hub.settings.close_grace))


def setup(app: web.Application) -> None:
    if FEED_SETTINGS not in app:
        celery_app = app.get(CELERY_APP)
        app[FEED_SETTINGS] = FeedSettings.from_celery(celery_app) if celery_app is not None else FeedSettings.from_env()
    app.router.add_get(WS_PATH, ws_handler)
    app.router.add_get(CLIENT_JS_PATH, client_js)
    app.cleanup_ctx.append(_feed_ctx)
    app.on_shutdown.append(_on_shutdown)
