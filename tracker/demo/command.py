"""``tracker demo``: the whole system on one machine in one command.

With no server URLs configured it starts throw-away PostgreSQL and Redis from the local
binaries, migrates, starts a real prefork worker and the gateway as subprocesses, publishes
the example workload of :mod:`tracker.demo.app`, prints the dashboard URL with an admin
token and shows live progress until Ctrl-C (or ``--once`` / ``--duration``). Everything it
started is stopped in reverse order on the way out, whatever the reason: SIGINT, SIGTERM, an
error or the end of the run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console

from tracker.demo.services import PostgresServer, RedisServer, free_port, port_free, stop_process
from tracker.vocabulary import TERMINAL

__all__ = ["demo", "Child"]

_TERMINAL = TERMINAL


class Child:
    """A subprocess in its own session (a terminal's Ctrl-C reaches only us; we stop it in order)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path, logfile: Path) -> None:
        self.name = name
        self.logfile = logfile
        with logfile.open("ab") as log:
            self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise click.ClickException(f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.1)
        raise click.ClickException(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (a warm shutdown: running tasks finish, buffers flush), then SIGKILL the group."""
        return stop_process(self.proc, timeout)


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _ignore(signum: int, frame: FrameType | None) -> None:
    """During shutdown a second Ctrl-C must not cut the clean-up short (it is bounded)."""


class _Shutdown(ExitStack):
    """Runs the clean-ups (in reverse order) with SIGINT/SIGTERM ignored: they are bounded,
    and a second Ctrl-C must not leave a server or a worker behind."""

    def __exit__(self, *exc: Any) -> bool:
        signal.signal(signal.SIGINT, _ignore)
        signal.signal(signal.SIGTERM, _ignore)
        return bool(super().__exit__(*exc))


def _wait_final(tracker: Any, task_ids: list[str], run_tag: str, timeout: float,
                stop_at: float | None) -> dict[str, Any]:
    """Poll the store until every task of the run has a terminal state; returns the records."""
    deadline = time.monotonic() + timeout
    wanted = set(task_ids)
    records: dict[str, Any] = {}
    while time.monotonic() < deadline and (stop_at is None or time.monotonic() < stop_at):
        records = {r.task_id: r for r in tracker.tasks(tag=run_tag, limit=1000) if r.task_id in wanted}
        if len(records) == len(wanted) and all(r.status in _TERMINAL for r in records.values()):
            return records
        time.sleep(0.3)
    return records


@click.command()
@click.option("--once", is_flag=True, help="Run the workload once, print the stored records and exit.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds (default: Ctrl-C).")
@click.option("--waves", type=int, default=1, show_default=True, help="How many times to publish the workload.")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Multiply the tasks' running times (0.3 = quicker run).")
@click.option("--concurrency", type=int, default=2, show_default=True, help="Worker pool processes.")
@click.option("--port", type=int, default=8765, show_default=True,
              help="Gateway port (0, or a taken one: any free port).")
@click.option("--timeout", type=float, default=180.0, show_default=True,
              help="Seconds a wave may take before the demo gives up on it.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep logs here instead of a temporary directory removed at exit.")
def demo(once: bool, duration: float | None, waves: int, scale: float, concurrency: int, port: int,
         timeout: float, workdir: str | None) -> None:
    """Start everything (throw-away servers unless URLs are set) and run an example workload."""
    console = Console(highlight=False)
    if not console.is_terminal:
        # A pipe or a CI log: wide lines rather than a table squeezed into 80 columns.
        console = Console(highlight=False, width=200)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    code = 1
    try:
        with _Shutdown() as stack:
            ok = _run(stack, console, once=once, duration=duration, waves=max(1, waves), scale=scale,
                      concurrency=concurrency, port=port, timeout=timeout, workdir=workdir)
            code = 0 if ok else 1
            console.print("[dim]shutting down: worker, gateway, servers...[/dim]")
    except KeyboardInterrupt:
        # The stack has already run every clean-up on the way out of the ``with``.
        console.print("interrupted: everything the demo started has been stopped")
        # Ctrl-C is how an interactive demo ends; a --once run that was cut short did not succeed.
        code = 130 if once else 0
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    console.print("demo stopped")
    if code:
        sys.exit(code)


def _server(stack: ExitStack, console: Console, label: str, env_name: str,
            server_type: type[PostgresServer] | type[RedisServer]) -> str:
    """The URL in ``env_name``, else that of a throw-away server stopped when ``stack`` closes."""
    url = os.environ.get(env_name)
    if url:
        console.print(f"using {label} from {env_name}")
        return url
    server = server_type()
    stack.callback(server.cleanup)
    console.print(f"starting a throw-away {label}...")
    server.start()
    return server.url


def _run(stack: ExitStack, console: Console, *, once: bool, duration: float | None, waves: int, scale: float,
         concurrency: int, port: int, timeout: float, workdir: str | None) -> bool:
    started = time.monotonic()
    stop_at = started + duration if duration is not None else None
    if workdir:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="tracker-demo-"))
        stack.callback(shutil.rmtree, work, True)

    database_url = _server(stack, console, "PostgreSQL", "TRACKER_DATABASE_URL", PostgresServer)
    redis_url = _server(stack, console, "Redis", "TRACKER_REDIS_URL", RedisServer)

    from tracker.migrate import upgrade

    upgrade(database_url)
    from webgate.core.auth import SecretError, check_secret

    secret = os.environ.get("TRACKER_SECRET")
    if secret:
        try:
            check_secret(secret)  # a user-supplied secret must be strong
        except SecretError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        secret = secrets.token_urlsafe(32)  # tokens of this demo only
    env_updates = {
        "TRACKER_DATABASE_URL": database_url,
        "TRACKER_REDIS_URL": redis_url,
        "TRACKER_SECRET": secret,
        "TRACKER_DEMO_SCALE": repr(scale),
    }
    os.environ.update(env_updates)
    child_env = {**os.environ, **env_updates}

    run = uuid.uuid4().hex[:8]
    run_tag = f"demo-{run}"
    # A queue per run: a shared broker may hold another run's messages.
    queue = f"tracker-demo-{run}"
    if port == 0:
        port = free_port()
    elif not port_free(port):
        taken, port = port, free_port()
        console.print(f"port {taken} is taken; the gateway uses {port}")
    base = f"http://127.0.0.1:{port}"

    worker = Child("worker", [
        sys.executable, "-m", "celery", "-A", "tracker.demo.app", "worker", "-P", "prefork", "-c", str(concurrency),
        "-Q", queue, "-n", f"demo-{run}@%h", "--without-mingle", "--without-gossip", "-l", "INFO",
        "--logfile", str(work / "worker.log"),
    ], child_env, work, work / "worker.out")
    stack.callback(worker.stop)
    gateway = Child("gateway", [
        sys.executable, "-m", "tracker.cli", "--app", "tracker.demo.app", "gateway", "--host", "127.0.0.1",
        "--port", str(port), "--no-migrate",
    ], child_env, work, work / "gateway.log")
    stack.callback(gateway.stop, 15.0)
    console.print("starting a prefork worker and the gateway...")
    worker_log = work / "worker.log"
    worker.wait_until(lambda: worker_log.exists() and "ready." in worker_log.read_text(errors="replace"), 90)
    gateway.wait_until(lambda: _healthy(base), 60)

    from signals.runtime import shutdown_all
    from tracker.api import Tracker
    from tracker.demo import app as demo_app
    from tracker.demo.view import LiveView, render_summary, stream_tail
    from webgate.core.auth import make_token

    # The producer's buffered "pending" rows are written before the servers go.
    stack.callback(shutdown_all, 5.0)
    tracker = Tracker(database_url=database_url, redis_url=redis_url)
    stack.callback(tracker.close)
    watcher = Tracker(database_url=database_url, redis_url=redis_url)
    stack.callback(watcher.close)

    token = make_token(secret, "admin", admin=True, ttl=24 * 3600)
    console.print()
    console.print(f"[bold]Dashboard:[/bold] {base}/#token={token}", soft_wrap=True)
    console.print(f"REST API:  {base}/api/v1/progress/tasks  (header Authorization: Bearer <token>)")
    console.print(f"WebSocket: ws://127.0.0.1:{port}/api/v1/progress/ws?token=<token>")
    console.print(f"Database:  {database_url}")
    console.print(f"Redis:     {redis_url}")
    if workdir:
        console.print(f"Logs:      {work}")
    console.print()

    all_ok = True
    for wave in range(1, waves + 1):
        if stop_at is not None and time.monotonic() >= stop_at:
            break
        wave_tag = run_tag if waves == 1 else f"{run_tag}-{wave}"
        view = LiveView(watcher, wave_tag, stream_tail(watcher), console).start()
        try:
            sub = demo_app.submit_workload(wave_tag, queue=queue)
            console.print(f"wave {wave}: published {len(sub.task_ids)} tasks (tag {wave_tag})")
            records = _wait_final(tracker, sub.task_ids, wave_tag, timeout, stop_at)
        finally:
            view.stop()
        # Metrics written after the terminal state (run time, CPU) land within a flush interval.
        time.sleep(0.5)
        render_summary(console, tracker, sub.task_ids, wave_tag)
        unfinished = [t for t in sub.task_ids if t not in records or records[t].status not in _TERMINAL]
        if unfinished and stop_at is not None and time.monotonic() >= stop_at:
            # --duration ran out mid-wave: what it asked for, not a failure.
            console.print(f"stopping after {duration:g}s with {len(unfinished)} tasks of wave {wave} unfinished")
            return all_ok
        unexpected = [t for t, r in records.items() if r.status in _TERMINAL and r.status != sub.expected_status(t)]
        if unfinished:
            console.print(f"[red]{len(unfinished)} tasks did not finish in time[/red]")
            all_ok = False
        if unexpected:
            console.print(f"[red]{len(unexpected)} tasks ended in an unexpected state[/red]")
            all_ok = False
        if not unfinished and not unexpected:
            failed = sum(1 for r in records.values() if r.status == "failed")
            console.print(f"wave {wave}: all {len(records)} tasks finished as expected "
                          f"({len(records) - failed} completed, {failed} failed on purpose, "
                          f"{view.events} live events seen)")
        if not worker.alive() or not gateway.alive():
            console.print("[red]the worker or the gateway exited[/red]")
            return False

    if once:
        return all_ok
    console.print()
    console.print(f"[bold]Still serving[/bold] the dashboard at {base}/#token={token}", soft_wrap=True)
    console.print("Press Ctrl-C to stop." if stop_at is None else f"Stopping after {duration:g}s.")
    while stop_at is None or time.monotonic() < stop_at:
        if not worker.alive() or not gateway.alive():
            console.print("[red]the worker or the gateway exited[/red]")
            return False
        time.sleep(0.2)
    return all_ok
