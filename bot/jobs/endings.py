"""How a job that will not be delivered ends: released exactly once (or charged, when a member
cancelled it after a provider accepted it), recorded, and explained to the member.

Part of `JobEngine` (a mixin over `EngineCore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from bot import messages
from bot.catalog import usd_to_credits
from bot.errors import RetouchError, message_for_provider_error, new_reference
from bot.jobs.core import ActiveJob, EngineCore
from bot.jobs.model import JobCancelled, JobFailed, JobInterrupted, JobSpec, JobState, JobTimedOut
from bot.messages import CANCELLED_AT_PROVIDER
from bot.providers import errors as perr
from bot.routing import route_reserve_usd
from bot.storage.jobs import LeaseLost
from bot.storage.ledger import Account, LedgerConflict

log = logging.getLogger(__name__)


class JobEndings(EngineCore):
    """JobEngine's endings: settle, record and explain a job that ends without a delivery."""

    async def _end(self, job: ActiveJob, exc: BaseException) -> None:
        """Settle a job that will not be delivered: release its hold exactly once, record why, tell the
        user (unless whoever cancelled it does)."""
        ref = new_reference()
        # Accepted = the provider gave the job an id (a submit-then-poll provider), or a paid call is out
        # (a synchronous provider works on it until it answers): either way it bills for it now.
        at_provider = (
            isinstance(exc, JobCancelled)
            and job.abort_reason == "cancelled"
            and bool(job.submitted or job.calling)
        )
        if at_provider and await self._charge_cancelled(job, ref):
            return
        cancelled = isinstance(exc, JobInterrupted | JobCancelled | JobTimedOut | asyncio.CancelledError)
        state = JobState.CANCELLED if cancelled else JobState.FAILED
        # Provider errors are labelled by class: a bounded set, unlike vendors' free-form codes.
        is_provider = isinstance(exc, perr.ProviderError)
        code = str(type(exc).__name__ if is_provider else getattr(exc, "code", None) or type(exc).__name__)
        billable = _may_be_billed(job, exc)

        async def release() -> object:
            absorbed = await self._maybe_billed(job, billable)
            return await self.storage.ledger.settle_released(
                job.id, state, error_code=code, error_ref=ref, absorbed=absorbed, owner=self.owner
            )

        try:
            await self._settling(job, release)
        except LeaseLost:
            log.warning("job %s: another process took it over; it settles it (ref %s)", job.id, ref)
            return
        except LedgerConflict:
            # Captured means posted: the member has the result and was charged for it. Say so.
            log.error("job %s: failed after it was delivered and charged (ref %s)", job.id, ref, exc_info=exc)
            await self._end_charged(job, ref)
            return
        except Exception:
            # Unsettled, the row stays live with its hold. The member is told now what this release
            # does, and the watchdog's next rounds make this very release (`settle_owed`), not a
            # restart's reading of the row, which could run the job again or post its stored result.
            # A process that stops first leaves the row to whoever recovers it, with a note (`_owe`).
            log.exception("job %s: could not release credits (ref %s); the watchdog will", job.id, ref)
            ended = {
                "state": str(state),
                "code": code,
                "ref": ref,
                "billed": job.billed,
                "billable": billable,
                # How many calls left, for whoever settles it after a stop (`_provider_price`).
                "sent": job.calls_sent,
            }
            await self._owe(job.id, release, ended)
        else:
            await self._forget(job.id)
        error = self._user_error(job, exc, ref)
        job.ended_with = error.user_message  # a quiet cancel that came too late answers with it
        job.ended_state = str(state)
        self._finished(job, state, getattr(exc, "provider", None) or job.provider, 0, code)
        if not job.quiet:
            await self._say(job, error.user_message)
        elif job.live is not None:
            with contextlib.suppress(Exception):
                await job.live.finish(None)

    async def _maybe_billed(self, job: ActiveJob, billable: bool) -> int:
        """Credits a provider bills, or may bill, for a job that ends unpaid: a result it returned that
        could not be stored or posted, or (`billable`, from `_may_be_billed`) a call that was sent
        and then cut off or that it may have accepted before failing. The member is not charged, but
        the budgets count it, so such jobs cannot outspend them."""
        if job.billed is not None:
            return job.billed
        if not billable:
            return 0
        return await self._provider_price(job) or 0

    async def _provider_price(self, job: ActiveJob) -> int | None:
        """What the job's provider charges for it: its price for the job's options (for the images whose
        calls this process saw leave, on a route without `n`) in credits, at most the hold. None when it
        cannot be priced."""
        row = await self.storage.jobs.get_job(job.id)
        spec = JobSpec.from_json(row.spec) if row is not None and row.spec else None
        model = self.catalog.models.get(spec.model) if spec is not None else None
        # The route that had the job (a provider may sell the model on several, at different prices).
        taken = row.provider_model if row is not None else None
        route = (
            next(
                (r for r in model.routes if r.provider == job.provider and taken in (None, r.model)),
                None,
            )
            if model
            else None
        )
        if spec is None or model is None or route is None:
            return None
        needs = spec.needs()
        sent = job.calls_sent
        if sent == 0:  # no call left (it waited for the provider's slot): nothing to bill
            return 0
        if sent is not None and not route.n:
            # Without `n`, each image is a call of its own: the provider bills those that left, not
            # those still waiting for its concurrency slot when the job was cut off. Not counted (a
            # row from an older release): every image, as any may have left.
            needs = replace(needs, count=min(needs.count, sent))
        usd = route_reserve_usd(model, route, needs, prompt=spec.prompt)
        return min(usd_to_credits(usd, self.settings.credits_per_usd), spec.reserve)

    async def _charge_cancelled(self, job: ActiveJob, ref: str) -> bool:
        """A member cancelled a job a provider already accepted: charge what that provider charges for
        it. False when it cannot be priced (it is then released like any other cancel)."""
        try:
            # The price is read from the job's row: a locked database is tried again, as the charge is.
            price = await self._settling(job, lambda: self._provider_price(job))
        except Exception:
            # Still unreadable: released like an unpriced cancel (owed, if the release fails too). An
            # error escaping here left the row live with its hold, and the next start ran and charged
            # the job the member had cancelled.
            log.exception("job %s: could not price its cancel (ref %s); released instead", job.id, ref)
            return False
        if not price:  # unpriced, or a route that costs nothing: a free cancel
            return False

        async def charge() -> tuple[Account, int] | None:
            return await self.storage.ledger.settle_cancelled_at_provider(
                job.id, price, error_code="cancelled_at_provider", error_ref=ref, owner=self.owner
            )

        try:
            settled = await self._settling(job, charge)
        except LeaseLost:
            log.warning("job %s: another process took it over before its cancel was charged", job.id)
            return True  # nothing more to do here: that process settles it
        except LedgerConflict:
            return False
        except Exception:
            captured = await self._captured(job.id)
            if captured is not None:
                log.warning("job %s: its cancel's charge was made, its answer lost (ref %s)", job.id, ref)
            else:
                # Owed, like a release that keeps failing: the watchdog makes this very charge (it is
                # idempotent, so one that committed unseen is found made). An escaped error would leave
                # the hold with no task to settle it; a release instead would turn a charge that did
                # commit into "posted and charged", or tell the member "not charged" when they were.
                log.exception(
                    "job %s: could not record its cancel's charge (ref %s); the watchdog will", job.id, ref
                )
                ended = {
                    "state": str(JobState.CANCELLED),
                    "code": "cancelled_at_provider",
                    "ref": ref,
                    "charged": price,
                }
                await self._owe(job.id, charge, ended)
            charged = price if captured is None else captured
        else:
            charged = settled[1] if settled is not None else 0
        log.info("job %s cancelled after %s had it: charged %d", job.id, job.provider, charged)
        if job.id not in self._owed:  # its prompt goes with its images, as any ended job's
            await self._forget(job.id)
        self._finished(job, JobState.CANCELLED, job.provider, charged, "cancelled_at_provider")
        text = CANCELLED_AT_PROVIDER.format(charged=charged)
        job.ended_with, job.charged = text, charged  # a quiet cancel's answer, while the charge is owed
        job.ended_state = str(JobState.CANCELLED)
        if not job.quiet:
            await self._say(job, text, charged=charged)
        elif job.live is not None:
            with contextlib.suppress(Exception):
                await job.live.finish(None)
        return True

    async def _captured(self, job_id: str) -> int | None:
        """What the job's row says was captured (None: nothing, or the row cannot be read)."""
        try:
            row = await self.storage.jobs.get_job(job_id)
        except Exception:
            return None
        return None if row is None or row.captured is None else int(row.captured)

    async def _end_charged(self, job: ActiveJob, ref: str) -> None:
        """An error after the charge was recorded: the job counts as delivered, and the member is not
        told they were not charged."""
        row = await self.storage.jobs.get_job(job.id)
        charged = int(row.captured or 0) if row is not None else 0
        self._finished(job, JobState.DELIVERED, job.provider, charged, None)
        error = JobFailed(messages.charged_then_failed(charged), ref=ref, code="after_delivery")
        if job.live is not None:
            with contextlib.suppress(Exception):
                await job.live.finish(error.user_message)

    def _user_error(self, job: ActiveJob, exc: BaseException, ref: str) -> RetouchError:
        """What the user is told: provider and unexpected errors get text and a log reference."""
        if isinstance(exc, perr.ProviderError):
            log.warning(
                "job %s failed (ref %s): %s from %s status=%s code=%s request_id=%s: %s",
                job.id,
                ref,
                type(exc).__name__,
                exc.provider,
                exc.status,
                exc.code,
                exc.request_id,
                exc,
            )
            if isinstance(exc, perr.ServiceUnavailable):
                log.error(
                    "provider %s needs the admin's attention (auth, billing or access) ref %s",
                    exc.provider,
                    ref,
                )
            return JobFailed(message_for_provider_error(exc), ref=ref, code=type(exc).__name__)
        if isinstance(exc, RetouchError):
            return exc
        if isinstance(exc, asyncio.CancelledError):
            return JobInterrupted()
        log.error("job %s failed unexpectedly (ref %s)", job.id, ref, exc_info=exc)
        return JobFailed(messages.EDIT_WENT_WRONG, ref=ref, code="internal")


def _may_be_billed(job: ActiveJob, exc: BaseException) -> bool:
    """Whether the provider may bill for a job ending with `exc`: a call that was sent and then cut off
    (cancel, deadline, shutdown), or one it may have accepted before failing.

    Sent means a provider took a call (`submitted`) or one is out (`calling`, counted once it leaves,
    after any wait for the provider's limit), not merely that a route was picked (`provider`): a call
    still waiting for its slot, or paused after a 429, reached nobody and costs nothing. Only a
    provider's own refusal says what it did not take: any other error (this process's, while a call
    of an emulated `count` was already out) leaves what was sent billed."""
    cut_off = isinstance(exc, JobCancelled | JobTimedOut | JobInterrupted | asyncio.CancelledError)
    sent = bool(job.submitted or job.calling)
    unexplained = not isinstance(exc, perr.ProviderError | RetouchError)
    return sent and (cut_off or unexplained or bool(getattr(exc, "accepted", False)))
