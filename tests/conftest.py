"""Shared fixtures: real PostgreSQL, Redis and Celery prefork workers.

Throw-away servers are started from the local binaries unless
``TRACKER_TEST_DATABASE_URL`` / ``TRACKER_TEST_REDIS_URL`` point at running ones.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg
import pytest
import redis as redis_lib

from tracker import Tracker
from tracker.config import TrackerConfig
from tracker.demo.services import PostgresServer, RedisServer, free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-of-the-celery-tracking-suite"  # >= 32 bytes, as HS256 wants


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` as a browser's ``JSON.parse`` (or PostgreSQL's ``jsonb``) reads: NaN,
    Infinity and -Infinity are not JSON."""
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}")


async def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "", interval: float = 0.1) -> Any:
    """``wait_for`` for async tests: polls without blocking the event loop (which may serve the
    gateway under test). ``check`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last={last!r}")


#: Chromium's flags for tests: headless on a shared machine, no sandbox (root), nothing in the background.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright's sync API, for the module's tests."""
    import shutil

    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is needed (apt-get install -y chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


def user_ids(prefix: str) -> Callable[[str], str]:
    """``uid(role)``: a fresh user id ``<prefix>-<role>-<hex>``; a module's prefix lets it clean up after itself."""

    def uid(role: str) -> str:
        return f"{prefix}-{role}-{uuid.uuid4().hex[:6]}"

    return uid


def forget_notifications(where: str) -> Any:
    """A module-scoped autouse fixture deleting the notifications that match ``where`` (SQL) when the
    module ends: rows left pending would otherwise be queued again by later gateways of the session."""

    @pytest.fixture(scope="module", autouse=True)
    def _forget(database_url: str) -> Iterator[None]:
        yield
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DELETE FROM tracker_notifications WHERE {where}")

    return _forget


# The servers come from the installed pytest plugin (tracker.testing): one harness for users and us.
@pytest.fixture(scope="session")
def pg(tracker_postgres: PostgresServer | str) -> PostgresServer | str:
    return tracker_postgres


@pytest.fixture(scope="session")
def database_url(tracker_database_url: str) -> str:
    return tracker_database_url


@pytest.fixture(scope="session")
def redis_server(tracker_redis: RedisServer | str) -> RedisServer | str:
    return tracker_redis


@pytest.fixture(scope="session")
def redis_url(tracker_redis_url: str) -> str:
    return tracker_redis_url


@pytest.fixture(scope="session")
def broker_url(redis_url: str) -> str:
    """The Celery broker: a database of its own on the session's Redis. Under pytest-xdist on a shared
    Redis (``TRACKER_TEST_REDIS_URL``) worker ``gw<k>`` tracks into database ``/<n + k>``, so the
    brokers take the databases after all of those (without xdist: ``/<n + 1>``)."""
    base, db = redis_url.rsplit("/", 1)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return f"{base}/{int(db) + workers}"


@pytest.fixture(scope="session")
def tracker_env(database_url: str, redis_url: str, broker_url: str) -> dict[str, str]:
    """Environment of every process the tests start (and of this one)."""
    env = {
        "TRACKER_DATABASE_URL": database_url,
        "TRACKER_REDIS_URL": redis_url,
        "TRACKER_SECRET": SECRET,
        "TRACKER_TEST_BROKER_URL": broker_url,
        "TRACKER_FLUSH_INTERVAL": "0.1",
    }
    os.environ.update(env)
    from tests.apps.tasks import app

    app.conf.broker_url = broker_url
    return env


@pytest.fixture()
def tracker(tracker_env: dict[str, str]) -> Iterator[Tracker]:
    t = Tracker(database_url=tracker_env["TRACKER_DATABASE_URL"], redis_url=tracker_env["TRACKER_REDIS_URL"])
    yield t
    t.close()


@pytest.fixture()
def config(tracker_env: dict[str, str]) -> TrackerConfig:
    return TrackerConfig.from_env()


@pytest.fixture()
def rdb(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture()
def sql(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(database_url, autocommit=True)
    yield conn
    conn.close()


@pytest.fixture()
def tracked_app(tracker_env: dict[str, str]) -> Iterator[Any]:
    """The test Celery app with tracking installed in this (producer) process, for one test."""
    import signals
    from signals import hooks, runtime
    from tests.apps.tasks import app

    signals.install(app)
    yield app
    signals.uninstall(app)  # flushes and stops this process's writers
    assert not runtime._runtimes, "writers left running"
    assert not hooks.is_installed(), "receivers left connected"


class Worker:
    """A real ``celery worker`` (prefork) in a subprocess, consuming its own queue."""

    def __init__(self, env: dict[str, str], tmp: Path, concurrency: int = 2, app: str = "tests.apps.worker",
                 extra_env: dict[str, str] | None = None, pool: str = "prefork", queue: str | None = None) -> None:
        self.queue = queue or f"q-{uuid.uuid4().hex[:8]}"
        self.name = f"w-{self.queue}@localhost"
        self.logfile = tmp / f"{self.queue}.log"
        full_env = {**os.environ, **env, **(extra_env or {}), "PYTHONPATH": str(ROOT)}
        args = [sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency),
                "-Q", self.queue, "-n", self.name, "--without-mingle", "--without-gossip", "-l", "INFO",
                "--logfile", str(self.logfile)]
        self.proc = subprocess.Popen(args, env=full_env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.logfile.exists() and "ready." in self.logfile.read_text(errors="replace")
                 or self._dead(), timeout=60, what="worker ready")
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited: {self.log()[-3000:]}")

    def _dead(self) -> bool:
        return self.proc.poll() is not None

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def children(self) -> list[int]:
        import psutil

        return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]

    def stop(self, timeout: float = 30) -> None:
        stop_process(self.proc, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def worker(tracker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(tracker_env, tmp_path_factory.mktemp("worker"))
    yield w
    w.stop()


class _Stoppable(Protocol):
    def stop(self) -> Any: ...


_S = TypeVar("_S", bound=_Stoppable)


def stopped_after(start: Callable[..., _S]) -> Iterator[Callable[..., _S]]:
    """The body of a factory fixture: yields ``start`` and stops whatever it started, once the test ends."""
    started: list[_S] = []

    def make(**kw: Any) -> _S:
        started.append(start(**kw))
        return started[-1]

    yield make
    for item in started:
        item.stop()


@pytest.fixture()
def make_worker(tracker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    yield from stopped_after(lambda **kw: Worker(tracker_env, tmp_path, **kw))


# -- gateway -----------------------------------------------------------------------------------------
class Gateway:
    """A gateway on a real port: in this test's event loop (``gateway``) or in a subprocess
    (``gateway_process``)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/api/v1/progress/ws"
        self.api = f"{self.base}/api/v1/progress"


def make_token(user_id: str, admin: bool = False, ttl: int = 3600) -> str:
    from webgate.core.auth import make_token as mint

    return mint(SECRET, user_id, admin=admin, ttl=ttl)


@pytest.fixture()
async def gateway(tracker_env: dict[str, str]) -> Any:
    """The gateway app served in-process on a free port (the Celery test app attached)."""
    from aiohttp import web

    from tests.apps.tasks import app as celery_app
    from webgate import create_app

    port = free_port()
    app = create_app(TrackerConfig.from_env(), celery_app=celery_app)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    gw = Gateway(port)
    gw.app = app  # type: ignore[attr-defined]
    yield gw
    await runner.cleanup()


class GatewayProcess(Gateway):
    """``tracker gateway`` in a subprocess: for restarts and signals."""

    def __init__(self, env: dict[str, str], tmp: Path, port: int | None = None,
                 extra_env: dict[str, str] | None = None) -> None:

        super().__init__(port or free_port())
        self.env = {**os.environ, **env, **(extra_env or {}), "PYTHONPATH": str(ROOT)}
        self.logfile = tmp / f"gateway-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        import urllib.request

        log = self.logfile.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracker.cli", "--app", "tests.apps.worker", "gateway", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-migrate"],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.logfile.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(up, timeout=30, what="gateway /healthz")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        return stop_process(self.proc, timeout, sig) if self.proc is not None else None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture()
def gateway_process(tracker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    yield from stopped_after(lambda **kw: GatewayProcess(tracker_env, tmp_path, **kw))
