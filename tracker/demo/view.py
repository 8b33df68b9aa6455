"""What ``tracker demo`` shows: live progress bars fed by the event stream, and a summary.

The live view reads the Redis stream through :meth:`tracker.Tracker.watch` in a thread and
keeps one bar per task of the current run (recognised by its run tag). On a terminal it
draws ``rich`` progress bars; otherwise (CI, a pipe) it prints one line per status change.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from tracker.api import Tracker
from tracker.events import Event
from tracker.records import TaskRecord
from tracker.vocabulary import EVENT_STATUS

__all__ = ["LiveView", "stream_tail", "summary_table", "render_summary", "StoredCounts", "stored_counts"]

_STATUS_STYLE = {
    "pending": "yellow", "running": "cyan", "paused": "magenta", "completed": "green", "failed": "red",
    "cancelled": "bright_black",
}
_STATUS_OF = EVENT_STATUS


def stream_tail(tracker: Tracker) -> str:
    """Id of the newest entry of the event stream ("0-0" when it is empty or missing)."""
    key = tracker.config.stream_key
    if not tracker.redis.exists(key):
        return "0-0"
    last = tracker.redis.xinfo_stream(key)["last-generated-id"]
    return last.decode() if isinstance(last, bytes) else str(last)


@dataclass
class _Row:
    task_id: str
    name: str
    user: str
    status: str = "pending"
    progress: float = 0.0
    step: str = ""
    bar: TaskID | None = None


class LiveView:
    """Follows the stream from ``since`` and shows every task tagged ``run_tag``."""

    def __init__(self, tracker: Tracker, run_tag: str, since: str, console: Console) -> None:
        self.tracker = tracker
        self.run_tag = run_tag
        self.last_id = since
        self.console = console
        self.rows: dict[str, _Row] = {}
        self.events = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.progress: Progress | None = None
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=28),
                TaskProgressColumn(),
                TextColumn("{task.fields[status]}"),
                TextColumn("[dim]{task.fields[step]}"),
                console=console,
                refresh_per_second=8,
                transient=False,
            )

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> LiveView:
        if self.progress is not None:
            self.progress.start()
        self._thread = threading.Thread(target=self._follow, name="demo-live-view", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self.progress is not None:
            self.progress.stop()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self.tracker.watch(since=self.last_id, timeout=0.3, block_ms=300):
                    self.last_id = event.id or self.last_id
                    self.apply(event)
                    if self._stop.is_set():
                        return
            except Exception as exc:  # Redis away for a moment: the view catches up afterwards.
                self.console.print(f"[dim]live view: {exc}; retrying[/dim]")
                self._stop.wait(1.0)

    # -- events --------------------------------------------------------------------------------------
    def apply(self, event: Event) -> None:
        """Update the row of ``event``'s task (new rows come from events carrying the run tag)."""
        if event.task_id is None:
            return
        self.events += 1
        with self._lock:
            row = self.rows.get(event.task_id)
            if row is None:
                if self.run_tag not in (event.data.get("tags") or []):
                    return
                row = self.rows[event.task_id] = _Row(event.task_id, str(event.data.get("name") or "?"),
                                                      event.user_id or "-")
                if self.progress is not None:
                    row.bar = self.progress.add_task(self._label(row), total=100, status="", step="")
            status = _STATUS_OF.get(event.type)
            changed = status is not None and status != row.status
            if status is not None:
                row.status = status
            if event.type == "task.progress":
                row.progress = float(event.data.get("progress") or 0.0)
                row.step = str(event.data.get("current_step") or "")
            elif status == "completed":
                row.progress = 100.0
            if event.type == "task.failed":
                row.step = f"{event.data.get('error_type', '')}: {event.data.get('error_message', '')}"[:60]
            elif event.type == "task.retry":
                row.step = f"retry: {event.data.get('error_message', '')}"[:60]
            self._render(row, event, changed or event.type == "task.retry")

    @staticmethod
    def _label(row: _Row) -> str:
        return f"{row.name:<20} {row.user:<6} [dim]{row.task_id[:8]}[/dim]"

    def _render(self, row: _Row, event: Event, changed: bool) -> None:
        style = _STATUS_STYLE.get(row.status, "white")
        if self.progress is not None and row.bar is not None:
            self.progress.update(row.bar, completed=row.progress, status=f"[{style}]{row.status:<9}[/{style}]",
                                 step=row.step)
        elif changed:
            stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
            extra = f" ({row.step})" if row.step and row.status in ("failed", "pending") else ""
            self.console.print(f"{stamp} {row.status:<9} {row.name:<20} {row.user:<6} {row.task_id}{extra}",
                               highlight=False)


@dataclass(frozen=True)
class StoredCounts:
    logs: int
    progress: int
    metrics: int


def stored_counts(tracker: Tracker, task_id: str) -> StoredCounts:
    """Rows stored for one task, read back through the public API."""
    return StoredCounts(
        logs=len(tracker.logs(task_id=task_id, limit=1000)),
        progress=len(tracker.progress_history(task_id)),
        metrics=len(tracker.metrics(task_id=task_id, limit=1000)),
    )


def _seconds(rec: TaskRecord) -> str:
    if rec.started_at is None or rec.finished_at is None:
        return "-"
    return f"{(rec.finished_at - rec.started_at).total_seconds():.2f}"


#: The summary's columns: (header, justify, priority). On a narrow terminal the columns with the
#: highest priority number go first; what is left is cut with an ellipsis, never wrapped.
_SUMMARY_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("task id", "left", 0), ("name", "left", 0), ("user", "left", 3), ("status", "left", 0),
    ("progress", "right", 1), ("retries", "right", 4), ("logs", "right", 2), ("points", "right", 5),
    ("metrics", "right", 5), ("run s", "right", 3), ("error", "left", 1),
)
#: Columns that may be cut to fit (the others are short figures, shown whole or dropped).
_ELASTIC = frozenset({"task id", "name", "user", "error"})
_MIN_ELASTIC = 8
#: Which text column gets spare room first.
_ELASTIC_ORDER = ("name", "error", "user", "task id")


def summary_table(records: list[TaskRecord], counts: dict[str, StoredCounts], title: str,
                  width: int | None = None) -> Table:
    """One row per stored task record with what was stored about it, fitted to ``width`` columns
    (the console's width when printed): one line per row whatever the terminal."""
    rows: list[list[str]] = []
    totals = [0, 0, 0]
    for rec in records:
        c = counts.get(rec.task_id, StoredCounts(0, 0, 0))
        totals = [totals[0] + c.logs, totals[1] + c.progress, totals[2] + c.metrics]
        style = _STATUS_STYLE.get(rec.status, "white")
        # A task that completed after a retry keeps the retry's reason: not an error of the run.
        error = f"{rec.error_type}: {rec.error_message}" if rec.error_type and rec.status != "completed" else ""
        rows.append([rec.task_id, rec.name or "-", rec.user_id or "-", f"[{style}]{rec.status}[/{style}]",
                     f"{rec.progress:.0f}%", str(rec.retries), str(c.logs), str(c.progress), str(c.metrics),
                     _seconds(rec), error[:60]])
    total_row = ["total", f"{len(records)} tasks", "", "", "", "", *(str(t) for t in totals), "", ""]

    def natural(i: int) -> int:
        header = _SUMMARY_COLUMNS[i][0]
        cells = [Text.from_markup(r[i]).cell_len for r in (*rows, total_row)]
        return max([len(header), *cells])

    keep = list(range(len(_SUMMARY_COLUMNS)))
    elastic_width: dict[int, int] = {}
    if width is not None:
        # Each column costs its content plus 3 cells of padding and rule; the table 1 more. Figures
        # are shown whole; the text columns share what is left, at least _MIN_ELASTIC cells each.
        def fixed(cols: list[int]) -> int:
            return 1 + sum(3 + (0 if _SUMMARY_COLUMNS[i][0] in _ELASTIC else natural(i)) for i in cols)

        def fits(cols: list[int]) -> bool:
            # Names are what a reader scans for: a layout fits when they are shown whole.
            return fixed(cols) + sum(natural(i) if _SUMMARY_COLUMNS[i][0] == "name" else min(natural(i), _MIN_ELASTIC)
                                     for i in cols if _SUMMARY_COLUMNS[i][0] in _ELASTIC) <= width
        for prio in range(max(c[2] for c in _SUMMARY_COLUMNS), 0, -1):
            if fits(keep):
                break
            keep = [i for i in keep if _SUMMARY_COLUMNS[i][2] < prio]
        elastic = [i for i in keep if _SUMMARY_COLUMNS[i][0] in _ELASTIC]
        # Minimums first, then what is left in order of use: whole names before whole ids.
        room = max(0, width - fixed(keep))
        elastic_width = {i: min(natural(i), _MIN_ELASTIC) for i in elastic}
        room -= sum(elastic_width.values())
        for header in _ELASTIC_ORDER:
            for i in elastic:
                if _SUMMARY_COLUMNS[i][0] == header and room > 0:
                    extra = min(natural(i) - elastic_width[i], room)
                    elastic_width[i] += extra
                    room -= extra
    table = Table(title=title, title_justify="left", header_style="bold")
    for i in keep:
        header, just, _ = _SUMMARY_COLUMNS[i]
        cut = elastic_width.get(i)
        table.add_column(header, justify=just, no_wrap=True,  # type: ignore[arg-type]
                         overflow="ellipsis", min_width=cut if cut is not None else natural(i),
                         max_width=cut if cut is not None else None)
    for r in rows:
        table.add_row(*(r[i] for i in keep))
    table.add_section()
    table.add_row(*(total_row[i] for i in keep))
    return table


def render_summary(console: Console, tracker: Tracker, task_ids: list[str], run_tag: str) -> list[TaskRecord]:
    """Print the summary of the run's stored records; returns them (oldest first)."""
    # Rows written in one group commit share created_at: order by the publisher's timestamp.
    records = sorted(tracker.tasks(tag=run_tag, limit=1000),
                     key=lambda r: (r.published_at or r.created_at or 0, r.task_id))
    wanted = set(task_ids)
    records = [r for r in records if r.task_id in wanted]
    counts = {r.task_id: stored_counts(tracker, r.task_id) for r in records}
    console.print(summary_table(records, counts, f"Stored records of run {run_tag}", width=console.width))
    return records
