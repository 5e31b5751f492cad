"""Delivery: how a result reaches the member, and how a result Discord could not take is posted again.

The `Delivery` and `LiveJob` protocols are implemented by the Discord layer (cogs/_results.py):
the live route (the command's own interaction) first, then the `Delivery` (channel, then DM). A
delivery a crash may have interrupted is looked for before posting again; a transient failure
puts the delivery off and retries it from the stored result (`JobDelivery._deliver_later`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from dataclasses import replace

import aiohttp

from bot import messages
from bot.errors import new_reference
from bot.jobs.core import ActiveJob, EngineCore
from bot.jobs.model import (
    Delivered,
    DeliveryFailed,
    EditOutcome,
    JobFailed,
    JobSpec,
    JobState,
    db_time,
    parse_time,
)
from bot.messages import DELIVERY_DELAYED, UNDELIVERABLE
from bot.storage.jobs import JobRow
from bot.storage.ledger import Account

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """Whether a delivery failure may pass by itself (worth posting the stored result again later)."""
    if isinstance(exc, DeliveryFailed):
        return exc.transient
    return isinstance(exc, aiohttp.ClientError | TimeoutError | OSError)


class JobDelivery(EngineCore):
    """JobEngine's delivery: post a stored result, capture only once it is posted, retry later."""

    async def _deliver(self, job: ActiveJob, row: JobRow, spec: JobSpec, outcome: EditOutcome) -> None:
        """Post the result (live route, then the Delivery), capture only once it is posted."""
        if row.delivery_attempted_at:
            # A delivery was under way when the last process died (or failed on a passing error): it
            # may have landed. When Discord cannot even be asked, posting again could post it twice.
            try:
                found = await self.delivery.find(job.info)
            except Exception as exc:
                log.warning("job %s: could not check for an earlier delivery: %s", job.id, type(exc).__name__)
                if is_transient(exc) and await self._deliver_later(job, row):
                    return
                found = None
            if found is not None:
                log.info("job %s: its result was already posted (%s) before the restart", job.id, found.via)
                await self._delivered(job, outcome, found)
                return
        # The delivery record: a process that lost the job stops here, before posting anything.
        await self.storage.jobs.update_job(
            job.id, owner=self.owner, delivery_attempted_at=db_time(self.storage.now())
        )
        delivered = None
        if job.live is not None:
            try:
                delivered = await job.live.deliver(outcome)
            except Exception as exc:
                log.info("job %s: live delivery failed (%s); trying the channel", job.id, type(exc).__name__)
                if getattr(exc, "uncertain", False):
                    delivered = await self._find(job)
        if delivered is None:
            try:
                delivered = await self.delivery.deliver(job.info, outcome)
            except Exception as exc:
                log.warning("job %s: delivery failed: %s", job.id, type(exc).__name__)
                if is_transient(exc) and await self._deliver_later(job, row):
                    return
        if delivered is None:
            await self._undeliverable(job, outcome)
            return
        await self._delivered(job, outcome, delivered)

    async def _deliver_later(self, job: ActiveJob, row: JobRow) -> bool:
        """Put off the delivery of a stored result after a transient failure; False once it is too late.

        The row stays `completed` (the hold stays held), so a restart meanwhile delivers it too. The
        next try looks for an earlier post first (`delivery_attempted_at` is set), and channel posts
        carry a nonce, so the result is not posted twice.
        """
        made = parse_time(row.completed_at) or self.storage.now()
        give_up_at = made + dt.timedelta(hours=self.settings.result_retention_hours)
        if not self.accepting:
            log.info("job %s: delivery left for the next start", job.id)
            return True
        job.delivery_retries += 1
        delay = min(
            self.delivery_retry_max, self.delivery_retry_first * 2.0 ** min(job.delivery_retries - 1, 30)
        )
        delay *= 1.0 - random.uniform(0.0, 0.25)
        if self.storage.now() + dt.timedelta(seconds=delay) >= give_up_at:
            return False
        log.warning(
            "job %s: delivery try %d failed; trying again in %.0f s", job.id, job.delivery_retries, delay
        )
        if job.delivery_retries == 1:
            await self._tell_live(job, DELIVERY_DELAYED)
        handle = asyncio.get_running_loop().call_later(delay, self._redeliver, job)
        self._redeliveries[job.id] = handle
        return True

    def _redeliver(self, job: ActiveJob) -> None:
        self._redeliveries.pop(job.id, None)
        if not self.accepting or job.id in self._jobs:
            return
        job.live = None  # its progress message already said what happened
        job.finishing = True
        self._jobs[job.id] = job
        self._launch(job)

    async def _find(self, job: ActiveJob) -> Delivered | None:
        try:
            return await self.delivery.find(job.info)
        except Exception as exc:
            # Unknown: deliver again. A duplicate costs nothing (capture is once per job); a lost
            # paid result is what this engine exists to prevent.
            log.warning("job %s: could not check for an earlier delivery: %s", job.id, type(exc).__name__)
            return None

    async def _delivered(self, job: ActiveJob, outcome: EditOutcome, where: Delivered) -> None:
        job.posted = True  # even if the capture below finds the job another process's
        settled = await self._settle_delivered(job, outcome, where)
        if settled is not None:
            outcome = replace(outcome, charged=settled[1])
        # Observers hear of it in the same step as the commit: a member who sees the result and clicks
        # Edit again on an older version at once must find this one recorded (or being recorded) in
        # the edit history, not wait behind the file clean-up below.
        self._finished(job, JobState.DELIVERED, outcome.provider, outcome.charged, None)
        # From here on the job is posted and charged: nothing below may turn it into a "failed,
        # not charged" job (the sweep deletes files left behind).
        names = [f"result-{i}.{f.filename.rsplit('.', 1)[-1]}" for i, f in enumerate(outcome.files, start=1)]
        try:
            await asyncio.to_thread(self.files.delete, job.id, names)
        except Exception as exc:
            log.warning("job %s: delivered, but its result files stay until the sweep: %s", job.id, exc)
        log.info(
            "job %s delivered via %s: model=%s provider=%s images=%d charged=%d",
            job.id,
            where.via,
            outcome.model_id,
            outcome.provider,
            len(outcome.files),
            outcome.charged,
        )
        if job.live is not None:
            with contextlib.suppress(Exception):
                await job.live.finish(messages.done(outcome.charged, outcome.balance_after))

    async def _settle_delivered(
        self, job: ActiveJob, outcome: EditOutcome, where: Delivered
    ) -> tuple[Account, int] | None:
        """Capture a posted result, tried again after a failed transaction: the member has the result,
        and a refund would give away what the provider billed. Still failing, it raises, and the job
        stays `completed` for a later try (`JobEngine._run`)."""
        return await self._settling(
            job,
            lambda: self.storage.ledger.settle_delivered(
                job.id,
                outcome.charged,
                via=where.via,
                channel_id=where.channel_id,
                message_id=where.message_id,
                absorbed=outcome.absorbed,
                owner=self.owner,
            ),
        )

    async def _undeliverable(self, job: ActiveJob, outcome: EditOutcome) -> None:
        """Nobody could be reached: release the hold, keep the result for a while, tell the admin."""
        ref = new_reference()
        # Free to the member, but the provider was paid: it still counts against the budgets.
        await self.storage.ledger.settle_released(
            job.id,
            JobState.FAILED,
            error_code="undeliverable",
            error_ref=ref,
            absorbed=outcome.charged + outcome.absorbed,
            owner=self.owner,
        )
        keep = self.storage.now() + dt.timedelta(hours=self.settings.result_retention_hours)
        await self.storage.jobs.update_job(job.id, owner=self.owner, files_expire_at=db_time(keep))
        log.error(
            "job %s: result could not be delivered anywhere (ref %s); released, files kept in %s until %s",
            job.id,
            ref,
            self.files.folder(job.id),
            db_time(keep),
        )
        self._finished(job, JobState.FAILED, outcome.provider, 0, "undeliverable")
        error = JobFailed(UNDELIVERABLE, ref=ref, code="undeliverable")
        if job.live is not None:
            with contextlib.suppress(Exception):
                await job.live.finish(error.user_message)
