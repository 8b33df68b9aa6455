"""REST hardening against a real gateway: the /metrics token, CSV formula escaping, deeply nested
JSON bodies, the dashboard's CSP and bounded exports (concurrency per user, write timeout)."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import eventually
from tests.webgate.conftest import FeedGateway
from tests.webgate.rest_client import Api, new_user
from tracker.config import TrackerConfig

API = "/api/v1/progress"
METRICS_TOKEN = "metrics-" + "k" * 40


@pytest.fixture()
async def gateway_with(tracker_env: dict[str, str]) -> AsyncIterator[Any]:
    """Factory: a gateway started in this loop with config fields replaced."""
    started: list[FeedGateway] = []

    async def make(**changes: Any) -> FeedGateway:
        gw = FeedGateway(TrackerConfig.from_env().replace(**changes))
        started.append(gw)
        return await gw.start()

    yield make
    for gw in started:
        await gw.stop()




def error_code(body: Any) -> str:
    assert isinstance(body, dict) and set(body["error"]) >= {"code", "message"}, body
    return str(body["error"]["code"])


async def test_metrics_token_required_when_set(gateway, gateway_with):
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.base + "/metrics") as r:  # no token configured: open
            assert r.status == 200
        gw = await gateway_with(metrics_token=METRICS_TOKEN)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN},
                        {"Authorization": f"Bearer {METRICS_TOKEN}x"}):
            async with s.get(gw.base + "/metrics", headers=headers) as r:
                assert r.status == 401, headers
                assert error_code(await r.json()) == "unauthorized"
        async with s.get(gw.base + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            assert "tracker_store_up" in await r.text()


async def test_csv_export_escapes_formula_cells(gateway):
    user = new_user("csv")
    name = '=HYPERLINK("http://evil.example/","click")'
    async with aiohttp.ClientSession() as s:
        api = Api(s, gateway.base + API)
        task = await api.create(user, task_name=name, task_type="@cmd", metadata={"note": "+1"},
                                tags=["-x"])
        plain = await api.create(user, task_name="harmless", task_type="import")
        r = await api.call("GET", "/export/tasks.csv", user)
        assert r.status == 200, r.text
    rows = {row["task_id"]: row for row in csv.DictReader(io.StringIO(r.text))}
    assert rows[task["task_id"]]["name"] == "'" + name
    assert rows[task["task_id"]]["task_type"] == "'@cmd"
    assert rows[plain["task_id"]]["name"] == "harmless"
    assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows.values() for v in row.values())


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("shape", ["object", "array"])
async def test_deep_json_is_400_on_every_body_path(gateway, shape):
    deep = nested(100) if shape == "object" else "[" * 100 + "]" * 100
    user = new_user("deep")
    async with aiohttp.ClientSession() as s:
        api = Api(s, gateway.base + API)
        task = await api.create(user)
        for method, path in (("POST", "/tasks"), ("PATCH", f"/tasks/{task['task_id']}/progress"),
                             ("POST", "/logs"), ("POST", "/notifications")):
            r = await api.admin(method, path, data=deep, headers={"Content-Type": "application/json"})
            assert r.status == 400, (path, r.status, r.text[:300])
            assert r.error_code() == "bad_request" and "64" in r.body["error"]["message"], r.text
        # Brackets inside strings do not count, and 64 levels are still parsed (then schema-checked).
        ok = await api.admin("POST", "/tasks", json_body={"user_id": user, "task_name": "[{" * 100})
        assert ok.status == 201, ok.text
        r = await api.admin("POST", "/tasks", data='{"user_id": "u", "metadata": ' + nested(63) + "}",
                            headers={"Content-Type": "application/json"})
        assert r.status == 201, r.text


async def test_dashboard_csp_connect_src_is_own_origin(gateway):
    async with aiohttp.ClientSession() as s, s.get(gateway.base + "/") as r:
        assert r.status == 200
        policy = r.headers["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in policy.split(";") if d.strip()}
    connect = directives["connect-src"]
    host = f"127.0.0.1:{gateway.port}"
    assert "'self'" in connect
    assert set(connect) <= {"'self'", f"ws://{host}", f"wss://{host}"}, connect
    assert "ws:" not in connect and "wss:" not in connect and "*" not in connect


async def test_exports_bounded_per_user_and_slow_readers_cut(gateway_with, sql):
    from webgate.api.tasks import _EXPORTS

    user, other = new_user("exp"), new_user("exp")
    # ~20 MB of CSV: far more than the socket buffers, so a reader that does not read holds its export.
    sql.execute("INSERT INTO tracker_tasks (task_id, name, user_id, task_type) "
                "SELECT %s || g, repeat('x', 5000), %s, 'bulk' FROM generate_series(1, 4000) g",
                (f"{user}-{uuid.uuid4().hex[:6]}-", user))
    try:
        gw = await gateway_with(export_max_concurrent=2, export_write_timeout=1.0)
        from tests.conftest import make_token

        headers = {"Authorization": f"Bearer {make_token(user)}"}
        url = gw.base + API + "/export/tasks.csv"
        async with aiohttp.ClientSession() as s1, aiohttp.ClientSession() as s2, aiohttp.ClientSession() as s3:
            held = [await s.get(url, headers=headers) for s in (s1, s2)]
            assert [r.status for r in held] == [200, 200]
            r = await s3.get(url, headers=headers)
            assert r.status == 429 and error_code(await r.json()) == "rate_limited"
            r = await s3.get(url, headers={"Authorization": f"Bearer {make_token(other)}"})
            assert r.status == 200 and (await r.text()).startswith("task_id,")  # other users are not held up
            # The stalled readers are cut by the write timeout, which frees the user's slots.
            await eventually(lambda: user not in gw.app[_EXPORTS])
            for h in held:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await h.read()
                h.release()
            r = await s3.get(url, headers=headers)
            assert r.status == 200
            rows = list(csv.reader(io.StringIO(await r.text())))
            assert len(rows) == 4001 and rows[1][0].startswith(user)
    finally:
        sql.execute("DELETE FROM tracker_tasks WHERE user_id = %s", (user,))
