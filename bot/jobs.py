"""Edit jobs: validate → price → reserve → provider → deliver → capture, with refunds on every failure.

The service takes plain values (ids, bytes, callables) and never a Discord object. Discord-side work is
passed in as two callbacks: `progress(text)` to show a stage, and `deliver(outcome)` to post the result.
Credits are captured only after `deliver` returns; any failure before that releases them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from bot import imaging
from bot.catalog import Catalog, ModelEntry, Resolution, Route, usd_to_credits
from bot.config import Settings
from bot.errors import (
    InsufficientCredits,
    InvalidImage,
    InvalidMask,
    InvalidOptions,
    RetouchError,
    ShuttingDown,
    message_for_provider_error,
    new_reference,
)
from bot.providers import errors as perr
from bot.providers.base import EditRequest, EditResult, InputImage, OutputImage, Provider
from bot.routing import Needs, Router, Served
from bot.storage import NotEnoughCredits, Storage

log = logging.getLogger(__name__)

# How often the "editing with <model> (N s)" stage is refreshed while the provider works.
PROGRESS_TICK_SECONDS = 5.0
MAX_IMAGES_PER_EDIT = 4
DM_GUILD_ID = 0

Progress = Callable[[str], Awaitable[None]]


class JobFailed(RetouchError):
    """A job failed after it started; credits were released. Carries the log reference."""

    def __init__(self, user_message: str, *, ref: str, code: str) -> None:
        super().__init__(f"{user_message} (ref `{ref}`)", code=code)
        self.ref = ref


class JobInterrupted(RetouchError):
    def __init__(self) -> None:
        super().__init__(
            "Retouch had to restart before your edit finished. You were not charged; please run it again.",
            code="interrupted",
        )


@dataclass(frozen=True)
class Upload:
    """An attachment as the service sees it: declared size plus a way to fetch the bytes."""

    label: str
    filename: str
    size: int
    read: Callable[[], Awaitable[bytes]]


@dataclass(frozen=True)
class EditOptions:
    """Options from the command; None means "use the default"."""

    prompt: str
    model: str | None = None
    quality: str | None = None
    size: str | None = None
    background: str | None = None
    output_format: str | None = None
    count: int | None = None


@dataclass(frozen=True)
class JobDefaults:
    model: str
    quality: str
    size: str
    background: str
    output_format: str
    count: int = 1


DefaultsLookup = Callable[[int, int], Awaitable[JobDefaults]]


class JobPolicy(Protocol):
    """Server rules as the job service sees them (implemented by bot.policy.PolicyService)."""

    async def clamp(self, job: EditJob, chosen: JobDefaults) -> tuple[JobDefaults, tuple[str, ...]]:
        """Bring model, quality and count within the member's limits; return what changed."""
        ...

    async def reserve(self, job_id: str, job: EditJob, credits: int) -> object:
        """Hold the job's credits if cooldown, running jobs and the guild budget allow it.

        Raises RetouchError subclasses, or NotEnoughCredits like Storage.reserve.
        """
        ...


@dataclass(frozen=True)
class MaskSpec:
    """Where a masked edit may change the first image: an uploaded mask file, or cells of a grid."""

    upload: Upload | None = None
    grid: tuple[int, int] | None = None  # (rows, cols) when the user picked cells
    cells: tuple[int, ...] = ()
    invert: bool = False
    feather: int = imaging.FEATHER_PX
    keep_outside: bool = True  # restore every pixel outside the mask from the original


@dataclass(frozen=True)
class EditJob:
    guild_id: int
    user_id: int
    channel_id: int | None
    uploads: Sequence[Upload]
    options: EditOptions
    upload_limit: int  # the interaction's attachment_size_limit
    mask: MaskSpec | None = None
    role_ids: tuple[int, ...] = ()  # the member's roles in the guild (server rules depend on them)


@dataclass(frozen=True)
class PreparedJob:
    """A validated, priced job that has not touched any credits yet (what a preview shows)."""

    job: EditJob
    chosen: JobDefaults
    resolution: Resolution
    images: tuple[InputImage, ...]
    reserve: int
    mask: imaging.NormalizedMask | None = None
    mask_png: bytes | None = None  # the OpenAI-convention mask sent to the provider
    notices: tuple[str, ...] = ()  # what the server's rules changed (shown with the result)

    @property
    def model(self) -> ModelEntry:
        return self.resolution.model


@dataclass(frozen=True)
class ResultFile:
    filename: str
    data: bytes
    format: str


@dataclass(frozen=True)
class EditOutcome:
    job_id: str
    prompt: str
    model_id: str
    model_name: str
    provider: str
    quality: str
    size: str
    files: tuple[ResultFile, ...]
    charged: int
    balance_after: int
    notices: tuple[str, ...] = ()


class JobObserver:
    """Receives job lifecycle events (metrics, audit). Every method is a no-op by default.

    Observers must not raise; the service logs and ignores their errors so a metrics bug never
    costs a user an edit.
    """

    def job_started(self, job_id: str, model: str) -> None: ...

    def provider_finished(self, provider: str, model: str, seconds: float, error: str | None) -> None: ...

    def job_finished(
        self,
        job_id: str,
        state: str,
        *,
        model: str,
        provider: str | None,
        charged: int,
        seconds: float,
        error: str | None,
    ) -> None: ...


@dataclass
class _Running:
    job_id: str
    abort: asyncio.Event = field(default_factory=asyncio.Event)


class EditService:
    """Runs edit jobs. One instance per process, shared by every cog."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        storage: Storage,
        providers: dict[str, Provider],
        user_salt: bytes,
        defaults: DefaultsLookup | None = None,
        policy: JobPolicy | None = None,
        router: Router | None = None,
        observers: Sequence[JobObserver] = (),
        today: Callable[[], dt.date] = lambda: dt.datetime.now(dt.UTC).date(),
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.storage = storage
        self.providers = providers
        # Picks the route per job (PROVIDER_ORDER), falls back only when a provider provably did
        # not take the job, and keeps one circuit breaker per provider.
        self.router = router or Router(providers, order=settings.provider_order)
        self._salt = user_salt
        self._defaults = defaults or self._settings_defaults
        self.policy = policy
        self.observers = list(observers)
        self._today = today
        self._running: dict[str, _Running] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.accepting = True

    # -- public API ---------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def run_edit(
        self, job: EditJob, *, progress: Progress, deliver: Callable[[EditOutcome], Awaitable[None]]
    ) -> EditOutcome:
        """Prepare and execute one edit. Raises RetouchError subclasses with user-safe messages."""
        if not self.accepting:
            raise ShuttingDown()
        prepared = await self.prepare(job, progress=progress)
        return await self.execute(prepared, progress=progress, deliver=deliver)

    async def prepare(self, job: EditJob, *, progress: Progress | None = None) -> PreparedJob:
        """Validate options, images and mask, and price the job. Moves no credits, calls no provider."""
        chosen = await self.options_for(job.guild_id, job.user_id, job.options)
        notices: tuple[str, ...] = ()
        if self.policy is not None:
            chosen, notices = await self.policy.clamp(job, chosen)
        resolution = self.catalog.resolve(chosen.model, self._today())
        model = resolution.model
        self._check_options(model, chosen, job)
        if progress is not None:
            await progress("Checking your images…")
        images = await self._load_images(job.uploads)
        mask = mask_png = None
        if job.mask is not None:
            mask = await self._load_mask(job.mask, images[0])
            mask_png = await asyncio.to_thread(mask.openai_png)
        reserve = usd_to_credits(
            self.router.reserve_usd(model, _needs(chosen, job, len(images)), prompt=job.options.prompt),
            self.settings.credits_per_usd,
        )
        return PreparedJob(job, chosen, resolution, tuple(images), reserve, mask, mask_png, notices)

    async def execute(
        self, prepared: PreparedJob, *, progress: Progress, deliver: Callable[[EditOutcome], Awaitable[None]]
    ) -> EditOutcome:
        """Reserve, call the provider, deliver, capture — or release on any failure."""
        if not self.accepting:
            raise ShuttingDown()
        job_id = secrets.token_hex(8)
        running = _Running(job_id)
        self._running[job_id] = running
        self._idle.clear()
        try:
            deliver = _with_notices(deliver, prepared.notices)
            outcome = await self._run(job_id, running, prepared, progress, deliver)
            return _add_notices(outcome, prepared.notices)
        finally:
            del self._running[job_id]
            if not self._running:
                self._idle.set()

    async def available_credits(self, guild_id: int, user_id: int) -> int:
        """The user's spendable balance (creating the account with its starting grant if new)."""
        account = await self.storage.ensure_account(guild_id, user_id, self.settings.starting_credits)
        return account.balance

    async def drain(self, grace: float) -> int:
        """Stop taking jobs, wait up to `grace` seconds, then abort what is left. Returns aborted count."""
        self.accepting = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        left = list(self._running.values())
        for running in left:
            running.abort.set()
        if left:
            log.warning("shutdown: aborting %d unfinished job(s); their credits are released", len(left))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 10)
        return len(left)

    async def options_for(self, guild_id: int, user_id: int, options: EditOptions) -> JobDefaults:
        """Merge command options over the user's/guild's defaults (command options always win)."""
        d = await self._defaults(guild_id, user_id)
        return JobDefaults(
            model=options.model or d.model,
            quality=options.quality or d.quality,
            size=options.size or d.size,
            background=options.background or d.background,
            output_format=options.output_format or d.output_format,
            count=options.count or d.count,
        )

    def _notify(self, event: str, *args: object, **kwargs: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, event)(*args, **kwargs)
            except Exception:
                log.exception("job observer %r failed on %s", observer, event)

    def user_hash(self, user_id: int) -> str:
        """A stable pseudonymous id for the provider's abuse monitoring (never the Discord id)."""
        return hashlib.sha256(self._salt + str(user_id).encode()).hexdigest()[:32]

    # -- the pipeline -------------------------------------------------------------------------------

    async def _settings_defaults(self, guild_id: int, user_id: int) -> JobDefaults:
        s = self.settings
        return JobDefaults(
            s.default_model, s.default_quality, s.default_size, s.default_background, s.default_format
        )

    async def _run(
        self,
        job_id: str,
        running: _Running,
        prepared: PreparedJob,
        progress: Progress,
        deliver: Callable[[EditOutcome], Awaitable[None]],
    ) -> EditOutcome:
        job, chosen, model, reserve = prepared.job, prepared.chosen, prepared.model, prepared.reserve
        await self.storage.create_job(
            job_id,
            guild_id=job.guild_id,
            user_id=job.user_id,
            channel_id=job.channel_id,
            model=model.id,
            quality=chosen.quality,
            size=chosen.size,
            count=chosen.count,
        )
        started = time.monotonic()
        self._notify("job_started", job_id, model.id)
        try:
            if self.policy is None:
                await self.storage.reserve(
                    job_id,
                    job.guild_id,
                    job.user_id,
                    reserve,
                    starting_credits=self.settings.starting_credits,
                )
            else:
                # Refills a due allowance, then checks cooldown, running jobs and the server's monthly
                # budget inside the reservation's own transaction.
                await self.policy.reserve(job_id, job, reserve)
        except NotEnoughCredits as exc:
            await self.storage.set_job_state(job_id, "failed", error_code="insufficient_credits")
            self._finished(job_id, "failed", model.id, None, 0, started, "insufficient_credits")
            raise InsufficientCredits(exc.needed, exc.available) from None
        except RetouchError as exc:
            # Refused by a server rule before anything was held.
            await self.storage.set_job_state(job_id, "failed", error_code=exc.code)
            self._finished(job_id, "failed", model.id, None, 0, started, exc.code)
            raise
        try:
            outcome = await self._generate_and_deliver(job_id, running, prepared, progress, deliver)
        except BaseException as exc:
            state = "cancelled" if isinstance(exc, JobInterrupted | asyncio.CancelledError) else "failed"
            # Provider errors are labelled by class: a bounded set, unlike vendors' free-form codes.
            is_provider = isinstance(exc, perr.ProviderError)
            code = type(exc).__name__ if is_provider else getattr(exc, "code", None) or type(exc).__name__
            self._finished(job_id, state, model.id, getattr(exc, "provider", None), 0, started, str(code))
            await self._fail(job_id, exc)
            raise
        self._finished(job_id, "delivered", model.id, outcome.provider, outcome.charged, started, None)
        return outcome

    def _finished(
        self,
        job_id: str,
        state: str,
        model: str,
        provider: str | None,
        charged: int,
        started: float,
        error: str | None,
    ) -> None:
        self._notify(
            "job_finished",
            job_id,
            state,
            model=model,
            provider=provider or None,
            charged=charged,
            seconds=time.monotonic() - started,
            error=error,
        )

    async def _generate_and_deliver(
        self,
        job_id: str,
        running: _Running,
        prepared: PreparedJob,
        progress: Progress,
        deliver: Callable[[EditOutcome], Awaitable[None]],
    ) -> EditOutcome:
        job, chosen, resolution, reserve = (
            prepared.job,
            prepared.chosen,
            prepared.resolution,
            prepared.reserve,
        )
        model = resolution.model
        first = prepared.images[0]
        request = EditRequest(
            images=prepared.images,
            prompt=job.options.prompt,
            model=model.id,
            quality=chosen.quality,
            size=chosen.size,
            background=chosen.background,
            output_format=chosen.output_format,
            count=chosen.count,
            user_hash=self.user_hash(job.user_id),
            mask=None
            if prepared.mask_png is None
            else InputImage(prepared.mask_png, "image/png", first.width, first.height),
            deadline=time.monotonic() + self.settings.job_timeout_seconds,
        )
        served = await self._call_provider(job_id, running, model, request, progress)
        result = served.result
        charged = usd_to_credits(served.cost_usd, self.settings.credits_per_usd)
        charged = min(charged, reserve)
        await self.storage.set_job_state(
            job_id, "completed", provider=result.provider, provider_request_id=result.request_id
        )
        await progress("Uploading the result…")
        if prepared.mask is not None and job.mask is not None and job.mask.keep_outside:
            result = await self._restore_outside(result, first, prepared.mask, job.mask.feather)
        files = await self._fit_files(job_id, result, job.upload_limit)
        account = await self.storage.get_account(job.guild_id, job.user_id)
        balance_now = account.balance if account else 0
        outcome = EditOutcome(
            job_id=job_id,
            prompt=job.options.prompt,
            model_id=model.id,
            model_name=model.name,
            provider=result.provider,
            quality=result.quality or chosen.quality,
            size=result.size or chosen.size,
            files=files,
            charged=charged,
            # What the balance will be once this job's hold is settled.
            balance_after=balance_now + reserve - charged,
            notices=tuple(n for n in (resolution.notice, served.notice) if n),
        )
        await deliver(outcome)
        settled = await self.storage.capture(job_id, charged)
        await self.storage.set_job_state(job_id, "delivered")
        if settled is not None:
            outcome = replace(outcome, charged=settled[1])
        log.info(
            "job %s delivered: model=%s provider=%s images=%d charged=%d",
            job_id,
            model.id,
            result.provider,
            len(files),
            outcome.charged,
        )
        return outcome

    def _check_options(self, model: ModelEntry, chosen: JobDefaults, job: EditJob) -> None:
        prompt = job.options.prompt
        if not prompt.strip():
            raise InvalidOptions("The prompt is empty. Describe the change you want.", code="empty_prompt")
        if len(prompt) > model.max_prompt_chars:
            raise InvalidOptions(
                f"The prompt is {len(prompt)} characters; {model.name} accepts at most "
                f"{model.max_prompt_chars}. Shorten it and try again.",
                code="prompt_too_long",
            )
        if chosen.quality not in model.qualities:
            raise InvalidOptions(
                f"{model.name} does not offer quality `{chosen.quality}`.", code="bad_quality"
            )
        if chosen.size not in model.sizes:
            raise InvalidOptions(f"{model.name} does not offer size `{chosen.size}`.", code="bad_size")
        if not 1 <= chosen.count <= MAX_IMAGES_PER_EDIT:
            raise InvalidOptions(f"`count` must be between 1 and {MAX_IMAGES_PER_EDIT}.", code="bad_count")
        if chosen.background == "transparent" and chosen.output_format == "jpeg":
            raise InvalidOptions(
                "A transparent background needs PNG or WebP output. Set `format` to png or webp.",
                code="transparent_jpeg",
            )
        if len(job.uploads) > min(model.max_input_images, MAX_IMAGES_PER_EDIT):
            raise InvalidOptions(
                f"{model.name} accepts at most {model.max_input_images} input image(s).",
                code="too_many_images",
            )
        if job.mask is not None and not model.mask:
            raise InvalidOptions(
                f"{model.name} cannot do masked edits. Pick another model for /mask.", code="no_mask_support"
            )
        # Raises InvalidOptions naming the option to change when no configured route can honour it.
        self.router.require(model, _needs(chosen, job, len(job.uploads)))

    async def _load_images(self, uploads: Sequence[Upload]) -> list[InputImage]:
        cap = self.settings.max_input_bytes
        for upload in uploads:
            # Refuse from the declared size before downloading a single byte.
            if upload.size > cap:
                raise InvalidImage(
                    f"`{upload.label}` is {upload.size / 1048576:.1f} MB; the limit is "
                    f"{cap / 1048576:.0f} MB. Upload a smaller PNG, JPEG or WebP.",
                    code="too_large",
                )
        images = []
        for upload in uploads:
            data = await upload.read()
            images.append(
                await asyncio.to_thread(
                    imaging.validate_image,
                    data,
                    max_bytes=cap,
                    max_pixels=self.settings.max_input_pixels,
                    label=upload.label,
                )
            )
        return images

    async def _load_mask(self, spec: MaskSpec, image: InputImage) -> imaging.NormalizedMask:
        size = (image.width, image.height)
        if spec.upload is not None:
            if spec.upload.size > self.settings.max_input_bytes:
                raise InvalidMask(
                    "The mask file is too large. Upload a smaller PNG (black and white, white = edit).",
                    code="too_large",
                )
            data = await spec.upload.read()
            return await asyncio.to_thread(
                imaging.normalize_mask,
                data,
                size,
                invert=spec.invert,
                max_bytes=self.settings.max_input_bytes,
                max_pixels=self.settings.max_input_pixels,
            )
        if spec.grid is None or not spec.cells:
            raise InvalidMask("Pick at least one area of the image to change.", code="mask_empty")
        rows, cols = spec.grid
        region = await asyncio.to_thread(imaging.grid_region, size, rows, cols, spec.cells)
        return await asyncio.to_thread(imaging.mask_from_region, region, invert=spec.invert)

    async def _restore_outside(
        self, result: EditResult, original: InputImage, mask: imaging.NormalizedMask, feather: int
    ) -> EditResult:
        """The locality guarantee: pixels outside the mask come back exactly as they were."""
        restored = []
        for image in result.images:
            data, fmt = await asyncio.to_thread(
                imaging.restore_outside, original.data, image.data, mask.region, feather=feather
            )
            restored.append(OutputImage(data, fmt))
        return replace(result, images=tuple(restored))

    async def _call_provider(
        self, job_id: str, running: _Running, model: ModelEntry, request: EditRequest, progress: Progress
    ) -> Served:
        trying = ""  # the route being tried; the router may move on before one takes the job

        async def submitting(route: Route) -> None:
            nonlocal trying
            trying = route.provider
            await self.storage.set_job_state(job_id, "submitting", provider=route.provider)

        call = asyncio.create_task(self.router.run(model, request, on_attempt=submitting))
        aborted = asyncio.create_task(running.abort.wait())
        started = time.monotonic()
        try:
            while True:
                elapsed = int(time.monotonic() - started)
                await progress(f"Editing with {model.name}… ({elapsed} s)")
                done, _ = await asyncio.wait(
                    {call, aborted}, timeout=PROGRESS_TICK_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if call in done:
                    try:
                        served = call.result()
                    except perr.ProviderError as exc:
                        self._notify(
                            "provider_finished",
                            exc.provider or trying,
                            model.id,
                            time.monotonic() - started,
                            type(exc).__name__,
                        )
                        raise
                    self._notify(
                        "provider_finished", served.route.provider, model.id, time.monotonic() - started, None
                    )
                    break
                if aborted in done:
                    raise JobInterrupted()
                if request.remaining() <= 0:
                    raise perr.ProviderTimeout("job deadline passed", provider=trying, accepted=True)
        finally:
            for task in (call, aborted):
                if not task.done():
                    task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(call, aborted, return_exceptions=True)
        if not served.result.images:
            raise perr.ServerError(
                "provider returned no images", provider=served.route.provider, accepted=True
            )
        return served

    async def _fit_files(self, job_id: str, result: EditResult, limit: int) -> tuple[ResultFile, ...]:
        files = []
        for index, image in enumerate(result.images):
            data, fmt = await asyncio.to_thread(imaging.fit_to_limit, image.data, image.format, limit)
            ext = "jpg" if fmt == "jpeg" else fmt
            files.append(ResultFile(f"retouch_{job_id[:8]}_{index + 1}.{ext}", data, fmt))
        return tuple(files)

    async def _fail(self, job_id: str, exc: BaseException) -> None:
        """Release the job's credits exactly once and record why.

        Provider and unexpected errors are re-raised as JobFailed (user text + reference);
        for RetouchError and cancellation the caller re-raises the original.
        """
        ref = new_reference()
        code = getattr(exc, "code", None) or type(exc).__name__
        state = "cancelled" if isinstance(exc, JobInterrupted | asyncio.CancelledError) else "failed"
        try:
            await self.storage.release(job_id, reason=str(code)[:64])
            await self.storage.set_job_state(job_id, state, error_code=str(code)[:64], error_ref=ref)
        except Exception:
            log.exception("job %s: could not release credits (ref %s)", job_id, ref)
        if isinstance(exc, perr.ProviderError):
            log.warning(
                "job %s failed (ref %s): %s from %s status=%s code=%s request_id=%s: %s",
                job_id,
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
            raise JobFailed(message_for_provider_error(exc), ref=ref, code=type(exc).__name__) from exc
        if isinstance(exc, RetouchError | asyncio.CancelledError):
            return
        log.error("job %s failed unexpectedly (ref %s)", job_id, ref, exc_info=exc)
        raise JobFailed(
            "Something went wrong with this edit. You were not charged.", ref=ref, code="internal"
        ) from exc


def _needs(chosen: JobDefaults, job: EditJob, images: int) -> Needs:
    """What the job asks of a route (before the images are read, `images` is the upload count)."""
    return Needs(
        images=images,
        size=chosen.size,
        quality=chosen.quality,
        background=chosen.background,
        output_format=chosen.output_format,
        count=chosen.count,
        mask=job.mask is not None,
        prompt_chars=len(job.options.prompt),
    )


def _add_notices(outcome: EditOutcome, notices: tuple[str, ...]) -> EditOutcome:
    return replace(outcome, notices=notices + outcome.notices) if notices else outcome


def _with_notices(
    deliver: Callable[[EditOutcome], Awaitable[None]], notices: tuple[str, ...]
) -> Callable[[EditOutcome], Awaitable[None]]:
    """Show what the server's rules changed next to the result the user gets."""
    if not notices:
        return deliver

    async def delivering(outcome: EditOutcome) -> None:
        await deliver(_add_notices(outcome, notices))

    return delivering
