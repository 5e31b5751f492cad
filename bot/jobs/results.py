"""A job's result: stored (files, then the row) before anything is posted, and read back after a restart.

Part of `JobEngine` (a mixin over `EngineCore`). For a masked job, pixels outside the mask are put
back exactly as they were (the locality guarantee) before the result is stored.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

from bot import imaging, messages
from bot.catalog import usd_to_credits
from bot.jobs.core import ActiveJob, EngineCore
from bot.jobs.model import EditOutcome, JobSpec, JobState, JobStatus, ResultFile, db_time, result_filename
from bot.providers.base import EditResult, OutputImage
from bot.routing import Served
from bot.storage.jobs import JobRow


class JobResults(EngineCore):
    """JobEngine's results: store what a provider made, and build the outcome a delivery posts."""

    async def _complete(self, job: ActiveJob, spec: JobSpec, served: Served) -> EditOutcome:
        """Store the result (files, then the row) before anything is posted."""
        job.finishing = True
        await self._update(job, JobStatus(job.id, "finishing", messages.UPLOADING, False))
        result = served.result
        rate = self.settings.credits_per_usd
        charged = min(usd_to_credits(served.cost_usd, rate), spec.reserve)
        # What the provider billed beyond the member's charge counts against the budgets: images that
        # came back unusable, and any charge above the hold (a provider that reported a cost above its
        # worst case), which the member never pays. The router sends no job to a route dearer than its hold.
        absorbed = usd_to_credits(served.cost_usd + served.absorbed_usd, rate) - charged
        job.billed = charged + absorbed  # paid for from here on, whatever happens to the result
        notices: tuple[str, ...] = (served.notice,) if served.notice else ()
        restored = spec.restores_outside
        if restored:
            async with self.restore_turns.turn():
                result = await self._restore_outside(job.id, spec, result)
        files, fitted = await self._fit(job.id, result, spec.upload_limit, exact=restored)
        if restored:
            notices += _format_notices(fitted, spec.output_format)
        elif any(how == imaging.SMALLER for _, how in fitted):
            lossy = [
                f.format for (_, f), (_, how) in zip(files, fitted, strict=True) if how == imaging.SMALLER
            ]
            notices += (messages.fitted_to_upload_limit(lossy),)
        await self.storage.jobs.check_held(job.id, self.owner)  # a lost job's new owner writes these
        await asyncio.to_thread(self.files.write, job.id, {disk: f.data for disk, f in files})
        record = {
            "files": [{"disk": disk, "filename": f.filename, "format": f.format} for disk, f in files],
            "provider": result.provider,
            "quality": result.quality or spec.quality,
            "size": result.size or spec.size,
            "charged": charged,
            "absorbed": absorbed,
            "notices": list(notices),
        }
        now = self.storage.now()
        await self.storage.jobs.set_job_state(
            job.id,
            JobState.COMPLETED,
            owner=self.owner,
            provider=result.provider,
            provider_request_id=result.request_id or (",".join(job.submitted) or None),
            result=json.dumps(record),
            completed_at=db_time(now),
        )
        job.stored = True
        if job.run_start is not None:  # a job resumed after a restart says nothing about run times
            self._durations.appendleft(time.monotonic() - job.run_start)
        return await self._outcome(job.id, spec, record, tuple(f for _, f in files))

    async def _stored_outcome(self, job: ActiveJob, row: JobRow, spec: JobSpec) -> EditOutcome:
        """The outcome of a job completed before a restart, read back from the row and its files."""
        job.finishing = job.stored = True
        record = json.loads(row.result or "{}")
        # Paid for, even if its files turn out lost.
        job.billed = int(record.get("charged") or 0) + int(record.get("absorbed") or 0)
        entries = record.get("files") or []
        blobs = await asyncio.to_thread(lambda: [self.files.read(row.id, e["disk"]) for e in entries])
        files = tuple(
            ResultFile(e["filename"], data, e["format"]) for e, data in zip(entries, blobs, strict=True)
        )
        return await self._outcome(row.id, spec, record, files)

    async def _outcome(
        self, job_id: str, spec: JobSpec, record: dict[str, Any], files: tuple[ResultFile, ...]
    ) -> EditOutcome:
        charged = int(record["charged"])
        row = await self.storage.jobs.get_job(job_id)
        account = await self.storage.ledger.get_account(row.guild_id, row.user_id) if row else None
        return EditOutcome(
            job_id=job_id,
            prompt=spec.prompt,
            model_id=spec.model,
            model_name=spec.model_name,
            provider=str(record["provider"]),
            quality=str(record["quality"]),
            size=str(record["size"]),
            files=files,
            charged=charged,
            # What the balance will be once this job's hold is settled.
            balance_after=(account.balance if account else 0) + spec.reserve - charged,
            notices=spec.notices + tuple(record.get("notices") or ()),
            absorbed=int(record.get("absorbed") or 0),
            restored=spec.restores_outside,
        )

    async def _restore_outside(self, job_id: str, spec: JobSpec, result: EditResult) -> EditResult:
        """The locality guarantee: pixels outside the mask come back exactly as they were (within
        JPEG's loss when the job asked for JPEG), in the job's output format."""
        assert spec.mask is not None
        original = await asyncio.to_thread(self.files.read, job_id, spec.inputs[0].name)
        region_png = await asyncio.to_thread(self.files.read, job_id, spec.mask.region)
        first = spec.inputs[0]
        mask = await asyncio.to_thread(imaging.stored_mask, region_png, (first.width, first.height))
        restored = []
        for image in result.images:
            data, fmt = await asyncio.to_thread(
                imaging.restore_outside,
                original,
                image.data,
                mask.region,
                feather=spec.mask.feather,
                fmt=spec.output_format,  # the restored image is re-encoded: in the format asked for
            )
            restored.append(OutputImage(data, fmt))
        return replace(result, images=tuple(restored))

    async def _fit(
        self, job_id: str, result: EditResult, limit: int, *, exact: bool = False
    ) -> tuple[list[tuple[str, ResultFile]], list[tuple[str, str]]]:
        """Every image, together, under the upload limit; named for users and for the job's folder.
        With `exact` (a restored result) an image keeps its pixels when it can (lossless WebP). Also,
        per image, the format it came in and how it was fitted (`imaging.fit_result`)."""
        files, fitted = [], []
        share = imaging.share_of_upload(limit, len(result.images))
        for index, image in enumerate(result.images, start=1):
            data, fmt, how = await asyncio.to_thread(
                imaging.fit_result, image.data, image.format, share, exact=exact
            )
            fitted.append((imaging.normalize_format(image.format), how))
            ext = "jpg" if fmt == "jpeg" else fmt
            files.append(
                (f"result-{index}.{ext}", ResultFile(result_filename(job_id, index, ext), data, fmt))
            )
        return files, fitted


def _format_notices(fitted: list[tuple[str, str]], asked: str) -> tuple[str, ...]:
    """What a restored result says of its files (`fitted`: each image's format from the restore and how
    it was fitted), rather than leaving the member to find it in a file name: PNG for a side too long
    for the format asked; lossless WebP for a PNG too large for the upload limit; and for one too large
    even so, made smaller, that its outside is close to the original but no longer the same (a JPEG
    was never exact: nothing to say)."""
    wanted = imaging.normalize_format(asked)
    notices = []
    if any(fmt == "png" and how == imaging.AS_IS for fmt, how in fitted) and wanted != "png":
        notices.append(messages.kept_as_png(wanted))
    if any(how == imaging.LOSSLESS for _, how in fitted) and wanted != "webp":
        notices.append(messages.KEPT_AS_LOSSLESS_WEBP)
    if any(how == imaging.SMALLER and fmt != "jpeg" for fmt, how in fitted):
        notices.append(messages.RESTORED_NOT_EXACT)
    return tuple(notices)
