"""Fixtures of the fault-injection suite: servers of its own (killed and restarted by the
tests, never the session's), a tracked producer app pointed wherever a test needs, and
WebSocket client sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest
from celery import Celery

import signals
from tracker.demo.services import PostgresServer, RedisServer
from tracker.migrate import upgrade


@pytest.fixture()
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test with an append-only file: a SIGKILL loses nothing it acknowledged."""
    server = RedisServer(appendonly=True).start()
    yield server
    server.cleanup()


@pytest.fixture()
def own_pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    upgrade(server.url)
    yield server
    server.cleanup()


@contextmanager
def producer(broker_url: str, database_url: str, redis_url: str) -> Iterator[Celery]:
    """A tracked producer app (pending rows and events go to the given servers)."""
    app = Celery("faults-producer", broker=broker_url)
    app.conf.update(tracker_database_url=database_url, tracker_redis_url=redis_url, task_ignore_result=True,
                    broker_connection_retry_on_startup=True)
    signals.install(app)
    try:
        yield app
    finally:
        signals.uninstall(app)  # flushes and stops this process's writers
        app.close()


@pytest.fixture()
async def ws_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


def final_count(sql: Any, ids: list[str]) -> int:
    row = sql.execute("SELECT count(*) FROM tracker_tasks WHERE task_id = ANY(%s) "
                      "AND status IN ('completed', 'failed', 'cancelled')", (ids,)).fetchone()
    return int(row[0])
