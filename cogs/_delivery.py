"""The engine's `Delivery` from any process, at any time: a result as a channel message that mentions
the requester (and pings only them; a chain's version whose thread is gone, in the channel the thread
was under), else a DM. Notices of how an edit ended go the other way round: by
DM, since they may say why; only when that fails, a line in the channel without the why. Used for
results and notices whose interaction token is spent or unknown here (after a restart);
`cogs._results` has the live route through the command's own interaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import aiohttp
import discord

from bot import imaging, messages
from bot.jobs.model import Delivered, DeliveryFailed, EditOutcome, JobInfo, ResultFile
from bot.observability.audit import jump_url
from cogs._history import thread_parent
from cogs._results import maybe_thread, result_view
from cogs._ui import result_embed, result_files, shows_result_of, truncate

if TYPE_CHECKING:
    from bot.client import RetouchBot

log = logging.getLogger(__name__)

# A DM gets Discord's default upload limit, whatever the server's boost level gave the channel.
DM_UPLOAD_LIMIT = 10 * 1024 * 1024
# How many of the newest messages since the job was created are searched for a result whose post may
# have landed (a crash, an answer lost): 10 pages of history, searched only after such a failure.
FIND_HISTORY_LIMIT = 1000
UNKNOWN_CHANNEL = 10003  # Discord's code for a channel (or thread) that no longer exists
# How a channel post failed: the channel is gone, it may pass (the post may even have landed, and was
# not found), or it was refused for good (permissions, a closed thread).
ChannelFailure = Literal["gone", "passing", "refused"]
GONE: ChannelFailure = "gone"
PASSING: ChannelFailure = "passing"
REFUSED: ChannelFailure = "refused"


class DiscordDelivery:
    """The engine's `Delivery`: a channel message mentioning the requester, else a DM (bot token).

    Used for results whose interaction token is spent (or was never known to this process, e.g.
    after a restart) and for notices about jobs with no live progress message.
    """

    def __init__(self, bot: RetouchBot) -> None:
        self.bot = bot

    async def deliver(self, job: JobInfo, outcome: EditOutcome) -> Delivered:
        """The channel, else a DM. A failure that may pass (5xx, timeout, dropped connection) on either
        raises `DeliveryFailed(transient=True)` so the engine posts the stored result again later."""
        name = await self._name(job.user_id)
        channel_passing = False  # the channel failed in a way that may pass
        if job.channel_id is not None:
            posted = await self._to_channel(job, outcome, name, job.channel_id, where="c")
            if posted == GONE:
                # A chain's thread deleted while its next version ran (or before, unheard by this
                # process): the version goes where the chain was clicked, not to the member's DMs.
                parent = await thread_parent(self.bot, job.channel_id)
                if parent is not None:
                    posted = await self._to_channel(job, outcome, name, parent, where="p")
            if isinstance(posted, Delivered):
                return posted
            channel_passing = posted == PASSING
        try:
            dm = await self.bot.create_dm(discord.Object(job.user_id))
            message = await self._send(dm.id, job, await fit_for_dm(outcome), name, _dm_text(job), where="d")
        except discord.HTTPException as exc:
            passing = exc.status >= 500
            raise DeliveryFailed(
                f"DM refused: {exc.status} {exc.code}",
                uncertain=passing,
                transient=passing or channel_passing,
            ) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DeliveryFailed(f"DM failed: {type(exc).__name__}", uncertain=True, transient=True) from exc
        return Delivered("dm", message.channel.id, message.id)

    async def _to_channel(
        self, job: JobInfo, outcome: EditOutcome, name: str, channel_id: int, *, where: str
    ) -> Delivered | ChannelFailure:
        """Post the result in `channel_id`; how it failed otherwise. After a failure that may pass it is
        looked for there, since Discord may have posted it (a DM then would be a second copy)."""
        try:
            message = await self._send(channel_id, job, outcome, name, _channel_text(job), where=where)
        except discord.HTTPException as exc:
            log.info(
                "job %s: cannot post in channel %s (%s %s)", job.job_id, channel_id, exc.status, exc.code
            )
            if exc.status < 500:
                return GONE if exc.status == 404 and exc.code == UNKNOWN_CHANNEL else REFUSED
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("job %s: channel post failed (%s)", job.job_id, type(exc).__name__)
        else:
            await maybe_thread(self.bot, job.guild_id or None, message, outcome)
            return Delivered("channel", message.channel.id, message.id)
        try:
            found = await self._find_in(job, "channel", channel_id)
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DeliveryFailed(
                f"channel unreachable: {type(exc).__name__}", uncertain=True, transient=True
            ) from exc
        return PASSING if found is None else found

    async def notify(self, job: JobInfo, text: str, *, charged: int) -> bool:
        """Tell the requester how their job ended, by DM: `text` may say why, and why is theirs alone
        (a provider's refusal of their prompt, say). Only when the DM cannot be sent does the job's
        channel get a line that pings them with what it cost (`charged`) and no reason."""
        where = jump_url(job.guild_id or None, job.channel_id) if job.channel_id else None
        try:
            dm = await self.bot.create_dm(discord.Object(job.user_id))
            await dm.send(
                truncate(messages.about_your_edit(where, text), 2000),
                allowed_mentions=discord.AllowedMentions.none(),
                nonce=f"rt{job.job_id}m",
            )
            return True
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError, OSError) as exc:
            # A DM that failed in passing may have landed: the channel's line then repeats only that
            # the edit ended, which is no harm.
            log.info("job %s: cannot DM its requester (%s); saying so in the channel", job.job_id, _why(exc))
        if job.channel_id is None:
            return False
        try:
            # The nonce (at most 25 characters) is the job's, so the same notice sent again by
            # another call within Discord's few minutes returns the first post instead of pinging
            # twice (discord.py's own retries of one send already reuse one nonce).
            await self.bot.get_partial_messageable(job.channel_id).send(
                messages.edit_not_finished(job.user_id, charged),
                allowed_mentions=_only(job.user_id),
                nonce=f"rt{job.job_id}n",
            )
            return True
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("job %s: could not reach user %s (%s)", job.job_id, job.user_id, _why(exc))
            return False

    async def find(self, job: JobInfo) -> Delivered | None:
        """A message this bot posted for `job` (its embed footer names the job), in the job's channel
        or the requester's DMs. Raises when it cannot look (the engine then delivers again)."""
        places: list[tuple[str, int]] = []
        if job.channel_id is not None:
            places.append(("channel", job.channel_id))
            # A chain's version whose thread was gone was posted under it instead (`deliver`).
            if (parent := await thread_parent(self.bot, job.channel_id)) is not None:
                places.append(("channel", parent))
        dm = await self.bot.create_dm(discord.Object(job.user_id))
        places.append(("dm", dm.id))
        for via, channel_id in places:
            found = await self._find_in(job, via, channel_id)
            if found is not None:
                return found
        return None

    async def _find_in(self, job: JobInfo, via: str, channel_id: int) -> Delivered | None:
        """This bot's result message for `job` in one channel (its embed footer or files name the job)."""
        after = discord.Object(discord.utils.time_snowflake(job.created_at - dt.timedelta(seconds=5)))
        me = self.bot.user.id if self.bot.user else None
        try:
            # Newest first, back to the job's start: the result is among the last messages posted,
            # however busy the channel was while the job waited and ran.
            history = self.bot.get_partial_messageable(channel_id).history(
                limit=FIND_HISTORY_LIMIT, after=after, oldest_first=False
            )
            async for message in history:
                if message.author.id == me and shows_result_of(message, job.job_id):
                    # Followups carry the app's webhook id: they went out through the interaction.
                    return Delivered("interaction" if message.webhook_id else via, channel_id, message.id)
        except discord.NotFound:
            return None
        return None

    async def _send(
        self, channel_id: int, job: JobInfo, outcome: EditOutcome, name: str, text: str, *, where: str
    ) -> discord.Message:
        # The nonce makes Discord return the first message instead of posting a second one when a
        # send is retried after a crash (enforce_nonce, a few minutes' window); one per destination.
        undo = await self.bot.services.history.continues_chain(job.origin_message_id)
        return await self.bot.get_partial_messageable(channel_id).send(
            truncate(text, 2000),
            embed=result_embed(outcome, name),
            files=result_files(outcome),
            view=result_view(job.job_id, undo=undo),
            allowed_mentions=_only(job.user_id),
            nonce=f"rt{job.job_id}{where}",
        )

    async def _name(self, user_id: int) -> str:
        user = self.bot.get_user(user_id)
        if user is None:
            try:
                user = await self.bot.fetch_user(user_id)
            except discord.HTTPException:
                return "you"
        return user.display_name


async def fit_for_dm(outcome: EditOutcome, limit: int = DM_UPLOAD_LIMIT) -> EditOutcome:
    """`outcome` with its files, together, under the DM upload limit (results were fitted to the
    server's, which a boosted server raises well above a DM's). Pillow runs in a thread. A restored
    (masked) result keeps its pixels when lossless WebP fits, and says so when it cannot."""
    files = []
    notices = outcome.notices
    lossy: list[str] = []  # formats of unmasked images re-encoded for the DM's limit
    share = imaging.share_of_upload(limit, len(outcome.files))
    for f in outcome.files:
        data, fmt, how = await asyncio.to_thread(
            imaging.fit_result, f.data, f.format, share, exact=outcome.restored
        )
        if how == imaging.AS_IS:
            files.append(f)
            continue
        if outcome.restored and how == imaging.SMALLER and imaging.normalize_format(f.format) != "jpeg":
            kept = tuple(
                n for n in notices if n not in (messages.KEPT_AS_LOSSLESS_WEBP, messages.RESTORED_NOT_EXACT)
            )
            notices = (*kept, messages.RESTORED_NOT_EXACT)
        elif not outcome.restored and how == imaging.SMALLER:
            lossy.append(fmt)
        stem = f.filename.rsplit(".", 1)[0]
        files.append(ResultFile(f"{stem}.{'jpg' if fmt == 'jpeg' else fmt}", data, fmt))
    if lossy:  # one line for the DM's copies, in place of the one the server's fit may have written
        notices = (
            *(n for n in notices if not messages.is_fitted_notice(n)),
            messages.fitted_to_upload_limit(lossy),
        )
    return replace(outcome, files=tuple(files), notices=notices)


def _why(exc: BaseException) -> str:
    """A failed send for the log: Discord's status and code, or the exception's kind."""
    if isinstance(exc, discord.HTTPException):
        return f"{exc.status} {exc.code}"
    return type(exc).__name__


def _only(user_id: int) -> discord.AllowedMentions:
    """Ping the requester and nobody else (the prompt in the embed can contain anything)."""
    return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(user_id)])


def _asked(job: JobInfo) -> str:
    return discord.utils.format_dt(job.interaction_at or job.created_at, "R")


def _origin_link(job: JobInfo) -> str:
    if job.origin_message_id and job.channel_id:
        return f" (from {jump_url(job.guild_id or None, job.channel_id, job.origin_message_id)})"
    return ""


def _channel_text(job: JobInfo) -> str:
    return f"<@{job.user_id}> here is the edit you asked for {_asked(job)}{_origin_link(job)}."


def _dm_text(job: JobInfo) -> str:
    where = f" in {jump_url(job.guild_id or None, job.channel_id)}" if job.channel_id else ""
    return (
        f"Here is the edit you asked for {_asked(job)}{where}; it could not be posted there."
        f"{_origin_link(job)}"
    )
