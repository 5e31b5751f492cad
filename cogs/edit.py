"""`/edit`: edit 1–4 images with a prompt."""

from __future__ import annotations

import logging
from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.choices import normalize_size
from bot.client import RetouchBot
from bot.services.edits import EditJob, EditOptions
from cogs._results import run_and_publish
from cogs._ui import option_autocomplete, role_ids_of, upload_of

log = logging.getLogger(__name__)

DISCORD_MAX_STRING = 6000


class EditCog(commands.Cog):
    """`/edit`: options → defer → the edit service → the published result."""

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
        quality="Higher quality costs more credits; the list shows your model's levels and prices",
        size="Output size: pick one, or type WIDTHxHEIGHT where the model allows it (auto = model's choice)",
        background="Transparent needs PNG or WebP format",
        format="File format of the result",
        count="How many variations to make (each one is charged)",
        model="Which image model to use",
    )
    @option_autocomplete()
    async def edit(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, DISCORD_MAX_STRING],
        image: discord.Attachment,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        quality: str | None = None,
        size: str | None = None,
        background: Literal["auto", "opaque", "transparent"] | None = None,
        format: Literal["png", "jpeg", "webp"] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        model: str | None = None,
    ) -> None:
        # Private "thinking" first: progress and errors stay between the bot and this user.
        await interaction.response.defer(ephemeral=True, thinking=True)
        self.bot.services.metrics.observe_ack(interaction.created_at)
        interaction.extras["ephemeral_original"] = True
        attachments = [("image", image), ("image2", image2), ("image3", image3), ("image4", image4)]
        job = EditJob(
            guild_id=interaction.guild_id or 0,
            user_id=interaction.user.id,
            channel_id=interaction.channel_id,
            uploads=[upload_of(label, a) for label, a in attachments if a is not None],
            options=EditOptions(prompt, model, quality, normalize_size(size), background, format, count),
            upload_limit=interaction.filesize_limit,
            role_ids=role_ids_of(interaction.user),
        )
        await run_and_publish(
            self.bot, interaction, lambda progress: self.edits.prepare(job, progress=progress)
        )


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(EditCog(bot))
