"""Configuration: Celery ``tracker_*`` settings with ``TRACKER_*`` environment fallbacks.

Settings are pydantic-settings models (:class:`TrackerSettings`): one typed, documented field per
knob, read from the Celery conf first (:class:`CeleryConfSource`), then the environment, then the
default; a bad value stops the start with a :class:`ConfigError` naming the setting.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from tracker import vocabulary
from tracker.redaction import DEFAULT_REDACT_KEYS

if TYPE_CHECKING:  # Celery only as the type of an app
    from celery import Celery

__all__ = ["TrackerConfig", "TrackerSettings", "CeleryConfSource", "ConfigError", "sqlalchemy_url", "psycopg_url"]

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


#: While :meth:`TrackerSettings.load` runs: the Celery conf to read first (empty: the environment
#: alone). Unset, a settings class is built from its arguments and defaults only, so
#: ``TrackerConfig(database_url=...)`` never picks up a stray ``TRACKER_*`` variable.
_LOADING: ContextVar[Mapping[str, Any] | None] = ContextVar("tracker_settings_loading", default=None)

#: Settings whose values are never echoed in an error (passwords may sit in URLs).
_QUIET = ("secret", "token", "url", "email", "password")


class ConfigError(ValueError):
    """A setting has a value that does not validate: the message names the setting and where it came from."""


class CeleryConfSource(PydanticBaseSettingsSource):
    """The Celery setting ``<prefix><name>`` (e.g. ``tracker_flush_interval``) of each field.

    Placed after the constructor's arguments and before the environment: Celery conf wins over
    ``TRACKER_*`` variables. A setting that is None (Celery's "unset") leaves the field to the
    environment and the default.
    """

    def __init__(self, settings_cls: type[BaseSettings], conf: Mapping[str, Any], prefix: str) -> None:
        super().__init__(settings_cls)
        self.conf = conf
        self.prefix = prefix

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.conf.get(self.prefix + field_name), self.prefix + field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, info in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(info, name)
            if value is not None:
                values[name] = value
        return values


class TrackerSettings(BaseSettings):
    """Base of the settings classes: validated, frozen, read by :meth:`load` from Celery conf, then env.

    A subclass sets ``env_prefix`` (``TRACKER_`` or ``TRACKER_FEED_``); its Celery settings are the
    same names in lower case (``tracker_...``, ``tracker_feed_...``).
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_ignore_empty=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        conf = _LOADING.get()
        if conf is None:
            return (init_settings,)
        return init_settings, CeleryConfSource(settings_cls, conf, cls._celery_prefix()), env_settings

    @classmethod
    def _env_prefix(cls) -> str:
        return str(cls.model_config.get("env_prefix", ""))

    @classmethod
    def _celery_prefix(cls) -> str:
        return cls._env_prefix().lower()

    @classmethod
    def load(cls, conf: Mapping[str, Any] | None = None) -> Self:
        """Each field from ``conf`` (Celery settings) first, then the environment, then its default.

        Raises :class:`ConfigError` naming the first bad setting(s), not pydantic's traceback.
        """
        token = _LOADING.set(conf if conf is not None else {})
        try:
            return cls()
        except ValidationError as exc:
            raise ConfigError(cls._describe(exc, conf or {})) from None
        finally:
            _LOADING.reset(token)

    @classmethod
    def from_env(cls) -> Self:
        """Settings from the environment variables alone."""
        return cls.load()

    @classmethod
    def from_celery(cls, app: Celery) -> Self:
        """Settings from a Celery app's settings, then the environment."""
        return cls.load(app.conf)

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes`` (the frozen model's ``dataclasses.replace``)."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    @classmethod
    def _describe(cls, exc: ValidationError, conf: Mapping[str, Any]) -> str:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            celery_name, env_name = cls._celery_prefix() + name, cls._env_prefix() + name.upper()
            if conf.get(celery_name) is not None:
                origin = f"Celery setting {celery_name}"
            elif os.environ.get(env_name, "") != "":
                origin = f"environment variable {env_name}"
            else:
                origin = f"{celery_name} / {env_name}"
            shown = "" if any(q in name for q in _QUIET) else f" (got {str(err.get('input'))[:80]!r})"
            problems.append(f"{origin}: {err['msg']}{shown}")
        return "invalid setting " + "; ".join(problems)


def _json_or_text(value: Any) -> Any:
    """A JSON document given as text (an environment variable) becomes its value."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        return json.loads(value)
    return value


class TrackerConfig(TrackerSettings):
    """Every knob of celery-tracking.

    Each field is read from the Celery setting ``tracker_<name>`` first, then from the
    environment variable ``TRACKER_<NAME>``, then falls back to the default shown here
    (:meth:`from_celery`, :meth:`from_env`). ``TrackerConfig(name=value, ...)`` takes its
    arguments and the defaults only.
    """

    model_config = SettingsConfigDict(env_prefix="TRACKER_")

    database_url: str | None = Field(default=None, description="PostgreSQL URL of the store.")
    redis_url: str | None = Field(default=None, description="Redis URL of the event stream and control keys.")
    prefix: str = Field(default="tracker", min_length=1, description="Prefix of every Redis key.")
    flush_interval: float = Field(default=0.2, gt=0, description="Seconds between group commits of the Recorder.")
    durable: bool = Field(default=False, description="Make a task's terminal state and logs durable before its result "
                                                     "is acknowledged.")
    buffer_max: int = Field(default=100_000, ge=1, description="Items the Recorder and the event bus may hold while a "
                                                               "server is away.")
    stream_maxlen: int = Field(default=100_000, ge=1, description="Approximate length the event stream is trimmed to.")
    progress_interval: float = Field(default=0.1, ge=0, description="Minimum seconds between two progress events of one"
                                                                    " task on the bus.")
    control_interval: float = Field(default=0.2, ge=0, description="Minimum seconds between two looks at a task's "
                                                                   "control key.")
    heartbeat_interval: float = Field(default=5.0, gt=0, description="Seconds between two heartbeats of a worker.")
    worker_lost_after: float = Field(default=30.0, gt=0, description="Seconds without a heartbeat after which a worker "
                                                                     "is lost and its running tasks fail.")
    stall_after: float = Field(default=300.0, gt=0, description="Seconds without progress after which a running task is"
                                                                " flagged stalled.")
    queue_sample_interval: float = Field(default=5.0, gt=0, description="Seconds between two samples of the broker's "
                                                                        "queue depths by the gateway.")
    log_level: str = Field(default="INFO", description="Lowest stdlib log level captured from loggers inside a task.")
    secret: str = Field(default="", description="Token signing secret: required by the gateway and `tracker token`, at "
                                                "least 32 bytes, no placeholder (webgate.core.auth.check_secret).")
    token_max_ttl: int = Field(default=604800, gt=0, description="Longest token lifetime (seconds) minted or accepted: "
                                                                 "7 days.")
    retention_days: float = Field(default=30.0, gt=0, description="Days finished tasks are kept (the gateway purges "
                                                                  "older ones).")
    notifications: Annotated[list[dict[str, Any]], NoDecode] = Field(
        default_factory=list, description="Notification rules: a list (JSON in the environment).")
    email: Annotated[dict[str, Any] | str | None, NoDecode] = Field(
        default=None, description="SMTP settings: a dict (JSON in the environment) or the dotted path of one.")
    slack_webhook_url: str | None = Field(default=None, description="Slack incoming-webhook URL of the slack channel.")
    webhook_url: str | None = Field(default=None, description="URL the webhook channel posts to.")
    webhook_secret: str | None = Field(default=None, description="HMAC key of the webhook channel's signature header.")
    public_url: str | None = Field(default=None, description="Public URL of the dashboard, for links in notifications.")
    notify_max_attempts: int = Field(default=5, ge=1, description="Notifier: attempts per channel.")
    notify_retry_base: float = Field(default=2.0, ge=0, description="Notifier: first retry delay in seconds (doubles "
                                                                    "each time).")
    notify_timeout: float = Field(default=10.0, gt=0, description="Notifier: per-send timeout in seconds.")
    notify_digest_window: float = Field(default=60.0, gt=0, description="Notifier bursts: per rule, user and task type,"
                                                                        " at most notify_digest_threshold notifications"
                                                                        " per this many seconds are sent one by one; "
                                                                        "the rest become one digest at the window's "
                                                                        "end.")
    notify_digest_threshold: int = Field(default=5, ge=1, description="See notify_digest_window.")
    notify_rate_limit: int = Field(default=30, ge=0, description="Per user and notify_rate_window seconds, at most this"
                                                                 " many notifications (0: no limit): rule notifications"
                                                                 " beyond it are digested, client posts (POST "
                                                                 "/notifications) get 429.")
    notify_rate_window: float = Field(default=60.0, gt=0, description="See notify_rate_limit.")
    metrics_token: str | None = Field(default=None, description="GET /metrics requires `Authorization: Bearer "
                                                                "<metrics_token>` when set (open otherwise).")
    export_write_timeout: float = Field(default=30.0, gt=0, description="Exports: a reader making no progress for this "
                                                                        "many seconds is cut.")
    export_max_concurrent: int = Field(default=2, ge=1, description="Exports: at most this many at once per user.")
    alert_sample_max_age: float = Field(default=60.0, gt=0, description="Aggregate alerts: a tracker.queue.depth sample"
                                                                        " older than this many seconds is not used (a "
                                                                        "stopped sampler leaves a queue's episode as it"
                                                                        " is instead of deciding on stale data).")
    redact_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_REDACT_KEYS), description="Task-argument values under keys containing one "
                                                                       "of these (case-insensitive) are stored as "
                                                                       '"[redacted]"; a list (JSON or comma-separated '
                                                                       "in the environment).")
    store_args: bool = Field(default=True, description="False stores no task arguments at all.")

    @field_validator("notifications", "email", mode="before")
    @classmethod
    def _decode_json(cls, value: Any) -> Any:
        return _json_or_text(value)

    @field_validator("redact_keys", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        """From a JSON list, a comma-separated string or any iterable of strings; blanks dropped."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, (list, tuple, set, frozenset)):
            return [str(k).strip() for k in value if str(k).strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError("must be a stdlib log level name such as DEBUG, INFO or WARNING")
        return level

    def require_database(self) -> str:
        if not self.database_url:
            raise ConfigError("no database URL: set tracker_database_url or TRACKER_DATABASE_URL")
        return self.database_url

    def require_redis(self) -> str:
        if not self.redis_url:
            raise ConfigError("no Redis URL: set tracker_redis_url or TRACKER_REDIS_URL")
        return self.redis_url

    @property
    def stream_key(self) -> str:
        return vocabulary.stream_key(self.prefix)

    def control_key(self, task_id: str) -> str:
        return vocabulary.control_key(self.prefix, task_id)
