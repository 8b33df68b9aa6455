"""``tracker tasks|show|logs|watch|stats|export``: looking at tracked tasks from a terminal.

Tables and live progress bars are drawn with rich; ``--json`` prints machine-readable output
instead (one JSON document, or one JSON object per line for ``logs --follow``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from tracker.cli.root import main, tracker_from_ctx
from tracker.events import TERMINAL_EVENTS, Event
from tracker.jsonsafe import dumps as strict_dumps
from tracker.records import LogRecord, TaskRecord
from tracker.status import TERMINAL, Status
from tracker.vocabulary import EVENT_STATUS, OPEN, STATUSES

__all__ = ["tasks", "show", "logs", "watch", "stats", "export", "format_duration"]

STATUS_STYLE = {"pending": "grey62", "running": "blue", "paused": "yellow", "completed": "green",
                "failed": "red", "cancelled": "grey50"}
LEVEL_STYLE = {"DEBUG": "grey50", "INFO": "cyan", "WARNING": "yellow", "ERROR": "red", "CRITICAL": "bold red"}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def _bar(progress: float, width: int = 20) -> Text:
    filled = int(round(progress / 100 * width))
    return Text("█" * filled, style="green") + Text("░" * (width - filled), style="grey35") + Text(f" {progress:5.1f}%")


def _console() -> Console:
    # Piped output has no terminal width: do not squeeze tables into rich's default 80 columns.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(highlight=False, soft_wrap=False, width=width)


def _bad_input(fn: Callable[[], Any]) -> Any:
    """Validation errors of the query layer become a usage message, not a traceback."""
    try:
        return fn()
    except (ValueError, TypeError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None


def _echo_json(value: Any) -> None:
    click.echo(strict_dumps(value, compact=False))


def _filters(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by ``tasks`` and ``export``."""
    options = [
        click.option("--user", "user_id", default=None, help="Only this user's tasks."),
        click.option("--status", default=None, help="A status or a comma-separated list."),
        click.option("--type", "task_type", default=None, help="Only this task type."),
        click.option("--tag", default=None, help="Only tasks with this tag."),
        click.option("--since", default=None, help="Created at or after: ISO 8601, epoch, or relative (-2h)."),
        click.option("--until", default=None, help="Created before: ISO 8601, epoch, or relative."),
        click.option("--search", default=None, help="Substring of id, name, type, step or error."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


# -- tasks, show ----------------------------------------------------------------------------------------
@main.command()
@_filters
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--cursor", default=None, help="next_cursor printed by the previous page.")
@click.option("--json", "as_json", is_flag=True, help="Print {items, next_cursor} as JSON.")
@click.pass_context
def tasks(ctx: click.Context, limit: int, cursor: str | None, as_json: bool, **filters: Any) -> None:
    """List tasks, newest first."""
    with tracker_from_ctx(ctx) as t:
        page = _bad_input(lambda: t.tasks(limit=limit, cursor=cursor, **filters))
    if as_json:
        _echo_json({"items": [r.to_dict() for r in page], "next_cursor": page.next_cursor})
        return
    table = Table(show_lines=False, header_style="bold")
    for col in ("task", "name", "user", "status", "progress", "step", "eta", "started", "duration"):
        table.add_column(col, no_wrap=col in ("task", "progress", "status"))
    for r in page:
        table.add_row(r.task_id, r.name or r.task_type or "-", r.user_id or "-", _status(r.status),
                      _bar(r.progress, 12), r.current_step or "-",
                      "-" if Status(r.status) in TERMINAL else format_duration(r.eta_seconds), _when(r.started_at),
                      format_duration(r.duration))
    console = _console()
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}", style="grey50")


@main.command()
@click.argument("task_id")
@click.option("--logs", "n_logs", default=10, show_default=True, type=click.IntRange(0, 1000),
              help="How many of the latest log lines to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the task record as JSON.")
@click.pass_context
def show(ctx: click.Context, task_id: str, n_logs: int, as_json: bool) -> None:
    """Show one task: state, progress, timings, error and latest log lines."""
    with tracker_from_ctx(ctx) as t:
        record = t.get(task_id)
        if record is None:
            raise click.ClickException(f"no task {task_id!r}")
        lines = list(reversed(t.logs(task_id=task_id, limit=n_logs, newest_first=True))) if n_logs else []
    if as_json:
        _echo_json({**record.to_dict(), "logs": [ln.to_dict() for ln in lines]})
        return
    console = _console()
    console.print(Panel(_details(record), title=f"[bold]{record.name or record.task_id}", expand=False))
    if record.traceback:
        console.print(Panel(record.traceback.rstrip(), title="traceback", style="red", expand=False))
    for ln in lines:
        console.print(_log_line(ln.ts.timestamp(), ln.level, ln.message, None))


def _details(r: TaskRecord) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    steps = f" (step {r.step_index}/{r.total_steps})" if r.step_index is not None and r.total_steps else ""
    rows: list[tuple[str, Any]] = [
        ("id", r.task_id), ("type", r.task_type or "-"), ("user", r.user_id or "-"), ("status", _status(r.status)),
        ("progress", _bar(r.progress)), ("step", (r.current_step or "-") + steps),
        ("eta", "-" if Status(r.status) in TERMINAL else format_duration(r.eta_seconds)),
        ("queue / worker", f"{r.queue or '-'} / {r.worker or '-'}"), ("retries", str(r.retries)),
        ("published", _when(r.published_at)), ("started", _when(r.started_at)), ("finished", _when(r.finished_at)),
        ("duration", format_duration(r.duration)),
    ]
    if r.tags:
        rows.append(("tags", ", ".join(r.tags)))
    if r.metadata:
        rows.append(("metadata", json.dumps(r.metadata, ensure_ascii=False)))
    if r.error_type or r.error_message:
        rows.append(("error", Text(f"{r.error_type or ''}: {r.error_message or ''}", style="red")))
    if r.result is not None:
        rows.append(("result", json.dumps(r.result, ensure_ascii=False, default=str)[:500]))
    for k, v in rows:
        grid.add_row(k, v)
    return grid


# -- logs ------------------------------------------------------------------------------------------------
def _log_line(ts: float, level: str, message: str, task_id: str | None) -> Text:
    stamp = datetime.fromtimestamp(ts, UTC).astimezone().strftime("%H:%M:%S.%f")[:-3]
    line = Text(stamp + " ", style="grey50") + Text(f"{level:<8}", style=LEVEL_STYLE.get(level, ""))
    if task_id:
        line += Text(f" [{task_id[:8]}]", style="grey50")
    return line + Text(" " + message)


@main.command()
@click.argument("task_id", required=False)
@click.option("--user", "user_id", default=None, help="Only this user's lines.")
@click.option("--level", "min_level", default=None, help="Lowest level shown (DEBUG, INFO, WARNING, ERROR).")
@click.option("--search", default=None, help="Full-text search in the message.")
@click.option("--since", default=None, help="ISO 8601, epoch, or relative (-15m).")
@click.option("--until", default=None, help="ISO 8601, epoch, or relative.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="How many stored lines to print (the latest).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they come (until the task ends).")
@click.option("--timeout", default=None, type=float, help="With --follow: stop after this many idle seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def logs(ctx: click.Context, task_id: str | None, user_id: str | None, min_level: str | None, search: str | None,
         since: str | None, until: str | None, limit: int, follow: bool, timeout: float | None,
         as_json: bool) -> None:
    """Print log lines (of one task, or all), oldest first; --follow streams new ones."""
    from tracker.queries import level_number

    console = _console()
    threshold = _bad_input(lambda: level_number(min_level)) if min_level else 0
    with tracker_from_ctx(ctx) as t:
        tail = _stream_tail(t) if follow else None
        stored = _bad_input(lambda: t.logs(task_id=task_id, user_id=user_id, min_level=min_level, search=search,
                                           since=since, until=until, limit=limit, newest_first=True))
        seen: set[tuple[float, str]] = set()
        for ln in reversed(stored):
            seen.add((round(ln.ts.timestamp(), 3), ln.message))
            _print_log(console, as_json, ln.ts.timestamp(), ln.level, ln.message, ln.task_id, ln)
        if not follow:
            return
        if task_id is not None:
            record = t.get(task_id)
            if record is not None and Status(record.status) in TERMINAL:
                return
        try:
            for ev in t.watch(task_id=task_id, user_id=user_id, since=tail, timeout=timeout):
                if ev.type == "task.log":
                    level = str(ev.data.get("level") or "INFO")
                    message = str(ev.data.get("message") or "")
                    key = (round(ev.ts, 3), message)
                    if key in seen or _level_no(level) < threshold or (search and search.lower() not in
                                                                       message.lower()):
                        continue
                    _print_log(console, as_json, ev.ts, level, message, ev.task_id, None)
                elif task_id is not None and ev.type in TERMINAL_EVENTS:
                    return
        except KeyboardInterrupt:
            return


def _level_no(level: str) -> int:
    from tracker.queries import level_number

    try:
        return level_number(level)
    except (ValueError, TypeError):
        return 0


def _print_log(console: Console, as_json: bool, ts: float, level: str, message: str, task_id: str | None,
               record: LogRecord | None) -> None:
    if as_json:
        data = record.to_dict() if record is not None else {
            "task_id": task_id, "ts": datetime.fromtimestamp(ts, UTC).isoformat(), "level": level, "message": message}
        _echo_json(data)
        sys.stdout.flush()
    else:
        console.print(_log_line(ts, level, message, task_id))


def _stream_tail(t: Any) -> str:
    """Id of the newest stream entry now: following starts right after it, so nothing between
    reading the store and subscribing is lost."""
    newest = t.redis.xrevrange(t.config.stream_key, count=1)
    if not newest:
        return "0-0"
    entry_id = newest[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


# -- watch -----------------------------------------------------------------------------------------------
class _EtaColumn(ProgressColumn):
    """Remaining time as the task reports it (``eta_seconds``), not as rich guesses it."""

    def render(self, task: Any) -> Text:
        status = task.fields.get("status", "")
        if status in TERMINAL:
            return Text("")
        eta = task.fields.get("eta")
        return Text("eta " + format_duration(eta) if eta is not None else "", style="grey50")


class _Board:
    """The rows of ``tracker watch``: one rich progress bar per task."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.rows: dict[str, Any] = {}
        self.status: dict[str, str] = {}

    def add(self, task_id: str, name: str | None, status: str, pct: float, step: str | None,
            eta: float | None) -> None:
        label = (name or task_id)[:28]
        if task_id not in self.rows:
            self.rows[task_id] = self.progress.add_task(label, total=100.0, status=status, step=step or "", eta=eta)
        self.update(task_id, status=status, pct=pct, step=step, eta=eta)

    def update(self, task_id: str, status: str | None = None, pct: float | None = None, step: str | None = None,
               eta: float | None = None) -> None:
        row = self.rows.get(task_id)
        if row is None:
            return
        fields: dict[str, Any] = {}
        if status is not None:
            self.status[task_id] = status
            fields["status"] = status
        if step is not None:
            fields["step"] = step
        if eta is not None or status is not None:
            fields["eta"] = eta
        if status == "completed":
            pct = 100.0
        self.progress.update(row, completed=pct, **fields)

    def finished(self, ids: list[str]) -> bool:
        return all(self.status.get(i) in TERMINAL for i in ids)


def _status_text(task: Any) -> Text:
    status = task.fields.get("status", "")
    return Text(f"{status:<9}", style=STATUS_STYLE.get(status, ""))


class _StatusColumn(ProgressColumn):
    def render(self, task: Any) -> Text:
        return _status_text(task)


@main.command()
@click.argument("task_ids", nargs=-1)
@click.option("--user", "user_id", default=None, help="Watch this user's tasks.")
@click.option("--timeout", default=None, type=float, help="Stop after this many seconds without an event.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON line instead of bars.")
@click.pass_context
def watch(ctx: click.Context, task_ids: tuple[str, ...], user_id: str | None, timeout: float | None,
          as_json: bool) -> None:
    """Live progress bars of tasks.

    With TASK_IDS, follows those tasks and exits when all have finished. Without, shows the
    active tasks (of --user, or everyone's) and every task that starts, until Ctrl-C.
    """
    wanted = list(task_ids)
    with tracker_from_ctx(ctx) as t:
        tail = _stream_tail(t)
        if wanted:
            initial = [r for r in (t.get(i) for i in wanted) if r is not None]
            missing = set(wanted) - {r.task_id for r in initial}
            if missing:
                raise click.ClickException(f"no task {sorted(missing)[0]!r}")
        else:
            initial = list(t.tasks(user_id=user_id, status=[s.value for s in STATUSES if s in OPEN], limit=200))
        events = t.watch(user_id=user_id, since=tail, timeout=timeout)
        if as_json:
            _watch_json(events, wanted, initial)
            return
        _watch_bars(events, wanted, initial)


def _watch_json(events: Iterator[Event], wanted: list[str], initial: list[TaskRecord]) -> None:
    done = {r.task_id for r in initial if Status(r.status) in TERMINAL}
    if wanted and set(wanted) <= done:
        return
    try:
        for ev in events:
            if wanted and ev.task_id not in wanted:
                continue
            _echo_json(ev.to_frame())
            sys.stdout.flush()
            if ev.type in TERMINAL_EVENTS and ev.task_id is not None:
                done.add(ev.task_id)
                if wanted and set(wanted) <= done:
                    return
    except KeyboardInterrupt:
        return


def _watch_bars(events: Iterator[Event], wanted: list[str], initial: list[TaskRecord]) -> None:
    progress = Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(bar_width=30), TaskProgressColumn(),
                        _StatusColumn(), _EtaColumn(), TextColumn("[grey62]{task.fields[step]}"),
                        console=_console(), refresh_per_second=8, transient=False)
    board = _Board(progress)
    with progress:
        for r in sorted(initial, key=lambda r: r.created_at or datetime.now(UTC)):
            board.add(r.task_id, r.name, r.status, r.progress, r.current_step, r.eta_seconds)
        if wanted and board.finished(wanted):
            return
        try:
            for ev in events:
                if ev.task_id is None or (wanted and ev.task_id not in wanted):
                    continue
                _apply(board, ev)
                if wanted and board.finished(wanted):
                    break
        except KeyboardInterrupt:
            pass
        progress.refresh()
        time.sleep(0.05)


def _apply(board: _Board, ev: Event) -> None:
    d = ev.data
    tid = ev.task_id
    assert tid is not None
    if tid not in board.rows:
        if ev.type not in ("task.pending", "task.started", "task.progress"):
            return
        board.add(tid, d.get("name"), EVENT_STATUS.get(ev.type, "running"), float(d.get("progress") or 0.0),
                  d.get("current_step"), d.get("eta_seconds"))
    if ev.type == "task.progress":
        board.update(tid, pct=float(d.get("progress") or 0.0), step=d.get("current_step"), eta=d.get("eta_seconds"))
    elif ev.type in EVENT_STATUS:
        pct = d.get("progress")
        board.update(tid, status=EVENT_STATUS[ev.type], pct=None if pct is None else float(pct),
                     eta=d.get("eta_seconds"))


# -- stats, export ---------------------------------------------------------------------------------------
@main.command()
@click.option("--since", default=None, help="ISO 8601, epoch, or relative (-24h).")
@click.option("--until", default=None, help="ISO 8601, epoch, or relative.")
@click.option("--group-by", default="task_type", show_default=True,
              type=click.Choice(["task_type", "user_id", "queue", "worker", "status", "none"]))
@click.option("--user", "user_id", default=None, help="Only this user's tasks.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.pass_context
def stats(ctx: click.Context, since: str | None, until: str | None, group_by: str, user_id: str | None,
          as_json: bool) -> None:
    """Counts by status, success rate, p50/p95 duration and throughput per group."""
    with tracker_from_ctx(ctx) as t:
        result = _bad_input(lambda: t.stats(since=since, until=until, user_id=user_id,
                                            group_by=None if group_by == "none" else group_by))
    if as_json:
        _echo_json(result)
        return
    table = Table(header_style="bold", show_footer=True)
    cols = ["total", *STATUSES]
    table.add_column(group_by if group_by != "none" else "", footer="all")
    overall = result["overall"]
    for c in cols:
        table.add_column(c, justify="right", footer=str(overall.get(c, 0)))
    table.add_column("success", justify="right", footer=_pct(overall.get("success_rate")))
    table.add_column("p50", justify="right", footer=format_duration(overall.get("p50_duration")))
    table.add_column("p95", justify="right", footer=format_duration(overall.get("p95_duration")))
    table.add_column("per min", justify="right", footer=_rate(overall.get("throughput_per_min")))
    for g in result["groups"]:
        table.add_row(str(g["group"] or "-"), *(str(g[c]) for c in cols), _pct(g["success_rate"]),
                      format_duration(g["p50_duration"]), format_duration(g["p95_duration"]),
                      _rate(g["throughput_per_min"]))
    _console().print(table)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{float(v) * 100:.1f}%"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{float(v):.2f}"


@main.command()
@_filters
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("-o", "--output", type=click.File("w", encoding="utf-8", lazy=True), default="-",
              help="File to write (default: stdout).")
@click.pass_context
def export(ctx: click.Context, fmt: str, output: Any, **filters: Any) -> None:
    """Write matching tasks as CSV or JSON (streamed from the store)."""
    from tracker.queries import TaskFilters

    _bad_input(lambda: TaskFilters(**filters))  # refuse bad filters before writing anything
    with tracker_from_ctx(ctx) as t:
        _bad_input(lambda: t.export(fmt=fmt, out=output, **filters))
