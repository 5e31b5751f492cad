"""Benchmark 4 — ledger: reserve + capture pairs per second through `bot.storage.Storage`.

A real SQLite file in a temporary folder with the app's own settings (WAL, synchronous=FULL, one
BEGIN IMMEDIATE per movement). Run from the repository root: `python -m bench.ledger`.
Target: ≥ 2,000 pairs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench._common import table
from bot.storage import Storage

GUILD = 1
USERS = 100  # spread over accounts, as real traffic is
TARGET_PER_SECOND = 2000


async def _pairs(storage: Storage, prefix: str, count: int, concurrency: int, full_job: bool) -> float:
    """Run `count` reserve+capture pairs with `concurrency` tasks; return pairs per second."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            job_id = f"{prefix}-{i}"
            user = i % USERS
            if full_job:
                await storage.jobs.create_job(
                    job_id,
                    guild_id=GUILD,
                    user_id=user,
                    channel_id=None,
                    model="gpt-image-1.5",
                    quality="low",
                    size="1024x1024",
                    count=1,
                )
            await storage.ledger.reserve(job_id, GUILD, user, 10, starting_credits=10**9)
            await storage.ledger.capture(job_id, 7)
            if full_job:
                await storage.jobs.set_job_state(job_id, "delivered")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def main(count: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="retouch-ledger-") as folder:
        storage = await Storage.open(Path(folder) / "bench.sqlite3")
        try:
            for user in range(USERS):  # accounts exist up front: measure the steady state
                await storage.ledger.ensure_account(GUILD, user, 10**9)
            await _pairs(storage, "warmup", 200, 1, False)
            for concurrency in (1, 16):
                for full_job in (False, True):
                    rate = await _pairs(storage, f"c{concurrency}-{full_job}", count, concurrency, full_job)
                    what = "reserve + capture" if not full_job else "+ create_job + set_job_state"
                    verdict = "meets" if rate >= TARGET_PER_SECOND else "below"
                    rows.append(
                        (what, concurrency, count, f"{rate:,.0f}", f"{verdict} {TARGET_PER_SECOND:,}/s")
                    )
        finally:
            await storage.close()
    print(
        table(
            "Ledger: pairs per second (Storage, WAL, synchronous=FULL)",
            ("operations per pair", "tasks", "pairs", "pairs/s", "target"),
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    asyncio.run(main(parser.parse_args().count))
