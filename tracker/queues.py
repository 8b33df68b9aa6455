"""Broker queue depth: which queues an app has, and one pipelined round trip to measure them.

Celery's Redis transport keeps a queue as a list named after it (plus one list per priority
step, ``<queue>\\x06\\x16<priority>``, when messages carry a priority); new messages are pushed
at the head and consumed from the tail, so the tail is the oldest message. Its headers carry
the publish time the producer hook stamps (``tracker_published_at``). The commands are built
and the replies read here; the gateway runs them on its asyncio client, ``Tracker.queues()``
on a synchronous one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["PRIORITY_STEPS", "broker_url", "app_queues", "queue_commands", "read_replies", "measure_sync",
           "measure_async", "NO_APP_REASON"]

#: Kombu's default priority steps of the Redis transport (0 is the plain list).
PRIORITY_STEPS = (3, 6, 9)
_SEP = "\x06\x16"
_PUBLISHED = "tracker_published_at"
NO_APP_REASON = ("no Celery app: queue depth is read from the app's broker; start the gateway with "
                 "`celery -A proj tracker gateway` or `tracker --app proj gateway`")


def broker_url(app: Any) -> tuple[str | None, str | None]:
    """``(url, None)`` of the app's Redis broker, or ``(None, reason)`` when it cannot be read."""
    if app is None:
        return None, NO_APP_REASON
    url = app.conf.broker_read_url or app.conf.broker_url
    if isinstance(url, (list, tuple)):
        url = url[0] if url else None
    if isinstance(url, str) and url.split(";", 1)[0].startswith(("redis://", "rediss://", "unix://")):
        return url.split(";", 1)[0], None
    scheme = url.split(":", 1)[0] if isinstance(url, str) else "the default (amqp)"
    return None, f"queue depth is measured on Redis brokers only; this app's broker is {scheme}"


def app_queues(app: Any) -> list[str]:
    """Queues named in the app's configuration: ``task_queues``, the default queue, routes."""
    names: set[str] = set()
    conf = app.conf
    for queue in conf.task_queues or ():
        name = getattr(queue, "name", queue)
        if isinstance(name, str):
            names.add(name)
    if isinstance(conf.task_default_queue, str):
        names.add(conf.task_default_queue)
    routes = conf.task_routes
    for route in (routes.values() if isinstance(routes, dict) else ()):
        queue = route.get("queue") if isinstance(route, dict) else None
        name = getattr(queue, "name", queue)
        if isinstance(name, str):
            names.add(name)
    return sorted(names)


def queue_commands(pipe: Any, names: Sequence[str]) -> None:
    """Queue the commands for ``names`` on ``pipe``: per queue its lengths and its oldest message."""
    for name in names:
        pipe.llen(name)
        for step in PRIORITY_STEPS:
            pipe.llen(f"{name}{_SEP}{step}")
        pipe.lindex(name, -1)


def _published(raw: Any) -> float | None:
    if raw is None:
        return None
    try:
        message = json.loads(raw)
        headers = message.get("headers") or {}
        value = headers.get(_PUBLISHED)
        if value is None and isinstance(headers.get("headers"), dict):
            value = headers["headers"].get(_PUBLISHED)
        return float(value) if isinstance(value, (int, float)) else None
    except (ValueError, TypeError, AttributeError):
        return None  # not a Celery message we can read: no age


def read_replies(names: Sequence[str], replies: Sequence[Any], now: float | None = None
                 ) -> list[tuple[str, int, float | None]]:
    """``(queue, depth, oldest_age_seconds)`` from the replies of :func:`queue_commands`."""
    now = time.time() if now is None else now
    per = 2 + len(PRIORITY_STEPS)
    out = []
    for i, name in enumerate(names):
        chunk = replies[i * per:(i + 1) * per]
        depth = sum(int(n or 0) for n in chunk[:-1])
        published = _published(chunk[-1])
        age = round(max(0.0, now - published), 3) if published is not None and depth else None
        out.append((name, depth, age))
    return out


def _unique(names: Iterable[str]) -> list[str]:
    return sorted({n for n in names if isinstance(n, str) and n})


def measure_sync(client: Any, names: Iterable[str]) -> list[tuple[str, int, float | None]]:
    wanted = _unique(names)
    if not wanted:
        return []
    pipe = client.pipeline(transaction=False)
    queue_commands(pipe, wanted)
    return read_replies(wanted, pipe.execute())


async def measure_async(client: Any, names: Iterable[str]) -> list[tuple[str, int, float | None]]:
    wanted = _unique(names)
    if not wanted:
        return []
    pipe = client.pipeline(transaction=False)
    queue_commands(pipe, wanted)
    return read_replies(wanted, await pipe.execute())
