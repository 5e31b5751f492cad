"""The one module that speaks SQL: accounts, the credit ledger, jobs and guild settings.

SQLite through aiosqlite, WAL, `synchronous=FULL`, and `BEGIN IMMEDIATE` for every write so a
reservation can never race another. One connection is shared by the whole process; an asyncio lock
serialises transactions on it (two coroutines must never interleave statements inside one transaction).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_PACKAGE = "bot.storage"
TERMINAL_STATES = ("delivered", "failed", "cancelled")


class LedgerConflict(Exception):
    """A job's credits were already settled the other way (capture after release or the reverse)."""


class NotEnoughCredits(Exception):
    def __init__(self, needed: int, available: int) -> None:
        super().__init__(f"needed {needed}, available {available}")
        self.needed = needed
        self.available = available


@dataclass(frozen=True)
class Account:
    guild_id: int
    user_id: int
    balance: int
    held: int


@dataclass(frozen=True)
class JobRow:
    id: str
    guild_id: int
    user_id: int
    channel_id: int | None
    state: str
    model: str
    quality: str
    size: str
    count: int
    reserved: int
    captured: int | None
    provider: str | None
    provider_request_id: str | None
    error_code: str | None
    error_ref: str | None
    created_at: str
    updated_at: str
    finished_at: str | None


@dataclass(frozen=True)
class LedgerTotals:
    balance: int
    held: int
    granted: int
    captured: int


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files(MIGRATIONS_PACKAGE) / "migrations"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text("utf-8")))
    return sorted(found)


class Storage:
    """Async access to the bot's SQLite database. Create with `await Storage.open(path)`."""

    def __init__(self, conn: aiosqlite.Connection, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._clock = clock

    @classmethod
    async def open(cls, path: Path | str, *, clock: Callable[[], dt.datetime] = utcnow) -> Storage:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        storage = cls(conn, clock)
        await storage.migrate()
        return storage

    async def close(self) -> None:
        await self._conn.close()

    def _now(self) -> str:
        return self._clock().isoformat(timespec="milliseconds")

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: BEGIN IMMEDIATE takes the write lock up front."""
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            else:
                await self._conn.execute("COMMIT")

    async def _one(self, sql: str, params: tuple[Any, ...] = ()) -> aiosqlite.Row | None:
        async with self._conn.execute(sql, params) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[aiosqlite.Row]:
        async with self._conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    # -- schema -------------------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply numbered migrations newer than `PRAGMA user_version`. Returns the new version."""
        row = await self._one("PRAGMA user_version")
        version = int(row[0]) if row else 0
        for number, sql in _migrations():
            if number <= version:
                continue
            log.info("applying database migration %04d", number)
            async with self._lock:
                # executescript commits on its own, so the version bump rides inside the script.
                await self._conn.executescript(
                    f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;"
                )
            version = number
        return version

    async def schema_version(self) -> int:
        row = await self._one("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def check_writable(self) -> None:
        """Raise if the database cannot take a write right now (used by health checks)."""
        async with self._write() as db:
            await db.execute("SELECT 1")

    # -- accounts and credits -----------------------------------------------------------------------

    async def _ensure_account(
        self, db: aiosqlite.Connection, guild_id: int, user_id: int, starting: int
    ) -> None:
        now = self._now()
        cur = await db.execute(
            "INSERT OR IGNORE INTO accounts (guild_id, user_id, balance, held, created_at, updated_at) "
            "VALUES (?, ?, ?, 0, ?, ?)",
            (guild_id, user_id, starting, now, now),
        )
        if cur.rowcount == 1 and starting > 0:
            await self._ledger(
                db, guild_id, user_id, None, "grant", starting, starting, 0, None, "starting credits"
            )

    async def _ledger(
        self,
        db: aiosqlite.Connection,
        guild_id: int,
        user_id: int,
        job_id: str | None,
        kind: str,
        amount: int,
        delta_balance: int,
        delta_held: int,
        actor_id: int | None,
        reason: str | None,
    ) -> None:
        await db.execute(
            "INSERT INTO ledger (guild_id, user_id, job_id, kind, amount, delta_balance, delta_held, "
            "actor_id, reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                guild_id,
                user_id,
                job_id,
                kind,
                amount,
                delta_balance,
                delta_held,
                actor_id,
                reason,
                self._now(),
            ),
        )

    async def _account(self, db: aiosqlite.Connection, guild_id: int, user_id: int) -> Account:
        async with db.execute(
            "SELECT balance, held FROM accounts WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return Account(guild_id, user_id, 0, 0)
        return Account(guild_id, user_id, row["balance"], row["held"])

    async def ensure_account(self, guild_id: int, user_id: int, starting_credits: int) -> Account:
        """Create the account with its one-time starting grant if it does not exist yet."""
        async with self._write() as db:
            await self._ensure_account(db, guild_id, user_id, starting_credits)
            return await self._account(db, guild_id, user_id)

    async def get_account(self, guild_id: int, user_id: int) -> Account | None:
        row = await self._one(
            "SELECT balance, held FROM accounts WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        return None if row is None else Account(guild_id, user_id, row["balance"], row["held"])

    async def grant(
        self,
        guild_id: int,
        user_id: int,
        amount: int,
        *,
        actor_id: int | None,
        reason: str,
        starting_credits: int,
    ) -> Account:
        """Add (or with a negative amount, remove up to the available) credits, recorded with the actor."""
        async with self._write() as db:
            await self._ensure_account(db, guild_id, user_id, starting_credits)
            current = await self._account(db, guild_id, user_id)
            delta = max(amount, -current.balance)
            await db.execute(
                "UPDATE accounts SET balance = balance + ?, updated_at = ? "
                "WHERE guild_id = ? AND user_id = ?",
                (delta, self._now(), guild_id, user_id),
            )
            kind = "grant" if amount >= 0 else "adjust"
            await self._ledger(db, guild_id, user_id, None, kind, delta, delta, 0, actor_id, reason)
            return await self._account(db, guild_id, user_id)

    async def reserve(
        self, job_id: str, guild_id: int, user_id: int, amount: int, *, starting_credits: int
    ) -> Account:
        """Hold `amount` credits for a job. Idempotent per job; raises NotEnoughCredits."""
        async with self._write() as db:
            await self._ensure_account(db, guild_id, user_id, starting_credits)
            already = await (
                await db.execute("SELECT 1 FROM ledger WHERE job_id = ? AND kind = 'reserve'", (job_id,))
            ).fetchone()
            reserved = already is not None
            if not reserved:
                # The conditional UPDATE is the whole race guard: it succeeds for exactly as many
                # concurrent jobs as the balance covers.
                cur = await db.execute(
                    "UPDATE accounts SET balance = balance - ?, held = held + ?, updated_at = ? "
                    "WHERE guild_id = ? AND user_id = ? AND balance >= ?",
                    (amount, amount, self._now(), guild_id, user_id, amount),
                )
                reserved = cur.rowcount == 1
                if reserved:
                    await self._ledger(
                        db, guild_id, user_id, job_id, "reserve", amount, -amount, amount, None, None
                    )
                    await db.execute(
                        "UPDATE jobs SET reserved = ?, state = 'reserved', updated_at = ? WHERE id = ?",
                        (amount, self._now(), job_id),
                    )
            account = await self._account(db, guild_id, user_id)
        # Refused after the commit, so a just-created account keeps its starting grant.
        if not reserved:
            raise NotEnoughCredits(amount, account.balance)
        return account

    async def _settlement(
        self, db: aiosqlite.Connection, job_id: str
    ) -> tuple[aiosqlite.Row | None, set[str]]:
        reserve = await (
            await db.execute(
                "SELECT guild_id, user_id, amount FROM ledger WHERE job_id = ? AND kind = 'reserve'",
                (job_id,),
            )
        ).fetchone()
        kinds = {
            row[0]
            for row in await (
                await db.execute(
                    "SELECT kind FROM ledger WHERE job_id = ? AND kind IN ('capture', 'release')", (job_id,)
                )
            ).fetchall()
        }
        return reserve, kinds

    async def capture(self, job_id: str, charged: int) -> tuple[Account, int] | None:
        """Charge a job (at most what it reserved) and return the rest. Idempotent.

        Returns (account, credits charged), or None when the job never reserved anything.
        Raises LedgerConflict if the job was already released.
        """
        async with self._write() as db:
            reserve, kinds = await self._settlement(db, job_id)
            if reserve is None:
                return None
            guild_id, user_id, held = reserve["guild_id"], reserve["user_id"], reserve["amount"]
            if "release" in kinds:
                raise LedgerConflict(f"job {job_id} was already released")
            if "capture" in kinds:
                row = await (
                    await db.execute(
                        "SELECT amount FROM ledger WHERE job_id = ? AND kind = 'capture'", (job_id,)
                    )
                ).fetchone()
                return await self._account(db, guild_id, user_id), int(row[0])
            charged = max(0, min(charged, held))
            await db.execute(
                "UPDATE accounts SET balance = balance + ?, held = held - ?, updated_at = ? "
                "WHERE guild_id = ? AND user_id = ?",
                (held - charged, held, self._now(), guild_id, user_id),
            )
            await self._ledger(
                db, guild_id, user_id, job_id, "capture", charged, held - charged, -held, None, None
            )
            await db.execute(
                "UPDATE jobs SET captured = ?, updated_at = ? WHERE id = ?", (charged, self._now(), job_id)
            )
            return await self._account(db, guild_id, user_id), charged

    async def release(self, job_id: str, reason: str | None = None) -> Account | None:
        """Return a job's whole hold. Idempotent; None if nothing was reserved.

        Raises LedgerConflict if the job was already captured.
        """
        async with self._write() as db:
            reserve, kinds = await self._settlement(db, job_id)
            if reserve is None:
                return None
            guild_id, user_id, held = reserve["guild_id"], reserve["user_id"], reserve["amount"]
            if "capture" in kinds:
                raise LedgerConflict(f"job {job_id} was already captured")
            if "release" not in kinds:
                await db.execute(
                    "UPDATE accounts SET balance = balance + ?, held = held - ?, updated_at = ? "
                    "WHERE guild_id = ? AND user_id = ?",
                    (held, held, self._now(), guild_id, user_id),
                )
                await self._ledger(db, guild_id, user_id, job_id, "release", held, held, -held, None, reason)
            return await self._account(db, guild_id, user_id)

    async def ledger_totals(self, guild_id: int, user_id: int) -> LedgerTotals:
        row = await self._one(
            "SELECT COALESCE(SUM(delta_balance), 0), COALESCE(SUM(delta_held), 0), "
            "COALESCE(SUM(CASE WHEN kind IN ('grant', 'adjust') THEN amount ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN kind = 'capture' THEN amount ELSE 0 END), 0) "
            "FROM ledger WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        assert row is not None
        return LedgerTotals(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    async def ledger_rows(self, job_id: str) -> list[dict[str, Any]]:
        rows = await self._all("SELECT * FROM ledger WHERE job_id = ? ORDER BY id", (job_id,))
        return [dict(r) for r in rows]

    async def all_accounts(self) -> list[Account]:
        rows = await self._all("SELECT guild_id, user_id, balance, held FROM accounts")
        return [Account(r["guild_id"], r["user_id"], r["balance"], r["held"]) for r in rows]

    # -- jobs ---------------------------------------------------------------------------------------

    async def create_job(
        self,
        job_id: str,
        *,
        guild_id: int,
        user_id: int,
        channel_id: int | None,
        model: str,
        quality: str,
        size: str,
        count: int,
    ) -> None:
        now = self._now()
        async with self._write() as db:
            await db.execute(
                "INSERT INTO jobs (id, guild_id, user_id, channel_id, state, model, quality, size, count, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                (job_id, guild_id, user_id, channel_id, model, quality, size, count, now, now),
            )

    async def set_job_state(self, job_id: str, state: str, **fields: Any) -> None:
        """Move a job to `state`, optionally setting provider, provider_request_id, error_code, error_ref."""
        allowed = {"provider", "provider_request_id", "error_code", "error_ref", "model", "quality", "size"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown job fields: {sorted(unknown)}")
        now = self._now()
        assignments = ["state = ?", "updated_at = ?"]
        params: list[Any] = [state, now]
        for name, value in fields.items():
            assignments.append(f"{name} = ?")
            params.append(value)
        if state in TERMINAL_STATES:
            assignments.append("finished_at = ?")
            params.append(now)
        params.append(job_id)
        async with self._write() as db:
            await db.execute(f"UPDATE jobs SET {', '.join(assignments)} WHERE id = ?", tuple(params))

    async def get_job(self, job_id: str) -> JobRow | None:
        row = await self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else JobRow(**dict(row))

    async def recent_jobs(self, guild_id: int, user_id: int, limit: int = 5) -> list[JobRow]:
        rows = await self._all(
            "SELECT * FROM jobs WHERE guild_id = ? AND user_id = ? "
            "ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (guild_id, user_id, limit),
        )
        return [JobRow(**dict(r)) for r in rows]

    async def jobs_in_states(self, states: tuple[str, ...]) -> list[JobRow]:
        marks = ", ".join("?" for _ in states)
        rows = await self._all(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at", states)
        return [JobRow(**dict(r)) for r in rows]

    # -- guild settings -----------------------------------------------------------------------------

    async def guild_thread_results(self, guild_id: int) -> bool | None:
        row = await self._one("SELECT thread_results FROM guild_settings WHERE guild_id = ?", (guild_id,))
        return None if row is None or row[0] is None else bool(row[0])

    async def set_guild_thread_results(self, guild_id: int, value: bool | None) -> None:
        async with self._write() as db:
            await db.execute(
                "INSERT INTO guild_settings (guild_id, thread_results) VALUES (?, ?) "
                "ON CONFLICT (guild_id) DO UPDATE SET thread_results = excluded.thread_results",
                (guild_id, None if value is None else int(value)),
            )
