"""Task statuses (defined in :mod:`tracker.vocabulary`) and the checks applied to them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, TypeAdapter

from tracker.validation import checked
from tracker.vocabulary import ACTIVE, TERMINAL, Status

__all__ = ["Status", "TERMINAL", "ACTIVE", "Percent", "check_status", "check_progress"]

#: A percentage as Python gives it: ``50`` or ``50.0``, never ``"50"``, ``True`` or NaN.
Percent = Annotated[float, Field(strict=True, ge=0, le=100, allow_inf_nan=False)]
_PERCENT: TypeAdapter[float] = TypeAdapter(Percent)


def check_status(value: object) -> Status:
    """Return ``value`` as a :class:`Status` or raise a clear error."""
    if not isinstance(value, str):
        raise TypeError(f"status must be a string, not {type(value).__name__}")
    try:
        return Status(value)
    except ValueError:
        allowed = ", ".join(s.value for s in Status)
        raise ValueError(f"unknown status {value!r}; expected one of: {allowed}") from None


def check_progress(value: object) -> float:
    """Return ``value`` as a percentage in [0, 100] or raise a clear error (TypeError for what is
    not a number, ``True`` and ``"50"`` included; ValueError out of range or NaN)."""
    return checked(_PERCENT, value, "progress")
