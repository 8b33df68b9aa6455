"""The one backoff policy of the reconnect loops (tracker.retry)."""

from __future__ import annotations

import asyncio

import pytest

from tracker.retry import Backoff, reconnecting


async def test_a_failing_step_is_retried_with_growing_pauses_until_it_succeeds() -> None:
    pauses: list[float] = []
    errors: list[BaseException] = []
    calls = 0

    async def nap(seconds: float) -> None:
        pauses.append(seconds)

    async for attempt in reconnecting(first=0.1, most=0.3, on_error=errors.append, sleep=nap):
        with attempt:
            calls += 1
            if calls <= 4:
                raise ConnectionError(f"down {calls}")
    assert calls == 5
    assert [str(e) for e in errors] == ["down 1", "down 2", "down 3", "down 4"]
    assert pauses == pytest.approx([0.1, 0.2, 0.3, 0.3])  # doubled, capped at ``most``


async def test_cancellation_is_never_retried() -> None:
    errors: list[BaseException] = []

    async def step() -> None:
        async for attempt in reconnecting(first=0.01, most=0.01, on_error=errors.append):
            with attempt:
                await asyncio.sleep(3600)

    task = asyncio.create_task(step())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert errors == []


def test_a_loop_that_cannot_block_gets_the_same_pauses_from_backoff() -> None:
    # The bus's and the recorder's sender threads keep buffering while a server is away: they ask
    # the same policy for the next pause instead of blocking in a retry.
    backoff = Backoff(first=0.1, most=0.3)
    assert backoff.delay == 0.0
    assert [backoff.failed() for _ in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert backoff.failures == 4 and backoff.delay == pytest.approx(0.3)
    backoff.reset()
    assert (backoff.failures, backoff.delay) == (0, 0.0)
    assert backoff.failed() == pytest.approx(0.1)  # a new outage starts from ``first`` again
