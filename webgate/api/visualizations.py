"""Charts as Plotly figure JSON (``{"data": [...], "layout": {...}}``) and saved dashboards of them.

Figures are built from the shared query builders; the dashboard page renders them with the
bundled ``plotly.min.js`` and any client can do the same. Each chart is available as
``GET /visualizations/<chart>?params`` and, as the seeds have it, ``POST`` with the same
parameters in a JSON body. A saved dashboard is a named list of widgets (chart + params),
rendered on read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tracker import queries as q
from tracker.records import ProgressPoint
from webgate.api.common import (
    Call,
    Endpoints,
    SchemaError,
    check_range,
    no_content,
    owned_row,
    parse_params,
    plotly_layout,
    reply,
    scope_user,
    visible_task,
    when,
)
from webgate.api.models import CHART_QUERIES, CHARTS, STATUSES, DashboardIn, DashboardList, DashboardPath
from webgate.api.schema import ref
from webgate.core.db import execute, fetch_all

__all__ = ["routes", "render_chart", "STATUS_COLORS"]

routes = Endpoints()

Figure = dict[str, Any]

STATUS_COLORS = {"pending": "#94a3b8", "running": "#3b82f6", "paused": "#f59e0b", "completed": "#22c55e",
                 "failed": "#ef4444", "cancelled": "#6b7280"}
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

# -- figures ----------------------------------------------------------------------------------------------
async def progress_chart(call: Call, a: dict[str, Any]) -> Figure:
    task = await visible_task(call, a["task_id"])
    label = task.name or task.task_id
    if a["chart"] == "gauge":
        color = STATUS_COLORS.get(task.status, "#3b82f6")
        return {"data": [{"type": "indicator", "mode": "gauge+number", "value": task.progress,
                          "number": {"suffix": "%"},
                          "gauge": {"axis": {"range": [0, 100]}, "bar": {"color": color}}}],
                "layout": plotly_layout(f"{label}: {task.status}")}
    rows = await fetch_all(call.app, q.progress_history(task.task_id))
    points = [ProgressPoint.from_row(r) for r in rows]
    trace: dict[str, Any] = {"type": "scatter", "name": "progress", "x": [p.ts for p in points],
                             "y": [p.progress for p in points], "text": [p.current_step or "" for p in points],
                             "hovertemplate": "%{y:.1f}% %{text}<extra></extra>",
                             "mode": "markers" if a["chart"] == "scatter" else "lines+markers",
                             "line": {"color": "#3b82f6"}}
    if a["chart"] == "area":
        trace["fill"] = "tozeroy"
    return {"data": [trace], "layout": plotly_layout(f"Progress of {label}", xaxis={"type": "date"},
                                               yaxis={"range": [0, 100], "title": {"text": "%"}})}


async def status_distribution(call: Call, a: dict[str, Any]) -> Figure:
    filters = q.TaskFilters(user_id=scope_user(call, a.get("user_id")), task_type=a.get("task_type"),
                            since=when(a.get("since")), until=when(a.get("until")))
    counts = {r.status: int(r._mapping["count"]) for r in await fetch_all(call.app, q.status_counts(filters))}
    labels = [s for s in STATUSES if counts.get(s)]
    values = [counts[s] for s in labels]
    colors = [STATUS_COLORS[s] for s in labels]
    total = sum(values)
    if a["chart"] == "bar":
        data: list[dict[str, Any]] = [{"type": "bar", "x": labels, "y": values, "marker": {"color": colors}}]
    else:
        data = [{"type": "pie", "labels": labels, "values": values, "hole": 0.45, "sort": False,
                 "marker": {"colors": colors}}]
    return {"data": data, "layout": plotly_layout(f"Status of {total} task{'s' if total != 1 else ''}",
                                            meta={"counts": counts, "total": total})}


async def performance_metrics(call: Call, a: dict[str, Any]) -> Figure:
    user_id = scope_user(call, a.get("user_id"))
    since, until, bucket = when(a.get("since")), when(a.get("until")), a["bucket"]
    check_range(a, bucket)
    groups = [dict(r._mapping) for r in await fetch_all(call.app, q.stats(since, until, "task_type", user_id))]
    if a.get("task_type") is not None:
        groups = [g for g in groups if g["group"] == a["task_type"]]
    series = await fetch_all(call.app, q.throughput_series(bucket, since, until, user_id, a.get("task_type")))
    t0 = q.parse_time(since, "since")
    t1 = q.parse_time(until, "until") or datetime.now(UTC)
    types = [g["group"] or "(none)" for g in groups]

    def col(name: str, scale: float = 1.0) -> list[float | None]:
        return [None if g[name] is None else float(g[name]) * scale for g in groups]

    data: list[dict[str, Any]] = [
        {"type": "bar", "name": "success rate %", "x": types, "y": col("success_rate", 100.0),
         "marker": {"color": "#22c55e"}, "xaxis": "x", "yaxis": "y"},
        {"type": "bar", "name": "p50 duration (s)", "x": types, "y": col("p50_duration"),
         "marker": {"color": "#3b82f6"}, "xaxis": "x2", "yaxis": "y2"},
        {"type": "bar", "name": "p95 duration (s)", "x": types, "y": col("p95_duration"),
         "marker": {"color": "#6366f1"}, "xaxis": "x2", "yaxis": "y2"},
    ]
    by_type: dict[str, tuple[list[Any], list[float]]] = {}
    for r in series:
        xs, ys = by_type.setdefault(r.task_type or "(none)", ([], []))
        xs.append(r.bucket)
        ys.append(int(r.finished))
    for task_type, (xs, ys) in sorted(by_type.items()):
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"{task_type} finished", "x": xs, "y": ys,
                     "xaxis": "x3", "yaxis": "y3", "hovertemplate": "%{y} finished<extra>" + task_type + "</extra>"})
    figure_layout = plotly_layout(
        "Performance by task type", barmode="group", height=560,
        xaxis={"domain": [0, 0.46], "anchor": "y"}, yaxis={"domain": [0.6, 1], "range": [0, 100], "anchor": "x",
                                                           "title": {"text": "success %"}},
        xaxis2={"domain": [0.54, 1], "anchor": "y2"}, yaxis2={"domain": [0.6, 1], "anchor": "x2",
                                                              "title": {"text": "seconds"}},
        xaxis3={"domain": [0, 1], "anchor": "y3", "type": "date",
                "range": [t0.isoformat() if t0 else None, t1.isoformat()]},
        yaxis3={"domain": [0, 0.42], "anchor": "x3", "rangemode": "tozero",
                "title": {"text": f"finished per {bucket}"}},
        meta={"groups": groups, "bucket": bucket}, legend={"orientation": "h", "y": -0.12},
    )
    return {"data": data, "layout": figure_layout}


async def activity_heatmap(call: Call, a: dict[str, Any]) -> Figure:
    user_id = scope_user(call, a.get("user_id"))
    rows = await fetch_all(call.app, q.activity_heatmap(when(a.get("since")), when(a.get("until")), user_id,
                                                        a.get("task_type"), a["utc_offset"]))
    z = [[0] * 24 for _ in range(7)]
    for r in rows:
        z[int(r.dow) - 1][int(r.hour)] = int(r._mapping["count"])
    return {"data": [{"type": "heatmap", "z": z, "x": [f"{h:02d}" for h in range(24)], "y": WEEKDAYS,
                      "colorscale": [[0, "#f1f5f9"], [0.001, "#dbeafe"], [1, "#1d4ed8"]], "xgap": 2, "ygap": 2,
                      "zmin": 0, "hovertemplate": "%{y} %{x}:00 - %{z} tasks<extra></extra>"}],
            "layout": plotly_layout("Activity by weekday and hour", xaxis={"title": {"text": "hour"}, "dtick": 1},
                              yaxis={"autorange": "reversed"}, meta={"total": sum(map(sum, z))})}


_BUILDERS: dict[str, Callable[[Call, dict[str, Any]], Awaitable[Figure]]] = {
    "progress-chart": progress_chart, "status-distribution": status_distribution,
    "performance-metrics": performance_metrics, "activity-heatmap": activity_heatmap,
}


async def render_chart(call: Call, kind: str, params: dict[str, Any]) -> Figure:
    return await _BUILDERS[kind](call, params)


def _register_chart(kind: str) -> None:
    model = CHART_QUERIES[kind]
    summary = {"progress-chart": "Progress history of a task", "status-distribution": "Tasks by status",
               "performance-metrics": "Success rate, p50/p95 duration and throughput over time by task type",
               "activity-heatmap": "Tasks created by weekday and hour"}[kind]
    camel = "".join(p.title() for p in kind.split("-"))
    errors = (403, 404) if kind == "progress-chart" else (403,)

    async def get(call: Call) -> web.Response:
        return reply(await render_chart(call, kind, call.query))

    async def post(call: Call) -> web.Response:
        # The body holds the fields sent: the model adds the defaults of the rest.
        return reply(await render_chart(call, kind, model.model_validate(call.body).model_dump()))

    ok = (200, "Plotly figure JSON", ref("Figure"))
    routes.operation("GET", f"/visualizations/{kind}", operation_id=f"get{camel}", summary=summary,
                     tag="visualizations", query=model, ok=ok, errors=errors)(get)
    routes.operation("POST", f"/visualizations/{kind}", operation_id=f"post{camel}",
                     summary=summary + " (JSON body)", tag="visualizations", body=model, ok=ok,
                     errors=errors)(post)


for _kind in CHARTS:
    _register_chart(_kind)


# -- saved dashboards --------------------------------------------------------------------------------------
def _check_widgets(widgets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Widget params are checked like the chart's own parameters, so a saved dashboard renders."""
    out = []
    for i, w in enumerate(widgets):
        params = {k: _text(v) for k, v in (w.get("params") or {}).items() if v is not None}
        try:
            parse_params(params, CHART_QUERIES[w["type"]])
        except SchemaError as exc:
            raise SchemaError(f"widgets[{i}]: {exc}") from None
        out.append({"type": w["type"], "title": w.get("title"), "params": w.get("params") or {}})
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)




async def _create_dashboard(call: Call) -> web.Response:
    widgets = _check_widgets(call.body.get("widgets") or [])
    rows = await execute(call.app, q.insert_dashboard(call.principal.user_id, call.body["name"], widgets))
    return reply(dict(rows[0]._mapping), 201)


async def _visible_dashboard(call: Call) -> dict[str, Any]:
    did = call.path["dashboard_id"]
    row = await owned_row(call, q.dashboard_by_id(did), "dashboard", did)
    return dict(row._mapping)


async def _render_dashboard(call: Call) -> web.Response:
    board = await _visible_dashboard(call)
    figures = []
    for w in board["widgets"]:
        entry: dict[str, Any] = {"type": w.get("type"), "title": w.get("title"), "figure": None, "error": None}
        try:
            params = parse_params({k: _text(v) for k, v in (w.get("params") or {}).items() if v is not None},
                                  CHART_QUERIES[w["type"]])
            entry["figure"] = await render_chart(call, w["type"], params)
        except web.HTTPException as exc:  # e.g. the widget's task was deleted: show why, render the rest
            entry["error"] = {"code": str(exc.status), "message": exc.text or exc.reason}
        except (SchemaError, KeyError, ValueError, TypeError) as exc:
            entry["error"] = {"code": "bad_request", "message": str(exc)}
        figures.append(entry)
    return reply({**board, "figures": figures})


_DASHBOARD_OK = (201, "The saved dashboard", ref("Dashboard"))
_VIEW_OK = (200, "The dashboard with each widget's figure", ref("DashboardView"))

routes.operation("POST", "/visualizations/dashboards", operation_id="createDashboard", tag="visualizations",
                 summary="Save a dashboard of chart widgets", body=DashboardIn, body_required=True,
                 ok=_DASHBOARD_OK)(_create_dashboard)
routes.operation("POST", "/visualizations/dashboard", operation_id="createDashboardSeed", tag="visualizations",
                 summary="Save a dashboard (the seeds' path)", body=DashboardIn, body_required=True,
                 ok=_DASHBOARD_OK)(_create_dashboard)


@routes.operation("GET", "/visualizations/dashboards", operation_id="listDashboards", tag="visualizations",
                  summary="Saved dashboards, newest first (admins: everyone's, or user_id's)",
                  query=DashboardList,
                  ok=(200, "A page of dashboards", ref("DashboardPage")), errors=(403,))
async def list_dashboards(call: Call) -> web.Response:
    n = call.query["limit"]
    rows = await fetch_all(call.app, q.dashboards(scope_user(call, call.query.get("user_id")), n,
                                                  call.query.get("cursor")))
    items, nxt = q.page(rows, n, lambda r: q.encode_cursor(r.id))
    return reply({"items": [dict(r._mapping) for r in items], "next_cursor": nxt})


routes.operation("GET", "/visualizations/dashboards/{dashboard_id}", operation_id="getDashboard",
                 tag="visualizations", summary="A saved dashboard with its figures rendered",
                 path=DashboardPath, ok=_VIEW_OK, errors=(403, 404))(_render_dashboard)
routes.operation("GET", "/visualizations/dashboard/{dashboard_id}", operation_id="getDashboardSeed",
                 tag="visualizations", summary="A saved dashboard with its figures rendered (the seeds' path)",
                 path=DashboardPath, ok=_VIEW_OK, errors=(403, 404))(_render_dashboard)


@routes.operation("DELETE", "/visualizations/dashboards/{dashboard_id}", operation_id="deleteDashboard",
                  tag="visualizations", summary="Delete a saved dashboard", path=DashboardPath,
                  ok=(204, "Deleted", None), errors=(403, 404))
async def delete_dashboard(call: Call) -> web.Response:
    board = await _visible_dashboard(call)
    await execute(call.app, q.delete_dashboard(board["id"]))
    return no_content()
