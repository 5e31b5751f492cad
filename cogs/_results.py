"""Where results go: the Discord side of the job engine.

* `run_and_publish` is what every edit entry point calls: prepare (with a private progress message),
  then submit to the engine and return. The engine does the rest through
* `InteractionLive` — the command's own interaction while its token is usable: the progress message
  (queue position, ETA, a **Cancel** button) and the result as a public followup, and
* `DiscordDelivery` (`cogs._delivery`) — any process, any time: a channel message that mentions the
  requester (and pings only them), else a DM; notices ("you were not charged") go the same way.

Every result carries persistent buttons (**Edit again**, **Retry**, **Delete**) and every progress
message a **Cancel** button, all `JobControl` dynamic items whose custom id holds the job id, so a
click reaches the bot after any restart (`cogs.job_controls` handles them).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

import aiohttp
import discord

from bot.domain.text import showable
from bot.errors import InsufficientCredits, RetouchError
from bot.jobs.model import (
    Delivered,
    DeliveryFailed,
    EditOutcome,
    JobStatus,
    Origin,
    Ticket,
)
from bot.services.affordable import AUTO, Offer, auto_resolved, best_affordable
from bot.services.edits import PreparedJob, Progress
from bot.services.policy import PolicyRefused
from cogs._affordable import offer_cheaper
from cogs._followup import PostMayHaveLanded, send_once
from cogs._history import undo_button
from cogs._ui import (
    THREAD_OPENING,
    PersistentControl,
    ProgressMessage,
    admitted,
    bot_allowed,
    note_token_error,
    result_embed,
    result_files,
    token_dead,
    truncate,
)

if TYPE_CHECKING:
    # Types only: discord.types cannot be imported first at run time (it is circular on its own).
    from discord.types.threads import ThreadArchiveDuration

    from bot.client import RetouchBot

log = logging.getLogger(__name__)

Action = Literal["cancel", "again", "retry", "delete"]
# Buttons that stop or remove a member's own work: never refused by the approval gate (a server whose
# approval was withdrawn would otherwise keep its queued edits running, and charged).
FREE_ACTIONS = frozenset({"cancel", "delete"})
THREAD_NAME_CHARS = 90
THREAD_ARCHIVE_MINUTES: ThreadArchiveDuration = 1440


class JobControl(
    PersistentControl,
    prefix="retouch:job",
    fields={"job": "[0-9a-f]{16}", "action": "cancel|again|retry|delete"},
    cog="JobsCog",
    handler="on_control",
):
    """Every job button (progress and result); routes the click to the jobs cog, also after a restart."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if self.state[1] in FREE_ACTIONS:
            return True
        # Retry downloads and pays like a command, so it counts toward the member's rate limit.
        return await admitted(interaction, counts=self.state[1] == "retry")


def _button(job_id: str, action: Action, label: str, style: discord.ButtonStyle) -> JobControl:
    return JobControl.button(job_id, action, label=label, style=style)


def progress_view(job_id: str, *, at_provider: bool = False) -> discord.ui.View:
    """The Cancel button; once a provider has the job it says that cancelling no longer saves credits."""
    label = "Cancel (still charged: already started)" if at_provider else "Cancel"
    view = discord.ui.View(timeout=None)
    view.add_item(_button(job_id, "cancel", label, discord.ButtonStyle.secondary))
    return view


def result_view(job_id: str, *, undo: bool = False) -> discord.ui.View:
    """A result's buttons; `undo` for a result that continues an earlier one (bot.services.history)."""
    view = discord.ui.View(timeout=None)
    view.add_item(_button(job_id, "again", "Edit again", discord.ButtonStyle.primary))
    view.add_item(_button(job_id, "retry", "Retry", discord.ButtonStyle.secondary))
    if undo:
        view.add_item(undo_button(job_id))
    view.add_item(_button(job_id, "delete", "Delete", discord.ButtonStyle.danger))
    return view


# -- starting a job from a command, button or form ----------------------------------------------------


async def run_and_publish(
    bot: RetouchBot,
    interaction: discord.Interaction,
    prepare: Callable[[Progress], Awaitable[PreparedJob]],
    *,
    origin_message_id: int | None = None,
    post_in: int | None = None,
) -> Ticket | None:
    """Prepare a job with a private progress message on `interaction`, then queue it.

    Returns once the job is queued (its credits held); the engine shows its queue position, runs it
    and posts the result. The interaction's private message must already exist (a private defer, or
    a component's message update). Refusals raise, for the caller's error handling — except a
    refusal for credits that a lower quality fits: `auto` then runs at the best quality that fits,
    and a named quality becomes a private one-click offer (None is returned; bot.services.affordable).
    """
    progress = ProgressMessage(interaction)
    try:
        # Images are in memory from their download until the job's files are stored: a burst's
        # other commands wait here with nothing downloaded (bot.jobs.engine.JobEngine.intake).
        async with bot.services.edits.engine.intake():
            prepared = await prepare(progress)
            try:
                return await _submit(bot, interaction, progress, prepared, origin_message_id, post_in)
            except (InsufficientCredits, PolicyRefused) as refusal:
                offer = _cheaper_offer(bot, prepared, refusal)
                if offer is None:
                    raise
                if prepared.chosen.quality == AUTO:  # `auto` means "the best I can have": no question
                    return await _submit(
                        bot, interaction, progress, auto_resolved(offer), origin_message_id, post_in
                    )
                await progress.close()

                async def run(click: discord.Interaction, cheaper: PreparedJob) -> object:
                    return await run_and_publish(
                        bot, click, _ready(cheaper), origin_message_id=origin_message_id, post_in=post_in
                    )

                await offer_cheaper(interaction, offer, budget=isinstance(refusal, PolicyRefused), run=run)
                return None
    except BaseException:
        await progress.close()
        raise


async def _submit(
    bot: RetouchBot,
    interaction: discord.Interaction,
    progress: ProgressMessage,
    prepared: PreparedJob,
    origin_message_id: int | None,
    post_in: int | None = None,
) -> Ticket:
    continues = await bot.services.history.continues_chain(origin_message_id)
    live = InteractionLive(bot, interaction, progress, continues=continues, post_in=post_in)
    origin = Origin(interaction_at=interaction.created_at, message_id=origin_message_id)
    ticket = await bot.services.edits.submit(
        prepared, live=live, origin=origin, on_hold=lambda job_id: _mark_held(interaction, job_id)
    )
    # Moderators see (and can stop) a running edit through a public notice (cogs._moderation).
    controls = getattr(bot.get_cog("MembersCog"), "controls", None)
    if controls is not None and interaction.guild_id and interaction.channel_id:
        controls.announce(
            ticket.job_id, interaction.channel_id, interaction.user.display_name, prepared.job.options.prompt
        )
    return ticket


def _mark_held(interaction: discord.Interaction, job_id: str) -> None:
    interaction.extras["held_job"] = job_id


def started_a_job(interaction: discord.Interaction) -> bool:
    """Whether `run_and_publish` on `interaction` held credits for a job: that edit runs (or is
    settled) even if the call then raised, so starting it again would start, and charge, a second."""
    return "held_job" in interaction.extras


def _cheaper_offer(bot: RetouchBot, prepared: PreparedJob, refusal: RetouchError) -> Offer | None:
    """The same edit at a quality the refused payer can afford, if the refusal was about credits."""
    available = getattr(refusal, "available", None)
    if available is None:
        return None
    return best_affordable(bot.services.edits, prepared, available)


def _ready(prepared: PreparedJob) -> Callable[[Progress], Awaitable[PreparedJob]]:
    async def ready(_: Progress) -> PreparedJob:
        return prepared

    return ready


class InteractionLive:
    """A job's live route: the command's progress message and, while its token lasts, its followups."""

    def __init__(
        self,
        bot: RetouchBot,
        interaction: discord.Interaction,
        progress: ProgressMessage,
        *,
        continues: bool = False,
        post_in: int | None = None,
    ) -> None:
        self.bot = bot
        self.interaction = interaction
        self.progress = progress
        self.continues = continues  # started from a kept earlier result: its result gets Undo
        self.post_in = post_in  # the result belongs in this channel (a chain's thread; bot.services.history)

    async def update(self, status: JobStatus) -> None:
        view = progress_view(status.job_id, at_provider=status.accepted)
        self.progress.set_controls(view if status.cancellable else None)
        await self.progress(status.text)

    async def deliver(self, outcome: EditOutcome) -> Delivered:
        """Post the result publicly as a followup: exactly one attempt, never on a spent token."""
        interaction = self.interaction
        if token_dead(interaction):
            raise DeliveryFailed("the interaction token is spent")
        if self.post_in is not None and self.post_in != interaction.channel_id:
            # A followup can only go to the interaction's channel: the engine's channel delivery
            # posts it in the job's channel (the chain's thread) instead.
            raise DeliveryFailed("the result belongs in another channel")
        await self.progress.close()
        # Discord turns the first followup after a defer into the private "thinking" message; an edit
        # that lands first makes the result a new, public message. When none can land (the network
        # to Discord is failing), the channel delivery posts it publicly instead: a private result
        # would be charged with nobody else seeing it.
        if not self.progress.shown and not await self.progress.close("Posting your result…"):
            raise DeliveryFailed("the private progress message could not be replaced")
        try:
            message = await send_once(
                interaction,
                content=interaction.user.mention,
                embed=result_embed(outcome, interaction.user.display_name),
                files=result_files(outcome),
                view=result_view(outcome.job_id, undo=self.continues),
                allowed_mentions=discord.AllowedMentions.none(),
            )
        except PostMayHaveLanded as exc:
            raise DeliveryFailed("followup answer unknown", uncertain=True) from exc
        except discord.HTTPException as exc:
            note_token_error(interaction, exc)
            # A 5xx may have come after Discord posted the message; a 4xx refused it.
            raise DeliveryFailed(
                f"followup refused: {exc.status} {exc.code}", uncertain=exc.status >= 500
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(type(exc).__name__, uncertain=True) from exc
        await maybe_thread(self.bot, interaction.guild_id, message, outcome)
        return Delivered("interaction", message.channel.id, message.id)

    async def finish(self, text: str | None) -> bool:
        return await self.progress.close(text)


async def maybe_thread(
    bot: RetouchBot, guild_id: int | None, message: discord.Message, outcome: EditOutcome
) -> None:
    """Open a thread under a posted result when the server (or the bot's default) wants one and the
    bot may open it and post results in it (the chain's next versions go there). Never raises: the
    result is already posted, and a missing thread is not worth failing (or re-posting) it for."""
    channel = bot.get_channel(message.channel.id)
    if guild_id is None or not isinstance(channel, discord.TextChannel):
        return
    try:
        wanted = await bot.services.storage.settings.guild_thread_results(guild_id)
        if not (bot.services.settings.thread_results if wanted is None else wanted):
            return
        if not bot_allowed(channel, THREAD_OPENING):
            log.info("no thread for job %s: the bot may not open one or post in it", outcome.job_id)
            return
        name = truncate(" ".join(showable(outcome.prompt).split()), THREAD_NAME_CHARS) or "Edit"
        await bot.http.start_thread_with_message(
            message.channel.id, message.id, name=name, auto_archive_duration=THREAD_ARCHIVE_MINUTES
        )
    except Exception as exc:
        log.warning("could not open a thread for job %s: %s", outcome.job_id, type(exc).__name__)
