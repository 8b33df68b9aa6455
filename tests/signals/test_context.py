"""Reading a tracking context from message headers, as the hooks do for every task."""

from __future__ import annotations

import pytest

from signals.context import EMPTY, TrackingContext, from_headers, to_headers


def test_headers_without_tracking_keys_give_the_shared_empty_context():
    headers = {"id": "t1", "task": "app.add", "retries": 0, "tracker_published_at": 1.0, "headers": {}}
    ctx = from_headers(headers)
    assert ctx is EMPTY
    assert ctx == TrackingContext()


@pytest.mark.parametrize("where", ["top", "nested"])
def test_tracking_keys_are_read_at_either_level(where):
    sent = to_headers(TrackingContext(user_id="u7", tags=("a", "b"), metadata={"k": 1}, task_type="report"))
    headers = {"id": "t1", **sent} if where == "top" else {"id": "t1", "headers": sent}
    ctx = from_headers(headers)
    assert ctx == TrackingContext(user_id="u7", tags=("a", "b"), metadata={"k": 1}, task_type="report")


def test_one_key_alone_gives_a_context_of_its_own():
    assert from_headers({"headers": {"tracker_task_type": "export"}}).task_type == "export"
    assert from_headers({"tracker_user_id": "u1", "headers": None}).user_id == "u1"


def test_a_request_object_and_several_sources_are_still_read():
    class Request:
        tracker_user_id = "u2"
        headers = {"tracker_tags": ["x"]}

    ctx = from_headers(Request())
    assert (ctx.user_id, ctx.tags) == ("u2", ("x",))
    assert from_headers({}, {"tracker_user_id": "u3"}).user_id == "u3"
