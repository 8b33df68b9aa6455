"""What every REST endpoint module shares: the route table with its declarations, the caller
(principal), request parsing and the JSON depth check, replies and errors, pagination and the
filters several endpoints take.

Each endpoint module owns one :class:`Endpoints` (an aiohttp ``RouteTableDef``) and declares each
endpoint once with :meth:`Endpoints.operation` - method, path, the pydantic models of its query
string, path parameters and body (``webgate.api.models``) and its replies. The same declaration
adds the aiohttp route, validates the request before the handler runs (so a rejected request
never writes anything) and is published in the OpenAPI document (``webgate.api.openapi``), which
therefore describes what the server does. The factory (``webgate.api.factory``) mounts the
tables under :data:`API` with ``add_subapp``.

This module is the leaf of the REST layer: it imports no endpoint module, and endpoint modules
import only it (with the models and the replies' schemas), never each other.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.exceptions
import sqlalchemy.exc
from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from tracker import queries as q
from tracker.api import task_record
from tracker.jsonsafe import dumps as strict_dumps
from tracker.records import TaskRecord
from webgate.api.models import Query, check_text
from webgate.core.auth import Principal, authenticate
from webgate.core.db import fetch_one
from webgate.core.errors import json_error
from webgate.core.keys import REPORTER

__all__ = ["API", "API_OPERATIONS", "Call", "Endpoints", "Operation", "reply", "no_content",
           "parse_params", "scope_user", "owned_row", "visible_task", "flush_writes", "Reply", "when", "SchemaError",
           "task_filters", "log_query", "MAX_BUCKETS", "check_range", "plotly_layout"]

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
    """One endpoint as declared: its models (query, path parameters, body) and its replies."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    handler: Handler
    query: type[Query] = Query
    path_model: type[Query] = Query
    #: A body model, or a union of models (``LogBatch | LogIn``); None: the endpoint takes no body.
    body: Any = None
    body_required: bool = False
    replies: list[Reply] = field(default_factory=list)
    auth: bool = True
    description: str = ""
    body_adapter: TypeAdapter[Any] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.body is not None:
            self.body_adapter = TypeAdapter(self.body)

    @property
    def url(self) -> str:
        return API + self.path

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(self.path_model.model_fields)


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

    def operation(self, method: str, route: str, *, operation_id: str, summary: str, tag: str,
                  ok: tuple[int, str, Schema | None] | tuple[int, str, Schema | None, str],
                  query: type[Query] = Query, path: type[Query] = Query,
                  body: Any = None, body_required: bool = False, errors: tuple[int, ...] = (),
                  extra: list[Reply] | None = None, auth: bool = True,
                  description: str = "") -> Callable[[Handler], Handler]:
        """Declare an endpoint: ``ok`` is its success reply, ``errors`` the 4xx it can answer
        beyond the ones every endpoint has (400, 401, 503; 413 with a body)."""
        content = ok[3] if len(ok) == 4 else "application/json"
        replies: list[Reply] = [(ok[0], ok[1], ok[2], content), *(extra or [])]
        codes = {400, 503, *errors}
        if auth:
            codes.add(401)
        if body is not None:
            codes.add(413)
        replies += [(c, _ERRORS[c], {"$ref": "#/components/schemas/Error"}, "application/json")
                    for c in sorted(codes)]

        def register(handler: Handler) -> Handler:
            op = Operation(method, route, operation_id, summary, tag, handler, query, path, body, body_required,
                           replies, auth, description)
            self.operations.append(op)
            # Routes keep declaration order, which keeps fixed paths such as /tasks/stats ahead
            # of /tasks/{task_id}. A GET declares no HEAD (aiohttp's add_get would add one): the
            # API answers the methods it documents, others get 405.
            head = {"allow_head": False} if method == "GET" else {}
            self.route(method, _route_path(op), name=operation_id, **head)(_wrap(op))
            return handler

        return register


# -- responses --------------------------------------------------------------------------------------
def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=strict_dumps(data), status=status, content_type="application/json")


def no_content() -> web.Response:
    return web.Response(status=204)


# -- request parsing ------------------------------------------------------------------------------------
class SchemaError(ValueError):
    """Request input does not match its model; the message names the offending field."""


def _message(exc: ValidationError, noun: str) -> str:
    """The first few problems pydantic found, each naming its field."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown {noun} {loc!r}")
        elif err["type"] == "missing":
            parts.append(f"missing required {noun} {loc!r}")
        else:
            parts.append(f"{noun} {loc!r}: {err['msg']}" if loc else f"{noun}: {err['msg']}")
    return "; ".join(parts)


def parse_params(values: Mapping[str, str], model: type[Query], noun: str = "parameter") -> dict[str, Any]:
    """Text parameters (query string, path, a widget's chart parameters) checked against ``model``;
    absent ones get their default."""
    try:
        for name, raw in values.items():
            check_text(raw, f"{noun} {name!r}")
        return model.model_validate(dict(values)).model_dump()
    except ValidationError as exc:
        raise SchemaError(_message(exc, noun)) from None
    except ValueError as exc:
        raise SchemaError(str(exc)) from None


def _parse_query(request: web.Request, model: type[Query], token_in_query: bool = False) -> dict[str, Any]:
    values: dict[str, str] = {}
    for name in set(request.query.keys()):
        if name == "token" and token_in_query:
            continue  # the export downloads may take the token as a query parameter
        found = request.query.getall(name)
        if len(found) > 1:
            raise SchemaError(f"query parameter {name!r} given more than once")
        values[name] = found[0]
    return parse_params(values, model)


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


def _validate_body(adapter: TypeAdapter[Any], data: Any) -> dict[str, Any]:
    """The body as the fields the client sent (``exclude_unset``: a handler can tell an absent
    field from a null one), checked strictly: JSON types as they are."""
    try:
        model = adapter.validate_python(data, strict=True)
    except ValidationError as exc:
        raise SchemaError(_message(exc, "field")) from None
    dumped: dict[str, Any] = model.model_dump(exclude_unset=True)
    return dumped


async def _parse_body(request: web.Request, op: Operation) -> Any:
    assert op.body_adapter is not None
    raw = await request.read()  # aiohttp answers 413 beyond client_max_size
    if not raw.strip(b" \t\r\n"):  # JSON's whitespace only: a form feed is not "no body"
        if op.body_required:
            raise SchemaError("a JSON body is required")
        return _validate_body(op.body_adapter, {})
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SchemaError("body is not UTF-8") from None
    check_json_depth(text)
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SchemaError(f"the body must be a JSON object, not {type(data).__name__}")
    return _validate_body(op.body_adapter, data)


def _wrap(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        principal = (authenticate(request, allow_query=op.path in QUERY_TOKEN_PATHS) if op.auth
                     else Principal("anonymous"))
        try:
            path = parse_params({k: request.match_info.get(k, "") for k in op.path_params}, op.path_model,
                                "path parameter")
            query = _parse_query(request, op.query, op.path in QUERY_TOKEN_PATHS)
            body = await _parse_body(request, op) if op.body_adapter is not None else None
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
_NUM = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?")


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


async def owned_row(call: Call, stmt: Any, what: str, ident: object) -> Any:
    """The row ``stmt`` reads if the caller may touch it: 404 when there is none, 403 when it is
    another user's (its ``user_id``)."""
    row = await fetch_one(call.app, stmt)
    if row is None:
        raise json_error(404, "not_found", f"no {what} {ident}")
    if not call.principal.can_see_user(row.user_id):
        raise json_error(403, "forbidden", f"this {what} belongs to another user")
    return row


async def visible_task(call: Call, task_id: str) -> TaskRecord:
    """The task if the caller may see it: 404 when there is none, 403 when it is another user's."""
    return task_record(await owned_row(call, q.task_by_id(task_id), "task", repr(task_id)))


async def flush_writes(app: web.Application, timeout: float = 5.0) -> bool:
    """Wait until the gateway's own writes are stored and published (read-your-writes)."""
    return await asyncio.to_thread(app[REPORTER].flush, timeout)


def _route_path(op: Operation) -> str:
    """The aiohttp path under :data:`API`: integer ids only match digits, so ``/notifications/stats``
    is never taken for a notification id (other methods there get 405, not a 400 about the id)."""
    path = op.path
    for name, info in op.path_model.model_fields.items():
        if info.annotation is int:
            path = path.replace("{" + name + "}", "{" + name + r":\d{1,19}}")
    return path


# -- filters shared by several endpoint modules ---------------------------------------------------------
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
