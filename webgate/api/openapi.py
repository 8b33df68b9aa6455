"""The OpenAPI 3.1 document of the REST API, generated from the same declarations that route
and validate requests (every endpoint module's :class:`webgate.api.common.Endpoints`, which the
factory lists in ``app[API_OPERATIONS]``), so it cannot drift from the server; and the vocabulary."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from tracker import vocabulary
from webgate.api.common import API, API_OPERATIONS, Call, Endpoints, Operation, reply
from webgate.api.schema import COMPONENTS

__all__ = ["routes", "document"]

routes = Endpoints()

_cache: dict[str, Any] = {}


def _param(name: str, where: str, schema: dict[str, Any]) -> dict[str, Any]:
    clean = {k: v for k, v in schema.items() if k not in ("x-required", "description")}
    p: dict[str, Any] = {"name": name, "in": where, "required": where == "path" or bool(schema.get("x-required")),
                         "schema": clean}
    if schema.get("description"):
        p["description"] = schema["description"]
    return p


def _operation(op: Operation) -> dict[str, Any]:
    entry: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        entry["description"] = op.description
    params = [_param(n, "path", s) for n, s in op.path_params.items()]
    params += [_param(n, "query", s) for n, s in op.query.items()]
    if params:
        entry["parameters"] = params
    if op.body is not None:
        entry["requestBody"] = {"required": op.body_required, "content": {"application/json": {"schema": op.body}}}
    responses: dict[str, Any] = {}
    for status, description, schema, content_type in op.replies:
        r: dict[str, Any] = {"description": description}
        if schema is not None:
            r["content"] = {content_type: {"schema": schema}}
        responses[str(status)] = r
    entry["responses"] = responses
    if not op.auth:
        entry["security"] = []
    return entry


def document(operations: Iterable[Operation]) -> dict[str, Any]:
    """The OpenAPI document (built once: the operations are fixed when the modules load)."""
    if "doc" not in _cache:
        paths: dict[str, dict[str, Any]] = {}
        for op in operations:
            paths.setdefault(API + op.path, {})[op.method.lower()] = _operation(op)
        _cache["doc"] = {
            "openapi": "3.1.0",
            "info": {"title": "celery-tracking", "version": "1",
                     "description": "Progress, logs, metrics, notifications and charts of tracked Celery tasks. "
                                    "Tokens are JWTs (HS256) with sub (user id), admin and exp: users see their "
                                    "own data, admins everything. Lists are {items, next_cursor}; errors are "
                                    "{error: {code, message}}."},
            "paths": paths,
            "components": {
                "schemas": COMPONENTS,
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                    "token": {"type": "apiKey", "in": "query", "name": "token"},
                },
            },
            "security": [{"bearer": []}, {"token": []}],
        }
    return _cache["doc"]


@routes.operation("GET", "/openapi.json", operation_id="openapi", summary="This document", tag="meta", auth=False,
           ok=(200, "OpenAPI 3.1 document", {"type": "object"}))
async def openapi_json(call: Call) -> web.Response:
    operations: tuple[Operation, ...] = call.app[API_OPERATIONS]
    return reply(document(operations))


#: The shape of :func:`tracker.vocabulary.as_json`.
_VOCABULARY = {
    "type": "object",
    "required": ["statuses", "terminal", "active", "event_types", "event_status", "triggers", "close_codes"],
    "properties": {
        "statuses": {"type": "array", "items": {"type": "string"}},
        "terminal": {"type": "array", "items": {"type": "string"}},
        "active": {"type": "array", "items": {"type": "string"}},
        "event_types": {"type": "array", "items": {"type": "string"}},
        "event_status": {"type": "object", "additionalProperties": {"type": "string"}},
        "triggers": {"type": "array", "items": {"type": "string"}},
        "close_codes": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}


@routes.operation("GET", "/vocabulary", operation_id="vocabulary", tag="meta", auth=False,
           summary="Statuses (all, terminal, active), event types and the status each leaves a task in, "
                   "notification triggers and the feed's close codes",
           description="What clients such as the dashboard need to interpret tasks and events, from the one "
                       "place the server defines it (tracker.vocabulary).",
           ok=(200, "The vocabulary", _VOCABULARY))
async def vocabulary_json(call: Call) -> web.Response:
    return reply(vocabulary.as_json())
