"""Secure by default: no gateway and no token without a strong TRACKER_SECRET, bounded token
lifetimes, and REST tokens in the Authorization header only (the export downloads excepted)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.conftest import ROOT, SECRET, make_token
from tracker.demo.services import free_port
from webgate.core.auth import SecretError, check_secret, decode_token

WEAK = {
    "unset": None,
    "empty": "",
    "change-me": "change-me",
    "CHANGEME": "CHANGEME",
    "secret": "Secret",
    "31 bytes": "k" * 31,
    "31 bytes of UTF-8": "é" * 15 + "k",  # 15 characters of 2 bytes and one of 1
}
PLACEHOLDERS = ["change-me", "secret", "changeme", "Change-Me"]
STRONG = "s" * 32


def _env(secret: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRACKER_SECRET"}
    if secret is not None:
        env["TRACKER_SECRET"] = secret
    return {**env, **extra, "PYTHONPATH": str(ROOT)}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracker.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_check_secret_rules() -> None:
    for secret in WEAK.values():
        with pytest.raises(SecretError, match="TRACKER_SECRET"):
            check_secret(secret)
    assert check_secret(STRONG) == STRONG
    assert check_secret("é" * 16) == "é" * 16  # 32 bytes in UTF-8


@pytest.mark.parametrize("name", ["unset", "change-me", "31 bytes"])
def test_gateway_refuses_weak_secret(tracker_env: dict[str, str], name: str) -> None:
    out = _cli(_env(WEAK[name]), "--app", "tests.apps.worker", "gateway", "--host", "127.0.0.1",
               "--port", str(free_port()), "--no-migrate")
    assert out.returncode != 0
    assert "TRACKER_SECRET" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_gateway_starts_with_32_byte_secret(gateway_process: Any) -> None:
    import urllib.request

    gp = gateway_process(extra_env={"TRACKER_SECRET": STRONG})  # waits for /healthz
    with urllib.request.urlopen(f"{gp.base}/healthz", timeout=5) as r:
        assert r.status == 200
    mint = _cli(_env(STRONG), "token", "alice")
    assert mint.returncode == 0, mint.stderr
    req = urllib.request.Request(f"{gp.api}/tasks", headers={"Authorization": f"Bearer {mint.stdout.strip()}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def test_create_app_refuses_weak_secret(tracker_env: dict[str, str]) -> None:
    from tracker.config import TrackerConfig
    from webgate import create_app

    with pytest.raises(SecretError, match="TRACKER_SECRET"):
        create_app(TrackerConfig(database_url=tracker_env["TRACKER_DATABASE_URL"],
                                 redis_url=tracker_env["TRACKER_REDIS_URL"], secret="change-me"))


def test_token_command_refuses_weak_secret(tracker_env: dict[str, str]) -> None:
    for name in ("unset", "change-me", "31 bytes"):
        out = _cli(_env(WEAK[name]), "token", "alice")
        assert out.returncode != 0, name
        assert "TRACKER_SECRET" in out.stderr, name
        assert "Traceback" not in out.stderr, name
        assert out.stdout.strip() == "", name
    ok = _cli(_env(STRONG), "token", "alice", "--ttl", "60")
    assert ok.returncode == 0, ok.stderr
    claims = jwt.decode(ok.stdout.strip(), STRONG, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 60


def test_token_ttl_bounded_by_max_ttl(tracker_env: dict[str, str]) -> None:
    week = 7 * 24 * 3600
    assert _cli(_env(STRONG), "token", "alice", "--ttl", str(week)).returncode == 0
    over = _cli(_env(STRONG), "token", "alice", "--ttl", str(week + 1))
    assert over.returncode != 0 and "tracker_token_max_ttl" in over.stderr and over.stdout.strip() == ""
    # The bound is a setting: TRACKER_TOKEN_MAX_TTL lowers it.
    low = _cli(_env(STRONG, TRACKER_TOKEN_MAX_TTL="100"), "token", "alice", "--ttl", "101")
    assert low.returncode != 0 and "100" in low.stderr
    assert _cli(_env(STRONG, TRACKER_TOKEN_MAX_TTL="100"), "token", "alice", "--ttl", "100").returncode == 0


def _forge(secret: str, **claims: Any) -> str:
    return jwt.encode({"sub": "x", "admin": True, **claims}, secret, algorithm="HS256")


async def _status(session: aiohttp.ClientSession, url: str, token: str | None = None, **kw: Any) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with session.get(url, headers=headers, **kw) as r:
        if r.status == 401:
            body = await r.json()
            assert body["error"]["code"] == "unauthorized"
        else:
            await r.read()
        return r.status


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # forging with weak keys on purpose
async def test_gateway_refuses_forged_and_long_lived_tokens(gateway: Any) -> None:
    now = int(time.time())
    url = f"{gateway.api}/tasks"
    async with aiohttp.ClientSession() as s:
        for placeholder in PLACEHOLDERS:
            assert await _status(s, url, _forge(placeholder, iat=now, exp=now + 60)) == 401, placeholder
        assert await _status(s, url, _forge(SECRET, iat=now, exp=10**15)) == 401
        assert await _status(s, url, _forge(SECRET, exp=10**15)) == 401  # no iat: judged from now
        assert await _status(s, url, _forge(SECRET, iat=now)) == 401  # no exp at all
        assert await _status(s, url, _forge(SECRET, iat=now, exp=now + 7 * 24 * 3600 + 60)) == 401
        # The same claims with a lifetime within the bound are accepted.
        assert await _status(s, url, _forge(SECRET, iat=now, exp=now + 7 * 24 * 3600)) == 200
        assert await _status(s, url, _forge(SECRET, exp=now + 60)) == 200


def test_decode_token_max_ttl() -> None:
    now = int(time.time())
    token = _forge(SECRET, iat=now, exp=now + 3600)
    assert decode_token(SECRET, token).user_id == "x"
    from webgate.core.auth import AuthError

    with pytest.raises(AuthError, match="lifetime"):
        decode_token(SECRET, token, max_ttl=600)


async def test_rest_token_only_in_header_except_exports(gateway: Any) -> None:
    token = make_token("alice")
    async with aiohttp.ClientSession() as s:
        assert await _status(s, f"{gateway.api}/tasks", params={"token": token}) == 401
        assert await _status(s, f"{gateway.api}/tasks/stats", params={"token": token}) == 401
        assert await _status(s, f"{gateway.api}/tasks", token) == 200
        for export in ("tasks.csv", "tasks.json"):
            assert await _status(s, f"{gateway.api}/export/{export}", params={"token": token}) == 200, export
            assert await _status(s, f"{gateway.api}/export/{export}", token) == 200, export
            assert await _status(s, f"{gateway.api}/export/{export}") == 401, export


def test_no_change_me_default() -> None:
    from tracker.config import TrackerConfig

    assert TrackerConfig().secret == ""
    assert TrackerConfig().token_max_ttl == 604800
    assert "change-me" not in (Path(ROOT) / "tracker" / "config.py").read_text()
