"""``tracker pause|resume|cancel|sweep|purge``: control of tasks and upkeep of the store."""

from __future__ import annotations

import json
from typing import Any, Protocol

import click

from tracker.cli.root import config_from_ctx, main, tracker_from_ctx
from tracker.control import plan

__all__ = ["pause", "resume", "cancel", "sweep", "purge"]


def _control(ctx: click.Context, task_id: str, action: str, terminate: bool = False) -> None:
    with tracker_from_ctx(ctx) as t:
        record = t.get(task_id)
        if record is None:
            raise click.ClickException(f"no task {task_id!r}")
        decision = plan(record.status, action)
        if not decision.allowed:
            raise click.ClickException(f"{task_id}: {decision.reason}; nothing to do")
        if action == "cancel":
            t.cancel(task_id, terminate=terminate)
        else:
            getattr(t, action)(task_id)
    if action == "cancel" and decision.mark_cancelled:
        click.echo(f"cancelled {task_id} (it was {record.status}: it will not run)")
    elif action == "cancel" and terminate:
        click.echo(f"cancelled {task_id}: terminating it now")
    else:
        click.echo(f"{action} requested for {task_id} ({record.status}): "
                   "a TrackedTask obeys at its next progress(), track() or checkpoint()")


@main.command()
@click.argument("task_id")
@click.pass_context
def pause(ctx: click.Context, task_id: str) -> None:
    """Pause a running TrackedTask (it waits, recorded ``paused``, until resumed)."""
    _control(ctx, task_id, "pause")


@main.command()
@click.argument("task_id")
@click.pass_context
def resume(ctx: click.Context, task_id: str) -> None:
    """Resume a paused task where it stopped."""
    _control(ctx, task_id, "resume")


@main.command()
@click.argument("task_id")
@click.option("--terminate", is_flag=True,
              help="Also kill it through Celery (revoke with terminate); needs the app (--app or celery -A).")
@click.pass_context
def cancel(ctx: click.Context, task_id: str, terminate: bool) -> None:
    """Cancel a task: a queued one never runs, a running TrackedTask stops at its next check."""
    from tracker.cli.root import celery_app_from_ctx

    if terminate and celery_app_from_ctx(ctx) is None:
        raise click.UsageError("--terminate needs the Celery app: pass --app MODULE or use `celery -A proj tracker`")
    _control(ctx, task_id, "cancel", terminate)


class _LockedRun(Protocol):
    """A sweep or a purge: runs under an advisory lock, so it may have been skipped."""

    @property
    def skipped(self) -> bool: ...

    def to_dict(self) -> dict[str, Any]: ...


def _said_in_short(result: _LockedRun, as_json: bool, what: str) -> bool:
    """Print ``result`` as JSON, or that another ``what`` held the lock; True when that is all there is to say."""
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return True
    if result.skipped:
        click.echo(f"another {what} is running; nothing done")
        return True
    return False


@main.command()
@click.option("--lost-after", type=float, default=None,
              help="Seconds without heartbeat before a task counts as lost [tracker_worker_lost_after].")
@click.option("--stall-after", type=float, default=None,
              help="Seconds without progress before a running task counts as stalled [tracker_stall_after].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def sweep(ctx: click.Context, lost_after: float | None, stall_after: float | None, as_json: bool) -> None:
    """One health pass: fail tasks whose worker is gone, flag stalled ones, drop stale flags."""
    from tracker import health

    config = config_from_ctx(ctx)
    overrides: dict[str, Any] = {}
    for name, value in (("worker_lost_after", lost_after), ("stall_after", stall_after)):
        if value is not None:
            if not value > 0:
                raise click.BadParameter(f"must be positive, got {value}", param_hint=name.replace("_", "-"))
            overrides[name] = value
    config = config.replace(**overrides)
    reporter = health.cli_reporter(config)
    with tracker_from_ctx(ctx) as t:
        t.config = config
        try:
            result = health.sweep(t.engine, config, redis=t.redis if config.redis_url else None,
                                  reporter=reporter)
        finally:
            if reporter is not None:
                reporter.close(timeout=10)  # publishes the events before exiting
    if _said_in_short(result, as_json, "sweeper"):
        return
    click.echo(f"lost: {len(result.lost)}  stalled: {len(result.stalled)}  flags cleared: {result.flags_cleared}")
    for r in result.lost:
        click.echo(f"  failed (worker-lost)  {r['task_id']}  {r['name'] or ''}")
    for r in result.stalled:
        click.echo(f"  stalled               {r['task_id']}  {r['name'] or ''}")


@main.command()
@click.option("--older-than", "older_than", default=None,
              help="Age such as 30d, 12h, 90m, 2w (a bare number means days) [tracker_retention_days].")
@click.option("--batch-size", type=int, default=10_000, show_default=True, help="Rows deleted per statement.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def purge(ctx: click.Context, older_than: str | None, batch_size: int, as_json: bool) -> None:
    """Delete finished tasks, logs, progress, metrics and read notifications older than an age."""
    from tracker import retention

    config = config_from_ctx(ctx)
    age = older_than if older_than is not None else f"{config.retention_days}d"
    try:
        retention.parse_age(age)
        retention.check_batch(batch_size)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    with tracker_from_ctx(ctx) as t:
        result = retention.purge(t.engine, age, batch_size=batch_size)
    if _said_in_short(result, as_json, "purge"):
        return
    parts = "  ".join(f"{name}: {n}" for name, n in result.deleted.items())
    click.echo(f"deleted {result.total} rows older than {result.cutoff.isoformat()} in {result.batches} batches "
               f"({result.seconds:.1f} s)  {parts}")
