"""Open circuits shared by every process on the database (bot/routing/breaker.py keeps the logic).

One row per provider some process's breaker opened: until when it is skipped. A breaker hands over the
circuits it opened and closed since its last exchange and reads back every row, in one transaction, once
a lease round (never per provider call). Durations cross the boundary as seconds so the breaker keeps
its own monotonic clock; the rows hold the storage clock's time, so processes agree on it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping

from bot.storage.connection import Body, Database, execute, execute_many, fetch_all, stamp

OPEN = """
INSERT INTO open_circuits (provider, open_until) VALUES (?, ?)
ON CONFLICT (provider) DO UPDATE SET open_until = excluded.open_until
"""


class Circuits:
    """The `open_circuits` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def exchange(self, opened: Mapping[str, float], closed: Collection[str]) -> dict[str, float]:
        """Record `opened` ({provider: seconds it stays open from now}) and delete the `closed` rows;
        then every row as {provider: seconds until it ends} (zero or less: its open period is over and
        nobody has closed it yet)."""
        now = self.db.now()

        def body() -> Body[dict[str, float]]:
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
