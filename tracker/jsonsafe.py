"""Strict JSON for everything the project writes out: REST bodies, exports, the CLI's ``--json``,
and the second pass of the stream's encoder.

JSON has no NaN or Infinity (Python's ``json`` writes them anyway, and a browser's
``JSON.parse``, PostgreSQL's ``jsonb`` and most other readers reject the whole document), no
datetimes and no Decimals. :func:`jsonable` turns a value into one that JSON can hold.
"""

from __future__ import annotations

import decimal
import json
import math
from datetime import date, datetime
from typing import Any

__all__ = ["jsonable", "shown", "dumps"]

#: What a container that holds itself becomes (the encoder would otherwise fail on it).
CYCLE = "[circular]"


def jsonable(value: Any, _path: frozenset[int] = frozenset()) -> Any:
    """A copy of ``value`` that JSON can hold: a NaN or an infinity as ``None`` (a value not
    known), a Decimal as a float, a date or datetime in ISO 8601, keys as strings, tuples as
    lists, a cycle cut with ``"[circular]"``. Other objects are left for the encoder's default."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (dict, list, tuple)):
        if id(value) in _path:
            return CYCLE
        inner = _path | {id(value)}
        if isinstance(value, dict):
            return {k if isinstance(k, str) else str(k): jsonable(v, inner) for k, v in value.items()}
        return [jsonable(v, inner) for v in value]
    return value


def shown(obj: Any) -> Any:
    """The encoder's ``default`` for the stream and the store: what a value JSON cannot hold
    becomes. Dates and Decimals as :func:`jsonable` has them, anything else as its ``repr``."""
    if isinstance(obj, (datetime, date, decimal.Decimal)):
        return jsonable(obj)
    return repr(obj)


def dumps(value: Any, *, compact: bool = True) -> str:
    """``value`` as strict JSON text (UTF-8 as is; objects JSON cannot hold shown with ``str``)."""
    return json.dumps(jsonable(value), ensure_ascii=False, allow_nan=False, default=str,
                      separators=(",", ":") if compact else None)
