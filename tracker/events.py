"""The event stream's wire format (Redis stream ``{prefix}:events``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tracker.vocabulary import EVENT_TYPES, STATUS_EVENTS, TERMINAL_EVENTS

__all__ = ["SCHEMA_VERSION", "EVENT_TYPES", "TERMINAL_EVENTS", "STATUS_EVENTS", "Event", "encode", "decode", "dumps",
           "RawJSON"]

SCHEMA_VERSION = 1

# EVENT_TYPES, TERMINAL_EVENTS and STATUS_EVENTS are the vocabulary's (imported above, kept here by name).


class RawJSON(str):
    """Text that is already JSON: written to the store as it is, not encoded again."""


def dumps(value: Any) -> str:
    """Compact JSON that never fails on odd objects (they are shown with ``repr``)."""
    return json.dumps(value, separators=(",", ":"), default=repr, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    task_id: str | None
    user_id: str | None
    ts: float
    data: dict[str, Any] = field(default_factory=dict)
    #: Stream entry id once the event has been read back from Redis.
    id: str | None = None

    def to_frame(self) -> dict[str, Any]:
        """The WebSocket ``event`` frame for this event."""
        return {
            "type": "event",
            "id": self.id,
            "event": self.type,
            "task_id": self.task_id,
            "user_id": self.user_id,
            "ts": self.ts,
            "data": self.data,
        }


def encode(event: Event) -> dict[str, str]:
    """Fields of the stream entry for ``event``."""
    return {
        "v": str(SCHEMA_VERSION),
        "type": event.type,
        "task_id": event.task_id or "",
        "user_id": event.user_id or "",
        "ts": repr(event.ts),
        "data": dumps(event.data),
    }


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode(entry_id: Any, fields: dict[Any, Any]) -> Event:
    """Rebuild an :class:`Event` from a stream entry (bytes or str keys)."""
    f = {_s(k): _s(v) for k, v in fields.items()}
    try:
        data = json.loads(f.get("data") or "{}")
    except ValueError:
        data = {"raw": f.get("data")}
    return Event(
        type=f.get("type", ""),
        task_id=f.get("task_id") or None,
        user_id=f.get("user_id") or None,
        ts=float(f.get("ts") or 0.0),
        data=data if isinstance(data, dict) else {"value": data},
        id=_s(entry_id),
    )
