"""``/static/tracker-client.js`` in a real Chromium: first-frame auth and token refresh, subscribe, control,
reconnect and resume."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
from playwright.async_api import async_playwright

from tests.conftest import CHROMIUM_ARGS, SECRET
from tests.webgate.conftest import token_for
from webgate.core.auth import make_token


@asynccontextmanager
async def chromium_page() -> AsyncIterator[Any]:
    """A page of Debian's Chromium through Playwright's async API: these tests share the loop with the gateway."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


def running_task(tracker: Any, user_id: str) -> str:
    """A running task of ``user_id``, written at once: the page's first snapshot holds it."""
    task: str = tracker.create_task("t-" + user_id, user_id=user_id, status="running")
    tracker.flush()
    return task


PAGE = """<!doctype html><html><body>
<script src="{base}/static/tracker-client.js"></script>
<script>
  window.log = {{events: [], snapshots: [], statuses: [], recovered: [], acks: [], errors: []}};
  window.start = (url, token, topic) => {{
    window.client = new TrackerClient(url, token, {{
      minDelay: 100, maxDelay: 400,
      onEvent: (f) => log.events.push(f),
      onSnapshot: (f) => log.snapshots.push(f),
      onRecovered: (f) => log.recovered.push(f),
      onAck: (f) => log.acks.push(f),
      onError: (f) => log.errors.push(f),
      onStatus: (s, info) => log.statuses.push([s, info && info.code !== undefined ? info.code : null]),
    }});
    client.subscribe(topic);
  }};
</script></body></html>"""


async def test_js_client_subscribes_controls_reconnects_and_resumes(feed_gateway, publisher, tracker, rdb, prefix):
    gw = await feed_gateway()
    me = f"js-{uuid.uuid4().hex[:8]}"
    task = running_task(tracker, me)
    async with chromium_page() as page:
        await page.set_content(PAGE.format(base=gw.base))
        # A token given as a function (as an app refreshing its tokens would).
        await page.evaluate("([url, token, topic]) => start(url, () => Promise.resolve(token), topic)",
                            [gw.ws_url, token_for(me), f"user:{me}"])
        await page.wait_for_function("log.snapshots.length === 1", timeout=10_000)
        snapshot = await page.evaluate("log.snapshots[0]")
        assert snapshot["topic"] == f"user:{me}" and [t["task_id"] for t in snapshot["tasks"]] == [task]

        first = [publisher.progress(task, me, float(i)) for i in range(3)]
        await page.wait_for_function("log.events.length === 3", timeout=10_000)

        await page.evaluate("(id) => client.pause(id)", task)
        await page.wait_for_function("log.acks.length === 1", timeout=10_000)
        assert await page.evaluate("log.acks[0]") == {"type": "ack", "op": "pause", "task_id": task}
        assert rdb.get(f"{prefix}:control:{task}") == b"pause"

        # The gateway goes away (1001), events happen meanwhile, a new gateway comes up on the port.
        await gw.stop()
        await page.wait_for_function("log.statuses.some(s => s[0] === 'reconnecting' && s[1] === 1001)",
                                     timeout=10_000)
        missed = [publisher.progress(task, me, float(10 + i)) for i in range(4)]
        await gw.start()
        await page.wait_for_function("log.recovered.length === 1", timeout=15_000)
        live = publisher.progress(task, me, 99.0)
        await page.wait_for_function(f"log.events.some(e => e.id === {json.dumps(live)})", timeout=10_000)

        got = await page.evaluate("log.events.map(e => e.id)")
        assert got == [*first, *missed, live]  # nothing missed, nothing twice
        assert await page.evaluate("log.recovered[0]") == {"type": "recovered", "topic": f"user:{me}",
                                                           "complete": True}
        assert await page.evaluate("log.snapshots.length") == 1  # resumed, not re-snapshotted
        assert await page.evaluate("client.lastEventId") == live
        statuses = [s for s, _ in await page.evaluate("log.statuses")]
        assert statuses[0] == "connecting" and statuses.count("open") == 2
        assert await page.evaluate("log.errors") == []


async def test_js_client_authenticates_in_the_first_frame_and_refreshes_before_exp(feed_gateway, publisher,
                                                                                   tracker):
    gw = await feed_gateway()
    me = f"jsauth-{uuid.uuid4().hex[:8]}"
    task = running_task(tracker, me)
    async with chromium_page() as page:
        sockets: list[str] = []
        sent: list[str] = []

        def on_socket(ws: Any) -> None:
            sockets.append(ws.url)
            ws.on("framesent", lambda payload: sent.append(payload if isinstance(payload, str) else ""))

        page.on("websocket", on_socket)
        await page.set_content(PAGE.format(base=gw.base))
        # Minted now (a browser start on a busy machine can take seconds): a 4-second token, and its successor.
        first = make_token(SECRET, me, ttl=4)
        second = make_token(SECRET, me, ttl=60)
        exp1 = jwt.decode(first, options={"verify_signature": False})["exp"]
        exp2 = jwt.decode(second, options={"verify_signature": False})["exp"]
        # The app's token provider: the test swaps the token the app holds, as a sign-in refresh would.
        await page.evaluate("""([url, token, topic]) => {
            window.appToken = token; window.asked = 0;
            start(url, () => { window.asked += 1; return window.appToken; }, topic);
        }""", [gw.ws_url, first, f"user:{me}"])
        await page.wait_for_function("log.snapshots.length === 1", timeout=10_000)
        assert await page.evaluate("client.tokenExp") == exp1, await page.evaluate("log")
        await page.evaluate("(t) => { window.appToken = t; }", second)
        # Refreshed on the open socket before the first token ran out...
        await page.wait_for_function(f"client.tokenExp === {exp2}", timeout=10_000)
        await asyncio.sleep(max(0.0, exp1 - time.time()) + 1.5)
        # ...so it is still the same socket, serving events, past the first exp.
        eid = publisher.progress(task, me, 42.0)
        await page.wait_for_function(f"log.events.some(e => e.id === {json.dumps(eid)})", timeout=10_000)
        statuses = [s for s, _ in await page.evaluate("log.statuses")]
        assert statuses == ["connecting", "open"], statuses
        assert len(sockets) == 1 and "token" not in sockets[0] and first not in sockets[0]
        frames = [json.loads(f) for f in sent]
        assert frames[0] == {"op": "auth", "token": first}  # the first frame, before any subscribe
        assert frames[1] == {"op": "subscribe", "topic": f"user:{me}"}
        assert {"op": "auth", "token": second} in frames
        assert await page.evaluate("log.errors") == []
        assert await page.evaluate("window.asked") >= 2
