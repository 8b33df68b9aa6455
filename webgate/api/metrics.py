"""REST: a metric aggregated per time bucket (``GET /metrics?name=&bucket=``)."""

from __future__ import annotations

from aiohttp import web

from tracker import queries as q
from webgate.api.common import MAX_BUCKETS, Call, Endpoints, check_range, reply, scope_user, when
from webgate.api.models import MetricSeriesQuery
from webgate.api.schema import ref
from webgate.core.db import fetch_all

__all__ = ["routes"]

routes = Endpoints()


@routes.operation("GET", "/metrics", operation_id="metricSeries", tag="metrics",
                  summary="One metric aggregated per time bucket, oldest first",
                  description="Automatic per-task metrics are task.queue_wait, task.run_time, task.cpu_time, "
                       "task.memory_growth and task.retries; workers report worker.cpu_percent and "
                       "worker.rss_bytes; tasks add their own with metric().",
                  query=MetricSeriesQuery, ok=(200, "Bucketed values", ref("MetricSeries")), errors=(403,))
async def metric_series(call: Call) -> web.Response:
    a = call.query
    check_range(a, a["bucket"])  # bounded: at most MAX_BUCKETS rows
    stmt = q.metric_series(a["name"], bucket=a["bucket"], agg=a["agg"], since=when(a.get("since")),
                           until=when(a.get("until")), task_type=a.get("task_type"),
                           user_id=scope_user(call, a.get("user_id"))).limit(MAX_BUCKETS)
    rows = await fetch_all(call.app, stmt)
    return reply({"name": a["name"], "bucket": a["bucket"], "agg": a["agg"],
                  "items": [{"ts": r.bucket, "value": None if r.value is None else float(r.value)} for r in rows],
                  "next_cursor": None})
