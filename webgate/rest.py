"""REST API under ``/api/v1/progress``: the operation registry and what every handler shares.

Each endpoint is declared once with :func:`operation` - method, path, query parameters, body
schema and responses. The same declaration registers the aiohttp route, validates the request
before the handler runs (so a rejected request never writes anything) and produces the
OpenAPI document (``webgate.openapi``), which therefore describes what the server does.
"""

from __future__ import annotations

import asyncio
import decimal
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis.exceptions
import sqlalchemy.exc
from aiohttp import web

from tracker.api import task_record
from tracker.queries import task_by_id
from tracker.records import TaskRecord
from webgate.auth import Principal, authenticate
from webgate.db import fetch_one
from webgate.errors import json_error
from webgate.keys import REPORTER
from webgate.rest_schema import SchemaError, check_text, validate

__all__ = ["API", "Call", "Operation", "OPERATIONS", "operation", "reply", "no_content", "dumps", "setup",
           "parse_params", "scope_user", "visible_task", "flush_writes", "Reply", "when", "LIMIT", "CURSOR", "TEXT",
           "WHEN", "TIME_DOC"]

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
        return self.request.app


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


OPERATIONS: list[Operation] = []

_ERRORS = {400: "Invalid input", 401: "Missing, invalid or expired token", 403: "Not allowed for this user",
           404: "Not found", 409: "Conflicts with the current state", 413: "Request body too large",
           429: "Too many requests", 503: "Store or bus unavailable"}


def operation(method: str, path: str, *, operation_id: str, summary: str, tag: str,
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
    replies += [(c, _ERRORS[c], {"$ref": "#/components/schemas/Error"}, "application/json") for c in sorted(codes)]

    def register(handler: Handler) -> Handler:
        OPERATIONS.append(Operation(method, path, operation_id, summary, tag, handler, dict(query or {}),
                                    dict(path_params or {}), body, body_required, replies, auth, description))
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
    row = await fetch_one(call.app, task_by_id(task_id))
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
    """The aiohttp path: integer ids only match digits, so ``/notifications/stats`` is never
    taken for a notification id (other methods there get 405, not a 400 about the id)."""
    path = op.url
    for name, schema in op.path_params.items():
        if schema.get("type") == "integer":
            path = path.replace("{" + name + "}", "{" + name + r":\d{1,19}}")
    return path


def setup(app: web.Application) -> None:
    """Register every REST route (and the Prometheus endpoint) on ``app``."""
    # Importing the endpoint modules fills OPERATIONS; routes are added in declaration order,
    # which keeps fixed paths such as /tasks/stats ahead of /tasks/{task_id}.
    from webgate import (  # noqa: F401
        openapi,
        prometheus,
        rest_logs,
        rest_metrics,
        rest_notifications,
        rest_rerun,
        rest_tasks,
        rest_workers,
        visualizations,
    )

    for op in OPERATIONS:
        app.router.add_route(op.method, _route_path(op), _wrap(op), name=op.operation_id)
    rest_tasks.setup(app)
    prometheus.setup(app)
