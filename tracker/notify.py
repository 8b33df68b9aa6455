"""Notifications: rules, templates, burst digests and the creation of notification rows.

Everything here is pure or synchronous so it can be tested on its own and shared by
``Tracker.notify`` (sync) and the gateway's notifier (async):

* :func:`parse_rules` validates ``tracker_notifications`` with clear errors, task rules and
  aggregate rules (:class:`Condition`: ``failure_rate>N%``, ``queue_depth>N``, ``no_workers``, which
  the gateway's sweeper evaluates, see :mod:`tracker.alerts`);
* :class:`Rule` matches stream events (``failed``, ``progress>=50``, ...) against task fields
  and renders the title/message templates;
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

import fnmatch
import hashlib
import json
import logging
import math
import re
import string
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine

from tracker import queries as q
from tracker.events import Event
from tracker.records import NotificationRecord, notification_record
from tracker.vocabulary import EVENT_TRIGGERS, TERMINAL, TRIGGERS, notify_burst_key, notify_digests_key, notify_due_key

__all__ = [
    "CHANNELS", "ORIGINS", "PRIORITIES", "TYPES", "TRIGGERS", "TEMPLATE_FIELDS", "DELIVERY_STATUSES",
    "AGGREGATES", "Trigger", "Condition", "Rule", "NewNotification", "BurstScope",
    "parse_rules", "rule_by_id", "triggers_of", "task_context", "render", "check_template", "dedup_key",
    "check_notification", "check_notifications", "check_action_url", "single_line", "initial_delivery",
    "insert_notifications", "delivery_update",
    "notification_record",
    "due_key", "digests_key", "due_member", "parse_due_member", "backoff_delay",
    "window_start", "burst_scopes", "digest_notification", "create_notifications", "pair_inserted",
    "queue_entries", "notification_by_dedup",
]

logger = logging.getLogger("tracker.notify")

CHANNELS = ("websocket", "email", "slack", "webhook")
#: Who made a notification (``tracker_notifications.origin``), most trusted first.
ORIGINS = ("rule", "api", "rest")
PRIORITIES = ("urgent", "high", "normal", "low")
TYPES = ("info", "success", "warning", "error", "progress")
DELIVERY_STATUSES = ("pending", "sent", "failed", "retrying")

# EVENT_TRIGGERS (stream event type -> the trigger name a rule's ``on`` uses) and TRIGGERS are the
# vocabulary's (tracker.vocabulary), imported above and kept here by name.
#: Aggregate conditions a rule's ``on`` may hold instead of task triggers.
AGGREGATES = ("failure_rate", "queue_depth", "no_workers")

_DEFAULT_TYPE = {"completed": "success", "failed": "error", "retry": "warning", "stalled": "warning",
                 "cancelled": "warning", "started": "info", "paused": "info", "resumed": "info",
                 "progress": "progress"}
_DEFAULT_PRIORITY = {"failed": "high", "stalled": "high"}
_DEFAULT_TITLE = {
    "completed": "Task {task_name} completed",
    "failed": "Task {task_name} failed",
    "retry": "Task {task_name} is being retried (retry {retries})",
    "stalled": "Task {task_name} stalled",
    "cancelled": "Task {task_name} was cancelled",
    "started": "Task {task_name} started",
    "paused": "Task {task_name} paused",
    "resumed": "Task {task_name} resumed",
    "progress": "Task {task_name} reached {threshold}%",
}
_DEFAULT_MESSAGE = {
    "completed": "Task {task_id} finished{duration_text}.",
    "failed": "{error_type}: {error_message}",
    "retry": "{error_type}: {error_message}",
    "stalled": "Task {task_id} has reported no progress for a while (at {progress}%).",
    "cancelled": "Task {task_id} was cancelled at {progress}%.",
    "started": "Task {task_id} started on {worker}.",
    "paused": "Task {task_id} paused at {progress}%.",
    "resumed": "Task {task_id} resumed at {progress}%.",
    "progress": "Task {task_id} is at {progress}%{step_text}.",
}
#: Names a title/message/action_url template may use, e.g. ``"{task_name} failed: {error_message}"``.
TEMPLATE_FIELDS = frozenset({
    "task_id", "task_name", "name", "task_type", "user_id", "status", "progress", "current_step", "step_text",
    "error_type", "error_message", "retries", "queue", "worker", "tags", "duration", "duration_text", "event",
    "trigger", "threshold", "url", "public_url", "priority",
    # aggregate alerts: the measured value, the rule's window (seconds) and id
    "value", "window", "rule",
})
_RULE_KEYS = frozenset({
    "id", "name", "on", "channels", "priority", "type", "task_types", "tags", "users", "title", "message",
    "action_url", "email_to", "slack_webhook_url", "webhook_url", "digest",
    "window", "min_tasks", "queues",
})
#: Keys only aggregate rules take, and task-rule keys they do not.
_AGGREGATE_KEYS = frozenset({"window", "min_tasks", "queues"})
_TASK_ONLY_KEYS = frozenset({"tags", "digest"})
_THRESHOLD = re.compile(r"progress\s*(>=|>)\s*(\d+(?:\.\d+)?)\s*%?")
_FAILURE_RATE = re.compile(r"failure_rate\s*>\s*(\d+(?:\.\d+)?)\s*%")
_QUEUE_DEPTH = re.compile(r"queue_depth\s*>\s*(\d+)")
DEFAULT_WINDOW = 300.0
DEFAULT_MIN_TASKS = 10
MAX_WINDOW = 7 * 86_400.0
MAX_TITLE = 500
MAX_MESSAGE = 10_000


# -- rules ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Trigger:
    """What fired a rule: a status trigger (``failed``) or a progress threshold (``progress>=50``)."""

    name: str
    threshold: float | None = None
    strict: bool = False

    @property
    def label(self) -> str:
        if self.threshold is None:
            return self.name
        return f"progress{'>' if self.strict else '>='}{_num(self.threshold)}"

    def reached(self, progress: float) -> bool:
        assert self.threshold is not None
        return progress > self.threshold if self.strict else progress >= self.threshold


@dataclass(frozen=True, slots=True)
class Condition:
    """An aggregate condition: ``failure_rate>N%`` (``threshold`` in percent), ``queue_depth>N``
    or ``no_workers``. ``label`` is the condition as the rule wrote it (``metadata.trigger``)."""

    kind: str
    threshold: float | None = None
    label: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated entry of ``tracker_notifications``: a task rule (``triggers``) or an
    aggregate rule (``conditions``; ``users`` are then its in-app recipients, not a filter)."""

    id: str
    triggers: tuple[Trigger, ...]
    channels: tuple[str, ...] = ("websocket",)
    priority: str | None = None
    type: str | None = None
    task_types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    title: str | None = None
    message: str | None = None
    action_url: str | None = None
    email_to: tuple[str, ...] = ()
    slack_webhook_url: str | None = None
    webhook_url: str | None = None
    #: ``None``: the configured default; ``(0, 0)``: no digest for this rule.
    digest: tuple[float, int] | None = None
    conditions: tuple[Condition, ...] = ()
    #: Aggregate rules: seconds looked back (failure_rate) or without a worker (no_workers).
    window: float = DEFAULT_WINDOW
    #: Aggregate rules: finished tasks a failure rate needs in its window.
    min_tasks: int = DEFAULT_MIN_TASKS
    queues: tuple[str, ...] = ()

    def triggers_for(self, event: Event) -> list[Trigger]:
        """The triggers of this rule an event fires (before looking at the task)."""
        name = EVENT_TRIGGERS.get(event.type)
        if name is not None:
            return [t for t in self.triggers if t.name == name]
        if event.type == "task.progress":
            p = event.data.get("progress")
            if isinstance(p, (int, float)) and not isinstance(p, bool):
                return [t for t in self.triggers if t.threshold is not None and t.reached(float(p))]
        return []

    def applies(self, ctx: Mapping[str, Any]) -> bool:
        """Whether the task (template context from :func:`task_context`) passes the rule's filters."""
        if self.task_types:
            kind = ctx.get("task_type") or ""
            if not any(fnmatch.fnmatchcase(kind, pattern) for pattern in self.task_types):
                return False
        if self.tags and not set(self.tags) & set(ctx.get("_tags") or ()):
            return False
        if self.users and ctx.get("user_id") not in self.users:
            return False
        return True

    def build(self, trigger: Trigger, ctx: Mapping[str, Any], key: str, event: Event) -> NewNotification:
        """The notification this rule makes for ``trigger`` on the task described by ``ctx``."""
        values = dict(ctx)
        values["trigger"] = trigger.label
        values["threshold"] = _num(trigger.threshold) if trigger.threshold is not None else ""
        priority = self.priority or _DEFAULT_PRIORITY.get(trigger.name, "normal")
        values["priority"] = priority
        title = render(self.title or _DEFAULT_TITLE[trigger.name], values, _DEFAULT_TITLE[trigger.name])
        message = render(self.message or _DEFAULT_MESSAGE[trigger.name], values, _DEFAULT_MESSAGE[trigger.name])
        url = render(self.action_url, values, "") if self.action_url else (values.get("url") or "")
        if url and not _is_http_url(url):
            url = ""  # a template filled with task fields must not become a javascript: link
        metadata = {"rule": self.id, "trigger": trigger.label, "event": event.type, "event_id": event.id,
                    "task_type": values.get("task_type") or None}
        return NewNotification(
            user_id=values.get("user_id") or None, title=title[:MAX_TITLE] or trigger.label,
            message=message[:MAX_MESSAGE], type=self.type or _DEFAULT_TYPE[trigger.name], priority=priority,
            channels=self.channels, task_id=values.get("task_id") or None, action_url=url or None,
            metadata=metadata, dedup_key=key, origin="rule")


def _num(value: float) -> str:
    return f"{value:g}"


def _str_list(where: str, name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where}: {name!r} must be a list of non-empty strings")
    return tuple(value)


def _url(where: str, name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"https?://[^\s/]+", value):
        raise ValueError(f"{where}: {name!r} must be an http(s) URL")
    return value


def _parse_trigger(where: str, raw: Any) -> Trigger:
    if not isinstance(raw, str):
        raise ValueError(f"{where}: every 'on' entry must be a string, got {raw!r}")
    text = raw.strip().lower()
    if text.startswith("task."):
        text = text[5:]
    if text in EVENT_TRIGGERS.values():
        return Trigger(text)
    m = _THRESHOLD.fullmatch(text)
    if m:
        value = float(m.group(2))
        if not 0 <= value <= 100:
            raise ValueError(f"{where}: progress threshold {raw!r} must be between 0 and 100")
        return Trigger("progress", value, m.group(1) == ">")
    raise ValueError(f"{where}: unknown trigger {raw!r}; use one of {', '.join(EVENT_TRIGGERS.values())} "
                     "or a progress threshold such as 'progress>=50', or an aggregate condition "
                     "('failure_rate>50%', 'queue_depth>100', 'no_workers')")


def _parse_condition(where: str, raw: str) -> Condition | None:
    """An aggregate condition, ``None`` when ``raw`` names none (then it is a task trigger)."""
    label = raw.strip()
    text = label.lower()
    if not text.startswith(AGGREGATES):
        return None
    if text == "no_workers":
        return Condition("no_workers", None, label)
    m = _FAILURE_RATE.fullmatch(text)
    if m:
        value = float(m.group(1))
        if not 0 <= value < 100:
            raise ValueError(f"{where}: {raw!r}: the failure rate threshold must be at least 0% and below 100%")
        return Condition("failure_rate", value, label)
    m = _QUEUE_DEPTH.fullmatch(text)
    if m:
        return Condition("queue_depth", float(m.group(1)), label)
    raise ValueError(f"{where}: bad aggregate condition {raw!r}; write 'failure_rate>N%' (e.g. 'failure_rate>50%'), "
                     "'queue_depth>N' (e.g. 'queue_depth>100') or 'no_workers'")


def _parse_aggregate(where: str, item: Mapping[str, Any], conditions: tuple[Condition, ...]) -> dict[str, Any]:
    """The aggregate-only fields of a rule, checked against the conditions it holds."""
    misplaced = sorted(k for k in _TASK_ONLY_KEYS if item.get(k) is not None)
    if misplaced:
        raise ValueError(f"{where}: {', '.join(map(repr, misplaced))} only for task triggers, "
                         "not for aggregate conditions")
    kinds = {c.kind for c in conditions}
    window = item.get("window", DEFAULT_WINDOW)
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 < window <= MAX_WINDOW:
        raise ValueError(f"{where}: 'window' must be a number of seconds in (0, {MAX_WINDOW:g}]")
    min_tasks = item.get("min_tasks", DEFAULT_MIN_TASKS)
    if isinstance(min_tasks, bool) or not isinstance(min_tasks, int) or min_tasks < 1:
        raise ValueError(f"{where}: 'min_tasks' must be a positive integer")
    task_types = _str_list(where, "task_types", item.get("task_types"))
    queues = _str_list(where, "queues", item.get("queues"))
    if task_types and "failure_rate" not in kinds:
        raise ValueError(f"{where}: 'task_types' filters failure_rate only")
    if queues and not kinds & {"failure_rate", "queue_depth"}:
        raise ValueError(f"{where}: 'queues' filters failure_rate and queue_depth only")
    return {"window": float(window), "min_tasks": min_tasks, "task_types": task_types, "queues": queues}


def _parse_digest(where: str, raw: Any) -> tuple[float, int] | None:
    if raw is None or raw is True:
        return None
    if raw is False:
        return (0.0, 0)
    if not isinstance(raw, Mapping) or set(raw) - {"window", "threshold"}:
        raise ValueError(f"{where}: 'digest' must be false or {{'window': seconds, 'threshold': count}}")
    window, threshold = raw.get("window", 60.0), raw.get("threshold", 5)
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 < window <= 86_400:
        raise ValueError(f"{where}: digest window must be a number of seconds in (0, 86400]")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ValueError(f"{where}: digest threshold must be a non-negative integer")
    return (float(window), threshold)


def parse_rules(raw: Any) -> list[Rule]:
    """Validate ``tracker_notifications`` (a list of dicts, or its JSON text)."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"tracker_notifications: not valid JSON ({exc})") from None
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        raise ValueError("tracker_notifications must be a list of rules (dicts)")
    rules: list[Rule] = []
    for i, item in enumerate(raw):
        where = f"tracker_notifications[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: a rule must be a dict, got {type(item).__name__}")
        unknown = set(item) - _RULE_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                             f"allowed: {', '.join(sorted(_RULE_KEYS))}")
        rule_id = item.get("id", item.get("name", f"rule{i}"))
        if not isinstance(rule_id, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", rule_id):
            raise ValueError(f"{where}: 'id' must be 1-64 letters, digits, '_', '.' or '-'")
        on = item.get("on")
        if isinstance(on, str):
            on = [on]
        if not isinstance(on, (list, tuple)) or not on:
            raise ValueError(f"{where}: 'on' must list at least one trigger, e.g. ['failed']")
        if not all(isinstance(t, str) for t in on):
            raise ValueError(f"{where}: every 'on' entry must be a string")
        parsed = [(t, _parse_condition(where, t)) for t in on]
        conditions = tuple(dict.fromkeys(c for _t, c in parsed if c is not None))
        triggers = tuple(dict.fromkeys(_parse_trigger(where, t) for t, c in parsed if c is None))
        if conditions and triggers:
            raise ValueError(f"{where}: 'on' mixes task triggers and aggregate conditions "
                             "(failure_rate, queue_depth, no_workers); put them in separate rules")
        if conditions:
            extra = _parse_aggregate(where, item, conditions)
        else:
            stray = sorted(k for k in _AGGREGATE_KEYS if k in item)
            if stray:
                raise ValueError(f"{where}: {', '.join(map(repr, stray))} only for aggregate conditions "
                                 "(failure_rate>N%, queue_depth>N, no_workers)")
            extra = {"task_types": _str_list(where, "task_types", item.get("task_types"))}
        channels = _str_list(where, "channels", item.get("channels", ["websocket"]))
        if not channels:
            raise ValueError(f"{where}: 'channels' must not be empty")
        for ch in channels:
            if ch not in CHANNELS:
                raise ValueError(f"{where}: unknown channel {ch!r}; use {', '.join(CHANNELS)}")
        priority = item.get("priority")
        if priority is not None and priority not in PRIORITIES:
            raise ValueError(f"{where}: priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        kind = item.get("type")
        if kind is not None and kind not in TYPES:
            raise ValueError(f"{where}: type must be one of {', '.join(TYPES)}, got {kind!r}")
        for name in ("title", "message", "action_url"):
            if item.get(name) is not None:
                check_template(f"{where}: {name!r}", item[name])
        email_to = _str_list(where, "email_to", item.get("email_to"))
        for address in email_to:
            if "@" not in address:
                raise ValueError(f"{where}: {address!r} in 'email_to' is not an e-mail address")
        rules.append(Rule(
            id=rule_id, triggers=triggers, conditions=conditions, channels=tuple(dict.fromkeys(channels)),
            priority=priority, type=kind, **extra,
            tags=_str_list(where, "tags", item.get("tags")), users=_str_list(where, "users", item.get("users")),
            title=item.get("title"), message=item.get("message"), action_url=item.get("action_url"),
            email_to=email_to, slack_webhook_url=_url(where, "slack_webhook_url", item.get("slack_webhook_url")),
            webhook_url=_url(where, "webhook_url", item.get("webhook_url")),
            digest=_parse_digest(where, item.get("digest"))))
    ids = [r.id for r in rules]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"tracker_notifications: rule ids must be unique, repeated: {', '.join(dupes)}")
    return rules


def rule_by_id(rules: Sequence[Rule], rule_id: Any) -> Rule | None:
    for rule in rules:
        if rule.id == rule_id:
            return rule
    return None


def triggers_of(rules: Sequence[Rule]) -> frozenset[str]:
    """Stream event types any rule listens to (the notifier skips every other event unread)."""
    types = {ev for ev, name in EVENT_TRIGGERS.items() for r in rules for t in r.triggers if t.name == name}
    if any(t.threshold is not None for r in rules for t in r.triggers):
        types.add("task.progress")
    return frozenset(types)


# -- templates -------------------------------------------------------------------------------------
_SAMPLE: dict[str, Any] = {name: "x" for name in TEMPLATE_FIELDS} | {"progress": 50.0, "retries": 1}


def check_template(where: str, template: Any) -> str:
    """Raise a clear ValueError unless ``template`` is ``str.format`` text over :data:`TEMPLATE_FIELDS`."""
    if not isinstance(template, str):
        raise ValueError(f"{where} must be a string")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{where}: bad template {template!r} ({exc})") from None
    for _text, name, _spec, _conv in parsed:
        if name is None:
            continue
        # Only plain names: attribute and index access ("{x.__class__}") could reach anything.
        if name not in TEMPLATE_FIELDS:
            raise ValueError(f"{where}: unknown field {{{name}}} in {template!r}; "
                             f"available: {', '.join(sorted(TEMPLATE_FIELDS))}")
    try:
        template.format_map(_SAMPLE)
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"{where}: bad template {template!r} ({exc})") from None
    return template


def render(template: str, values: Mapping[str, Any], fallback: str = "") -> str:
    """Fill ``template`` (validated by :func:`check_template`); a value that does not fit its
    format spec falls back to ``fallback`` rather than losing the notification."""
    safe = {k: ("" if values.get(k) is None else values.get(k)) for k in TEMPLATE_FIELDS}
    try:
        return template.format_map(safe)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        try:
            return fallback.format_map(safe)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return fallback


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
@dataclass(frozen=True, slots=True)
class NewNotification:
    """A validated notification about to be stored."""

    user_id: str | None
    title: str
    message: str = ""
    type: str = "info"
    priority: str = "normal"
    channels: tuple[str, ...] = ("websocket",)
    task_id: str | None = None
    action_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    dedup_key: str | None = None
    #: One of :data:`ORIGINS`; set by the code that builds the notification, never from input.
    origin: str = "api"

    def values(self) -> dict[str, Any]:
        """Column values for ``tracker_notifications`` (delivery starts ``pending`` on every channel)."""
        return {"user_id": self.user_id, "title": self.title, "message": self.message, "type": self.type,
                "priority": self.priority, "channels": list(self.channels), "task_id": self.task_id,
                "action_url": self.action_url, "metadata": self.metadata,
                "delivery": initial_delivery(self.channels), "dedup_key": self.dedup_key, "origin": self.origin}


def _opt_text(name: str, value: Any, limit: int = 1000) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    if len(value) > limit:
        raise ValueError(f"{name} must be at most {limit} characters")
    return value


def check_notifications(items: Any, origin: str = "api") -> list[NewNotification]:
    """Validate a list of notification dicts (the :func:`check_notification` fields) in full
    before anything is stored: bad input raises ValueError/TypeError naming the item.
    ``origin`` (:data:`ORIGINS`) is the caller's to say: ``rest`` for client posts."""
    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {', '.join(ORIGINS)}")
    if isinstance(items, (str, bytes, Mapping)) or not hasattr(items, "__iter__"):
        raise TypeError("notifications must be a list of objects")
    checked = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TypeError(f"notification {i} must be an object")
        try:
            checked.append(replace(check_notification(**item), origin=origin))
        except TypeError as exc:
            if "unexpected keyword" in str(exc):
                raise ValueError(f"notification {i}: unknown field ({exc})") from None
            raise
    return checked


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def single_line(text: str) -> str:
    """``text`` with every run of control characters (CR, LF, tab, NUL, ...) made one space:
    a header such as an e-mail subject must be one line."""
    return " ".join(_CONTROL.sub(" ", text).split())


def _is_http_url(url: str) -> bool:
    if _CONTROL.search(url) or any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def check_action_url(url: Any) -> str | None:
    """``url`` if it is an absolute http(s) URL with a host (``None`` stays ``None``); anything
    else - ``javascript:``, ``data:``, relative paths, spaces - raises ValueError."""
    if url is None:
        return None
    if not isinstance(url, str) or len(url) > 2000:
        raise ValueError("action_url must be a string of at most 2000 characters")
    if not _is_http_url(url):
        raise ValueError("action_url must be an absolute http:// or https:// URL")
    return url


def check_notification(user_id: Any = None, title: Any = None, message: Any = "", type: Any = "info",
                       priority: Any = "normal", channels: Any = ("websocket",), task_id: Any = None,
                       action_url: Any = None, metadata: Any = None, dedup_key: Any = None) -> NewNotification:
    """Validate the fields of a custom notification (``Tracker.notify``, ``POST /notifications``)."""
    if not isinstance(title, str) or not title.strip():
        raise ValueError("title must be a non-empty string")
    if len(title) > MAX_TITLE:
        raise ValueError(f"title must be at most {MAX_TITLE} characters")
    if message is None:
        message = ""
    if not isinstance(message, str):
        raise TypeError("message must be a string")
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"message must be at most {MAX_MESSAGE} characters")
    if type not in TYPES:
        raise ValueError(f"type must be one of {', '.join(TYPES)}, got {type!r}")
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    if isinstance(channels, str):
        channels = [channels]
    if not isinstance(channels, (list, tuple)) or not channels:
        raise ValueError("channels must be a non-empty list")
    for ch in channels:
        if ch not in CHANNELS:
            raise ValueError(f"unknown channel {ch!r}; use {', '.join(CHANNELS)}")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TypeError("metadata must be a dict")
    try:
        metadata = json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable ({exc})") from None
    action_url = check_action_url(action_url)
    return NewNotification(user_id=_opt_text("user_id", user_id, 255), title=title, message=message, type=type,
                           priority=priority, channels=tuple(dict.fromkeys(channels)),
                           task_id=_opt_text("task_id", task_id, 255), action_url=action_url, metadata=metadata,
                           dedup_key=_opt_text("dedup_key", dedup_key, 500))


def initial_delivery(channels: Iterable[str]) -> dict[str, Any]:
    return {ch: {"status": "pending", "attempts": 0, "last_error": None, "delivered_at": None} for ch in channels}


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
