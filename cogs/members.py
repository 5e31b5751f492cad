"""What members notice: the one-click cheaper run (bot.affordable) and moderator controls.

* The cheaper-run offers are this process's memory (see `cogs._affordable`); their button is a
  dynamic item so a click that arrives before discord.py stored a view still reaches its offer.
* Each running edit has a public notice with **Stop edit** (`cogs._moderation`): the requester or a
  member with Manage Messages in the channel can stop it; stops by others go to the audit channel.
"""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from bot.client import RetouchBot
from cogs._affordable import CheaperRun, OfferBook
from cogs._moderation import PublicControls, StopControl, action_link
from cogs._ui import report_error

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()


def can_manage_messages(interaction: discord.Interaction) -> bool:
    """Manage Messages in the channel of the click (a moderator there)."""
    return interaction.guild_id is not None and interaction.permissions.manage_messages


class MembersCog(commands.Cog):
    def __init__(self, bot: RetouchBot) -> None:
        self.bot = bot
        self.offers = OfferBook()
        self.controls = PublicControls(bot)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(CheaperRun, StopControl)
        self.bot.services.edits.observers.append(self.controls)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(CheaperRun, StopControl)
        observers = self.bot.services.edits.observers
        if self.controls in observers:
            observers.remove(self.controls)
        await self.controls.close()

    async def stop(self, interaction: discord.Interaction, job_id: str) -> None:
        """A click on a public **Stop edit**. Never raises: errors become private messages."""
        try:
            await self._stop(interaction, job_id)
        except Exception as error:
            await report_error(interaction, error, where="Stop edit")

    async def _stop(self, interaction: discord.Interaction, job_id: str) -> None:
        storage = self.bot.services.storage
        row = await storage.get_job(job_id)
        manage = can_manage_messages(interaction)
        if row is None or (row.user_id != interaction.user.id and not manage):
            await interaction.response.send_message(
                "Only the person who asked for this edit, or a member who can manage messages here, can "
                "stop it.",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        await interaction.response.defer()  # the answer is the public notice itself
        self.controls.forget(job_id)  # this handler edits the notice; the job's end must not delete it
        # Not quiet: the requester's own progress message says it was cancelled and not charged.
        text = await self.bot.services.edits.engine.cancel(
            job_id, actor_id=interaction.user.id, can_manage=manage, quiet=False
        )
        after = await storage.get_job(job_id)
        if after is None or after.state != "cancelled":
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
            if interaction.message is not None:
                await interaction.message.delete()
            return
        by_other = interaction.user.id != row.user_id
        who = f"a moderator (<@{interaction.user.id}>)" if by_other else "the requester"
        await interaction.edit_original_response(
            content=f"🛑 <@{row.user_id}>'s edit was stopped by {who}. Nothing was charged.",
            view=None,
            allowed_mentions=NO_MENTIONS,
        )
        log.info("job %s: stopped by %s (requester %s)", job_id, interaction.user.id, row.user_id)
        if by_other:
            await self.bot.services.audit.moderator_action(
                f"🛑 <@{interaction.user.id}> stopped job `{job_id}` of <@{row.user_id}> "
                f"in <#{row.channel_id}> (released in full)",
                action_link(
                    row.guild_id, row.channel_id, interaction.message.id if interaction.message else None
                ),
            )


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(MembersCog(bot))
