"""Pydantic models of every REST request: the JSON bodies, the query strings and the path
parameters.

The same models validate requests (``webgate.api.common``) and are published in the OpenAPI
document (``webgate.api.openapi``), so what the document promises is what the server checks.
Bodies are validated strictly (JSON types as they are: ``"5"`` is not a number); query strings and
path parameters are text, so they are converted (``limit=5``), then checked against the same
bounds. Every text is refused with NUL characters or lone surrogates, which PostgreSQL and UTF-8
cannot store: refused up front rather than dropped later by the batched writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from tracker import vocabulary
from tracker.new_notification import Kind, NotificationInput, Priority
from tracker.validation import MAX_JSON_BYTES, Clean, Id, Json, JsonArray, JsonObject, check_text

__all__ = ["CHART_QUERIES", "INT32", "LEVELS", "MAX_JSON_BYTES", "Query", "Body", "check_text", "CHARTS",
           "STATUSES", "TIME_DOC", "TaskCreate", "ProgressUpdate", "StatusUpdate", "Complete", "Fail", "Control",
           "LogIn", "LogBatch", "NotificationIn", "NotificationBatch", "Widget", "DashboardIn", "TaskPath",
           "NotificationPath", "DashboardPath", "UserPath", "HostnamePath", "TaskList", "TaskFilters", "TaskStats",
           "LogFilters", "TaskLogs", "LogList", "LogStatsQuery", "TaskMetricsQuery", "MetricSeriesQuery",
           "NotificationFilters", "NotificationList", "UserQuery", "WorkerQuery", "QueueChartQuery",
           "DashboardList"]

STATUSES = [s.value for s in vocabulary.STATUSES]
LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
CHARTS = ["progress-chart", "status-distribution", "performance-metrics", "activity-heatmap"]
INT32 = 2**31 - 1
INT64 = 2**63 - 1
TIME_DOC = "ISO 8601 time, epoch seconds, or relative such as -15m, -2h, -7d"

Text255 = Annotated[str, Field(max_length=255), Clean]
if TYPE_CHECKING:
    Status = str
    Chart = str
else:  # the values of the one vocabulary, as JSON Schema enums
    Status = Literal[tuple(STATUSES)]
    Chart = Literal[tuple(CHARTS)]
Level = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


class Body(BaseModel):
    """A JSON body: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
    """Query string or path parameters: unknown ones are refused."""

    model_config = ConfigDict(extra="forbid")


# -- bodies ---------------------------------------------------------------------------------------------
class TaskCreate(Body):
    task_id: Id | None = None
    user_id: Id | None = None
    task_type: Text255 | None = None
    task_name: Text255 | None = None
    progress: Percent = 0
    status: Status = "pending"
    total_steps: Annotated[int, Field(ge=1, le=INT32)] | None = None
    metadata: JsonObject | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=100), Clean]], Field(max_length=50)] | None = None
    args: JsonArray | None = None
    kwargs: JsonObject | None = None


class ProgressUpdate(Body):
    progress: Percent
    current_step: Annotated[str, Field(max_length=1000), Clean] | None = None
    step_index: Annotated[int, Field(ge=0, le=INT32)] | None = None
    total_steps: Annotated[int, Field(ge=1, le=INT32)] | None = None
    message: Annotated[str, Field(max_length=4000), Clean] | None = None


class StatusUpdate(Body):
    status: Status
    progress: Percent | None = None
    current_step: Annotated[str, Field(max_length=1000), Clean] | None = None
    error_type: Text255 | None = None
    error_message: Annotated[str, Field(max_length=10_000), Clean] | None = None
    result: Json = None


class Complete(Body):
    result: Json = None


class Fail(Body):
    error_message: Annotated[str, Field(max_length=10_000), Clean] | None = None
    error_type: Text255 | None = None
    traceback: Annotated[str, Field(max_length=MAX_JSON_BYTES), Clean] | None = None


class Control(Body):
    terminate: bool = False


class Attachment(Body):
    name: Id
    content_type: Text255 | None = None
    size: Annotated[int, Field(ge=0, le=2**53)] | None = None
    url: Annotated[str, Field(max_length=2048), Clean] | None = None
    data: Annotated[str, Field(max_length=MAX_JSON_BYTES), Clean] | None = None


class LogIn(Body):
    task_id: Id | None = None
    user_id: Id | None = None
    level: Level = "INFO"
    message: Annotated[str, Field(max_length=MAX_JSON_BYTES), Clean]
    source: Text255 | None = None
    context: JsonObject | None = None
    traceback: Annotated[str, Field(max_length=MAX_JSON_BYTES), Clean] | None = None
    attachments: Annotated[list[Attachment], Field(max_length=20)] | None = None


class LogBatch(Body):
    logs: Annotated[list[LogIn], Field(min_length=1, max_length=1000)]


class NotificationIn(NotificationInput):
    """``POST /notifications``: the rules of every caller's notification (``Tracker.notify``), in
    JSON's types, with a shorter ``dedup_key`` (the server prefixes it with the caller)."""

    dedup_key: Annotated[str, Field(max_length=200, min_length=1), Clean] | None = None


class NotificationBatch(Body):
    notifications: Annotated[list[NotificationIn], Field(min_length=1, max_length=100)]


WidgetParam = Annotated[str, Field(max_length=255), Clean] | int | float | bool | None


class Widget(Body):
    type: Chart
    title: Annotated[str, Field(max_length=200), Clean] | None = None
    params: Annotated[dict[Annotated[str, Field(max_length=255), Clean], WidgetParam], Field(max_length=20)] = {}


class DashboardIn(Body):
    name: Annotated[str, Field(max_length=200, min_length=1), Clean]
    widgets: Annotated[list[Widget], Field(max_length=24)] = []


# -- path parameters -------------------------------------------------------------------------------------
class TaskPath(Query):
    task_id: Id


class UserPath(Query):
    user_id: Id


class HostnamePath(Query):
    hostname: Id


class NotificationPath(Query):
    notification_id: Annotated[int, Field(ge=1, le=INT64)]


class DashboardPath(Query):
    dashboard_id: Annotated[int, Field(ge=1, le=INT64)]


# -- query strings ---------------------------------------------------------------------------------------
When = Annotated[str, Field(max_length=64, description=TIME_DOC), Clean]
Limit = Annotated[int, Field(ge=1, le=1000)]
Cursor = Annotated[str, Field(max_length=512, description="next_cursor of the previous page"), Clean]

Bucket = Annotated[str, Field(max_length=16, description="Bucket width such as 1m, 5m, 1h, 1d"), Clean]


class TaskFilters(Query):
    user_id: Annotated[str, Field(max_length=255, description="Only this user's tasks (admins; users always see "
                                                              "their own)"), Clean] | None = None
    status: Annotated[str, Field(max_length=200, description="A status or a comma-separated list"), Clean] | None = None
    task_type: Text255 | None = None
    tag: Text255 | None = None
    search: Annotated[str, Field(max_length=255, description="Substring of id, name, type, step or error"),
                      Clean] | None = None
    since: When | None = None
    until: When | None = None
    group_id: Text255 | None = None
    root_id: Text255 | None = None
    parent_id: Text255 | None = None


class TaskList(TaskFilters):
    limit: Limit = 100
    cursor: Cursor | None = None


class TaskStats(Query):
    since: When | None = None
    until: When | None = None
    user_id: Text255 | None = None
    group_by: Literal["task_type", "user_id", "queue", "worker", "status", "none"] = "task_type"


class LogFilters(Query):
    level: Annotated[str, Field(max_length=16, description="Only this level"), Clean] | None = None
    min_level: Annotated[str, Field(max_length=16, description="This level and above"), Clean] | None = None
    search: Annotated[str, Field(max_length=255, description="Full-text search in the message (web search syntax)"),
                      Clean] | None = None
    since: When | None = None
    until: When | None = None
    limit: Limit = 100
    cursor: Cursor | None = None
    order: Literal["asc", "desc"] = "asc"


TaskLogs = LogFilters


class LogList(LogFilters):
    task_id: Text255 | None = None
    user_id: Text255 | None = None


class LogStatsQuery(Query):
    task_id: Text255 | None = None
    user_id: Text255 | None = None
    since: When | None = None
    until: When | None = None


class TaskMetricsQuery(Query):
    name: Text255 | None = None
    limit: Limit = 100


class MetricSeriesQuery(Query):
    name: Annotated[str, Field(max_length=255, min_length=1), Clean]
    bucket: Annotated[str, Field(max_length=16), Clean] = "1m"
    agg: Literal["avg", "sum", "min", "max", "count", "p50", "p95", "p99"] = "avg"
    since: When = "-1h"
    until: When | None = None
    task_type: Text255 | None = None
    user_id: Text255 | None = None


class NotificationFilters(Query):
    unread: Annotated[bool, Field(description="true: only unread; false: only read")] | None = None
    type: Kind | None = None
    priority: Priority | None = None
    limit: Limit = 100
    cursor: Cursor | None = None


class NotificationList(NotificationFilters):
    user_id: Text255 | None = None


class UserQuery(Query):
    user_id: Text255 | None = None


class WorkerQuery(Query):
    status: Literal["online", "offline"] | None = None


class QueueChartQuery(Query):
    since: When = "-1h"
    until: When | None = None
    bucket: Annotated[str, Field(max_length=16, description="Bucket width such as 10s, 1m, 5m"), Clean] = "1m"


class DashboardList(Query):
    user_id: Text255 | None = None
    limit: Limit = 100
    cursor: Cursor | None = None


# -- charts: the same parameters as a query string (GET) or a JSON body (POST) -----------------------------
class ProgressChart(Query):
    task_id: Id
    chart: Literal["line", "area", "scatter", "gauge"] = "line"


class StatusDistribution(Query):
    since: When | None = None
    until: When | None = None
    task_type: Text255 | None = None
    user_id: Text255 | None = None
    chart: Literal["pie", "bar"] = "pie"


class PerformanceMetrics(Query):
    since: When = "-24h"
    until: When | None = None
    bucket: Bucket = "5m"
    task_type: Text255 | None = None
    user_id: Text255 | None = None


class ActivityHeatmap(Query):
    since: When = "-30d"
    until: When | None = None
    task_type: Text255 | None = None
    user_id: Text255 | None = None
    utc_offset: Annotated[int, Field(ge=-840, le=840, description="Minutes east of UTC for the weekday/hour of "
                                                                    "each task")] = 0


CHART_QUERIES: dict[str, type[Query]] = {
    "progress-chart": ProgressChart, "status-distribution": StatusDistribution,
    "performance-metrics": PerformanceMetrics, "activity-heatmap": ActivityHeatmap,
}
