"""Typed application keys shared by the gateway's modules."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web
from celery import Celery
from sqlalchemy.ext.asyncio import AsyncEngine

from tracker.config import TrackerConfig
from tracker.reporter import Reporter

__all__ = ["CONFIG", "ENGINE", "REDIS", "REPORTER", "CELERY_APP", "GATEWAY_ID"]

CONFIG = web.AppKey("tracker_config", TrackerConfig)
ENGINE = web.AppKey("tracker_engine", AsyncEngine)
REDIS = web.AppKey("tracker_redis", aioredis.Redis)
#: Writes from the REST API go through the same Recorder/EventBus path as Celery tasks.
REPORTER = web.AppKey("tracker_reporter", Reporter)
#: The Celery app the gateway was made with (None: no broker actions, such as revoke or re-run).
CELERY_APP = web.AppKey[Celery | None]("tracker_celery_app")
GATEWAY_ID = web.AppKey("tracker_gateway_id", str)
