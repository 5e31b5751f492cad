"""Read-only reports over the ledger: totals, history pages, open holds, spend by server.

Nothing here writes; the movements themselves are in `ledger.py`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from bot.storage import spend
from bot.storage.connection import Reader, iso
from bot.storage.ledger import Account
from bot.storage.limits import JOB_KINDS


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
    """An account's ledger summed by kind (what reconciliation compares with the balance)."""

    balance: int
    held: int
    granted: int
    captured: int


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


_LEDGER_ENTRY_SQL = (
    "SELECT l.id, l.guild_id, l.user_id, l.job_id, l.kind, l.amount, l.delta_balance, l.delta_held, "
    "l.actor_id, l.reason, l.created_at, j.model, j.provider "
    "FROM ledger l LEFT JOIN jobs j ON j.id = l.job_id "
)


class LedgerReports:
    """Queries for /credits, /admin reports, start-up reconciling and the budget views."""

    def __init__(self, db: Reader) -> None:
        self._db = db

    async def unbalanced_accounts(self) -> list[tuple[int, int]]:
        """Accounts whose `balance` or `held` differs from the sums of their ledger rows, and ledger rows
        of accounts that do not exist (guild_id, user_id). Empty unless the books were changed behind
        the bot's back: every movement writes the account and its ledger row in one transaction."""
        rows = await self._db.all(
            "SELECT guild_id, user_id FROM ("
            "  SELECT guild_id, user_id, balance, held FROM accounts"
            "  UNION ALL SELECT guild_id, user_id, -delta_balance, -delta_held FROM ledger"
            ") AS books GROUP BY guild_id, user_id HAVING SUM(balance) != 0 OR SUM(held) != 0 "
            "ORDER BY guild_id, user_id"
        )
        return [(r[0], r[1]) for r in rows]

    async def held_mismatches(self) -> list[tuple[int, int, int, int]]:
        """Accounts whose `held` differs from the sum of their open reservations:
        (guild_id, user_id, held, open). Empty unless the database was changed behind the bot's back."""
        rows = await self._db.all(
            "SELECT a.guild_id, a.user_id, a.held, COALESCE(SUM(r.amount), 0) FROM accounts a "
            "LEFT JOIN ledger r ON r.guild_id = a.guild_id AND r.user_id = a.user_id "
            "AND r.kind = 'reserve' AND NOT EXISTS (SELECT 1 FROM ledger x "
            f"WHERE x.job_id = r.job_id AND x.{JOB_KINDS} AND x.kind IN ('capture', 'release')) "
            "GROUP BY a.guild_id, a.user_id, a.held HAVING a.held != COALESCE(SUM(r.amount), 0)"
        )
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def open_holds(self) -> list[OpenHold]:
        """Reservations never captured or released, with their job's state (for start-up reconciling)."""
        rows = await self._db.all(
            "SELECT r.job_id, r.guild_id, r.user_id, r.amount, j.state FROM ledger r "
            "LEFT JOIN jobs j ON j.id = r.job_id WHERE r.kind = 'reserve' AND NOT EXISTS "
            f"(SELECT 1 FROM ledger x WHERE x.job_id = r.job_id AND x.{JOB_KINDS} "
            "AND x.kind IN ('capture', 'release')) ORDER BY r.id"
        )
        return [OpenHold(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def ledger_totals(self, guild_id: int, user_id: int) -> LedgerTotals:
        row = await self._db.one(
            "SELECT COALESCE(SUM(delta_balance), 0), COALESCE(SUM(delta_held), 0), "
            "COALESCE(SUM(CASE WHEN kind IN ('grant', 'adjust') THEN amount ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN kind = 'capture' THEN amount ELSE 0 END), 0) "
            "FROM ledger WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        assert row is not None
        return LedgerTotals(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    async def ledger_rows(self, job_id: str) -> list[dict[str, Any]]:
        rows = await self._db.all("SELECT * FROM ledger WHERE job_id = ? ORDER BY id", (job_id,))
        return [dict(r) for r in rows]

    async def all_accounts(self) -> list[Account]:
        rows = await self._db.all("SELECT guild_id, user_id, balance, held FROM accounts")
        return [Account(r["guild_id"], r["user_id"], r["balance"], r["held"]) for r in rows]

    async def account_history(
        self, guild_id: int, user_id: int, *, kinds: tuple[str, ...], offset: int, limit: int
    ) -> tuple[list[LedgerEntry], int]:
        """One page of an account's ledger rows of `kinds`, newest first, and how many there are."""
        marks = ", ".join("?" for _ in kinds)
        where = f"WHERE l.guild_id = ? AND l.user_id = ? AND l.kind IN ({marks}) "
        rows = await self._db.all(
            _LEDGER_ENTRY_SQL + where + "ORDER BY l.id DESC LIMIT ? OFFSET ?",
            (guild_id, user_id, *kinds, limit, offset),
        )
        total = await self._db.one("SELECT COUNT(*) FROM ledger l " + where, (guild_id, user_id, *kinds))
        return [LedgerEntry(**dict(r)) for r in rows], int(total[0]) if total else 0

    async def guild_ledger(
        self, guild_id: int, *, since: dt.datetime | None, until: dt.datetime | None
    ) -> list[LedgerEntry]:
        """Every ledger row of a guild in [since, until) (None = open end), oldest first."""
        rows = await self._db.all(
            _LEDGER_ENTRY_SQL
            + "WHERE l.guild_id = ? AND l.created_at >= ? AND l.created_at < ? ORDER BY l.id",
            (guild_id, *_bounds(since, until)),
        )
        return [LedgerEntry(**dict(r)) for r in rows]

    async def absorbed_credits(
        self, guild_id: int, *, since: dt.datetime | None, until: dt.datetime | None
    ) -> int:
        """What the image services billed in [since, until) for a guild's jobs that no member was
        charged (`absorbed_spend`: unusable images, a moderator's stop, a result nobody got)."""
        row = await self._db.one(
            "SELECT COALESCE(SUM(credits), 0) FROM absorbed_spend "
            "WHERE guild_id = ? AND created_at >= ? AND created_at < ?",
            (guild_id, *_bounds(since, until)),
        )
        return int(row[0]) if row else 0

    async def spend_by_guild(self, since: dt.datetime) -> dict[int, tuple[int, int]]:
        """{guild_id: (credits spent since `since`, credits held now)} for every guild with either.

        Spent = captured from members plus provider spend nobody was charged for (`absorbed_spend`),
        counted as the budget checks count it (`spend.py`)."""
        return await spend.spend_by_guild(self._db, since)


def _bounds(since: dt.datetime | None, until: dt.datetime | None) -> tuple[str, str]:
    """[since, until) as `created_at` text bounds (None = an open end): "~" sorts after every digit,
    so an open end is later than any timestamp."""
    return (iso(since) if since else "", iso(until) if until else "~")
