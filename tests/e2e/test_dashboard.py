"""The dashboard in a real Chromium (Playwright, Debian's chromium): live progress from real
workers without reloading, charts, cancel from the page, the notification bell, and the
disconnected banner across a gateway restart. Screenshots are kept under ``artifacts/``."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, make_token, wait_for

ARTIFACTS = ROOT / "artifacts"


@pytest.fixture()
def page(browser) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.errors = errors  # type: ignore[attr-defined]
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def until(page: Any, script: str, timeout: float = 15.0) -> Any:
    """Poll a JS expression from Python (``wait_for_function`` would need 'unsafe-eval', which the
    page's Content-Security-Policy rightly refuses)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = page.evaluate(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {script}: last={value!r}")


def sign_in(page: Any, base: str, user: str, admin: bool = False) -> None:
    page.goto(base + "/")
    page.wait_for_selector("#token-input", state="visible")
    page.fill("#token-input", make_token(user, admin=admin))
    page.click("#login-button")
    page.wait_for_selector("#app", state="visible")
    until(page, "document.getElementById('conn').textContent === 'live'")
    until(page, "window.trackerDashboard.state.snapshots > 0")  # subscribed: live events reach the page


def row(page: Any, task_id: str) -> str:
    return f'tr[data-task-id="{task_id}"]'


def row_status(page: Any, task_id: str) -> str | None:
    return page.get_attribute(row(page, task_id), "data-status")


def test_live_progress_chart_and_cancel(page, gateway_process, tracked_app, worker, tracker):
    from signals import tracking_context
    from tests.apps.tasks import slow, steps

    gp = gateway_process()
    user = f"dash-{uuid.uuid4().hex[:6]}"
    sign_in(page, gp.base, user)
    page.evaluate("window.__sameDocument = 'yes'")  # gone if the page ever reloads

    with tracking_context(user_id=user):
        res = steps.apply_async((30,), {"delay": 0.1}, queue=worker.queue)
    page.wait_for_selector(row(page, res.id), timeout=20_000)
    bar = row(page, res.id) + " .bar"
    seen: list[float] = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        seen.append(float(page.get_attribute(bar, "aria-valuenow") or 0))
        if seen[-1] >= 100 and row_status(page, res.id) == "completed":
            break
        time.sleep(0.1)
    assert seen[-1] == 100.0 and row_status(page, res.id) == "completed", seen[-10:]
    assert any(0 < v < 100 for v in seen), seen  # it advanced on the page, not just jumped to the end
    assert sorted(seen) == seen  # and only forwards
    assert page.inner_text(row(page, res.id) + " .progress-text") == "100%"
    assert page.evaluate("window.__sameDocument") == "yes"

    # The task's detail: logs and its progress chart.
    page.click(row(page, res.id) + " .task-name")
    page.wait_for_selector("#detail-chart .main-svg", timeout=15_000)
    assert page.inner_text("#detail-id") == res.id
    assert "step 30" in page.inner_text("#detail-fields")

    # Cancel a running task from the page.
    with tracking_context(user_id=user):
        running = slow.apply_async((60,), {"step": 0.05}, queue=worker.queue)
    page.wait_for_selector(row(page, running.id) + '[data-status="running"]', timeout=20_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(row(page, running.id) + ' button[data-action="cancel"]')
    page.wait_for_selector(row(page, running.id) + '[data-status="cancelled"]', timeout=20_000)
    record = wait_for(lambda: (lambda r: r if r and r.status == "cancelled" else None)(tracker.get(running.id)), 20)
    assert record.progress < 99
    assert page.query_selector(row(page, running.id) + " button[data-action]") is None  # nothing left to do

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-tasks.png"), full_page=True)

    # Charts from the REST API, drawn by the bundled plotly.min.js.
    page.click('.tab[data-view="charts"]')
    page.wait_for_selector('#chart-status[data-rendered="true"] .main-svg', timeout=20_000)
    page.wait_for_selector('#chart-heatmap[data-rendered="true"] .main-svg', timeout=20_000)
    page.wait_for_selector('#chart-performance[data-rendered="true"] .main-svg', timeout=20_000)
    assert page.locator("#chart-status .slice").count() >= 2  # completed and cancelled
    assert "Status of 2 tasks" in page.inner_text("#chart-status")
    page.screenshot(path=str(ARTIFACTS / "dashboard-charts.png"), full_page=True)
    assert (ARTIFACTS / "dashboard-tasks.png").stat().st_size > 10_000


def test_bad_token_is_refused_and_bell_counts_notifications(page, gateway_process, sql, rdb):
    from tracker.events import Event, encode

    gp = gateway_process()
    page.goto(gp.base + "/")
    page.fill("#token-input", "not-a-token")
    page.click("#login-button")
    page.wait_for_selector("#login-error", state="visible")
    assert "not a token" in page.inner_text("#login-error")
    forged = make_token("x")[:-4] + "AAAA"
    page.fill("#token-input", forged)
    page.click("#login-button")
    until(page, "document.getElementById('login-error').textContent.includes('refused')")

    user = f"bell-{uuid.uuid4().hex[:6]}"
    sql.execute("INSERT INTO tracker_notifications (user_id, title, message, type, priority) "
                "VALUES (%s, 'Import failed', 'disk full', 'error', 'high')", (user,))
    sign_in(page, gp.base, user)
    page.wait_for_selector("#unread:not([hidden])")
    assert page.inner_text("#unread") == "1"

    # A notification delivered live on the feed (as the notifier's websocket channel does).
    row_ = sql.execute("INSERT INTO tracker_notifications (user_id, title, message, type, priority) "
                       "VALUES (%s, 'Report ready', 'all good', 'success', 'normal') RETURNING id, created_at",
                       (user,)).fetchone()
    payload = {"id": row_[0], "user_id": user, "title": "Report ready", "message": "all good", "type": "success",
               "priority": "normal", "channels": ["websocket"], "task_id": None, "action_url": None,
               "is_read": False, "read_at": None, "created_at": row_[1].isoformat(), "metadata": {}}
    rdb.xadd("tracker:events", encode(Event("notification", None, user, time.time(), payload)))
    until(page, "document.getElementById('unread').textContent === '2'")

    page.click("#bell")
    page.wait_for_selector("#notifications", state="visible")
    assert page.locator("#notification-list li.unread").count() == 2
    assert "Report ready" in page.inner_text("#notification-list")
    page.click(f'#notification-list li[data-notification-id="{row_[0]}"]')
    until(page, "document.getElementById('unread').textContent === '1'")
    assert sql.execute("SELECT is_read FROM tracker_notifications WHERE id = %s", (row_[0],)).fetchone()[0] is True


def test_banner_while_disconnected_then_live_again(page, gateway_process, tracker):
    gp = gateway_process()
    user = f"net-{uuid.uuid4().hex[:6]}"
    # A token kept from an earlier visit: no sign-in form.
    page.add_init_script(f"localStorage.setItem('celery-tracking.token', {json.dumps(make_token(user))})")
    page.goto(gp.base + "/")
    until(page, "document.getElementById('conn').textContent === 'live'")
    until(page, "window.trackerDashboard.state.snapshots > 0")
    assert page.is_hidden("#banner")
    task_id = tracker.create_task(user_id=user, task_type="offline-job", status="running")
    tracker.update_progress(task_id, 10.0, current_step="before", user_id=user)
    assert tracker.flush(10)
    bar = f"document.querySelector('tr[data-task-id=\"{task_id}\"] .bar')"
    until(page, f"{bar} && {bar}.getAttribute('aria-valuenow') === '10.0'")

    gp.stop()
    page.wait_for_selector("#banner", state="visible", timeout=20_000)
    assert "reconnecting" in page.inner_text("#banner")
    assert page.inner_text("#conn") == "offline"
    tracker.update_progress(task_id, 30.0, current_step="while the gateway was down", user_id=user)
    assert tracker.flush(10)

    gp.start()
    page.wait_for_selector("#banner", state="hidden", timeout=30_000)
    # What was published while it was away is replayed after the reconnect (resumed, not lost)...
    until(page, f"{bar}.getAttribute('aria-valuenow') === '30.0'", 20)
    assert "while the gateway was down" in page.inner_text(f'tr[data-task-id="{task_id}"]')
    # ...and live updates flow again.
    tracker.update_progress(task_id, 80.0, current_step="after", user_id=user)
    tracker.flush(10)
    until(page, f"{bar}.getAttribute('aria-valuenow') === '80.0'", 20)



def test_sign_in_link_shows_the_table_and_leaves_no_token_in_the_address(page, gateway_process, tracker):
    gp = gateway_process()
    user = f"link-{uuid.uuid4().hex[:6]}"
    token = make_token(user)
    page.goto(f"{gp.base}/#token={token}")
    page.wait_for_selector("#app", state="visible")
    until(page, "document.getElementById('conn').textContent === 'live'")
    assert page.is_hidden("#login")  # no sign-in form
    assert page.is_visible("#tasks")  # the live task table
    href = page.evaluate("location.href")
    assert token not in href and "token" not in href, href
    assert page.evaluate("window.trackerDashboard.state.token") == token  # signed in with the link's token

    # A malformed link and an expired one land on the sign-in form with a clear message.
    page.goto(f"{gp.base}/#token=not-a-jwt")
    page.reload()
    page.wait_for_selector("#login-error", state="visible")
    assert "malformed" in page.inner_text("#login-error")
    assert "token" not in page.evaluate("location.href")
    import jwt

    from tests.conftest import SECRET

    expired = jwt.encode({"sub": user, "admin": False, "iat": int(time.time()) - 120, "exp": int(time.time()) - 60},
                         SECRET, algorithm="HS256")
    page.evaluate("localStorage.clear()")
    page.goto(f"{gp.base}/#token={expired}")
    page.reload()
    page.wait_for_selector("#login-error", state="visible")
    assert "expired" in page.inner_text("#login-error")
