"""Open circuits shared by every process on the database (bot/routing/breaker.py keeps the logic).

One row per provider some process's breaker opened: until when it is skipped. A breaker hands over the
circuits it opened and closed since its last exchange and reads back every row, in one transaction, once
a lease round (never per provider call). Durations cross the boundary as seconds so the breaker keeps
its own monotonic clock; the rows hold the database's time (PostgreSQL's `statement_timestamp()`, read
in the same transaction), so processes whose host clocks disagree still agree on it. SQLite runs one
process: there, and wherever a test injected the storage clock, the storage clock is the time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping

from bot.storage.connection import Body, Database, execute, execute_many, fetch_all, fetch_one, stamp

# A stored open ending later stays: an older open handed over late (after a failed exchange) must not
# shorten a newer one. ISO-8601 UTC text of one format orders as its moments do.
OPEN = """
INSERT INTO open_circuits (provider, open_until) VALUES (?, ?)
ON CONFLICT (provider) DO UPDATE SET open_until = excluded.open_until
WHERE excluded.open_until > open_circuits.open_until
"""
# PostgreSQL only; the parameter is the injected storage clock, NULL in production: the database's clock.
DATABASE_NOW = "SELECT COALESCE(CAST(? AS TIMESTAMPTZ), statement_timestamp())"


class Circuits:
    """The `open_circuits` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def exchange(self, opened: Mapping[str, float], closed: Collection[str]) -> dict[str, float]:
        """Record `opened` ({provider: seconds it stays open from now}; a stored open that ends later is
        kept) and delete the `closed` rows;
        then every row as {provider: seconds until it ends} (zero or less: its open period is over and
        nobody has closed it yet)."""
        shared, injected = self.db.shared, self.db.injected_now()

        def body() -> Body[dict[str, float]]:
            now = self.db.now()
            if shared:  # several processes, maybe on hosts whose clocks disagree: the database's clock
                row = yield fetch_one(DATABASE_NOW, (injected,))
                now = row[0]
            if opened:
                rows = [(p, stamp(now + dt.timedelta(seconds=s))) for p, s in sorted(opened.items())]
                yield execute_many(OPEN, rows)
            for provider in sorted(closed):
                yield execute("DELETE FROM open_circuits WHERE provider = ?", (provider,))
            rows = yield fetch_all("SELECT provider, open_until FROM open_circuits")
            return {
                row["provider"]: (dt.datetime.fromisoformat(row["open_until"]) - now).total_seconds()
                for row in rows
            }

        return await self.db.transaction(body)
