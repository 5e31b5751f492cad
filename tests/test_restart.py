"""Crash recovery of the real `python -m bot` process: SIGKILL at each job state, restart, check the outcome.

The bot runs as a child process against the fake Discord and fake providers in this process. Each kill
lands at a known state: the fakes hold a provider call, a poll or a delivery until told otherwise, and
the test waits for the job's state in the SQLite file — never on a sleep. After the restart (a second
process on the same DATA_DIR) every job is delivered exactly once or released exactly once, and every
account's balance and held credits add up with the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.durable import (
    PHOTO,
    art_club,
    assert_books_balance,
    control,
    job_states,
    jobs,
    ledger_kinds,
    results,
)
from tests.fakes.discord import FakeChannel, FakeDiscord, FakeGuild, FakeInteraction, FakeUser
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.fakes.wavespeed_server import FakeWaveSpeed

WAIT = 30.0  # generous: two child processes start per test on a loaded CI machine


class BotProcess:
    """`python -m bot` on `data_dir`, wired to the fakes; started, SIGKILLed and started again."""

    def __init__(self, fake: FakeDiscord, env: dict[str, str], data_dir: Path, guild: FakeGuild) -> None:
        self.fake = fake
        self.env = env
        self.data_dir = data_dir
        self.guild = guild
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    def _synced(self) -> int:
        path = f"/applications/{self.fake.application_id}/guilds/{self.guild.id}/commands"
        return sum(1 for r in self.fake.requests if r.method == "PUT" and r.path == path and r.status == 200)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            cwd=self.data_dir,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.starts += 1
        # Commands are synced at the end of setup_hook, after recovery; then the gateway connects.
        await self.fake.wait_until(lambda: self._synced() == self.starts, timeout=WAIT)
        await self.fake.wait_until(lambda: self.fake.connected, timeout=WAIT)

    async def kill(self) -> None:
        """SIGKILL: no drain, no goodbye, exactly like a crash or an OOM kill."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()
        await self.fake.wait_until(lambda: not self.fake.connected, timeout=WAIT)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class Scene:
    """One guild with #art and alice, the fakes, and the bot process."""

    def __init__(self, fake: FakeDiscord, bot: BotProcess, channel: FakeChannel, alice: FakeUser) -> None:
        self.fake = fake
        self.bot = bot
        self.channel = channel
        self.alice = alice
        self.data_dir = bot.data_dir

    async def edit(self, **options: Any) -> FakeInteraction:
        return await self.fake.slash(
            self.alice,
            "edit",
            channel=self.channel,
            options={"prompt": "make it a watercolour", **options},
            attachments={"image": ("photo.png", PHOTO)},
        )

    async def states(self, *wanted: str) -> None:
        """Wait until the jobs (oldest first) are in exactly these states."""
        await self.fake.wait_until(lambda: job_states(self.data_dir) == list(wanted), timeout=WAIT)

    def posted(self) -> list[Any]:
        """Results posted as plain channel messages (not through an interaction)."""
        return [m for m in results(self.fake.channel_messages(self.channel)) if m.webhook_id is None]

    def told(self, words: str) -> list[Any]:
        return [m for m in self.fake.channel_messages(self.channel) if words in m.content]

    def told_by_dm(self, words: str) -> list[Any]:
        """What alice was told privately (how an edit ended, once no command of hers can say it)."""
        dm = self.fake.dm_channel(self.alice)
        return [m for m in self.fake.channel_messages(dm) if words in m.content]


@pytest.fixture
async def scene_for(
    fake_discord: FakeDiscord, openai: FakeOpenAI, wavespeed: FakeWaveSpeed, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    started: list[BotProcess] = []

    async def build(**extra: str) -> Scene:
        guild, channel, alice, env = await art_club(fake_discord, openai, wavespeed, tmp_path)
        env |= extra
        bot = BotProcess(fake_discord, env, tmp_path, guild)
        started.append(bot)
        await bot.start()
        return Scene(fake_discord, bot, channel, alice)

    yield build
    for bot in started:
        await bot.close()


def insert_queued_row(data_dir: Path, guild_id: int, user_id: int, channel_id: int) -> str:
    """A job written but never reserved: what a crash between those two steps leaves."""
    job_id = "00000000000000aa"
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    with contextlib.closing(sqlite3.connect(data_dir / "retouch.sqlite3")) as db, db:
        db.execute(
            "INSERT INTO jobs (id, guild_id, user_id, channel_id, state, model, quality, size, count, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, 'queued', 'gpt-image-1.5', 'auto', 'auto', 1, ?, ?)",
            (job_id, guild_id, user_id, channel_id, now, now),
        )
    return job_id


async def test_sigkill_mid_call_and_in_the_queue_releases_the_call_and_runs_the_queue(
    scene_for: Callable[..., Any], openai: FakeOpenAI
):
    scene: Scene = await scene_for(MAX_CONCURRENT_JOBS="1")
    openai.fail_always(Fault.HANG)
    await scene.edit()
    await scene.states("submitting")  # at OpenAI: a synchronous call whose outcome a crash loses
    await scene.edit()
    await scene.states("submitting", "reserved")  # waiting in the queue, credits held
    await scene.bot.kill()
    unreserved = insert_queued_row(scene.data_dir, scene.bot.guild.id, scene.alice.id, scene.channel.id)
    openai.clear_faults()

    await scene.bot.start()
    await scene.states("cancelled", "delivered", "cancelled")
    first, second, _ = jobs(scene.data_dir)
    assert ledger_kinds(scene.data_dir, first["id"]) == ["reserve", "release"]
    assert ledger_kinds(scene.data_dir, second["id"]) == ["reserve", "capture"]
    assert ledger_kinds(scene.data_dir, unreserved) == []
    [result] = await scene.fake.wait_until(scene.posted, timeout=WAIT)
    assert result.content.startswith(f"<@{scene.alice.id}> here is the edit you asked for")
    assert openai.post_count == 2  # the lost call is never sent again; the queued job ran once
    await scene.fake.wait_until(
        lambda: scene.told_by_dm("result was lost") and scene.told_by_dm("could start"), timeout=WAIT
    )
    assert not scene.told("not charged")  # by DM, while alice's DMs are open
    assert_books_balance(scene.data_dir)


async def test_a_job_queued_before_the_operator_raised_credits_per_usd_runs_after_the_restart(
    scene_for: Callable[..., Any], openai: FakeOpenAI
):
    """A job held at one CREDITS_PER_USD and run after a restart at a higher one: its hold was checked
    against each route's worst case at the new rate, every route looked dearer than the credits it
    held, and the edit the restart promised would keep its place was refused ("costs more than was
    set aside") though no price or route had changed."""
    scene: Scene = await scene_for(MAX_CONCURRENT_JOBS="1", CREDITS_PER_USD="1000")
    openai.fail_always(Fault.HANG)
    await scene.edit()
    await scene.states("submitting")
    await scene.edit()
    await scene.states("submitting", "reserved")
    await scene.bot.kill()
    openai.clear_faults()
    scene.bot.env["CREDITS_PER_USD"] = "4000"

    await scene.bot.start()
    await scene.states("cancelled", "delivered")
    _, second = jobs(scene.data_dir)
    assert ledger_kinds(scene.data_dir, second["id"]) == ["reserve", "capture"]
    assert_books_balance(scene.data_dir)


async def test_sigkill_after_submit_resumes_polling_and_delivers_once_and_buttons_still_work(
    scene_for: Callable[..., Any], openai: FakeOpenAI, wavespeed: FakeWaveSpeed
):
    scene: Scene = await scene_for()
    done = await scene.edit()
    await scene.states("delivered")
    [earlier] = results(done.followups)
    wavespeed.hold_results()
    await scene.edit(model="ws-mini")
    await scene.states("delivered", "submitted")  # WaveSpeed has the task id; polling is under way
    [notice] = await scene.fake.wait_until(lambda: scene.told("is editing an image"), timeout=WAIT)
    await scene.fake.wait_until(lambda: jobs(scene.data_dir)[1]["notice_message_id"] == notice.id)
    await scene.bot.kill()
    wavespeed.release_results()

    await scene.bot.start()
    await scene.states("delivered", "delivered")
    [resumed] = await scene.fake.wait_until(scene.posted, timeout=WAIT)
    # The public notice the killed process posted is removed by the process that ended the job.
    await scene.fake.wait_until(lambda: notice.deleted, timeout=WAIT)
    assert wavespeed.submit_count == 1  # followed to its result, never submitted twice
    job = jobs(scene.data_dir)[1]
    assert (job["delivered_via"], job["result_message_id"]) == ("channel", resumed.id)
    assert ledger_kinds(scene.data_dir, job["id"]) == ["reserve", "capture"]
    assert len(results(done.followups)) == 1  # the job delivered before the crash was left alone

    # Buttons posted by the first process are handled by the second (dynamic items).
    retry = await scene.fake.click(scene.alice, earlier, control(earlier, "retry"))
    await scene.fake.wait_until(lambda: results(retry.followups), timeout=WAIT)
    await scene.states("delivered", "delivered", "delivered")
    assert ledger_kinds(scene.data_dir, jobs(scene.data_dir)[2]["id"]) == ["reserve", "capture"]
    again = await scene.fake.click(scene.alice, earlier, control(earlier, "again"))
    await scene.fake.wait_until(lambda: again.modal is not None, timeout=WAIT)
    form = await scene.fake.submit_modal(scene.alice, again, fields={"prompt": "now at night"})
    await scene.fake.wait_until(lambda: results(form.followups), timeout=WAIT)
    await scene.states("delivered", "delivered", "delivered", "delivered")
    assert openai.requests[-1].fields["prompt"] == "now at night"
    await scene.fake.click(scene.alice, resumed, control(resumed, "delete"))
    await scene.fake.wait_until(lambda: resumed.deleted, timeout=WAIT)
    assert_books_balance(scene.data_dir)


async def test_an_edit_again_form_opened_before_a_restart_is_answered_after_it(
    scene_for: Callable[..., Any], openai: FakeOpenAI
):
    scene: Scene = await scene_for()
    done = await scene.edit()
    await scene.states("delivered")
    [result] = results(done.followups)
    opened = await scene.fake.click(scene.alice, result, control(result, "again"))
    await scene.fake.wait_until(lambda: opened.modal is not None, timeout=WAIT)
    await scene.bot.kill()  # the member is still typing when the bot is redeployed

    await scene.bot.start()
    form = await scene.fake.submit_modal(scene.alice, opened, fields={"prompt": "now at night"})
    await scene.fake.wait_until(lambda: results(form.followups), timeout=WAIT)
    await scene.states("delivered", "delivered")
    assert openai.requests[-1].fields["prompt"] == "now at night"
    assert_books_balance(scene.data_dir)


@pytest.mark.parametrize("landed", [False, True], ids=["delivery-lost", "delivery-landed"])
async def test_sigkill_mid_delivery_posts_the_result_exactly_once(
    scene_for: Callable[..., Any], landed: bool
):
    scene: Scene = await scene_for()
    app = scene.fake.application_id
    held = scene.fake.hold("POST", rf"/webhooks/{app}/[^/]+")  # the result followup
    it = await scene.edit()
    await scene.states("completed")  # the result is stored; its delivery is in Discord's hands
    await scene.fake.wait_until(lambda: held.held, timeout=WAIT)
    await scene.bot.kill()
    if landed:
        held.release()  # Discord did post it; the bot died before it heard back
        await scene.fake.wait_until(lambda: results(it.followups), timeout=WAIT)
    else:
        held.drop()  # it never reached Discord

    await scene.bot.start()
    await scene.states("delivered")
    [job] = jobs(scene.data_dir)
    posted = results(it.followups) + scene.posted()
    assert len(posted) == 1
    assert job["delivered_via"] == ("interaction" if landed else "channel")
    assert job["result_message_id"] == posted[0].id
    assert ledger_kinds(scene.data_dir, job["id"]) == ["reserve", "capture"]
    assert_books_balance(scene.data_dir)


async def test_a_second_bot_on_the_same_sqlite_file_is_refused_and_a_killed_ones_file_is_free_again(
    scene_for: Callable[..., Any],
):
    scene: Scene = await scene_for()
    second = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        cwd=scene.data_dir,
        env=scene.bot.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(second.communicate(), WAIT)
    log = output.decode()
    assert second.returncode == 1, log
    [line] = [line for line in log.splitlines() if " ERROR " in line]
    assert "another Retouch process" in line and "DATABASE_URL" in line and "PostgreSQL" in line
    assert "Traceback" not in log
    assert scene.bot.proc is not None and scene.bot.proc.returncode is None  # the first one runs on

    await scene.bot.kill()  # kill -9: no close, no goodbye; the kernel lets go of its lock
    await scene.bot.start()  # waits until it has synced its commands and connected
    await scene.edit()
    await scene.states("delivered")
