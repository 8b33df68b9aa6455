"""The gateway's notifier: stream events -> rules -> stored notifications -> channels.

Three background loops per gateway (started in ``cleanup_ctx``):

* **consume** reads ``{prefix}:events`` through the consumer group ``{prefix}:notifier``
  (consumer name = gateway id), so each event is handled by one gateway; entries of a dead
  gateway are taken over with ``XAUTOCLAIM``. An event that matches a rule is stored in
  ``tracker_notifications`` (``dedup_key`` makes a redelivered entry a no-op) and queued for
  delivery *before* the entry is acknowledged.
* **deliver** claims due ``"<id>:<channel>"`` members of ``{prefix}:notify:due`` (atomically, with
  a lease) and sends each on its channel concurrently, with a timeout. The outcome goes into the
  row's ``delivery`` JSON; a failure is queued again after an exponential backoff until
  ``notify_max_attempts``. One slow or dead channel never holds up another or the feed.
* **digests**: a burst beyond its threshold is not stored one by one but counted in Redis
  (:data:`BURST_LUA`); when its window closes one gateway stores a single digest notification.

Async helpers for the REST API (list, read/unread, delete, stats, create) are at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from tracker import notify as nt
from tracker import queries as q
from tracker.config import TrackerConfig
from tracker.events import decode
from tracker.records import NotificationRecord
from tracker.retry import reconnecting
from webgate.core.keys import CONFIG, ENGINE, GATEWAY_ID, REDIS
from webgate.notify.channels import (
    Channel,
    DeliveryError,
    EmailChannel,
    EmailSettings,
    SlackChannel,
    Targets,
    WebhookChannel,
    WebsocketChannel,
    check_channel_settings,
)

__all__ = [
    "Notifier", "NOTIFIER", "setup", "check_config", "list_notifications", "get_notification", "set_read",
    "delete_notification", "notification_stats", "create_notifications",
]

logger = logging.getLogger("webgate.notify.notifier")

#: Per burst counter: the position of a notification in its window (the same on a redelivery),
#: and for the ones past the threshold the digest bookkeeping.
#: KEYS: counter hash, digests zset, task-id sample list.
#: ARGV: member, threshold, ttl ms, digest due time, digest spec JSON, task id.
BURST_LUA = """
local pos = redis.call('HGET', KEYS[1], ARGV[1])
if pos then return tonumber(pos) end
pos = redis.call('HINCRBY', KEYS[1], '#n', 1)
redis.call('HSET', KEYS[1], ARGV[1], pos)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if pos > tonumber(ARGV[2]) then
  redis.call('HSETNX', KEYS[1], '#spec', ARGV[5])
  if not redis.call('ZSCORE', KEYS[2], KEYS[1]) then
    redis.call('ZADD', KEYS[2], ARGV[4], KEYS[1])
  end
  if ARGV[6] ~= '' and redis.call('LLEN', KEYS[3]) < 50 then
    redis.call('RPUSH', KEYS[3], ARGV[6])
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
  end
end
return pos
"""
#: Claim up to ARGV[3] members of a zset due by ARGV[1] by moving them to ARGV[2] (a lease):
#: no other gateway sees them until the lease ends.
CLAIM_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], m) end
return due
"""
#: A digest was stored for ARGV[1] notifications of burst KEYS[1]: remember it, and unless more
#: arrived meanwhile (then another digest is due at once) drop the burst from the digests zset.
DIGEST_DONE_LUA = """
redis.call('HSET', KEYS[1], '#emitted', ARGV[1])
if redis.call('HGET', KEYS[1], '#n') == ARGV[1] then
  redis.call('ZREM', KEYS[2], KEYS[1])
else
  redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
end
return 1
"""

#: Client posts (``POST /notifications``) of one user in one window, shared by every gateway:
#: KEYS: the user's counter for the window. ARGV: notifications in this post, limit, ttl ms.
#: Returns the new count, or -1 (nothing counted) when the post would go over the limit.
POSTS_LUA = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -1 end
n = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
"""

POLL_INTERVAL = 0.2
DIGEST_GRACE = 1.0
CLAIM_EVERY = 5.0
MAX_INFLIGHT = 64
RECONCILE_EVERY = 30.0
#: Pauses while waiting for a task row that has not been written yet (about 2 s in all).
ROW_WAITS = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8)
_TRANSIENT = (OSError, aioredis.ConnectionError, aioredis.TimeoutError, OperationalError, DBAPIError)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _digest(text: str) -> str:
    """A short fixed-size key part for any user id (ids may hold ``:`` or be long)."""
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Notifier:
    """One gateway's notifier. ``rules`` and ``email`` are validated by :func:`setup`."""

    def __init__(self, config: TrackerConfig, engine: AsyncEngine, redis: aioredis.Redis, consumer: str,
                 rules: Sequence[nt.Rule], email: EmailSettings | None) -> None:
        self.config, self.engine, self.redis, self.consumer = config, engine, redis, consumer
        self.rules = list(rules)
        self.email = email
        self.stream = config.stream_key
        self.group = f"{config.prefix}:notifier"
        self.due_key = nt.due_key(config.prefix)
        self.digests_key = nt.digests_key(config.prefix)
        #: An entry another consumer has held this long unacknowledged is taken over (its gateway died).
        self.claim_idle = 30.0
        self.claim_every = CLAIM_EVERY
        self._types = nt.triggers_of(self.rules)
        self._wake = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.channels: dict[str, Channel] = {}
        self._burst = redis.register_script(BURST_LUA)
        self._claim = redis.register_script(CLAIM_LUA)
        self._digest_done = redis.register_script(DIGEST_DONE_LUA)
        self._posts = redis.register_script(POSTS_LUA)
        #: (rule, task, threshold) already decided, so progress events do not hit the database.
        self._decided: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._poison: dict[str, int] = {}
        self.stats = {"events": 0, "stored": 0, "suppressed": 0, "sent": 0, "failed": 0, "retried": 0}

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.notify_timeout))
        self.channels = {
            "websocket": WebsocketChannel(self.redis, self.stream, self.config.stream_maxlen),
            "email": EmailChannel(self.email),
            "slack": SlackChannel(self._session),
            "webhook": WebhookChannel(self._session, self.config.webhook_secret),
        }
        self._loops.append(asyncio.create_task(self._deliver_loop(), name="notifier-deliver"))
        if self._types:
            # The group exists before the gateway serves: every event from now on is notified.
            # Only task rules read the stream; aggregate rules are measured by the sweeper.
            try:
                await self._ensure_group()
            except Exception as exc:  # Redis away at start: the loop keeps trying
                logger.warning("notifier: cannot create the consumer group yet (%s)", exc)
            self._loops.append(asyncio.create_task(self._consume_loop(), name="notifier-consume"))

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._inflight:
            # Give deliveries under way a moment; the rest go back to the queue for another gateway.
            await asyncio.wait(self._inflight, timeout=2.0)
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._types:
            with contextlib.suppress(Exception):
                mine = await self.redis.xpending_range(self.stream, self.group, "-", "+", 1,
                                                       consumername=self.consumer)
                if not mine:  # deleting a consumer drops its pending entries: only when it has none
                    await self.redis.xgroup_delconsumer(self.stream, self.group, self.consumer)

    def wake(self) -> None:
        self._wake.set()

    # -- consuming the stream ----------------------------------------------------------------------
    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="$", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _consume_loop(self) -> None:
        own_pending = True  # entries handed to us but not acknowledged (after an error)
        last_claim = -1e9
        group_ready = False

        def failed(exc: BaseException) -> None:
            nonlocal own_pending, group_ready
            own_pending = True
            if isinstance(exc, aioredis.ResponseError):
                if "NOGROUP" in str(exc):  # the stream or group was deleted: start again
                    group_ready = False
                else:
                    logger.error("notifier: Redis refused a command", exc_info=exc)
            elif isinstance(exc, _TRANSIENT):
                logger.warning("notifier: store or bus unavailable (%s); retrying", exc)
            else:
                logger.error("notifier: unexpected error", exc_info=exc)

        while not self._stopping:
            async for attempt in reconnecting(first=0.1, most=5.0, on_error=failed):
                with attempt:
                    if not group_ready:
                        await self._ensure_group()
                        group_ready = True
                    if time.monotonic() - last_claim >= self.claim_every:
                        last_claim = time.monotonic()
                        await self._claim_stale()
                    start = "0" if own_pending else ">"
                    resp: Any = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: start},
                                                            count=100, block=None if own_pending else 1000)
                    entries = resp[0][1] if resp else []
                    if own_pending and not entries:
                        own_pending = False
                    await self._handle_batch(entries)

    async def _claim_stale(self) -> None:
        """Take over entries a dead gateway read but never acknowledged."""
        start = "0-0"
        for _ in range(10):
            resp = await self.redis.xautoclaim(self.stream, self.group, self.consumer,
                                               min_idle_time=int(self.claim_idle * 1000), start_id=start, count=100)
            start, entries = _s(resp[0]), resp[1]
            entries = [(i, f) for i, f in entries if f]  # trimmed entries come back empty
            if entries:
                logger.info("notifier: took over %d unacknowledged events", len(entries))
                await self._handle_batch(entries)
            if start == "0-0":
                return

    async def _handle_batch(self, entries: Sequence[tuple[Any, Any]]) -> None:
        done: list[Any] = []
        try:
            for entry_id, fields in entries:
                try:
                    await self.handle(entry_id, fields or {})
                except _TRANSIENT:
                    raise
                except Exception:
                    # A bug or a malformed entry: try a few times, then let it go rather than block the group.
                    key = _s(entry_id)
                    self._poison[key] = self._poison.get(key, 0) + 1
                    if self._poison[key] < 3:
                        raise
                    logger.exception("notifier: giving up on event %s", key)
                    self._poison.pop(key, None)
                done.append(entry_id)
        finally:
            if done:
                await self.redis.xack(self.stream, self.group, *done)

    async def handle(self, entry_id: Any, fields: Mapping[Any, Any]) -> None:
        """Turn one stream entry into the notifications its rules ask for (stored and queued)."""
        etype = _s(fields.get(b"type", fields.get("type", "")))
        if etype not in self._types:
            return
        self.stats["events"] += 1
        event = decode(entry_id, dict(fields))
        candidates: list[tuple[nt.Rule, nt.Trigger]] = []
        for rule in self.rules:
            for trigger in rule.triggers_for(event):
                if trigger.threshold is not None and self._is_decided(rule, trigger, event.task_id):
                    continue
                candidates.append((rule, trigger))
        if not candidates:
            return
        filtered = any(rule.task_types or rule.tags or rule.users for rule, _ in candidates)
        row = await self._task_row(event.task_id, wait=filtered) if event.task_id else None
        ctx = nt.task_context(event, row, self.config.public_url)
        for rule, trigger in candidates:
            if rule.applies(ctx):
                n = rule.build(trigger, ctx, nt.dedup_key(rule, trigger, event), event)
                if not await self._suppressed(rule, trigger, n, event.ts or time.time()):
                    await self.store([n])
            if trigger.threshold is not None and row is not None:
                self._decide(rule, trigger, event.task_id)

    async def _task_row(self, task_id: str, wait: bool) -> dict[str, Any] | None:
        """The stored task. Workers write their rows in batches, so an event can arrive before its
        task's first row: when a rule filters on the task, wait a little for it (bounded)."""
        delays = ROW_WAITS if wait else ()
        for delay in (0.0, *delays):
            if delay:
                await asyncio.sleep(delay)
            found = await self._fetch_one(q.task_by_id(task_id))
            if found is not None:
                return dict(found._mapping)
        return None

    def _is_decided(self, rule: nt.Rule, trigger: nt.Trigger, task_id: str | None) -> bool:
        return (rule.id, task_id or "", trigger.label) in self._decided

    def _decide(self, rule: nt.Rule, trigger: nt.Trigger, task_id: str | None) -> None:
        self._decided[(rule.id, task_id or "", trigger.label)] = None
        while len(self._decided) > 50_000:
            self._decided.popitem(last=False)

    async def _suppressed(self, rule: nt.Rule, trigger: nt.Trigger, n: nt.NewNotification, ts: float) -> bool:
        """Count ``n`` in its burst windows; True when it goes into a digest instead."""
        cfg = self.config
        for scope in nt.burst_scopes(rule, trigger, n, window=cfg.notify_digest_window,
                                     threshold=cfg.notify_digest_threshold, rate_limit=cfg.notify_rate_limit,
                                     rate_window=cfg.notify_rate_window):
            key = scope.key(cfg.prefix, ts)
            start = nt.window_start(ts, scope.window)
            spec = {**scope.spec(n, cfg.public_url), "start": start}
            ttl_ms = int((scope.window * 2 + 3600) * 1000)
            pos = await self._burst(keys=[key, self.digests_key, key + ":tasks"],
                                    args=[n.dedup_key or "", scope.threshold, ttl_ms,
                                          start + scope.window + DIGEST_GRACE, json.dumps(spec), n.task_id or ""])
            if int(pos) > scope.threshold:
                self.stats["suppressed"] += 1
                return True
        return False

    # -- client posts -------------------------------------------------------------------------------------
    async def admit_posts(self, user_id: str, count: int, now: float | None = None) -> float | None:
        """Count ``count`` notifications posted by ``user_id`` against ``notify_rate_limit`` per
        ``notify_rate_window``; ``None`` when admitted, else the seconds until the window ends
        (nothing is counted then). Windows are aligned on the epoch and counted in Redis, so the
        limit holds across gateways. Redis away raises (the REST layer answers 503): the post
        could not be queued for delivery anyway."""
        limit, window = self.config.notify_rate_limit, self.config.notify_rate_window
        if limit <= 0 or window <= 0:
            return None
        now = time.time() if now is None else now
        start = nt.window_start(now, window)
        retry_after = max(0.001, start + window - now)
        key = f"{self.config.prefix}:notify:posts:{_digest(user_id)}:{int(start * 1000)}"
        n = await self._posts(keys=[key], args=[count, limit, int((window + 60) * 1000)])
        return retry_after if int(n) < 0 else None

    # -- storing ---------------------------------------------------------------------------------------
    async def store(self, items: Sequence[nt.NewNotification]) -> list[NotificationRecord]:
        """Store ``items`` (one transaction), queue every pending channel and wake the deliverer.

        An item whose ``dedup_key`` is stored already is looked up instead, and its channels that
        are still pending are queued again (a crash may have come between storing and queueing).
        """
        if not items:
            return []
        async with self.engine.begin() as conn:
            paired = nt.pair_inserted(items, list(await conn.execute(nt.insert_notifications(items))))
            rows = []
            for it, row in zip(items, paired, strict=True):
                if row is None:
                    row = (await conn.execute(nt.notification_by_dedup(it.dedup_key or ""))).one()
                rows.append(row)
        records = [nt.notification_record(r) for r in rows]
        self.stats["stored"] += sum(1 for r in paired if r is not None)
        queue = nt.queue_entries(records, time.time())
        if queue:
            await self.redis.zadd(self.due_key, queue, nx=True)
            self.wake()
        return records

    async def _fetch_one(self, stmt: Any) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt)).first()

    # -- delivering -----------------------------------------------------------------------------------
    async def _nap(self, seconds: float) -> None:
        """Wait ``seconds``, or less when woken (something to deliver, or stop)."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set, and the loop would never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _deliver_loop(self) -> None:
        next_digest = next_reconcile = 0.0

        def failed(exc: BaseException) -> None:
            if isinstance(exc, _TRANSIENT):
                logger.warning("notifier: cannot reach Redis or PostgreSQL (%s)", exc)
            else:
                logger.error("notifier: delivery loop error", exc_info=exc)

        while not self._stopping:
            await self._nap(POLL_INTERVAL)
            # After a failure the pause is a nap too: a wake (or stop) cuts it short.
            async for attempt in reconnecting(first=0.2, most=5.0, on_error=failed, sleep=self._nap):
                with attempt:
                    if self._stopping:
                        return
                    self._wake.clear()
                    now = time.time()
                    free = MAX_INFLIGHT - len(self._inflight)
                    if free > 0:
                        lease = now + self.config.notify_timeout + 30.0
                        for member in await self._claim(keys=[self.due_key], args=[now, lease, free]):
                            task = asyncio.create_task(self.deliver(_s(member)))
                            self._inflight.add(task)
                            task.add_done_callback(self._inflight.discard)
                    if now >= next_digest:
                        next_digest = now + 0.5
                        await self._flush_digests()
                    if now >= next_reconcile:
                        next_reconcile = now + RECONCILE_EVERY
                        await self._reconcile()

    async def deliver(self, member: str) -> None:
        """One attempt at one channel of one notification (claimed from the queue)."""
        parsed = nt.parse_due_member(member)
        try:
            if parsed is None:
                await self.redis.zrem(self.due_key, member)
                return
            nid, channel_name = parsed
            row = await self._fetch_one(q.notification_by_id(nid))
            if row is None:  # deleted meanwhile
                await self.redis.zrem(self.due_key, member)
                return
            record = nt.notification_record(row)
            state = dict(record.delivery.get(channel_name) or {})
            if state.get("status") in ("sent", "failed") or channel_name not in record.channels:
                await self.redis.zrem(self.due_key, member)
                return
            await self._attempt(record, channel_name, state, member, row.origin)
        except asyncio.CancelledError:
            # Shutting down: hand the claim back at once rather than after the lease.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.redis.zadd(self.due_key, {member: time.time()}, xx=True))
            raise
        except Exception:
            # The claim's lease runs out and the delivery is tried again (by any gateway).
            logger.exception("notifier: delivery %s failed unexpectedly", member)

    async def _attempt(self, record: NotificationRecord, channel_name: str, state: dict[str, Any],
                       member: str, origin: str) -> None:
        attempts = int(state.get("attempts") or 0) + 1
        # metadata.rule names the rule only in what the notifier made itself (origin "rule", set by
        # the server): in anything else it is input, and selects no rule and no target.
        rule = nt.rule_by_id(self.rules, (record.metadata or {}).get("rule")) if origin == "rule" else None
        targets = Targets.of(rule, self.config, origin)
        error: str | None = None
        permanent = False
        delay = 0.0
        try:
            async with asyncio.timeout(self.config.notify_timeout):
                await self.channels[channel_name].send(record, targets)
        except DeliveryError as exc:
            error, permanent = str(exc), exc.permanent
        except TimeoutError:
            error = f"timed out after {self.config.notify_timeout:g}s"
        except Exception as exc:  # a channel bug must not lose the notification
            logger.exception("notifier: %s channel raised", channel_name)
            error = f"{type(exc).__name__}: {exc}"
        now = time.time()
        if error is None:
            new = {"status": "sent", "attempts": attempts, "last_error": state.get("last_error"),
                   "delivered_at": _iso(now)}
            self.stats["sent"] += 1
        elif permanent or attempts >= self.config.notify_max_attempts:
            new = {"status": "failed", "attempts": attempts, "last_error": error, "delivered_at": None,
                   "failed_at": _iso(now)}
            self.stats["failed"] += 1
            logger.warning("notifier: %s of notification %s failed for good: %s", channel_name, record.id, error)
        else:
            delay = nt.backoff_delay(attempts, self.config.notify_retry_base)
            new = {"status": "retrying", "attempts": attempts, "last_error": error, "delivered_at": None,
                   "next_attempt_at": _iso(now + delay)}
            self.stats["retried"] += 1
        async with self.engine.begin() as conn:
            await conn.execute(nt.delivery_update(record.id, channel_name, new))
        if new["status"] == "retrying":
            await self.redis.zadd(self.due_key, {member: now + delay})
        else:
            await self.redis.zrem(self.due_key, member)

    # -- digests and the safety sweep ---------------------------------------------------------------------
    async def _flush_digests(self) -> None:
        now = time.time()
        for raw in await self._claim(keys=[self.digests_key], args=[now, now + 60.0, 20]):
            key = _s(raw)
            h = {_s(k): _s(v) for k, v in (await self.redis.hgetall(key)).items()}
            if "#spec" not in h or "#n" not in h:
                await self.redis.zrem(self.digests_key, key)
                continue
            spec = json.loads(h["#spec"])
            total = int(h["#n"])
            already = max(int(spec["threshold"]), int(h.get("#emitted") or 0))
            if total > already:
                sample = [_s(t) for t in await self.redis.lrange(key + ":tasks", 0, -1)]
                skip = max(0, already - int(spec["threshold"]))
                digest = nt.digest_notification(spec, total, already, float(spec["start"]), key, sample[skip:])
                await self.store([digest])
            await self._digest_done(keys=[key, self.digests_key], args=[total, time.time()])

    async def _reconcile(self) -> None:
        """Queue deliveries whose Redis entry was lost (stored, then a crash or a Redis restart)."""
        now = time.time()
        # Deliveries give up within minutes; six hours back is plenty and keeps the scan small.
        stmt = q.undelivered_notifications(datetime.fromtimestamp(now - 6 * 3600, UTC),
                                           datetime.fromtimestamp(now - 15, UTC))
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(stmt))
        queue = {nt.due_member(r.id, ch): now for r in rows for ch, st in (r.delivery or {}).items()
                 if isinstance(st, dict) and st.get("status") in ("pending", "retrying") and ch in nt.CHANNELS}
        if queue:
            added = await self.redis.zadd(self.due_key, queue, nx=True)
            if added:
                logger.info("notifier: queued %d deliveries that had lost their queue entry", added)
                self.wake()


NOTIFIER = web.AppKey("tracker_notifier", Notifier)


def check_config(config: TrackerConfig) -> tuple[list[nt.Rule], EmailSettings | None]:
    """Validate the notification rules and channel settings; ValueError says what is wrong."""
    rules = nt.parse_rules(config.notifications)
    email = EmailSettings.parse(config.email)
    check_channel_settings(rules, config, email)
    for name in ("notify_max_attempts", "notify_digest_threshold", "notify_rate_limit", "notify_rate_window"):
        if getattr(config, name) < 0:
            raise ValueError(f"tracker_{name} must not be negative")
    if config.notify_max_attempts < 1 or config.notify_timeout <= 0 or config.notify_retry_base < 0:
        raise ValueError("tracker_notify_max_attempts must be >= 1, tracker_notify_timeout > 0 and "
                         "tracker_notify_retry_base >= 0")
    if config.notify_digest_window < 0:
        raise ValueError("tracker_notify_digest_window must not be negative (0 turns digests off)")
    return rules, email


def setup(app: web.Application) -> None:
    """Validate the rules and channel settings now (a bad config stops the gateway with a clear
    error) and run the notifier for the app's lifetime."""
    config = app[CONFIG]
    rules, email = check_config(config)

    async def run(app: web.Application) -> AsyncIterator[None]:
        notifier = Notifier(config, app[ENGINE], app[REDIS], app[GATEWAY_ID], rules, email)
        await notifier.start()
        app[NOTIFIER] = notifier
        yield
        await notifier.stop()

    app.cleanup_ctx.append(run)


# -- helpers for the REST API ------------------------------------------------------------------------------
async def _rows(app: web.Application, stmt: Any, write: bool = False) -> list[Any]:
    if write:
        async with app[ENGINE].begin() as conn:
            return list(await conn.execute(stmt))
    async with app[ENGINE].connect() as conn:
        return list(await conn.execute(stmt))


async def list_notifications(app: web.Application, *, user_id: str | None = None, unread: bool | None = None,
                             limit: int | None = None, cursor: str | None = None, type: str | None = None,
                             priority: str | None = None) -> tuple[list[NotificationRecord], str | None]:
    """Newest first, ``(records, next_cursor)``; pass ``user_id`` for anyone but an admin."""
    n = q.check_limit(limit)
    stmt = q.notifications(user_id=user_id, unread=unread, limit=n, cursor=cursor, type=type, priority=priority)
    rows, nxt = q.page(await _rows(app, stmt), n, lambda r: q.encode_cursor(r.id))
    return [nt.notification_record(r) for r in rows], nxt


async def get_notification(app: web.Application, notification_id: int,
                           user_id: str | None = None) -> NotificationRecord | None:
    """One notification, ``None`` if there is none (or it is not ``user_id``'s)."""
    rows = await _rows(app, q.notification_by_id(notification_id, user_id))
    return nt.notification_record(rows[0]) if rows else None


async def set_read(app: web.Application, notification_id: int, read: bool = True,
                   user_id: str | None = None) -> NotificationRecord | None:
    """Mark read or unread; the updated record, ``None`` if there is none (or it is not ``user_id``'s)."""
    stmt = (q.mark_notification_read(notification_id, user_id) if read
            else q.mark_notification_unread(notification_id, user_id))
    rows = await _rows(app, stmt, write=True)
    return nt.notification_record(rows[0]) if rows else None


async def delete_notification(app: web.Application, notification_id: int, user_id: str | None = None) -> bool:
    return bool(await _rows(app, q.delete_notification(notification_id, user_id), write=True))


async def notification_stats(app: web.Application, user_id: str | None = None) -> dict[str, Any]:
    """``total``, ``unread``, ``urgent``, ``high`` and per-channel delivery counts."""
    rows = await _rows(app, q.notification_stats(user_id))
    out = dict(rows[0]._mapping) if rows else {"total": 0, "unread": 0, "urgent": 0, "high": 0}
    if user_id is None:
        deliveries: dict[str, dict[str, int]] = {}
        for r in await _rows(app, q.notification_deliveries()):
            deliveries.setdefault(r.channel, {})[r.status] = int(r.count)
        out["deliveries"] = deliveries
    return out


async def create_notifications(app: web.Application, items: Sequence[Mapping[str, Any]],
                               origin: str = "rest") -> list[NotificationRecord]:
    """Validate every item (the ``Tracker.notify`` fields) first, then store all of them in one
    transaction and queue their delivery: bad input raises ValueError/TypeError and stores nothing.
    ``origin`` (``tracker.notify.ORIGINS``) defaults to a client post's: no rule, no Slack or webhook."""
    checked = nt.check_notifications(items, origin=origin)
    return await app[NOTIFIER].store(checked)
