"""Pydantic models of the arguments of the ``Tracker``'s write methods for non-Celery producers.

Bad input raises what it always has: ``TypeError`` for a value of the wrong kind, ``ValueError``
for one out of bounds (:func:`tracker.validation.clear_error`), and nothing is written.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from tracker.status import Percent, Status, check_status
from tracker.validation import clear_error

__all__ = ["StatusName", "NewTask", "new_task"]

#: A status name, as the :class:`Status` it names.
StatusName = Annotated[str, Field(strict=True), AfterValidator(check_status)]
Text = Annotated[str, Field(strict=True)]


def _task_id(value: Any) -> Any:
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        raise ValueError("task_id must be a non-empty string of at most 255 characters")
    return value


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    json.dumps(value)  # TypeError (passed through by pydantic) for what JSON cannot hold
    return value


class NewTask(BaseModel):
    """``Tracker.create_task``'s arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: Annotated[str, BeforeValidator(_task_id)]
    user_id: Text | None = None
    task_type: Text | None = None
    task_name: Text | None = None
    progress: Percent = 0.0
    status: StatusName = Status.PENDING
    total_steps: Annotated[int, Field(strict=True, ge=1)] | None = None
    metadata: Annotated[dict[str, Any], Field(strict=True), AfterValidator(_jsonable)] | None = None
    tags: Annotated[list[Text], Field(strict=True)] | None = None


def new_task(**values: Any) -> NewTask:
    """:class:`NewTask` from keyword arguments, or the public API's TypeError/ValueError."""
    try:
        return NewTask.model_validate(values)
    except ValidationError as exc:
        raise clear_error(exc) from None
