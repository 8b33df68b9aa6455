"""The gateway's upkeep loops: the health sweep, continuously, and retention, hourly.

Each sweep pass is followed by a pass of the aggregate alerts (:mod:`webgate.notify.alerts`) when the
notification rules hold any, under its own advisory lock.

Both run as background tasks for the application's lifetime (``cleanup_ctx``). With several
gateways, advisory locks in PostgreSQL let one of them do each pass (see
:mod:`tracker.health` and :mod:`tracker.retention`); a failed pass is logged and retried at
the next interval, never fatal to the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from tracker import health, retention
from webgate.core.keys import CONFIG, ENGINE, REDIS, REPORTER
from webgate.notify import alerts

__all__ = ["setup", "SWEEPER", "PURGER", "LAST_SWEEP", "RETENTION_INTERVAL"]

logger = logging.getLogger("webgate.ops.health")

#: Seconds between two retention passes (the first one a minute after start).
RETENTION_INTERVAL = 3600.0
_RETENTION_FIRST = 60.0

SWEEPER = web.AppKey("tracker_sweeper", asyncio.Task)
PURGER = web.AppKey("tracker_purger", asyncio.Task)
#: Outcome of the last sweep pass: {"at": epoch, "result": SweepResult.to_dict()} or {"error": ...}.
LAST_SWEEP = web.AppKey("tracker_last_sweep", dict)


def _stop_if_cancelled(exc: Exception) -> None:
    """A driver may turn a cancellation into its own error: stop anyway when we are being cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


async def _sweep_loop(app: web.Application, evaluator: alerts.AlertEvaluator | None) -> None:
    config = app[CONFIG]
    interval = health.sweep_interval(config)
    while True:
        try:
            result = await health.sweep_async(app[ENGINE], config, redis=app[REDIS], reporter=app[REPORTER])
            app[LAST_SWEEP].update(at=time.time(), result=result.to_dict(), error=None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _stop_if_cancelled(exc)
            # PostgreSQL or Redis away: the next pass catches up.
            app[LAST_SWEEP].update(at=time.time(), error=str(exc))
            logger.warning("health sweep failed: %s", exc)
        if evaluator is not None:
            try:
                await evaluator.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _stop_if_cancelled(exc)
                # The next pass decides on fresh measurements and stores what this one could not.
                logger.warning("aggregate alerts pass failed: %s", exc)
        await asyncio.sleep(interval)


async def _retention_loop(app: web.Application) -> None:
    config = app[CONFIG]
    await asyncio.sleep(_RETENTION_FIRST)
    while True:
        try:
            result = await retention.purge_async(app[ENGINE], f"{config.retention_days}d")
            if result.total:
                logger.info("retention: deleted %d rows older than %s (%s)", result.total,
                            result.cutoff.isoformat(), result.deleted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _stop_if_cancelled(exc)
            logger.warning("retention pass failed: %s", exc)
        await asyncio.sleep(RETENTION_INTERVAL)


async def _stop(task: asyncio.Task[Any]) -> None:
    # A client library may swallow one cancellation (seen while a pass was in flight):
    # cancel again until the task has really ended.
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _background(app: web.Application) -> AsyncIterator[None]:
    # The notifier's context has started before this one: aggregate alerts store through it.
    app[SWEEPER] = asyncio.create_task(_sweep_loop(app, alerts.evaluator_for(app)), name="tracker-sweeper")
    # tracker_retention_days = 0 turns the periodic purge off.
    purger = app[CONFIG].retention_days > 0
    if purger:
        app[PURGER] = asyncio.create_task(_retention_loop(app), name="tracker-retention")
    yield
    await _stop(app[SWEEPER])
    if purger:
        await _stop(app[PURGER])


def setup(app: web.Application) -> None:
    """Run the sweeper (and the hourly retention pass) while the gateway serves."""
    app[LAST_SWEEP] = {}
    app.cleanup_ctx.append(_background)
