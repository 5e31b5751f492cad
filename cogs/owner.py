"""`/owner …`: the operator's commands (approve or remove a server, its monthly allotment, the spend
report, the model routes and bringing back a retired one) and the Approve button the bot offers the
operator in a server it does not serve yet.

These work anywhere, also in unapproved servers and DMs (approving the first server needs them); the
services refuse everyone but the operator (`OWNER_IDS`, or the application's owner).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from decimal import Decimal

import discord
from discord import app_commands

from bot import messages
from bot.choices import MAX_CHOICES
from bot.client import APPROVE_CUSTOM_ID, OPERATOR_COMMAND, RetouchBot
from bot.errors import InvalidOptions
from bot.lifecycle import RouteState
from bot.services.access import AccessService
from bot.services.admin import OperatorReport
from cogs._ui import EMBED_COLOUR, PersistentControl, RetouchCog, always_answers, fit_lines, utc_day

log = logging.getLogger(__name__)

MAX_ALLOTMENT_USD = 1_000_000
REPORT_ROWS = 20
NO_PINGS = discord.AllowedMentions.none()
# A Discord id: ASCII digits only (`str.isdigit()` also takes "²", which `int()` refuses), and at most
# SQLite's (and PostgreSQL's bigint's) largest integer, which the settings tables store it as.
SERVER_ID = re.compile(r"[0-9]{1,20}")
MAX_SERVER_ID = 2**63 - 1


def _server_id(interaction: discord.Interaction, text: str | None) -> int:
    """The server an operator command is about: the one given, else the one it runs in."""
    if text is None:
        if interaction.guild_id is None:
            raise InvalidOptions(messages.NO_SERVER_GIVEN, code="no_server")
        return interaction.guild_id
    digits = text.strip()
    # 0 is not a server: the services use it for direct messages.
    if SERVER_ID.fullmatch(digits) is None or not 0 < int(digits) <= MAX_SERVER_ID:
        raise InvalidOptions(messages.SERVER_ID_NOT_A_NUMBER, code="bad_server")
    return int(digits)


def _cap_text(credits: int | None, report: OperatorReport) -> str:
    return "no cap" if credits is None else messages.dollars(report.usd(credits))


# The "server" a direct message's edit is booked under (no server id is 0).
DIRECT_MESSAGES = 0


def operator_embed(report: OperatorReport) -> discord.Embed:
    """Spend this month per server against its allotment, and in total against the bot's budget."""
    used = report.used
    embed = discord.Embed(
        title="Retouch spend this month (all servers)",
        description=(
            f"Since {utc_day(report.since)} (UTC): **${report.usd(used):.2f}** "
            f"({used} credits, charged + held) of the bot-wide budget: {_cap_text(report.bot_cap, report)}."
        ),
        colour=EMBED_COLOUR,
    )
    lines = []
    for server in report.servers[:REPORT_ROWS]:
        spent = server.captured + server.held
        if server.guild_id == DIRECT_MESSAGES:  # ALLOW_DMS: edits outside any server are booked here
            lines.append(f"Direct messages — ${report.usd(spent):.2f} of bot budget")
            continue
        state = "approved" if server.approved else "not approved"
        allotment = "bot budget" if server.allotment is None else _cap_text(server.allotment, report)
        lines.append(f"`{server.guild_id}` ({state}) — ${report.usd(spent):.2f} of {allotment}")
    hidden = len(report.servers) - len(lines)
    embed.add_field(name="Servers", value=fit_lines(lines, hidden=hidden, empty="None yet."), inline=False)
    return embed


def _when(moment: dt.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def route_line(state: RouteState) -> str:
    """One route for `/owner routes`: live, on trial, or retired with why and until when."""
    where = f"`{state.model}` on **{state.provider}**"
    since = f", since {_when(state.gone_at)}" if state.gone_at is not None else ""
    if state.trial_due:
        return f"🔁 {where}: on trial, the next edit asks it again ({state.why}{since})"
    if state.live:
        return f"✅ {where}: live"
    line = f"❌ {where}: {state.why or 'not live'}"
    if state.gone_reason is not None:
        line += since
        line += f"; tried again from {_when(state.trial_at)}" if state.trial_at else "; not tried again"
    return line


def routes_embed(states: list[RouteState]) -> discord.Embed:
    """Every configured route and its state, retired ones first (what the operator looks for)."""
    ordered = sorted(states, key=lambda s: (s.live and not s.trial_due, s.trial_due))
    lines = [route_line(s) for s in ordered]
    embed = discord.Embed(
        title="Model routes",
        description=fit_lines(lines, empty="No configured provider sells a catalog model."),
        colour=EMBED_COLOUR,
    )
    embed.set_footer(text='A route retired after "model gone" comes back with /owner revive.')
    return embed


def _retired(interaction: discord.Interaction) -> list[RouteState]:
    """The routes a "model gone" answer retired (the operator only: anyone else is refused)."""
    bot = interaction.client
    assert isinstance(bot, RetouchBot)
    return [s for s in bot.services.routes.states(interaction.user.id) if s.gone_reason is not None]


def _named(values: Iterable[str], current: str) -> list[app_commands.Choice[str]]:
    """Each of `values` once, those holding what is typed, as Discord's choices."""
    typed = current.lower()
    matches = [v for v in dict.fromkeys(values) if typed in v.lower()]
    return [app_commands.Choice(name=v, value=v) for v in matches][:MAX_CHOICES]


@always_answers
async def retired_model_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """The models with a route a "model gone" answer retired (the operator only)."""
    return _named((s.model for s in _retired(interaction)), current)


@always_answers
async def retired_provider_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """The providers with a retired route (of the model already typed, when there is one)."""
    typed = getattr(interaction.namespace, "model", None)
    return _named((s.provider for s in _retired(interaction) if not typed or s.model == typed), current)


@app_commands.default_permissions(administrator=True)
class OwnerGroup(app_commands.Group, name=OPERATOR_COMMAND, description="For the bot's operator only"):
    """`/owner`: approve servers, set allotments and read the spend report (the operator only)."""

    def __init__(self, bot: RetouchBot) -> None:
        super().__init__()
        self.bot = bot

    @property
    def _access(self) -> AccessService:
        return self.bot.services.access

    @app_commands.command(name="approve", description="Let Retouch serve a server")
    @app_commands.describe(server="Server id (empty: this server)")
    async def approve(self, interaction: discord.Interaction, server: str | None = None) -> None:
        guild_id = _server_id(interaction, server)
        await interaction.response.defer(ephemeral=True, thinking=True)  # a write may wait on a busy database
        await self._access.approve(guild_id, interaction.user.id)
        # A server approved again keeps the allotment it had: said, so it is not a surprise later.
        allotment = await self.bot.services.policy.allotment(guild_id)
        kept = "" if allotment is None else f" Its allotment stands: {messages.allotment(allotment)}."
        await interaction.followup.send(f"Server `{guild_id}` is approved.{kept}", ephemeral=True)

    @app_commands.command(name="remove", description="Stop serving a server")
    @app_commands.describe(server="Server id (empty: this server)")
    async def remove(self, interaction: discord.Interaction, server: str | None = None) -> None:
        guild_id = _server_id(interaction, server)
        await interaction.response.defer(ephemeral=True, thinking=True)  # a write may wait on a busy database
        removed = await self._access.remove(guild_id, interaction.user.id)
        text = f"Server `{guild_id}` is no longer approved."
        if not removed:
            text = messages.listed_in_settings(guild_id)
        await interaction.followup.send(text, ephemeral=True)

    @app_commands.command(name="allotment", description="Most a server may spend per month, in US dollars")
    @app_commands.describe(
        usd="Monthly USD for the server; leave empty to let it spend up to the bot-wide budget",
        server="Server id (empty: this server)",
    )
    async def allotment(
        self,
        interaction: discord.Interaction,
        usd: app_commands.Range[float, 0, MAX_ALLOTMENT_USD] | None = None,
        server: str | None = None,
    ) -> None:
        guild_id = _server_id(interaction, server)
        amount = None if usd is None else Decimal(repr(usd))
        # Acknowledged first: the change is a write and its audit post waits on Discord's rate limits.
        await interaction.response.defer(ephemeral=True, thinking=True)
        change = await self.bot.services.policy.set_allotment(guild_id, interaction.user.id, amount)
        audited = " Recorded in the audit channel." if change.audited else ""
        await interaction.followup.send(
            f"Server `{guild_id}` may now spend {messages.allotment(change.after)}.{audited}", ephemeral=True
        )

    @app_commands.command(name="report", description="Spend per server against allotments and the budget")
    async def report(self, interaction: discord.Interaction) -> None:
        # Acknowledged first: the report sums every server's spend, which may outlast Discord's 3 s.
        await interaction.response.defer(ephemeral=True, thinking=True)
        report = await self.bot.services.policy.operator_report(interaction.user.id)
        await interaction.followup.send(
            embed=operator_embed(report), ephemeral=True, allowed_mentions=NO_PINGS
        )

    @app_commands.command(name="routes", description="Every model route: live, retired (why, until when)")
    async def routes(self, interaction: discord.Interaction) -> None:
        states = self.bot.services.routes.states(interaction.user.id)
        await interaction.response.send_message(
            embed=routes_embed(states), ephemeral=True, allowed_mentions=NO_PINGS
        )

    @app_commands.command(name="revive", description='Bring back a route retired after a "model gone" answer')
    @app_commands.describe(model="The model's id", provider="The service that sells it on that route")
    @app_commands.autocomplete(model=retired_model_autocomplete, provider=retired_provider_autocomplete)
    async def revive(self, interaction: discord.Interaction, model: str, provider: str) -> None:
        # Acknowledged first: bringing a route back is a write, and its audit post waits on Discord.
        await interaction.response.defer(ephemeral=True, thinking=True)
        routes = await self.bot.services.routes.revive(interaction.user.id, model, provider)
        await interaction.followup.send(
            messages.route_revived(routes[0].provider, model.strip(), len(routes)),
            ephemeral=True,
            allowed_mentions=NO_PINGS,
        )


class ApproveButton(
    PersistentControl, prefix=APPROVE_CUSTOM_ID.split(":{")[0], fields={"guild": "[0-9]{1,20}"}
):
    """The button on the bot's answer to the operator in an unapproved server (`bot.client.approve_view`)."""

    async def clicked(self, interaction: discord.Interaction) -> None:
        bot = interaction.client
        assert isinstance(bot, RetouchBot)
        await interaction.response.defer()  # the approval is a write, which may wait on a busy database
        await bot.services.access.approve(int(self.state[0]), interaction.user.id)
        await interaction.edit_original_response(
            content="Approved. Retouch now serves this server: run your command again.", view=None
        )


class OwnerCog(RetouchCog):
    """Mounts `/owner` and the Approve button."""

    dynamic_items = (ApproveButton,)

    def __init__(self, bot: RetouchBot) -> None:
        super().__init__(bot, OwnerGroup(bot))


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(OwnerCog(bot))
