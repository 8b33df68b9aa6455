"""Commands that other packages contribute to ``tracker`` through the ``tracker.commands`` entry points.

The way ``celery/bin/celery.py`` takes its sub-commands from ``celery.commands``, but written out
here instead of depending on ``click-plugins`` (marked inactive and unmaintained by its authors):
the entry points are read with :mod:`importlib.metadata`, and only when click first asks for a
command, so ``tracker tasks`` does not import the gateway, and a plugin may import
:mod:`tracker.cli.root` without a partly initialised package.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import click

from tracker.config import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "PluginGroup"]

ENTRY_POINT_GROUP = "tracker.commands"


class PluginGroup(click.Group):
    """A click group that adds the commands registered under :data:`ENTRY_POINT_GROUP` on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plugins_loaded = False

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                command = ep.load()
            except Exception as exc:  # one broken plugin must not take the whole CLI down
                command = _broken(ep.name, f"{ep.value}: {type(exc).__name__}: {exc}")
            self.add_command(command, ep.name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugins()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        # A missing or invalid setting (a database or Redis URL, a TRACKER_* value) is the user's
        # to fix: one "Error: ..." line and exit 1 from every command, never a traceback.
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None


def _broken(name: str, reason: str) -> click.Command:
    """A stand-in that names the plugin that failed to load, in ``--help`` and when run."""

    def fail() -> None:
        raise click.ClickException(f"the command {name!r} could not be loaded ({reason})")

    return click.Command(name, callback=fail, help=f"(could not be loaded: {reason})",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
