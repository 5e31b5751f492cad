"""Start-up and shutdown: recovery, quarantine of unreadable rows, the sweep of old files, the watchdog,
and the drain that stops taking work without losing any.

Part of `JobEngine` (a mixin over `JobLeases`: jobs claimed from a dead process are resumed by the same
`_adopt` as those found at start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from dataclasses import replace
from typing import Any

from bot.errors import new_reference
from bot.jobs.core import ETA_WINDOW, SHUTDOWN_ABORT_WAIT_SECONDS, ActiveJob
from bot.jobs.leases import CLAIM_BATCH, JobLeases
from bot.jobs.model import JobInfo, JobSpec, JobState, JobTimedOut, db_time
from bot.messages import CANCELLED, RESTARTED_BEFORE_START, RESTARTED_MID_SUBMIT, SUSPENDED_IN_QUEUE
from bot.storage.jobs import LIVE_STATES, TERMINAL_STATES, JobRow, LeaseLost
from bot.storage.ledger import LedgerConflict
from bot.tasks import woken

log = logging.getLogger(__name__)

WATCHDOG_INTERVAL_SECONDS = 5.0
SWEEP_INTERVAL_SECONDS = 3600.0
# A job folder with no row is left alone until it is this old (by the file system's clock). `submit`
# writes a job's files before its row, and processes sharing DATA_DIR (PostgreSQL) cannot see each
# other's jobs being created: without this, one process's sweep could delete the folder another has
# just written. An hour is far longer than any insert takes, even behind a stalled database.
ORPHAN_GRACE_SECONDS = 3600.0
# What became of the live jobs a process claimed (`_adopt`): the counts `recover` and lease rounds report.
ADOPTED = ("requeued", "resumed", "delivering", "released", "quarantined", "cancelled")


class JobRecovery(JobLeases):
    """JobEngine's start and stop: pick up what the last process left; stop overdue jobs; sweep old
    files; drain at shutdown."""

    async def start(self) -> None:
        """Recover what the last process left, then run the watchdog (and, on a shared database, the
        job leases: bot.jobs.leases). Call once, before commands."""
        await self.recover()
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="retouch-watchdog")
        self._start_leases()

    async def drain(self, grace: float) -> int:
        """Stop taking jobs; let running ones finish for up to `grace` seconds; returns how many were
        aborted and refunded.

        Nothing durable is lost: queued jobs keep their place (and their hold) for the next start;
        jobs a resumable provider accepted are left `submitted` and resumed after the restart; only
        a synchronous provider call still running is aborted and released.
        """
        self.accepting = False
        await self._stop_watchdog()
        for handle in self._redeliveries.values():  # rows stay `completed`: the next start posts them
            handle.cancel()
        self._redeliveries.clear()
        # Out of the queue all at once, before the first message is awaited: a lease round meanwhile
        # (which may drop a lost job and look at the queue) must find the queue and the jobs agree.
        stopped = [self._jobs.pop(job_id) for job_id in self._waiting if job_id in self._jobs]
        self._waiting.clear()
        for job in stopped:
            await self._tell_live(job, SUSPENDED_IN_QUEUE)
        if self._feedback_task is not None:
            self._feedback_task.cancel()
        await woken(self._idle, grace)
        # A job past its provider is left to post its result (or to be delivered after the restart).
        left = [self._jobs[j] for j in self._running if j in self._jobs and not self._jobs[j].finishing]
        aborted = 0
        for job in left:
            resumable = (
                bool(job.submitted) and job.provider is not None and self.router.resumable(job.provider)
            )
            job.abort_reason = "suspend" if resumable else "shutdown"
            aborted += not resumable
            job.abort.set()
        if left:
            log.warning(
                "shutdown: stopping %d unfinished job(s); %d refunded, the rest resume after the restart",
                len(left),
                aborted,
            )
            await woken(self._idle, SHUTDOWN_ABORT_WAIT_SECONDS)
        await self._flush_background()
        # A last try; what is still owed has no files left, so whoever recovers its row releases it.
        await self.settle_owed()
        # Leases were renewed while jobs finished; what is left here now goes to the other processes.
        await self._stop_leases()
        with contextlib.suppress(Exception):  # they run out by themselves within one lease
            await self.hand_back()
        return aborted

    async def recover(self) -> dict[str, int]:
        """Pick up the live jobs the last process left, before new commands are taken: every one with
        SQLite; with PostgreSQL, this process's share of those no live process holds (`take_over`).

        * `queued` (no hold yet) and `submitting` (a call whose outcome is unknown; one whose call
          never left is queued again, as `reserved`) are released and
          the user is told; * `reserved` jobs are queued again in their old order; * `submitted`
          jobs resume polling (released like `submitting` if the provider cannot resume);
          * `completed` jobs are delivered from the stored result (after checking whether a delivery
          the crash interrupted had landed). A job a member cancelled on another process before it
          stopped (PostgreSQL) is cancelled instead of queued or resumed. Then holds without a live job
          are released, and job folders past their retention are deleted.
        """
        counts = dict.fromkeys((*ADOPTED, "orphan_holds", "swept"), 0)
        self._durations.extend(await self.storage.jobs.recent_run_seconds(ETA_WINDOW))
        # Several processes (PostgreSQL): this one's share of the jobs nobody holds or whose holder
        # stopped renewing, as a lease round takes them, so a fleet starting together splits what the
        # last one left; the first lease round comes at once for the rest (`_keep_leases`).
        adopted = await (self.take_over() if self.shared else self._take_every_job())
        for key, value in adopted.items():
            counts[key] += value
        counts["orphan_holds"] = await self._release_orphan_holds()
        for guild_id, user_id, held, open_ in await self.storage.reports.held_mismatches():
            log.error(
                "recovery: account %s/%s holds %d credits but its open jobs hold %d",
                guild_id,
                user_id,
                held,
                open_,
            )
        try:
            counts["swept"] = await self.sweep()
        except Exception:
            log.exception("recovery: the sweep failed; the watchdog runs it again within the hour")
        if any(counts.values()):
            log.info("recovery: %s", ", ".join(f"{k} {v}" for k, v in counts.items() if v))
        self._pump()
        return counts

    async def _take_every_job(self) -> dict[str, int]:
        """One process on its own database (SQLite): every live job is this one's now."""
        counts = dict.fromkeys(ADOPTED, 0)
        while True:
            now, until = db_time(self.storage.now()), self.lease_until()
            claimed = await self.storage.jobs.claim_jobs(
                self.owner, now, until, limit=CLAIM_BATCH, every=True
            )
            for key, value in (await self._adopt(claimed)).items():
                counts[key] += value
            if len(claimed) < CLAIM_BATCH:
                return counts

    async def _adopt(self, rows: list[JobRow]) -> dict[str, int]:
        """Resume jobs this process just claimed, whether at start-up or from a dead process: the one
        code path for both. Returns how many ended up requeued, resumed, delivering, released,
        quarantined or cancelled (a cancel recorded for the last holder: `JobLeases._honour_cancel`)."""
        counts = dict.fromkeys(ADOPTED, 0)
        # Its lease lapsed here (a round whose renewal answered late), but this process still holds it:
        # runs it, will deliver it again, or owes its release. Resumed as well, it would run twice.
        held = self.held_jobs()
        for row in rows:
            if row.id in held:
                continue
            try:
                outcome = await self._recover_one(row)
            except Exception as exc:
                # One unreadable row (hand-edited, written by a broken build, a damaged file) must not
                # keep every other job and the bot itself from starting.
                outcome = await self._quarantine(row, exc)
            request = row.cancel_request
            if request is not None and outcome in ("requeued", "resumed"):
                # A member cancelled it on another process before its holder stopped: cancelled here
                # instead, by the local cancel's path, before the queue can start it.
                self._honour_cancel(self._jobs[row.id], request)
                outcome = "cancelled"
            counts[outcome] += 1
        for how, count in counts.items():
            if count:
                self._notify("jobs_adopted", how, count)
        if rows:
            self._pump()
        return counts

    async def _recover_one(self, row: JobRow) -> str:
        job = ActiveJob(JobInfo.of(row), row.model, provider=row.provider)
        job.adopt_row(row)
        ended = await asyncio.to_thread(self._ended_note, row.id)
        if ended is not None:
            return await self._settle_as_ended(row, job, ended)
        spec = JobSpec.from_json(row.spec) if row.spec else None
        if spec is not None and len(row.provider_job_ids) > spec.count:
            # More ids than the job could make calls (one per image at most): a release before ids were
            # checked recorded one with a comma in it whole, and the comma that joins a job's ids splits
            # it into ids the provider never gave. Not polled (nor sent again): released below, as a
            # job whose outcome is unknown.
            log.warning("recovery: job %s: its provider job ids cannot be told apart; not followed", row.id)
            row = replace(row, provider_request_id=None)
            job.adopt_row(row)
        usable = spec is not None and await asyncio.to_thread(self.files.exists, row.id, spec.input_names)
        if row.state == JobState.SUBMITTING and row.calls_sent == 0 and usable:
            # Its call never left (it waited for the provider's slot): no provider has it, so it is
            # queued again like a reserved job instead of being released as an unknown outcome. The
            # process that had it cannot send it any more: the check as a call leaves needs its lease.
            # Queued, it waits for its queue deadline, not for the run's it was given as it started
            # (often much the sooner): the watchdog would end it as having waited too long in the queue.
            queued_until = self.queued_until(job.info.created_at)
            await self.storage.jobs.set_job_state(
                row.id, JobState.RESERVED, owner=self.owner, deadline_at=queued_until
            )
            row = replace(row, state=JobState.RESERVED, deadline_at=queued_until)
        if row.state == JobState.RESERVED and usable:
            self._jobs[row.id] = job
            self._waiting.append(row.id)
            return "requeued"
        resumable = row.provider is not None and self.router.resumable(row.provider)
        if row.state == JobState.SUBMITTED and usable and row.provider_job_ids and resumable:
            self._jobs[row.id] = job
            self._launch(job)  # it already holds a slot at the provider: no queueing behind new jobs
            return "resumed"
        if row.state == JobState.COMPLETED and row.result:
            _check_record(json.loads(row.result))
            self._jobs[row.id] = job
            self._launch(job)
            return "delivering"
        text = (
            RESTARTED_BEFORE_START
            if row.state in (JobState.QUEUED, JobState.RESERVED)
            else RESTARTED_MID_SUBMIT
        )
        if row.cancel_request is not None:  # released either way: the answer to the member's cancel
            text = CANCELLED
        code = (
            "restart_before_start"
            if row.state in (JobState.QUEUED, JobState.RESERVED)
            else "restart_outcome_unknown"
        )
        # A call that was out (or a job a provider had) may be billed: the member pays nothing, but
        # the budgets count it, as for a call cut off while the process ran (`_maybe_billed`).
        sent = row.state in (JobState.SUBMITTING, JobState.SUBMITTED) and row.provider is not None
        absorbed = (await self._provider_price(job) or 0) if sent else 0
        await self.storage.ledger.settle_released(
            row.id,
            JobState.CANCELLED,
            error_code=code,
            error_ref=new_reference(),
            absorbed=absorbed,
            owner=self.owner,
        )
        await asyncio.to_thread(self.files.remove, row.id)
        await self.storage.jobs.forget_job_details(row.id)  # the prompt goes with the images
        self._finished(job, JobState.CANCELLED, row.provider, 0, code)
        log.warning("recovery: job %s was %s when the bot stopped; released (%s)", row.id, row.state, code)
        self._spawn(self._say(job, text))
        return "released"

    async def _settle_as_ended(self, row: JobRow, job: ActiveJob, ended: dict[str, Any]) -> str:
        """Make the settlement a process decided and told its member before it stopped, silently (they
        were told), with that end's state, code and reference. Still failing, it is owed here in turn
        (made by the watchdog's rounds), never quarantined: that would tell the member another story."""
        code, ref = str(ended.get("code") or "owed"), str(ended.get("ref") or new_reference())
        charged = ended.get("charged")

        async def settle() -> object:
            if isinstance(charged, int) and charged > 0:
                return await self.storage.ledger.settle_cancelled_at_provider(
                    row.id, charged, error_code=code, error_ref=ref, owner=self.owner
                )
            billed, sent = ended.get("billed"), ended.get("sent")
            job.billed = billed if isinstance(billed, int) else None
            if isinstance(sent, int) and sent > 0:  # the calls the ending process saw leave
                job.calling, job.sent_before = sent, 0
            absorbed = await self._maybe_billed(job, bool(ended.get("billable")))
            state = JobState.CANCELLED if ended.get("state") == JobState.CANCELLED else JobState.FAILED
            return await self.storage.ledger.settle_released(
                row.id, state, error_code=code, error_ref=ref, absorbed=absorbed, owner=self.owner
            )

        try:
            await settle()
        except (LeaseLost, LedgerConflict):
            raise
        except Exception as exc:
            log.warning(
                "recovery: job %s ended with its settlement owed, which fails again (%s)", row.id, exc
            )
            self._owed[row.id] = settle
            return "released"
        await self._forget(row.id)
        log.warning(
            "recovery: job %s had ended (%s, ref %s), its settlement owed; made now", row.id, code, ref
        )
        return "released"

    async def _quarantine(self, row: JobRow, exc: Exception) -> str:
        """Set aside a job whose row cannot be recovered: release its hold, mark it failed with the
        code `quarantined`, keep its row and files for the admin, and say so in the log."""
        ref = new_reference()
        self._jobs.pop(row.id, None)
        with contextlib.suppress(ValueError):
            self._waiting.remove(row.id)
        log.error(
            "recovery: job %s (state %s) is unreadable and was quarantined (ref %s): %s",
            row.id,
            row.state,
            ref,
            type(exc).__name__,
            exc_info=exc,
        )
        try:
            await self.storage.ledger.settle_released(
                row.id, JobState.FAILED, error_code="quarantined", error_ref=ref, owner=self.owner
            )
        except Exception as settle_exc:
            log.error("recovery: could not settle quarantined job %s: %s", row.id, type(settle_exc).__name__)
        with contextlib.suppress(Exception):
            job = ActiveJob(JobInfo.of(row), str(row.model))
            self._finished(
                job, JobState.FAILED, row.provider, 0, "quarantined"
            )  # metrics and the audit channel
            self._spawn(self._say(job, f"{RESTARTED_MID_SUBMIT} (ref `{ref}`)"))
        return "quarantined"

    async def _release_orphan_holds(self) -> int:
        """Release holds whose job is gone or already ended, so every account's `held` is exactly
        the sum of its live jobs' reservations."""
        released = 0
        for hold in await self.storage.reports.open_holds():
            if hold.job_state in LIVE_STATES:
                continue
            try:
                await self.storage.ledger.release(hold.job_id, reason="orphan_hold")
            except LedgerConflict:
                continue
            released += 1
            log.warning(
                "recovery: released an orphaned hold of %d credits (job %s)", hold.amount, hold.job_id
            )
        return released

    async def sweep(self) -> int:
        """Delete job folders whose job is gone (at least ORPHAN_GRACE_SECONDS old), or ended and past
        its retention (with the job's prompt and options), then prune history older than
        JOB_HISTORY_DAYS. Returns how many folders went."""
        now = db_time(self.storage.now())
        removed = 0
        fs_now: float | None = None  # the file system's clock, read once, for the first row-less folder
        for job_id in await asyncio.to_thread(self.files.job_ids):
            if job_id in self._jobs or job_id in self._creating:
                continue
            row = await self.storage.jobs.get_job(job_id)
            if row is None:
                if fs_now is None:
                    fs_now = await asyncio.to_thread(self.files.fs_now)
                age = await asyncio.to_thread(self.files.age, job_id, fs_now)
                expired = age is not None and age >= ORPHAN_GRACE_SECONDS  # else: its row may be coming
            else:
                expired = row.state in TERMINAL_STATES and (
                    row.files_expire_at is None or row.files_expire_at < now
                )
            if expired:
                await asyncio.to_thread(self.files.remove, job_id)
                if row is not None:  # the prompt goes with the images
                    await self.storage.jobs.forget_job_details(job_id)
                removed += 1
        # Rows whose folder is already gone (failed, cancelled, refused) or was never written.
        await self.storage.jobs.forget_expired_details()
        history = self.storage.now() - dt.timedelta(days=self.settings.job_history_days)
        jobs, ledger = await self.storage.jobs.prune_history(history)
        if jobs or ledger:
            log.info("retention: %d old job row(s) deleted, %d ledger row(s) lost their detail", jobs, ledger)
        await self.storage.ledger.prune_spend_marks()
        return removed

    # -- the watchdog --------------------------------------------------------------------------------

    async def watchdog_tick(self) -> int:
        """Make the releases still owed (`settle_owed`), then cancel (and release) every live job past
        its deadline; returns how many were stopped."""
        await self.settle_owed()
        stopped = 0
        for row in await self.storage.jobs.overdue_jobs(self.storage.now()):
            job = self._jobs.get(row.id)
            if job is None:
                continue
            if row.id in self._waiting:
                self._waiting.remove(row.id)
                # Not cut off with this round (a stop cancels the watchdog): out of the queue, it is settled.
                await asyncio.shield(self._end_dequeued(job, JobTimedOut(queued=True)))
            elif not job.abort.is_set():
                log.warning(
                    "watchdog: job %s is past its deadline at %s; cancelling it", row.id, row.provider
                )
                job.abort_reason = "timeout"
                job.abort.set()
            else:
                continue
            stopped += 1
        if stopped:
            self._pump()
        return stopped

    async def settle_owed(self) -> int:
        """Make the releases of jobs that ended here while their settlement kept failing (`_owed`), each
        once: a release is idempotent, so one whose earlier try committed and lost its answer is found
        made, and one the job's row shows captured is refused (never both). Returns how many were made."""
        made = 0
        for job_id, release in list(self._owed.items()):
            try:
                await release()
            except LeaseLost:
                log.warning("job %s: another process took it over before its release; it settles it", job_id)
            except LedgerConflict:
                log.error("job %s: captured, although it ended here unpaid; its release is dropped", job_id)
            except Exception as exc:
                log.info("job %s: its release failed again (%s); the next round tries", job_id, exc)
                continue
            else:
                made += 1
                log.info("job %s: released by the watchdog, its settlement having failed", job_id)
                await self._forget(job_id)
            self._owed.pop(job_id, None)
        return made

    async def _watch(self) -> None:
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_SECONDS)
            try:
                await self.watchdog_tick()
                if time.monotonic() - last_sweep >= SWEEP_INTERVAL_SECONDS:
                    last_sweep = time.monotonic()
                    await self.sweep()
            except Exception:
                log.exception("watchdog round failed")

    async def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None


def _check_record(record: Any) -> None:
    """Raise ValueError unless `record` is a stored result the engine can deliver (see `_complete`)."""
    files = record.get("files") if isinstance(record, dict) else None
    usable = isinstance(files, list) and all(
        isinstance(f, dict) and isinstance(f.get("disk"), str) and isinstance(f.get("filename"), str)
        for f in files
    )
    if (
        not usable
        or not isinstance(record.get("charged"), int)
        or not isinstance(record.get("provider"), str)
    ):
        raise ValueError("the stored result is not readable")
