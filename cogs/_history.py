"""Edit history on Discord: the **Undo** button, Edit again's "latest version" and thread, `/history`.

Versions and chains are `bot.services.history`; this module only reads and posts messages. Undo is a dynamic
item (it keys on the clicked message, so it works after a restart while the chain is kept).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from bot import messages
from bot.observability.audit import jump_url
from bot.services.history import HistoryEntry
from cogs._followup import PostMayHaveLanded, send_once
from cogs._ui import (
    EMBED_COLOUR,
    THREAD_POSTING,
    PersistentControl,
    admitted,
    bot_allowed,
    shows_result_of,
    truncate,
)

if TYPE_CHECKING:
    from bot.client import RetouchBot

log = logging.getLogger(__name__)

HISTORY_PROMPT_CHARS = 80
# How many of a channel's newest messages are searched for a repost whose followup answer was lost.
FIND_REPOST_LIMIT = 100


class UndoControl(
    PersistentControl, prefix="retouch:undo", fields={"job": "[0-9a-f]{16}"}, cog="MembersCog", handler="undo"
):
    """**Undo** on a result that continues a chain; routes the click to the members cog."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        # It posts a message, like a command: the approval gate and the member's rate limit apply.
        return await admitted(interaction, counts=True)


def undo_button(job_id: str) -> UndoControl:
    return UndoControl.button(job_id, label="Undo", style=discord.ButtonStyle.secondary)


async def chain_source(
    bot: RetouchBot, message: discord.Message, user_id: int, job_id: str | None = None
) -> tuple[discord.Message, int | None]:
    """What `user_id`'s Edit again continues from: the newest version of their chain `message` belongs
    to (else `message` itself: not a version, another member's chain, or the newest one cannot be read
    any more), and the chain's thread when its first result has one the bot may post in (new versions
    are posted there). Another member's chain is theirs: an edit of its image starts the clicker's own
    chain."""
    history = bot.services.history
    latest = await history.latest(message.id, job_id)
    if latest is None or latest.user_id != user_id:
        return message, None
    thread_id = await chain_thread(bot, latest.chain_id)
    if latest.message_id == message.id:
        return message, thread_id
    try:
        source = await bot.get_partial_messageable(latest.channel_id).fetch_message(latest.message_id)
    except discord.HTTPException as exc:
        log.info("latest version %s unreadable (%s %s)", latest.message_id, exc.status, exc.code)
        return message, thread_id
    return source, thread_id


async def chain_thread(bot: RetouchBot, chain_id: int) -> int | None:
    """The thread under a chain's first result (Discord gives it the message's id), if there is one the
    bot may post results in (permissions change after it is opened); else the chain's versions go
    where it was clicked, not to the member's DMs after the thread refused them."""
    channel = bot.get_channel(chain_id)
    if channel is None:
        try:
            channel = await bot.fetch_channel(chain_id)
        except discord.HTTPException:
            return None
    if not isinstance(channel, discord.Thread):
        return None
    if not bot_allowed(channel, THREAD_POSTING):
        log.info("chain %s: the bot may not post in its thread; the versions stay in the channel", chain_id)
        return None
    return channel.id


async def thread_parent(bot: RetouchBot, channel_id: int) -> int | None:
    """The channel a chain's thread `channel_id` is under: the channel of the result it was opened on
    (`EditHistory.thread_parent`: its kept version, else its job's row), which outlives a deleted
    thread. None when `channel_id` is no chain's thread, or nothing can say. Never a cached thread's
    parent: an edit run in a member's own (maybe private) thread must not move into the channel above
    it when that thread goes."""
    try:
        return await bot.services.history.thread_parent(channel_id)
    except Exception as exc:  # a database that cannot answer now: the caller goes on without it
        log.warning("could not read the channel thread %s is under: %s", channel_id, type(exc).__name__)
        return None


def restored_footer(job_id: str) -> str:
    """The footer of an Undo repost of `job_id`'s version."""
    return f"job {job_id} · restored"


def restored_embed(old: discord.Embed | None, requester: str, filename: str, job_id: str) -> discord.Embed:
    """The Undo repost's embed: the earlier version's prompt, marked as restored."""
    embed = discord.Embed(description=old.description if old else None, colour=EMBED_COLOUR)
    embed.set_author(name=f"Undo: the previous version, restored for {requester}")
    embed.set_image(url=f"attachment://{filename}")
    # Not "job <id>" alone: crash recovery looks for that exact footer to find a job's own result.
    embed.set_footer(text=restored_footer(job_id))
    return embed


async def post_repost(
    bot: RetouchBot,
    interaction: discord.Interaction,
    where: int,
    post: Callable[[], dict[str, Any]],
    job_id: str,
) -> discord.Message:
    """Post an Undo's repost once. In the chain's thread it is a channel message, whose nonce makes a
    send discord.py retries return the first post. In the clicked channel it is a followup, which has
    no nonce: it is sent at most once, and after an answer that leaves it unknown whether it landed it
    is looked for there, and posted as a channel message only if it did not. `post()` makes the
    message's fields (a file can be read only once)."""
    channel = bot.get_partial_messageable(where)
    nonce = f"ru{interaction.id}"
    if where == interaction.channel_id:
        try:
            return await send_once(interaction, **post())
        except (PostMayHaveLanded, aiohttp.ClientError, TimeoutError) as exc:
            # A 5xx, or a connection cut before the answer (discord.py re-sends neither here).
            log.info("undo: no answer to the repost of %s (%s); looking for it", job_id, type(exc).__name__)
        landed = await _landed_repost(bot, channel, interaction.id, job_id)
        if landed is not None:
            return landed
    return await channel.send(**post(), nonce=nonce)


async def _landed_repost(
    bot: RetouchBot, channel: discord.PartialMessageable, clicked: int, job_id: str
) -> discord.Message | None:
    """This bot's repost of `job_id`'s version posted since the click, if it can be read."""
    me = bot.user.id if bot.user else None
    try:
        async for message in channel.history(limit=FIND_REPOST_LIMIT, after=discord.Object(clicked)):
            # Its footer, or its file should Discord have dropped the embed: it keeps a followup's
            # whatever the channel's Embed Links as far as is documented, but interaction messages
            # take some permissions from @everyone. Among this bot's messages since the click, only a
            # repost of that version carries that file.
            if message.author.id == me and shows_result_of(message, job_id, footer=restored_footer(job_id)):
                return message
    except discord.HTTPException as exc:  # unreadable: posting it again is the lesser harm
        log.info("undo: cannot look for the repost (%s %s)", exc.status, exc.code)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.info("undo: cannot look for the repost (%s)", type(exc).__name__)
    return None


def _shown_prompt(prompt: str | None) -> str:
    """The prompt in quotes; once it went with the edit's images (INPUT_RETENTION_HOURS, shorter than
    the links are kept), saying so rather than showing empty quotes."""
    words = " ".join((prompt or "").split())
    if not words:
        return messages.PROMPT_NOT_KEPT
    return f"“{discord.utils.escape_markdown(truncate(words, HISTORY_PROMPT_CHARS))}”"


def history_embed(entries: list[HistoryEntry], guild_id: int | None, hours: float) -> discord.Embed:
    lines = []
    for number, entry in enumerate(entries, start=1):
        v = entry.version
        when = discord.utils.format_dt(discord.utils.snowflake_time(v.message_id), "R")
        step = "" if v.parent_message_id is None else " (continues an edit)"
        link = jump_url(guild_id, v.channel_id, v.message_id)
        lines.append(f"{number}. {when} {_shown_prompt(entry.prompt)}{step} — {link}")
    embed = discord.Embed(
        title="Your last edits here",
        description=truncate("\n".join(lines), 4000) or None,
        colour=EMBED_COLOUR,
    )
    embed.set_footer(text=f"Links are kept {hours:g} hours; Retouch keeps no copies of your images.")
    return embed
