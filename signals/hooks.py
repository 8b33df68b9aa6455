"""Celery signal receivers that record every task's lifecycle.

Receivers are module-level functions connected with ``weak=False`` and a ``dispatch_uid``;
``install`` is idempotent (a flag and a lock) and paired with ``uninstall``. Every receiver
is wrapped by :func:`_guard`: an internal error is logged and swallowed, so a user's task
never sees it.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import threading
import time
import traceback as tb
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from celery import signals as cs

from signals import logcapture, workers
from signals.context import RERUN_HEADER, TrackingContext, current_context, from_headers, to_headers
from signals.runtime import ActiveTask, Runtime, close_runtime, runtime_for, shutdown_all
from signals.runtime import runtime_key as _runtime_key
from tracker.config import TrackerConfig
from tracker.events import RawJSON, dumps
from tracker.redaction import Redactor, redactor_for

if TYPE_CHECKING:  # Celery only as the type of an app
    from celery import Celery

__all__ = ["install", "uninstall", "is_installed", "config_for", "runtime_for_app", "TaskCancelled"]

logger = logging.getLogger("signals.hooks")

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_installed: dict[int, tuple[Any, TrackerConfig]] = {}
_connected = False
_RESULT_LIMIT = 64 * 1024
PUBLISHED_HEADER = "tracker_published_at"
#: Set by the worker's main process on receipt, read by the pool process (see on_task_received).
RECEIVED_HEADER = "tracker_received_at"


class TaskCancelled(Exception):
    """Raised inside a ``TrackedTask`` when it was cancelled; ends it as ``cancelled``.

    Let it propagate (``finally`` blocks and ``TrackedTask.on_cancel`` still run); a task
    that swallows it keeps running.
    """


def _guard(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            logger.warning("celery-tracking: %s failed; the task is not affected", fn.__name__, exc_info=True)
            return None

    return wrapper  # type: ignore[return-value]


# -- configuration lookup -------------------------------------------------------------------
def config_for(app: Celery | None = None) -> TrackerConfig | None:
    """The configuration installed for ``app`` (or the only/current installed app)."""
    if not _installed:
        return None
    if app is not None:
        entry = _installed.get(id(app))
        if entry is not None:
            return entry[1]
    if len(_installed) == 1:
        return next(iter(_installed.values()))[1]
    from celery._state import get_current_app  # what celery.current_app proxies: the app object itself

    entry = _installed.get(id(get_current_app()))
    return entry[1] if entry else next(iter(_installed.values()))[1]


def runtime_for_app(app: Any = None) -> Runtime | None:
    config = config_for(app)
    return runtime_for(config) if config is not None else None


#: id(app) -> runtime: the lookup runs in every hook of every task. Emptied by install and
#: uninstall and in a forked child; a runtime closed since (worker shutdown) is looked up again.
_runtime_cache: dict[int, Runtime | None] = {}

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_runtime_cache.clear)


def _runtime(sender: Any) -> Runtime | None:
    app = getattr(sender, "app", None) if sender is not None and not isinstance(sender, str) else None
    key = id(app)
    rt = _runtime_cache.get(key, _MISSING)
    if rt is not _MISSING and (rt is None or not rt.closed):
        return rt
    found = runtime_for_app(app)
    _runtime_cache[key] = found
    return found


_MISSING: Any = object()


# -- helpers ---------------------------------------------------------------------------------
def _task_id(headers: Mapping[str, Any] | None, body: Any) -> str | None:
    if headers and headers.get("id"):
        return str(headers["id"])
    if isinstance(body, Mapping) and body.get("id"):  # task message protocol 1
        return str(body["id"])
    return None


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


_PLAIN = (type(None), bool, int, float)


def _jsonable_result(value: Any) -> Any:
    """The result as stored: plain values as they are, anything else as JSON text encoded
    once here (the Recorder passes :class:`RawJSON` through), bounded in size."""
    if isinstance(value, _PLAIN) or (isinstance(value, str) and len(value) <= _RESULT_LIMIT):
        return value
    text = dumps(value)
    if len(text) > _RESULT_LIMIT:
        return {"truncated": True, "repr": text[:_RESULT_LIMIT]}
    return RawJSON(text)


#: A task without arguments (most of them) stores these constants: no redaction, no encoding.
_NO_ARGUMENTS: dict[str, Any] = {"args": RawJSON("[]"), "kwargs": RawJSON("{}")}


def _body_arguments(body: Any) -> tuple[Any, Any]:
    """(args, kwargs) of a task message body: protocol 2 ``(args, kwargs, embed)`` or protocol 1."""
    if isinstance(body, (tuple, list)) and len(body) >= 2:
        return body[0], body[1]
    if isinstance(body, Mapping):
        return body.get("args"), body.get("kwargs")
    return None, None


def _argument_fields(config: TrackerConfig, args: Any, kwargs: Any,
                     redactor: Redactor | None = None) -> dict[str, Any]:
    """A task's arguments as stored: redacted here, where they enter, and bounded like results.

    The hooks pass their runtime's redactor (``redactor_for`` its configuration, looked up once).
    """
    if not config.store_args:
        return {}
    if not args and not kwargs:
        return _NO_ARGUMENTS
    plain_args, plain_kwargs = (redactor or redactor_for(config)).arguments(args, kwargs)
    return {"args": _jsonable_result(plain_args) if plain_args else _NO_ARGUMENTS["args"],
            "kwargs": _jsonable_result(plain_kwargs) if plain_kwargs else _NO_ARGUMENTS["kwargs"]}


def _error_fields(exc: BaseException | None, einfo: Any = None, trace: Any = None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if exc is not None:
        name = type(exc).__name__
        fields["error_type"] = "worker-lost" if name == "WorkerLostError" else name
        fields["error_message"] = str(exc)[:10_000]
    text = getattr(einfo, "traceback", None)
    if not text and trace is not None and exc is not None:
        text = "".join(tb.format_exception(type(exc), exc, trace))
    if text:
        fields["traceback"] = str(text)
    return fields


def _request_context(request: Any) -> TrackingContext:
    """The context of a worker-side ``Request`` from its message headers (a plain dict: this
    runs in the worker's single dispatching process for every task, so it must be cheap)."""
    request_dict = getattr(request, "_request_dict", None)
    if request_dict is None:
        request_dict = getattr(request, "request_dict", None)
    return from_headers(request_dict)


def _task_type(ctx: TrackingContext, task: Any, name: str | None) -> str | None:
    return ctx.task_type or getattr(task, "task_type", None) or name


# -- producer side ---------------------------------------------------------------------------
@_guard
def on_before_task_publish(sender: Any = None, body: Any = None, exchange: Any = None, routing_key: Any = None,
                           headers: dict[str, Any] | None = None, properties: Any = None, **_: Any) -> None:
    if headers is None:
        return
    task_id = _task_id(headers, body)
    if task_id is None:
        return
    rt = _runtime(None)
    if rt is None:
        return
    ctx = current_context()
    if ctx is None:
        # A task published from inside a running task inherits its user and tags.
        running = logcapture.current_task.get()
        if running is not None:
            ctx = TrackingContext(user_id=running.user_id, tags=running.tags)
    extra = to_headers(ctx) if ctx is not None else {}
    now = time.time()
    extra.setdefault(PUBLISHED_HEADER, now)
    for key, value in extra.items():
        headers.setdefault(key, value)
    nested = headers.get("headers")
    if isinstance(nested, Mapping):
        headers["headers"] = {**extra, **nested}  # copy: the nested dict may be shared
    if int(headers.get("retries") or 0) > 0:
        return  # a retry republished by the worker: task_retry recorded it
    final = from_headers(headers)
    name = str(headers.get("task") or sender or "")
    group = headers.get("group")
    rt.reporter.pending(
        task_id,
        user_id=final.user_id,
        name=name or None,
        task_type=final.task_type or name or None,
        tags=list(final.tags),
        metadata=dict(final.metadata) or None,
        queue=routing_key or None,
        parent_id=headers.get("parent_id"),
        root_id=headers.get("root_id"),
        group_id=str(group) if group else None,
        rerun_of=headers.get(RERUN_HEADER),
        ts=now,
        **_argument_fields(rt.config, *_body_arguments(body), rt.reporter.redactor),
    )


# -- worker main process ---------------------------------------------------------------------
def _revoke_locally(task_id: str) -> None:
    from celery.worker import state as worker_state

    # Called from the bus thread; LimitedSet.add is a dict store and a heappush, each atomic
    # under the GIL, so the consumer thread's lookups stay consistent.
    worker_state.revoked.add(task_id)


@_guard
def on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is None:
        return
    rt = _runtime(getattr(request, "task", None))
    if rt is None:
        return
    if rt.bus is not None:
        # A task cancelled while queued never runs, even when no Celery app was at hand to
        # revoke it: the bus follows cancel flags and puts them in the worker's revoked set,
        # which Celery checks again just before handing a request to the pool.
        rt.bus.follow_cancellations(_revoke_locally)
    # No write here: this process dispatches every message of the worker (the prefork
    # bottleneck), and a row update per task from it cost a PostgreSQL round of its own. The
    # receipt time rides to the pool process in the request dict (Celery hands it over as the
    # task's request) and is stored with the started state, which has every other field.
    request_dict = getattr(request, "_request_dict", None)
    if isinstance(request_dict, dict):
        request_dict[RECEIVED_HEADER] = time.time()


@_guard
def on_task_revoked(sender: Any = None, request: Any = None, terminated: bool = False, signum: Any = None,
                    expired: bool = False, **_: Any) -> None:
    if request is None:
        return
    rt = _runtime(sender)
    if rt is None:
        return
    ctx = _request_context(request)
    reason = "expired" if expired else ("terminated" if terminated else "revoked")
    rt.reporter.status(request.id, "cancelled", user_id=ctx.user_id, error_type=reason,
                       error_message=f"task {reason}" + (f" (signal {signum})" if signum else ""),
                       name=getattr(request, "name", None), reason=reason)
    if rt.bus is not None:
        rt.bus.clear_control(request.id)  # the message is consumed: its flag has done its job


@_guard
def on_task_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    headers = getattr(message, "headers", None) or {}
    task_id = _task_id(headers, None)
    rt = runtime_for_app(None)
    if task_id is None or rt is None:
        return
    ctx = from_headers(headers)
    rt.reporter.status(task_id, "failed", user_id=ctx.user_id, name=headers.get("task"), error_type="rejected",
                       error_message=str(exc) if exc else "message rejected")


@_guard
def on_task_unknown(sender: Any = None, message: Any = None, exc: Any = None, name: str | None = None,
                    id: str | None = None, **_: Any) -> None:
    headers = getattr(message, "headers", None) or {}
    task_id = id or _task_id(headers, None)
    rt = runtime_for_app(None)
    if task_id is None or rt is None:
        return
    ctx = from_headers(headers)
    rt.reporter.status(task_id, "failed", user_id=ctx.user_id, name=name, task_type=ctx.task_type or name,
                       error_type="unknown-task", error_message=f"no task registered as {name!r}: {exc}")


# -- worker pool process ---------------------------------------------------------------------
@_guard
def on_task_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    task = task or sender
    if task is None or task_id is None:
        return
    rt = _runtime(task)
    if rt is None:
        return
    request = task.request
    # Celery puts custom message headers among the request's attributes: read its __dict__.
    ctx = from_headers(getattr(request, "__dict__", None) or request)
    if getattr(request, "is_eager", False) and not (ctx.user_id or ctx.tags or ctx.metadata or ctx.task_type):
        # An eager task (task_always_eager, .apply()) runs inside its caller: nothing was
        # published, so no headers carry the caller's tracking_context, but it is still active.
        ctx = current_context() or ctx
    name = task.name
    task_type = _task_type(ctx, task, name) or name
    tags = tuple(dict.fromkeys((*getattr(task, "tracker_tags", ()), *ctx.tags)))
    active = ActiveTask(task_id=task_id, name=name, task_type=task_type, user_id=ctx.user_id, tags=tags,
                        runtime=rt, rss0=_maxrss(), retries=int(request.retries or 0))
    rt.active[task_id] = active
    rt.beat_soon()  # the worker's running tasks changed
    logcapture.current_task.set(active)
    logcapture.ensure_attached(rt.config.log_level)
    if rt.bus is not None:
        rt.bus.watch_control(task_id)
    delivery = request.delivery_info or {}
    group = request.group
    eta = rt.recorder.median_runtime(task_type) if rt.recorder is not None else None
    published = getattr(request, PUBLISHED_HEADER, None) or from_headers_value(request, PUBLISHED_HEADER)
    if isinstance(published, (int, float)):
        active.queue_wait = max(0.0, active.started_wall - float(published))
    rt.reporter.started(
        task_id,
        user_id=ctx.user_id,
        name=name,
        task_type=task_type,
        tags=list(tags),
        metadata=dict(ctx.metadata) or None,
        ts=active.started_wall,
        eta_seconds=eta,
        worker=request.hostname,
        worker_pid=os.getpid(),
        retries=active.retries,
        parent_id=request.parent_id,
        root_id=request.root_id,
        group_id=str(group) if group else None,
        queue=delivery.get("routing_key") if isinstance(delivery, Mapping) else None,
        # A tracked producer stored the arguments already (its header says so): redact only once.
        **(_argument_fields(rt.config, request.args, request.kwargs, rt.reporter.redactor)
           if published is None else {}),
        received_at=_float_or_none(getattr(request, RECEIVED_HEADER, None)),
        # The task.queue_wait figure: a column of the row, written with this state (tracker.figures).
        queue_wait=active.queue_wait,
    )


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def from_headers_value(request: Any, key: str) -> Any:
    headers = getattr(request, "headers", None)
    if isinstance(headers, Mapping):
        value = headers.get(key)
        if value is None and isinstance(headers.get("headers"), Mapping):
            value = headers["headers"].get(key)
        return value
    return None


@_guard
def on_task_postrun(sender: Any = None, task_id: str | None = None, task: Any = None, state: Any = None,
                    **_: Any) -> None:
    task = task or sender
    rt = _runtime(task)
    if rt is None or task_id is None:
        return
    active = rt.active.pop(task_id, None)
    rt.processed += 1
    rt.beat_soon()
    if rt.bus is not None:
        # Delete a flag this task saw once it has ended (a retry runs again: keep it).
        if rt.bus.controls.get(task_id) is not None and state != "RETRY":
            rt.bus.clear_control(task_id)
        rt.bus.unwatch_control(task_id)
    if logcapture.current_task.get() is active:
        logcapture.current_task.set(None)
    if active is not None:
        run_time = time.monotonic() - active.started
        cpu = time.process_time() - active.cpu0
        growth = float(max(0, _maxrss() - active.rss0))
        if state != "RETRY":
            # Columns of the task row, merged with its final state in the same write.
            rt.reporter.figures(task_id, run_time=run_time, cpu_time=cpu, memory_growth=growth)
        else:
            # The next run overwrites the columns: a retried run keeps its figures as rows.
            samples: list[tuple[str, float, str, float | None]] = [
                ("task.run_time", run_time, "seconds", None), ("task.cpu_time", cpu, "seconds", None),
                ("task.memory_growth", growth, "bytes", None),
                ("task.retries", float(active.retries), "count", None)]
            if active.queue_wait is not None:
                samples.append(("task.queue_wait", active.queue_wait, "seconds", active.started_wall))
            for name, value, unit, ts in samples:
                rt.reporter.metric(name, value, unit=unit, task_id=task_id, task_type=active.task_type,
                                   user_id=active.user_id, ts=ts, publish=False)
        if rt.recorder is not None:
            rt.recorder.finished_run(active.task_type)
    if rt.config.durable:
        rt.flush(timeout=10.0)


def _active(rt: Runtime, task_id: str) -> ActiveTask | None:
    return rt.active.get(task_id)


@_guard
def on_task_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    if sender is None:
        return
    rt = _runtime(sender)
    task_id = getattr(sender.request, "id", None)
    if rt is None or task_id is None:
        return
    active = _active(rt, task_id)
    user_id = active.user_id if active else from_headers(sender.request).user_id
    rt.reporter.status(task_id, "completed", user_id=user_id, progress=100.0, result=_jsonable_result(result),
                       started_at=active.started_wall if active else None)


@_guard
def on_task_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
                    traceback: Any = None, einfo: Any = None, **_: Any) -> None:
    rt = _runtime(sender)
    if rt is None or task_id is None:
        return
    active = _active(rt, task_id)
    user_id = active.user_id if active else from_headers(getattr(sender, "request", None)).user_id
    fields = _error_fields(exception, einfo, traceback)
    if isinstance(exception, TaskCancelled):
        fields["error_type"] = "cancelled"
        rt.reporter.status(task_id, "cancelled", user_id=user_id, reason="cancelled", **fields)
        return
    rt.reporter.status(task_id, "failed", user_id=user_id, name=getattr(sender, "name", None), **fields)


@_guard
def on_task_retry(sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None, **_: Any) -> None:
    rt = _runtime(sender)
    if rt is None or request is None:
        return
    task_id = request.id
    active = _active(rt, task_id)
    user_id = active.user_id if active else from_headers(request).user_id
    exc = reason if isinstance(reason, BaseException) else None
    fields = _error_fields(exc, einfo)
    if exc is None and reason is not None:
        fields["error_message"] = str(reason)
    retries = int(getattr(request, "retries", 0) or 0) + 1
    rt.reporter.status(task_id, "pending", user_id=user_id, event="task.retry", retries=retries, **fields)


@_guard
def on_task_internal_error(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
                           einfo: Any = None, request: Any = None, **_: Any) -> None:
    rt = _runtime(sender)
    if rt is None or task_id is None:
        return
    ctx = from_headers(request)
    fields = _error_fields(exception, einfo)
    fields["error_type"] = "internal-error"
    rt.reporter.status(task_id, "failed", user_id=ctx.user_id, **fields)


@_guard
def on_worker_process_init(**_: Any) -> None:
    from signals import runtime

    runtime.reset()
    config = config_for(None)
    if config is not None:
        logcapture.ensure_attached(config.log_level)
        # Start the writers now, not at the first task: an idle pool process heartbeats too,
        # so its worker shows online with its load before any task arrives.
        runtime_for(config)


@_guard
def on_worker_process_shutdown(**_: Any) -> None:
    shutdown_all(timeout=10.0)


@_guard
def on_worker_shutting_down(**_: Any) -> None:
    shutdown_all(timeout=10.0)


# -- the worker record (main process) ---------------------------------------------------------
@_guard
def on_worker_init(sender: Any = None, **_: Any) -> None:
    # Before the pool forks: every pool process inherits the node name it heartbeats under.
    workers.remember_node(getattr(sender, "hostname", None))


@_guard
def on_worker_ready(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    config = config_for(app)
    if config is None:
        return
    workers.record_ready(config, sender)
    runtime_for(config)  # the main process heartbeats as well, whatever its pool does


@_guard
def on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    config = config_for(getattr(sender, "app", None))
    if config is not None:
        workers.record_stopped(config, getattr(sender, "hostname", None))
    # A process that ran an in-thread worker (tests) goes on as a plain process: no heartbeats.
    workers.forget_node()


_RECEIVERS: list[tuple[Any, Callable[..., Any]]] = [
    (cs.before_task_publish, on_before_task_publish),
    (cs.task_received, on_task_received),
    (cs.task_prerun, on_task_prerun),
    (cs.task_postrun, on_task_postrun),
    (cs.task_success, on_task_success),
    (cs.task_failure, on_task_failure),
    (cs.task_retry, on_task_retry),
    (cs.task_revoked, on_task_revoked),
    (cs.task_rejected, on_task_rejected),
    (cs.task_unknown, on_task_unknown),
    (cs.task_internal_error, on_task_internal_error),
    (cs.worker_process_init, on_worker_process_init),
    (cs.worker_process_shutdown, on_worker_process_shutdown),
    (cs.worker_shutting_down, on_worker_shutting_down),
    (cs.worker_init, on_worker_init),
    (cs.worker_ready, on_worker_ready),
    (cs.worker_shutdown, on_worker_shutdown),
]


def _uid(fn: Callable[..., Any]) -> str:
    return f"celery-tracking.{fn.__name__}"


def install(app: Celery) -> None:
    """Track every task of ``app``: connect the receivers (idempotent)."""
    global _connected
    if app is None or not hasattr(app, "conf"):
        raise TypeError("install() needs a Celery app")
    config = TrackerConfig.from_celery(app)
    with _lock:
        _installed[id(app)] = (app, config)
        _runtime_cache.clear()
        if not _connected:
            for signal, receiver in _RECEIVERS:
                signal.connect(receiver, weak=False, dispatch_uid=_uid(receiver))
            _connected = True


def uninstall(app: Celery | None = None) -> None:
    """Undo :func:`install` for ``app`` (all apps when None); receivers go with the last one."""
    global _connected
    with _lock:
        _runtime_cache.clear()
        if app is None:
            removed = [entry[1] for entry in _installed.values()]
            _installed.clear()
        else:
            entry = _installed.pop(id(app), None)
            removed = [entry[1]] if entry else []
        still_used = {_runtime_key(c) for _, c in _installed.values()}
        for config in removed:
            if _runtime_key(config) not in still_used:
                # Flush what was recorded and stop the writer threads of this configuration.
                close_runtime(config, timeout=5.0)
        if not _installed and _connected:
            for signal, receiver in _RECEIVERS:
                signal.disconnect(receiver, dispatch_uid=_uid(receiver))
            _connected = False
            logcapture.detach()


def is_installed(app: Any = None) -> bool:
    if app is None:
        return _connected
    return id(app) in _installed
