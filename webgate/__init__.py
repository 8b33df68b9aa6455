"""celery-tracking's gateway: WebSocket feed, REST API, notifications and dashboard."""

from webgate.app import create_app, run_gateway
from webgate.core.auth import Principal, decode_token, make_token

__all__ = ["create_app", "run_gateway", "make_token", "decode_token", "Principal"]
