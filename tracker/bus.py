"""The event bus: appends events to the Redis stream from a background thread.

Publishing only appends to a queue; the thread sends everything queued as one write of
``XADD ... MAXLEN ~`` commands, at most once per ``tick`` under load (a progress report, a
flush or the first event after a quiet spell wake it sooner), and sleeps while idle.
Progress is coalesced per task (at most one event every
``progress_interval``), and the latest value is always sent before any other event of the
same task, so a client never misses the last progress before a status change. The same
thread polls the control keys of the tasks running in this process, so ``progress()``
learns about pause and cancel without a round trip of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

from tracker.background import BackgroundWriter
from tracker.events import Event, xadd_args
from tracker.retry import Backoff

_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:  # the C packer redis-py uses itself when hiredis is installed (the redis[hiredis] extra)
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - redis-py without hiredis
    _pack_command = None

__all__ = ["EventBus"]

logger = logging.getLogger("tracker.bus")

#: (task_id, user_id, ts, progress, current_step, step_index, total_steps, eta_seconds, message)
_Progress = tuple[str, str | None, float, float, str | None, int | None, int | None, float | None, str | None]


def _progress_event(item: _Progress) -> Event:
    task_id, user_id, ts, progress, step, index, total, eta, message = item
    data: dict[str, Any] = {"progress": progress, "current_step": step, "step_index": index, "total_steps": total,
                            "eta_seconds": eta}
    if message is not None:
        data["message"] = message
    return Event("task.progress", task_id, user_id, ts, data)


class EventBus(BackgroundWriter):
    """Buffered, coalescing publisher to ``{prefix}:events``; methods never raise."""

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "tracker",
        maxlen: int = 100_000,
        progress_interval: float = 0.1,
        control_interval: float = 0.2,
        buffer_max: int = 100_000,
        name: str = "tracker-bus",
    ) -> None:
        super().__init__()
        self.redis_url = redis_url
        self.prefix = prefix
        self.stream = f"{prefix}:events"
        self.maxlen = maxlen
        self.progress_interval = progress_interval
        self.control_interval = control_interval
        self.buffer_max = buffer_max
        #: Shortest gathering of events before a send (the first events after a quiet spell).
        self.linger = 0.002
        #: Lifecycle events are sent at most this long after they were published, in one
        #: write per tick under load. Each send cycle (wake, write, read the replies, sleep)
        #: has a fixed cost of a few hundred microseconds of CPU: at 20 ms that was most of the
        #: bus's cost per task in a pool process. 50 ms stays well inside the Recorder's
        #: flush interval; progress events do not wait for it (feed latency is unchanged).
        self.tick = 0.05
        #: Longest sleep of an idle sender thread with no control keys to poll.
        self.idle_wait = 1.0
        self._idle = False
        self._queue: deque[Event | _Progress] = deque()
        self._last_progress: dict[str, float] = {}
        self._held: dict[str, _Progress] = {}  # coalesced progress waiting for its slot
        self._client: redis.Redis | None = None
        self._send_conn: Any = None  # a redis Connection of the client's pool (see _send_commands)
        #: Pause between tries while Redis is away (events keep buffering meanwhile).
        self._backoff = Backoff(first=0.05, most=2.0)
        #: task id -> control value ("pause", "cancel" or None) for tasks running here.
        self.controls: dict[str, str | None] = {}
        #: Task ids with a ``cancel`` flag, followed from ``{prefix}:controls`` once
        #: :meth:`follow_cancellations` was called (a worker's main process does).
        self.cancelled: dict[str, float] = {}
        self._follow = False
        self._on_cancel: Callable[[str], None] | None = None
        self._follow_from = 0.0
        self._follow_seen: dict[str, float] = {}
        self._to_clear: set[str] = set()
        self.control_changed = threading.Condition(threading.Lock())
        self.dropped = 0
        self.sent = 0
        self._start(name)

    # -- publishing (hot path) ---------------------------------------------------------
    def publish(self, type: str, task_id: str | None, user_id: str | None, data: dict[str, Any],
                ts: float | None = None) -> None:
        event = Event(type, task_id, user_id, time.time() if ts is None else ts, data)
        with self._lock:
            if task_id is not None:
                held = self._held.pop(task_id, None)
                if held is not None:
                    self._enqueue(held)
                self._last_progress.pop(task_id, None)
            self._enqueue(event)
        # Lifecycle events ride the sender's next tick (at most ``tick`` seconds away): waking
        # it for each one would cost more than the event. Progress wakes it (latency target),
        # and so does the first event for an idle sender (it sleeps longer than a tick).
        if self._idle:
            self._idle = False
            self._wake.set()

    def progress(self, task_id: str, user_id: str | None, ts: float, progress: float,
                 current_step: str | None = None, step_index: int | None = None, total_steps: int | None = None,
                 eta_seconds: float | None = None, message: str | None = None) -> None:
        """Coalesced: at most one event per task every ``progress_interval``; the latest value
        waits for its slot (and is sent before any other event of the task)."""
        now = time.monotonic()
        # A plain tuple here; the sender thread builds the event (keeps this call cheap).
        item = (task_id, user_id, ts, progress, current_step, step_index, total_steps, eta_seconds, message)
        with self._lock:
            if now - self._last_progress.get(task_id, -1e9) >= self.progress_interval:
                self._last_progress[task_id] = now
                self._held.pop(task_id, None)
                self._enqueue(item)
                wake = True
            else:
                self._held[task_id] = item
                wake = False
        if wake:
            # Always, not only while the sender sleeps: a report landing mid-send would
            # otherwise wait for the next tick (up to 50 ms, the feed's p99). This runs once per
            # task per progress_interval, not per call.
            self._wake.set()

    def _enqueue(self, event: Event | _Progress) -> None:
        if len(self._queue) >= self.buffer_max:
            self.dropped += 1
            return
        self._queue.append(event)
        self._seq += 1

    def _before_flush(self) -> None:
        for held in self._held.values():
            self._enqueue(held)
        self._held.clear()

    def _disconnect(self) -> None:
        self._drop_client()

    # -- control ---------------------------------------------------------------------------
    def watch_control(self, task_id: str) -> None:
        self.controls.setdefault(task_id, None)

    def unwatch_control(self, task_id: str) -> None:
        self.controls.pop(task_id, None)

    def wait_control_change(self, timeout: float) -> None:
        with self.control_changed:
            self.control_changed.wait(timeout)

    def clear_control(self, task_id: str) -> None:
        """Delete the control flag of a task that has ended (from the sender thread)."""
        with self._lock:
            self._to_clear.add(task_id)
        self._wake.set()

    def follow_cancellations(self, on_cancel: Callable[[str], None] | None = None) -> None:
        """Keep :attr:`cancelled` up to date (every ``control_interval``).

        ``on_cancel(task_id)`` is called (from the sender thread) for each newly seen cancel.
        The first call loads the current flags at once, so a worker's first task is already
        covered; later calls do nothing.
        """
        if self._follow:
            return
        self._on_cancel = on_cancel
        self._follow_from = time.time() - _CONTROL_TTL
        try:
            self._poll_cancellations()
        except Exception:
            logger.debug("tracker bus: cannot read cancellations yet", exc_info=True)
        self._follow = True

    def stats(self) -> dict[str, Any]:
        return {"buffered": len(self._queue) + len(self._held), "dropped": self.dropped, "sent": self.sent,
                "failures": self.failures, "connected": self.connected}

    # -- the sender thread -------------------------------------------------------------------
    def _run(self) -> None:
        next_control = 0.0
        last_send = 0.0
        while True:
            now = time.monotonic()
            polling = bool(self.controls or self._follow)
            if self._backoff.delay:
                timeout = self._backoff.delay
            elif self._queue:
                # Lifecycle events gather for up to a tick after the previous send: one pipeline
                # per tick under load, not one per event or two (a progress report ends the wait).
                timeout = max(self.linger, last_send + self.tick - now)
            elif self._held:
                timeout = min(self.tick, self.progress_interval / 2)
            else:
                # Nothing to send: sleep until the next control poll (or long); the first event
                # published meanwhile wakes this thread (see publish). An idle thread waking every
                # tick cost the process it lives in (the worker's dispatching main process).
                timeout = max(0.0, next_control - now) if polling else self.idle_wait
                self._idle = True
            # Lifecycle publishers set the event only while this thread is idle (setting it per
            # event costs more than the event): announce idleness, then look at the queue once more.
            idle = self._idle
            if not (idle and self._queue):
                self._wake.wait(timeout)
            # Woken from idleness by a publisher (it cleared the flag): gather for a moment
            # (the loop's next wait) instead of sending that one event alone.
            by_publisher = idle and not self._idle
            self._idle = False
            self._wake.clear()
            closing = self._closed
            if by_publisher and not closing:
                continue
            try:
                self._release_held()
                sent = self.sent
                self._send()
                if self.sent > sent:
                    last_send = time.monotonic()
                if self._to_clear:
                    self._clear_controls()
                if (self.controls or self._follow) and time.monotonic() >= next_control:
                    next_control = time.monotonic() + self.control_interval
                    if self.controls:
                        self._poll_controls()
                    if self._follow:
                        self._poll_cancellations()
            except Exception:
                logger.exception("tracker bus: unexpected error")
            if closing:
                return

    def _release_held(self) -> None:
        if not self._held:
            return
        now = time.monotonic()
        with self._lock:
            for task_id in list(self._held):
                if now - self._last_progress.get(task_id, -1e9) >= self.progress_interval:
                    self._last_progress[task_id] = now
                    self._enqueue(self._held.pop(task_id))

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.redis_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=0
            )
        return self._client

    def _send(self) -> None:
        with self._lock:
            seq = self._seq
            batch = list(self._queue)
        if not batch:
            self._mark_done(seq)
            return
        try:
            stream, maxlen = self.stream, self.maxlen
            # Each command as a whole (tracker.events.xadd_args): the fields of encode(event).
            self._send_commands([xadd_args(stream, maxlen, item if isinstance(item, Event) else _progress_event(item))
                                 for item in batch])
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self.failures += 1
            if self.connected or self.failures == 1:
                logger.warning("tracker bus: cannot reach Redis (%s); buffering events", exc)
            self.connected = False
            self._backoff.failed()
            self._drop_client()
            return
        with self._lock:
            for _ in range(len(batch)):
                self._queue.popleft()
        if not self.connected and self.failures:
            logger.warning("tracker bus: Redis is back; %d buffered events sent", len(batch))
        self.connected = True
        self._backoff.reset()
        self.sent += len(batch)
        self._mark_done(seq)

    def _send_commands(self, commands: list[tuple[Any, ...]]) -> None:
        """Send ``commands`` in one write and read their replies, on this thread's connection.

        What a non-transactional pipeline does, minus its per-command bookkeeping, which cost
        more than the XADDs themselves for the few events of one tick. A connection error
        propagates; any error leaves replies unread, so that connection is closed.
        """
        conn = self._send_conn
        if conn is None:
            # This thread's own connection, kept across sends: checking one out of the pool and
            # back per send cost more than the send (pid checks, a socket poll, bookkeeping).
            conn = self._send_conn = self._redis().connection_pool.make_connection()
        try:
            if _pack_command is not None:
                payload: list[bytes] = [b"".join([_pack_command(c) for c in commands])]
            else:
                payload = conn.pack_commands(commands)
            conn.send_packed_command(payload, check_health=False)  # connects when needed
            for _ in commands:
                conn.read_response()  # raises the error reply of a failed command
        except BaseException:
            conn.disconnect()  # replies may be left unread: start afresh next time
            raise

    def _poll_controls(self) -> None:
        ids = list(self.controls)
        try:
            values = self._redis().mget([f"{self.prefix}:control:{i}" for i in ids])
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._drop_client()
            return
        changed = False
        for task_id, raw in zip(ids, values, strict=True):
            value = raw.decode() if isinstance(raw, bytes) else raw
            if task_id in self.controls and self.controls[task_id] != value:
                self.controls[task_id] = value
                changed = True
        if changed:
            with self.control_changed:
                self.control_changed.notify_all()

    def _clear_controls(self) -> None:
        with self._lock:
            ids, self._to_clear = self._to_clear, set()
        try:
            pipe = self._redis().pipeline(transaction=False)
            for task_id in ids:
                pipe.delete(f"{self.prefix}:control:{task_id}")
            pipe.zrem(f"{self.prefix}:controls", *ids)
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            # The sweeper deletes flags of ended tasks too; nothing is lost by giving up.
            self._drop_client()

    def _poll_cancellations(self) -> None:
        """Read flags set since the last look from the index and remember the cancels."""
        index = f"{self.prefix}:controls"
        try:
            client = self._redis()
            # Scores are the setters' clocks: look a little back so a skewed clock loses nothing.
            entries: list[Any] = client.zrangebyscore(
                index, self._follow_from, "+inf", start=0, num=_FOLLOW_PAGE, withscores=True)
            fresh = []
            for member, score in entries:
                task_id = member.decode() if isinstance(member, bytes) else str(member)
                if self._follow_seen.get(task_id) != score:
                    fresh.append((task_id, float(score)))
            values = client.mget([f"{self.prefix}:control:{t}" for t, _ in fresh]) if fresh else []
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._drop_client()
            return
        for (task_id, score), raw in zip(fresh, values, strict=True):
            self._follow_seen[task_id] = score
            if raw in (b"cancel", "cancel"):
                new = task_id not in self.cancelled
                self.cancelled[task_id] = score
                if new and self._on_cancel is not None:
                    try:
                        self._on_cancel(task_id)
                    except Exception:
                        logger.exception("tracker bus: cancellation callback failed")
            else:
                self.cancelled.pop(task_id, None)
        if entries:
            top = float(entries[-1][1])
            self._follow_from = top if len(entries) >= _FOLLOW_PAGE else max(self._follow_from, top - 5.0)
        for task_id in [t for t, sc in self._follow_seen.items() if sc < self._follow_from]:
            del self._follow_seen[task_id]
        while len(self.cancelled) > _FOLLOW_MAX:
            del self.cancelled[next(iter(self.cancelled))]

    def _drop_client(self) -> None:
        if self._send_conn is not None:
            try:
                self._send_conn.disconnect()
            except Exception:
                pass
            self._send_conn = None
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None


#: How far back a new follower looks (the control flags' lifetime, see tracker.control).
_CONTROL_TTL = 7 * 86400
_FOLLOW_PAGE = 5000
_FOLLOW_MAX = 100_000
