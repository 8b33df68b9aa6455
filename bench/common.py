"""Shared pieces of the benchmark suite."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from tracker.demo.services import PostgresServer, RedisServer
from tracker.migrate import upgrade

__all__ = ["Result", "Servers", "servers", "timed", "median"]


@dataclass
class Result:
    """One benchmark figure and the baseline it is compared with."""

    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    #: Human-readable target, e.g. ">= 0.90 x" or "<= 5 us".
    target: str | None = None
    #: Whether bigger values are better (throughput) or smaller (latency, cost).
    higher_is_better: bool = True
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value or self.value is None:
            return None
        return self.value / self.baseline_value

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


@dataclass
class Servers:
    database_url: str
    redis_url: str
    broker_url: str


@contextmanager
def servers() -> Iterator[Servers]:
    """Throw-away PostgreSQL and Redis (or the ones named by TRACKER_BENCH_*_URL)."""
    db = os.environ.get("TRACKER_BENCH_DATABASE_URL")
    rd = os.environ.get("TRACKER_BENCH_REDIS_URL")
    pg = rs = None
    try:
        if not db:
            pg = PostgresServer().start()
            db = pg.url
        if not rd:
            rs = RedisServer().start()
            rd = rs.url
        upgrade(db)
        yield Servers(db, rd, rd.rsplit("/", 1)[0] + "/1")
    finally:
        if rs is not None:
            rs.cleanup()
        if pg is not None:
            pg.cleanup()


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(values: list[float]) -> float:
    return statistics.median(values)
