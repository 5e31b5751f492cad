"""The only package that speaks SQL: repositories over one database, SQLite or PostgreSQL.

- `connection.py`: what a backend provides, and the statements transaction bodies are written with;
  `sqlite.py` (the embedded default) and `postgres.py` (several processes on one server) are the two
- `ledger.py`: accounts and money movements; `limits.py`: the admission limits a reservation checks;
  `spend.py`: what a budget counts (running totals, a mark per period, open holds);
  `reports.py`: read-only ledger reports and budget views
- `jobs.py`: job rows and their states
- `settings.py`: member defaults, guild policy, role tiers, the operator's servers, route status
- `circuits.py`: circuits a breaker opened, shared by every process on the database
- `copy.py`: a SQLite database copied into an empty PostgreSQL one (`python -m bot --copy-to-postgres`)

`Storage` opens the database and hands out one of each repository: `storage.ledger`, `storage.reports`,
`storage.jobs`, `storage.settings`, `storage.history`, `storage.circuits`. A new repository takes the
`Database` and writes its transactions once, as bodies (see `connection.py`), for both backends.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from bot.storage.circuits import Circuits
from bot.storage.connection import Database, open_database, utcnow
from bot.storage.history import Versions
from bot.storage.jobs import Jobs
from bot.storage.ledger import Ledger
from bot.storage.reports import LedgerReports
from bot.storage.settings import Settings

__all__ = ["Storage"]


class Storage:
    """The bot's database and the repositories over it.

    Create with `await Storage.open(target)`; close with `await storage.close()`.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.ledger = Ledger(db)
        self.reports = LedgerReports(db)
        self.jobs = Jobs(db)
        self.settings = Settings(db)
        self.history = Versions(db)
        self.circuits = Circuits(db)

    @classmethod
    async def open(
        cls,
        target: Path | str,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        sole_process: bool = False,
        migrate: bool = True,
    ) -> Storage:
        """Open the database (`DATABASE_URL`: a SQLite file path or `sqlite:///path`, created if
        missing, or `postgresql://…`) and apply pending migrations (unless `migrate=False`: `--sync`).
        `sole_process`: the running bot, which refuses to share a SQLite file with another process
        (`DatabaseInUse`)."""
        db = await open_database(target, clock=clock, sole_process=sole_process, migrate=migrate)
        return cls(db)

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
