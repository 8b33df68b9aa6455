"""Settings: Celery conf first, then ``TRACKER_*`` variables, then defaults; a bad value is a clear
error at start naming the setting (never a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from celery import Celery

from tests.conftest import ROOT
from tracker.config import ConfigError, TrackerConfig
from tracker.redaction import DEFAULT_REDACT_KEYS
from webgate.feed.settings import FeedSettings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``TRACKER_*`` variable of the session leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("TRACKER_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _app(**conf: object) -> Celery:
    app = Celery("config-test", set_as_current=False)
    app.conf.update(conf)
    return app


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    for config in (TrackerConfig(), TrackerConfig.from_env(), TrackerConfig.from_celery(_app())):
        assert config.prefix == "tracker" and config.flush_interval == 0.2 and config.durable is False
        assert config.database_url is None and config.secret == "" and config.notifications == []
        assert config.redact_keys == list(DEFAULT_REDACT_KEYS) and config.store_args is True
    assert FeedSettings.from_env() == FeedSettings() and FeedSettings().max_queue == 1000


def test_constructor_ignores_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TRACKER_PREFIX", "from-env")
    assert TrackerConfig().prefix == "tracker"
    assert TrackerConfig(prefix="given").prefix == "given"
    assert TrackerConfig.from_env().prefix == "from-env"


def test_environment_values_are_typed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TRACKER_FLUSH_INTERVAL", "0.5")
    clean_env.setenv("TRACKER_DURABLE", "yes")
    clean_env.setenv("TRACKER_BUFFER_MAX", "10")
    clean_env.setenv("TRACKER_REDACT_KEYS", "pin, cvv ,")
    clean_env.setenv("TRACKER_NOTIFICATIONS", '[{"on": "failed", "channels": ["webhook"]}]')
    clean_env.setenv("TRACKER_EMAIL", '{"host": "smtp.example.com"}')
    clean_env.setenv("TRACKER_LOG_LEVEL", "debug")
    clean_env.setenv("TRACKER_STALL_AFTER", "")  # empty: unset
    config = TrackerConfig.from_env()
    assert (config.flush_interval, config.durable, config.buffer_max) == (0.5, True, 10)
    assert config.redact_keys == ["pin", "cvv"]
    assert config.notifications == [{"on": "failed", "channels": ["webhook"]}]
    assert config.email == {"host": "smtp.example.com"} and config.log_level == "DEBUG"
    assert config.stall_after == 300.0
    clean_env.setenv("TRACKER_REDACT_KEYS", '["a", "b"]')
    clean_env.setenv("TRACKER_EMAIL", "myproject.settings.SMTP")
    assert TrackerConfig.from_env().redact_keys == ["a", "b"]
    assert TrackerConfig.from_env().email == "myproject.settings.SMTP"


def test_celery_conf_wins_over_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TRACKER_PREFIX", "from-env")
    clean_env.setenv("TRACKER_FLUSH_INTERVAL", "0.5")
    clean_env.setenv("TRACKER_FEED_MAX_QUEUE", "7")
    app = _app(tracker_prefix="from-celery", tracker_redact_keys=("x",), tracker_feed_max_queue=9)
    config = TrackerConfig.from_celery(app)
    assert config.prefix == "from-celery" and config.redact_keys == ["x"]
    assert config.flush_interval == 0.5  # not in the conf: the environment's
    assert FeedSettings.from_celery(app).max_queue == 9
    assert FeedSettings.from_env().max_queue == 7
    # None in the conf is Celery's "unset": the environment applies.
    assert TrackerConfig.from_celery(_app(tracker_prefix=None)).prefix == "from-env"


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("TRACKER_FLUSH_INTERVAL", "fast", "valid number"),
    ("TRACKER_FLUSH_INTERVAL", "-1", "greater than 0"),
    ("TRACKER_DURABLE", "maybe", "valid boolean"),
    ("TRACKER_BUFFER_MAX", "1.5", "valid integer"),
    ("TRACKER_LOG_LEVEL", "LOUD", "log level"),
    ("TRACKER_NOTIFICATIONS", '{"on": "failed"}', "valid list"),
])
def test_bad_environment_value_names_the_variable(clean_env: pytest.MonkeyPatch, name: str, value: str,
                                                  expected: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=name) as caught:
        TrackerConfig.from_env()
    assert expected in str(caught.value) and str(caught.value).startswith("invalid setting environment variable")


def test_bad_celery_value_names_the_setting_and_hides_secrets(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="Celery setting tracker_worker_lost_after") as caught:
        TrackerConfig.from_celery(_app(tracker_worker_lost_after="soon"))
    assert "'soon'" in str(caught.value)
    with pytest.raises(ConfigError, match="Celery setting tracker_feed_heartbeat"):
        FeedSettings.from_celery(_app(tracker_feed_heartbeat=0))
    with pytest.raises(ConfigError, match="tracker_email") as caught:
        TrackerConfig.from_celery(_app(tracker_email=["password=hunter2"]))
    assert "hunter2" not in str(caught.value)


def test_replace_validates_and_keeps_the_rest() -> None:
    base = TrackerConfig(prefix="p", stall_after=5.0)
    changed = base.replace(stall_after=1.0)
    assert (changed.prefix, changed.stall_after, base.stall_after) == ("p", 1.0, 5.0)
    with pytest.raises(ValueError, match="stall_after"):
        base.replace(stall_after=-1)
    with pytest.raises(ValueError):
        base.replace(no_such_setting=1)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tracker.cli", *args], env=full, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_cli_reports_a_bad_setting_without_traceback(tracker_env: dict[str, str]) -> None:
    out = _cli("token", "alice", TRACKER_TOKEN_MAX_TTL="a week")
    assert out.returncode != 0 and out.stdout == ""
    assert "TRACKER_TOKEN_MAX_TTL" in out.stderr and "Traceback" not in out.stderr


def test_gateway_refuses_to_start_on_a_bad_feed_setting(tracker_env: dict[str, str]) -> None:
    from tracker.demo.services import free_port

    out = _cli("gateway", "--port", str(free_port()), "--no-migrate", TRACKER_FEED_MAX_QUEUE="lots")
    assert out.returncode != 0
    assert "TRACKER_FEED_MAX_QUEUE" in out.stderr and "Traceback" not in out.stderr + out.stdout
