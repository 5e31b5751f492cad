"""The only package that speaks SQL: repositories over one database connection.

- `connection.py`: the handle (open, migrations, the one-transaction-at-a-time write path, the clock)
- `ledger.py`: accounts and money movements; `limits.py`: the admission limits a reservation checks;
  `reports.py`: read-only ledger reports and budget views
- `jobs.py`: job rows and their states
- `settings.py`: member defaults, guild policy, role tiers, the operator's servers, route status

`Storage` opens the connection and hands out one of each repository: `storage.ledger`,
`storage.reports`, `storage.jobs`, `storage.settings`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.storage.connection import Database, utcnow
from bot.storage.history import Versions
from bot.storage.jobs import LIVE_STATES, TERMINAL_STATES, JobRow, Jobs
from bot.storage.ledger import Ledger, LedgerConflict, NotEnoughCredits
from bot.storage.reports import LedgerReports
from bot.storage.settings import Settings

# Re-exported only for bot/engine.py, which another branch is moving into a package: import these from
# their own modules (bot.storage.jobs, bot.storage.ledger) in new code.
__all__ = ["LIVE_STATES", "TERMINAL_STATES", "JobRow", "LedgerConflict", "NotEnoughCredits", "Storage"]

# Transition: the methods `Storage` had before it was split, and the repository each one moved to
# under the same name. Only bot/engine.py (being moved into a package on another branch) still calls
# them through `Storage`; port it to `storage.<repository>.<name>` and delete this table.
_MOVED = {
    **dict.fromkeys(
        (
            "ensure_account",
            "get_account",
            "grant",
            "reserve",
            "capture",
            "release",
            "settle_delivered",
            "settle_released",
            "settle_cancelled_at_provider",
            "refill_allowance",
            "refilled",
            "change_balance",
        ),
        "ledger",
    ),
    **dict.fromkeys(
        (
            "held_mismatches",
            "open_holds",
            "ledger_totals",
            "ledger_rows",
            "all_accounts",
            "account_history",
            "guild_ledger",
            "spend_by_guild",
        ),
        "reports",
    ),
    **dict.fromkeys(
        (
            "create_job",
            "set_job_state",
            "update_job",
            "mark_submitted",
            "overdue_jobs",
            "recent_run_seconds",
            "get_job",
            "recent_jobs",
            "jobs_in_states",
            "forget_job_details",
            "forget_expired_details",
            "prune_history",
        ),
        "jobs",
    ),
    **dict.fromkeys(
        (
            "guild_thread_results",
            "set_guild_thread_results",
            "guild_policy_row",
            "update_guild_policy",
            "role_tier_rows",
            "put_role_tier",
            "delete_role_tier",
            "route_status_rows",
            "put_route_status",
            "stored_models",
            "move_stored_model",
            "take_model_notices",
            "user_settings_row",
            "update_user_settings",
            "operator_guild",
            "operator_guilds",
            "set_guild_approved",
            "set_guild_allotment",
        ),
        "settings",
    ),
}


class Storage:
    """The bot's database: one connection and the repositories over it.

    Create with `await Storage.open(path)`; close with `await storage.close()`.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.ledger = Ledger(db)
        self.reports = LedgerReports(db)
        self.jobs = Jobs(db)
        self.settings = Settings(db)
        self.history = Versions(db)

    @classmethod
    async def open(cls, path: Path | str, *, clock: Callable[[], dt.datetime] = utcnow) -> Storage:
        """Open the database file (created if missing) and apply pending migrations."""
        return cls(await Database.open(path, clock=clock))

    async def close(self) -> None:
        await self.db.close()

    def now(self) -> dt.datetime:
        """The storage clock (injectable in tests): every policy date is read from it."""
        return self.db.now()

    async def migrate(self) -> int:
        """Apply pending migrations; the schema version the database is at afterwards."""
        return await self.db.migrate()

    async def schema_version(self) -> int:
        return await self.db.schema_version()

    async def check_writable(self) -> None:
        """Raise if the database cannot take a write right now (used by health checks)."""
        await self.db.check_writable()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not set above: the transition table, nothing else.
        repository = _MOVED.get(name)
        if repository is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(getattr(self, repository), name)
