"""What members notice: the one-click cheaper run (bot.services.affordable), moderator controls and history.

* The cheaper-run offers are this process's memory (see `cogs._affordable`); their button is a
  dynamic item so a click that arrives before discord.py stored a view still reaches its offer.
* Each running edit has a public notice with **Stop edit** (`cogs._moderation`): the requester or a
  member with Manage Messages in the channel can stop it; stops by others go to the audit channel.
* Results form chains (`bot.services.history`): **Undo** posts the previous version again (downloaded from
  its Discord message: no image is stored), and `/history` lists a member's last edits with links.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from typing import Any

import discord
from discord import app_commands

from bot import messages
from bot.client import RetouchBot, reply_privately
from bot.services.history import NothingToUndo, UndoStep
from bot.storage.jobs import JobRow
from cogs._affordable import CheaperRun, OfferBook
from cogs._history import (
    UndoControl,
    chain_thread,
    history_embed,
    post_repost,
    restored_embed,
    thread_parent,
)
from cogs._moderation import PublicControls, StopControl, action_link
from cogs._results import result_view
from cogs._ui import RetouchCog, first_image, images_of

log = logging.getLogger(__name__)

# How long an Undo on a repost waits for the repost's own record (one database write).
RECORD_WAIT_SECONDS = 10.0

NO_MENTIONS = discord.AllowedMentions.none()


def can_manage_messages(interaction: discord.Interaction) -> bool:
    """Manage Messages in the channel of the click (a moderator there)."""
    return interaction.guild_id is not None and interaction.permissions.manage_messages


class MembersCog(RetouchCog):
    """What members notice: the cheaper-run offer, Stop edit, Undo and `/history`."""

    dynamic_items = (CheaperRun, StopControl, UndoControl)

    def __init__(self, bot: RetouchBot) -> None:
        super().__init__(bot)
        self.offers = OfferBook()
        self.controls = PublicControls(bot)
        # Reposts being posted and recorded, by the job whose version they show: an Undo clicked on one
        # before its record is written (the click can even arrive before the post's own answer) waits
        # for the record instead of being told the history has expired.
        self._recording: dict[str, asyncio.Event] = {}

    async def cog_load(self) -> None:
        await super().cog_load()
        self.bot.services.edits.observers.append(self.controls)

    async def cog_unload(self) -> None:
        await super().cog_unload()
        observers = self.bot.services.edits.observers
        if self.controls in observers:
            observers.remove(self.controls)
        await self.controls.close()

    async def stop(self, interaction: discord.Interaction, job_id: str) -> None:
        """A click on a public **Stop edit** (its errors are answered by the control)."""
        storage = self.bot.services.storage
        # Acknowledged first (the answer is the public notice itself): the read may wait on a busy database.
        await interaction.response.defer()
        row = await storage.jobs.get_job(job_id)
        # A moderator's right is the channel's (Discord reads the click's permissions there), so it
        # counts only where the job is seen: a copy of the button in another channel, or another
        # server, gives its moderators none.
        manage = (
            row is not None
            and row.guild_id == (interaction.guild_id or 0)
            and can_manage_messages(interaction)
            and await self._seen_in(interaction.channel_id, row)
        )
        if row is None or (row.user_id != interaction.user.id and not manage):
            # An unknown job (pruned after JOB_HISTORY_DAYS, or a forged button) is said to be one.
            refusal = messages.JOB_UNKNOWN if row is None else messages.STOP_NOT_ALLOWED
            await interaction.followup.send(refusal, ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        # This handler edits the notice: the job's end (here or on another process) must not delete it.
        notice = await self.controls.claim(job_id)
        # Not quiet: the requester's own progress message says how it ended and what it cost.
        answer = await self.bot.services.edits.engine.cancel(
            job_id, actor_id=interaction.user.id, can_manage=manage, quiet=False
        )
        by_other = interaction.user.id != row.user_id
        if answer.pending:
            # Another bot process runs the job and stops it at its next lease round, or it is slow to
            # stop here; the notice stays until then, and the job's end removes it.
            if notice is not None:
                await self.controls.give_back(job_id, notice)
            await interaction.followup.send(answer.text, ephemeral=True, allowed_mentions=NO_MENTIONS)
        elif not answer.cancelled:
            await interaction.followup.send(answer.text, ephemeral=True, allowed_mentions=NO_MENTIONS)
            if interaction.message is not None:
                try:
                    await interaction.message.delete()
                except discord.HTTPException as exc:
                    # Already removed by the job's own end (a click as the edit finishes), or by another
                    # moderator's click: the answer above was the whole reply.
                    log.info("job %s: its Stop notice was already gone (%s %s)", job_id, exc.status, exc.code)
            return
        else:
            await interaction.edit_original_response(
                content=messages.stopped_notice(
                    row.user_id,
                    interaction.user.id if by_other else None,
                    answer.charged,
                ),
                view=None,
                allowed_mentions=NO_MENTIONS,
            )
        log.info("job %s: stopped by %s (requester %s)", job_id, interaction.user.id, row.user_id)
        if by_other:
            where = "stopping: it ends on its own" if answer.pending else "released in full"
            await self.bot.services.audit.moderator_action(
                f"🛑 <@{interaction.user.id}> stopped job `{job_id}` of <@{row.user_id}> "
                f"in <#{row.channel_id}> ({where})",
                action_link(
                    row.guild_id, row.channel_id, interaction.message.id if interaction.message else None
                ),
            )

    async def _seen_in(self, channel_id: int | None, row: JobRow) -> bool:
        """Whether a click in `channel_id` is where the job is seen: its public notice's channel, its
        own channel, or the channel its chain's thread is under (the notice may still be on its way to
        the row, and it is posted where Edit again was clicked, beside the thread)."""
        if channel_id is None:
            return False
        if channel_id in (row.notice_channel_id, row.channel_id):
            return True
        return row.channel_id is not None and await thread_parent(self.bot, row.channel_id) == channel_id

    # -- edit history ------------------------------------------------------------------------------

    @app_commands.command(name="history", description="Your last edits here, with links to each result")
    async def history(self, interaction: discord.Interaction) -> None:
        history = self.bot.services.history
        await interaction.response.defer(ephemeral=True, thinking=True)  # a read may wait on a busy database
        entries = await history.recent(interaction.guild_id or 0, interaction.user.id)
        hours = self.bot.services.settings.result_retention_hours
        if not entries:
            await interaction.followup.send(
                f"You have no edits here from the last {hours:g} hours (Retouch keeps the links that long). "
                "Start one with /edit.",
                ephemeral=True,
            )
            return
        await interaction.followup.send(
            embed=history_embed(entries, interaction.guild_id, hours),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    async def undo(self, interaction: discord.Interaction, job_id: str) -> None:
        """A click on **Undo** (its errors are answered by the control)."""
        history = self.bot.services.history
        message = interaction.message
        assert message is not None
        hours = self.bot.services.settings.result_retention_hours
        # Taken before the lookup: a repost recorded while the lookup runs removes its event, and the
        # lookup may have missed the row (read just before it was written).
        recording = self._recording.get(job_id)
        # Acknowledged first: the lookups (and the wait for a repost's record) may outlast Discord's 3 s.
        await interaction.response.defer()
        latest = await history.latest(message.id, job_id)
        if latest is None and recording is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recording.wait(), RECORD_WAIT_SECONDS)
            latest = await history.latest(message.id, job_id)
        if latest is None:
            await reply_privately(interaction, messages.history_expired(hours))
            return
        if latest.user_id != interaction.user.id and not can_manage_messages(interaction):
            await reply_privately(interaction, messages.UNDO_NOT_REQUESTER)
            return
        try:
            step = await history.undo_step(message.id, job_id)
        except NothingToUndo:
            await reply_privately(interaction, messages.NOTHING_TO_UNDO)
            return
        # One repost per step of the chain: two clicks at once (a double click, the requester's and a
        # moderator's, or Undo on two versions of one chain) each posted the same earlier version. The
        # step is held until its repost is recorded; a click that read the chain before then finds it
        # moved on when it gets the step, and is refused rather than stepping back a second time.
        access, key = self.bot.services.access, ("undo", step.latest.message_id)
        access.claim(key, refusal=messages.UNDO_ALREADY_STARTED)
        try:
            try:
                current: UndoStep | None = await history.undo_step(message.id, job_id)
            except NothingToUndo:
                current = None
            if current is None or current.latest.message_id != step.latest.message_id:
                await reply_privately(interaction, messages.UNDO_ALREADY_STARTED)
                return
            await self._repost(interaction, step)
        finally:
            access.release(key)

    async def _repost(self, interaction: discord.Interaction, step: UndoStep) -> None:
        """Post the version before `step.latest` again (into the chain's thread, if it has one), or tell
        the member it cannot be read or is gone."""
        history = self.bot.services.history
        earlier: discord.Message | None = None
        images: list[tuple[str, bytes]] = []
        try:
            earlier = await self.bot.get_partial_messageable(step.previous.channel_id).fetch_message(
                step.previous.message_id
            )
            # Every image of that version (a result of several), else the one image it has.
            shown = images_of(earlier)
            if not shown and (other := first_image(earlier)) is not None:
                shown = [other]
            images = [(a.filename, await a.read()) for a in shown]
        except discord.NotFound:
            pass  # deleted, or its image is gone: said below
        except discord.Forbidden as exc:  # the bot may no longer read that channel
            log.info("undo: version %s unreadable (%s %s)", step.previous.message_id, exc.status, exc.code)
            await interaction.followup.send(messages.PREVIOUS_VERSION_UNREADABLE, ephemeral=True)
            return
        if earlier is None or not images:
            await interaction.followup.send(messages.PREVIOUS_VERSION_DELETED, ephemeral=True)
            return
        name = interaction.user.display_name
        embed = restored_embed(
            earlier.embeds[0] if earlier.embeds else None, name, images[0][0], step.previous.job_id
        )
        where = await chain_thread(self.bot, step.latest.chain_id) or interaction.channel_id

        def post() -> dict[str, Any]:  # the same message, through a followup or into the chain's thread
            return {
                "content": interaction.user.mention,
                "embed": embed,
                "files": [discord.File(io.BytesIO(data), filename=name) for name, data in images],
                "view": result_view(step.previous.job_id, undo=True),
                "allowed_mentions": NO_MENTIONS,
            }

        recorded = self._recording[step.previous.job_id] = asyncio.Event()
        try:
            assert where is not None
            posted = await post_repost(self.bot, interaction, where, post, step.previous.job_id)
            await history.record_repost(step, message_id=posted.id, channel_id=posted.channel.id)
        finally:
            recorded.set()
            if self._recording.get(step.previous.job_id) is recorded:
                del self._recording[step.previous.job_id]
        log.info("undo: version %s posted again as %s", step.previous.message_id, posted.id)


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(MembersCog(bot))
