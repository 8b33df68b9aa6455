"""The OpenAPI document matches the server: every route is documented, every documented
operation exists, and schemathesis, driving a real gateway from the document, finds no 5xx
and no response that contradicts it."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from pathlib import Path

import aiohttp

from tests.conftest import make_token

DESIGN_PATHS = [
    ("GET", "/tasks"), ("POST", "/tasks"), ("GET", "/tasks/{task_id}"), ("PATCH", "/tasks/{task_id}/progress"),
    ("PATCH", "/tasks/{task_id}/status"), ("POST", "/tasks/{task_id}/complete"), ("POST", "/tasks/{task_id}/fail"),
    ("POST", "/tasks/{task_id}/pause"), ("POST", "/tasks/{task_id}/resume"), ("POST", "/tasks/{task_id}/cancel"),
    ("DELETE", "/tasks/{task_id}"), ("GET", "/tasks/stats"), ("GET", "/tasks/{task_id}/logs"),
    ("GET", "/tasks/{task_id}/progress"), ("POST", "/logs"), ("GET", "/logs"), ("GET", "/logs/stats"),
    ("GET", "/notifications"), ("GET", "/users/{user_id}/notifications"),
    ("PATCH", "/notifications/{notification_id}/read"), ("DELETE", "/notifications/{notification_id}"),
    ("GET", "/notifications/stats"), ("GET", "/metrics"), ("GET", "/visualizations/progress-chart"),
    ("GET", "/visualizations/status-distribution"), ("GET", "/visualizations/performance-metrics"),
    ("GET", "/visualizations/activity-heatmap"), ("GET", "/export/tasks.csv"), ("GET", "/export/tasks.json"),
    ("GET", "/openapi.json"),
]
CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
    "response_headers_conformance", "negative_data_rejection", "ignored_auth", "unsupported_method",
])


async def _document(gateway) -> dict:
    async with aiohttp.ClientSession() as s, s.get(gateway.api + "/openapi.json") as r:
        assert r.status == 200
        return await r.json()


async def test_document_lists_every_route_and_every_design_path(gateway):
    doc = await _document(gateway)
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    for method, path in DESIGN_PATHS:
        assert (method, "/api/v1/progress" + path) in documented, (method, path)
    served = set()
    for route in gateway.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and path.startswith("/api/v1/progress") and route.method != "HEAD" and not path.endswith("/ws"):
            served.add((route.method, re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path)))
    assert served == documented
    # Every operation documents its error body and the 401 of a missing token.
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "400" in op["responses"], (method, path)
            if op.get("security") != []:
                assert "401" in op["responses"], (method, path)


async def _seed(gateway) -> str:
    """Some data so generated requests also reach stored rows."""
    user = f"st-{uuid.uuid4().hex[:6]}"
    headers = {"Authorization": f"Bearer {make_token('admin', admin=True)}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        for i in range(3):
            async with s.post(gateway.api + "/tasks", json={"user_id": user, "task_type": "import", "task_name": "seed",
                                                            "status": "running", "tags": ["seed"]}) as r:
                assert r.status == 201
                task_id = (await r.json())["task_id"]
            async with s.patch(gateway.api + f"/tasks/{task_id}/progress", json={"progress": 30 * i}) as r:
                assert r.status == 200
    return user


async def _schemathesis(gateway, token: str, examples: int, tmp_path: Path) -> tuple[int, str]:
    exe = Path(sys.executable).with_name("schemathesis")
    proc = await asyncio.create_subprocess_exec(
        str(exe), "run", gateway.api + "/openapi.json", "--checks", CHECKS, "--max-examples", str(examples),
        "--no-shrink", "--seed", "1", "--workers", "1", "--phases", "examples,coverage,fuzzing",
        "--header", f"Authorization: Bearer {token}", "--request-timeout", "20", "--max-failures", "5",
        "--report", "junit", "--report-dir", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 150)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(text)
    return proc.returncode or 0, text


async def test_schemathesis_admin_finds_no_server_error_or_mismatch(gateway, tmp_path):
    await _seed(gateway)
    code, out = await _schemathesis(gateway, make_token("admin", admin=True), 12, tmp_path)
    assert code == 0, out[-6000:]
    assert "41 selected" in out or "selected" in out


async def test_schemathesis_user_finds_no_server_error_or_mismatch(gateway, tmp_path):
    user = await _seed(gateway)
    code, out = await _schemathesis(gateway, make_token(user), 4, tmp_path)
    assert code == 0, out[-6000:]
