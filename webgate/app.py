"""The gateway's application factory and runner."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from celery import Celery
from sqlalchemy.ext.asyncio import create_async_engine

from tracker.bus import EventBus
from tracker.config import TrackerConfig, sqlalchemy_url
from tracker.recorder import Recorder
from tracker.redaction import redactor_for
from tracker.reporter import Reporter
from webgate.api import factory as api
from webgate.core.auth import check_secret
from webgate.core.errors import error_middleware
from webgate.core.keys import CELERY_APP, CONFIG, ENGINE, GATEWAY_ID, REDIS, REPORTER
from webgate.dashboard import page as dashboard
from webgate.feed import endpoint as feed
from webgate.notify import notifier
from webgate.ops import health, prometheus, queues

__all__ = ["create_app", "run_gateway"]

logger = logging.getLogger("webgate")

MAX_BODY = 1024 * 1024


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """Database engine, Redis client and the write path, for the app's lifetime."""
    config = app[CONFIG]
    app[ENGINE] = create_async_engine(sqlalchemy_url(config.require_database()), pool_size=10, max_overflow=10,
                                      pool_pre_ping=True)
    # A blocking pool: a burst of subscribes waits for a connection instead of failing with
    # "Too many connections" (the plain pool raises as soon as all of them are in use).
    pool = aioredis.BlockingConnectionPool.from_url(config.require_redis(), max_connections=100, timeout=10,
                                                    socket_connect_timeout=3, health_check_interval=10)
    app[REDIS] = aioredis.Redis(connection_pool=pool)
    recorder = Recorder(config.require_database(), flush_interval=config.flush_interval,
                        buffer_max=config.buffer_max, name="webgate-recorder")
    bus = EventBus(config.require_redis(), prefix=config.prefix, maxlen=config.stream_maxlen,
                   progress_interval=config.progress_interval, buffer_max=config.buffer_max, name="webgate-bus")
    app[REPORTER] = Reporter(recorder, bus, redactor_for(config))
    yield
    app[REPORTER].close(timeout=5)
    await app[REDIS].aclose()
    await app[ENGINE].dispose()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "gateway": request.app[GATEWAY_ID]})


def create_app(config: TrackerConfig | None = None, *, celery_app: Celery | None = None) -> web.Application:
    """Build the gateway: WebSocket feed, REST API, notifier, sweeper and dashboard."""
    config = config or TrackerConfig.from_env()
    check_secret(config.secret)  # SecretError (a ValueError naming TRACKER_SECRET): no weak-secret gateway
    # Long request lines: REST filters may be percent-encoded non-ASCII (12 bytes per character);
    # aiohttp's 8 KiB default would answer such a URL with a plain-text 400 before our handlers.
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY,
                          handler_args={"max_line_size": 65536})
    app[CONFIG] = config
    app[CELERY_APP] = celery_app
    app[GATEWAY_ID] = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    app.cleanup_ctx.append(_resources)
    app.router.add_get("/healthz", healthz)
    feed.setup(app)
    api.setup(app)
    prometheus.setup(app)
    notifier.setup(app)
    health.setup(app)
    queues.setup(app)
    dashboard.setup(app)
    return app


def run_gateway(config: TrackerConfig, host: str = "127.0.0.1", port: int = 8765, *, celery_app: Any = None) -> None:
    """Serve until SIGTERM/SIGINT, then close sockets (1001) and flush writes.

    Raises :class:`webgate.core.auth.SecretError` before serving when ``TRACKER_SECRET`` is weak.
    """
    check_secret(config.secret)
    web.run_app(create_app(config, celery_app=celery_app), host=host, port=port, shutdown_timeout=5,
                access_log=None, print=lambda *a: logger.info(*a) if a else None)
