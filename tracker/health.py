"""The health sweep: keep the store truthful when workers die or tasks stop moving.

One pass (:func:`sweep` synchronously for ``tracker sweep``, :func:`sweep_async` in the
gateway's loop) does, in one short transaction:

* tasks ``running``/``paused`` on a Celery worker whose heartbeat is older than
  ``worker_lost_after`` become ``failed`` with ``error_type`` ``worker-lost`` and a
  ``task.failed`` event is published;
* ``running`` tasks without progress (``progress_at``, else ``started_at``) for
  ``stall_after`` get ``stalled_at`` and a ``task.stalled`` event, once per stall: again only
  after they made progress since;
* control flags (``{prefix}:control:{id}``) of tasks that have ended are deleted.

Both changes are conditional ``UPDATE ... RETURNING`` statements: a task that heartbeats or
ended meanwhile is never touched, and two sweepers never report the same task twice. A
transaction-level advisory lock lets only one of several gateways sweep at a time.
The pass is written once, as a plan (:mod:`tracker.plan`), and carried out by both paths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Select, Update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from tracker import queries
from tracker.bus import EventBus
from tracker.config import TrackerConfig
from tracker.control import CONTROL_TTL, control_key, index_key
from tracker.plan import Connect, Pipe, Plan, Sql, run_async, run_sync
from tracker.reporter import Reporter
from tracker.vocabulary import STATUSES, TERMINAL

__all__ = [
    "SWEEP_LOCK",
    "SweepResult",
    "lock_statement",
    "lost_statement",
    "stalled_statement",
    "flag_status_statement",
    "ended_flags",
    "sweep_interval",
    "sweep",
    "sweep_async",
    "publish",
    "cli_reporter",
]

logger = logging.getLogger("tracker.health")

#: Advisory lock key of the sweep ("trkS"); retention uses its own.
SWEEP_LOCK = 0x74726B53
#: Flags set this recently are left alone by the clean-up (their task may not be stored yet).
_FLAG_GRACE = 5.0
_FLAG_PAGE = 1000
_TERMINAL = tuple(s.value for s in STATUSES if s in TERMINAL)


@dataclass(frozen=True)
class SweepResult:
    """What one pass did. ``skipped`` is True when another sweeper held the lock."""

    lost: list[dict[str, Any]] = field(default_factory=list)
    stalled: list[dict[str, Any]] = field(default_factory=list)
    flags_cleared: int = 0
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"lost": [r["task_id"] for r in self.lost], "stalled": [r["task_id"] for r in self.stalled],
                "flags_cleared": self.flags_cleared, "skipped": self.skipped}


def sweep_interval(config: TrackerConfig) -> float:
    """How often the gateway sweeps: a few times per ``worker_lost_after``, within [0.25 s, 10 s]."""
    return max(0.25, min(10.0, config.worker_lost_after / 4.0, config.stall_after / 4.0))


# -- statements (the query layer's; executed by both the sync and the async path) ----------------
def lock_statement(key: int = SWEEP_LOCK) -> Select[Any]:
    """Try the transaction-level advisory lock; released by the transaction's end."""
    return queries.try_advisory_xact_lock(key)


lost_statement = queries.mark_lost_tasks
stalled_statement = queries.flag_stalled_tasks
flag_status_statement = queries.task_flag_states


def ended_flags(rows: Iterable[Any]) -> list[str]:
    """Ids among ``rows`` (task_id, status, started_at) whose control flag is no longer needed.

    A task cancelled before it started keeps its flag until the flag expires: its message may
    still sit in a queue, and the flag is what makes a worker discard it.
    """
    done = []
    for task_id, status, started_at in rows:
        if status in _TERMINAL and not (status == "cancelled" and started_at is None):
            done.append(task_id)
    return done


def _epoch(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def publish(reporter: Reporter | None, result: SweepResult) -> None:
    """Publish the events of a pass: ``task.failed`` per lost task, ``task.stalled`` per stall.

    The rows are already updated in the store; only the bus is used (a recorder-less
    ``Reporter`` carries the terminal event in the same shape as a worker's).
    """
    bus = reporter.bus if reporter is not None else None
    if bus is None:
        return
    events = Reporter(None, bus)
    for r in result.lost:
        events.status(r["task_id"], "failed", user_id=r["user_id"], ts=_epoch(r["finished_at"]) or time.time(),
                      progress=r["progress"], started_at=_epoch(r["started_at"]),
                      finished_at=_epoch(r["finished_at"]), error_type=r["error_type"],
                      error_message=r["error_message"], name=r["name"], task_type=r["task_type"],
                      worker=r["worker"], current_step=r["current_step"], reason="worker-lost")
    for r in result.stalled:
        stalled_at = _epoch(r["stalled_at"]) or time.time()
        last = _epoch(r["last_progress_at"])
        data = {"status": "running", "progress": r["progress"], "current_step": r["current_step"],
                "name": r["name"], "task_type": r["task_type"], "worker": r["worker"], "stalled_at": stalled_at,
                "last_progress_at": last, "stalled_for": round(stalled_at - last, 3) if last else None}
        bus.publish("task.stalled", r["task_id"], r["user_id"], data, stalled_at)


def _rows(result: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in result]


def _log(result: SweepResult) -> None:
    for r in result.lost:
        logger.warning("task %s (%s) marked failed: worker %s lost", r["task_id"], r["name"], r["worker"])
    for r in result.stalled:
        logger.warning("task %s (%s) stalled: no progress since %s", r["task_id"], r["name"],
                       r["last_progress_at"])


# -- the pass, once (carried out by tracker.plan's sync and asyncio executors) -------------------
def _sweep(config: TrackerConfig, has_redis: bool, reporter: Reporter | None) -> Plan[SweepResult]:
    lost_stmt = lost_statement(config.worker_lost_after)
    stalled_stmt = stalled_statement(config.stall_after)
    candidates: list[str] = []
    if has_redis:
        try:
            _, members = yield Pipe(partial(_read_flags, prefix=config.prefix))
            candidates = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        except Exception as exc:  # Redis away: lost and stalled tasks are still handled
            logger.warning("health sweep: cannot read control flags (%s)", exc)
    found = yield Connect(_store_pass(lost_stmt, stalled_stmt, candidates), begin=True)
    if found is None:
        return SweepResult(skipped=True)
    lost, stalled, ended = found
    cleared = 0
    if ended:
        try:
            yield Pipe(partial(_clear_flags, prefix=config.prefix, task_ids=ended))
            cleared = len(ended)
        except Exception as exc:
            logger.warning("health sweep: cannot delete control flags (%s)", exc)
    result = SweepResult(lost, stalled, cleared)
    publish(reporter, result)  # appends to the bus's buffer: no I/O on the event loop
    _log(result)
    return result


def _store_pass(lost_stmt: Update, stalled_stmt: Update, candidates: list[str]) -> Plan[Any]:
    """The one short transaction: None when another sweeper holds the lock."""
    if not (yield Sql(lock_statement(), read=_scalar)):
        return None
    lost = yield Sql(lost_stmt, read=_rows)
    stalled = yield Sql(stalled_stmt, read=_rows)
    ended = ended_flags((yield Sql(flag_status_statement(candidates), read=list))) if candidates else []
    return lost, stalled, ended


def _scalar(result: Any) -> Any:
    return result.scalar()


def _read_flags(pipe: Any, *, prefix: str) -> None:
    """Drop index entries older than a flag lives; page through those past the grace time."""
    now = time.time()
    index = index_key(prefix)
    pipe.zremrangebyscore(index, "-inf", now - CONTROL_TTL)
    pipe.zrangebyscore(index, "-inf", now - _FLAG_GRACE, start=0, num=_FLAG_PAGE)


def _clear_flags(pipe: Any, *, prefix: str, task_ids: list[str]) -> None:
    for task_id in task_ids:
        pipe.delete(control_key(prefix, task_id))
    pipe.zrem(index_key(prefix), *task_ids)


def sweep(engine: Engine, config: TrackerConfig, *, redis: Any = None, reporter: Reporter | None = None) -> SweepResult:
    """One pass with a synchronous engine (and Redis client for the flag clean-up)."""
    return run_sync(_sweep(config, redis is not None, reporter), engine=engine, redis=redis)


async def sweep_async(engine: AsyncEngine, config: TrackerConfig, *, redis: Any = None,
                      reporter: Reporter | None = None) -> SweepResult:
    """One pass with an asyncio engine and Redis client; the same plan as :func:`sweep`."""
    return await run_async(_sweep(config, redis is not None, reporter), engine=engine, redis=redis)


def cli_reporter(config: TrackerConfig) -> Reporter | None:
    """A bus-only Reporter for a one-shot sweep (``tracker sweep``); close it to flush."""
    if not config.redis_url:
        return None
    bus = EventBus(config.redis_url, prefix=config.prefix, maxlen=config.stream_maxlen, name="tracker-sweep-bus")
    return Reporter(None, bus)
