"""The automatic per-task figures: columns of the task row, read back as metric samples.

A finished run used to add five ``tracker_metrics`` rows. Its figures are now written with
the states the task row gets anyway (``queue_wait`` with "started", the others when the run
ends), and :func:`tracker.queries.metrics` / ``metric_series`` answer for these names from
the row as before. A run that ends in a retry still writes rows: the next run overwrites the
columns, and every run keeps its sample.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Figure", "FIGURES", "FIGURE_COLUMNS", "BY_NAME", "QUEUE_WAIT", "RUN_TIME"]


@dataclass(frozen=True, slots=True)
class Figure:
    """One automatic figure: the metric name it answers for and where the task row keeps it."""

    name: str
    #: The ``tracker_tasks`` column holding the value.
    column: str
    unit: str
    #: The ``tracker_tasks`` column giving the sample's time: the run's start or its end.
    at: str


QUEUE_WAIT = Figure("task.queue_wait", "queue_wait", "seconds", "started_at")
RUN_TIME = Figure("task.run_time", "run_time", "seconds", "finished_at")
FIGURES: tuple[Figure, ...] = (
    QUEUE_WAIT,
    RUN_TIME,
    Figure("task.cpu_time", "cpu_time", "seconds", "finished_at"),
    Figure("task.memory_growth", "memory_growth", "bytes", "finished_at"),
    # The row's retries column: a sample once the run has ended (its run_time is set).
    Figure("task.retries", "retries", "count", "finished_at"),
)
BY_NAME: dict[str, Figure] = {f.name: f for f in FIGURES}
#: The columns migration 0006 added (``retries`` was there before).
FIGURE_COLUMNS: tuple[str, ...] = ("queue_wait", "run_time", "cpu_time", "memory_growth")
