"""``tracker gateway`` and ``tracker token``: the gateway's commands, registered as ``tracker.commands``
entry points (see :mod:`tracker.cli.plugins`), so the data layer's CLI never imports the gateway."""

from __future__ import annotations

import click

from tracker.cli.root import celery_app_from_ctx, config_from_ctx

__all__ = ["gateway", "token"]


@click.command()
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
    config = config_from_ctx(ctx)
    from webgate.core.auth import SecretError, check_secret
    from webgate.notify.notifier import check_config

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
    # A bad TRACKER_FEED_* setting is a ConfigError, found while building the app before serving:
    # the command group turns it into an error line.
    run_gateway(config, host, port, celery_app=app)


@click.command()
@click.argument("user_id")
@click.option("--admin", is_flag=True, help="Mint an admin token (sees every user's data).")
@click.option("--ttl", default=3600, show_default=True, type=int,
              help="Validity in seconds (at most tracker_token_max_ttl, default 7 days).")
@click.pass_context
def token(ctx: click.Context, user_id: str, admin: bool, ttl: int) -> None:
    """Print a token for USER_ID (alone on stdout)."""
    from webgate.core.auth import make_token

    config = config_from_ctx(ctx)
    try:
        minted = make_token(config.secret, user_id, admin=admin, ttl=ttl, max_ttl=config.token_max_ttl)
    except ValueError as exc:  # SecretError included: a weak TRACKER_SECRET mints nothing
        raise click.ClickException(str(exc)) from None
    click.echo(minted)
