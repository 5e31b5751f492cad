"""`/admin credits …`, `/admin policy …` and `/admin tier …`: the server's budget, mounted by cogs.admin.

Discord's default permission (Manage Server, on the `/admin` group) only hides these commands and a
server can change it, so every command also asks `PolicyService.authorize_admin`, which applies the
optional ADMIN_USER_IDS allow-list. Replies are private to the admin; mentions never ping.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import discord
from discord import app_commands

from bot import messages
from bot.choices import normalize_size
from bot.client import RetouchBot
from bot.domain.credits import MAX_CREDITS_PER_CHANGE
from bot.services.admin import GuildPolicy
from bot.services.edits import MAX_IMAGES_PER_EDIT
from bot.services.policy import PolicyService
from cogs._admin_render import moderation_text, policy_embed, report_embed, report_file
from cogs._ui import option_autocomplete, role_ids_of

MAX_COOLDOWN_SECONDS = 24 * 3600
MAX_RUNNING_LIMIT = 20
MAX_CAP_USD = 1_000_000
NO_PINGS = discord.AllowedMentions.none()
ReportPeriod = Literal["this month", "last month", "this week", "today", "all time"]


def _guild(interaction: discord.Interaction) -> int:
    assert interaction.guild_id is not None  # /admin is guild-only
    return interaction.guild_id


class _AdminSubgroup(app_commands.Group):
    """Shared by the subgroups: the services and the server-side permission check."""

    def __init__(self, bot: RetouchBot) -> None:
        super().__init__()
        self.bot = bot
        self.policy: PolicyService = bot.services.policy

    async def begin(self, interaction: discord.Interaction) -> None:
        """Every admin command's start: check the user, then acknowledge privately.

        Raises NotPermitted (answered privately by the error router) before anything is
        acknowledged; otherwise the defer is the command's first await, well within Discord's 3 s.
        """
        self.policy.authorize_admin(interaction.user.id, manage_guild=interaction.permissions.manage_guild)
        await interaction.response.defer(ephemeral=True, thinking=True)

    async def _safety_level(self, guild_id: int) -> str:
        safety = self.bot.services.edits.safety
        return await safety.level(guild_id) if safety is not None else "off"

    async def show(self, interaction: discord.Interaction, policy: GuildPolicy, note: str = "") -> None:
        budget = await self.policy.budget(policy.guild_id)
        settings = self.bot.services.settings
        embed = policy_embed(policy, budget, settings.starting_credits, settings.credits_per_usd)
        level = await self._safety_level(policy.guild_id)
        embed.add_field(
            name="Safety check",
            value=moderation_text(self.bot, level).removeprefix("Safety check: "),
            inline=False,
        )
        await interaction.followup.send(
            note or discord.utils.MISSING, embed=embed, ephemeral=True, allowed_mentions=NO_PINGS
        )


class CreditsAdmin(
    _AdminSubgroup, name="credits", description="Give, take or set a member's credits; reports"
):
    async def _change(
        self, interaction: discord.Interaction, action: str, user: discord.User, amount: int, reason: str
    ) -> None:
        await self.begin(interaction)
        # Someone no longer in the server has no roles to read: their tier is not known.
        roles = role_ids_of(user) if isinstance(user, discord.Member) else None
        change = await self.policy.change_credits(
            _guild(interaction), interaction.user.id, user.id, action, amount, reason, roles
        )
        verb = {"grant": "Gave", "take": "Took", "set": "Changed"}[action]
        moved = abs(change.moved)
        # A take is "from" the member even when nothing was there to take (it moved 0).
        towards = "from" if action == "take" or change.moved < 0 else "to"
        text = f"{verb} {moved} credits {towards} {user.mention}"
        if action == "take" and moved < amount:
            text += f" (they only had {moved} available)"
        await interaction.followup.send(
            f"{text}. Balance now **{change.balance}**. Recorded in the ledger with your name.",
            ephemeral=True,
            allowed_mentions=NO_PINGS,
        )

    @app_commands.command(name="grant", description="Give a member credits (recorded with your name)")
    @app_commands.describe(
        user="Who gets the credits", amount="How many credits", reason="Why (kept in the ledger)"
    )
    async def grant(
        self,
        interaction: discord.Interaction,
        user: discord.User,
        amount: app_commands.Range[int, 1, MAX_CREDITS_PER_CHANGE],
        reason: app_commands.Range[str, 1, 200],
    ) -> None:
        await self._change(interaction, "grant", user, amount, reason)

    @app_commands.command(name="take", description="Remove credits from a member (never below zero)")
    @app_commands.describe(user="Whose credits", amount="How many credits", reason="Why (kept in the ledger)")
    async def take(
        self,
        interaction: discord.Interaction,
        user: discord.User,
        amount: app_commands.Range[int, 1, MAX_CREDITS_PER_CHANGE],
        reason: app_commands.Range[str, 1, 200],
    ) -> None:
        await self._change(interaction, "take", user, amount, reason)

    @app_commands.command(name="set", description="Set a member's available credits to an exact number")
    @app_commands.describe(
        user="Whose credits", amount="Their new balance", reason="Why (kept in the ledger)"
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        user: discord.User,
        amount: app_commands.Range[int, 0, MAX_CREDITS_PER_CHANGE],
        reason: app_commands.Range[str, 1, 200],
    ) -> None:
        await self._change(interaction, "set", user, amount, reason)

    @app_commands.command(
        name="report", description="Spend per member, model and provider, with the ledger as CSV"
    )
    @app_commands.describe(period="Which period (UTC); this month if empty")
    async def report(self, interaction: discord.Interaction, period: ReportPeriod = "this month") -> None:
        await self.begin(interaction)
        report = await self.policy.report(_guild(interaction), period)
        budget = await self.policy.budget(_guild(interaction))
        file = await report_file(report, _guild(interaction), interaction.filesize_limit)
        await interaction.followup.send(
            content=messages.REPORT_TOO_LARGE if file is None else discord.utils.MISSING,
            embed=report_embed(report, budget),
            file=file or discord.utils.MISSING,
            ephemeral=True,
            allowed_mentions=NO_PINGS,
        )


class PolicyAdmin(_AdminSubgroup, name="policy", description="This server's allowance, limits and budget"):
    @app_commands.command(name="show", description="Show every Retouch rule on this server")
    async def show_rules(self, interaction: discord.Interaction) -> None:
        await self.begin(interaction)
        await self.show(interaction, await self.policy.guild_policy(_guild(interaction)))

    @app_commands.command(name="allowance", description="Credits every member is topped up to each period")
    @app_commands.describe(
        amount="Members are topped up to this many credits (unused credits do not pile up)",
        period="When it refills (midnight UTC; Mondays; the 1st); off stops refills",
        starting="Credits a member gets the first time they use Retouch here",
    )
    async def allowance(
        self,
        interaction: discord.Interaction,
        amount: app_commands.Range[int, 0, MAX_CREDITS_PER_CHANGE],
        period: Literal["daily", "weekly", "monthly", "off"],
        starting: app_commands.Range[int, 0, MAX_CREDITS_PER_CHANGE] | None = None,
    ) -> None:
        await self.begin(interaction)
        changes: dict[str, object] = {"allowance": amount, "period": "none" if period == "off" else period}
        if starting is not None:
            changes["starting_credits"] = starting
        policy = await self.policy.update_guild(_guild(interaction), interaction.user.id, changes)
        await self.show(
            interaction, policy, "Saved. Members are topped up at their next use after each refill."
        )

    @app_commands.command(name="limits", description="What every member may do (role tiers can allow more)")
    @app_commands.describe(
        max_quality="Highest quality members may use",
        models="Model ids members may use, separated by spaces, or 'all'",
        max_images="Most images one edit may make",
        cooldown="Seconds a member waits between edits (0 = none)",
        max_running="Edits one member may run at once (0 = no limit)",
    )
    async def limits(
        self,
        interaction: discord.Interaction,
        max_quality: Literal["low", "medium", "high", "xhigh", "max"] | None = None,
        models: str | None = None,
        max_images: app_commands.Range[int, 1, MAX_IMAGES_PER_EDIT] | None = None,
        cooldown: app_commands.Range[int, 0, MAX_COOLDOWN_SECONDS] | None = None,
        max_running: app_commands.Range[int, 0, MAX_RUNNING_LIMIT] | None = None,
    ) -> None:
        await self.begin(interaction)
        changes: dict[str, object] = {}
        if max_quality is not None:
            changes["max_quality"] = None if max_quality == "max" else max_quality  # max caps nothing
        if models is not None:
            changes["models"] = self.policy.allowed_models(models, allow_all_marker=False)
        if max_images is not None:
            changes["max_images"] = None if max_images == MAX_IMAGES_PER_EDIT else max_images
        if cooldown is not None:
            changes["cooldown_seconds"] = cooldown
        if max_running is not None:
            changes["max_concurrent"] = max_running
        policy = await self.policy.update_guild(_guild(interaction), interaction.user.id, changes)
        await self.show(interaction, policy, "Saved." if changes else "")

    @app_commands.command(name="budget", description="Most this server may spend per month, in US dollars")
    @app_commands.describe(usd="Monthly cap in USD (0 = no cap); edits that would pass it are refused")
    async def budget(
        self, interaction: discord.Interaction, usd: app_commands.Range[float, 0, MAX_CAP_USD]
    ) -> None:
        await self.begin(interaction)
        cap = Decimal(repr(usd)) if usd > 0 else None
        policy = await self.policy.update_guild(
            _guild(interaction), interaction.user.id, {"monthly_cap_usd": cap}
        )
        await self.show(interaction, policy, "Saved.")

    @app_commands.command(
        name="moderation", description="How strict the free safety check before each edit is"
    )
    @app_commands.describe(
        level="off, standard (OpenAI's own flags), strict, or default (the bot-wide setting)"
    )
    async def moderation(
        self, interaction: discord.Interaction, level: Literal["off", "standard", "strict", "default"]
    ) -> None:
        await self.begin(interaction)
        await self.policy.set_moderation(
            _guild(interaction), interaction.user.id, None if level == "default" else level
        )
        await interaction.followup.send(
            moderation_text(self.bot, await self._safety_level(_guild(interaction))), ephemeral=True
        )

    @app_commands.command(
        name="defaults", description="Model, quality and size members get unless they choose"
    )
    @app_commands.describe(
        model="Default model on this server",
        quality="Default quality on this server",
        size="Default size on this server",
        providers="Provider names in the order to try them, separated by spaces",
        clear="Go back to the bot-wide defaults first",
    )
    @option_autocomplete()
    async def defaults(
        self,
        interaction: discord.Interaction,
        model: str | None = None,
        quality: str | None = None,
        size: str | None = None,
        providers: str | None = None,
        clear: bool = False,
    ) -> None:
        await self.begin(interaction)
        changes: dict[str, object] = {}
        if clear:
            changes = {
                "default_model": None,
                "default_quality": None,
                "default_size": None,
                "provider_order": (),
            }
        given = {"default_model": model, "default_quality": quality, "default_size": normalize_size(size)}
        changes.update({k: v for k, v in given.items() if v is not None})
        if providers is not None:
            changes["provider_order"] = tuple(providers.replace(",", " ").split())
        policy = await self.policy.update_guild(_guild(interaction), interaction.user.id, changes)
        await self.show(
            interaction, policy, ("Saved." + self._keyless(policy.provider_order)) if changes else ""
        )

    def _keyless(self, order: tuple[str, ...]) -> str:
        """A note for providers in the order that this bot has no key for (kept: a key may come)."""
        configured = {p.name for p in self.bot.services.settings.providers}
        missing = [name for name in order if name not in configured]
        return "" if not missing else " " + messages.providers_without_key(missing)


class TierAdmin(_AdminSubgroup, name="tier", description="Give a role more than everyone gets"):
    @app_commands.command(name="set", description="Create or replace a role's tier")
    @app_commands.describe(
        role="Members with this role get the tier",
        allowance="Their allowance (topped up each period) instead of everyone's, if larger",
        max_quality="Highest quality they may use",
        models="Extra model ids they may use, separated by spaces, or 'all'",
        max_images="Most images one of their edits may make",
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        role: discord.Role,
        allowance: app_commands.Range[int, 0, MAX_CREDITS_PER_CHANGE] | None = None,
        max_quality: Literal["low", "medium", "high", "xhigh", "max"] | None = None,
        models: str | None = None,
        max_images: app_commands.Range[int, 1, MAX_IMAGES_PER_EDIT] | None = None,
    ) -> None:
        await self.begin(interaction)
        guild_id = _guild(interaction)
        parsed = None if models is None else self.policy.allowed_models(models, allow_all_marker=True)
        await self.policy.set_tier(
            guild_id,
            role.id,
            interaction.user.id,
            allowance=allowance,
            max_quality=max_quality,
            models=parsed,
            max_images=max_images,
        )
        await self.show(
            interaction, await self.policy.guild_policy(guild_id), f"Saved the tier for {role.mention}."
        )

    @app_commands.command(name="remove", description="Remove a role's tier")
    @app_commands.describe(role="The role whose tier to remove")
    async def remove(self, interaction: discord.Interaction, role: discord.Role) -> None:
        await self.begin(interaction)
        guild_id = _guild(interaction)
        removed = await self.policy.remove_tier(guild_id, role.id)
        note = f"Removed the tier for {role.mention}." if removed else f"{role.mention} had no tier."
        await self.show(interaction, await self.policy.guild_policy(guild_id), note)


def policy_groups(bot: RetouchBot) -> list[app_commands.Group]:
    """The subgroups cogs.admin mounts under /admin."""
    return [CreditsAdmin(bot), PolicyAdmin(bot), TierAdmin(bot)]
