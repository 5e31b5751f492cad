"""Benchmark 4 — ledger: reserve + capture pairs per second through `bot.storage.Storage`.

SQLite: a real file in a temporary folder with the app's own settings (WAL, synchronous=FULL, BEGIN
IMMEDIATE, waiting transactions committed together). PostgreSQL, when a server is given
(`--database-url` or RETOUCH_TEST_DATABASE_URL): a scratch schema dropped afterwards, one process, then
three processes side by side, each with its own connection pool, as three bot processes would run.
Run from the repository root: `python -m bench.ledger [--database-url postgresql://…] [--prefill N]`.
Targets: SQLite ≥ 2,000 pairs/s, PostgreSQL with 3 processes ≥ 5,000 pairs/s. The budget-checked row is
measured twice: as it comes, then after `--prefill` more captures this month, to show whether the checks
slow down as the month's ledger grows (they must not: they read running totals).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import table
from bot.services.admin import period_start
from bot.storage import Storage
from bot.storage.connection import utcnow
from bot.storage.limits import ReserveGuard

GUILD = 1
USERS = 100  # spread over accounts, as real traffic is
TASKS = 16
PROCESSES = 3
SQLITE_TARGET = 2000
POSTGRES_TARGET = 5000  # with PROCESSES processes
PREFILL = 20_000  # captures written before the budget-checked row is measured again
# What production reservations check: this month's bot-wide budget and the server's allotment (here never
# reached), so each one reads the month's spend and, on PostgreSQL, takes the budget lock.
BUDGET = ReserveGuard(bot_cap=10**15, allotment=10**15, cap_since=period_start("monthly", utcnow()))

PLAIN, FULL_JOB, BUDGETED = (
    "reserve + capture",
    "+ create_job + set_job_state",
    "reserve (budget checked) + capture",
)
# The host's ceiling for the same traffic shape: two one-statement transactions (each a round trip and
# a durable commit), the least any reserve + capture pair can cost when the capture comes after the
# provider answered. A pair rate above this would need several movements sharing one commit.
CEILING = "ceiling: 2 one-statement transactions"


async def _pairs(
    storage: Storage, prefix: str, count: int, concurrency: int, kind: str, guild: int = GUILD
) -> tuple[float, float]:
    """Run `count` reserve+capture pairs with `concurrency` tasks in `guild`; (started, finished) on
    the system-wide monotonic clock, so processes' spans can be joined."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    guard = BUDGET if kind == BUDGETED else None

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            job_id = f"{prefix}-{i}"
            user = i % USERS
            if kind == FULL_JOB:
                await storage.jobs.create_job(
                    job_id,
                    guild_id=guild,
                    user_id=user,
                    channel_id=None,
                    model="gpt-image-2",
                    quality="low",
                    size="1024x1024",
                    count=1,
                )
            if kind == CEILING:
                for _ in range(2):
                    await storage.db.write_one(
                        "UPDATE accounts SET updated_at = ? WHERE guild_id = ? AND user_id = ?",
                        (storage.db.timestamp(), guild, user),
                    )
                continue
            await storage.ledger.reserve(job_id, guild, user, 10, starting_credits=10**9, guard=guard)
            await storage.ledger.capture(job_id, 7)
            if kind == FULL_JOB:
                await storage.jobs.set_job_state(job_id, "delivered")

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return started, time.monotonic()


async def _open(target: str, guild: int = GUILD) -> Storage:
    storage = await Storage.open(target)
    for user in range(USERS):  # accounts exist up front: measure the steady state
        await storage.ledger.ensure_account(guild, user, 10**9)
    return storage


def _rate(count: int, span: tuple[float, float]) -> float:
    return count / (span[1] - span[0])


def _row(backend: str, what: str, tasks: str, count: int, rate: float, target: int | None) -> tuple[Any, ...]:
    verdict = "—" if target is None else f"{'meets' if rate >= target else 'below'} {target:,}/s"
    return (backend, what, tasks, count, f"{rate:,.0f}", verdict)


def _filled(prefill: int) -> str:
    return f"{BUDGETED}, after {prefill:,} more captures"


async def _sqlite_rows(count: int, prefill: int) -> list[tuple[Any, ...]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="retouch-ledger-") as folder:
        storage = await _open(str(Path(folder) / "bench.sqlite3"))
        try:
            await _pairs(storage, "warmup", 200, 1, PLAIN)
            for concurrency in (1, TASKS):
                for kind in (PLAIN, FULL_JOB):
                    span = await _pairs(storage, f"c{concurrency}-{kind}", count, concurrency, kind)
                    rows.append(
                        _row("SQLite", kind, str(concurrency), count, _rate(count, span), SQLITE_TARGET)
                    )
            span = await _pairs(storage, "budget", count, TASKS, BUDGETED)
            rows.append(_row("SQLite", BUDGETED, str(TASKS), count, _rate(count, span), SQLITE_TARGET))
            await _pairs(storage, "fill", prefill, TASKS, PLAIN)
            span = await _pairs(storage, "budget-filled", count, TASKS, BUDGETED)
            rows.append(
                _row("SQLite", _filled(prefill), str(TASKS), count, _rate(count, span), SQLITE_TARGET)
            )
        finally:
            await storage.close()
    return rows


def _process(
    target: str, guild: int, prefix: str, count: int, kind: str, ready: Any, go: Any, spans: Any
) -> None:
    """Child process body: its own pool and its own server's members (shards split servers between
    processes); warm up, wait for the others, run, report its span."""

    async def main() -> None:
        storage = await _open(target, guild)
        try:
            await _pairs(storage, f"{prefix}-warmup", 100, TASKS, PLAIN, guild)
            ready.put(prefix)
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            spans.put(await _pairs(storage, prefix, count, TASKS, kind, guild))
        finally:
            await storage.close()

    asyncio.run(main())


def _side_by_side(target: str, count: int, kind: str, run: str) -> float:
    """`PROCESSES` processes run `count` pairs each at once; total pairs per second over their joint span."""
    context = mp.get_context("spawn")
    ready, spans, go = context.Queue(), context.Queue(), context.Event()
    children = [
        context.Process(
            target=_process, args=(target, GUILD + 1 + n, f"{run}-p{n}", count, kind, ready, go, spans)
        )
        for n in range(PROCESSES)
    ]
    for child in children:
        child.start()
    for _ in children:
        ready.get(timeout=120)
    go.set()
    measured = [spans.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    started, finished = min(s for s, _ in measured), max(f for _, f in measured)
    return _rate(count * PROCESSES, (started, finished))


async def _postgres_rows(url: str, count: int, prefill: int) -> list[tuple[Any, ...]]:
    from bot.storage.postgres import scratch_schema

    rows = []
    async with scratch_schema(url) as target:
        storage = await _open(target)
        try:
            await _pairs(storage, "warmup", 200, TASKS, PLAIN)
            for concurrency in (1, TASKS):
                span = await _pairs(storage, f"one-{concurrency}", count, concurrency, PLAIN)
                rows.append(
                    _row("PostgreSQL, 1 process", PLAIN, str(concurrency), count, _rate(count, span), None)
                )
        finally:
            await storage.close()
        for kind, label in (
            (CEILING, CEILING),
            (PLAIN, PLAIN),
            (FULL_JOB, FULL_JOB),
            (BUDGETED, BUDGETED),
            (BUDGETED, "filled"),
        ):
            if label == "filled":
                await _fill(target, prefill)
                label = _filled(prefill)
            rate = await asyncio.to_thread(_side_by_side, target, count, kind, f"side-{len(rows)}")
            tasks = f"{PROCESSES} × {TASKS}"
            rows.append(
                _row(
                    f"PostgreSQL, {PROCESSES} processes",
                    label,
                    tasks,
                    count * PROCESSES,
                    rate,
                    POSTGRES_TARGET,
                )
            )
    return rows


async def _fill(target: str, prefill: int) -> None:
    """`prefill` more captures this month, written by one process with TASKS tasks."""
    storage = await _open(target)
    try:
        await _pairs(storage, "fill", prefill, TASKS, PLAIN)
    finally:
        await storage.close()


async def main(count: int, database_url: str, prefill: int) -> None:
    rows = await _sqlite_rows(count, prefill)
    if database_url:
        rows += await _postgres_rows(database_url, count, prefill)
    print(
        table(
            "Ledger: pairs per second (Storage; SQLite WAL + synchronous=FULL; PostgreSQL fsync on)",
            ("database", "operations per pair", "tasks", "pairs", "pairs/s", "target"),
            rows,
        )
    )
    if not database_url:
        print("\n(PostgreSQL not measured: pass --database-url or set RETOUCH_TEST_DATABASE_URL)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--prefill", type=int, default=PREFILL, help="captures written before the last row")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("RETOUCH_TEST_DATABASE_URL", ""),
        help="a PostgreSQL server to measure too (a scratch schema is created and dropped)",
    )
    arguments = parser.parse_args()
    asyncio.run(main(arguments.count, arguments.database_url, arguments.prefill))
