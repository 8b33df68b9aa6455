"""Shared pieces of validation with pydantic: clean text, and pydantic's errors turned into the
exceptions the public API has always raised.

The Python API (``Tracker``, ``TrackedTask``, ``tracking_context``) promises ``TypeError`` for a
value of the wrong kind and ``ValueError`` for a value out of bounds; the REST layer maps both to
400. Pydantic raises one ``ValidationError`` for everything, so :func:`clear_error` turns it back
into one of the two, with a message that names the field (``title must be at most 500
characters``) rather than pydantic's ``Input should be ...``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

__all__ = ["check_text", "bounded_json", "Clean", "Id", "Json", "JsonObject", "JsonArray", "MAX_JSON_BYTES",
           "checked", "clear_error", "is_type_error", "describe", "error_messages", "field_name"]


def check_text(value: str, where: str = "text") -> str:
    """PostgreSQL text cannot hold NUL and UTF-8 cannot hold lone surrogates: refuse both."""
    if "\x00" in value:
        raise ValueError(f"{where}: text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: text is not valid Unicode") from None
    return value


def _deep_text(value: Any) -> None:
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(str(k), "key")
            _deep_text(v)
    elif isinstance(value, list):
        for v in value:
            _deep_text(v)


def bounded_json(value: Any) -> Any:
    """Free-form JSON (metadata, context, result): JSON-serialisable (a Python caller may pass
    anything), no NUL anywhere, at most :data:`MAX_JSON_BYTES` when encoded; returned as the JSON
    it encodes (tuples become lists), which is what the store will hold."""
    if value is None:
        return None
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"must be JSON-serialisable ({exc})") from None
    if len(text.encode()) > MAX_JSON_BYTES:
        raise ValueError(f"at most {MAX_JSON_BYTES} bytes of JSON")
    value = json.loads(text)
    _deep_text(value)
    return value


#: Every stored text field: no NUL, no lone surrogate.
Clean = AfterValidator(check_text)
Id = Annotated[str, Field(max_length=255, min_length=1), Clean]
#: Free-form JSON is bounded so one call cannot bloat a row.
MAX_JSON_BYTES = 64 * 1024
Json = Annotated[Any, AfterValidator(bounded_json)]
JsonObject = Annotated[dict[str, Any], AfterValidator(bounded_json)]
JsonArray = Annotated[list[Any], AfterValidator(bounded_json)]

T = TypeVar("T")

#: What a value of the wrong JSON/Python kind "must be", by pydantic error type.
_KINDS = {"string_type": "a string", "dict_type": "a dict", "list_type": "a list", "tuple_type": "a list",
          "int_type": "an integer", "float_type": "a number", "bool_type": "a boolean", "model_type": "an object",
          "dataclass_type": "an object", "is_instance_of": "an object", "none_required": "null",
          "int_from_float": "an integer", "iterable_type": "a list"}


def field_name(loc: Sequence[int | str]) -> str:
    """``("channels", 0)`` -> ``channels[0]``; ``("digest", "window")`` -> ``digest.window``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def describe(err: ErrorDetails, where: Sequence[int | str] = (), subject: str = "value") -> str:
    """One pydantic error as a sentence naming its field; ``where`` is dropped from the location's
    front (e.g. the list index a caller names already); ``subject`` names a value without a field."""
    loc = tuple(err["loc"])[len(where):]
    # A union tries each member: its member's name in the location says nothing to the user.
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    name = field_name(loc) or subject
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in ("value_error", "assertion_error"):
        # Our own validators' messages already say what is wrong (and name the field when it helps).
        text = str(ctx.get("error", err["msg"]))
        return text if not loc or name in text else f"{name}: {text}"
    if kind == "extra_forbidden":
        return f"unknown field {name!r}"
    if kind == "missing":
        return f"{name} is required"
    if kind in _KINDS:
        return f"{name} must be {_KINDS[kind]}"
    if kind in ("enum", "literal_error"):
        return f"{name} must be one of {ctx.get('expected')}, got {err.get('input')!r}"
    if kind == "string_too_long":
        return f"{name} must be at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return f"{name} must be a non-empty string"
    if kind == "too_short":
        return f"{name} must be non-empty" if ctx.get("min_length") == 1 else \
            f"{name} must have at least {ctx.get('min_length')} items"
    for bound, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal") and bound in ctx:
            return f"{name} must be {word} {ctx[bound]}, got {err.get('input')!r}"
    if kind == "finite_number":
        return f"{name} must be finite"
    if kind == "string_pattern_mismatch":
        return f"{name} must match {ctx.get('pattern')}"
    if kind == "too_long":
        return f"{name} must have at most {ctx.get('max_length')} items"
    return f"{name}: {err['msg']}"


def error_messages(exc: ValidationError, where: Sequence[int | str] = (), limit: int = 3,
                   subject: str = "value", item: Callable[[Any], str] | None = None) -> str:
    """The first ``limit`` problems of ``exc``, each naming its field. With ``item``, ``exc`` is
    about a list: each problem starts with ``item(index)`` and its location leaves the index out."""
    errors = exc.errors(include_url=False)[:limit]
    if item is None:
        return "; ".join(describe(err, where, subject) for err in errors)
    return "; ".join(f"{item(err['loc'][0])}: {describe(err, err['loc'][:1])}" for err in errors)


def is_type_error(exc: ValidationError, also: Collection[str] = ()) -> bool:
    """Whether every problem of ``exc`` is a value of the wrong kind (the public API's TypeError),
    or of a pydantic error type in ``also`` (e.g. ``missing`` where a dict lacks a key)."""
    errors = exc.errors(include_url=False)
    return bool(errors) and all(err["type"] in _KINDS or err["type"] in also for err in errors)


def clear_error(exc: ValidationError, prefix: str = "", where: Sequence[int | str] = (),
                also: Collection[str] = (), subject: str = "value",
                item: Callable[[Any], str] | None = None) -> TypeError | ValueError:
    """``exc`` as the public API's exception: ``TypeError`` when every problem is a value of the
    wrong kind (or in ``also``), else ``ValueError``; to ``raise ... from None``."""
    message = prefix + error_messages(exc, where, subject=subject, item=item)
    return TypeError(message) if is_type_error(exc, also) else ValueError(message)


def checked(adapter: TypeAdapter[T], value: Any, name: str) -> T:
    """``value`` validated by ``adapter``, or the public API's TypeError/ValueError naming ``name``
    (``limit must be an integer``)."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise clear_error(exc, subject=name) from None

