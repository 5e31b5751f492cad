"""The credit ledger against a real database (SQLite, and PostgreSQL when configured): idempotency,
refusals, races and the sum invariant."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.storage import Storage
from bot.storage.connection import SchemaTooNew, latest_schema_version
from bot.storage.ledger import JobNotQueued, LedgerConflict, NotEnoughCredits
from bot.storage.limits import ReserveGuard
from bot.storage.sqlite import SQLiteDatabase

GUILD, USER = 10, 20


async def new_job(storage: Storage, job_id: str, user: int = USER) -> str:
    await storage.jobs.create_job(
        job_id, guild_id=GUILD, user_id=user, channel_id=1, model="m", quality="low", size="auto", count=1
    )
    return job_id


async def assert_invariant(storage: Storage, guild: int = GUILD, user: int = USER) -> None:
    account = await storage.ledger.get_account(guild, user)
    totals = await storage.reports.ledger_totals(guild, user)
    assert account is not None
    assert (account.balance, account.held) == (totals.balance, totals.held)
    assert account.balance + account.held == totals.granted - totals.captured


async def test_migrations_are_numbered_and_tracked(storage: Storage):
    assert await storage.schema_version() == latest_schema_version()
    assert await storage.migrate() == await storage.schema_version()  # second run applies nothing
    for table in ("accounts", "ledger", "jobs", "guild_settings", "edit_versions"):
        assert (await storage.db.one(f"SELECT COUNT(*) FROM {table}"))[0] == 0


async def test_a_database_from_a_newer_release_is_refused_and_left_alone(storage: Storage, database_url: str):
    newer = latest_schema_version() + 1
    if isinstance(storage.db, SQLiteDatabase):
        await storage.db.run(lambda db: db.execute(f"PRAGMA user_version = {newer}"))
    else:
        await storage.db.write_one("UPDATE schema_version SET version = ?", (newer,))
    with pytest.raises(SchemaTooNew) as refused:
        await Storage.open(database_url)
    assert (refused.value.found, refused.value.known) == (newer, latest_schema_version())
    assert await storage.schema_version() == newer


async def test_an_opener_that_may_run_beside_the_bot_leaves_the_schema_as_it_is(database_url: str):
    """`--sync` opens without migrating (it holds no lock; the bot's start migrates): nothing is
    applied, and a database from a newer release is still refused."""
    beside = await Storage.open(database_url, migrate=False)
    try:
        assert await beside.schema_version() == 0
    finally:
        await beside.close()
    storage = await Storage.open(database_url)
    newer = latest_schema_version() + 1
    try:
        if isinstance(storage.db, SQLiteDatabase):
            await storage.db.run(lambda db: db.execute(f"PRAGMA user_version = {newer}"))
        else:
            await storage.db.write_one("UPDATE schema_version SET version = ?", (newer,))
    finally:
        await storage.close()
    with pytest.raises(SchemaTooNew):
        await Storage.open(database_url, migrate=False)


@pytest.mark.sqlite_only
async def test_the_sqlite_file_is_in_wal_mode_with_every_table(storage: Storage, tmp_path: Path):
    conn = sqlite3.connect(tmp_path / "retouch.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"accounts", "ledger", "jobs", "guild_settings"} <= tables


async def test_starting_credits_are_granted_once_per_guild(storage: Storage):
    first = await storage.ledger.ensure_account(GUILD, USER, 100)
    again = await storage.ledger.ensure_account(GUILD, USER, 100)
    other_guild = await storage.ledger.ensure_account(GUILD + 1, USER, 100)
    assert first.balance == again.balance == other_guild.balance == 100
    assert (await storage.reports.ledger_totals(GUILD, USER)).granted == 100


async def test_reserve_capture_moves_exactly_the_charge(storage: Storage):
    await new_job(storage, "j1")
    account = await storage.ledger.reserve("j1", GUILD, USER, 40, starting_credits=100)
    assert (account.balance, account.held) == (60, 40)
    account, charged = await storage.ledger.capture("j1", 25)
    assert charged == 25
    assert (account.balance, account.held) == (75, 0)
    assert (await storage.jobs.get_job("j1")).captured == 25
    await assert_invariant(storage)


async def test_capture_never_exceeds_the_reservation(storage: Storage):
    await new_job(storage, "j1")
    await storage.ledger.reserve("j1", GUILD, USER, 40, starting_credits=100)
    account, charged = await storage.ledger.capture("j1", 1000)
    assert charged == 40
    assert (account.balance, account.held) == (60, 0)


@pytest.mark.parametrize(
    ("first", "second"), [("capture", "capture"), ("release", "release"), ("reserve", "reserve")]
)
async def test_each_step_is_idempotent_per_job(storage: Storage, first: str, second: str):
    await new_job(storage, "j1")
    await storage.ledger.reserve("j1", GUILD, USER, 30, starting_credits=100)
    for step in (first, second):
        if step == "capture":
            await storage.ledger.capture("j1", 10)
        elif step == "release":
            await storage.ledger.release("j1")
        else:
            await storage.ledger.reserve("j1", GUILD, USER, 30, starting_credits=100)
    kinds = [row["kind"] for row in await storage.reports.ledger_rows("j1")]
    assert kinds.count(first) == 1
    await assert_invariant(storage)


async def test_capture_after_release_and_release_after_capture_are_refused(storage: Storage):
    await new_job(storage, "a")
    await new_job(storage, "b")
    await storage.ledger.reserve("a", GUILD, USER, 10, starting_credits=100)
    await storage.ledger.reserve("b", GUILD, USER, 10, starting_credits=100)
    await storage.ledger.release("a")
    with pytest.raises(LedgerConflict):
        await storage.ledger.capture("a", 5)
    await storage.ledger.capture("b", 5)
    with pytest.raises(LedgerConflict):
        await storage.ledger.release("b")
    await assert_invariant(storage)


async def test_a_cancel_charged_after_the_delivery_leaves_the_job_delivered(storage: Storage):
    """A Stop that lands as the result is posted: the charge is the delivery's (nothing more), and
    the job stays delivered; it used to be relabelled "cancelled" although its result was posted."""
    await new_job(storage, "a")
    await storage.ledger.reserve("a", GUILD, USER, 50, starting_credits=100)
    await storage.ledger.settle_delivered("a", 40, via="channel", channel_id=1, message_id=2)
    settled = await storage.ledger.settle_cancelled_at_provider("a", 50, error_code="cancelled_at_provider")
    assert settled is not None and settled[1] == 40
    row = await storage.jobs.get_job("a")
    assert row is not None and (row.state, row.error_code, row.result_message_id) == ("delivered", None, 2)
    await assert_invariant(storage)


async def test_a_hold_is_taken_only_for_a_job_still_queued_else_nothing_changes(storage: Storage):
    """Another process took the job over and ended it while this one checked the member's credits: the
    reservation must not turn the ended row live again with a fresh hold (it was run and charged)."""
    await new_job(storage, "j1")
    await storage.ledger.settle_released("j1", "cancelled", error_code="restart_before_start")
    with pytest.raises(JobNotQueued):
        await storage.ledger.reserve("j1", GUILD, USER, 40, starting_credits=100)
    row = await storage.jobs.get_job("j1")
    assert row is not None and (row.state, row.reserved) == ("cancelled", 0)
    assert await storage.reports.ledger_rows("j1") == []
    assert await storage.ledger.get_account(GUILD, USER) is None  # rolled back whole, the account too


async def test_reserve_refuses_more_than_the_balance(storage: Storage):
    await new_job(storage, "j1")
    with pytest.raises(NotEnoughCredits) as info:
        await storage.ledger.reserve("j1", GUILD, USER, 101, starting_credits=100)
    assert (info.value.needed, info.value.available) == (101, 100)
    account = await storage.ledger.get_account(GUILD, USER)
    assert (account.balance, account.held) == (100, 0)


async def test_ledger_rows_cannot_be_changed_or_deleted(storage: Storage):
    await storage.ledger.ensure_account(GUILD, USER, 100)
    with pytest.raises(storage.db.Error, match="append-only"):
        await storage.db.write_one("UPDATE ledger SET amount = 0", ())
    with pytest.raises(storage.db.Error, match="append-only"):
        await storage.db.write_one("DELETE FROM ledger", ())


async def test_concurrent_reservations_never_overspend(storage: Storage):
    await storage.ledger.ensure_account(GUILD, USER, 70)
    jobs = [await new_job(storage, f"j{i}") for i in range(50)]

    async def attempt(job_id: str) -> bool:
        try:
            await storage.ledger.reserve(job_id, GUILD, USER, 10, starting_credits=70)
            return True
        except NotEnoughCredits:
            return False

    results = await asyncio.gather(*(attempt(j) for j in jobs))
    assert sum(results) == 7
    account = await storage.ledger.get_account(GUILD, USER)
    assert (account.balance, account.held) == (0, 70)
    await assert_invariant(storage)


async def test_grant_and_take_are_recorded_with_the_actor(storage: Storage):
    await storage.ledger.grant(GUILD, USER, 50, actor_id=99, reason="gift", starting_credits=10)
    account = await storage.ledger.grant(GUILD, USER, -500, actor_id=99, reason="take", starting_credits=10)
    assert account.balance == 0  # never below zero
    await assert_invariant(storage)


async def test_data_survives_reopening_the_database(database_url: str):
    s = await Storage.open(database_url)
    await s.migrate()
    await s.ledger.ensure_account(GUILD, USER, 42)
    await s.close()
    s = await Storage.open(database_url)
    assert (await s.ledger.get_account(GUILD, USER)).balance == 42
    await s.close()


@pytest.mark.parametrize("steps", range(6))
async def test_a_write_cancelled_at_any_point_leaves_no_open_transaction(storage: Storage, steps: int):
    """The job engine cancels provider calls whose callbacks write job states; a cancelled write must
    roll back cleanly, or every later BEGIN on the shared connection would fail."""
    await storage.ledger.grant(GUILD, USER, 100, actor_id=None, reason="seed", starting_credits=0)
    task = asyncio.create_task(
        storage.ledger.grant(GUILD, USER, 5, actor_id=None, reason="x", starting_credits=0)
    )
    for _ in range(steps):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await storage.ledger.grant(GUILD, USER, 1, actor_id=None, reason="after", starting_credits=0)
    await assert_invariant(storage)
    account = await storage.ledger.get_account(GUILD, USER)
    assert account is not None and account.balance in (101, 106)


@pytest.mark.sqlite_only
async def test_credit_movements_find_a_jobs_ledger_rows_through_the_index(storage: Storage):
    """The ledger only grows: a statement that scanned it would make every reservation slower as the
    history gets longer. Every read the hot transactions run must be an index search."""
    await storage.ledger.ensure_account(GUILD, USER, 10_000)
    statements: list[str] = []
    await storage.db.run(lambda db: db.set_trace_callback(statements.append))
    guard = ReserveGuard(cooldown_seconds=0.001, max_concurrent=50, guild_cap=10**6)
    for job_id in ("a", "b", "c", "d"):
        await new_job(storage, job_id)
        await storage.ledger.reserve(job_id, GUILD, USER, 10, starting_credits=10_000, guard=guard)
        await asyncio.sleep(0.002)  # past the cooldown
    await storage.ledger.capture("a", 5)
    await storage.ledger.release("b")
    await storage.ledger.settle_delivered("c", 5, via="followup", channel_id=1, message_id=2)
    await storage.ledger.settle_released("d", "failed", error_code="x")
    await storage.db.run(lambda db: db.set_trace_callback(None))
    reads = {
        sql
        for sql in statements
        if sql.lstrip().upper().startswith("SELECT") and ("ledger" in sql or "allowance_refills" in sql)
    }
    assert reads
    for sql in reads:
        plan = [row[3] for row in await storage.db.all("EXPLAIN QUERY PLAN " + sql)]
        assert not any(step.startswith("SCAN") and step != "SCAN CONSTANT ROW" for step in plan), (sql, plan)


@pytest.mark.sqlite_only
async def test_every_write_is_durable_at_commit(storage: Storage):
    """synchronous=FULL in WAL mode: a committed reservation survives a power cut."""
    row = await storage.db.one("PRAGMA synchronous")
    assert row is not None and row[0] == 2  # FULL
