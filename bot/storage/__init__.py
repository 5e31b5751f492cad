"""The one module that speaks SQL: accounts, the credit ledger, jobs and guild settings.

SQLite through aiosqlite, WAL, `synchronous=FULL`, and `BEGIN IMMEDIATE` for every write so a
reservation can never race another. One connection is shared by the whole process. Each write
transaction is one plain sqlite3 function run whole on the connection's thread (BEGIN IMMEDIATE, its
statements, COMMIT or ROLLBACK: one hop from the event loop, not one per statement), so no other
statement can ever run inside it; an asyncio lock still admits one transaction at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from bot.jobs.model import JobState

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_PACKAGE = "bot.storage"
TERMINAL_STATES = (JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED)
# Jobs that may still need work: waiting for a reservation, in the queue, at a provider, or holding an
# undelivered result. Every one of them is looked at again when the bot starts.
LIVE_STATES = (
    JobState.QUEUED,
    JobState.RESERVED,
    JobState.SUBMITTING,
    JobState.SUBMITTED,
    JobState.COMPLETED,
)
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
        "provider_model",
        "spec",
    }
)


class LedgerConflict(Exception):
    """A job's credits were already settled the other way (capture after release or the reverse)."""


class NotEnoughCredits(Exception):
    def __init__(self, needed: int, available: int) -> None:
        super().__init__(f"needed {needed}, available {available}")
        self.needed = needed
        self.available = available


class SchemaTooNew(Exception):
    """The database was written by a newer release: this one must not touch it."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"database schema version {found} is newer than this release knows ({known})")
        self.found = found
        self.known = known


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
    provider_model: str | None = None  # the route's model id at `provider` (a provider may sell several)

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
    # The operator's limits, counted like `guild_cap`: this server's monthly allotment, and every
    # server's captures and holds together against the bot-wide budget.
    allotment: int | None = None
    bot_cap: int | None = None


class ReserveRefused(Exception):
    """A ReserveGuard limit refused the job; nothing was held.

    `reason` is "cooldown", "concurrency", "guild_cap", "allotment" or "bot_budget". `retry_at` is
    when a cooldown ends; `used` and `limit` are running jobs or credits, as the reason reads.
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
_ROUTE_STATUS_FIELDS = frozenset({"shutdown", "listed", "gone_at", "gone_reason"})


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


# -- on the database thread ---------------------------------------------------------------------------
# Plain sqlite3 functions. `Storage._run` calls them on aiosqlite's connection thread, so a whole
# transaction costs one hop between the event loop and that thread instead of one per statement. They
# must never touch the event loop. `now` is the storage clock's timestamp, read once per transaction.

# The ledger's unique index on (job_id, kind) is partial, for exactly these kinds. SQLite only uses a
# partial index when the query repeats the index's own `IN` term, so every lookup of a job's ledger
# rows carries it (without it, each one scans the whole append-only ledger).
_JOB_KINDS = "kind IN ('reserve', 'capture', 'release')"


def _stamp(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _in_transaction(db: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
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


def _fetch_one(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
    cur = db.execute(sql, params)
    try:
        return cur.fetchone()
    finally:
        cur.close()


def _fetch_all(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
    cur = db.execute(sql, params)
    try:
        return cur.fetchall()
    finally:
        cur.close()


def _ledger(
    db: sqlite3.Connection,
    now: str,
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
    db.execute(
        "INSERT INTO ledger (guild_id, user_id, job_id, kind, amount, delta_balance, delta_held, "
        "actor_id, reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (guild_id, user_id, job_id, kind, amount, delta_balance, delta_held, actor_id, reason, now),
    )


def _ensure_account(db: sqlite3.Connection, now: str, guild_id: int, user_id: int, starting: int) -> None:
    cur = db.execute(
        "INSERT OR IGNORE INTO accounts (guild_id, user_id, balance, held, created_at, updated_at) "
        "VALUES (?, ?, ?, 0, ?, ?)",
        (guild_id, user_id, starting, now, now),
    )
    if cur.rowcount == 1 and starting > 0:
        _ledger(db, now, guild_id, user_id, None, "grant", starting, starting, 0, None, "starting credits")


def _account(db: sqlite3.Connection, guild_id: int, user_id: int) -> Account:
    row = _fetch_one(
        db, "SELECT balance, held FROM accounts WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
    )
    if row is None:
        return Account(guild_id, user_id, 0, 0)
    return Account(guild_id, user_id, row["balance"], row["held"])


def _guard_refusal(
    db: sqlite3.Connection, moment: dt.datetime, guild_id: int, user_id: int, amount: int, guard: ReserveGuard
) -> ReserveRefused | None:
    """The first guard limit this reservation would break, read inside its transaction."""
    if guard.cooldown_seconds > 0:
        # Refunded jobs do not count: a provider failure should not make the user wait.
        row = _fetch_one(
            db,
            "SELECT MAX(r.created_at) FROM ledger r WHERE r.guild_id = ? AND r.user_id = ? "
            "AND r.kind = 'reserve' AND NOT EXISTS (SELECT 1 FROM ledger x "
            f"WHERE x.job_id = r.job_id AND x.{_JOB_KINDS} AND x.kind = 'release')",
            (guild_id, user_id),
        )
        if row is not None and row[0] is not None:
            ready = dt.datetime.fromisoformat(row[0]) + dt.timedelta(seconds=guard.cooldown_seconds)
            if moment < ready:
                return ReserveRefused("cooldown", retry_at=ready)
    if guard.max_concurrent > 0:
        row = _fetch_one(
            db,
            "SELECT COUNT(*) FROM ledger r WHERE r.guild_id = ? AND r.user_id = ? "
            "AND r.kind = 'reserve' AND NOT EXISTS (SELECT 1 FROM ledger x "
            f"WHERE x.job_id = r.job_id AND x.{_JOB_KINDS} AND x.kind IN ('capture', 'release'))",
            (guild_id, user_id),
        )
        running = int(row[0]) if row else 0
        if running >= guard.max_concurrent:
            return ReserveRefused("concurrency", used=running, limit=guard.max_concurrent)
    since = _iso(guard.cap_since) if guard.cap_since else ""
    if guard.guild_cap is not None or guard.allotment is not None:
        used = _spent(db, since, guild_id)
        for reason, limit in (("allotment", guard.allotment), ("guild_cap", guard.guild_cap)):
            if limit is not None and used + amount > limit:
                return ReserveRefused(reason, used=used, limit=limit)
    if guard.bot_cap is not None:
        used = _spent(db, since, None)
        if used + amount > guard.bot_cap:
            return ReserveRefused("bot_budget", used=used, limit=guard.bot_cap)
    return None


def _spent(db: sqlite3.Connection, since: str, guild_id: int | None) -> int:
    """Credits captured since `since`, provider spend nobody was charged for since then, and every
    open hold, for one guild (None: all of them)."""
    where = "" if guild_id is None else "AND guild_id = ?"
    held_where = "" if guild_id is None else "WHERE guild_id = ?"
    params = (since, since) if guild_id is None else (since, guild_id, since, guild_id, guild_id)
    row = _fetch_one(
        db,
        "SELECT (SELECT COALESCE(SUM(amount), 0) FROM ledger "
        f"        WHERE kind = 'capture' AND created_at >= ? {where}), "
        f"       (SELECT COALESCE(SUM(credits), 0) FROM absorbed_spend WHERE created_at >= ? {where}), "
        f"       (SELECT COALESCE(SUM(held), 0) FROM accounts {held_where})",
        params,
    )
    return int(row[0]) + int(row[1]) + int(row[2]) if row else 0


def _settlement(db: sqlite3.Connection, job_id: str) -> tuple[sqlite3.Row | None, dict[str, int]]:
    """A job's reserve row and the amount of its capture and release rows by kind (one statement)."""
    reserve = None
    settled: dict[str, int] = {}
    for row in _fetch_all(
        db, f"SELECT kind, guild_id, user_id, amount FROM ledger WHERE job_id = ? AND {_JOB_KINDS}", (job_id,)
    ):
        if row["kind"] == "reserve":
            reserve = row
        else:
            settled[row["kind"]] = row["amount"]
    return reserve, settled


def _capture(db: sqlite3.Connection, now: str, job_id: str, charged: int) -> tuple[Account, int] | None:
    reserve, settled = _settlement(db, job_id)
    if reserve is None:
        return None
    guild_id, user_id, held = reserve["guild_id"], reserve["user_id"], reserve["amount"]
    if "release" in settled:
        raise LedgerConflict(f"job {job_id} was already released")
    if "capture" in settled:
        return _account(db, guild_id, user_id), int(settled["capture"])
    charged = max(0, min(charged, held))
    db.execute(
        "UPDATE accounts SET balance = balance + ?, held = held - ?, updated_at = ? "
        "WHERE guild_id = ? AND user_id = ?",
        (held - charged, held, now, guild_id, user_id),
    )
    _ledger(db, now, guild_id, user_id, job_id, "capture", charged, held - charged, -held, None, None)
    db.execute("UPDATE jobs SET captured = ?, updated_at = ? WHERE id = ?", (charged, now, job_id))
    return _account(db, guild_id, user_id), charged


def _release(db: sqlite3.Connection, now: str, job_id: str, reason: str | None) -> Account | None:
    reserve, settled = _settlement(db, job_id)
    if reserve is None:
        return None
    guild_id, user_id, held = reserve["guild_id"], reserve["user_id"], reserve["amount"]
    if "capture" in settled:
        raise LedgerConflict(f"job {job_id} was already captured")
    if "release" not in settled:
        db.execute(
            "UPDATE accounts SET balance = balance + ?, held = held - ?, updated_at = ? "
            "WHERE guild_id = ? AND user_id = ?",
            (held, held, now, guild_id, user_id),
        )
        _ledger(db, now, guild_id, user_id, job_id, "release", held, held, -held, None, reason)
    return _account(db, guild_id, user_id)


def _top_up(db: sqlite3.Connection, now: str, guild_id: int, user_id: int, amount: int, period: str) -> None:
    current = _account(db, guild_id, user_id)
    # Held credits count as the member's: a hold from the last period that is released after the
    # boundary must not leave them with the allowance on top of it.
    added = max(0, amount - current.balance - current.held)
    if added == 0:
        return
    db.execute(
        "UPDATE accounts SET balance = balance + ?, updated_at = ? WHERE guild_id = ? AND user_id = ?",
        (added, now, guild_id, user_id),
    )
    _ledger(db, now, guild_id, user_id, None, "grant", added, added, 0, None, f"{ALLOWANCE_REASON} {period}")
    db.execute(
        "UPDATE allowance_refills SET added = ? WHERE guild_id = ? AND user_id = ? AND period = ?",
        (added, guild_id, user_id, period),
    )


def _rowcount(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    """One statement; its row count."""
    return db.execute(sql, params).rowcount


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
        try:
            await storage.migrate()
        except BaseException:
            await conn.close()
            raise
        return storage

    async def close(self) -> None:
        await self._conn.close()

    def _now(self) -> str:
        return _stamp(self._clock())

    def now(self) -> dt.datetime:
        """The storage clock (injectable in tests): every policy date is read from it."""
        return self._clock()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(sqlite3_connection, *args)` on the connection's thread: one round trip, however many
        statements `fn` runs.

        aiosqlite has no public API for this. `Connection._execute` queues a callable on the connection's
        own thread (aiosqlite's `iterdump` uses it the same way) and `Connection._conn` is the sqlite3
        connection; both are private, so pyproject pins aiosqlite to the versions that have them.
        """
        return await self._conn._execute(fn, self._conn._conn, *args)

    async def _transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run `body(connection)` on the database thread as one write transaction, in one round trip.

        The lock keeps one transaction at a time in flight. A caller cancelled while it waits does not
        stop `body`: the thread runs it to COMMIT or ROLLBACK, so no transaction is ever left open, and
        the thread runs calls in order, so nothing else can run between its statements.
        """
        async with self._lock:
            return await self._run(_in_transaction, body)

    async def _one(self, sql: str, params: tuple[Any, ...] = ()) -> aiosqlite.Row | None:
        return await self._run(_fetch_one, sql, params)

    async def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[aiosqlite.Row]:
        return await self._run(_fetch_all, sql, params)

    async def _write_one(self, sql: str, params: Sequence[Any]) -> int:
        """One statement in its own write transaction; its row count."""
        return await self._transaction(lambda db: _rowcount(db, sql, params))

    # -- schema -------------------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply numbered migrations newer than `PRAGMA user_version`. Returns the new version.

        Raises `SchemaTooNew` (touching nothing) for a database a newer release has migrated: an older
        release cannot know what its columns and rules mean, and would write rows it cannot keep.
        """
        row = await self._one("PRAGMA user_version")
        version = int(row[0]) if row else 0
        known = latest_schema_version()
        if version > known:
            raise SchemaTooNew(version, known)
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
        await self._transaction(lambda db: _fetch_one(db, "SELECT 1"))

    # -- accounts and credits -----------------------------------------------------------------------

    async def ensure_account(self, guild_id: int, user_id: int, starting_credits: int) -> Account:
        """Create the account with its one-time starting grant if it does not exist yet."""

        def body(db: sqlite3.Connection) -> Account:
            _ensure_account(db, self._now(), guild_id, user_id, starting_credits)
            return _account(db, guild_id, user_id)

        return await self._transaction(body)

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

        def body(db: sqlite3.Connection) -> Account:
            now = self._now()
            _ensure_account(db, now, guild_id, user_id, starting_credits)
            current = _account(db, guild_id, user_id)
            delta = max(amount, -current.balance)
            db.execute(
                "UPDATE accounts SET balance = balance + ?, updated_at = ? "
                "WHERE guild_id = ? AND user_id = ?",
                (delta, now, guild_id, user_id),
            )
            kind = "grant" if amount >= 0 else "adjust"
            _ledger(db, now, guild_id, user_id, None, kind, delta, delta, 0, actor_id, reason)
            return _account(db, guild_id, user_id)

        return await self._transaction(body)

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

        def body(db: sqlite3.Connection) -> tuple[Account, bool, ReserveRefused | None]:
            moment = self._clock()
            now = _stamp(moment)
            _ensure_account(db, now, guild_id, user_id, starting_credits)
            already = _fetch_one(
                db,
                f"SELECT 1 FROM ledger WHERE job_id = ? AND {_JOB_KINDS} AND kind = 'reserve'",
                (job_id,),
            )
            reserved = already is not None
            refused = None
            if not reserved and guard is not None:
                refused = _guard_refusal(db, moment, guild_id, user_id, amount, guard)
            if not reserved and refused is None:
                # The conditional UPDATE is the whole race guard: it succeeds for exactly as many
                # concurrent jobs as the balance covers.
                cur = db.execute(
                    "UPDATE accounts SET balance = balance - ?, held = held + ?, updated_at = ? "
                    "WHERE guild_id = ? AND user_id = ? AND balance >= ?",
                    (amount, amount, now, guild_id, user_id, amount),
                )
                reserved = cur.rowcount == 1
                if reserved:
                    _ledger(
                        db, now, guild_id, user_id, job_id, "reserve", amount, -amount, amount, None, None
                    )
                    db.execute(
                        "UPDATE jobs SET reserved = ?, state = 'reserved', updated_at = ? WHERE id = ?",
                        (amount, now, job_id),
                    )
            return _account(db, guild_id, user_id), reserved, refused

        account, reserved, refused = await self._transaction(body)
        # Refused after the commit, so a just-created account keeps its starting grant.
        if refused is not None:
            raise refused
        if not reserved:
            raise NotEnoughCredits(amount, account.balance)
        return account

    async def capture(self, job_id: str, charged: int) -> tuple[Account, int] | None:
        """Charge a job (at most what it reserved) and return the rest. Idempotent.

        Returns (account, credits charged), or None when the job never reserved anything.
        Raises LedgerConflict if the job was already released.
        """
        return await self._transaction(lambda db: _capture(db, self._now(), job_id, charged))

    async def release(self, job_id: str, reason: str | None = None) -> Account | None:
        """Return a job's whole hold. Idempotent; None if nothing was reserved.

        Raises LedgerConflict if the job was already captured.
        """
        return await self._transaction(lambda db: _release(db, self._now(), job_id, reason))

    async def settle_delivered(
        self, job_id: str, charged: int, *, via: str, channel_id: int | None, message_id: int | None
    ) -> tuple[Account, int] | None:
        """Capture a delivered job's charge and mark it delivered, in one transaction. Idempotent.

        One transaction, so a crash can never leave a charged job that looks undelivered (and is
        delivered again) or a delivered job whose hold is never settled.
        """

        def body(db: sqlite3.Connection) -> tuple[Account, int] | None:
            now = self._now()
            settled = _capture(db, now, job_id, charged)
            db.execute(
                "UPDATE jobs SET state = 'delivered', delivered_via = ?, result_channel_id = ?, "
                "result_message_id = ?, updated_at = ?, finished_at = COALESCE(finished_at, ?) WHERE id = ?",
                (via, channel_id, message_id, now, now, job_id),
            )
            return settled

        return await self._transaction(body)

    async def settle_released(
        self,
        job_id: str,
        state: str,
        *,
        error_code: str,
        error_ref: str | None = None,
        absorbed: int = 0,
    ) -> Account | None:
        """Release a job's hold and move it to `state` (failed or cancelled), in one transaction.

        `absorbed`: credits the provider may have charged for it although the member pays nothing (a
        result that could not be delivered, a call cut off after it was sent); they still count
        against the server's and the bot's budgets. Idempotent. Raises LedgerConflict (and changes
        nothing) if the job was already captured.
        """

        def body(db: sqlite3.Connection) -> Account | None:
            now = self._now()
            account = _release(db, now, job_id, error_code[:64])
            if absorbed > 0:
                db.execute(
                    "INSERT OR IGNORE INTO absorbed_spend "
                    "(job_id, guild_id, user_id, credits, reason, created_at) "
                    "SELECT id, guild_id, user_id, ?, ?, ? FROM jobs WHERE id = ?",
                    (absorbed, error_code[:64], now, job_id),
                )
            db.execute(
                "UPDATE jobs SET state = ?, error_code = ?, error_ref = COALESCE(?, error_ref), "
                "updated_at = ?, finished_at = COALESCE(finished_at, ?) WHERE id = ?",
                (state, error_code[:64], error_ref, now, now, job_id),
            )
            return account

        return await self._transaction(body)

    async def settle_cancelled_at_provider(
        self, job_id: str, charged: int, *, error_code: str, error_ref: str | None = None
    ) -> tuple[Account, int] | None:
        """Charge a job cancelled after a provider accepted it and move it to `cancelled`, in one
        transaction. The provider bills for it, so it is captured (and counts toward cooldowns and
        budgets) like a delivered job. Idempotent; raises LedgerConflict if it was already released."""

        def body(db: sqlite3.Connection) -> tuple[Account, int] | None:
            now = self._now()
            settled = _capture(db, now, job_id, charged)
            db.execute(
                "UPDATE jobs SET state = 'cancelled', error_code = ?, error_ref = COALESCE(?, error_ref), "
                "updated_at = ?, finished_at = COALESCE(finished_at, ?) WHERE id = ?",
                (error_code[:64], error_ref, now, now, job_id),
            )
            return settled

        return await self._transaction(body)

    async def held_mismatches(self) -> list[tuple[int, int, int, int]]:
        """Accounts whose `held` differs from the sum of their open reservations:
        (guild_id, user_id, held, open). Empty unless the database was changed behind the bot's back."""
        rows = await self._all(
            "SELECT a.guild_id, a.user_id, a.held, COALESCE(SUM(r.amount), 0) AS open FROM accounts a "
            "LEFT JOIN ledger r ON r.guild_id = a.guild_id AND r.user_id = a.user_id "
            "AND r.kind = 'reserve' AND NOT EXISTS (SELECT 1 FROM ledger x "
            f"WHERE x.job_id = r.job_id AND x.{_JOB_KINDS} AND x.kind IN ('capture', 'release')) "
            "GROUP BY a.guild_id, a.user_id HAVING a.held != open"
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def forget_job_details(self, job_id: str) -> None:
        """Drop what an ended job no longer needs once its files expired (its prompt and options)."""
        await self._write_one(
            "UPDATE jobs SET spec = NULL, result = NULL "
            "WHERE id = ? AND state IN ('delivered', 'failed', 'cancelled')",
            (job_id,),
        )

    async def forget_expired_details(self) -> int:
        """Drop the prompt and options of every ended job whose files expired (also failed, cancelled and
        refused jobs, whose files went at once). Returns how many rows were cleared."""
        return await self._write_one(
            "UPDATE jobs SET spec = NULL, result = NULL "
            "WHERE state IN ('delivered', 'failed', 'cancelled') "
            "AND (spec IS NOT NULL OR result IS NOT NULL) "
            "AND files_expire_at IS NOT NULL AND files_expire_at < ?",
            (self._now(),),
        )

    async def prune_history(self, before: dt.datetime) -> tuple[int, int]:
        """Delete ended jobs that finished before `before`, and erase the reason and acting admin of
        ledger rows written before it (their amounts stay, so the books still add up).

        Returns (job rows deleted, ledger rows cleared). Live jobs and their holds are never touched.
        """
        cutoff = _stamp(before)

        def body(db: sqlite3.Connection) -> tuple[int, int]:
            jobs = _rowcount(
                db,
                "DELETE FROM jobs WHERE state IN ('delivered', 'failed', 'cancelled') AND finished_at < ?",
                (cutoff,),
            )
            ledger = _rowcount(
                db,
                "UPDATE ledger SET reason = NULL, actor_id = NULL "
                "WHERE created_at < ? AND actor_id IS NOT NULL",
                (cutoff,),
            )
            return jobs, ledger

        return await self._transaction(body)

    async def open_holds(self) -> list[OpenHold]:
        """Reservations never captured or released, with their job's state (for start-up reconciling)."""
        rows = await self._all(
            "SELECT r.job_id, r.guild_id, r.user_id, r.amount, j.state FROM ledger r "
            "LEFT JOIN jobs j ON j.id = r.job_id WHERE r.kind = 'reserve' AND NOT EXISTS "
            f"(SELECT 1 FROM ledger x WHERE x.job_id = r.job_id AND x.{_JOB_KINDS} "
            "AND x.kind IN ('capture', 'release')) ORDER BY r.id"
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

        def body(db: sqlite3.Connection) -> None:
            now = self._now()
            db.execute(
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

        await self._transaction(body)

    async def set_job_state(self, job_id: str, state: str, **fields: Any) -> None:
        """Move a job to `state`, optionally setting other job columns (see `_JOB_FIELDS`)."""
        unknown = set(fields) - _JOB_FIELDS
        if unknown:
            raise ValueError(f"unknown job fields: {sorted(unknown)}")
        assignments = ["state = ?", "updated_at = ?", *(f"{name} = ?" for name in fields)]
        terminal = state in TERMINAL_STATES
        if terminal:
            assignments.append("finished_at = ?")
        sql = f"UPDATE jobs SET {', '.join(assignments)} WHERE id = ?"

        def body(db: sqlite3.Connection) -> None:
            now = self._now()
            ended = (now,) if terminal else ()
            db.execute(sql, (state, now, *fields.values(), *ended, job_id))

        await self._transaction(body)

    async def update_job(self, job_id: str, **fields: Any) -> None:
        """Set job columns (see `_JOB_FIELDS`) without changing the state."""
        unknown = set(fields) - _JOB_FIELDS
        if unknown or not fields:
            raise ValueError(f"unknown or no job fields: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE jobs SET {assignments}, updated_at = ? WHERE id = ?"
        await self._transaction(lambda db: _rowcount(db, sql, (*fields.values(), self._now(), job_id)))

    async def mark_submitted(self, job_id: str, provider: str, provider_job_id: str) -> None:
        """Record that `provider` accepted one call of the job (ids are appended: an emulated `count`
        makes one call per image) and move it to `submitted`."""
        sql = (
            "UPDATE jobs SET state = 'submitted', provider = ?, provider_request_id = "
            "CASE WHEN provider_request_id IS NULL OR provider_request_id = '' THEN ? "
            "ELSE provider_request_id || ',' || ? END, updated_at = ? WHERE id = ?"
        )
        await self._transaction(
            lambda db: _rowcount(db, sql, (provider, provider_job_id, provider_job_id, self._now(), job_id))
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
        await self._write_one(
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
        await self._write_one(
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
        await self._write_one(
            f"INSERT OR REPLACE INTO role_tiers (guild_id, role_id, {columns}, updated_by, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (guild_id, role_id, *values, actor_id, self._now()),
        )

    async def delete_role_tier(self, guild_id: int, role_id: int) -> bool:
        deleted = await self._write_one(
            "DELETE FROM role_tiers WHERE guild_id = ? AND role_id = ?", (guild_id, role_id)
        )
        return deleted == 1

    # -- model routes (bot.lifecycle) ---------------------------------------------------------------

    async def route_status_rows(self) -> list[dict[str, Any]]:
        """Everything run time learned about model routes (see migration 0004)."""
        rows = await self._all(
            "SELECT provider, model, shutdown, listed, gone_at, gone_reason FROM route_status"
        )
        return [dict(r) for r in rows]

    async def put_route_status(self, provider: str, model: str, fields: dict[str, Any]) -> None:
        """Record some of a route's facts (shutdown, listed, gone_at, gone_reason); creates the row."""
        fields = {**_checked(fields, _ROUTE_STATUS_FIELDS), "updated_at": self._now()}
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        updates = ", ".join(f"{name} = excluded.{name}" for name in fields)
        await self._write_one(
            f"INSERT INTO route_status (provider, model, {names}) VALUES (?, ?, {marks}) "
            f"ON CONFLICT (provider, model) DO UPDATE SET {updates}",
            (provider, model, *fields.values()),
        )

    async def stored_models(self) -> set[str]:
        """Every model id a member's or a server's stored default points at."""
        rows = await self._all(
            "SELECT model FROM user_settings WHERE model IS NOT NULL "
            "UNION SELECT default_model FROM guild_policy WHERE default_model IS NOT NULL"
        )
        return {str(r[0]) for r in rows}

    async def move_stored_model(
        self, dead: str, replacement: str | None, notice: str
    ) -> tuple[list[int], list[int]]:
        """Point every stored default at `dead` to `replacement` (None: back to the default) and queue
        `notice` for each member moved, in one transaction. Returns (user ids, guild ids) moved."""
        now = self._now()

        def body(db: sqlite3.Connection) -> tuple[list[int], list[int]]:
            users = [
                r[0] for r in _fetch_all(db, "SELECT user_id FROM user_settings WHERE model = ?", (dead,))
            ]
            guilds = [
                r[0]
                for r in _fetch_all(db, "SELECT guild_id FROM guild_policy WHERE default_model = ?", (dead,))
            ]
            db.execute(
                "UPDATE user_settings SET model = ?, updated_at = ? WHERE model = ?", (replacement, now, dead)
            )
            db.execute(
                "UPDATE guild_policy SET default_model = ?, updated_at = ? WHERE default_model = ?",
                (replacement, now, dead),
            )
            db.executemany(
                "INSERT INTO model_notices (user_id, notice, created_at) VALUES (?, ?, ?)",
                [(user_id, notice, now) for user_id in users],
            )
            return users, guilds

        return await self._transaction(body)

    async def take_model_notices(self, user_id: int) -> list[str]:
        """The member's pending model notices, oldest first; each is returned once."""
        if await self._one("SELECT 1 FROM model_notices WHERE user_id = ? LIMIT 1", (user_id,)) is None:
            return []  # the common case reads only, without taking the write lock

        def body(db: sqlite3.Connection) -> list[str]:
            rows = _fetch_all(
                db, "SELECT notice FROM model_notices WHERE user_id = ? ORDER BY rowid", (user_id,)
            )
            if rows:
                db.execute("DELETE FROM model_notices WHERE user_id = ?", (user_id,))
            return [str(r[0]) for r in rows]

        return await self._transaction(body)

    async def user_settings_row(self, user_id: int) -> dict[str, Any] | None:
        row = await self._one("SELECT * FROM user_settings WHERE user_id = ?", (user_id,))
        return None if row is None else dict(row)

    async def update_user_settings(self, user_id: int, fields: dict[str, Any]) -> None:
        """Set some of a user's defaults (None clears one); creates the row."""
        fields = {**_checked(fields, _USER_SETTING_FIELDS), "updated_at": self._now()}
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        updates = ", ".join(f"{name} = excluded.{name}" for name in fields)
        await self._write_one(
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

        def body(db: sqlite3.Connection) -> Account:
            moment = self._clock()
            now = _stamp(moment)
            _ensure_account(db, now, guild_id, user_id, starting_credits)
            period = period_of(moment)
            if period is not None and amount > 0:
                cur = db.execute(
                    "INSERT OR IGNORE INTO allowance_refills (guild_id, user_id, period, added, created_at) "
                    "VALUES (?, ?, ?, 0, ?)",
                    (guild_id, user_id, period, now),
                )
                if cur.rowcount == 1:
                    _top_up(db, now, guild_id, user_id, amount, period)
            return _account(db, guild_id, user_id)

        return await self._transaction(body)

    async def refilled(self, guild_id: int, user_id: int, period: str) -> bool:
        """Whether the account's allowance was already refilled for `period`."""
        row = await self._one(
            "SELECT 1 FROM allowance_refills WHERE guild_id = ? AND user_id = ? AND period = ?",
            (guild_id, user_id, period),
        )
        return row is not None

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

        def body(db: sqlite3.Connection) -> tuple[Account, int]:
            now = self._now()
            _ensure_account(db, now, guild_id, user_id, starting_credits)
            current = _account(db, guild_id, user_id)
            delta = set_to - current.balance if set_to is not None else add
            delta = max(delta, -current.balance)
            db.execute(
                "UPDATE accounts SET balance = balance + ?, updated_at = ? "
                "WHERE guild_id = ? AND user_id = ?",
                (delta, now, guild_id, user_id),
            )
            kind = "grant" if delta > 0 else "adjust"
            _ledger(db, now, guild_id, user_id, None, kind, delta, delta, 0, actor_id, reason)
            return _account(db, guild_id, user_id), delta

        return await self._transaction(body)

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

    # -- the operator's servers ---------------------------------------------------------------------

    async def operator_guild(self, guild_id: int) -> tuple[bool, str | None]:
        """(approved by the operator's command, monthly allotment in USD as text or None)."""
        row = await self._one(
            "SELECT approved, allotment_usd FROM operator_guilds WHERE guild_id = ?", (guild_id,)
        )
        return (False, None) if row is None else (bool(row[0]), row[1])

    async def operator_guilds(self) -> dict[int, tuple[bool, str | None]]:
        rows = await self._all("SELECT guild_id, approved, allotment_usd FROM operator_guilds")
        return {r[0]: (bool(r[1]), r[2]) for r in rows}

    async def set_guild_approved(self, guild_id: int, approved: bool, *, actor_id: int) -> None:
        await self._write_one(
            "INSERT INTO operator_guilds (guild_id, approved, updated_by, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (guild_id) DO UPDATE SET approved = excluded.approved, "
            "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
            (guild_id, int(approved), actor_id, self._now()),
        )

    async def set_guild_allotment(self, guild_id: int, usd: str | None, *, actor_id: int) -> None:
        await self._write_one(
            "INSERT INTO operator_guilds (guild_id, allotment_usd, updated_by, updated_at) "
            "VALUES (?, ?, ?, ?) "
            "ON CONFLICT (guild_id) DO UPDATE SET allotment_usd = excluded.allotment_usd, "
            "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
            (guild_id, usd, actor_id, self._now()),
        )

    async def spend_by_guild(self, since: dt.datetime) -> dict[int, tuple[int, int]]:
        """{guild_id: (credits spent since `since`, credits held now)} for every guild with either.

        Spent = captured from members plus provider spend nobody was charged for (`absorbed_spend`)."""
        rows = await self._all(
            "SELECT guild_id, SUM(captured), SUM(held) FROM ("
            "  SELECT guild_id, amount AS captured, 0 AS held FROM ledger "
            "  WHERE kind = 'capture' AND created_at >= ? "
            "  UNION ALL SELECT guild_id, credits, 0 FROM absorbed_spend WHERE created_at >= ? "
            "  UNION ALL SELECT guild_id, 0, held FROM accounts WHERE held > 0"
            ") GROUP BY guild_id",
            (_iso(since), _iso(since)),
        )
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}
