"""Worker entry point for the test suite: the test tasks with tracking installed."""

import signals
from tests.apps.tasks import app

signals.install(app)

__all__ = ["app"]
