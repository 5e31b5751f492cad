"""bot/tasks.py: the helpers the job engine's and the shard coordinator's loops wait with."""

from __future__ import annotations

import asyncio

import pytest

from bot.tasks import woken


async def test_woken_says_whether_the_event_came_in_time():
    event = asyncio.Event()
    assert await woken(event, 0.01) is False
    event.set()
    assert await woken(event, 10) is True


@pytest.mark.parametrize("turns", [0, 1, 2])
async def test_a_cancel_landing_as_the_event_is_delivered_still_cancels(turns: int):
    """The loops a stop cancels wait with `woken`: `asyncio.wait_for` (Python 3.11) returned the event's
    result instead of raising when the cancel came while the set was being delivered, and the loop ran on."""
    event, rounds = asyncio.Event(), 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            await woken(event, 3600)
            event.clear()
            rounds += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    event.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done and task.cancelled()
