"""The credit ledger: accounts, holds, capture/release/settle, grants and allowances.

Every movement is one write transaction (see `connection.Database.transaction`) that changes
`accounts` and appends to the append-only `ledger`, keyed by job: a job's credits are reserved, then
captured or released exactly once. The bodies are written once for every backend. Read-only reports
over the same tables are in `reports.py`, the admission limits a reservation checks in `limits.py`.
(About 600 lines: each movement's steps stay next to the method that runs them, so the money
rules read in one file.)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from bot.storage.connection import (
    Body,
    Database,
    Row,
    Statement,
    execute,
    fetch_all,
    fetch_one,
    lock,
    stamp,
)
from bot.storage.jobs import held_by
from bot.storage.limits import JOB_KINDS, ReserveGuard, ReserveRefused, guard_refusal
from bot.storage.spend import MARK_RETENTION, prune_marks

# Ledger `reason` prefix of allowance top-ups (kind 'grant', no actor), so reports can tell them apart.
ALLOWANCE_REASON = "allowance"


class LedgerConflict(Exception):
    """A job's credits were already settled the other way (capture after release or the reverse)."""


class JobNotQueued(Exception):
    """The job left `queued` before its credits were held (another process took it over and ended it):
    nothing was held, nothing changed."""

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"job {job_id} is {state}, no longer queued")
        self.job_id = job_id
        self.state = state


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


# -- transaction bodies -------------------------------------------------------------------------------
# Generators of statements (see `connection.py`), run whole inside `Database.transaction`, so a movement
# costs one hop from the event loop on SQLite. `now` is the storage clock's timestamp, read once per
# transaction.


def _ledger(
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
) -> Statement:
    return execute(
        "INSERT INTO ledger (guild_id, user_id, job_id, kind, amount, delta_balance, delta_held, "
        "actor_id, reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (guild_id, user_id, job_id, kind, amount, delta_balance, delta_held, actor_id, reason, now),
    )


def _ensure_account(now: str, guild_id: int, user_id: int, starting: int) -> Body[None]:
    created = yield execute(
        "INSERT INTO accounts (guild_id, user_id, balance, held, created_at, updated_at) "
        "VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT DO NOTHING",
        (guild_id, user_id, starting, now, now),
    )
    if created == 1 and starting > 0:
        yield _ledger(now, guild_id, user_id, None, "grant", starting, starting, 0, None, "starting credits")


def _as_account(guild_id: int, user_id: int, row: Row | None) -> Account:
    return Account(guild_id, user_id, 0, 0) if row is None else Account(guild_id, user_id, row[0], row[1])


def _account(guild_id: int, user_id: int) -> Body[Account]:
    row = yield fetch_one(
        "SELECT balance, held FROM accounts WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
    )
    return _as_account(guild_id, user_id, row)


def _touch_account(now: str, guild_id: int, user_id: int) -> Body[Account]:
    """The account, read for a change that depends on it: the write makes PostgreSQL hold its row until
    commit, so a concurrent movement cannot slip in between this read and the change."""
    row = yield fetch_one(
        "UPDATE accounts SET updated_at = ? WHERE guild_id = ? AND user_id = ? RETURNING balance, held",
        (now, guild_id, user_id),
    )
    return _as_account(guild_id, user_id, row)


def _move(now: str, guild_id: int, user_id: int, balance: int, held: int) -> Body[Account]:
    """Add `balance` and `held` (either may be negative) to the account; the account afterwards."""
    row = yield fetch_one(
        "UPDATE accounts SET balance = balance + ?, held = held + ?, updated_at = ? "
        "WHERE guild_id = ? AND user_id = ? RETURNING balance, held",
        (balance, held, now, guild_id, user_id),
    )
    return _as_account(guild_id, user_id, row)


def _settlement(job_id: str, owner: str | None = None) -> Body[tuple[Row | None, dict[str, int]]]:
    """A job's reserve row and the amount of its capture and release rows by kind (one statement).

    Takes the job's lock first: two processes settling the same job must not both find it unsettled.
    With `owner`, raises LeaseLost (changing nothing) unless that process still holds the job.
    """
    yield lock(("job", job_id))
    if owner is not None:
        yield from held_by(job_id, owner)
    reserve = None
    settled: dict[str, int] = {}
    rows = yield fetch_all(
        f"SELECT kind, guild_id, user_id, amount, id FROM ledger WHERE job_id = ? AND {JOB_KINDS}", (job_id,)
    )
    for row in rows:
        if row["kind"] == "reserve":
            reserve = row
        else:
            settled[row["kind"]] = row["amount"]
    return reserve, settled


def _capture(
    now: str, job_id: str, charged: int, owner: str | None = None, then: Statement | None = None
) -> Body[tuple[Account, int] | None]:
    """Capture a job's charge; `then` (a change to the job's row) runs whatever the job's state, unless
    the job was released (LedgerConflict)."""
    reserve, settled = yield from _settlement(job_id, owner)
    if reserve is not None and "release" in settled:
        raise LedgerConflict(f"job {job_id} was already released")
    if then is not None:
        yield then
    if reserve is None:
        return None
    guild_id, user_id, held = reserve["guild_id"], reserve["user_id"], reserve["amount"]
    if "capture" in settled:
        return (yield from _account(guild_id, user_id)), int(settled["capture"])
    charged = max(0, min(charged, held))
    account = yield from _move(now, guild_id, user_id, held - charged, -held)
    account = (yield from _refill_shortfall(now, reserve, charged)) or account
    yield execute("UPDATE jobs SET captured = ?, updated_at = ? WHERE id = ?", (charged, now, job_id))
    # Last before the commit: the capture row's trigger adds it to the server's spend_totals row, which
    # every other capture in the server then waits for until this transaction ends (migration 0012).
    yield _ledger(now, guild_id, user_id, job_id, "capture", charged, held - charged, -held, None, None)
    return account, charged


def _release(now: str, job_id: str, reason: str | None, owner: str | None = None) -> Body[Account | None]:
    reserve, settled = yield from _settlement(job_id, owner)
    if reserve is None:
        return None
    guild_id, user_id, held = reserve["guild_id"], reserve["user_id"], reserve["amount"]
    if "capture" in settled:
        raise LedgerConflict(f"job {job_id} was already captured")
    if "release" in settled:
        return (yield from _account(guild_id, user_id))
    account = yield from _move(now, guild_id, user_id, held, -held)
    yield _ledger(now, guild_id, user_id, job_id, "release", held, held, -held, None, reason)
    return account


def _hold_queued(now: str, job_id: str, amount: int) -> Body[None]:
    """Move the job to `reserved` with its hold, only while it is `queued`. A job another process ended
    meanwhile (it took the job over while this one checked the member's credits, and released it) raises
    JobNotQueued, so the whole reservation rolls back: an unconditional write turned the ended row live
    again with a fresh hold, and it was run and charged. An id without a job row (the ledger used on its
    own) keeps its hold."""
    moved = yield execute(
        "UPDATE jobs SET reserved = ?, state = 'reserved', updated_at = ? WHERE id = ? AND state = 'queued'",
        (amount, now, job_id),
    )
    if moved:
        return
    row = yield fetch_one("SELECT state FROM jobs WHERE id = ?", (job_id,))
    if row is not None:
        raise JobNotQueued(job_id, str(row[0]))


def _absorb(now: str, job_id: str, credits: int, reason: str) -> Statement:
    """Provider spend nobody pays for; once per job (a repeated settlement adds nothing)."""
    return execute(
        "INSERT INTO absorbed_spend (job_id, guild_id, user_id, credits, reason, created_at) "
        "SELECT id, guild_id, user_id, CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS TEXT) "
        "FROM jobs WHERE id = ? ON CONFLICT DO NOTHING",
        (credits, reason[:64], now, job_id),
    )


def _top_up(now: str, guild_id: int, user_id: int, amount: int, period: str) -> Body[None]:
    current = yield from _touch_account(now, guild_id, user_id)
    # Held credits count as the member's: a hold from the last period that is released after the
    # boundary must not leave them with the allowance on top of it. One that is captured instead was
    # the last period's spending: its capture adds what this top-up left out (`_refill_shortfall`),
    # so the member starts the period with the allowance either way.
    room = amount - current.balance - current.held
    added = max(0, room)
    if current.held > 0:  # the holds counted are this account's reserve rows up to its newest row
        newest = yield fetch_one(
            "SELECT MAX(id) FROM ledger WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        yield execute(
            "UPDATE allowance_refills SET room = ?, counted_to = ? "
            "WHERE guild_id = ? AND user_id = ? AND period = ?",
            (room, newest[0] if newest else None, guild_id, user_id, period),
        )
    if added == 0:
        return
    yield from _move(now, guild_id, user_id, added, 0)
    yield _ledger(
        now, guild_id, user_id, None, "grant", added, added, 0, None, f"{ALLOWANCE_REASON} {period}"
    )
    yield execute(
        "UPDATE allowance_refills SET added = ? WHERE guild_id = ? AND user_id = ? AND period = ?",
        (added, guild_id, user_id, period),
    )


def _refill(
    moment: dt.datetime,
    guild_id: int,
    user_id: int,
    amount: int,
    period_of: Callable[[dt.datetime], str | None],
) -> Body[None]:
    """Top the (existing) account up to `amount` if the period `period_of(moment)` names has not been
    refilled yet. The refill record's primary key admits one refill per period."""
    period = period_of(moment)
    if period is None or amount <= 0:
        return
    now = stamp(moment)
    first = yield execute(
        "INSERT INTO allowance_refills (guild_id, user_id, period, added, created_at) "
        "VALUES (?, ?, ?, 0, ?) ON CONFLICT DO NOTHING",
        (guild_id, user_id, period, now),
    )
    if first == 1:
        yield from _top_up(now, guild_id, user_id, amount, period)


def _refill_shortfall(now: str, reserve: Row, charged: int) -> Body[Account | None]:
    """A hold an allowance top-up counted as the member's credits is captured: top the period up by
    what it would have added had the capture come first (at most the charge). The account after, or
    None when the hold predates no top-up. (The account's row is already held by the capture.)"""
    guild_id, user_id = reserve["guild_id"], reserve["user_id"]
    refill = yield fetch_one(
        "SELECT period, room, added FROM allowance_refills WHERE guild_id = ? AND user_id = ? "
        "AND counted_to >= ? ORDER BY counted_to DESC LIMIT 1",
        (guild_id, user_id, reserve["id"]),
    )
    if refill is None:
        return None
    room = refill["room"] + charged
    extra = max(0, room) - refill["added"]
    yield execute(
        "UPDATE allowance_refills SET room = ?, added = added + ? "
        "WHERE guild_id = ? AND user_id = ? AND period = ?",
        (room, max(0, extra), guild_id, user_id, refill["period"]),
    )
    if extra <= 0:
        return None
    period = refill["period"]
    account = yield from _move(now, guild_id, user_id, extra, 0)
    yield _ledger(
        now, guild_id, user_id, None, "grant", extra, extra, 0, None, f"{ALLOWANCE_REASON} {period}"
    )
    return account


class Ledger:
    """Money movements on members' accounts. Every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def ensure_account(self, guild_id: int, user_id: int, starting_credits: int) -> Account:
        """Create the account with its one-time starting grant if it does not exist yet."""

        def body() -> Body[Account]:
            yield from _ensure_account(self._db.timestamp(), guild_id, user_id, starting_credits)
            return (yield from _account(guild_id, user_id))

        return await self._db.transaction(body)

    async def get_account(self, guild_id: int, user_id: int) -> Account | None:
        row = await self._db.one(
            "SELECT balance, held FROM accounts WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        return None if row is None else _as_account(guild_id, user_id, row)

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

        def body() -> Body[Account]:
            now = self._db.timestamp()
            yield from _ensure_account(now, guild_id, user_id, starting_credits)
            current = yield from _touch_account(now, guild_id, user_id)
            delta = max(amount, -current.balance)
            account = yield from _move(now, guild_id, user_id, delta, 0)
            kind = "grant" if amount >= 0 else "adjust"
            yield _ledger(now, guild_id, user_id, None, kind, delta, delta, 0, actor_id, reason)
            return account

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

        Raises NotEnoughCredits, or ReserveRefused when a `guard` limit refuses the job, or JobNotQueued
        (nothing changed) when its row has left `queued` meanwhile.
        """

        def body() -> Body[tuple[Account, bool, ReserveRefused | None]]:
            moment = self._db.now()
            now = stamp(moment)
            yield lock(("job", job_id))
            # Whether the account exists and the job already holds credits, in one round trip: the
            # account is created only when it is missing (almost never, after a member's first edit).
            found = yield fetch_one(
                "SELECT EXISTS (SELECT 1 FROM accounts WHERE guild_id = ? AND user_id = ?), "
                f"EXISTS (SELECT 1 FROM ledger WHERE job_id = ? AND {JOB_KINDS} AND kind = 'reserve')",
                (guild_id, user_id, job_id),
            )
            if not found[0]:
                yield from _ensure_account(now, guild_id, user_id, starting_credits)
            if found[1]:
                return (yield from _account(guild_id, user_id)), True, None
            if guard is not None:
                refused = yield from guard_refusal(moment, guild_id, user_id, amount, guard)
                if refused is not None:
                    return (yield from _account(guild_id, user_id)), False, refused
            # The conditional UPDATE is the whole race guard for the balance: it succeeds for exactly as
            # many concurrent jobs as the balance covers.
            held = yield fetch_one(
                "UPDATE accounts SET balance = balance - ?, held = held + ?, updated_at = ? "
                "WHERE guild_id = ? AND user_id = ? AND balance >= ? RETURNING balance, held",
                (amount, amount, now, guild_id, user_id, amount),
            )
            if held is None:
                return (yield from _account(guild_id, user_id)), False, None
            yield _ledger(now, guild_id, user_id, job_id, "reserve", amount, -amount, amount, None, None)
            yield from _hold_queued(now, job_id, amount)
            return _as_account(guild_id, user_id, held), True, None

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
        return await self._db.transaction(lambda: _capture(self._db.timestamp(), job_id, charged))

    async def release(self, job_id: str, reason: str | None = None) -> Account | None:
        """Return a job's whole hold. Idempotent; None if nothing was reserved.

        Raises LedgerConflict if the job was already captured.
        """
        return await self._db.transaction(lambda: _release(self._db.timestamp(), job_id, reason))

    async def settle_delivered(
        self,
        job_id: str,
        charged: int,
        *,
        via: str,
        channel_id: int | None,
        message_id: int | None,
        absorbed: int = 0,
        owner: str | None = None,
    ) -> tuple[Account, int] | None:
        """Capture a delivered job's charge and mark it delivered, in one transaction. Idempotent.
        With `owner` (here and in the other `settle_*`), only while that process holds the job: else
        LeaseLost, and nothing changes. `absorbed`: credits the provider billed beyond the charge
        (images that came back unusable, a charge above the hold); they count against the budgets.

        One transaction, so a crash can never leave a charged job that looks undelivered (and is
        delivered again) or a delivered job whose hold is never settled.
        """

        def body() -> Body[tuple[Account, int] | None]:
            now = self._db.timestamp()
            delivered = execute(
                "UPDATE jobs SET state = 'delivered', delivered_via = ?, result_channel_id = ?, "
                "result_message_id = ?, updated_at = ?, finished_at = COALESCE(finished_at, ?) WHERE id = ?",
                (via, channel_id, message_id, now, now, job_id),
            )
            settled = yield from _capture(now, job_id, charged, owner, then=delivered)
            if absorbed > 0:
                yield _absorb(now, job_id, absorbed, "unusable_images")
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
        owner: str | None = None,
    ) -> Account | None:
        """Release a job's hold and move it to `state` (failed or cancelled), in one transaction.

        `absorbed`: credits the provider may have charged for it although the member pays nothing (a
        result that could not be delivered, a call cut off after it was sent); they still count
        against the server's and the bot's budgets. Idempotent. Raises LedgerConflict (and changes
        nothing) if the job was already captured.
        """

        def body() -> Body[Account | None]:
            now = self._db.timestamp()
            account = yield from _release(now, job_id, error_code[:64], owner)
            yield execute(
                "UPDATE jobs SET state = ?, error_code = ?, error_ref = COALESCE(?, error_ref), "
                "updated_at = ?, finished_at = COALESCE(finished_at, ?) WHERE id = ?",
                (state, error_code[:64], error_ref, now, now, job_id),
            )
            if absorbed > 0:  # last, like a capture row: its trigger updates the server's spend_totals row
                yield _absorb(now, job_id, absorbed, error_code)
            return account

        return await self._db.transaction(body)

    async def settle_cancelled_at_provider(
        self,
        job_id: str,
        charged: int,
        *,
        error_code: str,
        error_ref: str | None = None,
        owner: str | None = None,
    ) -> tuple[Account, int] | None:
        """Charge a job cancelled after a provider accepted it and move it to `cancelled`, in one
        transaction. The provider bills for it, so it is captured (and counts toward cooldowns and
        budgets) like a delivered job. Idempotent; raises LedgerConflict if it was already released."""

        def body() -> Body[tuple[Account, int] | None]:
            now = self._db.timestamp()
            # Not a job whose result was posted and charged (a Stop that lands as it is delivered).
            cancelled = execute(
                "UPDATE jobs SET state = 'cancelled', error_code = ?, error_ref = COALESCE(?, error_ref), "
                "updated_at = ?, finished_at = COALESCE(finished_at, ?) "
                "WHERE id = ? AND state <> 'delivered'",
                (error_code[:64], error_ref, now, now, job_id),
            )
            return (yield from _capture(now, job_id, charged, owner, then=cancelled))

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

        def body() -> Body[Account]:
            moment = self._db.now()
            yield from _ensure_account(stamp(moment), guild_id, user_id, starting_credits)
            yield from _refill(moment, guild_id, user_id, amount, period_of)
            return (yield from _account(guild_id, user_id))

        return await self._db.transaction(body)

    async def prune_spend_marks(self) -> int:
        """Delete the budgets' marks of periods older than MARK_RETENTION (bot.storage.spend); how many
        periods. The totals and the ledger stay: only the per-period snapshots go."""
        before = self._db.now() - MARK_RETENTION
        return await self._db.transaction(lambda: prune_marks(before))

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
        allowance: int = 0,
        period_of: Callable[[dt.datetime], str | None] | None = None,
    ) -> tuple[Account, int]:
        """An admin's grant (`add` > 0), take (`add` < 0, at most the available balance) or set.

        Always writes exactly one ledger row with the actor, even when nothing moves, so every admin
        action is on record. Returns the account and the credits actually moved.

        With `period_of`, the member's allowance refill that is due (as `refill_allowance` makes it)
        comes first, in the same transaction: refills are made at a member's next use, and an admin's
        change made before it was otherwise topped up over (a `set 0` undone) or counted against the
        top-up (a grant that ate the allowance), depending on whether the member had used the bot yet.
        """

        def body() -> Body[tuple[Account, int]]:
            moment = self._db.now()
            now = stamp(moment)
            yield from _ensure_account(now, guild_id, user_id, starting_credits)
            if period_of is not None:
                yield from _refill(moment, guild_id, user_id, allowance, period_of)
            current = yield from _touch_account(now, guild_id, user_id)
            if set_to is not None:
                # A set names the member's balance: it replaces whatever a top-up that counted a hold
                # still owes them if that hold is captured (`_refill_shortfall`), which would otherwise
                # add the allowance back on top of the admin's number. A grant or take only moves
                # credits, so it keeps it: captured before or after it, the balance ends the same (a
                # take larger than what is available, below, lowers it by what it could not take).
                yield execute(
                    "UPDATE allowance_refills SET room = NULL, counted_to = NULL "
                    "WHERE guild_id = ? AND user_id = ? AND counted_to IS NOT NULL",
                    (guild_id, user_id),
                )
            delta = set_to - current.balance if set_to is not None else add
            delta = max(delta, -current.balance)
            if set_to is None and delta > add:
                # A take larger than what is available takes what is there. Captured first, the hold a
                # top-up counted would have been topped up, and this take would have taken that too:
                # the part it could not take comes off what that capture still adds.
                yield execute(
                    "UPDATE allowance_refills SET room = room - ? WHERE guild_id = ? AND user_id = ? "
                    "AND counted_to = (SELECT MAX(counted_to) FROM allowance_refills "
                    "WHERE guild_id = ? AND user_id = ?)",
                    (delta - add, guild_id, user_id, guild_id, user_id),
                )
            account = yield from _move(now, guild_id, user_id, delta, 0)
            kind = "grant" if delta > 0 else "adjust"
            yield _ledger(now, guild_id, user_id, None, kind, delta, delta, 0, actor_id, reason)
            return account, delta

        return await self._db.transaction(body)
