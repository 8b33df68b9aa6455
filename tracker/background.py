"""What the Recorder and the EventBus share: a daemon thread fed by in-memory buffers, a
sequence number to wait on for "everything before this call is written", bounded shutdown,
and a registry that flushes at interpreter exit and is forgotten in a forked child."""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Subclasses append under ``self._lock`` and bump ``self._seq``; their thread calls
    :meth:`_mark_done` with the sequence number a write covered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._seq = 0  # bumped by every enqueue
        self._done_seq = 0  # everything up to this has been written
        self._done = threading.Condition(threading.Lock())
        self._closed = False
        self.failures = 0
        self.connected = False
        self._thread: threading.Thread | None = None

    def _start(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _live.add(self)

    def _run(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _before_flush(self) -> None:
        """Called under ``self._lock`` by :meth:`flush` (release anything held back)."""

    def _disconnect(self) -> None:
        """Close the connection to the server (thread stopped)."""

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything enqueued before the call is written; False on timeout."""
        with self._lock:
            self._before_flush()
            target = self._seq
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._done:
            while self._done_seq < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return self._done_seq >= target
                self._done.wait(min(left, 0.05))
                self._wake.set()
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush (briefly when the server is away), then stop the thread."""
        if self._closed:
            return
        if self.failures and not self.connected:
            timeout = min(timeout, 1.0)  # do not hold a shutting-down process for long
        self.flush(timeout)
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        try:
            self._disconnect()
        except Exception:
            pass
        _live.discard(self)

    def _mark_done(self, seq: int) -> None:
        with self._done:
            if seq > self._done_seq:
                self._done_seq = seq
            self._done.notify_all()


_live: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()

if hasattr(os, "register_at_fork"):
    # A forked child must not touch its parent's writers: their threads and locks are gone.
    os.register_at_fork(after_in_child=_live.clear)


@atexit.register
def _flush_all_at_exit() -> None:
    for writer in list(_live):
        try:
            writer.close(timeout=5)
        except Exception:
            pass
