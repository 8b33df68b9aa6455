"""REST: ``POST /tasks/{task_id}/rerun`` - publish a recorded task again (admin).

The task goes through the Celery app the gateway was started with (``celery -A proj tracker
gateway`` or ``tracker --app proj gateway``); see :mod:`tracker.rerun`.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from tracker.rerun import NotRerunnable, publish_rerun
from webgate.api.common import Call, Endpoints, flush_writes, reply, visible_task
from webgate.api.models import TaskPath
from webgate.api.schema import ref
from webgate.core.errors import json_error
from webgate.core.keys import CELERY_APP, REPORTER

__all__ = ["routes", "rerun_task"]

routes = Endpoints()


@routes.operation("POST", "/tasks/{task_id}/rerun", operation_id="rerunTask", tag="control",
                  summary="Run a task again with its stored arguments, on its original queue, for its original user "
                   "(admin)",
                  description="Answers 409 `not_rerunnable` when the task's arguments were redacted or not stored, "
                       "or the gateway's Celery app does not know the task; 503 `no_celery_app` when the "
                       "gateway was started without a Celery app.",
                  path=TaskPath, ok=(202, "Published; the new task's id", ref("Rerun")), errors=(403, 404, 409))
async def rerun_task(call: Call) -> web.Response:
    if not call.principal.admin:
        raise json_error(403, "forbidden", "re-running a task needs an admin token")
    record = await visible_task(call, call.path["task_id"])
    celery_app = call.app[CELERY_APP]
    if celery_app is None:
        raise json_error(503, "no_celery_app",
                         "the gateway has no Celery app to publish with: start it with "
                         "`celery -A proj tracker gateway` or `tracker --app proj gateway`")
    try:
        # send_task does broker I/O (and may retry a connection): keep it off the event loop.
        new_id = await asyncio.to_thread(publish_rerun, celery_app, record, call.app[REPORTER])
    except NotRerunnable as exc:
        raise json_error(409, "not_rerunnable", f"task {record.task_id!r} cannot be re-run: {exc}") from None
    await flush_writes(call.app)
    return reply({"task_id": new_id, "rerun_of": record.task_id}, 202)
