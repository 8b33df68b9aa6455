"""The gateway starts, serves /healthz, and refuses requests without a token."""

from __future__ import annotations

import aiohttp


async def test_healthz_in_process(gateway):
    async with aiohttp.ClientSession() as s, s.get(f"{gateway.base}/healthz") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"


def test_gateway_process_starts_and_stops_cleanly(gateway_process):
    import urllib.request

    gp = gateway_process()
    with urllib.request.urlopen(f"{gp.base}/healthz", timeout=2) as r:
        assert r.status == 200
    assert gp.stop() == 0
