"""Notifications: rules, templates, burst digests and the creation of notification rows.

Everything here is pure or synchronous so it can be tested on its own and shared by
``Tracker.notify`` (sync) and the gateway's notifier (async):

* :func:`parse_rules` validates ``tracker_notifications`` (pydantic models in
  :mod:`tracker.notify_rules`): task rules and aggregate rules (:class:`Condition`:
  ``failure_rate>N%``, ``queue_depth>N``, ``no_workers``, which the gateway's sweeper evaluates,
  see :mod:`tracker.alerts`);
* :class:`Rule` matches stream events (``failed``, ``progress>=50``, ...) against task fields
  and renders the title/message templates;
* :func:`check_notifications` validates a caller's notifications (:class:`NotificationInput`, the
  model the REST body derives from, in :mod:`tracker.new_notification`);
* :func:`dedup_key` names what a notification is about, so a redelivered stream entry (or the
  same failure reported twice) is never stored twice (``tracker_notifications.dedup_key``);
* :func:`burst_scopes`, :func:`window_start` and :func:`digest_notification` describe how a
  burst becomes one digest;
* :func:`create_notifications` stores notifications and queues their delivery.

Every stored notification records its ``origin`` (a column the server sets, never the body):
``rule`` (made by a rule or a digest of the notifier), ``api`` (server code: ``Tracker.notify``,
a task's ``notify``) or ``rest`` (posted by a client to ``POST /notifications``). Only ``rule``
notifications use a rule's targets, and client posts never reach the global Slack and webhook
targets (``webgate.notify.channels.Targets.of``).

Delivery queue (Redis): a sorted set ``{prefix}:notify:due`` whose members are
``"<notification id>:<channel>"`` scored by the time the next attempt is due. Every gateway
claims due members atomically (the score is moved forward by a lease), so each channel of a
notification is delivered by one gateway at a time, and a crashed gateway's claims come back
when their lease ends.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from tracker import queries as q
from tracker.events import Event
from tracker.new_notification import (
    CHANNELS,
    CONTROL_CHARS,
    MAX_MESSAGE,
    MAX_TITLE,
    ORIGINS,
    PRIORITIES,
    TYPES,
    NewNotification,
    NotificationInput,
    check_action_url,
    check_notifications,
    initial_delivery,
)
from tracker.notify_rules import (
    AGGREGATES,
    TEMPLATE_FIELDS,
    Condition,
    Rule,
    RuleSpec,
    Trigger,
    check_template,
    parse_rules,
    render,
    rule_by_id,
    triggers_of,
)
from tracker.records import NotificationRecord, notification_record
from tracker.vocabulary import EVENT_TRIGGERS, TERMINAL, TRIGGERS, notify_burst_key, notify_digests_key, notify_due_key

__all__ = [
    "CHANNELS", "ORIGINS", "PRIORITIES", "TYPES", "TRIGGERS", "EVENT_TRIGGERS", "TEMPLATE_FIELDS",
    "DELIVERY_STATUSES", "MAX_TITLE", "MAX_MESSAGE",
    "AGGREGATES", "Trigger", "Condition", "Rule", "RuleSpec", "NewNotification", "NotificationInput", "BurstScope",
    "parse_rules", "rule_by_id", "triggers_of", "task_context", "render", "check_template", "dedup_key",
    "check_notifications", "check_action_url", "single_line", "initial_delivery",
    "insert_notifications", "delivery_update",
    "notification_record",
    "due_key", "digests_key", "due_member", "parse_due_member", "backoff_delay",
    "window_start", "burst_scopes", "digest_notification", "create_notifications", "pair_inserted",
    "queue_entries", "notification_by_dedup",
]

logger = logging.getLogger("tracker.notify")

DELIVERY_STATUSES = ("pending", "sent", "failed", "retrying")
# CHANNELS, ORIGINS, PRIORITIES, TYPES and the caller's notification model are
# tracker.new_notification's; the rules and templates tracker.notify_rules'; EVENT_TRIGGERS and
# TRIGGERS the vocabulary's. All are kept here by name, the module the notifier and the API use.


def _ts(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def task_context(event: Event, task: Mapping[str, Any] | None, public_url: str | None = None) -> dict[str, Any]:
    """Template values for an event: the stored task row overlaid with the (fresher) event data."""
    row = dict(task or {})
    data = event.data or {}

    def pick(name: str) -> Any:
        value = data.get(name)
        return row.get(name) if value is None else value

    name = pick("name")
    task_type = pick("task_type") or row.get("task_type") or name
    progress = pick("progress")
    progress = float(progress) if isinstance(progress, (int, float)) and not isinstance(progress, bool) else 0.0
    tags = data.get("tags") or row.get("tags") or []
    started, finished = _ts(pick("started_at")), _ts(pick("finished_at"))
    duration = max(0.0, finished - started) if started is not None and finished is not None else None
    task_id = event.task_id or row.get("task_id")
    step = pick("current_step")
    url = ""
    if public_url and task_id:
        url = f"{public_url.rstrip('/')}/?task_id={task_id}"
    retries = pick("retries")
    return {
        "task_id": task_id or "",
        "task_name": name or task_type or task_id or "",
        "name": name or "",
        "task_type": task_type or "",
        "user_id": event.user_id or row.get("user_id") or "",
        "status": pick("status") or "",
        "progress": round(progress, 1),
        "current_step": step or "",
        "step_text": f" ({step})" if step else "",
        "error_type": pick("error_type") or "error",
        "error_message": pick("error_message") or "",
        "retries": retries if isinstance(retries, int) else 0,
        "queue": pick("queue") or "",
        "worker": pick("worker") or "",
        "tags": ", ".join(str(t) for t in tags),
        "duration": f"{duration:.1f}s" if duration is not None else "",
        "duration_text": f" in {duration:.1f}s" if duration is not None else "",
        "event": event.type,
        "url": url,
        "public_url": public_url or "",
        "_tags": [str(t) for t in tags],
    }


def dedup_key(rule: Rule, trigger: Trigger, event: Event) -> str:
    """What a rule's notification is about. A task fails, completes or crosses 50% once, so those
    are keyed by the task (the same failure reported twice is notified once); everything else by
    the stream entry (a redelivered entry is never stored twice)."""
    if event.task_id and trigger.threshold is not None:
        return f"{rule.id}:{event.task_id}:{trigger.label}"
    if event.task_id and trigger.name in TERMINAL:  # a task ends once
        return f"{rule.id}:{event.task_id}:{trigger.name}"
    retries = event.data.get("retries")
    if event.task_id and trigger.name == "retry" and isinstance(retries, int):
        return f"{rule.id}:{event.task_id}:retry:{retries}"
    return f"{rule.id}:{event.id or event.task_id}:{trigger.label}"




# -- notification rows ------------------------------------------------------------------------------
def single_line(text: str) -> str:
    """``text`` with every run of control characters (CR, LF, tab, NUL, ...) made one space:
    a header such as an e-mail subject must be one line."""
    return " ".join(CONTROL_CHARS.sub(" ", text).split())




def insert_notifications(items: Sequence[NewNotification]) -> Any:
    """One INSERT of all ``items``; a ``dedup_key`` already stored is skipped (not returned)."""
    return q.insert_notifications([it.values() for it in items])


notification_by_dedup = q.notification_by_dedup
delivery_update = q.delivery_update


def due_key(prefix: str) -> str:
    return notify_due_key(prefix)


def digests_key(prefix: str) -> str:
    return notify_digests_key(prefix)


def due_member(notification_id: int, channel: str) -> str:
    return f"{notification_id}:{channel}"


def parse_due_member(member: Any) -> tuple[int, str] | None:
    text = member.decode() if isinstance(member, bytes) else str(member)
    nid, _, channel = text.partition(":")
    if not nid.isdigit() or channel not in CHANNELS:
        return None
    return int(nid), channel


def backoff_delay(attempts: int, base: float, cap: float = 3600.0) -> float:
    """Seconds before attempt ``attempts + 1``: ``base``, ``2 * base``, ``4 * base``, ... (capped)."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


# -- bursts and digests -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BurstScope:
    """A group of notifications counted together: per rule/trigger/task type/user, or per user."""

    kind: str  # "type" or "user"
    ident: str
    window: float
    threshold: int
    info: dict[str, Any]

    def spec(self, n: NewNotification, public_url: str | None = None) -> dict[str, Any]:
        """What the digest of this scope needs to know (kept in Redis with the counter)."""
        return {**self.info, "kind": self.kind, "window": self.window, "threshold": self.threshold,
                "user_id": n.user_id, "channels": list(n.channels), "priority": n.priority, "type": n.type,
                "public_url": public_url}

    def key(self, prefix: str, ts: float) -> str:
        digest = hashlib.sha1(self.ident.encode()).hexdigest()[:16]
        return notify_burst_key(prefix, self.kind, digest, int(window_start(ts, self.window) * 1000))


def window_start(ts: float, window: float) -> float:
    """Start of the fixed window holding ``ts`` (windows are aligned on the epoch, so every
    gateway puts an event in the same window)."""
    return math.floor(ts / window) * window


def burst_scopes(rule: Rule, trigger: Trigger, n: NewNotification, *, window: float, threshold: int,
                 rate_limit: int, rate_window: float | None = None) -> list[BurstScope]:
    """The counters a rule notification must pass, in order: its burst (same rule, trigger,
    task type and user) and then the user's rate limit (``rate_limit`` per ``rate_window``
    seconds, by default ``window``). Urgent notifications skip the rate limit."""
    scopes: list[BurstScope] = []
    task_type = (n.metadata or {}).get("task_type") or ""
    w, t = rule.digest if rule.digest is not None else (window, threshold)
    if w > 0:  # rule.digest == (0, 0) is "digest: false"
        scopes.append(BurstScope("type", f"{rule.id}|{trigger.label}|{task_type}|{n.user_id or ''}", w, t,
                                 {"rule": rule.id, "trigger": trigger.label, "task_type": task_type}))
    rw = window if rate_window is None else rate_window
    if rate_limit > 0 and rw > 0 and n.priority != "urgent":
        scopes.append(BurstScope("user", f"user|{n.user_id or ''}", rw, rate_limit, {"rule": rule.id}))
    return scopes


_VERBS = {"failed": "failed", "completed": "completed", "cancelled": "were cancelled", "stalled": "stalled",
          "retry": "were retried", "started": "started", "paused": "paused", "resumed": "resumed"}


def digest_notification(spec: Mapping[str, Any], total: int, already: int, start: float, key: str,
                        task_ids: Sequence[str]) -> NewNotification:
    """The digest of a burst window: ``total`` notifications counted, ``already`` of them sent
    individually or in an earlier digest of the same window."""
    count = total - already
    window = float(spec["window"])
    t0 = datetime.fromtimestamp(start, UTC)
    t1 = datetime.fromtimestamp(start + window, UTC)
    span = f"between {t0:%H:%M:%S} and {t1:%H:%M:%S} UTC"
    trigger = str(spec.get("trigger") or "")
    task_type = str(spec.get("task_type") or "")
    if spec["kind"] == "type":
        verb = _VERBS.get(trigger, f"reached {trigger[len('progress'):].lstrip('>=')}%")
        what = f"tasks of type {task_type}" if task_type else "tasks"
        title = f"{count} more {what} {verb}"
        message = f"{total} {what} {verb} {span}; the first {spec['threshold']} were notified one by one."
    else:
        title = f"{count} more notifications held back"
        message = (f"More than {spec['threshold']} notifications arrived {span}; "
                   f"{count} of them are summarised here.")
    if task_ids:
        shown = ", ".join(task_ids[:10])
        more = f" and {count - 10} more" if count > 10 else ""
        message += f" Tasks: {shown}{more}."
    metadata = {"digest": True, "count": count, "total": total, "window_start": t0.isoformat(),
                "window_end": t1.isoformat(), "scope": spec["kind"], "rule": spec.get("rule"),
                "trigger": trigger or None, "task_type": task_type or None, "task_ids": list(task_ids[:50])}
    channels = tuple(spec.get("channels") or ("websocket",))
    return NewNotification(user_id=spec.get("user_id") or None, title=title[:MAX_TITLE], message=message,
                           type=str(spec.get("type") or "info"), priority=str(spec.get("priority") or "normal"),
                           channels=channels, task_id=None, action_url=spec.get("public_url") or None,
                           metadata=metadata, dedup_key=f"digest:{key}:{total}", origin="rule")


# -- creating notifications (sync) ------------------------------------------------------------------
def pair_inserted(items: Sequence[NewNotification], rows: Sequence[Any]) -> list[Any | None]:
    """The stored row of each item, in item order, from an :func:`insert_notifications` result;
    ``None`` where the item's ``dedup_key`` was already stored (the caller looks it up)."""
    by_key = {r.dedup_key: r for r in rows if r.dedup_key is not None}
    # Sequence values are drawn in VALUES order, so rows without a key pair up with items by id.
    fresh = iter(sorted((r for r in rows if r.dedup_key is None), key=lambda r: r.id))
    return [next(fresh) if it.dedup_key is None else by_key.get(it.dedup_key) for it in items]


def queue_entries(records: Iterable[NotificationRecord], now: float) -> dict[str, float]:
    """Delivery-queue members for every channel of ``records`` that is still ``pending``."""
    return {due_member(r.id, ch): now for r in records for ch in r.channels
            if (r.delivery.get(ch) or {}).get("status", "pending") == "pending"}


def create_notifications(engine: Engine, redis_client: Any, prefix: str,
                         items: Sequence[NewNotification]) -> list[NotificationRecord]:
    """Store ``items`` in one transaction (all or nothing) and queue their delivery.

    The gateway's notifier delivers every channel, ``websocket`` included (it publishes the
    ``notification`` event the feed pushes to ``user:<id>``). If Redis cannot be reached the
    rows stay ``pending`` and a gateway queues them on its next sweep.
    An item whose ``dedup_key`` is already stored returns the stored notification.
    """
    if not items:
        return []
    with engine.begin() as conn:
        paired = pair_inserted(items, list(conn.execute(insert_notifications(items))))
        rows = [row if row is not None else conn.execute(notification_by_dedup(it.dedup_key or "")).one()
                for it, row in zip(items, paired, strict=True)]
    records = [notification_record(r) for r in rows]
    queue = queue_entries(records, time.time())
    if queue:
        try:
            redis_client.zadd(due_key(prefix), queue, nx=True)
        except Exception as exc:  # redis errors and OSError: the gateway's sweep queues them later
            logger.warning("notifications stored but not queued (%s); a gateway will queue them", exc)
    return records
