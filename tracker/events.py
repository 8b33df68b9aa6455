"""The event stream's wire format (Redis stream ``{prefix}:events``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tracker.jsonsafe import strict_encoder
from tracker.vocabulary import EVENT_TYPES, STATUS_EVENTS, TERMINAL_EVENTS

__all__ = ["SCHEMA_VERSION", "EVENT_TYPES", "TERMINAL_EVENTS", "STATUS_EVENTS", "Event", "encode", "decode", "dumps",
           "RawJSON", "xadd_args", "entry_fields"]

SCHEMA_VERSION = 1

# EVENT_TYPES, TERMINAL_EVENTS and STATUS_EVENTS are the vocabulary's (imported above, kept here by name).


class RawJSON(str):
    """Text that is already JSON: written to the store as it is, not encoded again."""


#: Compact, strict JSON that never fails on odd objects (a datetime in ISO 8601, anything else
#: JSON cannot hold with ``repr``); a NaN or an infinity is written as ``null``, since a browser's
#: ``JSON.parse`` rejects the whole frame that holds one.
dumps = strict_encoder(repr)


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


def entry_fields(event: Event) -> tuple[str, ...]:
    """The stream entry of ``event`` as flat name, value pairs: the one definition of its layout."""
    return ("v", _VERSION, "type", event.type, "task_id", event.task_id or "", "user_id", event.user_id or "",
            "ts", repr(event.ts), "data", dumps(event.data))


def encode(event: Event) -> dict[str, str]:
    """Fields of the stream entry for ``event``."""
    pairs = entry_fields(event)
    return dict(zip(pairs[::2], pairs[1::2], strict=True))


def xadd_args(stream: str, maxlen: int, event: Event) -> tuple[Any, ...]:
    """The whole ``XADD stream MAXLEN ~ maxlen * <fields of the entry>`` command, as the bus sends
    it (no field dict, no per-command option handling)."""
    return ("XADD", stream, "MAXLEN", "~", maxlen, "*", *entry_fields(event))


_VERSION = str(SCHEMA_VERSION)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(fields: dict[Any, Any], name: str, raw: bytes) -> str:
    value = fields.get(raw)
    if value is None:
        value = fields.get(name)
    return "" if value is None else _s(value)


#: The field names of an entry in the order :func:`entry_fields` writes them (as Redis returns them).
_LAYOUT = tuple(name.encode() for name in entry_fields(Event("", None, None, 0.0))[::2])


def decode(entry_id: Any, fields: dict[Any, Any] | list[Any], *,
           wants_data: Callable[[str, str], bool] | None = None) -> Event:
    """Rebuild an :class:`Event` from a stream entry: a dict of its fields (bytes or str keys),
    or the flat ``[name, value, ...]`` list a raw ``XREAD`` reply holds.

    Every gateway runs this for every entry of the stream: a flat entry in this module's own
    layout is read by position (no dict is built); anything else is read by key.
    ``wants_data(type, data_text)`` False leaves ``data`` empty without parsing it (a reader
    that only routes the entry, such as the feed while nobody subscribes).
    """
    if fields is None:  # an entry deleted after it was listed
        raise ValueError("stream entry without fields")
    if isinstance(fields, (list, tuple)):
        if len(fields) == 12 and tuple(fields[::2]) == _LAYOUT:
            event_type, task_id, user_id, ts, data_text = (_s(fields[3]), _s(fields[5]), _s(fields[7]),
                                                            _s(fields[9]), _s(fields[11]))
        else:
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
    if isinstance(fields, dict):
        event_type = _field(fields, "type", b"type")
        task_id = _field(fields, "task_id", b"task_id")
        user_id = _field(fields, "user_id", b"user_id")
        ts = _field(fields, "ts", b"ts")
        data_text = _field(fields, "data", b"data")
    if wants_data is not None and not wants_data(event_type, data_text):
        data: Any = {}
    else:
        try:
            data = json.loads(data_text or "{}")
        except ValueError:
            data = {"raw": data_text}
    return Event(
        type=event_type,
        task_id=task_id or None,
        user_id=user_id or None,
        ts=float(ts or 0.0),
        data=data if isinstance(data, dict) else {"value": data},
        id=_s(entry_id),
    )
