"""Celery apps the overhead benchmark runs on real workers: the same no-op task, untracked
(:mod:`bench.apps.plain`) and tracked (:mod:`bench.apps.tracked`)."""

from __future__ import annotations

import os

from celery import Celery

__all__ = ["make_app"]


def make_app(name: str) -> Celery:
    """A Celery app on ``BENCH_BROKER_URL`` with one task, ``bench.noop``; nothing else differs."""
    app = Celery(name, broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/1"))
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )

    @app.task(name="bench.noop", shared=False)
    def noop(i: int = 0) -> None:
        return None

    return app
