"""JSON Schemas of the REST API's replies, as the OpenAPI document (``webgate.api.openapi``)
publishes them. The requests' schemas are generated from their pydantic models
(``webgate.api.models``), which validate them."""

from __future__ import annotations

from typing import Any

from webgate.api.models import STATUSES

__all__ = ["COMPONENTS", "ref", "nullable", "page_of"]

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    t = schema.get("type")
    if isinstance(t, str):
        return {**schema, "type": [t, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def page_of(item: Schema) -> Schema:
    return {"type": "object", "required": ["items", "next_cursor"],
            "properties": {"items": {"type": "array", "items": item}, "next_cursor": {"type": ["string", "null"]}}}


_TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
_NUM_OR_NULL: Schema = {"type": ["number", "null"]}
_ERROR_BODY: Schema = {"type": "object", "required": ["code", "message"],
                       "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}

_TASK_PROPS: dict[str, Schema] = {
    "task_id": {"type": "string"}, "name": {"type": ["string", "null"]}, "task_type": {"type": ["string", "null"]},
    "user_id": {"type": ["string", "null"]}, "status": {"type": "string", "enum": STATUSES},
    "progress": {"type": "number", "minimum": 0, "maximum": 100}, "current_step": {"type": ["string", "null"]},
    "step_index": {"type": ["integer", "null"]}, "total_steps": {"type": ["integer", "null"]},
    "eta_seconds": _NUM_OR_NULL, "queue": {"type": ["string", "null"]}, "worker": {"type": ["string", "null"]},
    "retries": {"type": "integer"}, "parent_id": {"type": ["string", "null"]},
    "root_id": {"type": ["string", "null"]}, "group_id": {"type": ["string", "null"]}, "result": {},
    "error_type": {"type": ["string", "null"]}, "error_message": {"type": ["string", "null"]},
    "traceback": {"type": ["string", "null"]}, "metadata": {"type": "object"},
    "tags": {"type": "array", "items": {"type": "string"}},
    **{k: _TIME for k in ("created_at", "published_at", "received_at", "started_at", "updated_at", "finished_at",
                          "heartbeat_at", "stalled_at")},
    # Redacted and bounded like results (an oversized value is {"truncated": true, "repr": ...}).
    "args": {"type": ["array", "object", "null"]}, "kwargs": {"type": ["object", "null"]},
    "rerun_of": {"type": ["string", "null"]},
}

_STATS_ROW: Schema = {
    "type": "object",
    "required": ["total", *STATUSES, "success_rate", "p50_duration", "p95_duration", "throughput_per_min"],
    "properties": {"group": {"type": ["string", "null"]}, "total": {"type": "integer"},
                   **{s: {"type": "integer"} for s in STATUSES},
                   "success_rate": _NUM_OR_NULL, "p50_duration": _NUM_OR_NULL, "p95_duration": _NUM_OR_NULL,
                   "avg_duration": _NUM_OR_NULL, "throughput_per_min": _NUM_OR_NULL},
}

COMPONENTS: dict[str, Schema] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": _ERROR_BODY}},
    "Task": {"type": "object", "required": list(_TASK_PROPS), "properties": _TASK_PROPS},
    "TaskPage": page_of(ref("Task")),
    "Rerun": {"type": "object", "required": ["task_id", "rerun_of"],
              "properties": {"task_id": {"type": "string"}, "rerun_of": {"type": "string"}}},
    "ControlResult": {"type": "object", "required": ["task_id", "action", "accepted", "task"],
                      "properties": {"task_id": {"type": "string"}, "action": {"type": "string"},
                                     "accepted": {"type": "boolean"}, "task": ref("Task")}},
    "ProgressPoint": {"type": "object", "required": ["ts", "progress", "current_step"],
                      "properties": {"ts": {"type": "string", "format": "date-time"}, "progress": {"type": "number"},
                                     "current_step": {"type": ["string", "null"]}}},
    "ProgressPage": page_of(ref("ProgressPoint")),
    "Stats": {"type": "object", "required": ["group_by", "groups", "overall"],
              "properties": {"group_by": {"type": ["string", "null"]},
                             "groups": {"type": "array", "items": _STATS_ROW}, "overall": _STATS_ROW}},
    "Log": {"type": "object",
            "required": ["id", "task_id", "ts", "level", "message", "source", "context", "traceback", "attachments"],
            "properties": {"id": {"type": "integer"}, "task_id": {"type": ["string", "null"]},
                           "ts": {"type": "string", "format": "date-time"}, "level": {"type": "string"},
                           "message": {"type": "string"}, "source": {"type": ["string", "null"]},
                           "context": {"type": "object"}, "traceback": {"type": ["string", "null"]},
                           "attachments": {"type": "array"}}},
    "LogPage": page_of(ref("Log")),
    "LogStats": {"type": "object", "required": ["total", "levels"],
                 "properties": {"total": {"type": "integer"},
                                "levels": {"type": "object", "additionalProperties": {"type": "integer"}}}},
    "Accepted": {"type": "object", "required": ["accepted"], "properties": {"accepted": {"type": "integer"}}},
    "Deleted": {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "integer"}}},
    "Notification": {
        "type": "object",
        "required": ["id", "user_id", "title", "message", "type", "priority", "channels", "task_id", "action_url",
                     "is_read", "read_at", "created_at", "delivery", "metadata"],
        "properties": {"id": {"type": "integer"}, "user_id": {"type": ["string", "null"]}, "title": {"type": "string"},
                       "message": {"type": "string"}, "type": {"type": "string"}, "priority": {"type": "string"},
                       "channels": {"type": "array", "items": {"type": "string"}},
                       "task_id": {"type": ["string", "null"]}, "action_url": {"type": ["string", "null"]},
                       "is_read": {"type": "boolean"}, "read_at": _TIME, "created_at": _TIME,
                       "delivery": {"type": "object"}, "metadata": {"type": "object"}},
    },
    "NotificationPage": page_of(ref("Notification")),
    "NotificationStats": {"type": "object", "required": ["total", "unread", "urgent", "high"],
                          "properties": {k: {"type": "integer"} for k in ("total", "unread", "urgent", "high")}},
    "Metric": {"type": "object", "required": ["name", "value", "unit", "labels", "task_id", "user_id", "ts"],
               "properties": {"name": {"type": "string"}, "value": _NUM_OR_NULL, "unit": {"type": ["string", "null"]},
                              "labels": {"type": "object"}, "task_id": {"type": ["string", "null"]},
                              "user_id": {"type": ["string", "null"]}, "ts": _TIME}},
    "MetricPage": page_of(ref("Metric")),
    "MetricSeries": {
        "type": "object", "required": ["name", "bucket", "agg", "items", "next_cursor"],
        "properties": {"name": {"type": "string"}, "bucket": {"type": "string"}, "agg": {"type": "string"},
                       "items": {"type": "array", "items": {
                           "type": "object", "required": ["ts", "value"],
                           "properties": {"ts": {"type": "string", "format": "date-time"}, "value": _NUM_OR_NULL}}},
                       "next_cursor": {"type": "null"}},
    },
    "Figure": {"type": "object", "required": ["data", "layout"],
               "properties": {"data": {"type": "array", "items": {"type": "object"}}, "layout": {"type": "object"}}},
    "Dashboard": {"type": "object", "required": ["id", "user_id", "name", "widgets", "created_at"],
                  "properties": {"id": {"type": "integer"}, "user_id": {"type": ["string", "null"]},
                                 "name": {"type": "string"}, "widgets": {"type": "array", "items": ref("Widget")},
                                 "created_at": _TIME}},
    "DashboardPage": page_of(ref("Dashboard")),
    "DashboardView": {
        "type": "object", "required": ["id", "user_id", "name", "widgets", "created_at", "figures"],
        "properties": {"id": {"type": "integer"}, "user_id": {"type": ["string", "null"]}, "name": {"type": "string"},
                       "widgets": {"type": "array", "items": ref("Widget")}, "created_at": _TIME,
                       "figures": {"type": "array", "items": {
                           "type": "object", "required": ["type", "title", "figure", "error"],
                           "properties": {"type": {"type": "string"}, "title": {"type": ["string", "null"]},
                                          "figure": {"anyOf": [ref("Figure"), {"type": "null"}]},
                                          "error": {"anyOf": [_ERROR_BODY, {"type": "null"}]}}}}},
    },
}


# -- workers and queues ----------------------------------------------------------------------------
COMPONENTS.update({
    "Worker": {
        "type": "object",
        "required": ["hostname", "status", "pid", "concurrency", "active", "processed", "cpu_percent", "rss_bytes",
                     "last_heartbeat", "started_at", "queues"],
        "properties": {
            "hostname": {"type": "string", "description": "The worker's node name (celery worker -n)"},
            "status": {"type": "string", "enum": ["online", "offline"],
                       "description": "offline once stopped gracefully, or when its last heartbeat is older "
                                      "than tracker_worker_lost_after"},
            "pid": nullable({"type": "integer"}), "concurrency": nullable({"type": "integer"}),
            "active": {"type": "array", "items": {"type": "string"}, "description": "Ids of the tasks it runs"},
            "processed": {"type": "integer", "description": "Tasks its processes finished since it started"},
            "cpu_percent": nullable({"type": "number"}), "rss_bytes": nullable({"type": "integer"}),
            "last_heartbeat": _TIME, "started_at": _TIME, "stopped_at": _TIME,
            "queues": {"type": "array", "items": {"type": "string"}},
        },
    },
    "WorkerList": {"type": "object", "required": ["items"],
                   "properties": {"items": {"type": "array", "items": ref("Worker")}}},
    "Queue": {
        "type": "object", "required": ["name", "depth", "consumers"],
        "properties": {"name": {"type": "string"}, "depth": {"type": "integer", "minimum": 0},
                       "consumers": {"type": "integer", "minimum": 0,
                                     "description": "Online workers reading this queue"},
                       "oldest_age_seconds": {"type": "number", "minimum": 0,
                                              "description": "Age of the oldest waiting message, when known"}},
    },
    "QueueList": {
        "type": "object", "required": ["items", "reason"],
        "properties": {"items": {"type": "array", "items": ref("Queue")},
                       "reason": nullable({"type": "string", "description": "Why items is empty, e.g. no Celery app"}),
                       "sampled_at": _TIME},
    },
})
