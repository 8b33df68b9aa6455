"""Notification rules (``tracker_notifications``): the pydantic model that validates them, and the
runtime objects the notifier matches events with.

A rule is a task rule (``on`` lists status triggers such as ``failed`` and progress thresholds
such as ``progress>=50``) or an aggregate rule (``on`` lists ``failure_rate>N%``,
``queue_depth>N`` or ``no_workers``, which the gateway's sweeper evaluates, see
:mod:`tracker.alerts`). :class:`RuleSpec` checks one entry as written; :func:`parse_rules` turns
the whole setting into frozen :class:`Rule` objects, or raises ValueError naming the rule and the
field. :class:`Rule` matches stream events against task fields and renders the title and message
templates (:func:`render` over :data:`TEMPLATE_FIELDS`).
"""

from __future__ import annotations

import fnmatch
import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from tracker.events import Event
from tracker.new_notification import (
    MAX_MESSAGE,
    MAX_TITLE,
    Channel,
    Kind,
    NewNotification,
    Priority,
    is_http_url,
)
from tracker.validation import error_messages
from tracker.vocabulary import EVENT_TRIGGERS

__all__ = ["AGGREGATES", "TEMPLATE_FIELDS", "DEFAULT_WINDOW", "DEFAULT_MIN_TASKS", "MAX_WINDOW", "Trigger",
           "Condition", "Rule", "Digest", "RuleSpec", "parse_rules", "rule_by_id", "triggers_of", "check_template",
           "render"]

#: Aggregate conditions a rule's ``on`` may hold instead of task triggers.
AGGREGATES = ("failure_rate", "queue_depth", "no_workers")
DEFAULT_WINDOW = 300.0
DEFAULT_MIN_TASKS = 10
MAX_WINDOW = 7 * 86_400.0

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
_THRESHOLD = re.compile(r"progress\s*(>=|>)\s*(\d+(?:\.\d+)?)\s*%?")
_FAILURE_RATE = re.compile(r"failure_rate\s*>\s*(\d+(?:\.\d+)?)\s*%")
_QUEUE_DEPTH = re.compile(r"queue_depth\s*>\s*(\d+)")


# -- runtime objects --------------------------------------------------------------------------------------
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
        """Whether the task (template context from ``tracker.notify.task_context``) passes the rule's filters."""
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
        if url and not is_http_url(url):
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


# -- templates ----------------------------------------------------------------------------------------------
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
        # Only plain names: attribute and index access ("{x.__class__}") could reach anything.
        if name is not None and name not in TEMPLATE_FIELDS:
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


# -- the rule model -------------------------------------------------------------------------------------------
def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _on_entry(raw: Any) -> Trigger | Condition:
    """One ``on`` entry: a status trigger, a progress threshold or an aggregate condition (a small
    grammar of its own, so parsed here rather than described by types)."""
    if not isinstance(raw, str):
        raise ValueError(f"every 'on' entry must be a string, got {raw!r}")
    label = raw.strip()
    text = label.lower()
    if text.startswith(AGGREGATES):
        if text == "no_workers":
            return Condition("no_workers", None, label)
        if m := _FAILURE_RATE.fullmatch(text):
            if not 0 <= float(m.group(1)) < 100:
                raise ValueError(f"{raw!r}: the failure rate threshold must be at least 0% and below 100%")
            return Condition("failure_rate", float(m.group(1)), label)
        if m := _QUEUE_DEPTH.fullmatch(text):
            return Condition("queue_depth", float(m.group(1)), label)
        raise ValueError(f"bad aggregate condition {raw!r}; write 'failure_rate>N%' (e.g. 'failure_rate>50%'), "
                         "'queue_depth>N' (e.g. 'queue_depth>100') or 'no_workers'")
    text = text.removeprefix("task.")
    if text in EVENT_TRIGGERS.values():
        return Trigger(text)
    if m := _THRESHOLD.fullmatch(text):
        if not 0 <= float(m.group(2)) <= 100:
            raise ValueError(f"progress threshold {raw!r} must be between 0 and 100")
        return Trigger("progress", float(m.group(2)), m.group(1) == ">")
    raise ValueError(f"unknown trigger {raw!r}; use one of {', '.join(EVENT_TRIGGERS.values())} "
                     "or a progress threshold such as 'progress>=50', or an aggregate condition "
                     "('failure_rate>50%', 'queue_depth>100', 'no_workers')")


def _parse_on(value: Any) -> tuple[Trigger | Condition, ...]:
    value = _one_or_many(value)
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("'on' must list at least one trigger, e.g. ['failed']")
    return tuple(dict.fromkeys(_on_entry(entry) for entry in value))


def _template(value: str, info: ValidationInfo) -> str:
    return check_template(repr(info.field_name), value)


def _email(address: str) -> str:
    if "@" not in address:
        raise ValueError(f"{address!r} is not an e-mail address")
    return address


def _rule_id(value: str, info: ValidationInfo) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", value):
        raise ValueError(f"{info.field_name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    return value


def _hook_url(url: str, info: ValidationInfo) -> str:
    if not is_http_url(url):
        raise ValueError(f"{info.field_name!r} must be an http(s) URL")
    return url


def _digest_flag(value: Any) -> Any:
    """``true`` (or absent): the configured default; ``false``: no digest for this rule."""
    if value is None or value is True:
        return None
    if value is False:
        return Digest.model_construct(window=0.0, threshold=0)
    return value


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


Name = Annotated[str, Field(min_length=1)]
Names = Annotated[tuple[Name, ...], BeforeValidator(_one_or_many)]
Template = Annotated[str, AfterValidator(_template)]
HookUrl = Annotated[str, AfterValidator(_hook_url)]
RuleId = Annotated[str, AfterValidator(_rule_id)]
Seconds = Annotated[float, Field(strict=True, gt=0)]


class Digest(BaseModel):
    """A rule's own burst digest: after ``threshold`` notifications in ``window`` seconds, the rest
    of the window is summed up in one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: Annotated[Seconds, Field(le=86_400)] = 60.0
    threshold: Annotated[int, Field(strict=True, ge=0)] = 5


#: Keys only aggregate rules take, and task-rule keys they do not.
_AGGREGATE_KEYS = frozenset({"window", "min_tasks", "queues"})
_TASK_ONLY_KEYS = frozenset({"tags", "digest"})


class RuleSpec(BaseModel):
    """One entry of ``tracker_notifications`` as written (see DESIGN.md "Notifications" and the
    aggregate alerts); :meth:`rule` makes the runtime :class:`Rule`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: RuleId | None = None
    #: Another spelling of ``id``.
    name: RuleId | None = None
    on: Annotated[tuple[Trigger | Condition, ...], BeforeValidator(_parse_on)]
    channels: Annotated[tuple[Channel, ...], BeforeValidator(_one_or_many), Field(min_length=1),
                        AfterValidator(_unique)] = ("websocket",)
    priority: Priority | None = None
    type: Kind | None = None
    task_types: Names = ()
    tags: Names = ()
    users: Names = ()
    title: Template | None = None
    message: Template | None = None
    action_url: Template | None = None
    email_to: Annotated[tuple[Annotated[str, AfterValidator(_email)], ...], BeforeValidator(_one_or_many)] = ()
    slack_webhook_url: HookUrl | None = None
    webhook_url: HookUrl | None = None
    digest: Annotated[Digest | None, BeforeValidator(_digest_flag)] = None
    window: Annotated[Seconds, Field(le=MAX_WINDOW)] = DEFAULT_WINDOW
    min_tasks: Annotated[int, Field(strict=True, ge=1)] = DEFAULT_MIN_TASKS
    queues: Names = ()

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        """A rule is a task rule or an aggregate rule, and takes only its kind's keys."""
        conditions = [c for c in self.on if isinstance(c, Condition)]
        given = self.model_fields_set
        if not conditions:
            stray = sorted(k for k in _AGGREGATE_KEYS if k in given)
            if stray:
                raise ValueError(f"{', '.join(map(repr, stray))} only for aggregate conditions "
                                 "(failure_rate>N%, queue_depth>N, no_workers)")
            return self
        if len(conditions) != len(self.on):
            raise ValueError("'on' mixes task triggers and aggregate conditions "
                             "(failure_rate, queue_depth, no_workers); put them in separate rules")
        misplaced = sorted(k for k in _TASK_ONLY_KEYS if getattr(self, k) or (k == "digest" and k in given))
        if misplaced:
            raise ValueError(f"{', '.join(map(repr, misplaced))} only for task triggers, "
                             "not for aggregate conditions")
        kinds = {c.kind for c in conditions}
        if self.task_types and "failure_rate" not in kinds:
            raise ValueError("'task_types' filters failure_rate only")
        if self.queues and not kinds & {"failure_rate", "queue_depth"}:
            raise ValueError("'queues' filters failure_rate and queue_depth only")
        return self

    def rule(self, index: int) -> Rule:
        """The runtime rule; ``index`` names a rule that has neither ``id`` nor ``name``."""
        digest = None if self.digest is None else (float(self.digest.window), self.digest.threshold)
        return Rule(
            id=self.id or self.name or f"rule{index}",
            triggers=tuple(t for t in self.on if isinstance(t, Trigger)),
            conditions=tuple(c for c in self.on if isinstance(c, Condition)),
            channels=self.channels, priority=self.priority, type=self.type, task_types=self.task_types,
            tags=self.tags, users=self.users, title=self.title, message=self.message, action_url=self.action_url,
            email_to=self.email_to, slack_webhook_url=self.slack_webhook_url, webhook_url=self.webhook_url,
            digest=digest, window=float(self.window), min_tasks=self.min_tasks, queues=self.queues)


_SPECS = TypeAdapter(list[RuleSpec])


def _where(raw: Sequence[Any], index: Any) -> str:
    """``tracker_notifications[2]``, with the rule's id when it has one."""
    where = f"tracker_notifications[{index}]"
    item = raw[index] if isinstance(index, int) and index < len(raw) else None
    rule_id = (item.get("id") or item.get("name")) if isinstance(item, Mapping) else None
    return f"{where} (rule {rule_id!r})" if isinstance(rule_id, str) else where


def parse_rules(raw: Any) -> list[Rule]:
    """Validate ``tracker_notifications`` (a list of rule dicts, one dict, or its JSON text):
    ValueError names the rule and the field of the first problems."""
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
    try:
        specs = _SPECS.validate_python(list(raw))
    except ValidationError as exc:
        raise ValueError(error_messages(exc, item=lambda index: _where(raw, index))) from None
    rules = [spec.rule(i) for i, spec in enumerate(specs)]
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
