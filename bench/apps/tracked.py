"""The benchmark's tracked worker app: the same task with ``signals.install`` (settings from
``TRACKER_DATABASE_URL`` / ``TRACKER_REDIS_URL``)."""

import signals
from bench.apps import make_app
from bench.apps.profiling import enable_if_asked

app = make_app("bench_tracked")
signals.install(app)

enable_if_asked()

__all__ = ["app"]
