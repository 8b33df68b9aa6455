"""JSON error bodies: ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["json_error", "error_middleware"]

logger = logging.getLogger("webgate")

_STATUS = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
           405: web.HTTPMethodNotAllowed, 409: web.HTTPConflict, 413: web.HTTPRequestEntityTooLarge,
           415: web.HTTPUnsupportedMediaType, 422: web.HTTPUnprocessableEntity, 429: web.HTTPTooManyRequests,
           503: web.HTTPServiceUnavailable}


def json_error(status: int, code: str, message: str) -> web.HTTPException:
    """An exception to ``raise``: an HTTP error with a JSON body."""
    cls = _STATUS.get(status, web.HTTPBadRequest)
    body = json.dumps({"error": {"code": code, "message": message}})
    if cls is web.HTTPMethodNotAllowed:
        return web.HTTPMethodNotAllowed("", [], text=body, content_type="application/json")
    if cls is web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(0, 0, text=body, content_type="application/json")
    return cls(text=body, content_type="application/json")


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Bad input becomes a 4xx JSON error; aiohttp's own errors get JSON bodies too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_") if exc.reason else "error"
        raise json_error(exc.status, code, exc.text or exc.reason or "error") from None
    except (ValueError, TypeError, KeyError) as exc:
        # Validation in the query builders and records raises these for bad input.
        raise json_error(400, "bad_request", str(exc).strip("'\"")) from None
