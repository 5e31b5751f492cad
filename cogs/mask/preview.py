"""The priced preview of a `/mask` edit (the area tinted, the worst-case cost, the balance) and its
**Run edit** / **Cancel** buttons."""

from __future__ import annotations

import dataclasses

import discord

from bot import messages
from bot.services import masking
from bot.services.edits import EditJob, PreparedJob
from cogs._results import run_and_publish
from cogs._ui import EMBED_COLOUR, PROMPT_PREVIEW_CHARS, add_notes, role_ids_of, truncate
from cogs.mask.controls import NO_MENTIONS, attachment, button
from cogs.mask.sessions import MaskParts, MaskSession, minutes

PREVIEW_FILE = "mask_preview.jpg"


def preview_view(session: MaskSession) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(button(session.sid, "run", "Run edit", discord.ButtonStyle.success))
    if session.picking:
        view.add_item(button(session.sid, "back", "Change area", discord.ButtonStyle.secondary))
    view.add_item(button(session.sid, "cancel", "Cancel", discord.ButtonStyle.secondary))
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
            value=messages.preview_unaffordable(shown.cost, shown.balance),
            inline=False,
        )
    add_notes(embed, prepared.notices)
    embed.set_image(url=f"attachment://{PREVIEW_FILE}")
    embed.set_footer(
        text=f"Nothing is charged until you press Run edit. The preview expires after {minutes(timeout)} "
        "without a click."
    )
    return embed


class PricedPreview(MaskParts):
    """The preview's clicks, and how a masked edit starts once the member agrees to its price."""

    async def _run(self, interaction: discord.Interaction, session: MaskSession, _: list[str]) -> None:
        prepared = session.prepared
        if prepared is None:
            # "Change area" was clicked first: the preview still shows while its picker is drawn, and
            # that picker, not this older preview, is what the member goes on from.
            await interaction.response.defer()
            return
        # Taken out first, so a second click (or the expiry) cannot start or touch it again.
        self.sessions.finish(session.sid)
        await self._acknowledge_run(interaction)
        # Prepared again with the member's roles and the server's rules as they are now, not as they
        # were when the preview was made (the images are not downloaded again), but with the options
        # the preview showed and priced: a default changed since (/quality, /settings) does not run.
        job = as_now(as_previewed(prepared), interaction)
        await run_and_publish(
            self.bot,
            interaction,
            lambda progress: self.edits.prepare(job, progress=progress),
            origin_message_id=session.origin_message_id,
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

    async def _execute(
        self, interaction: discord.Interaction, prepared: PreparedJob, origin_message_id: int | None
    ) -> None:
        async def ready(_: object) -> PreparedJob:
            return prepared

        await run_and_publish(self.bot, interaction, ready, origin_message_id=origin_message_id)

    async def _acknowledge_run(self, interaction: discord.Interaction) -> None:
        """Answer the click by turning the picker/preview into the progress message."""
        await interaction.response.edit_message(
            content="Starting your edit…", embed=None, attachments=[], view=None, allowed_mentions=NO_MENTIONS
        )

    async def _show_preview(self, interaction: discord.Interaction, session: MaskSession) -> None:
        prepared, picture = session.prepared, session.picture
        assert prepared is not None and picture is not None
        shown = await masking.preview(prepared, picture, self.bot.services.policy)
        if self._stale(session, interaction):
            return
        await interaction.edit_original_response(
            content=None,
            embed=preview_embed(prepared, shown, self.sessions.timeout),
            attachments=[attachment(shown.image, PREVIEW_FILE)],
            view=preview_view(session),
            allowed_mentions=NO_MENTIONS,
        )
        self.sessions.arm(session)


def as_previewed(prepared: PreparedJob) -> EditJob:
    """The previewed job with the options its preview showed: its model (still a default when it was
    one, so a model retired meanwhile moves to the replacement), quality, size, background, format
    and count."""
    job, chosen = prepared.job, prepared.chosen
    options = dataclasses.replace(
        job.options,
        model=chosen.model,
        model_is_default=not job.options.model_picked,
        quality=chosen.quality,
        size=chosen.size,
        background=chosen.background,
        output_format=chosen.output_format,
        count=chosen.count,
    )
    return dataclasses.replace(job, options=options)


def as_now(job: EditJob, interaction: discord.Interaction) -> EditJob:
    """`job` for the member who clicks, with their roles as they are now."""
    return dataclasses.replace(job, role_ids=role_ids_of(interaction.user))
