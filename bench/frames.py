"""Parse cost of one client frame of the feed: the pydantic models against the hand-written parse.

``python -m bench.frames`` prints microseconds per frame (best of 5 ``timeit`` repeats) for the
frames a client sends most (``ping``, ``subscribe`` with and without ``since``, ``auth``) and a
malformed one. The hand-written parse is kept here, as it was in the endpoint before the models,
as the baseline; msgspec is measured too when it is installed (the issue allows it for the hot
path if pydantic costs measurably). No servers needed.
"""

from __future__ import annotations

import json
import re
import sys
import timeit
from collections.abc import Callable
from typing import Any

from bench.common import Result
from webgate.feed import client_frames

__all__ = ["run", "measure", "FRAMES"]

FRAMES = {
    "ping": '{"op": "ping"}',
    "subscribe": '{"op": "subscribe", "topic": "task:5f0c6f1e-8d6a-4c53-9a56-0d6f6d1e2b7a"}',
    "subscribe_since": '{"op": "subscribe", "topic": "user:alice", "since": "1700000000000-17"}',
    "auth": '{"op": "auth", "token": "' + "x" * 300 + '"}',
    "bad_topic": '{"op": "subscribe", "topic": "bogus"}',
}

_ID_RE = re.compile(r"\d{1,20}(-\d{1,20})?")


class _Refused(Exception):
    pass


def hand_written(raw: str) -> dict[str, Any]:
    """The endpoint's parse before the models: ``json.loads``, then per-op ``isinstance`` checks."""
    try:
        msg = json.loads(raw)
    except ValueError:
        raise _Refused("bad_json") from None
    if not isinstance(msg, dict):
        raise _Refused("bad_request")
    op = msg.get("op")
    if not isinstance(op, str):
        raise _Refused("bad_request")
    if op in ("subscribe", "unsubscribe"):
        topic = msg.get("topic")
        if not isinstance(topic, str):
            raise _Refused("bad_topic")
        if topic != "all":
            kind, sep, ident = topic.partition(":")
            if not sep or kind not in ("task", "user", "group") or not ident or len(ident) > 255:
                raise _Refused("bad_topic")
        since = msg.get("since")
        if since is not None and (not isinstance(since, str) or not _ID_RE.fullmatch(since)):
            raise _Refused("bad_request")
    elif op == "auth":
        token = msg.get("token")
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise _Refused("bad_request")
    return msg


def _pydantic(raw: str) -> Any:
    return client_frames.parse(raw)


def _msgspec() -> Callable[[str], Any] | None:
    try:
        import msgspec
    except ImportError:
        return None

    class Subscribe(msgspec.Struct, tag_field="op", tag="subscribe"):
        topic: str
        since: str | None = None

    class Unsubscribe(msgspec.Struct, tag_field="op", tag="unsubscribe"):
        topic: str

    class Ping(msgspec.Struct, tag_field="op", tag="ping"):
        pass

    class Auth(msgspec.Struct, tag_field="op", tag="auth"):
        token: str

    decoder = msgspec.json.Decoder(Subscribe | Unsubscribe | Ping | Auth)

    def parse(raw: str) -> Any:
        # Types and tags only: the topic/since/token rules would still be Python code after the decode.
        frame = decoder.decode(raw)
        if isinstance(frame, Subscribe | Unsubscribe) and frame.topic != "all":
            kind, sep, ident = frame.topic.partition(":")
            if not sep or kind not in ("task", "user", "group") or not ident or len(ident) > 255:
                raise _Refused("bad_topic")
        if isinstance(frame, Subscribe) and frame.since is not None and not _ID_RE.fullmatch(frame.since):
            raise _Refused("bad_request")
        return frame

    return parse


def _per_call_us(fn: Callable[[str], Any], raw: str, number: int) -> float:
    def call() -> None:
        try:
            fn(raw)
        except Exception:  # the malformed frame: its refusal is part of the cost
            pass

    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def measure(number: int = 50_000) -> dict[str, dict[str, float]]:
    """``{frame: {parser: microseconds per frame}}``."""
    parsers: dict[str, Callable[[str], Any]] = {"hand_written": hand_written, "pydantic": _pydantic}
    ms = _msgspec()
    if ms is not None:
        parsers["msgspec"] = ms
    return {name: {p: _per_call_us(fn, raw, number) for p, fn in parsers.items()} for name, raw in FRAMES.items()}


def run(servers: Any = None) -> list[Result]:
    results = []
    for frame, figures in measure().items():
        results.append(Result(f"feed frame parse {frame} (pydantic)", figures["pydantic"], "us",
                              baseline_name="hand-written json.loads + isinstance",
                              baseline_value=figures["hand_written"], higher_is_better=False,
                              extra={k: v for k, v in figures.items()}))
    return results


if __name__ == "__main__":
    number = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    figures = measure(number)
    parsers = list(next(iter(figures.values())))
    print(f"{'frame':18}" + "".join(f"{p:>14}" for p in parsers) + "   (us per frame)")
    for frame, row in figures.items():
        print(f"{frame:18}" + "".join(f"{row[p]:14.2f}" for p in parsers))
