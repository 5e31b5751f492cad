"""Real `python -m bot` processes on one PostgreSQL. Three: `kill -9` of the one running the jobs, with a
job in every live state, and the survivors finish every one of them exactly as a restart would. Two, with
two gateway shards: a member's Cancel click reaches the process serving their server's shard, not the
one running the job, and the job is still cancelled once, by its holder, and charged as a local cancel is
(bot/jobs/leases.py).

The processes share DATA_DIR and the database (as `docker compose --scale retouch=3` runs them) and talk
to the fake Discord and fake providers in this process. Leases are short (JOB_LEASE_SECONDS=3) so the
takeover comes within seconds; the tests wait on job states in the database, never on a sleep.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.messages import CANCELLED_AT_PROVIDER, cancelling_elsewhere
from tests.durable import PHOTO, art_club, control, results
from tests.fakes.discord import FakeChannel, FakeDiscord, FakeGuild, FakeInteraction, FakeUser
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.wavespeed_server import FakeWaveSpeed

WAIT = 60.0  # generous: three child processes start on a loaded CI machine
LEASE = "3"
# The scene's server is on shard 1 of 2 ((id >> 22) % 2, as Discord routes it): the shard a process
# joining a lone one takes from it (the oldest sheds its highest shard ids: bot.sharding). One shard
# (the scene's SHARD_COUNT) serves it all the same.
ON_SHARD_1_OF_2 = (10**11 * 2 + 1) << 22


class Fleet:
    """Bot processes on one database and one DATA_DIR, wired to the fakes."""

    def __init__(self, fake: FakeDiscord, env: dict[str, str], guild: FakeGuild) -> None:
        self.fake = fake
        self.env = env
        self.guild = guild
        self.procs: list[asyncio.subprocess.Process] = []

    def _synced(self) -> int:
        path = f"/applications/{self.fake.application_id}/guilds/{self.guild.id}/commands"
        return sum(1 for r in self.fake.requests if r.method == "PUT" and r.path == path and r.status == 200)

    async def start(self) -> asyncio.subprocess.Process:
        """One more process; returns once it has recovered and synced its commands."""
        before = self._synced()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            cwd=self.env["DATA_DIR"],
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.procs.append(proc)
        await self.fake.wait_until(lambda: self._synced() > before, timeout=WAIT)
        return proc

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


class Database:
    """Read-only looks into the bot's PostgreSQL schema."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def jobs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.conn.fetch("SELECT * FROM jobs ORDER BY created_at, id")]

    async def states(self) -> list[str]:
        return [j["state"] for j in await self.jobs()]

    async def kinds(self, job_id: str) -> list[str]:
        rows = await self.conn.fetch("SELECT kind FROM ledger WHERE job_id = $1 ORDER BY id", job_id)
        return [r["kind"] for r in rows]

    async def shard_holder(self, shard_id: int) -> str | None:
        """The process holding the gateway shard's lease (bot/storage/shard_leases.py)."""
        owner: str | None = await self.conn.fetchval(
            "SELECT owner FROM shard_leases WHERE shard_id = $1", shard_id
        )
        return owner

    async def until_states(self, *wanted: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while (found := await self.states()) != list(wanted):
            assert loop.time() < deadline, f"jobs are {found}, never {list(wanted)}"
            await asyncio.sleep(0.05)

    async def assert_books_balance(self) -> None:
        for account in await self.conn.fetch("SELECT guild_id, user_id, balance, held FROM accounts"):
            sums = await self.conn.fetchrow(
                "SELECT COALESCE(SUM(delta_balance), 0), COALESCE(SUM(delta_held), 0) FROM ledger "
                "WHERE guild_id = $1 AND user_id = $2",
                account["guild_id"],
                account["user_id"],
            )
            assert (account["balance"], account["held"]) == tuple(sums)
            live = await self.conn.fetchval(
                "SELECT COALESCE(SUM(reserved), 0) FROM jobs WHERE guild_id = $1 AND user_id = $2 "
                "AND state IN ('reserved', 'submitting', 'submitted', 'completed')",
                account["guild_id"],
                account["user_id"],
            )
            assert account["held"] == live


@pytest.fixture
async def scene(
    fake_discord: FakeDiscord, openai: FakeOpenAI, wavespeed: FakeWaveSpeed, tmp_path: Path, postgres_url: str
) -> AsyncIterator[tuple[Fleet, Database, FakeChannel, FakeUser]]:
    import asyncpg

    guild, channel, alice, env = await art_club(
        fake_discord, openai, wavespeed, tmp_path, guild_id=ON_SHARD_1_OF_2
    )
    env |= {
        "DATABASE_URL": postgres_url,
        "SHARD_COUNT": "1",
        "SHARD_LEASE_SECONDS": LEASE,
        "JOB_LEASE_SECONDS": LEASE,
        "MAX_CONCURRENT_JOBS": "2",
    }
    fleet = Fleet(fake_discord, env, guild)
    conn = await asyncpg.connect(postgres_url)
    try:
        yield fleet, Database(conn), channel, alice
    finally:
        await fleet.close()
        await conn.close()


async def edit(fake: FakeDiscord, user: FakeUser, channel: FakeChannel, **options: Any) -> FakeInteraction:
    return await fake.slash(
        user,
        "edit",
        channel=channel,
        options={"prompt": "make it a watercolour", **options},
        attachments={"image": ("photo.png", PHOTO)},
    )


async def test_kill_9_of_the_process_running_jobs_in_every_state_loses_none_and_doubles_none(
    scene: tuple[Fleet, Database, FakeChannel, FakeUser],
    fake_discord: FakeDiscord,
    openai: FakeOpenAI,
    wavespeed: FakeWaveSpeed,
):
    fleet, db, channel, alice = scene
    fake = fake_discord
    doomed = await fleet.start()  # alone: it serves the only shard, so every command comes to it
    await fake.wait_until(lambda: fake.identified_shards == [0], timeout=WAIT)

    wavespeed.hold_results()
    await edit(fake, alice, channel, model="ws-mini")
    await db.until_states("submitted")  # WaveSpeed has the task: it must be polled, never resubmitted
    app = fake.application_id
    held = fake.hold("POST", rf"/webhooks/{app}/[^/]+")  # the next result's followup
    stored = await edit(fake, alice, channel)
    await db.until_states("submitted", "completed")  # its result is stored; the post is in flight
    await fake.wait_until(lambda: held.held, timeout=WAIT)
    await edit(fake, alice, channel)
    await db.until_states("submitted", "completed", "reserved")  # two slots taken: it waits, credits held
    # Two more processes join; the jobs stay with the process that holds them while it renews.
    await fleet.start()
    await fleet.start()
    assert len({j["owner"] for j in await db.jobs()}) == 1

    # A job created but not yet reserved (a crash between the two steps leaves one), held by that process.
    # Written just before the kill: the process does not know it, so nothing renews its lease, and written
    # before the others started it could run out while they start (a slow machine) and be claimed by one.
    submitted = (await db.jobs())[0]
    await db.conn.execute(
        "INSERT INTO jobs (id, guild_id, user_id, channel_id, state, model, quality, size, count, "
        "created_at, updated_at, owner, lease_expires_at) VALUES ('00000000000000aa', $1, $2, $3, 'queued', "
        "'gpt-image-1.5', 'auto', 'auto', 1, $4, $4, $5, $6)",
        *(submitted["guild_id"], submitted["user_id"], submitted["channel_id"]),
        "9999",  # created last
        submitted["owner"],
        submitted["lease_expires_at"],
    )
    doomed.kill()  # no drain, no hand-back: exactly a crash or an OOM kill
    await doomed.wait()
    held.drop()  # the post never reached Discord
    wavespeed.release_results()

    await db.until_states("delivered", "delivered", "delivered", "cancelled")
    jobs = await db.jobs()
    assert all(j["owner"] != submitted["owner"] for j in jobs if j["state"] == "delivered")
    assert wavespeed.submit_count == 1  # polled by its new owner, never submitted twice
    assert openai.post_count == 2  # the stored result is not made again; the waiting job ran once
    for job in jobs[:3]:
        assert await db.kinds(job["id"]) == ["reserve", "capture"]
    assert await db.kinds(jobs[3]["id"]) == []
    posted = [m for m in results(fake.channel_messages(channel)) if m.webhook_id is None]
    posted += results(stored.followups)
    assert len(posted) == 3  # each result posted exactly once
    assert sorted(j["result_message_id"] for j in jobs[:3]) == sorted(m.id for m in posted)
    await db.assert_books_balance()


def pid_of(process_name: str | None) -> int | None:
    """The OS process id in a bot process's name (`host:pid:random`, bot.sharding.process_name), which
    names both the shards and the jobs it holds."""
    return int(process_name.split(":")[-2]) if process_name else None


def readies(fake: FakeDiscord, shard_id: int) -> int:
    """How many times a gateway connection identified as `shard_id` (the fake sends READY only to an
    IDENTIFY it accepted, and refuses a second one for a shard while the first is still connected)."""
    return sum(
        1
        for e in fake.gateway_log
        if e["direction"] == "sent" and e["t"] == "READY" and e["d"]["shard"][0] == shard_id
    )


def gateway_shard_of(fake: FakeDiscord, interaction: FakeInteraction) -> int:
    """The gateway shard the fake sent `interaction` on."""
    [shard] = [
        e["shard"]
        for e in fake.gateway_log
        if e["direction"] == "sent" and e["t"] == "INTERACTION_CREATE" and e["d"]["id"] == str(interaction.id)
    ]
    return int(shard)


async def test_a_cancel_clicked_on_the_process_serving_the_shard_is_done_once_by_the_process_running_the_job(
    scene: tuple[Fleet, Database, FakeChannel, FakeUser],
    fake_discord: FakeDiscord,
    wavespeed: FakeWaveSpeed,
):
    fleet, db, channel, alice = scene
    fake = fake_discord
    fleet.env["SHARD_COUNT"] = "2"
    holder = await fleet.start()  # alone: it serves both shards, so the edit comes to it and it runs it
    await fake.wait_until(lambda: fake.identified_shards == [0, 1], timeout=WAIT)

    wavespeed.hold_results()
    it = await edit(fake, alice, channel, model="ws-mini")
    await db.until_states("submitted")  # WaveSpeed has the task: a cancel is charged its price
    cancel = await fake.wait_until(lambda: it.original_message and control(it.original_message, "cancel"))

    # A second process joins: the first gives it shard 1, the server's, and keeps the job.
    newcomer = await fleet.start()
    await fake.wait_until(lambda: readies(fake, 1) == 2 and fake.identified_shards == [0, 1], timeout=WAIT)
    assert pid_of(await db.shard_holder(1)) == newcomer.pid
    assert pid_of(await db.shard_holder(0)) == holder.pid
    [job] = await db.jobs()
    assert pid_of(job["owner"]) == holder.pid and job["cancel_requested_at"] is None

    # The answer to the click is held until the holder has told the member how the job ended: however
    # late it reaches Discord, it must not hide the outcome on the member's progress message.
    others = rf"/webhooks/{fake.application_id}/(?!{re.escape(it.token)})[^/]+(/messages/@original)?"
    answers = [fake.hold(method, others) for method in ("POST", "PATCH")]
    click = await fake.click(alice, it.original_message, cancel)
    assert gateway_shard_of(fake, click) == 1  # it reaches the process that does not run the job

    await db.until_states("cancelled")
    [job] = await db.jobs()
    assert pid_of(job["owner"]) == holder.pid  # cancelled by its holder, not taken over
    assert (job["cancel_actor_id"], job["cancel_reason"]) == (alice.id, "cancelled")
    assert job["captured"] == 20  # the requester's own cancel of a job WaveSpeed had: its $0.02
    assert await db.kinds(job["id"]) == ["reserve", "capture"]  # charged once, nothing released
    assert wavespeed.submit_count == 1
    # The holder tells the member on their own progress message, as a local cancel does.
    told = CANCELLED_AT_PROVIDER.format(charged=20)
    await fake.wait_until(lambda: it.original_message.content == told, timeout=WAIT)
    assert it.original_message.components == []

    await fake.wait_until(lambda: any(held.held for held in answers), timeout=WAIT)  # only now it lands
    for held in answers:
        held.release()
    await fake.wait_until(lambda: click.followups or click.original_edits, timeout=WAIT)
    assert it.original_message.content == told  # still: the answer did not replace the outcome
    [answer] = click.followups  # a private reply beside the progress message, which it leaves alone
    assert click.original_edits == []
    # At most a lease (3 s) until the holder's lease would have run out, plus a second of slack.
    assert answer.ephemeral and answer.content in {cancelling_elsewhere(s) for s in range(1, int(LEASE) + 2)}
    assert not results(fake.channel_messages(channel)) and not results(it.followups)
    await db.assert_books_balance()
