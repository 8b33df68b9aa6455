"""Redaction of secrets in task arguments and log context, applied where the data enters.

Every entry point (the producer's publish hook, the worker hooks, the REST writes and the
Reporter's log path) calls :func:`redactor_for` with its configuration and passes values
through :meth:`Redactor.redact`, so a value stored under a key such as ``password`` is
``"[redacted]"`` before it reaches PostgreSQL, the event stream, a log's context or an export.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "DEFAULT_REDACT_KEYS", "Redactor", "redactor_for", "contains_redacted"]

#: What a secret value is replaced with.
REDACTED = "[redacted]"
#: Keys whose values are secret (case-insensitive substrings of the key).
DEFAULT_REDACT_KEYS: tuple[str, ...] = ("password", "passwd", "secret", "token", "api_key", "apikey",
                                        "authorization", "credit_card")
#: Nesting deeper than this is not walked: the whole value is replaced (a cycle or a
#: pathological structure must not hang the task that published it).
_MAX_DEPTH = 32
_SCALARS = (str, int, float, bool, type(None))
_MAX_VERDICTS = 4096


class Redactor:
    """Replaces values under secret keys, recursing into nested dicts, lists and tuples."""

    __slots__ = ("keys", "_verdicts")

    def __init__(self, keys: Iterable[str] = DEFAULT_REDACT_KEYS) -> None:
        self.keys = tuple(k.lower() for k in keys if k)
        # Most argument dicts and log contexts repeat the same few key names: remember the
        # verdict per key (a plain dict lookup; emptied when it grows past _MAX_VERDICTS).
        self._verdicts: dict[Any, bool] = {}

    def _match(self, key: str) -> bool:
        low = key.lower()
        return any(k in low for k in self.keys)

    def is_secret(self, key: Any) -> bool:
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = isinstance(key, str) and self._match(key)
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def redact(self, value: Any) -> Any:
        """A copy of ``value`` with secret values replaced; scalars and empty containers are
        returned as they are (the common case of a task with no arguments costs a type check)."""
        if isinstance(value, _SCALARS) or not value:
            return value
        return self._walk(value, 0)

    def _walk(self, value: Any, depth: int) -> Any:
        if isinstance(value, _SCALARS):
            return value
        if depth >= _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            return {k: REDACTED if self.is_secret(k) else self._walk(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._walk(v, depth + 1) for v in value]
        return value  # other objects are stored through their JSON encoder (repr), as results are

    def arguments(self, args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
        """A task's positional and keyword arguments as stored: a list and a dict, redacted."""
        plain_args = list(args) if isinstance(args, (list, tuple)) else ([] if args is None else [args])
        plain_kwargs = dict(kwargs) if isinstance(kwargs, Mapping) else {}
        return self.redact(plain_args), self.redact(plain_kwargs)


@functools.lru_cache(maxsize=16)
def _cached(keys: tuple[str, ...]) -> Redactor:
    return Redactor(keys)


def redactor_for(config: Any) -> Redactor:
    """The (shared) redactor of a :class:`tracker.config.TrackerConfig`."""
    keys = getattr(config, "redact_keys", None)
    return _cached(tuple(DEFAULT_REDACT_KEYS if keys is None else keys))


def contains_redacted(value: Any, depth: int = 0) -> bool:
    """Whether a stored value holds a redacted secret anywhere (such a task cannot be re-run)."""
    if value == REDACTED:
        return True
    if depth >= _MAX_DEPTH:
        return False
    if isinstance(value, Mapping):
        return any(contains_redacted(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(contains_redacted(v, depth + 1) for v in value)
    return False
