"""Tasks the test suite runs on real workers. The pytest process does not install the
tracking hooks at import: tests install and uninstall them explicitly (see conftest)."""

from __future__ import annotations

import logging
import os
import time

from celery import Celery
from celery.exceptions import Reject
from celery.utils.log import get_task_logger

from signals import TrackedTask

app = Celery("tests", broker=os.environ.get("TRACKER_TEST_BROKER_URL", "redis://127.0.0.1:6379/1"))
app.conf.update(
    task_default_queue="tests",
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    task_acks_late=False,
    result_backend=None,
    task_ignore_result=True,
    worker_send_task_events=False,
)

stdlib_logger = logging.getLogger("tests.apps.stdlib")
task_logger = get_task_logger("tests.apps.tasklogger")


@app.task(name="tests.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tests.noop")
def noop() -> None:
    return None


@app.task(name="tests.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(name="tests.retry_once", bind=True, max_retries=3)
def retry_once(self: TrackedTask) -> str:
    if self.request.retries < 1:
        raise self.retry(exc=RuntimeError("flaky"), countdown=0.2)
    return "ok"


@app.task(name="tests.build", base=TrackedTask, bind=True)
def build(self: TrackedTask, n: int, delay: float = 0.01) -> int:
    for _ in self.track(range(n), step="processing"):
        time.sleep(delay)
    self.progress(50, step="verifying", step_index=2, total_steps=3)
    self.progress(current=10, total=40)
    self.log.info("wrote %d rows", 10, context={"table": "x"})
    self.metric("rows_written", 1200, unit="count", labels={"table": "x"})
    stdlib_logger.info("stdlib line %s", 1)
    task_logger.warning("task logger line")
    try:
        raise KeyError("boom")
    except KeyError:
        self.log.exception("handled error")
    return n


@app.task(name="tests.slow", base=TrackedTask, bind=True)
def slow(self: TrackedTask, seconds: float, step: float = 0.05, marker: str | None = None) -> str:
    start = time.monotonic()
    try:
        i = 0
        while time.monotonic() - start < seconds:
            time.sleep(step)
            i += 1
            self.progress(min(99.0, (time.monotonic() - start) * 100.0 / seconds), step="sleeping")
        return "done"
    finally:
        if marker:
            with open(marker, "a") as f:
                f.write("cleanup\n")


@app.task(name="tests.sleep")
def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@app.task(name="tests.hard_limit", time_limit=1)
def hard_limit() -> None:
    time.sleep(10)


@app.task(name="tests.reject", bind=True)
def reject(self: TrackedTask) -> None:
    raise Reject("not for us", requeue=False)


@app.task(name="tests.echo_context", base=TrackedTask, bind=True)
def echo_context(self: TrackedTask) -> dict[str, object]:
    self.progress(10)
    return {"ok": True}


@app.task(name="tests.spawn", bind=True)
def spawn(self: TrackedTask) -> str:
    child = add.apply_async((1, 2), queue=self.request.delivery_info.get("routing_key"))
    return str(child.id)


# -- control, health and canvas (issue 5) -------------------------------------------------------------
class CleanupTask(TrackedTask):  # type: ignore[misc]
    """Appends ``on_cancel`` to the ``marker`` file (a keyword argument) when cancelled."""

    def on_cancel(self, task_id: str, args: object, kwargs: dict[str, object]) -> None:
        marker = kwargs.get("marker")
        if isinstance(marker, str):
            with open(marker, "a") as f:
                f.write("on_cancel\n")


@app.task(name="tests.steps", base=CleanupTask, bind=True)
def steps(self: TrackedTask, n: int, delay: float = 0.05, marker: str | None = None) -> list[int]:
    """Does ``n`` steps, reporting progress after each; returns the steps done, each once."""
    done: list[int] = []
    try:
        for i in range(n):
            time.sleep(delay)
            done.append(i)
            self.progress(current=i + 1, total=n, step=f"step {i + 1}")
        return done
    finally:
        if marker:
            with open(marker, "a") as f:
                f.write("finally\n")


@app.task(name="tests.collect")
def collect(results: list[object]) -> int:
    """A chord body: how many header results arrived."""
    return len(results)


@app.task(name="tests.build_late", base=TrackedTask, bind=True, acks_late=True)
def build_late(self: TrackedTask, n: int) -> int:
    """``build`` acknowledged only after it returns (for durability checks)."""
    for _ in self.track(range(n), step="processing"):
        pass
    self.log.info("late ack task done")
    return n


@app.task(name="tests.feed_steps", base=TrackedTask, bind=True)
def feed_steps(self: TrackedTask, n: int, delay: float = 0.02) -> int:
    """``n`` progress steps (for the live feed tests)."""
    for i in range(1, n + 1):
        time.sleep(delay)
        self.progress(i * 100.0 / n, step=f"step {i}", step_index=i, total_steps=n)
    self.log.info("feed steps done")
    return n


@app.task(name="tests.announce", base=TrackedTask, bind=True)
def announce(self: TrackedTask, title: str) -> int:
    """Sends a custom notification from task code."""
    record = self.notify(title, "rows are ready", type="success", priority="high",
                         metadata={"rows": 3})
    return int(record.id)


@app.task(name="tests.accept")
def accept(*args: object, **kwargs: object) -> int:
    """Takes any arguments (redaction tests); logs a secret under a secret key in ``extra``."""
    secret = kwargs.get("password")
    stdlib_logger.info("accepted %d args", len(args) + len(kwargs),
                       extra={"db_password": secret, "request": {"headers": {"Authorization": secret}}})
    return len(args) + len(kwargs)


@app.task(name="tests.fail_first")
def fail_first(marker: str, label: str = "") -> str:
    """Fails the first time it runs for ``marker`` (a file path), completes every later time (re-run tests)."""
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(label)
        raise RuntimeError(f"first run of {label or marker} fails")
    return f"ok {label}"
