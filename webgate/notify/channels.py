"""Notification delivery channels: in-app (the feed), e-mail, Slack and signed webhooks.

Each channel has one coroutine, ``send(notification, targets)``, that either returns (the
notification was handed over) or raises :class:`DeliveryError` saying whether trying again
can help. The notifier adds timeouts, retries with backoff and the delivery bookkeeping.

Webhook signatures
------------------
Every webhook POST carries ``X-Tracker-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>``
is ``HMAC-SHA256(tracker_webhook_secret, "<t>." + raw body)``. A receiver recomputes it over the
exact bytes it received and rejects old timestamps (replays)::

    from webgate.notify.channels import verify_signature
    ok = verify_signature(secret, request.headers["X-Tracker-Signature"], await request.read())

``X-Tracker-Delivery`` (``<notification id>-<channel>``) is the same on every attempt, so a
receiver can drop a retry of a delivery it has already processed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.errors import MessageError
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol

import aiohttp
import aiosmtplib
import redis.asyncio as aioredis

from tracker.config import TrackerConfig
from tracker.events import Event, encode
from tracker.notify import Rule, single_line
from tracker.records import NotificationRecord

__all__ = [
    "SIGNATURE_HEADER", "DeliveryError", "EmailSettings", "Targets", "Channel", "WebsocketChannel",
    "EmailChannel", "SlackChannel", "WebhookChannel", "sign", "verify_signature", "notification_payload",
    "slack_payload", "slack_escape", "slack_link", "webhook_body", "email_message", "check_channel_settings",
]

SIGNATURE_HEADER = "X-Tracker-Signature"
_USER_AGENT = "celery-tracking-notifier/1"
_EMOJI = {"error": ":x:", "success": ":white_check_mark:", "warning": ":warning:", "progress": ":hourglass:",
          "info": ":information_source:"}


class DeliveryError(Exception):
    """A failed delivery; ``permanent`` when retrying cannot help (no address, HTTP 400, ...)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


# -- signatures -------------------------------------------------------------------------------------
def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Tracker-Signature`` value for ``body``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify_signature(secret: str, header: str | None, body: bytes, *, tolerance: float = 300.0,
                     now: float | None = None) -> bool:
    """True when ``header`` is a valid signature of ``body`` made within ``tolerance`` seconds."""
    if not secret or not header or not isinstance(body, (bytes, bytearray)):
        return False
    t: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1":
            candidates.append(value)
    if t is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + bytes(body), hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, c) for c in candidates)


# -- settings -----------------------------------------------------------------------------------------
def _import(path: str) -> Any:
    module, _, attr = path.replace(":", ".").rpartition(".")
    if not module:
        raise ValueError(f"{path!r} is not a dotted path such as 'proj.notify.recipients'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from None


def _addresses(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [a.strip() for a in value.split(",")]
    return [str(a) for a in value if a and "@" in str(a)]


@dataclass(frozen=True)
class EmailSettings:
    """``tracker_email``: SMTP server, sender and who receives a user's notifications.

    ``recipients`` maps a user id to addresses (``"*"`` is everyone else), or is a function
    (or its dotted path) ``recipients(user_id) -> [addresses]``, which may be async.
    """

    host: str
    sender: str
    port: int = 25
    use_tls: bool = False
    start_tls: bool | None = None
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0
    recipients: Mapping[str, Any] | Callable[[str | None], Any] | None = field(default=None, repr=False)

    _KEYS = frozenset({"host", "port", "use_tls", "start_tls", "username", "password", "sender", "from",
                       "recipients", "timeout"})

    @classmethod
    def parse(cls, value: Any) -> EmailSettings | None:
        """Validate ``tracker_email`` (a dict, or the dotted path of a dict or of a function returning one)."""
        if value is None or value == "" or value == {}:
            return None
        if isinstance(value, str):
            value = _import(value)
            if callable(value):
                value = value()
        if not isinstance(value, Mapping):
            raise ValueError("tracker_email must be a dict of SMTP settings")
        unknown = set(value) - cls._KEYS
        if unknown:
            raise ValueError(f"tracker_email: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                             f"allowed: {', '.join(sorted(cls._KEYS))}")
        host, sender = value.get("host"), value.get("sender", value.get("from"))
        if not isinstance(host, str) or not host:
            raise ValueError("tracker_email: 'host' (the SMTP server) is required")
        if not isinstance(sender, str) or "@" not in sender:
            raise ValueError("tracker_email: 'sender' must be an e-mail address")
        port = value.get("port", 465 if value.get("use_tls") else 25)
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError("tracker_email: 'port' must be a TCP port number")
        timeout = value.get("timeout", 30.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError("tracker_email: 'timeout' must be a positive number of seconds")
        for name in ("username", "password"):
            if value.get(name) is not None and not isinstance(value[name], str):
                raise ValueError(f"tracker_email: {name!r} must be a string")
        recipients = value.get("recipients")
        if isinstance(recipients, str):
            recipients = _import(recipients)
        if recipients is not None and not (isinstance(recipients, Mapping) or callable(recipients)):
            raise ValueError("tracker_email: 'recipients' must map user ids to addresses or be a function")
        if isinstance(recipients, Mapping):
            for user, addresses in recipients.items():
                if not _addresses(addresses):
                    raise ValueError(f"tracker_email: recipients[{user!r}] has no e-mail address")
        start_tls = value.get("start_tls")
        return cls(host=host, sender=sender, port=port, use_tls=bool(value.get("use_tls", False)),
                   start_tls=None if start_tls is None else bool(start_tls), username=value.get("username"),
                   password=value.get("password"), timeout=float(timeout), recipients=recipients)

    async def recipients_for(self, user_id: str | None) -> list[str]:
        r = self.recipients
        if r is None:
            return []
        if isinstance(r, Mapping):
            found = r.get(user_id) if user_id is not None else None
            return _addresses(found if found is not None else r.get("*"))
        result = r(user_id)
        if asyncio.iscoroutine(result):
            result = await result
        return _addresses(result)


@dataclass(frozen=True)
class Targets:
    """Where a notification goes: a rule's overrides, else the global settings.

    ``reason`` says why a channel has no target when the notification's origin rules it out.
    """

    email_to: tuple[str, ...] = ()
    slack_webhook_url: str | None = None
    webhook_url: str | None = None
    reason: str | None = None

    @classmethod
    def of(cls, rule: Rule | None, config: TrackerConfig, origin: str = "rule") -> Targets:
        """The targets of a notification of ``origin`` (``tracker.notify.ORIGINS``).

        ``rule``: the rule's overrides, else the global settings. ``api`` (server code) has no
        rule: the global settings. ``rest`` (a client's post) gets no Slack or webhook target at
        all - the operators' receivers trust what arrives there - and e-mail only to the
        recipients configured for its user.
        """
        if origin == "rest":
            return cls(reason="client posts (POST /notifications) are not sent to Slack or webhooks")
        if origin != "rule":
            rule = None
        return cls(email_to=rule.email_to if rule else (),
                   slack_webhook_url=(rule.slack_webhook_url if rule else None) or config.slack_webhook_url,
                   webhook_url=(rule.webhook_url if rule else None) or config.webhook_url)


def check_channel_settings(rules: Sequence[Rule], config: TrackerConfig, email: EmailSettings | None) -> None:
    """Raise a clear ValueError when a rule uses a channel that is not configured."""
    for url_name in ("slack_webhook_url", "webhook_url"):
        url = getattr(config, url_name)
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise ValueError(f"tracker_{url_name} must be an http(s) URL")
    for i, rule in enumerate(rules):
        where = f"tracker_notifications[{i}] ({rule.id})"
        if "email" in rule.channels:
            if email is None:
                raise ValueError(f"{where}: the email channel needs tracker_email (SMTP host, sender, recipients)")
            if not rule.email_to and email.recipients is None:
                raise ValueError(f"{where}: the email channel needs 'email_to' or tracker_email['recipients']")
        if "slack" in rule.channels and not (rule.slack_webhook_url or config.slack_webhook_url):
            raise ValueError(f"{where}: the slack channel needs tracker_slack_webhook_url or 'slack_webhook_url'")
        if "webhook" in rule.channels:
            if not (rule.webhook_url or config.webhook_url):
                raise ValueError(f"{where}: the webhook channel needs tracker_webhook_url or 'webhook_url'")
            if not config.webhook_secret:
                raise ValueError(f"{where}: the webhook channel needs tracker_webhook_secret to sign requests")


# -- payloads -----------------------------------------------------------------------------------------
def notification_payload(n: NotificationRecord) -> dict[str, Any]:
    """What receivers see of a notification: its record without the delivery bookkeeping."""
    d = n.to_dict()
    d.pop("delivery", None)
    return d


def slack_escape(text: str) -> str:
    """Text for Slack mrkdwn: ``&``, ``<`` and ``>`` as entities, so text cannot open a link
    (``<https://evil|x>``) or mention (``<!channel>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_link(url: str, label: str) -> str:
    """``<url|label>`` with the URL escaped: a ``|`` in it (percent-encoded) cannot start a label
    of its own, nor ``>`` end the link early."""
    return f"<{slack_escape(url).replace('|', '%7C')}|{slack_escape(label).replace('|', '/')}>"


def slack_payload(n: NotificationRecord) -> dict[str, Any]:
    """An incoming-webhook message: a readable line with a link, and blocks for richer clients."""
    head = f"{_EMOJI.get(n.type, '')} *{slack_escape(n.title)}*".strip()
    if n.priority in ("urgent", "high"):
        head += f" ({n.priority})"
    body = slack_escape(n.message) if n.message else ""
    link = slack_link(n.action_url, "Open task") if n.action_url else ""
    text = "\n".join(p for p in (head, body, link) if p)
    context = [f"priority: {n.priority}"]
    if n.task_id:
        context.append(f"task: `{slack_escape(n.task_id)}`")
    if n.user_id:
        context.append(f"user: {slack_escape(n.user_id)}")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(p for p in (head, body) if p)[:3000]}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": " | ".join(context)}]},
    ]
    if n.action_url:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open task"}, "url": n.action_url}]})
    return {"text": text, "blocks": blocks}


def webhook_body(n: NotificationRecord) -> bytes:
    """The exact bytes POSTed (and signed)."""
    payload = {"type": "notification", "id": n.id, "notification": notification_payload(n), "sent_at": time.time()}
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


def email_message(n: NotificationRecord, sender: str, to: Sequence[str]) -> EmailMessage:
    """The e-mail of ``n``; ValueError when it cannot be built (a bad sender or address)."""
    msg = EmailMessage()
    prefix = f"[{n.priority.upper()}] " if n.priority in ("urgent", "high") else ""
    # One line: CR, LF and other control characters in a title would end the header.
    msg["Subject"] = single_line(prefix + n.title)[:900]
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=False)
    domain = sender.rpartition("@")[2] or "localhost"
    # The same id on every attempt: a mail system can drop a retried duplicate.
    msg["Message-ID"] = f"<tracker-notification-{n.id}@{domain}>"
    msg["X-Tracker-Notification"] = str(n.id)
    if n.priority in ("urgent", "high"):
        msg["X-Priority"] = "1" if n.priority == "urgent" else "2"
    lines = [n.title, "", n.message] if n.message else [n.title]
    lines.append("")
    if n.task_id:
        lines.append(f"Task: {n.task_id}")
    lines.append(f"Type: {n.type}    Priority: {n.priority}")
    if n.action_url:
        lines.append(f"Open: {n.action_url}")
    lines += ["", "-- ", f"celery-tracking notification #{n.id}"]
    msg.set_content("\n".join(lines))
    return msg


# -- channels -------------------------------------------------------------------------------------------
class Channel(Protocol):
    name: str

    async def send(self, n: NotificationRecord, targets: Targets) -> None: ...


class WebsocketChannel:
    """In-app: a ``notification`` event on the stream; the feed pushes it to ``user:<id>``."""

    name = "websocket"

    def __init__(self, redis: aioredis.Redis, stream: str, maxlen: int) -> None:
        self.redis, self.stream, self.maxlen = redis, stream, maxlen

    async def send(self, n: NotificationRecord, targets: Targets) -> None:
        event = Event("notification", n.task_id, n.user_id, time.time(), notification_payload(n))
        try:
            await self.redis.xadd(self.stream, encode(event), maxlen=self.maxlen,  # type: ignore[arg-type]
                                  approximate=True)
        except (OSError, aioredis.RedisError) as exc:
            raise DeliveryError(f"cannot publish to the stream: {exc}") from None


class EmailChannel:
    name = "email"

    def __init__(self, settings: EmailSettings | None) -> None:
        self.settings = settings

    async def send(self, n: NotificationRecord, targets: Targets) -> None:
        s = self.settings
        if s is None:
            raise DeliveryError("the email channel is not configured (tracker_email)", permanent=True)
        to = list(targets.email_to) or await s.recipients_for(n.user_id)
        if not to:
            raise DeliveryError(f"no e-mail address for user {n.user_id!r}", permanent=True)
        try:
            message = email_message(n, s.sender, to)
        except (ValueError, TypeError, MessageError) as exc:
            # The same message would fail the same way on every attempt.
            raise DeliveryError(f"cannot build the e-mail: {exc}", permanent=True) from None
        try:
            await aiosmtplib.send(message, sender=s.sender, recipients=to, hostname=s.host,
                                  port=s.port, username=s.username, password=s.password, use_tls=s.use_tls,
                                  start_tls=s.start_tls, timeout=s.timeout)
        except (aiosmtplib.SMTPNotSupported, UnicodeError) as exc:
            # The server lacks what this message needs (SMTPUTF8 for a non-ASCII address, ...):
            # refused before anything was sent, and it would be refused again.
            raise DeliveryError(f"SMTP cannot send this message: {type(exc).__name__}: {exc}",
                                permanent=True) from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"SMTP refused the recipients: {exc}", permanent=True) from None
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx replies are final, 4xx are "try again later".
            raise DeliveryError(f"SMTP {exc.code}: {exc.message}", permanent=exc.code >= 500) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP {type(exc).__name__}: {exc}") from None


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> None:
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if 200 <= resp.status < 300:
                await resp.read()
                return
            detail = (await resp.text(errors="replace"))[:200]
            retry = resp.status in (408, 425, 429) or resp.status >= 500
            raise DeliveryError(f"HTTP {resp.status} from {url}: {detail}".strip(), permanent=not retry)
    except aiohttp.ClientError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None


class SlackChannel:
    """Slack incoming webhook."""

    name = "slack"

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def send(self, n: NotificationRecord, targets: Targets) -> None:
        if not targets.slack_webhook_url:
            raise DeliveryError(targets.reason or "the slack channel is not configured (tracker_slack_webhook_url)",
                                permanent=True)
        body = json.dumps(slack_payload(n)).encode()
        await _post(self.session, targets.slack_webhook_url, body,
                    {"Content-Type": "application/json", "User-Agent": _USER_AGENT})


class WebhookChannel:
    """JSON POST signed with HMAC-SHA256 (see the module docstring)."""

    name = "webhook"

    def __init__(self, session: aiohttp.ClientSession, secret: str | None) -> None:
        self.session, self.secret = session, secret

    async def send(self, n: NotificationRecord, targets: Targets) -> None:
        if not targets.webhook_url:
            raise DeliveryError(targets.reason or "the webhook channel is not configured (tracker_webhook_url)",
                                permanent=True)
        if not self.secret:
            raise DeliveryError("tracker_webhook_secret is not set: webhooks are always signed", permanent=True)
        body = webhook_body(n)
        headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT,
                   SIGNATURE_HEADER: sign(self.secret, body), "X-Tracker-Event": "notification",
                   "X-Tracker-Delivery": f"{n.id}-webhook"}
        await _post(self.session, targets.webhook_url, body, headers)
