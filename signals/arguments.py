"""Pydantic models of the arguments of ``TrackedTask``'s methods and ``tracking_context``.

Bad input raises what it always has: ``TypeError`` for a value of the wrong kind, ``ValueError``
for one out of bounds (``tracker.validation.clear_error``). ``progress()`` is the hot path (a few
microseconds a call): it checks its common calls with one expression and comes here only for the
rest, which this model accepts or explains.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from tracker.validation import clear_error

__all__ = ["ProgressArgs", "MetricArgs", "LogArgs", "ContextArgs", "Attachment", "progress_value"]

Number = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]


class _Args(BaseModel):
    """Python values as they are: no ``"5"`` for 5, no ``True`` for 1."""

    model_config = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)


class ProgressArgs(_Args):
    percent: Annotated[Number, Field(ge=0, le=100)] | None = None
    current: Number | None = None
    total: Number | None = None
    step: str | None = None
    step_index: Count | None = None
    total_steps: Annotated[int, Field(ge=1)] | None = None
    message: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        if self.percent is None:
            if self.current is None or self.total is None:
                raise ValueError("progress() needs a percentage or both current= and total=")
            if self.total <= 0:
                raise ValueError(f"total must be > 0, got {self.total!r}")
            if not 0 <= self.current <= self.total:
                raise ValueError(f"current must be between 0 and total ({self.total:g}), got {self.current!r}")
        elif self.current is not None or self.total is not None:
            raise ValueError("give either a percentage or current=/total=, not both")
        if self.step_index is not None and self.total_steps is not None and self.step_index > self.total_steps:
            raise ValueError(f"step_index ({self.step_index}) is beyond total_steps ({self.total_steps})")
        return self

    @property
    def value(self) -> float:
        """The percentage these arguments report."""
        if self.percent is not None:
            return float(self.percent)
        assert self.current is not None and self.total is not None
        return self.current * 100.0 / self.total


def progress_value(**args: Any) -> float:
    """The percentage of ``progress()``'s arguments, or the public API's TypeError/ValueError."""
    try:
        return ProgressArgs(**args).value
    except ValidationError as exc:
        raise clear_error(exc) from None


def _json_mapping(value: Mapping[str, Any]) -> dict[str, Any]:
    """A mapping that will be stored as JSON; TypeError (raised as is by pydantic) if it cannot be."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    return dict(value)


def _metric_name(name: str) -> str:
    if not name:
        raise TypeError("metric name must be a non-empty string")  # TypeError, as it always was
    return name


class MetricArgs(_Args):
    name: Annotated[str, AfterValidator(_metric_name)]
    value: Number
    unit: str | None = None
    labels: dict[str, Any] | None = None


class Attachment(_Args):
    """``{name, content_type?, data (bytes or str) | url, size?}``: stored as ``{name, content_type,
    size, data (base64 for bytes) | url}``."""

    model_config = ConfigDict(strict=True, extra="allow")

    name: str
    content_type: str = "application/octet-stream"
    data: bytes | str | None = None
    url: Any = None
    size: Any = None

    @model_validator(mode="after")
    def _has_content(self) -> Self:
        if self.data is None and self.url is None:
            # TypeError, as it always was: pydantic lets it through unchanged.
            raise TypeError(f"attachment {self.name!r} needs 'data' (bytes or str) or 'url'")
        return self

    def entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "content_type": self.content_type}
        if isinstance(self.data, bytes):
            entry.update(size=len(self.data), data=base64.b64encode(self.data).decode(), encoding="base64")
        elif isinstance(self.data, str):
            entry.update(size=len(self.data.encode()), data=self.data)
        else:
            entry.update(url=str(self.url), size=self.size)
        return entry


class LogArgs(_Args):
    context: dict[str, Any] | None = None
    attachments: Annotated[list[Attachment], Field(strict=False)] | None = None

    def files(self) -> list[dict[str, Any]] | None:
        return None if self.attachments is None else [a.entry() for a in self.attachments]


class ContextArgs(_Args):
    """``tracking_context``'s values: they travel in task headers, so they must be JSON."""

    model_config = ConfigDict(strict=False, extra="forbid")

    user_id: Annotated[str, Field(strict=True)] | None = None
    task_type: Annotated[str, Field(strict=True)] | None = None
    tags: list[Annotated[str, Field(strict=True)]] | None = None
    metadata: Annotated[Mapping[str, Any], AfterValidator(_json_mapping)] | None = None
