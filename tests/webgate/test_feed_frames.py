"""Client frames of the feed: each op's model, and the ``error`` code (and context) of each malformed frame."""

from __future__ import annotations

import json
from typing import Any

import pytest

from webgate.feed import client_frames as cf
from webgate.feed.client_frames import Refused


@pytest.mark.parametrize(("raw", "expected"), [
    ('{"op": "ping", "extra": 1}', cf.Ping(op="ping")),
    ('{"op": "subscribe", "topic": "all"}', cf.Subscribe(op="subscribe", topic="all")),
    ('{"op": "subscribe", "topic": "task:t-1", "since": "1700000000000-3"}',
     cf.Subscribe(op="subscribe", topic="task:t-1", since="1700000000000-3")),
    ('{"op": "unsubscribe", "topic": "group:g"}', cf.Unsubscribe(op="unsubscribe", topic="group:g")),
    ('{"op": "auth", "token": "a.b.c"}', cf.Auth(op="auth", token="a.b.c")),
    ('{"op": "cancel", "task_id": "t-1"}', cf.Control(op="cancel", task_id="t-1")),
])
def test_valid_frames(raw: str, expected: Any) -> None:
    assert cf.parse(raw) == expected
    assert cf.parse(raw.encode()) == expected


LONG_TOPIC = "user:" + "u" * 300


@pytest.mark.parametrize(("raw", "code", "context", "of"), [
    ("{nope", "bad_json", {}, None),
    ("[1, 2]", "bad_request", {}, None),
    ('"ping"', "bad_request", {}, None),
    ("{}", "bad_request", {}, None),
    ('{"op": 5}', "bad_request", {}, None),
    ('{"op": "shout"}', "unknown_op", {"op": "shout"}, "shout"),
    (json.dumps({"op": "x" * 100}), "unknown_op", {"op": "x" * 40}, "x" * 40),
    ('{"op": "subscribe"}', "bad_topic", {"topic": None}, "subscribe"),
    ('{"op": "subscribe", "topic": 7}', "bad_topic", {"topic": None}, "subscribe"),
    ('{"op": "subscribe", "topic": "bogus"}', "bad_topic", {"topic": "bogus"}, "subscribe"),
    ('{"op": "subscribe", "topic": "task:"}', "bad_topic", {"topic": "task:"}, "subscribe"),
    (json.dumps({"op": "subscribe", "topic": LONG_TOPIC}), "bad_topic", {"topic": LONG_TOPIC[:80]}, "subscribe"),
    ('{"op": "subscribe", "topic": "bogus{op}"}', "bad_topic", {"topic": "bogus{op}"}, "subscribe"),
    ('{"op": "subscribe", "topic": "user:u", "since": "$"}', "bad_request", {"topic": "user:u"}, "subscribe"),
    ('{"op": "subscribe", "topic": "user:u", "since": 5}', "bad_request", {"topic": "user:u"}, "subscribe"),
    ('{"op": "unsubscribe", "topic": null}', "bad_topic", {"topic": None}, "unsubscribe"),
    ('{"op": "auth"}', "bad_request", {"op": "auth"}, "auth"),
    ('{"op": "auth", "token": ""}', "bad_request", {"op": "auth"}, "auth"),
    (json.dumps({"op": "auth", "token": "t" * 5000}), "bad_request", {"op": "auth"}, "auth"),
    ('{"op": "pause", "task_id": ["t"]}', "bad_request", {"op": "pause"}, "pause"),
    (json.dumps({"op": "resume", "task_id": "t" * 256}), "bad_request", {"op": "resume"}, "resume"),
])
def test_malformed_frames_get_the_contract_codes(raw: str, code: str, context: dict[str, Any], of: str | None) -> None:
    with pytest.raises(Refused) as caught:
        cf.parse(raw)
    refusal = caught.value
    assert (refusal.code, refusal.context, refusal.of) == (code, context, of)
    frame = json.loads(refusal.frame()[2:] if refusal.frame()[1] < 126 else refusal.frame()[4:])
    assert frame["type"] == "error" and frame["code"] == code and frame["message"] == str(refusal)
    assert {k: v for k, v in frame.items() if k not in ("type", "code", "message")} == \
        {k: v for k, v in context.items() if v is not None}


def test_messages_say_what_is_expected() -> None:
    for raw, words in [('{"op": "shout"}', "subscribe, unsubscribe, ping, auth, pause, resume or cancel"),
                       ('{"op": "subscribe", "topic": "bogus"}', "task:<id>, user:<id>, group:<id> or all"),
                       ('{"op": "auth"}', "a JWT")]:
        with pytest.raises(Refused, match=words.replace("(", r"\(")):
            cf.parse(raw)
