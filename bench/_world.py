"""The end-to-end rig for benchmarks 1–3 and 7: fake Discord here, fake OpenAI and the bot in their own
processes.

`python -m bot` runs unmodified in a child process with its settings pointed at the fakes on 127.0.0.1,
so what is measured is the real entry point (its HTTP session, database, ops server and all). The fake
Discord stays in this process because tests drive it through Python calls (`slash`); the fake OpenAI
gets its own process so its image work does not compete with the fake Discord's event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import ROOT, BotProcess, FakeOpenAIProcess, free_port
from tests.fakes.discord import FakeChannel, FakeDiscord, FakeInteraction, FakeUser

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

    async def edit(self, image: bytes, index: int = 0) -> FakeInteraction:
        """One /edit (1024x1024, low quality) from user `index % len(users)`."""
        it = await self.fake.slash(
            self.users[index % len(self.users)],
            "edit",
            channel=self.channel,
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


@asynccontextmanager
async def rig(
    *,
    provider_delay: float,
    scratch: Path,
    bot_env: Mapping[str, str] | None = None,
    defaults: bool = False,
    openai_options: Mapping[str, Any] | None = None,
    users: int = USERS,
    root: Path = ROOT,
) -> AsyncIterator[Rig]:
    """Start the fakes and the bot; stop everything afterwards (the bot first).

    With `defaults` the bot keeps its shipped admission limits (MAX_CONCURRENT_JOBS, MAX_JOBS_PER_USER);
    otherwise they are raised so its capacity is measured. `openai_options` go to the fake OpenAI.
    `users` members take turns sending edits; `root` is the source tree the bot runs from.
    """
    limits = {} if defaults else {"MAX_CONCURRENT_JOBS": "1000", "MAX_JOBS_PER_USER": "1000"}
    fake = FakeDiscord()
    await fake.start()
    try:
        guild = await fake.create_guild(name="Bench")
        channel = await guild.create_text_channel("art")
        users = [fake.create_user(f"user{i}") for i in range(users)]
        for user in users:
            await guild.add_member(user)
        with FakeOpenAIProcess(delay=provider_delay, cache=True, options=openai_options) as openai:
            bot = BotProcess(
                env={
                    "DISCORD_TOKEN": fake.token,
                    "DISCORD_API_BASE": fake.api_base,
                    "OPENAI_API_KEY": openai.api_key,
                    "OPENAI_BASE_URL": openai.base_url,
                    "DEV_GUILD_ID": str(guild.id),
                    "STARTING_CREDITS": str(10**9),
                    "CATALOG_PATH": str(undated_catalog(scratch, root)),
                    "DEFAULT_MODEL": "gpt-image-1.5",
                    # Measure the bot's capacity, not its admission limits, unless `defaults`.
                    **limits,
                    # ...nor the operator's limits: the server is approved, no budget or rate cap.
                    "ALLOWED_GUILD_IDS": str(guild.id),
                    "MONTHLY_BUDGET_USD": "0",
                    "COMMANDS_PER_MINUTE": "0",
                    **(bot_env or {}),
                },
                metrics_port=free_port(),
                root=root,
            )
            try:
                bot.start()
                await bot.wait_healthy()
                yield Rig(fake, bot, channel, users, openai=openai)
            finally:
                bot.stop()
    finally:
        await fake.stop()
