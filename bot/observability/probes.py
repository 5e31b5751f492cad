"""Probes that report on the bot's own parts: shared by `/healthz` (bot.observability.ops) and
`/diagnose` (bot.services.diagnostics)."""

from __future__ import annotations

import asyncio

from bot.storage import Storage


class WriteProbe:
    """Asks the database for its write lock without ever abandoning a half-started transaction.

    Timing out must not cancel `check_writable`: a BEGIN IMMEDIATE still waiting in SQLite's busy
    handler would complete later with nobody left to end it. The probe runs shielded, and while one
    is still waiting no second one is started.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._task: asyncio.Task[None] | None = None

    async def problem(self, timeout: float) -> str | None:  # noqa: ASYNC109 - the caller's budget
        """None when a write transaction could start within `timeout` seconds, else a short reason."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._storage.check_writable())
            # Retrieve a late failure so it is not reported as "never retrieved".
            self._task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            return "database busy"
        except Exception as exc:
            return f"database not writable ({type(exc).__name__})"
        return None
