"""`/quality` and `/settings`: a user's own defaults, shown with what they cost and the server's caps."""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.choices import normalize_size
from bot.client import RetouchBot
from bot.errors import InvalidOptions
from bot.services.policy import EffectiveDefaults, QualityView
from cogs._ui import (
    EMBED_COLOUR,
    model_autocomplete,
    quality_autocomplete,
    role_ids_of,
    size_autocomplete,
)

SOURCES = {"you": "set by you", "server": "this server's default", "bot": "the bot's default"}
# /settings option name -> UserSettings field
RESET_FIELDS = {
    "model": "model",
    "quality": "quality",
    "size": "size",
    "format": "output_format",
    "background": "background",
    "skip mask preview": "skip_mask_preview",
}
ResetChoice = Literal["everything", "model", "quality", "size", "format", "background", "skip mask preview"]


def quality_embed(view: QualityView, *, saved: bool) -> discord.Embed:
    """The default quality, whether a role caps it, the price of each level and the balance."""
    d = view.defaults
    quality = d.chosen.quality
    lines = [f"Your default quality is **{quality}** ({SOURCES[d.sources['quality']]})."]
    if saved:
        lines[0] = f"Saved: your edits now use **{quality}** quality unless you pick another one."
    # Includes the quality cap when a role limit is below the default: jobs use the cap.
    lines += [f"⚠️ {notice}" for notice in d.notices]
    embed = discord.Embed(title="Quality", description="\n".join(lines), colour=EMBED_COLOUR)
    prices = []
    for p in view.prices:
        # The worst case of a one-image edit (its input image and prompt included): the charge is often less.
        limit = "" if p.allowed else " — above your limit here"
        prices.append(f"**{p.quality}** — up to {p.credits} credits per image{limit}")
    embed.add_field(
        name=f"Price per image ({view.model_name}, size {d.effective.size})",
        value="\n".join(prices),
        inline=False,
    )
    embed.add_field(name="Your balance", value=f"{view.balance} credits")
    embed.set_footer(text="Change it with /quality <level>. An option on /edit always wins for that edit.")
    return embed


def settings_embed(d: EffectiveDefaults, model_name: str) -> discord.Embed:
    """Every default with where it comes from, and what this server's rules change."""
    e = d.effective
    rows = [
        ("Model", model_name, "model"),
        ("Quality", d.chosen.quality, "quality"),
        ("Size", e.size, "size"),
        ("Format", e.output_format, "output_format"),
        ("Background", e.background, "background"),
    ]
    embed = discord.Embed(title="Your defaults", colour=EMBED_COLOUR)
    for name, value, key in rows:
        embed.add_field(name=name, value=f"**{value}**\n{SOURCES[d.sources[key]]}")
    embed.add_field(name="Skip mask preview", value="**on**" if d.skip_mask_preview else "**off**")
    if d.notices:
        embed.add_field(name="On this server", value="\n".join(f"⚠️ {n}" for n in d.notices), inline=False)
    embed.set_footer(text="Options on a command always win. Reset one or all with /settings reset:…")
    return embed


class SettingsCog(commands.Cog):
    """`/quality` and `/settings`: a member's own defaults."""

    def __init__(self, bot: RetouchBot) -> None:
        self.bot = bot
        self.policy = bot.services.policy

    @app_commands.command(name="quality", description="See or set your default image quality and its price")
    @app_commands.describe(
        level="Your new default (leave empty to see prices). Higher quality costs more credits."
    )
    @app_commands.autocomplete(level=quality_autocomplete)
    async def quality(self, interaction: discord.Interaction, level: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id, user_id = interaction.guild_id or 0, interaction.user.id
        role_ids = role_ids_of(interaction.user)
        if level is not None:
            await self.policy.set_quality(guild_id, user_id, role_ids, level)
        view = await self.policy.quality_view(guild_id, user_id, role_ids)
        await interaction.followup.send(embed=quality_embed(view, saved=level is not None), ephemeral=True)

    @app_commands.command(name="settings", description="See or change your default model, size and format")
    @app_commands.describe(
        model="The image model your edits use",
        size="Output size: pick one, or type WIDTHxHEIGHT where your model allows it (auto = model's choice)",
        format="File format of your results",
        background="Transparent needs the png or webp format",
        skip_mask_preview="Start masked edits straight away instead of showing a preview first",
        reset="Go back to this server's default for one setting, or for everything",
    )
    @app_commands.autocomplete(model=model_autocomplete, size=size_autocomplete)
    async def settings(
        self,
        interaction: discord.Interaction,
        model: str | None = None,
        size: str | None = None,
        format: Literal["png", "jpeg", "webp"] | None = None,
        background: Literal["auto", "opaque", "transparent"] | None = None,
        skip_mask_preview: bool | None = None,
        reset: ResetChoice | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id, user_id = interaction.guild_id or 0, interaction.user.id
        changes = {
            "model": model,
            "size": normalize_size(size),
            "output_format": format,
            "background": background,
            "skip_mask_preview": skip_mask_preview,
        }
        resets = (
            [] if reset is None else [RESET_FIELDS[reset]] if reset in RESET_FIELDS else RESET_FIELDS.values()
        )
        await self.policy.update_settings(guild_id, user_id, changes, resets)
        defaults = await self.policy.effective_defaults(guild_id, user_id, role_ids_of(interaction.user))
        name = self._model_name(defaults.effective.model)
        await interaction.followup.send(embed=settings_embed(defaults, name), ephemeral=True)

    def _model_name(self, model_id: str) -> str:
        """The model edits here really use (a dead default moves on), as /quality shows it; the id
        itself when even the catalog does not know it (a DEFAULT_MODEL of another catalog)."""
        try:
            return self.policy.model_for_view(model_id).name
        except InvalidOptions:
            return model_id


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(SettingsCog(bot))
