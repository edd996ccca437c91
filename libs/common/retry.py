"""The platform's one retry policy (on ``tenacity``): whatever waits for a dependency to come back (a database at
start, the Kafka broker, Redis, a spool that cannot be written) tries again after ``first`` seconds, doubling the wait
up to ``maximum``, until the work succeeds. Each caller says what a failure means to it (``on_failure``: a log line,
a counter, closing a broken client) and nothing else.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import tenacity

T = TypeVar("T")
OnFailure = Callable[[BaseException, float], Awaitable[None] | None]  # (the failure, seconds until the next try)


def policy(*, first: float = 0.5, maximum: float = 10.0, on_failure: OnFailure | None = None) -> tenacity.AsyncRetrying:
    """Retry on any exception (never on cancellation) forever: ``first``, ``2 * first``, ... up to ``maximum``
    seconds between tries."""

    async def before_sleep(state: tenacity.RetryCallState) -> None:
        if state.outcome is not None and state.next_action is not None:
            await _report(on_failure, state.outcome.exception(), state.next_action.sleep)

    return tenacity.AsyncRetrying(
        wait=tenacity.wait_exponential(multiplier=first, max=maximum),
        retry=tenacity.retry_if_exception_type(Exception),
        stop=tenacity.stop_never,
        before_sleep=before_sleep,
        reraise=True,
    )


async def until_success(
    work: Callable[[], Awaitable[T]], *, first: float = 0.5, maximum: float = 10.0, on_failure: OnFailure | None = None
) -> T:
    """``await work()`` until it returns, retrying by :func:`policy`. The first try is a plain call (tenacity's
    bookkeeping on every call would cost a relay woken by every commit more than its work: README, "Performance"):
    the policy takes over only once it failed."""
    try:
        return await work()
    except Exception as exc:  # noqa: BLE001 - any failure is retried
        await _report(on_failure, exc, first)
    await asyncio.sleep(first)
    result: Any = await policy(first=min(2 * first, maximum), maximum=maximum, on_failure=on_failure)(work)
    return result


async def _report(on_failure: OnFailure | None, exc: BaseException | None, delay: float) -> None:
    if on_failure is None or exc is None:
        return
    result = on_failure(exc, delay)
    if inspect.isawaitable(result):
        await result
