"""REST (admin): workers (``GET /workers``, ``/workers/{hostname}``) and broker queues (``GET /queues``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tracker import queries as q
from tracker.records import WorkerRecord
from webgate.api.common import MAX_BUCKETS, Call, Endpoints, check_range, plotly_layout, reply, when
from webgate.api.models import HostnamePath, QueueChartQuery, WorkerQuery
from webgate.api.schema import ref
from webgate.core.db import fetch_all
from webgate.core.errors import json_error
from webgate.core.keys import CONFIG
from webgate.ops.queues import QUEUE_SAMPLER

__all__ = ["routes"]

routes = Endpoints()



def _admin(call: Call) -> None:
    if not call.principal.admin:
        raise json_error(403, "forbidden", "workers and queues need an admin token")


@routes.operation("GET", "/workers", operation_id="listWorkers", tag="workers", query=WorkerQuery,
                  summary="Celery workers, online first, with their load and running tasks (admin)",
                  ok=(200, "Workers", ref("WorkerList")), errors=(403,))
async def list_workers(call: Call) -> web.Response:
    _admin(call)
    rows = await fetch_all(call.app, q.workers(call.app[CONFIG].worker_lost_after, status=call.query["status"]))
    return reply({"items": [WorkerRecord.from_row(r).to_dict() for r in rows]})


@routes.operation("GET", "/workers/{hostname}", operation_id="getWorker", tag="workers", path=HostnamePath,
                  summary="One worker by its node name (admin)", ok=(200, "The worker", ref("Worker")),
                  errors=(403, 404))
async def get_worker(call: Call) -> web.Response:
    _admin(call)
    hostname = call.path["hostname"]
    rows = await fetch_all(call.app, q.workers(call.app[CONFIG].worker_lost_after, hostname=hostname))
    if not rows:
        raise json_error(404, "not_found", f"no worker {hostname!r}")
    return reply(WorkerRecord.from_row(rows[0]).to_dict())


@routes.operation("GET", "/queues", operation_id="listQueues", tag="workers",
                  summary="Broker queues: messages waiting, consumers, oldest message age (admin)",
                  description="Sampled by the gateway every tracker_queue_sample_interval seconds from the broker of "
                       "its Celery app; the series is the metric tracker.queue.depth (label queue).",
                  ok=(200, "Queues as last sampled", ref("QueueList")), errors=(403,))
async def list_queues(call: Call) -> web.Response:
    _admin(call)
    return reply(call.app[QUEUE_SAMPLER].report().to_dict())


@routes.operation("GET", "/queues/depth-chart", operation_id="queueDepthChart", tag="workers", query=QueueChartQuery,
                  summary="Plotly figure: depth of each queue over time, the largest sample per bucket (admin)",
                  ok=(200, "Plotly figure", ref("Figure")), errors=(403,))
async def queue_depth_chart(call: Call) -> web.Response:
    _admin(call)
    a = call.query
    check_range(a, a["bucket"])
    rows = await fetch_all(call.app, q.queue_depth_series(a["bucket"], when(a.get("since")), when(a.get("until")))
                           .limit(MAX_BUCKETS * 20))
    series: dict[str, tuple[list[Any], list[float]]] = {}
    for r in rows:
        xs, ys = series.setdefault(r.queue or "(unnamed)", ([], []))
        xs.append(r.bucket)
        ys.append(float(r.depth))
    data = [{"type": "scatter", "mode": "lines+markers", "name": name, "x": xs, "y": ys,
             "hovertemplate": name + ": %{y:.0f}<extra></extra>"} for name, (xs, ys) in sorted(series.items())]
    return reply({"data": data, "layout": plotly_layout("Queue depth", xaxis={"type": "date"},
                                                  yaxis={"title": {"text": "messages"}, "rangemode": "tozero"},
                                                  showlegend=True)})
