"""``tracking_context()``: who a task runs for, carried to the worker in message headers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from signals.arguments import ContextArgs
from tracker.validation import clear_error
from tracker.vocabulary import HEADER_KEYS, RERUN_HEADER, context_headers

__all__ = ["TrackingContext", "tracking_context", "current_context", "HEADER_KEYS", "from_headers",
           "to_headers", "RERUN_HEADER"]


@dataclass(frozen=True)
class TrackingContext:
    user_id: str | None = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    task_type: str | None = None


_current: ContextVar[TrackingContext | None] = ContextVar("tracker_context", default=None)


def current_context() -> TrackingContext | None:
    return _current.get()


def _check(**values: Any) -> None:
    try:
        ContextArgs.model_validate(values)
    except ValidationError as exc:
        raise clear_error(exc) from None


@contextmanager
def tracking_context(
    user_id: str | None = None,
    tags: list[str] | tuple[str, ...] | None = None,
    metadata: Mapping[str, Any] | None = None,
    task_type: str | None = None,
) -> Iterator[TrackingContext]:
    """Tasks published inside the block carry this user, tags and metadata.

    Nested blocks add tags and metadata to the outer ones and may change the user.
    """
    _check(user_id=user_id, tags=tags, metadata=metadata, task_type=task_type)
    outer = _current.get() or TrackingContext()
    merged_tags = tuple(dict.fromkeys((*outer.tags, *(tags or ()))))
    ctx = TrackingContext(
        user_id=user_id if user_id is not None else outer.user_id,
        tags=merged_tags,
        metadata={**outer.metadata, **(metadata or {})},
        task_type=task_type if task_type is not None else outer.task_type,
    )
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def to_headers(ctx: TrackingContext) -> dict[str, Any]:
    return context_headers(ctx.user_id, ctx.tags, ctx.metadata, ctx.task_type)


def _lookup(source: Any, key: str) -> Any:
    if source is None:
        return None
    if type(source) is dict:
        # The common case (message headers, a request's __dict__), without the ABC check:
        # this runs for every key of every task, in the producer and in the pool process.
        value = source.get(key)
        if value is None:
            nested = source.get("headers")
            if type(nested) is dict or isinstance(nested, Mapping):
                value = nested.get(key)
        return value
    if isinstance(source, Mapping):
        value = source.get(key)
        if value is None and isinstance(source.get("headers"), Mapping):
            # Celery sometimes nests custom headers one level down.
            value = source["headers"].get(key)
        return value
    value = getattr(source, key, None)
    if value is None:
        value = _lookup(getattr(source, "headers", None), key)
    return value


#: The context of a task published outside any ``tracking_context`` (most tasks): one shared,
#: immutable instance (its metadata too) instead of a new frozen dataclass per hook call.
EMPTY = TrackingContext(metadata=MappingProxyType({}))


def from_headers(*sources: Any) -> TrackingContext:
    """Read a context from message headers, a request dict or a task request, in order."""
    found: dict[str, Any] = {}
    for name, key in HEADER_KEYS.items():
        for src in sources:
            value = _lookup(src, key)
            if value is not None:
                found[name] = value
                break
    if not found:
        return EMPTY
    tags = found.get("tags") or ()
    metadata = found.get("metadata") or {}
    user_id = found.get("user_id")
    return TrackingContext(
        user_id=str(user_id) if user_id is not None else None,
        tags=tuple(str(t) for t in tags) if isinstance(tags, (list, tuple)) else (),
        metadata=metadata if isinstance(metadata, Mapping) else {},
        task_type=found.get("task_type") if isinstance(found.get("task_type"), str) else None,
    )
