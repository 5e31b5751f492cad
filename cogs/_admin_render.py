"""What `/admin policy …` and `/admin credits report` show: the server's rules, the budgets and the
spend report as embeds and text (cogs._admin_policy has the commands)."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import io
from decimal import Decimal

import discord

from bot import messages
from bot.client import RetouchBot
from bot.services.admin import GuildPolicy, RoleTier, SpendReport
from bot.services.edits import MAX_IMAGES_PER_EDIT
from bot.services.moderation import STRICT_SCORE
from bot.services.policy import Budget
from cogs._ui import EMBED_COLOUR, FIELD_CHARS, MORE, fit_lines, utc_day

REPORT_TOP = 10
# Most of the Role tiers field one tier's model list may take, so one tier allowing many models still
# leaves its other limits and the other tiers in view.
TIER_MODELS_CHARS = 300


def _models_text(models: frozenset[str] | None, limit: int) -> str:
    """Allowed model ids within `limit` characters: whole ids, then how many more. An operator's catalog
    can hold dozens, and one field over Discord's 1,024 characters refuses the whole reply (50035)."""
    if models is None or "*" in models:
        return "all"
    return fit_lines(sorted(models), sep=", ", limit=limit)


def _tier_line(tier: RoleTier, guild_id: int) -> str:
    parts = []
    if tier.allowance is not None:
        parts.append(f"allowance {tier.allowance}")
    if tier.max_quality:
        parts.append(f"quality up to {tier.max_quality}")
    if tier.models is not None:
        parts.append(f"models {_models_text(tier.models, TIER_MODELS_CHARS)}")
    if tier.max_images:
        parts.append(f"{tier.max_images} images per edit")
    # @everyone's role id is the server's: mentioned as a role it shows as "@@everyone".
    role = "@everyone" if tier.role_id == guild_id else f"<@&{tier.role_id}>"
    return f"{role}: " + (", ".join(parts) or "nothing beyond everyone's rules")


def budget_text(budget: Budget, credits_per_usd: int) -> str:
    """This month's spend against the operator's allotment for the server and the bot-wide budget."""

    def usd(credits: int) -> str:
        return messages.dollars(Decimal(credits) / credits_per_usd)

    server = f"This server: {usd(budget.used)} ({budget.captured} billed + {budget.held} held)"
    if budget.allotment is not None:
        server += f" of its allotment {usd(budget.allotment)}"
    elif budget.bot_cap is not None:
        server += " of the bot-wide budget"
    bot = f"All servers: {usd(budget.bot_used)}" + (
        f" of the bot-wide budget {usd(budget.bot_cap)}"
        if budget.bot_cap is not None
        else " (no bot-wide cap)"
    )
    if budget.allotment is None and budget.bot_cap is None:
        return f"{server}\n{bot}\nThe bot's operator has set no cap on this server's spend."
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
    head = f"Quality up to {policy.max_quality or 'max'} · models "
    tail = (
        f" · {policy.max_images or MAX_IMAGES_PER_EDIT} images per edit\n"
        f"Cooldown {policy.cooldown_seconds} s · running edits per member: {running}"
    )
    models = _models_text(policy.models, FIELD_CHARS - len(head) - len(tail))
    embed.add_field(name="Everyone", value=head + models + tail, inline=False)
    spent, held, cap = budget.captured, budget.held, budget.server_cap
    if cap is None:
        cap_text = f"No cap · this month {spent} credits captured, {held} held"
    else:
        set_to = messages.dollars(policy.monthly_cap_usd or Decimal(0))
        cap_text = f"{set_to} = {cap} credits · used {spent} captured + {held} held"
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
    # Fitted, not joined whole: an order too long for the field would make Discord refuse every
    # reply that shows this embed (50035), the answer to a change that was saved included.
    heading = f"{defaults}\nProviders: "
    providers = fit_lines(
        policy.provider_order, sep=" → ", empty="catalog order", limit=FIELD_CHARS - len(heading)
    )
    embed.add_field(name="Defaults", value=heading + providers, inline=False)
    tiers = fit_lines([_tier_line(t, policy.guild_id) for t in policy.tiers])
    embed.add_field(name="Role tiers (the most generous applies)", value=tiers, inline=False)
    return embed


def _spend_lines(rows: tuple[tuple[object, int], ...], report: SpendReport, label: str) -> str:
    lines = [
        f"{label.format(key)} — {credits} (${report.usd(credits):.2f})" for key, credits in rows[:REPORT_TOP]
    ]
    more = f"{MORE} (see the CSV)"
    return fit_lines(lines, hidden=len(rows) - len(lines), more=more, empty="Nothing spent.")


def period_text(since: dt.datetime | None, until: dt.datetime | None) -> str:
    """The UTC days a report's [since, until) covers: its last day is the one before `until`."""
    if since is None and until is None:
        return "All time"
    first = utc_day(since) if since is not None else "the start"
    last = utc_day(until - dt.timedelta(days=1)) if until is not None else "now"
    return f"On {first} (UTC)" if first == last else f"From {first} through {last} (UTC)"


def report_embed(report: SpendReport, budget: Budget | None = None) -> discord.Embed:
    """Spend per user, model and provider; the attached CSV holds every ledger row behind it."""
    embed = discord.Embed(
        title=f"Spend report — {report.period}",
        description=(
            f"{period_text(report.since, report.until)}. "
            f"**{report.spent} credits charged to members (${report.usd(report.spent):.2f})** in "
            f"{len(report.entries)} ledger rows." + _absorbed_text(report)
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


def _absorbed_text(report: SpendReport) -> str:
    """What the image services billed that no member paid: in the budget's spend, not in the ledger."""
    if not report.absorbed:
        return ""
    return (
        f" The image services also billed **{report.absorbed} credits (${report.usd(report.absorbed):.2f})** "
        "that no member was charged for (unusable images, moderators' stops, results nobody got); the "
        "operator's budget below counts both."
    )


async def report_file(report: SpendReport, guild_id: int, limit: int) -> discord.File | None:
    """The report's CSV within the upload limit `limit`: as it is, else gzipped (a ledger's rows shrink
    about tenfold), else None (the period holds too many rows for one file: the embed says so).
    Built off the event loop: a busy server's "all time" holds hundreds of thousands of rows."""
    stamp = (report.since or report.until or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")
    name = f"retouch-ledger-{guild_id}-{report.period.replace(' ', '-')}-{stamp}.csv"
    data = await asyncio.to_thread(lambda: report.csv().encode("utf-8"))
    if len(data) > limit:
        data, name = await asyncio.to_thread(gzip.compress, data), f"{name}.gz"
    if len(data) > limit:
        return None
    return discord.File(io.BytesIO(data), filename=name)


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
