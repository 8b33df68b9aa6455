"""Bad input to the public API gets a clear ValueError/TypeError and writes nothing."""

from __future__ import annotations

import uuid

import pytest

from signals import tracking_context
from tracker.records import TaskRecord


def test_create_task_validates_before_writing(tracker, sql):
    before = sql.execute("SELECT count(*) FROM tracker_tasks").fetchone()[0]
    bad = [
        ({"status": "bogus"}, ValueError),
        ({"status": 3}, TypeError),
        ({"progress": 150}, ValueError),
        ({"progress": -1}, ValueError),
        ({"progress": float("nan")}, ValueError),
        ({"progress": "50"}, TypeError),
        ({"metadata": {"f": object()}}, TypeError),
        ({"metadata": ["not", "a", "dict"]}, TypeError),
        ({"tags": "single-string"}, TypeError),
        ({"total_steps": 0}, ValueError),
    ]
    for kwargs, exc in bad:
        with pytest.raises(exc):
            tracker.create_task(str(uuid.uuid4()), user_id="u", task_type="t", **kwargs)
    tracker.flush(5)
    assert sql.execute("SELECT count(*) FROM tracker_tasks").fetchone()[0] == before


def test_create_task_for_non_celery_producers(tracker):
    task_id = tracker.create_task(user_id="u-np", task_type="skill_creation", task_name="Create skill",
                                  progress=0.0, status="running", total_steps=3, metadata={"k": 1}, tags=["x"])
    tracker.update_progress(task_id, 40.0, current_step="parsing", step_index=1, total_steps=3)
    tracker.add_log(task_id, "INFO", "started parsing", source="api")
    tracker.complete(task_id, result={"ok": True})
    assert tracker.flush(5)
    rec = tracker.get(task_id)
    assert isinstance(rec, TaskRecord)
    assert (rec.status, rec.progress, rec.user_id, rec.name, rec.task_type) == (
        "completed", 100.0, "u-np", "Create skill", "skill_creation")
    assert rec.metadata == {"k": 1} and rec.tags == ["x"] and rec.result == {"ok": True}
    assert [p.progress for p in tracker.progress_history(task_id)] == [40.0]
    assert [entry.message for entry in tracker.logs(task_id=task_id)] == ["started parsing"]
    assert rec.to_dict()["status"] == "completed" and isinstance(rec.to_dict()["updated_at"], str)


def test_query_arguments_are_checked(tracker):
    with pytest.raises(ValueError):
        tracker.tasks(status="nope")
    with pytest.raises(TypeError):
        tracker.tasks(user_id=5)
    with pytest.raises(ValueError):
        tracker.tasks(limit=0)
    with pytest.raises(ValueError):
        tracker.tasks(cursor="not-a-cursor")
    with pytest.raises(ValueError):
        tracker.tasks(since="yesterday-ish")
    with pytest.raises(ValueError):
        tracker.logs(min_level="LOUD")
    with pytest.raises(ValueError):
        tracker.metric_series("x", bucket="0m")
    with pytest.raises(ValueError):
        tracker.metric_series("x", agg="median-ish")
    with pytest.raises(ValueError):
        tracker.stats(group_by="colour")
    with pytest.raises(ValueError):
        tracker.export(fmt="xml")


def test_tracked_task_api_validates_even_outside_a_worker():
    from tests.apps.tasks import build

    for kwargs, exc in [
        ({"percent": 101}, ValueError),
        ({"percent": True}, TypeError),
        ({"current": 5, "total": 0}, ValueError),
        ({"current": 6, "total": 5}, ValueError),
        ({}, ValueError),
        ({"percent": 10, "step": 3}, TypeError),
        ({"percent": 10, "step_index": 4, "total_steps": 3}, ValueError),
        # past progress()'s cheap check, the model still refuses what it always did
        ({"percent": float("nan")}, ValueError),
        ({"percent": "50"}, TypeError),
        ({"current": 1, "total": float("inf")}, ValueError),
        ({"percent": 10, "message": 5}, TypeError),
        ({"percent": 10, "step_index": -1}, ValueError),
        ({"percent": 10, "total_steps": True}, TypeError),
        ({"percent": 10, "current": 1, "total": 2}, ValueError),
    ]:
        with pytest.raises(exc):
            build.progress(**kwargs)
    with pytest.raises(TypeError):
        build.metric("", 1)
    with pytest.raises(ValueError):
        build.metric("m", float("inf"))
    with pytest.raises(TypeError):
        build.log.info("x", context=["not a dict"])
    for attachments in ([{"data": "no name"}], [{"name": "no content"}], ["not a dict"], "not a list"):
        with pytest.raises(TypeError):
            build.log.info("x", attachments=attachments)
    with pytest.raises(TypeError):
        build.metric("m", "1")
    with pytest.raises(TypeError):
        list(build.track([1, 2], total="2"))
    # the accepted forms still pass
    build.progress(25)
    build.progress(current=1, total=4, step="a", step_index=1, total_steps=4, message="m")
    build.log.info("x", context={"k": 1}, attachments=[{"name": "a", "data": b"\x00"}, {"name": "b", "url": "u"}])


def test_tracking_context_rejects_bad_values():
    with pytest.raises(TypeError):
        with tracking_context(user_id=5):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError):
        with tracking_context(tags="one"):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError):
        with tracking_context(metadata={"x": object()}):
            pass
