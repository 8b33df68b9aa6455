"""A small REST client for the REST tests: JSON in, ``(status, body)`` out, tokens by user."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.conftest import make_token

__all__ = ["Api", "Reply", "new_user", "stream_events"]


def new_user(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any
    text: str

    def error_code(self) -> str:
        assert isinstance(self.body, dict) and "error" in self.body, self.text[:500]
        assert set(self.body["error"]) >= {"code", "message"}
        return str(self.body["error"]["code"])


class Api:
    def __init__(self, session: aiohttp.ClientSession, api: str) -> None:
        self.session = session
        self.api = api

    async def call(self, method: str, path: str, user: str | None = None, *, admin: bool = False,
                   token: str | None = None, json_body: Any = None, data: Any = None,
                   params: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Reply:
        h = dict(headers or {})
        if token is None and user is not None:
            token = make_token(user, admin=admin)
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {"headers": h, "params": params}
        if json_body is not None:
            kwargs["json"] = json_body
        elif data is not None:
            kwargs["data"] = data
        async with self.session.request(method, self.api + path, **kwargs) as r:
            text = await r.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = None
            return Reply(r.status, body, r.headers, text)

    async def admin(self, method: str, path: str, **kw: Any) -> Reply:
        return await self.call(method, path, "admin", admin=True, **kw)

    async def create(self, user: str | None, **fields: Any) -> dict[str, Any]:
        body = {"user_id": user, "task_type": "import", "task_name": "Import", **fields}
        r = await self.admin("POST", "/tasks", json_body=body)
        assert r.status == 201, r.text
        return r.body  # type: ignore[no-any-return]


def stream_events(rdb: Any, task_id: str, prefix: str = "tracker") -> list[tuple[str, dict[str, Any]]]:
    """``(type, data)`` of every event about ``task_id`` still in the stream."""
    out = []
    for _id, fields in rdb.xrange(f"{prefix}:events"):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if f.get("task_id") == task_id:
            out.append((f["type"], json.loads(f.get("data") or "{}")))
    return out
