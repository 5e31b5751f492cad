"""`/admin credits …`, `/admin policy …` and `/admin tier …`: the server's budget, mounted by cogs.admin.

Discord's default permission (Manage Server, on the `/admin` group) only hides these commands and a
server can change it, so every command also asks `PolicyService.authorize_admin`, which applies the
optional ADMIN_USER_IDS allow-list. Replies are private to the admin; mentions never ping.
"""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from typing import Literal

import discord
from discord import app_commands

from bot.choices import normalize_size
from bot.client import RetouchBot
from bot.services.admin import GuildPolicy, RoleTier, SpendReport, parse_models
from bot.services.edits import MAX_IMAGES_PER_EDIT
from bot.services.moderation import STRICT_SCORE
from bot.services.policy import Budget, PolicyService
from cogs._ui import EMBED_COLOUR, model_choices, policy_of, quality_choices, size_choices, truncate

MAX_CREDITS_PER_CHANGE = 10_000_000
MAX_COOLDOWN_SECONDS = 24 * 3600
MAX_RUNNING_LIMIT = 20
MAX_CAP_USD = 1_000_000
REPORT_TOP = 10
FIELD_CHARS = 1024  # Discord's limit for one embed field value
NO_PINGS = discord.AllowedMentions.none()
ReportPeriod = Literal["this month", "last month", "this week", "today", "all time"]


def _models_text(models: frozenset[str] | None) -> str:
    if models is None or "*" in models:
        return "all"
    return ", ".join(sorted(models))


def _tier_line(tier: RoleTier) -> str:
    parts = []
    if tier.allowance is not None:
        parts.append(f"allowance {tier.allowance}")
    if tier.max_quality:
        parts.append(f"quality up to {tier.max_quality}")
    if tier.models is not None:
        parts.append(f"models {_models_text(tier.models)}")
    if tier.max_images:
        parts.append(f"{tier.max_images} images per edit")
    return f"<@&{tier.role_id}>: " + (", ".join(parts) or "nothing beyond everyone's rules")


def budget_text(budget: Budget, credits_per_usd: int) -> str:
    """This month's spend against the operator's allotment for the server and the bot-wide budget."""

    def usd(credits: int) -> str:
        return f"${Decimal(credits) / credits_per_usd:.2f}"

    server = f"This server: {usd(budget.used)} ({budget.captured} spent + {budget.held} held)"
    server += " of " + (
        f"its allotment {usd(budget.allotment)}" if budget.allotment is not None else "the bot-wide budget"
    )
    bot = f"All servers: {usd(budget.bot_used)} of " + (
        f"the bot-wide budget {usd(budget.bot_cap)}" if budget.bot_cap is not None else "no bot-wide cap"
    )
    return f"{server}\n{bot}\nSet by the bot's operator; credits given here cannot buy more than this."


def policy_embed(
    policy: GuildPolicy, budget: Budget, settings_starting: int, credits_per_usd: int
) -> discord.Embed:
    """Everything an admin controls, as it stands."""
    embed = discord.Embed(title="Retouch rules on this server", colour=EMBED_COLOUR)
    if policy.period != "none" and policy.allowance:
        allowance = f"Topped up to {policy.allowance} credits {policy.period}"
    else:
        allowance = "None"
    starting = policy.starting_credits if policy.starting_credits is not None else settings_starting
    embed.add_field(name="Allowance", value=f"{allowance}\nNew members start with {starting}", inline=False)
    running = policy.max_concurrent or "no limit"
    embed.add_field(
        name="Everyone",
        value=(
            f"Quality up to {policy.max_quality or 'high'} · models {_models_text(policy.models)} · "
            f"{policy.max_images or MAX_IMAGES_PER_EDIT} images per edit\n"
            f"Cooldown {policy.cooldown_seconds} s · running edits per member: {running}"
        ),
        inline=False,
    )
    spent, held, cap = budget.captured, budget.held, budget.server_cap
    if cap is None:
        cap_text = f"No cap · this month {spent} credits captured, {held} held"
    else:
        cap_text = f"${policy.monthly_cap_usd:.2f} = {cap} credits · used {spent} captured + {held} held"
    embed.add_field(name="Monthly budget", value=cap_text, inline=False)
    embed.add_field(name="Operator's budget", value=budget_text(budget, credits_per_usd), inline=False)
    defaults = " · ".join(
        f"{name} {value or 'bot default'}"
        for name, value in (
            ("model", policy.default_model),
            ("quality", policy.default_quality),
            ("size", policy.default_size),
        )
    )
    providers = " → ".join(policy.provider_order) or "catalog order"
    embed.add_field(name="Defaults", value=f"{defaults}\nProviders: {providers}", inline=False)
    tiers = "\n".join(_tier_line(t) for t in policy.tiers) or "None"
    embed.add_field(
        name="Role tiers (the most generous applies)", value=truncate(tiers, FIELD_CHARS), inline=False
    )
    return embed


def _spend_lines(rows: tuple[tuple[object, int], ...], report: SpendReport, label: str) -> str:
    lines = [
        f"{label.format(key)} — {credits} (${report.usd(credits):.2f})" for key, credits in rows[:REPORT_TOP]
    ]
    if len(rows) > REPORT_TOP:
        lines.append(f"…and {len(rows) - REPORT_TOP} more (see the CSV)")
    return truncate("\n".join(lines) or "Nothing spent.", FIELD_CHARS)


def report_embed(report: SpendReport, budget: Budget | None = None) -> discord.Embed:
    """Spend per user, model and provider; the attached CSV holds every ledger row behind it."""
    since = discord.utils.format_dt(report.since, "D") if report.since else "the start"
    until = discord.utils.format_dt(report.until, "D") if report.until else "now"
    embed = discord.Embed(
        title=f"Spend report — {report.period}",
        description=(
            f"From {since} until {until} (UTC periods). "
            f"**{report.spent} credits spent (${report.usd(report.spent):.2f})** in "
            f"{len(report.entries)} ledger rows."
        ),
        colour=EMBED_COLOUR,
    )
    embed.add_field(name="By member", value=_spend_lines(report.by_user, report, "<@{}>"), inline=False)
    embed.add_field(name="By model", value=_spend_lines(report.by_model, report, "{}"))
    embed.add_field(name="By provider", value=_spend_lines(report.by_provider, report, "{}"))
    embed.add_field(
        name="Credits given",
        value=(
            f"By admins (net): {report.admin_granted}\nAllowances: {report.allowances}\n"
            f"Starting credits: {report.starting}"
        ),
        inline=False,
    )
    if budget is not None:
        embed.add_field(
            name="This month's spend (operator's budget)",
            value=budget_text(budget, report.credits_per_usd),
            inline=False,
        )
    return embed


def _report_file(report: SpendReport, guild_id: int) -> discord.File:
    stamp = (report.since or report.until or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")
    name = f"retouch-ledger-{guild_id}-{report.period.replace(' ', '-')}-{stamp}.csv"
    return discord.File(io.BytesIO(report.csv().encode("utf-8")), filename=name)


def moderation_text(bot: RetouchBot, level: str) -> str:
    """What `/admin policy moderation` answers: the level in force and what it means."""
    safety = bot.services.edits.safety
    if safety is None or not safety.available:
        return (
            f"Safety check: **{level}** — but it needs an OpenAI API key (`OPENAI_API_KEY`), so no check "
            "runs on this bot; the image services' own safety systems still apply."
        )
    meaning = {
        "off": "prompts and images go to the image service unchecked (its own safety system still applies)",
        "standard": "a prompt or image OpenAI's moderation flags is refused before anything is charged",
        "strict": (
            f"also refused when any category scores {STRICT_SCORE:g} or more (flags more, including "
            "some harmless requests)"
        ),
    }[level]
    return f"Safety check: **{level}** — {meaning}."


def _guild(interaction: discord.Interaction) -> int:
    assert interaction.guild_id is not None  # /admin is guild-only
    return interaction.guild_id


class _AdminSubgroup(app_commands.Group):
    """Shared by the subgroups: the services and the server-side permission check."""

    def __init__(self, bot: RetouchBot) -> None:
        super().__init__()
        self.bot = bot
        self.policy: PolicyService = policy_of(bot)

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
        await interaction.followup.send(note or None, embed=embed, ephemeral=True, allowed_mentions=NO_PINGS)


class CreditsAdmin(
    _AdminSubgroup, name="credits", description="Give, take or set a member's credits; reports"
):
    async def _change(
        self, interaction: discord.Interaction, action: str, user: discord.User, amount: int, reason: str
    ) -> None:
        await self.begin(interaction)
        change = await self.policy.change_credits(
            _guild(interaction), interaction.user.id, user.id, action, amount, reason
        )
        verb = {"grant": "Gave", "take": "Took", "set": "Changed"}[action]
        moved = abs(change.moved)
        text = f"{verb} {moved} credits {'to' if change.moved >= 0 else 'from'} {user.mention}"
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
        await interaction.followup.send(
            embed=report_embed(report, budget),
            file=_report_file(report, _guild(interaction)),
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
        max_quality: Literal["low", "medium", "high"] | None = None,
        models: str | None = None,
        max_images: app_commands.Range[int, 1, MAX_IMAGES_PER_EDIT] | None = None,
        cooldown: app_commands.Range[int, 0, MAX_COOLDOWN_SECONDS] | None = None,
        max_running: app_commands.Range[int, 0, MAX_RUNNING_LIMIT] | None = None,
    ) -> None:
        await self.begin(interaction)
        changes: dict[str, object] = {}
        if max_quality is not None:
            changes["max_quality"] = None if max_quality == "high" else max_quality
        if models is not None:
            changes["models"] = parse_models(models, self.policy.catalog, allow_all_marker=False)
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
        await self.bot.services.storage.settings.set_guild_moderation(
            _guild(interaction), None if level == "default" else level
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
        await self.show(interaction, policy, "Saved." if changes else "")

    @defaults.autocomplete("model")
    async def model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return model_choices(self.bot.services.edits.lifecycle, current)

    @defaults.autocomplete("quality")
    async def quality_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return await quality_choices(self.bot, interaction, current)

    @defaults.autocomplete("size")
    async def size_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return await size_choices(self.bot, interaction, current)


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
        max_quality: Literal["low", "medium", "high"] | None = None,
        models: str | None = None,
        max_images: app_commands.Range[int, 1, MAX_IMAGES_PER_EDIT] | None = None,
    ) -> None:
        await self.begin(interaction)
        guild_id = _guild(interaction)
        parsed = None if models is None else parse_models(models, self.policy.catalog, allow_all_marker=True)
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
