"""Task statuses (defined in :mod:`tracker.vocabulary`) and the checks applied to them."""

from __future__ import annotations

from tracker.vocabulary import ACTIVE, TERMINAL, Status

__all__ = ["Status", "TERMINAL", "ACTIVE", "check_status", "check_progress"]


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
    """Return ``value`` as a percentage in [0, 100] or raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"progress must be a number, not {type(value).__name__}")
    v = float(value)
    if not 0.0 <= v <= 100.0:  # also rejects NaN
        raise ValueError(f"progress must be between 0 and 100, got {value!r}")
    return v
