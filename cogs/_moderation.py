"""Moderator controls: a public notice with a **Stop** button for each running edit in a server channel.

The requester's progress message is private, so moderators could not see (or cancel) a running edit.
While an edit started from a command runs, the channel shows "alice is editing an image: “…”" with
**Stop edit**; members with Manage Messages there (and the requester) can stop it — the hold is
released in full and the requester is told — and the audit channel records who did. The notice is
removed when the job ends (a `JobObserver`). Where it was posted is kept on the job's row
(`Jobs.record_notice`), not in this process's memory: with several processes on PostgreSQL the job may
end on another process than the one that posted the notice, and after a restart the resumed job's end
still removes it. Exactly one process takes the notice off the row (`Jobs.take_notice`) to remove or
edit it. The result's own **Delete** button (requester or Manage Messages) is the control for results.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from bot import messages
from bot.domain.text import showable
from bot.jobs.model import JobObserver
from bot.observability.audit import jump_url
from cogs._ui import PersistentControl, truncate

if TYPE_CHECKING:
    from bot.client import RetouchBot

log = logging.getLogger(__name__)

NOTICE_PROMPT_CHARS = 200
ENDED_MEMORY = 512  # jobs that ended before their notice was posted (a fast edit), remembered briefly
# Pauses between tries of a notice's removal that the network or Discord (5xx) failed: the job's end
# takes the notice's record, so nothing else would remove it, and it would say "editing" for good.
REMOVE_RETRY_PAUSES = (1.0, 5.0, 30.0)
NO_MENTIONS = discord.AllowedMentions.none()


class StopControl(
    PersistentControl, prefix="retouch:stop", fields={"job": "[0-9a-f]{16}"}, cog="MembersCog", handler="stop"
):
    """The public **Stop edit** button; routes the click to the members cog, also after a restart."""


def stop_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(StopControl.button(job_id, label="Stop edit", style=discord.ButtonStyle.danger))
    return view


def notice_text(requester: str, prompt: str) -> str:
    """The public notice: the bot repeats a member's prompt in the channel, so its links are not
    repeated (no invite card or phishing link posted in the bot's name; suppressed embeds do not
    stop the clients' invite cards)."""
    # Without control characters or direction overrides (a right-to-left override turned the bot's
    # line around).
    words = messages.without_links(" ".join(showable(prompt).split()))
    shown = discord.utils.escape_markdown(truncate(words, NOTICE_PROMPT_CHARS))
    name = discord.utils.escape_markdown(messages.without_links(showable(requester)))  # any member sets it
    return f"🖌️ **{name}** is editing an image: “{shown}”"


class PublicControls(JobObserver):
    """The notices of running jobs: posted after the hold, removed when the job ends (by this process or
    whichever one ends it; see the module docstring)."""

    def __init__(self, bot: RetouchBot) -> None:
        self.bot = bot
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def announce(self, job_id: str, channel_id: int, requester: str, prompt: str) -> None:
        """Post the notice in the background: the command's own answer must not wait for it."""
        self._spawn(self._post(job_id, channel_id, requester, prompt))

    async def claim(self, job_id: str) -> tuple[int, int] | None:
        """Take the notice over to edit it (a Stop click): the job's end no longer removes it. Returns
        where it is, or None when no process has it (not posted, or already removed)."""
        return await self._take(job_id)

    async def give_back(self, job_id: str, where: tuple[int, int]) -> None:
        """Hand a claimed notice back to the job's end (the job runs on; another process stops it)."""
        await self._keep(job_id, *where)

    def job_finished(self, job_id: str, state: str, **_: Any) -> None:
        self._ended[job_id] = None  # a notice still on its way is not posted, or removed at once
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)
        self._spawn(self._remove_taken(job_id))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _post(self, job_id: str, channel_id: int, requester: str, prompt: str) -> None:
        if job_id in self._ended:
            return
        try:
            # The notice quotes the member's prompt: a link in it must not unfurl into a preview under
            # the bot's name. The flag hides every embed, but the notice has none of its own.
            # Its nonce is the job's (at most 25 characters): the notice sent again within Discord's
            # few minutes returns the first post rather than a second one.
            message = await self.bot.get_partial_messageable(channel_id).send(
                notice_text(requester, prompt),
                view=stop_view(job_id),
                allowed_mentions=NO_MENTIONS,
                suppress_embeds=True,
                nonce=f"rt{job_id}s",
            )
        except discord.HTTPException as exc:
            log.info("job %s: no public notice in %s (%s %s)", job_id, channel_id, exc.status, exc.code)
            return
        await self._keep(job_id, channel_id, message.id)

    async def _keep(self, job_id: str, channel_id: int, message_id: int) -> None:
        """Record the notice on the job's row, or remove it now if the job ended meanwhile."""
        try:
            live = await self.bot.services.storage.jobs.record_notice(job_id, channel_id, message_id)
        except Exception:
            log.exception("job %s: could not record its public notice; removing it", job_id)
            live = False
        if not live:
            await self._remove(channel_id, message_id)

    async def _take(self, job_id: str) -> tuple[int, int] | None:
        try:
            return await self.bot.services.storage.jobs.take_notice(job_id)
        except Exception:
            log.exception("job %s: could not look up its public notice", job_id)
            return None

    async def _remove_taken(self, job_id: str) -> None:
        where = await self._take(job_id)
        if where is not None:
            await self._remove(*where)

    async def _remove(self, channel_id: int, message_id: int) -> None:
        notice = self.bot.get_partial_messageable(channel_id).get_partial_message(message_id)
        for pause in (*REMOVE_RETRY_PAUSES, None):
            try:
                await notice.delete()
                return
            except discord.HTTPException as exc:
                if exc.status < 500:  # gone already, or no longer the bot's to remove: final
                    log.info("could not remove a public notice (%s %s)", exc.status, exc.code)
                    return
                failure = f"{exc.status} {exc.code}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failure = type(exc).__name__
            if pause is None:
                # Its Stop button still answers: "too late", and the click removes the notice.
                log.warning("could not remove public notice %s (%s); it stays", message_id, failure)
                return
            await asyncio.sleep(pause)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def action_link(guild_id: int | None, channel_id: int | None, message_id: int | None) -> str | None:
    return jump_url(guild_id, channel_id, message_id) if channel_id else None
