"""The real Retouch bot, wired like `python -m bot`, against the local fake Discord and fake OpenAI.

Used by end-to-end tests: `async with running_bot(fake_discord, fake_openai, tmp_path) as world:` then
`it = await world.edit(photo)` and `await world.finished(it)`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord

from bot.app import Services, build_providers, build_services, provider_session
from bot.catalog import Catalog
from bot.client import RetouchBot, point_discord_at
from bot.config import load_settings
from bot.errors import RetouchError
from bot.sharding import ShardSharing
from bot.storage import Storage
from tests.catalogs import TEST_CATALOG
from tests.fakes.discord import FakeChannel, FakeDiscord, FakeGuild, FakeInteraction, FakeUser
from tests.fakes.openai_server import FakeOpenAI
from tests.fixtures import provider_env


@dataclass
class World:
    """A running bot plus the fake world it lives in: one guild, #art, member alice, the owner."""

    fake: FakeDiscord
    openai: FakeOpenAI
    bot: RetouchBot
    services: Services
    guild: FakeGuild
    channel: FakeChannel
    audit_channel: FakeChannel
    user: FakeUser
    owner: FakeUser

    async def edit(
        self,
        image: bytes,
        *,
        prompt: str = "make it a watercolour",
        user: FakeUser | None = None,
        **options: Any,
    ) -> FakeInteraction:
        """`user` (alice by default) runs /edit in #art with `image`."""
        return await self.fake.slash(
            user or self.user,
            "edit",
            channel=self.channel,
            options={"prompt": prompt, **options},
            attachments={"image": ("photo.png", image)},
        )

    async def finished(self, interaction: FakeInteraction, timeout: float = 20.0) -> str:  # noqa: ASYNC109
        """Wait until the job behind `interaction` has ended; return the private message's last text."""

        def ended() -> str | None:
            edits = interaction.original_edits
            last = edits[-1] if edits else ""
            return last if last.startswith("Done") or "ref `" in last or "not charged" in last else None

        return await self.fake.wait_until(ended, timeout)


# The running bot reads the real calendar, and so do discord.py and the fakes (snowflakes, token and
# link expiry), so it cannot be given another one end to end. Its budgets, allowances and reports run by
# UTC day and month: a test that ran across a UTC midnight could charge in one month and check the
# next. No test with the fake Discord starts this close to one (its fixture waits; the longest
# end-to-end test takes well under a minute), so a test's bots all run on one side of it.
DAY_EDGE_SECONDS = 120.0


async def clear_of_midnight(
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> None:
    """Wait until the next UTC midnight has passed when it is less than `DAY_EDGE_SECONDS` away."""
    moment = now()
    midnight = (moment + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    left = (midnight - moment).total_seconds()
    if left < DAY_EDGE_SECONDS:
        await sleep(left + 1.0)


@asynccontextmanager
async def running_bot(
    fake: FakeDiscord,
    openai: FakeOpenAI,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    catalog: Catalog = TEST_CATALOG,
    bot_permissions: int | None = None,
    audit: bool = False,
    today: Callable[[], dt.date] | None = None,
    shards: ShardSharing | None = None,
    guild_id: int | None = None,
    wait_ready: bool = True,
) -> AsyncIterator[World]:
    """Start the bot with its commands synced to a fresh guild; close everything afterwards.

    `bot_permissions` gives the bot exactly those permissions in #art (a channel overwrite);
    `audit` sets AUDIT_CHANNEL_ID to the guild's #audit channel; `today` is the calendar shutdown
    dates are compared with (the real one when None). `shards`: which gateway shards it serves (as
    `python -m bot` passes them), `guild_id` the fresh guild's id (which decides its shard), and
    `wait_ready` False starts a bot that may serve no shard yet without waiting for it to be ready.
    """
    # The fake OpenAI serves and lists exactly the catalog's OpenAI models, like an organisation whose
    # catalog is current (tests of unknown or vanished models change `openai.models` themselves).
    openai.models = {r.model for m in catalog.models.values() for r in m.routes if r.provider == "openai"}
    owner = fake.owner
    guild = await fake.create_guild(name="Art Club", owner=owner, id=guild_id)
    channel = await guild.create_text_channel("art", bot_permissions=bot_permissions)
    audit_channel = await guild.create_text_channel("audit")
    alice = fake.create_user("alice")
    await guild.add_member(alice)
    settings = load_settings(
        {
            "DISCORD_TOKEN": fake.token,
            "DISCORD_API_BASE": fake.api_base,
            **provider_env("openai", openai),
            "DATA_DIR": str(data_dir),
            "DEV_GUILD_ID": str(guild.id),
            # The operator approved this server (the bot serves only approved servers).
            "ALLOWED_GUILD_IDS": str(guild.id),
            "STARTING_CREDITS": "100000",
            "METRICS_PORT": "0",
            **({"AUDIT_CHANNEL_ID": str(audit_channel.id)} if audit else {}),
            **(env or {}),
        }
    )
    previous_base = discord.http.Route.BASE
    point_discord_at(fake.api_base)
    storage = await Storage.open(settings.database_path)
    try:
        async with provider_session(settings) as session:  # the pool the entry point uses
            extra = {"today": today} if today is not None else {}
            services = build_services(settings, catalog, storage, build_providers(settings, session), **extra)
            bot = RetouchBot(services, shards=shards)
            bot._connection.guild_ready_timeout = 0.05
            fake.attach_error_capture(bot, expected=(RetouchError,))
            task = asyncio.create_task(bot.start(settings.discord_token.reveal()))
            await asyncio.sleep(0)  # let start() reach its setup before anything waits on the bot
            fake.watch_task(task)
            try:
                if wait_ready:
                    await fake.wait_for(bot.wait_until_ready())
                yield World(fake, openai, bot, services, guild, channel, audit_channel, alice, owner)
            finally:
                fake.unwatch_task(task)
                await bot.close()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await storage.close()
        discord.http.Route.BASE = previous_base


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Wait until `check` (a read of the bot's storage, say) holds: what the bot does after answering
    Discord lands a moment later. TimeoutError when it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)
