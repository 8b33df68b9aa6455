"""The dashboard's Workers and Queues tabs in a real Chromium, on a gateway started with the
Celery app (``tracker --app ... gateway``) and a real prefork worker: they refresh by
themselves, and the Queues tab draws the depth chart."""

from __future__ import annotations

import uuid

from tests.e2e.test_dashboard import ARTIFACTS, page, sign_in, until  # noqa: F401


def test_workers_and_queues_tabs_are_live(page, gateway_process, tracked_app, make_worker, tracker):  # noqa: F811
    from tests.apps.tasks import add, slow

    gp = gateway_process(extra_env={"TRACKER_QUEUE_SAMPLE_INTERVAL": "0.5"})
    w = make_worker(concurrency=2, extra_env={"TRACKER_HEARTBEAT_INTERVAL": "0.5"})
    sign_in(page, gp.base, "ops-admin", admin=True)

    page.click('.tab[data-view="workers"]')
    assert not page.is_visible("#view-tasks") and page.is_visible("#view-workers")
    row = f'#worker-rows tr[data-hostname="{w.name}"]'
    page.wait_for_selector(row + '[data-status="online"]', timeout=20_000)
    assert page.inner_text(row + " td:nth-child(3)") == "2"  # pool size
    assert w.queue in page.inner_text(row)
    # A task starts: the tab shows it running without a reload; it is cancelled: idle again.
    running = slow.apply_async((60,), {"step": 0.05}, queue=w.queue)
    until(page, f"document.querySelector('{row} .worker-active').textContent === '1'", timeout=20)
    assert running.id in (page.get_attribute(row + " .worker-active", "title") or "")
    tracker.cancel(running.id)
    until(page, f"document.querySelector('{row} .worker-active').textContent === '0'", timeout=20)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-workers.png"), full_page=True)

    queue = f"qd-{uuid.uuid4().hex[:8]}"
    for i in range(5):
        add.apply_async((i, i), queue=queue)  # no worker reads this queue
    page.click('.tab[data-view="queues"]')
    assert page.is_visible("#view-queues") and not page.is_visible("#view-workers")
    qrow = f'#queue-rows tr[data-queue="{queue}"]'
    page.wait_for_selector(qrow, timeout=20_000)
    until(page, f"document.querySelector('{qrow} .queue-depth').textContent === '5'", timeout=20)
    assert "backlog" in (page.get_attribute(qrow + " .queue-depth", "class") or "")  # waiting, nobody consuming
    page.evaluate("window.trackerOps.loadQueueChart()")
    page.wait_for_selector('#chart-queues[data-rendered="true"] .main-svg', timeout=20_000)
    until(page, "document.querySelectorAll('#chart-queues .scatterlayer .trace').length > 0", timeout=20)
    page.screenshot(path=str(ARTIFACTS / "dashboard-queues.png"), full_page=True)

    page.click('.tab[data-view="tasks"]')
    assert page.is_visible("#view-tasks") and not page.is_visible("#view-queues")
