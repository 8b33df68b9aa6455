"""The gateway's notifier against real servers: PostgreSQL, Redis, a prefork worker, an SMTP
server (aiosmtpd) and local HTTP servers standing in for Slack and webhook receivers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from aiohttp import web
from aiosmtpd.controller import Controller

from tests.conftest import Worker, eventually, forget_notifications, user_ids, wait_for
from tracker import Tracker
from tracker import notify as nt
from tracker.config import TrackerConfig
from tracker.demo.services import free_port
from tracker.events import Event, encode
from webgate import create_app
from webgate.notify import notifier as nf
from webgate.notify.channels import (
    SIGNATURE_HEADER,
    DeliveryError,
    EmailChannel,
    EmailSettings,
    Targets,
    WebhookChannel,
    sign,
    slack_payload,
    verify_signature,
)
from webgate.notify.notifier import NOTIFIER

SECRET = "hook-secret"
PORT = web.AppKey("test_port", int)


# -- stand-ins for the outside world -------------------------------------------------------------------
class SmtpSink:
    """A real SMTP server (aiosmtpd) keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, list[str], Message]] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd API)
        self.messages.append((time.time(), list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"

    def settings(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "sender": "tracker@example.com",
                "recipients": {"*": ["ops@example.com"]}}


class Receiver:
    """A local aiohttp server in its own thread, recording requests: it answers ``fail_first``
    requests with HTTP 500 and may take ``delay`` seconds before answering."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0) -> None:
        self.fail_first, self.delay = fail_first, delay
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "receiver did not start"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((time.time(), dict(request.headers), body))
        n = len(self.requests)
        if self.delay:
            await asyncio.sleep(self.delay)
        if n <= self.fail_first:
            return web.Response(status=500, text="receiver is down")
        return web.Response(text="ok")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _t, _h, body in self.requests]

    def stop(self) -> None:
        def cancel_and_stop() -> None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.call_later(0.05, self._loop.stop)

        self._loop.call_soon_threadsafe(cancel_and_stop)
        self._thread.join(10)


@pytest.fixture()
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.fixture()
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def make(**kw: Any) -> Receiver:
        r = Receiver(**kw)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


#: This module's user ids (and alert rules): their notifications are deleted when the module ends.
uid = user_ids("ntest")
_forget_test_notifications = forget_notifications("user_id LIKE 'ntest-%'")

def new_prefix() -> str:
    """Each test gets its own stream and queues: no other gateway of the session touches them."""
    return f"tn-{uuid.uuid4().hex[:8]}"


def own_config() -> TrackerConfig:
    """The suite's settings on a prefix of the test's own (see :func:`new_prefix`)."""
    return TrackerConfig.from_env().replace(prefix=new_prefix())


@asynccontextmanager
async def serve(config: TrackerConfig) -> AsyncIterator[web.Application]:
    """The gateway in this test's event loop; ``app[PORT]`` is where it listens."""
    app = create_app(config)
    app[PORT] = free_port()
    runner = web.AppRunner(app, shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", app[PORT]).start()
    try:
        yield app
    finally:
        await runner.cleanup()




def delivery(t: Tracker, nid: int, channel: str) -> dict[str, Any]:
    rec = t.notification(nid)
    assert rec is not None
    return dict(rec.delivery.get(channel) or {})


def stream_notifications(rdb: redis_lib.Redis, prefix: str) -> list[dict[str, str]]:
    out = []
    for _id, fields in rdb.xrange(f"{prefix}:events"):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if f["type"] == "notification":
            out.append(f)
    return out


# -- the whole path: worker -> stream -> two gateways -> every channel once -------------------------------------
@pytest.fixture()
def prefixed_worker(tracker_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Worker, str]]:
    prefix = new_prefix()
    w = Worker(tracker_env, tmp_path, concurrency=2, extra_env={"TRACKER_PREFIX": prefix})
    yield w, prefix
    w.stop()


def test_failed_tasks_notify_every_channel_exactly_once_across_two_gateways(
        prefixed_worker, gateway_process, tracked_app, smtp, receivers, tracker, rdb):
    from signals import tracking_context
    from tests.apps.tasks import build, fail, retry_once

    worker, prefix = prefixed_worker
    slack, hook = receivers(), receivers()
    user = uid("u")
    rules = [{"id": "failures", "on": ["failed"], "channels": ["websocket", "email", "slack", "webhook"],
              "priority": "high", "task_types": ["tests.fail"]},
             {"id": "retries", "on": ["retry"], "task_types": ["tests.retry_once"], "priority": "low"},
             {"id": "halfway", "on": ["progress>=50"], "task_types": ["tests.build"],
              "title": "{task_type} is {threshold}% done", "message": "step: {current_step}"},
             {"id": "unrelated", "on": ["completed"], "task_types": ["tests.nothing-like-this"]}]
    env = {"TRACKER_PREFIX": prefix, "TRACKER_NOTIFICATIONS": json.dumps(rules),
           "TRACKER_EMAIL": json.dumps({**smtp.settings(), "recipients": {user: ["owner@example.com"]}}),
           "TRACKER_SLACK_WEBHOOK_URL": slack.url, "TRACKER_WEBHOOK_URL": hook.url,
           "TRACKER_WEBHOOK_SECRET": SECRET, "TRACKER_PUBLIC_URL": "https://tracker.example",
           "TRACKER_NOTIFY_RETRY_BASE": "0.2"}
    gateways = [gateway_process(extra_env=env), gateway_process(extra_env=env)]

    with tracking_context(user_id=user):
        results = [fail.apply_async((f"boom-{i}",), queue=worker.queue) for i in range(3)]
        retried = retry_once.apply_async(queue=worker.queue)
        built = build.apply_async((20, 0.01), queue=worker.queue)
    task_ids = {r.id for r in results}

    wait_for(lambda: len(smtp.messages) >= 3 and len(slack.requests) >= 3 and len(hook.requests) >= 3,
             timeout=30, what="three deliveries on every channel")
    # Give a duplicate every chance to show up before counting.
    time.sleep(1.5)
    assert all(gp.proc is not None and gp.proc.poll() is None for gp in gateways)

    # A retry and a task crossing 50% notify once each (websocket only, by their rules).
    def other_notifications() -> list[Any]:
        return [n for n in tracker.notifications(user_id=user) if n.task_id not in task_ids]

    others = wait_for(lambda: len(other_notifications()) >= 2 and other_notifications(), timeout=20,
                      what=f"retry and progress notifications (have {tracker.notifications(user_id=user)})")
    assert sorted((n.task_id, n.title) for n in others) == sorted([
        (retried.id, "Task tests.retry_once is being retried (retry 1)"),
        (built.id, "tests.build is 50% done")])
    assert all(n.channels == ["websocket"] for n in others)
    stored = [n for n in tracker.notifications(user_id=user) if n.task_id in task_ids]
    assert len(stored) == 3
    assert {n.task_id for n in stored} == task_ids
    for n in stored:
        assert n.type == "error" and n.priority == "high"
        assert n.title == "Task tests.fail failed"
        assert n.message.startswith("ValueError: boom-")
        assert n.action_url == f"https://tracker.example/?task_id={n.task_id}"
        for ch in ("websocket", "email", "slack", "webhook"):
            assert n.delivery[ch]["status"] == "sent", (ch, n.delivery)
            assert n.delivery[ch]["attempts"] == 1
            assert n.delivery[ch]["delivered_at"]
    by_task = {n.task_id: n for n in stored}

    # E-mail: one per notification, to the user's own address, with the error in it.
    assert len(smtp.messages) == 3
    mailed = {}
    for _ts, rcpt, msg in smtp.messages:
        assert rcpt == ["owner@example.com"]
        nid = int(msg["X-Tracker-Notification"])
        mailed[nid] = msg
        body = msg.get_payload(decode=True).decode()
        n = next(x for x in stored if x.id == nid)
        assert msg["Subject"] == "[HIGH] Task tests.fail failed"
        assert n.message in body and n.task_id in body and n.action_url in body
    assert set(mailed) == {n.id for n in stored}

    # Slack: one readable post per failure with a link to the task.
    assert len(slack.requests) == 3
    for post in slack.json():
        tid = next(t for t in task_ids if t in json.dumps(post))
        n = by_task[tid]
        assert "*Task tests.fail failed*" in post["text"] and n.message in post["text"]
        assert f"<{n.action_url}|Open task>" in post["text"]

    # Webhook: one signed POST per notification; the signature verifies (and only for these bytes).
    assert len(hook.requests) == 3
    seen = set()
    for _ts, headers, body in hook.requests:
        assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body)
        assert not verify_signature("wrong-secret", headers[SIGNATURE_HEADER], body)
        assert not verify_signature(SECRET, headers[SIGNATURE_HEADER], body.replace(b"boom", b"bang"))
        payload = json.loads(body)
        n = by_task[payload["notification"]["task_id"]]
        assert payload["type"] == "notification" and payload["id"] == n.id
        assert payload["notification"]["message"] == n.message and payload["notification"]["user_id"] == user
        assert "delivery" not in payload["notification"]
        seen.add(n.id)
    assert seen == {n.id for n in stored}

    # In-app: one `notification` event per notification on the stream, for the user's feed.
    pushed = stream_notifications(rdb, prefix)
    assert sorted(json.loads(p["data"])["id"] for p in pushed) == sorted(n.id for n in stored + others)
    assert {p["user_id"] for p in pushed} == {user}

    # Every event was acknowledged by the group.
    pending = rdb.xpending(f"{prefix}:events", f"{prefix}:notifier")
    assert pending["pending"] == 0


def test_gateway_refuses_to_start_with_bad_rules(gateway_process):
    bad = json.dumps([{"on": ["failed"], "channels": ["websocket", "pager"]}])
    with pytest.raises(RuntimeError) as err:
        gateway_process(extra_env={"TRACKER_NOTIFICATIONS": bad})
    assert "unknown channel 'pager'" in str(err.value)


def test_rule_channels_must_be_configured(tracker_env):
    cfg = TrackerConfig.from_env()
    for rule, message in [({"on": "failed", "channels": ["email"]}, "needs tracker_email"),
                          ({"on": "failed", "channels": ["slack"]}, "needs tracker_slack_webhook_url"),
                          ({"on": "failed", "channels": ["webhook"]}, "needs tracker_webhook_url")]:
        with pytest.raises(ValueError, match=message):
            create_app(cfg.replace(notifications=[rule]))
    with pytest.raises(ValueError, match="needs tracker_webhook_secret"):
        create_app(cfg.replace(notifications=[{"on": "failed", "channels": ["webhook"]}],
                           webhook_url="http://127.0.0.1:9/x", webhook_secret=None))
    with pytest.raises(ValueError, match="'sender' must be an e-mail address"):
        create_app(cfg.replace(email={"host": "127.0.0.1"}))
    with pytest.raises(ValueError, match="unknown key"):
        create_app(cfg.replace(email={"host": "h", "sender": "a@b", "tls": True}))


# -- retries, backoff and isolation between channels ---------------------------------------------------------
async def test_a_down_channel_is_retried_with_backoff_while_others_deliver(tracker_env, smtp, receivers, sql):
    prefix = new_prefix()
    hook = receivers(fail_first=2)           # down: two HTTP 500s, then fine
    slow_slack = receivers(delay=30.0)        # slow: never answers within the timeout
    cfg = TrackerConfig.from_env().replace(prefix=prefix, email=smtp.settings(), webhook_url=hook.url,
                  webhook_secret=SECRET, slack_webhook_url=slow_slack.url, notify_retry_base=0.3,
                  notify_max_attempts=3, notify_timeout=1.0)
    user = uid("retry")
    t = Tracker(config=cfg)
    try:
        async with serve(cfg):
            rec = t.notify(user, "Nightly import failed", "disk full", type="error", priority="urgent",
                           channels=["websocket", "email", "slack", "webhook"], task_id="t-retry")
            await eventually(lambda: smtp.messages and delivery(t, rec.id, "email").get("status") == "sent",
                        what="the e-mail")
            # The e-mail went out while the slow Slack call was still hanging and the webhook failing
            # (its success needs two backoff delays, 0.9 s at least).
            assert delivery(t, rec.id, "slack")["status"] in ("pending", "retrying")
            assert delivery(t, rec.id, "webhook")["status"] != "sent"
            await eventually(lambda: delivery(t, rec.id, "websocket").get("status") == "sent", what="in-app")

            await eventually(lambda: delivery(t, rec.id, "webhook")["status"] == "sent", what="webhook success")
            hooked = delivery(t, rec.id, "webhook")
            assert hooked["attempts"] == 3
            assert "HTTP 500" in hooked["last_error"]
            times = [ts for ts, _h, _b in hook.requests]
            assert len(times) == 3
            # Backoff: at least the base delay, then at least twice it.
            assert times[1] - times[0] >= 0.3 * 0.9
            assert times[2] - times[1] >= 0.6 * 0.9
            # The same delivery id on every attempt, so a receiver can drop duplicates.
            assert len({h["X-Tracker-Delivery"] for _t, h, _b in hook.requests}) == 1
            assert smtp.messages[0][0] < times[2]

            await eventually(lambda: delivery(t, rec.id, "slack")["status"] == "failed", timeout=20,
                        what="slack to give up")
            slacked = delivery(t, rec.id, "slack")
            assert slacked["attempts"] == 3 and "timed out" in slacked["last_error"]
            assert len(slow_slack.requests) == 3
            assert len(smtp.messages) == 1
    finally:
        t.close()
    rows = sql.execute("SELECT count(*) FROM tracker_notifications WHERE user_id = %s AND id = %s",
                       (user, rec.id)).fetchone()
    assert rows[0] == 1


async def test_channels_report_down_and_refused_receivers():
    import aiohttp

    n = nt.notification_record({"id": 7, "user_id": "u", "title": "T <b>", "message": "m & n", "type": "error",
                                "priority": "high", "channels": ["webhook"], "task_id": "t-7",
                                "action_url": "https://x/t-7"})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        closed = f"http://127.0.0.1:{free_port()}/hook"
        with pytest.raises(DeliveryError) as err:
            await WebhookChannel(session, SECRET).send(n, Targets(webhook_url=closed))
        assert not err.value.permanent  # a closed port may open again: retry
        with pytest.raises(DeliveryError) as err:
            await WebhookChannel(session, None).send(n, Targets(webhook_url=closed))
        assert err.value.permanent
    email = EmailSettings.parse({"host": "127.0.0.1", "port": free_port(), "sender": "t@example.com",
                                 "recipients": {"someone-else": ["x@example.com"]}})
    with pytest.raises(DeliveryError, match="no e-mail address for user 'u'") as err:
        await EmailChannel(email).send(n, Targets())
    assert err.value.permanent
    with pytest.raises(DeliveryError) as err:
        await EmailChannel(email).send(n, Targets(email_to=("a@example.com",)))
    assert not err.value.permanent
    payload = slack_payload(n)
    assert payload["text"].startswith(":x: *T &lt;b&gt;* (high)\nm &amp; n")
    assert payload["blocks"][-1]["elements"][0]["url"] == "https://x/t-7"


def test_signature_scheme():
    body = b'{"a":1}'
    header = sign(SECRET, body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify_signature(SECRET, header, body, now=1_700_000_100)
    assert not verify_signature(SECRET, header, body, now=1_700_001_000)  # too old: a replay
    assert not verify_signature(SECRET, header, body + b" ", now=1_700_000_100)
    assert not verify_signature(SECRET, "v1=abc", body)
    assert not verify_signature(SECRET, None, body)
    assert not verify_signature("", header, body, now=1_700_000_100)


# -- bursts and digests, redelivery, dead gateways ----------------------------------------------------------------
def failed_event(task_id: str, user: str, ts: float, task_type: str = "proj.import") -> Event:
    return Event("task.failed", task_id, user, ts, {"status": "failed", "name": task_type, "task_type": task_type,
                                                     "error_type": "ValueError", "error_message": f"{task_id} broke"})


async def test_a_burst_becomes_a_digest_and_users_are_rate_limited(tracker_env, receivers, rdb):
    prefix = new_prefix()
    hook = receivers()
    rules = [{"id": "burst", "on": ["failed"], "channels": ["websocket", "webhook"],
              "digest": {"window": 2, "threshold": 2}}]
    cfg = TrackerConfig.from_env().replace(prefix=prefix, notifications=rules, webhook_url=hook.url,
                  webhook_secret=SECRET, notify_rate_limit=3, notify_digest_window=2,
                  notify_rate_window=2)
    burst_user, busy_user = uid("burst"), uid("busy")
    t = Tracker(config=cfg)
    try:
        async with serve(cfg):
            now = time.time()
            pipe = rdb.pipeline()
            # Ten failures of one task type for one user within one window...
            for i in range(10):
                pipe.xadd(f"{prefix}:events", encode(failed_event(f"b-{i}", burst_user, now)))
            # ... and six failures of six task types for another user (rate limit 3 per window).
            for i in range(6):
                pipe.xadd(f"{prefix}:events", encode(failed_event(f"r-{i}", busy_user, now, f"kind{i}")))
            pipe.execute()

            def digests(user: str) -> list[Any]:
                return [n for n in t.notifications(user_id=user) if n.metadata.get("digest")]

            await eventually(lambda: digests(burst_user) and digests(busy_user), timeout=15, what="both digests")
            await eventually(lambda: len(hook.requests) >= 2 + 1 + 3 + 1, what="webhooks")
            await asyncio.sleep(1.0)

            burst = t.notifications(user_id=burst_user)
            singles = [n for n in burst if not n.metadata.get("digest")]
            (digest,) = digests(burst_user)
            assert len(singles) == 2
            assert digest.title == "8 more tasks of type proj.import failed"
            assert digest.metadata["count"] == 8 and digest.metadata["total"] == 10
            assert sorted(digest.metadata["task_ids"]) == sorted({f"b-{i}" for i in range(10)}
                                                                 - {n.task_id for n in singles})
            assert digest.type == "error" and digest.channels == ["websocket", "webhook"]

            busy = t.notifications(user_id=busy_user)
            (held,) = digests(busy_user)
            assert len([n for n in busy if not n.metadata.get("digest")]) == 3
            assert held.title == "3 more notifications held back" and held.metadata["scope"] == "user"

            # One webhook per stored notification: 2 + 1 digest, 3 + 1 digest.
            assert len(hook.requests) == 7
            assert sorted(p["id"] for p in hook.json()) == sorted(n.id for n in burst + busy)
    finally:
        t.close()


async def test_redelivered_events_are_stored_once_and_progress_thresholds_fire_once(tracker_env, rdb, sql):
    prefix = new_prefix()
    rules = [{"id": "r", "on": ["failed", "progress>=50"], "channels": ["websocket"]}]
    cfg = TrackerConfig.from_env().replace(prefix=prefix, notifications=rules)
    user = uid("u")
    async with serve(cfg) as app:
        notifier = app[NOTIFIER]
        ev = failed_event("t-dup", user, time.time())
        for _ in range(3):  # the same stream entry handled three times (a redelivery)
            await notifier.handle("1-1", encode(replace(ev, id="1-1")))
        # The same failure published again (another entry): still one notification about it.
        await notifier.handle("1-2", encode(ev))
        for i, pct in enumerate((10.0, 49.9, 50.0, 70.0, 100.0)):
            await notifier.handle(f"2-{i}", encode(Event("task.progress", "t-dup", user, time.time(),
                                                         {"progress": pct})))
        rows = sql.execute("SELECT title FROM tracker_notifications WHERE user_id = %s ORDER BY id",
                           (user,)).fetchall()
        assert [r[0] for r in rows] == ["Task proj.import failed", "Task t-dup reached 50%"]


async def test_events_of_a_dead_gateway_are_taken_over(tracker_env, rdb):
    prefix = new_prefix()
    stream, group = f"{prefix}:events", f"{prefix}:notifier"
    rules = [{"id": "r", "on": ["failed"], "channels": ["websocket"]}]
    cfg = TrackerConfig.from_env().replace(prefix=prefix, notifications=rules)
    user = uid("u")
    rdb.xgroup_create(stream, group, id="$", mkstream=True)
    for i in range(2):
        rdb.xadd(stream, encode(failed_event(f"dead-{i}", user, time.time())))
    # A gateway read them and died before acknowledging.
    got = rdb.xreadgroup(group, "dead-gateway", {stream: ">"}, count=10)
    assert len(got[0][1]) == 2
    t = Tracker(config=cfg)
    try:
        async with serve(cfg) as app:
            app[NOTIFIER].claim_idle, app[NOTIFIER].claim_every = 0.3, 0.3
            await eventually(lambda: len(t.notifications(user_id=user)) == 2, timeout=15, what="takeover")
            await eventually(lambda: rdb.xpending(stream, group)["pending"] == 0, what="acknowledged")
    finally:
        t.close()


async def test_lost_queue_entries_are_requeued(tracker_env, rdb):
    """A notification stored while its queue entry was lost is found by the sweep and delivered."""
    cfg = own_config()
    prefix = cfg.prefix
    t = Tracker(config=cfg)
    try:
        rec = t.notify(uid("lost"), "queued later", channels=["websocket"])
        rdb.delete(nt.due_key(prefix))
        with t.engine.begin() as conn:  # make it old enough for the sweep
            conn.exec_driver_sql("UPDATE tracker_notifications SET created_at = now() - interval '1 minute' "
                                 f"WHERE id = {int(rec.id)}")
        async with serve(cfg):
            await eventually(lambda: delivery(t, rec.id, "websocket").get("status") == "sent", what="requeued")
        assert [json.loads(p["data"])["id"] for p in stream_notifications(rdb, prefix)] == [rec.id]
    finally:
        t.close()


# -- in-app: the feed ---------------------------------------------------------------------------------------
async def test_in_app_notifications_reach_only_their_users_feed(tracker_env):
    import aiohttp

    from tests.conftest import make_token

    cfg = own_config()
    alice, bob = uid("alice"), uid("bob")
    t = Tracker(config=cfg)

    async def notifications_on(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(15):
            while len(got) < count:
                frame = await ws.receive_json()
                if frame.get("type") == "event" and frame.get("event") == "notification":
                    got.append(frame)
        return got

    try:
        async with serve(cfg) as app, aiohttp.ClientSession() as session:
            url = f"ws://127.0.0.1:{app[PORT]}/api/v1/progress/ws"
            async with session.ws_connect(f"{url}?token={make_token(alice)}") as wa, \
                    session.ws_connect(f"{url}?token={make_token(bob)}") as wb:
                for ws, user in ((wa, alice), (wb, bob)):
                    await ws.send_json({"op": "subscribe", "topic": f"user:{user}"})
                    async with asyncio.timeout(10):
                        while (await ws.receive_json()).get("type") != "snapshot":
                            pass
                to_alice = t.notify(alice, "Your export is ready", "3 files", type="success",
                                    action_url="https://x/export/1")
                to_bob = t.notify(bob, "For bob")
                (fa,) = await notifications_on(wa, 1)
                (fb,) = await notifications_on(wb, 1)
                # Bob's notification was published after Alice's: had Bob been sent hers, it came first.
                assert fb["data"]["id"] == to_bob.id and fb["user_id"] == bob
                assert fa["user_id"] == alice
                assert fa["data"]["id"] == to_alice.id and fa["data"]["title"] == "Your export is ready"
                assert fa["data"]["message"] == "3 files" and fa["data"]["type"] == "success"
                assert fa["data"]["action_url"] == "https://x/export/1" and fa["data"]["is_read"] is False
                await eventually(lambda: delivery(t, to_alice.id, "websocket").get("status") == "sent",
                            what="delivery recorded")
    finally:
        t.close()


# -- the helpers the REST API uses ---------------------------------------------------------------------
async def test_async_helpers_scope_by_user(tracker_env):
    cfg = own_config()
    alice, bob = uid("alice"), uid("bob")
    async with serve(cfg) as app:
        with pytest.raises(ValueError, match="type must be one of"):
            await nf.create_notifications(app, [{"user_id": alice, "title": "ok"},
                                                {"user_id": alice, "title": "bad", "type": "loud"}])
        assert (await nf.list_notifications(app, user_id=alice))[0] == []
        a1, a2, b1 = await nf.create_notifications(app, [{"user_id": alice, "title": "a1", "priority": "high"},
                                                         {"user_id": alice, "title": "a2"},
                                                         {"user_id": bob, "title": "b1"}])
        items, cursor = await nf.list_notifications(app, user_id=alice, limit=1)
        assert [n.title for n in items] == ["a2"] and cursor
        items, cursor = await nf.list_notifications(app, user_id=alice, limit=1, cursor=cursor)
        assert [n.title for n in items] == ["a1"] and cursor is None
        assert await nf.get_notification(app, a1.id, user_id=bob) is None
        assert await nf.set_read(app, a1.id, user_id=bob) is None
        assert await nf.delete_notification(app, a1.id, user_id=bob) is False
        read = await nf.set_read(app, a1.id, user_id=alice)
        assert read is not None and read.is_read and read.read_at is not None
        assert (await nf.notification_stats(app, user_id=alice)) == {"total": 2, "unread": 1, "urgent": 0,
                                                                     "high": 1}
        unread = await nf.set_read(app, a1.id, read=False, user_id=alice)
        assert unread is not None and not unread.is_read
        assert await nf.delete_notification(app, a1.id, user_id=alice) is True
        assert await nf.get_notification(app, a1.id) is None
        assert (await nf.get_notification(app, b1.id, user_id=bob)) is not None
        everyone = await nf.notification_stats(app)
        assert everyone["total"] >= 2 and "websocket" in everyone["deliveries"]

