"""`/edit` end to end: the real bot and discord.py stack against the fake Discord and the fake OpenAI."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from bot import messages
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.harness import World, running_bot

DATA = Path(__file__).resolve().parents[1] / "data"
PHOTO = (DATA / "chelsea.png").read_bytes()


@pytest.fixture
async def world(fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path) -> AsyncIterator[World]:
    async with running_bot(fake_discord, openai, tmp_path) as w:
        yield w


async def balance(world: World) -> tuple[int, int]:
    account = await world.services.storage.ledger.get_account(world.guild.id, world.user.id)
    assert account is not None
    return account.balance, account.held


async def test_edit_posts_the_edited_image_publicly_and_charges_exactly_its_cost(world: World):
    it = await world.edit(PHOTO, quality="low", size="1024x1024")
    final = await world.finished(it)
    # Deferred privately first, before any I/O.
    assert it.callbacks[0]["type"] == 5 and it.ephemeral
    assert final.startswith("Done — 10 credits charged")  # $0.01 at 1000 credits per USD
    [result] = [m for m in it.followups if not m.ephemeral]
    [(filename, data)] = result.files
    image = Image.open(io.BytesIO(data))
    assert image.size == (1024, 1024) and filename.endswith(".png")
    embed = result.embeds[0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Cost"] == "10 credits" and fields["Balance"] == "99990 credits"
    assert fields["Model"] == "GPT Image 1.5"
    assert result.allowed_mentions == {"parse": []}
    assert await balance(world) == (99990, 0)
    assert world.openai.post_count == 1


async def test_progress_shows_the_stages_at_a_throttled_pace(world: World):
    world.openai.delay = 3.0  # long enough for the throttled "editing" stage to be shown
    it = await world.edit(PHOTO)
    await world.finished(it)
    edits = it.original_edits
    assert edits[0].startswith("Checking your images")
    assert any(e.startswith("Editing with GPT Image 1.5… (") for e in edits)
    assert edits[-1].startswith("Done")
    # Coalesced, not one edit per tick: a 3 s job produces only a handful of edits.
    assert len(edits) <= 6


async def test_bad_input_gets_a_private_message_and_costs_nothing(world: World):
    it = await world.edit(b"%PDF-1.7 definitely not a picture")
    await world.fake.wait_until(lambda: it.original_edits and "PNG, JPEG or WebP" in it.original_edits[-1])
    assert "PDF" in it.original_edits[-1]
    assert it.ephemeral and not [m for m in it.followups if not m.ephemeral]
    assert world.openai.post_count == 0
    assert await world.services.storage.ledger.get_account(world.guild.id, world.user.id) is None


async def test_an_image_discord_no_longer_serves_gets_a_private_message_saying_so(world: World):
    """Its message was deleted between the command and the download: not "something went wrong"."""
    deferred = world.fake.hold("POST", r"/interactions/\d+/[^/]+/callback")
    it = await world.edit(PHOTO)
    await world.fake.wait_until(lambda: deferred.held)
    world.fake.forget_attachments()
    deferred.release()
    await world.fake.wait_until(
        lambda: it.original_edits and "Discord would not give me" in it.original_edits[-1]
    )
    assert "`image`" in it.original_edits[-1] and "Attach it again" in it.original_edits[-1]
    assert world.openai.post_count == 0
    assert await world.services.storage.ledger.get_account(world.guild.id, world.user.id) is None


async def test_provider_refusal_is_private_refunded_and_referenced(world: World):
    world.openai.fail_next(Fault.MODERATION_BLOCKED)
    it = await world.edit(PHOTO)
    final = await world.finished(it)
    assert "safety system" in final and "not charged" in final and "ref `" in final
    assert "moderation_blocked" not in final  # never the provider's raw text
    assert not [m for m in it.messages if not m.ephemeral and m.files]
    assert await balance(world) == (100000, 0)


async def test_thread_results_open_a_thread_under_the_result(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with running_bot(fake_discord, openai, tmp_path, env={"THREAD_RESULTS": "on"}) as world:
        it = await world.edit(PHOTO, prompt="add a tiny hat")
        await world.finished(it)
        [result] = [m for m in it.followups if not m.ephemeral]
        assert result.thread is not None
        assert result.thread.name == "add a tiny hat"
        assert result.thread.parent_id == world.channel.id


async def test_admin_can_switch_result_threads_per_server(world: World):
    it = await world.fake.slash(world.owner, "admin threads", channel=world.channel, options={"value": "on"})
    await world.fake.wait_until(lambda: it.original is not None)
    assert await world.services.storage.settings.guild_thread_results(world.guild.id) is True
    edit = await world.edit(PHOTO)
    await world.finished(edit)
    [result] = [m for m in edit.followups if not m.ephemeral]
    assert result.thread is not None


async def test_credits_shows_balance_and_the_last_job(world: World):
    await world.finished(await world.edit(PHOTO, quality="low", size="1024x1024"))
    it = await world.fake.slash(world.user, "credits", channel=world.channel)
    message = await world.fake.wait_until(lambda: it.followups and it.followups[-1])
    assert message.ephemeral
    text = str(message.embeds)
    assert "99990" in text and "10 credits" in text


async def test_model_autocomplete_lists_catalog_models(world: World):
    choices = await world.fake.autocomplete(
        world.user, "edit", channel=world.channel, focused="model", value="1.5"
    )
    assert [c["value"] for c in choices] == ["gpt-image-1.5"]


async def test_while_the_bot_stops_a_command_is_told_so_and_autocomplete_still_answers(world: World):
    """A stopping bot takes no new work and says so privately; autocomplete, which cannot show a
    message (Discord refuses any answer but choices), keeps answering."""
    await world.services.edits.drain(0)
    it = await world.fake.slash(world.user, "credits", channel=world.channel)
    await world.fake.wait_until(lambda: it.callbacks)
    assert it.callbacks[0]["data"]["content"] == messages.SHUTTING_DOWN
    choices = await world.fake.autocomplete(
        world.user, "edit", channel=world.channel, focused="model", value="1.5"
    )
    assert [c["value"] for c in choices] == ["gpt-image-1.5"]
    assert world.fake.server_errors == []


async def test_commands_are_registered_with_their_options(world: World):
    commands = {c["name"]: c for c in world.fake.synced_commands(world.guild.id)}
    assert {"edit", "credits", "admin"} <= set(commands)
    edit_options = {o["name"]: o for o in commands["edit"]["options"]}
    assert edit_options["image"]["type"] == 11 and edit_options["image"]["required"]
    assert edit_options["prompt"]["max_length"] == 6000
    # Qualities and sizes follow the chosen model (2.5/2.6 add xhigh and max; 2.x takes free sizes),
    # so they are autocompleted rather than a fixed list.
    assert edit_options["quality"]["autocomplete"] is True and "choices" not in edit_options["quality"]
    assert edit_options["size"]["autocomplete"] is True and "choices" not in edit_options["size"]
    assert edit_options["count"]["min_value"] == 1 and edit_options["count"]["max_value"] == 4
    assert edit_options["model"]["autocomplete"] is True


async def test_several_results_that_fit_the_upload_limit_alone_but_not_together_are_posted_together(
    world: World,
):
    """Discord's upload limit bounds a message's files together: each result is fitted to its share."""
    first = await world.edit(PHOTO, quality="low", size="1024x1024")
    await world.finished(first)
    [(_, one)] = next(m for m in first.followups if not m.ephemeral).files
    world.guild.attachment_size_limit = len(one) * 3 // 2  # one fits, two as they come do not

    it = await world.edit(PHOTO, quality="low", size="1024x1024", count=2)
    final = await world.finished(it)

    assert final.startswith("Done")
    [result] = [m for m in it.followups if not m.ephemeral]  # public, in one message
    assert len(result.files) == 2
    assert sum(len(data) for _, data in result.files) <= world.guild.attachment_size_limit
    assert all(Image.open(io.BytesIO(data)).size == (1024, 1024) for _, data in result.files)
    # Re-encoded to fit, and the member is told (they asked for PNG; the files are not).
    notes = [f["value"] for f in result.embeds[0]["fields"] if f["name"].startswith("Note")]
    assert notes == [
        messages.fitted_to_upload_limit([Image.open(io.BytesIO(d)).format.lower() for _, d in result.files])
    ]


async def test_a_result_too_large_for_the_upload_limit_says_it_was_saved_in_another_format(world: World):
    """A PNG over the server's upload limit was posted as WebP with nothing said: the member, who asked
    for PNG, had to find it in the file name."""
    first = await world.edit(PHOTO, quality="low", size="1024x1024", format="png")
    await world.finished(first)
    [(_, one)] = next(m for m in first.followups if not m.ephemeral).files
    world.guild.attachment_size_limit = len(one) // 3

    it = await world.edit(PHOTO, quality="low", size="1024x1024", format="png")
    await world.finished(it)

    [result] = [m for m in it.followups if not m.ephemeral]
    [(filename, data)] = result.files
    assert Image.open(io.BytesIO(data)).format == "WEBP" and filename.endswith(".webp")
    notes = [f["value"] for f in result.embeds[0]["fields"] if f["name"].startswith("Note")]
    assert notes == [messages.fitted_to_upload_limit(["webp"])]
