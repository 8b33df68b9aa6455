"""JSON Schemas of the REST API and the small validator that enforces them.

The same schema objects validate requests (``validate``) and are published in the OpenAPI
document (``webgate.api.openapi``), so what the document promises is what the server checks.
Only the JSON Schema keywords used here are implemented.
"""

from __future__ import annotations

import json
import math
from typing import Any

from tracker import vocabulary

__all__ = ["COMPONENTS", "SchemaError", "validate", "check_text", "ref", "nullable", "STATUSES", "LEVELS",
           "CHARTS", "ID", "page_of", "MAX_JSON_BYTES"]

Schema = dict[str, Any]

STATUSES = [s.value for s in vocabulary.STATUSES]
LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
CHARTS = ["progress-chart", "status-distribution", "performance-metrics", "activity-heatmap"]
INT32 = 2**31 - 1
#: Free-form JSON (metadata, context, result) is bounded so one request cannot bloat a row.
MAX_JSON_BYTES = 64 * 1024


class SchemaError(ValueError):
    """A value does not match its schema; the message names the offending field."""


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


ID: Schema = {"type": "string", "minLength": 1, "maxLength": 255}
_OPT_TEXT: Schema = {"type": ["string", "null"], "maxLength": 255}
_TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
_JSON_OBJECT: Schema = {"type": "object", "x-max-bytes": MAX_JSON_BYTES}
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

_ATTACHMENT: Schema = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 255},
                   "content_type": {"type": ["string", "null"], "maxLength": 255},
                   "size": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**53},
                   "url": {"type": ["string", "null"], "maxLength": 2048},
                   "data": {"type": ["string", "null"], "maxLength": MAX_JSON_BYTES}},
}

_WIDGET: Schema = {
    "type": "object", "required": ["type"], "additionalProperties": False,
    "properties": {"type": {"type": "string", "enum": CHARTS},
                   "title": {"type": ["string", "null"], "maxLength": 200},
                   "params": {"type": "object", "maxProperties": 20,
                              "additionalProperties": {"type": ["string", "integer", "number", "boolean", "null"],
                                                       "maxLength": 255}}},
}

COMPONENTS: dict[str, Schema] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": _ERROR_BODY}},
    "Task": {"type": "object", "required": list(_TASK_PROPS), "properties": _TASK_PROPS},
    "TaskPage": page_of(ref("Task")),
    "TaskCreate": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "task_id": ID, "user_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 255},
            "task_type": _OPT_TEXT, "task_name": _OPT_TEXT,
            "progress": {"type": "number", "minimum": 0, "maximum": 100, "default": 0},
            "status": {"type": "string", "enum": STATUSES, "default": "pending"},
            "total_steps": {"type": ["integer", "null"], "minimum": 1, "maximum": INT32},
            "metadata": nullable(_JSON_OBJECT),
            "tags": {"type": ["array", "null"], "maxItems": 50, "items": {"type": "string", "maxLength": 100}},
            "args": {"type": ["array", "null"], "x-max-bytes": MAX_JSON_BYTES},
            "kwargs": nullable(_JSON_OBJECT),
        },
    },
    "Rerun": {"type": "object", "required": ["task_id", "rerun_of"],
              "properties": {"task_id": {"type": "string"}, "rerun_of": {"type": "string"}}},
    "ProgressUpdate": {
        "type": "object", "required": ["progress"], "additionalProperties": False,
        "properties": {
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "current_step": {"type": ["string", "null"], "maxLength": 1000},
            "step_index": {"type": ["integer", "null"], "minimum": 0, "maximum": INT32},
            "total_steps": {"type": ["integer", "null"], "minimum": 1, "maximum": INT32},
            "message": {"type": ["string", "null"], "maxLength": 4000},
        },
    },
    "StatusUpdate": {
        "type": "object", "required": ["status"], "additionalProperties": False,
        "properties": {
            "status": {"type": "string", "enum": STATUSES},
            "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
            "current_step": {"type": ["string", "null"], "maxLength": 1000},
            "error_type": {"type": ["string", "null"], "maxLength": 255},
            "error_message": {"type": ["string", "null"], "maxLength": 10_000},
            "result": {"x-max-bytes": MAX_JSON_BYTES},
        },
    },
    "Complete": {"type": "object", "additionalProperties": False,
                 "properties": {"result": {"x-max-bytes": MAX_JSON_BYTES}}},
    "Fail": {"type": "object", "additionalProperties": False,
             "properties": {"error_message": {"type": ["string", "null"], "maxLength": 10_000},
                            "error_type": {"type": ["string", "null"], "maxLength": 255},
                            "traceback": {"type": ["string", "null"], "maxLength": MAX_JSON_BYTES}}},
    "Control": {"type": "object", "additionalProperties": False,
                "properties": {"terminate": {"type": "boolean", "default": False}}},
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
    "LogIn": {
        "type": "object", "required": ["message"], "additionalProperties": False,
        "properties": {
            "task_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 255},
            "user_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 255},
            "level": {"type": "string", "enum": LEVELS, "default": "INFO"},
            "message": {"type": "string", "maxLength": MAX_JSON_BYTES},
            "source": _OPT_TEXT, "context": nullable(_JSON_OBJECT),
            "traceback": {"type": ["string", "null"], "maxLength": MAX_JSON_BYTES},
            "attachments": {"type": ["array", "null"], "maxItems": 20, "items": _ATTACHMENT},
        },
    },
    "LogBatch": {"type": "object", "required": ["logs"], "additionalProperties": False,
                 "properties": {"logs": {"type": "array", "minItems": 1, "maxItems": 1000, "items": ref("LogIn")}}},
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
    "NotificationIn": {
        "type": "object", "required": ["title"], "additionalProperties": False,
        "properties": {
            "user_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 255},
            "title": {"type": "string", "minLength": 1, "maxLength": 500},
            "message": {"type": ["string", "null"], "maxLength": 10_000},
            "type": {"type": "string", "enum": ["info", "success", "warning", "error", "progress"], "default": "info"},
            "priority": {"type": "string", "enum": ["urgent", "high", "normal", "low"], "default": "normal"},
            "channels": {"type": "array", "minItems": 1, "maxItems": 4,
                         "items": {"type": "string", "enum": ["websocket", "email", "slack", "webhook"]}},
            "task_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 255},
            "action_url": {"type": ["string", "null"], "maxLength": 2000},
            "metadata": nullable(_JSON_OBJECT),
            "dedup_key": {"type": ["string", "null"], "minLength": 1, "maxLength": 200},
        },
    },
    "NotificationBatch": {"type": "object", "required": ["notifications"], "additionalProperties": False,
                          "properties": {"notifications": {"type": "array", "minItems": 1, "maxItems": 100,
                                                           "items": ref("NotificationIn")}}},
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
    "Widget": _WIDGET,
    "DashboardIn": {"type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200},
                                   "widgets": {"type": "array", "maxItems": 24, "items": ref("Widget")}}},
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


# -- validation ----------------------------------------------------------------------------------------
def check_text(value: str, where: str) -> str:
    """PostgreSQL text cannot hold NUL and UTF-8 cannot hold lone surrogates: refuse both up front,
    rather than have the batched writer drop the row later."""
    if "\x00" in value:
        raise SchemaError(f"{where}: text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SchemaError(f"{where}: text is not valid Unicode") from None
    return value


def _type_ok(t: str, value: Any) -> bool:
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if t == "string":
        return isinstance(value, str)
    if t == "array":
        return isinstance(value, list)
    if t == "object":
        return isinstance(value, dict)
    raise AssertionError(f"unsupported schema type {t}")


def _resolve(schema: Schema) -> Schema:
    target = schema.get("$ref")
    if target is None:
        return schema
    return COMPONENTS[target.rsplit("/", 1)[-1]]


def _deep_text(value: Any, where: str) -> None:
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, where)
            _deep_text(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _deep_text(v, f"{where}[{i}]")


def validate(schema: Schema, value: Any, where: str = "body") -> Any:
    """Return ``value`` checked against ``schema`` (integral floats become ints); raise SchemaError."""
    schema = _resolve(schema)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return validate(option, value, where)
            except SchemaError as exc:
                errors.append(str(exc))
        raise SchemaError(errors[0] if len(errors) == 1 else f"{where}: matches none of: " + "; ".join(errors))
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        matched = next((t for t in types if _type_ok(t, value)), None)
        if matched is None:
            raise SchemaError(f"{where}: expected {' or '.join(types)}, got {_kind(value)}")
        if matched == "integer" and isinstance(value, float):
            value = int(value)
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{where}: must be one of {', '.join(map(str, schema['enum']))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaError(f"{where}: must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaError(f"{where}: must be <= {schema['maximum']}")
    elif isinstance(value, str):
        check_text(value, where)
        if len(value) < schema.get("minLength", 0):
            raise SchemaError(f"{where}: must not be empty" if schema["minLength"] == 1
                              else f"{where}: must be at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise SchemaError(f"{where}: must be at most {schema['maxLength']} characters")
    elif isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise SchemaError(f"{where}: needs at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SchemaError(f"{where}: at most {schema['maxItems']} items")
        if "items" in schema:
            value = [validate(schema["items"], v, f"{where}[{i}]") for i, v in enumerate(value)]
    elif isinstance(value, dict):
        value = _validate_object(schema, value, where)
    if "x-max-bytes" in schema and value is not None:
        _deep_text(value, where)
        if len(json.dumps(value, ensure_ascii=False).encode()) > schema["x-max-bytes"]:
            raise SchemaError(f"{where}: at most {schema['x-max-bytes']} bytes of JSON")
    return value


def _validate_object(schema: Schema, value: dict[str, Any], where: str) -> dict[str, Any]:
    props: dict[str, Schema] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            raise SchemaError(f"{where}: missing required field {name!r}")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        raise SchemaError(f"{where}: at most {schema['maxProperties']} fields")
    extra = schema.get("additionalProperties", True)
    out: dict[str, Any] = {}
    for key, v in value.items():
        check_text(key, where)
        if key in props:
            out[key] = validate(props[key], v, f"{where}.{key}")
        elif extra is False:
            raise SchemaError(f"{where}: unknown field {key!r}")
        elif isinstance(extra, dict):
            out[key] = validate(extra, v, f"{where}.{key}")
        else:
            out[key] = v
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


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
