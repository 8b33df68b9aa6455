"""Notification rules, templates, dedup and digest logic, and the Tracker's notification API."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import forget_notifications, user_ids
from tracker import Tracker
from tracker import notify as nt
from tracker.config import TrackerConfig
from tracker.events import Event

FAILED = Event("task.failed", "t-1", "u-1", 1000.0,
               {"status": "failed", "name": "proj.import", "error_type": "ValueError", "error_message": "bad row 7",
                "started_at": 990.0, "finished_at": 1000.0}, id="1700000000000-0")


#: This module's user ids (and alert rules): their notifications are deleted when the module ends.
uid = user_ids("ntest")
_forget_test_notifications = forget_notifications("user_id LIKE 'ntest-%'")

def rules(*items: dict[str, Any]) -> list[nt.Rule]:
    return nt.parse_rules(list(items))


# -- rule parsing ------------------------------------------------------------------------------------
def test_parse_full_rule():
    (rule,) = rules({"id": "imports", "on": ["failed", "task.retry", "progress>=50", "progress > 90%"],
                     "channels": ["websocket", "email"], "priority": "urgent", "type": "warning",
                     "task_types": ["proj.*"], "tags": ["nightly"], "users": ["u-1"],
                     "title": "{task_name} {trigger}", "message": "{error_message}",
                     "email_to": ["ops@example.com"], "slack_webhook_url": "https://hooks.example/x",
                     "digest": {"window": 30, "threshold": 3}})
    assert rule.id == "imports"
    assert [t.label for t in rule.triggers] == ["failed", "retry", "progress>=50", "progress>90"]
    assert rule.channels == ("websocket", "email")
    assert rule.digest == (30.0, 3)
    assert rule.email_to == ("ops@example.com",)


def test_rules_from_json_text_and_defaults():
    parsed = nt.parse_rules(json.dumps([{"on": "completed"}, {"on": ["failed"], "digest": False}]))
    assert [r.id for r in parsed] == ["rule0", "rule1"]
    assert parsed[0].channels == ("websocket",)
    assert parsed[1].digest == (0.0, 0)
    assert nt.parse_rules(None) == [] and nt.parse_rules("") == []


@pytest.mark.parametrize(("rule", "message"), [
    ({"on": ["failed"], "channels": ["sms"]}, "unknown channel 'sms'"),
    ({"on": ["exploded"]}, "unknown trigger 'exploded'"),
    ({"on": ["progress>=150"]}, "between 0 and 100"),
    ({"on": []}, "at least one trigger"),
    ({"on": ["failed"], "priority": "critical"}, "priority must be one of"),
    ({"on": ["failed"], "type": "fatal"}, "type must be one of"),
    ({"on": ["failed"], "title": "{nope}"}, "unknown field {nope}"),
    ({"on": ["failed"], "title": "{task_id.__class__}"}, "unknown field"),
    ({"on": ["failed"], "title": "{progress:%%%}"}, "bad template"),
    ({"on": ["failed"], "title": "{"}, "bad template"),
    ({"on": ["failed"], "colour": "red"}, "unknown field 'colour'"),
    ({"on": ["failed"], "email_to": ["not-an-address"]}, "not an e-mail address"),
    ({"on": ["failed"], "webhook_url": "ftp://x"}, "http(s) URL"),
    ({"on": ["failed"], "digest": {"window": -1}}, "digest.window must be > 0"),
    ({"on": ["failed"], "digest": {"window": 60, "threshold": True}}, "digest.threshold must be an integer"),
    ({"on": ["failed"], "task_types": [1]}, "task_types[0] must be a string"),
    ({"on": ["failed"], "task_types": [""]}, "task_types[0] must be a non-empty string"),
    ({"on": ["failure_rate>50%"], "min_tasks": 0}, "min_tasks must be >= 1"),
    ({"on": ["failure_rate>50%"], "tags": ["x"]}, "'tags' only for task triggers"),
    ({"on": ["failed"], "window": 60}, "'window' only for aggregate conditions"),
    ({"on": ["failed", "no_workers"]}, "mixes task triggers and aggregate conditions"),
    ({"on": ["failed"], "id": "has space"}, "'id' must be"),
])
def test_bad_rules_are_refused_with_a_clear_message(rule, message):
    with pytest.raises(ValueError) as err:
        nt.parse_rules([rule])
    assert message in str(err.value)
    assert "tracker_notifications[0]" in str(err.value)


def test_a_bad_rule_is_named_by_its_id_and_field():
    with pytest.raises(ValueError) as err:
        nt.parse_rules([{"id": "ok", "on": "failed"}, {"id": "ops", "on": ["failed"], "priority": "asap"}])
    assert str(err.value).startswith("tracker_notifications[1] (rule 'ops'): priority must be one of")
    assert "got 'asap'" in str(err.value)


def test_rule_list_shape_and_unique_ids():
    with pytest.raises(ValueError, match="list of rules"):
        nt.parse_rules(42)
    with pytest.raises(ValueError, match="not valid JSON"):
        nt.parse_rules("[{")
    with pytest.raises(ValueError, match="repeated: a"):
        nt.parse_rules([{"id": "a", "on": "failed"}, {"id": "a", "on": "completed"}])


# -- matching -----------------------------------------------------------------------------------------
def test_triggers_for_status_and_progress_events():
    (rule,) = rules({"on": ["failed", "progress>=50", "progress>75", "progress>=100"]})
    assert [t.label for t in rule.triggers_for(FAILED)] == ["failed"]
    progress = Event("task.progress", "t-1", "u-1", 1.0, {"progress": 75.0})
    assert [t.label for t in rule.triggers_for(progress)] == ["progress>=50"]
    done = Event("task.progress", "t-1", "u-1", 1.0, {"progress": 100})
    assert [t.label for t in rule.triggers_for(done)] == ["progress>=50", "progress>75", "progress>=100"]
    assert rule.triggers_for(Event("task.log", "t-1", None, 1.0, {"progress": 99})) == []
    assert rule.triggers_for(Event("task.completed", "t-1", None, 1.0, {})) == []
    assert nt.triggers_of([rule]) == {"task.failed", "task.progress"}


def test_filters_on_task_type_tags_and_users():
    (rule,) = rules({"on": ["failed"], "task_types": ["proj.*", "other.exact"], "tags": ["nightly", "x"],
                     "users": ["u-1"]})
    ctx = nt.task_context(FAILED, {"task_type": "proj.import", "tags": ["nightly"], "user_id": "u-1"})
    assert rule.applies(ctx)
    assert not rule.applies({**ctx, "task_type": "projx"})
    assert rule.applies({**ctx, "task_type": "other.exact"})
    assert not rule.applies({**ctx, "_tags": ["daily"]})
    assert not rule.applies({**ctx, "user_id": "u-2"})
    (anything,) = rules({"on": ["failed"]})
    assert anything.applies({"task_type": "", "_tags": [], "user_id": ""})


# -- building notifications ---------------------------------------------------------------------------------
def test_default_content_for_a_failure():
    (rule,) = rules({"on": ["failed"], "channels": ["websocket", "slack"], "slack_webhook_url": "http://h/x"})
    row = {"task_id": "t-1", "task_type": "proj.import", "user_id": "u-1", "tags": ["a"], "progress": 40.0}
    ctx = nt.task_context(FAILED, row, public_url="https://tracker.example/")
    n = rule.build(rule.triggers[0], ctx, nt.dedup_key(rule, rule.triggers[0], FAILED), FAILED)
    assert n.title == "Task proj.import failed"
    assert n.message == "ValueError: bad row 7"
    assert (n.type, n.priority, n.user_id, n.task_id) == ("error", "high", "u-1", "t-1")
    assert n.action_url == "https://tracker.example/?task_id=t-1"
    assert n.channels == ("websocket", "slack")
    assert n.metadata["rule"] == "rule0" and n.metadata["event_id"] == FAILED.id
    assert n.values()["delivery"]["slack"] == {"status": "pending", "attempts": 0, "last_error": None,
                                               "delivered_at": None}


def test_custom_templates_and_types():
    (rule,) = rules({"on": ["progress>=50", "completed"], "priority": "low",
                     "title": "{task_type} at {progress:.0f}% ({trigger})", "message": "took {duration}",
                     "action_url": "https://x.example/t/{task_id}"})
    ev = Event("task.progress", "t-9", "u-2", 5.0, {"progress": 62.5, "current_step": "load"}, id="5-0")
    ctx = nt.task_context(ev, {"task_type": "etl"})
    n = rule.build(rule.triggers[0], ctx, "k", ev)
    assert n.title == "etl at 62% (progress>=50)"  # format spec applied to the number
    assert (n.type, n.priority) == ("progress", "low")
    assert n.action_url == "https://x.example/t/t-9"
    done = Event("task.completed", "t-9", "u-2", 9.0, {"started_at": 1.0, "finished_at": 4.5})
    n2 = rule.build(rule.triggers[1], nt.task_context(done, None), "k2", done)
    assert n2.message == "took 3.5s" and n2.type == "success"


def test_template_with_mismatched_value_falls_back_to_default():
    n = nt.render("{progress:d}", {"progress": 5.5}, fallback="at {progress}%")
    assert n == "at 5.5%"
    assert nt.render("{error_message}", {"error_message": None}) == ""


@given(st.text(max_size=40), st.dictionaries(st.sampled_from(sorted(nt.TEMPLATE_FIELDS)),
                                               st.one_of(st.none(), st.text(max_size=10), st.floats(),
                                                         st.integers())))
def test_render_never_raises_for_valid_templates(text, values):
    try:
        template = nt.check_template("t", text)
    except ValueError:
        return
    assert isinstance(nt.render(template, values, "fallback"), str)


def test_dedup_keys_name_what_happened():
    (rule,) = rules({"id": "r", "on": ["failed", "retry", "started", "progress>=50"]})
    failed_again = replace(FAILED, id="1700000000999-0")
    assert nt.dedup_key(rule, nt.Trigger("failed"), FAILED) == nt.dedup_key(rule, nt.Trigger("failed"),
                                                                             failed_again) == "r:t-1:failed"
    retry = Event("task.retry", "t-1", None, 1.0, {"retries": 2}, id="9-0")
    assert nt.dedup_key(rule, nt.Trigger("retry"), retry) == "r:t-1:retry:2"
    started = Event("task.started", "t-1", None, 1.0, {}, id="9-1")
    assert nt.dedup_key(rule, nt.Trigger("started"), started) == "r:9-1:started"
    assert nt.dedup_key(rule, nt.Trigger("progress", 50.0), started) == "r:t-1:progress>=50"


# -- bursts, digests and backoff -------------------------------------------------------------------------
def test_window_and_backoff_math():
    assert nt.window_start(125.0, 60) == 120.0
    assert nt.window_start(119.999, 60) == 60.0
    assert [nt.backoff_delay(a, 0.5) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert nt.backoff_delay(40, 1.0, cap=60) == 60


def test_burst_scopes():
    (plain, off, own) = rules({"id": "p", "on": ["failed"]}, {"id": "o", "on": ["failed"], "digest": False},
                              {"id": "w", "on": ["failed"], "digest": {"window": 5, "threshold": 1}})
    n = nt.NewNotification("u-1", "t", metadata={"task_type": "proj.import"}, dedup_key="k")
    scopes = nt.burst_scopes(plain, nt.Trigger("failed"), n, window=60, threshold=5, rate_limit=10)
    assert [(s.kind, s.window, s.threshold) for s in scopes] == [("type", 60, 5), ("user", 60, 10)]
    assert scopes[0].ident == "p|failed|proj.import|u-1"
    assert scopes[0].key("pre", 125.0) == scopes[0].key("pre", 179.0) != scopes[0].key("pre", 180.0)
    assert [s.kind for s in nt.burst_scopes(off, nt.Trigger("failed"), n, window=60, threshold=5,
                                            rate_limit=10)] == ["user"]
    assert [(s.window, s.threshold) for s in nt.burst_scopes(own, nt.Trigger("failed"), n, window=60,
                                                             threshold=5, rate_limit=0)] == [(5, 1)]
    urgent = replace(n, priority="urgent")
    assert [s.kind for s in nt.burst_scopes(plain, nt.Trigger("failed"), urgent, window=60, threshold=5,
                                            rate_limit=10)] == ["type"]


def test_digest_content():
    spec = {"kind": "type", "window": 60.0, "threshold": 5, "rule": "r", "trigger": "failed",
            "task_type": "proj.import", "user_id": "u-1", "channels": ["websocket", "email"], "priority": "high",
            "type": "error", "start": 120.0}
    ids = [f"t-{i}" for i in range(12)]
    d = nt.digest_notification(spec, total=17, already=5, start=120.0, key="k", task_ids=ids)
    assert d.title == "12 more tasks of type proj.import failed"
    assert "17 tasks of type proj.import failed between 00:02:00 and 00:03:00 UTC" in d.message
    assert "t-0, t-1" in d.message and "and 2 more" in d.message
    assert (d.user_id, d.type, d.priority, d.channels) == ("u-1", "error", "high", ("websocket", "email"))
    assert d.metadata["digest"] is True and d.metadata["count"] == 12 and d.metadata["total"] == 17
    assert d.dedup_key == "digest:k:17"
    user = nt.digest_notification({**spec, "kind": "user"}, total=8, already=3, start=120.0, key="k2", task_ids=[])
    assert user.title == "5 more notifications held back"


# -- the Tracker API (real PostgreSQL and Redis) ----------------------------------------------------------
@pytest.fixture()
def iso_tracker(tracker_env: dict[str, str]) -> Any:
    """A Tracker on its own stream prefix, so no gateway of another test delivers its queue."""
    prefix = f"tn-{uuid.uuid4().hex[:8]}"
    t = Tracker(config=TrackerConfig.from_env().replace(prefix=prefix))
    yield t
    t.close()


def _count(sql: Any, user: str) -> int:
    return int(sql.execute("SELECT count(*) FROM tracker_notifications WHERE user_id = %s", (user,)).fetchone()[0])


def test_notify_stores_and_queues_every_channel(iso_tracker, rdb):
    user = uid("u")
    rec = iso_tracker.notify(user, "Import finished", "42 rows", type="success", priority="high",
                             channels=["websocket", "email"], task_id="t-42", action_url="https://x/t-42",
                             metadata={"rows": 42})
    assert rec.id > 0 and rec.user_id == user and rec.title == "Import finished"
    assert (rec.type, rec.priority, rec.channels, rec.metadata) == ("success", "high", ["websocket", "email"],
                                                                      {"rows": 42})
    assert rec.delivery["email"]["status"] == "pending" and rec.is_read is False
    due = nt.due_key(iso_tracker.config.prefix)
    assert rdb.zscore(due, f"{rec.id}:websocket") is not None
    assert rdb.zscore(due, f"{rec.id}:email") is not None
    assert iso_tracker.notification(rec.id) == rec


def test_notify_many_is_all_or_nothing(iso_tracker, sql):
    user = uid("u")
    with pytest.raises(ValueError, match="priority must be one of"):
        iso_tracker.notify_many([{"user_id": user, "title": "ok"}, {"user_id": user, "title": "x",
                                                                     "priority": "asap"}])
    assert _count(sql, user) == 0
    recs = iso_tracker.notify_many([{"user_id": user, "title": f"n{i}", "message": str(i)} for i in range(5)])
    assert [r.title for r in recs] == [f"n{i}" for i in range(5)]
    assert [r.message for r in recs] == [str(i) for i in range(5)]
    assert _count(sql, user) == 5


@pytest.mark.parametrize(("kwargs", "exc", "message"), [
    ({"title": ""}, ValueError, "title"),
    ({"title": "t", "type": "fatal"}, ValueError, "type must be one of"),
    ({"title": "t", "channels": ["pager"]}, ValueError, "unknown channel"),
    ({"title": "t", "channels": []}, ValueError, "non-empty"),
    ({"title": "t", "metadata": {"x": object()}}, ValueError, "JSON"),
    ({"title": "t", "metadata": [1]}, TypeError, "metadata must be a dict"),
    ({"title": "t", "message": 5}, TypeError, "message must be a string"),
    ({"title": "t" * 501}, ValueError, "at most 500"),
    # The rules REST has always applied hold for Python callers too: they live in one model.
    ({"title": "disk\x00full"}, ValueError, "NUL"),
    ({"title": "t", "metadata": {"blob": "x" * 70_000}}, ValueError, "at most 65536 bytes"),
    ({"title": "t", "action_url": "javascript:alert(1)"}, ValueError, "http:// or https://"),
    ({"title": "t", "channels": "sms"}, ValueError, "unknown channel 'sms'"),
])
def test_notify_rejects_bad_input_and_stores_nothing(iso_tracker, sql, kwargs, exc, message):
    user = uid("u")
    with pytest.raises(exc, match=message):
        iso_tracker.notify(user, **kwargs)
    assert _count(sql, user) == 0


def test_the_rest_body_model_is_the_python_model():
    from webgate.api.models import NotificationIn

    assert issubclass(NotificationIn, nt.NotificationInput)
    (n,) = nt.check_notifications([{"title": "t", "channels": ("email", "email"), "metadata": {"k": (1, 2)}}])
    assert (n.channels, n.metadata, n.message, n.origin) == (("email",), {"k": [1, 2]}, "", "api")


def test_unknown_field_in_notify_many(iso_tracker):
    with pytest.raises(ValueError, match="unknown field"):
        iso_tracker.notify_many([{"user_id": "u", "title": "t", "colour": "red"}])
    with pytest.raises(TypeError):
        iso_tracker.notify_many({"user_id": "u", "title": "t"})


def test_dedup_key_makes_notify_idempotent(iso_tracker, sql):
    user = uid("u")
    key = f"report-{uuid.uuid4().hex}"
    a = iso_tracker.notify(user, "Report ready", dedup_key=key)
    b = iso_tracker.notify(user, "Report ready (again)", dedup_key=key)
    assert a.id == b.id and b.title == "Report ready"
    assert _count(sql, user) == 1


def test_read_unread_delete_and_user_scoping(iso_tracker):
    alice, bob = uid("alice"), uid("bob")
    mine = iso_tracker.notify(alice, "for alice", priority="urgent")
    iso_tracker.notify(alice, "second for alice")
    theirs = iso_tracker.notify(bob, "for bob")

    assert {n.title for n in iso_tracker.notifications(user_id=alice)} == {"for alice", "second for alice"}
    assert [n.title for n in iso_tracker.notifications(user_id=bob)] == ["for bob"]
    # Bob can neither see nor change Alice's notification.
    assert iso_tracker.notification(mine.id, user_id=bob) is None
    assert iso_tracker.mark_read(mine.id, user_id=bob) is False
    assert iso_tracker.delete_notification(mine.id, user_id=bob) is False
    still = iso_tracker.notification(mine.id)
    assert still is not None and still.is_read is False

    assert iso_tracker.mark_read(mine.id, user_id=alice) is True
    read = iso_tracker.notification(mine.id, user_id=alice)
    assert read is not None and read.is_read and read.read_at is not None
    assert [n.title for n in iso_tracker.notifications(user_id=alice, unread=True)] == ["second for alice"]
    assert iso_tracker.notification_stats(alice) == {"total": 2, "unread": 1, "urgent": 1, "high": 0}
    assert iso_tracker.mark_unread(mine.id, user_id=bob) is False
    assert iso_tracker.mark_unread(mine.id, user_id=alice) is True
    assert iso_tracker.notification(mine.id).is_read is False  # type: ignore[union-attr]

    assert iso_tracker.delete_notification(mine.id, user_id=alice) is True
    assert iso_tracker.notification(mine.id) is None
    assert iso_tracker.delete_notification(mine.id) is False
    assert iso_tracker.notification(theirs.id, user_id=bob) is not None
    with pytest.raises(TypeError):
        iso_tracker.mark_read("1")  # type: ignore[arg-type]


def test_notifications_are_queued_later_when_redis_is_down(tracker_env, sql):
    """Storing never depends on Redis: the rows stay pending for a gateway's sweep."""
    user = uid("u")
    from tracker.demo.services import free_port

    cfg = TrackerConfig.from_env().replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with Tracker(config=cfg) as t:
        rec = t.notify(user, "stored anyway", channels=["websocket", "webhook"])
    assert rec.delivery["webhook"]["status"] == "pending"
    assert _count(sql, user) == 1
