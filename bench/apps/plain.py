"""The benchmark's untracked worker app: plain Celery."""

from bench.apps import make_app
from bench.apps.profiling import enable_if_asked

app = make_app("bench_plain")

enable_if_asked()

__all__ = ["app"]
