"""The audit log: credit changes, refusals and failures with their references, circuit openings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.app import Services, build_providers, build_services
from bot.errors import InsufficientCredits
from bot.jobs.model import EditOutcome
from bot.observability.audit import AuditLog, jump_url
from bot.providers.http import RetryPolicy
from bot.providers.openai import OpenAIProvider
from bot.services.edits import EditJob, EditOptions, Upload
from bot.storage import Storage
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.fixtures import serving, settings_for
from tests.harness import TEST_CATALOG, running_bot
from tests.live import NoResult, run_to_end

DATA = Path(__file__).parent / "data"
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02, max_retry_after=1.0)
GUILD, USER, CHANNEL = 11, 22, 33


class Channel:
    """Records what the audit log posts; can be told to fail like a deleted channel."""

    def __init__(self, fail: bool = False) -> None:
        self.lines: list[str] = []
        self.fail = fail

    async def post(self, text: str) -> None:
        if self.fail:
            raise RuntimeError("403 Forbidden")
        self.lines.append(text)


fake = serving(FakeOpenAI)


@pytest.fixture
async def services(fake: FakeOpenAI, storage: Storage, tmp_path: Path) -> AsyncIterator[Services]:
    # The operator approved the test server.
    settings = settings_for(tmp_path, fake, STARTING_CREDITS="50", ALLOWED_GUILD_IDS=str(GUILD))
    async with aiohttp.ClientSession() as session:
        provider = OpenAIProvider(session, fake.api_key, fake.base_url, policy=FAST, call_timeout=5)
        yield build_services(settings, TEST_CATALOG, storage, {"openai": provider})


async def run_job(services: Services, **options: object) -> EditOutcome:
    data = (DATA / "chelsea.png").read_bytes()

    async def read() -> bytes:
        return data

    job = EditJob(
        guild_id=GUILD,
        user_id=USER,
        channel_id=CHANNEL,
        uploads=[Upload("image", "photo.png", len(data), read)],
        options=EditOptions(prompt="make it a watercolour", **options),  # type: ignore[arg-type]
        upload_limit=10 * 1024 * 1024,
    )
    return await run_to_end(services.edits, job)


async def test_credit_change_names_actor_user_server_amount_and_links_the_command() -> None:
    channel = Channel()
    audit = AuditLog()
    audit.attach(channel.post)
    link = jump_url(1, 2, 3)
    await audit.credit_change(
        guild_id=1, actor_id=7, user_id=8, amount=500, balance_after=1500, reason="prize  winner", link=link
    )
    await audit.credit_change(guild_id=1, actor_id=7, user_id=8, amount=-200, balance_after=1300)
    assert channel.lines == [
        "💳 Credits: <@7> gave 500 credits to <@8> in server `1` (balance now 1500) — “prize winner” · "
        "https://discord.com/channels/1/2/3",
        "💳 Credits: <@7> took 200 credits from <@8> in server `1` (balance now 1300)",
    ]


async def test_a_take_that_moved_nothing_and_a_set_are_said_as_what_the_admin_did() -> None:
    """A take from an empty balance moves 0: it read "gave 0 credits to"."""
    channel = Channel()
    audit = AuditLog()
    audit.attach(channel.post)
    await audit.credit_change(guild_id=1, actor_id=7, user_id=8, amount=0, balance_after=0, action="take")
    await audit.credit_change(guild_id=1, actor_id=7, user_id=8, amount=-50, balance_after=250, action="set")
    assert channel.lines == [
        "💳 Credits: <@7> took 0 credits from <@8> in server `1` (balance now 0)",
        "💳 Credits: <@7> set the balance of <@8> (-50) in server `1` (balance now 250)",
    ]


async def test_safety_refusal_is_posted_with_its_reference_and_channel_link(
    services: Services, fake: FakeOpenAI, storage: Storage
) -> None:
    channel = Channel()
    services.audit.attach(channel.post)
    fake.fail_next(Fault.MODERATION_BLOCKED)
    with pytest.raises(NoResult) as caught:
        await run_job(services)
    await services.audit.flush()
    [line] = channel.lines
    job = (await storage.jobs.recent_jobs(GUILD, USER))[0]
    assert caught.value.ref is not None  # the member was shown the reference too
    assert job.error_ref == caught.value.ref
    assert line == (
        f"🛑 Safety refusal: job `{job.id}` for <@{USER}> in <#{CHANNEL}>, gpt-image-1.5 via openai, "
        f"ref `{caught.value.ref}` · https://discord.com/channels/{GUILD}/{CHANNEL}"
    )


async def test_provider_failure_is_posted_with_its_error_class_and_reference(
    services: Services, fake: FakeOpenAI
) -> None:
    channel = Channel()
    services.audit.attach(channel.post)
    fake.fail_next(Fault.SERVER_ERROR)
    with pytest.raises(NoResult) as caught:
        await run_job(services)
    await services.audit.flush()
    [line] = channel.lines
    assert caught.value.ref is not None
    assert line.startswith("⚠️ Edit failed (ServerError): job `")
    assert f"ref `{caught.value.ref}`" in line


async def test_refusals_the_user_caused_and_successes_are_not_posted(services: Services) -> None:
    channel = Channel()
    services.audit.attach(channel.post)
    await run_job(services)
    with pytest.raises(InsufficientCredits):
        await run_job(services, count=4)  # 80 credits reserved, 40 left
    await services.audit.flush()
    assert channel.lines == []


async def test_without_an_audit_channel_nothing_is_posted(services: Services, fake: FakeOpenAI) -> None:
    assert not services.audit.enabled
    fake.fail_next(Fault.SERVER_ERROR)
    with pytest.raises(NoResult, match="ref `"):
        await run_job(services)
    await services.audit.flush()
    await services.audit.circuit_opened("openai", reason="5 failures")  # dropped, no error


async def test_a_failing_audit_channel_never_breaks_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    audit = AuditLog()
    audit.attach(Channel(fail=True).post)
    with caplog.at_level(logging.WARNING, logger="bot.observability.audit"):
        await audit.circuit_opened("openai", reason="5 server errors in 60 s", retry_in=30)
    assert "could not post to the audit channel: RuntimeError" in caplog.text


async def test_circuit_opening_names_the_provider_and_next_try() -> None:
    channel = Channel()
    audit = AuditLog()
    audit.attach(channel.post)
    await audit.circuit_opened("atlascloud", reason="5 server errors in 60 s", retry_in=30)
    assert channel.lines == [
        "🔌 Provider `atlascloud` circuit opened: 5 server errors in 60 s; next try in 30 s"
    ]


async def test_a_provider_circuit_opening_is_posted_once(services: Services, fake: FakeOpenAI) -> None:
    channel = Channel()
    services.audit.attach(channel.post)
    fake.fail_always(Fault.SERVER_ERROR)
    for _ in range(services.edits.router.breaker.threshold + 1):  # the last one finds it open
        with pytest.raises(NoResult, match="ref `"):
            await run_job(services, size="1024x1024")
    await services.audit.flush()
    openings = [line for line in channel.lines if line.startswith("🔌")]
    assert openings == ["🔌 Provider `openai` circuit opened: repeated failures (last: ServerError)"]


async def test_an_admins_reason_shows_as_typed_without_links_or_markdown() -> None:
    """A server's admin writes the reason; the operator's channel showed it rendered in the bot's name:
    a masked link disguised as a Discord message link, a role pill, a heading."""
    channel = Channel()
    audit = AuditLog()
    audit.attach(channel.post)
    reason = "grant: [https://discord.com/channels/1/2/3](https://evil.example/phish) <@&999> **big** # win"
    await audit.credit_change(guild_id=1, actor_id=2, user_id=3, amount=5, balance_after=5, reason=reason)
    [line] = channel.lines
    assert line.endswith(r" — “grant: \[link\] \<@&999\> \*\*big\*\* \# win”")
    assert "://" not in line and "evil.example" not in line


async def test_long_reasons_are_clipped_to_one_discord_message() -> None:
    channel = Channel()
    audit = AuditLog()
    audit.attach(channel.post)
    await audit.credit_change(guild_id=1, actor_id=2, user_id=3, amount=1, balance_after=1, reason="x" * 5000)
    assert len(channel.lines[0]) < 2000


async def test_bot_posts_a_refused_edit_to_the_audit_channel_without_pinging(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with running_bot(fake_discord, openai, tmp_path, audit=True) as world:
        openai.fail_next(Fault.MODERATION_BLOCKED)
        interaction = await world.edit((DATA / "chelsea.png").read_bytes())
        text = await world.finished(interaction)
        assert "safety system refused" in text
        [message] = await fake_discord.wait_until(lambda: fake_discord.channel_messages(world.audit_channel))
        ref = text.split("ref `")[1].split("`")[0]
        assert message.content.startswith("🛑 Safety refusal: job `")
        assert f"<@{world.user.id}> in <#{world.channel.id}>" in message.content
        assert f"ref `{ref}`" in message.content
        assert message.content.endswith(f"https://discord.com/channels/{world.guild.id}/{world.channel.id}")
        assert message.mentions == []


async def test_a_safety_check_asked_for_without_an_openai_key_is_said_at_start(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MODERATION is OpenAI's free moderation: with only a reseller's key nothing is checked, which
    the operator must hear of rather than find in the README's table."""
    for level, warned in (("standard", True), ("off", False)):
        caplog.clear()
        settings = settings_for(tmp_path, WAVESPEED_API_KEY="ws-key", MODERATION=level)
        async with aiohttp.ClientSession() as session:
            providers = build_providers(settings, session)
            with caplog.at_level(logging.WARNING, logger="bot.app"):
                build_services(settings, TEST_CATALOG, storage, providers)
        said = [r.getMessage() for r in caplog.records if "needs OPENAI_API_KEY" in r.getMessage()]
        assert bool(said) == warned, (level, said)
