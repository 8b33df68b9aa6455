"""Run the shared query builders (``tracker.queries``) on the gateway's async engine."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.engine import Row

from webgate.core.keys import ENGINE

__all__ = ["fetch_all", "fetch_one", "execute"]


async def fetch_all(app: web.Application, stmt: Any) -> list[Row[Any]]:
    async with app[ENGINE].connect() as conn:
        result = await conn.execute(stmt)
        return list(result)


async def fetch_one(app: web.Application, stmt: Any) -> Row[Any] | None:
    rows = await fetch_all(app, stmt)
    return rows[0] if rows else None


async def execute(app: web.Application, stmt: Any) -> Any:
    """Run a write in its own transaction; returns the result's rows if it has any."""
    async with app[ENGINE].begin() as conn:
        result = await conn.execute(stmt)
        return list(result) if result.returns_rows else result.rowcount
