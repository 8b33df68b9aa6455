"""One backoff policy for the loops that must outlive an outage of Redis or PostgreSQL (tenacity).

A loop runs one step at a time inside :func:`reconnecting`; a step that raises is retried after
``first``, ``2 * first``, ... up to ``most`` seconds, for ever, and the next step after a success
starts from ``first`` again. Cancellation is never retried (it is not an ``Exception``), so a
loop task still stops at once.

A loop that must not block inside a retry (the event bus's sender thread goes on buffering,
releasing held progress and flushing on close while Redis is away) keeps a :class:`Backoff`
instead: the same tenacity wait, asked for its next pause after each failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception_type, stop_never, wait_exponential

__all__ = ["reconnecting", "Backoff"]


def _wait(first: float, most: float) -> wait_exponential:
    return wait_exponential(multiplier=first, min=first, max=most)


class Backoff:
    """The pause before the next try of a loop's step: ``first`` after the first failure,
    doubling up to ``most``; :meth:`reset` after a success. ``delay`` is 0 while all is well."""

    def __init__(self, *, first: float, most: float) -> None:
        self._wait = _wait(first, most)
        self._state = RetryCallState(Retrying(), None, (), {})  # only its attempt number is read
        self.failures = 0
        self.delay = 0.0

    def failed(self) -> float:
        """Count a failure; returns (and keeps in :attr:`delay`) the pause before the next try."""
        self.failures += 1
        self._state.attempt_number = self.failures
        self.delay = float(self._wait(self._state))
        return self.delay

    def reset(self) -> None:
        self.failures = 0
        self.delay = 0.0


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

    return AsyncRetrying(wait=_wait(first, most),
                         retry=retry_if_exception_type(Exception), stop=stop_never,
                         before_sleep=before_sleep, sleep=sleep, reraise=True)
