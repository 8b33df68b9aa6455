"""How far back a ``since`` resume may replay (``TRACKER_FEED_MAX_REPLAY``).

A resume from further back than ``max_replay`` entries is answered with ``complete: false`` and a
snapshot instead of a replay. Telling how many entries follow an id would take a scan of the
stream; instead Redis finds the id of the entry ``max_replay`` before the newest one itself (a Lua
``XREVRANGE ... COUNT``, returning one id, nothing decoded, nothing sent over the wire) and the
gateway keeps that boundary for a second, so a burst of resumes costs one scan. ``XLEN`` first: a
stream no longer than the bound needs no scan at all.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from webgate.hub import id_key

__all__ = ["ReplayBound"]

# The id of the entry ARGV[1] places before the newest (the newest is 1), or false if there are fewer.
_BOUNDARY_LUA = """
local r = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[1])
if #r < tonumber(ARGV[1]) then return false end
return r[#r][1]
"""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ReplayBound:
    """The oldest ``since`` a resume may replay from, cached for ``ttl`` seconds."""

    def __init__(self, max_replay: int, ttl: float = 1.0) -> None:
        self.max_replay = max_replay
        self.ttl = ttl
        self._boundary: tuple[int, int] | None = None
        self._at = float("-inf")
        self.scans = 0
        self._script: Any = None

    async def boundary(self, client: aioredis.Redis, key: str) -> tuple[int, int] | None:
        """Id of the entry just before the newest ``max_replay`` ones; None when the stream holds no more."""
        now = time.monotonic()
        if now - self._at < self.ttl:
            return self._boundary
        value: tuple[int, int] | None = None
        if self.max_replay > 0 and await client.xlen(key) > self.max_replay:
            if self._script is None:
                self._script = client.register_script(_BOUNDARY_LUA)  # EVALSHA, loaded on first use
            try:
                raw = await self._script(keys=[key], args=[self.max_replay + 1], client=client)
            except ResponseError:  # not a stream (someone else's key): nothing to bound
                raw = None
            self.scans += 1
            value = id_key(_s(raw)) if raw else None
        self._boundary, self._at = value, now
        return value

    async def too_far(self, client: aioredis.Redis, key: str, since: str) -> bool:
        """Whether more than ``max_replay`` entries follow ``since`` (about: the boundary may be a second old)."""
        if self.max_replay <= 0:
            return False
        boundary = await self.boundary(client, key)
        return boundary is not None and id_key(since) < boundary
