"""Canvas: parent/root/group ids of groups, chords and chains, and their combined progress."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import chain, chord, group

from tests.conftest import wait_for
from tracker import queries


def _all_finished(tracker: Any, ids: list[str]) -> bool:
    return all((r := tracker.get(i)) is not None and r.status in ("completed", "failed", "cancelled") for i in ids)


def test_group_of_ten_reaches_100_exactly_when_all_finish(tracked_app: Any, worker: Any, tracker: Any) -> None:
    from tests.apps.tasks import steps

    res = group(steps.s(10, 0.05) for _ in range(10)).apply_async(queue=worker.queue)
    member_ids = [r.id for r in res.results]
    samples: list[tuple[dict[str, Any], dict[str, Any], bool]] = []
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "the group did not finish"
        sized = tracker.group_progress(res.id, size=10)
        known = tracker.group_progress(res.id)
        finished = _all_finished(tracker, member_ids)  # read after: a finished member stays finished
        samples.append((sized, known, finished))
        if sized.done:
            break
        time.sleep(0.05)

    for sized, known, finished_after in samples:
        for summary in (sized, known):
            if summary.progress == 100.0 or summary.done:
                # 100 means every member has finished, and every member really has.
                assert summary.done and summary.progress == 100.0
                assert summary.counts["completed"] == summary.total
                assert finished_after
            else:
                assert summary.progress <= queries.GROUP_PROGRESS_CAP
                assert summary.finished < summary.total or summary.total == 0  # not recorded yet
        assert sized.total == 10
    sized_values = [s.progress for s, _, _ in samples]
    assert sized_values == sorted(sized_values)  # combined progress only moves forward
    assert any(0 < v < 100 for v in sized_values), "combined progress moved through the middle"
    final = tracker.group_progress(res.id)
    assert final.progress == 100.0 and final.done
    assert final.total == 10 and final.counts["completed"] == 10 and final.counts["running"] == 0
    members = tracker.tasks(group_id=res.id)
    assert sorted(r.task_id for r in members) == sorted(member_ids)
    assert all(r.group_id == res.id and r.root_id == r.task_id and r.parent_id is None for r in members)


def test_chain_members_share_the_root(tracked_app: Any, worker: Any, tracker: Any) -> None:
    from tests.apps.tasks import steps

    res = chain(steps.si(4, 0.05).set(queue=worker.queue) for _ in range(3)).apply_async()
    ids = [res.parent.parent.id, res.parent.id, res.id]
    wait_for(lambda: _all_finished(tracker, ids), timeout=30, what="chain finished")
    first, second, third = (tracker.get(i) for i in ids)
    assert first.root_id == first.task_id and first.parent_id is None
    assert second.root_id == third.root_id == first.task_id
    assert second.parent_id == first.task_id and third.parent_id == second.task_id
    summary = tracker.group_progress(first.task_id, size=3)
    assert summary.progress == 100.0 and summary.done and summary.counts["completed"] == 3


def test_chain_progress_is_not_done_before_its_last_task(tracked_app: Any, worker: Any, tracker: Any) -> None:
    from tests.apps.tasks import steps

    res = chain(steps.si(20, 0.05).set(queue=worker.queue) for _ in range(2)).apply_async()
    first_id = res.parent.id
    seen = []
    deadline = time.monotonic() + 30
    while (last := tracker.get(res.id)) is None or last.status != "completed":
        assert time.monotonic() < deadline
        summary = tracker.group_progress(first_id)  # no size: only the members recorded so far
        last_done = (r := tracker.get(res.id)) is not None and r.status == "completed"
        seen.append(summary.progress)
        # The next task is recorded (pending) before the previous one is recorded completed.
        assert summary.done is False or last_done
        time.sleep(0.05)
    assert any(0 < p < 100 for p in seen)
    assert tracker.group_progress(first_id).progress == 100.0


@pytest.fixture()
def result_backend(tracked_app: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Chords need a result backend: a Redis database of its own, for this test only."""
    url = redis_url.rsplit("/", 1)[0] + "/2"
    monkeypatch.setenv("CELERY_RESULT_BACKEND", url)  # read by Celery before its settings
    tracked_app._local.__dict__.pop("backend", None)
    yield url
    gc.collect()  # results unsubscribe from the backend while Redis is still there
    tracked_app._local.__dict__.pop("backend", None)


def test_chord_header_and_body_are_one_group(tracked_app: Any, make_worker: Any, tracker: Any,
                                              result_backend: str) -> None:
    from tests.apps.tasks import collect, steps

    w = make_worker(concurrency=2, extra_env={"CELERY_RESULT_BACKEND": result_backend})
    header = [steps.s(4, 0.05).set(ignore_result=False) for _ in range(3)]
    res = chord(header, collect.s().set(queue=w.queue, ignore_result=False)).apply_async(queue=w.queue)
    group_id = res.parent.id
    header_ids = [r.id for r in res.parent.results]
    body = wait_for(lambda: (r := tracker.get(res.id)) is not None and r.status == "completed" and r, timeout=30,
                    what="chord body completed")
    assert body.result == 3
    assert body.group_id == group_id and body.parent_id in header_ids
    for task_id in header_ids:
        # Each pool process commits its own states (within the flush interval): a header's last
        # state can land just after the body's on a loaded machine.
        rec = wait_for(lambda t=task_id: (r := tracker.get(t)) is not None and r.status == "completed" and r,
                       timeout=10, what=f"header {task_id} completed")
        assert rec.group_id == group_id
    summary = tracker.group_progress(group_id)
    assert summary.total == 4 and summary.counts["completed"] == 4  # header and body together
    assert summary.progress == 100.0 and summary.done
    # Collecting the results also lets Celery drop its subscriptions to them.
    assert res.get(timeout=10) == 3
    assert res.parent.get(timeout=10) == [[0, 1, 2, 3]] * 3


def test_group_progress_input_and_empty_groups(tracker_env: dict[str, str], tracker: Any) -> None:
    empty = tracker.group_progress("no-such-group")
    assert empty.total == 0 and empty.progress == 0.0 and not empty.done
    assert tracker.group_progress("no-such-group", size=4).counts["pending"] == 4
    with pytest.raises(TypeError):
        tracker.group_progress(42)
    with pytest.raises(ValueError):
        tracker.group_progress("")
    with pytest.raises(ValueError):
        tracker.group_progress("g", size=-1)
    # A REST-reported group: finished members count 100, the rest their own progress.
    gid = "rest-group-" + str(time.time())
    a = tracker.create_task(task_type="part", status="running", progress=40.0)
    b = tracker.create_task(task_type="part", status="completed")
    tracker.flush()
    tracker.engine.dispose()
    from sqlalchemy import update

    from tracker.models import Task

    with tracker.engine.begin() as conn:
        conn.execute(update(Task).where(Task.task_id.in_([a, b])).values(group_id=gid))
    summary = tracker.group_progress(gid)
    assert summary.total == 2 and summary.progress == pytest.approx(70.0) and not summary.done
    assert summary.counts == {"pending": 0, "running": 1, "paused": 0, "completed": 1, "failed": 0,
                              "cancelled": 0}
    assert tracker.group_progress(gid, size=4).progress == pytest.approx(35.0)
    # A frozen record like the others; to_dict() is the JSON the summary always had.
    with pytest.raises(AttributeError):
        summary.progress = 0.0  # type: ignore[misc]
    assert summary.updated_at is not None
    assert summary.to_dict() == {"group_id": gid, "total": 2, "finished": 1, "done": False,
                                 "progress": summary.progress, "counts": summary.counts,
                                 "updated_at": summary.updated_at.isoformat()}
