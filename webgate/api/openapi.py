"""The OpenAPI 3.1 document of the REST API, generated from the same declarations that route
and validate requests (every endpoint module's :class:`webgate.api.common.Endpoints`, which the
factory lists in ``app[API_OPERATIONS]``), so it cannot drift from the server; and the vocabulary."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from tracker import vocabulary
from webgate.api.common import API, API_OPERATIONS, Call, Endpoints, Operation, reply
from webgate.api.models import Query
from webgate.api.schema import COMPONENTS

__all__ = ["routes", "document"]

routes = Endpoints()

_cache: dict[str, Any] = {}


_REF = "#/components/schemas/{model}"
_NULL = {"type": "null"}


def _clean(node: Any) -> Any:
    """A pydantic JSON Schema as the document shows it: without the titles pydantic derives from
    field names and without ``default: null`` (an absent field is the null)."""
    if isinstance(node, list):
        return [_clean(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if (key == "title" and isinstance(value, str)) or (key == "default" and value is None):
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: _clean(v) for name, v in value.items()}
        elif key in ("default", "enum", "const", "required"):
            out[key] = value
        else:
            out[key] = _clean(value)
    return out


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without its null alternative: a query string has no null, only absence."""
    options = schema.get("anyOf")
    if options and _NULL in options:
        rest = [o for o in options if o != _NULL]
        outer = {k: v for k, v in schema.items() if k != "anyOf"}
        return {**rest[0], **outer} if len(rest) == 1 else {**outer, "anyOf": rest}
    return schema


def _params(model: type[Query], where: str) -> list[dict[str, Any]]:
    props = model.model_json_schema(ref_template=_REF).get("properties", {})
    out = []
    for name, info in model.model_fields.items():
        schema = _not_null(_clean(props[name]))
        p: dict[str, Any] = {"name": name, "in": where, "required": where == "path" or info.is_required()}
        if "description" in schema:
            p["description"] = schema.pop("description")
        p["schema"] = schema
        out.append(p)
    return out


def _body_schema(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    """The body's schema, its models (and the models they use) put in ``components``."""
    assert op.body_adapter is not None
    schema = op.body_adapter.json_schema(ref_template=_REF)
    components.update(_clean(schema.pop("$defs", {})))
    if isinstance(op.body, type) and issubclass(op.body, BaseModel):
        components[op.body.__name__] = _clean(schema)
        return {"$ref": _REF.format(model=op.body.__name__)}
    cleaned: dict[str, Any] = _clean(schema)
    return cleaned


def _operation(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        entry["description"] = op.description
    params = _params(op.path_model, "path") + _params(op.query, "query")
    if params:
        entry["parameters"] = params
    if op.body is not None:
        entry["requestBody"] = {"required": op.body_required,
                                "content": {"application/json": {"schema": _body_schema(op, components)}}}
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
        components = dict(COMPONENTS)  # the replies' schemas; the requests' come from their models
        for op in operations:
            paths.setdefault(API + op.path, {})[op.method.lower()] = _operation(op, components)
        _cache["doc"] = {
            "openapi": "3.1.0",
            "info": {"title": "celery-tracking", "version": "1",
                     "description": "Progress, logs, metrics, notifications and charts of tracked Celery tasks. "
                                    "Tokens are JWTs (HS256) with sub (user id), admin and exp: users see their "
                                    "own data, admins everything. Lists are {items, next_cursor}; errors are "
                                    "{error: {code, message}}."},
            "paths": paths,
            "components": {
                "schemas": dict(sorted(components.items())),
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
