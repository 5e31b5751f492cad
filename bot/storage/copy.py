"""Copy a bot's SQLite database into an empty PostgreSQL one (`python -m bot --copy-to-postgres`): how a
bot that started on the default SQLite file moves to several processes without losing a credit.

What the copy promises:
- It never merges or overwrites: the target must hold no row in any table of its schema
  (`TargetNotEmpty`), checked after locking the tables it fills, so no writer can slip a row in before
  the copy commits. While it runs it holds the SQLite file's sole-process lock, so a bot cannot run on
  the file (`DatabaseInUse` if one does, and a bot started meanwhile refuses to start).
- Every table the migrations created is copied: they are read from the SQLite schema, not listed here,
  so a table a future migration adds is copied too, and one PostgreSQL lacks stops the copy, named
  (`SchemaMismatch`). Only each backend's own bookkeeping (`BACKEND_TABLES`) stays behind.
- Rows keep their primary keys and ids, and arrive in SQLite's insertion order (rowid), parents before
  the tables whose foreign keys point at them. Columns only PostgreSQL has (`rowid` on jobs and
  model_notices: SQLite's implicit rowid made explicit) are filled by their identity as the rows arrive,
  so they keep SQLite's order too.
- One PostgreSQL transaction, committed only after verifying it: each table's row count equals
  SQLite's, and every account's balance and holds equal the sums of its ledger rows
  (`VerificationFailed` rolls everything back). Then every identity sequence is moved past the largest
  copied value, so the bot's next ledger row cannot collide with a copied one.
- The SQLite file is read in one read transaction (one consistent snapshot) and never written, beyond
  the migrations opening it applies (as the bot's own start would).

PostgreSQL never rolls sequences back, so a copy that was rolled back may leave the identity of `rowid`
advanced: harmless, those values only need to grow.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bot.storage.connection import SchemaTooNew, utcnow
from bot.storage.postgres import PostgresDatabase, postgres_sql
from bot.storage.reports import LedgerReports
from bot.storage.sqlite import SQLiteDatabase

log = logging.getLogger(__name__)

# Rows read from SQLite and sent to PostgreSQL (one COPY) at a time: bounds the memory a big ledger needs.
BATCH_ROWS = 5_000
# Each backend records its schema version its own way (SQLite: PRAGMA user_version); never copied.
BACKEND_TABLES = frozenset({"schema_version"})
# Tables the target's own triggers fill from other tables' rows as they are copied (spend_totals counts
# every capture and absorbed charge: bot/storage/spend.py). Copying them too would count everything
# twice, so they are left to the triggers and then compared row for row with SQLite's.
DERIVED_TABLES = frozenset({"spend_totals"})
# How long the copy waits for another session's lock on a target table before giving up.
LOCK_TIMEOUT = "30s"
# Connections the copy opens to PostgreSQL: one for its transaction, one spare for the pool.
POOL_SIZE = 2


class CopyRefused(Exception):
    """The copy did not happen: no row was written to PostgreSQL. The text says why, naming no secret."""


class TargetNotEmpty(CopyRefused):
    """The target already holds rows: the copy never merges into, or overwrites, existing data."""

    def __init__(self, rows: dict[str, int]) -> None:
        listed = ", ".join(f"{table} {count}" for table, count in sorted(rows.items()))
        super().__init__(
            f"the PostgreSQL database already holds rows ({listed}): the copy goes only into a database "
            "no Retouch has used yet (create an empty one, or a new schema with ?search_path=)"
        )
        self.rows = rows


class SchemaMismatch(CopyRefused):
    """A table or column of the SQLite database has no place in the PostgreSQL one (or the reverse)."""


class VerificationFailed(CopyRefused):
    """The copy did not read back as the source: rolled back."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("the copy did not check out, so it was rolled back: " + "; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Table:
    """A table to copy: its columns as SQLite declares them, and the tables its foreign keys reference."""

    name: str
    columns: tuple[str, ...]
    parents: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CopyReport:
    """What was copied: (table, rows) in the order the tables were copied."""

    tables: tuple[tuple[str, int], ...]

    @property
    def rows(self) -> int:
        return sum(count for _, count in self.tables)


def quoted(name: str) -> str:
    """An identifier both SQLite and PostgreSQL read as exactly `name` (names come from a schema)."""
    return '"' + name.replace('"', '""') + '"'


def copy_order(tables: Sequence[Table]) -> list[Table]:
    """`tables`, each after the tables its foreign keys reference (otherwise in the order given)."""
    names = {table.name for table in tables}
    placed: list[Table] = []
    done: set[str] = set()
    waiting = list(tables)
    while waiting:
        ready = [t for t in waiting if (t.parents & names) - {t.name} <= done]
        if not ready:
            cycle = ", ".join(t.name for t in waiting)
            raise SchemaMismatch(f"the foreign keys of {cycle} form a cycle: no order can copy them")
        placed += ready
        done |= {t.name for t in ready}
        waiting = [t for t in waiting if t.name not in done]
    return placed


# -- the SQLite side (run on its database thread through `SQLiteDatabase.run`) --------------------------


def _source_tables(db: sqlite3.Connection) -> list[Table]:
    names = [
        str(r[0])
        for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "ORDER BY name"
        )
    ]
    tables = []
    for name in names:
        if name in BACKEND_TABLES:
            continue
        columns = tuple(str(r[1]) for r in db.execute(f"PRAGMA table_info({quoted(name)})"))
        parents = frozenset(str(r[2]) for r in db.execute(f"PRAGMA foreign_key_list({quoted(name)})"))
        tables.append(Table(name, columns, parents))
    return copy_order(tables)


def _begin_snapshot(db: sqlite3.Connection) -> None:
    # A deferred read transaction: every read until its end sees the file as of the first one.
    db.execute("BEGIN")
    db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()


def _end_snapshot(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")


def _read_batch(db: sqlite3.Connection, table: Table, after: int, limit: int) -> list[tuple[Any, ...]]:
    """Up to `limit` rows of `table` after rowid `after`, in rowid order: (rowid, *columns)."""
    columns = ", ".join(quoted(c) for c in table.columns)
    cursor = db.execute(
        f"SELECT rowid, {columns} FROM {quoted(table.name)} WHERE rowid > ? ORDER BY rowid LIMIT ?",
        (after, limit),
    )
    try:
        return [tuple(row) for row in cursor.fetchall()]
    finally:
        cursor.close()


def _count(db: sqlite3.Connection, table: str) -> int:
    return int(db.execute(f"SELECT COUNT(*) FROM {quoted(table)}").fetchone()[0])


# -- the PostgreSQL side (one connection, inside the copy's transaction) --------------------------------


class _OnConnection:
    """Reads on the copy's own connection, which see its rows before they are committed (what
    `LedgerReports` needs to check the books of the copy)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    def now(self) -> dt.datetime:
        return utcnow()

    async def one(self, sql: str, params: Sequence[Any] = ()) -> asyncpg.Record | None:
        return await self._conn.fetchrow(postgres_sql(sql), *params)

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._conn.fetch(postgres_sql(sql), *params)
        return rows


@dataclass(frozen=True)
class _TargetColumn:
    name: str
    data_type: str  # as information_schema spells it: bigint, text, …
    fills_itself: bool  # nullable, a default, an identity or generated: a row may leave it out


# The Python type a value must already have to go into a column of this PostgreSQL type unchanged.
# asyncpg would turn 1.5 into the bigint 1 without a word; SQLite's loose typing can hold such a value
# in an INTEGER column, so every value is checked instead of converted. Types not listed pass as read.
_EXACT_TYPES: dict[str, type] = {"bigint": int, "integer": int, "smallint": int, "text": str}


async def _target_tables(conn: asyncpg.Connection) -> dict[str, dict[str, _TargetColumn]]:
    """Every table of the target's schema (the first of its search_path) and its columns."""
    rows = await conn.fetch(
        "SELECT c.table_name, c.column_name, c.data_type, "
        "c.is_nullable = 'YES' OR c.column_default IS NOT NULL "
        "OR c.is_identity = 'YES' OR c.is_generated <> 'NEVER' "
        "FROM information_schema.columns c JOIN information_schema.tables t "
        "ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
        "WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"
    )
    tables: dict[str, dict[str, _TargetColumn]] = {}
    for table, column, data_type, fills_itself in rows:
        tables.setdefault(table, {})[column] = _TargetColumn(column, data_type, bool(fills_itself))
    return tables


def _check_fits(tables: Sequence[Table], target: dict[str, dict[str, _TargetColumn]]) -> None:
    """Every SQLite table and column has its place in PostgreSQL, and every column only PostgreSQL
    has fills itself; else SchemaMismatch, naming them (both were migrated by this release, so a
    mismatch is a bug to report, never something to copy around)."""
    problems = []
    for table in tables:
        columns = target.get(table.name)
        if columns is None:
            problems.append(f"PostgreSQL has no table {table.name}")
            continue
        problems += [f"PostgreSQL has no column {table.name}.{c}" for c in table.columns if c not in columns]
        problems += [
            f"{table.name}.{c.name} exists only in PostgreSQL and has no default"
            for c in columns.values()
            if c.name not in table.columns and not c.fills_itself
        ]
    if problems:
        raise SchemaMismatch("the two databases' tables differ: " + "; ".join(problems))


async def _lock(conn: asyncpg.Connection, tables: Sequence[Table]) -> None:
    """Keep every other writer out of the tables being filled until the copy ends (readers may read)."""
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    names = ", ".join(quoted(t.name) for t in tables)
    try:
        await conn.execute(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
    except asyncpg.LockNotAvailableError:
        raise CopyRefused(
            f"another session kept the PostgreSQL tables locked for {LOCK_TIMEOUT}: stop every Retouch "
            "process using that database, then copy again"
        ) from None


async def _target_counts(conn: asyncpg.Connection, tables: Sequence[str]) -> dict[str, int]:
    return {name: int(await conn.fetchval(f"SELECT COUNT(*) FROM {quoted(name)}")) for name in tables}


async def _check_empty(conn: asyncpg.Connection, target: dict[str, dict[str, _TargetColumn]]) -> None:
    # Every table of the schema, not only those copied: rows in shard_leases mean a fleet ran here.
    counts = await _target_counts(conn, sorted(set(target) - BACKEND_TABLES))
    filled = {name: count for name, count in counts.items() if count}
    if filled:
        raise TargetNotEmpty(filled)


def _checked_rows(
    table: Table, types: Sequence[type | None], batch: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """The batch's rows without their rowid, after making sure every value has its column's type and
    that PostgreSQL can keep every text as it is (not one with a NUL character, which SQLite keeps)."""
    for rowid, *values in batch:
        for column, wanted, value in zip(table.columns, types, values, strict=True):
            if value is not None and wanted is not None and type(value) is not wanted:
                raise CopyRefused(
                    f"{table.name} row {rowid}: {column} holds a {type(value).__name__} ({value!r:.40}) "
                    f"where PostgreSQL keeps a {wanted.__name__}; correct that row in SQLite first"
                )
            if isinstance(value, str) and "\x00" in value:
                raise CopyRefused(
                    f"{table.name} row {rowid}: {column} holds a NUL character, which PostgreSQL cannot "
                    "keep in text; correct that row in SQLite first"
                )
    return [row[1:] for row in batch]


async def _copy_table(
    conn: asyncpg.Connection,
    source: SQLiteDatabase,
    table: Table,
    columns: dict[str, _TargetColumn],
    batch_rows: int,
) -> int:
    """Send `table`'s rows to PostgreSQL in rowid order, a batch per COPY; how many were sent."""
    types = [_EXACT_TYPES.get(columns[c].data_type) for c in table.columns]
    sent, after = 0, 0
    while batch := await source.run(_read_batch, table, after, batch_rows):
        after = batch[-1][0]
        records = _checked_rows(table, types, batch)
        try:
            await conn.copy_records_to_table(table.name, records=records, columns=list(table.columns))
        except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
            # A row SQLite kept that a PostgreSQL constraint or type refuses (beyond what `_checked_rows`
            # catches first, naming the row): the copy cannot go on without it.
            raise CopyRefused(f"PostgreSQL refused a row of {table.name}: {exc}") from None
        sent += len(batch)
    return sent


async def _books_problems(reports: LedgerReports) -> list[str]:
    """Accounts whose balance or holds do not match their ledger rows, said in a few words."""
    problems = [
        f"account {guild}/{user}: balance or held differs from the sum of its ledger rows"
        for guild, user in await reports.unbalanced_accounts()
    ]
    problems += [
        f"account {guild}/{user}: held {held}, but its open reservations add up to {open_}"
        for guild, user, held, open_ in await reports.held_mismatches()
    ]
    return problems


async def _derived_problems(
    conn: asyncpg.Connection, source: SQLiteDatabase, tables: Sequence[Table]
) -> list[str]:
    """Each table the target's triggers filled (DERIVED_TABLES), compared row for row with SQLite's."""
    problems = []
    for table in tables:
        columns = ", ".join(quoted(c) for c in table.columns)
        sql = f"SELECT {columns} FROM {quoted(table.name)} ORDER BY {columns}"
        mine = [tuple(r) for r in await source.all(sql)]
        theirs = [tuple(r) for r in await conn.fetch(sql)]
        if mine != theirs:
            problems.append(f"{table.name}: the totals PostgreSQL counted from the copied rows differ")
    return problems


async def _verify(conn: asyncpg.Connection, expected: dict[str, int], problems: list[str]) -> None:
    """Row counts per table as in SQLite, and the books reconcile, read on the copy's own connection;
    `problems` already found are reported with them."""
    counted = await _target_counts(conn, list(expected))
    problems = problems + [
        f"{name}: {expected[name]} rows in SQLite, {counted[name]} in PostgreSQL"
        for name in expected
        if counted[name] != expected[name]
    ]
    problems += await _books_problems(LedgerReports(_OnConnection(conn)))
    if problems:
        raise VerificationFailed(problems)


async def _reset_sequences(conn: asyncpg.Connection, tables: Sequence[Table]) -> None:
    """Move each identity (or serial) sequence of the copied tables past the largest value its column
    holds: copied ids were given explicitly, so the sequences still stand where they started."""
    rows = await conn.fetch(
        "SELECT table_name, column_name, "
        "pg_get_serial_sequence(format('%I.%I', table_schema, table_name), column_name) "
        "FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = ANY($1::text[])",
        [t.name for t in tables],
    )
    for table, column, sequence in rows:
        if sequence is None:
            continue
        await conn.execute(
            f"SELECT setval($1, COALESCE(MAX({quoted(column)}), 0) + 1, false) FROM {quoted(table)}",
            sequence,
        )


# -- the copy --------------------------------------------------------------------------------------------


async def copy_into(
    source: SQLiteDatabase, target: PostgresDatabase, *, batch_rows: int = BATCH_ROWS
) -> CopyReport:
    """Copy every table of `source` into `target` (both migrated), in one verified transaction.

    Raises TargetNotEmpty, SchemaMismatch, VerificationFailed or another CopyRefused: then no row was
    written.
    """
    await source.run(_begin_snapshot)
    try:
        tables = await source.run(_source_tables)
        expected = {t.name: await source.run(_count, t.name) for t in tables}
        # A source whose books are already off would fail the verification below: say so plainly first.
        broken = await _books_problems(LedgerReports(source))
        if broken:
            raise CopyRefused("the SQLite database's own books do not reconcile: " + "; ".join(broken))
        async with target.pool.acquire() as conn, conn.transaction():
            return await _copy_all(conn, source, tables, expected, batch_rows)
    finally:
        await source.run(_end_snapshot)


async def _copy_all(
    conn: asyncpg.Connection,
    source: SQLiteDatabase,
    tables: Sequence[Table],
    expected: dict[str, int],
    batch_rows: int,
) -> CopyReport:
    """The copy's transaction, from checking the target to resetting its sequences."""
    found = await _target_tables(conn)
    _check_fits(tables, found)
    await _lock(conn, tables)
    await _check_empty(conn, found)
    copied = []
    for table in tables:
        if table.name in DERIVED_TABLES:
            continue
        log.info("copying %s: %d rows", table.name, expected[table.name])
        copied.append((table.name, await _copy_table(conn, source, table, found[table.name], batch_rows)))
    derived = [t for t in tables if t.name in DERIVED_TABLES]
    await _verify(conn, expected, await _derived_problems(conn, source, derived))
    copied += [(t.name, expected[t.name]) for t in derived]
    await _reset_sequences(conn, tables)
    return CopyReport(tuple(copied))


async def copy_database(
    source_path: Path | str,
    target_url: str,
    *,
    clock: Callable[[], dt.datetime] = utcnow,
    batch_rows: int = BATCH_ROWS,
) -> CopyReport:
    """Open the SQLite file `source_path` as the bot would (migrated, and held against a running bot:
    DatabaseInUse) and the PostgreSQL database `target_url` (migrated: DatabaseUnavailable if it cannot
    be reached), then `copy_into`. Raises CopyRefused for every other reason not to copy."""
    if not await asyncio.to_thread(Path(source_path).is_file):
        raise CopyRefused(f"there is no SQLite database at {source_path}")
    try:
        source = await SQLiteDatabase.open(source_path, clock=clock, sole_process=True)
    except SchemaTooNew as exc:
        raise CopyRefused(_too_new(f"the SQLite database {source_path}", exc)) from None
    try:
        try:
            target = await PostgresDatabase.open(target_url, clock=clock, pool_size=POOL_SIZE)
        except SchemaTooNew as exc:
            raise CopyRefused(_too_new("the PostgreSQL database", exc)) from None
        try:
            return await copy_into(source, target, batch_rows=batch_rows)
        finally:
            await target.close()
    finally:
        await source.close()


def _too_new(what: str, exc: SchemaTooNew) -> str:
    return f"{what} was written by a newer Retouch (schema {exc.found}; this release knows up to {exc.known})"
