"""Long-running processes the overhead benchmark runs next to its workers: a real
``tracker gateway`` (feed, notifier, sweeper) and Flower (the peer)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.workers import ROOT
from tracker.demo.services import free_port, stop_process

__all__ = ["Service", "start_gateway", "start_flower"]


class Service:
    """A subprocess in its own session, ready once ``url`` answers; ``stop()`` ends its group."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path, url: str,
                 timeout: float = 90) -> None:
        self.name = name
        self.url = url
        self.logfile = logdir / f"{name}.log"
        full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                os.environ.get("PYTHONPATH")]))}
        with self.logfile.open("wb") as log:
            self.proc = subprocess.Popen(args, env=full_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._wait_ready(timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=1) as resp:
                    if resp.status < 500:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not answer {self.url} in {timeout}s: {self.log()[-2000:]}")

    def stop(self, timeout: float = 15) -> None:
        stop_process(self.proc, timeout)


def start_gateway(env: dict[str, str], logdir: Path) -> Service:
    """``tracker gateway`` on the tracked workers' database and Redis, with a strong secret."""
    port = free_port()
    script = Path(sys.executable).with_name("tracker")  # the installed console script
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "tracker.cli"]
    return Service("gateway", [*cmd, "gateway", "--port", str(port), "--no-migrate"],
                   {**env, "TRACKER_SECRET": secrets.token_urlsafe(48)}, logdir, f"http://127.0.0.1:{port}/healthz")


def start_flower(app_module: str, env: dict[str, str], logdir: Path) -> Service:
    """Flower consuming the task events of workers started with ``-E``.

    ``--enable_events=False``: otherwise Flower turns events on in every worker it sees,
    the plain and tracked ones included, and they would pay for Flower too.
    """
    port = free_port()
    return Service("flower", [sys.executable, "-m", "celery", "-A", app_module, "flower", f"--port={port}",
                              "--address=127.0.0.1", "--enable_events=False", "--logging=warning"],
                   env, logdir, f"http://127.0.0.1:{port}/healthcheck")
