"""The REST API's application factory: every endpoint module's route table on one sub-application,
mounted under ``/api/v1/progress``.

This is the only module that imports the endpoint modules; they import the leaf
(``webgate.api.common``) and never each other.
"""

from __future__ import annotations

from aiohttp import web

from webgate.api import logs, metrics, notifications, openapi, rerun, tasks, visualizations, workers
from webgate.api.common import API, API_OPERATIONS, Endpoints, Operation

__all__ = ["ROUTE_TABLES", "OPERATIONS", "create_api", "setup"]

#: The endpoint modules' route tables, in the order their routes are matched.
ROUTE_TABLES: tuple[Endpoints, ...] = (openapi.routes, tasks.routes, rerun.routes, logs.routes,
                                       visualizations.routes, metrics.routes, notifications.routes,
                                       workers.routes)
#: Every REST operation, as the OpenAPI document lists them.
OPERATIONS: tuple[Operation, ...] = tuple(op for table in ROUTE_TABLES for op in table.operations)


def create_api() -> web.Application:
    """The REST sub-application (its handlers reach the gateway's resources through the root app)."""
    api = web.Application()
    for table in ROUTE_TABLES:
        api.add_routes(table)
    return api


def setup(app: web.Application) -> None:
    """Mount the REST API on the gateway ``app``."""
    app[API_OPERATIONS] = OPERATIONS
    tasks.setup(app)
    app.add_subapp(API, create_api())
