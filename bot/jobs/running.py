"""A job at its provider: the call (or the resumed poll), progress, abort, and the result stored.

Part of `JobEngine` (a mixin over `EngineCore`). A job whose model is shut down at every provider
mid-run moves to another live model within its hold, unless the member picked the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable
from dataclasses import replace

from bot import messages
from bot.catalog import ModelEntry, Route, usd_to_credits
from bot.domain.options import output_options
from bot.errors import InvalidOptions
from bot.jobs.core import ActiveJob, EngineCore
from bot.jobs.model import (
    JobCancelled,
    JobInterrupted,
    JobSpec,
    JobState,
    JobStatus,
    JobTimedOut,
    ModelRetired,
    SuspendJob,
    db_time,
    parse_time,
)
from bot.providers import errors as perr
from bot.providers.base import EditRequest, InputImage
from bot.routing import Hold, Served, route_reserve_usd
from bot.storage.jobs import JobRow, LeaseLost

log = logging.getLogger(__name__)

# How often the "editing with <model> (N s)" stage is refreshed while the provider works.
PROGRESS_TICK_SECONDS = 5.0
# The watchdog steps in this long after a job's provider deadline, so the adapter's own timeout
# (with its better error) normally fires first; and a finished job's download, given
# DOWNLOAD_GRACE_SECONDS past the deadline (seen at a progress tick), ends before it.
DEADLINE_GRACE_SECONDS = 30.0
# A job resumed after a restart gets at least this long to fetch a result the provider may have
# finished meanwhile, even if its own deadline passed while the bot was down.
RESUME_MIN_SECONDS = 60.0


class ProviderRun(EngineCore):
    """JobEngine's provider call: run or resume a job at a provider, then store its result."""

    async def _produce(self, job: ActiveJob, row: JobRow, spec: JobSpec) -> tuple[Served, JobSpec]:
        """Run the job at a provider (or follow what one accepted before a restart). Returns the
        result and the job's spec, which names another model if its own was shut down mid-run."""
        model = self.catalog.models.get(spec.model)
        if model is None:
            raise RuntimeError(f"model {spec.model} is no longer in the catalog")
        if row.state == JobState.SUBMITTED and row.provider and row.provider_job_ids:
            job.provider = row.provider
            job.adopt_row(row)  # a cancel now prices the calls that had left, not only those followed
            deadline = await self._resume_window(job, row)
            request = await self._request(job.id, spec, deadline)
            call = self.router.resume(
                model, row.provider, job.submitted, request, route_model=row.provider_model
            )
            served = await self._follow(job, model, request, call, row.started_at)
            return _with_calls_unfollowed(served, model, spec, job), spec
        started = self.storage.now()
        job.run_start = time.monotonic()
        timeout = self.settings.job_timeout_seconds
        await self.storage.jobs.update_job(
            job.id,
            owner=self.owner,
            started_at=db_time(started),
            deadline_at=db_time(started + dt.timedelta(seconds=timeout + DEADLINE_GRACE_SECONDS)),
        )
        # Measured from `started`, as the watchdog's deadline_at is: a write or a file read that was
        # slow (a busy database) must not push the provider's deadline, and a finished result's
        # download grace with it, past the watchdog's, which would end a paid download as a timeout.
        request = await self._request(job.id, spec, job.run_start + timeout)

        async def attempt(route: Route) -> None:
            job.provider = route.provider
            job.sent_before = job.leaving = 0  # counted from here on, in memory as on the row
            # The fence before the paid call: a process that lost the job goes no further (checked
            # again as each call leaves, after any wait for the provider's limit: `sending`).
            # Its calls are counted afresh on each route: one refused unworked on the last was not billed.
            await self.storage.jobs.set_job_state(
                job.id,
                JobState.SUBMITTING,
                owner=self.owner,
                provider=route.provider,
                provider_model=route.model,
                calls_sent=0,
            )

        async def submitted(route: Route, provider_job_id: str) -> None:
            job.submitted.append(provider_job_id)
            await self.storage.jobs.mark_submitted(job.id, route.provider, provider_job_id, owner=self.owner)

        async def sending(route: Route) -> None:
            # The fence again, as the call leaves: waiting for the provider's slot (or a 429's pause)
            # may outlast this process's lease, and another process may have taken the job over and
            # ended it meanwhile. Sent anyway, the provider would bill a call no budget counts. A write
            # that failed (a locked file, a lost connection) is tried again rather than failing the job.
            # It records how many calls are out: counted before the await (calls of one job leave
            # together), and written as a floor, so a retried write or one landing late counts no call
            # twice, and a call sent again after a refusal is still one.
            job.leaving += 1
            out = job.leaving
            try:
                await self._settling(job, lambda: self.storage.jobs.check_sending(job.id, self.owner, out))
            except BaseException:
                job.leaving -= 1  # it does not leave
                raise

        def calling(route: Route, sent: bool) -> None:
            # A paid call is out: from here a cancel is charged (the provider bills what it started).
            # One refused unworked takes back only itself, not a sibling call still at the provider.
            job.calling = job.calling + 1 if sent else max(0, job.calling - 1)
            if not sent:
                job.leaving = max(0, job.leaving - 1)

        while True:
            call = self.router.run(
                model,
                request,
                order=spec.provider_order or None,
                on_attempt=attempt,
                on_submitted=submitted,
                on_call=calling,
                on_send=sending,
                # Routes live again since the job was priced may be dearer than what it holds.
                hold=Hold(spec.reserve, spec.held_rate(self.settings.credits_per_usd)),
            )
            try:
                return await self._follow(job, model, request, call, db_time(started)), spec
            except perr.ModelGone as exc:
                if exc.accepted or self.lifecycle.usable(model):
                    raise  # taken, or other routes of the model only failed for other reasons
                # No provider took the job, so it may run elsewhere: the router already retired the
                # dead routes; every route of this model is gone.
                model, spec = await self._next_model(job, spec, model)
            except InvalidOptions as exc:
                if exc.code != "no_route" or self.lifecycle.usable(model):
                    raise
                # Its model died while the job queued (a trial that made it the default answered "model
                # gone" again, or a date passed): nothing was sent, and the job moves on as one whose
                # model died mid-run does.
                model, spec = await self._next_model(job, spec, model)

    async def _next_model(
        self, job: ActiveJob, spec: JobSpec, dead: ModelEntry
    ) -> tuple[ModelEntry, JobSpec]:
        """The live model a job moves to when `dead` is shut down everywhere, within its hold.

        Only for a job whose member did not pick the model; the first candidate (replacement chain,
        default, catalog order) that can honour the job's options for at most what is held wins.
        Raises ModelRetired (the hold is released, the member is offered the replacement) otherwise.
        """
        lifecycle = self.lifecycle
        if spec.model_picked:
            raise self._retired(job, dead, lifecycle.dead_message(dead, mid_run=True))
        for candidate in lifecycle.fallbacks(dead):
            worst = self._worst_credits(candidate, spec)
            if worst is None or worst > spec.reserve:
                continue
            if not await self.model_allowed(job.info.guild_id, spec.role_ids, candidate.id):
                continue  # the server does not let this member use it
            notice = messages.moved_mid_run(dead.name, candidate.name)
            moved = replace(
                spec, model=candidate.id, model_name=candidate.name, notices=(*spec.notices, notice)
            )
            await self.storage.jobs.update_job(
                job.id, owner=self.owner, model=candidate.id, spec=moved.to_json()
            )
            log.warning("job %s: %s is gone at every provider; moving to %s", job.id, dead.id, candidate.id)
            return candidate, moved
        raise self._retired(job, dead, lifecycle.dead_message(dead, mid_run=True))

    def _retired(self, job: ActiveJob, dead: ModelEntry, text: str) -> ModelRetired:
        error = ModelRetired(text)
        log.warning(
            "job %s: %s is gone at every configured provider, not moved (ref %s)", job.id, dead.id, error.ref
        )
        return error

    def _worst_credits(self, model: ModelEntry, spec: JobSpec) -> int | None:
        """What `spec` would hold on `model`, or None when the model cannot take its options."""
        if spec.quality not in model.qualities or not model.accepts_size(spec.size):
            return None
        needs = spec.needs()
        order = spec.provider_order or None
        if not self.router.eligible(model, needs, order=order):
            return None
        usd = self.router.reserve_usd(model, needs, prompt=spec.prompt, order=order)
        return usd_to_credits(usd, spec.held_rate(self.settings.credits_per_usd))

    async def _resume_window(self, job: ActiveJob, row: JobRow) -> float:
        """When (monotonic) a resumed job stops polling; pushes the watchdog deadline out to match,
        both measured from one moment (a slow write must not put the poll's past the watchdog's)."""
        started = parse_time(row.started_at) or self.storage.now()
        now, mark = self.storage.now(), time.monotonic()
        left = (started - now).total_seconds() + self.settings.job_timeout_seconds
        window = max(left, RESUME_MIN_SECONDS)
        deadline = now + dt.timedelta(seconds=window + DEADLINE_GRACE_SECONDS)
        await self.storage.jobs.update_job(job.id, owner=self.owner, deadline_at=db_time(deadline))
        log.info(
            "job %s: resuming %s at %s (%.0f s left)", job.id, ",".join(job.submitted), job.provider, window
        )
        return mark + window

    async def _request(self, job_id: str, spec: JobSpec, deadline: float) -> EditRequest:
        """The provider request, rebuilt from the stored spec and files, due by `deadline` (monotonic,
        fixed before the files are read: a slow read must not move it past the watchdog's)."""

        def load() -> tuple[tuple[InputImage, ...], InputImage | None]:
            images = tuple(
                InputImage(self.files.read(job_id, f.name), f.mime, f.width, f.height) for f in spec.inputs
            )
            mask = None
            if spec.mask is not None:
                first = images[0]
                data = self.files.read(job_id, spec.mask.provider)
                mask = InputImage(data, "image/png", first.width, first.height)
            return images, mask

        images, mask = await asyncio.to_thread(load)
        return EditRequest(
            images=images,
            prompt=spec.prompt,
            model=spec.model,
            **output_options(spec),
            user_hash=spec.user_hash,
            mask=mask,
            deadline=deadline,
        )

    async def _follow(
        self,
        job: ActiveJob,
        model: ModelEntry,
        request: EditRequest,
        call: Awaitable[Served],
        started_at: str | None,
    ) -> Served:
        """Await the provider while showing progress; stop on cancel, watchdog, shutdown or deadline."""
        task = asyncio.ensure_future(call)
        aborted = asyncio.create_task(job.abort.wait())
        begun = parse_time(started_at) or self.storage.now()
        clock = time.monotonic()
        try:
            while True:
                elapsed = max(0, int((self.storage.now() - begun).total_seconds()))
                text = messages.editing(model.name, elapsed)
                await self._update(
                    job, JobStatus(job.id, "running", text, True, accepted=bool(job.submitted or job.calling))
                )
                done, _ = await asyncio.wait(
                    {task, aborted}, timeout=PROGRESS_TICK_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if task in done:
                    served = self._served(job, model, task, clock)
                    break
                if aborted in done:
                    await self._stop_remote(job)
                    raise self._abort_error(job)
                # A result being downloaded gets its grace past the deadline (`EditRequest.overdue`).
                if request.overdue():
                    raise perr.ProviderTimeout(
                        "job deadline passed", provider=job.provider or "", accepted=True
                    )
        finally:
            for pending in (task, aborted):
                if not pending.done():
                    pending.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(task, aborted, return_exceptions=True)
        if not served.result.images:
            raise perr.ServerError(
                "provider returned no images", provider=served.route.provider, accepted=True
            )
        return served

    def _served(
        self, job: ActiveJob, model: ModelEntry, task: asyncio.Future[Served], clock: float
    ) -> Served:
        seconds = time.monotonic() - clock
        try:
            served = task.result()
        except perr.ProviderError as exc:
            self._notify(
                "provider_finished", exc.provider or job.provider or "", model.id, seconds, type(exc).__name__
            )
            raise
        self._notify("provider_finished", served.route.provider, model.id, seconds, None)
        return served

    def _abort_error(self, job: ActiveJob) -> BaseException:
        match job.abort_reason:
            case "suspend":
                return SuspendJob()
            case "shutdown":
                return JobInterrupted()
            case "timeout":
                return JobTimedOut(queued=False)
            case "lost":
                return LeaseLost(job.id)
            case _:
                return JobCancelled()

    async def _stop_remote(self, job: ActiveJob) -> None:
        """After a cancel or timeout, ask the provider to stop what it accepted (if it can)."""
        if (
            job.abort_reason not in ("cancelled", "stopped", "timeout")
            or not job.submitted
            or not job.provider
        ):
            return
        if not await self.router.cancel(job.provider, job.submitted):
            log.info(
                "job %s: %s has no cancel call; the provider may still bill us for it", job.id, job.provider
            )


def _with_calls_unfollowed(served: Served, model: ModelEntry, spec: JobSpec, job: ActiveJob) -> Served:
    """`served`, a job resumed after a restart, with the calls that had left but whose ids the provider
    never gave (its answer to their submit was lost with the process) counted as billed: they cannot be
    followed, but the provider may have made and billed them. The member pays for what came back; the
    budgets count the rest, as they would had the process lived (its calls ended accepted)."""
    unfollowed = (job.sent_before or 0) - len(job.submitted)
    if unfollowed <= 0 or served.route.n:
        return served
    needs = replace(spec.needs(), count=unfollowed)
    usd = route_reserve_usd(model, served.route, needs, prompt=spec.prompt)
    return replace(served, absorbed_usd=served.absorbed_usd + usd)
