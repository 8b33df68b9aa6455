"""Charts as Plotly figure JSON built from stored data, saved dashboards, and metric series."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import aiohttp
import plotly.graph_objects as go
import pytest

from tests.webgate.rest_client import Api, new_user


@pytest.fixture()
async def api(gateway):
    async with aiohttp.ClientSession() as session:
        yield Api(session, gateway.api)


def valid_figure(fig: dict) -> go.Figure:
    """Plotly's own validation: raises on any property it does not know."""
    assert set(fig) == {"data", "layout"}
    return go.Figure(fig)


async def test_progress_chart_follows_the_history(api):
    user = new_user()
    t = await api.create(user, status="running", task_name="Nightly import")
    for pct, step in ((10, "download"), (60, "parse"), (90, "load")):
        await api.call("PATCH", f"/tasks/{t['task_id']}/progress", user,
                       json_body={"progress": pct, "current_step": step})
    r = await api.call("GET", "/visualizations/progress-chart", user, params={"task_id": t["task_id"]})
    assert r.status == 200
    fig = valid_figure(r.body)
    (trace,) = r.body["data"]
    assert trace["type"] == "scatter" and trace["y"] == [10, 60, 90] and trace["text"] == ["download", "parse", "load"]
    assert r.body["layout"]["title"]["text"] == "Progress of Nightly import" and fig.layout.yaxis.range == (0, 100)
    area = await api.call("GET", "/visualizations/progress-chart", user,
                          params={"task_id": t["task_id"], "chart": "area"})
    assert area.body["data"][0]["fill"] == "tozeroy"
    gauge = await api.call("POST", "/visualizations/progress-chart", user,
                           json_body={"task_id": t["task_id"], "chart": "gauge"})
    assert gauge.status == 200 and gauge.body["data"][0]["type"] == "indicator"
    assert gauge.body["data"][0]["value"] == 90
    valid_figure(gauge.body)

    assert (await api.call("GET", "/visualizations/progress-chart", new_user(),
                           params={"task_id": t["task_id"]})).status == 403
    assert (await api.call("GET", "/visualizations/progress-chart", user, params={"task_id": "nope"})).status == 404
    missing = await api.call("GET", "/visualizations/progress-chart", user)
    assert missing.status == 400 and "task_id" in missing.body["error"]["message"]
    bad = await api.call("GET", "/visualizations/progress-chart", user, params={"task_id": "x", "chart": "donut"})
    assert bad.status == 400


async def test_status_distribution(api):
    user = new_user()
    for status in ("running", "running", "pending", "completed"):
        await api.create(user, status=status)
    r = await api.call("GET", "/visualizations/status-distribution", user)
    valid_figure(r.body)
    (pie,) = r.body["data"]
    assert pie["type"] == "pie" and dict(zip(pie["labels"], pie["values"], strict=True)) == {
        "pending": 1, "running": 2, "completed": 1}
    assert r.body["layout"]["meta"]["total"] == 4
    bar = await api.call("POST", "/visualizations/status-distribution", user, json_body={"chart": "bar"})
    assert bar.body["data"][0]["type"] == "bar" and sum(bar.body["data"][0]["y"]) == 4
    nobody = await api.call("GET", "/visualizations/status-distribution", new_user())
    assert nobody.body["layout"]["meta"]["total"] == 0
    assert (await api.call("GET", "/visualizations/status-distribution", new_user(),
                           params={"user_id": user})).status == 403
    assert (await api.call("POST", "/visualizations/status-distribution", user, json_body={"chart": 3})).status == 400


async def test_performance_metrics_by_task_type(api):
    user = new_user()
    kind = f"perf-{user}"
    for outcome in ("complete", "complete", "complete", "fail"):
        t = await api.create(user, task_type=kind, status="running")
        await api.call("POST", f"/tasks/{t['task_id']}/{outcome}", user)
    r = await api.call("GET", "/visualizations/performance-metrics", user, params={"since": "-1h", "bucket": "1m"})
    assert r.status == 200, r.text
    valid_figure(r.body)
    success, p50, p95, *throughput = r.body["data"]
    assert success["x"] == [kind] and success["y"] == [pytest.approx(75.0)]
    assert p50["x"] == [kind] and p50["y"][0] is not None and p95["y"][0] >= p50["y"][0]
    (line,) = throughput
    assert line["name"] == f"{kind} finished" and sum(line["y"]) == 4  # 4 finished, counted per bucket
    (group,) = r.body["layout"]["meta"]["groups"]
    assert group["completed"] == 3 and group["failed"] == 1
    posted = await api.call("POST", "/visualizations/performance-metrics", user,
                            json_body={"since": "-1h", "bucket": "1m"})
    assert posted.status == 200 and posted.body["data"][0]["y"] == success["y"]
    too_many = await api.call("GET", "/visualizations/performance-metrics", user, params={"since": "-30d",
                                                                                          "bucket": "1s"})
    assert too_many.status == 400 and "buckets" in too_many.body["error"]["message"]
    assert (await api.call("GET", "/visualizations/performance-metrics", user, params={"bucket": "soon"})).status == 400


async def test_activity_heatmap_counts_by_weekday_and_hour(api):
    user = new_user()
    created = [await api.create(user) for _ in range(3)]
    r = await api.call("GET", "/visualizations/activity-heatmap", user, params={"utc_offset": "90"})
    assert r.status == 200
    valid_figure(r.body)
    (heat,) = r.body["data"]
    assert len(heat["z"]) == 7 and all(len(row) == 24 for row in heat["z"]) and heat["y"][0] == "Mon"
    local = datetime.fromisoformat(created[0]["created_at"]).astimezone(UTC) + timedelta(minutes=90)
    assert heat["z"][local.isoweekday() - 1][local.hour] == 3 and r.body["layout"]["meta"]["total"] == 3
    posted = await api.call("POST", "/visualizations/activity-heatmap", user, json_body={"utc_offset": 90})
    assert posted.status == 200 and posted.body["data"][0]["z"] == heat["z"]
    assert (await api.call("GET", "/visualizations/activity-heatmap", user,
                           params={"utc_offset": "5000"})).status == 400
    assert (await api.call("POST", "/visualizations/activity-heatmap", user,
                           json_body={"utc_offset": "90"})).status == 400  # JSON bodies are typed


async def test_saved_dashboards(api, sql):
    user, other = new_user(), new_user()
    t = await api.create(user, status="running")
    widgets = [{"type": "progress-chart", "title": "Import", "params": {"task_id": t["task_id"], "chart": "gauge"}},
               {"type": "status-distribution", "params": {"chart": "bar"}},
               {"type": "activity-heatmap", "params": {"utc_offset": 60}}]
    r = await api.call("POST", "/visualizations/dashboards", user, json_body={"name": "Ops", "widgets": widgets})
    assert r.status == 201, r.text
    board = r.body
    assert board["name"] == "Ops" and board["user_id"] == user and len(board["widgets"]) == 3
    seed_path = await api.call("POST", "/visualizations/dashboard", user, json_body={"name": "Empty"})
    assert seed_path.status == 201 and seed_path.body["widgets"] == []

    listed = await api.call("GET", "/visualizations/dashboards", user)
    assert [b["name"] for b in listed.body["items"]] == ["Empty", "Ops"]
    assert (await api.call("GET", "/visualizations/dashboards", other)).body["items"] == []

    view = await api.call("GET", f"/visualizations/dashboards/{board['id']}", user)
    assert view.status == 200 and [f["type"] for f in view.body["figures"]] == [w["type"] for w in widgets]
    assert all(f["error"] is None for f in view.body["figures"])
    assert view.body["figures"][0]["figure"]["data"][0]["type"] == "indicator"
    for f in view.body["figures"]:
        valid_figure(f["figure"])
    same = await api.call("GET", f"/visualizations/dashboard/{board['id']}", user)
    assert same.status == 200 and len(same.body["figures"]) == 3

    # A widget whose task is gone renders an error; the rest still render.
    assert (await api.call("POST", f"/tasks/{t['task_id']}/complete", user)).status == 200
    assert (await api.call("DELETE", f"/tasks/{t['task_id']}", user)).status == 204
    view = await api.call("GET", f"/visualizations/dashboards/{board['id']}", user)
    assert view.body["figures"][0]["figure"] is None and view.body["figures"][0]["error"]["code"] == "404"
    assert view.body["figures"][1]["figure"] is not None

    assert (await api.call("GET", f"/visualizations/dashboards/{board['id']}", other)).status == 403
    assert (await api.call("DELETE", f"/visualizations/dashboards/{board['id']}", other)).status == 403
    assert (await api.call("GET", "/visualizations/dashboards/987654321", user)).status == 404
    assert (await api.call("DELETE", f"/visualizations/dashboards/{board['id']}", user)).status == 204
    assert (await api.call("GET", f"/visualizations/dashboards/{board['id']}", user)).status == 404


@pytest.mark.parametrize("body", [
    {"name": ""}, {"widgets": []}, {"name": "x", "widgets": [{"type": "pie-in-the-sky"}]},
    {"name": "x", "widgets": [{"type": "activity-heatmap", "params": {"utc_offset": 9999}}]},
    {"name": "x", "widgets": [{"type": "progress-chart", "params": {}}]},
    {"name": "x", "widgets": [{"type": "status-distribution", "params": {"colour": "red"}}]},
    {"name": "x", "widgets": [{"type": "status-distribution"}] * 25}, {"name": "x", "owner": "y"},
])
async def test_bad_dashboards_are_400_and_not_saved(api, sql, body):
    user = new_user()
    r = await api.call("POST", "/visualizations/dashboards", user, json_body=body)
    assert r.status == 400 and r.body["error"]["code"] == "bad_request", r.text
    assert sql.execute("SELECT count(*) FROM tracker_dashboards WHERE user_id = %s", (user,)).fetchone()[0] == 0


# -- metric series ------------------------------------------------------------------------------------------
async def test_metric_series_buckets_and_scoping(api, sql):
    user = new_user()
    name = f"rows-{user}"
    base = datetime.now(UTC).replace(second=5, microsecond=0) - timedelta(minutes=3)
    for minute, value in ((0, 10.0), (0, 30.0), (2, 50.0)):
        sql.execute("INSERT INTO tracker_metrics (name, value, unit, labels, user_id, task_type, ts) "
                    "VALUES (%s, %s, 'count', %s::jsonb, %s, 'import', %s)",
                    (name, value, json.dumps({}), user, base + timedelta(minutes=minute)))
    r = await api.call("GET", "/metrics", user, params={"name": name, "bucket": "1m", "since": "-10m"})
    assert r.status == 200 and r.body["agg"] == "avg"
    assert [i["value"] for i in r.body["items"]] == [20.0, 50.0]
    first = datetime.fromisoformat(r.body["items"][0]["ts"])
    assert first == base.replace(second=0)
    total = await api.call("GET", "/metrics", user, params={"name": name, "bucket": "1h", "agg": "sum", "since": "-2h"})
    assert sum(i["value"] for i in total.body["items"]) == 90.0
    counted = await api.call("GET", "/metrics", user, params={"name": name, "bucket": "5m", "agg": "count",
                                                              "since": "-10m", "task_type": "import"})
    assert sum(i["value"] for i in counted.body["items"]) == 3
    assert (await api.call("GET", "/metrics", new_user(), params={"name": name})).body["items"] == []
    assert (await api.call("GET", "/metrics", new_user(), params={"name": name, "user_id": user})).status == 403
    admin = await api.admin("GET", "/metrics", params={"name": name, "since": "-10m", "agg": "max"})
    assert max(i["value"] for i in admin.body["items"]) == 50.0
    for params in ({}, {"name": name, "bucket": "0m"}, {"name": name, "agg": "median"},
                   {"name": name, "since": "-400d", "bucket": "1s"}):
        assert (await api.call("GET", "/metrics", user, params=params)).status == 400, params
