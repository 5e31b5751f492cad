"""`/credits`: your balance, what is held by running edits, and your recent jobs."""

from __future__ import annotations

import datetime as dt

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import RetouchBot
from bot.storage import JobRow
from cogs._ui import EMBED_COLOUR

RECENT_JOBS = 5
STATE_LABELS = {"delivered": "done", "failed": "failed, refunded", "cancelled": "cancelled, refunded"}


def _job_line(job: JobRow) -> str:
    when = dt.datetime.fromisoformat(job.created_at)
    cost = f"{job.captured} credits" if job.captured is not None else STATE_LABELS.get(job.state, job.state)
    return f"{discord.utils.format_dt(when, 'R')} · {job.model} · {job.quality} · ×{job.count} — {cost}"


class CreditsCog(commands.Cog):
    def __init__(self, bot: RetouchBot) -> None:
        self.bot = bot

    @app_commands.command(name="credits", description="Show your credit balance and recent edits")
    async def credits(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        services = self.bot.services
        guild_id = interaction.guild_id or 0
        account = await services.storage.ensure_account(
            guild_id, interaction.user.id, services.settings.starting_credits
        )
        jobs = await services.storage.recent_jobs(guild_id, interaction.user.id, RECENT_JOBS)
        embed = discord.Embed(title="Your credits", colour=EMBED_COLOUR)
        embed.add_field(name="Available", value=f"{account.balance}")
        embed.add_field(name="Held by running edits", value=f"{account.held}")
        per_usd = services.settings.credits_per_usd
        embed.add_field(name="Worth", value=f"${account.balance / per_usd:.2f} of image edits")
        embed.add_field(
            name="Recent edits", value="\n".join(_job_line(j) for j in jobs) or "None yet.", inline=False
        )
        await interaction.followup.send(embed=embed, ephemeral=True)


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(CreditsCog(bot))
