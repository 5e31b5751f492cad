"""Job rows and their states: the durable record each edit job runs from.

The engine (bot.engine) decides what a state means; this module only stores it. Money columns
(`reserved`, `captured`) are written by the ledger's transactions, never here.

Over 400 lines, and not split: these are the `jobs` table's statements, and the leases' (renew, claim,
hand back, the cancel recorded for a job's holder) are kept beside the state moves they fence, so every
write to a job row and its `owner` check can be read in one place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import Any

from bot.jobs.model import JobState
from bot.storage.connection import Body, Database, execute, fetch_all, fetch_one, notify, stamp

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
# Live jobs a cancel can still stop: a `completed` job's result exists and is being posted.
CANCELLABLE_STATES = tuple(s for s in LIVE_STATES if s != JobState.COMPLETED)
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
        "calls_sent",
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
    owner: str | None = None  # the process running it (bot/jobs/leases.py); None: nobody
    lease_expires_at: str | None = None
    # A cancel another process recorded for the holder (`Jobs.request_cancel`); None: none asked.
    cancel_requested_at: str | None = None
    cancel_actor_id: int | None = None
    cancel_reason: str | None = None  # 'cancelled' (the requester's) or 'stopped' (a moderator's)
    # Paid calls that left for the provider on the route tried last (`Jobs.check_sending`); None: not
    # counted (a row from before migration 17).
    calls_sent: int | None = None
    # Where its public notice (cogs/_moderation.py) was posted, kept after the notice is removed
    # (`take_notice` clears only the message): a moderator's Stop counts only from the job's channels.
    notice_channel_id: int | None = None

    @property
    def cancel_pending(self) -> bool:
        """A cancel was recorded for the process holding the job, which has not stopped it yet."""
        return self.cancel_requested_at is not None and self.state in CANCELLABLE_STATES

    @property
    def cancel_request(self) -> CancelRequest | None:
        """The cancel recorded for this job's holder, if one was."""
        if self.cancel_requested_at is None or self.cancel_reason is None:
            return None
        return CancelRequest(self.cancel_actor_id or 0, self.cancel_reason, self.cancel_requested_at)

    @property
    def provider_job_ids(self) -> tuple[str, ...]:
        """The provider's ids for this job's calls (one per call of an emulated `count`)."""
        return tuple(i for i in (self.provider_request_id or "").split(",") if i)


@dataclass(frozen=True)
class CancelRequest:
    """A cancel recorded on a job's row for the process that holds it (bot/jobs/leases.py)."""

    actor_id: int
    reason: str  # 'cancelled' (the requester's own: charged once a provider has it) or 'stopped'
    requested_at: str


@dataclass(frozen=True)
class Renewal:
    """What a lease renewal found: the jobs still held, and the cancels recorded for any of them."""

    held: set[str]
    cancels: dict[str, CancelRequest]


# The columns a JobRow holds, named: `SELECT *` would also bring PostgreSQL's `rowid` (migrations/postgres).
_COLUMNS = ", ".join(f.name for f in fields(JobRow))
_SELECT_JOBS = f"SELECT {_COLUMNS} FROM jobs "
_LIVE = "state IN ({})".format(", ".join(f"'{s}'" for s in LIVE_STATES))
# Oldest first, jobs created in the same millisecond in the order they were created: `rowid` is the
# insertion order on both backends (SQLite's own; an identity column on PostgreSQL, migrations/postgres),
# so a queue read again after a restart or a takeover keeps its order.
_CREATION_ORDER = "created_at, rowid"
# A live job another process may claim at `?` (now): nobody holds it, or its lease ran out.
_FREE = "(owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= ?)"

_CANCELLABLE = "state IN ({})".format(", ".join(f"'{s}'" for s in CANCELLABLE_STATES))
CANCEL_REASONS = frozenset({"cancelled", "stopped"})
CANCEL_CHANNEL = "retouch_job_cancels"  # NOTIFY channel; the payload is the holder's process name
# Jobs renewed or handed back per statement (bounded: each id is one parameter).
LEASE_BATCH = 500


def _not_held_by(skip: Collection[str]) -> tuple[str, tuple[str, ...]]:
    """A condition (with its parameters) leaving out the jobs that the processes `skip` hold: live
    processes whose clocks are too far off for their leases to be read (bot.jobs.leases)."""
    names = tuple(sorted(skip))  # a few: the fleet's processes
    if not names:
        return "", ()
    marks = ", ".join("?" for _ in names)
    return f" AND (owner IS NULL OR owner NOT IN ({marks}))", names


class LeaseLost(Exception):
    """Another process took the job over (this one's lease on it ran out): it must not act on it."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is no longer this process's")
        self.job_id = job_id


def held_by(job_id: str, owner: str) -> Body[None]:
    """Raise LeaseLost unless `owner` holds the job; the transaction's first write to the row.

    On PostgreSQL the row stays locked until the transaction ends, so a claim cannot take the job over
    between this check and the rest of the transaction: the claim waits (or skips the row) and finds
    whatever this transaction wrote. SQLite's single writer gives the same order.
    """
    held = yield execute("UPDATE jobs SET owner = owner WHERE id = ? AND owner = ?", (job_id, owner))
    if not held:
        raise LeaseLost(job_id)


def _fenced(sql: str, params: tuple[Any, ...], owner: str | None) -> tuple[str, tuple[Any, ...]]:
    """An `UPDATE … WHERE id = ?` that also requires `owner` to hold the job (when given)."""
    if owner is None:
        return sql, params
    return sql + " AND owner = ?", (*params, owner)


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
        owner: str | None = None,
        lease_expires_at: str | None = None,
    ) -> None:
        """Write a new job in state `queued` (nothing held yet), with what it needs to run, held by
        `owner` until `lease_expires_at`."""

        def body() -> Body[None]:
            now = self._db.timestamp()
            yield execute(
                "INSERT INTO jobs (id, guild_id, user_id, channel_id, state, model, quality, size, count, "
                "created_at, updated_at, spec, interaction_at, origin_message_id, deadline_at, "
                "files_expire_at, owner, lease_expires_at) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    owner,
                    lease_expires_at,
                ),
            )

        await self._db.transaction(body)

    async def set_job_state(
        self, job_id: str, state: str, *, owner: str | None = None, **fields: Any
    ) -> None:
        """Move a job to `state`, optionally setting other job columns (see `_JOB_FIELDS`). With
        `owner`, only while that process holds the job (else LeaseLost, nothing written)."""
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
        await self._write_owned(job_id, sql, (state, now, *fields.values(), *ended, job_id), owner)

    async def update_job(self, job_id: str, *, owner: str | None = None, **fields: Any) -> None:
        """Set job columns (see `_JOB_FIELDS`) without changing the state (with `owner`: as above)."""
        unknown = set(fields) - _JOB_FIELDS
        if unknown or not fields:
            raise ValueError(f"unknown or no job fields: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE jobs SET {assignments}, updated_at = ? WHERE id = ?"
        await self._write_owned(job_id, sql, (*fields.values(), self._db.timestamp(), job_id), owner)

    async def mark_submitted(
        self, job_id: str, provider: str, provider_job_id: str, *, owner: str | None = None
    ) -> None:
        """Record that `provider` accepted one call of the job (ids are appended: an emulated `count`
        makes one call per image) and move it to `submitted` (with `owner`: as in `set_job_state`)."""
        sql = (
            "UPDATE jobs SET state = 'submitted', provider = ?, provider_request_id = "
            "CASE WHEN provider_request_id IS NULL OR provider_request_id = '' THEN ? "
            "ELSE provider_request_id || ',' || ? END, updated_at = ? WHERE id = ?"
        )
        params = (provider, provider_job_id, provider_job_id, self._db.timestamp(), job_id)
        await self._write_owned(job_id, sql, params, owner)

    async def check_held(self, job_id: str, owner: str) -> None:
        """Raise LeaseLost unless `owner` holds the job now (before work outside the database, such as
        writing its result files into a folder other processes share)."""

        def body() -> Body[None]:
            yield from held_by(job_id, owner)

        await self._db.transaction(body)

    async def check_sending(self, job_id: str, owner: str, out: int) -> None:
        """Raise LeaseLost unless `owner` holds the job and it is still at a provider (`submitting`, or
        `submitted` when a sibling call of an emulated `count` was taken): the check just before a paid
        call leaves, which may have waited long for the provider's slot since the `submitting` write.
        It records that `out` calls are out (`calls_sent`, never lowered: a write tried again after its
        answer was lost, or one overtaken by a sibling's, counts nothing twice)."""
        sent = await self._db.write_one(
            "UPDATE jobs SET calls_sent = CASE WHEN calls_sent IS NULL OR calls_sent < ? THEN ? "
            "ELSE calls_sent END WHERE id = ? AND owner = ? AND state IN ('submitting', 'submitted')",
            (out, out, job_id, owner),
        )
        if not sent:
            raise LeaseLost(job_id)

    async def _write_owned(self, job_id: str, sql: str, params: tuple[Any, ...], owner: str | None) -> None:
        sql, params = _fenced(sql, params, owner)
        if not await self._db.write_one(sql, params) and owner is not None:
            raise LeaseLost(job_id)

    # -- leases (bot/jobs/leases.py) ----------------------------------------------------------------

    async def renew_leases(self, owner: str, job_ids: Collection[str], until: str) -> Renewal:
        """Extend `owner`'s lease on these jobs to `until`, in one transaction. Returns the ids it still
        holds (a job another process claimed meanwhile, or whose row does not exist, is not among them)
        and, from the same statement, the cancels other processes recorded for them
        (`request_cancel`): the holder hears of a cancel without a round trip of its own."""
        ids = sorted(job_ids)

        def body() -> Body[Renewal]:
            renewal = Renewal(set(), {})
            for start in range(0, len(ids), LEASE_BATCH):
                chunk = ids[start : start + LEASE_BATCH]
                marks = ", ".join("?" for _ in chunk)
                # Ended jobs too (harmless): what is missing was claimed by another process.
                rows = yield fetch_all(
                    f"UPDATE jobs SET lease_expires_at = ? WHERE owner = ? AND id IN ({marks}) "
                    "RETURNING id, cancel_requested_at, cancel_actor_id, cancel_reason",
                    (until, owner, *chunk),
                )
                for job_id, requested_at, actor_id, reason in rows:
                    renewal.held.add(job_id)
                    if requested_at is not None and reason is not None:
                        renewal.cancels[job_id] = CancelRequest(actor_id or 0, reason, requested_at)
            return renewal

        return await self._db.transaction(body) if ids else Renewal(set(), {})

    async def request_cancel(self, job_id: str, *, actor_id: int, reason: str) -> JobRow | None:
        """Record a cancel for whichever process holds the job (it acts on it at its next lease
        renewal, or on taking the job over). The first request stands: a later one changes nothing.
        Returns the row as it stands, or None when the job can no longer be cancelled (it ended, or
        its result exists) and nothing was written."""
        if reason not in CANCEL_REASONS:
            raise ValueError(f"unknown cancel reason {reason!r}")
        # Every right-hand side reads the row as it was, so the three columns are set together, once.
        sql = (
            "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, ?), "
            "cancel_actor_id = COALESCE(cancel_actor_id, ?), cancel_reason = COALESCE(cancel_reason, ?) "
            f"WHERE id = ? AND {_CANCELLABLE} RETURNING {_COLUMNS}"
        )

        def body() -> Body[JobRow | None]:
            rows = yield fetch_all(sql, (self._db.timestamp(), actor_id, reason, job_id))
            row = JobRow(**dict(rows[0])) if rows else None
            if row is not None and row.owner is not None:
                yield notify(CANCEL_CHANNEL, row.owner)  # the holder may hear it before its next round
            return row

        return await self._db.transaction(body)

    async def record_notice(self, job_id: str, channel_id: int, message_id: int) -> bool:
        """Remember where the job's public notice is, for whichever process ends the job. False (and
        nothing written) when the job is no longer live: it ended while the notice was being posted,
        and the poster removes the notice itself. A job ending at the same moment either commits first
        (this finds it ended) or finds the notice recorded when it looks (`take_notice`)."""
        written = await self._db.write_one(
            f"UPDATE jobs SET notice_channel_id = ?, notice_message_id = ? WHERE id = ? AND {_LIVE}",
            (channel_id, message_id, job_id),
        )
        return written == 1

    async def take_notice(self, job_id: str) -> tuple[int, int] | None:
        """Where the job's public notice is, for the one caller that removes or edits it: cleared in
        the same transaction, so two processes (the job's end and a Stop click) never both act on it."""

        def body() -> Body[tuple[int, int] | None]:
            row = yield fetch_one(
                "SELECT notice_channel_id, notice_message_id FROM jobs WHERE id = ?", (job_id,)
            )
            if row is None or row[1] is None:
                return None
            # Conditional on the id read: a concurrent taker (PostgreSQL re-checks after waiting for it)
            # clears nothing and gets None.
            taken = yield execute(
                "UPDATE jobs SET notice_message_id = NULL WHERE id = ? AND notice_message_id = ?",
                (job_id, row[1]),
            )
            return (int(row[0]), int(row[1])) if taken == 1 else None

        return await self._db.transaction(body)

    def on_cancel_requested(self, heard: Callable[[str], None]) -> None:
        """Call `heard(owner)` soon after a cancel is recorded for a job `owner` holds (PostgreSQL's
        LISTEN; best effort: the holder's lease renewal brings every request back in any case)."""
        self._db.listen(CANCEL_CHANNEL, heard)

    async def claim_jobs(
        self,
        owner: str,
        now: str,
        until: str,
        *,
        limit: int,
        every: bool = False,
        skip: Collection[str] = (),
    ) -> list[JobRow]:
        """Take up to `limit` live jobs for `owner` until `until`, oldest first: those nobody holds or
        whose lease ran out by `now`, or with `every` (one process on SQLite, at start-up) every live
        job another process name held; never those the processes `skip` hold. One statement:
        concurrent claimers each get different jobs."""
        spared, names = _not_held_by(skip)
        if every:
            free, params = "(owner IS NULL OR owner <> ?)" + spared, (owner, *names)
        else:
            free, params = _FREE + spared, (now, *names)
        # The outer WHERE repeats the test: PostgreSQL checks it again on a row another claimer changed.
        sql = (
            f"UPDATE jobs SET owner = ?, lease_expires_at = ? WHERE {_LIVE} AND {free} AND id IN ("
            f"SELECT id FROM jobs WHERE {_LIVE} AND {free} ORDER BY {_CREATION_ORDER} LIMIT ?"
            f"{self._db.skip_locked}) RETURNING rowid, {_COLUMNS}"
        )

        def body() -> Body[list[JobRow]]:
            rows = yield fetch_all(sql, (owner, until, *params, *params, limit))
            # RETURNING lists rows in no particular order.
            ordered = sorted(rows, key=lambda r: (r["created_at"], r["rowid"]))
            return [JobRow(**{k: v for k, v in dict(r).items() if k != "rowid"}) for r in ordered]

        return await self._db.transaction(body)

    async def claimable_jobs(self, now: str, *, skip: Collection[str] = ()) -> int:
        """How many live jobs a claim at `now` could take (nobody holds them, or their lease ran out),
        leaving out those the processes `skip` hold."""
        spared, names = _not_held_by(skip)
        row = await self._db.one(
            f"SELECT COUNT(*) FROM jobs WHERE {_LIVE} AND {_FREE}{spared}",
            (now, *names),
        )
        return 0 if row is None else int(row[0])

    async def lease_holders(self, now: str, *, besides: str) -> int:
        """How many processes other than `besides` hold a lease on a live job that still runs at `now`
        (live processes with work; an idle one holds none)."""
        row = await self._db.one(
            f"SELECT COUNT(DISTINCT owner) FROM jobs WHERE {_LIVE} AND owner IS NOT NULL AND owner <> ? "
            "AND lease_expires_at > ?",
            (besides, now),
        )
        return 0 if row is None else int(row[0])

    async def hand_back(self, owner: str, keep: Collection[str] = ()) -> int:
        """A clean stop: `owner` gives up every live job it holds except `keep` (still running here), so
        another process may claim them at once. Returns how many it gave up."""
        kept = sorted(keep)  # a few: the jobs still running after the drain
        marks = "".join(", ?" for _ in kept)[2:]
        spare = f" AND id NOT IN ({marks})" if kept else ""
        return await self._db.write_one(
            f"UPDATE jobs SET owner = NULL, lease_expires_at = NULL WHERE owner = ? AND {_LIVE}{spare}",
            (owner, *kept),
        )

    async def next_lease_expiry(self, owner: str, *, skip: Collection[str] = ()) -> str | None:
        """When the first lease another process (not one of `skip`) holds on a live job runs out (None:
        no such lease)."""
        spared, names = _not_held_by(skip)
        row = await self._db.one(
            f"SELECT MIN(lease_expires_at) FROM jobs WHERE {_LIVE} AND owner IS NOT NULL AND owner <> ?"
            + spared,
            (owner, *names),
        )
        return None if row is None else row[0]

    async def overdue_jobs(self, now: dt.datetime) -> list[JobRow]:
        """Jobs still waiting or at a provider whose deadline has passed (the watchdog's work)."""
        rows = await self._db.all(
            _SELECT_JOBS + "WHERE state IN ('reserved', 'submitting', 'submitted') "
            f"AND deadline_at IS NOT NULL AND deadline_at < ? ORDER BY {_CREATION_ORDER}",
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

    async def result_channel_of(self, message_id: int) -> int | None:
        """The channel of the server message `message_id` that is a job's result (not one sent by DM),
        or None when it is none (or its job row is gone: JOB_HISTORY_DAYS)."""
        row = await self._db.one(
            "SELECT result_channel_id FROM jobs WHERE result_message_id = ? "
            "AND result_channel_id IS NOT NULL AND (delivered_via IS NULL OR delivered_via <> 'dm') LIMIT 1",
            (message_id,),
        )
        return None if row is None else int(row["result_channel_id"])

    async def recent_jobs(self, guild_id: int, user_id: int, limit: int = 5) -> list[JobRow]:
        rows = await self._db.all(
            _SELECT_JOBS + "WHERE guild_id = ? AND user_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (guild_id, user_id, limit),
        )
        return [JobRow(**dict(r)) for r in rows]

    async def jobs_in_states(self, states: tuple[str, ...]) -> list[JobRow]:
        marks = ", ".join("?" for _ in states)
        rows = await self._db.all(
            _SELECT_JOBS + f"WHERE state IN ({marks}) ORDER BY {_CREATION_ORDER}", states
        )
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
