"""A pytest plugin for testing your own tracked tasks (registered under ``pytest11``).

Installed with celery-tracking, it gives every test suite:

- ``tracker_database_url`` / ``tracker_redis_url`` (session): a throw-away PostgreSQL (migrated)
  and Redis started from the local binaries in a temporary directory, or the servers named by
  ``TRACKER_TEST_DATABASE_URL`` / ``TRACKER_TEST_REDIS_URL`` when those are set;
  under pytest-xdist every worker gets servers of its own, or, on those named servers, a
  database of its own (``<database>_gw0``, ``<database>_gw1``, ... in PostgreSQL, created and
  migrated on first use; in Redis the database ``/<n + k>`` for worker ``gw<k>`` when the URL
  names ``/<n>``);
- ``tracker``: a :class:`tracker.Tracker` on them;
- ``track_app``: ``track_app(app)`` points a Celery app's tracking at them and installs the hooks
  for one test (uninstalled afterwards); it returns a :class:`TrackedApp` whose ``flush()`` makes
  everything recorded so far readable, for eager tasks (``task_always_eager=True``) as for
  ``celery.contrib.pytest``'s in-thread worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

from tracker.api import Tracker
from tracker.config import psycopg_url
from tracker.demo.services import PostgresServer, RedisServer, ensure_database
from tracker.migrate import upgrade

__all__ = ["TrackedApp", "tracker_postgres", "tracker_redis", "tracker_database_url", "tracker_redis_url", "tracker",
           "track_app"]


_Server = TypeVar("_Server", PostgresServer, RedisServer)


def _xdist_worker() -> str | None:
    """This process's pytest-xdist worker id (``gw0``, ``gw1``, ...), None outside xdist. Read from
    the environment xdist sets rather than its ``worker_id`` fixture: the plugin must work where
    pytest-xdist is not installed."""
    return os.environ.get("PYTEST_XDIST_WORKER") or None


def _worker_database(url: str) -> str:
    """``url``, or under pytest-xdist the same server's database ``<name>_<worker>`` (created when
    missing): two workers sharing one database would see and clean up each other's rows."""
    from sqlalchemy.engine import make_url

    worker = _xdist_worker()
    if worker is None:
        return url
    parsed = make_url(url)
    name = f"{parsed.database or 'postgres'}_{worker}"
    ensure_database(psycopg_url(url), name)
    return parsed.set(database=name).render_as_string(hide_password=False)


def _worker_redis(url: str) -> str:
    """``url``, or under pytest-xdist the database ``<n> + <worker number>`` of the same Redis: the
    workers' streams and control keys stay apart."""
    worker = _xdist_worker()
    if worker is None or not worker.removeprefix("gw").isdigit():
        return url
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0) + int(worker.removeprefix("gw"))
    return urlunsplit(parts._replace(path=f"/{db}"))


def _server_or_url(env: str, server: type[_Server], prepare: Callable[[str], object] | None = None,
                   per_worker: Callable[[str], str] = str) -> Iterator[_Server | str]:
    """The URL in ``env`` (``per_worker(url)`` under pytest-xdist) when it is set, else a throw-away
    ``server`` (one per xdist worker: each worker is a session of its own), cleaned up afterwards;
    ``prepare(url)`` runs on either before it is yielded (the migrations, for PostgreSQL)."""
    url = os.environ.get(env)
    if url:
        url = per_worker(url)
        if prepare is not None:
            prepare(url)
        yield url
        return
    started = server().start()
    try:
        if prepare is not None:
            prepare(started.url)
        yield started
    finally:
        started.cleanup()


@pytest.fixture(scope="session")
def tracker_postgres() -> Iterator[PostgresServer | str]:
    """The session's PostgreSQL, migrated: a throw-away server (a :class:`PostgresServer`, which
    fault tests may stop and restart) or the URL in ``TRACKER_TEST_DATABASE_URL``."""
    yield from _server_or_url("TRACKER_TEST_DATABASE_URL", PostgresServer, upgrade, _worker_database)


@pytest.fixture(scope="session")
def tracker_database_url(tracker_postgres: PostgresServer | str) -> str:
    """The URL of the session's migrated PostgreSQL."""
    return tracker_postgres if isinstance(tracker_postgres, str) else tracker_postgres.url


@pytest.fixture(scope="session")
def tracker_redis() -> Iterator[RedisServer | str]:
    """The session's Redis: a throw-away server or the URL in ``TRACKER_TEST_REDIS_URL``."""
    yield from _server_or_url("TRACKER_TEST_REDIS_URL", RedisServer, per_worker=_worker_redis)


@pytest.fixture(scope="session")
def tracker_redis_url(tracker_redis: RedisServer | str) -> str:
    """The URL of the session's Redis."""
    return tracker_redis if isinstance(tracker_redis, str) else tracker_redis.url


@pytest.fixture()
def tracker(tracker_database_url: str, tracker_redis_url: str) -> Iterator[Tracker]:
    """A :class:`Tracker` on the throw-away store and bus."""
    t = Tracker(database_url=tracker_database_url, redis_url=tracker_redis_url)
    yield t
    t.close()


@dataclass
class TrackedApp:
    """A Celery app tracked into the test's store, with the :class:`Tracker` that reads it."""

    app: Any
    tracker: Tracker

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything this process recorded so far (tracking batches its writes)."""
        from signals.hooks import runtime_for_app

        rt = runtime_for_app(self.app)
        return rt.flush(timeout) if rt is not None else True


@pytest.fixture()
def track_app(tracker_database_url: str, tracker_redis_url: str) -> Iterator[Callable[[Any], TrackedApp]]:
    """``track_app(app)``: track ``app`` into the test's store for this test."""
    import signals  # the hooks are only needed by tests that track an app

    installed: list[TrackedApp] = []

    def install(app: Any) -> TrackedApp:
        app.conf.tracker_database_url = tracker_database_url
        app.conf.tracker_redis_url = tracker_redis_url
        signals.install(app)
        tracked = TrackedApp(app, Tracker.from_celery(app))
        installed.append(tracked)
        return tracked

    yield install
    for tracked in installed:
        tracked.flush()
        signals.uninstall(tracked.app)
        tracked.tracker.close()
