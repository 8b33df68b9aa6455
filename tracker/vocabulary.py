"""The project's vocabulary, written once: statuses, event types, notification triggers, Redis keys
and WebSocket close codes.

Everything that names a status, an event or a key takes it from here: the check constraints and
partial indexes of :mod:`tracker.models`, retention, the query layer, the CLI, the notifier and the
gateway; the dashboard reads :func:`as_json` from ``GET /api/v1/progress/vocabulary`` instead of a
copy of its own. A leaf module: it imports nothing of the project.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any

__all__ = [
    "Status", "STATUSES", "TERMINAL", "ACTIVE", "OPEN", "status_sql_list",
    "EVENT_TYPES", "TERMINAL_EVENTS", "STATUS_EVENTS", "EVENT_STATUS",
    "EVENT_TRIGGERS", "TRIGGERS",
    "CONTROL_TTL", "stream_key", "control_key", "control_index_key", "notifier_group",
    "notify_due_key", "notify_digests_key", "notify_burst_key",
    "CloseCode", "as_json",
    "HEADER_KEYS", "RERUN_HEADER", "context_headers",
]


# -- statuses ----------------------------------------------------------------------------------------
class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Every status, in the order of a task's life (tables and counts list them so).
STATUSES: tuple[Status, ...] = tuple(Status)
#: A task in one of these has ended: nothing moves it any more.
TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
#: A task in one of these holds a worker slot (health watches them).
ACTIVE = frozenset({Status.RUNNING, Status.PAUSED})
#: Not ended yet: queued or active.
OPEN = frozenset(STATUSES) - TERMINAL


def status_sql_list(statuses: frozenset[Status] | tuple[Status, ...] = STATUSES) -> str:
    """``('a','b')`` for a check constraint or a partial index (the order of :data:`STATUSES`)."""
    return "(" + ",".join(f"'{s.value}'" for s in STATUSES if s in statuses) + ")"


# -- event types -------------------------------------------------------------------------------------
EVENT_TYPES = frozenset(
    {
        "task.pending",
        "task.started",
        "task.progress",
        "task.log",
        "task.metric",
        "task.paused",
        "task.resumed",
        "task.retry",
        "task.completed",
        "task.failed",
        "task.cancelled",
        "task.stalled",
        "notification",
    }
)
TERMINAL_EVENTS = frozenset({"task.completed", "task.failed", "task.cancelled"})
#: Status -> the event a change to it publishes.
STATUS_EVENTS: dict[str, str] = {
    "pending": "task.pending",
    "running": "task.started",
    "paused": "task.paused",
    "completed": "task.completed",
    "failed": "task.failed",
    "cancelled": "task.cancelled",
}
#: Event type -> the status a client shows after it (a retry waits as pending, a resume runs).
EVENT_STATUS: dict[str, str] = {
    **{event: status for status, event in STATUS_EVENTS.items()},
    "task.retry": "pending",
    "task.resumed": "running",
}

# -- notification triggers ---------------------------------------------------------------------------
#: Stream event type -> the trigger name a rule's ``on`` uses.
EVENT_TRIGGERS: dict[str, str] = {
    "task.completed": "completed",
    "task.failed": "failed",
    "task.retry": "retry",
    "task.stalled": "stalled",
    "task.cancelled": "cancelled",
    "task.started": "started",
    "task.paused": "paused",
    "task.resumed": "resumed",
}
#: Every trigger name (``progress`` fires on a threshold, not on an event type).
TRIGGERS: tuple[str, ...] = (*EVENT_TRIGGERS.values(), "progress")

# -- Redis keys --------------------------------------------------------------------------------------
#: Lifetime of a control flag (and how far back a worker follows the flag index).
CONTROL_TTL = 7 * 86400


def stream_key(prefix: str) -> str:
    """The event stream every publisher appends to."""
    return f"{prefix}:events"


def control_key(prefix: str, task_id: str) -> str:
    """A task's control flag (``pause``/``cancel``)."""
    return f"{prefix}:control:{task_id}"


def control_index_key(prefix: str) -> str:
    """Sorted set of task ids with a control flag, scored by when it was set."""
    return f"{prefix}:controls"


def notifier_group(prefix: str) -> str:
    """The notifier's consumer group on the event stream."""
    return f"{prefix}:notifier"


def notify_due_key(prefix: str) -> str:
    """Sorted set of ``"<id>:<channel>"`` deliveries, scored by when they are due."""
    return f"{prefix}:notify:due"


def notify_digests_key(prefix: str) -> str:
    return f"{prefix}:notify:digests"


def notify_burst_key(prefix: str, kind: str, digest: str, window_start_ms: int) -> str:
    return f"{prefix}:notify:burst:{kind}:{digest}:{window_start_ms}"


# -- WebSocket close codes ---------------------------------------------------------------------------
class CloseCode(IntEnum):
    """Close codes of the feed (the standard ones have aiohttp's ``WSCloseCode`` names)."""

    #: The gateway is shutting down.
    GOING_AWAY = 1001
    #: A client too slow to keep up: reconnect and resume with ``since``.
    TRY_AGAIN_LATER = 1013
    #: The JS client closes an idle connection itself (and reconnects).
    CLIENT_IDLE = 4000
    #: The token expired, or a socket opened without one did not authenticate in time or sent a bad
    #: one: get a token and reconnect.
    TOKEN_EXPIRED = 4001
    #: A refresh (``op: auth``) carried another user's token (or another admin flag).
    FORBIDDEN = 4003
    #: First-frame auth of a user who already has the maximum of open sockets (an upgrade with a
    #: token gets 429 instead).
    TOO_MANY_CONNECTIONS = 4029


# -- message headers -------------------------------------------------------------------------------
#: Celery message headers that carry a task's tracking context from the producer to the worker.
HEADER_KEYS = {
    "user_id": "tracker_user_id",
    "tags": "tracker_tags",
    "metadata": "tracker_metadata",
    "task_type": "tracker_task_type",
}

#: Message header naming the task a re-run repeats (``tracker.rerun``; read by the publish hook).
RERUN_HEADER = "tracker_rerun_of"


def context_headers(user_id: str | None = None, tags: Any = (), metadata: Any = None,
                    task_type: str | None = None) -> dict[str, Any]:
    """The headers of a tracking context; the fields left empty are left out."""
    out: dict[str, Any] = {}
    if user_id is not None:
        out[HEADER_KEYS["user_id"]] = user_id
    if tags:
        out[HEADER_KEYS["tags"]] = list(tags)
    if metadata:
        out[HEADER_KEYS["metadata"]] = dict(metadata)
    if task_type is not None:
        out[HEADER_KEYS["task_type"]] = task_type
    return out


def as_json() -> dict[str, Any]:
    """What a client needs of the vocabulary (served at ``GET /api/v1/progress/vocabulary``)."""
    return {
        "statuses": [s.value for s in STATUSES],
        "terminal": [s.value for s in STATUSES if s in TERMINAL],
        "active": [s.value for s in STATUSES if s in ACTIVE],
        "event_types": sorted(EVENT_TYPES),
        "event_status": dict(EVENT_STATUS),
        "triggers": list(TRIGGERS),
        "close_codes": {c.name.lower(): int(c) for c in CloseCode},
    }
