"""The one strict-JSON helper of REST bodies, exports and the CLI."""

from __future__ import annotations

import decimal
import json
from datetime import UTC, date, datetime

from tracker.jsonsafe import dumps, jsonable


def test_values_json_cannot_hold_become_ones_it_can() -> None:
    when = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)
    value = {"at": when, "day": date(2026, 12, 4), "cost": decimal.Decimal("1.50"), "bad": decimal.Decimal("NaN"),
             "xs": (1, float("inf"), [float("nan")]), 7: "seven"}
    assert jsonable(value) == {"at": "2026-12-04T19:00:00+00:00", "day": "2026-12-04", "cost": 1.5, "bad": None,
                               "xs": [1, None, [None]], "7": "seven"}


def test_dumps_is_strict_and_shows_odd_objects_with_str() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    loop: dict[str, object] = {"eta": float("-inf")}
    loop["self"] = loop
    text = dumps({"loop": loop, "o": Odd(), "name": "é"})
    assert text == '{"loop":{"eta":null,"self":"[circular]"},"o":"odd","name":"é"}'
    assert json.loads(text) == {"loop": {"eta": None, "self": "[circular]"}, "o": "odd", "name": "é"}
    assert dumps([1, 2], compact=False) == "[1, 2]"
    # A key the encoder refuses (a tuple) goes through the cleaning pass instead of failing.
    assert dumps({(1, 2): date(2026, 12, 4)}) == '{"(1, 2)":"2026-12-04"}'
