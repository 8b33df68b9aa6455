"""Bad input at volume: thousands of hypothesis-generated REST bodies and WebSocket frames.

The gateway runs as a subprocess on servers of this module's own, so every row in them is
accounted for. Whatever arrives: never a 5xx, never a crash, errors are JSON, and nothing is
written by a request that was refused - checked against the store afterwards: tasks that
exist are exactly the seeds plus those whose creation was accepted, log rows are exactly
those accepted, and tasks that only ever received invalid or unauthorised writes are
unchanged to the last column.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import redis as redis_lib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.conftest import SECRET, GatewayProcess, make_token, wait_for
from tracker import Tracker
from tracker.demo.services import PostgresServer, RedisServer
from tracker.migrate import upgrade

API = "/api/v1/progress"
STATUSES = ["pending", "running", "paused", "completed", "failed", "cancelled"]
OWNER = "fuzz-owner"
VICTIMS = [f"victim-{i}" for i in range(3)]
MIXED = [f"mixed-{i}" for i in range(3)]
SEEDS = set(VICTIMS) | set(MIXED)
FRAME_TYPES = {"error", "snapshot", "recovered", "event", "pong", "ack"}


#: Deterministic examples in CI; TRACKER_FUZZ_RANDOM=1 explores new ones on every run.
RANDOM = os.environ.get("TRACKER_FUZZ_RANDOM", "") not in ("", "0")


def _settings(n: int) -> Any:
    return settings(max_examples=n, deadline=None, database=None, derandomize=not RANDOM,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# -- the gateway under test ---------------------------------------------------------------------------------
@dataclass
class Target:
    gw: GatewayProcess
    database_url: str
    redis_url: str
    #: Every task id whose creation the gateway accepted (2xx), across the module's tests.
    accepted_ids: set[str] = field(default_factory=set)
    accepted_logs: int = 0
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    _conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, token: str | None = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        headers = {"Content-Type": content_type} if body is not None else {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=30)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, ConnectionError):
                # The server may close a keep-alive connection after an error: reconnect once.
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        self.requests += 1
        self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
        assert resp.status < 500, f"{method} {path} {body[:300] if body else b''!r} -> {resp.status} {raw[:500]!r}"
        data: Any = None
        if raw and resp.getheader("Content-Type", "").startswith("application/json"):
            data = json.loads(raw)
        if resp.status >= 400:
            assert isinstance(data, dict) and isinstance(data.get("error"), dict), (method, path, resp.status, raw)
            assert isinstance(data["error"].get("code"), str) and isinstance(data["error"].get("message"), str)
        return resp.status, data


@pytest.fixture(scope="module")
def target(tracker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    pg = PostgresServer().start()
    rs = RedisServer().start()
    gw = None
    try:
        upgrade(pg.url)
        with Tracker(database_url=pg.url, redis_url=rs.url) as t:
            for task_id in [*VICTIMS, *MIXED]:
                t.create_task(task_id, user_id=OWNER, task_type="fuzz.seed", status="running", progress=10.0,
                              metadata={"seed": True}, tags=["seed"])
            assert t.flush(10)
        gw = GatewayProcess(tracker_env, Path(tmp_path_factory.mktemp("fuzz-gateway")),
                            # The notification fuzzer checks validation, not the rate limit (tested elsewhere).
                            extra_env={"TRACKER_DATABASE_URL": pg.url, "TRACKER_REDIS_URL": rs.url,
                                       "TRACKER_NOTIFY_RATE_LIMIT": "1000000"})
        target = Target(gw, pg.url, rs.url)
        yield target
        print(f"\nbad input: {target.requests} REST requests, statuses {dict(sorted(target.statuses.items()))}, "
              f"{len(target.accepted_ids)} tasks created, the rest refused")
        # No crash: still serving after everything.
        assert gw.proc is not None and gw.proc.poll() is None, gw.logfile.read_text(errors="replace")[-3000:]
    finally:
        if gw is not None:
            gw.stop()
        rs.cleanup()
        pg.cleanup()


def _rows(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def _victim_state(url: str) -> list[tuple[Any, ...]]:
    return _rows(url, "SELECT * FROM tracker_tasks WHERE task_id = ANY(%s) ORDER BY task_id", (VICTIMS,))


def _no_stray_tasks(target: Target) -> None:
    time.sleep(0.5)  # the gateway's own write batches (flush interval) have landed
    stored = {r[0] for r in _rows(target.database_url, "SELECT task_id FROM tracker_tasks")}
    stray = stored - SEEDS - target.accepted_ids
    assert not stray, f"rows written by refused requests: {sorted(stray)[:10]}"


# -- strategies ---------------------------------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c,
                                                                                        max_size=4), max_leaves=12)
ids = st.one_of(st.text(min_size=0, max_size=300), json_values)


def _not_number_text(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return True
    return False


bad_progress = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not 0 <= f <= 100),
    st.integers().filter(lambda i: not 0 <= i <= 100),
    st.text(max_size=20).filter(_not_number_text), st.booleans(), st.none(),
    st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=3))
bad_status = st.one_of(st.text(max_size=30).filter(lambda s: s not in STATUSES), st.integers(), st.booleans(),
                       st.none(), st.lists(st.sampled_from(STATUSES), max_size=2))
optional_fields = st.dictionaries(st.sampled_from(["current_step", "step_index", "total_steps", "message", "result",
                                                   "error_type", "error_message", "zzz"]), json_values, max_size=3)


@st.composite
def create_bodies(draw: Any) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not an object at all
    body = draw(st.fixed_dictionaries({}, optional={
        "task_id": ids, "user_id": ids, "task_type": ids, "task_name": ids,
        "progress": st.one_of(st.floats(-50, 150), json_values), "status": st.one_of(st.sampled_from(STATUSES),
                                                                                   json_values),
        "total_steps": st.one_of(st.integers(-3, 10**12), json_values), "metadata": json_values,
        "tags": st.one_of(st.lists(st.text(max_size=10), max_size=3), json_values), "unexpected": json_values}))
    return body


@st.composite
def log_lines(draw: Any) -> dict[str, Any]:
    return draw(st.fixed_dictionaries({}, optional={
        "message": st.one_of(st.text(max_size=200), json_values),
        "task_id": st.one_of(st.sampled_from([*MIXED, "no-such-task"]), ids),
        "level": st.one_of(st.sampled_from(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "info", "LOUD", "20"]),
                           json_values),
        "source": json_values, "context": json_values, "traceback": json_values, "attachments": json_values,
        "user_id": st.one_of(st.sampled_from([OWNER, "someone-else"]), json_values)}))


CHANNELS = ["websocket", "email", "slack", "webhook"]
urls = st.one_of(
    st.sampled_from(["javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:alert(1)", "data:text/html,<b>",
                     "vbscript:x", "/relative", "//host/path", "https://", "http://ok.example/t?id=1",
                     "https://ok.example/a|b>c<d&e", "HTTPS://ok.example/", "https://ok.example/\r\nx",
                     "ftp://ok.example/f", "https://exa mple.com/"]),
    st.text(max_size=60), st.text(max_size=40).map(lambda s: "https://h.example/" + s), json_values)


def _is_http(url: Any) -> bool:
    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 or 127 <= ord(c) < 160 for c in url):
        return False
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


@st.composite
def notification_items(draw: Any) -> dict[str, Any]:
    """Mostly well-formed posts (so that the channel, user and link rules are what decides), some
    with one field replaced by anything at all."""
    item = draw(st.fixed_dictionaries({"title": st.one_of(
        st.text(min_size=1, max_size=80).filter(str.strip),
        st.sampled_from(["Disk\r\nBcc: x@example.com\rfull", "<https://evil|x>", "ok"]))}, optional={
        "message": st.text(max_size=200),
        "type": st.sampled_from(["info", "success", "warning", "error", "progress"]),
        "priority": st.sampled_from(["urgent", "high", "normal", "low"]),
        "channels": st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=4),
        "user_id": st.sampled_from([OWNER, "someone-else", None]),
        "task_id": st.sampled_from([*MIXED, "no-such-task"]),
        "action_url": urls,
        # A client naming a rule in metadata must gain nothing by it.
        "metadata": st.fixed_dictionaries({"rule": st.sampled_from(["rule0", "failures"])},
                                          optional={"trigger": st.just("failed"), "x": json_values}),
        "dedup_key": st.text(min_size=1, max_size=20)}))
    if draw(st.integers(0, 4)) == 0:
        item[draw(st.sampled_from(["title", "message", "type", "priority", "channels", "user_id", "task_id",
                                   "action_url", "metadata", "dedup_key", "unexpected"]))] = draw(json_values)
    return item


def _expired(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "admin": False, "iat": now - 100, "exp": now - 10}, SECRET, algorithm="HS256")


def _forged(user: str) -> str:
    """The owner's claims signed with another secret."""
    now = int(time.time())
    return jwt.encode({"sub": user, "admin": True, "iat": now, "exp": now + 600}, "another-secret-of-32-bytes-long!",
                      algorithm="HS256")


def _encode(body: Any) -> bytes:
    return json.dumps(body).encode()


# -- REST -----------------------------------------------------------------------------------------------------
def test_rest_task_creation_fuzz(target: Target) -> None:
    admin = make_token("fuzz-admin", admin=True)

    @_settings(800)
    @given(body=create_bodies(), as_admin=st.booleans().map(lambda b: b or None))
    def one(body: Any, as_admin: bool | None) -> None:
        token = admin if as_admin else make_token(OWNER)
        status, data = target.request("POST", f"{API}/tasks", _encode(body), token)
        if status < 300:
            assert as_admin, "only admins create tasks"
            target.accepted_ids.add(data["task_id"])
            if isinstance(body, dict) and isinstance(body.get("task_id"), str) and body["task_id"]:
                assert data["task_id"] == body["task_id"]

    one()
    assert target.accepted_ids, "some valid bodies should have been generated and accepted"
    _no_stray_tasks(target)
    with Tracker(database_url=target.database_url) as t:
        for task_id in list(target.accepted_ids)[:50]:
            rec = wait_for(partial(t.get, task_id), 10, what=f"accepted task {task_id!r} stored")
            assert 0 <= rec.progress <= 100 and rec.status in STATUSES


def test_rest_invalid_writes_change_nothing(target: Target) -> None:
    before = _victim_state(target.database_url)
    owner, admin, intruder = make_token(OWNER), make_token("fuzz-admin", admin=True), make_token("intruder")

    @_settings(300)
    @given(victim=st.sampled_from(VICTIMS), progress=bad_progress, extra=optional_fields,
           omit=st.booleans(), token=st.sampled_from([owner, admin]))
    def progress(victim: str, progress: Any, extra: dict[str, Any], omit: bool, token: str) -> None:
        body = dict(extra) if omit else {**extra, "progress": progress}
        status, _ = target.request("PATCH", f"{API}/tasks/{victim}/progress", _encode(body), token)
        assert 400 <= status < 500, (body, status)

    @_settings(300)
    @given(victim=st.sampled_from(VICTIMS), status_value=bad_status, extra=optional_fields,
           token=st.sampled_from([owner, admin]))
    def status(victim: str, status_value: Any, extra: dict[str, Any], token: str) -> None:
        code, _ = target.request("PATCH", f"{API}/tasks/{victim}/status", _encode({**extra, "status": status_value}),
                                 token)
        assert 400 <= code < 500, (status_value, code)

    @_settings(200)
    @given(victim=st.sampled_from(VICTIMS), raw=st.binary(max_size=120),
           path=st.sampled_from(["progress", "status"]), content_type=st.sampled_from(
               ["application/json", "text/plain", "application/octet-stream", "application/x-www-form-urlencoded"]))
    def garbage(victim: str, raw: bytes, path: str, content_type: str) -> None:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and (("progress" in parsed and isinstance(parsed["progress"], (int, float))
                                          and not isinstance(parsed["progress"], bool)
                                          and 0 <= parsed["progress"] <= 100) or parsed.get("status") in STATUSES):
            return  # by chance a valid body: not this test's business
        code, _ = target.request("PATCH", f"{API}/tasks/{victim}/{path}", raw, owner, content_type)
        assert 400 <= code < 500

    @_settings(200)
    @given(victim=st.sampled_from(VICTIMS), pct=st.floats(0, 100),
           op=st.sampled_from(["progress", "status", "complete", "fail", "pause", "resume", "cancel", "delete",
                               "logs"]),
           token=st.sampled_from([intruder, None, "not-a-token", _expired(OWNER), _forged(OWNER)]))
    def unauthorised(victim: str, pct: float, op: str, token: str | None) -> None:
        # Valid requests, but from someone who may not make them: refused, nothing written.
        if op == "progress":
            code, _ = target.request("PATCH", f"{API}/tasks/{victim}/progress", _encode({"progress": pct}), token)
        elif op == "status":
            code, _ = target.request("PATCH", f"{API}/tasks/{victim}/status", _encode({"status": "completed"}),
                                     token)
        elif op == "delete":
            code, _ = target.request("DELETE", f"{API}/tasks/{victim}", None, token)
        elif op == "logs":
            code, _ = target.request("POST", f"{API}/logs", _encode({"task_id": victim, "message": "x"}), token)
        else:
            code, _ = target.request("POST", f"{API}/tasks/{victim}/{op}", _encode({}), token)
        assert code in (401, 403, 404), (op, code)

    progress()
    status()
    garbage()
    unauthorised()
    time.sleep(0.5)
    assert _victim_state(target.database_url) == before, "a refused write changed a task"
    with Tracker(database_url=target.database_url) as t:
        for victim in VICTIMS:
            assert t.progress_history(victim) == [] or all(p.progress == 10.0 for p in t.progress_history(victim))
            assert len(t.logs(task_id=victim)) == 0
    control = redis_lib.Redis.from_url(target.redis_url)
    try:
        assert not any(control.exists(f"tracker:control:{v}") for v in VICTIMS)
    finally:
        control.close()
    _no_stray_tasks(target)


def test_rest_log_fuzz(target: Target) -> None:
    owner, admin = make_token(OWNER), make_token("fuzz-admin", admin=True)
    before = _rows(target.database_url, "SELECT count(*) FROM tracker_logs")[0][0]
    accepted = 0

    @_settings(800)
    @given(batch=st.one_of(log_lines().map(lambda d: (d, 1)),
                           st.lists(log_lines(), min_size=1, max_size=5).map(lambda ls: ({"logs": ls}, len(ls)))),
           token=st.sampled_from([owner, admin]))
    def one(batch: tuple[dict[str, Any], int], token: str) -> None:
        nonlocal accepted
        body, n = batch
        status, data = target.request("POST", f"{API}/logs", _encode(body), token)
        if status < 300:
            assert data["accepted"] == n  # all of the batch or nothing
            accepted += n

    one()
    assert accepted > 0
    time.sleep(0.5)
    after = _rows(target.database_url, "SELECT count(*) FROM tracker_logs")[0][0]
    assert after - before == accepted, f"{after - before} log rows stored, {accepted} accepted"
    _no_stray_tasks(target)


def test_rest_notification_fuzz(target: Target) -> None:
    """Notification posts with every field random: a user's accepted post is in-app only, to
    itself, with an http(s) link or none; the store holds exactly the accepted ones."""
    owner, admin = make_token(OWNER), make_token("fuzz-admin", admin=True)
    before = {r[0] for r in _rows(target.database_url, "SELECT id FROM tracker_notifications")}
    accepted: set[int] = set()
    by_user: set[int] = set()

    # Bodies that are not notifications at all are in test_rest_anything_anywhere.
    @_settings(200)
    @given(body=st.one_of(notification_items(), st.lists(notification_items(), min_size=1, max_size=4).map(
               lambda items: {"notifications": items})), as_admin=st.booleans())
    def one(body: Any, as_admin: bool) -> None:
        status, data = target.request("POST", f"{API}/notifications", _encode(body), admin if as_admin else owner)
        assert status in (201, 400, 403, 404), (status, data)
        if status != 201:
            return
        items = body["notifications"] if "notifications" in body else [body]
        stored = data["items"] if "notifications" in body else [data]
        assert len(stored) == len(items)
        for item, n in zip(items, stored, strict=True):
            allowed = {"websocket", "email"} if as_admin else {"websocket"}
            assert set(n["channels"]) <= allowed and set(item.get("channels") or ["websocket"]) <= allowed
            assert n["action_url"] is None or _is_http(n["action_url"])
            if n["id"] not in accepted:  # else a dedup_key used before: the earlier notification
                assert n["action_url"] == item.get("action_url")
            if not as_admin:
                assert n["user_id"] == OWNER
                if n["id"] not in accepted:  # a reused dedup_key answers with an admin's earlier one
                    by_user.add(n["id"])
            accepted.add(n["id"])

    one()
    assert accepted, "some valid bodies should have been generated and accepted"
    rows = _rows(target.database_url, "SELECT id, user_id, channels, origin FROM tracker_notifications")
    assert {r[0] for r in rows} - before == accepted, "rows stored by refused posts, or accepted ones missing"
    for id_, user_id, channels, origin in rows:
        # An admin may notify OWNER by e-mail too; what the user posted itself is in-app only.
        allowed = {"websocket"} if id_ in by_user else {"websocket", "email"}
        assert origin == "rest" and set(channels) <= allowed
        assert id_ not in by_user or user_id == OWNER


def test_rest_anything_anywhere(target: Target) -> None:
    """Random methods, paths, query strings and bodies: never a 5xx."""
    owner, admin = make_token(OWNER), make_token("fuzz-admin", admin=True)
    paths = ["/tasks", "/tasks/stats", "/tasks/{id}", "/tasks/{id}/logs", "/tasks/{id}/progress",
             "/tasks/{id}/metrics", "/tasks/{id}/status", "/tasks/{id}/complete", "/tasks/{id}/fail",
             "/tasks/{id}/pause", "/tasks/{id}/resume", "/tasks/{id}/cancel", "/logs", "/logs/stats",
             "/notifications", "/users/{id}/notifications", "/notifications/{n}/read", "/notifications/{n}",
             "/notifications/stats", "/metrics", "/visualizations/progress-chart",
             "/visualizations/status-distribution", "/visualizations/performance-metrics",
             "/visualizations/activity-heatmap", "/visualizations/{id}", "/export/tasks.csv", "/export/tasks.json",
             "/dashboards", "/dashboards/{n}"]
    query_keys = ["status", "user_id", "task_type", "tag", "since", "until", "search", "limit", "cursor", "level",
                  "min_level", "order", "name", "bucket", "agg", "group_by", "unread", "task_id", "fmt"]

    @_settings(1200)
    @given(method=st.sampled_from(["GET", "GET", "POST", "PATCH", "DELETE", "PUT"]), path=st.sampled_from(paths),
           ident=st.one_of(st.sampled_from([*MIXED, "nope", "%00", ".."]), st.text(min_size=1, max_size=40)),
           n=st.one_of(st.integers(-5, 2**64), st.text(min_size=1, max_size=10)),
           query=st.dictionaries(st.sampled_from(query_keys), st.one_of(st.text(max_size=30),
                                                                        st.integers().map(str)), max_size=4),
           body=st.one_of(st.none(), json_values.map(_encode), st.binary(max_size=60)),
           token=st.sampled_from([owner, admin, None]))
    def one(method: str, path: str, ident: str, n: Any, query: dict[str, str], body: bytes | None,
            token: str | None) -> None:
        if method == "POST" and path == "/tasks":
            return  # creation is fuzzed (and accounted for) above
        url = API + path.replace("{id}", urllib.parse.quote(ident, safe="")).replace(
            "{n}", urllib.parse.quote(str(n), safe=""))
        if query:
            url += "?" + urllib.parse.urlencode(query)
        target.request(method, url, body if method != "GET" else None, token)

    one()
    _no_stray_tasks(target)


# -- WebSocket -------------------------------------------------------------------------------------------------
topics = st.one_of(st.sampled_from(["all", f"user:{OWNER}", "user:someone-else", "task:victim-0", "task:nope",
                                    "group:g", "task:", "user:", "bogus", ""]), json_values)
#: Tokens that must never authenticate: garbage, wrong types, huge strings, expired, signed with another secret,
#: a real token's header and payload with a broken signature, alg "none" (minted once: strategies stay pure).
_NEVER_VALID = ["", "a.b.c", "Bearer x", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
                *(f(user) for f in (_expired, _forged) for user in (OWNER, "ws-fuzzer")),
                *(make_token(user).rsplit(".", 1)[0] + "." + tail for user in (OWNER, "ws-fuzzer")
                  for tail in ("", "AAAA", "x" * 43))]
bad_tokens = st.one_of(
    st.text(max_size=300), json_values, st.text(min_size=4000, max_size=6000),
    st.integers(40_000, 50_000).map(lambda n: "x" * n), st.sampled_from(_NEVER_VALID))
frames_text = st.one_of(
    st.text(max_size=300),
    st.builds(lambda op, topic, since, task_id, token, extra: json.dumps(
        {"op": op, "topic": topic, "since": since, "task_id": task_id, "token": token, **extra}),
        st.one_of(st.sampled_from(["subscribe", "unsubscribe", "ping", "pause", "resume", "cancel", "auth", "nope"]),
                  json_values),
        topics, st.one_of(st.sampled_from(["0-0", "0", "$", "-", "999999999999999-0", "1-1-1"]), json_values),
        st.one_of(st.text(max_size=40).map(lambda s: "fz-" + s), json_values), bad_tokens,
        st.dictionaries(st.text(max_size=8), json_values, max_size=2)),
    bad_tokens.map(lambda token: json.dumps({"op": "auth", "token": token})),
    json_values.map(json.dumps),
)


def _until_pong(ws: Any) -> list[dict[str, Any]]:
    """Frames the server sent before answering our ping (all must be well-formed)."""
    ws.send(json.dumps({"op": "ping"}))
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        raw = ws.recv(timeout=10)
        frame = json.loads(raw)
        assert isinstance(frame, dict) and frame.get("type") in FRAME_TYPES, frame
        if frame["type"] == "pong":
            return got
        got.append(frame)
    raise AssertionError("no pong within 10 s")


def test_websocket_frame_fuzz(target: Target) -> None:
    control = redis_lib.Redis.from_url(target.redis_url)
    keys_before = set(control.scan_iter("tracker:control:*"))
    url = f"ws://127.0.0.1:{target.gw.port}/api/v1/progress/ws"
    stack = ExitStack()
    sockets = {
        "user": stack.enter_context(ws_connect(url, additional_headers={
            "Authorization": f"Bearer {make_token('ws-fuzzer')}"}, max_size=None)),
        "admin": stack.enter_context(ws_connect(url, additional_headers={
            "Authorization": f"Bearer {make_token('ws-admin', admin=True)}"}, max_size=None)),
    }
    sent = 0
    try:
        @_settings(1000)
        @given(frame=st.one_of(frames_text, st.binary(max_size=100)), who=st.sampled_from(["user", "admin"]))
        def one(frame: str | bytes, who: str) -> None:
            nonlocal sent
            ws = sockets[who]
            ws.send(frame)
            sent += 1
            replies = _until_pong(ws)
            for r in replies:
                if r["type"] == "ack":
                    # Only real tasks can be controlled, and fuzzed ids never name one.
                    raise AssertionError(f"a fuzzed control op was accepted: {frame!r} -> {r}")

        one()
        # Twice the volume on the user socket alone, plainer frames: the connection stays open throughout.
        @_settings(1000)
        @given(frame=frames_text)
        def more(frame: str) -> None:
            nonlocal sent
            sockets["user"].send(frame)
            sent += 1
            _until_pong(sockets["user"])

        more()
        # An oversized frame closes that socket (1009); the gateway goes on serving everyone else.
        sockets["user"].send("x" * (1024 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                sockets["user"].recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert _until_pong(sockets["admin"]) is not None
    finally:
        stack.close()
        keys_after = set(control.scan_iter("tracker:control:*"))
        control.close()
    assert sent >= 2000
    # The gateway's sweeper may delete stale flags of earlier tests meanwhile: none may be new.
    assert keys_after <= keys_before, "a refused control op left a flag"
    with Tracker(database_url=target.database_url) as t:
        assert all(getattr(t.get(v), "status", None) == "running" for v in VICTIMS)
    _no_stray_tasks(target)



def test_websocket_first_frame_auth_fuzz(target: Target) -> None:
    """Sockets opened without a token, each sent one fuzzed frame (mostly ``auth`` with a bad token): an
    ``error`` frame and either the socket waits for a real auth or it is closed with 4001; never served, never a
    crash. A real token (now and then) is acknowledged."""
    url = f"ws://127.0.0.1:{target.gw.port}/api/v1/progress/ws"
    outcomes: dict[str, int] = {}

    @_settings(150)
    @given(frame=st.one_of(bad_tokens.map(lambda token: json.dumps({"op": "auth", "token": token})),
                           frames_text, st.binary(max_size=50), st.just("valid")))
    def one(frame: str | bytes) -> None:
        valid = frame == "valid"
        if valid:
            frame = json.dumps({"op": "auth", "token": make_token("ws-first")})
        with ws_connect(url, max_size=None, open_timeout=10, close_timeout=2) as ws:
            got: list[dict[str, Any]] = []
            code: int | None = None
            try:
                ws.send(frame)
                ws.send(json.dumps({"op": "ping"}))  # answered (pong, or an error before auth) unless closed first
            except ConnectionClosed:
                pass  # closed after the first frame: what it sent before is still to be read
            try:
                while True:
                    reply = json.loads(ws.recv(timeout=10))
                    assert isinstance(reply, dict) and reply.get("type") in FRAME_TYPES, reply
                    got.append(reply)
                    if reply["type"] == "pong" or (reply["type"] == "error" and reply.get("op") == "ping"):
                        break
            except ConnectionClosed as exc:
                assert exc.rcvd is not None, "closed without a close frame"
                code = exc.rcvd.code
        kinds = [r["type"] for r in got]
        if valid:
            assert kinds == ["ack", "pong"] and code is None, (got, code)
            outcome = "authenticated"
        else:
            assert code in (None, 4001), (frame[:200], got, code)
            assert got and all(k == "error" for k in kinds), (frame[:200], got, code)
            assert all(isinstance(r.get("code"), str) and isinstance(r.get("message"), str) for r in got)
            outcome = "closed 4001" if code == 4001 else "still waiting"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    one()
    print(f"\nfirst-frame auth fuzz: {outcomes}")
    assert outcomes.get("closed 4001", 0) > 50 and outcomes.get("still waiting", 0) > 10
