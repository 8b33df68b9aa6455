"""One backoff policy for the loops that must outlive an outage of Redis or PostgreSQL (tenacity).

A loop runs one step at a time inside :func:`reconnecting`; a step that raises is retried after
``first``, ``2 * first``, ... up to ``most`` seconds, for ever, and the next step after a success
starts from ``first`` again. Cancellation is never retried (it is not an ``Exception``), so a
loop task still stops at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_exponential

__all__ = ["reconnecting"]


def reconnecting(*, first: float, most: float, on_error: Callable[[BaseException], None] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> AsyncRetrying:
    """``async for attempt in reconnecting(...): with attempt: await step()``.

    ``on_error`` sees each failure before the pause (to log it, or to reset what the step
    assumed); ``sleep`` may be a wait that something else can cut short.
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if on_error is not None and exc is not None:
            on_error(exc)

    return AsyncRetrying(wait=wait_exponential(multiplier=first, min=first, max=most),
                         retry=retry_if_exception_type(Exception), stop=stop_never,
                         before_sleep=before_sleep, sleep=sleep, reraise=True)
