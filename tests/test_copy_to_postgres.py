"""The copy of a bot's SQLite database into an empty PostgreSQL one (`python -m bot --copy-to-postgres`):
every table row for row, the books and reports reading the same on both sides, a PostgreSQL database
that keeps working, and every refusal leaving the target as it was.

The SQLite side is a real file filled through the repositories (Storage), as the bot fills it. The
PostgreSQL side needs RETOUCH_TEST_DATABASE_URL (a fresh schema per test); without it those tests skip,
saying so.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import bot.storage.copy as copy_module
from bot.storage import Storage
from bot.storage.connection import DatabaseInUse
from bot.storage.copy import (
    CopyRefused,
    SchemaMismatch,
    Table,
    TargetNotEmpty,
    VerificationFailed,
    copy_database,
    copy_order,
)
from bot.storage.history import VersionRow
from bot.storage.jobs import LIVE_STATES
from bot.storage.limits import ReserveGuard
from bot.storage.shard_leases import SCHEMA as SHARD_SCHEMA
from bot.storage.sqlite import SQLiteDatabase

ROOT = Path(__file__).resolve().parents[1]
GUILD, OTHER_GUILD, DM = 111, 222, 0
ALICE, BOB, CAROL = 1001, 1002, 1003
ADMIN, ROLE = 9, 77
START = dt.datetime(2026, 11, 15, 12, 0, tzinfo=dt.UTC)


def ticking_clock() -> Callable[[], dt.datetime]:
    """A storage clock one second later at every reading: every row gets its own timestamp."""
    moments = iter(START + dt.timedelta(seconds=n) for n in range(1_000_000))
    return lambda: next(moments)


@pytest.fixture
def clock() -> Callable[[], dt.datetime]:
    return ticking_clock()


async def job(storage: Storage, job_id: str, guild: int, user: int, **fields: Any) -> None:
    await storage.jobs.create_job(
        job_id,
        guild_id=guild,
        user_id=user,
        channel_id=500,
        model="gpt-image-2",
        quality="low",
        size="1024x1024",
        count=1,
        spec='{"prompt": "a red hat"}',
        **fields,
    )


async def held_job(storage: Storage, job_id: str, guild: int, user: int, credits: int) -> None:
    await job(storage, job_id, guild, user)
    await storage.ledger.reserve(job_id, guild, user, credits, starting_credits=0)


async def fill(storage: Storage) -> None:
    """What a bot that ran for a while leaves in its database: every table gets rows."""
    ledger, settings = storage.ledger, storage.settings
    await ledger.grant(GUILD, ALICE, 500, actor_id=ADMIN, reason="welcome", starting_credits=0)
    await ledger.grant(GUILD, BOB, 300, actor_id=ADMIN, reason="prize", starting_credits=10)
    await ledger.grant(DM, ALICE, 50, actor_id=None, reason="direct messages", starting_credits=0)
    await ledger.change_balance(GUILD, BOB, add=-20, actor_id=ADMIN, reason="oops", starting_credits=0)
    await ledger.refill_allowance(
        OTHER_GUILD, CAROL, amount=100, period_of=lambda _: "monthly:2026-11-01", starting_credits=0
    )
    # Jobs in every state: live ones (queued, held, at a provider, a cancel recorded, a stored result)
    # and ended ones (delivered and charged, failed with absorbed spend, cancelled at a provider).
    await job(storage, "j-queued", GUILD, ALICE, owner="proc-a", lease_expires_at="2026-11-15T12:10:00")
    await held_job(storage, "j-held", GUILD, ALICE, 40)
    await held_job(storage, "j-submitted", GUILD, BOB, 30)
    await storage.jobs.mark_submitted("j-submitted", "wavespeed", "req-1")
    await held_job(storage, "j-stopping", OTHER_GUILD, CAROL, 20)
    await storage.jobs.mark_submitted("j-stopping", "atlascloud", "req-2")
    await storage.jobs.request_cancel("j-stopping", actor_id=ADMIN, reason="stopped")
    await held_job(storage, "j-completed", GUILD, ALICE, 25)
    await storage.jobs.set_job_state("j-completed", "completed", result='{"files": ["out.png"]}')
    await held_job(storage, "j-delivered", GUILD, ALICE, 60)
    await ledger.settle_delivered("j-delivered", 45, via="channel", channel_id=500, message_id=7001)
    await held_job(storage, "j-failed", GUILD, BOB, 35)
    await ledger.settle_released("j-failed", "failed", error_code="delivery_failed", absorbed=35)
    await held_job(storage, "j-cancelled", DM, ALICE, 10)
    await ledger.settle_cancelled_at_provider("j-cancelled", 5, error_code="cancelled")
    # A budget-checked hold once the month is a minute old: the month's marks (bot/storage/spend.py).
    month = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    await job(storage, "j-budgeted", OTHER_GUILD, CAROL)
    budgets = ReserveGuard(bot_cap=10_000, allotment=10_000, cap_since=month)
    await ledger.reserve("j-budgeted", OTHER_GUILD, CAROL, 5, starting_credits=0, guard=budgets)
    # Server and member settings, policies, tiers, the operator's servers, routes, circuits, history.
    await settings.set_guild_thread_results(GUILD, True)
    await settings.set_guild_moderation(GUILD, "strict")
    await settings.update_guild_policy(
        GUILD,
        {"allowance": 100, "allowance_period": "monthly", "monthly_cap_usd": "12.50", "max_quality": "high"},
        actor_id=ADMIN,
    )
    await settings.put_role_tier(GUILD, ROLE, {"allowance": 200, "models": "*"}, actor_id=ADMIN)
    await settings.update_user_settings(ALICE, {"quality": "high", "model": "gpt-image-1"})
    await settings.update_user_settings(BOB, {"model": "gpt-image-1", "skip_mask_preview": 1})
    await settings.move_stored_model("gpt-image-1", "gpt-image-2", "gpt-image-1 was shut down")
    await settings.put_route_status("openai", "gpt-image-1", {"shutdown": "2026-10-23", "listed": 0})
    await settings.set_guild_approved(GUILD, True, actor_id=ADMIN)
    await settings.set_guild_allotment(OTHER_GUILD, "5.00", actor_id=ADMIN)
    await storage.circuits.exchange({"wavespeed": 60.0}, ())
    for message_id, parent in ((7001, None), (7002, 7001)):
        await storage.history.add_version(
            VersionRow(message_id, 500, GUILD, ALICE, "j-delivered", 7001, parent, "", "2026-11-18T12:00:00")
        )


async def sqlite_file(path: Path, clock: Callable[[], dt.datetime]) -> Path:
    storage = await Storage.open(path, clock=clock)
    try:
        await fill(storage)
    finally:
        await storage.close()
    return path


@pytest.fixture
async def source(tmp_path: Path, clock: Callable[[], dt.datetime]) -> Path:
    """A stopped bot's SQLite file, filled."""
    return await sqlite_file(tmp_path / "retouch.sqlite3", clock)


def sqlite_tables(path: Path) -> dict[str, list[str]]:
    """{table: columns} of every table of the SQLite file (its own internal tables left out)."""
    db = sqlite3.connect(path)
    try:
        names = [
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {name: [r[1] for r in db.execute(f'PRAGMA table_info("{name}")')] for name in names}
    finally:
        db.close()


def sqlite_rows(path: Path, table: str, columns: list[str], order: str = "rowid") -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return [tuple(r) for r in db.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")]
    finally:
        db.close()


async def pg_rows(url: str, table: str, columns: list[str], order: str = "") -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        sql = f"SELECT {', '.join(columns)} FROM {table}" + (f" ORDER BY {order}" if order else "")
        rows = await conn.fetch(sql)
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


async def pg_counts(url: str) -> dict[str, int]:
    """Rows in every table of the test's schema (schema_version aside)."""
    conn = await asyncpg.connect(url)
    try:
        names = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_name <> 'schema_version'"
        )
        return {r[0]: int(await conn.fetchval(f'SELECT COUNT(*) FROM "{r[0]}"')) for r in names}
    finally:
        await conn.close()


def normalised(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows in one order, whatever order a database returned them in (values compare as Python types:
    SQLite's INTEGER and PostgreSQL's BIGINT are both int, TEXT is str on both)."""
    return sorted(rows, key=repr)


@pytest.fixture
async def opened(postgres_url: str, clock: Callable[[], dt.datetime]) -> AsyncIterator[Callable[..., Any]]:
    """`await opened(target)`: a Storage, closed when the test ends."""
    stores: list[Storage] = []

    async def open_storage(target: str | Path) -> Storage:
        stores.append(await Storage.open(target, clock=clock))
        return stores[-1]

    yield open_storage
    for store in stores:
        await store.close()


# -- the books check the copy relies on (both backends) ----------------------------------------------------


async def test_unbalanced_accounts_names_balances_off_from_their_ledger_and_ledger_rows_without_an_account(
    storage: Storage,
):
    for user in (ALICE, BOB):
        await storage.ledger.grant(GUILD, user, 100, actor_id=ADMIN, reason="x", starting_credits=0)
    assert await storage.reports.unbalanced_accounts() == []
    # Written behind the repositories' back, as only a hand-edited database could be.
    await storage.db.write_one("UPDATE accounts SET held = held + 3 WHERE user_id = ?", (BOB,))
    await storage.db.write_one(
        "INSERT INTO ledger (guild_id, user_id, kind, amount, delta_balance, delta_held, created_at) "
        "VALUES (?, ?, 'grant', 9, 9, 0, '2026-11-15T12:00:00')",
        (GUILD, CAROL),
    )
    assert await storage.reports.unbalanced_accounts() == [(GUILD, BOB), (GUILD, CAROL)]


# -- the order of tables -------------------------------------------------------------------------------


def test_tables_are_copied_after_the_tables_their_foreign_keys_reference():
    tables = [
        Table("versions", ("id",), frozenset({"jobs"})),
        Table("jobs", ("id",), frozenset({"accounts", "jobs"})),  # a reference to itself is no wait
        Table("accounts", ("id",)),
        Table("notes", ("id",), frozenset({"gone"})),  # a table that is not copied is no wait either
    ]
    assert [t.name for t in copy_order(tables)] == ["accounts", "notes", "jobs", "versions"]


def test_foreign_keys_in_a_cycle_stop_the_copy_naming_the_tables():
    tables = [Table("a", ("id",), frozenset({"b"})), Table("b", ("id",), frozenset({"a"})), Table("c", ())]
    with pytest.raises(SchemaMismatch, match="a, b form a cycle"):
        copy_order(tables)


# -- the copy --------------------------------------------------------------------------------------------


async def test_the_copy_holds_every_row_of_every_table_and_the_reports_read_the_same(
    source: Path, postgres_url: str, opened: Callable[..., Any]
):
    tables = sqlite_tables(source)
    # The fill reaches every table, so a table a future migration adds fails here until it gets rows.
    empty = [name for name, columns in tables.items() if not sqlite_rows(source, name, columns)]
    assert empty == []

    report = await copy_database(source, postgres_url, batch_rows=3)  # several batches per table

    assert dict(report.tables) == {
        name: len(sqlite_rows(source, name, cols)) for name, cols in tables.items()
    }
    assert report.tables[0][0] == "absorbed_spend" and report.rows == sum(dict(report.tables).values())
    for name, columns in tables.items():
        copied = await pg_rows(postgres_url, name, columns)
        assert normalised(copied) == normalised(sqlite_rows(source, name, columns)), name
    # PostgreSQL's own rowid columns keep SQLite's insertion order (queries break ties by it).
    for name, key in (("jobs", ["id"]), ("model_notices", ["user_id", "notice"])):
        assert await pg_rows(postgres_url, name, key, order="rowid") == sqlite_rows(source, name, key), name

    sqlite_side, postgres_side = await opened(source), await opened(postgres_url)
    for side in (sqlite_side, postgres_side):
        assert await side.reports.unbalanced_accounts() == []
        assert await side.reports.held_mismatches() == []
    assert await read_everything(postgres_side) == await read_everything(sqlite_side)


async def read_everything(storage: Storage) -> list[Any]:
    """What the bot reads back through its repositories: balances, reports, jobs and settings."""
    reports, settings = storage.reports, storage.settings
    accounts = sorted(await reports.all_accounts(), key=lambda a: (a.guild_id, a.user_id))
    return [
        accounts,
        [await reports.ledger_totals(a.guild_id, a.user_id) for a in accounts],
        await reports.open_holds(),
        await reports.spend_by_guild(START - dt.timedelta(days=1)),
        await reports.guild_ledger(GUILD, since=None, until=None),
        await reports.account_history(GUILD, ALICE, kinds=("grant", "capture"), offset=0, limit=10),
        sorted(j.id for j in await storage.jobs.jobs_in_states(LIVE_STATES)),
        await storage.jobs.get_job("j-stopping"),
        await storage.jobs.recent_jobs(GUILD, ALICE, limit=10),
        await settings.guild_policy_row(GUILD),
        await settings.role_tier_rows(GUILD),
        await settings.user_settings_row(BOB),
        await settings.operator_guilds(),
        sorted(map(repr, await settings.route_status_rows())),
        await settings.guild_moderation(GUILD),
        await settings.guild_thread_results(GUILD),
        await storage.history.latest_version(7001),
        await storage.ledger.refilled(OTHER_GUILD, CAROL, "monthly:2026-11-01"),
        await settings.take_model_notices(ALICE),
    ]


async def test_postgresql_keeps_working_after_the_copy_its_ids_continuing_past_the_copied_ones(
    source: Path, postgres_url: str, opened: Callable[..., Any]
):
    await copy_database(source, postgres_url)
    storage = await opened(postgres_url)
    last_ledger_id = (await pg_rows(postgres_url, "ledger", ["MAX(id)"]))[0][0]

    await storage.ledger.grant(GUILD, CAROL, 80, actor_id=ADMIN, reason="new member", starting_credits=0)
    await held_job(storage, "j-new", GUILD, CAROL, 30)
    await storage.ledger.capture("j-new", 20)
    await storage.settings.move_stored_model("gpt-image-2", None, "gpt-image-2 was shut down")

    new_ids = [row[0] for row in await pg_rows(postgres_url, "ledger", ["id"], order="id")][-3:]
    assert new_ids == [last_ledger_id + 1, last_ledger_id + 2, last_ledger_id + 3]
    assert (await storage.ledger.get_account(GUILD, CAROL)) is not None
    assert (await pg_rows(postgres_url, "jobs", ["id"], order="rowid DESC LIMIT 1")) == [("j-new",)]
    assert await storage.settings.take_model_notices(ALICE) == [
        "gpt-image-1 was shut down",
        "gpt-image-2 was shut down",
    ]
    assert await storage.reports.unbalanced_accounts() == []
    assert await storage.reports.held_mismatches() == []


# -- refusals --------------------------------------------------------------------------------------------


async def test_a_target_holding_rows_is_refused_and_left_as_it_was(
    source: Path, postgres_url: str, opened: Callable[..., Any]
):
    fleet = await opened(postgres_url)
    await fleet.ledger.grant(GUILD, ALICE, 7, actor_id=ADMIN, reason="already here", starting_credits=0)
    before = await pg_counts(postgres_url)

    with pytest.raises(TargetNotEmpty) as refused:
        await copy_database(source, postgres_url)

    assert refused.value.rows == {"accounts": 1, "ledger": 1}
    assert "accounts 1, ledger 1" in str(refused.value)
    assert await pg_counts(postgres_url) == before
    assert (await fleet.ledger.get_account(GUILD, ALICE)).balance == 7  # type: ignore[union-attr]


async def test_a_target_where_a_fleet_already_ran_is_refused_though_no_copied_table_has_rows(
    source: Path, postgres_url: str
):
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(SHARD_SCHEMA)  # what a PostgreSQL fleet creates beside the migrated tables
        await conn.execute("INSERT INTO shard_leases (shard_id, owner) VALUES (0, 'proc-a')")
    finally:
        await conn.close()

    with pytest.raises(TargetNotEmpty) as refused:
        await copy_database(source, postgres_url)

    assert refused.value.rows == {"shard_leases": 1}
    assert (await pg_counts(postgres_url))["jobs"] == 0


async def test_a_bot_running_on_the_sqlite_file_stops_the_copy(source: Path, postgres_url: str):
    running_bot = await SQLiteDatabase.open(source, sole_process=True)
    try:
        with pytest.raises(DatabaseInUse):
            await copy_database(source, postgres_url)
    finally:
        await running_bot.close()
    # The copy holds the file the same way while it runs: a bot started meanwhile refuses to start.
    assert all(count == 0 for count in (await pg_counts(postgres_url)).values())


async def lose_a_job(conn: asyncpg.Connection) -> None:
    await conn.execute("DELETE FROM jobs WHERE id = 'j-held'")


async def skew_a_balance(conn: asyncpg.Connection) -> None:
    await conn.execute(
        f"UPDATE accounts SET balance = balance + 1 WHERE guild_id = {GUILD} AND user_id = {BOB}"
    )


async def miscount_a_charge(conn: asyncpg.Connection) -> None:
    await conn.execute(f"UPDATE spend_totals SET captured = captured + 1 WHERE guild_id = {GUILD}")


@pytest.mark.parametrize(
    ("table", "damage", "said"),
    [
        ("jobs", lose_a_job, "jobs: 9 rows in SQLite, 8 in PostgreSQL"),
        ("accounts", skew_a_balance, f"account {GUILD}/{BOB}: balance or held differs"),
        ("ledger", miscount_a_charge, "spend_totals: the totals PostgreSQL counted from the copied rows"),
    ],
)
async def test_a_copy_that_does_not_read_back_as_the_source_is_rolled_back_whole(
    source: Path,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    table: str,
    damage: Callable[[asyncpg.Connection], Any],
    said: str,
):
    copy_table = copy_module._copy_table

    async def damaged(conn: asyncpg.Connection, src: Any, copied: Table, *rest: Any) -> int:
        sent = await copy_table(conn, src, copied, *rest)
        if copied.name == table:  # what a faulty copy could do, inside the copy's transaction
            await damage(conn)
        return sent

    monkeypatch.setattr(copy_module, "_copy_table", damaged)
    with pytest.raises(VerificationFailed) as failed:
        await copy_database(source, postgres_url)

    assert said in str(failed.value)
    assert all(count == 0 for count in (await pg_counts(postgres_url)).values())
    monkeypatch.undo()  # and nothing stands in the way of copying again
    assert (await copy_database(source, postgres_url)).rows > 0


async def test_a_sqlite_file_whose_books_are_already_off_is_refused_saying_so(
    source: Path, postgres_url: str
):
    db = sqlite3.connect(source)
    db.execute(f"UPDATE accounts SET balance = balance + 5 WHERE guild_id = {GUILD} AND user_id = {BOB}")
    db.commit()
    db.close()

    with pytest.raises(
        CopyRefused, match=rf"SQLite database's own books do not reconcile: account {GUILD}/{BOB}"
    ):
        await copy_database(source, postgres_url)
    assert all(count == 0 for count in (await pg_counts(postgres_url)).values())


async def test_a_table_postgresql_lacks_stops_the_copy_naming_it(source: Path, postgres_url: str):
    db = sqlite3.connect(source)
    db.execute("CREATE TABLE tips (id INTEGER PRIMARY KEY, tip TEXT NOT NULL)")
    db.execute("INSERT INTO tips (tip) VALUES ('use a mask')")
    db.commit()
    db.close()

    with pytest.raises(SchemaMismatch, match="PostgreSQL has no table tips"):
        await copy_database(source, postgres_url)
    assert all(count == 0 for count in (await pg_counts(postgres_url)).values())


async def test_a_value_postgresql_would_change_stops_the_copy_naming_its_row(source: Path, postgres_url: str):
    db = sqlite3.connect(source)
    db.execute("UPDATE jobs SET count = 1.5 WHERE id = 'j-held'")  # SQLite keeps a REAL in an INTEGER
    db.commit()
    db.close()

    with pytest.raises(CopyRefused, match=r"jobs row \d+: count holds a float \(1\.5\)"):
        await copy_database(source, postgres_url)
    assert all(count == 0 for count in (await pg_counts(postgres_url)).values())


async def test_a_text_with_a_nul_character_stops_the_copy_naming_its_row(source: Path, postgres_url: str):
    db = sqlite3.connect(source)
    db.execute("UPDATE jobs SET provider_request_id = 'abc' || char(0) || 'def' WHERE id = 'j-held'")
    db.commit()
    db.close()

    with pytest.raises(CopyRefused, match=r"jobs row \d+: provider_request_id holds a NUL character"):
        await copy_database(source, postgres_url)
    assert all(count == 0 for count in (await pg_counts(postgres_url)).values())


async def test_a_missing_sqlite_file_is_refused_and_not_created(tmp_path: Path, postgres_url: str):
    with pytest.raises(CopyRefused, match="there is no SQLite database at"):
        await copy_database(tmp_path / "nowhere.sqlite3", postgres_url)
    assert not (tmp_path / "nowhere.sqlite3").exists()


# -- the command -------------------------------------------------------------------------------------------


def run_bot(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    clean["PYTHONPATH"] = os.environ.get("PYTHONPATH") or str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env={**clean, "DISCORD_TOKEN": "tok-abcdef123456", "OPENAI_API_KEY": "sk-test-123456789", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_the_command_copies_says_what_it_did_and_what_next_and_never_shows_the_password(
    tmp_path: Path, postgres_url: str, clock: Callable[[], dt.datetime]
):
    data = tmp_path / "data"
    data.mkdir()
    tables = sqlite_tables(await sqlite_file(data / "retouch.sqlite3", clock))
    password = "pw-Secr3t-9c1e"
    assert postgres_url.startswith("postgresql://postgres@")  # the test server trusts local connections
    with_password = postgres_url.replace("postgres@", f"postgres:{password}@", 1)
    env = {"DATA_DIR": str(data), "DATABASE_URL": with_password}

    done = run_bot(["--copy-to-postgres"], env, tmp_path)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    counts = {name: len(sqlite_rows(data / "retouch.sqlite3", name, cols)) for name, cols in tables.items()}
    assert f"copied {sum(counts.values())} rows in {len(counts)} tables" in output
    assert f"ledger {counts['ledger']}, model_notices {counts['model_notices']}" in output
    assert "Next: start Retouch with this DATABASE_URL" in output
    assert "postgresql://***@127.0.0.1:5432/test" in output
    assert (await pg_rows(postgres_url, "accounts", ["COUNT(*)"])) == [(counts["accounts"],)]

    again = run_bot(["--copy-to-postgres"], env, tmp_path)

    output = again.stdout + again.stderr
    assert again.returncode == 1, output
    assert "Nothing was copied: the PostgreSQL database already holds rows" in output
    assert "Traceback" not in output

    unset = run_bot(
        ["--copy-to-postgres", "--from", str(data / "retouch.sqlite3")], {"DATA_DIR": str(data)}, tmp_path
    )

    assert unset.returncode == 2
    assert "set DATABASE_URL to postgresql://" in unset.stderr
    for run in (done, again, unset):
        assert password not in run.stdout + run.stderr
