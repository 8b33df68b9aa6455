"""``tracker rerun ID``: run a recorded task again with its stored arguments."""

from __future__ import annotations

import json

import click

from tracker.cli.root import celery_app_from_ctx, main, tracker_from_ctx
from tracker.rerun import NotRerunnable

__all__ = ["rerun"]


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help='Print {"task_id": <new>, "rerun_of": <id>} as JSON.')
@click.pass_context
def rerun(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Publish TASK_ID's task again with its stored arguments, on its original queue and for its
    original user; needs the Celery app (--app MODULE or `celery -A proj tracker`)."""
    if celery_app_from_ctx(ctx) is None:
        raise click.UsageError("rerun needs the Celery app: pass --app MODULE or use `celery -A proj tracker`")
    with tracker_from_ctx(ctx) as t:
        try:
            new_id = t.rerun(task_id)
        except KeyError:
            raise click.ClickException(f"no task {task_id!r}") from None
        except NotRerunnable as exc:
            raise click.ClickException(f"{task_id} cannot be re-run: {exc}") from None
    if as_json:
        click.echo(json.dumps({"task_id": new_id, "rerun_of": task_id}))
    else:
        click.echo(f"re-ran {task_id} as {new_id}")
