"""Job rows and their states: the durable record each edit job runs from.

The engine (bot.engine) decides what a state means; this module only stores it. Money columns
(`reserved`, `captured`) are written by the ledger's transactions, never here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, fields
from typing import Any

from bot.jobs.model import JobState
from bot.storage.connection import Body, Database, execute, stamp

TERMINAL_STATES = (JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED)
# Jobs that may still need work: waiting for a reservation, in the queue, at a provider, or holding an
# undelivered result. Every one of them is looked at again when the bot starts.
LIVE_STATES = (
    JobState.QUEUED,
    JobState.RESERVED,
    JobState.SUBMITTING,
    JobState.SUBMITTED,
    JobState.COMPLETED,
)
# Job columns `set_job_state` may change besides the state.
_JOB_FIELDS = frozenset(
    {
        "provider",
        "provider_request_id",
        "error_code",
        "error_ref",
        "model",
        "quality",
        "size",
        "result",
        "started_at",
        "completed_at",
        "deadline_at",
        "delivery_attempted_at",
        "files_expire_at",
        "provider_model",
        "spec",
    }
)


@dataclass(frozen=True)
class JobRow:
    """One row of the `jobs` table, as stored."""

    id: str
    guild_id: int
    user_id: int
    channel_id: int | None
    state: str
    model: str
    quality: str
    size: str
    count: int
    reserved: int
    captured: int | None
    provider: str | None
    provider_request_id: str | None
    error_code: str | None
    error_ref: str | None
    created_at: str
    updated_at: str
    finished_at: str | None
    spec: str | None = None
    result: str | None = None
    interaction_at: str | None = None
    origin_message_id: int | None = None
    started_at: str | None = None
    completed_at: str | None = None
    deadline_at: str | None = None
    delivery_attempted_at: str | None = None
    delivered_via: str | None = None
    result_channel_id: int | None = None
    result_message_id: int | None = None
    files_expire_at: str | None = None
    provider_model: str | None = None  # the route's model id at `provider` (a provider may sell several)

    @property
    def provider_job_ids(self) -> tuple[str, ...]:
        """The provider's ids for this job's calls (one per call of an emulated `count`)."""
        return tuple(i for i in (self.provider_request_id or "").split(",") if i)


# The columns a JobRow holds, named: `SELECT *` would also bring PostgreSQL's `rowid` (migrations/postgres).
_SELECT_JOBS = f"SELECT {', '.join(f.name for f in fields(JobRow))} FROM jobs "


class Jobs:
    """The `jobs` table: create, move between states, look up, and forget what ended jobs held."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_job(
        self,
        job_id: str,
        *,
        guild_id: int,
        user_id: int,
        channel_id: int | None,
        model: str,
        quality: str,
        size: str,
        count: int,
        spec: str | None = None,
        interaction_at: str | None = None,
        origin_message_id: int | None = None,
        deadline_at: str | None = None,
        files_expire_at: str | None = None,
    ) -> None:
        """Write a new job in state `queued` (nothing held yet), with what it needs to run."""

        def body() -> Body[None]:
            now = self._db.timestamp()
            yield execute(
                "INSERT INTO jobs (id, guild_id, user_id, channel_id, state, model, quality, size, count, "
                "created_at, updated_at, spec, interaction_at, origin_message_id, deadline_at, "
                "files_expire_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    guild_id,
                    user_id,
                    channel_id,
                    model,
                    quality,
                    size,
                    count,
                    now,
                    now,
                    spec,
                    interaction_at,
                    origin_message_id,
                    deadline_at,
                    files_expire_at,
                ),
            )

        await self._db.transaction(body)

    async def set_job_state(self, job_id: str, state: str, **fields: Any) -> None:
        """Move a job to `state`, optionally setting other job columns (see `_JOB_FIELDS`)."""
        unknown = set(fields) - _JOB_FIELDS
        if unknown:
            raise ValueError(f"unknown job fields: {sorted(unknown)}")
        assignments = ["state = ?", "updated_at = ?", *(f"{name} = ?" for name in fields)]
        terminal = state in TERMINAL_STATES
        if terminal:
            assignments.append("finished_at = ?")
        sql = f"UPDATE jobs SET {', '.join(assignments)} WHERE id = ?"

        now = self._db.timestamp()
        ended = (now,) if terminal else ()
        await self._db.write_one(sql, (state, now, *fields.values(), *ended, job_id))

    async def update_job(self, job_id: str, **fields: Any) -> None:
        """Set job columns (see `_JOB_FIELDS`) without changing the state."""
        unknown = set(fields) - _JOB_FIELDS
        if unknown or not fields:
            raise ValueError(f"unknown or no job fields: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE jobs SET {assignments}, updated_at = ? WHERE id = ?"
        await self._db.write_one(sql, (*fields.values(), self._db.timestamp(), job_id))

    async def mark_submitted(self, job_id: str, provider: str, provider_job_id: str) -> None:
        """Record that `provider` accepted one call of the job (ids are appended: an emulated `count`
        makes one call per image) and move it to `submitted`."""
        sql = (
            "UPDATE jobs SET state = 'submitted', provider = ?, provider_request_id = "
            "CASE WHEN provider_request_id IS NULL OR provider_request_id = '' THEN ? "
            "ELSE provider_request_id || ',' || ? END, updated_at = ? WHERE id = ?"
        )
        await self._db.write_one(
            sql, (provider, provider_job_id, provider_job_id, self._db.timestamp(), job_id)
        )

    async def overdue_jobs(self, now: dt.datetime) -> list[JobRow]:
        """Jobs still waiting or at a provider whose deadline has passed (the watchdog's work)."""
        rows = await self._db.all(
            _SELECT_JOBS + "WHERE state IN ('reserved', 'submitting', 'submitted') "
            "AND deadline_at IS NOT NULL AND deadline_at < ? ORDER BY created_at",
            (now.isoformat(timespec="milliseconds"),),
        )
        return [JobRow(**dict(r)) for r in rows]

    async def recent_run_seconds(self, limit: int) -> list[float]:
        """How long the last `limit` jobs that produced a result took at their provider, newest first."""
        rows = await self._db.all(
            "SELECT started_at, completed_at FROM jobs WHERE started_at IS NOT NULL "
            "AND completed_at IS NOT NULL ORDER BY completed_at DESC LIMIT ?",
            (limit,),
        )
        spans = []
        for started, completed in rows:
            with contextlib.suppress(ValueError):
                delta = dt.datetime.fromisoformat(completed) - dt.datetime.fromisoformat(started)
                spans.append(max(0.0, delta.total_seconds()))
        return spans

    async def get_job(self, job_id: str) -> JobRow | None:
        row = await self._db.one(_SELECT_JOBS + "WHERE id = ?", (job_id,))
        return None if row is None else JobRow(**dict(row))

    async def recent_jobs(self, guild_id: int, user_id: int, limit: int = 5) -> list[JobRow]:
        rows = await self._db.all(
            _SELECT_JOBS + "WHERE guild_id = ? AND user_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (guild_id, user_id, limit),
        )
        return [JobRow(**dict(r)) for r in rows]

    async def jobs_in_states(self, states: tuple[str, ...]) -> list[JobRow]:
        marks = ", ".join("?" for _ in states)
        rows = await self._db.all(_SELECT_JOBS + f"WHERE state IN ({marks}) ORDER BY created_at", states)
        return [JobRow(**dict(r)) for r in rows]

    # -- retention ----------------------------------------------------------------------------------

    async def forget_job_details(self, job_id: str) -> None:
        """Drop what an ended job no longer needs once its files expired (its prompt and options)."""
        await self._db.write_one(
            "UPDATE jobs SET spec = NULL, result = NULL "
            "WHERE id = ? AND state IN ('delivered', 'failed', 'cancelled')",
            (job_id,),
        )

    async def forget_expired_details(self) -> int:
        """Drop the prompt and options of every ended job whose files expired (also failed, cancelled and
        refused jobs, whose files went at once). Returns how many rows were cleared."""
        return await self._db.write_one(
            "UPDATE jobs SET spec = NULL, result = NULL "
            "WHERE state IN ('delivered', 'failed', 'cancelled') "
            "AND (spec IS NOT NULL OR result IS NOT NULL) "
            "AND files_expire_at IS NOT NULL AND files_expire_at < ?",
            (self._db.timestamp(),),
        )

    async def prune_history(self, before: dt.datetime) -> tuple[int, int]:
        """Delete ended jobs that finished before `before`, and erase the reason and acting admin of
        ledger rows written before it (their amounts stay, so the books still add up).

        Returns (job rows deleted, ledger rows cleared). Live jobs and their holds are never touched.
        """
        cutoff = stamp(before)

        def body() -> Body[tuple[int, int]]:
            jobs = yield execute(
                "DELETE FROM jobs WHERE state IN ('delivered', 'failed', 'cancelled') AND finished_at < ?",
                (cutoff,),
            )
            ledger = yield execute(
                "UPDATE ledger SET reason = NULL, actor_id = NULL "
                "WHERE created_at < ? AND actor_id IS NOT NULL",
                (cutoff,),
            )
            return jobs, ledger

        return await self._db.transaction(body)
