"""The demo's summary table fits the terminal: one line per task, at 100 and at 160 columns."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from tracker.demo.view import StoredCounts, summary_table
from tracker.records import TaskRecord


def _records() -> list[TaskRecord]:
    start = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    names = ["demo.import_csv", "demo.resize_images", "demo.nightly_backup", "demo.export_report",
             "demo.sync_crm", "demo.thumbnail", "demo.send_email"]
    out = []
    for i, name in enumerate(names):
        failed = name == "demo.export_report"
        out.append(TaskRecord(
            task_id=str(uuid.uuid4()), name=name, user_id="demo-user-with-a-long-id",
            status="failed" if failed else "completed",
            progress=40.0 if failed else 100.0, retries=1 if name == "demo.sync_crm" else 0,
            error_type="ReportError" if failed else None,
            error_message="the report generator ran out of disk space while writing page 12 of 40" if failed else None,
            started_at=start, finished_at=start + timedelta(seconds=1.5 + i)))
    return out


@pytest.mark.parametrize("width", [100, 160])
def test_summary_rows_never_wrap(width: int) -> None:
    records = _records()
    counts = {r.task_id: StoredCounts(logs=12, progress=40, metrics=9) for r in records}
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False, color_system=None)
    console.print(summary_table(records, counts, "Stored records of run demo-x", width=console.width))
    lines = out.getvalue().splitlines()
    assert all(len(line.rstrip()) <= width for line in lines), max(len(line) for line in lines)
    # The table is closed on the right: nothing was cropped at the terminal's edge.
    assert all(line.rstrip()[-1] in "┓┃┩│┤┘" for line in lines[1:]), "\n".join(lines)
    # title + top rule + header + rule + one line per task + section rule + total + bottom rule
    assert len(lines) == 4 + len(records) + 3, "\n".join(lines)
    body = lines[4:4 + len(records)]
    for rec, line in zip(records, body, strict=True):
        assert rec.task_id[:6] in line  # the id's start identifies the row
        assert rec.status in line
        assert rec.name in line  # names are shown whole before ids or errors get the room
    header = lines[2]
    assert "status" in header and "progress" in header and "error" in header
    if width >= 160:
        # A wide terminal keeps every column.
        for col in ("user", "retries", "logs", "points", "metrics", "run s"):
            assert col in header, header
    else:
        assert "points" not in header  # less important columns make room on a narrow one
