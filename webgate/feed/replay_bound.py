"""How far back a ``since`` resume may replay (``TRACKER_FEED_MAX_REPLAY``).

A resume from further back than ``max_replay`` entries is answered with ``complete: false`` and a
snapshot instead of a replay. Counting the entries after an id would take a scan of the stream
(measured: ~80-120 ms for 10,000 entries of a 100,000-entry stream, from Lua or in chunks), so
the gateway answers from what it already knows: the hub notes the id of every
``mark_every``-th event it routes (1% of the bound) with its ordinal, so "the entry
``max_replay`` before the newest" is a lookup, exact to within ``mark_every`` entries, with no
Redis call at all.

Only a resume from before the gateway started reading, while it has routed fewer than
``max_replay`` events, needs Redis: ``XLEN`` (O(1)) settles most cases; otherwise the id
``max_replay`` entries before that starting point is found once (chunked ``XREVRANGE``, ids and
fields only, nothing decoded) and kept, the starting point never moves. Such a resume replays
at most about twice the bound.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from webgate.feed.hub import Hub, id_key

__all__ = ["ReplayBound"]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ReplayBound:
    """Whether a resume from ``since`` would replay more than ``max_replay`` entries."""

    def __init__(self, max_replay: int, hub: Hub, chunk: int = 1000) -> None:
        self.max_replay = max_replay
        self.hub = hub
        self.chunk = chunk
        #: Id of the entry ``max_replay`` before ``hub.origin`` (None: not looked up yet / fewer entries).
        self._before_origin: tuple[int, int] | None = None
        self._looked_up = False
        self.scans = 0

    async def too_far(self, client: aioredis.Redis, key: str, since: str) -> bool:
        bound = self.max_replay
        if bound <= 0:
            return False
        hub = self.hub
        s = id_key(since)
        routed = hub.events
        # The newest mark with at least `bound` events routed after it: a since before it misses more than that.
        for mark_id, ordinal in reversed(hub.marks):
            if ordinal <= routed - bound:
                return s < id_key(mark_id)
        origin = hub.origin
        if origin is None or s > id_key(origin):
            return False  # within what this gateway routed, and that is less than the bound
        if routed > bound:
            return True  # every event routed since the start follows `since`
        # Before this gateway's start, with fewer than `bound` events routed since: ask Redis (once).
        if await client.xlen(key) <= bound:
            return False
        if not self._looked_up:
            self._before_origin = await self._boundary(client, key, origin)
            self._looked_up = True
        return self._before_origin is not None and s < self._before_origin

    async def _boundary(self, client: aioredis.Redis, key: str, upto: str) -> tuple[int, int] | None:
        """Id of the entry ``max_replay`` entries before ``upto`` (inclusive), walking back in chunks."""
        need = self.max_replay + 1
        start, seen, last = upto, 0, None
        self.scans += 1
        try:
            while seen < need:
                chunk = await client.xrevrange(key, max=start, min="-", count=min(self.chunk, need - seen))
                if not chunk:
                    return None
                seen += len(chunk)
                last = _s(chunk[-1][0])
                start = "(" + last
        except ResponseError:  # not a stream (someone else's key): nothing to bound
            return None
        return id_key(last) if last is not None else None
