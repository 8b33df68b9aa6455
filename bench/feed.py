"""The live feed: end-to-end latency, memory per connection and fan-out throughput, each with a
baseline measured in the same run.

* Latency: a real prefork worker calls ``self.progress()`` (spaced just over the bus's coalescing
  interval, so each call is published); 1,000 WebSocket clients subscribed to ``all`` time every
  ``task.progress`` frame against the event's ``ts`` (the moment of the call). The arrival time is
  the kernel's receive timestamp on the client socket (``SO_TIMESTAMPNS``), so one process reading
  1,000 sockets in turn does not add its own queueing. Baseline: celery-progress's browser poll
  every 500 ms, i.e. 250 ms expected wait for a new value.
* Fan-out: 1,000 clients on ``all`` while a burst of 1,000 events is appended to the stream:
  messages delivered per second to all clients, and the server's CPU per message. Baseline: a
  minimal aiohttp server reading the same stream and calling ``send_str`` once per event per socket.
* Memory: 10,000 connections (each subscribed to its own topic) held by one gateway process:
  RSS growth per connection. Baseline: an idle bare aiohttp WebSocket server holding as many.

Clients are bare epoll loops in separate processes (they walk frame headers and never parse
JSON), so the servers are what is measured; still, on a 2-core machine they share the CPU with
the server, which shows in wall-clock figures (the CPU figures in ``extra`` do not depend on it).
Servers run in their own processes; this module's ``__main__`` is their entry point.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import os
import resource
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import redis

import signals
from bench.apps import make_app
from bench.common import Result, Servers
from signals import TrackedTask

__all__ = ["run", "app"]

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-feed-secret-of-the-celery-tracking-suite"  # >= 32 bytes (check_secret)
WS_PATH = "/api/v1/progress/ws"
LATENCY_CLIENTS = 1000
FANOUT_CLIENTS = 1000
FANOUT_EVENTS = 1000
HELD_CONNECTIONS = 10_000
CLIENT_PROCS = 2
POLL_INTERVAL = 0.5  # celery-progress's default browser polling interval (seconds)

# -- the worker app (``celery -A bench.feed worker``) -------------------------------------------------
app = make_app("bench_feed")


@app.task(name="bench.feed_ticker", base=TrackedTask, bind=True, shared=False)
def ticker(self: TrackedTask, n: int, interval: float) -> int:
    """``n`` progress calls ``interval`` apart (just over the bus's coalescing interval)."""
    for i in range(1, n + 1):
        time.sleep(interval)
        self.progress(i * 100.0 / n, step=f"tick {i}")
    return n


if os.environ.get("BENCH_FEED_WORKER"):
    signals.install(app)


# -- raw WebSocket clients ---------------------------------------------------------------------------------
def _mask_frame(payload: bytes) -> bytes:
    """A masked client text frame (payloads here are short)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    header = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    return header + key + masked


_EVENT_PREFIX = b'{"type":"event"'
_PROGRESS = b'"event":"task.progress"'
_TS = b'"ts":'
_PONG = bytes([0x8A, 0x80, 0, 0, 0, 0])
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_SCM_TIMESTAMPNS = getattr(socket, "SCM_TIMESTAMPNS", _SO_TIMESTAMPNS)


class _Conn:
    __slots__ = ("sock", "buf", "state")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.state = 0  # 0 connecting, 1 upgrading, 2 waiting for the subscription, 3 ready


def _client_process(pipe: Any, cfg: dict[str, Any]) -> None:
    """Hold ``cfg["n"]`` WebSocket connections with a bare epoll loop (far cheaper per message than an
    asyncio protocol, so the client processes take as little CPU from the server as possible)."""
    _raise_fd_limit()
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    port, n, latency = cfg["port"], cfg["n"], cfg["latency"]
    ready_on = cfg["ready_on"].encode()
    events = 0
    last_event = 0.0
    latencies: list[float] = []
    ready = 0
    errors: list[str] = []
    started = 0
    connecting = 0
    pipe_fd = pipe.fileno()
    ep.register(pipe_fd, select.EPOLLIN)

    def request(i: int) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (f"GET {WS_PATH}?token={cfg['token']} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode()

    def subscribe(i: int) -> bytes | None:
        if not cfg["subscribe"]:
            return None
        msg: dict[str, Any] = {"op": "subscribe", "topic": cfg["topic"].format(i=i + cfg["offset"])}
        if cfg.get("since"):
            msg["since"] = cfg["since"]
        return _mask_frame(json.dumps(msg).encode())

    index: dict[int, int] = {}
    reported = False
    while True:
        while started < n and connecting < 64:
            sock = socket.socket()
            sock.setblocking(False)
            if latency:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            sock.connect_ex(("127.0.0.1", port))
            conns[sock.fileno()] = _Conn(sock)
            index[sock.fileno()] = started
            ep.register(sock.fileno(), select.EPOLLOUT)
            started += 1
            connecting += 1
        if not reported and started == n and connecting == 0:
            pipe.send(("ready", ready, errors[:3]))
            reported = True
        for fd, _ in ep.poll(1.0):
            if fd == pipe_fd:
                cmd = pipe.recv()
                if cmd == "report":
                    pipe.send((events, last_event))
                elif cmd == "latencies":
                    pipe.send(latencies)
                else:
                    for c in conns.values():
                        c.sock.close()
                    pipe.send("closed")
                    return
                continue
            c = conns[fd]
            if c.state == 0:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    errors.append(os.strerror(err))
                    ep.unregister(fd)
                    connecting -= 1
                    continue
                c.sock.send(request(index[fd]))
                c.state = 1
                ep.modify(fd, select.EPOLLIN)
                continue
            arrived = 0.0
            try:
                if latency:
                    data, anc, _flags, _addr = c.sock.recvmsg(262144, 64)
                    for level, kind, raw in anc:
                        if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS:
                            sec, nsec = struct.unpack("qq", raw[:16])
                            arrived = sec + nsec / 1e9
                else:
                    data = c.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                data = b""
                errors.append(repr(exc))
            if not data:
                ep.unregister(fd)
                if c.state < 3:
                    connecting -= 1
                    errors.append("closed before subscribing")
                c.state = 4
                continue
            now = time.time()
            # The kernel's receive time: what 1,000 separate clients would see, without the queueing of this
            # one process reading all of them in turn.
            at = arrived or now
            buf = c.buf
            buf += data
            if c.state == 1:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                if b" 101 " not in buf[:buf.find(b"\r\n")]:
                    errors.append(bytes(buf[:120]).decode(errors="replace"))
                    ep.unregister(fd)
                    connecting -= 1
                    c.state = 4
                    continue
                del buf[:end + 4]
                sub = subscribe(index[fd])
                if sub is not None:
                    c.sock.send(sub)
                c.state = 2
                if not ready_on:
                    c.state = 3
                    ready += 1
                    connecting -= 1
            pos, size = 0, len(buf)
            while size - pos >= 2:
                length = buf[pos + 1] & 0x7F
                off = pos + 2
                if length == 126:
                    if size - pos < 4:
                        break
                    length = int.from_bytes(buf[off:off + 2], "big")
                    off += 2
                elif length == 127:
                    if size - pos < 10:
                        break
                    length = int.from_bytes(buf[off:off + 8], "big")
                    off += 8
                if size < off + length:
                    break
                opcode = buf[pos] & 0x0F
                if opcode == 1:
                    if buf.startswith(_EVENT_PREFIX, off):
                        events += 1
                        last_event = now
                        if latency and buf.find(_PROGRESS, off, off + length) >= 0:
                            # The event's "ts" is the moment of the progress() call.
                            t = buf.find(_TS, off, off + length) + 5
                            latencies.append(at - float(buf[t:buf.find(b",", t)]))
                    elif c.state == 2 and buf.startswith(ready_on, off):
                        c.state = 3
                        ready += 1
                        connecting -= 1
                elif opcode == 9:
                    c.sock.send(_PONG)
                pos = off + length
            if pos:
                del buf[:pos]


class _Clients:
    """Client processes holding ``n`` connections in all."""

    def __init__(self, port: int, n: int, *, token: str, topic: str, subscribe: bool = True, since: str | None = None,
                 latency: bool = False, ready_on: str = "", procs: int = CLIENT_PROCS) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        offset = 0
        for count in per:
            parent, child = ctx.Pipe()
            cfg = {"port": port, "n": count, "offset": offset, "token": token, "topic": topic,
                   "subscribe": subscribe, "since": since, "latency": latency, "ready_on": ready_on}
            proc = ctx.Process(target=_client_process, args=(child, cfg), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
            offset += count
        self.ready = 0
        errors: list[str] = []
        for pipe in self.pipes:
            if not pipe.poll(180):
                raise TimeoutError("clients did not connect in time")
            _, ready, errs = pipe.recv()
            self.ready += ready
            errors += errs
        if self.ready != n:
            raise RuntimeError(f"only {self.ready} of {n} clients subscribed: {errors}")

    def ask(self, cmd: str) -> list[Any]:
        for pipe in self.pipes:
            pipe.send(cmd)
        return [pipe.recv() for pipe in self.pipes]

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send("close")
            except OSError:
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# -- servers -------------------------------------------------------------------------------------------------
def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _free_port() -> int:
    from tracker.demo.services import free_port

    return free_port()


class _Server:
    """``python -m bench.feed <kind> <port>`` in a subprocess: the gateway or the bare baseline."""

    def __init__(self, kind: str, env: dict[str, str], logdir: Path) -> None:
        self.port = _free_port()
        self.log = logdir / f"{kind}-{self.port}.log"
        # The benchmark holds thousands of sockets of one user: lift the per-user socket limit (default 50).
        full_env = {**os.environ, "TRACKER_FEED_MAX_CONNECTIONS_PER_USER": "0", **env, "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bench.feed", kind, str(self.port)], env=full_env,
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise TimeoutError(f"{kind} did not listen")
        time.sleep(0.5)  # the feed's reader positions itself after the listener is up

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def cpu(self) -> float:
        """CPU seconds used so far (user + system): robust to a busy machine, unlike wall time."""
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _serve_gateway(port: int) -> None:
    from aiohttp import web

    from tracker.config import TrackerConfig
    from webgate import create_app

    _raise_fd_limit()
    web.run_app(create_app(TrackerConfig.from_env()), host="127.0.0.1", port=port, backlog=4096,
                access_log=None, print=None, shutdown_timeout=5)


def _serve_bare(port: int) -> None:
    """The baseline: plain aiohttp, one ``send_str`` per event per socket."""
    import redis.asyncio as aioredis
    from aiohttp import web

    from tracker.events import decode, dumps

    _raise_fd_limit()
    sockets: set[web.WebSocketResponse] = set()
    key = os.environ.get("TRACKER_PREFIX", "tracker") + ":events"

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            sockets.discard(ws)
        return ws

    async def reader(app: web.Application) -> Any:
        client = aioredis.Redis.from_url(os.environ["TRACKER_REDIS_URL"])
        info = await client.xinfo_stream(key) if await client.exists(key) else None
        last = info["last-generated-id"].decode() if info else "0-0"

        async def loop() -> None:
            nonlocal last
            while True:
                resp: Any = await client.xread({key: last}, count=1000, block=1000)
                for _name, entries in resp or ():
                    for entry_id, fields in entries:
                        last = entry_id.decode()
                        text = dumps(decode(entry_id, fields).to_frame())
                        for ws in list(sockets):
                            await ws.send_str(text)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        await client.aclose()

    web_app = web.Application()
    web_app.router.add_get(WS_PATH, handler)
    web_app.cleanup_ctx.append(reader)
    web.run_app(web_app, host="127.0.0.1", port=port, backlog=4096, access_log=None, print=None, shutdown_timeout=2)


# -- measurements ----------------------------------------------------------------------------------------------
def _token(user: str, admin: bool = False) -> str:
    from webgate.core.auth import make_token

    return make_token(SECRET, user, admin=admin, ttl=3600)


def _tail(client: redis.Redis, key: str) -> str:
    if not client.exists(key):
        return "0-0"
    last = client.xinfo_stream(key)["last-generated-id"]
    return last.decode() if isinstance(last, bytes) else str(last)


def _rss_per_connection(kind: str, env: dict[str, str], logdir: Path, rdb: redis.Redis, key: str) -> tuple[float, int]:
    """KiB of server RSS per held connection, and how many were held."""
    server = _Server(kind, env, logdir)
    gateway = kind == "gateway"
    try:
        token = _token("bench-admin", admin=True)
        since = _tail(rdb, key)
        common = {"token": token, "topic": "user:holder-{i}", "subscribe": gateway, "since": since,
                  "ready_on": '{"type":"recovered"' if gateway else ""}
        warm = _Clients(server.port, 100, procs=1, **common)  # type: ignore[arg-type]
        warm.close()
        time.sleep(1.0)
        before = server.rss()
        clients = _Clients(server.port, HELD_CONNECTIONS, **common)  # type: ignore[arg-type]
        try:
            time.sleep(1.0)
            after = server.rss()
            held = clients.ready
        finally:
            clients.close()
        return (after - before) / 1024 / held, held
    finally:
        server.stop()


def _fanout(kind: str, env: dict[str, str], logdir: Path, rdb: redis.Redis, key: str) -> dict[str, float]:
    server = _Server(kind, env, logdir)
    gateway = kind == "gateway"
    try:
        clients = _Clients(server.port, FANOUT_CLIENTS, token=_token("bench-admin", admin=True), topic="all",
                           subscribe=gateway, since=_tail(rdb, key) if gateway else None,
                           ready_on='{"type":"recovered"' if gateway else "")
        try:
            expected = FANOUT_EVENTS * FANOUT_CLIENTS
            from tracker.events import Event, encode

            cpu0 = server.cpu()
            t0 = time.time()
            for start in range(0, FANOUT_EVENTS, 100):
                pipe = rdb.pipeline(transaction=False)
                for i in range(start, min(FANOUT_EVENTS, start + 100)):
                    ev = Event("task.progress", f"fan-{i % 50}", "bench", time.time(),
                               {"progress": i * 100.0 / FANOUT_EVENTS, "current_step": "fan-out",
                                "step_index": None, "total_steps": None, "eta_seconds": 1.5})
                    pipe.xadd(key, encode(ev))  # type: ignore[arg-type]
                pipe.execute()
            published = time.time() - t0
            deadline = time.monotonic() + 120
            got, last, stalled_at, prev = 0, 0.0, time.monotonic(), -1
            while time.monotonic() < deadline:
                reports = clients.ask("report")
                got = sum(r[0] for r in reports)
                last = max(r[1] for r in reports)
                if got >= expected:
                    break
                if got != prev:
                    prev, stalled_at = got, time.monotonic()
                elif time.monotonic() - stalled_at > 10:
                    break
                time.sleep(0.2)
            elapsed = max(last - t0, 1e-6)
            cpu_us = (server.cpu() - cpu0) / max(got, 1) * 1e6
            return {"rate": got / elapsed, "delivered": got, "expected": expected, "elapsed": elapsed,
                    "publish_s": published, "server_cpu_us_per_msg": cpu_us}
        finally:
            clients.close()
    finally:
        server.stop()


def _latency(env: dict[str, str], logdir: Path, rdb: redis.Redis, key: str) -> dict[str, float]:
    from bench.workers import BenchWorker

    server = _Server("gateway", env, logdir)
    worker = None
    try:
        # One client process: it keeps up with 1,000 sockets and leaves the other core to the gateway (on
        # this 2-core machine the clients compete with the server for CPU; real clients are elsewhere).
        clients = _Clients(server.port, LATENCY_CLIENTS, token=_token("bench-admin", admin=True), topic="all",
                           since=_tail(rdb, key), latency=True, ready_on='{"type":"recovered"', procs=1)
        try:
            app.conf.broker_url = env["BENCH_BROKER_URL"]
            worker = BenchWorker("bench.feed", app, {**env, "BENCH_FEED_WORKER": "1"}, logdir, concurrency=2)
            queue = f"bench-feed-{uuid.uuid4().hex[:6]}"
            calls, interval, tasks = 40, 0.12, 2
            for _ in range(tasks):
                ticker.apply_async((calls, interval), queue=queue)
            cpu0 = server.cpu()
            worker.add_consumer(queue)
            expected = calls * tasks * LATENCY_CLIENTS
            deadline = time.monotonic() + calls * interval * 2 + 30
            samples: list[float] = []
            while time.monotonic() < deadline:
                time.sleep(0.5)
                samples = [x for part in clients.ask("latencies") for x in part]
                if len(samples) >= expected:
                    break
            if not samples:
                raise RuntimeError("no progress event reached the clients")
            cpu_us = (server.cpu() - cpu0) / len(samples) * 1e6
            ms = sorted(x * 1000 for x in samples)
            return {"p50": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
                    "max": ms[-1], "samples": len(ms), "expected": expected,
                    "gateway_cpu_us_per_delivery": cpu_us}
        finally:
            clients.close()
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


def run(servers: Servers) -> list[Result]:
    _raise_fd_limit()
    prefix = f"benchfeed-{uuid.uuid4().hex[:6]}"
    key = f"{prefix}:events"
    env = {"TRACKER_DATABASE_URL": servers.database_url, "TRACKER_REDIS_URL": servers.redis_url,
           "TRACKER_SECRET": SECRET, "TRACKER_PREFIX": prefix, "BENCH_BROKER_URL": servers.broker_url,
           "TRACKER_FLUSH_INTERVAL": "0.2"}
    rdb = redis.Redis.from_url(servers.redis_url)
    logdir = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    results: list[Result] = []
    try:
        lat = _latency(env, logdir, rdb, key)
        print(f"  latency: {lat}", flush=True)
        baseline = POLL_INTERVAL / 2 * 1000
        results.append(Result(f"feed latency p50, progress() -> {LATENCY_CLIENTS:,} clients", lat["p50"], "ms",
                              f"celery-progress polling every {POLL_INTERVAL * 1000:.0f} ms (expected wait)",
                              baseline, "<= 10 ms", higher_is_better=False, met=lat["p50"] <= 10, extra=lat))
        results.append(Result(f"feed latency p99, progress() -> {LATENCY_CLIENTS:,} clients", lat["p99"], "ms",
                              f"celery-progress polling every {POLL_INTERVAL * 1000:.0f} ms (expected wait)",
                              baseline, "<= 50 ms", higher_is_better=False, met=lat["p99"] <= 50, extra=lat))

        fan = _fanout("gateway", env, logdir, rdb, key)
        bare_fan = _fanout("bare", env, logdir, rdb, key)
        print(f"  fan-out: gateway {fan}  bare {bare_fan}", flush=True)
        complete = fan["delivered"] >= fan["expected"]
        results.append(Result(f"feed fan-out to {FANOUT_CLIENTS:,} clients", fan["rate"], "msg/s",
                              "aiohttp, one send_str per event per socket", bare_fan["rate"], ">= 50,000/s",
                              met=complete and fan["rate"] >= 50_000, extra={"gateway": fan, "baseline": bare_fan}))

        kib, held = _rss_per_connection("gateway", env, logdir, rdb, key)
        bare_kib, bare_held = _rss_per_connection("bare", env, logdir, rdb, key)
        print(f"  RSS per connection: gateway {kib:.1f} KiB ({held} held)  bare {bare_kib:.1f} KiB ({bare_held})",
              flush=True)
        results.append(Result(f"feed RSS per connection, {held:,} held", kib, "KiB",
                              "idle bare aiohttp WebSocket server", bare_kib, "<= 100 KiB", higher_is_better=False,
                              met=kib <= 100 and held >= HELD_CONNECTIONS))
    finally:
        rdb.delete(key)
        rdb.close()
    return results


if __name__ == "__main__":
    kind, port_arg = sys.argv[1], int(sys.argv[2])
    if kind == "gateway":
        _serve_gateway(port_arg)
    elif kind == "bare":
        _serve_bare(port_arg)
    else:
        raise SystemExit(f"unknown server kind {kind!r}")
