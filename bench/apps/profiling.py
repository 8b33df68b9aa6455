"""``BENCH_PROFILE=<dir>``: profile every process of a benchmark worker (main and pool children)
with cProfile and dump ``<dir>/<pid>.prof`` at shutdown, to see where per-task time goes
(``BENCH_PROFILE_CPU=1``: thread CPU time instead of wall time)."""

from __future__ import annotations

import atexit
import cProfile
import os
import threading
import time
from typing import Any

from celery import signals as cs

__all__ = ["enable_if_asked"]

_profiles: dict[int, cProfile.Profile] = {}


def _start(**_: Any) -> None:
    out = os.environ.get("BENCH_PROFILE")
    if not out or os.getpid() in _profiles:
        return
    # BENCH_PROFILE_CPU=1: CPU time of the profiled thread, not wall time (which on a busy
    # machine is mostly waiting for a core or the GIL).
    cpu = os.environ.get("BENCH_PROFILE_CPU", "").lower() in {"1", "true", "yes", "on"}
    prof = _profiles[os.getpid()] = cProfile.Profile(time.thread_time) if cpu else cProfile.Profile()
    # Threads started from now on (the Recorder's and the bus's) are profiled too.
    threading.setprofile(lambda *a: None)
    prof.enable()


def _dump(**_: Any) -> None:
    prof = _profiles.pop(os.getpid(), None)
    out = os.environ.get("BENCH_PROFILE")
    if prof is not None and out:
        prof.disable()
        prof.dump_stats(os.path.join(out, f"{os.getpid()}.prof"))


def enable_if_asked() -> None:
    if not os.environ.get("BENCH_PROFILE"):
        return
    cs.worker_process_init.connect(_start, weak=False, dispatch_uid="bench-profile-start")
    cs.worker_process_shutdown.connect(_dump, weak=False, dispatch_uid="bench-profile-dump")
    cs.worker_init.connect(_start, weak=False, dispatch_uid="bench-profile-main")
    cs.worker_shutdown.connect(_dump, weak=False, dispatch_uid="bench-profile-main-dump")
    atexit.register(_dump)
