"""JWT tokens (HS256): ``sub`` is the user id, ``admin`` a bool, ``exp`` the expiry."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
from aiohttp import web

from webgate.errors import json_error
from webgate.keys import CONFIG

__all__ = ["Principal", "make_token", "decode_token", "authenticate", "token_from_request", "AuthError"]

_LEEWAY = 5


class AuthError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    admin: bool = False

    def can_see_user(self, user_id: str | None) -> bool:
        return self.admin or (user_id is not None and user_id == self.user_id)


def make_token(secret: str, user_id: str, admin: bool = False, ttl: int = 3600) -> str:
    """Mint a token for ``user_id`` valid for ``ttl`` seconds."""
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user_id must be a non-empty string")
    if not isinstance(ttl, int) or ttl <= 0:
        raise ValueError("ttl must be a positive number of seconds")
    now = int(time.time())
    return jwt.encode({"sub": user_id, "admin": bool(admin), "iat": now, "exp": now + ttl}, secret,
                      algorithm="HS256")


def decode_token(secret: str, token: str) -> Principal:
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], leeway=_LEEWAY,
                            options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("invalid token: bad subject")
    return Principal(sub, claims.get("admin") is True)


def token_from_request(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.query.get("token") or None


def authenticate(request: web.Request) -> Principal:
    """The caller's identity; raises a JSON 401 without a valid token."""
    token = token_from_request(request)
    if token is None:
        raise json_error(401, "unauthorized", "missing token (Authorization: Bearer or ?token=)")
    try:
        return decode_token(request.app[CONFIG].secret, token)
    except AuthError as exc:
        raise json_error(401, "unauthorized", str(exc)) from None
