"""The credit ledger: accounts, holds, capture/release/settle, grants and allowances.

Every movement is one write transaction (see `connection.Database.transaction`) that changes
`accounts` and appends to the append-only `ledger`, keyed by job: a job's credits are reserved, then
captured or released exactly once. Read-only reports over the same tables are in `reports.py`, the
admission limits a reservation checks in `limits.py`. (A little over 400 lines: each movement's
on-thread steps stay next to the method that runs them, so the money rules read in one file.)
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from bot.storage.connection import Database, fetch_all, fetch_one, stamp
from bot.storage.limits import JOB_KINDS, ReserveGuard, ReserveRefused, guard_refusal

# Ledger `reason` prefix of allowance top-ups (kind 'grant', no actor), so reports can tell them apart.
ALLOWANCE_REASON = "allowance"


class LedgerConflict(Exception):
    """A job's credits were already settled the other way (capture after release or the reverse)."""


class NotEnoughCredits(Exception):
    """A hold larger than the available balance was refused (nothing changed)."""

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(f"needed {needed}, available {available}")
        self.needed = needed
        self.available = available


@dataclass(frozen=True)
class Account:
    """A member's credits in one server: available balance and what running jobs hold."""

    guild_id: int
    user_id: int
    balance: int
    held: int


# -- on the database thread ---------------------------------------------------------------------------
# Plain sqlite3 functions, run inside `Database.transaction` on the database thread, so a whole
# movement costs one hop from the event loop. `now` is the storage clock's timestamp, read once per
# transaction.


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
    row = fetch_one(
        db, "SELECT balance, held FROM accounts WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
    )
    if row is None:
        return Account(guild_id, user_id, 0, 0)
    return Account(guild_id, user_id, row["balance"], row["held"])


def _settlement(db: sqlite3.Connection, job_id: str) -> tuple[sqlite3.Row | None, dict[str, int]]:
    """A job's reserve row and the amount of its capture and release rows by kind (one statement)."""
    reserve = None
    settled: dict[str, int] = {}
    for row in fetch_all(
        db, f"SELECT kind, guild_id, user_id, amount FROM ledger WHERE job_id = ? AND {JOB_KINDS}", (job_id,)
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


class Ledger:
    """Money movements on members' accounts. Every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def ensure_account(self, guild_id: int, user_id: int, starting_credits: int) -> Account:
        """Create the account with its one-time starting grant if it does not exist yet."""

        def body(db: sqlite3.Connection) -> Account:
            _ensure_account(db, self._db.timestamp(), guild_id, user_id, starting_credits)
            return _account(db, guild_id, user_id)

        return await self._db.transaction(body)

    async def get_account(self, guild_id: int, user_id: int) -> Account | None:
        row = await self._db.one(
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
            now = self._db.timestamp()
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

        return await self._db.transaction(body)

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
            moment = self._db.now()
            now = stamp(moment)
            _ensure_account(db, now, guild_id, user_id, starting_credits)
            already = fetch_one(
                db,
                f"SELECT 1 FROM ledger WHERE job_id = ? AND {JOB_KINDS} AND kind = 'reserve'",
                (job_id,),
            )
            reserved = already is not None
            refused = None
            if not reserved and guard is not None:
                refused = guard_refusal(db, moment, guild_id, user_id, amount, guard)
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

        account, reserved, refused = await self._db.transaction(body)
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
        return await self._db.transaction(lambda db: _capture(db, self._db.timestamp(), job_id, charged))

    async def release(self, job_id: str, reason: str | None = None) -> Account | None:
        """Return a job's whole hold. Idempotent; None if nothing was reserved.

        Raises LedgerConflict if the job was already captured.
        """
        return await self._db.transaction(lambda db: _release(db, self._db.timestamp(), job_id, reason))

    async def settle_delivered(
        self, job_id: str, charged: int, *, via: str, channel_id: int | None, message_id: int | None
    ) -> tuple[Account, int] | None:
        """Capture a delivered job's charge and mark it delivered, in one transaction. Idempotent.

        One transaction, so a crash can never leave a charged job that looks undelivered (and is
        delivered again) or a delivered job whose hold is never settled.
        """

        def body(db: sqlite3.Connection) -> tuple[Account, int] | None:
            now = self._db.timestamp()
            settled = _capture(db, now, job_id, charged)
            db.execute(
                "UPDATE jobs SET state = 'delivered', delivered_via = ?, result_channel_id = ?, "
                "result_message_id = ?, updated_at = ?, finished_at = COALESCE(finished_at, ?) WHERE id = ?",
                (via, channel_id, message_id, now, now, job_id),
            )
            return settled

        return await self._db.transaction(body)

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
            now = self._db.timestamp()
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

        return await self._db.transaction(body)

    async def settle_cancelled_at_provider(
        self, job_id: str, charged: int, *, error_code: str, error_ref: str | None = None
    ) -> tuple[Account, int] | None:
        """Charge a job cancelled after a provider accepted it and move it to `cancelled`, in one
        transaction. The provider bills for it, so it is captured (and counts toward cooldowns and
        budgets) like a delivered job. Idempotent; raises LedgerConflict if it was already released."""

        def body(db: sqlite3.Connection) -> tuple[Account, int] | None:
            now = self._db.timestamp()
            settled = _capture(db, now, job_id, charged)
            db.execute(
                "UPDATE jobs SET state = 'cancelled', error_code = ?, error_ref = COALESCE(?, error_ref), "
                "updated_at = ?, finished_at = COALESCE(finished_at, ?) WHERE id = ?",
                (error_code[:64], error_ref, now, now, job_id),
            )
            return settled

        return await self._db.transaction(body)

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
            moment = self._db.now()
            now = stamp(moment)
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

        return await self._db.transaction(body)

    async def refilled(self, guild_id: int, user_id: int, period: str) -> bool:
        """Whether the account's allowance was already refilled for `period`."""
        row = await self._db.one(
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
            now = self._db.timestamp()
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

        return await self._db.transaction(body)
