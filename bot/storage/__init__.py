"""The one module that speaks SQL: accounts, the credit ledger, jobs and guild settings.

SQLite through aiosqlite, WAL, `synchronous=FULL`, and `BEGIN IMMEDIATE` for every write so a
reservation can never race another. One connection is shared by the whole process; an asyncio lock
serialises transactions on it (two coroutines must never interleave statements inside one transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sqlite3
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
# Jobs that may still need work: waiting for a reservation, in the queue, at a provider, or holding an
# undelivered result. Every one of them is looked at again when the bot starts.
LIVE_STATES = ("queued", "reserved", "submitting", "submitted", "completed")
# Job columns `set_job_state` may change besides the state.
_JOB_FIELDS = frozenset(
    {
        "provider",
        "provider_request_id",
        "error_code",
        "error_ref",
        "model",
        "quality",
        "size",
        "result",
        "started_at",
        "completed_at",
        "deadline_at",
        "delivery_attempted_at",
        "files_expire_at",
    }
)


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
    spec: str | None = None
    result: str | None = None
    interaction_at: str | None = None
    origin_message_id: int | None = None
    started_at: str | None = None
    completed_at: str | None = None
    deadline_at: str | None = None
    delivery_attempted_at: str | None = None
    delivered_via: str | None = None
    result_channel_id: int | None = None
    result_message_id: int | None = None
    files_expire_at: str | None = None

    @property
    def provider_job_ids(self) -> tuple[str, ...]:
        """The provider's ids for this job's calls (one per call of an emulated `count`)."""
        return tuple(i for i in (self.provider_request_id or "").split(",") if i)


@dataclass(frozen=True)
class OpenHold:
    """A reservation that was neither captured nor released, and the state of its job (None: no row)."""

    job_id: str
    guild_id: int
    user_id: int
    amount: int
    job_state: str | None


@dataclass(frozen=True)
class LedgerTotals:
    balance: int
    held: int
    granted: int
    captured: int


@dataclass(frozen=True)
class ReserveGuard:
    """Admission limits checked inside the reservation's own transaction.

    Checking them in a separate read before reserving would let two concurrent jobs both pass a limit
    that only one of them fits under.
    """

    cooldown_seconds: float = 0.0  # since the user's last admitted (and not refunded) job
    max_concurrent: int = 0  # open reservations per user; 0 = no limit
    guild_cap: int | None = None  # credits captured since `cap_since` + all holds + this job
    cap_since: dt.datetime | None = None


class ReserveRefused(Exception):
    """A ReserveGuard limit refused the job; nothing was held.

    `reason` is "cooldown", "concurrency" or "guild_cap". `retry_at` is when a cooldown ends; `used`
    and `limit` are running jobs or credits, as the reason reads.
    """

    def __init__(
        self, reason: str, *, retry_at: dt.datetime | None = None, used: int = 0, limit: int = 0
    ) -> None:
        super().__init__(f"{reason}: used {used} of {limit}")
        self.reason = reason
        self.retry_at = retry_at
        self.used = used
        self.limit = limit


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger row, with the model and provider of its job when it has one."""

    id: int
    guild_id: int
    user_id: int
    job_id: str | None
    kind: str
    amount: int
    delta_balance: int
    delta_held: int
    actor_id: int | None
    reason: str | None
    created_at: str
    model: str | None = None
    provider: str | None = None


# Ledger `reason` prefix of allowance top-ups (kind 'grant', no actor), so reports can tell them apart.
ALLOWANCE_REASON = "allowance"
_LEDGER_ENTRY_SQL = (
    "SELECT l.id, l.guild_id, l.user_id, l.job_id, l.kind, l.amount, l.delta_balance, l.delta_held, "
    "l.actor_id, l.reason, l.created_at, j.model, j.provider "
    "FROM ledger l LEFT JOIN jobs j ON j.id = l.job_id "
)
_GUILD_POLICY_FIELDS = frozenset(
    {
        "allowance",
        "allowance_period",
        "starting_credits",
        "max_quality",
        "models",
        "max_images",
        "monthly_cap_usd",
        "cooldown_seconds",
        "max_concurrent",
        "default_model",
        "default_quality",
        "default_size",
        "provider_order",
    }
)
_ROLE_TIER_FIELDS = frozenset({"allowance", "max_quality", "models", "max_images"})
_USER_SETTING_FIELDS = frozenset(
    {"quality", "model", "size", "output_format", "background", "skip_mask_preview"}
)


def _iso(moment: dt.datetime) -> str:
    """The ledger's timestamp format, so range filters can compare strings."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def _checked(fields: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    # Column names are interpolated into SQL, so only known names ever get that far.
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown fields: {sorted(unknown)}")
    return fields


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


def latest_schema_version() -> int:
    """The schema version the packaged migrations lead to (what `/diagnose` compares against)."""
    return max((number for number, _ in _migrations()), default=0)


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

    def now(self) -> dt.datetime:
        """The storage clock (injectable in tests): every policy date is read from it."""
        return self._clock()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: BEGIN IMMEDIATE takes the write lock up front."""
        async with self._lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                # Cancelled while BEGIN was queued on the connection's thread: it still runs there, and
                # a transaction left open would make every later BEGIN fail. (If BEGIN itself failed,
                # there is nothing to roll back.)
                with contextlib.suppress(sqlite3.Error):
                    await self._conn.execute("ROLLBACK")
                raise
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
        self,
        job_id: str,
        guild_id: int,
        user_id: int,
        amount: int,
        *,
        starting_credits: int,
        guard: ReserveGuard | None = None,
    ) -> Account:
        """Hold `amount` credits for a job. Idempotent per job.

        Raises NotEnoughCredits, or ReserveRefused when a `guard` limit refuses the job.
        """
        refused: ReserveRefused | None = None
        async with self._write() as db:
            await self._ensure_account(db, guild_id, user_id, starting_credits)
            already = await (
                await db.execute("SELECT 1 FROM ledger WHERE job_id = ? AND kind = 'reserve'", (job_id,))
            ).fetchone()
            reserved = already is not None
            if not reserved and guard is not None:
                refused = await self._guard_refusal(db, guild_id, user_id, amount, guard)
            if not reserved and refused is None:
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
        if refused is not None:
            raise refused
        if not reserved:
            raise NotEnoughCredits(amount, account.balance)
        return account

    async def _guard_refusal(
        self, db: aiosqlite.Connection, guild_id: int, user_id: int, amount: int, guard: ReserveGuard
    ) -> ReserveRefused | None:
        """The first guard limit this reservation would break, read inside its transaction."""
        now = self._clock()
        if guard.cooldown_seconds > 0:
            # Refunded jobs do not count: a provider failure should not make the user wait.
            row = await (
                await db.execute(
                    "SELECT MAX(r.created_at) FROM ledger r WHERE r.guild_id = ? AND r.user_id = ? "
                    "AND r.kind = 'reserve' AND NOT EXISTS (SELECT 1 FROM ledger x "
                    "WHERE x.job_id = r.job_id AND x.kind = 'release')",
                    (guild_id, user_id),
                )
            ).fetchone()
            if row is not None and row[0] is not None:
                ready = dt.datetime.fromisoformat(row[0]) + dt.timedelta(seconds=guard.cooldown_seconds)
                if now < ready:
                    return ReserveRefused("cooldown", retry_at=ready)
        if guard.max_concurrent > 0:
            row = await (
                await db.execute(
                    "SELECT COUNT(*) FROM ledger r WHERE r.guild_id = ? AND r.user_id = ? "
                    "AND r.kind = 'reserve' AND NOT EXISTS (SELECT 1 FROM ledger x "
                    "WHERE x.job_id = r.job_id AND x.kind IN ('capture', 'release'))",
                    (guild_id, user_id),
                )
            ).fetchone()
            running = int(row[0]) if row else 0
            if running >= guard.max_concurrent:
                return ReserveRefused("concurrency", used=running, limit=guard.max_concurrent)
        if guard.guild_cap is not None:
            since = _iso(guard.cap_since) if guard.cap_since else ""
            row = await (
                await db.execute(
                    "SELECT (SELECT COALESCE(SUM(amount), 0) FROM ledger "
                    "        WHERE guild_id = ? AND kind = 'capture' AND created_at >= ?), "
                    "       (SELECT COALESCE(SUM(held), 0) FROM accounts WHERE guild_id = ?)",
                    (guild_id, since, guild_id),
                )
            ).fetchone()
            used = int(row[0]) + int(row[1]) if row else 0
            if used + amount > guard.guild_cap:
                return ReserveRefused("guild_cap", used=used, limit=guard.guild_cap)
        return None

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
            return await self._capture(db, job_id, charged)

    async def _capture(
        self, db: aiosqlite.Connection, job_id: str, charged: int
    ) -> tuple[Account, int] | None:
        reserve, kinds = await self._settlement(db, job_id)
        if reserve is None:
            return None
        guild_id, user_id, held = reserve["guild_id"], reserve["user_id"], reserve["amount"]
        if "release" in kinds:
            raise LedgerConflict(f"job {job_id} was already released")
        if "capture" in kinds:
            row = await (
                await db.execute("SELECT amount FROM ledger WHERE job_id = ? AND kind = 'capture'", (job_id,))
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
            return await self._release(db, job_id, reason)

    async def _release(self, db: aiosqlite.Connection, job_id: str, reason: str | None) -> Account | None:
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

    async def settle_delivered(
        self, job_id: str, charged: int, *, via: str, channel_id: int | None, message_id: int | None
    ) -> tuple[Account, int] | None:
        """Capture a delivered job's charge and mark it delivered, in one transaction. Idempotent.

        One transaction, so a crash can never leave a charged job that looks undelivered (and is
        delivered again) or a delivered job whose hold is never settled.
        """
        async with self._write() as db:
            settled = await self._capture(db, job_id, charged)
            now = self._now()
            await db.execute(
                "UPDATE jobs SET state = 'delivered', delivered_via = ?, result_channel_id = ?, "
                "result_message_id = ?, updated_at = ?, finished_at = COALESCE(finished_at, ?) WHERE id = ?",
                (via, channel_id, message_id, now, now, job_id),
            )
            return settled

    async def settle_released(
        self, job_id: str, state: str, *, error_code: str, error_ref: str | None = None
    ) -> Account | None:
        """Release a job's hold and move it to `state` (failed or cancelled), in one transaction.

        Idempotent. Raises LedgerConflict (and changes nothing) if the job was already captured.
        """
        async with self._write() as db:
            account = await self._release(db, job_id, error_code[:64])
            now = self._now()
            await db.execute(
                "UPDATE jobs SET state = ?, error_code = ?, error_ref = COALESCE(?, error_ref), "
                "updated_at = ?, finished_at = COALESCE(finished_at, ?) WHERE id = ?",
                (state, error_code[:64], error_ref, now, now, job_id),
            )
            return account

    async def held_mismatches(self) -> list[tuple[int, int, int, int]]:
        """Accounts whose `held` differs from the sum of their open reservations:
        (guild_id, user_id, held, open). Empty unless the database was changed behind the bot's back."""
        rows = await self._all(
            "SELECT a.guild_id, a.user_id, a.held, COALESCE(SUM(r.amount), 0) AS open FROM accounts a "
            "LEFT JOIN ledger r ON r.guild_id = a.guild_id AND r.user_id = a.user_id "
            "AND r.kind = 'reserve' AND NOT EXISTS (SELECT 1 FROM ledger x "
            "WHERE x.job_id = r.job_id AND x.kind IN ('capture', 'release')) "
            "GROUP BY a.guild_id, a.user_id HAVING a.held != open"
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def forget_job_details(self, job_id: str) -> None:
        """Drop what an ended job no longer needs once its files expired (its prompt and options)."""
        async with self._write() as db:
            await db.execute(
                "UPDATE jobs SET spec = NULL, result = NULL "
                "WHERE id = ? AND state IN ('delivered', 'failed', 'cancelled')",
                (job_id,),
            )

    async def open_holds(self) -> list[OpenHold]:
        """Reservations never captured or released, with their job's state (for start-up reconciling)."""
        rows = await self._all(
            "SELECT r.job_id, r.guild_id, r.user_id, r.amount, j.state FROM ledger r "
            "LEFT JOIN jobs j ON j.id = r.job_id WHERE r.kind = 'reserve' AND NOT EXISTS "
            "(SELECT 1 FROM ledger x WHERE x.job_id = r.job_id AND x.kind IN ('capture', 'release')) "
            "ORDER BY r.id"
        )
        return [OpenHold(r[0], r[1], r[2], r[3], r[4]) for r in rows]

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
        spec: str | None = None,
        interaction_at: str | None = None,
        origin_message_id: int | None = None,
        deadline_at: str | None = None,
        files_expire_at: str | None = None,
    ) -> None:
        """Write a new job in state `queued` (nothing held yet), with what it needs to run."""
        now = self._now()
        async with self._write() as db:
            await db.execute(
                "INSERT INTO jobs (id, guild_id, user_id, channel_id, state, model, quality, size, count, "
                "created_at, updated_at, spec, interaction_at, origin_message_id, deadline_at, "
                "files_expire_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    guild_id,
                    user_id,
                    channel_id,
                    model,
                    quality,
                    size,
                    count,
                    now,
                    now,
                    spec,
                    interaction_at,
                    origin_message_id,
                    deadline_at,
                    files_expire_at,
                ),
            )

    async def set_job_state(self, job_id: str, state: str, **fields: Any) -> None:
        """Move a job to `state`, optionally setting other job columns (see `_JOB_FIELDS`)."""
        unknown = set(fields) - _JOB_FIELDS
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

    async def update_job(self, job_id: str, **fields: Any) -> None:
        """Set job columns (see `_JOB_FIELDS`) without changing the state."""
        unknown = set(fields) - _JOB_FIELDS
        if unknown or not fields:
            raise ValueError(f"unknown or no job fields: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        async with self._write() as db:
            await db.execute(
                f"UPDATE jobs SET {assignments}, updated_at = ? WHERE id = ?",
                (*fields.values(), self._now(), job_id),
            )

    async def mark_submitted(self, job_id: str, provider: str, provider_job_id: str) -> None:
        """Record that `provider` accepted one call of the job (ids are appended: an emulated `count`
        makes one call per image) and move it to `submitted`."""
        async with self._write() as db:
            await db.execute(
                "UPDATE jobs SET state = 'submitted', provider = ?, provider_request_id = "
                "CASE WHEN provider_request_id IS NULL OR provider_request_id = '' THEN ? "
                "ELSE provider_request_id || ',' || ? END, updated_at = ? WHERE id = ?",
                (provider, provider_job_id, provider_job_id, self._now(), job_id),
            )

    async def overdue_jobs(self, now: dt.datetime) -> list[JobRow]:
        """Jobs still waiting or at a provider whose deadline has passed (the watchdog's work)."""
        rows = await self._all(
            "SELECT * FROM jobs WHERE state IN ('reserved', 'submitting', 'submitted') "
            "AND deadline_at IS NOT NULL AND deadline_at < ? ORDER BY created_at",
            (now.isoformat(timespec="milliseconds"),),
        )
        return [JobRow(**dict(r)) for r in rows]

    async def recent_run_seconds(self, limit: int) -> list[float]:
        """How long the last `limit` jobs that produced a result took at their provider, newest first."""
        rows = await self._all(
            "SELECT started_at, completed_at FROM jobs WHERE started_at IS NOT NULL "
            "AND completed_at IS NOT NULL ORDER BY completed_at DESC LIMIT ?",
            (limit,),
        )
        spans = []
        for started, completed in rows:
            with contextlib.suppress(ValueError):
                delta = dt.datetime.fromisoformat(completed) - dt.datetime.fromisoformat(started)
                spans.append(max(0.0, delta.total_seconds()))
        return spans

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

    # -- credit policy ------------------------------------------------------------------------------

    async def guild_policy_row(self, guild_id: int) -> dict[str, Any] | None:
        row = await self._one("SELECT * FROM guild_policy WHERE guild_id = ?", (guild_id,))
        return None if row is None else dict(row)

    async def update_guild_policy(
        self, guild_id: int, fields: dict[str, Any], *, actor_id: int | None
    ) -> None:
        """Set some guild policy columns (None clears one back to its default); creates the row."""
        fields = {**_checked(fields, _GUILD_POLICY_FIELDS), "updated_by": actor_id, "updated_at": self._now()}
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        updates = ", ".join(f"{name} = excluded.{name}" for name in fields)
        async with self._write() as db:
            await db.execute(
                f"INSERT INTO guild_policy (guild_id, {names}) VALUES (?, {marks}) "
                f"ON CONFLICT (guild_id) DO UPDATE SET {updates}",
                (guild_id, *fields.values()),
            )

    async def role_tier_rows(self, guild_id: int) -> list[dict[str, Any]]:
        rows = await self._all("SELECT * FROM role_tiers WHERE guild_id = ? ORDER BY role_id", (guild_id,))
        return [dict(r) for r in rows]

    async def put_role_tier(
        self, guild_id: int, role_id: int, fields: dict[str, Any], *, actor_id: int | None
    ) -> None:
        """Create or replace a role's whole tier (fields not given go back to "inherit")."""
        fields = _checked(fields, _ROLE_TIER_FIELDS)
        values = [fields.get(name) for name in sorted(_ROLE_TIER_FIELDS)]
        columns = ", ".join(sorted(_ROLE_TIER_FIELDS))
        async with self._write() as db:
            await db.execute(
                f"INSERT OR REPLACE INTO role_tiers (guild_id, role_id, {columns}, updated_by, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (guild_id, role_id, *values, actor_id, self._now()),
            )

    async def delete_role_tier(self, guild_id: int, role_id: int) -> bool:
        async with self._write() as db:
            cur = await db.execute(
                "DELETE FROM role_tiers WHERE guild_id = ? AND role_id = ?", (guild_id, role_id)
            )
            return cur.rowcount == 1

    async def user_settings_row(self, user_id: int) -> dict[str, Any] | None:
        row = await self._one("SELECT * FROM user_settings WHERE user_id = ?", (user_id,))
        return None if row is None else dict(row)

    async def update_user_settings(self, user_id: int, fields: dict[str, Any]) -> None:
        """Set some of a user's defaults (None clears one); creates the row."""
        fields = {**_checked(fields, _USER_SETTING_FIELDS), "updated_at": self._now()}
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        updates = ", ".join(f"{name} = excluded.{name}" for name in fields)
        async with self._write() as db:
            await db.execute(
                f"INSERT INTO user_settings (user_id, {names}) VALUES (?, {marks}) "
                f"ON CONFLICT (user_id) DO UPDATE SET {updates}",
                (user_id, *fields.values()),
            )

    async def refill_allowance(
        self,
        guild_id: int,
        user_id: int,
        *,
        amount: int,
        period_of: Callable[[dt.datetime], str | None],
        starting_credits: int,
    ) -> Account:
        """Create the account if new, then top its balance up to `amount` once per allowance period.

        `period_of(now)` names the current period (None: no allowance). It is evaluated inside the
        write transaction, and the refill record's primary key admits one refill per period, so two
        uses racing across a boundary can never both refill.
        """
        async with self._write() as db:
            await self._ensure_account(db, guild_id, user_id, starting_credits)
            period = period_of(self._clock())
            if period is not None and amount > 0:
                cur = await db.execute(
                    "INSERT OR IGNORE INTO allowance_refills (guild_id, user_id, period, added, created_at) "
                    "VALUES (?, ?, ?, 0, ?)",
                    (guild_id, user_id, period, self._now()),
                )
                if cur.rowcount == 1:
                    await self._top_up(db, guild_id, user_id, amount, period)
            return await self._account(db, guild_id, user_id)

    async def _top_up(
        self, db: aiosqlite.Connection, guild_id: int, user_id: int, amount: int, period: str
    ) -> None:
        current = await self._account(db, guild_id, user_id)
        added = max(0, amount - current.balance)
        if added == 0:
            return
        await db.execute(
            "UPDATE accounts SET balance = balance + ?, updated_at = ? WHERE guild_id = ? AND user_id = ?",
            (added, self._now(), guild_id, user_id),
        )
        await self._ledger(
            db, guild_id, user_id, None, "grant", added, added, 0, None, f"{ALLOWANCE_REASON} {period}"
        )
        await db.execute(
            "UPDATE allowance_refills SET added = ? WHERE guild_id = ? AND user_id = ? AND period = ?",
            (added, guild_id, user_id, period),
        )

    async def change_balance(
        self,
        guild_id: int,
        user_id: int,
        *,
        add: int = 0,
        set_to: int | None = None,
        actor_id: int,
        reason: str,
        starting_credits: int,
    ) -> tuple[Account, int]:
        """An admin's grant (`add` > 0), take (`add` < 0, at most the available balance) or set.

        Always writes exactly one ledger row with the actor, even when nothing moves, so every admin
        action is on record. Returns the account and the credits actually moved.
        """
        async with self._write() as db:
            await self._ensure_account(db, guild_id, user_id, starting_credits)
            current = await self._account(db, guild_id, user_id)
            delta = set_to - current.balance if set_to is not None else add
            delta = max(delta, -current.balance)
            await db.execute(
                "UPDATE accounts SET balance = balance + ?, updated_at = ? "
                "WHERE guild_id = ? AND user_id = ?",
                (delta, self._now(), guild_id, user_id),
            )
            kind = "grant" if delta > 0 else "adjust"
            await self._ledger(db, guild_id, user_id, None, kind, delta, delta, 0, actor_id, reason)
            return await self._account(db, guild_id, user_id), delta

    async def account_history(
        self, guild_id: int, user_id: int, *, kinds: tuple[str, ...], offset: int, limit: int
    ) -> tuple[list[LedgerEntry], int]:
        """One page of an account's ledger rows of `kinds`, newest first, and how many there are."""
        marks = ", ".join("?" for _ in kinds)
        where = f"WHERE l.guild_id = ? AND l.user_id = ? AND l.kind IN ({marks}) "
        rows = await self._all(
            _LEDGER_ENTRY_SQL + where + "ORDER BY l.id DESC LIMIT ? OFFSET ?",
            (guild_id, user_id, *kinds, limit, offset),
        )
        total = await self._one("SELECT COUNT(*) FROM ledger l " + where, (guild_id, user_id, *kinds))
        return [LedgerEntry(**dict(r)) for r in rows], int(total[0]) if total else 0

    async def guild_ledger(
        self, guild_id: int, *, since: dt.datetime | None, until: dt.datetime | None
    ) -> list[LedgerEntry]:
        """Every ledger row of a guild in [since, until) (None = open end), oldest first."""
        rows = await self._all(
            _LEDGER_ENTRY_SQL
            + "WHERE l.guild_id = ? AND l.created_at >= ? AND l.created_at < ? ORDER BY l.id",
            # "~" sorts after every digit, so an open end is later than any timestamp.
            (guild_id, _iso(since) if since else "", _iso(until) if until else "~"),
        )
        return [LedgerEntry(**dict(r)) for r in rows]
