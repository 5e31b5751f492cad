"""Durable jobs end to end in one process: the real bot against the fake Discord and fake providers.

Delivery beyond the interaction token (channel message, DM), the queue's position and ETA, Cancel in
each state, and the persistent result buttons (Edit again, Retry, Delete).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import bot.jobs.core
import cogs._ui
from bot import messages
from bot.jobs.model import JobInfo
from bot.messages import UPLOADING
from tests.durable import (
    CATALOG,
    PHOTO,
    assert_books_balance,
    control,
    jobs,
    ledger_kinds,
    private_answer,
    results,
)
from tests.fakes.discord import (
    DEFAULT_BOT_PERMISSIONS,
    FakeDiscord,
    FakeInteraction,
    FakeMessage,
    FakeUser,
    HeldRequests,
    Permission,
)
from tests.fakes.discord import _error as discord_error
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.fixtures import provider_env
from tests.harness import World, running_bot


def env_for(wavespeed: FakeWaveSpeed, **extra: str) -> dict[str, str]:
    return {**provider_env("wavespeed", wavespeed), **extra}


@pytest.fixture
async def world(
    fake_discord: FakeDiscord, openai: FakeOpenAI, wavespeed: FakeWaveSpeed, tmp_path: Path
) -> AsyncIterator[World]:
    async with running_bot(fake_discord, openai, tmp_path, env=env_for(wavespeed), catalog=CATALOG) as w:
        yield w


def button_labels(message: FakeMessage) -> str:
    return " ".join(str(c.get("label")) for row in message.components for c in row.get("components", []))


async def published(world: World, it: FakeInteraction) -> FakeMessage:
    """The public result of `it`'s job, posted as a followup."""
    await world.finished(it)
    [message] = await world.fake.wait_until(lambda: results(it.followups))
    return message


def webhook_calls(world: World, it: FakeInteraction, status: int | None = None) -> list[object]:
    marker = f"/webhooks/{world.fake.application_id}/{it.token}"
    return [r for r in world.fake.requests if r.path.startswith(marker) and status in (None, r.status)]


async def settled(world: World, count: int = 1) -> list[dict[str, object]]:
    """The job rows, once the first `count` jobs have reached a terminal state."""
    data_dir = world.services.settings.data_dir

    def done() -> list[dict[str, object]] | None:
        rows = jobs(data_dir)
        ended = [r for r in rows[:count] if r["state"] in ("delivered", "failed", "cancelled")]
        return rows if len(ended) == count else None

    return await world.fake.wait_until(done)


# -- delivery ---------------------------------------------------------------------------------------


async def test_result_after_an_expired_token_arrives_as_a_channel_message_with_one_webhook_try(world: World):
    world.openai.delay = 1.0  # the provider is still working when the token dies
    it = await world.edit(PHOTO)
    await world.fake.wait_until(lambda: world.openai.post_count == 1)
    world.fake.expire_token(it)
    posted = await world.fake.wait_until(lambda: results(world.fake.channel_messages(world.channel)))
    [message] = posted
    alice = world.user.id
    assert message.content.startswith(f"<@{alice}> here is the edit you asked for")
    assert message.mentions == [alice]  # pings the requester and nobody else
    assert message.allowed_mentions == {"parse": [], "users": [alice]}
    assert not results(it.followups)
    # Exactly one request on the dead token was refused, then it was never used again.
    assert len(webhook_calls(world, it, 401)) == 1
    [job] = await settled(world)
    assert (job["state"], job["delivered_via"]) == ("delivered", "channel")
    assert ledger_kinds(world.services.settings.data_dir, job["id"]) == ["reserve", "capture"]
    assert_books_balance(world.services.settings.data_dir)


def landed_then_one_500(fake: FakeDiscord) -> list[int]:
    """The result followup is posted, but Discord answers 500; anything sent after that is handled
    normally. Returns the count of result followups Discord received."""
    original, tries = fake._execute_webhook, [0]

    async def handler(call):  # type: ignore[no-untyped-def]
        if call.body_dict().get("embeds"):
            tries[0] += 1
            if tries[0] == 1:
                await original(call)
                raise discord_error(500, 0, "500: Internal Server Error")
        return await original(call)

    fake._execute_webhook = handler  # type: ignore[method-assign]
    return tries


async def test_a_progress_edit_discord_leaves_hanging_does_not_hold_up_the_paid_result(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """The job's task writes "Uploading the result…" before it stores the result the provider billed:
    a PATCH of the progress message that Discord never answers held the result for aiohttp's 300 s
    (and lost it if the bot stopped meanwhile). Progress edits now give up after a few seconds."""
    monkeypatch.setattr(cogs._ui, "PROGRESS_EDIT_TIMEOUT", 0.5)
    world.openai.delay = 1.0  # the call is out when Discord starts hanging
    it = await world.edit(PHOTO)
    await world.fake.wait_until(lambda: world.openai.post_count == 1)
    hung = world.fake.hold(
        "PATCH", rf"/webhooks/{world.fake.application_id}/[^/]+/messages/@original", times=100
    )
    data_dir = world.services.settings.data_dir
    await world.fake.wait_until(lambda: jobs(data_dir)[0]["state"] == "delivered")
    assert results(it.followups) and hung.held
    hung.release()


async def test_a_result_followup_answered_with_a_500_is_not_sent_again(world: World):
    """Discord posted the result and then answered 500: discord.py would send the followup again on
    its own (a followup has no nonce), posting a second copy. The bot sends it once, finds the copy that
    landed, and charges once."""
    tries = landed_then_one_500(world.fake)
    it = await world.edit(PHOTO)
    data_dir = world.services.settings.data_dir
    [job] = await world.fake.wait_until(
        lambda: [r for r in jobs(data_dir) if r["state"] in ("delivered", "failed")], timeout=30
    )
    copies = {m.id for m in results(it.followups) + results(world.fake.channel_messages(world.channel))}
    assert (job["state"], job["delivered_via"], len(copies), tries[0]) == ("delivered", "interaction", 1, 1)
    assert job["result_message_id"] in copies
    assert ledger_kinds(data_dir, job["id"]) == ["reserve", "capture"]
    assert_books_balance(data_dir)


async def test_a_result_followup_refused_with_a_503_is_posted_once_in_the_channel(world: World):
    """Discord answers the followup 503 without posting it: the bot does not send it again blindly;
    it looks for it, finds none, and posts the result in the channel, once."""
    followup = world.fake.hold("POST", rf"/webhooks/{world.fake.application_id}/[^/]+")
    it = await world.edit(PHOTO)
    await world.fake.wait_until(lambda: followup.held)
    followup.drop()
    [job] = await settled(world)
    copies = results(it.followups) + results(world.fake.channel_messages(world.channel))
    assert (job["state"], job["delivered_via"], len(copies)) == ("delivered", "channel", 1)
    assert len(webhook_calls(world, it, 503)) == 1
    assert ledger_kinds(world.services.settings.data_dir, job["id"]) == ["reserve", "capture"]


async def test_a_rate_limited_result_followup_is_sent_again_by_discord_py(world: World):
    """A 429 means Discord posted nothing: that one is retried, and the result is the followup."""
    world.fake.rate_limit_next(f"POST /webhooks/{world.fake.application_id}/")
    it = await world.edit(PHOTO)
    [job] = await settled(world)
    assert (job["state"], job["delivered_via"], len(results(it.followups))) == ("delivered", "interaction", 1)
    assert len(webhook_calls(world, it, 429)) == 1


async def test_a_result_that_landed_in_a_busy_channel_is_found_not_posted_again(world: World):
    """120 messages came while the job ran: the landed result is among the newest, found there (it
    was past the first 100 after the job's start, where the search stopped), and not posted twice."""
    landed_then_one_500(world.fake)
    world.openai.delay = 1.0
    it = await world.edit(PHOTO)
    await world.fake.wait_until(lambda: world.openai.post_count == 1)
    for i in range(120):
        await world.fake.post_message(world.user, world.channel, f"chatter {i}")
    data_dir = world.services.settings.data_dir
    [job] = await world.fake.wait_until(
        lambda: [r for r in jobs(data_dir) if r["state"] in ("delivered", "failed")], timeout=30
    )
    copies = {m.id for m in results(it.followups) + results(world.fake.channel_messages(world.channel))}
    assert (job["state"], job["delivered_via"], len(copies)) == ("delivered", "interaction", 1)


async def test_a_channel_post_that_landed_without_its_embed_is_found_by_its_files(world: World):
    """Without Embed Links, Discord keeps a channel message but drops its embed, and with it the
    footer naming the job. A post that landed before a 503 is still found (its files name the job),
    not sent again by DM."""
    await world.channel.set_permissions(world.fake.bot_user, deny=int(Permission.EMBED_LINKS))
    original, tries = world.fake._post_channel_message, [0]

    async def landed_then_503(call):  # type: ignore[no-untyped-def]
        if call.uploads:
            tries[0] += 1
            if tries[0] == 1:
                await original(call)
                raise discord_error(503, 0, "503: Service Unavailable")
        return await original(call)

    world.fake._post_channel_message = landed_then_503  # type: ignore[method-assign]
    world.openai.delay = 1.0
    it = await world.edit(PHOTO)
    await world.fake.wait_until(lambda: world.openai.post_count == 1)
    world.fake.expire_token(it)
    [job] = await settled(world)
    [message] = [m for m in world.fake.channel_messages(world.channel) if m.attachments]
    assert message.embeds == []  # what Discord keeps of it
    assert not [m for m in world.fake.channel_messages(world.fake.dm_channel(world.user)) if m.attachments]
    assert (job["state"], job["delivered_via"], job["result_message_id"]) == (
        "delivered",
        "channel",
        message.id,
    )
    assert ledger_kinds(world.services.settings.data_dir, job["id"]) == ["reserve", "capture"]


async def test_result_goes_to_dms_when_the_channel_was_deleted(world: World):
    world.openai.delay = 1.0  # the provider is still working when the channel goes
    await world.edit(PHOTO)
    await world.fake.wait_until(lambda: world.openai.post_count == 1)
    await world.fake.delete_channel(world.channel)
    dm = world.fake.dm_channel(world.user)
    [message] = await world.fake.wait_until(lambda: results(world.fake.channel_messages(dm)))
    assert "could not be posted there" in message.content
    [job] = await settled(world)
    assert (job["state"], job["delivered_via"]) == ("delivered", "dm")
    assert ledger_kinds(world.services.settings.data_dir, job["id"]) == ["reserve", "capture"]


async def test_a_result_discord_failed_to_take_is_posted_once_when_discord_is_back(world: World):
    """The channel post and then the DM fail with a 503 (no effect): the paid result is neither
    refunded nor lost; it is posted again from the stored result, exactly once."""
    world.services.edits.engine.delivery_retry_first = 0.05
    world.openai.delay = 1.0
    it = await world.edit(PHOTO)
    await world.fake.wait_until(lambda: world.openai.post_count == 1)
    world.fake.expire_token(it)
    in_channel = world.fake.hold("POST", r"/channels/\d+/messages")
    by_dm = world.fake.hold("POST", r"/channels/\d+/messages")
    await world.fake.wait_until(lambda: in_channel.held)
    in_channel.drop()
    await world.fake.wait_until(lambda: by_dm.held)
    by_dm.drop()
    [message] = await world.fake.wait_until(lambda: results(world.fake.channel_messages(world.channel)))
    [job] = await settled(world)
    assert (job["state"], job["delivered_via"]) == ("delivered", "channel")
    assert job["result_message_id"] == message.id
    assert not results(world.fake.channel_messages(world.fake.dm_channel(world.user)))
    assert ledger_kinds(world.services.settings.data_dir, job["id"]) == ["reserve", "capture"]
    assert_books_balance(world.services.settings.data_dir)


async def test_the_requester_can_delete_a_result_that_came_by_dm(world: World):
    world.openai.delay = 1.0
    await world.edit(PHOTO)
    await world.fake.wait_until(lambda: world.openai.post_count == 1)
    await world.fake.delete_channel(world.channel)  # the result goes to the member's DMs
    dm = world.fake.dm_channel(world.user)
    [message] = await world.fake.wait_until(lambda: results(world.fake.channel_messages(dm)))
    await settled(world)
    it = await world.fake.click(world.user, message, control(message, "delete"))
    await world.fake.wait_until(lambda: it.callbacks)
    await world.fake.wait_until(lambda: message.deleted)
    assert it.callbacks[0]["type"] == 6  # deferred, not refused


async def test_a_channel_post_lost_to_a_dropped_connection_falls_back_to_a_dm(world: World):
    world.openai.delay = 1.0
    it = await world.edit(PHOTO)
    await world.fake.wait_until(lambda: world.openai.post_count == 1)
    world.fake.expire_token(it)
    in_channel = world.fake.hold("POST", rf"/channels/{world.channel.id}/messages")
    await world.fake.wait_until(lambda: in_channel.held)
    in_channel.cut()
    dm = world.fake.dm_channel(world.user)
    [message] = await world.fake.wait_until(lambda: results(world.fake.channel_messages(dm)))
    assert "could not be posted there" in message.content
    assert not results(world.fake.channel_messages(world.channel))
    [job] = await settled(world)
    assert (job["state"], job["delivered_via"]) == ("delivered", "dm")
    assert ledger_kinds(world.services.settings.data_dir, job["id"]) == ["reserve", "capture"]


# -- how an edit ended, once its token is spent -----------------------------------------------------


async def refused_after_the_token_died(world: World) -> None:
    """An edit the image service's safety system refuses, answered after the command's token died (as
    if it had waited in the queue for 15 minutes): its progress message cannot say how it ended."""
    world.openai.fail_next(Fault.MODERATION_BLOCKED)
    world.openai.delay = 1.0
    it = await world.edit(PHOTO, prompt="something the provider refuses")
    await world.fake.wait_until(lambda: world.openai.post_count == 1)
    world.fake.expire_token(it)


def pings(world: World) -> list[FakeMessage]:
    """The channel's messages that mention the requester."""
    return [m for m in world.fake.channel_messages(world.channel) if world.user.mention in m.content]


async def test_a_failure_after_the_token_is_spent_is_explained_by_dm_and_not_in_the_channel(world: World):
    """Why an edit failed (here the provider's refusal of the member's prompt) is theirs alone: told
    by DM, and the channel hears nothing of it."""
    await refused_after_the_token_died(world)
    dm = world.fake.dm_channel(world.user)
    [told] = await world.fake.wait_until(lambda: world.fake.channel_messages(dm))
    channel = f"https://discord.com/channels/{world.guild.id}/{world.channel.id}"
    assert told.content.startswith(f"About your edit in {channel}: ")
    assert "safety system" in told.content and "not charged" in told.content
    [job] = await settled(world)
    assert job["state"] == "failed"
    assert ledger_kinds(world.services.settings.data_dir, job["id"]) == ["reserve", "release"]
    assert pings(world) == []
    assert not [m for m in world.fake.channel_messages(world.channel) if "safety" in m.content]


async def test_with_dms_closed_the_channel_hears_only_that_the_edit_ended_and_what_it_cost(world: World):
    world.user.dms_open = False
    await refused_after_the_token_died(world)
    [line] = await world.fake.wait_until(lambda: pings(world))
    assert line.content == messages.edit_not_finished(world.user.id, 0)
    assert "not charged" in line.content and "/credits" in line.content
    assert "safety" not in line.content and "refuses" not in line.content
    assert line.mentions == [world.user.id]  # pings the requester and nobody else
    assert line.allowed_mentions == {"parse": [], "users": [world.user.id]}
    assert world.fake.channel_messages(world.fake.dm_channel(world.user)) == []
    [job] = await settled(world)
    assert ledger_kinds(world.services.settings.data_dir, job["id"]) == ["reserve", "release"]


async def test_a_channel_notice_sent_again_for_the_same_job_is_posted_once(world: World):
    """The line carries the job's nonce: sent again (another call, another process) within Discord's
    window, Discord returns the first post rather than pinging the member twice."""
    world.user.dms_open = False
    info = JobInfo(
        "0123456789abcdef", world.guild.id, world.user.id, world.channel.id, dt.datetime.now(dt.UTC)
    )
    delivery = world.services.edits.engine.delivery
    for _ in range(2):
        assert await delivery.notify(info, "the reason", charged=20)
    [line] = pings(world)
    assert line.content == messages.edit_not_finished(world.user.id, 20)
    assert "20 credits were charged" in line.content and "not charged" not in line.content


def progress_edits(world: World, times: int = 1000) -> HeldRequests:
    """Every edit of an interaction's private message, cut off with no answer (the network between
    the bot and Discord fails), up to `times` of them."""
    rule = world.fake.hold(
        "PATCH", rf"/webhooks/{world.fake.application_id}/[^/]+/messages/@original", times=times
    )
    rule.cut()
    return rule


async def test_a_result_after_cut_progress_edits_is_still_posted_publicly_as_a_followup(world: World):
    """Every progress edit fails, and the network is back just as the result is ready: the result must
    not fill in the private "thinking" message (Discord does that with the first followup after a
    defer when no edit landed), so the member's paid result is public."""
    cut = progress_edits(world)
    it = await world.edit(PHOTO)
    # The last progress edit before the delivery; the bot stores the result (worker threads, database) before
    # it posts anything, so the rule is stopped well before its next request.
    await world.fake.wait_until(lambda: any(r.json.get("content") == UPLOADING for r in cut.held))
    cut.stop()
    [message] = await world.fake.wait_until(lambda: results(it.followups))
    assert message is not it.original_message and message.files
    assert not [m for m in it.messages if m.ephemeral and m.files]
    [job] = await settled(world)
    assert (job["state"], job["delivered_via"]) == ("delivered", "interaction")
    assert ledger_kinds(world.services.settings.data_dir, job["id"]) == ["reserve", "capture"]


async def test_a_result_whose_progress_message_cannot_be_edited_is_posted_publicly_in_the_channel(
    world: World,
):
    """No edit of the private message lands: a followup could only fill in the private "thinking"
    message, so the result goes to the channel (mentioning the member) instead, charged once."""
    progress_edits(world)
    it = await world.edit(PHOTO)
    [message] = await world.fake.wait_until(lambda: results(world.fake.channel_messages(world.channel)))
    assert message.content.startswith(f"<@{world.user.id}> here is the edit you asked for")
    assert not it.followups and it.original_message.loading  # the private message was never filled
    [job] = await settled(world)
    assert (job["state"], job["delivered_via"]) == ("delivered", "channel")
    assert ledger_kinds(world.services.settings.data_dir, job["id"]) == ["reserve", "capture"]
    assert_books_balance(world.services.settings.data_dir)


# -- the queue and Cancel ---------------------------------------------------------------------------


async def test_queued_job_shows_position_and_eta_and_cancel_releases_it_in_full(
    fake_discord: FakeDiscord, openai: FakeOpenAI, wavespeed: FakeWaveSpeed, tmp_path: Path
):
    env = env_for(wavespeed, MAX_CONCURRENT_JOBS="1")
    async with running_bot(fake_discord, openai, tmp_path, env=env, catalog=CATALOG) as world:
        await published(world, await world.edit(PHOTO))  # one finished job: the ETA has a median
        openai.fail_always(Fault.HANG)
        first = await world.edit(PHOTO)
        await fake_discord.wait_until(lambda: openai.post_count == 2)
        second = await world.edit(PHOTO)
        queued = await fake_discord.wait_until(
            lambda: (
                second.original_edits and "Queued" in second.original_edits[-1] and second.original_edits[-1]
            )
        )
        assert queued == "Queued — position 1 in line. Your result should be ready in less than a minute."
        cancel = await fake_discord.wait_until(lambda: control(second.original_message, "cancel"))

        click = await fake_discord.click(world.user, second.original_message, cancel)
        await fake_discord.wait_until(lambda: "Cancelled" in second.original_message.content)
        assert second.original_message.content == "Cancelled — you were not charged."
        assert second.original_message.components == []
        assert click.callbacks[0]["type"] == 6
        data_dir = tmp_path
        rows = jobs(data_dir)
        assert rows[-1]["state"] == "cancelled"
        assert ledger_kinds(data_dir, rows[-1]["id"]) == ["reserve", "release"]
        assert openai.post_count == 2  # the queued job never reached the provider

        # The running (synchronous) job: cancelling it aborts the call, which the provider still bills.
        stop = control(first.original_message, "cancel")
        assert stop is not None
        await fake_discord.click(world.user, first.original_message, stop)
        await fake_discord.wait_until(lambda: "Cancelled" in first.original_message.content)
        # Its call was out at the provider: the requester's cancel is charged what it costs (issue 11).
        assert ledger_kinds(data_dir, jobs(data_dir)[1]["id"]) == ["reserve", "capture"]
        assert_books_balance(data_dir)
        openai.clear_faults()


async def test_cancel_after_the_provider_accepted_is_charged_its_price_and_the_button_says_so(
    world: World, wavespeed: FakeWaveSpeed
):
    # Issue 11: this cancel used to be released in full, so a member could burn provider spend for free.
    wavespeed.hold_results()
    it = await world.edit(PHOTO, model="ws-mini")
    data_dir = world.services.settings.data_dir
    await world.fake.wait_until(lambda: jobs(data_dir) and jobs(data_dir)[0]["state"] == "submitted")
    job = jobs(data_dir)[0]
    assert job["provider"] == "wavespeed" and job["provider_request_id"] in wavespeed.tasks
    cancel = await world.fake.wait_until(
        lambda: (
            "still charged" in button_labels(it.original_message) and control(it.original_message, "cancel")
        )
    )
    await world.fake.click(world.user, it.original_message, cancel)
    await world.fake.wait_until(lambda: "Cancelled" in it.original_message.content)
    assert "credits were charged" in it.original_message.content
    assert ledger_kinds(data_dir, job["id"]) == ["reserve", "capture"]
    assert jobs(data_dir)[0]["state"] == "cancelled"
    assert jobs(data_dir)[0]["captured"] == 20  # ws-mini's flat $0.02 at WaveSpeed
    assert wavespeed.submit_count == 1
    assert_books_balance(data_dir)


async def test_a_cancel_that_comes_too_late_leaves_the_done_line_and_answers_apart(
    world: World, wavespeed: FakeWaveSpeed
):
    """Cancel clicked just as the edit is posted: the click reaches the bot after the progress message
    says "Done — N credits charged, M left". It replaced that line with "Too late to cancel", and
    the member lost what they had been charged."""
    wavespeed.hold_results()
    it = await world.edit(PHOTO, model="ws-mini")
    cancel = await world.fake.wait_until(
        lambda: it.original_message and control(it.original_message, "cancel")
    )
    acknowledged = world.fake.hold("POST", r"/interactions/\d+/[^/]+/callback")
    click = await world.fake.click(world.user, it.original_message, cancel)
    await world.fake.wait_until(lambda: acknowledged.held)
    wavespeed.release_results()
    done = await world.fake.wait_until(
        lambda: "Done" in (it.original_message.content or "") and it.original_message.content
    )
    acknowledged.release()
    await world.fake.wait_until(lambda: click.followups)
    assert click.followups[0].content == "Too late to cancel: your edit was already posted."
    assert click.followups[0].ephemeral
    assert it.original_message.content == done
    assert jobs(world.services.settings.data_dir)[0]["state"] == "delivered"


async def test_a_bursts_commands_take_turns_holding_images_until_their_jobs_are_stored(
    fake_discord: FakeDiscord,
    openai: FakeOpenAI,
    wavespeed: FakeWaveSpeed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(bot.jobs.core, "INTAKE_AT_ONCE", 2)
    env = env_for(wavespeed, MODERATION_TIMEOUT_SECONDS="0.5")
    async with running_bot(fake_discord, openai, tmp_path, env=env, catalog=CATALOG) as world:
        turns = world.services.edits.engine.intake_turns
        members = [await member(world, f"member{i}") for i in range(5)]

        def downloads() -> int:
            return sum("/cdn/attachments/" in r.path for r in fake_discord.requests)

        openai.fail_always(Fault.MODERATION_HANG)  # the first two hold their turns at the safety check
        burst = [await world.edit(PHOTO, user=m) for m in members]
        await fake_discord.wait_until(lambda: len(openai.moderation_requests) == 4 and turns.waiting == 3)
        # Two members' images are in memory, at the safety check (prompt and image); the other three
        # wait for a turn with nothing downloaded.
        assert (downloads(), turns.inside) == (2, 2)
        assert jobs(tmp_path) == []
        openai.clear_faults()  # the hanging checks time out, and fail open: those edits go ahead
        for it in burst:
            assert (await world.finished(it)).startswith("Done")
        assert (downloads(), turns.inside, turns.waiting) == (5, 0, 0)
        assert_books_balance(tmp_path)


# -- result buttons ---------------------------------------------------------------------------------


async def member(world: World, name: str, permissions: int | None = None) -> FakeUser:
    user = world.fake.create_user(name)
    await world.guild.add_member(user, permissions=permissions)
    return user


CALLBACK = r"/interactions/\d+/[^/]+/callback"


@pytest.mark.parametrize("second", ["acknowledged after the delete", "deleting too"])
async def test_delete_needs_no_channel_permission_and_a_double_click_is_harmless(
    fake_discord: FakeDiscord, openai: FakeOpenAI, wavespeed: FakeWaveSpeed, tmp_path: Path, second: str
):
    """The result came as a followup, which needs no channel permission: deleting it goes through the
    interaction too (the bot cannot view this channel). Of two clicks, the second finds it gone
    whichever step it is at (its acknowledgement refused, or its delete answered 404), and is quiet."""
    perms = DEFAULT_BOT_PERMISSIONS & ~int(Permission.VIEW_CHANNEL)
    async with running_bot(
        fake_discord, openai, tmp_path, env=env_for(wavespeed), catalog=CATALOG, bot_permissions=perms
    ) as w:
        result = await published(w, await w.edit(PHOTO))
        delete = control(result, "delete")
        first_ack = fake_discord.hold("POST", CALLBACK)
        first = await fake_discord.click(w.user, result, delete)
        await fake_discord.wait_until(lambda: first_ack.held)
        second_ack = fake_discord.hold("POST", CALLBACK)
        late = await fake_discord.click(w.user, result, delete)
        await fake_discord.wait_until(lambda: second_ack.held)
        if second == "deleting too":
            second_ack.release()  # both acknowledged before either deletes
            await fake_discord.wait_until(lambda: late.acknowledged)
        first_ack.release()
        await fake_discord.wait_until(lambda: result.deleted)
        second_ack.release()

        def handled(click: FakeInteraction) -> bool:
            """Its delete was sent, or Discord refused its acknowledgement (the message was gone)."""
            mine = [r for r in fake_discord.requests if click.token in r.path]
            return any(r.method == "DELETE" or (r.status or 0) >= 400 for r in mine)

        await fake_discord.wait_until(lambda: handled(first) and handled(late))

        def told() -> list[str]:
            clicks = (first, late)
            texts = [str(cb.get("data", {}).get("content")) for c in clicks for cb in c.callbacks]
            return [t for t in texts + [str(m.content) for c in clicks for m in c.followups] if t != "None"]

        with pytest.raises(TimeoutError):  # neither click is told "something went wrong"
            await fake_discord.wait_until(told, timeout=1.0)


async def test_a_delete_whose_database_read_outlasts_three_seconds_still_deletes(world: World):
    """The click is acknowledged before the job's row is read: a busy database cannot fail it."""
    result = await published(world, await world.edit(PHOTO))
    gate, get_job = asyncio.Event(), world.services.storage.jobs.get_job

    async def slow_get_job(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await get_job(*args, **kwargs)

    world.services.storage.jobs.get_job = slow_get_job  # type: ignore[method-assign]
    click = await world.fake.click(world.user, result, control(result, "delete"))
    await world.fake.wait_until(lambda: click.callbacks)
    assert click.callbacks[0]["type"] == 6
    world.fake.advance_time(4)
    gate.set()
    await world.fake.wait_until(lambda: result.deleted)


async def test_delete_works_for_the_requester_and_moderators_only(world: World):
    first = await published(world, await world.edit(PHOTO))
    second = await published(world, await world.edit(PHOTO))
    bob = await member(world, "bob")
    mod = await member(world, "mod", permissions=int(Permission.MANAGE_MESSAGES))

    refused = await world.fake.click(bob, first, control(first, "delete"))
    assert "Only the person who asked" in await private_answer(world.fake, refused)
    assert not first.deleted

    await world.fake.click(world.user, first, control(first, "delete"))
    await world.fake.wait_until(lambda: first.deleted)
    await world.fake.click(mod, second, control(second, "delete"))
    await world.fake.wait_until(lambda: second.deleted)


async def test_retry_runs_the_same_inputs_again_as_a_new_charged_job(world: World):
    result = await published(world, await world.edit(PHOTO, quality="low"))
    retry = await world.fake.click(world.user, result, control(result, "retry"))
    again = await published(world, retry)
    rows = jobs(world.services.settings.data_dir)
    assert [r["state"] for r in rows] == ["delivered", "delivered"]
    assert rows[1]["quality"] == "low" and rows[1]["origin_message_id"] == result.id
    assert ledger_kinds(world.services.settings.data_dir, rows[1]["id"]) == ["reserve", "capture"]
    assert world.openai.post_count == 2
    assert again.id != result.id
    # Someone else's Retry is refused: it would reuse the requester's own images.
    bob = await member(world, "bob")
    refused = await world.fake.click(bob, result, control(result, "retry"))
    text = await world.fake.wait_until(lambda: refused.original_edits and refused.original_edits[-1])
    assert "Only the person who asked" in text
    assert world.openai.post_count == 2


async def test_retry_is_refused_clearly_once_the_inputs_expired(
    fake_discord: FakeDiscord, openai: FakeOpenAI, wavespeed: FakeWaveSpeed, tmp_path: Path
):
    env = env_for(wavespeed, INPUT_RETENTION_HOURS="0")
    async with running_bot(fake_discord, openai, tmp_path, env=env, catalog=CATALOG) as world:
        result = await published(world, await world.edit(PHOTO))
        retry = await fake_discord.click(world.user, result, control(result, "retry"))
        text = await fake_discord.wait_until(lambda: retry.original_edits and retry.original_edits[-1])
        assert "no longer kept" in text and "Edit again" in text
        assert openai.post_count == 1


async def test_edit_again_opens_a_form_and_edits_the_result_image(world: World):
    result = await published(world, await world.edit(PHOTO))
    bob = await member(world, "bob")
    click = await world.fake.click(bob, result, control(result, "again"))
    await world.fake.wait_until(lambda: click.modal is not None)
    submit = await world.fake.submit_modal(bob, click, fields={"prompt": "now at night"})
    again = await published(world, submit)
    assert world.openai.post_count == 2
    assert world.openai.requests[-1].fields["prompt"] == "now at night"
    rows = jobs(world.services.settings.data_dir)
    assert rows[-1]["user_id"] == bob.id and rows[-1]["origin_message_id"] == result.id
    assert again.content == f"<@{bob.id}>"


async def test_job_buttons_count_only_in_the_jobs_own_server_and_on_its_own_message(world: World):
    """A copy of a job's buttons on a message in another server (a forged or misrouted component) gives
    that server's moderators no power over the job, and its requester no power over that message."""
    other = await world.fake.create_guild(name="Elsewhere")
    hall = await other.create_text_channel("hall")
    mallory = world.fake.create_user("mallory")
    await other.add_member(mallory, permissions=int(Permission.MANAGE_MESSAGES))
    await other.add_member(world.user)

    world.openai.delay = 2.0  # the job is still running while the copies are clicked
    it = await world.edit(PHOTO)
    cancel = await world.fake.wait_until(
        lambda: it.original_message and control(it.original_message, "cancel")
    )
    copy = await world.fake.post_message(world.fake.bot_user, hall, "copied controls")
    copy.components = it.original_message.components
    refused = await world.fake.click(mallory, copy, cancel)
    await world.fake.wait_until(lambda: refused.callbacks)
    result = await published(world, it)
    [job] = await settled(world)
    assert job["state"] == "delivered"  # mallory's click did not cancel it

    copy.components = result.components
    delete = control(result, "delete")
    assert delete is not None
    for who in (world.user, mallory):
        click = await world.fake.click(who, copy, delete)
        await world.fake.wait_until(lambda click=click: click.callbacks)
    assert not copy.deleted and not result.deleted
