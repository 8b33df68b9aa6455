"""The worker record's own writes: who this worker is, when it is ready and when it stops.

The worker's main process learns its node name (``-n``, e.g. ``w1@host``) at ``worker_init``,
before the pool forks, so every pool process inherits it and heartbeats under it (see
:class:`signals.runtime.Runtime`). ``worker_ready`` stores the record (pid, concurrency,
queues, start); a graceful shutdown (``worker_shutdown``) stamps ``stopped_at``, which turns
the worker offline at once. Both are one synchronous statement each, once per worker life:
no task ever waits for them.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from tracker.config import TrackerConfig, psycopg_url
from tracker.writes import WORKER_READY, WORKER_STOPPED

__all__ = ["node_name", "node_started", "remember_node", "forget_node", "record_ready", "record_stopped",
           "consumer_queues"]

logger = logging.getLogger("signals.workers")

#: Set in the worker's main process at worker_init and inherited by the pool processes.
_node: dict[str, Any] = {}

def node_name() -> str | None:
    """This worker's node name, in its main process and its pool processes; None elsewhere."""
    return _node.get("hostname")


def node_started() -> float | None:
    return _node.get("started")


def remember_node(hostname: str | None) -> None:
    if hostname:
        _node.update(hostname=str(hostname), started=time.time())


def forget_node() -> None:
    _node.clear()


def consumer_queues(consumer: Any) -> list[str]:
    """Names of the queues ``consumer`` reads (``-Q``, else the app's default queues)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    queues = getattr(task_consumer, "queues", None)
    if queues:
        return sorted({str(q.name) for q in queues})
    try:
        return sorted(str(name) for name in consumer.app.amqp.queues.consume_from)
    except Exception:
        return []


def _execute(config: TrackerConfig, sql: str, params: tuple[Any, ...]) -> None:
    if not config.database_url:
        return
    with psycopg.connect(psycopg_url(config.database_url), connect_timeout=5, autocommit=True) as conn:
        conn.execute(sql, params)


def record_ready(config: TrackerConfig, consumer: Any) -> None:
    """Store (or renew) the record of the worker whose consumer is ready."""
    hostname = node_name() or getattr(consumer, "hostname", None)
    if not hostname:
        return
    if node_name() is None:
        remember_node(hostname)
    controller = getattr(consumer, "controller", None)
    concurrency = getattr(controller, "concurrency", None)
    started = node_started() or time.time()
    concurrency = int(concurrency) if isinstance(concurrency, int) else None
    _execute(config, WORKER_READY.sql, (hostname, os.getpid(), concurrency, consumer_queues(consumer),
                                        datetime.fromtimestamp(started, UTC)))


def record_stopped(config: TrackerConfig, hostname: str | None) -> None:
    """Mark the worker stopped gracefully: offline now, not after the lost window."""
    hostname = hostname or node_name()
    if hostname:
        _execute(config, WORKER_STOPPED.sql, (hostname,))
