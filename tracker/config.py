"""Configuration: Celery ``tracker_*`` settings with ``TRACKER_*`` environment fallbacks."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from tracker import vocabulary
from tracker.redaction import DEFAULT_REDACT_KEYS

__all__ = ["TrackerConfig", "sqlalchemy_url", "psycopg_url"]

def sqlalchemy_url(url: str) -> str:
    """Return ``url`` with the psycopg 3 driver SQLAlchemy needs."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def psycopg_url(url: str) -> str:
    """Return ``url`` in the libpq form psycopg accepts (no SQLAlchemy driver suffix)."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def _coerce(value: Any, default: Any) -> Any:
    """Convert an environment string to the type of ``default``."""
    if not isinstance(value, str):
        return value
    if isinstance(default, bool):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, (list, dict)):
        return json.loads(value)
    return value


def _key_list(value: Any) -> list[str]:
    """``redact_keys`` from a JSON list, a comma-separated string or any iterable of strings."""
    if isinstance(value, str):
        text = value.strip()
        items = json.loads(text) if text.startswith("[") else text.split(",")
    else:
        items = list(value)
    return [str(k).strip() for k in items if str(k).strip()]


@dataclass(frozen=True)
class TrackerConfig:
    """Every knob of celery-tracking.

    Each field is read from the Celery setting ``tracker_<name>`` first, then from the
    environment variable ``TRACKER_<NAME>``, then falls back to the default shown here.
    """

    database_url: str | None = None
    redis_url: str | None = None
    prefix: str = "tracker"
    #: Seconds between group commits of the Recorder.
    flush_interval: float = 0.2
    #: Make a task's terminal state and logs durable before its result is acknowledged.
    durable: bool = False
    #: Items the Recorder and the event bus may hold while a server is away.
    buffer_max: int = 100_000
    stream_maxlen: int = 100_000
    #: Minimum seconds between two progress events of one task on the bus.
    progress_interval: float = 0.1
    #: Minimum seconds between two looks at a task's control key.
    control_interval: float = 0.2
    heartbeat_interval: float = 5.0
    worker_lost_after: float = 30.0
    stall_after: float = 300.0
    #: Seconds between two samples of the broker's queue depths by the gateway.
    queue_sample_interval: float = 5.0
    #: Lowest stdlib log level captured from loggers inside a task.
    log_level: str = "INFO"
    #: Token signing secret: required, at least 32 bytes, no placeholder (webgate.core.auth.check_secret).
    secret: str = ""
    #: Longest token lifetime (seconds) minted or accepted: 7 days.
    token_max_ttl: int = 604800
    retention_days: float = 30.0
    notifications: list[dict[str, Any]] = field(default_factory=list)
    email: Any = None
    slack_webhook_url: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    public_url: str | None = None
    #: Notifier: attempts per channel, first retry delay (doubles each time) and per-send timeout.
    notify_max_attempts: int = 5
    notify_retry_base: float = 2.0
    notify_timeout: float = 10.0
    #: Notifier bursts: per rule, user and task type, at most ``threshold`` notifications per
    #: ``window`` seconds are sent one by one; the rest become one digest at the window's end.
    notify_digest_window: float = 60.0
    notify_digest_threshold: int = 5
    #: Per user and ``notify_rate_window`` seconds, at most this many notifications (0 = no limit):
    #: rule notifications beyond it are digested, client posts (``POST /notifications``) get 429.
    notify_rate_limit: int = 30
    notify_rate_window: float = 60.0
    #: ``GET /metrics`` requires ``Authorization: Bearer <metrics_token>`` when set (open otherwise).
    metrics_token: str | None = None
    #: Exports: a reader making no progress for this many seconds is cut; at most this many at once per user.
    export_write_timeout: float = 30.0
    export_max_concurrent: int = 2
    #: Aggregate alerts: a ``tracker.queue.depth`` sample older than this many seconds is not used
    #: (a stopped sampler leaves a queue's episode as it is instead of deciding on stale data).
    alert_sample_max_age: float = 60.0
    #: Task arguments: values under keys containing one of these (case-insensitive) are stored
    #: as "[redacted]"; ``store_args=False`` stores no arguments at all.
    redact_keys: list[str] = field(default_factory=lambda: list(DEFAULT_REDACT_KEYS))
    store_args: bool = True

    @classmethod
    def _read(cls, getter: Any) -> TrackerConfig:
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = getter(f.name)
            if value is None:
                value = os.environ.get("TRACKER_" + f.name.upper())
            if value is None:
                continue
            if f.name == "notifications" and isinstance(value, str):
                value = json.loads(value)
            elif f.name == "email" and isinstance(value, str) and value.lstrip().startswith("{"):
                value = json.loads(value)
            elif f.name == "redact_keys":
                value = _key_list(value)
            elif f.name != "email":
                value = _coerce(value, f.default)
            values[f.name] = value
        return cls(**values)

    @classmethod
    def from_env(cls) -> TrackerConfig:
        """Configuration from ``TRACKER_*`` environment variables alone."""
        return cls._read(lambda name: None)

    @classmethod
    def from_celery(cls, app: Any) -> TrackerConfig:
        """Configuration from a Celery app's ``tracker_*`` settings, then the environment."""
        conf = app.conf
        return cls._read(lambda name: conf.get("tracker_" + name))

    def require_database(self) -> str:
        if not self.database_url:
            raise ValueError("no database URL: set tracker_database_url or TRACKER_DATABASE_URL")
        return self.database_url

    def require_redis(self) -> str:
        if not self.redis_url:
            raise ValueError("no Redis URL: set tracker_redis_url or TRACKER_REDIS_URL")
        return self.redis_url

    @property
    def stream_key(self) -> str:
        return vocabulary.stream_key(self.prefix)

    def control_key(self, task_id: str) -> str:
        return vocabulary.control_key(self.prefix, task_id)
