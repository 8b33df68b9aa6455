"""Helpers of the feed tests: in-process gateways on a private stream, a raw publisher and a
WebSocket client (the ``websockets`` library, independent of aiohttp)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis as redis_lib
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import SECRET
from tracker.config import TrackerConfig
from tracker.demo.services import free_port
from tracker.events import Event, encode

__all__ = ["FeedGateway", "Publisher", "recv", "recv_until", "ws_connect", "token_for"]


def token_for(user_id: str, admin: bool = False) -> str:
    from webgate.core.auth import make_token

    return make_token(SECRET, user_id, admin=admin)


class FeedGateway:
    """A gateway served from this test's event loop, on a private stream prefix; stoppable and restartable
    on the same port."""

    def __init__(self, config: TrackerConfig, settings: Any = None, port: int | None = None) -> None:
        self.config = config
        self.settings = settings
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/api/v1/progress/ws"
        self.runner: web.AppRunner | None = None
        self.app: web.Application | None = None

    async def start(self) -> FeedGateway:
        from tests.apps.tasks import app as celery_app
        from webgate import create_app
        from webgate.feed.endpoint import FEED_SETTINGS

        self.app = create_app(self.config, celery_app=celery_app)
        if self.settings is not None:
            self.app[FEED_SETTINGS] = self.settings
        self.runner = web.AppRunner(self.app, shutdown_timeout=5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def hub(self) -> Any:
        from webgate.feed.endpoint import HUB

        assert self.app is not None
        return self.app[HUB]

    def url(self, user_id: str, admin: bool = False) -> str:
        return f"{self.ws_url}?token={token_for(user_id, admin)}"


class Publisher:
    """Appends events to a stream directly (as a worker's bus would) and returns their ids."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.client = redis_lib.Redis.from_url(redis_url)
        self.key = f"{prefix}:events"

    def publish(self, type: str, task_id: str | None, user_id: str | None, data: dict[str, Any] | None = None,
                maxlen: int | None = None) -> str:
        fields = encode(Event(type, task_id, user_id, time.time(), data or {}))
        entry = self.client.xadd(self.key, fields, maxlen=maxlen, approximate=False)  # type: ignore[arg-type]
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    def queue(self, pipe: Any, type: str, task_id: str | None, user_id: str | None, data: dict[str, Any]) -> None:
        """Add an XADD to ``pipe`` (for bursts)."""
        pipe.xadd(self.key, encode(Event(type, task_id, user_id, time.time(), data)))

    def progress(self, task_id: str, user_id: str | None, pct: float) -> str:
        return self.publish("task.progress", task_id, user_id, {"progress": pct, "current_step": "s"})

    def close(self) -> None:
        self.client.close()


@pytest.fixture()
def prefix() -> str:
    return f"feedtest-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def publisher(redis_url: str, prefix: str) -> Any:
    pub = Publisher(redis_url, prefix)
    yield pub
    pub.client.delete(pub.key)
    pub.close()


@pytest.fixture()
async def feed_gateway(tracker_env: dict[str, str], prefix: str) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await feed_gateway(settings=FeedSettings(...), redis_url=..., port=...)`` -> a started
    :class:`FeedGateway` on this test's private stream prefix; all are stopped at the end."""
    started: list[FeedGateway] = []

    async def make(settings: Any = None, redis_url: str | None = None, port: int | None = None) -> FeedGateway:
        config = TrackerConfig.from_env().replace(prefix=prefix)
        if redis_url is not None:
            config = config.replace(redis_url=redis_url)
        gw = FeedGateway(config, settings, port)
        started.append(gw)
        return await gw.start()

    yield make
    for gw in started:
        await gw.stop()


def ws_connect(url: str, **kw: Any) -> Any:
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 2)
    return connect(url, **kw)


async def recv(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    frame = json.loads(raw)
    assert isinstance(frame, dict), frame
    return frame


async def recv_until(ws: ClientConnection, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0,
                     limit: int = 100_000) -> list[dict[str, Any]]:
    """Frames up to and including the first one matching ``pred``."""
    out: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(out) < limit:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        frame = await recv(ws, left)
        out.append(frame)
        if pred(frame):
            return out
    raise AssertionError(f"no matching frame within {timeout}s; got {len(out)} frames, last: {out[-3:]}")
