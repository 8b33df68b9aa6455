"""JWT tokens (HS256): ``sub`` is the user id, ``admin`` a bool, ``iat``/``exp`` issue and expiry times.

The signing secret must be strong (:func:`check_secret`); a token's lifetime is bounded by
``tracker_token_max_ttl`` (default 7 days).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
from aiohttp import web

from webgate.core.errors import json_error
from webgate.core.keys import CONFIG

__all__ = ["Principal", "make_token", "decode_token", "authenticate", "token_from_request", "AuthError",
           "check_secret", "SecretError", "DEFAULT_MAX_TTL", "MIN_SECRET_BYTES"]

_LEEWAY = 5
#: Longest token lifetime accepted by default (``tracker_token_max_ttl``): 7 days.
DEFAULT_MAX_TTL = 7 * 24 * 3600
MIN_SECRET_BYTES = 32
_PLACEHOLDERS = frozenset({"change-me", "secret", "changeme"})


class SecretError(ValueError):
    """The configured signing secret is missing or weak."""


def check_secret(secret: str | None) -> str:
    """Return ``secret`` if it is strong enough to sign tokens, else raise :class:`SecretError`.

    Refused: unset or empty, a known placeholder (``change-me``, ``secret``, ``changeme``, in any
    case) and anything shorter than 32 bytes in UTF-8.
    """
    if secret is None or not isinstance(secret, str) or not secret.strip():
        raise SecretError("TRACKER_SECRET is not set: set tracker_secret or TRACKER_SECRET to a random "
                          f"string of at least {MIN_SECRET_BYTES} bytes")
    if secret.strip().lower() in _PLACEHOLDERS:
        raise SecretError("TRACKER_SECRET is a placeholder: set it to a random string of at least "
                          f"{MIN_SECRET_BYTES} bytes")
    if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        raise SecretError(f"TRACKER_SECRET is too short: it needs at least {MIN_SECRET_BYTES} bytes "
                          f"(got {len(secret.encode('utf-8'))})")
    return secret


class AuthError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    admin: bool = False
    #: The token's expiry (epoch seconds); the feed closes a socket then (4001).
    exp: float | None = None

    def can_see_user(self, user_id: str | None) -> bool:
        return self.admin or (user_id is not None and user_id == self.user_id)


def make_token(secret: str, user_id: str, admin: bool = False, ttl: int = 3600, *,
               max_ttl: int = DEFAULT_MAX_TTL) -> str:
    """Mint a token for ``user_id`` valid for ``ttl`` seconds (at most ``max_ttl``)."""
    check_secret(secret)
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user_id must be a non-empty string")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        raise ValueError("ttl must be a positive number of seconds")
    if ttl > max_ttl:
        raise ValueError(f"ttl {ttl} exceeds the maximum token lifetime of {max_ttl} seconds "
                         "(tracker_token_max_ttl)")
    now = int(time.time())
    return jwt.encode({"sub": user_id, "admin": bool(admin), "iat": now, "exp": now + ttl}, secret,
                      algorithm="HS256")


def decode_token(secret: str, token: str, *, max_ttl: int = DEFAULT_MAX_TTL) -> Principal:
    """The token's principal; raises :class:`AuthError` for a bad, expired or too long-lived token."""
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], leeway=_LEEWAY,
                            options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise AuthError("invalid token: bad expiry")
    if iat is not None and (not isinstance(iat, (int, float)) or isinstance(iat, bool)):
        raise AuthError("invalid token: bad issue time")
    lifetime = exp - (iat if iat is not None else time.time())
    if lifetime > max_ttl + _LEEWAY:
        raise AuthError(f"invalid token: lifetime exceeds {max_ttl} seconds")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("invalid token: bad subject")
    return Principal(sub, claims.get("admin") is True, float(exp))


def token_from_request(request: web.Request, *, allow_query: bool = False) -> str | None:
    """The bearer token of ``Authorization``; ``?token=`` too only when ``allow_query``."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    if allow_query:
        return request.query.get("token") or None
    return None


def authenticate(request: web.Request, *, allow_query: bool = False) -> Principal:
    """The caller's identity; raises a JSON 401 without a valid token.

    REST takes the token from ``Authorization: Bearer`` only; ``allow_query`` also accepts
    ``?token=`` (the export downloads and the WebSocket upgrade).
    """
    token = token_from_request(request, allow_query=allow_query)
    if token is None:
        where = "Authorization: Bearer or ?token=" if allow_query else "Authorization: Bearer"
        raise json_error(401, "unauthorized", f"missing token ({where})")
    config = request.config_dict[CONFIG]  # REST handlers run in a sub-application
    try:
        return decode_token(config.secret, token, max_ttl=config.token_max_ttl)
    except AuthError as exc:
        raise json_error(401, "unauthorized", str(exc)) from None
