"""Pause, resume and cancel: one decision, applied from the Python API, REST, CLI and feed.

A control request sets ``{prefix}:control:{task_id}`` (``pause`` or ``cancel``; resume
deletes it). A running ``TrackedTask`` reads it at most every ``control_interval`` inside
``progress()``/``track()``/``checkpoint()``. A task still queued is also revoked through
Celery (when an app is known) and recorded ``cancelled`` at once.

Every flag is also listed in the sorted set ``{prefix}:controls`` (member: task id, score:
when it was set). Worker main processes follow it to discard a cancelled task when its
message arrives, even when no Celery app was at hand to revoke it; the sweeper uses it to
delete the flags of tasks that have ended, so no key outlives its task for long.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from tracker.plan import Call, Pipe, Plan, run_async, run_sync
from tracker.reporter import Reporter
from tracker.status import TERMINAL, Status
from tracker.vocabulary import CONTROL_TTL, control_key
from tracker.vocabulary import control_index_key as index_key

__all__ = ["ACTIONS", "ControlPlan", "plan", "apply_sync", "apply_async", "CONTROL_TTL", "control_key", "index_key"]

ACTIONS = ("pause", "resume", "cancel")
# CONTROL_TTL (a flag for a task that never runs again must not linger forever), control_key and
# index_key (the sorted set of task ids that have a flag) are the vocabulary's, imported above.


@dataclass(frozen=True)
class ControlPlan:
    allowed: bool
    reason: str = ""
    value: str | None = None  # what to store in the control key; None deletes it
    revoke: bool = False
    mark_cancelled: bool = False


def plan(status: str, action: str) -> ControlPlan:
    """What ``action`` means for a task currently in ``status``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    st = Status(status)
    if st in TERMINAL:
        return ControlPlan(False, f"task already {st.value}")
    if action == "pause":
        return ControlPlan(True, value="pause")
    if action == "resume":
        return ControlPlan(True, value=None)
    return ControlPlan(True, value="cancel", revoke=True, mark_cancelled=st is Status.PENDING)


def _write_flag(pipe: Any, prefix: str, task_id: str, value: str | None) -> None:
    """Queue the flag and its index entry on ``pipe`` (sync or asyncio pipeline alike)."""
    key = control_key(prefix, task_id)
    if value is None:
        pipe.delete(key)
        pipe.zrem(index_key(prefix), task_id)
    else:
        pipe.set(key, value, ex=CONTROL_TTL)
        pipe.zadd(index_key(prefix), {task_id: time.time()})


def _apply(prefix: str, task: Any, action: str, reporter: Reporter | None, celery_app: Any,
           terminate: bool) -> Plan[ControlPlan]:
    """The request, once: decide, write the flag, revoke through Celery, record a queued cancel."""
    p = plan(task.status, action)
    if not p.allowed:
        return p
    yield Pipe(partial(_write_flag, prefix=prefix, task_id=task.task_id, value=p.value), transaction=True)
    if p.revoke and celery_app is not None:
        # revoke() publishes a broadcast over the broker: a Call step keeps it off the event loop.
        yield Call(celery_app.control.revoke, (task.task_id,), {"terminate": terminate})
    if p.mark_cancelled and reporter is not None:
        reporter.status(task.task_id, "cancelled", user_id=task.user_id, reason="cancelled",
                        error_type="cancelled", error_message="cancelled before it started")
    return p


def apply_sync(redis: Any, prefix: str, task: Any, action: str, *, reporter: Reporter | None = None,
               celery_app: Any = None, terminate: bool = False) -> ControlPlan:
    """Carry out ``action`` on ``task`` (a ``TaskRecord``) with a synchronous Redis client."""
    return run_sync(_apply(prefix, task, action, reporter, celery_app, terminate), redis=redis)


async def apply_async(redis: Any, prefix: str, task: Any, action: str, *, reporter: Reporter | None = None,
                      celery_app: Any = None, terminate: bool = False) -> ControlPlan:
    """The same as :func:`apply_sync` with an asyncio Redis client."""
    return await run_async(_apply(prefix, task, action, reporter, celery_app, terminate), redis=redis)
