"""The job engine's queue and public API: submit, cancel, and the queue's admission and order.

`JobEngine` is one object assembled from mixins, one per concern (see bot.jobs.core): the queue,
admission and the public API live here; the provider call in bot.jobs.running, the stored result
in bot.jobs.results, delivery in bot.jobs.delivery, endings in bot.jobs.endings, and start-up,
shutdown, recovery and the watchdog in bot.jobs.recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import secrets
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable

from bot import messages
from bot.errors import InsufficientCredits, RetouchError, ShuttingDown
from bot.jobs.core import ActiveJob
from bot.jobs.delivery import JobDelivery
from bot.jobs.endings import JobEndings
from bot.jobs.model import (
    CancelAnswer,
    Delivery,
    JobCancelled,
    JobInfo,
    JobSpec,
    JobState,
    JobStatus,
    LiveJob,
    NotAllowed,
    Origin,
    SuspendJob,
    Ticket,
    db_time,
)
from bot.jobs.recovery import JobRecovery
from bot.jobs.results import JobResults
from bot.jobs.running import ProviderRun
from bot.messages import CANCELLED_AT_PROVIDER, SUSPENDED_AT_PROVIDER
from bot.storage.jobs import TERMINAL_STATES, JobRow, LeaseLost
from bot.storage.ledger import JobNotQueued, NotEnoughCredits
from bot.tasks import woken

log = logging.getLogger(__name__)

CANCEL_WAIT_SECONDS = 15.0  # how long a cancel waits for a running job to stop

Reserve = Callable[[str], Awaitable[object]]


class JobEngine(JobRecovery, JobDelivery, JobEndings, JobResults, ProviderRun):
    """Runs edit jobs from the database: queue, limits, provider calls, delivery, recovery, watchdog.

    One instance per process. `submit` admits a job (its credits are held at once) and returns; the
    job's `LiveJob` (or, without one, the `Delivery`) hears how it goes. `recover` (start-up) picks up
    every live job the last process left behind, `drain` (shutdown) stops taking work without losing any.
    """

    # -- public API -------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Jobs running now (at a provider or being delivered)."""
        return len(self._running)

    @property
    def queued(self) -> int:
        """Jobs waiting for a slot."""
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def intake(self) -> AsyncIterator[None]:
        """A command's turn (`async with`) from downloading its images until `submit` has stored them.

        At most INTAKE_AT_ONCE commands have images in memory before their job is queued; the rest of
        a burst waits here with nothing downloaded. A queued job holds only the names of its files
        (bot.jobs.files), read when it starts (`ProviderRun._request`), so a process's memory follows
        the turns and the jobs running, not the queue. Raises ShuttingDown once the engine stops taking
        jobs (a command that waited is not downloaded for nothing).
        """
        async with self.intake_turns.turn():
            if not self.accepting:
                raise ShuttingDown()
            yield

    def attach_delivery(self, delivery: Delivery) -> None:
        """Set how results and notices reach users outside a live command (the Discord layer)."""
        self.delivery = delivery

    async def submit(
        self,
        spec: JobSpec,
        files: dict[str, bytes],
        *,
        guild_id: int,
        user_id: int,
        channel_id: int | None,
        reserve: Reserve,
        live: LiveJob | None = None,
        origin: Origin | None = None,
    ) -> Ticket:
        """Store the job and its files, hold its credits (`reserve(job_id)`), and queue it.

        Raises InsufficientCredits or the RetouchError `reserve` raised (nothing is held then).
        """
        if not self.accepting:
            raise ShuttingDown()
        origin = origin or Origin()
        job_id = secrets.token_hex(8)
        # Tracked until it is in `_jobs`: its lease is renewed, and a clean stop does not hand it back,
        # while its credits are checked. Handed back then, another process claimed the `queued` row and
        # ended it ("restarted before your edit could start") as this one went on to hold and run it.
        self._creating.add(job_id)
        try:
            info = await self._create(job_id, spec, files, guild_id, user_id, channel_id, origin)
            job = ActiveJob(info, spec.model, live=live)
            self._notify("job_started", job_id, spec.model)
            await self._admit(job, reserve)
            self._jobs[job_id] = job
            self._waiting.append(job_id)
        finally:
            self._creating.discard(job_id)
        self._pump()
        position = self._position(job_id)
        return Ticket(job_id, position, self.eta(position) if position else None)

    async def _create(
        self,
        job_id: str,
        spec: JobSpec,
        files: dict[str, bytes],
        guild_id: int,
        user_id: int,
        channel_id: int | None,
        origin: Origin,
    ) -> JobInfo:
        """Write the job's files, then its `queued` row held by this process (the files go again if the
        row cannot be written); what the engine keeps of it."""
        now = self.storage.now()
        try:
            await asyncio.to_thread(self.files.write, job_id, files)
            await self.storage.jobs.create_job(
                job_id,
                guild_id=guild_id,
                user_id=user_id,
                channel_id=channel_id,
                model=spec.model,
                quality=spec.quality,
                size=spec.size,
                count=spec.count,
                spec=spec.to_json(),
                interaction_at=db_time(origin.interaction_at) if origin.interaction_at else None,
                origin_message_id=origin.message_id,
                deadline_at=self.queued_until(now),
                files_expire_at=db_time(now + dt.timedelta(hours=self.settings.input_retention_hours)),
                owner=self.owner,
                lease_expires_at=self.lease_until(),
            )
        except BaseException:
            await asyncio.to_thread(self.files.remove, job_id)
            raise
        return JobInfo(job_id, guild_id, user_id, channel_id, now, origin.interaction_at, origin.message_id)

    async def cancel(
        self, job_id: str, *, actor_id: int, can_manage: bool, quiet: bool = True
    ) -> CancelAnswer:
        """Cancel a job for its requester or a member who can manage messages; what it did, and what
        to say to whoever asked.

        Before a provider accepted the job (gave it an id) the hold is released in full. After that
        its cancel call is made when it has one, and the job is charged what that provider charges
        for it (it bills us whether or not the result is wanted), so it also counts toward cooldowns
        and budgets; a synchronous call counts as accepted once it has been sent. A moderator's stop
        (someone other than the requester) is never charged to the member. A job whose result exists
        is not cancelled (it is being posted).
        With `quiet`, the caller shows the answer instead of the job's progress message, unless the
        answer is `pending`: the job's end then tells the member itself.
        With a shared database the job may be held by another process: the cancel is then recorded on
        its row, that process (or the one that takes the job over) cancels it by this same path and
        tells the member, and the answer says when at the latest (`_cancel_elsewhere`).
        """
        row = await self.storage.jobs.get_job(job_id)
        if row is None:
            raise RetouchError(messages.JOB_UNKNOWN, code="unknown_job")
        if actor_id != row.user_id and not can_manage:
            raise NotAllowed(messages.CANCEL_NOT_ALLOWED, code="not_allowed")
        if row.state in TERMINAL_STATES or row.state == JobState.COMPLETED:
            return _too_late(row.state)
        # The requester's own cancel is charged once a provider has the job; a moderator's stop is
        # not the member's doing, so it stays free to them (the budgets still count what it cost).
        reason = "cancelled" if actor_id == row.user_id else "stopped"
        if job_id in self._owed:  # ended here, its release still to be made: its row looks live
            return _too_late(JobState.CANCELLED)
        job = self._jobs.get(job_id)
        # Held elsewhere, by nobody (handed back), or lost by this process to a takeover it has not
        # heard of yet: only the holder may act on it. One process (SQLite) holds every live job.
        if self.shared and (job is None or row.owner != self.owner):
            return await self._cancel_elsewhere(row, actor_id, reason)
        if job is None:
            return _too_late(row.state)
        if self._halt(job, reason, quiet=quiet):
            await asyncio.shield(self._end_dequeued(job))
            return CancelAnswer(JobCancelled().user_message, cancelled=True)
        if job.task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(job.task), CANCEL_WAIT_SECONDS)
            if not job.task.done():
                # Still stopping (a provider's cancel call or a poll that will not end): its end, whenever
                # it comes, is told on the progress message, not left to this answer.
                job.quiet = False
                return CancelAnswer(messages.CANCELLING_SLOWLY, pending=True)
        return await self._cancelled_here(job)

    async def _cancelled_here(self, job: ActiveJob) -> CancelAnswer:
        """How a job this process stopped ended, read back from its row."""
        if job.id in self._owed and job.ended_with:  # ended: its row waits for the watchdog's round
            # Cancelled, or failed on its own before the cancel took (said as it was, not as a stop).
            cancelled = job.ended_state == JobState.CANCELLED
            return CancelAnswer(job.ended_with, cancelled=cancelled, charged=job.charged)
        after = await self.storage.jobs.get_job(job.id)
        if after is not None and after.state == JobState.CANCELLED and after.captured:
            charged = int(after.captured)
            return CancelAnswer(
                CANCELLED_AT_PROVIDER.format(charged=charged), cancelled=True, charged=charged
            )
        if after is not None and after.state == JobState.CANCELLED:
            return CancelAnswer(JobCancelled().user_message, cancelled=True)
        if after is not None and after.state == JobState.FAILED and job.ended_with:
            # It failed on its own before the cancel took: the cancel silenced its own message.
            return CancelAnswer(job.ended_with)
        return _too_late(after.state if after else JobState.DELIVERED)

    def _halt(self, job: ActiveJob, reason: str, *, quiet: bool) -> bool:
        """Stop a job held here for a cancel (`reason`: 'cancelled' or 'stopped'), without awaiting, so
        nothing starts it meanwhile. A waiting job leaves the queue: True, and the caller ends it with
        `_end_dequeued`. A running one is told to abort: its own task makes the provider's cancel call
        (bot.jobs.running), then settles it and tells the member (bot.jobs.endings)."""
        job.quiet = quiet
        if job.id in self._waiting:
            self._waiting.remove(job.id)
            return True
        job.abort_reason = job.abort_reason or reason
        job.abort.set()
        return False

    def _end_dequeued(self, job: ActiveJob, exc: BaseException | None = None) -> asyncio.Future[None]:
        """End a job `_halt` (or the watchdog) took out of the queue: released in full (no provider had
        it), for `exc` (default: a cancel). It runs in a task of its own, which a caller awaits shielded:
        the caller (a Cancel click's interaction, the watchdog's round) may be cancelled while the release
        is written (the process stopping, a locked database's retries), and a job cut off there was
        neither queued nor settled, its credits held, until the next start queued, ran and charged it."""
        return self._spawn(self._release_dequeued(job, exc or JobCancelled()))

    async def _release_dequeued(self, job: ActiveJob, exc: BaseException) -> None:
        await self._end(job, exc)
        self._jobs.pop(job.id, None)
        self._pump()

    async def _cancel_elsewhere(self, row: JobRow, actor_id: int, reason: str) -> CancelAnswer:
        """Record a cancel for the process holding the job (bot/jobs/leases.py: it acts on it at its next
        lease round, or its successor on taking the job over); returns what the member is told now.
        A job its holder ended while its settlement is owed still looks live on its row: its note says
        it ended (the holder would drop the request, and the member wait for a stop already made)."""
        if await asyncio.to_thread(self._ended_note, row.id) is not None:
            return _too_late(JobState.CANCELLED)
        recorded = await self.storage.jobs.request_cancel(row.id, actor_id=actor_id, reason=reason)
        if recorded is None:  # it ended, or its result came, since it was read
            after = await self.storage.jobs.get_job(row.id)
            return _too_late(after.state if after else JobState.DELIVERED)
        log.info("job %s: %s by %s, recorded for its holder %s", row.id, reason, actor_id, recorded.owner)
        return CancelAnswer(messages.cancelling_elsewhere(self.cancel_within(recorded)), pending=True)

    def eta(self, position: int) -> float | None:
        """Seconds until a job at `position` in the queue has its result (median of recent runs)."""
        if not self._durations or position <= 0:
            return None
        median = statistics.median(self._durations)
        rounds = math.ceil(position / self._capacity())
        return median * (rounds + 1)

    # -- admission and the queue -----------------------------------------------------------------

    async def _admit(self, job: ActiveJob, reserve: Reserve) -> None:
        """Hold the job's credits; on refusal end it as failed (nothing held) and raise. A job another
        process ended meanwhile is left as that process ended it (RetouchError `taken_over`)."""
        try:
            await reserve(job.id)
        except JobNotQueued:
            # Another process took it over (this one's lease ran out while the credits were checked)
            # and ended it: that process settled it and told the member; nothing was held here.
            log.warning("job %s: ended by another process before its credits were held", job.id)
            raise RetouchError(messages.TAKEN_OVER_ELSEWHERE, code="taken_over") from None
        except NotEnoughCredits as exc:
            await self._refused(job, "insufficient_credits")
            raise InsufficientCredits(exc.needed, exc.available) from None
        except RetouchError as exc:
            await self._refused(job, exc.code)
            raise
        except BaseException:
            await self._refused(job, "internal")
            raise

    async def _refused(self, job: ActiveJob, code: str) -> None:
        await self.storage.ledger.settle_released(job.id, JobState.FAILED, error_code=code, owner=self.owner)
        await asyncio.to_thread(self.files.remove, job.id)
        await self.storage.jobs.forget_job_details(job.id)  # the prompt goes with the images
        self._finished(job, JobState.FAILED, None, 0, code)

    def _position(self, job_id: str) -> int:
        order = self._queue_order()
        return order.index(job_id) + 1 if job_id in order else 0

    def _queue_order(self) -> list[str]:
        """Waiting jobs in the order they start: servers, and members within a server, take turns."""
        waiting = ((j, self._jobs[j].info.guild_id, self._jobs[j].info.user_id) for j in self._waiting)
        running = [(job.info.guild_id, job.info.user_id) for j in self._running if (job := self._jobs.get(j))]
        return self._turns.order(waiting, running)

    def _capacity(self) -> int:
        """Jobs that may run at once: MAX_CONCURRENT_JOBS, or fewer while the providers' adaptive limits
        together allow fewer calls (the rest wait here, in fair order, rather than at a provider)."""
        return max(1, min(self.max_concurrent, self.router.capacity()))

    def _pump(self) -> None:
        """Start waiting jobs while slots are free (global, then per user), then show the waiting jobs' lines
        (place and estimate) that changed."""
        if self.accepting:
            capacity = self._capacity()
            for job_id in self._queue_order():
                if len(self._running) >= capacity:
                    break
                job = self._jobs[job_id]
                mine = sum(1 for r in self._running if self._jobs[r].info.user_id == job.info.user_id)
                if mine >= self.max_per_user:
                    continue
                self._waiting.remove(job_id)
                self._turns.started(job.info.guild_id, job.info.user_id)
                self._launch(job)
        order = self._queue_order()
        self.queue_feedback.retain(set(order))
        for index, job_id in enumerate(order, start=1):
            # Offered whether or not the place moved: the estimate also follows the recent run times
            # and the providers' capacity. The throttle drops a line that reads as the one shown.
            eta = self.eta(index)
            text = messages.queue_position(index, eta)
            status = JobStatus(job_id, "queued", text, True, index, eta)
            self.queue_feedback.offer(job_id, text, status, priority=index)
        if self.queue_feedback.pending:
            self._feedback_offered.set()
            if self._feedback_task is None or self._feedback_task.done():
                self._feedback_task = asyncio.ensure_future(self._send_queue_feedback())

    async def _send_queue_feedback(self) -> None:
        """Send waiting jobs' new lines as the throttle allows, until none is pending."""
        while True:
            self.queue_feedback.retain(set(self._waiting))
            wait = self.queue_feedback.next_in()
            if wait is None:
                return
            if wait > 0:
                self._feedback_offered.clear()
                await woken(self._feedback_offered, wait)
                continue
            for status in self.queue_feedback.due():
                job = self._jobs.get(status.job_id)
                if job is not None and status.job_id in self._waiting:
                    self._spawn(self._update(job, status))

    def _launch(self, job: ActiveJob) -> None:
        self._running.add(job.id)
        self._idle.clear()
        job.task = asyncio.create_task(self._work(job), name=f"retouch-job-{job.id}")

    async def _work(self, job: ActiveJob) -> None:
        try:
            await self._run(job)
        finally:
            self._running.discard(job.id)
            self._jobs.pop(job.id, None)
            if not self._running:
                self._idle.set()
            self._pump()

    async def _run(self, job: ActiveJob) -> None:
        """One job from wherever it stands to a terminal state (or a suspension at shutdown)."""
        row: JobRow | None = None
        try:
            row = await self.storage.jobs.get_job(job.id)
            if row is not None and row.state in TERMINAL_STATES:
                # Ended already (by another run of it here, such as a redelivery's timer firing after a
                # takeover delivered it): nothing may post it, settle it or call a provider for it again.
                log.warning("job %s: already %s; nothing left to run", job.id, row.state)
                return
            if row is None or not row.spec:
                raise RuntimeError(f"job {job.id} has no stored spec")
            spec = JobSpec.from_json(row.spec)
            if row.state == JobState.COMPLETED:
                outcome = await self._stored_outcome(job, row, spec)
            else:
                served, spec = await self._produce(job, row, spec)
                outcome = await self._complete(job, spec, served)
                del served  # the provider's images: while it is posted, only what is posted stays
            await self._deliver(job, row, spec, outcome)
        except LeaseLost:
            # Another process claimed it while this one could not renew: that process settles it and
            # posts the result; the progress message only this one can edit says so.
            log.warning("job %s: another process took it over; stopped here without settling it", job.id)
            if not job.posted:  # a posted result speaks for itself (the new holder finds it, and settles)
                await self._tell_live(job, messages.TAKEN_OVER_ELSEWHERE)
        except SuspendJob:
            log.info(
                "job %s left at %s for the next start (%s)", job.id, job.provider, ",".join(job.submitted)
            )
            await self._tell_live(job, SUSPENDED_AT_PROVIDER)
        except asyncio.CancelledError as exc:
            if job.stored:
                # The process is ending while the stored result is posted: its row stays `completed`
                # and its files stay, so the next start posts it (as after a crash). Settling here
                # would refund a paid result, and the database may already be closed.
                log.info("job %s: stopped while its result was posted; the next start posts it", job.id)
            else:
                await self._end(job, exc)
            raise
        except BaseException as exc:
            if job.posted and row is not None and isinstance(exc, Exception):
                await self._capture_later(job, row, exc)
            else:
                await self._end(job, exc)

    async def _capture_later(self, job: ActiveJob, row: JobRow, exc: Exception) -> None:
        """A posted result whose capture kept failing: never refunded (the member has it, the provider
        billed it). Its row stays `completed` with the post on record, so the next delivery round
        finds the post and captures it, as after a crash."""
        try:
            current = await self.storage.jobs.get_job(job.id)
            if current is not None and current.state == JobState.DELIVERED:
                # Captured after all (only its answer was lost): ended as any delivery is, not after
                # a release that a database failing again would make owed ("not charged").
                await self._captured_unseen(job, int(current.captured or 0))
                return
            if current is not None and current.state != JobState.COMPLETED:
                await self._end(job, exc)  # settled some other way meanwhile
                return
            log.error("job %s: posted, but not yet charged (%s); trying again later", job.id, exc)
            await self._tell_live(job, messages.POSTED_CHARGE_PENDING)  # not left on "Uploading…"
            job.live = None  # the later round that charges it says nothing more there
            if await self._deliver_later(job, row):
                return
        except Exception:
            log.exception("job %s: posted, not yet charged; the next start settles it", job.id)
            return
        await self._end(job, exc)  # past its retention: settled like any result nobody got

    async def _captured_unseen(self, job: ActiveJob, charged: int) -> None:
        """A posted result whose capture committed while its answer was lost: told "done", with what
        it cost and the balance left, as a delivery is (its result files go with the sweep)."""
        log.warning("job %s: its capture committed, its answer lost; delivered, charged %d", job.id, charged)
        self._finished(job, JobState.DELIVERED, job.provider, charged, None)
        try:
            account = await self.storage.ledger.get_account(job.info.guild_id, job.info.user_id)
        except Exception as exc:  # the database failing again: what it cost, without the balance
            log.info("job %s: its balance is unreadable for now: %s", job.id, type(exc).__name__)
            account = None
        text = messages.done(charged, account.balance) if account else messages.done_charged(charged)
        await self._tell_live(job, text)


def _too_late(state: str) -> CancelAnswer:
    """The answer to a cancel that came after the job stopped being cancellable (in `state`)."""
    if state == JobState.COMPLETED:
        return CancelAnswer(messages.TOO_LATE_BEING_POSTED)
    if state == JobState.DELIVERED:
        return CancelAnswer(messages.TOO_LATE_POSTED)
    return CancelAnswer(messages.ALREADY_ENDED)
