"""Aggregate alerts: rules on a failure rate, a queue's depth and worker presence.

A rule of ``tracker_notifications`` whose ``on`` holds aggregate conditions
(:class:`tracker.notify.Condition`) is not matched against task events: the gateway's sweeper
measures the store every pass (:mod:`webgate.notify.alerts`) and this module, which is pure, says what
the measurements mean:

* :func:`observe` turns :class:`Measurements` into one :class:`Observation` per rule, condition and
  scope (the queue, for ``queue_depth``): is the condition true now, and the measured value;
* :func:`alert_notifications` builds the notifications of an episode: in-app for each user of the
  rule's ``users``, and one notification for the rule's e-mail/Slack/webhook targets.

An **episode** is the time a condition stays true. It fires once, when it begins; it ends when
the condition is measured false, and only a new episode fires again. Each episode has an id
(the database clock in milliseconds when it began) that goes into the notifications'
``dedup_key``, so storing an episode's notifications twice stores them once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracker.notify import Condition, NewNotification, Rule, render

__all__ = [
    "ALERT_LOCK", "Measurements", "Observation", "failure_key", "aggregate_rules", "kinds_of", "glob_match",
    "observe", "episode_field", "state_key", "alert_notifications",
]

#: Advisory lock key of an alert pass ("trkA"): one gateway evaluates at a time. Not the health
#: sweep's own key, so that the two passes never make each other skip.
ALERT_LOCK = 0x74726B41

_TYPE = {"failure_rate": "error", "queue_depth": "warning", "no_workers": "error"}
_TITLE = {"failure_rate": "Failure rate {value}% is above {threshold}%",
          "queue_depth": "Queue {queue} has {value} messages waiting (above {threshold})",
          "no_workers": "No worker online for {value}s"}


def _num(value: float | None) -> str:
    return "" if value is None else f"{round(value, 1):g}"


@dataclass(frozen=True)
class Measurements:
    """What one pass measured; ``None`` where nothing was measured (no rule needs it, or no
    fresh sample exists).

    ``failure`` maps :func:`failure_key` to ``(finished, failed)``; ``depths`` is the latest
    sample of each queue; ``offline_for`` the seconds without any online worker.
    """

    failure: Mapping[tuple[float, tuple[str, ...], tuple[str, ...]], tuple[int, int]] = field(default_factory=dict)
    depths: Mapping[str, float] | None = None
    online: int | None = None
    offline_for: float | None = None


@dataclass(frozen=True)
class Observation:
    """One condition of one rule (for one queue) as measured now."""

    rule: Rule
    condition: Condition
    scope: str
    active: bool
    value: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def field(self) -> str:
        return episode_field(self.rule, self.condition, self.scope)


def failure_key(rule: Rule) -> tuple[float, tuple[str, ...], tuple[str, ...]]:
    """Rules with the same window and filters share one failure-rate query."""
    return (rule.window, rule.task_types, rule.queues)


def aggregate_rules(rules: Sequence[Rule]) -> list[Rule]:
    return [r for r in rules if r.conditions]


def kinds_of(rules: Sequence[Rule]) -> frozenset[str]:
    """The kinds of condition (``failure_rate``, ``queue_depth``, ``no_workers``) the rules use."""
    return frozenset(c.kind for r in rules for c in r.conditions)


def glob_match(patterns: Sequence[str], value: str) -> bool:
    """``*``/``?`` wildcards, as :func:`tracker.queries.glob_like` applies them in SQL."""
    for p in patterns:
        regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in p)
        if re.fullmatch(regex, value, re.DOTALL):
            return True
    return False


def observe(rules: Sequence[Rule], m: Measurements) -> Iterator[Observation]:
    """What the measurements say about every aggregate condition of ``rules``.

    A failure rate needs ``min_tasks`` finished tasks in the window; with fewer the condition is
    false (a quiet system has no failure rate to alarm on). A queue without a fresh sample and
    worker presence that was not measured give no observation: their episodes stay as they are.
    """
    for rule in rules:
        for cond in rule.conditions:
            threshold = cond.threshold or 0.0
            if cond.kind == "failure_rate":
                finished, failed = m.failure.get(failure_key(rule), (0, 0))
                rate = 100.0 * failed / finished if finished else 0.0
                yield Observation(rule, cond, "", finished >= rule.min_tasks and rate > threshold, round(rate, 2),
                                  {"failed": failed, "finished": finished, "window": rule.window,
                                   "min_tasks": rule.min_tasks})
            elif cond.kind == "queue_depth":
                for queue, depth in sorted((m.depths or {}).items()):
                    if rule.queues and not glob_match(rule.queues, queue):
                        continue
                    yield Observation(rule, cond, queue, depth > threshold, depth, {"queue": queue})
            elif cond.kind == "no_workers" and m.online is not None:
                offline = max(0.0, m.offline_for or 0.0) if m.online == 0 else 0.0
                yield Observation(rule, cond, "", m.online == 0 and offline >= rule.window, round(offline, 1),
                                  {"online": m.online, "window": rule.window})


def episode_field(rule: Rule, condition: Condition, scope: str = "") -> str:
    """Name of a condition's episode state (a field of the :func:`state_key` hash)."""
    return f"{rule.id}|{condition.label}|{scope}"


def state_key(prefix: str) -> str:
    """Redis hash of the open episodes (field -> JSON) and the pass counter ``#passes``."""
    return f"{prefix}:alerts"


def _default_message(obs: Observation) -> str:
    d = obs.details
    kind = obs.condition.kind
    if kind == "failure_rate":
        where = []
        if obs.rule.task_types:
            where.append(f"task types {', '.join(obs.rule.task_types)}")
        if obs.rule.queues:
            where.append(f"queues {', '.join(obs.rule.queues)}")
        scope = f" ({'; '.join(where)})" if where else ""
        return (f"{d['failed']} of {d['finished']} tasks that finished in the last {_num(obs.rule.window)}s "
                f"failed{scope}.")
    if kind == "queue_depth":
        return f"{_num(obs.value)} messages are waiting in queue {obs.scope}."
    return f"No worker has been online for {_num(obs.value)}s; queued tasks are not being consumed."


def alert_notifications(obs: Observation, episode: str, public_url: str | None = None) -> list[NewNotification]:
    """The notifications of an episode that begins: in-app for each user of the rule's ``users``
    and one for its e-mail/Slack/webhook targets; without ``users`` one notification for all of
    the rule's channels. ``metadata.trigger`` is the condition as the rule wrote it."""
    rule, cond = obs.rule, obs.condition
    priority = rule.priority or "high"
    values = {"trigger": cond.label, "threshold": _num(cond.threshold), "value": _num(obs.value),
              "window": _num(rule.window), "queue": obs.scope, "rule": rule.id, "priority": priority,
              "public_url": public_url or "", "url": public_url or ""}
    title = render(rule.title or _TITLE[cond.kind], values, _TITLE[cond.kind])
    default_message = _default_message(obs)
    message = render(rule.message, values, default_message) if rule.message else default_message
    url = render(rule.action_url, values, "") if rule.action_url else (public_url or "")
    metadata: dict[str, Any] = {"rule": rule.id, "trigger": cond.label, "value": obs.value, "aggregate": cond.kind,
                                "threshold": cond.threshold, "episode": episode, **obs.details}
    scope = obs.scope if len(obs.scope) <= 100 else hashlib.sha1(obs.scope.encode()).hexdigest()
    base = f"alert:{rule.id}:{cond.label}:{scope}:{episode}"
    kind = rule.type or _TYPE[cond.kind]

    def one(user_id: str | None, channels: tuple[str, ...], who: str) -> NewNotification:
        return NewNotification(user_id=user_id, title=title[:500] or cond.label, message=message[:10_000],
                               type=kind, priority=priority, channels=channels, task_id=None,
                               action_url=url or None, metadata=dict(metadata), dedup_key=f"{base}:{who}"[:500])

    if not rule.users:
        return [one(None, rule.channels, "all")]
    items = [one(user, ("websocket",), f"user:{user}") for user in rule.users] if "websocket" in rule.channels else []
    targets = tuple(ch for ch in rule.channels if ch != "websocket")
    if targets:
        items.append(one(None, targets, "targets"))
    return items
