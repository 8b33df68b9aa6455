"""Notifications as an attacker with a user token would try them, against a real gateway, a real
SMTP server (aiosmtpd) and real HTTP receivers standing in for Slack and webhooks: what a client
posts never reaches the operators' channels, bursts get 429, links are http(s) and escaped for
Slack, e-mail subjects are one line and a message that cannot be sent is tried once."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from tests.conftest import eventually as until
from tests.webgate import test_notifications as base
from tests.webgate.rest_client import Api, Reply
from tests.webgate.test_notifications import (
    PORT,
    SECRET,
    SmtpSink,
    delivery,
    failed_event,
    new_prefix,
    serve,
    uid,
)
from tracker import Tracker
from tracker.config import TrackerConfig
from tracker.events import encode
from webgate.notify import notifier as nf

RULE = "ops-alerts"
# The receivers of the notifier's tests, and their clean-up of this module's rows.
smtp, receivers, _forget_test_notifications = base.smtp, base.receivers, base._forget_test_notifications


@asynccontextmanager
async def client(app: Any) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, f"http://127.0.0.1:{app[PORT]}/api/v1/progress")


# -- a user token reaches no e-mail, Slack or webhook ----------------------------------------------------------
async def test_a_user_token_reaches_no_operator_channel(tracker_env, smtp, receivers, rdb):
    prefix = new_prefix()
    rule_slack, rule_hook, global_slack, global_hook = receivers(), receivers(), receivers(), receivers()
    user, other = uid("user"), uid("other")
    rules = [{"id": RULE, "on": ["failed"], "channels": ["websocket", "email", "slack", "webhook"],
              "email_to": ["oncall@example.com"], "slack_webhook_url": rule_slack.url, "webhook_url": rule_hook.url,
              "digest": False}]
    cfg = TrackerConfig.from_env().replace(prefix=prefix, notifications=rules, webhook_secret=SECRET,
                  email={**smtp.settings(), "recipients": {user: ["user@example.com"], "*": ["ops@example.com"]}},
                  slack_webhook_url=global_slack.url, webhook_url=global_hook.url, notify_rate_limit=100)
    t = Tracker(config=cfg)
    try:
        async with serve(cfg) as app, client(app) as api:
            async def post(body: Any, *, admin: bool = False) -> Reply:
                return await api.call("POST", "/notifications", "admin" if admin else user, admin=admin,
                                      json_body=body)

            forged = {"rule": RULE, "trigger": "failed", "event": "task.failed", "event_id": "1-1"}
            # Every operator channel, alone, mixed in, in a batch, with the rule named in metadata.
            for channels in (["email"], ["slack"], ["webhook"], ["websocket", "slack"],
                             ["websocket", "email", "slack", "webhook"]):
                r = await post({"title": "Task proj.import failed", "type": "error", "priority": "urgent",
                                "channels": channels, "metadata": forged})
                assert r.status == 403 and r.error_code() == "forbidden_channel", (channels, r.text)
            r = await post({"notifications": [{"title": "fine"}, {"title": "x", "channels": ["webhook"]}]})
            assert r.status == 403 and r.error_code() == "forbidden_channel"
            # Someone else, whatever the channel.
            for body in ({"title": "x", "user_id": other}, {"title": "x", "user_id": other, "channels": ["email"],
                                                              "metadata": forged}):
                r = await post(body)
                assert r.status == 403 and r.error_code() in ("forbidden", "forbidden_channel"), r.text
            # Admins: e-mail is fine, Slack and webhooks are not (they carry the rules' alerts).
            for channels in (["slack"], ["webhook"], ["email", "slack"]):
                r = await post({"user_id": user, "title": "x", "channels": channels}, admin=True)
                assert r.status == 403 and r.error_code() == "forbidden_channel", r.text

            # Accepted: in-app only, even with the rule in metadata.
            accepted = [await post({"title": "Task proj.import failed", "type": "error", "priority": "urgent",
                                    "metadata": forged}),
                        await post({"title": "mine", "channels": ["websocket"], "metadata": {"rule": RULE}})]
            assert [r.status for r in accepted] == [201, 201], [r.text for r in accepted]
            assert all(r.body["channels"] == ["websocket"] and r.body["user_id"] == user for r in accepted)

            # A client post stored with operator channels anyway (the notifier's own guard) ...
            (sneaked,) = await nf.create_notifications(app, [{"user_id": user, "title": "sneaked",
                                                              "channels": ["email", "slack", "webhook"],
                                                              "metadata": forged}])
            # ... and what may reach the channels: an admin's e-mail and a real rule's alert.
            admin_mail = await post({"user_id": user, "title": "Maintenance tonight", "channels": ["email"],
                                     "metadata": {"rule": RULE}}, admin=True)
            assert admin_mail.status == 201, admin_mail.text
            rdb.xadd(f"{prefix}:events", encode(failed_event("sec-t1", user, time.time())))

            await until(lambda: len(rule_slack.requests) == 1 and len(rule_hook.requests) == 1
                        and len(smtp.messages) == 3, what="the rule's alert and two e-mails")
            for r in accepted:
                await until(lambda r=r: delivery(t, r.body["id"], "websocket").get("status") == "sent",
                            what="in-app delivery")
            await until(lambda: delivery(t, sneaked.id, "slack").get("status") == "failed"
                        and delivery(t, sneaked.id, "webhook").get("status") == "failed", what="refused channels")
            await asyncio.sleep(2.0)  # time for anything else to show up

        # Nothing a client sent reached Slack or a webhook, global or the rule's.
        assert global_slack.requests == [] and global_hook.requests == []
        (alert,) = [n for n in t.notifications(user_id=user) if n.task_id == "sec-t1"]
        assert [p["id"] for p in rule_hook.json()] == [alert.id]
        assert "sec-t1" in json.dumps(rule_slack.json()[0])
        for ch in ("slack", "webhook"):
            state = delivery(t, sneaked.id, ch)
            assert state["attempts"] == 1 and "client posts" in state["last_error"], state
        # E-mail: the rule's to its own address; the client-made ones only to the user's own address.
        by_id = {int(m["X-Tracker-Notification"]): rcpt for _t, rcpt, m in smtp.messages}
        assert by_id == {alert.id: ["oncall@example.com"], sneaked.id: ["user@example.com"],
                         admin_mail.body["id"]: ["user@example.com"]}
        for r in accepted:
            stored = t.notification(r.body["id"])
            assert stored is not None and stored.channels == ["websocket"] and list(stored.delivery) == ["websocket"]
        assert not [n for n in t.notifications(user_id=other)]
    finally:
        t.close()


# -- bursts -------------------------------------------------------------------------------------------------
async def test_bursts_get_429_across_gateways(tracker_env, rdb):
    prefix = new_prefix()
    window = 60.0
    cfg = TrackerConfig.from_env().replace(prefix=prefix, notify_rate_limit=4, notify_rate_window=window)
    # The counters are per fixed window: start well inside one.
    left = window - time.time() % window
    if left < 10:
        await asyncio.sleep(left + 0.1)
    user, admin_target = uid("burst"), uid("target")
    async with serve(cfg) as a, serve(cfg) as b, client(a) as api_a, client(b) as api_b:
        # Refused posts cost nothing.
        for _ in range(6):
            r = await api_a.call("POST", "/notifications", user, json_body={"title": "x", "channels": ["email"]})
            assert r.status == 403
            r = await api_b.call("POST", "/notifications", user, json_body={"title": "x",
                                                                            "action_url": "javascript:alert(1)"})
            assert r.status == 400
        # Four accepted, alternating gateways (a batch counts each of its notifications) ...
        got = [await api_a.call("POST", "/notifications", user, json_body={"title": "1"}),
               await api_b.call("POST", "/notifications", user, json_body={"title": "2"}),
               await api_a.call("POST", "/notifications", user,
                                json_body={"notifications": [{"title": "3"}, {"title": "4"}]})]
        assert [r.status for r in got] == [201, 201, 201], [r.text for r in got]
        # ... then 429 on either gateway.
        for api in (api_b, api_a):
            r = await api.call("POST", "/notifications", user, json_body={"title": "one too many"})
            assert r.status == 429 and r.error_code() == "rate_limited", r.text
            assert 1 <= int(r.headers["Retry-After"]) <= window
        # A batch that does not fit is refused whole.
        other = uid("other")
        r = await api_b.call("POST", "/notifications", other,
                             json_body={"notifications": [{"title": str(i)} for i in range(5)]})
        assert r.status == 429
        # Other callers have budgets of their own.
        assert (await api_b.call("POST", "/notifications", other, json_body={"title": "fine"})).status == 201
        r = await api_a.call("POST", "/notifications", "admin", admin=True,
                             json_body={"user_id": admin_target, "title": "fine"})
        assert r.status == 201
    with Tracker(config=cfg) as t:
        assert sorted(n.title for n in t.notifications(user_id=user)) == ["1", "2", "3", "4"]
        assert [n.title for n in t.notifications(user_id=other)] == ["fine"]


@pytest.mark.parametrize("url, status", [
    ("javascript:alert(document.cookie)", 400), ("JavaScript:alert(1)", 400), (" javascript:alert(1)", 400),
    ("data:text/html,<script>alert(1)</script>", 400), ("/relative/path", 400), ("https://", 400),
    ("https://exa mple.com/", 400), ("https://example.com/\r\nx", 400), ("ftp://example.com/f", 400),
    ("http://example.com/t?id=1", 201), ("HTTPS://example.com/a|b>c", 201),
])
async def test_action_url_must_be_http(gateway, url, status):
    async with aiohttp.ClientSession() as session:
        r = await Api(session, gateway.api).call("POST", "/notifications", uid("url"),
                                                 json_body={"title": "link", "action_url": url})
    assert r.status == status, r.text
    if status == 400:
        assert r.error_code() == "bad_request" and "action_url" in r.body["error"]["message"]
    else:
        assert r.body["action_url"] == url


# -- Slack mrkdwn ------------------------------------------------------------------------------------------------
async def test_slack_text_and_links_arrive_escaped(tracker_env, receivers, rdb):
    prefix = new_prefix()
    slack = receivers()
    cfg = TrackerConfig.from_env().replace(prefix=prefix, slack_webhook_url=slack.url,
                  public_url="https://tracker.example",
                  notifications=[{"id": "to-slack", "on": ["failed"], "channels": ["slack"], "digest": False}])
    user, task_id = uid("slack"), "t|<https://evil|x>"
    event = failed_event(task_id, user, time.time(), task_type="<https://evil|x>")
    event = replace(event, data={**event.data, "error_message": "<https://evil|x> <!channel> & more"})
    async with serve(cfg):
        rdb.xadd(f"{prefix}:events", encode(event))
        await until(lambda: slack.requests, what="the Slack post")
    (post,) = slack.json()
    text = post["text"]
    assert "<https://evil|x>" not in text and "<!channel>" not in text
    assert "*Task &lt;https://evil|x&gt; failed*" in text
    assert "&lt;https://evil|x&gt; &lt;!channel&gt; &amp; more" in text
    # One link, its URL with | and > escaped so neither can end it or start a label.
    assert text.count("<") == 1 and text.endswith(
        "<https://tracker.example/?task_id=t%7C&lt;https://evil%7Cx&gt;|Open task>")
    assert "<" not in post["blocks"][0]["text"]["text"]


# -- e-mail ----------------------------------------------------------------------------------------------------
class RefusingSmtp(SmtpSink):
    """Answers DATA of a message whose subject says so with a permanent 554, as a mail server
    refusing a message does."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd API)
        await super().handle_DATA(server, session, envelope)
        if "refuse-me" in self.messages[-1][2]["Subject"]:
            return "554 5.6.0 message refused"
        return "250 OK"


async def test_email_subjects_are_single_line_and_bad_messages_fail_once(tracker_env, caplog):
    sink = RefusingSmtp()
    sink.controller.start()
    prefix = new_prefix()
    user, broken = uid("mail"), uid("broken")
    cfg = TrackerConfig.from_env().replace(prefix=prefix, notify_retry_base=0.1, notify_max_attempts=5,
                  email={**sink.settings(), "recipients": {
                      user: ["user@example.com"],
                      # An address the e-mail library refuses to put in a header (it would inject one).
                      broken: ["victim@example.com\r\nBcc: everyone@example.com"]}})
    t = Tracker(config=cfg)
    caplog.set_level(logging.INFO, logger="webgate.notify.notifier")
    try:
        async with serve(cfg) as app, client(app) as api:
            r = await api.call("POST", "/notifications", "admin", admin=True, json_body={
                "user_id": user, "title": "Disk\r\nBcc: everyone@example.com\rfull\t(97%)", "channels": ["email"]})
            assert r.status == 201, r.text
            ok = r.body["id"]
            refused = t.notify(user, "please refuse-me", channels=["email"]).id
            unbuildable = t.notify(broken, "fine title", channels=["email"]).id
            for nid in (ok, refused, unbuildable):
                await until(lambda nid=nid: delivery(t, nid, "email").get("status") in ("sent", "failed"),
                            what=f"e-mail of {nid}")
            await asyncio.sleep(1.5)  # several retry delays: a retry would have happened by now
    finally:
        t.close()
        sink.controller.stop()

    sent = delivery(t, ok, "email")
    assert sent["status"] == "sent" and sent["attempts"] == 1
    mails = {int(m["X-Tracker-Notification"]): (rcpt, m) for _t, rcpt, m in sink.messages}
    rcpt, msg = mails[ok]
    assert msg["Subject"] == "Disk Bcc: everyone@example.com full (97%)"
    assert rcpt == ["user@example.com"] and msg["Bcc"] is None
    for nid, reason in ((refused, "SMTP 554"), (unbuildable, "cannot build the e-mail")):
        state = delivery(t, nid, "email")
        assert state["status"] == "failed" and state["attempts"] == 1 and reason in state["last_error"], state
    offered = [int(m["X-Tracker-Notification"]) for _t, _r, m in sink.messages]
    assert offered.count(refused) == 1  # offered to the server once
    assert unbuildable not in mails and len(sink.messages) == 2
    # One log line per permanent failure, no tracebacks.
    records = [rec for rec in caplog.records if rec.name == "webgate.notify.notifier"]
    assert not [rec for rec in records if rec.exc_info], [rec.getMessage() for rec in records]
    for nid in (refused, unbuildable):
        lines = [rec for rec in records if f"notification {nid} " in rec.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [rec.getMessage() for rec in records]

