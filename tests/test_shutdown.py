"""Graceful shutdown of the real `python -m bot` process: SIGTERM drains, refunds, tells users, exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

from bot.client import RetouchBot
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.fixtures import provider_env

ROOT = Path(__file__).resolve().parents[1]
PHOTO = (ROOT / "tests" / "data" / "chelsea.png").read_bytes()


async def start_bot(
    fake: FakeDiscord, openai: FakeOpenAI, data_dir: Path, guild_id: int
) -> asyncio.subprocess.Process:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "DISCORD_TOKEN": fake.token,
        "DISCORD_API_BASE": fake.api_base,
        **provider_env("openai", openai),
        "DATA_DIR": str(data_dir),
        "DEV_GUILD_ID": str(guild_id),
        "ALLOWED_GUILD_IDS": str(guild_id),  # the operator approved the test server
        "SHUTDOWN_GRACE_SECONDS": "0.5",
        "METRICS_PORT": "0",
        "LOG_LEVEL": "info",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        cwd=data_dir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_sigterm_refunds_unfinished_jobs_tells_the_user_and_exits_0(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    openai.fail_always(Fault.HANG)
    guild = await fake_discord.create_guild(name="Art Club")
    channel = await guild.create_text_channel("art")
    alice = fake_discord.create_user("alice")
    await guild.add_member(alice)
    proc = await start_bot(fake_discord, openai, tmp_path, guild.id)
    try:
        await fake_discord.wait_until(lambda: fake_discord.synced_commands(guild.id), timeout=30)
        await fake_discord.wait_until(lambda: fake_discord.connected, timeout=30)
        it = await fake_discord.slash(
            alice,
            "edit",
            channel=channel,
            options={"prompt": "hat"},
            attachments={"image": ("c.png", PHOTO)},
        )
        await fake_discord.wait_until(lambda: openai.post_count == 1, timeout=30)
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = output.decode()
    assert proc.returncode == 0, log
    assert "Traceback" not in log
    final = it.original_edits[-1]
    assert "restart" in final and "not charged" in final
    db = sqlite3.connect(tmp_path / "retouch.sqlite3")
    balance, held = db.execute("SELECT balance, held FROM accounts").fetchone()
    assert held == 0 and balance == 500
    kinds = [row[0] for row in db.execute("SELECT kind FROM ledger WHERE job_id IS NOT NULL ORDER BY id")]
    assert kinds == ["reserve", "release"]
    assert db.execute("SELECT state FROM jobs").fetchone()[0] == "cancelled"


async def test_the_shutdown_waits_for_forms_answered_by_interaction_listeners():
    """The Edit again and Edit image forms are answered from `on_interaction` listeners, which
    discord.py runs in tasks named after the event: the shutdown waited only for commands and
    component callbacks, and closed the HTTP session under a form's reply."""
    answered = asyncio.Event()

    async def form_reply() -> None:
        await asyncio.sleep(0.2)
        answered.set()

    listener = asyncio.create_task(form_reply(), name="discord.py: on_interaction")
    await RetouchBot._finish_replies(object())  # type: ignore[arg-type]  # reads no state of the bot
    assert answered.is_set()
    await listener
