"""``GET /metrics``: Prometheus text exposition of the gateway and of the store.

Each app has its own ``CollectorRegistry`` (never the process-global one, so several apps in
one process - tests, embedding - do not collide). A scrape refreshes, at most every
``CACHE_SECONDS``, a snapshot read from PostgreSQL (tasks by status and type, notification
deliveries by channel and status) and feeds the duration and queue-wait histograms with the
``task.run_time`` / ``task.queue_wait`` figures of the runs that ended since the previous
refresh (columns of the task rows; retried runs keep theirs as metric rows, read by id).
Live figures (recorder and bus buffers and drops, feed connections and events) are read from
the gateway's objects at collection time; modules that are not installed are skipped.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from tracker import queries as q
from webgate.core.db import fetch_all, fetch_one
from webgate.core.errors import json_error
from webgate.core.keys import CONFIG, REPORTER

__all__ = ["setup", "PROMETHEUS", "PrometheusState", "CACHE_SECONDS", "METRICS_PATH"]

logger = logging.getLogger("webgate.ops.prometheus")

METRICS_PATH = "/metrics"
#: How stale the figures read from PostgreSQL may be.
CACHE_SECONDS = 2.0
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
_SAMPLE_NAMES = ("task.run_time", "task.queue_wait")
#: Samples read per refresh; the rest are picked up by the next one.
_MAX_SAMPLES = 50_000
#: Task rows arrive in batches, a little after their finished_at: each refresh reads back this
#: far behind the newest one it saw (rows already counted are remembered, for this long).
_LATE_ROWS = timedelta(seconds=10)
#: Pages of _MAX_SAMPLES task rows read per refresh at most; the rest wait for the next one.
_MAX_PAGES = 20


@dataclass
class _Snapshot:
    tasks: list[tuple[str, str, int]] = field(default_factory=list)  # (task_type, status, count)
    deliveries: list[tuple[str, str, int]] = field(default_factory=list)  # (channel, status, count)
    workers: list[tuple[str, str, int]] = field(default_factory=list)  # (hostname, status, running tasks)
    taken: float = 0.0
    ok: bool = False


class PrometheusState:
    """Registry, histograms and the cached store snapshot of one app."""

    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.durations = Histogram("tracker_task_duration_seconds", "Run time of tasks that finished",
                                   ["task_type"], registry=self.registry, buckets=_DURATION_BUCKETS)
        self.queue_wait = Histogram("tracker_task_queue_wait_seconds", "Time from publish to start",
                                    ["task_type"], registry=self.registry, buckets=_DURATION_BUCKETS)
        self.snapshot = _Snapshot()
        self.after_id: int | None = None
        self.finished_after: datetime | None = None
        self._counted: dict[str, datetime] = {}  # task_id -> finished_at, within _LATE_ROWS
        self.refresh_errors = 0
        self._lock = asyncio.Lock()
        self.registry.register(_GatewayCollector(app, self))

    async def refresh(self, app: web.Application) -> None:
        async with self._lock:
            if time.monotonic() - self.snapshot.taken < CACHE_SECONDS:
                return
            try:
                await self._read(app)
            except (SQLAlchemyError, OSError) as exc:
                # Scrapes keep working while the store is away; the gauges say it is stale.
                self.refresh_errors += 1
                self.snapshot.ok = False
                logger.warning("metrics: cannot read the store: %s", exc)
            self.snapshot.taken = time.monotonic()

    async def _read(self, app: web.Application) -> None:
        tasks = [(r.task_type or "", r.status, int(r._mapping["count"])) for r in await fetch_all(app, q.task_counts())]
        deliveries = [(str(r.channel), str(r.status or "unknown"), int(r._mapping["count"]))
                      for r in await fetch_all(app, q.notification_deliveries())]
        if self.after_id is None:
            # Histograms count what finishes while this gateway runs, like any process counter.
            row = await fetch_one(app, q.max_metric_id())
            self.after_id = int(row[0]) if row is not None else 0
        else:
            rows = await fetch_all(app, q.metric_samples_after(_SAMPLE_NAMES, self.after_id, _MAX_SAMPLES))
            for r in rows:
                hist = self.durations if r.name == "task.run_time" else self.queue_wait
                hist.labels(task_type=r.task_type or "").observe(max(0.0, float(r.value)))
                self.after_id = max(self.after_id, int(r.id))
        await self._read_finished(app)
        workers = [(r.hostname, r.status, len(r.active or ()))
                   for r in await fetch_all(app, q.workers(app[CONFIG].worker_lost_after))]
        self.snapshot = _Snapshot(tasks, deliveries, workers, self.snapshot.taken, True)

    async def _read_finished(self, app: web.Application) -> None:
        """Observe the figures of the task rows that ended since the last refresh (each once)."""
        first = self.finished_after is None
        if self.finished_after is None:
            row = await fetch_one(app, q.store_now())
            if row is None:
                return
            self.finished_after = row[0]
        after: datetime = self.finished_after
        lower = after - _LATE_ROWS
        counted = self._counted
        for _ in range(_MAX_PAGES):
            rows = await fetch_all(app, q.finished_figures_after(lower, _MAX_SAMPLES))
            for r in rows:
                if r.task_id in counted:
                    continue
                counted[r.task_id] = r.finished_at
                after = max(after, r.finished_at)
                if first:
                    continue  # ended before this gateway counted (as metric rows up to max_metric_id)
                labels = {"task_type": r.task_type or ""}
                self.durations.labels(**labels).observe(max(0.0, float(r.run_time)))
                if r.queue_wait is not None:
                    self.queue_wait.labels(**labels).observe(max(0.0, float(r.queue_wait)))
            if len(rows) < _MAX_SAMPLES:
                break
            lower = rows[-1].finished_at
        self.finished_after = after
        horizon = after - _LATE_ROWS
        self._counted = {k: v for k, v in counted.items() if v > horizon}


class _GatewayCollector(Collector):
    def __init__(self, app: web.Application, state: PrometheusState) -> None:
        self.app = app
        self.state = state

    def describe(self) -> list[Any]:
        return []  # collected on demand: nothing to pre-register

    def collect(self) -> Iterator[Any]:
        yield from self._store()
        yield from self._write_path()
        yield from self._feed()
        yield from self._notifier()
        yield from self._operations()

    def _store(self) -> Iterator[Any]:
        snap = self.state.snapshot
        tasks = GaugeMetricFamily("tracker_tasks", "Tasks in the store by status and type",
                                  labels=["status", "task_type"])
        for task_type, status, count in snap.tasks:
            tasks.add_metric([status, task_type], count)
        yield tasks
        deliveries = GaugeMetricFamily("tracker_notification_deliveries",
                                       "Notification deliveries in the store by channel and status",
                                       labels=["channel", "status"])
        for channel, status, count in snap.deliveries:
            deliveries.add_metric([channel, status], count)
        yield deliveries
        yield GaugeMetricFamily("tracker_store_up", "1 if the last read of the store worked", value=int(snap.ok))
        yield CounterMetricFamily("tracker_store_read_errors", "Failed reads of the store for /metrics",
                                  value=self.state.refresh_errors)

    def _write_path(self) -> Iterator[Any]:
        reporter = self.app.get(REPORTER)
        if reporter is None:
            return
        if reporter.recorder is not None:
            st = reporter.recorder.stats()
            yield GaugeMetricFamily("tracker_recorder_buffered", "Records waiting to be written", value=st["buffered"])
            dropped = CounterMetricFamily("tracker_recorder_dropped", "Records dropped by the buffer bound",
                                          labels=["kind"])
            for kind, n in sorted(st["dropped"].items()):
                dropped.add_metric([kind], n)
            yield dropped
            written = CounterMetricFamily("tracker_recorder_written", "Records written", labels=["kind"])
            for kind, n in sorted(st["written"].items()):
                written.add_metric([kind], n)
            yield written
            yield CounterMetricFamily("tracker_recorder_failures", "Failed writes (store unavailable)",
                                      value=st["failures"])
        if reporter.bus is not None:
            st = reporter.bus.stats()
            yield GaugeMetricFamily("tracker_bus_buffered", "Events waiting to be published", value=st["buffered"])
            yield CounterMetricFamily("tracker_bus_dropped", "Events dropped by the buffer bound",
                                      value=st["dropped"])
            yield CounterMetricFamily("tracker_bus_sent", "Events published to the stream", value=st["sent"])

    def _feed(self) -> Iterator[Any]:
        try:
            from webgate.feed.endpoint import HUB
        except ImportError:  # the feed is optional for this module
            return
        hub = self.app.get(HUB)
        if hub is None:
            return
        st = hub.stats()
        yield GaugeMetricFamily("tracker_websocket_connections", "Open WebSocket connections",
                                value=st.get("connections", 0))
        yield CounterMetricFamily("tracker_events_relayed", "Stream events routed to WebSocket subscribers",
                                  value=st.get("events", 0))
        yield CounterMetricFamily("tracker_feed_messages", "Frames queued for WebSocket clients",
                                  value=st.get("messages", 0))
        yield CounterMetricFamily("tracker_feed_coalesced", "Progress frames replaced by a newer one",
                                  value=st.get("coalesced", 0))
        yield CounterMetricFamily("tracker_feed_slow_closed", "Clients closed for falling behind (1013)",
                                  value=st.get("slow_closed", 0))


    def _notifier(self) -> Iterator[Any]:
        try:
            from webgate.notify.notifier import NOTIFIER
        except ImportError:  # the notifier is optional for this module
            return
        notifier = self.app.get(NOTIFIER)
        st = getattr(notifier, "stats", None)
        if not isinstance(st, dict):
            return
        outcomes = CounterMetricFamily("tracker_notifier_deliveries", "Channel deliveries by this gateway",
                                       labels=["outcome"])
        for outcome in ("sent", "failed", "retried"):
            outcomes.add_metric([outcome], st.get(outcome, 0))
        yield outcomes
        yield CounterMetricFamily("tracker_notifier_stored", "Notifications stored by this gateway",
                                  value=st.get("stored", 0))
        yield CounterMetricFamily("tracker_notifier_suppressed", "Notifications merged into digests or deduplicated",
                                  value=st.get("suppressed", 0))


    def _operations(self) -> Iterator[Any]:
        """Workers by status and their running tasks (from the store), queue depths (the last sample)."""
        snap = self.state.snapshot
        by_status = GaugeMetricFamily("tracker_workers", "Celery workers by status", labels=["status"])
        for status in ("online", "offline"):
            by_status.add_metric([status], sum(1 for w in snap.workers if w[1] == status))
        yield by_status
        active = GaugeMetricFamily("tracker_worker_active_tasks", "Tasks an online worker is running",
                                   labels=["hostname"])
        for hostname, status, running in snap.workers:
            if status == "online":
                active.add_metric([hostname], running)
        yield active
        from webgate.ops.queues import QUEUE_SAMPLER

        sampler = self.app.get(QUEUE_SAMPLER)
        depth = GaugeMetricFamily("tracker_queue_depth", "Messages waiting in a broker queue", labels=["queue"])
        for item in sampler.items if sampler is not None else ():
            depth.add_metric([item.name], item.depth)
        yield depth


PROMETHEUS = web.AppKey("tracker_prometheus", PrometheusState)


def _authorised(request: web.Request) -> bool:
    """Open without ``metrics_token``; with it, only ``Authorization: Bearer <token>`` (constant-time compare)."""
    token = request.app[CONFIG].metrics_token
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def metrics_handler(request: web.Request) -> web.Response:
    if not _authorised(request):
        raise json_error(401, "unauthorized", "GET /metrics requires Authorization: Bearer <TRACKER_METRICS_TOKEN>")
    state = request.app[PROMETHEUS]
    await state.refresh(request.app)
    return web.Response(body=generate_latest(state.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application) -> None:
    app[PROMETHEUS] = PrometheusState(app)
    app.router.add_get(METRICS_PATH, metrics_handler, name="prometheus")
