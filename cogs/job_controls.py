"""The job buttons: **Cancel** on progress messages; **Edit again**, **Retry**, **Delete** on results.

They are `JobControl` dynamic items (the job id is in the custom id, the job itself in the database),
so they work on messages posted by an earlier process. Loading this cog also attaches the Discord
delivery to the engine, so results and notices can reach users outside a live command.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import discord
from discord.ext import commands

from bot import messages
from bot.client import RetouchBot
from bot.services.edits import EditJob
from cogs._delivery import DiscordDelivery
from cogs._history import chain_source
from cogs._results import JobControl, run_and_publish, started_a_job
from cogs._ui import (
    RetouchCog,
    admitted,
    images_of,
    report_error,
    role_ids_of,
    shows_result_of,
    upload_of,
)

log = logging.getLogger(__name__)

MODAL_PROMPT_MAX_CHARS = 4000  # Discord's cap for a text input in a form
FORM_PREFIX = "retouch:again-form:"
FORM_ID = re.compile(re.escape(FORM_PREFIX) + "([0-9a-f]{16})")
FORM_PROMPT = "prompt"
FORM_IMAGE = "image"  # which of a result's images to edit, when it has several
NO_MENTIONS = discord.AllowedMentions.none()


class EditAgainForm(discord.ui.Modal, title="Edit again"):
    """A new prompt for a result: the result image becomes the input of a new edit.

    Answered from its custom id (`JobsCog.on_interaction`), never from discord.py's modal store: the
    store learns of a form only once the bot has read Discord's reply to opening it, and forgets it when
    the bot restarts; a submission it does not know is dropped without a word ("This interaction
    failed"). So the form is stopped before it is sent, which keeps it out of the store.
    """

    prompt: discord.ui.TextInput[EditAgainForm] = discord.ui.TextInput(
        label="What should change?",
        custom_id=FORM_PROMPT,
        style=discord.TextStyle.paragraph,
        placeholder="e.g. now make it night time",
        max_length=MODAL_PROMPT_MAX_CHARS,
    )

    def __init__(self, job_id: str, images: int = 1) -> None:
        super().__init__(custom_id=f"{FORM_PREFIX}{job_id}", timeout=None)
        if images > 1:  # a result of several images: any one of them may be edited on
            self.add_item(
                discord.ui.TextInput(
                    label=f"Which image? (1 to {images}; empty: 1)",
                    custom_id=FORM_IMAGE,
                    required=False,
                    placeholder="1",
                    max_length=2,
                )
            )
        self.stop()


def form_job_id(data: Any) -> str | None:
    """The job an Edit again form submission is for, or None when it is not one."""
    custom_id = data.get("custom_id") if isinstance(data, dict) else None
    match = FORM_ID.fullmatch(custom_id) if isinstance(custom_id, str) else None
    return match.group(1) if match else None


def submitted_text(components: Any, custom_id: str) -> str:
    """The value of the text input `custom_id` in a modal submission's components (in action rows or
    labels, however deep)."""
    for component in components if isinstance(components, list) else []:
        if not isinstance(component, dict):
            continue
        if component.get("custom_id") == custom_id and isinstance(component.get("value"), str):
            return str(component["value"])
        inner = component.get("components") or ([component["component"]] if "component" in component else [])
        found = submitted_text(inner, custom_id)
        if found:
            return found
    return ""


class JobsCog(RetouchCog):
    """Discord plumbing for job controls; the rules (who may, what it costs) live in `bot/`."""

    dynamic_items = (JobControl,)

    def __init__(self, bot: RetouchBot) -> None:
        super().__init__(bot)
        self.edits = bot.services.edits

    async def cog_load(self) -> None:
        self.edits.engine.attach_delivery(DiscordDelivery(self.bot))
        await super().cog_load()

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """An Edit again form submitted (see EditAgainForm: answered here, also after a restart)."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        job_id = form_job_id(interaction.data)
        if job_id is None:
            return
        try:
            if not await admitted(interaction, counts=True):
                return
            data: dict[str, Any] = dict(interaction.data or {})
            prompt = submitted_text(data.get("components"), FORM_PROMPT)
            which = submitted_text(data.get("components"), FORM_IMAGE)
            await self.edit_again(interaction, job_id, prompt, which)
        except Exception as exc:
            await report_error(interaction, exc, where="the Edit again form")

    async def on_control(self, interaction: discord.Interaction, job_id: str, action: str) -> None:
        """A click on a job button (its errors are answered by the control)."""
        match action:
            case "cancel":
                await self._cancel(interaction, job_id)
            case "again":
                images = len(images_of(interaction.message)) if interaction.message else 1
                await interaction.response.send_modal(EditAgainForm(job_id, images))
            case "retry":
                await self._retry(interaction, job_id)
            case "delete":
                await self._delete(interaction, job_id)
            case _:
                raise ValueError(f"unknown job control {action!r}")

    async def _cancel(self, interaction: discord.Interaction, job_id: str) -> None:
        # The button sits on the private progress message: answer by updating that message (unless
        # another process runs the job, below).
        await interaction.response.defer()
        row = await self.bot.services.storage.jobs.get_job(job_id)
        # A moderator's right counts only in the job's own server and channel, never in another one.
        here = row is not None and row.guild_id == (interaction.guild_id or 0)
        here = here and row is not None and row.channel_id == interaction.channel_id
        answer = await self.edits.cancel(
            job_id, actor_id=interaction.user.id, can_manage=here and _can_manage(interaction)
        )
        if answer.pending or not answer.cancelled:
            # Another process holds the job, or it is slow to stop: its end says how it ended on this
            # same message, and answering on it too could land after that and hide the outcome. Too
            # late (the edit was posted): the message already says what it cost, which must stay.
            await interaction.followup.send(answer.text, ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        await interaction.edit_original_response(content=answer.text, view=None, allowed_mentions=NO_MENTIONS)

    async def _retry(self, interaction: discord.Interaction, job_id: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        interaction.extras["ephemeral_original"] = True
        async with self._once(("retry", job_id, interaction.user.id), interaction):
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
    async def _once(self, key: tuple[object, ...], interaction: discord.Interaction) -> AsyncIterator[None]:
        """One start per double click: a second click on the same result's button within a few
        seconds is refused (AlreadyStarted). A start that failed before any credits were held (refused,
        or Discord failed a request) frees the button at once for another try; one that failed after
        its hold keeps it taken, as that edit runs whatever failed after, and another click would
        start, and charge, a second."""
        access = self.bot.services.access
        access.claim(key)
        try:
            yield
        except BaseException:
            if not started_a_job(interaction):
                access.release(key)
            raise

    async def edit_again(
        self, interaction: discord.Interaction, job_id: str, prompt: str, which: str = ""
    ) -> None:
        """The Edit again form was sent: edit the result image (this message's; `which` of several,
        counted from 1, the first when empty) with the new prompt."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        interaction.extras["ephemeral_original"] = True
        message, thread_id = interaction.message, None
        # A chain continues from its latest version, in its thread (bot.services.history).
        if message is not None:
            message, thread_id = await chain_source(self.bot, message, interaction.user.id, job_id)
        images = images_of(message) if message is not None else []
        if message is None or not images:
            await interaction.edit_original_response(content=messages.RESULT_IMAGE_GONE)
            return
        typed = which.strip()
        number = int(typed) if typed.isdecimal() else 0 if typed else 1  # isdigit takes "²", int does not
        if len(images) == 1:  # the chain's latest version, one image: the form counted the clicked one's
            number = 1
        if not 1 <= number <= len(images):
            await interaction.edit_original_response(content=messages.which_image(len(images)))
            return
        image = images[number - 1]
        job = EditJob(
            guild_id=interaction.guild_id or 0,
            user_id=interaction.user.id,
            channel_id=thread_id or interaction.channel_id,
            uploads=[upload_of("image", image)],
            options=await self.edits.again_options(job_id, prompt, user_id=interaction.user.id),
            upload_limit=interaction.filesize_limit,
            role_ids=role_ids_of(interaction.user),
        )
        # The prompt is part of the key: the same form sent twice is a double click, a new prompt on
        # the same result (a chain continuing) is a new edit.
        async with self._once(("again", job_id, interaction.user.id, prompt), interaction):
            await run_and_publish(
                self.bot,
                interaction,
                lambda progress: self.edits.prepare(job, progress=progress),
                origin_message_id=message.id,
                post_in=thread_id,
            )

    async def _delete(self, interaction: discord.Interaction, job_id: str) -> None:
        try:
            # Acknowledged first: the reads below may wait on a busy database.
            await interaction.response.defer()
        except discord.HTTPException as exc:  # a second click's, after the first deleted the message
            log.info("job %s: a delete click found its result gone (%s %s)", job_id, exc.status, exc.code)
            return
        row = await self.bot.services.storage.jobs.get_job(job_id)
        message = interaction.message
        # Delete removes the clicked message: it must show this job's result (its post, or an Undo
        # repost of it), in the job's server or in the requester's DMs. (A job whose row was pruned
        # after JOB_HISTORY_DAYS leaves it to the channel's moderators.)
        its_result = row is None or (
            message is not None
            and (interaction.guild_id is None or row.guild_id == interaction.guild_id)
            and (
                row.result_message_id == message.id
                # Posted, but its capture (which records the message) is still to come: the message
                # itself must name the job, or any job without a result would open any message.
                or (row.result_message_id is None and shows_result_of(message, job_id))
                or await self.bot.services.history.shows_job(message.id, job_id)
            )
        )
        requester = row is not None and row.user_id == interaction.user.id
        if not its_result or (not requester and not _can_manage(interaction)):
            await interaction.followup.send(
                messages.DELETE_NOT_ALLOWED, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        if interaction.message is not None:
            try:
                # Through the interaction (the clicked message is its original now): no channel
                # permission needed, as for posting the result as a followup.
                await interaction.delete_original_response()
            except discord.NotFound:
                return  # already deleted (a double click, or by someone else)
            log.info("job %s: result deleted by %s", job_id, interaction.user.id)
            try:  # /history stops listing it; Edit again stops continuing from it
                await self.bot.services.history.deleted(interaction.message.id)
            except Exception as exc:  # the message is gone whatever: the history's links expire
                log.warning("job %s: its deleted result stays in /history: %s", job_id, type(exc).__name__)
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
