"""Edit jobs as the commands see them: validate and price (`prepare`), then hand over to the engine.

The service takes plain values (ids, bytes, callables) and never a Discord object. `prepare` checks
options, images and the mask and prices the job without touching credits (what a preview shows);
`submit` stores the job and holds its credits, and `bot.jobs.engine.JobEngine` runs it from there — queue,
provider, delivery, capture or release — durably, across restarts, telling the caller's `LiveJob`.

Over 400 lines, `EditService` over 300: this is the former bot/jobs.py moved whole (issue 14 moves
code without rewriting it). The next cut is intake (options, images, mask: `options_for`,
`_check_options`, `_load_images`, `_load_mask`) into its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from bot import imaging, messages
from bot.catalog import Catalog, ModelEntry, Resolution, usd_to_credits
from bot.concurrency import ProviderLimiter
from bot.config import Settings
from bot.domain.options import output_options
from bot.domain.text import visible
from bot.errors import InvalidImage, InvalidMask, InvalidOptions, ShuttingDown
from bot.jobs.engine import JobEngine
from bot.jobs.files import JobFiles
from bot.jobs.model import (
    CancelAnswer,
    InputFile,
    JobObserver,
    JobSpec,
    LiveJob,
    MaskFiles,
    Origin,
    Ticket,
)
from bot.lifecycle import Lister, ModelLifecycle, discover_forever, discover_once
from bot.providers.base import InputImage, Provider
from bot.routing import Needs, Router
from bot.storage import Storage

if TYPE_CHECKING:
    from bot.services.moderation import SafetyCheck

log = logging.getLogger(__name__)

MAX_IMAGES_PER_EDIT = 4
OPENAI = "openai"  # the provider whose model list (GET /v1/models) carries shutdown dates
FIRST_DISCOVERY_WAIT_SECONDS = 5.0  # how long start-up waits for OpenAI's model list
DM_GUILD_ID = 0

Progress = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Upload:
    """An attachment as the service sees it: declared size plus a way to fetch the bytes."""

    label: str
    filename: str
    size: int
    read: Callable[[], Awaitable[bytes]]
    # A file the bot stored for an earlier job (Retry), not a member's: a mask is then the region the
    # bot wrote, read back as written (`imaging.stored_mask`) rather than checked as an upload.
    stored: bool = False


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
    # True when `model` carries over an earlier job's default (Retry) rather than the member's pick.
    model_is_default: bool = False

    @property
    def model_picked(self) -> bool:
        """The member named the model for this job (the command's `model` option)."""
        return self.model is not None and not self.model_is_default


@dataclass(frozen=True)
class JobDefaults:
    """The options a job runs with after the member's, server's and bot's defaults are merged."""

    model: str
    quality: str
    size: str
    background: str
    output_format: str
    count: int = 1
    # The server's provider order (/admin policy defaults providers); empty = PROVIDER_ORDER.
    provider_order: tuple[str, ...] = ()


DefaultsLookup = Callable[[int, int], Awaitable[JobDefaults]]


class JobPolicy(Protocol):
    """Server rules as the job service sees them (implemented by bot.services.policy.PolicyService)."""

    async def clamp(self, job: EditJob, chosen: JobDefaults) -> tuple[JobDefaults, tuple[str, ...]]:
        """Bring model, quality and count within the member's limits, and a default quality (none
        typed on the command) to one the model offers; return what changed."""
        ...

    async def reserve(self, job_id: str, job: EditJob, credits: int) -> object:
        """Hold the job's credits if cooldown, running jobs and the guild budget allow it.

        Raises RetouchError subclasses, or NotEnoughCredits like Storage.reserve.
        """
        ...

    async def precheck(self, job: EditJob) -> None:
        """Refuse, before any image is downloaded, a job the reservation would certainly refuse."""
        ...

    async def allows_model(self, guild_id: int, role_ids: tuple[int, ...], model_id: str) -> bool:
        """Whether the server's rules let a member with `role_ids` use `model_id`."""
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
    """One edit request as the services see it: plain ids, uploads and options, no Discord objects."""

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
    screened: bool = False  # the safety check already passed it (a cheaper re-run; bot.services.affordable)
    # The model notices in `notices` (their storage keys): taken once the job is accepted.
    notices_read: tuple[tuple[int, str, str], ...] = ()

    @property
    def model(self) -> ModelEntry:
        return self.resolution.model


class EditService:
    """Prepares edit jobs and submits them to the engine. One instance per process, shared by every cog."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        storage: Storage,
        providers: dict[str, Provider],
        user_salt: bytes,
        defaults: DefaultsLookup,
        policy: JobPolicy,
        lifecycle: ModelLifecycle,
        observers: Sequence[JobObserver] = (),
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.storage = storage
        self.providers = providers
        # What is live today: catalog dates, OpenAI's model list and "model gone" answers.
        self.lifecycle = lifecycle
        # Picks the route per job (PROVIDER_ORDER), falls back only when a provider provably did not
        # take the job, keeps one circuit breaker per provider and adapts each provider's calls in flight.
        self.router = Router(
            providers,
            order=settings.provider_order,
            limiter=ProviderLimiter.from_settings(settings),
            live=self.lifecycle.route_live,
            on_gone=self.lifecycle.retire,
            on_answer=self.lifecycle.heard,
            on_trial=self.lifecycle.trial_due,
        )
        self._salt = user_salt
        self._defaults = defaults
        self.policy = policy
        self.observers = list(observers)
        self.engine = JobEngine(
            settings=settings,
            catalog=catalog,
            storage=storage,
            router=self.router,
            files=JobFiles(settings.data_dir),
            observers=self.observers,
            lifecycle=self.lifecycle,
        )
        self.engine.model_allowed = self.policy.allows_model
        self._discovery: asyncio.Task[None] | None = None
        # The free safety check before anything is held or sent (bot.services.moderation; wired by bot.app).
        self.safety: SafetyCheck | None = None

    # -- public API ---------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self.engine.in_flight

    @property
    def accepting(self) -> bool:
        return self.engine.accepting

    async def start(self) -> None:
        """Learn which models are live (stored route facts, then OpenAI's model list), move stored
        defaults off dead models, recover jobs a previous process left, then run the watchdog."""
        await self.lifecycle.load()
        lister = getattr(self.providers.get(OPENAI), "list_models", None)
        if lister is not None:
            # The first read runs now and then daily; start-up waits for it only briefly (a slow
            # listing must not hold up the bot: until it answers, the catalog's and stored view rule).
            first = asyncio.create_task(discover_once(self.lifecycle, OPENAI, lister))
            self._discovery = asyncio.create_task(self._keep_discovering(first, lister))
            await asyncio.wait({first}, timeout=FIRST_DISCOVERY_WAIT_SECONDS)
        else:
            await self.lifecycle.move_stored_defaults()
        self.lifecycle.live_model_problem()  # said at start-up when no model can edit
        await self.engine.start()

    async def _keep_discovering(self, first: asyncio.Task[object], lister: Lister) -> None:
        """The first model-list read (however long it takes), then one a day."""
        await first
        await discover_forever(self.lifecycle, OPENAI, lister)

    async def stop_discovery(self) -> None:
        """Stop the daily model-list reads (shutdown)."""
        task, self._discovery = self._discovery, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def prepare(self, job: EditJob, *, progress: Progress | None = None) -> PreparedJob:
        """Validate options, images and mask, and price the job. Moves no credits, calls no provider."""
        await self.lifecycle.tick()  # a shutdown date passed: stored defaults move before they are read
        chosen = await self.options_for(job.guild_id, job.user_id, job.options)
        chosen, notices = await self.policy.clamp(job, chosen)
        resolution = self.lifecycle.resolve(chosen.model, picked=job.options.model_picked)
        if resolution.model.id != chosen.model:  # a replacement or the default: the server's rules apply
            resolution, chosen, moved = await self._within_rules(job, chosen, resolution)
            notices = (*notices, *moved)
        model = resolution.model
        if _gone_inherited(job.options, self.catalog):  # Edit again, Retry: say why the model changed
            notices = (messages.defaulted(str(job.options.model), model.name), *notices)
        self._check_options(model, chosen, job)
        # No credits and no allowance due, or no budget left: say so before downloading anything.
        await self.policy.precheck(job)
        if progress is not None:
            await progress("Checking your images…")
        images = await self._load_images(job.uploads)
        mask = mask_png = None
        if job.mask is not None:
            mask = await self._load_mask(job.mask, images[0])
            mask_png = await asyncio.to_thread(mask.openai_png)
            if mask.light_on_clear and not job.mask.invert:
                notices = (*notices, messages.MASK_LIGHT_ON_CLEAR)
        reserve = usd_to_credits(
            self.router.reserve_usd(
                model, _needs(chosen, job, len(images)), prompt=job.options.prompt, order=_order(chosen)
            ),
            self.settings.credits_per_usd,
        )
        # Read, not taken: the job may still be refused, or be a preview never run (`_take_notices`).
        pending = await self.storage.settings.pending_model_notices(job.user_id)
        return PreparedJob(
            job,
            chosen,
            resolution,
            tuple(images),
            reserve,
            mask,
            mask_png,
            notices + pending.texts,
            notices_read=pending.keys,
        )

    async def _within_rules(
        self, job: EditJob, chosen: JobDefaults, resolution: Resolution
    ) -> tuple[Resolution, JobDefaults, tuple[str, ...]]:
        """The model a job moved to (a dead one's replacement, the default) under the server's rules
        for the member: an allowed one (else PolicyRefused) and a quality it offers. `chosen` keeps
        the model asked for (Retry and Edit again carry it)."""
        moved, notices = await self.policy.clamp(job, replace(chosen, model=resolution.model.id))
        if moved.model != resolution.model.id:
            resolution = Resolution(self.catalog.get(moved.model), resolution.notice)
        return resolution, replace(moved, model=chosen.model), notices

    def at_quality(self, prepared: PreparedJob, quality: str) -> PreparedJob:
        """The same prepared job at another quality, held at that quality's true worst case.

        Raises InvalidOptions when no configured route can make it (bot.services.affordable skips those).
        """
        chosen = replace(prepared.chosen, quality=quality)
        needs = _needs(chosen, prepared.job, len(prepared.images))
        usd = self.router.reserve_usd(
            prepared.model, needs, prompt=prepared.job.options.prompt, order=_order(chosen)
        )
        return replace(prepared, chosen=chosen, reserve=usd_to_credits(usd, self.settings.credits_per_usd))

    async def submit(
        self,
        prepared: PreparedJob,
        *,
        live: LiveJob | None = None,
        origin: Origin | None = None,
        on_hold: Callable[[str], None] | None = None,
    ) -> Ticket:
        """Store the job, hold its credits and queue it; the engine runs it from there.

        Raises InsufficientCredits or a server rule's refusal (nothing held). Progress, the result
        and any failure go to `live` (and, after a restart, through the engine's Delivery).
        `on_hold(job_id)` is called as soon as the credits are held: from then on the job runs (or is
        settled) whatever this call raises, so a caller can tell a start that failed before any hold
        (which may be tried again) from one whose edit was started.
        """
        return await self._submit(prepared, live, origin, on_hold)

    async def cancel(self, job_id: str, *, actor_id: int, can_manage: bool) -> CancelAnswer:
        """Cancel a job (see `JobEngine.cancel`): what it did, and the text for the person who asked."""
        return await self.engine.cancel(job_id, actor_id=actor_id, can_manage=can_manage)

    async def retry_job(
        self,
        job_id: str,
        *,
        user_id: int,
        guild_id: int,
        role_ids: tuple[int, ...],
        channel_id: int | None,
        upload_limit: int,
    ) -> EditJob:
        """The job to run for a result's Retry: its stored inputs and options, for its requester.

        The member's roles and the server are the ones of the click, never the stored ones: a member
        who lost a tier role (or left the server) does not keep its privileges through retries.
        Raises RetouchError when someone else asks, from another place, or the inputs are no longer kept.
        """
        row = await self.storage.jobs.get_job(job_id)
        if row is None:
            raise InvalidOptions(messages.UNKNOWN_EDIT, code="unknown_job")
        if row.guild_id != guild_id:
            raise InvalidOptions(messages.RETRY_ELSEWHERE, code="retry_elsewhere")
        if row.user_id != user_id:
            raise InvalidOptions(messages.RETRY_NOT_REQUESTER, code="not_requester")
        spec = JobSpec.from_json(row.spec) if row.spec else None
        expires = row.files_expire_at or ""
        now = self.storage.now().astimezone(dt.UTC).isoformat(timespec="milliseconds")
        kept = (
            spec is not None
            and expires > now
            and await asyncio.to_thread(self.engine.files.exists, row.id, spec.input_names)
        )
        if spec is None or not kept:
            hours = self.settings.input_retention_hours
            raise InvalidOptions(messages.inputs_expired(hours), code="inputs_expired")
        job = _job_from_spec(row.id, guild_id, spec, self.engine.files, user_id, channel_id, upload_limit)
        return dataclasses.replace(job, role_ids=role_ids)

    async def again_options(self, job_id: str, prompt: str, *, user_id: int) -> EditOptions:
        """Edit again's options for `user_id` (who clicked): `prompt` on the model the stored job asked
        for, counted as the member's pick only when it was one (as Retry does). The form has no model
        option, so a model the job merely inherited must move with the default when it dies, and a
        picked one that died with no successor is inherited too, not refused as a pick the member
        cannot change. A model the job inherited is the requester's default, not another clicker's:
        theirs decide. An unknown job leaves the model to the defaults."""
        row = await self.storage.jobs.get_job(job_id)
        if row is None:
            return EditOptions(prompt)
        if not row.spec:  # a row without its spec does not say whether the model was picked
            model, picked = row.model, False
        else:
            spec = JobSpec.from_json(row.spec)
            model, picked = (
                spec.requested_model,
                spec.model_picked and self._still_pickable(spec.requested_model),
            )
        if not picked and user_id != row.user_id:
            return EditOptions(prompt)
        return EditOptions(prompt, model=model, model_is_default=not picked)

    def _still_pickable(self, model_id: str) -> bool:
        """Whether a job that picks `model_id` today runs (on it or its successor) rather than being
        refused as naming a model that is gone."""
        try:
            self.lifecycle.resolve(model_id, picked=True)
        except InvalidOptions:
            return False
        return True

    async def _submit(
        self,
        prepared: PreparedJob,
        live: LiveJob | None,
        origin: Origin | None,
        on_hold: Callable[[str], None] | None = None,
    ) -> Ticket:
        if not self.accepting:
            raise ShuttingDown()
        job = prepared.job
        if self.safety is not None and not prepared.screened:  # raises Flagged: nothing held or sent
            await self.safety.screen(
                guild_id=job.guild_id,
                user_id=job.user_id,
                channel_id=job.channel_id,
                prompt=job.options.prompt,
                images=prepared.images,
            )
        spec, files = await self._spec(prepared)

        async def reserve(job_id: str) -> object:
            # Refills a due allowance, then checks cooldown, running jobs and the server's monthly
            # budget inside the reservation's own transaction.
            held = await self.policy.reserve(job_id, job, prepared.reserve)
            if on_hold is not None:
                on_hold(job_id)
            return held

        ticket = await self.engine.submit(
            spec,
            files,
            guild_id=job.guild_id,
            user_id=job.user_id,
            channel_id=job.channel_id,
            reserve=reserve,
            live=live,
            origin=origin,
        )
        await self._take_notices(prepared)
        return ticket

    async def _take_notices(self, prepared: PreparedJob) -> None:
        """The job is accepted (held and queued) and will show its model notices: they are used up."""
        user_id, read = prepared.job.user_id, prepared.notices_read
        if not read:
            return
        try:
            await self.storage.settings.take_model_notices(user_id, only=read)
        except Exception as exc:  # the job runs anyway: at worst a notice is shown once more
            log.warning("could not take the model notices of user %s: %s", user_id, type(exc).__name__)

    async def _spec(self, prepared: PreparedJob) -> tuple[JobSpec, dict[str, bytes]]:
        """What the engine stores for a prepared job: its spec and its files (inputs, mask)."""
        job, chosen = prepared.job, prepared.chosen
        files: dict[str, bytes] = {}
        inputs = []
        for index, (image, upload) in enumerate(zip(prepared.images, job.uploads, strict=True), start=1):
            name = f"input-{index}.{image.extension}"
            files[name] = image.data
            inputs.append(InputFile(name, upload.label, image.mime, image.width, image.height))
        mask = None
        if prepared.mask is not None and prepared.mask_png is not None and job.mask is not None:
            files["mask.png"] = prepared.mask_png
            files["region.png"] = await asyncio.to_thread(prepared.mask.white_edit_png)
            mask = MaskFiles("mask.png", "region.png", job.mask.feather, job.mask.keep_outside)
        resolution = prepared.resolution
        spec = JobSpec(
            prompt=job.options.prompt,
            model=resolution.model.id,
            requested_model=chosen.model,
            model_name=resolution.model.name,
            **output_options(chosen),
            reserve=prepared.reserve,
            upload_limit=job.upload_limit,
            user_hash=self.user_hash(job.user_id),
            inputs=tuple(inputs),
            mask=mask,
            notices=prepared.notices + ((resolution.notice,) if resolution.notice else ()),
            provider_order=chosen.provider_order,
            role_ids=job.role_ids,
            model_picked=job.options.model_picked and resolution.model.id == chosen.model,
            credits_per_usd=self.settings.credits_per_usd,
        )
        return spec, files

    async def drain(self, grace: float) -> int:
        """Stop taking jobs and let running ones finish for up to `grace` seconds (see
        `JobEngine.drain`: nothing durable is lost). Returns how many were aborted and refunded."""
        await self.stop_discovery()
        aborted = await self.engine.drain(grace)
        await self.lifecycle.flush()  # a trial's answer still being stored and announced (bounded)
        return aborted

    async def options_for(self, guild_id: int, user_id: int, options: EditOptions) -> JobDefaults:
        """Merge command options over the user's/guild's defaults (command options always win)."""
        d = await self._defaults(guild_id, user_id)
        return JobDefaults(
            model=d.model if _gone_inherited(options, self.catalog) else options.model or d.model,
            quality=options.quality or d.quality,
            size=options.size or d.size,
            background=options.background or d.background,
            output_format=options.output_format or d.output_format,
            count=options.count or d.count,
            provider_order=d.provider_order,
        )

    def user_hash(self, user_id: int) -> str:
        """A stable pseudonymous id for the provider's abuse monitoring (never the Discord id)."""
        return hashlib.sha256(self._salt + str(user_id).encode()).hexdigest()[:32]

    # -- the pipeline -------------------------------------------------------------------------------

    def _check_options(self, model: ModelEntry, chosen: JobDefaults, job: EditJob) -> None:
        prompt = job.options.prompt
        if not visible(prompt):
            raise InvalidOptions(messages.EMPTY_PROMPT, code="empty_prompt")
        if len(prompt) > model.max_prompt_chars:
            raise InvalidOptions(
                messages.prompt_too_long(len(prompt), model.name, model.max_prompt_chars),
                code="prompt_too_long",
            )
        if chosen.quality not in model.qualities:
            raise InvalidOptions(messages.quality_not_offered(model, chosen.quality), code="bad_quality")
        if not model.accepts_size(chosen.size):
            raise InvalidOptions(messages.size_not_offered(model, chosen.size), code="bad_size")
        if not 1 <= chosen.count <= MAX_IMAGES_PER_EDIT:
            raise InvalidOptions(messages.count_range(MAX_IMAGES_PER_EDIT), code="bad_count")
        if chosen.background == "transparent" and chosen.output_format == "jpeg":
            raise InvalidOptions(messages.TRANSPARENT_NEEDS_FORMAT_OPTION, code="transparent_jpeg")
        if len(job.uploads) > min(model.max_input_images, MAX_IMAGES_PER_EDIT):
            raise InvalidOptions(
                messages.too_many_inputs(model.name, model.max_input_images), code="too_many_images"
            )
        if job.mask is not None and not model.mask:
            raise InvalidOptions(messages.no_mask_support(model.name), code="no_mask_support")
        # Raises InvalidOptions naming the option to change when no configured route can honour it.
        self.router.require(model, _needs(chosen, job, len(job.uploads)), order=_order(chosen))

    async def _load_images(self, uploads: Sequence[Upload]) -> list[InputImage]:
        cap = self.settings.max_input_bytes
        for upload in uploads:
            # Refuse from the declared size before downloading a single byte.
            if upload.size > cap:
                raise InvalidImage(
                    messages.upload_too_large(upload.label, upload.size, cap), code="too_large"
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
        if spec.upload is not None and spec.upload.stored:
            # Its 8-bit PNG can be larger than the member's mask was: MAX_INPUT_MB is not for it.
            data = await spec.upload.read()
            try:
                return await asyncio.to_thread(imaging.stored_mask, data, size, invert=spec.invert)
            except ValueError as exc:
                # The bot wrote it: damaged on disk since. The member is told what an unreadable mask
                # upload tells them, the operator why.
                log.warning("stored mask %s of a Retry is unusable: %s", spec.upload.filename, exc)
                raise InvalidMask(messages.corrupt("`mask`"), code="corrupt") from None
        if spec.upload is not None:
            if spec.upload.size > self.settings.max_input_bytes:
                raise InvalidMask(messages.MASK_FILE_TOO_LARGE, code="too_large")
            data = await spec.upload.read()
            return await asyncio.to_thread(
                imaging.normalize_mask,
                data,
                size,
                invert=spec.invert,
                max_bytes=self.settings.max_input_bytes,
                max_pixels=self.settings.max_input_pixels,
            )
        rows, cols = require_picked_area(spec)
        region = await asyncio.to_thread(imaging.grid_region, size, rows, cols, spec.cells)
        return await asyncio.to_thread(imaging.mask_from_region, region, invert=spec.invert)


def _gone_inherited(options: EditOptions, catalog: Catalog) -> bool:
    """An earlier job's model, not the member's pick (Edit again, Retry), that the operator's catalog no
    longer has: the member's defaults decide instead, with the server's rules, as for a new edit."""
    return options.model_is_default and options.model is not None and options.model not in catalog.models


def require_picked_area(spec: MaskSpec) -> tuple[int, int]:
    """The (rows, cols) of a grid selection that leaves something to change and something to keep.

    Raises InvalidMask, in the picker's words, for any other selection. Checked before any pixels, so
    a member who picked every cell is not told to paint a mask file (what the pixel check after it
    would say). Cell numbers are checked later, by `imaging.grid_region`.
    """
    if spec.grid is None or not spec.cells:
        raise InvalidMask(messages.NO_AREA_PICKED, code="mask_empty")
    rows, cols = spec.grid
    if set(range(1, rows * cols + 1)) <= set(spec.cells):
        if spec.invert:
            raise InvalidMask(messages.EVERY_CELL_KEPT, code="mask_empty")
        raise InvalidMask(messages.EVERY_CELL_PICKED, code="mask_full")
    return rows, cols


def _order(chosen: JobDefaults) -> tuple[str, ...] | None:
    """The server's provider order when it set one, else None (the bot-wide PROVIDER_ORDER)."""
    return chosen.provider_order or None


def _needs(chosen: JobDefaults, job: EditJob, images: int) -> Needs:
    """What the job asks of a route (before the images are read, `images` is the upload count)."""
    return Needs.with_options(
        chosen, images=images, mask=job.mask is not None, prompt_chars=len(job.options.prompt)
    )


def _stored_upload(files: JobFiles, job_id: str, name: str, label: str) -> Upload:
    """A stored file of an earlier job, as an upload for a new one (Retry)."""

    async def read() -> bytes:
        return await asyncio.to_thread(files.read, job_id, name)

    size = (files.folder(job_id) / name).stat().st_size
    return Upload(label=label, filename=name, size=size, read=read, stored=True)


def _job_from_spec(
    job_id: str,
    guild_id: int,
    spec: JobSpec,
    files: JobFiles,
    user_id: int,
    channel_id: int | None,
    upload_limit: int,
) -> EditJob:
    """A new job with an earlier job's inputs and options (Retry: same request, new charge)."""
    mask = None
    if spec.mask is not None:
        mask = MaskSpec(
            upload=_stored_upload(files, job_id, spec.mask.region, "mask"),
            feather=spec.mask.feather,
            keep_outside=spec.mask.keep_outside,
        )
    return EditJob(
        guild_id=guild_id,
        user_id=user_id,
        channel_id=channel_id,
        uploads=[_stored_upload(files, job_id, f.name, f.label) for f in spec.inputs],
        options=EditOptions(
            spec.prompt,
            model=spec.requested_model,
            model_is_default=not spec.model_picked,
            **output_options(spec),
        ),
        upload_limit=upload_limit,
        mask=mask,
        role_ids=spec.role_ids,
    )
