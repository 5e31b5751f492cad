"""`/mask` and the "Edit image" message menu: edits that change only the part of an image the user marked.

The flow stays private until the result:

1. `/mask` defers privately. With a mask file the job is prepared at once; without one the user picks
   cells of a grid on a private picker whose picture updates as cells are chosen.
2. A private preview shows the area to change tinted, the worst-case cost and the balance, with
   **Run edit** / **Cancel**. No credits move before **Run edit** (users who turned the preview off in
   their settings go straight to the edit).
3. **Run edit** reserves, edits, restores everything outside the area and posts the result publicly,
   exactly like `/edit`.

Picker and preview state (the prepared job, and a picture of the image no larger than they show it,
which every redraw is made from) is kept in memory only, for `PREVIEW_TIMEOUT_SECONDS` after the user's
last click; a restart or the timeout drops it. Every control carries just a random session id in its
custom id and is handled by one dynamic item, so a click on a stale message still reaches the bot and is
answered ("this preview expired") instead of failing.

The code is split by what the member sees: `grid.py` (the picker), `preview.py` (the priced preview,
Run edit and Cancel), `menu.py` (the "Edit image" form), `controls.py` (custom ids and the dynamic item),
`sessions.py` (the in-memory state). This module holds the cog: the command, the menu's entry points
and the flow between those parts.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import imaging, messages
from bot.choices import normalize_size
from bot.client import RetouchBot
from bot.services import masking
from bot.services.edits import EditJob, EditOptions, MaskSpec
from cogs._results import run_and_publish
from cogs._ui import (
    ProgressMessage,
    RetouchCog,
    first_image,
    option_autocomplete,
    report_error,
    role_ids_of,
    upload_of,
)
from cogs.mask.controls import NO_MENTIONS, Handler, MaskControl
from cogs.mask.grid import GridPicker
from cogs.mask.menu import EditImageForm, OpenForms, answer_expired_form, form_key
from cogs.mask.sessions import PREVIEW_TIMEOUT_SECONDS, MaskSession, MaskSessions, expired_text

log = logging.getLogger(__name__)

PROMPT_MAX_CHARS = 6000  # Discord's cap for a string option
MAX_FEATHER_PX = 64


class MaskCog(GridPicker, RetouchCog):
    """Discord plumbing for masked edits; validation, pricing and image work live in `bot/`."""

    dynamic_items = (MaskControl,)

    def __init__(self, bot: RetouchBot, *, preview_timeout: float = PREVIEW_TIMEOUT_SECONDS) -> None:
        super().__init__(bot, app_commands.ContextMenu(name="Edit image", callback=self.edit_image_menu))
        self.edits = bot.services.edits
        self.sessions = MaskSessions(preview_timeout, self._expired)
        self.open_forms = OpenForms()  # the Edit image forms discord.py still answers
        self._handlers: dict[str, Handler] = {
            "cells": self._pick_cells,
            "grid": self._switch_grid,
            "next": self._next,
            "back": self._back,
            "run": self._run,
            "cancel": self._cancel,
        }

    async def cog_unload(self) -> None:
        await super().cog_unload()
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
    @option_autocomplete(mask_only=True)
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

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """An Edit image form discord.py has forgotten (see `answer_expired_form`)."""
        key = form_key(interaction)
        if key is None or key in self.open_forms:
            return
        try:
            await answer_expired_form(interaction)
        except Exception as exc:
            await report_error(interaction, exc, where="the Edit image form")

    async def edit_image_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Message menu: open the form for the message's image (a modal must be the first response)."""
        image = first_image(message)
        if image is None:
            await interaction.response.send_message(
                messages.NO_IMAGE_ATTACHED, ephemeral=True, allowed_mentions=NO_MENTIONS
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
            await self._begin(interaction, job, origin_message_id=message_id)
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

    async def _begin(
        self, interaction: discord.Interaction, job: EditJob, *, origin_message_id: int | None = None
    ) -> None:
        """After a private defer: show the picker (no mask file) or the preview, or run at once.

        `origin_message_id` is the message the "Edit image" menu was used on, as for an unmasked edit.
        """
        assert job.mask is not None
        with self.sessions.starting(job.user_id, self.bot.services.settings.max_mask_previews):
            await self._begin_session(interaction, job, origin_message_id)

    async def _begin_session(
        self, interaction: discord.Interaction, job: EditJob, origin_message_id: int | None
    ) -> None:
        assert job.mask is not None
        skip = await self._skips_preview(interaction.user.id)
        progress = ProgressMessage(interaction)
        session = MaskSession(
            secrets.token_hex(6),
            interaction.user.id,
            job,
            interaction,
            skip_preview=skip,
            origin_message_id=origin_message_id,
        )
        # Downloading and checking the images (a mask file too) takes an intake turn, as /edit's does
        # (cogs._results.run_and_publish): a burst of /mask commands would otherwise decode at once.
        # So does the one decode of the image for the small picture the picker and preview are drawn from
        # (the session keeps that, not the image). Released before the picker or preview waits for the
        # member, and before `_execute` takes one.
        if job.mask.upload is None:
            async with self.edits.engine.intake():
                provisional = await masking.prepare_picker(self.edits, job, progress=progress)
                session.picture = await masking.shown_picture(provisional.images[0].data)
            await progress.close()
            session.job = masking.with_cells(job, masking.DEFAULT_GRID, ())
            await self._open(session, self._show_picker(interaction, session))
            return
        if skip:  # prepared and queued in one turn: its images are not held while it waits for another
            await run_and_publish(
                self.bot,
                interaction,
                lambda shown: self.edits.prepare(job, progress=shown),
                origin_message_id=origin_message_id,
            )
            return
        async with self.edits.engine.intake():
            prepared = await self.edits.prepare(job, progress=progress)
            session.picture = await masking.shown_picture(prepared.images[0].data)
        await progress.close()
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
                await interaction.response.edit_message(**self._expired_message())
                return
            if session.user_id != interaction.user.id:
                # Pickers and previews are private, so only a forged click gets here; leave it alone.
                await interaction.response.send_message(
                    messages.NOT_YOUR_PREVIEW, ephemeral=True, allowed_mentions=NO_MENTIONS
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

    async def _expired(self, session: MaskSession) -> None:
        """Replace the expired picker/preview with a notice, so its buttons are gone."""
        try:
            await session.handle.edit_original_response(**self._expired_message())
        except discord.HTTPException as exc:
            # The message may be gone or its token dead; a later click is still answered as expired.
            log.debug("could not mark mask preview %s as expired: %s", session.sid, exc)

    def _expired_message(self) -> dict[str, Any]:
        """What an expired picker or preview becomes: the notice alone, without picture or buttons."""
        return {
            "content": expired_text(self.sessions.timeout),
            "embed": None,
            "attachments": [],
            "view": None,
            "allowed_mentions": NO_MENTIONS,
        }

    async def _skips_preview(self, user_id: int) -> bool:
        """The user's own "skip the mask preview" setting (`/settings`)."""
        settings = await self.bot.services.policy.user_settings(user_id)
        return bool(settings.skip_mask_preview)


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(MaskCog(bot))
