"""Several processes on one database: each `Storage` below has its own connections (its own pool on
PostgreSQL, its own connection and thread on SQLite), as separate bot processes would. Budgets,
per-member limits and one settlement per job hold across them, and the books reconcile afterwards."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from itertools import cycle

import asyncpg
import pytest

from bot.storage import Storage
from bot.storage.connection import iso
from bot.storage.ledger import LedgerConflict, NotEnoughCredits
from bot.storage.limits import ReserveGuard, ReserveRefused
from tests.fixtures import storages
from tests.postgres import until_waiting_on
from tests.test_policy import Clock, utc

PROCESSES = 3
GUILD, OTHER_GUILD = 10, 11
USERS = (20, 21, 22, 23)
HOLD = 15
MONTH = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


@pytest.fixture
async def processes(database_url: str) -> AsyncIterator[list[Storage]]:
    async with storages(database_url, PROCESSES) as stores:
        yield stores


async def new_job(storage: Storage, job_id: str, guild: int, user: int) -> str:
    await storage.jobs.create_job(
        job_id, guild_id=guild, user_id=user, channel_id=1, model="m", quality="low", size="auto", count=1
    )
    return job_id


async def reserve(storage: Storage, job_id: str, guild: int, user: int, guard: ReserveGuard) -> bool:
    try:
        await storage.ledger.reserve(job_id, guild, user, HOLD, starting_credits=0, guard=guard)
    except (ReserveRefused, NotEnoughCredits):
        return False
    return True


async def assert_books_reconcile(storage: Storage) -> None:
    """Every account's balance and holds equal the sums of its ledger rows, and nothing was created
    or lost: what was granted is either still there, held, or captured."""
    assert await storage.reports.held_mismatches() == []
    for account in await storage.reports.all_accounts():
        totals = await storage.reports.ledger_totals(account.guild_id, account.user_id)
        assert (account.balance, account.held) == (totals.balance, totals.held)
        assert account.balance + account.held == totals.granted - totals.captured


async def fund(storage: Storage, credits: int) -> None:
    for guild in (GUILD, OTHER_GUILD):
        for user in USERS:
            await storage.ledger.grant(guild, user, credits, actor_id=1, reason="x", starting_credits=0)


async def test_processes_reserving_at_once_never_pass_the_bot_budget_or_a_servers_allotment(
    processes: list[Storage],
):
    await fund(processes[0], 10_000)
    budget = ReserveGuard(bot_cap=100, cap_since=MONTH)  # six holds of 15 fit, a seventh does not
    allotted = ReserveGuard(bot_cap=100, allotment=45, cap_since=MONTH)  # GUILD: three holds
    attempts = []
    for i, store, user in zip(range(80), cycle(processes), cycle(USERS), strict=False):
        guild = GUILD if i % 2 else OTHER_GUILD
        job_id = await new_job(store, f"j{i}", guild, user)
        attempts.append((store, job_id, guild, user, allotted if guild == GUILD else budget))
    admitted = await asyncio.gather(*(reserve(*attempt) for attempt in attempts))
    held = [attempt for attempt, ok in zip(attempts, admitted, strict=True) if ok]
    assert len(held) == 6
    assert sum(1 for _, _, guild, _, _ in held if guild == GUILD) <= 3
    # Captured spend keeps counting: settle every hold from another process while more jobs try.
    late = [await new_job(store, f"late{i}", OTHER_GUILD, USERS[0]) for i, store in enumerate(processes)]
    settles = [
        processes[(n + 1) % PROCESSES].ledger.capture(job_id, HOLD) for n, (_, job_id, *_) in enumerate(held)
    ]
    tries = [
        reserve(store, job_id, OTHER_GUILD, USERS[0], budget)
        for store, job_id in zip(processes, late, strict=True)
    ]
    outcomes = await asyncio.gather(*settles, *tries)
    assert outcomes[len(settles) :] == [False] * PROCESSES
    spent = await processes[1].reports.spend_by_guild(MONTH)
    assert sum(used + holding for used, holding in spent.values()) == 6 * HOLD
    await assert_books_reconcile(processes[2])


async def test_a_members_running_jobs_limit_holds_across_processes(processes: list[Storage]):
    await fund(processes[0], 10_000)
    guard = ReserveGuard(max_concurrent=2)
    jobs = [await new_job(store, f"m{i}", GUILD, USERS[1]) for i, store in zip(range(30), cycle(processes))]
    admitted = await asyncio.gather(
        *(reserve(store, job_id, GUILD, USERS[1], guard) for store, job_id in zip(cycle(processes), jobs))
    )
    assert sum(admitted) == 2
    await assert_books_reconcile(processes[0])


async def test_one_settlement_per_job_when_processes_race_to_capture_and_release(processes: list[Storage]):
    await fund(processes[0], 1_000)
    jobs = [await new_job(processes[0], f"s{i}", GUILD, USERS[i % len(USERS)]) for i in range(12)]
    for i, job_id in enumerate(jobs):  # the same job reserved by every process at once: held once
        reserved = await asyncio.gather(
            *(
                p.ledger.reserve(job_id, GUILD, USERS[i % len(USERS)], 20, starting_credits=0)
                for p in processes
            )
        )
        assert len({(a.balance, a.held) for a in reserved}) == 1

    async def settle(storage: Storage, job_id: str, how: str) -> str:
        try:
            if how == "release":
                await storage.ledger.release(job_id)
            else:
                await storage.ledger.capture(job_id, 7)
        except LedgerConflict:
            return "conflict"
        return how

    races = [
        settle(p, job_id, how)
        for job_id in jobs
        for p, how in zip(processes, ("capture", "release", "capture"), strict=True)
    ]
    await asyncio.gather(*races)
    for job_id in jobs:
        kinds = sorted(row["kind"] for row in await processes[1].reports.ledger_rows(job_id))
        assert kinds in (["capture", "reserve"], ["release", "reserve"])
    assert await processes[2].reports.open_holds() == []
    await assert_books_reconcile(processes[0])


async def test_an_allowance_top_up_counts_a_movement_another_process_has_in_flight(postgres_url: str):
    """A top-up reads the balance it tops up from with the account's row locked, so on PostgreSQL a
    movement another process has not committed yet is waited for and counted: the member ends at the
    allowance, not at the allowance plus that movement. (A refill of the same period that rolls back
    holds this one between creating the account and reading it, where the movement starts.)"""
    async with storages(postgres_url, 1) as (storage,):
        await storage.ledger.ensure_account(GUILD, USERS[0], 0)
        refill, grant = await asyncpg.connect(postgres_url), await asyncpg.connect(postgres_url)
        try:
            other_refill = refill.transaction()
            await other_refill.start()
            await refill.execute(
                "INSERT INTO allowance_refills (guild_id, user_id, period, added, created_at) "
                "VALUES ($1, $2, 'p1', 0, 'now')",
                GUILD,
                USERS[0],
            )
            topping_up = asyncio.ensure_future(
                storage.ledger.refill_allowance(
                    GUILD, USERS[0], amount=100, period_of=lambda _: "p1", starting_credits=0
                )
            )
            await until_waiting_on(refill)
            async with grant.transaction():
                await grant.execute(
                    "UPDATE accounts SET balance = balance + 50 WHERE guild_id = $1 AND user_id = $2",
                    GUILD,
                    USERS[0],
                )
                await other_refill.rollback()
                await until_waiting_on(grant)
            assert (await topping_up).balance == 100
        finally:
            await refill.close()
            await grant.close()
        rows = await storage.db.all("SELECT period, added FROM allowance_refills")
        assert [tuple(r) for r in rows] == [("p1", 50)]


async def test_processes_starting_a_month_at_once_mark_it_once_and_never_pass_the_budget(database_url: str):
    """The first budget checks of a month take its marks (bot/storage/spend.py): processes doing that at
    once, while others capture, take them once, from last month's totals, and still admit exactly what
    fits."""
    clock = Clock("2027-02-20T10:00:00")
    async with storages(database_url, PROCESSES, clock=clock) as processes:
        await fund(processes[0], 10_000)
        for guild, spent in ((GUILD, 40), (OTHER_GUILD, 25)):  # February's spend: not March's
            await new_job(processes[0], f"feb{guild}", guild, USERS[0])
            await processes[0].ledger.reserve(f"feb{guild}", guild, USERS[0], spent, starting_credits=0)
            await processes[1].ledger.capture(f"feb{guild}", spent)
        await new_job(processes[0], "open", GUILD, USERS[3])  # held since February: counts in March
        await processes[0].ledger.reserve("open", GUILD, USERS[3], HOLD, starting_credits=0)
        march = utc("2027-03-01T00:00:00")
        clock.set("2027-03-01T00:05:00")
        budget = ReserveGuard(bot_cap=100, cap_since=march)  # the open hold and five more fit, not six
        allotted = ReserveGuard(bot_cap=100, allotment=45, cap_since=march)  # GUILD: two besides the hold
        attempts = []
        for i, store, user in zip(range(60), cycle(processes), cycle(USERS[:3]), strict=False):
            guild = GUILD if i % 2 else OTHER_GUILD
            job_id = await new_job(store, f"mar{i}", guild, user)
            attempts.append(reserve(store, job_id, guild, user, allotted if guild == GUILD else budget))
        admitted = await asyncio.gather(processes[2].ledger.capture("open", HOLD), *attempts)
        assert sum(admitted[1:]) == 5
        periods = await processes[0].db.all(
            "SELECT since, captured_before, absorbed_before FROM spend_periods"
        )
        assert [tuple(p) for p in periods] == [(iso(march), 65, 0)]
        marks = await processes[1].db.all(
            "SELECT guild_id, captured_before FROM spend_marks ORDER BY guild_id"
        )
        assert [tuple(m) for m in marks] == [(GUILD, 40), (OTHER_GUILD, 25)]
        spent = await processes[1].reports.spend_by_guild(march)
        assert sum(used + holding for used, holding in spent.values()) == 6 * HOLD
        assert spent[GUILD][0] + spent[GUILD][1] <= 45
        await assert_books_reconcile(processes[2])
