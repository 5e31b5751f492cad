"""The database handles (bot.storage.sqlite, bot.storage.postgres): transaction bodies commit whole or
not at all, a cancelled caller never leaves a transaction open; SQLite's one thread, one transaction at a
time and the connection settings durability needs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bot.storage import Storage, postgres
from bot.storage.connection import (
    Body,
    DatabaseInUse,
    DatabaseRefused,
    DatabaseUnavailable,
    execute,
    fetch_all,
    fetch_one,
    is_postgres,
    lock,
    lock_key,
)
from bot.storage.limits import ReserveGuard
from bot.storage.postgres import schema_url
from bot.storage.refusals import refusal_for
from bot.storage.sqlite import (
    BUSY_TIMEOUT_MS,
    LOCK_SUFFIX,
    DatabaseClosing,
    SQLiteDatabase,
    _apply_migration,
)
from tests.fixtures import NO_POSTGRES, TEST_DATABASE_URL
from tests.postgres import SilentNetwork, needs_postgres


@pytest.mark.sqlite_only
async def test_the_connection_is_opened_with_wal_full_sync_busy_timeout_and_foreign_keys(storage: Storage):
    async def pragma(name: str) -> object:
        row = await storage.db.one(f"PRAGMA {name}")
        assert row is not None
        return row[0]

    assert await pragma("journal_mode") == "wal"
    assert await pragma("synchronous") == 2  # FULL
    assert await pragma("busy_timeout") == BUSY_TIMEOUT_MS
    assert await pragma("foreign_keys") == 1


@pytest.mark.sqlite_only
async def test_transactions_run_one_at_a_time_on_one_thread_off_the_event_loop(storage: Storage):
    threads: set[int] = set()
    inside = 0
    most_inside = 0

    def body() -> Body[None]:
        nonlocal inside, most_inside
        inside += 1
        most_inside = max(most_inside, inside)
        threads.add(threading.get_ident())
        yield fetch_all("SELECT 1")
        inside -= 1

    await asyncio.gather(*(storage.db.transaction(body) for _ in range(20)))
    assert most_inside == 1
    assert len(threads) == 1 and threading.get_ident() not in threads


@pytest.mark.sqlite_only
async def test_a_caller_cancelled_mid_transaction_leaves_it_committed_whole_and_closed(storage: Storage):
    started, go_on = threading.Event(), threading.Event()

    def body() -> Body[None]:
        yield execute("INSERT INTO model_notices (user_id, notice, created_at) VALUES (1, 'a', 'now')")
        started.set()
        go_on.wait(5)
        yield execute("INSERT INTO model_notices (user_id, notice, created_at) VALUES (1, 'b', 'now')")

    task = asyncio.create_task(storage.db.transaction(body))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    go_on.set()
    # The next transaction runs after the cancelled one finished on the database thread.
    assert await storage.settings.take_model_notices(1) == ["a", "b"]
    assert await storage.db.run(lambda db: db.in_transaction) is False


async def test_a_failing_migration_rolls_back_and_leaves_no_transaction_open(tmp_path: Path):
    db = sqlite3.connect(tmp_path / "plain.sqlite3", isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError):
            _apply_migration(db, 1, "CREATE TABLE half (x INTEGER);\nSELECT no_such_function();")
        assert not db.in_transaction
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchall() == []
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    finally:
        db.close()


async def test_closing_twice_is_harmless_and_a_closed_database_refuses_work(tmp_path: Path):
    database = await SQLiteDatabase.open(tmp_path / "retouch.sqlite3")
    await database.close()
    await database.close()
    with pytest.raises(sqlite3.ProgrammingError):
        await database.one("SELECT 1")


@contextlib.asynccontextmanager
async def held_elsewhere(database_url: str, scope: tuple[str, ...]) -> AsyncIterator[None]:
    """Another process holds, until the block ends, what a transaction beginning with `lock(scope)`
    waits for first: SQLite's write lock (which every write transaction takes), or that lock."""
    if not is_postgres(database_url):
        other = sqlite3.connect(database_url, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("COMMIT")
            other.close()
        return
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(scope))
            yield
    finally:
        await conn.close()


async def test_transactions_begun_before_the_close_are_committed_before_it_closes(database_url: str):
    """The first transaction waits for another process; a second one comes meanwhile (SQLite queues it
    behind the first), then the close. SQLite's close used to reach its worker before the second
    transaction, which then ran on a closed connection."""
    storage = await Storage.open(database_url)
    scope = ("closing", secrets.token_hex(4))

    def noting(notice: str) -> Callable[[], Body[None]]:
        def body() -> Body[None]:
            yield lock(scope)
            yield execute(
                "INSERT INTO model_notices (user_id, notice, created_at) VALUES (5, ?, 'now')", (notice,)
            )

        return body

    async with held_elsewhere(database_url, scope):
        first = asyncio.ensure_future(storage.db.transaction(noting("first")))
        second = asyncio.ensure_future(storage.db.transaction(noting("second")))
        closing = asyncio.ensure_future(storage.close())
        await asyncio.sleep(0)  # each has begun, in that order
    await asyncio.wait_for(closing, 20)
    assert await asyncio.gather(first, second) == [None, None]
    reopened = await Storage.open(database_url)
    try:
        assert await reopened.settings.take_model_notices(5) == ["first", "second"]
    finally:
        await reopened.close()


@pytest.mark.sqlite_only
async def test_a_sqlite_close_under_steady_writes_commits_what_was_queued_and_refuses_the_rest(
    database_url: str,
):
    """Writers that keep coming (each one's next write asked for as the last commits) used to join the
    queue the close waited to see empty: it never emptied, and the shutdown hung. Now what was asked for
    before the close commits, and a write asked for after it began is refused, never lost silently."""
    storage = await Storage.open(database_url)
    scope = ("steady", secrets.token_hex(4))
    acknowledged: list[str] = []

    def noting(notice: str) -> Callable[[], Body[None]]:
        def body() -> Body[None]:
            yield lock(scope)
            yield execute(
                "INSERT INTO model_notices (user_id, notice, created_at) VALUES (6, ?, 'now')", (notice,)
            )

        return body

    async def writer(name: str) -> BaseException:
        for n in range(1_000_000):
            try:
                await storage.db.transaction(noting(f"{name}{n}"))
            except Exception as exc:
                return exc
            acknowledged.append(f"{name}{n}")
        raise AssertionError("the writes were never refused")

    async with held_elsewhere(database_url, scope):
        writers = [asyncio.ensure_future(writer(name)) for name in "abc"]
        await asyncio.sleep(0)  # the first write waits for the lock, the others queue behind it
        closing = asyncio.ensure_future(storage.close())
        await asyncio.sleep(0)
    await asyncio.wait_for(closing, 20)
    refusals = await asyncio.wait_for(asyncio.gather(*writers), 20)
    assert all(isinstance(exc, DatabaseClosing) and "closing" in str(exc) for exc in refusals), refusals
    assert {"a0", "b0", "c0"} <= set(acknowledged)  # queued before the close: committed
    reopened = await Storage.open(database_url)
    try:
        assert sorted(await reopened.settings.take_model_notices(6)) == sorted(acknowledged)
    finally:
        await reopened.close()


async def test_the_running_bot_holds_its_sqlite_file_alone_until_it_closes_it(tmp_path: Path):
    path = tmp_path / "retouch.sqlite3"
    bot = await Storage.open(path, sole_process=True)
    try:
        assert (tmp_path / f"retouch.sqlite3{LOCK_SUFFIX}").is_file()
        with pytest.raises(DatabaseInUse) as refused:
            await Storage.open(f"sqlite:///{path}", sole_process=True)  # another bot on the same file
        assert refused.value.path == str(path)
        beside = await Storage.open(path)  # `--sync`, tests and tools may still open it
        await beside.close()
    finally:
        await bot.close()
    await (await Storage.open(path, sole_process=True)).close()  # closed: the next bot may start


async def test_storage_is_its_repositories_and_nothing_passes_through(storage: Storage):
    """Every caller was ported to `storage.<repository>.<method>` (issue 14): the old flat names are
    gone, so a call site that was missed fails loudly instead of reaching SQL through a shim."""
    for name in ("reserve", "capture", "get_job", "set_job_state", "guild_policy_row", "ledger_rows"):
        assert not hasattr(storage, name), name
    await storage.ledger.ensure_account(1, 2, 7)
    assert (await storage.ledger.get_account(1, 2)).balance == 7
    assert await storage.jobs.get_job("nope") is None
    assert await storage.settings.user_settings_row(2) is None
    assert await storage.reports.all_accounts()
    assert await storage.history.get_version(1) is None


@pytest.mark.parametrize(
    ("url", "relative"), [("sqlite:///{}", True), ("sqlite:///{}", False), ("{}", False)]
)
async def test_a_sqlite_url_or_a_plain_path_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, relative: bool
):
    monkeypatch.chdir(tmp_path)
    path = Path("sub") / "bot.sqlite3" if relative else tmp_path / "abs" / "bot.sqlite3"
    storage = await Storage.open(url.format(path))
    try:
        await storage.ledger.ensure_account(1, 2, 3)
    finally:
        await storage.close()
    assert (tmp_path / path).is_file()


async def test_a_read_only_postgresql_is_reported_not_writable(postgres_url: str):
    """A standby (or a read-only default) opens, but the health check must not call it writable."""
    await (await Storage.open(postgres_url)).close()  # migrated while writable
    read_only = await Storage.open(postgres_url + "&default_transaction_read_only=on")
    try:
        with pytest.raises(DatabaseUnavailable, match="read-only"):
            await read_only.check_writable()
        assert await read_only.ledger.get_account(1, 2) is None  # reads still work
    finally:
        await read_only.close()
    writable = await Storage.open(postgres_url)
    try:
        await writable.check_writable()
    finally:
        await writable.close()


async def test_a_postgresql_caller_cancelled_mid_transaction_leaves_it_committed_whole(postgres_url: str):
    storage = await Storage.open(postgres_url)
    marker = "SELECT pg_sleep(0.5) -- mid-transaction"

    def body() -> Body[None]:
        yield execute("INSERT INTO model_notices (user_id, notice, created_at) VALUES (1, 'a', 'now')")
        yield fetch_all(marker)
        yield execute("INSERT INTO model_notices (user_id, notice, created_at) VALUES (1, 'b', 'now')")

    task = asyncio.create_task(storage.db.transaction(body))
    deadline = asyncio.get_running_loop().time() + 10
    while not await storage.db.one("SELECT 1 FROM pg_stat_activity WHERE query = ?", (marker,)):
        assert asyncio.get_running_loop().time() < deadline, "the body never reached its middle"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await storage.close()  # waits for the transaction it is still running
    reopened = await Storage.open(postgres_url)
    try:
        assert await reopened.settings.take_model_notices(1) == ["a", "b"]
    finally:
        await reopened.close()


async def test_a_postgresql_close_cuts_a_connection_nobody_gives_back_instead_of_waiting_for_ever(
    postgres_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """asyncpg's pool close waits until every taken connection is given back: a stop must not hang on
    one that never is (a task that still holds it). Past the bound it is cut, and the log says so."""
    monkeypatch.setattr(postgres, "CLOSE_SECONDS", 0.5)
    storage = await Storage.open(postgres_url)
    assert isinstance(storage.db, postgres.PostgresDatabase)
    taken = await storage.db.pool.acquire()
    pid = taken.get_server_pid()
    await taken.execute(
        "BEGIN; INSERT INTO model_notices (user_id, notice, created_at) VALUES (2, 'x', 'now')"
    )
    with caplog.at_level(logging.WARNING, logger="bot.storage.postgres"):
        await asyncio.wait_for(storage.close(), 10)
    assert "connections still in use 0.5 s into the stop; cut off" in caplog.text
    reopened = await Storage.open(postgres_url)
    try:  # its server process has ended, and the transaction it was in rolled back whole
        deadline = asyncio.get_running_loop().time() + 10
        while await reopened.db.one("SELECT 1 FROM pg_stat_activity WHERE pid = ?", (pid,)):
            assert asyncio.get_running_loop().time() < deadline, "the cut connection's backend lives on"
            await asyncio.sleep(0.05)
        assert await reopened.settings.take_model_notices(2) == []
    finally:
        await reopened.close()


async def test_a_postgresql_close_that_is_itself_cancelled_cuts_the_connections_it_was_waiting_for(
    postgres_url: str,
):
    storage = await Storage.open(postgres_url)
    assert isinstance(storage.db, postgres.PostgresDatabase)
    taken = await storage.db.pool.acquire()  # never given back
    pid = taken.get_server_pid()
    closing = asyncio.create_task(storage.close())
    await asyncio.sleep(0.1)  # well inside CLOSE_SECONDS
    closing.cancel()
    await asyncio.gather(closing, return_exceptions=True)
    direct = await Storage.open(postgres_url)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while await direct.db.one("SELECT 1 FROM pg_stat_activity WHERE pid = ?", (pid,)):
            assert asyncio.get_running_loop().time() < deadline, "the connection outlived the cancelled close"
            await asyncio.sleep(0.05)
    finally:
        await direct.close()


async def test_a_postgresql_close_is_bounded_even_when_the_network_goes_silent_mid_transaction(
    postgres_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """A transaction waiting for an answer that never comes, and a cancelled one's ROLLBACK the same:
    only cutting the connections ends those waits, and the stop must not wait for them first."""
    monkeypatch.setattr(postgres, "CLOSE_SECONDS", 0.5)
    async with SilentNetwork(postgres_url) as network:
        storage = await Storage.open(network.url)
        marker = "SELECT pg_sleep(1) -- the network goes silent meanwhile"

        def body() -> Body[None]:
            yield fetch_all(marker)

        running = asyncio.create_task(storage.db.transaction(body))
        direct = await Storage.open(postgres_url)
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while not await direct.db.one("SELECT 1 FROM pg_stat_activity WHERE query = ?", (marker,)):
                assert asyncio.get_running_loop().time() < deadline, "the transaction never started"
        finally:
            await direct.close()
        network.silent = True
        running.cancel()  # its caller gives up; the transaction itself runs on, waiting for an answer
        with caplog.at_level(logging.WARNING, logger="bot.storage.postgres"):
            closing = asyncio.ensure_future(storage.close())
            done, _ = await asyncio.wait({closing}, timeout=10)  # never waits on the close itself
        assert done, "the close waited on a connection that went silent"
        assert "connections still in use 0.5 s into the stop; cut off" in caplog.text
        await asyncio.gather(running, return_exceptions=True)


async def test_postgresql_sessions_end_an_idle_transaction_and_find_a_silent_client_within_a_minute(
    postgres_url: str,
):
    """Every session starts with SESSION_SETTINGS, except those the operator's URL sets itself (as a
    query parameter or in libpq's `options`), which are kept as written."""
    settings = (
        "idle_in_transaction_session_timeout",
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_keepalives_count",
        "tcp_user_timeout",
    )

    async def shown(url: str) -> list[str]:
        db = await postgres.PostgresDatabase.open(url)
        try:
            return [str((await db.one(f"SHOW {name}") or [""])[0]) for name in settings]
        finally:
            await db.close()

    assert await shown(postgres_url) == ["1min", "30", "10", "3", "60000"]
    own = "&idle_in_transaction_session_timeout=5min&options=-c%20tcp_keepalives_count%3D7"
    assert await shown(postgres_url + own) == ["5min", "30", "10", "7", "60000"]


async def test_a_process_gone_silent_holding_the_budget_lock_holds_no_other_process_up_for_long(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Process a takes the budget lock (as every budget-checked reservation does first) and its network
    goes silent before the COMMIT: its session sits idle in the transaction. The server ends it after
    idle_in_transaction_session_timeout (shortened here), so process b's reservations go through
    instead of queueing behind the lock until the server hears a is gone (hours), exhausting b's pool."""
    monkeypatch.setattr(postgres, "CLOSE_SECONDS", 0.5)
    settings = {**postgres.SESSION_SETTINGS, "idle_in_transaction_session_timeout": "300ms"}
    async with SilentNetwork(postgres_url) as network:
        a = await postgres.PostgresDatabase.open(network.url, settings=settings)
        b = await Storage.open(postgres_url)
        marker = "SELECT pg_sleep(0.2) -- a holds the budget lock"

        def body() -> Body[None]:
            yield lock(("budget",))
            yield fetch_all(marker)
            yield fetch_all("SELECT 1")

        running = asyncio.ensure_future(a.transaction(body))
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while not await b.db.one("SELECT 1 FROM pg_stat_activity WHERE query = ?", (marker,)):
                assert asyncio.get_running_loop().time() < deadline, "the transaction never started"
            network.silent = True  # its answers are lost from here on: a waits, its session idles
            await b.ledger.grant(1, 2, 100, actor_id=None, reason="x", starting_credits=0)
            guard = ReserveGuard(bot_cap=10_000, cap_since=dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
            reserving = [
                b.ledger.reserve(f"j{n}", 1, 2, 1, starting_credits=0, guard=guard) for n in range(12)
            ]  # more than b's pool: queued on the lock, they would take every connection
            await asyncio.wait_for(asyncio.gather(*reserving), 20)
            assert (await b.ledger.get_account(1, 2)).held == 12
        finally:
            await a.close()  # cut: a never hears its session ended
            await b.close()
            await asyncio.gather(running, return_exceptions=True)


async def test_pooled_connections_the_server_ended_while_idle_are_replaced_without_losing_work(
    postgres_url: str,
):
    """PostgreSQL restarted, or ended idle sessions: the next statement on each pooled connection fails
    (with a lost connection's error, or asyncpg's InternalClientError when it heard of the end first).
    A transaction lost before its COMMIT, a read, and a write asyncpg never sent run again on a fresh
    connection; each is done once."""
    storage = await Storage.open(postgres_url)
    killer = await Storage.open(postgres_url)
    try:
        for round_ in range(6):
            pids = await pooled_pids(storage)
            await killer.db.all(
                "SELECT pg_terminate_backend(pid) FROM unnest(?::int[]) AS pid", (sorted(pids),)
            )
            if round_ % 2:
                await asyncio.sleep(0.2)  # asyncpg hears of the ends before the next statements

            def body(n: int = round_) -> Body[int]:
                yield execute(
                    "INSERT INTO model_notices (user_id, notice, created_at) VALUES (3, ?, 'now')", (f"t{n}",)
                )
                row = yield fetch_one("SELECT COUNT(*) FROM model_notices WHERE user_id = 3")
                return int(row[0])

            results = await asyncio.gather(
                storage.db.transaction(body),
                storage.db.one("SELECT 1"),
                storage.db.all("SELECT 2"),
            )
            assert results[0] == round_ + 1  # committed once, whatever it took
        assert await storage.settings.take_model_notices(3) == [f"t{n}" for n in range(6)]
    finally:
        await killer.close()
        await storage.close()


async def test_a_transaction_whose_first_lock_fails_is_rolled_back_before_its_connection_goes_back(
    postgres_url: str,
):
    """Its BEGIN and first locks are one round trip: a lock that fails (here after lock_timeout) leaves
    the transaction open all the same. Left to the pool, it was rolled back with asyncpg's complaint
    ("Resetting connection with an active transaction") in the log."""
    scope = ("first lock", secrets.token_hex(4))
    loop = asyncio.get_running_loop()
    complaints: list[object] = []
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: complaints.append(context.get("message")))
    storage = await Storage.open(postgres_url + "&lock_timeout=100ms")
    holder = await asyncpg.connect(postgres_url)
    try:

        def body() -> Body[None]:
            yield lock(scope)

        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", lock_key(scope))
            with pytest.raises(asyncpg.LockNotAvailableError):
                await storage.db.transaction(body)
        await storage.db.transaction(body)  # on the same connection, in a transaction of its own
        assert complaints == []
    finally:
        loop.set_exception_handler(handler)
        await holder.close()
        await storage.close()


async def test_a_connection_lost_during_commit_is_not_run_again(postgres_url: str):
    """Whether a COMMIT whose answer never came took cannot be known: running the transaction again
    could do it twice, so the error is raised (the callers' own checks decide), never retried."""
    async with SilentNetwork(postgres_url) as network:
        storage = await Storage.open(network.url)
        try:

            def body() -> Body[None]:
                yield execute(
                    "INSERT INTO model_notices (user_id, notice, created_at) VALUES (4, 'x', 'now')"
                )

            network.cut_after = b"COMMIT"
            with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
                await storage.db.transaction(body)
            assert network.cut_after is None  # the cut came at the COMMIT
        finally:
            await storage.close()
    direct = await Storage.open(postgres_url)
    try:  # the server got the COMMIT: done once (a retry would have made it twice)
        assert await direct.settings.take_model_notices(4) == ["x"]
    finally:
        await direct.close()


async def test_a_write_the_server_ran_is_not_run_again_when_only_reading_its_answer_failed(postgres_url: str):
    """asyncpg's stale type cache error (an InternalClientError, like the one for a connection whose end
    it heard) comes after the server ran the statement: it is raised, and the statement runs once."""
    db = await postgres.PostgresDatabase.open(postgres_url, pool_size=1)  # one connection: its cache
    try:
        await db.write_one("CREATE TYPE point2 AS (x BIGINT)", ())
        await db.write_one("CREATE TABLE counter (id BIGINT PRIMARY KEY, n BIGINT, at point2)", ())
        await db.write_one("INSERT INTO counter VALUES (1, 0, ROW(1))", ())
        bump = "UPDATE counter SET n = n + 1 WHERE id = ? RETURNING at"  # prepared: its answer is decoded
        assert await db.write_one(bump, (1,)) == 1  # the connection now knows point2's shape
        await db.write_one("ALTER TYPE point2 ADD ATTRIBUTE y BIGINT", ())
        with pytest.raises(asyncpg.OutdatedSchemaCacheError):
            await db.write_one(bump, (1,))
        row = await db.one("SELECT n FROM counter WHERE id = 1")
        assert row is not None and row[0] == 2  # once each: the failed answer's statement did run
    finally:
        await db.close()


async def pooled_pids(storage: Storage) -> set[int]:
    """The server processes behind the pool's open connections (several taken at once to see them)."""
    db = storage.db
    assert isinstance(db, postgres.PostgresDatabase)
    taken = [await db.pool.acquire() for _ in range(3)]
    try:
        return {conn.get_server_pid() for conn in taken}
    finally:
        for conn in taken:
            await db.pool.release(conn)


async def test_a_postgresql_transaction_caught_in_a_deadlock_runs_again(
    postgres_url: str, caplog: pytest.LogCaptureFixture
):
    storage = await Storage.open(postgres_url)
    try:
        for user in (1, 2):
            await storage.ledger.ensure_account(1, user, 0)

        def crossing(first: int, second: int) -> Callable[[], Body[int]]:
            def body() -> Body[int]:
                yield execute("UPDATE accounts SET updated_at = 'a' WHERE user_id = ?", (first,))
                yield fetch_all("SELECT pg_sleep(0.5)")  # both now hold one row and want the other's
                yield execute("UPDATE accounts SET updated_at = 'b' WHERE user_id = ?", (second,))
                return first

            return body

        with caplog.at_level(logging.INFO, logger="bot.storage.postgres"):
            done = await asyncio.gather(
                storage.db.transaction(crossing(1, 2)), storage.db.transaction(crossing(2, 1))
            )
        assert sorted(done) == [1, 2]
        assert "database 40P01" in caplog.text  # PostgreSQL chose a victim, and it ran again
    finally:
        await storage.close()


class Refused(Exception):
    pass


def noting(n: int) -> Callable[[], Body[int]]:
    """A transaction that writes a notice, then fails if `n` is a multiple of 3 (one that the database
    itself refuses when it is a multiple of 5 too): either way nothing it wrote may stay."""

    def body() -> Body[int]:
        yield execute(
            "INSERT INTO model_notices (user_id, notice, created_at) VALUES (1, ?, 'now')", (f"n{n}",)
        )
        if n % 15 == 0:
            yield execute("DELETE FROM ledger", ())  # the append-only trigger refuses it
        if n % 3 == 0:
            raise Refused(n)
        return n

    return body


async def test_a_failing_transaction_rolls_back_alone_while_the_others_commit(storage: Storage):
    await storage.ledger.ensure_account(1, 1, 5)  # a ledger row for the refused DELETE to meet
    outcomes = await asyncio.gather(
        *(storage.db.transaction(noting(n)) for n in range(30)), return_exceptions=True
    )
    assert all(isinstance(o, storage.db.Error) for o in outcomes[::15])
    assert [o.args[0] for o in outcomes if isinstance(o, Refused)] == [3, 6, 9, 12, 18, 21, 24, 27]
    assert [o for o in outcomes if isinstance(o, int)] == [n for n in range(30) if n % 3]
    kept = await storage.settings.take_model_notices(1)  # in commit order, which concurrency decides
    assert sorted(kept, key=lambda notice: int(notice[1:])) == [f"n{n}" for n in range(30) if n % 3]


@pytest.mark.sqlite_only
async def test_sqlite_commits_transactions_that_wait_together(storage: Storage):
    statements: list[str] = []
    await storage.db.run(lambda db: db.set_trace_callback(statements.append))
    await asyncio.gather(*(storage.db.transaction(noting(n)) for n in range(1, 30, 3)))  # none fails
    await storage.db.run(lambda db: db.set_trace_callback(None))
    assert 1 <= statements.count("COMMIT") < 10  # ten transactions, fewer commits (fsyncs)
    assert len(await storage.settings.take_model_notices(1)) == 10


async def notified(
    db: postgres.PostgresDatabase, heard: list[tuple[str, str]], wanted: list[tuple[str, str]]
) -> None:
    """NOTIFY on retouch_test_a and _b until every one of `wanted` was heard."""
    for _ in range(500):
        for channel in ("a", "b"):
            await db.one("SELECT pg_notify(?, ?)", (f"retouch_test_{channel}", channel))
        if all(w in heard for w in wanted):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"heard only {heard}")


async def own_storage(postgres_url: str) -> Storage:
    """A storage whose sessions are told from any other run's on the same server (application_name)."""
    return await Storage.open(postgres_url + f"&application_name=retouch-test-{secrets.token_hex(4)}")


async def test_postgresql_listens_on_every_channel_with_one_connection_and_again_after_losing_it(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(postgres, "LISTEN_RETRY_SECONDS", 0.05)
    storage = await own_storage(postgres_url)
    db = storage.db
    assert isinstance(db, postgres.PostgresDatabase)
    heard: list[tuple[str, str]] = []
    try:
        db.listen("retouch_test_a", lambda payload: heard.append(("a", payload)))
        db.listen("retouch_test_b", lambda payload: heard.append(("b", payload)))
        db.listen("retouch_test_b", lambda payload: heard.append(("b2", payload)))

        async def listener_pids() -> list[int]:
            rows = await db.all(
                "SELECT pid FROM pg_stat_activity "
                "WHERE application_name = current_setting('application_name') AND query LIKE ?",
                ('LISTEN "retouch_test_%',),
            )
            return [r[0] for r in rows]

        await notified(db, heard, [("a", "a"), ("b", "b"), ("b2", "b")])
        [pid] = await listener_pids()  # every channel on one connection
        heard.clear()
        await db.one("SELECT pg_terminate_backend(?)", (pid,))  # the connection is lost
        await notified(db, heard, [("a", "a"), ("b", "b"), ("b2", "b")])  # a new one listens on both again
        assert len(await listener_pids()) == 1 and pid not in await listener_pids()
    finally:
        await storage.close()


async def test_postgresql_goes_on_listening_whatever_losing_its_connections_raises(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Every pooled connection ended at once, the listener's among them, again and again: the listener
    may take a dead idle connection next, whose LISTEN fails with asyncpg's InternalClientError (with
    these timings, about one round in three). Its task used to end there, and nothing was heard again
    until a restart."""
    monkeypatch.setattr(postgres, "LISTEN_RETRY_SECONDS", 0.05)
    storage = await own_storage(postgres_url)
    killer = await Storage.open(postgres_url)
    db = storage.db
    assert isinstance(db, postgres.PostgresDatabase)
    heard: list[tuple[str, str]] = []
    try:
        [name] = await db.one("SELECT current_setting('application_name')")
        db.listen("retouch_test_a", lambda payload: heard.append(("a", payload)))
        with caplog.at_level(logging.INFO, logger="bot.storage.postgres"):
            for _ in range(12):
                await asyncio.gather(*(db.one("SELECT pg_sleep(0.01)") for _ in range(4)))  # 4 pooled
                await killer.db.all(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?",
                    (name,),
                )
                await asyncio.sleep(0.03)
            heard.clear()
            await notified(db, heard, [("a", "a")])
        assert "listening failed" not in caplog.text  # every way of losing it is a lost connection
    finally:
        await killer.close()
        await storage.close()


async def test_a_listener_that_keeps_failing_the_same_way_logs_it_once(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """A failure that is not a lost connection (a permission, a bug) is retried every few seconds
    forever: its traceback is logged once, not 17,000 times a day."""
    monkeypatch.setattr(postgres, "LISTEN_RETRY_SECONDS", 0.01)
    tries: list[int] = []
    enough = asyncio.Event()

    async def refused(self: object, conn: object) -> None:
        tries.append(1)
        if len(tries) == 5:
            enough.set()
        raise RuntimeError("permission denied for LISTEN")

    monkeypatch.setattr(postgres._Listener, "_until_lost", refused)
    storage = await own_storage(postgres_url)
    db = storage.db
    assert isinstance(db, postgres.PostgresDatabase)
    try:
        with caplog.at_level(logging.INFO, logger="bot.storage.postgres"):
            db.listen("retouch_test_a", lambda payload: None)
            await asyncio.wait_for(enough.wait(), 10)
        assert caplog.text.count("listening failed") == 1
    finally:
        await storage.close()


# -- PostgreSQL refusing the bot at start-up: said with the fix, never a traceback -------------------------


def url_as(*, role: str | None = None, database: str | None = None, password: str | None = None) -> str:
    """The test server's URL with another role, database or password."""
    parts = urlsplit(TEST_DATABASE_URL)
    user = role or parts.username or ""
    secret = password or parts.password
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    netloc = f"{user}{':' + secret if secret else ''}@{host}" if user else host
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}" if database else parts.path))


@pytest.fixture
async def guest_role() -> AsyncIterator[tuple[str, str]]:
    """A login role and a schema it may use but not create in; both dropped afterwards."""
    if not TEST_DATABASE_URL:
        pytest.skip(NO_POSTGRES)
    role, schema = f"retouch_guest_{secrets.token_hex(4)}", f"test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await conn.execute(
            f"CREATE ROLE {role} LOGIN; CREATE SCHEMA {schema}; GRANT USAGE ON SCHEMA {schema} TO {role}"
        )
        yield role, schema
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; DROP ROLE IF EXISTS {role}")
        await conn.close()


@needs_postgres
@pytest.mark.parametrize(
    ("url", "advice"),
    [
        (lambda: schema_url(TEST_DATABASE_URL, "retouch_absent"), "CREATE SCHEMA retouch_absent"),
        (
            lambda: url_as(database="retouch_absent_db"),
            "does not exist: create it (CREATE DATABASE retouch_absent_db)",
        ),
        (lambda: url_as(role="retouch_absent_role"), "CREATE ROLE retouch_absent_role LOGIN"),
    ],
    ids=["schema missing", "database missing", "role missing"],
)
async def test_a_postgresql_database_schema_or_role_that_does_not_exist_is_said_with_the_fix(
    url: Callable[[], str], advice: str
):
    with pytest.raises(DatabaseRefused) as info:
        await Storage.open(url())
    assert advice in str(info.value)


async def test_a_role_that_may_not_create_tables_is_told_the_grant_it_needs(guest_role: tuple[str, str]):
    role, schema = guest_role
    with pytest.raises(DatabaseRefused) as info:
        await Storage.open(schema_url(url_as(role=role), schema))
    assert f"grant it: GRANT CREATE ON SCHEMA {schema} TO {role}" in str(info.value)


async def test_an_upgrade_by_a_role_that_does_not_own_the_tables_is_told_so_not_to_grant_create(
    guest_role: tuple[str, str],
):
    """A role that may create in the schema but did not create the tables cannot ALTER them (a
    migration): "GRANT CREATE" would change nothing; ownership is what it lacks."""
    role, schema = guest_role
    owner = await Storage.open(schema_url(TEST_DATABASE_URL, schema))  # made by the test's role
    await owner.close()
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:  # as the database stood one release ago: the last migration still to run
        await conn.execute(
            f"ALTER TABLE {schema}.edit_versions DROP COLUMN deleted_at; "
            f"UPDATE {schema}.schema_version SET version = 14; GRANT CREATE ON SCHEMA {schema} TO {role}; "
            f"GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {role}"
        )
    finally:
        await conn.close()
    with pytest.raises(DatabaseRefused) as info:
        await Storage.open(schema_url(url_as(role=role), schema))
    said = str(info.value)
    assert f"{role} does not own the bot's tables and functions" in said and "GRANT CREATE" not in said


def test_a_wrong_password_is_told_to_fix_the_password_not_to_create_the_role():
    """28P01 is a kind of 28000 in asyncpg: tried in the other order, it read "create the role"."""
    refused = refusal_for(
        asyncpg.InvalidPasswordError('password authentication failed for user "retouch"'),
        "postgresql://retouch:wrong@db.example/retouch",
    )
    assert refused is not None and "fix the password in DATABASE_URL" in str(refused)
