"""Typed application keys shared by the gateway's modules."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from tracker.config import TrackerConfig
from tracker.reporter import Reporter

__all__ = ["CONFIG", "ENGINE", "REDIS", "REPORTER", "CELERY_APP", "GATEWAY_ID"]

CONFIG = web.AppKey("tracker_config", TrackerConfig)
ENGINE = web.AppKey("tracker_engine", AsyncEngine)
REDIS = web.AppKey("tracker_redis", aioredis.Redis)
#: Writes from the REST API go through the same Recorder/EventBus path as Celery tasks.
REPORTER = web.AppKey("tracker_reporter", Reporter)
CELERY_APP = web.AppKey("tracker_celery_app", Any)
GATEWAY_ID = web.AppKey("tracker_gateway_id", str)
