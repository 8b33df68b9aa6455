"""The dashboard page and everything it loads come from the gateway itself (no CDN): the
HTML with its Content-Security-Policy, the scripts and styles, and the installed plotly
package's ``plotly.min.js``, gzip-compressed and cacheable."""

from __future__ import annotations


async def test_page_and_assets_are_served_by_the_gateway(gateway):
    import aiohttp

    from webgate.dashboard.page import plotly_js_path

    async with aiohttp.ClientSession(auto_decompress=True) as s:
        async with s.get(gateway.base + "/") as r:
            html = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        for src in ("/static/tracker-client.js", "/static/plotly.min.js", "/static/dashboard.js"):
            assert f'src="{src}"' in html
        assert "//cdn" not in html and "https://" not in html  # nothing from elsewhere
        async with s.get(gateway.base + "/static/plotly.min.js", headers={"Accept-Encoding": "gzip"}) as r:
            body = await r.read()
            assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
            assert body == plotly_js_path().read_bytes()  # the installed package's bundle, unchanged
            etag = r.headers["ETag"]
        async with s.get(gateway.base + "/static/plotly.min.js", headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        for path, kind in (("/static/dashboard.js", "application/javascript"), ("/static/dashboard.css", "text/css"),
                           ("/static/tracker-client.js", "application/javascript")):
            async with s.get(gateway.base + path) as r:
                assert r.status == 200 and r.content_type == kind, path
