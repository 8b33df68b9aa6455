"""celery-tracking's data layer: models, the batched Recorder, the event bus and ``Tracker``."""

from tracker.api import Page, Tracker
from tracker.config import TrackerConfig
from tracker.events import Event
from tracker.records import GroupProgress, LogRecord, MetricRecord, NotificationRecord, ProgressPoint, TaskRecord
from tracker.status import Status

__all__ = [
    "Tracker",
    "TrackerConfig",
    "Page",
    "TaskRecord",
    "LogRecord",
    "MetricRecord",
    "NotificationRecord",
    "ProgressPoint",
    "GroupProgress",
    "Event",
    "Status",
]
