"""The real bot serves the gateway shards it is handed, over real websockets to the fake Discord: it
identifies exactly those shards, answers commands only in their servers, and switches shards while it
runs. With PostgreSQL, two bots share the shards through their coordinators and one takes over the
other's when it dies."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest
import yarl
from discord.gateway import DiscordWebSocket

from bot.client import RetouchBot, point_discord_at
from bot.sharding import Serve, ShardCoordinator, ShardPlan
from bot.storage.shard_leases import ShardLeases
from tests import postgres
from tests.fakes.discord import FakeChannel, FakeDiscord, FakeDiscordUsageError, FakeInteraction, FakeUser
from tests.harness import World, running_bot
from tests.test_sharding import Clock

pg_schema, pool_on, pg_pool = postgres.pg_schema, postgres.pool_on, postgres.pg_pool  # the fixtures

SHARDS = 2
LEASE = 300.0  # long: the test runs every round itself, the background loop never gets to one


def guild_on(shard_id: int) -> int:
    """A guild id that Discord routes to `shard_id` of SHARDS ((id >> 22) % count), in no fake's range."""
    return (10**11 * SHARDS + shard_id) << 22


class Handed:
    """Shards as the test hands them out: the first plan at start, later ones through the bot."""

    shared = False
    healthy = True

    def __init__(self, first: ShardPlan) -> None:
        self.first = first

    async def join(self, *, recommended: int) -> None:
        pass

    async def start(self, serve: Serve, *, recommended: int) -> None:
        await serve(self.first)

    async def stop(self) -> None:
        pass

    async def leave(self) -> None:
        pass


def jobs_running() -> bool:
    """The bot's job engine has started and not yet drained (its watchdog runs between the two)."""
    return any(t.get_name() == "retouch-watchdog" and not t.done() for t in asyncio.all_tasks())


class Recorded(Handed):
    """Handed shards that note each step the bot takes with them, and whether its jobs were running;
    shared with other processes, as the coordinator's are."""

    shared = True

    def __init__(self, first: ShardPlan) -> None:
        super().__init__(first)
        self.steps: list[tuple[str, bool]] = []

    async def join(self, *, recommended: int) -> None:
        self.steps.append(("join", jobs_running()))

    async def start(self, serve: Serve, *, recommended: int) -> None:
        self.steps.append(("start", jobs_running()))
        await super().start(serve, recommended=recommended)

    async def stop(self) -> None:
        self.steps.append(("stop", jobs_running()))

    async def leave(self) -> None:
        self.steps.append(("leave", jobs_running()))


@pytest.fixture(autouse=True)
def no_identify_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Discord's 5 s between two IDENTIFYs is for real gateways."""
    monkeypatch.setattr("bot.client.IDENTIFY_GAP_SECONDS", 0.0)


@pytest.fixture
async def at_the_fake(fake_discord: FakeDiscord) -> AsyncIterator[None]:
    """REST calls go to the fake for the whole test, whichever of its bots stops first."""
    previous = discord.http.Route.BASE
    point_discord_at(fake_discord.api_base)
    try:
        yield
    finally:
        discord.http.Route.BASE = previous


def count_interactions(bot: RetouchBot) -> list[int]:
    seen: list[int] = []

    async def on_interaction(interaction: discord.Interaction) -> None:
        seen.append(interaction.guild_id or 0)

    bot.add_listener(on_interaction, "on_interaction")
    return seen


async def credits(fake: FakeDiscord, user: FakeUser, channel: FakeChannel) -> FakeInteraction:
    """`user` runs /credits in `channel` and gets the private answer."""
    it = await fake.slash(user, "credits", channel=channel)
    await fake.wait_until(lambda: it.followups)
    return it


async def second_guild(world: World, shard_id: int) -> FakeChannel:
    guild = await world.fake.create_guild(name="Photo Club", owner=world.owner, id=guild_on(shard_id))
    channel = await guild.create_text_channel("photos")
    await guild.add_member(world.user)
    return channel


def started(bot: RetouchBot, shard_id: int) -> bool:
    shard = bot.get_shard(shard_id)
    return shard is not None and not shard.is_closed() and shard_id in {g.shard_id for g in bot.guilds}


def running_shards(bot: RetouchBot) -> float | None:
    """The bot's `retouch_gateway_shards` gauge, as /metrics shows it."""
    for family in bot.services.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "retouch_gateway_shards":
                return sample.value
    return None


def identifies(fake: FakeDiscord) -> list[list[int]]:
    """The [shard id, shard count] of every IDENTIFY the fake received, in order."""
    return [e["d"]["shard"] for e in fake.gateway_log if e["direction"] == "received" and e["op"] == 2]


async def test_the_bot_serves_the_shards_it_is_handed_and_switches_while_running(
    fake_discord, openai, tmp_path: Path, at_the_fake
):
    fake = fake_discord
    env = {"ALLOWED_GUILD_IDS": f"{guild_on(0)},{guild_on(1)}"}
    handed = Handed(ShardPlan(SHARDS, frozenset({0})))
    async with running_bot(fake, openai, tmp_path, shards=handed, guild_id=guild_on(0), env=env) as world:
        bot = world.bot
        other = await second_guild(world, 1)
        await bot.tree.sync()  # global commands, usable in both guilds
        seen = count_interactions(bot)
        assert fake.identified_shards == [0]
        assert [g.id for g in bot.guilds] == [world.guild.id]
        await credits(fake, world.user, world.channel)
        with pytest.raises(FakeDiscordUsageError, match="no identified gateway connection"):
            await fake.slash(world.user, "credits", channel=other)

        await bot.serve_shards(ShardPlan(SHARDS, frozenset({1})))
        assert bot.get_shard(0) is None  # closed before serve_shards returned
        await fake.wait_until(lambda: started(bot, 1) and fake.identified_shards == [1])
        assert [g.id for g in bot.guilds] == [other.guild.id]  # shard 0's servers left the cache
        await credits(fake, world.user, other)
        with pytest.raises(FakeDiscordUsageError, match="no identified gateway connection"):
            await fake.slash(world.user, "credits", channel=world.channel)
        assert seen == [world.guild.id, other.guild.id]
        assert bot.connected()
        handed.healthy = False  # the shards may no longer be this process's own: /healthz says so
        assert not bot.connected()
    assert identifies(fake) == [[0, SHARDS], [1, SHARDS]]


async def test_a_shard_given_up_while_discord_py_reidentifies_it_does_not_come_back(
    fake_discord, openai, tmp_path: Path, at_the_fake, monkeypatch: pytest.MonkeyPatch
):
    # discord.py's gateway loop awaits a shard's re-IDENTIFY inline: the plan can drop the shard while
    # the new connection is still being made, and that connection must then never serve an event.
    fake = fake_discord
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    connecting, answer = asyncio.Event(), asyncio.Event()
    connect = DiscordWebSocket.from_client.__func__  # type: ignore[attr-defined]

    async def slow_gateway(cls: type[DiscordWebSocket], client: Any, **options: Any) -> DiscordWebSocket:
        if not options.get("initial") and options.get("shard_id") == 0:  # shard 0's re-IDENTIFY
            connecting.set()
            await answer.wait()
        return await connect(cls, client, **options)

    monkeypatch.setattr(DiscordWebSocket, "from_client", classmethod(slow_gateway))
    env = {"ALLOWED_GUILD_IDS": f"{guild_on(0)}"}
    handed = Handed(ShardPlan(SHARDS, frozenset({0, 1})))
    async with running_bot(fake, openai, tmp_path, shards=handed, guild_id=guild_on(0), env=env) as world:
        bot = world.bot
        monkeypatch.setattr(bot, "before_identify_hook", _no_identify_wait)
        await fake.wait_until(lambda: fake.identified_shards == [0, 1])
        await bot.tree.sync()
        seen = count_interactions(bot)
        session = next(s for s in fake._sessions if s.identified and s.shard_id == 0)
        await session.send({"op": 9, "d": False, "s": None, "t": None})  # invalid session: IDENTIFY anew
        await asyncio.wait_for(connecting.wait(), 10)
        await bot.serve_shards(ShardPlan(SHARDS, frozenset({1})))  # shard 0's lease is gone meanwhile
        answer.set()
        await fake.wait_until(lambda: len(identifies(fake)) == 3)  # the re-IDENTIFY went through
        await fake.wait_until(lambda: fake.identified_shards == [1])  # and its connection closed
        with pytest.raises(FakeDiscordUsageError, match="no identified gateway connection"):
            await fake.slash(world.user, "credits", channel=world.channel)
        assert bot.get_shard(0) is None
        assert seen == []


async def _no_identify_wait(shard_id: int | None, *, initial: bool = False) -> None:
    """discord.py waits 5 s before every IDENTIFY but a client's first; that is for real gateways."""


async def test_the_bot_joins_the_fleet_before_its_jobs_start_and_leaves_it_after_they_drained(
    fake_discord, openai, tmp_path: Path, at_the_fake
):
    # Joined first, the process takes only its part of every provider's ceiling from its first job on
    # (the jobs a stopped process left are resumed at start-up); it stops serving its shards before its
    # drain (others take its servers) but stays counted until its last provider call has ended.
    sharing = Recorded(ShardPlan(SHARDS, frozenset({0})))
    async with running_bot(fake_discord, openai, tmp_path, shards=sharing, guild_id=guild_on(0)) as world:
        assert sharing.steps == [("join", False), ("start", True)]
        await world.bot.shutdown()
    assert sharing.steps == [("join", False), ("start", True), ("stop", True), ("leave", False)]


async def test_with_shard_count_and_sqlite_one_process_serves_every_shard(
    fake_discord, openai, tmp_path: Path, at_the_fake
):
    from bot.app import shard_sharing
    from tests.fixtures import settings_for

    sharing = shard_sharing(settings_for(tmp_path, openai, SHARD_COUNT=str(SHARDS)), pool=None)
    async with running_bot(fake_discord, openai, tmp_path, shards=sharing, guild_id=guild_on(1)) as world:
        assert fake_discord.identified_shards == [0, 1]
        assert world.bot.shard_count == SHARDS
        await credits(fake_discord, world.user, world.channel)
    assert shard_sharing(settings_for(tmp_path, openai), pool=None) is None  # discord.py's own choice


async def test_two_bots_share_the_shards_and_one_takes_over_when_the_other_dies(
    fake_discord, openai, tmp_path: Path, at_the_fake, pool_on: postgres.PoolOn
):
    fake = fake_discord
    clock = Clock()
    lease = dt.timedelta(seconds=LEASE)

    async def coordinator(name: str) -> ShardCoordinator:
        store = ShardLeases(await pool_on(), lease=lease, clock=clock)
        return ShardCoordinator(
            store,
            lease_seconds=LEASE,
            shard_count=SHARDS,
            owner=name,
            settle_seconds=0,
            monotonic=clock.monotonic,
        )

    async def next_round(*processes: ShardCoordinator, seconds: float = LEASE / 3) -> None:
        clock.advance(seconds)
        for process in processes:
            await process.tick()

    env = {"ALLOWED_GUILD_IDS": f"{guild_on(0)},{guild_on(1)}"}
    a, b = await coordinator("a"), await coordinator("b")
    async with contextlib.AsyncExitStack() as stack_b:
        stack_a = await stack_b.enter_async_context(contextlib.AsyncExitStack())
        # a starts alone: both shards are its own (it waits for the second one's IDENTIFY gap).
        alone = {"shards": a, "guild_id": guild_on(0), "env": env}
        world_a = await stack_a.enter_async_context(running_bot(fake, openai, tmp_path / "a", **alone))
        bot_a = world_a.bot
        assert fake.identified_shards == [0, 1]
        # b joins with nothing free: a hands shard 1 over on its next round, b claims it on its own.
        late = {"shards": b, "guild_id": guild_on(1), "env": env, "wait_ready": False}
        world_b = await stack_b.enter_async_context(running_bot(fake, openai, tmp_path / "b", **late))
        bot_b = world_b.bot
        await fake.wait_until(lambda: b.healthy)  # it joined (its first round is done)
        assert b.plan == ShardPlan(SHARDS, frozenset())
        assert bot_b.connected()  # healthy without a shard: it still runs jobs
        seen_a, seen_b = count_interactions(bot_a), count_interactions(bot_b)
        await next_round(a, b)
        assert (a.plan.shard_ids, b.plan.shard_ids) == ({0}, {1})
        await fake.wait_until(lambda: started(bot_b, 1))
        assert fake.identified_shards == [0, 1]
        assert (running_shards(bot_a), running_shards(bot_b)) == (1, 1)  # what /metrics says
        await credits(fake, world_b.user, world_b.channel)
        assert (seen_a, seen_b) == ([], [guild_on(1)])

        # a dies: its connections drop, it neither renews nor releases its lease.
        a._task.cancel()
        bot_a.sharing = None
        await stack_a.aclose()
        await fake.wait_until(lambda: fake.identified_shards == [1])
        with pytest.raises(FakeDiscordUsageError, match="no identified gateway connection"):
            await fake.slash(world_a.user, "credits", channel=world_a.channel)
        await next_round(b)
        await next_round(b)  # two thirds of a lease after a's last renewal: shard 0 is still a's
        assert b.plan.shard_ids == {1}
        await next_round(b)  # one lease after a's last renewal its lease has run out: b serves both
        assert b.plan.shard_ids == {0, 1}
        await fake.wait_until(lambda: started(bot_b, 0))
        assert fake.identified_shards == [0, 1]
        assert running_shards(bot_b) == 2
        await credits(fake, world_a.user, world_a.channel)
        assert seen_b == [guild_on(1), guild_on(0)]
        # A graceful stop closes its shards and frees them for the others at once.
        await bot_b.shutdown()
        assert await ShardLeases(await pool_on(), lease=lease, clock=clock).holders() == {}
        assert bot_b.shards == {}
