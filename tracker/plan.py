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
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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


class _Run(Generic[T]):
    """Walks a plan: iterating yields its steps; set :attr:`reply` or :attr:`error` after each."""

    def __init__(self, plan: Plan[T]) -> None:
        self._plan = plan
        self.reply: Any = None
        self.error: Exception | None = None
        self.value: T | None = None

    def __iter__(self) -> Iterator[Step]:
        while True:
            reply, error = self.reply, self.error
            self.reply, self.error = None, None
            try:
                step = self._plan.throw(error) if error is not None else self._plan.send(reply)
            except StopIteration as stop:
                self.value = stop.value
                return
            yield step


def run_sync(plan: Plan[T], *, engine: Engine | None = None, redis: Any = None, conn: Any = None) -> T:
    """Carry ``plan`` out with a synchronous engine and Redis client."""
    run = _Run(plan)
    for step in run:
        try:
            run.reply = _sync_step(step, engine, redis, conn)
        except Exception as exc:  # handed back to the plan, which decides
            run.error = exc
    return run.value  # type: ignore[return-value]


async def run_async(plan: Plan[T], *, engine: AsyncEngine | None = None, redis: Any = None,
                    conn: Any = None) -> T:
    """Carry ``plan`` out with an asyncio engine and Redis client: the same steps as :func:`run_sync`."""
    run = _Run(plan)
    for step in run:
        try:
            run.reply = await _async_step(step, engine, redis, conn)
        except Exception as exc:  # handed back to the plan, which decides
            run.error = exc
    return run.value  # type: ignore[return-value]


def _sync_step(step: Step, engine: Engine | None, redis: Any, conn: Any) -> Any:
    if isinstance(step, Sql):
        reply = step.read(conn.execute(step.statement, step.params))
        if step.commit:
            conn.commit()
        return reply
    if isinstance(step, Connect):
        assert engine is not None, "a plan with SQL steps needs an engine"
        with engine.begin() if step.begin else engine.connect() as c:
            return run_sync(step.plan, conn=c)
    if isinstance(step, Pipe):
        pipe = redis.pipeline(transaction=step.transaction)
        step.build(pipe)
        return pipe.execute()
    if isinstance(step, Call):
        return step.fn(*step.args, **step.kwargs)
    if step.seconds:
        time.sleep(step.seconds)
    return None


async def _async_step(step: Step, engine: AsyncEngine | None, redis: Any, conn: Any) -> Any:
    if isinstance(step, Sql):
        reply = step.read(await conn.execute(step.statement, step.params))
        if step.commit:
            await conn.commit()
        return reply
    if isinstance(step, Connect):
        assert engine is not None, "a plan with SQL steps needs an engine"
        async with engine.begin() if step.begin else engine.connect() as c:
            return await run_async(step.plan, conn=c)
    if isinstance(step, Pipe):
        pipe = redis.pipeline(transaction=step.transaction)
        step.build(pipe)
        return await pipe.execute()
    if isinstance(step, Call):
        # a blocking call (a broker broadcast): off the event loop
        return await asyncio.to_thread(step.fn, *step.args, **step.kwargs)
    await asyncio.sleep(step.seconds)  # even 0 yields to other work
    return None
