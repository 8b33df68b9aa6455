"""Celery integration of celery-tracking.

``install(app)`` connects receivers for the whole task lifecycle; ``TrackedTask`` adds
``progress()``, ``track()``, ``log``, ``metric()`` and ``checkpoint()``;
``tracking_context()`` carries the user, tags and metadata to the worker.
"""

from signals.context import TrackingContext, tracking_context
from signals.hooks import TaskCancelled, install, is_installed, uninstall
from signals.task import TaskLogger, TrackedTask

__all__ = [
    "install",
    "uninstall",
    "is_installed",
    "TrackedTask",
    "TaskLogger",
    "TaskCancelled",
    "tracking_context",
    "TrackingContext",
]
