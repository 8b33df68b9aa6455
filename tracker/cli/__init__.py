"""The ``tracker`` command (also ``celery -A proj tracker ...``): the one place that joins the parts.

The group and its context helpers are in :mod:`tracker.cli.root`; the commands of this package
(:mod:`tracker.cli.control`, :mod:`tracker.cli.views`, :mod:`tracker.cli.ops`, :mod:`tracker.cli.rerun`)
attach themselves to it when imported here.
Other packages contribute theirs through the ``tracker.commands`` entry points
(:mod:`tracker.cli.plugins`): the gateway's ``gateway`` and ``token`` (:mod:`webgate.commands`) and
``demo`` (:mod:`tracker.demo.command`). Nothing below this package imports it.
"""

from __future__ import annotations

import click

from tracker.cli import control, ops, rerun, views  # noqa: F401  (their commands attach to ``main``)
from tracker.cli.plugins import PluginGroup
from tracker.cli.root import celery_app_from_ctx, config_from_ctx, main, tracker_from_ctx

__all__ = ["main", "celery_command", "config_from_ctx", "tracker_from_ctx", "celery_app_from_ctx"]


@click.group(name="tracker", cls=PluginGroup, commands=main.commands)
@click.pass_context
def celery_command(ctx: click.Context) -> None:
    """celery-tracking: progress, logs and metrics of every Celery task."""
