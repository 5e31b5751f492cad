"""Shared by the cogs: the throttled progress message, running a job and posting its result, the
result embed, attachment uploads, model autocomplete and private error replies for buttons and forms."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot.catalog import Catalog
from bot.client import reply_privately
from bot.errors import RetouchError, new_reference
from bot.jobs import EditOutcome, Progress, Upload

if TYPE_CHECKING:
    from bot.client import RetouchBot
    from bot.policy import PolicyService

log = logging.getLogger(__name__)

# Discord rate-limits message edits; a stage line more often than this is noise anyway.
PROGRESS_MIN_INTERVAL = 2.5
PROMPT_PREVIEW_CHARS = 300
EMBED_COLOUR = discord.Colour(0x5865F2)


class ProgressMessage:
    """Edits the private deferred message with the current stage, at most every few seconds.

    The latest text always wins: updates that arrive too fast are coalesced, never queued.
    """

    def __init__(
        self, interaction: discord.Interaction, *, min_interval: float = PROGRESS_MIN_INTERVAL
    ) -> None:
        self._interaction = interaction
        self._min_interval = min_interval
        self._last_edit = 0.0
        self._pending: str | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.edits = 0

    async def __call__(self, text: str) -> None:
        if self._closed:
            return
        self._pending = text
        wait = self._last_edit + self._min_interval - time.monotonic()
        if self.edits == 0 or wait <= 0:
            await self._flush()
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later(wait))

    async def _flush_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._flush()

    async def _flush(self) -> None:
        text, self._pending = self._pending, None
        if text is None or self._closed:
            return
        self._last_edit = time.monotonic()
        self.edits += 1
        try:
            await self._interaction.edit_original_response(content=text)
        except discord.HTTPException as exc:
            log.debug("progress edit failed: %s", exc)

    async def close(self, final: str | None = None) -> None:
        """Stop updating; optionally write a final line."""
        self._closed = True
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if final is not None:
            with contextlib.suppress(discord.HTTPException):
                await self._interaction.edit_original_response(content=final)


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def result_embed(outcome: EditOutcome, requester: discord.abc.User) -> discord.Embed:
    embed = discord.Embed(
        description=discord.utils.escape_markdown(truncate(outcome.prompt, PROMPT_PREVIEW_CHARS)),
        colour=EMBED_COLOUR,
    )
    embed.set_author(name=f"Edited for {requester.display_name}")
    embed.add_field(name="Model", value=outcome.model_name)
    embed.add_field(name="Quality", value=outcome.quality)
    embed.add_field(name="Size", value=outcome.size)
    embed.add_field(name="Cost", value=f"{outcome.charged} credits")
    embed.add_field(name="Balance", value=f"{outcome.balance_after} credits")
    for notice in outcome.notices:
        embed.add_field(name="Note", value=truncate(notice, 1000), inline=False)
    if outcome.files:
        embed.set_image(url=f"attachment://{outcome.files[0].filename}")
    embed.set_footer(text=f"job {outcome.job_id}")
    return embed


def result_files(outcome: EditOutcome) -> list[discord.File]:
    return [discord.File(io.BytesIO(f.data), filename=f.filename) for f in outcome.files]


def role_ids_of(user: discord.abc.User) -> tuple[int, ...]:
    """A member's role ids (including @everyone) for server rules; none outside a server."""
    roles = getattr(user, "roles", None)
    return tuple(role.id for role in roles) if roles else ()


def policy_of(bot: RetouchBot) -> PolicyService:
    """The bot's policy service (Services always builds one)."""
    policy = bot.services.policy
    assert policy is not None
    return policy


# -- shared by /edit, /mask and the "Edit image" menu ------------------------------------------------

Deliver = Callable[[EditOutcome], Awaitable[None]]
THREAD_NAME_CHARS = 90
THREAD_ARCHIVE_MINUTES = 1440


def upload_of(label: str, attachment: discord.Attachment) -> Upload:
    """An attachment as the job service sees it. The bytes are downloaded once and remembered:
    Discord's attachment URLs expire, and a masked job may be prepared twice (picker, then preview)."""
    data: bytes | None = None

    async def read() -> bytes:
        nonlocal data
        if data is None:
            data = await attachment.read()
        return data

    return Upload(label=label, filename=attachment.filename, size=attachment.size, read=read)


def model_choices(
    catalog: Catalog, current: str, *, mask_only: bool = False
) -> list[app_commands.Choice[str]]:
    """Autocomplete for a `model` option: today's models matching what was typed (at most 25)."""
    today = dt.datetime.now(dt.UTC).date()
    current = current.lower()
    return [
        app_commands.Choice(name=m.name, value=m.id)
        for m in catalog.available(today)
        if (m.mask or not mask_only) and (current in m.id.lower() or current in m.name.lower())
    ][:25]


async def run_and_publish(
    bot: RetouchBot,
    interaction: discord.Interaction,
    start: Callable[[Progress, Deliver], Awaitable[EditOutcome]],
) -> EditOutcome:
    """Run one job with a private progress message on `interaction` and post its result publicly.

    `start(progress, deliver)` runs the job (`EditService.run_edit` or `.execute`). The interaction's
    private message must already exist (a private defer, or a component's message update).
    """
    progress = ProgressMessage(interaction)
    try:
        outcome = await start(progress, lambda o: publish_result(bot, interaction, progress, o))
    finally:
        await progress.close()
    await progress.close(f"Done — {outcome.charged} credits charged, {outcome.balance_after} left.")
    return outcome


async def publish_result(
    bot: RetouchBot, interaction: discord.Interaction, progress: ProgressMessage, outcome: EditOutcome
) -> None:
    """Post the result for everyone in the channel (and open a thread under it if the server wants)."""
    # The private progress message must have been edited at least once, or Discord would turn this
    # first followup into that private message instead of a new public one.
    await progress.close("Posting your result…")
    message = await interaction.followup.send(
        content=f"{interaction.user.mention}",
        embed=result_embed(outcome, interaction.user),
        files=result_files(outcome),
        allowed_mentions=discord.AllowedMentions.none(),
        wait=True,
    )
    if await _wants_thread(bot, interaction):
        await _open_thread(bot, message, outcome)


async def _wants_thread(bot: RetouchBot, interaction: discord.Interaction) -> bool:
    if interaction.guild_id is None or not isinstance(interaction.channel, discord.TextChannel):
        return False
    value = await bot.services.storage.guild_thread_results(interaction.guild_id)
    return bot.services.settings.thread_results if value is None else value


async def _open_thread(bot: RetouchBot, message: discord.Message, outcome: EditOutcome) -> None:
    name = truncate(outcome.prompt.replace("\n", " "), THREAD_NAME_CHARS) or "Edit"
    try:
        await bot.http.start_thread_with_message(
            message.channel.id, message.id, name=name, auto_archive_duration=THREAD_ARCHIVE_MINUTES
        )
    except discord.HTTPException as exc:
        # The result is already posted; a missing thread is not worth failing the job for.
        log.warning("could not open a thread for job %s: %s", outcome.job_id, exc)


async def report_error(interaction: discord.Interaction, error: BaseException, *, where: str) -> None:
    """Tell the user privately why a button, menu or form failed, like the command tree does for
    commands (discord.py does not route view and modal errors through the tree)."""
    if isinstance(error, RetouchError):
        log.info("%s for user %s refused: %s", where, interaction.user.id, error.code)
        text = error.user_message
    else:
        ref = new_reference()
        log.error("unexpected error in %s (ref %s)", where, ref, exc_info=error)
        text = f"Something went wrong (ref `{ref}`). You were not charged; please try again."
    await reply_privately(interaction, text)
