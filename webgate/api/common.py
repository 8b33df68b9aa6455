"""What every REST endpoint module shares: the route table with its declarations, the caller
(principal), request parsing and the JSON depth check, replies and errors, pagination and the
filters several endpoints take.

Each endpoint module owns one :class:`Endpoints` (an aiohttp ``RouteTableDef``) and declares each
endpoint once with :meth:`Endpoints.operation` - method, path, query parameters, body schema and
responses. The same declaration adds the aiohttp route, validates the request before the handler
runs (so a rejected request never writes anything) and is published in the OpenAPI document
(``webgate.api.openapi``), which therefore describes what the server does. The factory
(``webgate.api.factory``) mounts the tables under :data:`API` with ``add_subapp``.

This module is the leaf of the REST layer: it imports no endpoint module, and endpoint modules
import only it (and the schema), never each other.
"""

from __future__ import annotations

import asyncio
import decimal
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.exceptions
import sqlalchemy.exc
from aiohttp import web

from tracker import queries as q
from tracker.api import task_record
from tracker.records import TaskRecord
from webgate.api.schema import LEVELS, SchemaError, check_text, validate
from webgate.core.auth import Principal, authenticate
from webgate.core.db import fetch_one
from webgate.core.errors import json_error
from webgate.core.keys import REPORTER

__all__ = ["API", "API_OPERATIONS", "Call", "Endpoints", "Operation", "reply", "no_content", "dumps",
           "parse_params", "scope_user", "visible_task", "flush_writes", "Reply", "when", "LIMIT", "CURSOR", "TEXT",
           "WHEN", "TIME_DOC", "TASK_ID", "TASK_FILTERS", "LOG_FILTERS", "task_filters", "log_query", "MAX_BUCKETS",
           "check_range", "plotly_layout"]

API = "/api/v1/progress"
#: Operations (paths under API) that also accept the token as ``?token=``: plain download links.
QUERY_TOKEN_PATHS = frozenset({"/export/tasks.csv", "/export/tasks.json"})

Schema = dict[str, Any]
#: (status, description, schema or None, content type)
Reply = tuple[int, str, Schema | None, str]


@dataclass
class Call:
    """One validated request: the caller, path and query parameters, and the JSON body."""

    request: web.Request
    principal: Principal
    path: dict[str, Any]
    query: dict[str, Any]
    body: Any

    @property
    def app(self) -> web.Application:
        """The gateway's application (the REST handlers run in a sub-application: its root holds the
        engine, the Redis client, the reporter and the settings)."""
        return self.request.match_info.apps[0]


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    handler: Handler
    query: dict[str, Schema] = field(default_factory=dict)
    path_params: dict[str, Schema] = field(default_factory=dict)
    body: Schema | None = None
    body_required: bool = False
    replies: list[Reply] = field(default_factory=list)
    auth: bool = True
    description: str = ""

    @property
    def url(self) -> str:
        return API + self.path


#: The root application's list of every REST operation, set by the factory for the OpenAPI document.
API_OPERATIONS: web.AppKey[tuple[Operation, ...]] = web.AppKey("tracker_rest_operations", tuple)

_ERRORS = {400: "Invalid input", 401: "Missing, invalid or expired token", 403: "Not allowed for this user",
           404: "Not found", 409: "Conflicts with the current state", 413: "Request body too large",
           429: "Too many requests", 503: "Store or bus unavailable"}


class Endpoints(web.RouteTableDef):
    """One endpoint module's aiohttp route table, with the declaration of each of its operations."""

    def __init__(self) -> None:
        super().__init__()
        self.operations: list[Operation] = []

    def operation(self, method: str, path: str, *, operation_id: str, summary: str, tag: str,
                  ok: tuple[int, str, Schema | None] | tuple[int, str, Schema | None, str],
                  query: dict[str, Schema] | None = None, path_params: dict[str, Schema] | None = None,
                  body: Schema | None = None, body_required: bool = False, errors: tuple[int, ...] = (),
                  extra: list[Reply] | None = None, auth: bool = True,
                  description: str = "") -> Callable[[Handler], Handler]:
        """Declare an endpoint: ``ok`` is its success reply, ``errors`` the 4xx it can answer
        beyond the ones every endpoint has (400, 401, 503; 413 with a body)."""
        content = ok[3] if len(ok) == 4 else "application/json"  # type: ignore[misc]
        replies: list[Reply] = [(ok[0], ok[1], ok[2], content), *(extra or [])]
        codes = {400, 503, *errors}
        if auth:
            codes.add(401)
        if body is not None:
            codes.add(413)
        replies += [(c, _ERRORS[c], {"$ref": "#/components/schemas/Error"}, "application/json")
                    for c in sorted(codes)]

        def register(handler: Handler) -> Handler:
            op = Operation(method, path, operation_id, summary, tag, handler, dict(query or {}),
                           dict(path_params or {}), body, body_required, replies, auth, description)
            self.operations.append(op)
            # Routes keep declaration order, which keeps fixed paths such as /tasks/stats ahead
            # of /tasks/{task_id}.
            self.route(method, _route_path(op), name=operation_id)(_wrap(op))
            return handler

        return register


# -- responses --------------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """JSON-safe copy: datetimes as ISO 8601, Decimals as floats, NaN/inf (not JSON) as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(_clean(value), ensure_ascii=False, separators=(",", ":"), default=str)


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json")


def no_content() -> web.Response:
    return web.Response(status=204)


# -- request parsing ------------------------------------------------------------------------------------
_INT = re.compile(r"[+-]?\d{1,19}")
_NUM = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse_param(name: str, raw: str, schema: Schema) -> Any:
    where = f"parameter {name!r}"
    check_text(raw, where)
    types = schema.get("type", "string")
    types = [types] if isinstance(types, str) else types
    value: Any = raw
    if "integer" in types:
        if not _INT.fullmatch(raw.strip()):
            raise SchemaError(f"{where}: expected an integer")
        value = int(raw)
    elif "number" in types:
        if not _NUM.fullmatch(raw.strip()):
            raise SchemaError(f"{where}: expected a number")
        value = float(raw)
    elif "boolean" in types:
        if raw.lower() not in _BOOLS:
            raise SchemaError(f"{where}: expected true or false")
        value = _BOOLS[raw.lower()]
    return validate({k: v for k, v in schema.items() if k not in ("type", "default")}, value, where)


def parse_params(values: Mapping[str, str], spec: dict[str, Schema]) -> dict[str, Any]:
    """Query-style parameters (text) checked against ``spec``; absent ones get their default."""
    out: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in spec:
            raise SchemaError(f"unknown parameter {name!r}")
        out[name] = _parse_param(name, raw, spec[name])
    for name, schema in spec.items():
        if name not in out:
            if schema.get("x-required"):
                raise SchemaError(f"missing required parameter {name!r}")
            out[name] = schema.get("default")
    return out


def _parse_query(request: web.Request, spec: dict[str, Schema], token_in_query: bool = False) -> dict[str, Any]:
    values: dict[str, str] = {}
    for name in set(request.query.keys()):
        if name == "token" and token_in_query:
            continue  # the export downloads may take the token as a query parameter
        found = request.query.getall(name)
        if len(found) > 1:
            raise SchemaError(f"query parameter {name!r} given more than once")
        values[name] = found[0]
    return parse_params(values, spec)


#: Deepest nesting of arrays/objects a JSON body may have.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def check_json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON text nested deeper than ``limit`` levels, counted iteratively (no recursion) with
    brackets inside strings ignored, before the text is decoded and validated."""
    depth = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            if depth > limit:
                raise SchemaError(f"JSON nested deeper than {limit} levels")
        else:
            depth -= 1


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _parse_body(request: web.Request, op: Operation) -> Any:
    assert op.body is not None
    raw = await request.read()  # aiohttp answers 413 beyond client_max_size
    if not raw.strip(b" \t\r\n"):  # JSON's whitespace only: a form feed is not "no body"
        if op.body_required:
            raise SchemaError("a JSON body is required")
        return validate(op.body, {}, "body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SchemaError("body is not UTF-8") from None
    check_json_depth(text)
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"malformed JSON: {exc}") from None
    return validate(op.body, data, "body")


def _wrap(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        principal = (authenticate(request, allow_query=op.path in QUERY_TOKEN_PATHS) if op.auth
                     else Principal("anonymous"))
        try:
            path = {k: _parse_param(k, request.match_info.get(k, ""), s) for k, s in op.path_params.items()}
            query = _parse_query(request, op.query, op.path in QUERY_TOKEN_PATHS)
            body = await _parse_body(request, op) if op.body is not None else None
        except SchemaError as exc:
            raise json_error(400, "bad_request", str(exc)) from None
        try:
            return await op.handler(Call(request, principal, path, query, body))
        except OverflowError as exc:
            raise json_error(400, "bad_request", f"value out of range: {exc}") from None
        except sqlalchemy.exc.DataError as exc:
            # PostgreSQL refused a value (e.g. a time out of its range): the input is at fault.
            raise json_error(400, "bad_request", f"invalid value: {exc.orig}") from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError) as exc:
            raise json_error(503, "unavailable", f"store or bus unavailable: {type(exc).__name__}") from None

    handle.__name__ = op.operation_id
    return handle


# -- shared helpers ------------------------------------------------------------------------------------
#: Query parameters shared by list endpoints.
TIME_DOC = "ISO 8601 time, epoch seconds, or relative such as -15m, -2h, -7d"
LIMIT: Schema = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
CURSOR: Schema = {"type": "string", "maxLength": 512, "description": "next_cursor of the previous page"}
TEXT: Schema = {"type": "string", "maxLength": 255}
WHEN: Schema = {"type": "string", "maxLength": 64, "description": TIME_DOC}


def when(value: str | None) -> Any:
    """A time query parameter as ``tracker.queries.parse_time`` takes it (epoch seconds as a number)."""
    if value is not None and _NUM.fullmatch(value.strip()):
        seconds = float(value)
        if not 0 <= seconds < 1e11:
            raise SchemaError(f"epoch seconds out of range: {value}")
        return seconds
    return value


def scope_user(call: Call, requested: str | None) -> str | None:
    """The user whose data a list shows: admins choose (None = everyone), users get their own."""
    p = call.principal
    if p.admin:
        return requested
    if requested is not None and requested != p.user_id:
        raise json_error(403, "forbidden", "you may only see your own data")
    return p.user_id


async def visible_task(call: Call, task_id: str) -> TaskRecord:
    """The task if the caller may see it: 404 when there is none, 403 when it is another user's."""
    row = await fetch_one(call.app, q.task_by_id(task_id))
    if row is None:
        raise json_error(404, "not_found", f"no task {task_id!r}")
    record = task_record(row)
    if not call.principal.can_see_user(record.user_id):
        raise json_error(403, "forbidden", "this task belongs to another user")
    return record


async def flush_writes(app: web.Application, timeout: float = 5.0) -> bool:
    """Wait until the gateway's own writes are stored and published (read-your-writes)."""
    return await asyncio.to_thread(app[REPORTER].flush, timeout)


def _route_path(op: Operation) -> str:
    """The aiohttp path under :data:`API`: integer ids only match digits, so ``/notifications/stats``
    is never taken for a notification id (other methods there get 405, not a 400 about the id)."""
    path = op.path
    for name, schema in op.path_params.items():
        if schema.get("type") == "integer":
            path = path.replace("{" + name + "}", "{" + name + r":\d{1,19}}")
    return path


# -- parameters and filters shared by several endpoint modules ---------------------------------------------
TASK_ID: dict[str, Schema] = {"task_id": {"type": "string", "minLength": 1, "maxLength": 255}}
TASK_FILTERS: dict[str, Schema] = {
    "user_id": {**TEXT, "description": "Only this user's tasks (admins; users always see their own)"},
    "status": {"type": "string", "maxLength": 200, "description": "A status or a comma-separated list"},
    "task_type": TEXT, "tag": TEXT,
    "search": {**TEXT, "description": "Substring of id, name, type, step or error"},
    "since": WHEN, "until": WHEN, "group_id": TEXT, "root_id": TEXT, "parent_id": TEXT,
}
_LEVEL_PARAM: Schema = {"type": "string", "maxLength": 16,
                        "description": "Level name (" + ", ".join(LEVELS) + ") or number"}
LOG_FILTERS: dict[str, Schema] = {
    "level": {**_LEVEL_PARAM, "description": "Only this level"},
    "min_level": {**_LEVEL_PARAM, "description": "This level and above"},
    "search": {**TEXT, "description": "Full-text search in the message (web search syntax)"},
    "since": WHEN, "until": WHEN, "limit": LIMIT, "cursor": CURSOR,
    "order": {"type": "string", "enum": ["asc", "desc"], "default": "asc"},
}


def task_filters(call: Call) -> q.TaskFilters:
    """Validated filters of a task list, limited to what the caller may see."""
    a = call.query
    return q.TaskFilters(user_id=scope_user(call, a.get("user_id")), status=a.get("status"),
                         task_type=a.get("task_type"), tag=a.get("tag"), since=when(a.get("since")),
                         until=when(a.get("until")), search=a.get("search"), group_id=a.get("group_id"),
                         root_id=a.get("root_id"), parent_id=a.get("parent_id"))


def log_query(call: Call, task_id: str | None, user_id: str | None) -> Any:
    a = call.query
    return q.logs(task_id=task_id, user_id=user_id, level=a.get("level"), min_level=a.get("min_level"),
                  search=a.get("search") or None, since=when(a.get("since")), until=when(a.get("until")),
                  limit=a["limit"], cursor=a.get("cursor"), newest_first=a.get("order") == "desc")


# -- time-bucketed series (charts, metrics, queue depth) ----------------------------------------------------
#: A chart or series never asks the store for more time buckets than this.
MAX_BUCKETS = 5000


def check_range(a: dict[str, Any], bucket: str) -> None:
    """Refuse a range that would need more than MAX_BUCKETS buckets."""
    width = q.parse_bucket(bucket).total_seconds()
    t0 = q.parse_time(when(a.get("since")), "since")
    t1 = q.parse_time(when(a.get("until")), "until") or datetime.now(UTC)
    if t0 is None:
        raise SchemaError("since is required for this chart")
    if (t1 - t0).total_seconds() / width > MAX_BUCKETS:
        raise SchemaError(f"too many buckets: use a wider bucket or a shorter range (at most {MAX_BUCKETS})")


def plotly_layout(title: str, **extra: Any) -> dict[str, Any]:
    """A Plotly layout in the dashboard's style."""
    return {"title": {"text": title}, "margin": {"l": 50, "r": 20, "t": 50, "b": 40},
            "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)", **extra}
