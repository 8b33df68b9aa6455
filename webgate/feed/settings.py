"""Tuning of the WebSocket feed: ``TRACKER_FEED_<NAME>`` variables, or Celery ``tracker_feed_<name>``.

A pydantic-settings model on the same base as :class:`tracker.config.TrackerConfig`: the Celery
conf first, then the environment, then the defaults below (which suit production; tests shrink
some). A bad value stops the gateway's start with a :class:`tracker.config.ConfigError`.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tracker.config import TrackerSettings

__all__ = ["FeedSettings"]


class FeedSettings(TrackerSettings):
    """Tuning of the feed (defaults suit production; tests shrink some)."""

    model_config = SettingsConfigDict(env_prefix="TRACKER_FEED_")

    #: Frames held for a client that is not keeping up before it is closed with 1013.
    max_queue: int = Field(default=1000, ge=1)
    #: Live events kept for a client while its subscribe replays from ``since`` (they are shared
    #: with every other subscriber: a few bytes each); past this the client is closed with 1013.
    max_replay_backlog: int = Field(default=50_000, ge=1)
    #: Bytes in a socket's transport buffer above which frames are held (and progress coalesced).
    high_water: int = Field(default=256 * 1024, ge=0)
    #: Held frames are written again once the transport buffer is below this.
    low_water: int = Field(default=64 * 1024, ge=0)
    #: aiohttp ping interval (seconds); a client missing a pong for half of it is dropped.
    heartbeat: float = Field(default=30.0, gt=0)
    #: Largest client message; a bigger one closes the socket with 1009.
    max_msg_size: int = Field(default=64 * 1024, ge=64)
    #: Topics one connection may subscribe to.
    max_topics: int = Field(default=256, ge=1)
    #: Tasks in a ``user:``/``all`` snapshot (active ones first).
    snapshot_limit: int = Field(default=100, ge=1)
    #: Tasks in a ``group:`` snapshot.
    group_snapshot_limit: int = Field(default=500, ge=1)
    #: Seconds a closed socket gets to read its close frame before the connection is aborted.
    close_grace: float = Field(default=10.0, gt=0)
    #: XREAD BLOCK milliseconds.
    block_ms: int = Field(default=1000, ge=1)
    #: XREAD COUNT.
    read_count: int = Field(default=1000, ge=1)
    #: Seconds the reader waits after a short read while no socket subscribes to anything, so the
    #: next XREAD takes a batch: per-XREAD work was most of an idle gateway's CPU. A subscribe ends
    #: the wait at once; with subscribers the reader never waits (0 turns this off).
    idle_read_gap: float = Field(default=0.05, ge=0)
    #: Recently started tasks remembered (owner, group) for authorisation and group routing.
    known_tasks: int = Field(default=50_000, ge=1)
    #: SO_SNDBUF of each WebSocket (0: the kernel's autotuning, up to several MiB per socket). A cap
    #: bounds kernel memory per connection and lets backpressure show at the bound above.
    send_buffer: int = Field(default=256 * 1024, ge=0)
    #: Subscribes per second per connection (a token bucket with as many in reserve); beyond it an
    #: ``error`` frame with code ``rate_limited``. 0 disables the limit.
    subscribe_rate: float = Field(default=20.0, ge=0)
    #: Open sockets per user (``sub``) on this gateway process; beyond it the upgrade gets 429. 0: no limit.
    max_connections_per_user: int = Field(default=50, ge=0)
    #: A resume from further back than this many stream entries answers ``recovered`` with
    #: ``complete: false`` and a snapshot instead of replaying. 0: no bound.
    max_replay: int = Field(default=10_000, ge=0)
    #: Seconds a socket opened without a token has to send ``{"op": "auth", ...}`` before it is closed (4001).
    auth_timeout: float = Field(default=5.0, gt=0)
