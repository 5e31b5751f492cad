"""Three real `python -m bot` processes on one PostgreSQL: `kill -9` of the one running the jobs, with a
job in every live state, and the survivors finish every one of them exactly as a restart would.

The processes share DATA_DIR and the database (as `docker compose --scale retouch=3` runs them) and talk
to the fake Discord and fake providers in this process. Leases are short (JOB_LEASE_SECONDS=3) so the
takeover comes within seconds; the test waits on job states in the database, never on a sleep.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.durable import PHOTO, art_club, results
from tests.fakes.discord import FakeChannel, FakeDiscord, FakeGuild, FakeInteraction, FakeUser
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.wavespeed_server import FakeWaveSpeed

WAIT = 60.0  # generous: three child processes start on a loaded CI machine
LEASE = "3"


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

    guild, channel, alice, env = await art_club(fake_discord, openai, wavespeed, tmp_path)
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
    # A job created but not yet reserved (a crash between the two steps leaves one), held by that process.
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
    # Two more processes join; the jobs stay with the process that holds them while it renews.
    await fleet.start()
    await fleet.start()
    assert len({j["owner"] for j in await db.jobs()}) == 1

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
