"""Client-to-server frames of the WebSocket feed: one pydantic model per ``op``, one discriminated union.

:func:`parse` turns a text frame into a :data:`ClientFrame` or raises :class:`Refused` carrying the
``error`` frame's ``code`` (``bad_json``, ``bad_request``, ``unknown_op``, ``bad_topic``) and what it
refers to (``op``, ``topic``): the connection stays open. The field checks raise those codes
themselves (pydantic custom errors), so the frame a client gets does not depend on pydantic's
wording. Parsing is JSON-to-model in one pass (``validate_json``); see ``bench/frames.py`` for its
cost against the hand-written parse it replaced.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.functional_validators import PlainValidator
from pydantic_core import PydanticCustomError

from tracker import control
from webgate.feed import frames

__all__ = ["ClientFrame", "Subscribe", "Unsubscribe", "Ping", "Auth", "Control", "Refused", "parse", "OPS",
           "TOPIC_KINDS", "MAX_IDENT", "MAX_TOKEN"]

TOPIC_KINDS = ("task", "user", "group")
#: Longest id in a topic or a ``task_id``.
MAX_IDENT = 255
#: Longest token accepted in an ``auth`` frame (real ones are a few hundred characters).
MAX_TOKEN = 4096
_ID_RE = re.compile(r"\d{1,20}(-\d{1,20})?")
_CONTROL_OPS = tuple(control.ACTIONS)
OPS = ("subscribe", "unsubscribe", "ping", "auth", *_CONTROL_OPS)


class Refused(Exception):
    """A message the server will not act on: becomes an ``error`` frame (the connection stays)."""

    def __init__(self, code: str, message: str, *, of: str | None = None, **context: Any) -> None:
        super().__init__(message)
        self.code = code
        self.context = context
        #: The op of the refused frame, when it had a valid one (None: not JSON, not an object, no op).
        self.of = of

    def frame(self) -> bytes:
        return frames.error(self.code, str(self), **self.context)


def _fail(code: str, message: str) -> PydanticCustomError:
    # No context: the message is final (a template with {placeholders} would be filled from it).
    return PydanticCustomError(code, message)


def _topic(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail("bad_topic", "'topic' must be a string: task:<id>, user:<id>, group:<id> or all")
    if value == "all":
        return value
    kind, sep, ident = value.partition(":")
    if not sep or kind not in TOPIC_KINDS or not ident or len(ident) > MAX_IDENT:
        raise _fail("bad_topic", f"unknown topic {value[:80]!r}: use task:<id>, user:<id>, group:<id> or all")
    return value


def _since(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not _ID_RE.fullmatch(value)):
        raise _fail("bad_request", "'since' must be a stream id such as '1700000000000-0'")
    return value


def _token(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail("bad_request", "'token' must be a non-empty string (a JWT)")
    if len(value) > MAX_TOKEN:
        raise _fail("bad_request", f"'token' is longer than {MAX_TOKEN} characters")
    return value


def _task_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_IDENT:
        raise _fail("bad_request", "'task_id' must be a non-empty string")
    return value


#: ``task:<id>`` | ``user:<id>`` | ``group:<id>`` | ``all``.
Topic = Annotated[str, PlainValidator(_topic, json_schema_input_type=str)]
StreamId = Annotated[str | None, PlainValidator(_since, json_schema_input_type=str | None)]
Token = Annotated[str, PlainValidator(_token, json_schema_input_type=str)]
TaskId = Annotated[str, PlainValidator(_task_id, json_schema_input_type=str)]

# A missing field goes through its check too (validate_default), so it gets the same code as a wrong one.
_CONFIG = ConfigDict(frozen=True, extra="ignore", validate_default=True)


class Subscribe(BaseModel):
    """``{"op": "subscribe", "topic": ..., "since": "<stream id>"?}``: a snapshot, or a replay from ``since``."""

    model_config = _CONFIG
    op: Literal["subscribe"]
    topic: Topic = None  # type: ignore[assignment]  # checked: missing is a bad_topic
    since: StreamId = None


class Unsubscribe(BaseModel):
    """``{"op": "unsubscribe", "topic": ...}``."""

    model_config = _CONFIG
    op: Literal["unsubscribe"]
    topic: Topic = None  # type: ignore[assignment]


class Ping(BaseModel):
    """``{"op": "ping"}``: answered with ``pong``."""

    model_config = _CONFIG
    op: Literal["ping"]


class Auth(BaseModel):
    """``{"op": "auth", "token": "<jwt>"}``: the first frame of a socket opened without a token, or a refresh."""

    model_config = _CONFIG
    op: Literal["auth"]
    token: Token = None  # type: ignore[assignment]


class Control(BaseModel):
    """``{"op": "pause" | "resume" | "cancel", "task_id": ...}``."""

    model_config = _CONFIG
    op: Literal["pause", "resume", "cancel"]
    task_id: TaskId = None  # type: ignore[assignment]


ClientFrame = Annotated[Subscribe | Unsubscribe | Ping | Auth | Control, Field(discriminator="op")]
_FRAME: TypeAdapter[Subscribe | Unsubscribe | Ping | Auth | Control] = TypeAdapter(ClientFrame)
_OPS_TEXT = "subscribe, unsubscribe, ping, auth, pause, resume or cancel"


def parse(raw: str | bytes) -> Subscribe | Unsubscribe | Ping | Auth | Control:
    """The frame as its model; :class:`Refused` (with the ``error`` code of the contract) otherwise."""
    try:
        return _FRAME.validate_json(raw)
    except ValidationError as exc:
        raise _refusal(exc, raw) from None


def _refusal(exc: ValidationError, raw: str | bytes) -> Refused:
    """The ``error`` of a frame that did not validate (the error path: the JSON is decoded again here)."""
    err = exc.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return Refused("bad_json", "message is not valid JSON")
    try:
        msg = json.loads(raw)
    except ValueError:  # valid for pydantic's parser, not for the stdlib's (e.g. a stray byte order mark)
        return Refused("bad_json", "message is not valid JSON")
    if not isinstance(msg, dict):
        return Refused("bad_request", "a message must be a JSON object with an 'op'")
    op = msg.get("op")
    if not isinstance(op, str):
        return Refused("bad_request", "'op' must be a string")
    if op not in OPS:
        return Refused("unknown_op", f"unknown op {op[:40]!r}; expected {_OPS_TEXT}", op=op[:40], of=op[:40])
    code = err["type"] if err["type"] in _CODES else "bad_request"
    if op in ("subscribe", "unsubscribe"):
        # What the error refers to: the topic (cut when it is the bad part), when it is a string at all.
        topic = msg.get("topic")
        if not isinstance(topic, str):
            topic = None
        elif err["loc"][-1] == "topic":
            topic = topic[:80]
        return Refused(code, err["msg"], topic=topic, of=op)
    return Refused(code, err["msg"], op=op, of=op)


_CODES = frozenset({"bad_topic", "bad_request"})
