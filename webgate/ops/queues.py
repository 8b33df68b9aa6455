"""The gateway's queue-depth sampler: every ``tracker_queue_sample_interval`` seconds, one
pipelined round trip to the broker of the gateway's Celery app measures every known queue.

Known queues are those of the app's configuration, of online workers and of recent task
records (re-read every few samples: a scan of recent tasks is not free). Each sample is kept
in memory for ``GET /queues`` and ``/metrics`` and stored as the ``tracker.queue.depth`` metric
(label ``queue``) through the gateway's Recorder, so ``metric_series`` and the dashboard's
chart draw it; of several gateways one stores each sample (a short-lived slot key in Redis).
Without a Celery app, or with a broker other than Redis, nothing is sampled and the reason is
kept instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from tracker import queries as q
from tracker import queues as broker
from tracker.records import QueueRecord, QueueReport
from webgate.core.db import fetch_all
from webgate.core.keys import CELERY_APP, CONFIG, GATEWAY_ID, REDIS, REPORTER
from webgate.ops.health import _stop as stop_task

__all__ = ["setup", "QueueSampler", "QUEUE_SAMPLER", "NAMES_EVERY"]

logger = logging.getLogger("webgate.ops.queues")

#: Recent task records are scanned for queue names once per this many samples.
NAMES_EVERY = 6


@dataclass
class QueueSampler:
    """The last measurement (or why there is none)."""

    items: list[QueueRecord] = field(default_factory=list)
    reason: str | None = "not sampled yet"
    sampled_at: float | None = None
    errors: int = 0

    def report(self) -> QueueReport:
        at = datetime.fromtimestamp(self.sampled_at, UTC) if self.sampled_at is not None else None
        return QueueReport(list(self.items), self.reason, at)


QUEUE_SAMPLER = web.AppKey("tracker_queue_sampler", QueueSampler)
_TASK = web.AppKey("tracker_queue_sampler_task", asyncio.Task)


async def _sample(app: web.Application, client: Any, names: set[str], interval: float) -> None:
    config = app[CONFIG]
    consumers = {r.queue: int(r.consumers) for r in await fetch_all(app, q.queue_consumers(config.worker_lost_after))}
    measured = await broker.measure_async(client, names | set(consumers))
    now = time.time()
    # Every gateway measures (its replies and /metrics are live), but of several gateways only
    # the one that takes this sample's slot stores it: the series gets one point per interval.
    slot = await app[REDIS].set(f"{config.prefix}:queue-sample", app[GATEWAY_ID], nx=True,
                                px=max(1, int(interval * 900)))
    if slot:
        reporter = app[REPORTER]
        for name, depth, _ in measured:
            reporter.metric(q.QUEUE_DEPTH_METRIC, float(depth), unit="messages", labels={"queue": name}, ts=now,
                            publish=False)
    sampler = app[QUEUE_SAMPLER]
    sampler.items = [QueueRecord(n, d, consumers.get(n, 0), age) for n, d, age in measured]
    sampler.reason = None if measured else "no queues known yet: none configured, consumed or in recent tasks"
    sampler.sampled_at = now


async def _loop(app: web.Application, url: str) -> None:
    celery_app = app[CELERY_APP]
    interval = max(0.1, float(app[CONFIG].queue_sample_interval))
    client = aioredis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    configured = set(broker.app_queues(celery_app))
    recent: set[str] = set()
    n = 0
    try:
        while True:
            try:
                if n % NAMES_EVERY == 0:
                    recent = {r.queue for r in await fetch_all(app, q.recent_queues())}
                n += 1
                await _sample(app, client, configured | recent, interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or store away: the next sample catches up
                app[QUEUE_SAMPLER].errors += 1
                logger.warning("queue sample failed: %s", exc)
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


async def _background(app: web.Application) -> AsyncIterator[None]:
    url, reason = broker.broker_url(app[CELERY_APP])
    if url is None:
        app[QUEUE_SAMPLER].reason = reason
        yield
        return
    app[_TASK] = asyncio.create_task(_loop(app, url), name="tracker-queue-sampler")
    yield
    await stop_task(app[_TASK])


def setup(app: web.Application) -> None:
    """Sample queue depths while the gateway serves (after the store and bus are up)."""
    app[QUEUE_SAMPLER] = QueueSampler()
    app.cleanup_ctx.append(_background)
