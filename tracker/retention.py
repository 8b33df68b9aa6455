"""Retention: delete what is older than a cutoff in small batches, without long locks.

``tracker purge --older-than 30d`` and the gateway (every hour, ``tracker_retention_days``)
delete finished tasks, log lines, progress points, metrics, read notifications and stale
worker rows older than the cutoff. Each statement deletes at most ``batch_size`` rows found
through the table's time index (``ctid`` batches: no second index lookup) and commits on its
own, so no lock is held for long and other writers are never blocked behind a purge. A
session-level advisory lock keeps two purges (several gateways, cron) from doing the same
work twice.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Column, Table
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from tracker import queries
from tracker.models import Base, Metric, Notification, ProgressBatch, Task, TaskLog, Worker, WorkerProcess
from tracker.plan import Connect, Pause, Plan, Sql, run_async, run_sync
from tracker.vocabulary import TERMINAL

__all__ = [
    "PURGE_LOCK",
    "TARGETS",
    "DEFAULT_BATCH",
    "PurgeResult",
    "parse_age",
    "cutoff_for",
    "batch_statement",
    "check_batch",
    "purge",
    "purge_async",
]

#: Advisory lock key of a purge ("trkP").
PURGE_LOCK = 0x74726B50
DEFAULT_BATCH = 10_000
MAX_BATCH = 1_000_000


def _table(model: type[Base]) -> Table:
    return model.__table__  # type: ignore[return-value]  # a declarative model's table is a Table


#: (name, table, time column, extra condition): rows whose time is before the cutoff. Each
#: (time column, condition) pair matches an index (see the models and migration 0002), so a
#: batch walks the index in time order instead of scanning the table.
Target = tuple[str, Table, Column[Any], ColumnElement[bool] | None]


def _targets() -> tuple[Target, ...]:
    tasks, logs, progress, metrics, notifications, workers, processes = (
        _table(m) for m in (Task, TaskLog, ProgressBatch, Metric, Notification, Worker, WorkerProcess))
    return (
        ("tasks", tasks, tasks.c.finished_at, tasks.c.status.in_([s.value for s in TERMINAL])),
        ("logs", logs, logs.c.ts, None),
        ("progress", progress, progress.c.ts, None),
        ("metrics", metrics, metrics.c.ts, None),
        ("notifications", notifications, notifications.c.created_at, notifications.c.is_read),
        ("workers", workers, workers.c.heartbeat_at, None),
        ("worker_processes", processes, processes.c.heartbeat_at, None),
    )


TARGETS = _targets()

_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 86400}


@dataclass
class PurgeResult:
    """Rows deleted per target; ``skipped`` when another purge held the lock."""

    cutoff: datetime
    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    skipped: bool = False
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def to_dict(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff.isoformat(), "deleted": dict(self.deleted), "total": self.total,
                "batches": self.batches, "skipped": self.skipped, "seconds": round(self.seconds, 3)}


def parse_age(value: Any) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s``, a bare number of days, or a timedelta."""
    if isinstance(value, timedelta):
        age = value
    elif isinstance(value, bool):
        raise TypeError("age must be text such as '30d' or a number of days")
    elif isinstance(value, (int, float)):
        age = timedelta(days=value)
    elif isinstance(value, str):
        m = _AGE.fullmatch(value.strip().lower())
        if not m:
            raise ValueError(f"cannot read {value!r} as an age; use e.g. '30d', '12h', '90m', '2w'")
        age = timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    else:
        raise TypeError("age must be text such as '30d' or a number of days")
    if age.total_seconds() <= 0:
        raise ValueError(f"age must be positive, got {value!r}")
    return age


def cutoff_for(older_than: Any, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - parse_age(older_than)


def check_batch(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError("batch_size must be an integer")
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}")
    return batch_size


#: The purge's batch (built by the query layer): delete the oldest ``:n`` rows before ``:cutoff``.
batch_statement = queries.purge_batch


def _batches(result: PurgeResult, n: int, pause: float) -> Plan[PurgeResult]:
    """The purge, once: lock, every target in committed batches of ``n``, unlock."""
    if not (yield Sql(queries.try_advisory_lock(PURGE_LOCK), read=_scalar, commit=True)):
        result.skipped = True
        return result
    try:
        for name, table, column, condition in TARGETS:
            stmt = batch_statement(table, column, condition)
            total = 0
            while True:
                # one short transaction per batch
                count = yield Sql(stmt, {"cutoff": result.cutoff, "n": n}, read=_rowcount, commit=True)
                result.batches += 1
                total += count
                if count < n:
                    break
                yield Pause(pause)
            result.deleted[name] = total
    finally:
        yield Sql(queries.advisory_unlock(PURGE_LOCK), commit=True)
    return result


def _plan(older_than: Any, batch_size: int, pause: float) -> Plan[PurgeResult]:
    n = check_batch(batch_size)
    result = PurgeResult(cutoff_for(older_than))
    t0 = time.monotonic()
    yield Connect(_batches(result, n, pause))
    result.seconds = time.monotonic() - t0
    return result


def _scalar(r: Any) -> Any:
    return r.scalar()


def _rowcount(r: Any) -> int:
    return int(r.rowcount)


def purge(engine: Engine, older_than: Any, *, batch_size: int = DEFAULT_BATCH, pause: float = 0.0) -> PurgeResult:
    """Delete everything older than ``older_than`` (e.g. ``"30d"``) in committed batches."""
    return run_sync(_plan(older_than, batch_size, pause), engine=engine)


async def purge_async(engine: AsyncEngine, older_than: Any, *, batch_size: int = DEFAULT_BATCH,
                      pause: float = 0.01) -> PurgeResult:
    """:func:`purge` on an asyncio engine; ``pause`` between batches leaves room for other work."""
    return await run_async(_plan(older_than, batch_size, pause), engine=engine)
