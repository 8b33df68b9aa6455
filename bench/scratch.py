"""A scratch database on the benchmark's PostgreSQL server: migrated, then dropped.

Benchmarks that load or truncate tables do it here, never in the database they were given.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from tracker.config import psycopg_url
from tracker.migrate import upgrade

__all__ = ["scratch_database"]


@contextmanager
def scratch_database(database_url: str, prefix: str = "bench") -> Iterator[str]:
    """Yield the URL of a new, migrated database next to ``database_url``; drop it afterwards."""
    base = psycopg_url(database_url)
    head, _, _ = base.rpartition("/")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"{head}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
