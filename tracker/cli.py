"""The ``tracker`` command (also ``celery -A proj tracker ...``).

Every command reads ``TRACKER_DATABASE_URL``, ``TRACKER_REDIS_URL`` and ``TRACKER_SECRET``
from the environment, or the ``tracker_*`` settings of the Celery app given with ``--app``
(or ``celery -A``).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from tracker.config import TrackerConfig

__all__ = ["main", "celery_command", "config_from_ctx", "tracker_from_ctx", "celery_app_from_ctx"]


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
    app = celery_app_from_ctx(ctx)
    return TrackerConfig.from_celery(app) if app is not None else TrackerConfig.from_env()


def tracker_from_ctx(ctx: click.Context) -> Any:
    from tracker.api import Tracker

    app = celery_app_from_ctx(ctx)
    return Tracker(app=app) if app is not None else Tracker(config=TrackerConfig.from_env())


@click.group(name="tracker")
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


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--no-migrate", is_flag=True, help="Do not bring the schema up to date first.")
@click.pass_context
def gateway(ctx: click.Context, host: str, port: int, no_migrate: bool) -> None:
    """Serve the WebSocket feed, REST API, notifier and dashboard until SIGTERM/SIGINT."""
    import logging

    from tracker.migrate import upgrade
    from webgate import run_gateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = celery_app_from_ctx(ctx)
    config = TrackerConfig.from_celery(app) if app is not None else TrackerConfig.from_env()
    from webgate.auth import SecretError, check_secret
    from webgate.notifier import check_config

    try:
        check_secret(config.secret)
    except SecretError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        check_config(config)
    except ValueError as exc:
        raise click.ClickException(f"notification settings: {exc}") from None
    if not no_migrate:
        upgrade(config.require_database())
    run_gateway(config, host, port, celery_app=app)


@main.command()
@click.argument("user_id")
@click.option("--admin", is_flag=True, help="Mint an admin token (sees every user's data).")
@click.option("--ttl", default=3600, show_default=True, type=int,
              help="Validity in seconds (at most tracker_token_max_ttl, default 7 days).")
@click.pass_context
def token(ctx: click.Context, user_id: str, admin: bool, ttl: int) -> None:
    """Print a token for USER_ID (alone on stdout)."""
    from webgate.auth import make_token

    config = config_from_ctx(ctx)
    try:
        minted = make_token(config.secret, user_id, admin=admin, ttl=ttl, max_ttl=config.token_max_ttl)
    except ValueError as exc:  # SecretError included: a weak TRACKER_SECRET mints nothing
        raise click.ClickException(str(exc)) from None
    click.echo(minted)


# Commands defined in their own modules attach themselves to ``main``.
from tracker import cli_control, cli_rerun, cli_views  # noqa: E402,F401
from tracker import demo as _demo  # noqa: E402,F401


@click.group(name="tracker", commands=main.commands)
@click.pass_context
def celery_command(ctx: click.Context) -> None:
    """celery-tracking: progress, logs and metrics of every Celery task."""


if __name__ == "__main__":  # pragma: no cover
    # Under ``python -m tracker.cli`` this module is __main__; the command modules attached
    # themselves to the importable tracker.cli.main, so run that one.
    from tracker.cli import main as _main

    _main()
