"""Every REST operation refuses a missing, malformed, forged or expired token with a JSON 401,
and touches nothing when it does."""

from __future__ import annotations

import time

import aiohttp
import jwt
import pytest

from tests.conftest import SECRET
from webgate.api.common import Operation
from webgate.api.factory import OPERATIONS

OPS = [op for op in OPERATIONS if op.auth]
_SAMPLE = {"task_id": "some-task", "user_id": "someone", "notification_id": "1", "dashboard_id": "1",
           "hostname": "some-worker"}


def _path(op: Operation) -> str:
    path = op.path
    for name in op.path_params:
        path = path.replace("{" + name + "}", _SAMPLE[name])
    return path


def _tokens() -> dict[str, str | None]:
    now = int(time.time())
    return {
        "missing": None,
        "garbage": "not.a.jwt",
        "forged": jwt.encode({"sub": "admin", "admin": True, "exp": now + 60}, "another-secret-forty-bytes-or-so-long",
                             algorithm="HS256"),
        "expired": jwt.encode({"sub": "admin", "admin": True, "exp": now - 600}, SECRET, algorithm="HS256"),
        "no-subject": jwt.encode({"admin": True, "exp": now + 60}, SECRET, algorithm="HS256"),
    }


def test_every_authenticated_operation_is_covered():
    assert len(OPS) >= 35
    assert {(op.method, op.path) for op in OPS} >= {("POST", "/tasks"), ("GET", "/export/tasks.csv"),
                                                    ("DELETE", "/notifications/{notification_id}")}


@pytest.mark.parametrize("op", OPS, ids=lambda op: f"{op.method} {op.path}")
async def test_bad_tokens_get_json_401(gateway, op, sql):
    body = {"task_id": "auth-probe", "message": "auth probe", "name": "probe", "progress": 1, "status": "running"}
    async with aiohttp.ClientSession() as session:
        for kind, token in _tokens().items():
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            json_body = body if op.body is not None else None
            async with session.request(op.method, gateway.api + _path(op), headers=headers, json=json_body) as r:
                assert r.status == 401, (kind, await r.text())
                assert r.content_type == "application/json"
                err = (await r.json())["error"]
                assert err["code"] == "unauthorized" and err["message"], kind
    # The probe body would have created a task, a log line or a dashboard had it been accepted.
    assert sql.execute("SELECT count(*) FROM tracker_tasks WHERE task_id = 'auth-probe'").fetchone()[0] == 0
    assert sql.execute("SELECT count(*) FROM tracker_logs WHERE message = 'auth probe'").fetchone()[0] == 0
    assert sql.execute("SELECT count(*) FROM tracker_dashboards WHERE name = 'probe'").fetchone()[0] == 0


async def test_openapi_document_needs_no_token(gateway):
    async with aiohttp.ClientSession() as session, session.get(gateway.api + "/openapi.json") as r:
        assert r.status == 200 and (await r.json())["info"]["title"] == "celery-tracking"
