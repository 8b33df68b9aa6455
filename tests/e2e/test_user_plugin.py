"""A user's own test of a tracked task, written the way the README's "Testing your tasks" shows:
only the installed plugin's fixtures (``track_app``), eager mode, and a TrackedTask that reports
progress, logs and a metric. The wheel smoke runs the same file against the installed package."""

from __future__ import annotations

from celery import Celery

from signals import TrackedTask, tracking_context

app = Celery("user_proj", broker="memory://")
app.conf.task_always_eager = True  # what most projects' unit tests use


@app.task(base=TrackedTask, bind=True, name="user_proj.import_rows")
def import_rows(self, rows: int) -> int:
    for _ in self.track(range(rows), step="importing"):
        pass
    self.log.info("imported %d rows", rows)
    self.metric("rows_imported", rows, unit="count")
    return rows


@app.task(base=TrackedTask, bind=True, name="user_proj.broken")
def broken(self) -> None:
    self.progress(30, step="parsing")
    raise ValueError("bad header")


def test_eager_task_is_tracked(track_app):
    tracked = track_app(app)
    with tracking_context(user_id="u-1", tags=["nightly"]):
        result = import_rows.delay(20)
    assert result.get() == 20
    tracked.flush()

    record = tracked.tracker.get(result.id)
    assert record is not None
    assert record.status == "completed" and record.progress == 100.0
    assert record.user_id == "u-1" and record.tags == ["nightly"]
    assert record.name == "user_proj.import_rows" and record.result == 20
    assert [log.message for log in tracked.tracker.logs(task_id=result.id)] == ["imported 20 rows"]
    assert [m.value for m in tracked.tracker.metrics(name="rows_imported", task_id=result.id)] == [20.0]
    points = tracked.tracker.progress_history(result.id)
    assert points and points[-1].progress == 100.0 and points[-1].current_step == "importing"


def test_eager_failure_is_tracked(track_app):
    tracked = track_app(app)
    result = broken.apply()
    assert result.failed()
    tracked.flush()
    record = tracked.tracker.get(result.id)
    assert record is not None
    assert record.status == "failed" and record.error_type == "ValueError" and record.error_message == "bad header"
    assert record.progress == 30.0 and record.current_step == "parsing"
