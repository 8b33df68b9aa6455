"""Redaction rules (tracker.redaction) and the hooks' argument fields, without servers: the
end-to-end checks (real worker, gateway, PostgreSQL, stream, exports) are in tests/e2e/test_task_args.py."""

from __future__ import annotations

from signals.hooks import _argument_fields, _body_arguments
from tracker.config import TrackerConfig
from tracker.events import RawJSON
from tracker.redaction import REDACTED, Redactor, contains_redacted, redactor_for


def test_keys_match_case_insensitive_substrings_in_nested_dicts_and_lists():
    r = Redactor()
    value = {"DB_Password": "a", "user": "bob", "items": [{"apiKey": "b"}, ("x", {"X-Authorization": "c"})],
             "credit_card_number": 4111, "tokens_left": 3, 7: "non-string key"}
    assert r.redact(value) == {"DB_Password": REDACTED, "user": "bob",
                               "items": [{"apiKey": REDACTED}, ["x", {"X-Authorization": REDACTED}]],
                               "credit_card_number": REDACTED, "tokens_left": REDACTED, 7: "non-string key"}
    # Substrings of the lower-cased key: "api-key" contains neither api_key nor apikey.
    assert Redactor()._match("APIKEY") and not Redactor()._match("api-key")
    assert value["DB_Password"] == "a", "the caller's value is not changed"


def test_configured_keys_replace_the_defaults(monkeypatch):
    monkeypatch.setenv("TRACKER_REDACT_KEYS", "pin, ssn")
    config = TrackerConfig.from_env()
    assert config.redact_keys == ["pin", "ssn"]
    assert redactor_for(config).redact({"PIN": 1, "password": "p"}) == {"PIN": REDACTED, "password": "p"}


def test_deep_or_odd_values_are_bounded():
    deep: list[object] = []
    node = deep
    for _ in range(100):
        child: list[object] = []
        node.append(child)
        node = child
    assert contains_redacted(Redactor().redact(deep)), "past the depth limit the rest is replaced"
    assert Redactor().redact(()) == () and Redactor().redact("password") == "password"


def test_hook_fields_store_none_when_disabled_and_constants_when_empty():
    config = TrackerConfig()
    assert _argument_fields(config.replace(store_args=False), [1], {"password": "x"}) == {}
    empty = _argument_fields(config, (), {})
    assert empty == {"args": "[]", "kwargs": "{}"} and all(isinstance(v, RawJSON) for v in empty.values())
    fields = _argument_fields(config, (1,), {"password": "x", "n": 2})
    assert fields == {"args": "[1]", "kwargs": '{"password":"[redacted]","n":2}'}
    big = _argument_fields(config, ["y" * 70_000], {})
    assert big["args"]["truncated"] is True and len(big["args"]["repr"]) == 64 * 1024
    assert _body_arguments(((1,), {"a": 2}, {})) == ((1,), {"a": 2})
    assert _body_arguments({"args": [3], "kwargs": {}}) == ([3], {})
