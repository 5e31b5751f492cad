"""The database handle every repository shares: open, migrations, the write path and the clock.

SQLite through the standard library's `sqlite3`, on ONE dedicated worker thread
(`ThreadPoolExecutor(max_workers=1)`, reached with `loop.run_in_executor`): the connection is created,
used and closed on that thread only. WAL, `synchronous=FULL`, `busy_timeout`, foreign keys on, and
`BEGIN IMMEDIATE` for every write so a reservation can never race another.

Each write transaction is one plain sqlite3 function run whole on the worker (BEGIN IMMEDIATE, its
statements, COMMIT or ROLLBACK: one hop from the event loop, not one per statement). The worker runs
one call at a time, in order, so no other statement can ever run inside a transaction; an asyncio lock
also admits one transaction at a time, so reads are not queued behind writes that are still waiting.
A caller cancelled while its transaction runs does not stop it: the worker runs it to COMMIT or
ROLLBACK, so no transaction is ever left open (a call cancelled before it started never runs).

What a backend must provide (a second one, e.g. PostgreSQL through asyncpg, goes behind the same
repository methods in `ledger.py`, `reports.py`, `jobs.py` and `settings.py`):
- `open(path_or_dsn, clock)` / `close()`, and `migrate()` applying its own numbered migrations once,
  tracked by a version number (`schema_version()`), refusing a database newer than it knows
  (`SchemaTooNew`); `check_writable()` for health checks.
- `now()` / `timestamp()`: the injected clock, read once per transaction, stored as the ISO-8601 UTC
  text `stamp` writes (range filters compare these strings).
- `one(sql, params)` / `all(sql, params)`: reads returning rows addressable by column name and index.
- `transaction(body)`: runs `body` as ONE serializable write transaction (here: BEGIN IMMEDIATE) that
  either commits whole or rolls back whole, never left open by a cancelled caller, at most one at a
  time. The ledger's guarantees rest on it: a reservation is a single conditional
  `UPDATE … WHERE balance >= ?` whose row count decides, and capture/release check the job's ledger
  rows inside the same transaction.
- `write_one(sql, params)`: one statement in its own write transaction, returning its row count.
The transaction bodies are synchronous sqlite3 functions (`?` placeholders, `INSERT OR IGNORE`); a
backend with another dialect or an async driver supplies its own bodies for the repository methods
(the methods' signatures and row dataclasses are the contract, not the SQL text).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_PACKAGE = "bot.storage"

Row = sqlite3.Row


class SchemaTooNew(Exception):
    """The database was written by a newer release: this one must not touch it."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"database schema version {found} is newer than this release knows ({known})")
        self.found = found
        self.known = known


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    """The ledger's timestamp format in UTC, so range filters can compare strings."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def stamp(moment: dt.datetime) -> str:
    """A clock reading as stored in `*_at` columns (the clock is UTC already)."""
    return moment.isoformat(timespec="milliseconds")


def checked(fields: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """`fields`, after making sure every name is a known column."""
    # Column names are interpolated into SQL, so only known names ever get that far.
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown fields: {sorted(unknown)}")
    return fields


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files(MIGRATIONS_PACKAGE) / "migrations"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text("utf-8")))
    return sorted(found)


def latest_schema_version() -> int:
    """The schema version the packaged migrations lead to (what `/diagnose` compares against)."""
    return max((number for number, _ in _migrations()), default=0)


# -- on the database thread ---------------------------------------------------------------------------
# Plain sqlite3 functions, run on the worker thread by `Database.run`. They must never touch the event
# loop.


def in_transaction(db: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """Run `body` as one write transaction; BEGIN IMMEDIATE takes the write lock up front."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = body(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # body failed, or COMMIT did and left the transaction open
            db.execute("ROLLBACK")
        raise
    return result


def fetch_one(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
    cur = db.execute(sql, params)
    try:
        return cur.fetchone()
    finally:
        cur.close()


def fetch_all(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
    cur = db.execute(sql, params)
    try:
        return cur.fetchall()
    finally:
        cur.close()


def rowcount(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    """One statement; its row count."""
    return db.execute(sql, params).rowcount


def _connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
    db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    return db


def _apply_migration(db: sqlite3.Connection, number: int, sql: str) -> None:
    try:
        # executescript commits on its own, so the version bump rides inside the script.
        db.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")
    except BaseException:
        if db.in_transaction:  # a failing statement stops the script before its COMMIT
            db.execute("ROLLBACK")
        raise


class Database:
    """One SQLite connection on its own thread. Create with `await Database.open(path)`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        worker: ThreadPoolExecutor,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._conn = conn
        self._worker = worker
        self._lock = asyncio.Lock()
        self._clock = clock
        self._closed = False

    @classmethod
    async def open(cls, path: Path | str, *, clock: Callable[[], dt.datetime] = utcnow) -> Database:
        """Open (creating if needed) the database file and bring its schema up to date."""
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retouch-db")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(worker, _connect, str(path))
        except BaseException:
            worker.shutdown(wait=False)
            raise
        database = cls(conn, worker, clock)
        try:
            await database.migrate()
        except BaseException:
            await database.close()
            raise
        return database

    async def close(self) -> None:
        """Close the connection on its thread, then let the thread end. Closing twice is harmless."""
        if self._closed:
            return
        try:
            await self.run(lambda db: db.close())
        finally:
            self._closed = True
            self._worker.shutdown(wait=False)

    def now(self) -> dt.datetime:
        """The storage clock (injectable in tests): every policy date is read from it."""
        return self._clock()

    def timestamp(self) -> str:
        """The clock as stored in `*_at` columns."""
        return stamp(self._clock())

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(sqlite3_connection, *args)` on the database thread: one round trip, however many
        statements `fn` runs."""
        if self._closed:
            # What sqlite3 itself raises for a closed connection (the worker thread is gone too).
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, fn, self._conn, *args)

    async def transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run `body(connection)` on the database thread as one write transaction, in one round trip.

        The lock keeps one transaction at a time in flight. A caller cancelled while it waits does not
        stop `body`: the thread runs it to COMMIT or ROLLBACK, so no transaction is ever left open, and
        the thread runs calls in order, so nothing else can run between its statements.
        """
        async with self._lock:
            return await self.run(in_transaction, body)

    async def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        return await self.run(fetch_one, sql, params)

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await self.run(fetch_all, sql, params)

    async def write_one(self, sql: str, params: Sequence[Any]) -> int:
        """One statement in its own write transaction; its row count."""
        return await self.transaction(lambda db: rowcount(db, sql, params))

    # -- schema -------------------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply numbered migrations newer than `PRAGMA user_version`. Returns the new version.

        Raises `SchemaTooNew` (touching nothing) for a database a newer release has migrated: an older
        release cannot know what its columns and rules mean, and would write rows it cannot keep.
        """
        version = await self.schema_version()
        known = latest_schema_version()
        if version > known:
            raise SchemaTooNew(version, known)
        for number, sql in _migrations():
            if number <= version:
                continue
            log.info("applying database migration %04d", number)
            async with self._lock:
                await self.run(_apply_migration, number, sql)
            version = number
        return version

    async def schema_version(self) -> int:
        row = await self.one("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def check_writable(self) -> None:
        """Raise if the database cannot take a write right now (used by health checks)."""
        await self.transaction(lambda db: fetch_one(db, "SELECT 1"))
