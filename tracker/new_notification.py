"""A notification about to be stored, and the one model that validates a caller's notification.

:class:`NotificationInput` holds the rules for a notification given from outside - by
``Tracker.notify``/``notify_many``, a task's ``self.notify`` or ``POST /notifications`` (whose REST
model, ``webgate.api.models.NotificationIn``, derives from it) - so they are written once.
:class:`NewNotification` is the validated row; rules, digests and aggregate alerts build it
directly from values they made themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from tracker.validation import Clean, Id, JsonObject, clear_error

__all__ = ["CHANNELS", "ORIGINS", "PRIORITIES", "TYPES", "MAX_TITLE", "MAX_MESSAGE", "MAX_URL", "CONTROL_CHARS",
           "Channel", "Priority", "Kind", "ActionUrl", "is_http_url", "check_action_url", "NotificationInput",
           "NewNotification", "check_notifications", "initial_delivery"]

CHANNELS = ("websocket", "email", "slack", "webhook")
#: Who made a notification (``tracker_notifications.origin``), most trusted first.
ORIGINS = ("rule", "api", "rest")
PRIORITIES = ("urgent", "high", "normal", "low")
TYPES = ("info", "success", "warning", "error", "progress")
MAX_TITLE = 500
MAX_MESSAGE = 10_000
MAX_URL = 2000
#: Runs of control characters (CR, LF, tab, NUL, C1, line separators): never inside a link or a header.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")



def _known_channel(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """The enum's check with the message users know: ``unknown channel 'pager'``."""
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(f"unknown channel {value!r}; use {', '.join(CHANNELS)}") from None


if TYPE_CHECKING:
    Channel = str
    Priority = str
    Kind = str
else:  # the tuples above as JSON Schema enums
    Channel = Annotated[Literal[CHANNELS], WrapValidator(_known_channel)]
    Priority = Literal[PRIORITIES]
    Kind = Literal[TYPES]


def is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host, and nothing a link could hide (spaces, control characters)."""
    if CONTROL_CHARS.search(url) or any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def check_action_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL; ``javascript:``, ``data:``, relative paths, spaces
    raise ValueError (a link in a notification must not run script in the dashboard)."""
    if not is_http_url(url):
        raise ValueError("action_url must be an absolute http:// or https:// URL")
    return url


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("title must be a non-empty string")
    return text


def _unique(channels: list[str]) -> list[str]:
    return list(dict.fromkeys(channels))


ActionUrl = Annotated[str, Field(max_length=MAX_URL, description="An absolute http:// or https:// URL"), Clean,
                     AfterValidator(check_action_url)]
Title = Annotated[str, Field(min_length=1, max_length=MAX_TITLE), Clean, AfterValidator(_not_blank)]
Message = Annotated[str, Field(max_length=MAX_MESSAGE), Clean]


class NotificationInput(BaseModel):
    """The fields of a notification a caller gives (``Tracker.notify``'s arguments), in JSON's
    types; :func:`check_notifications` also takes one channel as a string and any sequence of
    channels from Python callers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: Id | None = None
    title: Title
    message: Message | None = ""
    type: Kind = "info"
    priority: Priority = "normal"
    #: ``null`` or absent: ``["websocket"]``.
    channels: Annotated[list[Channel], Field(min_length=1, max_length=len(CHANNELS)),
                        AfterValidator(_unique)] | None = None
    task_id: Id | None = None
    action_url: ActionUrl | None = None
    metadata: JsonObject | None = None
    dedup_key: Annotated[str, Field(min_length=1, max_length=500), Clean] | None = None

    def new(self, origin: str = "api") -> NewNotification:
        """The notification to store, made by ``origin`` (one of :data:`ORIGINS`)."""
        return NewNotification(user_id=self.user_id, title=self.title, message=self.message or "", type=self.type,
                               priority=self.priority, channels=tuple(self.channels or ("websocket",)),
                               task_id=self.task_id, action_url=self.action_url, metadata=dict(self.metadata or {}),
                               dedup_key=self.dedup_key, origin=origin)


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


def initial_delivery(channels: Iterable[str]) -> dict[str, Any]:
    return {ch: {"status": "pending", "attempts": 0, "last_error": None, "delivered_at": None} for ch in channels}


_INPUTS = TypeAdapter(list[NotificationInput])


def _channel_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    return list(value) if isinstance(value, tuple) else value


def check_notifications(items: Any, origin: str = "api") -> list[NewNotification]:
    """Validate a list of notification dicts (:class:`NotificationInput`'s fields) in full before
    anything is stored: a value of the wrong kind raises TypeError, any other problem ValueError,
    naming the item and the field. ``origin`` (:data:`ORIGINS`) is the caller's to say: ``rest``
    for client posts."""
    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {', '.join(ORIGINS)}")
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise TypeError("notifications must be a list of objects")
    # Python callers may name one channel, or give a tuple: the model takes JSON's list.
    given = [{**item, "channels": _channel_list(item["channels"])} if isinstance(item, Mapping) and "channels" in item
             else item for item in items]
    try:
        checked = _INPUTS.validate_python(given)
    except ValidationError as exc:
        raise clear_error(exc, item=lambda index: f"notification {index}") from None
    return [n.new(origin) for n in checked]
