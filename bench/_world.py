"""The end-to-end rig for benchmarks 1–3, 7 and 8: fake Discord here, fake OpenAI and the bot in their
own processes.

`python -m bot` runs unmodified in a child process with its settings pointed at the fakes on 127.0.0.1,
so what is measured is the real entry point (its HTTP session, database, ops server and all). The fake
Discord stays in this process because tests drive it through Python calls (`slash`); the fake OpenAI
gets its own process so its image work does not compete with the fake Discord's event loop.

With `processes` > 1 the rig starts that many bots on one PostgreSQL schema of their own, sharing the
gateway's shards (SHARD_COUNT = processes) through the leases as `docker compose --scale` runs them,
with one server per shard; members belong to every server and their edits take turns over them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import ROOT, BotProcess, FakeOpenAIProcess, free_port
from tests.fakes.discord import FakeChannel, FakeDiscord, FakeGuild, FakeInteraction, FakeUser

USERS = 10
PROMPT = "make it a watercolour painting"


def undated_catalog(folder: Path, root: Path = ROOT) -> Path:
    """The packaged catalog without shutdown dates, so a benchmark never depends on today's date."""
    text = (root / "bot" / "data" / "catalog.toml").read_text("utf-8")
    lines = [line for line in text.splitlines() if not line.strip().startswith(("shutdown", "replacement"))]
    path = folder / "catalog.toml"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


@dataclass
class Rig:
    fake: FakeDiscord
    bot: BotProcess
    channel: FakeChannel
    users: list[FakeUser]
    interactions: list[FakeInteraction] = field(default_factory=list)
    openai: FakeOpenAIProcess | None = None  # its `stats` are filled in once the rig has stopped
    bots: list[BotProcess] = field(default_factory=list)  # every process; `bot` is the first
    channels: list[FakeChannel] = field(default_factory=list)  # one a server; `channel` is the first

    async def edit(self, image: bytes, index: int = 0) -> FakeInteraction:
        """One /edit (1024x1024, low quality) from user `index % len(users)`, in server `index % servers`."""
        channels = self.channels or [self.channel]
        it = await self.fake.slash(
            self.users[index % len(self.users)],
            "edit",
            channel=channels[index % len(channels)],
            options={"prompt": PROMPT, "quality": "low", "size": "1024x1024"},
            attachments={"image": ("photo.png", image)},
        )
        self.interactions.append(it)
        return it

    def finished(self, it: FakeInteraction) -> bool:
        """The job ended: done, refused, failed — or never acknowledged within Discord's window."""
        if not it.acknowledged:
            return self.fake.now() - it.created_at > self.fake.ack_deadline
        last = it.original_edits[-1] if it.original_edits else ""
        return last.startswith("Done") or "ref `" in last or "not charged" in last

    @staticmethod
    def succeeded(it: FakeInteraction) -> bool:
        return any(m.attachments for m in it.followups)

    async def wait_all(self, interactions: list[FakeInteraction], timeout: float) -> None:  # noqa: ASYNC109
        """Poll (benchmarks may) until every interaction has ended, or raise after `timeout`."""
        deadline = time.monotonic() + timeout
        while not all(self.finished(it) for it in interactions):
            if time.monotonic() > deadline:
                done = sum(self.finished(it) for it in interactions)
                raise TimeoutError(f"{done}/{len(interactions)} finished\n{self.bot.log_tail()}")
            await asyncio.sleep(0.02)

    def result_time(self, it: FakeInteraction) -> float | None:
        """When the result (the public followup with the image) reached Discord, fake clock."""
        for message in it.followups:
            if message.attachments:
                return dt.datetime.fromisoformat(message.timestamp).timestamp()
        return None

    def ack_time(self, it: FakeInteraction) -> float | None:
        """When the defer callback reached Discord, fake clock."""
        path = f"/interactions/{it.id}/{it.token}/callback"
        for record in self.fake.requests:
            if record.path == path and record.status in (200, 204):
                return record.time
        return None


def shard_guild_id(shard: int, shards: int) -> int:
    """A server id Discord routes to `shard` of `shards` ((id >> 22) % shards)."""
    return (10**11 * shards + shard) << 22


async def publish_globally(fake: FakeDiscord, guild: FakeGuild) -> None:
    """Publish the commands the bot synced to its dev server as global ones, as `python -m bot --sync`
    would, so that the other servers have them too (over the fake's REST API, with the bot's token)."""
    kept = ("type", "name", "description", "options", "default_member_permissions", "contexts", "nsfw")
    body = [{k: v for k, v in c.items() if k in kept} for c in fake.synced_commands(guild)]
    url = f"{fake.api_base}/applications/{fake.application_id}/commands"
    headers = {"Authorization": f"Bot {fake.token}"}
    async with aiohttp.ClientSession() as session, session.put(url, json=body, headers=headers) as resp:
        resp.raise_for_status()


async def until_spread(fake: FakeDiscord, database_url: str, processes: int, timeout: float) -> None:  # noqa: ASYNC109
    """Wait until each of the `processes` bots holds the lease of exactly one shard and every shard is
    connected once (the first bot to start takes them all; the others claim theirs on later rounds)."""
    import asyncpg

    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            rows = await conn.fetch("SELECT owner, count(*) AS n FROM shard_leases GROUP BY owner")
            held = sorted(r["n"] for r in rows if r["owner"] is not None)
            if held == [1] * processes and fake.identified_shards == list(range(processes)):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"shards never spread: leases {held}, connected {fake.identified_shards}")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


@asynccontextmanager
async def rig(
    *,
    provider_delay: float,
    bot_env: Mapping[str, str] | None = None,
    defaults: bool = False,
    openai_options: Mapping[str, Any] | None = None,
    users: int = USERS,
    root: Path = ROOT,
    processes: int = 1,
    database_url: str | None = None,
) -> AsyncIterator[Rig]:
    """Start the fakes and the bot; stop everything afterwards (the bot first).

    With `defaults` the bot keeps its shipped admission limits (MAX_CONCURRENT_JOBS, MAX_JOBS_PER_USER);
    otherwise they are raised so its capacity is measured. `openai_options` go to the fake OpenAI.
    `users` members take turns sending edits; `root` is the source tree the bot runs from.
    `database_url` (PostgreSQL; required when `processes` > 1) gets a fresh schema for this rig only.
    """
    if processes > 1 and not database_url:
        raise ValueError("several processes share their work through PostgreSQL: give database_url")
    limits = {} if defaults else {"MAX_CONCURRENT_JOBS": "1000", "MAX_JOBS_PER_USER": "1000"}
    fake = FakeDiscord(shard_count=processes)
    await fake.start()
    async with AsyncExitStack() as stack:
        # The bot's data, catalog and working directory; removed last, after everything stopped.
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="retouch-bench-")))
        stack.push_async_callback(fake.stop)
        shared: dict[str, str] = {}
        if database_url:
            from bot.storage.postgres import scratch_schema

            url = await stack.enter_async_context(scratch_schema(database_url))
            data = scratch / "data"
            data.mkdir()
            shared = {"DATABASE_URL": url, "SHARD_COUNT": str(processes), "DATA_DIR": str(data)}
        ids = [shard_guild_id(s, processes) for s in range(processes)] if processes > 1 else [None]
        guilds = [await fake.create_guild(name=f"Bench {n}", id=i) for n, i in enumerate(ids)]
        channels = [await guild.create_text_channel("art") for guild in guilds]
        members = [fake.create_user(f"user{i}") for i in range(users)]
        for guild in guilds:
            for user in members:
                await guild.add_member(user)
        openai = stack.enter_context(
            FakeOpenAIProcess(delay=provider_delay, cache=True, options=openai_options)
        )
        env = {
            "DISCORD_TOKEN": fake.token,
            "DISCORD_API_BASE": fake.api_base,
            "OPENAI_API_KEY": openai.api_key,
            "OPENAI_BASE_URL": openai.base_url,
            "DEV_GUILD_ID": str(guilds[0].id),
            "STARTING_CREDITS": str(10**9),
            "CATALOG_PATH": str(undated_catalog(scratch, root)),
            "DEFAULT_MODEL": "gpt-image-2",
            # Measure the bot's capacity, not its admission limits, unless `defaults`.
            **limits,
            # ...nor the operator's limits: the servers are approved, no budget or rate cap.
            "ALLOWED_GUILD_IDS": ",".join(str(guild.id) for guild in guilds),
            "MONTHLY_BUDGET_USD": "0",
            "COMMANDS_PER_MINUTE": "0",
            **shared,
            **(bot_env or {}),
        }
        bots = [BotProcess(env=env, metrics_port=free_port(), root=root) for _ in range(processes)]
        for bot in bots:
            stack.callback(bot.stop)  # stops before the fakes (the stack unwinds in reverse)
            bot.start()
        for bot in bots:
            await bot.wait_healthy(timeout=120)
        if processes > 1:
            assert database_url is not None
            await until_spread(fake, shared["DATABASE_URL"], processes, timeout=180)
            await publish_globally(fake, guilds[0])
        yield Rig(fake, bots[0], channels[0], members, openai=openai, bots=bots, channels=channels)
