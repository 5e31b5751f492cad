"""Small task helpers shared by the job engine and the shard coordinator: here, because bot.sharding
cannot import the engine's modules (they import it, for the process's name)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


async def woken(event: asyncio.Event, seconds: float) -> bool:
    """Wait for `event` at most `seconds`; whether it was set. For the loops a stop cancels:
    on Python 3.11 `asyncio.wait_for` swallows a cancel that lands as the event is being delivered
    (it returns the result instead), and the loop then ran on with its stop waiting for it for ever;
    `asyncio.timeout` lets the cancel through."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def within(call: Awaitable[T], seconds: float) -> T:
    """`call`, or TimeoutError after `seconds`. For the loops a stop cancels, as `woken`: on Python 3.11
    `asyncio.wait_for` returns the result of a call that finished as the cancel landed, swallowing the
    cancel, and the loop ran on while its stop waited for it for ever."""
    async with asyncio.timeout(seconds):
        return await call


class Again:
    """`work` in a task of its own, now; asked again while it runs, once more after it, so a change that
    came after its read is not missed. A failure is logged and left to the caller's next regular round,
    which does the same work in any case (a job lease round, a shard lease round)."""

    def __init__(self, work: Callable[[], Awaitable[object]], name: str) -> None:
        self._work = work
        self._name = name
        self._again = False
        self._task: asyncio.Task[None] | None = None

    def ask(self) -> None:
        self._again = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while self._again:
            self._again = False
            try:
                await self._work()
            except Exception as exc:
                log.info("%s failed (%s); the next round does it", self._name, type(exc).__name__)
                return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
