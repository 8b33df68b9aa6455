"""install()/uninstall() are idempotent, and tracking errors never reach a task."""

from __future__ import annotations

import pytest
from celery import Celery
from celery import signals as cs

import signals
from signals import hooks


def _ours(signal) -> int:
    return sum(1 for key, _ in signal.receivers if isinstance(key[0], str) and key[0].startswith("celery-tracking."))


def test_install_is_idempotent_and_uninstall_disconnects():
    app = Celery("install-test", broker="memory://")
    assert not signals.is_installed()
    signals.install(app)
    signals.install(app)
    try:
        assert signals.is_installed(app)
        for signal, _ in hooks._RECEIVERS:
            assert _ours(signal) == 1, signal
    finally:
        signals.uninstall(app)
    signals.uninstall(app)
    assert not signals.is_installed()
    for signal, _ in hooks._RECEIVERS:
        assert _ours(signal) == 0, signal


def test_receivers_stay_connected_until_the_last_app_is_uninstalled():
    a, b = Celery("a", broker="memory://"), Celery("b", broker="memory://")
    signals.install(a)
    signals.install(b)
    signals.uninstall(a)
    assert _ours(cs.task_prerun) == 1
    signals.uninstall(b)
    assert _ours(cs.task_prerun) == 0


def test_install_rejects_what_is_not_an_app():
    with pytest.raises(TypeError):
        signals.install(None)
    with pytest.raises(TypeError):
        signals.install("proj")


def test_a_broken_store_and_bus_never_fail_a_task():
    # Nothing listens on these ports: every write fails inside the background threads.
    app = Celery("broken", broker="memory://")
    app.conf.tracker_database_url = "postgresql://nobody@127.0.0.1:9/none"
    app.conf.tracker_redis_url = "redis://127.0.0.1:9/0"

    @app.task(base=signals.TrackedTask, bind=True, name="broken.work")
    def work(self, n):
        for _ in self.track(range(n), step="loop"):
            self.log.info("item")
            self.metric("m", 1.0)
        return n * 2

    signals.install(app)
    try:
        assert work.apply(args=(5,)).get() == 10
        assert work.apply(args=(3,)).successful()
    finally:
        signals.uninstall(app)


def test_hooks_swallow_their_own_errors(caplog):
    app = Celery("guarded", broker="memory://")
    signals.install(app)
    try:
        # A sender without the attributes the hook expects: it must log, not raise.
        assert hooks.on_task_prerun(sender=object(), task_id="t-1", task=object()) is None
        assert hooks.on_task_success(sender=object(), result=object()) is None
        assert hooks.on_before_task_publish(sender="x", body=None, headers={"id": 5, "retries": "x"}) is None
    finally:
        signals.uninstall(app)
    assert "the task is not affected" in caplog.text
