"""`/edit`: edit 1–4 images with a prompt."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import RetouchBot
from bot.jobs import EditJob, EditOptions, EditOutcome, Upload
from cogs._ui import ProgressMessage, result_embed, result_files, truncate

log = logging.getLogger(__name__)

DISCORD_MAX_STRING = 6000
THREAD_NAME_CHARS = 90
THREAD_ARCHIVE_MINUTES = 1440


def upload_of(label: str, attachment: discord.Attachment) -> Upload:
    return Upload(label=label, filename=attachment.filename, size=attachment.size, read=attachment.read)


class EditCog(commands.Cog):
    def __init__(self, bot: RetouchBot) -> None:
        self.bot = bot
        self.edits = bot.services.edits

    @app_commands.command(name="edit", description="Edit your image with a text prompt")
    @app_commands.describe(
        prompt="What should change? e.g. 'make it a watercolour painting'",
        image="The image to edit (PNG, JPEG or WebP)",
        image2="Optional extra reference image",
        image3="Optional extra reference image",
        image4="Optional extra reference image",
        quality="Higher quality costs more credits (auto lets the model choose)",
        size="Output size (auto keeps the model's choice)",
        background="Transparent needs PNG or WebP format",
        format="File format of the result",
        count="How many variations to make (each one is charged)",
        model="Which image model to use",
    )
    async def edit(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, DISCORD_MAX_STRING],
        image: discord.Attachment,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        quality: Literal["low", "medium", "high", "auto"] | None = None,
        size: Literal["auto", "1024x1024", "1536x1024", "1024x1536"] | None = None,
        background: Literal["auto", "opaque", "transparent"] | None = None,
        format: Literal["png", "jpeg", "webp"] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        model: str | None = None,
    ) -> None:
        # Private "thinking" first: progress and errors stay between the bot and this user.
        await interaction.response.defer(ephemeral=True, thinking=True)
        interaction.extras["ephemeral_original"] = True
        attachments = [("image", image), ("image2", image2), ("image3", image3), ("image4", image4)]
        job = EditJob(
            guild_id=interaction.guild_id or 0,
            user_id=interaction.user.id,
            channel_id=interaction.channel_id,
            uploads=[upload_of(label, a) for label, a in attachments if a is not None],
            options=EditOptions(prompt, model, quality, size, background, format, count),
            upload_limit=interaction.filesize_limit,
        )
        progress = ProgressMessage(interaction)
        try:
            outcome = await self.edits.run_edit(
                job, progress=progress, deliver=lambda o: self._post_result(interaction, progress, o)
            )
        finally:
            await progress.close()
        await progress.close(f"Done — {outcome.charged} credits charged, {outcome.balance_after} left.")

    @edit.autocomplete("model")
    async def model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        today = dt.datetime.now(dt.UTC).date()
        current = current.lower()
        return [
            app_commands.Choice(name=m.name, value=m.id)
            for m in self.edits.catalog.available(today)
            if current in m.id.lower() or current in m.name.lower()
        ][:25]

    async def _post_result(
        self, interaction: discord.Interaction, progress: ProgressMessage, outcome: EditOutcome
    ) -> None:
        # The private progress message must have been edited at least once, or Discord would turn this
        # first followup into that private message instead of a new public one.
        await progress.close("Posting your result…")
        message = await interaction.followup.send(
            content=f"{interaction.user.mention}",
            embed=result_embed(outcome, interaction.user),
            files=result_files(outcome),
            allowed_mentions=discord.AllowedMentions.none(),
            wait=True,
        )
        if await self._wants_thread(interaction):
            await self._open_thread(interaction, message, outcome)

    async def _wants_thread(self, interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None or not isinstance(interaction.channel, discord.TextChannel):
            return False
        value = await self.bot.services.storage.guild_thread_results(interaction.guild_id)
        return self.bot.services.settings.thread_results if value is None else value

    async def _open_thread(
        self, interaction: discord.Interaction, message: discord.Message, outcome: EditOutcome
    ) -> None:
        name = truncate(outcome.prompt.replace("\n", " "), THREAD_NAME_CHARS) or "Edit"
        try:
            await self.bot.http.start_thread_with_message(
                message.channel.id, message.id, name=name, auto_archive_duration=THREAD_ARCHIVE_MINUTES
            )
        except discord.HTTPException as exc:
            # The result is already posted; a missing thread is not worth failing the job for.
            log.warning("could not open a thread for job %s: %s", outcome.job_id, exc)


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(EditCog(bot))
