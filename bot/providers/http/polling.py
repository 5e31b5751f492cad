"""Polling a submitted job to its end, and running parallel calls that fail together."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from bot.providers.errors import (
    ProviderError,
    ProviderTimeout,
    RateLimited,
)
from bot.providers.http.transport import CANCEL_TIMEOUT, T, _describe, _remaining

log = logging.getLogger(__name__)


class NotAnswered(Exception):
    """Raised by a poll's `fetch` when the vendor did not answer this time (a 5xx, a 429, a timeout or a
    lost connection, after the request's own retries): the job may be running fine, so polling goes on
    until the deadline instead of giving up on a job that was paid for. `error` is what was raised."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(str(error))
        self.error = error


async def poll(
    fetch: Callable[[], Awaitable[T]],
    *,
    is_done: Callable[[T], bool],
    deadline: float,
    interval: float,
    max_interval: float,
    cancel: Callable[[], Awaitable[object]] | None = None,
    backoff: float = 1.5,
    jitter: float = 0.25,
    provider: str = "",
    cancel_timeout: float = CANCEL_TIMEOUT,
) -> T:
    """Call `fetch()` until `is_done(result)` and return that result.

    Waits `interval` after the first unfinished result, growing by `backoff` up to `max_interval`,
    each wait reduced by up to `jitter` (a fraction); a fetch that raised `NotAnswered` counts as an
    unfinished result (logged once per run of failures). Other exceptions from `fetch` or `is_done`
    (for example a vendor's "job failed" error) propagate unchanged. When the deadline passes (between
    fetches, or as a `ProviderTimeout` from a fetch that ran out of time) `cancel()` is awaited if
    given, with its own `cancel_timeout`; its errors are logged, never raised. Then
    `ProviderTimeout(accepted=True)` is raised: the job was submitted and may still be billed.
    """
    delay = interval
    unanswered: ProviderError | None = None
    while True:
        if _remaining(deadline) <= 0:
            break
        try:
            result = await fetch()
        except ProviderTimeout:
            if _remaining(deadline) > 0:
                raise
            break
        except NotAnswered as exc:
            if unanswered is None:
                log.warning("%s: polling got no answer (%s); polling on", provider, _describe(exc.error))
            unanswered = exc.error
        else:
            if is_done(result):
                return result
            if unanswered is not None:
                log.info("%s: polling answered again", provider)
            unanswered = None
        remaining = _remaining(deadline)
        if remaining <= 0:
            break
        wait = min(delay, max_interval) * (1.0 - random.uniform(0.0, jitter))
        if isinstance(unanswered, RateLimited) and unanswered.retry_after is not None:
            wait = max(wait, unanswered.retry_after)  # a 429's own hint, when it is the longer wait
        await asyncio.sleep(min(wait, remaining))
        delay = min(delay * backoff, max_interval)

    if cancel is not None:
        try:
            async with asyncio.timeout(cancel_timeout):
                await cancel()
        except Exception as exc:
            log.warning("%s: cancelling the job after its deadline failed: %s", provider, _describe(exc))
    timeout = ProviderTimeout("job did not finish before its deadline", provider=provider, accepted=True)
    raise timeout from unanswered


async def gather_or_cancel(*aws: Awaitable[T]) -> list[T]:
    """`asyncio.gather`, except that the first failure cancels the others (and waits for them).

    Used for parallel uploads: one failed upload makes the job fail, and the rest must not keep
    running (or keep a connection busy) after the caller has moved on.
    """
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
