"""`/diagnose` (Manage Server): what Retouch is missing here, and whether its services are healthy."""

from __future__ import annotations

import math

import discord
from discord import app_commands
from discord.ext import commands

from bot.catalog import RETIREMENT_WARNING_DAYS
from bot.client import RetouchBot
from bot.concurrency import LimitState
from bot.services.diagnostics import DatabaseStatus, Diagnosis, ProviderStatus
from cogs._ui import fit_lines

COLOUR_OK = discord.Colour.green()
COLOUR_PROBLEM = discord.Colour.orange()


def _permissions_text(missing: tuple[str, ...] | None) -> str:
    if missing is None:
        return "Not in a server channel."
    if not missing:
        return "✅ Everything Retouch needs in this channel."
    return fit_lines([f"❌ {name}" for name in missing])


def _provider_line(status: ProviderStatus) -> str:
    mark = "➖" if status.ok is None else "✅" if status.ok else "❌"
    took = f" ({status.seconds:.2f} s)" if status.seconds is not None else ""
    return f"{mark} **{status.name}**: {status.detail}{took}{_concurrency_text(status.concurrency)}"


def _concurrency_text(state: LimitState | None) -> str:
    """The adaptive limit in force, e.g. ` · 5 at once (ceiling 64; 429 at 6; paused 3 s)`."""
    if state is None:
        return ""
    text = f" · {state.limit} at once"
    notes = [f"ceiling {state.ceiling}"] if state.ceiling is not None else []
    if state.refused_at is not None:
        notes.append(f"429 at {state.refused_at}")
    if state.paused_for > 0:
        notes.append(f"paused {math.ceil(state.paused_for)} s")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _database_text(db: DatabaseStatus) -> str:
    mark = "✅" if db.ok else "❌"
    version = (
        f"schema {db.schema_version} of {db.latest_version}" if db.schema_version >= 0 else "schema unknown"
    )
    return f"{mark} {version}, {db.detail}"


def _catalog_text(warnings: tuple[str, ...], notes: tuple[str, ...] = ()) -> str:
    """Warnings first; models retired as planned (with a replacement) follow as information."""
    lines = [f"⚠️ {w}" for w in warnings] or [f"✅ No model retires within {RETIREMENT_WARNING_DAYS} days."]
    return fit_lines([*lines, *(f"ℹ️ {n}" for n in notes)])


def diagnosis_embed(diagnosis: Diagnosis, gateway_latency: float) -> discord.Embed:
    """Render a diagnosis; orange when anything needs the admin's attention."""
    healthy = (
        not diagnosis.missing_permissions
        and all(p.ok is not False for p in diagnosis.providers or ())
        and diagnosis.database.ok
        and not diagnosis.catalog_warnings
    )
    embed = discord.Embed(title="Retouch diagnosis", colour=COLOUR_OK if healthy else COLOUR_PROBLEM)
    embed.add_field(
        name="Bot permissions here",
        value=_permissions_text(diagnosis.missing_permissions),
    )
    if diagnosis.providers is None:
        providers = "➖ Shown to the bot's operator only (`OWNER_IDS`)."
    else:
        lines = [_provider_line(p) for p in diagnosis.providers]
        providers = fit_lines(lines, empty="❌ No provider is configured.")
    embed.add_field(name="Image services", value=providers, inline=False)
    embed.add_field(name="Database", value=_database_text(diagnosis.database), inline=False)
    embed.add_field(
        name="Models",
        value=_catalog_text(diagnosis.catalog_warnings, diagnosis.catalog_notes),
        inline=False,
    )
    if math.isfinite(gateway_latency):
        embed.set_footer(text=f"Gateway latency {gateway_latency * 1000:.0f} ms")
    return embed


class DiagnoseCog(commands.Cog):
    """`/diagnose`: permissions here, image services (operator only), database and models."""

    def __init__(self, bot: RetouchBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="diagnose", description="Check Retouch's permissions here, its image services and its database"
    )
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def diagnose(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        services = self.bot.services
        services.metrics.observe_ack(interaction.created_at)
        # The image services run on the operator's keys and accounts: their state is the operator's
        # business, not every server admin's.
        # The operator is OWNER_IDS, else the application's owner (bot.services.access decides, in one place).
        operator = services.access.is_operator(interaction.user.id)
        diagnosis = await services.diagnostics.diagnose(
            interaction.app_permissions.value, show_providers=operator
        )
        await interaction.followup.send(embed=diagnosis_embed(diagnosis, self.bot.latency), ephemeral=True)


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(DiagnoseCog(bot))
