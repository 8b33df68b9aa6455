"""The dashboard page (``GET /``) and its static files, Plotly's bundled ``plotly.min.js`` included.

Everything the page loads is served by the gateway (no CDN): the HTML, CSS and JS in ``static/``
next to this module through aiohttp's static handling, the feed's ``/static/tracker-client.js``
(``webgate.feed.endpoint``) and ``plotly.min.js`` from the installed ``plotly`` package, gzip-compressed
once in memory for clients that accept it.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

__all__ = ["setup", "plotly_js_path", "STATIC", "STATIC_PREFIX"]

STATIC = Path(__file__).parent / "static"
STATIC_PREFIX = "/static"
_STATIC_ROUTE = "dashboard_static"
#: Content types of the page's files, stated rather than guessed (``mimetypes`` differs between
#: Python versions for .js), with the charset the files are written in.
_CONTENT_TYPES = {".js": "application/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                  ".html": "text/html; charset=utf-8"}
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


async def _static_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers of the files aiohttp's static handler serves: no sniffing, revalidated on every load
    (they change with the gateway's version, and carry no version in their URL)."""
    resource = request.match_info.route.resource
    if resource is None or resource.name != _STATIC_ROUTE or response.status >= 300:
        return
    content_type = _CONTENT_TYPES.get(Path(request.path).suffix)
    if content_type is not None:
        response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"


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
    # After the fixed /static/ routes (plotly.min.js, the feed's client), which match first.
    app.router.add_static(STATIC_PREFIX, STATIC, name=_STATIC_ROUTE)
    app.on_response_prepare.append(_static_headers)
