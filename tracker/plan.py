"""One plan, two thin executors: the sync and asyncio paths of the same operation.

An operation that the CLI runs synchronously and the gateway runs on its event loop (a purge,
a health sweep, a control request) is written once, as a generator that yields *steps* and
receives each step's reply. The statements are built once, by the plan; :func:`run_sync` and
:func:`run_async` only carry the steps out, with a synchronous or an asyncio engine and Redis
client. A step that raises is thrown back into the plan at the point where it was yielded,
so the plan's own ``try``/``except``/``finally`` (logging an outage, releasing a lock) holds
for both paths alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.engine import Engine, Result
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

__all__ = ["Sql", "Connect", "Pipe", "Call", "Pause", "Step", "Plan", "run_sync", "run_async"]

T = TypeVar("T")


@dataclass(frozen=True)
class Sql:
    """Execute ``statement`` on the step's connection; the reply is ``read(result)``.

    ``read`` runs before a ``commit`` so that rows are consumed inside their transaction.
    """

    statement: Executable
    params: Mapping[str, Any] | None = None
    read: Callable[[Result[Any]], Any] = lambda r: r
    commit: bool = False


@dataclass(frozen=True)
class Connect:
    """Run ``plan`` (whose steps are :class:`Sql`/:class:`Pause`) on one connection of the engine.

    ``begin``: the whole sub-plan is one transaction (``engine.begin()``); otherwise the
    connection is plain (``engine.connect()``) and the sub-plan commits itself.
    """

    plan: Generator[Step, Any, Any]
    begin: bool = False


@dataclass(frozen=True)
class Pipe:
    """Queue commands on a Redis pipeline (``build``) and execute it; the reply is the results."""

    build: Callable[[Any], None]
    transaction: bool = False


@dataclass(frozen=True)
class Call:
    """Call a blocking function; the asyncio executor runs it in a thread, off the event loop."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pause:
    """Wait ``seconds`` (``asyncio.sleep`` on the event loop, so other work goes on)."""

    seconds: float


Step = Sql | Connect | Pipe | Call | Pause
Plan = Generator[Step, Any, T]


def _advance(plan: Plan[Any], reply: Any, error: Exception | None) -> tuple[bool, Any]:
    """Send the last reply (or throw the last error) into ``plan``: (done, next step or value)."""
    try:
        return False, plan.throw(error) if error is not None else plan.send(reply)
    except StopIteration as stop:
        return True, stop.value


def run_sync(plan: Plan[T], *, engine: Engine | None = None, redis: Any = None, conn: Any = None) -> T:
    """Carry ``plan`` out with a synchronous engine and Redis client."""
    reply: Any = None
    error: Exception | None = None
    while True:
        done, step = _advance(plan, reply, error)
        if done:
            return step  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            if isinstance(step, Sql):
                result = conn.execute(step.statement, step.params)
                reply = step.read(result)
                if step.commit:
                    conn.commit()
            elif isinstance(step, Connect):
                assert engine is not None, "a plan with SQL steps needs an engine"
                with engine.begin() if step.begin else engine.connect() as c:
                    reply = run_sync(step.plan, conn=c)
            elif isinstance(step, Pipe):
                pipe = redis.pipeline(transaction=step.transaction)
                step.build(pipe)
                reply = pipe.execute()
            elif isinstance(step, Call):
                reply = step.fn(*step.args, **step.kwargs)
            elif step.seconds:
                time.sleep(step.seconds)
        except Exception as exc:  # handed back to the plan, which decides
            error = exc


async def run_async(plan: Plan[T], *, engine: AsyncEngine | None = None, redis: Any = None,
                    conn: Any = None) -> T:
    """Carry ``plan`` out with an asyncio engine and Redis client: the same steps as :func:`run_sync`."""
    reply: Any = None
    error: Exception | None = None
    while True:
        done, step = _advance(plan, reply, error)
        if done:
            return step  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            if isinstance(step, Sql):
                result = await conn.execute(step.statement, step.params)
                reply = step.read(result)
                if step.commit:
                    await conn.commit()
            elif isinstance(step, Connect):
                assert engine is not None, "a plan with SQL steps needs an engine"
                async with engine.begin() if step.begin else engine.connect() as c:
                    reply = await run_async(step.plan, conn=c)
            elif isinstance(step, Pipe):
                pipe = redis.pipeline(transaction=step.transaction)
                step.build(pipe)
                reply = await pipe.execute()
            elif isinstance(step, Call):
                reply = await asyncio.to_thread(step.fn, *step.args, **step.kwargs)
            else:
                await asyncio.sleep(step.seconds)
        except Exception as exc:  # handed back to the plan, which decides
            error = exc
