"""Server-to-client frames of the WebSocket feed, encoded once and written as raw bytes.

An event fanned out to a thousand sockets is serialised once: :func:`text_frame` turns the
JSON into a complete (unmasked, uncompressed) RFC 6455 text frame, and the hub writes the
same bytes to every subscriber, joining all frames of one stream read into one
``transport.write`` per socket (:mod:`webgate.feed.wire` states when that is
correct). Close codes are the vocabulary's (:class:`tracker.vocabulary.CloseCode`).

These stay hand-encoded JSON rather than models: the server produces them (nothing to
validate), and an event frame is encoded once per event for all its subscribers with the
same ``dumps`` the stream uses.
"""

from __future__ import annotations

import struct
from typing import Any

from tracker.events import dumps

__all__ = ["text_frame", "encode", "error", "pong", "snapshot", "recovered", "ack"]

_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack
_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """A complete server-side text frame (servers never mask, RFC 6455 5.1)."""
    n = len(payload)
    if n < 126:
        return _LEN1(_FIN_TEXT, n) + payload
    if n < 65536:
        return _LEN2(_FIN_TEXT, 126, n) + payload
    return _LEN3(_FIN_TEXT, 127, n) + payload


def encode(obj: dict[str, Any]) -> bytes:
    return text_frame(dumps(obj).encode())


def error(code: str, message: str, **context: Any) -> bytes:
    """``{"type": "error", "code": ..., "message": ...}`` plus what it refers to (topic, op, task_id)."""
    return encode({"type": "error", "code": code, "message": message,
                   **{k: v for k, v in context.items() if v is not None}})


def pong() -> bytes:
    return _PONG


def snapshot(topic: str, tasks: list[dict[str, Any]]) -> bytes:
    return encode({"type": "snapshot", "topic": topic, "tasks": tasks})


def recovered(topic: str, complete: bool) -> bytes:
    return encode({"type": "recovered", "topic": topic, "complete": complete})


def ack(op: str, **fields: Any) -> bytes:
    return encode({"type": "ack", "op": op, **fields})


_PONG = encode({"type": "pong"})
