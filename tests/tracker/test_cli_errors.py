"""A missing setting is one error line and exit 1 from every command, never a traceback."""

from __future__ import annotations

import secrets

import pytest
from click.testing import CliRunner

from tracker.cli import main

_UNSET = {"TRACKER_DATABASE_URL": None, "TRACKER_REDIS_URL": None, "TRACKER_APP": None}


@pytest.mark.parametrize("args", [["migrate"], ["show", "t1"], ["workers"], ["queues"], ["tasks"], ["stats"],
                                  ["gateway", "--port", "0"], ["gateway", "--no-migrate", "--port", "0"]])
def test_no_database_url_is_an_error_line(args: list[str]) -> None:
    env = {**_UNSET, "TRACKER_SECRET": secrets.token_hex(32)}
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 1, result.output
    assert "Error: no database URL: set tracker_database_url or TRACKER_DATABASE_URL" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError)
