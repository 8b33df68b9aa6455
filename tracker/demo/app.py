"""The example project behind ``tracker demo``: a small but realistic Celery app.

Shipped inside the package, so ``tracker demo`` works wherever celery-tracking is installed.
Run a worker with ``celery -A tracker.demo.app worker`` and publish :func:`submit_workload`
from any process; every task is recorded (``signals.install``), the ``TrackedTask`` ones
also report progress with steps, logs and metrics. Settings come from the environment:
``TRACKER_DATABASE_URL``, ``TRACKER_REDIS_URL`` and ``TRACKER_DEMO_BROKER_URL`` (defaults to
database 1 of the tracker's Redis). ``TRACKER_DEMO_SCALE`` (or the ``scale`` argument of
:func:`submit_workload`) stretches or shortens how long the tasks take.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, group
from celery.result import GroupResult
from celery.utils.log import get_task_logger

import signals
from signals import TrackedTask, tracking_context

__all__ = ["app", "broker_url", "submit_workload", "Submission", "QUEUE", "EXPECTED_FAILURES"]

QUEUE = "tracker-demo"
#: Task names that are meant to end ``failed`` (everything else should complete).
EXPECTED_FAILURES = frozenset({"demo.export_report"})


def broker_url() -> str:
    """The broker: ``TRACKER_DEMO_BROKER_URL``, else another database of the tracker's Redis."""
    explicit = os.environ.get("TRACKER_DEMO_BROKER_URL")
    if explicit:
        return explicit
    base = os.environ.get("TRACKER_REDIS_URL", "redis://127.0.0.1:6379/0")
    head, _, db = base.rpartition("/")
    if head.startswith("redis") and db.isdigit():
        # Keep Celery's keys out of the database that holds the event stream.
        return f"{head}/{1 if db != '1' else 2}"
    return base


app = Celery("demo", broker=broker_url())
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
    # Notify the owner of a failed task in-app (the websocket channel needs no set-up).
    tracker_notifications=[{"on": ["failed"], "channels": ["websocket"], "priority": "high"}],
)
signals.install(app)

# Not under "tracker.": the tracker's own loggers are never captured into task logs.
logger = logging.getLogger("demo")
task_logger = get_task_logger("demo.tasks")


def _scale() -> float:
    try:
        return max(0.01, float(os.environ.get("TRACKER_DEMO_SCALE", "1")))
    except ValueError:
        return 1.0


def _nap(seconds: float) -> None:
    time.sleep(seconds * _scale())


# -- tasks ------------------------------------------------------------------------------------------
@app.task(name="demo.import_csv", base=TrackedTask, bind=True)
def import_csv(self: TrackedTask, filename: str, rows: int = 40) -> dict[str, Any]:
    """Three named steps: parse (with ``track``), validate, save."""
    self.log.info("importing %s (%d rows)", filename, rows, context={"file": filename})
    parsed = []
    for i in self.track(range(rows), step="parsing"):
        _nap(0.05)
        parsed.append({"row": i, "amount": round(random.uniform(1, 500), 2)})
    self.progress(60, step="validating", step_index=2, total_steps=3)
    bad = [r for r in parsed if r["amount"] > 480]
    if bad:
        self.log.warning("%d rows look suspicious", len(bad), context={"rows": [r["row"] for r in bad][:10]})
    _nap(0.5)
    self.progress(80, step="saving", step_index=3, total_steps=3)
    _nap(0.5)
    self.metric("rows_imported", len(parsed), unit="count", labels={"file": filename})
    self.metric("import.amount_total", sum(r["amount"] for r in parsed), unit="eur")
    self.log.info("saved %d rows", len(parsed))
    return {"file": filename, "rows": len(parsed), "suspicious": len(bad)}


@app.task(name="demo.resize_images", base=TrackedTask, bind=True)
def resize_images(self: TrackedTask, album: str, count: int = 12) -> int:
    """Progress as ``current`` of ``total`` and a metric per item."""
    for i in range(count):
        started = time.monotonic()
        _nap(0.15)
        self.progress(current=i + 1, total=count, step=f"image {i + 1}/{count}")
        self.metric("image.resize_seconds", time.monotonic() - started, unit="seconds", labels={"album": album})
    # Stdlib and Celery task loggers inside a task are captured as well.
    logger.info("album %s: %d images resized", album, count)
    return count


@app.task(name="demo.nightly_backup", base=TrackedTask, bind=True)
def nightly_backup(self: TrackedTask, databases: list[str]) -> list[str]:
    """A longer job with one step per database; honours pause and cancel."""
    done = []
    for index, db in enumerate(databases, start=1):
        self.progress((index - 1) * 100.0 / len(databases), step=f"dumping {db}", step_index=index,
                      total_steps=len(databases))
        for _ in range(8):
            _nap(0.1)
            self.checkpoint()
        size = random.randint(10, 900)
        self.metric("backup.size_mb", size, unit="MB", labels={"database": db})
        self.log.info("dumped %s (%d MB)", db, size, context={"database": db})
        done.append(db)
    return done


@app.task(name="demo.export_report", base=TrackedTask, bind=True)
def export_report(self: TrackedTask, report: str) -> None:
    """Fails halfway: the failure, its traceback and the logs before it are all stored."""
    self.progress(20, step="querying", step_index=1, total_steps=2)
    _nap(0.4)
    self.progress(45, step="rendering", step_index=2, total_steps=2)
    try:
        {"columns": []}["rows"]
    except KeyError:
        self.log.exception("template %s has no rows section", report)
    raise ValueError(f"report {report!r}: template is missing the 'rows' section")


@app.task(name="demo.sync_crm", base=TrackedTask, bind=True, max_retries=3)
def sync_crm(self: TrackedTask, account: str) -> str:
    """Times out once talking to the (imaginary) CRM, then succeeds on the retry."""
    self.progress(30, step="connecting")
    _nap(0.3)
    if self.request.retries == 0:
        self.log.warning("CRM timed out for %s; retrying", account)
        raise self.retry(exc=TimeoutError("CRM did not answer in 5 s"), countdown=1.0 * _scale())
    self.progress(90, step="uploading")
    _nap(0.3)
    task_logger.info("synced %s", account)
    return f"synced {account}"


@app.task(name="demo.thumbnail", base=TrackedTask, bind=True)
def thumbnail(self: TrackedTask, image: int) -> str:
    """One member of a group."""
    for pct in (25, 50, 75):
        _nap(0.1)
        self.progress(pct, step="thumbnail")
    self.metric("thumbnail.bytes", 1000 + image * 37, unit="bytes")
    return f"thumb-{image}.png"


@app.task(name="demo.send_email")
def send_email(to: str, subject: str) -> str:
    """A plain Celery task (no TrackedTask): its lifecycle is tracked all the same."""
    _nap(0.2)
    task_logger.info("email %r sent to %s", subject, to)
    return to


# -- the workload -----------------------------------------------------------------------------------
@dataclass
class Submission:
    """What :func:`submit_workload` published."""

    run_tag: str
    task_ids: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    group_id: str | None = None

    def add(self, task_id: str, name: str) -> None:
        self.task_ids.append(task_id)
        self.names[task_id] = name

    def expected_status(self, task_id: str) -> str:
        return "failed" if self.names.get(task_id) in EXPECTED_FAILURES else "completed"


def _ids(results: Iterable[Any]) -> list[str]:
    return [str(r.id) for r in results]


def submit_workload(run_tag: str, queue: str = QUEUE, thumbnails: int = 6) -> Submission:
    """Publish one wave of the example workload; every task carries the tag ``run_tag``."""
    sub = Submission(run_tag)
    with tracking_context(user_id="alice", tags=["import", run_tag], metadata={"source": "demo"}):
        for name in ("customers.csv", "orders.csv"):
            sub.add(import_csv.apply_async((name,), queue=queue).id, import_csv.name)
    with tracking_context(user_id="bob", tags=["media", run_tag]):
        sub.add(resize_images.apply_async(("holiday",), queue=queue).id, resize_images.name)
        g = group(thumbnail.s(i) for i in range(thumbnails)).apply_async(queue=queue)
        sub.group_id = str(g.id)
        # A group publishes a GroupResult (the stubs type apply_async as returning an AsyncResult).
        for task_id in _ids(g.results if isinstance(g, GroupResult) else [g]):
            sub.add(task_id, thumbnail.name)
    with tracking_context(user_id="ops", tags=["maintenance", run_tag]):
        sub.add(nightly_backup.apply_async((["users", "billing", "analytics"],), queue=queue).id,
                nightly_backup.name)
    with tracking_context(user_id="carol", tags=["reports", run_tag]):
        sub.add(export_report.apply_async(("quarterly",), queue=queue).id, export_report.name)
        sub.add(sync_crm.apply_async(("acme",), queue=queue).id, sync_crm.name)
        sub.add(send_email.apply_async(("carol@example.com", "Your reports"), queue=queue).id, send_email.name)
    return sub
