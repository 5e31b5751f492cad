"""`/mask` and the "Edit image" message menu: edits that change only the part of an image the user marked.

The flow stays private until the result:

1. `/mask` defers privately. With a mask file the job is prepared at once; without one the user picks
   cells of a grid on a private picker whose picture updates as cells are chosen.
2. A private preview shows the area to change tinted, the worst-case cost and the balance, with
   **Run edit** / **Cancel**. No credits move before **Run edit** (users who turned the preview off in
   their settings go straight to the edit).
3. **Run edit** reserves, edits, restores everything outside the area and posts the result publicly,
   exactly like `/edit`.

Picker and preview state (the prepared job and the image bytes) is kept in memory only, for
`PREVIEW_TIMEOUT_SECONDS` after the user's last click; a restart or the timeout drops it. Every control
carries just a random session id in its custom id and is handled by one dynamic item, so a click on a
stale message still reaches the bot and is answered ("this preview expired") instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import secrets
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import imaging
from bot.choices import normalize_size
from bot.client import RetouchBot
from bot.errors import RetouchError
from bot.services import masking
from bot.services.edits import EditJob, EditOptions, MaskSpec, PreparedJob
from cogs._results import run_and_publish
from cogs._ui import (
    EMBED_COLOUR,
    PROMPT_PREVIEW_CHARS,
    ProgressMessage,
    admitted,
    first_image,
    model_choices,
    policy_of,
    quality_choices,
    report_error,
    role_ids_of,
    size_choices,
    truncate,
    upload_of,
)

log = logging.getLogger(__name__)

# How long a picker or preview waits for the next click before it is dropped. Well inside the
# 15 minutes an interaction token lives, so the expiry notice can still be written into the message.
PREVIEW_TIMEOUT_SECONDS = 300.0
# A form left open this long is forgotten; submitting it afterwards shows Discord's own error.
MODAL_TIMEOUT_SECONDS = 900.0
PROMPT_MAX_CHARS = 6000  # Discord's cap for a string option
MODAL_PROMPT_MAX_CHARS = 4000  # Discord's cap for a text input in a form
MAX_FEATHER_PX = 64
CUSTOM_ID_PREFIX = "retouch:mask"
PICKER_FILE = "mask_grid.jpg"
PREVIEW_FILE = "mask_preview.jpg"
NO_MENTIONS = discord.AllowedMentions.none()
# Sessions that ran or were cancelled, remembered so a late double-click is ignored quietly instead of
# overwriting the progress message with "expired".
FINISHED_REMEMBERED = 1000

Action = Literal["cells", "grid", "next", "back", "run", "cancel"]
Handler = Callable[[discord.Interaction, "MaskSession", list[str]], Awaitable[None]]


def control_id(sid: str, action: Action) -> str:
    return f"{CUSTOM_ID_PREFIX}:{sid}:{action}"


def expired_text(timeout: float) -> str:
    return (
        f"This preview has expired (previews last {_minutes(timeout)} without a click, and do not "
        "survive a restart). Nothing was charged — run `/mask` again."
    )


class TooManyPreviews(RetouchError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"You already have {limit} /mask preview(s) open. Run or cancel one of them first "
            "(they also expire after a few minutes). Nothing was charged.",
            code="too_many_previews",
        )


@dataclass
class MaskSession:
    """One user's picker or preview, alive until it runs, is cancelled or expires."""

    sid: str
    user_id: int
    job: EditJob  # its MaskSpec holds the uploaded mask or the picked cells
    handle: discord.Interaction  # the latest interaction whose @original is the private message
    skip_preview: bool = False
    picture: bytes | None = None  # picker only: the validated, upright image the grid is drawn on
    prepared: PreparedJob | None = None  # set while the preview is shown
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def spec(self) -> MaskSpec:
        assert self.job.mask is not None
        return self.job.mask

    @property
    def picking(self) -> bool:
        return self.picture is not None

    @property
    def grid(self) -> tuple[int, int]:
        return self.spec.grid or masking.DEFAULT_GRID


class MaskSessions:
    """Sessions by id. The clock is armed after each render and stopped while a click is handled,
    so a session is dropped (and `on_expire` runs) only `timeout` seconds after the user last saw it."""

    def __init__(self, timeout: float, on_expire: Callable[[MaskSession], Awaitable[None]]) -> None:
        self.timeout = timeout
        self._on_expire = on_expire
        self._sessions: dict[str, MaskSession] = {}
        self._starting: Counter[int] = Counter()  # per member: pickers/previews being prepared
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, sid: str) -> MaskSession | None:
        return self._sessions.get(sid)

    def count(self, user_id: int) -> int:
        """A member's open pickers and previews, and those being prepared (each holds images)."""
        return self._starting[user_id] + sum(1 for s in self._sessions.values() if s.user_id == user_id)

    @contextlib.contextmanager
    def starting(self, user_id: int, limit: int) -> Iterator[None]:
        """Hold one of the member's `limit` places while a picker or preview is prepared; raise
        TooManyPreviews, before anything is downloaded, when they are all taken."""
        if self.count(user_id) >= limit:
            raise TooManyPreviews(limit)
        self._starting[user_id] += 1
        try:
            yield
        finally:
            self._starting[user_id] -= 1
            if self._starting[user_id] <= 0:
                del self._starting[user_id]

    def open(self, session: MaskSession) -> None:
        """Register before the first render, so a click that comes at once finds the session."""
        self._sessions[session.sid] = session

    def touch(self, session: MaskSession, interaction: discord.Interaction) -> None:
        """The user clicked: stop the clock and remember the newest way to edit the message."""
        session.handle = interaction
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None

    def arm(self, session: MaskSession) -> None:
        """The user sees the picker or preview now: start (or restart) its clock."""
        if session.expiry is not None:
            session.expiry.cancel()
        if session.sid in self._sessions:
            session.expiry = asyncio.get_running_loop().call_later(self.timeout, self._expire, session.sid)

    def close(self, sid: str) -> MaskSession | None:
        """Take a session out (to run or cancel it). Returns None if it is already gone."""
        session = self._sessions.pop(sid, None)
        if session is not None and session.expiry is not None:
            session.expiry.cancel()
        return session

    def finish(self, sid: str) -> MaskSession | None:
        """Close a session because it ran or was cancelled, and remember that for a while."""
        self._finished[sid] = None
        while len(self._finished) > FINISHED_REMEMBERED:
            self._finished.popitem(last=False)
        return self.close(sid)

    def finished(self, sid: str) -> bool:
        return sid in self._finished

    def close_all(self) -> None:
        for sid in list(self._sessions):
            self.close(sid)

    def _expire(self, sid: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            task = asyncio.create_task(self._on_expire(session), name=f"mask-expire-{sid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


class MaskControl(
    discord.ui.DynamicItem[discord.ui.Item[Any]],
    template=CUSTOM_ID_PREFIX + r":(?P<sid>[0-9a-f]{12}):(?P<action>[a-z]+)",
):
    """Every button and menu of the picker and the preview; routes the click to the cog."""

    def __init__(self, item: discord.ui.Item[Any], sid: str, action: str) -> None:
        super().__init__(item)
        self.sid = sid
        self.action = action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any, /
    ) -> MaskControl:
        return cls(item, match["sid"], match["action"])

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        return await admitted(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        cog = interaction.client.get_cog(MaskCog.__cog_name__)  # type: ignore[attr-defined]
        if isinstance(cog, MaskCog):
            values = [str(v) for v in getattr(self.item, "values", [])]
            await cog.on_control(interaction, self.sid, self.action, values)


# -- rendering ----------------------------------------------------------------------------------------


def _button(sid: str, action: Action, label: str, style: discord.ButtonStyle, **kwargs: Any) -> MaskControl:
    item = discord.ui.Button[Any](
        label=label, style=style, custom_id=control_id(sid, action), row=1, **kwargs
    )
    return MaskControl(item, sid, action)


def picker_view(session: MaskSession) -> discord.ui.View:
    rows, cols = session.grid
    chosen = set(session.spec.cells)
    select = discord.ui.Select[Any](
        custom_id=control_id(session.sid, "cells"),
        placeholder="Pick the cells to change",
        min_values=0,
        max_values=rows * cols,
        options=[
            discord.SelectOption(
                label=f"Cell {n}",
                description=f"row {(n - 1) // cols + 1}, column {(n - 1) % cols + 1}",
                value=str(n),
                default=n in chosen,
            )
            for n in range(1, rows * cols + 1)
        ],
        row=0,
    )
    other_rows, other_cols = masking.next_grid(session.grid)
    view = discord.ui.View(timeout=None)  # expiry is the session's, not the view's
    view.add_item(MaskControl(select, session.sid, "cells"))
    view.add_item(
        _button(
            session.sid,
            "next",
            "Run edit" if session.skip_preview else "Preview",
            discord.ButtonStyle.success if session.skip_preview else discord.ButtonStyle.primary,
            disabled=not chosen,
        )
    )
    view.add_item(
        _button(session.sid, "grid", f"Use a {other_rows}×{other_cols} grid", discord.ButtonStyle.secondary)
    )
    view.add_item(_button(session.sid, "cancel", "Cancel", discord.ButtonStyle.secondary))
    return view


def picker_embed(session: MaskSession, timeout: float) -> discord.Embed:
    if session.spec.invert:
        how = "The tinted cells are **kept**; everything else will change (`invert` is on)."
    else:
        how = "The tinted cells will change; everything else stays exactly as it is."
    embed = discord.Embed(
        title="Pick the area to change",
        description=f"Choose cell numbers in the menu below. {how}",
        colour=EMBED_COLOUR,
    )
    embed.set_image(url=f"attachment://{PICKER_FILE}")
    if session.skip_preview:
        next_step = "Run edit starts the edit at once (skip_mask_preview is on in your /settings)."
    else:
        next_step = "Nothing is charged yet: Preview shows the cost first."
    embed.set_footer(text=f"{next_step} The picker expires after {_minutes(timeout)} without a click.")
    return embed


def preview_view(session: MaskSession) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(_button(session.sid, "run", "Run edit", discord.ButtonStyle.success))
    if session.picking:
        view.add_item(_button(session.sid, "back", "Change area", discord.ButtonStyle.secondary))
    view.add_item(_button(session.sid, "cancel", "Cancel", discord.ButtonStyle.secondary))
    return view


def preview_embed(prepared: PreparedJob, shown: masking.MaskPreview, timeout: float) -> discord.Embed:
    spec = prepared.job.mask
    assert spec is not None
    if spec.keep_outside:
        title = "Preview: only the tinted area will change"
    else:
        title = "Preview: the model is asked to change the tinted area (`keep_outside` is off)"
    embed = discord.Embed(
        title=title,
        description=discord.utils.escape_markdown(
            truncate(prepared.job.options.prompt, PROMPT_PREVIEW_CHARS)
        ),
        colour=EMBED_COLOUR,
    )
    embed.add_field(name="Cost", value=f"up to {shown.cost} credits")
    embed.add_field(name="Your balance", value=f"{shown.balance} credits")
    embed.add_field(name="Area", value=f"{shown.coverage:.0%} of the image")
    embed.add_field(name="Model", value=prepared.model.name)
    embed.add_field(name="Quality", value=prepared.chosen.quality)
    embed.add_field(name="Size", value=prepared.chosen.size)
    if not shown.affordable:
        embed.add_field(
            name="Not enough credits",
            value=f"This edit can cost up to {shown.cost} credits and you have {shown.balance}. "
            "Try a lower quality, or ask an admin for credits.",
            inline=False,
        )
    for notice in prepared.notices:
        embed.add_field(name="Note", value=truncate(notice, 1000), inline=False)
    embed.set_image(url=f"attachment://{PREVIEW_FILE}")
    embed.set_footer(
        text=f"Nothing is charged until you press Run edit. The preview expires after {_minutes(timeout)} "
        "without a click."
    )
    return embed


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _file(data: bytes, filename: str) -> discord.File:
    return discord.File(io.BytesIO(data), filename=filename)


# -- the "Edit image" form ---------------------------------------------------------------------------


class EditImageForm(discord.ui.Modal, title="Edit image"):
    """A prompt and an optional mask upload for the message menu's image."""

    prompt = discord.ui.Label(
        text="What should change?",
        component=discord.ui.TextInput(
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            placeholder="e.g. make it a watercolour painting",
            max_length=MODAL_PROMPT_MAX_CHARS,
        ),
    )
    mask = discord.ui.Label(
        text="Mask (optional)",
        description="White or transparent = change, black = keep. Leave empty to edit the whole image.",
        component=discord.ui.FileUpload(custom_id="mask", required=False, min_values=0, max_values=1),
    )

    def __init__(self, cog: MaskCog, image: discord.Attachment, message_id: int | None = None) -> None:
        super().__init__(timeout=MODAL_TIMEOUT_SECONDS)
        self.cog = cog
        self.image = image
        self.message_id = message_id  # the message the menu was used on (linked from late results)

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        return await admitted(interaction)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        text = self.prompt.component
        upload = self.mask.component
        assert isinstance(text, discord.ui.TextInput) and isinstance(upload, discord.ui.FileUpload)
        mask = upload.values[0] if upload.values else None
        await self.cog.run_from_form(interaction, self.image, text.value, mask, self.message_id)

    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:
        await report_error(interaction, error, where="the Edit image form")


# -- the cog -----------------------------------------------------------------------------------------


class MaskCog(commands.Cog):
    """Discord plumbing for masked edits; validation, pricing and image work live in `bot/`."""

    def __init__(self, bot: RetouchBot, *, preview_timeout: float = PREVIEW_TIMEOUT_SECONDS) -> None:
        self.bot = bot
        self.edits = bot.services.edits
        self.sessions = MaskSessions(preview_timeout, self._expired)
        self.menu = app_commands.ContextMenu(name="Edit image", callback=self.edit_image_menu)
        self._handlers: dict[str, Handler] = {
            "cells": self._pick_cells,
            "grid": self._switch_grid,
            "next": self._next,
            "back": self._back,
            "run": self._run,
            "cancel": self._cancel,
        }

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(MaskControl)
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)
        self.bot.remove_dynamic_items(MaskControl)
        self.sessions.close_all()

    # -- entry points ---------------------------------------------------------------------------

    @app_commands.command(
        name="mask", description="Edit only part of an image: upload a mask or pick the area"
    )
    @app_commands.describe(
        prompt="What should the marked area become? e.g. 'a red knitted scarf'",
        image="The image to edit (PNG, JPEG or WebP)",
        mask="White (or transparent) = change, black = keep. Leave empty to pick the area on a grid",
        invert="Swap the mask: change what it marks as kept, keep what it marks",
        quality="Higher quality costs more credits; the list shows your model's levels and prices",
        size="Output size: pick one, or type WIDTHxHEIGHT where the model allows it (auto = model's choice)",
        format="File format of the result",
        feather=f"Soften the seam by this many pixels (0 = hard edge, default {imaging.FEATHER_PX})",
        keep_outside="Keep everything outside the area exactly as it was (default on)",
        model="Which image model to use (only models that can do masked edits)",
    )
    async def mask(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, PROMPT_MAX_CHARS],
        image: discord.Attachment,
        mask: discord.Attachment | None = None,
        invert: bool = False,
        quality: str | None = None,
        size: str | None = None,
        format: Literal["png", "jpeg", "webp"] | None = None,
        feather: app_commands.Range[int, 0, MAX_FEATHER_PX] | None = None,
        keep_outside: bool = True,
        model: str | None = None,
    ) -> None:
        # Private "thinking" first: the picker, the preview and any error are for this user only.
        await interaction.response.defer(ephemeral=True, thinking=True)
        self.bot.services.metrics.observe_ack(interaction.created_at)
        interaction.extras["ephemeral_original"] = True
        spec = MaskSpec(
            upload=upload_of("mask", mask) if mask is not None else None,
            invert=invert,
            feather=imaging.FEATHER_PX if feather is None else feather,
            keep_outside=keep_outside,
        )
        options = EditOptions(
            prompt, model=model, quality=quality, size=normalize_size(size), output_format=format
        )
        await self._begin(interaction, self._job(interaction, image, options, spec))

    @mask.autocomplete("model")
    async def model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return model_choices(self.edits.lifecycle, current, mask_only=True)

    @mask.autocomplete("quality")
    async def quality_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return await quality_choices(self.bot, interaction, current)

    @mask.autocomplete("size")
    async def size_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return await size_choices(self.bot, interaction, current)

    async def edit_image_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Message menu: open the form for the message's image (a modal must be the first response)."""
        image = first_image(message)
        if image is None:
            await interaction.response.send_message(
                "That message has no image attached. Use **Edit image** on a message with a PNG, JPEG or "
                "WebP file.",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        await interaction.response.send_modal(EditImageForm(self, image, message.id))

    async def run_from_form(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: str,
        mask: discord.Attachment | None,
        message_id: int | None = None,
    ) -> None:
        """The form was sent: a mask makes it a `/mask` job (preview first), otherwise an `/edit` job."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        self.bot.services.metrics.observe_ack(interaction.created_at)
        interaction.extras["ephemeral_original"] = True
        spec = MaskSpec(upload=upload_of("mask", mask)) if mask is not None else None
        job = self._job(interaction, image, EditOptions(prompt), spec)
        if spec is not None:
            await self._begin(interaction, job)
            return
        await run_and_publish(
            self.bot,
            interaction,
            lambda progress: self.edits.prepare(job, progress=progress),
            origin_message_id=message_id,
        )

    # -- the flow -------------------------------------------------------------------------------

    def _job(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        options: EditOptions,
        spec: MaskSpec | None,
    ) -> EditJob:
        return EditJob(
            guild_id=interaction.guild_id or 0,
            user_id=interaction.user.id,
            channel_id=interaction.channel_id,
            uploads=[upload_of("image", image)],
            options=options,
            upload_limit=interaction.filesize_limit,
            mask=spec,
            role_ids=role_ids_of(interaction.user),
        )

    async def _begin(self, interaction: discord.Interaction, job: EditJob) -> None:
        """After a private defer: show the picker (no mask file) or the preview, or run at once."""
        assert job.mask is not None
        with self.sessions.starting(job.user_id, self.bot.services.settings.max_mask_previews):
            await self._begin_session(interaction, job)

    async def _begin_session(self, interaction: discord.Interaction, job: EditJob) -> None:
        assert job.mask is not None
        skip = await self._skips_preview(interaction.user.id)
        progress = ProgressMessage(interaction)
        session = MaskSession(secrets.token_hex(6), interaction.user.id, job, interaction, skip_preview=skip)
        if job.mask.upload is None:
            provisional = await masking.prepare_picker(self.edits, job, progress=progress)
            await progress.close()
            session.job = masking.with_cells(job, masking.DEFAULT_GRID, ())
            session.picture = provisional.images[0].data
            await self._open(session, self._show_picker(interaction, session))
            return
        prepared = await self.edits.prepare(job, progress=progress)
        await progress.close()
        if skip:
            await self._execute(interaction, prepared)
            return
        session.prepared = prepared
        await self._open(session, self._show_preview(interaction, session))

    async def _open(self, session: MaskSession, render: Awaitable[None]) -> None:
        """Register a new session and show it; a session whose first render failed is dropped."""
        self.sessions.open(session)
        try:
            await render
        except BaseException:
            self.sessions.close(session.sid)
            raise

    async def on_control(
        self, interaction: discord.Interaction, sid: str, action: str, values: list[str]
    ) -> None:
        """A click on the picker or the preview. Never raises: errors become private messages."""
        session = self.sessions.get(sid)
        try:
            if session is None and self.sessions.finished(sid):
                await interaction.response.defer()  # a second click on Run or Cancel: already handled
                return
            if session is None:
                await interaction.response.edit_message(
                    content=expired_text(self.sessions.timeout),
                    embed=None,
                    attachments=[],
                    view=None,
                    allowed_mentions=NO_MENTIONS,
                )
                return
            if session.user_id != interaction.user.id:
                # Pickers and previews are private, so only a forged click gets here; leave it alone.
                await interaction.response.send_message(
                    "This preview belongs to someone else.", ephemeral=True, allowed_mentions=NO_MENTIONS
                )
                return
            # Errors replace the private message (which holds the controls) with their text.
            interaction.extras["ephemeral_original"] = True
            handler = self._handlers.get(action)
            if handler is None:
                raise ValueError(f"unknown mask control {action!r}")
            await handler(interaction, session, values)
        except Exception as error:
            self.sessions.close(sid)
            await report_error(interaction, error, where=f"/mask {action}")

    async def _pick_cells(
        self, interaction: discord.Interaction, session: MaskSession, values: list[str]
    ) -> None:
        await interaction.response.defer()  # redrawing the picture may take longer than the 3 s ack
        self.sessions.touch(session, interaction)
        session.job = masking.with_cells(session.job, session.grid, tuple(int(v) for v in values))
        await self._show_picker(interaction, session)

    async def _switch_grid(
        self, interaction: discord.Interaction, session: MaskSession, _: list[str]
    ) -> None:
        await interaction.response.defer()
        self.sessions.touch(session, interaction)
        # Cell numbers mean other areas on another grid: start the selection over.
        session.job = masking.with_cells(session.job, masking.next_grid(session.grid), ())
        await self._show_picker(interaction, session)

    async def _next(self, interaction: discord.Interaction, session: MaskSession, _: list[str]) -> None:
        if session.skip_preview:
            self.sessions.finish(session.sid)
            await self._acknowledge_run(interaction)
            job = _as_now(session.job, interaction)
            await run_and_publish(
                self.bot, interaction, lambda progress: self.edits.prepare(job, progress=progress)
            )
            return
        await interaction.response.defer()
        self.sessions.touch(session, interaction)
        session.prepared = await self.edits.prepare(session.job)
        await self._show_preview(interaction, session)

    async def _back(self, interaction: discord.Interaction, session: MaskSession, _: list[str]) -> None:
        await interaction.response.defer()
        self.sessions.touch(session, interaction)
        session.prepared = None
        await self._show_picker(interaction, session)

    async def _run(self, interaction: discord.Interaction, session: MaskSession, _: list[str]) -> None:
        # Taken out first, so a second click (or the expiry) cannot start or touch it again.
        self.sessions.finish(session.sid)
        prepared = session.prepared
        assert prepared is not None
        await self._acknowledge_run(interaction)
        # Prepared again with the member's roles and the server's rules as they are now, not as they
        # were when the preview was made (the images are not downloaded again).
        job = _as_now(prepared.job, interaction)
        await run_and_publish(
            self.bot, interaction, lambda progress: self.edits.prepare(job, progress=progress)
        )

    async def _cancel(self, interaction: discord.Interaction, session: MaskSession, _: list[str]) -> None:
        self.sessions.finish(session.sid)
        await interaction.response.edit_message(
            content="Cancelled — nothing was charged.",
            embed=None,
            attachments=[],
            view=None,
            allowed_mentions=NO_MENTIONS,
        )

    async def _execute(self, interaction: discord.Interaction, prepared: PreparedJob) -> None:
        async def ready(_: object) -> PreparedJob:
            return prepared

        await run_and_publish(self.bot, interaction, ready)

    async def _acknowledge_run(self, interaction: discord.Interaction) -> None:
        """Answer the click by turning the picker/preview into the progress message."""
        await interaction.response.edit_message(
            content="Starting your edit…", embed=None, attachments=[], view=None, allowed_mentions=NO_MENTIONS
        )

    async def _show_picker(self, interaction: discord.Interaction, session: MaskSession) -> None:
        assert session.picture is not None
        picture = await masking.grid_picture(session.picture, session.grid, session.spec.cells)
        await interaction.edit_original_response(
            content=None,
            embed=picker_embed(session, self.sessions.timeout),
            attachments=[_file(picture, PICKER_FILE)],
            view=picker_view(session),
            allowed_mentions=NO_MENTIONS,
        )
        self.sessions.arm(session)

    async def _show_preview(self, interaction: discord.Interaction, session: MaskSession) -> None:
        prepared = session.prepared
        assert prepared is not None
        shown = await masking.preview(self.edits, prepared, policy_of(self.bot))
        await interaction.edit_original_response(
            content=None,
            embed=preview_embed(prepared, shown, self.sessions.timeout),
            attachments=[_file(shown.image, PREVIEW_FILE)],
            view=preview_view(session),
            allowed_mentions=NO_MENTIONS,
        )
        self.sessions.arm(session)

    async def _expired(self, session: MaskSession) -> None:
        """Replace the expired picker/preview with a notice, so its buttons are gone."""
        try:
            await session.handle.edit_original_response(
                content=expired_text(self.sessions.timeout),
                embed=None,
                attachments=[],
                view=None,
                allowed_mentions=NO_MENTIONS,
            )
        except discord.HTTPException as exc:
            # The message may be gone or its token dead; a later click is still answered as expired.
            log.debug("could not mark mask preview %s as expired: %s", session.sid, exc)

    async def _skips_preview(self, user_id: int) -> bool:
        """The user's own "skip the mask preview" setting (`/settings`)."""
        settings = await policy_of(self.bot).user_settings(user_id)
        return bool(settings.skip_mask_preview)


def _as_now(job: EditJob, interaction: discord.Interaction) -> EditJob:
    """`job` for the member who clicks, with their roles as they are now."""
    return dataclasses.replace(job, role_ids=role_ids_of(interaction.user))


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(MaskCog(bot))
