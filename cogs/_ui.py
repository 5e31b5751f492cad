"""Rendering shared by the cogs: the throttled progress message and the result embed."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time

import discord

from bot.jobs import EditOutcome

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
