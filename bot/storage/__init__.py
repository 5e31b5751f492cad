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

from bot.storage.connection import Database, utcnow
from bot.storage.history import Versions
from bot.storage.jobs import Jobs
from bot.storage.ledger import Ledger
from bot.storage.reports import LedgerReports
from bot.storage.settings import Settings

__all__ = ["Storage"]


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
