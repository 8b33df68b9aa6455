"""Strict JSON for everything the project writes out: the stream and the store
(:func:`tracker.events.dumps`), REST bodies, exports and the CLI's ``--json`` (:func:`dumps`).

JSON has no NaN or Infinity (Python's ``json`` writes them anyway, and a browser's
``JSON.parse``, PostgreSQL's ``jsonb`` and most other readers reject the whole document), no
datetimes and no Decimals. Each encoder tries the C encoder on the value as it is (the common
case, and the stream's hot path) and only a value it refuses pays for :func:`jsonable`'s pass.
"""

from __future__ import annotations

import decimal
import json
import math
from collections.abc import Callable
from datetime import date, datetime
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

__all__ = ["jsonable", "strict_encoder", "dumps"]

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


def strict_encoder(other: Callable[[Any], str], *, compact: bool = True) -> Callable[[Any], str]:
    """A ``dumps`` that never writes NaN or Infinity and never fails: dates and Decimals as
    :func:`jsonable` has them, any other object JSON cannot hold as ``other(obj)`` (``repr``
    for the stream, ``str`` for replies).

    One ``JSONEncoder`` built once: ``json.dumps`` with non-default options builds a new one per
    call, which was a third of encoding a small event."""
    def default(obj: Any) -> Any:
        return jsonable(obj) if isinstance(obj, (datetime, date, decimal.Decimal)) else other(obj)

    item_sep, key_sep = (",", ":") if compact else (", ", ": ")
    encode: Callable[[Any], str] = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=default,
                                                    separators=(item_sep, key_sep)).encode
    if c_make_encoder is not None:
        # The C encoder JSONEncoder.encode builds on every call, built once: a third of encoding
        # a small event. No circular-reference markers (a shared dict would keep the ids of a
        # failed call): a cycle ends in RecursionError, and the cleaning pass cuts it.
        one_shot = c_make_encoder(None, default, encode_basestring, None, key_sep, item_sep, False, False, False)

        def encode_once(value: Any) -> str:
            return "".join(one_shot(value, 0))

        encode = encode_once

    def dumps(value: Any) -> str:
        try:
            return encode(value)
        except (ValueError, TypeError, RecursionError):
            # A NaN or an infinity, a cycle, or a key JSON cannot hold: clean, then encode.
            return encode(jsonable(value))

    return dumps


_COMPACT = strict_encoder(str)
_SPACED = strict_encoder(str, compact=False)


def dumps(value: Any, *, compact: bool = True) -> str:
    """``value`` as strict JSON text (UTF-8 as is; objects JSON cannot hold shown with ``str``)."""
    return _COMPACT(value) if compact else _SPACED(value)
