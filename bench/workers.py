"""Real Celery prefork workers for the benchmarks, in subprocesses, steered by remote control."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tracker.demo.services import stop_process

__all__ = ["BenchWorker", "ROOT"]

ROOT = Path(__file__).resolve().parent.parent


class BenchWorker:
    """``celery -A <module> worker`` consuming nothing until queues are added with
    ``add_consumer`` (so a batch can be queued up front and timed from the moment it is let in)."""

    def __init__(self, module: str, app: Any, env: dict[str, str], logdir: Path, concurrency: int = 2,
                 loglevel: str = "WARNING", events: bool = False) -> None:
        self.app = app
        self.name = f"bench-{module.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:6]}@localhost"
        self.idle_queue = f"bench-idle-{uuid.uuid4().hex[:6]}"
        self.logfile = logdir / f"{self.name.split('@')[0]}.log"
        full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                os.environ.get("PYTHONPATH")]))}
        args = [sys.executable, "-m", "celery", "-A", module, "worker", "-P", "prefork", "-c", str(concurrency),
                "-Q", self.idle_queue, "-n", self.name, "--without-mingle", "--without-gossip", "-l", loglevel,
                "--logfile", str(self.logfile)]
        if events:
            args.append("-E")  # task events, as a worker watched by Flower runs
        self.proc = subprocess.Popen(args, env=full_env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(60)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log()[-2000:]}")
            if self.app.control.ping(destination=[self.name], timeout=0.5):
                return
        raise TimeoutError(f"worker {self.name} did not answer a ping in {timeout}s: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def add_consumer(self, queue: str) -> None:
        replies = self.app.control.add_consumer(queue, destination=[self.name], reply=True, timeout=5)
        if not replies:
            raise RuntimeError(f"worker {self.name} did not confirm consuming {queue}")

    def cancel_consumer(self, queue: str) -> None:
        self.app.control.cancel_consumer(queue, destination=[self.name], reply=True, timeout=5)

    def stop(self, timeout: float = 20) -> None:
        stop_process(self.proc, timeout)
