"""``tracker workers|queues``: the operator's view of Celery workers and broker queues."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.table import Table
from rich.text import Text

from tracker.cli.root import main, tracker_from_ctx
from tracker.cli.views import _console, _echo_json, _when, format_duration

__all__ = ["workers", "queues", "format_bytes"]

_WORKER_STYLE = {"online": "green", "offline": "grey50"}


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop returns


def _ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    return format_duration((datetime.now(UTC) - value).total_seconds()) + " ago"


@main.command()
@click.option("--status", type=click.Choice(["online", "offline"]), default=None, help="Only these workers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON ({items: [...]}) instead of a table.")
@click.pass_context
def workers(ctx: click.Context, status: str | None, as_json: bool) -> None:
    """Celery workers (kept after they stop): status, pool size, running tasks, load, last heartbeat."""
    with tracker_from_ctx(ctx) as t:
        records = t.workers(status=status)
    if as_json:
        _echo_json({"items": [w.to_dict() for w in records]})
        return
    if not records:
        click.echo("no workers seen yet (workers need signals.install(app) and the schema of `tracker migrate`)")
        return
    table = Table(header_style="bold")
    for col in ("worker", "status", "pool", "active", "processed", "cpu", "rss", "last heartbeat", "started",
                "queues"):
        table.add_column(col, justify="right" if col in ("pool", "active", "processed", "cpu", "rss") else "left")
    for w in records:
        table.add_row(w.hostname, Text(w.status, style=_WORKER_STYLE.get(w.status, "")),
                      "-" if w.concurrency is None else str(w.concurrency), str(len(w.active)), str(w.processed),
                      "-" if w.cpu_percent is None else f"{w.cpu_percent:.1f}%", format_bytes(w.rss_bytes),
                      _ago(w.last_heartbeat), _when(w.started_at), ", ".join(w.queues) or "-")
    _console().print(table)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON ({items: [...], reason}) instead of a table.")
@click.pass_context
def queues(ctx: click.Context, as_json: bool) -> None:
    """Broker queues: messages waiting, online consumers, age of the oldest message.

    Measured now from the broker of the Celery app (``--app`` or ``celery -A``); without
    one, the depths a gateway sampled last.
    """
    with tracker_from_ctx(ctx) as t:
        report = t.queues()
    if as_json:
        _echo_json(report.to_dict())
        return
    if not report.items:
        click.echo(f"no queues: {report.reason}")
        return
    table = Table(header_style="bold")
    for col in ("queue", "depth", "consumers", "oldest"):
        table.add_column(col, justify="left" if col == "queue" else "right")
    for item in report.items:
        table.add_row(item.name, str(item.depth), str(item.consumers), format_duration(item.oldest_age_seconds))
    _console().print(table)
