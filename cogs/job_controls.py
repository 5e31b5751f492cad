"""The job buttons: **Cancel** on progress messages; **Edit again**, **Retry**, **Delete** on results.

They are `JobControl` dynamic items (the job id is in the custom id, the job itself in the database),
so they work on messages posted by an earlier process. Loading this cog also attaches the Discord
delivery to the engine, so results and notices can reach users outside a live command.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import discord

from bot.client import RetouchBot
from bot.services.edits import EditJob, EditOptions
from cogs._delivery import DiscordDelivery
from cogs._history import chain_source
from cogs._results import JobControl, run_and_publish
from cogs._ui import RetouchCog, admitted, first_image, report_error, role_ids_of, upload_of

log = logging.getLogger(__name__)

MODAL_PROMPT_MAX_CHARS = 4000  # Discord's cap for a text input in a form
MODAL_TIMEOUT_SECONDS = 900.0
NO_MENTIONS = discord.AllowedMentions.none()


class EditAgainForm(discord.ui.Modal, title="Edit again"):
    """A new prompt for a result: the result image becomes the input of a new edit."""

    prompt: discord.ui.TextInput[EditAgainForm] = discord.ui.TextInput(
        label="What should change?",
        custom_id="prompt",
        style=discord.TextStyle.paragraph,
        placeholder="e.g. now make it night time",
        max_length=MODAL_PROMPT_MAX_CHARS,
    )

    def __init__(self, cog: JobsCog, job_id: str) -> None:
        super().__init__(timeout=MODAL_TIMEOUT_SECONDS)
        self.cog = cog
        self.job_id = job_id

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        return await admitted(interaction, counts=True)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.cog.edit_again(interaction, self.job_id, self.prompt.value)

    # Modal.on_error is called with (interaction, error): a modal has no failing item. discord.py's own
    # Modal narrows BaseView.on_error(interaction, error, item) this way, so the checker sees an override.
    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:  # type: ignore[override]
        await report_error(interaction, error, where="the Edit again form")


class JobsCog(RetouchCog):
    """Discord plumbing for job controls; the rules (who may, what it costs) live in `bot/`."""

    dynamic_items = (JobControl,)

    def __init__(self, bot: RetouchBot) -> None:
        super().__init__(bot)
        self.edits = bot.services.edits

    async def cog_load(self) -> None:
        self.edits.engine.attach_delivery(DiscordDelivery(self.bot))
        await super().cog_load()

    async def on_control(self, interaction: discord.Interaction, job_id: str, action: str) -> None:
        """A click on a job button (its errors are answered by the control)."""
        match action:
            case "cancel":
                await self._cancel(interaction, job_id)
            case "again":
                await interaction.response.send_modal(EditAgainForm(self, job_id))
            case "retry":
                await self._retry(interaction, job_id)
            case "delete":
                await self._delete(interaction, job_id)
            case _:
                raise ValueError(f"unknown job control {action!r}")

    async def _cancel(self, interaction: discord.Interaction, job_id: str) -> None:
        # The button sits on the private progress message: answer by updating that message.
        await interaction.response.defer()
        row = await self.bot.services.storage.jobs.get_job(job_id)
        # A moderator's right counts only in the job's own server and channel, never in another one.
        here = row is not None and row.guild_id == (interaction.guild_id or 0)
        here = here and row is not None and row.channel_id == interaction.channel_id
        text = await self.edits.cancel(
            job_id, actor_id=interaction.user.id, can_manage=here and _can_manage(interaction)
        )
        await interaction.edit_original_response(content=text, view=None, allowed_mentions=NO_MENTIONS)

    async def _retry(self, interaction: discord.Interaction, job_id: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        interaction.extras["ephemeral_original"] = True
        async with self._once(("retry", job_id, interaction.user.id)):
            # The server and roles of this click, never the ones stored with the original job.
            job = await self.edits.retry_job(
                job_id,
                user_id=interaction.user.id,
                guild_id=interaction.guild_id or 0,
                role_ids=role_ids_of(interaction.user),
                channel_id=interaction.channel_id,
                upload_limit=interaction.filesize_limit,
            )
            message_id = interaction.message.id if interaction.message else None
            await run_and_publish(
                self.bot,
                interaction,
                lambda progress: self.edits.prepare(job, progress=progress),
                origin_message_id=message_id,
            )

    @contextlib.asynccontextmanager
    async def _once(self, key: tuple[object, ...]) -> AsyncIterator[None]:
        """One start per double click: a second click on the same result's button within a few
        seconds is refused (AlreadyStarted); a start that was refused frees the button at once."""
        access = self.bot.services.access
        assert access is not None
        access.claim(key)
        try:
            yield
        except BaseException:
            access.release(key)
            raise

    async def edit_again(self, interaction: discord.Interaction, job_id: str, prompt: str) -> None:
        """The Edit again form was sent: edit the result image (this message's) with the new prompt."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        interaction.extras["ephemeral_original"] = True
        message, thread_id = interaction.message, None
        # A chain continues from its latest version, in its thread (bot.services.history).
        if message is not None:
            message, thread_id = await chain_source(self.bot, message, job_id)
        image = first_image(message) if message is not None else None
        if message is None or image is None:
            await interaction.edit_original_response(
                content="That result no longer has its image. Use /edit with a file instead."
            )
            return
        job = EditJob(
            guild_id=interaction.guild_id or 0,
            user_id=interaction.user.id,
            channel_id=thread_id or interaction.channel_id,
            uploads=[upload_of("image", image)],
            options=EditOptions(prompt, model=await self.edits.job_model(job_id)),
            upload_limit=interaction.filesize_limit,
            role_ids=role_ids_of(interaction.user),
        )
        # The prompt is part of the key: the same form sent twice is a double click, a new prompt on
        # the same result (a chain continuing) is a new edit.
        async with self._once(("again", job_id, interaction.user.id, prompt)):
            await run_and_publish(
                self.bot,
                interaction,
                lambda progress: self.edits.prepare(job, progress=progress),
                origin_message_id=message.id,
                post_in=thread_id,
            )

    async def _delete(self, interaction: discord.Interaction, job_id: str) -> None:
        row = await self.bot.services.storage.jobs.get_job(job_id)
        message = interaction.message
        # Delete removes the clicked message: it must be this job's own result, in the job's server.
        # (A job whose row was pruned after JOB_HISTORY_DAYS leaves it to the channel's moderators.)
        its_result = row is None or (
            message is not None
            and row.guild_id == (interaction.guild_id or 0)
            and row.result_message_id in (None, message.id)
        )
        requester = row is not None and row.user_id == interaction.user.id
        if not its_result or (not requester and not _can_manage(interaction)):
            await interaction.response.send_message(
                "Only the person who asked for this edit, or a member who can manage messages, can "
                "delete it.",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        await interaction.response.defer()
        if interaction.message is not None:
            await interaction.message.delete()
            log.info("job %s: result deleted by %s", job_id, interaction.user.id)
            if not requester and row is not None:  # a moderator: the audit channel records who
                await self.bot.services.audit.moderator_action(
                    f"🗑️ <@{interaction.user.id}> deleted the result of job `{job_id}` of <@{row.user_id}> "
                    f"in <#{interaction.message.channel.id}>"
                )


def _can_manage(interaction: discord.Interaction) -> bool:
    """Manage Messages in the channel of the click (moderators may cancel or delete anyone's edit)."""
    return interaction.guild_id is not None and interaction.permissions.manage_messages


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(JobsCog(bot))
