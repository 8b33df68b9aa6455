"""The dashboard page (``GET /``) and its static files, Plotly's bundled ``plotly.min.js`` included.

Everything the page loads is served here (no CDN): the HTML, CSS and JS next to this module,
the feed's ``/static/tracker-client.js`` (``webgate.feed``) and ``plotly.min.js`` from the
installed ``plotly`` package, gzip-compressed once in memory for clients that accept it.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib.util
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

__all__ = ["setup", "plotly_js_path", "DASHBOARD_FILES"]

STATIC = Path(__file__).parent / "static"
DASHBOARD_FILES = {
    "/static/dashboard.js": ("dashboard.js", "application/javascript"),
    "/static/dashboard.css": ("dashboard.css", "text/css"),
    "/static/ops.js": ("ops.js", "application/javascript"),
    "/static/task-args.js": ("task-args.js", "application/javascript"),
}
# The page talks only to its own origin (REST and WebSocket); Plotly sets inline styles.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
#: A Host header that may be named in the policy: host name, IPv4 or [IPv6], optional port.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")


def csp(request: web.Request) -> str:
    """The page's policy: ``connect-src`` is its own origin only. CSP Level 3 ``'self'`` covers the
    same host's ws:/wss:; browsers that predate it get that one host's WebSocket origin named."""
    connect = "'self'"
    host = request.headers.get("Host", "")
    if _HOST.fullmatch(host):
        connect += f" wss://{host}" if request.secure else f" ws://{host} wss://{host}"
    return _CSP.format(connect=connect)


def plotly_js_path() -> Path:
    """``plotly.min.js`` shipped inside the installed plotly package (found without importing it)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the plotly package is not installed")
    for base in spec.submodule_search_locations:
        candidate = Path(base) / "package_data" / "plotly.min.js"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("plotly.min.js not found in the plotly package")


@dataclass(frozen=True)
class _Asset:
    raw: bytes
    gzipped: bytes
    etag: str


_PLOTLY = web.AppKey("tracker_dashboard_plotly", dict)


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "dashboard.html", headers={**_HEADERS, "Content-Security-Policy": csp(request),
                                                                 "Cache-Control": "no-cache",
                                                                 "Content-Type": "text/html; charset=utf-8"})


def _static(name: str, content_type: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / name, headers={"Content-Type": f"{content_type}; charset=utf-8",
                                                         "Cache-Control": "no-cache",
                                                         "X-Content-Type-Options": "nosniff"})

    return handler


async def plotly_js(request: web.Request) -> web.StreamResponse:
    cache = request.app[_PLOTLY]
    asset: _Asset | None = cache.get("asset")
    if asset is None:
        asset = await asyncio.to_thread(_load_plotly)  # ~4.6 MB: read and compress off the event loop
        cache["asset"] = asset
    headers = {"Content-Type": "application/javascript; charset=utf-8", "ETag": asset.etag,
               "Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding",
               "X-Content-Type-Options": "nosniff"}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        return web.Response(body=asset.gzipped, headers={**headers, "Content-Encoding": "gzip"})
    return web.Response(body=asset.raw, headers=headers)


def _load_plotly() -> _Asset:
    raw = plotly_js_path().read_bytes()
    return _Asset(raw, gzip.compress(raw, 6), '"' + hashlib.sha256(raw).hexdigest()[:32] + '"')


def setup(app: web.Application) -> None:
    app[_PLOTLY] = {}
    app.router.add_get("/", index, name="dashboard")
    app.router.add_get("/static/plotly.min.js", plotly_js, name="plotly_js")
    for path, (name, content_type) in DASHBOARD_FILES.items():
        app.router.add_get(path, _static(name, content_type))
