"""The root of the ``tracker`` command: the group, its ``--app`` option, the context helpers and ``migrate``.

Every command reads ``TRACKER_DATABASE_URL``, ``TRACKER_REDIS_URL`` and ``TRACKER_SECRET``
from the environment, or the ``tracker_*`` settings of the Celery app given with ``--app``
(or ``celery -A``).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from tracker.cli.plugins import PluginGroup
from tracker.config import TrackerConfig

__all__ = ["main", "config_from_ctx", "tracker_from_ctx", "celery_app_from_ctx"]


def _load_app(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    if attr:
        return getattr(module, attr)
    for name in ("app", "celery"):
        if hasattr(module, name):
            return getattr(module, name)
    raise click.UsageError(f"no Celery app found in {path!r}; use module:attribute")


def celery_app_from_ctx(ctx: click.Context) -> Any:
    """The Celery app of ``celery -A`` or ``--app``, or None."""
    root = ctx.find_root()
    obj = root.obj
    app = getattr(obj, "app", None)
    if app is not None:
        return app
    path = None
    c: click.Context | None = ctx
    while c is not None:
        if isinstance(c.obj, dict) and c.obj.get("app_path"):
            path = c.obj["app_path"]
            break
        c = c.parent
    if path:
        sys.path.insert(0, ".")
        return _load_app(path)
    return None


def config_from_ctx(ctx: click.Context) -> TrackerConfig:
    """The settings of the ``--app`` Celery app, else of the environment (a bad one raises
    ConfigError, which the command group turns into an error line)."""
    app = celery_app_from_ctx(ctx)
    return TrackerConfig.from_celery(app) if app is not None else TrackerConfig.from_env()


def tracker_from_ctx(ctx: click.Context) -> Any:
    from tracker.api import Tracker

    return Tracker(config=config_from_ctx(ctx), app=celery_app_from_ctx(ctx))


@click.group(name="tracker", cls=PluginGroup)
@click.option("--app", "app_path", default=None, envvar="TRACKER_APP",
              help="Celery app (module or module:attr) whose tracker_* settings to use.")
@click.pass_context
def main(ctx: click.Context, app_path: str | None) -> None:
    """celery-tracking: progress, logs and metrics of every Celery task."""
    ctx.ensure_object(dict)
    if isinstance(ctx.obj, dict):
        ctx.obj["app_path"] = app_path


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the database schema (safe to run again)."""
    from tracker.migrate import upgrade

    config = config_from_ctx(ctx)
    upgrade(config.require_database())
    click.echo("schema up to date")
