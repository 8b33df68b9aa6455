"""Per-process tracking state: the Recorder, the EventBus and the tasks running here.

Threads and sockets do not survive ``fork()``: everything is created lazily on first use in
each process (checked by pid) and forgotten in a forked child, which builds its own.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from signals import workers
from tracker.bus import EventBus
from tracker.config import TrackerConfig
from tracker.recorder import Recorder
from tracker.redaction import redactor_for
from tracker.reporter import Reporter

__all__ = ["Runtime", "ActiveTask", "runtime_for", "reset", "shutdown_all", "close_runtime", "runtime_key"]

logger = logging.getLogger("signals.runtime")


@dataclass(slots=True)
class ActiveTask:
    """What this process knows about a task while it runs."""

    task_id: str
    name: str
    task_type: str
    user_id: str | None
    tags: tuple[str, ...]
    runtime: Runtime
    started_wall: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    cpu0: float = field(default_factory=time.process_time)
    rss0: int = 0
    retries: int = 0
    queue_wait: float | None = None  # publish to start, when a tracked producer stamped the publish
    progress: float = 0.0
    progress_started: float | None = None  # monotonic time of the first progress report
    progress_first: float = 0.0
    next_control: float = 0.0
    paused: bool = False


class Runtime:
    """Tracking machinery of one process for one configuration."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.pid = os.getpid()
        self.hostname = socket.gethostname()
        self.recorder: Recorder | None = None
        self.bus: EventBus | None = None
        if config.database_url:
            self.recorder = Recorder(config.database_url, flush_interval=config.flush_interval,
                                     buffer_max=config.buffer_max)
            self.recorder.ticks.append(self._tick)
        else:
            logger.warning("celery-tracking: no database URL configured; task states are not stored")
        if config.redis_url:
            self.bus = EventBus(config.redis_url, prefix=config.prefix, maxlen=config.stream_maxlen,
                                progress_interval=config.progress_interval,
                                control_interval=config.control_interval, buffer_max=config.buffer_max)
        self.reporter = Reporter(self.recorder, self.bus, redactor_for(config))
        self.active: dict[str, ActiveTask] = {}
        self._next_heartbeat = 0.0
        self._proc: Any = None
        self._tracker: Any = None
        #: Tasks this process finished, reported with its heartbeats.
        self.processed = 0
        self.created = time.time()
        #: Set by :meth:`close`: the hooks' cache then looks the runtime up again.
        self.closed = False

    def beat_soon(self) -> None:
        """Send the next heartbeat at the recorder's next tick (within a second): a task just
        started or ended, so the worker's list of running tasks changed."""
        self._next_heartbeat = 0.0

    def _tick(self) -> None:
        """Called from the recorder thread about once a second."""
        now = time.monotonic()
        if now < self._next_heartbeat or self.recorder is None:
            return
        self._next_heartbeat = now + self.config.heartbeat_interval
        wall = time.time()
        active = list(self.active)
        for task_id in active:
            self.recorder.task(task_id, heartbeat_at=wall)
        node = workers.node_name()
        if node is None:
            return  # not a worker process (a producer, an eager run): no worker heartbeat
        cpu = rss = None
        try:
            import psutil

            if self._proc is None:
                self._proc = psutil.Process(self.pid)
                self._proc.cpu_percent(None)
            cpu = float(self._proc.cpu_percent(None))
            rss = int(self._proc.memory_info().rss)
        except Exception:
            pass
        worker_id = f"{node}:{self.pid}"
        self.recorder.worker(worker_id, node, self.pid, cpu, rss, active, self.processed, self.created)
        if not active:
            return  # the load series is kept while the process works; the record has the rest
        labels = {"worker": worker_id}
        if cpu is not None:
            self.reporter.metric("worker.cpu_percent", cpu, unit="percent", labels=labels, publish=False)
        if rss is not None:
            self.reporter.metric("worker.rss_bytes", float(rss), unit="bytes", labels=labels, publish=False)

    @property
    def tracker(self) -> Any:
        """A ``Tracker`` on this configuration, for the rare synchronous calls a task makes
        itself (``TrackedTask.notify``); created on first use."""
        if self._tracker is None:
            from tracker.api import Tracker

            self._tracker = Tracker(config=self.config)
        return self._tracker

    def flush(self, timeout: float = 10.0) -> bool:
        return self.reporter.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.closed = True
        if self.recorder is not None and workers.node_name() is not None:
            # A last heartbeat: the tasks this process processed count in full.
            self.beat_soon()
            self._tick()
        self.reporter.close(timeout)
        if self._tracker is not None:
            self._tracker.close()


_lock = threading.Lock()
_runtimes: dict[tuple[Any, ...], Runtime] = {}
_pid = os.getpid()


def runtime_key(config: TrackerConfig) -> tuple[Any, ...]:
    return (config.database_url, config.redis_url, config.prefix)


def runtime_for(config: TrackerConfig) -> Runtime:
    """The process's runtime for ``config``, created on first use."""
    global _pid
    key = runtime_key(config)
    rt = _runtimes.get(key)
    if rt is not None and _pid == os.getpid():
        return rt
    with _lock:
        if _pid != os.getpid():
            _runtimes.clear()
            _pid = os.getpid()
        rt = _runtimes.get(key)
        if rt is None:
            rt = _runtimes[key] = Runtime(config)
        return rt


def reset() -> None:
    """Forget the parent's runtimes in a forked child (its threads did not survive)."""
    global _pid
    _runtimes.clear()
    _pid = os.getpid()


def close_runtime(config: TrackerConfig, timeout: float = 10.0) -> None:
    """Flush and stop this process's runtime for ``config``, if it has one."""
    if _pid != os.getpid():
        return
    with _lock:
        rt = _runtimes.pop(runtime_key(config), None)
    if rt is not None:
        try:
            rt.close(timeout)
        except Exception:
            logger.exception("celery-tracking: flush at uninstall failed")


def shutdown_all(timeout: float = 10.0) -> None:
    """Flush and stop every runtime of this process (graceful worker shutdown)."""
    if _pid != os.getpid():
        return
    with _lock:
        runtimes = list(_runtimes.values())
        _runtimes.clear()
    for rt in runtimes:
        try:
            rt.close(timeout)
        except Exception:
            logger.exception("celery-tracking: flush at shutdown failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset)
