"""What members notice (issue 13), end to end through the real bot against the fake Discord and OpenAI:
edits a member can afford (a one-click cheaper run; `auto` resolving to what fits) and the free
safety check before any paid call (levels, fail-open on outages, the audit channel); moderator
controls (a public Stop on running edits, audited deletes)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import discord
import pytest
from PIL import Image

import cogs._moderation
from bot import messages
from bot.jobs.model import JobInfo, ResultFile
from cogs._delivery import DiscordDelivery
from tests.catalogs import catalog, model, route, tiered
from tests.cogs.test_results import noisy_png, outcome
from tests.durable import (
    DATA,
    PHOTO,
    assert_books_balance,
    control,
    jobs,
    ledger_kinds,
    private_answer,
    results,
    undo_button,
)
from tests.fakes.discord import (
    CHANNEL_PRIVATE_THREAD,
    DEFAULT_BOT_PERMISSIONS,
    FLAG_SUPPRESS_EMBEDS,
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
from tests.harness import World, eventually, running_bot

# Square prices 10 / 60 / 200 credits: 150 credits cover medium but not high (nor auto, priced as high).
CATALOG = catalog(
    model(
        "gpt-image-1.5",
        name="GPT Image 1.5",
        max_input_images=4,
        price=tiered(low=(0.01, 0.02), medium=(0.06, 0.08), high=(0.2, 0.25)),
    )
)
SQUARE = "1024x1024"
CHEAPER_PREFIX = "retouch:cheaper:"


def member_world(
    fake: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, *, credits: int = 150, **env: str
) -> Any:
    settings: Mapping[str, str] = {"STARTING_CREDITS": str(credits), **env}
    return running_bot(fake, openai, tmp_path, env=settings, catalog=CATALOG, audit=True)


def private_text(it: FakeInteraction) -> str:
    return it.original_message.content if it.original_message is not None else ""


def cheaper_button(message: FakeMessage) -> dict[str, Any] | None:
    for row in message.components:
        for component in row.get("components", []):
            if str(component.get("custom_id", "")).startswith(CHEAPER_PREFIX):
                return component
    return None


async def offered(world: World, it: FakeInteraction) -> tuple[FakeMessage, str]:
    """The private message of `it` once it carries the cheaper-run button, and the button's id."""

    def ready() -> FakeMessage | None:
        message = it.original_message
        return message if message is not None and cheaper_button(message) else None

    message = await world.fake.wait_until(ready)
    button = cheaper_button(message)
    assert button is not None
    return message, button["custom_id"]


def result_fields(message: FakeMessage) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in message.embeds[0].get("fields", []):
        found.setdefault(f["name"], []).append(f["value"])
    return found


async def published(world: World, it: FakeInteraction) -> FakeMessage:
    """The public result of `it`'s job, once its job is settled (delivered and charged)."""
    [message] = await world.fake.wait_until(lambda: results(it.followups))
    data_dir = world.services.settings.data_dir
    await world.fake.wait_until(lambda: all(j["state"] in ("delivered", "failed") for j in jobs(data_dir)))
    return message


# -- 1. edits a member can afford -------------------------------------------------------------------


async def test_a_quality_the_member_cannot_afford_offers_one_click_at_a_lower_one(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path) as world:
        it = await world.edit(PHOTO, quality="high", size=SQUARE)
        message, button = await offered(world, it)
        assert message.ephemeral
        assert message.content == (
            "At **high** quality this edit can cost up to **200** credits, but you have **150** "
            "available. At **medium** it costs at most **60** credits."
        )
        assert cheaper_button(message)["label"] == "Run at medium for at most 60 credits"
        assert openai.post_count == 0  # nothing was sent, nothing is held
        assert [j["state"] for j in jobs(tmp_path)] == ["failed"]
        assert_books_balance(tmp_path)

        click = await fake_discord.click(world.user, message, button)
        result = await published(world, click)
        assert len(openai.moderation_requests) == 2  # the offer's run is not checked a second time
        assert openai.requests[-1].fields["quality"] == "medium"
        assert result_fields(result)["Quality"] == ["medium"]
        done = jobs(tmp_path)[-1]
        assert (done["state"], done["reserved"]) == ("delivered", 60)  # held medium's true worst case
        assert ledger_kinds(tmp_path, done["id"]) == ["reserve", "capture"]
        assert_books_balance(tmp_path)


async def test_a_double_click_on_the_offer_starts_one_edit(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path) as world:
        it = await world.edit(PHOTO, quality="high", size=SQUARE)
        message, button = await offered(world, it)
        first, second = await asyncio.gather(
            fake_discord.click(world.user, message, button),
            fake_discord.click(world.user, message, button),
        )
        await world.fake.wait_until(lambda: results(first.followups + second.followups))
        await world.fake.wait_until(lambda: jobs(tmp_path)[-1]["state"] == "delivered")
        late = [
            it
            for it in (first, second)
            if it.original_message and "already used" in it.original_message.content
        ]
        assert len(late) == 1 and late[0].original_message.ephemeral
        assert openai.post_count == 1
        assert [j["state"] for j in jobs(tmp_path)] == ["failed", "delivered"]
        assert cheaper_button(message) is None  # the button went with the first click


async def test_auto_quality_runs_at_the_best_quality_the_member_can_afford_and_says_so(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path) as world:
        it = await world.edit(PHOTO, quality="auto", size=SQUARE)
        await world.finished(it)
        result = await published(world, it)
        assert openai.requests[-1].fields["quality"] == "medium"
        fields = result_fields(result)
        assert fields["Quality"] == ["medium"]
        assert fields["Note"] == [
            "`auto` quality could cost up to 200 credits, more than the 150 available, so Retouch used "
            "**medium** (at most 60 credits)."
        ]
        assert len(openai.moderation_requests) == 2  # prompt + image, checked once, not again at medium
        # Refused at auto (nothing held), then held at medium's true worst case.
        assert [(j["state"], j["reserved"]) for j in jobs(tmp_path)] == [("failed", 0), ("delivered", 60)]
        assert_books_balance(tmp_path)


# Square prices 10 / 30 / 50 / 90 / 200 credits, sold only on a WaveSpeed route that takes no `auto`
# quality: `auto` is sent there as `high` (routing.auto_quality), so it costs at most 50, not max's 200.
NO_AUTO_ROUTE = catalog(
    model(
        "gpt-image-2.6-flare",
        name="GPT Image 2.6 Flare",
        qualities=["low", "medium", "high", "xhigh", "max", "auto"],
        price=tiered(
            low=(0.01, 0.01), medium=(0.03, 0.03), high=(0.05, 0.05), xhigh=(0.09, 0.09), max=(0.2, 0.2)
        ),
        routes=[
            route(
                "wavespeed",
                model="openai/gpt-image-2.6-flare/edit",
                price="list",
                sizes=["auto", SQUARE],
                qualities=["low", "medium", "high", "xhigh", "max"],
                backgrounds=["auto"],
                output_formats=["png", "jpeg", "webp"],
            )
        ],
    )
)


async def test_auto_on_a_route_without_auto_is_held_at_what_it_is_sent_as_not_moved_to_a_dearer_quality(
    fake_discord: FakeDiscord, openai: FakeOpenAI, wavespeed: FakeWaveSpeed, tmp_path: Path
):
    env = {"STARTING_CREDITS": "150", **provider_env("wavespeed", wavespeed)}
    async with running_bot(fake_discord, openai, tmp_path, env=env, catalog=NO_AUTO_ROUTE) as world:
        it = await world.edit(PHOTO, quality="auto", size=SQUARE)
        result = await published(world, it)
        [sent] = [r.json for r in wavespeed.requests if r.method == "POST" and r.json]
        assert sent["quality"] == "high"  # not xhigh (90), as when auto was held at max (200 > 150)
        assert "Note" not in result_fields(result)
        assert [(j["state"], j["reserved"]) for j in jobs(tmp_path)] == [("delivered", 50)]
        assert_books_balance(tmp_path)


async def test_auto_that_the_member_can_afford_stays_auto(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        it = await world.edit(PHOTO, quality="auto", size=SQUARE)
        result = await published(world, it)
        assert openai.requests[-1].fields["quality"] == "auto"
        assert "Note" not in result_fields(result)


async def test_nothing_affordable_is_still_a_plain_refusal(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=5) as world:
        it = await world.edit(PHOTO, quality="high", size=SQUARE)
        [text] = await world.fake.wait_until(lambda: [e for e in it.original_edits if "credits but" in e])
        assert text.startswith("This edit needs up to **200** credits but you have **5** available.")
        assert it.original_message is not None and not it.original_message.components
        assert openai.post_count == 0


async def test_the_servers_budget_offers_what_is_left_of_it(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=100000) as world:
        await admin(world, world.owner, "admin policy budget", usd=0.1)  # 100 credits a month
        it = await world.edit(PHOTO, quality="high", size=SQUARE)
        message, button = await offered(world, it)
        assert message.content == (
            "At **high** quality this edit can cost up to **200** credits, but only **100** are left in "
            "this server's budget for this month. At **medium** it costs at most **60** credits."
        )
        click = await fake_discord.click(world.user, message, button)
        await published(world, click)
        assert openai.requests[-1].fields["quality"] == "medium"


async def admin(world: World, actor: FakeUser, command: str, /, **options: Any) -> FakeMessage:
    it = await world.fake.slash(actor, command, channel=world.channel, options=options)

    def answered() -> FakeMessage | None:
        done = [m for m in it.messages if not m.loading]
        return done[-1] if done else None

    return await world.fake.wait_until(answered)


# -- 2. a free safety check first -------------------------------------------------------------------


def audit_lines(world: World) -> list[str]:
    return [m.content for m in world.fake.channel_messages(world.audit_channel)]


async def refusal(world: World, it: FakeInteraction, marker: str = "safety check") -> str:
    [text] = await world.fake.wait_until(lambda: [e for e in it.original_edits if marker in e])
    return text


async def test_a_flagged_prompt_is_refused_privately_before_any_hold_or_edit_call(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        openai.flag_text("knife", "violence")
        it = await world.edit(PHOTO, prompt="add a bloody knife", size=SQUARE)
        text = await refusal(world, it)
        assert text == (
            "Retouch's safety check flagged your prompt for **violence**, so nothing was sent to the "
            "image service. Change it and try again. You were not charged."
        )
        assert it.original_message is not None and it.original_message.ephemeral
        assert openai.post_count == 0 and jobs(tmp_path) == []  # no edit call, no job, no hold
        account = await world.services.storage.ledger.get_account(world.guild.id, world.user.id)
        assert account is None or (account.balance, account.held) == (1000, 0)
        [line] = await world.fake.wait_until(lambda: [a for a in audit_lines(world) if "flagged" in a])
        assert line == (
            f"🛡️ Safety check (standard) flagged the prompt of <@{world.user.id}> in "
            f"<#{world.channel.id}> for `violence`; nothing was sent or charged"
        )


async def edit_two(world: World, first: bytes, second: bytes) -> FakeInteraction:
    """alice runs /edit in #art with two images."""
    return await world.fake.slash(
        world.user,
        "edit",
        channel=world.channel,
        options={"prompt": "make it a watercolour", "size": SQUARE},
        attachments={"image": ("photo.png", first), "image2": ("two.png", second)},
    )


async def test_a_flagged_prompts_refusal_does_not_wait_for_the_audit_channel(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """The audit post goes out in the background: a slow audit channel (Discord rate-limits a channel
    to a few posts a second) must not hold up the member's answer."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        audit = fake_discord.hold("POST", rf"/channels/{world.audit_channel.id}/messages")
        openai.flag_text("knife", "violence")
        it = await world.edit(PHOTO, prompt="add a bloody knife", size=SQUARE)
        await world.fake.wait_until(lambda: audit.held)
        assert "flagged your prompt" in await refusal(world, it)  # answered while the post is held
        assert not [a for a in audit_lines(world) if "flagged" in a]
        audit.release()
        await world.fake.wait_until(lambda: [a for a in audit_lines(world) if "flagged" in a])


async def test_the_safety_check_sends_the_prompt_and_each_image_as_the_api_expects(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        it = await edit_two(world, PHOTO, PHOTO)
        await published(world, it)
        bodies = openai.moderation_requests
        assert all(b["model"] == "omni-moderation-latest" for b in bodies)
        inputs = sorted((b["input"] for b in bodies), key=lambda parts: parts[0]["type"])
        assert inputs[0] == [{"type": "image_url", "image_url": {"url": inputs[0][0]["image_url"]["url"]}}]
        assert inputs[0][0]["image_url"]["url"].startswith("data:image/png;base64,")
        assert len(inputs) == 3 and inputs[2] == [{"type": "text", "text": "make it a watercolour"}]
        assert openai.moderation_statuses == [200, 200, 200]
        assert openai.post_count == 1


async def test_a_flagged_image_names_the_category_and_which_image(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        openai.flag_images("sexual")
        it = await world.edit(PHOTO, size=SQUARE)
        assert "flagged your image for **sexual content**" in await refusal(world, it)
        assert openai.post_count == 0


@pytest.mark.parametrize("flagged", [1, 2])
async def test_of_two_images_the_refusal_names_the_one_the_check_flagged(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, flagged: int
):
    """Each image is checked on its own so the member can be told which one to replace."""
    second = (DATA / "coffee.png").read_bytes()
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        # Told apart by shape: the bot re-encodes uploads, so the bytes the check gets are its own.
        shape = Image.open(io.BytesIO(PHOTO if flagged == 1 else second)).size
        openai.flag_images("violence", only=lambda image: image.size == shape)
        it = await edit_two(world, PHOTO, second)
        assert f"flagged your image {flagged} for **violence**" in await refusal(world, it)
        [audit] = await world.fake.wait_until(lambda: [a for a in audit_lines(world) if "Safety check" in a])
        assert f"flagged the image {flagged} of <@{world.user.id}>" in audit
        assert openai.post_count == 0 and jobs(tmp_path) == []


async def test_an_image_the_safety_check_cannot_read_is_refused_free_not_let_through(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """The check answers 400 for the image (its decoder refuses the file): an outage lets edits through
    unchecked, so such a file would skip the check wherever another service's decoder takes it."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        openai.refuse_images()
        it = await world.edit(PHOTO, size=SQUARE)
        assert "The safety check could not read your image" in await refusal(world, it)
        assert openai.post_count == 0
        assert not [a for a in audit_lines(world) if "Safety check unavailable" in a]
        assert jobs(tmp_path) == []  # nothing stored, nothing held


@pytest.mark.parametrize(
    ("level", "refused"), [("off", False), ("standard", False), ("strict", True), ("default", False)]
)
async def test_servers_choose_how_strict_the_check_is(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, level: str, refused: bool
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        openai.flag_text("spooky", "violence", score=0.35)  # under the API's flag, over strict's bar
        answer = await admin(world, world.owner, "admin policy moderation", level=level)
        shown = "standard" if level == "default" else level
        assert answer.content.startswith(f"Safety check: **{shown}**")
        rules = await admin(world, world.owner, "admin policy show")
        [field] = [f for f in rules.embeds[0]["fields"] if f["name"] == "Safety check"]
        assert field["value"].startswith(f"**{shown}** — ")
        it = await world.edit(PHOTO, prompt="a spooky castle", size=SQUARE)
        if refused:
            assert "flagged your prompt for **violence**" in await refusal(world, it)
            assert openai.post_count == 0
        else:
            await published(world, it)
            assert openai.post_count == 1
        assert bool(openai.moderation_requests) == (level != "off")


@pytest.mark.parametrize("fault", [Fault.MODERATION_ERROR, Fault.MODERATION_HANG])
async def test_a_moderation_outage_never_blocks_edits_and_is_audited_once(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, fault: Fault
):
    env = {"MODERATION_TIMEOUT_SECONDS": "0.5"}
    async with member_world(fake_discord, openai, tmp_path, credits=1000, **env) as world:
        openai.flag_text("knife", "violence")  # would be refused if the check answered
        openai.fail_always(fault)
        for _ in range(2):
            it = await world.edit(PHOTO, prompt="a knife", size=SQUARE)
            await published(world, it)
        assert openai.post_count == 2
        outages = [a for a in audit_lines(world) if "Safety check unavailable" in a]
        assert len(outages) == 1
        why = "ServerError" if fault == Fault.MODERATION_ERROR else "no answer in 0.5 s"
        assert outages[0].startswith(f"⚠️ Safety check unavailable ({why}): edits go ahead unchecked")


# -- 3. moderator controls --------------------------------------------------------------------------

STOP_PREFIX = "retouch:stop:"


def stop_button(message: FakeMessage) -> str | None:
    for row in message.components:
        for component in row.get("components", []):
            if str(component.get("custom_id", "")).startswith(STOP_PREFIX):
                return str(component["custom_id"])
    return None


async def public_notice(world: World) -> FakeMessage:
    """The channel's public notice of a running edit (the one with **Stop edit**)."""
    return (
        await world.fake.wait_until(
            lambda: [m for m in world.fake.channel_messages(world.channel) if stop_button(m)]
        )
    )[0]


async def member(world: World, name: str, permissions: int | None = None) -> FakeUser:
    user = world.fake.create_user(name)
    await world.guild.add_member(user, permissions=permissions)
    return user


async def test_a_moderator_stops_a_running_edit_from_its_public_notice_and_it_is_audited(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        openai.fail_always(Fault.HANG)  # the edit is still running at the provider
        it = await world.edit(PHOTO, prompt="turn the cat *blue*", size=SQUARE)
        notice = await public_notice(world)
        assert not notice.ephemeral
        assert notice.content == "🖌️ **alice** is editing an image: “turn the cat \\*blue\\*”"
        assert notice.allowed_mentions == {"parse": []}
        await fake_discord.wait_until(lambda: openai.post_count == 1)

        bob = await member(world, "bob")
        refused = await fake_discord.click(bob, notice, stop_button(notice))
        assert "Only the person who asked" in await private_answer(fake_discord, refused)
        assert jobs(tmp_path)[0]["state"] not in ("cancelled", "failed")

        mod = await member(world, "mod", permissions=int(Permission.MANAGE_MESSAGES))
        await fake_discord.click(mod, notice, stop_button(notice))
        await fake_discord.wait_until(lambda: "stopped" in (notice.content or ""))
        assert notice.content == (
            f"🛑 <@{world.user.id}>'s edit was stopped by a moderator (<@{mod.id}>). Nothing was charged."
        )
        assert notice.components == []
        assert await fake_discord.wait_until(
            lambda: "Cancelled" in private_text(it) and private_text(it)
        ) == ("Cancelled — you were not charged.")
        [job] = jobs(tmp_path)
        assert job["state"] == "cancelled"
        assert ledger_kinds(tmp_path, job["id"]) == ["reserve", "release"]
        assert_books_balance(tmp_path)
        [line] = await fake_discord.wait_until(lambda: [a for a in audit_lines(world) if "stopped" in a])
        assert line.startswith(
            f"🛑 <@{mod.id}> stopped job `{job['id']}` of <@{world.user.id}> in <#{world.channel.id}> "
            "(released in full) · https://discord.com/channels/"
        )


async def test_a_link_in_the_prompt_unfurls_no_preview_under_the_public_notice(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """The notice quotes the prompt, where a link would unfurl into a preview (or an invite card) in
    the bot's public post: the link is not repeated, and the notice is posted with embeds suppressed
    (it has none of its own to lose)."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        openai.fail_always(Fault.HANG)
        await world.edit(PHOTO, prompt="like https://example.com/cat.png please", size=SQUARE)
        notice = await public_notice(world)
        assert notice.content.endswith("“like [link] please”") and "example.com" not in notice.content
        assert notice.flags & FLAG_SUPPRESS_EMBEDS and notice.embeds == []


async def test_the_public_notice_sent_again_for_its_job_is_posted_once(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """The notice carries its job's nonce: sent again within Discord's window, Discord answers with the
    first post instead of making a second one."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        openai.fail_always(Fault.HANG)
        await world.edit(PHOTO, prompt="turn the cat blue", size=SQUARE)
        notice = await public_notice(world)
        [job] = jobs(tmp_path)
        posts = rf"/channels/{world.channel.id}/messages"

        def sent() -> list[Any]:
            return [r for r in fake_discord.requests if r.method == "POST" and r.path.endswith(posts)]

        already = len(sent())
        world.bot.get_cog("MembersCog").controls.announce(job["id"], world.channel.id, "alice", "again")
        await fake_discord.wait_until(lambda: len(sent()) > already)
        assert [m for m in fake_discord.channel_messages(world.channel) if stop_button(m)] == [notice]
        assert notice.content == "🖌️ **alice** is editing an image: “turn the cat blue”"


async def test_a_copy_of_a_stop_button_in_another_server_gives_its_moderators_no_power(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """A moderator of another server clicks a copy of the notice's Stop (a forged or misrouted
    component): refused privately, and the edit runs on, as Cancel refuses it."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        openai.fail_always(Fault.HANG)
        await world.edit(PHOTO, prompt="turn the cat blue", size=SQUARE)
        notice = await public_notice(world)
        await fake_discord.wait_until(lambda: openai.post_count == 1)
        other = await fake_discord.create_guild(name="Elsewhere")
        hall = await other.create_text_channel("hall")
        mallory = fake_discord.create_user("mallory")
        await other.add_member(mallory, permissions=int(Permission.MANAGE_MESSAGES))
        copy = await stop_refused_from_a_copy(world, tmp_path, notice, hall, mallory)
        # A Stop for a job nobody knows (pruned, or made up) says so, not who may stop it.
        unknown = "retouch:stop:0123456789abcdef"
        button = {"type": 2, "style": 4, "label": "Stop edit", "custom_id": unknown}
        copy.components = [{"type": 1, "components": [button]}]
        refused = await fake_discord.click(mallory, copy, unknown)
        assert await private_answer(fake_discord, refused) == messages.JOB_UNKNOWN


async def stop_refused_from_a_copy(
    world: World, data_dir: Path, notice: FakeMessage, channel: Any, who: FakeUser
) -> FakeMessage:
    """A copy of `notice`'s controls posted in `channel`, its Stop clicked by `who`: refused, the edit
    (its bot's DATA_DIR `data_dir`) left running. The copy, for more clicks."""
    fake = world.fake
    copy = await fake.post_message(fake.bot_user, channel, "copied controls")
    copy.components = notice.components
    refused = await fake.click(who, copy, stop_button(notice))
    assert await private_answer(fake, refused) == messages.STOP_NOT_ALLOWED
    assert jobs(data_dir)[0]["state"] not in ("cancelled", "failed")
    assert "stopped" not in (notice.content or "")
    return copy


async def test_a_copy_of_a_stop_button_in_another_channel_gives_that_channels_moderators_no_power(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Manage Messages granted in #offtopic only: a copy of #art's Stop clicked there is refused (the
    click's permissions are #offtopic's), as Cancel refuses it; the same right in #art stops the edit."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        openai.fail_always(Fault.HANG)
        await world.edit(PHOTO, prompt="turn the cat blue", size=SQUARE)
        notice = await public_notice(world)
        await fake_discord.wait_until(lambda: openai.post_count == 1)
        offtopic = await world.guild.create_text_channel("offtopic")
        mallory = await member(world, "mallory")
        await offtopic.set_permissions(mallory, allow=int(Permission.MANAGE_MESSAGES))
        await stop_refused_from_a_copy(world, tmp_path, notice, offtopic, mallory)

        await world.channel.set_permissions(mallory, allow=int(Permission.MANAGE_MESSAGES))
        await fake_discord.click(mallory, notice, stop_button(notice))
        await fake_discord.wait_until(lambda: "stopped by a moderator" in (notice.content or ""))
        await fake_discord.wait_until(lambda: jobs(tmp_path)[0]["state"] == "cancelled")


async def test_a_delete_button_of_a_job_without_a_result_does_not_open_another_result(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Alice's edit failed, so her job has no result message. Its Delete button put on Bob's result (a
    forged or misrouted component) must not let her delete it."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        bob = await member(world, "bob")
        it = await world.edit(PHOTO, prompt="bob's edit", size=SQUARE, user=bob)
        [result] = await fake_discord.wait_until(lambda: results(it.followups))
        await fake_discord.wait_until(lambda: jobs(tmp_path)[0]["state"] == "delivered")
        openai.fail_next(Fault.SERVER_ERROR)
        await world.edit(PHOTO, prompt="alice's edit", size=SQUARE)
        failed = await fake_discord.wait_until(
            lambda: [j for j in jobs(tmp_path)[1:] if j["state"] == "failed"]
        )
        forged = f"retouch:job:{failed[0]['id']}:delete"
        button = {"type": 2, "style": 4, "label": "Delete", "custom_id": forged}
        result.components = [*result.components, {"type": 1, "components": [button]}]
        click = await fake_discord.click(world.user, result, forged)
        assert await private_answer(fake_discord, click) == messages.DELETE_NOT_ALLOWED
        assert not result.deleted

        # Bob's own Delete still works on a result whose message is not recorded yet (posted, its
        # capture, which records it and its history, still to come): the message's footer names his job.
        db = world.services.storage.db
        await db.write_one(
            "UPDATE jobs SET result_message_id = NULL WHERE id = ?", (jobs(tmp_path)[0]["id"],)
        )
        await db.write_one("DELETE FROM edit_versions WHERE message_id = ?", (result.id,))
        own = await fake_discord.click(bob, result, control(result, "delete"))
        await fake_discord.wait_until(lambda: own.callbacks)
        await fake_discord.wait_until(lambda: result.deleted)


async def test_a_requester_stopping_a_sent_call_is_charged_and_the_notice_does_not_say_otherwise(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        openai.fail_always(Fault.HANG)  # the call is out at the provider, which bills it
        it = await world.edit(PHOTO, prompt="turn the cat blue", size=SQUARE)
        notice = await public_notice(world)
        await fake_discord.wait_until(lambda: openai.post_count == 1)

        await fake_discord.click(world.user, notice, stop_button(notice))
        await fake_discord.wait_until(lambda: "stopped" in (notice.content or ""))
        # Public: who stopped it, and nothing about money (before, "Nothing was charged", which was false).
        assert notice.content == f"🛑 <@{world.user.id}>'s edit was stopped by the requester."
        assert notice.components == []
        # Private, on the requester's progress message: what it cost.
        said = await fake_discord.wait_until(lambda: "Cancelled" in private_text(it) and private_text(it))
        assert said.startswith("Cancelled. The image service had already started this edit")
        [job] = jobs(tmp_path)
        assert job["state"] == "cancelled" and job["captured"] > 0
        assert f"{job['captured']} credits were charged" in said
        assert ledger_kinds(tmp_path, job["id"]) == ["reserve", "capture"]
        assert_books_balance(tmp_path)


async def test_the_public_notice_goes_away_when_the_edit_is_done(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        openai.delay = 0.5  # long enough for the notice to be posted first
        it = await world.edit(PHOTO, size=SQUARE)
        notice = await public_notice(world)
        await published(world, it)
        await fake_discord.wait_until(lambda: notice.deleted)
        assert [m for m in fake_discord.channel_messages(world.channel) if stop_button(m)] == []


async def notice_removal_held(world: World) -> tuple[FakeMessage, HeldRequests]:
    """An edit posted and charged, its public notice still shown: the job's end's removal of the
    notice is held (the test lets it through, drops it or races it)."""
    world.openai.delay = 0.5  # long enough for the notice to be posted first
    it = await world.edit(PHOTO, size=SQUARE)
    notice = await public_notice(world)
    removal = world.fake.hold("DELETE", rf"/channels/{world.channel.id}/messages/{notice.id}")
    await published(world, it)
    await world.fake.wait_until(lambda: removal.held)
    return notice, removal


async def test_stop_clicked_as_the_edit_ends_says_too_late_and_nothing_went_wrong(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """The job's end removes the public notice while a Stop click on it is being answered: the click's
    own removal of the notice finds it gone (404). Before, that error reached the control's handler and
    the member, charged for a posted edit, was also told "Something went wrong... You were not charged"."""
    caplog.set_level(logging.INFO, logger="cogs.members")
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        notice, end_removes = await notice_removal_held(world)
        answer = fake_discord.hold("POST", r"/webhooks/\d+/[^/]+")  # the click's "too late"
        click = await fake_discord.click(world.user, notice, stop_button(notice))
        await fake_discord.wait_until(lambda: answer.held)
        end_removes.release()
        await fake_discord.wait_until(lambda: notice.deleted)
        answer.release()
        await fake_discord.wait_until(lambda: "its Stop notice was already gone" in caplog.text)
        said = [str(m.content) for m in click.followups]
        assert said == ["Too late to cancel: your edit was already posted."]
        assert "unexpected error" not in caplog.text


async def test_a_double_click_on_undo_posts_the_earlier_version_once(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Retry, Edit again and Run edit ignore a second click; Undo posted the earlier version twice."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        second = await published(world, await edit_again(world, first, "now at night"))

        def posted() -> int:
            return len(results(fake_discord.channel_messages(world.channel)))

        def refused(click: FakeInteraction) -> bool:
            return any(m.content == messages.UNDO_ALREADY_STARTED for m in click.followups)

        shown = posted()
        clicks = [await fake_discord.click(world.user, second, undo_button(second)) for _ in range(2)]
        [other] = await fake_discord.wait_until(lambda: [c for c in clicks if refused(c)])
        [first_click] = [c for c in clicks if c is not other]
        await fake_discord.wait_until(lambda: posted() > shown and first_click.callbacks)
        assert posted() == shown + 1


async def test_a_second_undo_once_the_first_is_posted_steps_back_once_more(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """The double-click guard holds a step of the chain only until its repost is recorded: a
    deliberate second Undo a moment later goes one version further back instead of being refused."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        first, second, third = await chain_of_three(world)

        one = await fake_discord.click(world.user, third, undo_button(third))
        [restored] = await fake_discord.wait_until(lambda: restored_reposts(world))
        await undo_recorded(world, restored)
        await fake_discord.wait_until(lambda: one.callbacks)
        two = await fake_discord.click(world.user, third, undo_button(third))
        [_, oldest] = await fake_discord.wait_until(
            lambda: len(restored_reposts(world)) == 2 and restored_reposts(world)
        )
        assert (restored.files[0][1], oldest.files[0][1]) == (second.files[0][1], first.files[0][1])
        await fake_discord.wait_until(lambda: two.callbacks)
        assert messages.UNDO_ALREADY_STARTED not in [m.content for m in two.followups]


async def test_undo_clicked_at_once_on_two_versions_of_one_chain_posts_the_earlier_version_once(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        _, second, third = await chain_of_three(world)
        shown = len(results(fake_discord.channel_messages(world.channel)))
        clicks = await asyncio.gather(
            fake_discord.click(world.user, third, undo_button(third)),
            fake_discord.click(world.user, second, undo_button(second)),
        )
        refused = await fake_discord.wait_until(
            lambda: [
                c for c in clicks if any(m.content == messages.UNDO_ALREADY_STARTED for m in c.followups)
            ]
        )
        assert len(refused) == 1
        await fake_discord.wait_until(lambda: all(c.callbacks for c in clicks))
        await fake_discord.wait_until(
            lambda: len(results(fake_discord.channel_messages(world.channel))) > shown
        )
        assert len(results(fake_discord.channel_messages(world.channel))) == shown + 1


async def test_a_public_notice_whose_removal_discord_failed_is_removed_on_a_later_try(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The job's end takes the notice's record and removes the notice once: a 503 for that DELETE
    (which discord.py does not retry) left "… is editing an image" in the channel for good."""
    monkeypatch.setattr(cogs._moderation, "REMOVE_RETRY_PAUSES", (0.05,))
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        notice, removal = await notice_removal_held(world)
        removal.drop()
        await fake_discord.wait_until(lambda: notice.deleted)


async def test_a_moderator_deleting_a_result_is_recorded_in_the_audit_channel(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        result = await published(world, await world.edit(PHOTO, size=SQUARE))
        mod = await member(world, "mod", permissions=int(Permission.MANAGE_MESSAGES))
        await fake_discord.click(mod, result, control(result, "delete"))
        await fake_discord.wait_until(lambda: result.deleted)
        [job] = jobs(tmp_path)
        [line] = await fake_discord.wait_until(lambda: [a for a in audit_lines(world) if "deleted" in a])
        assert line == (
            f"🗑️ <@{mod.id}> deleted the result of job `{job['id']}` of <@{world.user.id}> "
            f"in <#{world.channel.id}>"
        )


# -- 4. edit history --------------------------------------------------------------------------------


def downloads(world: World, message: FakeMessage) -> int:
    """How often the bot downloaded `message`'s image (the input of an edit, or an Undo's repost)."""
    [attachment] = message.attachments
    return sum(1 for r in world.fake.requests if r.method == "GET" and f"/{attachment.id}/" in r.path)


async def edit_again(
    world: World, result: FakeMessage, prompt: str, user: FakeUser | None = None
) -> FakeInteraction:
    who = user or world.user
    click = await world.fake.click(who, result, control(result, "again"))
    await world.fake.wait_until(lambda: click.modal is not None)
    return await world.fake.submit_modal(who, click, fields={"prompt": prompt})


async def edit_image(world: World, message: FakeMessage, prompt: str) -> FakeInteraction:
    """The "Edit image" message menu on `message`, its form sent with `prompt`."""
    menu = await world.fake.message_command(world.user, "Edit image", message)
    form = await world.fake.wait_until(lambda: menu.modal)
    # discord.py knows the form only once it has read Discord's reply to opening it (a person cannot
    # send it sooner); a submission it does not know yet is dropped.
    store = world.bot._connection._view_store
    await world.fake.wait_until(lambda: form["custom_id"] in store._modals)
    return await world.fake.submit_modal(world.user, menu, fields={"prompt": prompt})


async def posted_in(world: World, channel_id: int, count: int) -> list[FakeMessage]:
    """The first `count` result-like messages (image + job buttons) in a channel or thread."""

    def found() -> list[FakeMessage] | None:
        messages = [m for m in world.fake.channel_messages(channel_id) if m.files and control(m, "again")]
        return messages if len(messages) >= count else None

    return await world.fake.wait_until(found)


async def test_edit_again_at_once_on_an_older_version_continues_from_one_delivered_a_moment_ago(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        files = world.services.edits.engine.files
        delete = files.delete

        def slow_delete(*args: Any) -> None:  # a busy disk: the clean-up after a delivery takes a while
            time.sleep(1.0)
            delete(*args)

        files.delete = slow_delete  # type: ignore[method-assign]
        second = await published(world, await edit_again(world, first, "now at night"))
        # Clicked as soon as the second is posted and charged, while its files are still being removed.
        await published(world, await edit_again(world, first, "add snow"))
        assert (downloads(world, first), downloads(world, second)) == (1, 1)


async def test_edit_again_continues_from_the_latest_version_and_undo_posts_the_previous_one(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        assert undo_button(first) is None  # the first version has nothing to undo
        second = await published(world, await edit_again(world, first, "now at night"))
        assert undo_button(second) is not None
        # Edit again on the *first* result continues from the latest version (the second).
        third = await published(world, await edit_again(world, first, "add snow"))
        assert (downloads(world, first), downloads(world, second)) == (1, 1)  # 1: for the second version
        rows = jobs(tmp_path)
        assert [r["origin_message_id"] for r in rows] == [None, first.id, second.id]

        # Undo on the newest posts the version before it again, from Discord's copy.
        await fake_discord.click(world.user, third, undo_button(third))
        [*_, restored] = await posted_in(world, world.channel.id, 4)
        assert restored.files[0][1] == second.files[0][1]
        assert restored.embeds[0]["footer"]["text"] == f"job {rows[1]['id']} · restored"
        assert restored.embeds[0]["author"]["name"] == "Undo: the previous version, restored for alice"
        assert openai.post_count == 3  # Undo costs nothing: no provider call
        # A second Undo steps back once more; a third has nothing left.
        await fake_discord.click(world.user, restored, undo_button(restored))
        [*_, oldest] = await posted_in(world, world.channel.id, 5)
        assert oldest.files[0][1] == first.files[0][1]
        late = await fake_discord.click(world.user, oldest, undo_button(oldest))
        assert await private_answer(fake_discord, late) == messages.NOTHING_TO_UNDO
        # Someone else cannot undo alice's edit.
        bob = await member(world, "bob")
        refused = await fake_discord.click(bob, third, undo_button(third))
        assert await private_answer(fake_discord, refused) == messages.UNDO_NOT_REQUESTER


async def test_another_members_edit_again_starts_their_own_chain_and_leaves_the_first_ones(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Bob edits alice's result: his edit is of the picture he clicked, and it does not become the
    newest version of her chain (her next Edit again would have edited his picture)."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        second = await published(world, await edit_again(world, first, "now at night"))
        bob = await member(world, "bob")
        # Bob clicks alice's first result: he edits that picture, not her newest version.
        bobs = await published(world, await edit_again(world, first, "add a hat", user=bob))
        assert (downloads(world, first), downloads(world, second)) == (2, 0)
        assert undo_button(bobs) is not None  # it steps back to the picture he started from
        # Alice's Edit again on her first result continues from her own newest version.
        await published(world, await edit_again(world, first, "add snow"))
        assert (downloads(world, second), downloads(world, bobs)) == (1, 0)
        recent = await world.services.history.recent(world.guild.id, bob.id)
        assert [e.version.message_id for e in recent] == [bobs.id]


async def test_another_members_edit_again_runs_on_their_own_default_model_not_the_requesters(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Alice's defaults say GPT Image 1 Mini; Bob's (the bot's) say GPT Image 1.5. His Edit again of her
    result ran on her default all the same; a model she picked on the command still carries over."""
    two = catalog(
        model("gpt-image-1.5", name="GPT Image 1.5", max_input_images=4),
        model("gpt-image-1-mini", name="GPT Image 1 Mini", max_input_images=4),
    )
    env = {"STARTING_CREDITS": "1000"}
    async with running_bot(fake_discord, openai, tmp_path, env=env, catalog=two) as world:
        saved = await world.fake.slash(
            world.user, "settings", channel=world.channel, options={"model": "gpt-image-1-mini"}
        )
        await world.fake.wait_until(lambda: saved.followups)
        defaulted = await published(world, await world.edit(PHOTO, size=SQUARE))
        picked = await published(world, await world.edit(PHOTO, size=SQUARE, model="gpt-image-1-mini"))
        assert [r["model"] for r in jobs(tmp_path)] == ["gpt-image-1-mini", "gpt-image-1-mini"]
        bob = await member(world, "bob")
        await published(world, await edit_again(world, defaulted, "add a hat", user=bob))
        await published(world, await edit_again(world, picked, "add a hat", user=bob))
        # Alice's own Edit again keeps her default.
        await published(world, await edit_again(world, defaulted, "add snow"))
        assert [(r["user_id"], r["model"]) for r in jobs(tmp_path)[2:]] == [
            (bob.id, "gpt-image-1.5"),
            (bob.id, "gpt-image-1-mini"),
            (world.user.id, "gpt-image-1-mini"),
        ]


async def test_undo_to_a_version_of_several_images_posts_all_of_them(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """It posted the first image only: the others of that version were lost to the chain."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        two = await published(world, await world.edit(PHOTO, count=2, size=SQUARE))
        after = await published(world, await edit_again(world, two, "now at night"))
        calls = openai.post_count
        await fake_discord.click(world.user, after, undo_button(after))
        [*_, restored] = await posted_in(world, world.channel.id, 3)
        assert [data for _, data in restored.files] == [data for _, data in two.files]
        assert len(restored.files) == 2 and openai.post_count == calls  # Undo costs nothing


async def test_an_undo_whose_previous_version_the_bot_can_no_longer_read_says_so(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """The bot lost Read Message History in the channel after the versions were posted: Discord answers
    403 for the earlier version, and the member is told it cannot be posted again, not "something went
    wrong"."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        second = await published(world, await edit_again(world, first, "now at night"))
        world.channel.overwrites[fake_discord.bot_user.id] = (1, 0, int(Permission.READ_MESSAGE_HISTORY))
        click = await fake_discord.click(world.user, second, undo_button(second))
        await fake_discord.wait_until(lambda: click.followups)
        assert click.followups[0].content == messages.PREVIOUS_VERSION_UNREADABLE


async def test_edit_image_on_a_members_message_offers_no_undo_and_on_a_result_an_undo_that_steps_back(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        posted = await fake_discord.post_message(
            world.user, world.channel, "my cat", attachments=[("cat.png", PHOTO)]
        )
        first = await published(world, await edit_image(world, posted, "make it blue"))
        assert undo_button(first) is None  # made from a member's message: the first version
        second = await published(world, await edit_image(world, first, "now at night"))
        assert undo_button(second) is not None  # made from a result: it continues that chain
        await fake_discord.click(world.user, second, undo_button(second))
        [*_, restored] = await posted_in(world, world.channel.id, 3)
        assert restored.files[0][1] == first.files[0][1]


async def test_a_late_result_of_edit_image_on_a_members_message_offers_no_undo(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """The same rule when the result is posted in the channel (the command's token had expired)."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        posted = await fake_discord.post_message(
            world.user, world.channel, "my cat", attachments=[("cat.png", PHOTO)]
        )
        openai.delay = 1.0  # the provider is still working when the token dies
        it = await edit_image(world, posted, "make it blue")
        await fake_discord.wait_until(lambda: openai.post_count == 1)
        fake_discord.expire_token(it)
        [late] = await posted_in(world, world.channel.id, 1)
        assert late.content.startswith(f"<@{world.user.id}> here is the edit you asked for")
        assert undo_button(late) is None


async def test_an_undo_repost_can_be_deleted_with_its_own_button(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """The repost's buttons carry the earlier job's id, whose own result is another message."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        second = await published(world, await edit_again(world, first, "now at night"))
        await fake_discord.click(world.user, second, undo_button(second))
        [*_, restored] = await posted_in(world, world.channel.id, 3)
        it = await fake_discord.click(world.user, restored, control(restored, "delete"))
        await fake_discord.wait_until(lambda: it.callbacks)
        await fake_discord.wait_until(lambda: restored.deleted)
        assert it.callbacks[0]["type"] == 6 and not first.deleted  # deferred, not refused


async def undo_recorded(world: World, repost: FakeMessage) -> None:
    """Wait until the bot has recorded `repost` in the member's history (its Undo is then done)."""
    for _ in range(200):
        recent = await world.services.history.recent(world.guild.id, world.user.id)
        if repost.id in [e.version.message_id for e in recent]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the repost was never recorded")


def restored_reposts(world: World) -> list[FakeMessage]:
    return [
        m
        for m in world.fake.channel_messages(world.channel)
        if any("restored" in (e.get("footer") or {}).get("text", "") for e in m.embeds)
    ]


def first_followup_lands_then(fake: FakeDiscord, how: str) -> list[int]:
    """The next followup lands, then Discord answers 500 (`how` "500"), or answers it after posting it
    without its embed ("bare 500"), or the connection is cut before the answer ("cut"); anything sent
    after that is handled normally. Returns the count of followups Discord received."""
    original, tries = fake._execute_webhook, [0]

    async def handler(call):  # type: ignore[no-untyped-def]
        tries[0] += 1
        if tries[0] > 1:
            return await original(call)
        if how == "bare 500":
            call.body = {**call.body_dict(), "embeds": []}
        response = await original(call)
        if how == "cut":
            call.request.transport.abort()
            return response
        raise discord_error(500, 0, "500: Internal Server Error")

    fake._execute_webhook = handler  # type: ignore[method-assign]
    return tries


async def chain_of_three(world: World) -> tuple[FakeMessage, FakeMessage, FakeMessage]:
    """`undo_chain`, and a third version made from the second."""
    first, second = await undo_chain(world)
    return first, second, await published(world, await edit_again(world, second, "add snow"))


async def undo_chain(world: World) -> tuple[FakeMessage, FakeMessage]:
    """A first result and the one Edit again made from it (whose Undo posts the first again)."""
    first = await published(world, await world.edit(PHOTO, size=SQUARE))
    return first, await published(world, await edit_again(world, first, "now at night"))


@pytest.mark.parametrize("how", ["500", "cut"])
async def test_an_undo_repost_that_landed_before_its_answer_was_lost_is_found_not_posted_again(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, how: str
):
    """Discord posted the repost followup, then answered 500 (discord.py would send it again by itself:
    a followup has no nonce) or the connection dropped (the error used to reach the member as "please
    try again", whose second click posted a copy). The bot sends it once, finds the copy that landed
    and records it."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        first, second = await undo_chain(world)
        tries = first_followup_lands_then(fake_discord, how)
        await fake_discord.click(world.user, second, undo_button(second))
        [restored] = await fake_discord.wait_until(lambda: restored_reposts(world))
        await undo_recorded(world, restored)
        assert tries[0] == 1 and len(restored_reposts(world)) == 1
        assert restored.files[0][1] == first.files[0][1]


async def test_an_undo_repost_that_landed_without_its_embed_is_found_by_its_file(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Should Discord drop the repost's embed (and with it the footer naming the job), the copy that
    landed before a 500 is still found, by its file, and not posted again."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        _, second = await undo_chain(world)
        tries = first_followup_lands_then(fake_discord, "bare 500")
        await fake_discord.click(world.user, second, undo_button(second))

        def bare() -> list[FakeMessage]:
            return [m for m in fake_discord.channel_messages(world.channel) if m.files and not m.embeds]

        [landed] = await fake_discord.wait_until(bare)
        await undo_recorded(world, landed)
        assert tries[0] == 1 and bare() == [landed]
        assert restored_reposts(world) == []  # nothing posted again


async def test_an_undo_repost_refused_with_a_503_is_posted_once_in_the_channel(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Discord answered the repost followup 503 without posting it: not found, so it is posted once as
    a channel message, and recorded."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        first, second = await undo_chain(world)
        followup = fake_discord.hold("POST", rf"/webhooks/{fake_discord.application_id}/[^/]+")
        await fake_discord.click(world.user, second, undo_button(second))
        await fake_discord.wait_until(lambda: followup.held)
        followup.drop()
        [restored] = await fake_discord.wait_until(lambda: restored_reposts(world))
        await undo_recorded(world, restored)
        assert len(restored_reposts(world)) == 1 and restored.webhook_id is None  # a channel message
        assert restored.files[0][1] == first.files[0][1]


async def test_a_moderators_undo_leaves_the_chain_the_members(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        *_, third = await chain_of_three(world)
        mod = await member(world, "mod", permissions=int(Permission.MANAGE_MESSAGES))
        await fake_discord.click(mod, third, undo_button(third))
        [*_, restored] = await posted_in(world, world.channel.id, 4)
        it = await fake_discord.click(world.user, restored, undo_button(restored))
        await fake_discord.wait_until(lambda: it.callbacks)
        [*_, again] = await posted_in(world, world.channel.id, 5)  # the member's Undo steps back once more
        assert again.id != restored.id
        recent = await world.services.history.recent(world.guild.id, world.user.id)
        assert restored.id in [e.version.message_id for e in recent]  # still in the member's /history


async def test_undo_on_a_repost_clicked_before_its_record_is_written_waits_for_it(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        second = await published(world, await edit_again(world, first, "now at night"))
        # Hold the repost's record back, as a slow database write would.
        history = world.services.history
        gate = asyncio.Event()
        record_repost = history.record_repost

        async def slow_record(*args: Any, **kwargs: Any) -> Any:
            await gate.wait()
            return await record_repost(*args, **kwargs)

        history.record_repost = slow_record  # type: ignore[method-assign]
        await fake_discord.click(world.user, second, undo_button(second))
        [*_, restored] = await posted_in(world, world.channel.id, 3)
        early = await fake_discord.click(world.user, restored, undo_button(restored))
        await fake_discord.wait_until(lambda: early.callbacks)  # acknowledged before it waits
        # The record takes longer than Discord's 3 s for a first answer.
        fake_discord.advance_time(4)
        gate.set()
        [answer] = await fake_discord.wait_until(lambda: early.followups)
        # Not "history has expired": the click waited for the record and was answered from it.
        assert early.callbacks[0]["type"] == 6 and answer.ephemeral
        assert answer.content == "This is the first version of this edit: there is nothing to undo."


async def test_a_chain_with_a_thread_continues_in_the_thread(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000, THREAD_RESULTS="on") as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        thread = await fake_discord.wait_until(lambda: first.thread)
        # Clicked on the first result (in the channel): the new version goes into its thread.
        await edit_again(world, first, "now at night")
        [second] = await posted_in(world, thread.id, 1)
        assert second.content.startswith(f"<@{world.user.id}> here is the edit you asked for")
        assert undo_button(second) is not None
        # Clicked inside the thread: the chain goes on there, from the newest version.
        await edit_again(world, second, "add snow")
        [_, third] = await posted_in(world, thread.id, 2)
        assert downloads(world, second) == 1
        await fake_discord.click(world.user, third, undo_button(third))  # at once: recorded on demand
        [*_, restored] = await posted_in(world, thread.id, 3)
        assert restored.files[0][1] == second.files[0][1]
        assert len(await posted_in(world, world.channel.id, 1)) == 1  # the channel holds only the first


def threads_world(fake: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, without: Permission) -> Any:
    """A bot opening a thread under each result, missing the permission `without` in the channel."""
    perms = DEFAULT_BOT_PERMISSIONS & ~int(without)
    env = {"STARTING_CREDITS": "1000", "THREAD_RESULTS": "on"}
    return running_bot(fake, openai, tmp_path, env=env, catalog=CATALOG, bot_permissions=perms)


async def test_no_thread_is_opened_where_the_bot_may_not_post_in_it(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Opened all the same, the chain's next version was refused in it and went to the member's DMs."""
    without = Permission.SEND_MESSAGES_IN_THREADS
    async with threads_world(fake_discord, openai, tmp_path, without) as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        await published(world, await edit_again(world, first, "now at night"))
        assert first.thread is None
        assert [r["delivered_via"] for r in jobs(tmp_path)] == ["interaction", "interaction"]
        assert len(await posted_in(world, world.channel.id, 2)) == 2


async def test_a_thread_is_opened_in_a_channel_where_the_bot_may_post_only_in_threads(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Without Send Messages in the channel (results come as interaction follow-ups, which need none)
    but with the thread rights, Discord lets the bot open and post in a thread. discord.py's text
    channel resolution drops Attach Files with Send Messages, and no thread was opened."""
    async with threads_world(fake_discord, openai, tmp_path, Permission.SEND_MESSAGES) as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        await fake_discord.wait_until(lambda: first.thread)


async def test_a_chain_whose_thread_the_bot_may_no_longer_post_in_goes_on_in_the_channel(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000, THREAD_RESULTS="on") as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        await fake_discord.wait_until(lambda: first.thread)
        await world.channel.set_permissions(
            fake_discord.bot_user, deny=int(Permission.SEND_MESSAGES_IN_THREADS)
        )
        art = world.bot.get_channel(world.channel.id)
        assert isinstance(art, discord.TextChannel)
        await fake_discord.wait_until(lambda: not art.permissions_for(art.guild.me).send_messages_in_threads)
        await published(world, await edit_again(world, first, "now at night"))
        assert [r["delivered_via"] for r in jobs(tmp_path)] == ["interaction", "interaction"]
        assert len(await posted_in(world, world.channel.id, 2)) == 2


async def posted_under_the_gone_thread(world: World) -> None:
    """The chain's second version is posted in the channel its deleted thread was under, where the
    member clicked, and charged there: not sent to their DMs."""
    data_dir = world.services.settings.data_dir
    settled = await world.fake.wait_until(
        lambda: len(rows := jobs(data_dir)) == 2 and rows[1]["state"] in ("delivered", "failed") and rows[1]
    )
    assert (settled["delivered_via"], settled["result_channel_id"]) == ("channel", world.channel.id)
    [_, second] = await posted_in(world, world.channel.id, 2)
    assert second.content.startswith(f"<@{world.user.id}> here is the edit you asked for")
    assert not results(world.fake.channel_messages(world.fake.dm_channel(world.user)))


async def test_a_chains_version_whose_thread_is_deleted_on_its_way_is_posted_in_the_channel(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """The thread goes (and the bot hears of it) while the next version is on its way there."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000, THREAD_RESULTS="on") as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        thread = await fake_discord.wait_until(lambda: first.thread)
        into_thread = fake_discord.hold("POST", rf"/channels/{thread.id}/messages")
        await edit_again(world, first, "now at night")
        await fake_discord.wait_until(lambda: into_thread.held)
        await fake_discord.delete_channel(thread)
        await fake_discord.wait_until(lambda: world.bot.get_channel(thread.id) is None)
        into_thread.release()
        await posted_under_the_gone_thread(world)


async def test_a_chains_version_whose_thread_went_unheard_is_posted_in_the_channel(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """The thread was deleted while the bot was not listening (a gateway gap): the thread it still
    knows is chosen for the next version, and Discord refuses the post as an unknown channel."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000, THREAD_RESULTS="on") as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        thread = await fake_discord.wait_until(lambda: first.thread)
        await fake_discord.wait_until(lambda: world.bot.get_channel(thread.id) is not None)
        thread.deleted = True  # no THREAD_DELETE reaches the bot
        await edit_again(world, first, "now at night")
        await posted_under_the_gone_thread(world)


async def test_a_chains_version_whose_thread_is_deleted_after_its_first_version_expired_goes_to_the_channel(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """A chain kept going in its thread past RESULT_RETENTION_HOURS: its first version (the message the
    thread was opened on) is no longer kept, its later ones are. The thread goes while the next version
    is on its way: the job row of the first result still says which channel the thread was under, and
    the version is posted there, not sent by DM."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000, THREAD_RESULTS="on") as world:
        first = await published(world, await world.edit(PHOTO, size=SQUARE))
        thread = await fake_discord.wait_until(lambda: first.thread)
        await edit_again(world, first, "now at night")
        [second] = await posted_in(world, thread.id, 1)
        await fake_discord.wait_until(lambda: [j["state"] for j in jobs(tmp_path)] == ["delivered"] * 2)
        await world.services.history.flush()
        db = world.services.storage.db
        # The first version's retention ran out (the later one, posted within it, is kept).
        await db.write_one(
            "UPDATE edit_versions SET expires_at = ? WHERE message_id = ?", (db.timestamp(), first.id)
        )
        assert await world.services.storage.history.get_version(first.id) is None
        assert await world.services.storage.history.get_version(second.id) is not None

        followup = fake_discord.hold("POST", rf"/webhooks/{fake_discord.application_id}/[^/]+")
        await edit_again(world, second, "add snow")  # clicked in the thread: the next version goes there
        await fake_discord.wait_until(lambda: followup.held)
        await fake_discord.delete_channel(thread)
        await fake_discord.wait_until(lambda: world.bot.get_channel(thread.id) is None)
        followup.release()
        settled = await fake_discord.wait_until(
            lambda: (
                len(rows := jobs(tmp_path)) == 3 and rows[2]["state"] in ("delivered", "failed") and rows[2]
            )
        )
        assert (settled["delivered_via"], settled["result_channel_id"]) == ("channel", world.channel.id)
        assert len(await posted_in(world, world.channel.id, 2)) == 2
        assert not results(world.fake.channel_messages(world.fake.dm_channel(world.user)))


async def opened_again(world: World, result: FakeMessage) -> FakeInteraction:
    click = await world.fake.click(world.user, result, control(result, "again"))
    await world.fake.wait_until(lambda: click.modal)
    return click


async def submit_again_sent(
    world: World, click: FakeInteraction, image: str, prompt: str = "at night"
) -> FakeInteraction:
    """The Edit again form sent with `image` typed in its "Which image?" field."""
    return await world.fake.submit_modal(world.user, click, fields={"prompt": prompt, "image": image})


async def submit_again(world: World, click: FakeInteraction, image: str) -> str:
    """The same, and its private answer."""
    sent = await submit_again_sent(world, click, image)
    return str(await world.fake.wait_until(lambda: sent.original_edits and sent.original_edits[-1]))


async def test_edit_again_on_a_result_of_several_images_edits_the_one_picked(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """A result of two images: the form asks which (empty: the first); the second is downloaded and
    edited when picked; a number the result does not have is refused privately, free."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        two = await published(world, await world.edit(PHOTO, count=2, size=SQUARE))
        first, second = two.attachments

        def fetched(attachment: Any) -> int:
            return sum(1 for r in world.fake.requests if r.method == "GET" and f"/{attachment.id}/" in r.path)

        click = await world.fake.click(world.user, two, control(two, "again"))
        form = await world.fake.wait_until(lambda: click.modal)
        assert "Which image? (1 to 2; empty: 1)" in str(form)
        calls = openai.post_count
        for typed in ("3", "²"):  # not an image of it; a digit that is no number
            said = await submit_again(world, click, typed)
            assert said == messages.which_image(2) and openai.post_count == calls
            click = await opened_again(world, two)
        again = await world.fake.click(world.user, two, control(two, "again"))
        await world.fake.wait_until(lambda: again.modal)
        picked = await world.fake.submit_modal(world.user, again, fields={"prompt": "at night", "image": "2"})
        assert (await world.finished(picked)).startswith("Done")
        assert (fetched(first), fetched(second)) == (0, 1)
        # The chain's latest version now has one image: a number picked on the form opened from the
        # two-image version is not held against it; the latest is continued from.
        [latest] = results(picked.followups)
        more = await opened_again(world, two)
        # (Another prompt: the same one on the same result within seconds is a double click.)
        sent = await submit_again_sent(world, more, "2", prompt="add snow")
        assert (await world.finished(sent)).startswith("Done")
        [latest_image] = latest.attachments
        assert fetched(latest_image) == 1 and fetched(second) == 1


async def test_history_lists_the_members_last_edits_with_links(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        empty = await admin(world, world.user, "history")
        assert empty.ephemeral and empty.content.startswith("You have no edits here from the last 72 hours")
        first = await published(world, await world.edit(PHOTO, prompt="a *watercolour* cat", size=SQUARE))
        second = await published(world, await edit_again(world, first, "now at night"))
        await world.services.history.flush()
        answer = await admin(world, world.user, "history")
        assert answer.ephemeral
        lines = answer.embeds[0]["description"].split("\n")
        base = f"https://discord.com/channels/{world.guild.id}/{world.channel.id}"
        assert lines[0].startswith("1. <t:") and lines[0].endswith(
            f"“now at night” (continues an edit) — {base}/{second.id}"
        )
        assert lines[1].endswith(f"“a \\*watercolour\\* cat” — {base}/{first.id}")
        assert answer.embeds[0]["footer"]["text"] == (
            "Links are kept 72 hours; Retouch keeps no copies of your images."
        )
        bob = await member(world, "bob")
        assert (await admin(world, bob, "history")).content.startswith("You have no edits here")
        # A prompt goes with the images (INPUT_RETENTION_HOURS, shorter than the links are kept): the
        # line says so rather than showing empty quotes.
        await world.services.storage.jobs.forget_job_details(first.embeds[0]["footer"]["text"].split()[1])
        lines = (await admin(world, world.user, "history")).embeds[0]["description"].split("\n")
        assert lines[1].endswith(f" {messages.PROMPT_NOT_KEPT} — {base}/{first.id}")
        # A result deleted with its Delete button is no longer listed: its link would lead nowhere.
        await fake_discord.click(world.user, second, control(second, "delete"))
        await fake_discord.wait_until(lambda: second.deleted)

        async def marked() -> bool:  # recorded just after the message goes
            version = await world.services.storage.history.get_version(second.id)
            return version is not None and version.deleted_at is not None

        await eventually(marked)
        lines = (await admin(world, world.user, "history")).embeds[0]["description"].split("\n")
        assert len(lines) == 1 and lines[0].endswith(f"— {base}/{first.id}")


async def test_a_result_whose_private_thread_went_unheard_goes_to_dms_not_the_channel_above(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Only a chain's thread gives way to its channel: an edit run in a member's own private thread
    (a ticket, a mods-only thread) deleted unheard is sent by DM, never shown in the public parent."""
    async with member_world(fake_discord, openai, tmp_path, credits=1000) as world:
        thread = await fake_discord._open_thread(
            world.channel, fake_discord._snowflake(), CHANNEL_PRIVATE_THREAD, "alice's own", 1440, 0
        )
        await fake_discord.wait_until(lambda: isinstance(world.bot.get_channel(thread.id), discord.Thread))
        thread.deleted = True  # no THREAD_DELETE reaches the bot
        job = JobInfo(
            job_id="a" * 16,
            guild_id=world.guild.id,
            user_id=world.user.id,
            channel_id=thread.id,
            created_at=dt.datetime.now(dt.UTC),
        )
        files = (ResultFile("retouch_a_1.png", noisy_png(32), "png"),)
        delivered = await DiscordDelivery(world.bot).deliver(job, outcome(*files))
        assert delivered.via == "dm"
        bot_id = fake_discord.bot_user.id
        assert not [m for m in fake_discord.channel_messages(world.channel) if m.author.id == bot_id]
