"""The stream's and the feed's JSON: strict (no NaN or Infinity), whatever a task reported."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import strict_json as strict
from tracker.events import Event, decode, dumps, encode


def test_non_finite_floats_are_written_as_null_at_any_depth() -> None:
    value = {"eta": float("inf"), "steps": [1.5, float("nan"), {"deep": (float("-inf"), 2)}], "ok": 3.0,
             float("nan"): "key", "text": "NaN"}
    out = strict(dumps(value))
    assert out == {"eta": None, "steps": [1.5, None, {"deep": [None, 2]}], "ok": 3.0, "nan": "key", "text": "NaN"}


def test_finite_values_and_odd_objects_encode_as_before() -> None:
    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    value = {"a": [1, 2.5, None, True], "b": "é", "c": Odd()}
    assert dumps(value) == '{"a":[1,2.5,null,true],"b":"é","c":"<odd>"}'


def test_a_cycle_is_cut_instead_of_failing() -> None:
    loop: list[Any] = [float("nan")]
    loop.append(loop)
    assert strict(dumps({"x": loop})) == {"x": [None, "[circular]"]}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_stream_entry_holds_strict_json_and_reads_back(bad: float) -> None:
    fields = encode(Event("task.progress", "t1", "u1", 12.5, {"progress": 10.0, "eta_seconds": bad}))
    assert strict(fields["data"]) == {"progress": 10.0, "eta_seconds": None}
    ev = decode("1-0", {k.encode(): v.encode() for k, v in fields.items()})
    assert ev.data == {"progress": 10.0, "eta_seconds": None}
    # An entry another writer left with a NaN still becomes a strict frame.
    foreign = decode("2-0", {b"type": b"task.progress", b"task_id": b"t1", b"ts": b"nan",
                             b"data": b'{"eta_seconds": NaN, "progress": 5}'})
    frame = strict(dumps(foreign.to_frame()))
    assert frame["ts"] is None and frame["data"] == {"eta_seconds": None, "progress": 5}


def test_dates_and_decimals_are_written_the_same_on_both_paths() -> None:
    # The stream and the store show a datetime in ISO 8601 whether or not the value also holds a
    # NaN (which sends it through the second, cleaning pass).
    import decimal
    from datetime import UTC, datetime

    when = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)
    fast = strict(dumps({"at": when, "cost": decimal.Decimal("1.5")}))
    slow = strict(dumps({"at": when, "cost": decimal.Decimal("1.5"), "eta": float("nan")}))
    assert fast == {"at": "2026-12-04T19:00:00+00:00", "cost": 1.5}
    assert slow == {**fast, "eta": None}
    assert strict(dumps({"bad": decimal.Decimal("NaN")})) == {"bad": None}


def _flat(fields: dict[str, str]) -> list[bytes]:
    """An entry as a raw XREAD reply holds it: [name, value, ...] as bytes."""
    return [part.encode() for pair in fields.items() for part in pair]


def test_a_flat_entry_reads_the_same_as_its_fields_by_key() -> None:
    # The feed reads XREAD's raw reply: an entry in the bus's own layout by position, any other
    # layout (another writer, a field more or fewer) by key, with the same result.
    event = Event("task.started", "t-1", "u-1", 1234.5, {"group_id": "g", "n": 1})
    fields = encode(event)
    by_key = decode(b"1-0", {k.encode(): v.encode() for k, v in fields.items()})
    assert decode(b"1-0", _flat(fields)) == by_key == Event(**{**vars_of(event), "id": "1-0"})
    reordered = dict(reversed(list(fields.items())))
    assert decode("1-0", _flat(reordered)) == by_key
    foreign = {"type": "notification", "data": '{"title": "x"}', "extra": "1"}
    assert decode("2-0", _flat(foreign)) == Event("notification", None, None, 0.0, {"title": "x"}, id="2-0")
    # Routing without data: the fast path leaves data unparsed when asked to.
    assert decode("1-0", _flat(fields), wants_data=lambda t, d: False).data == {}


@pytest.mark.parametrize("fields", [None, [b"v", b"1", b"type"]], ids=["deleted", "odd"])
def test_a_malformed_flat_entry_is_a_value_error(fields: Any) -> None:
    with pytest.raises(ValueError):
        decode("3-0", fields)


def vars_of(event: Event) -> dict[str, Any]:
    return {f: getattr(event, f) for f in ("type", "task_id", "user_id", "ts", "data")}
