"""The gateway's aggregate alerts: measured and decided by the sweeper, once across gateways.

Every sweep pass (:mod:`webgate.ops.health`) calls :meth:`AlertEvaluator.run_pass`, which

1. takes the transaction-level advisory lock :data:`tracker.alerts.ALERT_LOCK` (another gateway
   holding it makes this pass a no-op), so measurements and decisions of two gateways never
   interleave;
2. measures what the rules need in that transaction (:mod:`tracker.queries`: the failure rate in
   each rule's window, the latest ``tracker.queue.depth`` sample per queue, online workers);
3. compares with the open episodes kept in the Redis hash ``{prefix}:alerts`` (shared by all
   gateways and surviving their restarts): a condition that became true opens an episode, one
   that became false closes it;
4. stores the notifications of every new episode through the notifier
   (:meth:`webgate.notify.notifier.Notifier.store`), which delivers them on the rule's channels with
   the usual retries and delivery tracking.

An episode is marked ``notified`` only once its notifications are stored. If a gateway dies
between opening and storing, the next pass (on any gateway) stores them again with the same
``dedup_key``: the notifications exist exactly once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tracker import alerts as al
from tracker import health
from tracker import notify as nt
from tracker import queries as q
from tracker.config import TrackerConfig
from webgate.core.keys import CONFIG, ENGINE, REDIS
from webgate.notify.notifier import NOTIFIER, Notifier

__all__ = ["AlertEvaluator", "AlertPass", "ALERTS", "evaluator_for"]

logger = logging.getLogger("webgate.notify.alerts")

#: Field of the state hash: when a pass first saw no online worker (database clock).
_NO_WORKERS_SINCE = "#no_workers_since"
_PASSES = "#passes"


@dataclass(frozen=True)
class AlertPass:
    """What one pass did: the episodes it opened (and notified) and closed, by state field."""

    fired: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    skipped: bool = False


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AlertEvaluator:
    """Evaluates the aggregate rules among ``rules`` for one gateway."""

    def __init__(self, config: TrackerConfig, engine: AsyncEngine, redis: aioredis.Redis, notifier: Notifier,
                 rules: Sequence[nt.Rule]) -> None:
        self.config, self.engine, self.redis, self.notifier = config, engine, redis, notifier
        self.rules = al.aggregate_rules(rules)
        self.kinds = al.kinds_of(self.rules)
        age = config.alert_sample_max_age
        if "queue_depth" in self.kinds and (isinstance(age, bool) or not isinstance(age, (int, float)) or age <= 0):
            raise ValueError(f"tracker_alert_sample_max_age must be a positive number of seconds, got {age!r}")
        self.key = al.state_key(config.prefix)
        self.passes = 0
        self.last: AlertPass | None = None

    async def run_pass(self) -> AlertPass:
        """One evaluation of every aggregate rule (skipped while another gateway evaluates)."""
        async with self.engine.begin() as conn:
            if not (await conn.execute(health.lock_statement(al.ALERT_LOCK))).scalar():
                return AlertPass(skipped=True)
            # The lock is held until this transaction ends: the episode state is read and
            # written by one gateway at a time.
            state = {_s(k): _s(v) for k, v in (await self.redis.hgetall(self.key)).items()}
            now, measured = await self._measure(conn, state)
            result = await self._apply(list(al.observe(self.rules, measured)), state, now)
        self.passes += 1
        self.last = result
        return result

    async def _measure(self, conn: AsyncConnection, state: dict[str, str]) -> tuple[float, al.Measurements]:
        now = float((await conn.execute(q.database_clock())).scalar_one())
        failure: dict[tuple[float, tuple[str, ...], tuple[str, ...]], tuple[int, int]] = {}
        for rule in self.rules:
            key = al.failure_key(rule)
            if key not in failure and any(c.kind == "failure_rate" for c in rule.conditions):
                row = (await conn.execute(q.failure_rate(*key))).one()
                failure[key] = (int(row.finished), int(row.failed))
        depths = None
        if "queue_depth" in self.kinds:
            rows = await conn.execute(q.latest_queue_depths(self.config.alert_sample_max_age))
            depths = {r.queue: float(r.depth) for r in rows}
        online = offline_for = None
        if "no_workers" in self.kinds:
            online = int((await conn.execute(q.count_online_workers(self.config.worker_lost_after))).scalar_one())
            if online:
                await self.redis.hdel(self.key, _NO_WORKERS_SINCE)
            else:
                # Two lower bounds of the time without a worker: since a pass first saw none (also
                # when no worker was ever recorded), and since the newest heartbeat went stale.
                await self.redis.hsetnx(self.key, _NO_WORKERS_SINCE, repr(now))
                since = float(state.get(_NO_WORKERS_SINCE) or now)
                age = (await conn.execute(q.worker_heartbeat_age())).one().age
                stale_for = float(age) - self.config.worker_lost_after if age is not None else 0.0
                offline_for = max(now - since, stale_for)
        return now, al.Measurements(failure=failure, depths=depths, online=online, offline_for=offline_for)

    async def _apply(self, observations: Sequence[al.Observation], state: dict[str, str], now: float) -> AlertPass:
        to_notify: list[tuple[al.Observation, dict[str, Any]]] = []
        opened: dict[str, str] = {}
        closed: list[str] = []
        for obs in observations:
            raw = state.get(obs.field)
            episode = json.loads(raw) if raw else None
            if obs.active:
                if episode is None:
                    episode = {"episode": str(int(now * 1000)), "since": now, "value": obs.value, "notified": False}
                    opened[obs.field] = json.dumps(episode)
                if not episode.get("notified"):  # new, or opened by a pass that could not store
                    to_notify.append((obs, episode))
            elif episode is not None:
                closed.append(obs.field)
        # Episodes of rules or conditions no longer configured would otherwise stay open for ever
        # (neither a rule id nor a condition can hold "|").
        known = {(r.id, c.label) for r in self.rules for c in r.conditions}
        closed += [f for f in state if not f.startswith("#") and tuple(f.split("|")[:2]) not in known]
        pipe = self.redis.pipeline(transaction=False)
        if opened:
            pipe.hset(self.key, mapping=opened)  # type: ignore[arg-type]
        if closed:
            pipe.hdel(self.key, *closed)
        pipe.hincrby(self.key, _PASSES, 1)
        await pipe.execute()
        for f in closed:
            logger.info("aggregate alert %s cleared", f)
        fired = []
        for obs, episode in to_notify:
            items = al.alert_notifications(obs, episode["episode"], self.config.public_url)
            await self.notifier.store(items)
            episode["notified"] = True
            await self.redis.hset(self.key, obs.field, json.dumps(episode))
            fired.append(obs.field)
            logger.warning("aggregate alert %s fired: value %s", obs.field, obs.value)
        return AlertPass(fired=fired, cleared=closed)


ALERTS = web.AppKey("tracker_alerts", AlertEvaluator)


def evaluator_for(app: web.Application) -> AlertEvaluator | None:
    """The app's evaluator when its rules hold aggregate conditions (the notifier is running)."""
    notifier = app.get(NOTIFIER)
    if notifier is None or not al.aggregate_rules(notifier.rules):
        return None
    evaluator = AlertEvaluator(app[CONFIG], app[ENGINE], app[REDIS], notifier, notifier.rules)
    app[ALERTS] = evaluator
    return evaluator
