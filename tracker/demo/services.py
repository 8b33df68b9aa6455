"""Throw-away PostgreSQL and Redis servers started from the local binaries.

Used by ``tracker demo`` and the test suite when no server URLs are configured. PostgreSQL
refuses to run as root, so when we are root it is run as the ``postgres`` system user in a
directory that user owns.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["free_port", "port_free", "PostgresServer", "RedisServer", "find_pg_bin", "stop_process", "ensure_database"]


#: Ports handed out by :func:`free_port` in this process (a server may not have bound one yet).
_handed: set[int] = set()


def _port_band() -> range | None:
    """The ports below the kernel's ephemeral range, sliced per pytest-xdist worker.

    Outgoing connections take their local port from the ephemeral range, so a port below it that
    is free now stays free until our server binds it; each xdist worker gets its own slice, so two
    workers never pick the same port. ``None`` when the range cannot be read or leaves no room.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    start = 10_000
    if low - start < 1_000:
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    width = (low - start) // count
    return range(start + index * width, start + (index + 1) * width)


def port_free(port: int) -> bool:
    """Whether nothing holds ``port`` on 127.0.0.1 (a bind succeeds)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a server about to start (see :func:`_port_band`)."""
    band = _port_band()
    if band is not None:
        offset = random.randrange(len(band))
        for i in range(len(band)):
            port = band[(offset + i) % len(band)]
            if port not in _handed and port_free(port):
                _handed.add(port)
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> int | None:
    """Stop a child started with ``start_new_session=True``; return its exit code.

    ``sig`` first (SIGTERM is a warm shutdown: running tasks finish, buffers flush), then
    SIGKILL to the whole process group, which also takes leftovers such as pool children.
    """
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    return proc.returncode


def ensure_database(url: str, dbname: str) -> None:
    """Create the database ``dbname`` on the PostgreSQL server of ``url`` (a libpq URL of a database
    that exists there) unless it is already there."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def find_pg_bin(name: str) -> str:
    """Locate a PostgreSQL server binary (Debian keeps them out of PATH)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key, reverse=True)
    if candidates:
        return candidates[0]
    raise FileNotFoundError(f"{name} not found: install PostgreSQL 15+ (apt-get install -y postgresql)")


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parts[-3])
    except (ValueError, IndexError):
        return 0


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory."""

    def __init__(self, port: int | None = None, dbname: str = "tracker") -> None:
        self.port = port or free_port()
        self.dbname = dbname
        self.root = Path(tempfile.mkdtemp(prefix="tracker-pg-"))
        self.datadir = self.root / "data"
        self._as_postgres = os.geteuid() == 0
        self._initialised = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.dbname}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, cwd=self.root)

    def start(self) -> PostgresServer:
        if not self._initialised:
            if self._as_postgres:
                shutil.chown(self.root, "postgres", "postgres")
            self._run(
                find_pg_bin("initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--no-sync", "--locale=C.UTF-8",
            )
            conf = self.datadir / "postgresql.conf"
            with conf.open("a") as f:
                # A throw-away cluster: speed over crash safety, small footprint.
                f.write(
                    "\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 300\nshared_buffers = 256MB\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.root}'\nlog_min_messages = warning\n"
                )
            self._initialised = True
        self._pg_ctl("start")
        _wait_port(self.port, 30)
        self._ensure_db()
        return self

    def _pg_ctl(self, action: str, mode: str = "fast") -> None:
        args = [find_pg_bin("pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60", "-l", str(self.root / "log")]
        if action == "start":
            args += ["-o", f"-p {self.port}", "start"]
        else:
            args += ["-m", mode, action]
        result = self._run(*args, check=False)
        if result.returncode != 0 and action == "start":
            log = (self.root / "log").read_text(errors="replace") if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl {action} failed: {result.stderr.decode()} {log[-2000:]}")

    def _ensure_db(self) -> None:
        ensure_database(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", self.dbname)

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", mode)

    def restart(self) -> None:
        self.stop()
        self._pg_ctl("start")
        _wait_port(self.port, 30)

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class RedisServer:
    """A private ``redis-server`` on a free port, persisting nothing unless asked."""

    def __init__(self, port: int | None = None, appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tracker-redis-"))
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if not exe:
            raise FileNotFoundError("redis-server not found: apt-get install -y redis-server")
        args = [
            exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "no", "--protected-mode", "no", "--loglevel", "warning",
            "--maxclients", "20000",
        ]
        # Own session: a terminal's Ctrl-C must not kill Redis before the demo/tests stop their users.
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        _wait_port(self.port, 15, self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """Kill -9: no chance to persist anything."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
