"""`/credits`: your balance, what running edits hold, your allowance and your credit history.

The history pages with buttons whose custom_id carries the page, registered as dynamic items, so
they keep working after a restart. Admin grants and reports are under `/admin credits` (Discord
does not allow one command to be both runnable and a group).
"""

from __future__ import annotations

import datetime as dt

import discord
from discord import app_commands

from bot.client import RetouchBot
from bot.services.policy import CreditsSummary, HistoryPage
from bot.storage.ledger import ALLOWANCE_REASON
from bot.storage.reports import LedgerEntry
from cogs._ui import EMBED_COLOUR, PersistentControl, RetouchCog, admitted, role_ids_of, truncate

REASON_CHARS = 80


def entry_line(entry: LedgerEntry) -> str:
    """One history line: when, how many credits in or out, and why."""
    when = discord.utils.format_dt(dt.datetime.fromisoformat(entry.created_at), "R")
    if entry.kind == "capture":
        job = (entry.job_id or "")[:8]
        return f"{when} **−{entry.amount} credits** · edit `{job}` ({entry.model or 'unknown model'})"
    reason = discord.utils.escape_markdown(truncate(entry.reason or "", REASON_CHARS))
    if entry.actor_id is not None:
        why = f"by <@{entry.actor_id}> — {reason}"
    elif entry.reason is None:  # an admin's change whose admin and text JOB_HISTORY_DAYS erased
        why = "by an admin"
    elif reason.startswith(ALLOWANCE_REASON):
        why = "allowance top-up"
    else:
        why = reason or "grant"
    return f"{when} **{entry.amount:+d} credits** · {why}"


def credits_embed(summary: CreditsSummary, history: HistoryPage, credits_per_usd: int) -> discord.Embed:
    """Balance, holds and allowance first, then one page of history.

    All in the description: a field holds only 1,024 characters, too few for a page of reasons.
    """
    account, allowance = summary.account, summary.allowance
    lines = [
        f"**Available:** {account.balance} credits (${account.balance / credits_per_usd:.2f} of image edits)",
        f"**Held by running edits:** {account.held}",
    ]
    if allowance.next_refill is not None:
        refill = discord.utils.format_dt(allowance.next_refill, "f")
        lines.append(f"**Allowance:** topped up to {allowance.amount} {allowance.period}")
        lines.append(f"**Next refill:** {refill} ({discord.utils.format_dt(allowance.next_refill, 'R')})")
    else:
        lines.append("**Allowance:** none on this server")
    lines += ["", "**History**"]
    lines += [entry_line(e) for e in history.entries] or ["Nothing yet."]
    embed = discord.Embed(title="Your credits", description="\n".join(lines), colour=EMBED_COLOUR)
    embed.set_footer(text=f"Page {history.page + 1} of {history.pages}")
    return embed


# A page number has at most this many digits: a forged id's 20-digit page overflowed the SQL offset.
PAGE_DIGITS = 6


class HistoryButton(
    PersistentControl,
    prefix="retouch:credits",
    fields={"page": rf"\d{{1,{PAGE_DIGITS}}}", "side": "newer|older"},
):
    """Newer/older history page. Only the user who ran /credits sees (and can click) it."""

    @classmethod
    def for_page(cls, page: int, side: str, *, disabled: bool) -> HistoryButton:
        label = "◀ Newer" if side == "newer" else "Older ▶"
        return cls.button(page, side, label=label, style=discord.ButtonStyle.secondary, disabled=disabled)

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        return await admitted(interaction)

    async def clicked(self, interaction: discord.Interaction) -> None:
        bot = interaction.client
        assert isinstance(bot, RetouchBot)
        # Acknowledged first: the page may refill an allowance (a write that can wait on a busy
        # database) and Discord gives a click 3 s for its first answer.
        await interaction.response.defer()
        embed, view = await render(bot, interaction, int(self.state[0]))
        await interaction.edit_original_response(embed=embed, view=view)


def history_view(history: HistoryPage) -> discord.ui.View | None:
    if history.pages <= 1:
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(HistoryButton.for_page(max(0, history.page - 1), "newer", disabled=history.page == 0))
    view.add_item(
        HistoryButton.for_page(history.page + 1, "older", disabled=history.page + 1 >= history.pages)
    )
    return view


async def render(
    bot: RetouchBot, interaction: discord.Interaction, page: int
) -> tuple[discord.Embed, discord.ui.View | None]:
    """The /credits message for the interaction's user (refilling a due allowance first)."""
    policy = bot.services.policy
    guild_id, user = interaction.guild_id or 0, interaction.user
    summary = await policy.credits(guild_id, user.id, role_ids_of(user))
    history = await policy.history(guild_id, user.id, page)
    return credits_embed(summary, history, bot.services.settings.credits_per_usd), history_view(history)


class CreditsCog(RetouchCog):
    """`/credits`: balance, holds, allowance and history."""

    dynamic_items = (HistoryButton,)

    @app_commands.command(name="credits", description="Show your credits, your allowance and your history")
    async def credits(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        services = self.bot.services
        services.metrics.observe_ack(interaction.created_at)
        embed, view = await render(self.bot, interaction, 0)
        if view is None:
            await interaction.followup.send(embed=embed, ephemeral=True)
        else:
            await interaction.followup.send(embed=embed, view=view, ephemeral=True)


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(CreditsCog(bot))
