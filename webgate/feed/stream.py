"""Reading ``{prefix}:events``: the gateway's one live reader, and replays for ``since``.

Every gateway reads the whole stream with plain ``XREAD BLOCK`` (no consumer group: each
gateway needs every event for its own clients). After Redis goes away the reader reconnects
with backoff and continues from the last id it routed, so nothing that reached the stream
is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tracker.events import Event, decode
from webgate.feed.hub import Hub, id_key

__all__ = ["StreamReader", "replay", "is_complete", "tail_id", "REDIS_ERRORS"]

logger = logging.getLogger("webgate.feed.endpoint")

REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def tail_id(client: aioredis.Redis, key: str) -> str:
    """The id of the newest entry ever added (``0-0`` for a stream that does not exist yet)."""
    try:
        info = await client.xinfo_stream(key)
    except ResponseError:
        return "0-0"
    return _s(info["last-generated-id"])


def _decode_all(entries: list[Any], wants_data: Callable[[str, str], bool] | None = None
                ) -> tuple[list[Event], str | None]:
    events: list[Event] = []
    last: str | None = None
    for entry_id, fields in entries:
        last = _s(entry_id)
        try:
            events.append(decode(last, fields, wants_data=wants_data))
        except (ValueError, TypeError, UnicodeDecodeError):
            logger.warning("feed: skipping malformed stream entry %s", last)
    return events, last


def _raw_reply(response: Any, **_: Any) -> Any:
    return response


def _streams(resp: Any) -> list[tuple[Any, list[Any]]]:
    """``(stream, entries)`` of a raw ``XREAD`` reply: a list of pairs (RESP2) or a map (RESP3)."""
    if not resp:
        return []
    if isinstance(resp, dict):
        return list(resp.items())
    return [(pair[0], pair[1]) for pair in resp]


class StreamReader:
    """``XREAD BLOCK`` loop feeding a :class:`Hub`, with reconnect and backoff."""

    def __init__(self, redis_url: str, key: str, hub: Hub, *, block_ms: int = 1000, count: int = 1000) -> None:
        self.redis_url = redis_url
        self.key = key
        self.hub = hub
        self.block_ms = block_ms
        self.count = count
        self.connected = False
        self.reconnects = 0
        self._lost = False
        self._stopping = False
        self._client: aioredis.Redis | None = None

    def _new_client(self) -> aioredis.Redis:
        # Its own connection: a blocked XREAD must not hold one the request handlers need.
        client = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=2,
                                         socket_timeout=self.block_ms / 1000 + 10)
        # The reply as the parser gives it (streams of [id, [name, value, ...]] entries): decode()
        # reads a flat entry by position, where redis-py's own reply callback built a dict of every
        # entry's fields first (a third of this reader's time per entry).
        client.set_response_callback("XREAD", _raw_reply)
        return client

    async def start(self) -> None:
        """Position the reader at the stream's end (or at "now" while Redis is unreachable)."""
        client = self._client = self._new_client()
        try:
            self.hub.last_id = await asyncio.wait_for(tail_id(client, self.key), 5)
            self.connected = True
        except (TimeoutError, *REDIS_ERRORS) as exc:
            # Entries added once Redis is back get ids from its clock, after this one.
            self.hub.last_id = f"{int(time.time() * 1000) - 1}-0"
            logger.warning("feed: Redis unreachable at start (%s); reading from now once it is back", exc)

    async def run(self) -> None:
        delay = 0.05
        hub = self.hub
        while not self._stopping:
            try:
                if self._client is None:
                    self._client = self._new_client()
                resp: Any = await self._client.xread({self.key: hub.last_id or "$"}, count=self.count,
                                                block=self.block_ms)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                if self._stopping:
                    return
                if self.connected:
                    logger.warning("feed: lost Redis (%s); reconnecting from %s", exc, hub.last_id)
                self.connected = False
                self._lost = True
                await self._drop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            except ResponseError as exc:  # e.g. the key holds something else: wait for someone to fix it
                logger.error("feed: XREAD failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if self._lost:
                logger.warning("feed: Redis is back; continuing after %s", hub.last_id)
                self.reconnects += 1
                self._lost = False
            self.connected = True
            delay = 0.05
            read = 0
            for _name, entries in _streams(resp):
                read += len(entries)
                # Nobody subscribed: route without parsing data no one reads (no await between
                # this and route(), so no subscriber can arrive in between).
                events, last = _decode_all(entries, None if hub.topics else hub.routing_data)
                if last is not None:
                    hub.last_id = last
                try:
                    hub.route(events)
                except Exception:  # a bug in routing must not stop the feed
                    logger.exception("feed: routing failed")
            if 0 < read < self.count and not hub.topics:
                await hub.idle_gap()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:
                pass

    def stop(self) -> None:
        # Not only cancel(): a cancellation that lands as the read times out can be swallowed.
        self._stopping = True

    async def aclose(self) -> None:
        self._stopping = True
        await self._drop()


async def is_complete(client: aioredis.Redis, key: str, since: str) -> bool:
    """Whether the stream still holds every entry after ``since`` (nothing trimmed or deleted past it)."""
    since_key = id_key(since)
    try:
        info = await client.xinfo_stream(key)
    except ResponseError:  # no stream at all: only "from the beginning" is known to be complete
        return since_key == (0, 0)
    if since_key < id_key(_s(info.get("max-deleted-entry-id", b"0-0"))):
        return False
    added, length = info.get("entries-added"), info.get("length")
    if isinstance(added, int) and added == length:
        return True  # nothing ever removed
    first = info.get("first-entry")
    if not first:
        # Everything was removed: complete only if the client saw the last one.
        return since_key >= id_key(_s(info["last-generated-id"]))
    # Entries before the first one were trimmed; the client must have seen up to there.
    return since_key >= id_key(_s(first[0]))


async def replay(client: aioredis.Redis, key: str, since: str, upto: str,
                 batch: int = 1000) -> AsyncIterator[list[Event]]:
    """Entries after ``since`` up to and including ``upto``, in chunks."""
    start = "(" + since
    while True:
        entries = await client.xrange(key, min=start, max=upto, count=batch)
        if not entries:
            return
        events, last = _decode_all(entries)
        if events:
            yield events
        if len(entries) < batch or last is None:
            return
        start = "(" + last
