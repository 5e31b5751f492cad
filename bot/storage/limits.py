"""The admission limits a reservation checks inside its own transaction.

Cooldown, running jobs per member, the server's monthly cap and allotment, and the bot-wide budget.
They are read by `Ledger.reserve` in the same transaction that holds the credits: checking them in a
separate read first would let two concurrent jobs both pass a limit that only one of them fits under.
For the same reason the checks take their locks first (`connection.lock`): on PostgreSQL, where
reservations from several processes run side by side, a second check of the same sums waits until the
first one's hold is committed, then counts it. What a budget counts (spend since the month began plus
open holds) is read from running totals, in constant time (`spend.py`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from bot.storage.connection import Body, fetch_one, lock
from bot.storage.spend import spent

# The ledger's unique index on (job_id, kind) is partial, for exactly these kinds. SQLite only uses a
# partial index when the query repeats the index's own `IN` term, so every lookup of a job's ledger
# rows carries it (without it, each one scans the whole append-only ledger).
JOB_KINDS = "kind IN ('reserve', 'capture', 'release')"


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
    when a cooldown ends; `used` and `limit` are running jobs or credits, as the reason reads. A budget
    refusal names the budget with the least left, so `limit - used` is also what a smaller job may
    still hold under every budget.
    """

    def __init__(
        self, reason: str, *, retry_at: dt.datetime | None = None, used: int = 0, limit: int = 0
    ) -> None:
        super().__init__(f"{reason}: used {used} of {limit}")
        self.reason = reason
        self.retry_at = retry_at
        self.used = used
        self.limit = limit


def _locks(guild_id: int, user_id: int, guard: ReserveGuard) -> list[tuple[object, ...]]:
    """What the guard's checks must hold until commit. Every budget (the server's cap and allotment, the
    bot's budget) shares one lock: a server's spend is part of the bot's, so checks of either must not
    run side by side."""
    scopes: list[tuple[object, ...]] = []
    if guard.cooldown_seconds > 0 or guard.max_concurrent > 0:
        scopes.append(("account", guild_id, user_id))
    if guard.guild_cap is not None or guard.allotment is not None or guard.bot_cap is not None:
        scopes.append(("budget",))
    return scopes


def guard_refusal(
    moment: dt.datetime, guild_id: int, user_id: int, amount: int, guard: ReserveGuard
) -> Body[ReserveRefused | None]:
    """The first guard limit this reservation would break, read inside its transaction."""
    scopes = _locks(guild_id, user_id, guard)
    if scopes:
        yield lock(*scopes)
    if guard.cooldown_seconds > 0:
        # Refunded jobs do not count: a provider failure should not make the user wait.
        row = yield fetch_one(
            "SELECT MAX(r.created_at) FROM ledger r WHERE r.guild_id = ? AND r.user_id = ? "
            "AND r.kind = 'reserve' AND NOT EXISTS (SELECT 1 FROM ledger x "
            f"WHERE x.job_id = r.job_id AND x.{JOB_KINDS} AND x.kind = 'release')",
            (guild_id, user_id),
        )
        if row is not None and row[0] is not None:
            ready = dt.datetime.fromisoformat(row[0]) + dt.timedelta(seconds=guard.cooldown_seconds)
            if moment < ready:
                return ReserveRefused("cooldown", retry_at=ready)
    if guard.max_concurrent > 0:
        row = yield fetch_one(
            "SELECT COUNT(*) FROM ledger r WHERE r.guild_id = ? AND r.user_id = ? "
            "AND r.kind = 'reserve' AND NOT EXISTS (SELECT 1 FROM ledger x "
            f"WHERE x.job_id = r.job_id AND x.{JOB_KINDS} AND x.kind IN ('capture', 'release'))",
            (guild_id, user_id),
        )
        running = int(row[0]) if row else 0
        if running >= guard.max_concurrent:
            return ReserveRefused("concurrency", used=running, limit=guard.max_concurrent)
    guild_budget = guard.guild_cap is not None or guard.allotment is not None
    if guild_budget or guard.bot_cap is not None:
        used, bot_used = yield from spent(
            moment, guard.cap_since, guild_id if guild_budget else None, guard.bot_cap is not None
        )
        budgets = [
            (reason, spent_so_far, limit)
            for reason, spent_so_far, limit in (
                ("allotment", used, guard.allotment),
                ("guild_cap", used, guard.guild_cap),
                ("bot_budget", bot_used, guard.bot_cap),
            )
            if spent_so_far is not None and limit is not None
        ]
        if any(spent_so_far + amount > limit for _, spent_so_far, limit in budgets):
            # Refused as the budget with the least left (the first of equals): it is what a smaller job
            # must fit, and whose owner (the server's admins, the operator) could change that.
            reason, spent_so_far, limit = min(budgets, key=lambda b: b[2] - b[1])
            return ReserveRefused(reason, used=spent_so_far, limit=limit)
    return None
