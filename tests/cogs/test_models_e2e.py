"""Live models end to end: one bot walked across a shutdown date, a model that vanishes mid-run, the
options that follow the model and OpenAI's model list — through the real discord.py stack against the
fake Discord and the fake OpenAI, with a calendar the test moves."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot import messages
from bot.catalog import Catalog
from cogs import _ui as ui
from tests.catalogs import WITH_AUTO, catalog, model, route, tiered
from tests.cogs.test_mask_e2e import click, mask_command, public_results, shown
from tests.cogs.test_mask_e2e import control as mask_control
from tests.cogs.test_policy_e2e import embed_text, fields, reply
from tests.durable import control, jobs, results
from tests.fakes.discord import FakeDiscord, FakeInteraction, FakeUser, Permission
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.harness import World, running_bot

DATA = Path(__file__).resolve().parents[1] / "data"
PHOTO = (DATA / "chelsea.png").read_bytes()
SHUTDOWN = dt.date(2027, 2, 10)


def sunset_catalog() -> Catalog:
    """GPT Image 2 (shut down at OpenAI on SHUTDOWN, replaced by 2.6 Sunburst) before 2.6 Sunburst,
    so the bot's default is GPT Image 2 until it dies. Flat list prices: charges are exact."""
    return catalog(
        model(
            "gpt-image-2",
            name="GPT Image 2",
            qualities=WITH_AUTO,
            free_sizes=True,
            max_input_images=16,
            mask=True,
            price=0.01,
            replacement="gpt-image-2.6-sunburst",
            routes=[route("openai", shutdown=SHUTDOWN, free_sizes=True)],
        ),
        model(
            "gpt-image-2.6-sunburst",
            name="GPT Image 2.6 Sunburst",
            qualities=["low", "medium", "high", "xhigh", "max", "auto"],
            free_sizes=True,
            max_input_images=16,
            mask=True,
            price=0.01,
            routes=[route("openai", free_sizes=True)],
        ),
    )


def orphan_catalog() -> Catalog:
    """GPT Image 2 (the bot's default until it is shut down on SHUTDOWN, with no replacement named)
    before 2.6 Sunburst, the default from that day on."""
    return catalog(
        model(
            "gpt-image-2",
            name="GPT Image 2",
            qualities=WITH_AUTO,
            price=0.01,
            routes=[route("openai", shutdown=SHUTDOWN)],
        ),
        model("gpt-image-2.6-sunburst", name="GPT Image 2.6 Sunburst", qualities=WITH_AUTO, price=0.01),
    )


class Calendar:
    def __init__(self, day: dt.date) -> None:
        self.day = day

    def __call__(self) -> dt.date:
        return self.day


@pytest.fixture
def calendar() -> Calendar:
    return Calendar(dt.date(2027, 1, 5))


@pytest.fixture
async def world(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, calendar: Calendar
) -> AsyncIterator[World]:
    async with running_bot(
        fake_discord, openai, tmp_path, catalog=sunset_catalog(), today=calendar, audit=True
    ) as w:
        yield w


def result_of(it: FakeInteraction) -> dict[str, list[str]]:
    """The public result's embed fields (a name may repeat: notes)."""
    [result] = [m for m in it.followups if not m.ephemeral]
    fields: dict[str, list[str]] = {}
    for f in result.embeds[0]["fields"]:
        fields.setdefault(f["name"], []).append(f["value"])
    return fields


def models_sent(openai: FakeOpenAI) -> list[str]:
    return [r.fields["model"] for r in openai.requests if r.path.endswith("/images/edits")]


async def audit_lines(world: World) -> list[str]:
    return [m.content or "" for m in world.fake.channel_messages(world.audit_channel)]


async def test_one_bot_walks_across_a_shutdown_date_and_moves_its_members(world: World, calendar: Calendar):
    settings = await world.fake.slash(
        world.user, "settings", channel=world.channel, options={"model": "gpt-image-2"}
    )
    await world.fake.wait_until(lambda: settings.followups)
    before = await world.edit(PHOTO, quality="low", size="1024x1024")
    assert (await world.finished(before)).startswith("Done")
    assert result_of(before)["Model"] == ["GPT Image 2"]

    calendar.day = SHUTDOWN  # OpenAI's shutdown day for GPT Image 2
    after = await world.edit(PHOTO, quality="low", size="1024x1024")
    assert (await world.finished(after)).startswith("Done")
    fields = result_of(after)
    assert fields["Model"] == ["GPT Image 2.6 Sunburst"]
    assert any("GPT Image 2 is no longer available" in n and "2.6 Sunburst" in n for n in fields["Note"])
    assert models_sent(world.openai) == ["gpt-image-2", "gpt-image-2.6-sunburst"]
    # The stored default moved once: the next edit carries no notice.
    row = await world.services.storage.settings.user_settings_row(world.user.id)
    assert row is not None and row["model"] == "gpt-image-2.6-sunburst"
    again = await world.edit(PHOTO, quality="low", size="1024x1024")
    await world.finished(again)
    assert "Note" not in result_of(again)
    lines = await world.fake.wait_until(
        lambda: [
            m.content
            for m in world.fake.channel_messages(world.audit_channel)
            if "retired" in (m.content or "")
        ]
    )
    assert "gpt-image-2" in lines[0]


async def test_a_moved_default_is_told_with_the_first_accepted_edit_not_a_refused_one_or_a_picker(
    world: World, calendar: Calendar
):
    """The one-time notice that a member's default moved is used up only by a job that is accepted:
    not by an edit refused for its file, nor by the /mask grid picker's provisional check."""
    settings = await world.fake.slash(
        world.user, "settings", channel=world.channel, options={"model": "gpt-image-2"}
    )
    await world.fake.wait_until(lambda: settings.followups)
    calendar.day = SHUTDOWN  # the stored default moves at the next job's check
    refused = await world.edit(b"%PDF-1.7 definitely not a picture")
    await world.fake.wait_until(lambda: refused.original_edits and "PDF" in refused.original_edits[-1])

    it = await mask_command(world)
    picker = await shown(world, it, "cells")
    await world.fake.select(world.user, picker, mask_control(picker, "cells"), ["1"])
    ready = mask_control(picker, "next")
    await world.fake.wait_until(lambda: not picker.find_component(ready).get("disabled"))
    preview = await shown(world, await click(world, picker, "next"), "run")
    run = await click(world, preview, "run")
    assert (await world.finished(run)).startswith("Done")
    [result] = public_results(run)
    notes = [f["value"] for f in result.embeds[0]["fields"] if f["name"] == "Note"]
    assert any("your default is now GPT Image 2.6 Sunburst" in n for n in notes)

    again = await world.edit(PHOTO, quality="low", size="1024x1024")
    await world.finished(again)
    assert not any("your default is now" in n for n in result_of(again).get("Note", []))


async def test_a_model_gone_mid_run_costs_the_default_user_one_extra_call_and_nothing_more(world: World):
    world.openai.retire("gpt-image-2")  # shut down at OpenAI without notice: 404 model_not_found
    it = await world.edit(PHOTO, quality="low", size="1024x1024")
    final = await world.finished(it)
    assert final.startswith("Done — 10 credits charged")
    fields = result_of(it)
    assert fields["Model"] == ["GPT Image 2.6 Sunburst"]
    assert any("GPT Image 2 was shut down" in n for n in fields["Note"])
    assert models_sent(world.openai) == ["gpt-image-2", "gpt-image-2.6-sunburst"]
    account = await world.services.storage.ledger.get_account(world.guild.id, world.user.id)
    assert account is not None and (account.balance, account.held) == (100000 - 10, 0)
    # Persisted and announced; the next job never asks the dead route again.
    rows = await world.services.storage.settings.route_status_rows()
    assert [(r["provider"], r["model"]) for r in rows if r["gone_at"]] == [("openai", "gpt-image-2")]
    await world.finished(await world.edit(PHOTO, quality="low", size="1024x1024"))
    assert models_sent(world.openai).count("gpt-image-2") == 1
    await world.fake.wait_until(
        lambda: any(
            "model gone" in line
            for line in [m.content or "" for m in world.fake.channel_messages(world.audit_channel)]
        )
    )


async def test_the_operator_lists_routes_and_brings_a_retired_one_back_by_hand(world: World):
    """`/owner routes` says which route a "model gone" answer retired, and `/owner revive` brings it
    back: stored, posted to the audit channel with who did it, and used by the next edit."""
    world.openai.retire("gpt-image-2")
    await world.finished(await world.edit(PHOTO, quality="low", size="1024x1024"))
    admin = world.fake.create_user("admin")  # Discord shows /owner to server Administrators
    await world.guild.add_member(admin, permissions=int(Permission.ADMINISTRATOR))
    refused = await reply(world, admin, "owner routes")
    assert refused.content == messages.NOT_OPERATOR and not refused.embeds

    shown = await reply(world, world.owner, "owner routes")
    lines = shown.embeds[0]["description"].splitlines()
    assert lines[0].startswith('❌ `gpt-image-2` on **openai**: answered "model gone" (ModelGone status=404')
    assert "; tried again from " in lines[0]  # GONE_ROUTE_RETRY_HOURS: 24 by default
    assert lines[1:] == ["✅ `gpt-image-2.6-sunburst` on **openai**: live"]

    async def offered(actor: FakeUser, focused: str, value: str, **typed: str) -> list[str]:
        answer = await world.fake.autocomplete(
            actor, "owner revive", channel=world.channel, focused=focused, value=value, options=typed
        )
        return [c["value"] for c in answer]

    assert await offered(world.owner, "model", "IMAGE") == ["gpt-image-2"]  # the retired ones only
    assert await offered(world.owner, "provider", "", model="gpt-image-2") == ["openai"]
    assert await offered(world.owner, "provider", "", model="gpt-image-2.6-sunburst") == []
    assert await offered(admin, "model", "") == []  # the operator's only

    world.openai.retired.discard("gpt-image-2")  # the model is back at OpenAI (or never left)
    revived = await reply(world, world.owner, "owner revive", model="gpt-image-2", provider="openai")
    assert revived.content == "`gpt-image-2` on `openai` is back. Its route is live again for the next edit."
    await world.fake.wait_until(
        lambda: (
            f"♻️ gpt-image-2 on openai was brought back by <@{world.owner.id}>."
            in [m.content for m in world.fake.channel_messages(world.audit_channel)]
        )
    )
    rows = await world.services.storage.settings.route_status_rows()
    assert [r["gone_at"] for r in rows if r["model"] == "gpt-image-2"] == [None]
    it = await world.edit(PHOTO, quality="low", size="1024x1024")
    assert (await world.finished(it)).startswith("Done")
    assert result_of(it)["Model"] == ["GPT Image 2"] and models_sent(world.openai)[-1] == "gpt-image-2"

    again = await reply(world, world.owner, "owner revive", model="gpt-image-2", provider="openai")
    assert again.content == messages.route_not_retired("gpt-image-2", "openai")


async def test_a_model_gone_mid_run_moves_only_to_a_model_the_server_allows(world: World):
    """The server allows only GPT Image 2: when it vanishes mid-run, its replacement is not one the
    server allows, so the job is refused (free), not moved there."""
    await world.services.storage.settings.update_guild_policy(
        world.guild.id, {"models": "gpt-image-2"}, actor_id=world.owner.id
    )
    world.openai.retire("gpt-image-2")
    it = await world.edit(PHOTO, quality="low", size="1024x1024")
    final = await world.finished(it)
    assert "GPT Image 2 was shut down" in final and "not charged" in final
    assert models_sent(world.openai) == ["gpt-image-2"]
    account = await world.services.storage.ledger.get_account(world.guild.id, world.user.id)
    assert account is not None and (account.balance, account.held) == (100000, 0)


async def test_a_member_who_picked_the_vanished_model_is_told_and_offered_the_replacement(world: World):
    world.openai.retire("gpt-image-2")
    it = await world.edit(PHOTO, quality="low", size="1024x1024", model="gpt-image-2")
    final = await world.finished(it)
    assert "GPT Image 2 was shut down" in final and "gpt-image-2.6-sunburst" in final
    assert "not charged" in final
    assert not [m for m in it.followups if not m.ephemeral]
    assert models_sent(world.openai) == ["gpt-image-2"]
    account = await world.services.storage.ledger.get_account(world.guild.id, world.user.id)
    assert account is not None and (account.balance, account.held) == (100000, 0)


async def test_edit_again_on_a_result_whose_default_model_was_shut_down_uses_the_new_default(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, calendar: Calendar
):
    """The earlier job only inherited its model: Edit again (whose form has no model option) moves to
    the new default, like Retry, instead of refusing a pick the member never made."""
    async with running_bot(fake_discord, openai, tmp_path, catalog=orphan_catalog(), today=calendar) as world:
        first = await world.edit(PHOTO, quality="low", size="1024x1024")
        await world.finished(first)
        [result] = results(first.followups)
        calendar.day = SHUTDOWN
        click = await world.fake.click(world.user, result, control(result, "again"))
        await world.fake.wait_until(lambda: click.modal is not None)
        again = await world.fake.submit_modal(world.user, click, fields={"prompt": "now at night"})
        assert (await world.finished(again)).startswith("Done")
        fields = result_of(again)
        assert fields["Model"] == ["GPT Image 2.6 Sunburst"]
        assert any("GPT Image 2 is no longer available" in n for n in fields["Note"])
        assert models_sent(openai) == ["gpt-image-2", "gpt-image-2.6-sunburst"]


async def test_a_shut_down_model_is_refused_as_a_members_or_servers_default_naming_its_replacement(
    world: World, calendar: Calendar
):
    calendar.day = SHUTDOWN
    mine = await reply(world, world.user, "settings", model="gpt-image-2")
    server = await reply(world, world.owner, "admin policy defaults", model="gpt-image-2")
    for refused in (mine, server):
        assert refused.content == (
            "GPT Image 2 is no longer available from the image services this bot uses, so nothing was "
            "changed. Its replacement is **GPT Image 2.6 Sunburst**: pick `gpt-image-2.6-sunburst` instead."
        )
    assert await world.services.storage.settings.user_settings_row(world.user.id) is None
    assert (await world.services.policy.guild_policy(world.guild.id)).default_model is None


async def test_a_shut_down_model_is_refused_in_the_models_a_server_or_a_tier_allows(
    world: World, calendar: Calendar
):
    """Allowed alone, a shut-down model would leave members no model they may use."""
    calendar.day = SHUTDOWN
    vip = await world.guild.create_role("vip")
    limits = await reply(world, world.owner, "admin policy limits", models="gpt-image-2")
    tier = await reply(
        world, world.owner, "admin tier set", role=vip, models="gpt-image-2.6-sunburst gpt-image-2"
    )
    for refused in (limits, tier):
        assert "GPT Image 2 is no longer available" in refused.content
        assert "pick `gpt-image-2.6-sunburst` instead" in refused.content
    policy = await world.services.policy.guild_policy(world.guild.id)
    assert policy.models is None and policy.tiers == ()
    saved = await reply(world, world.owner, "admin policy limits", models="gpt-image-2.6-sunburst")
    assert saved.content == "Saved."


async def test_options_still_answer_when_a_shutdown_leaves_members_no_allowed_model(
    world: World, calendar: Calendar
):
    """Allowed alone before its shutdown, the model's end locks members out: the options offer nothing
    (instead of never answering) and the command says why."""
    await reply(world, world.owner, "admin policy limits", models="gpt-image-2")
    calendar.day = SHUTDOWN
    for focused in ("quality", "size"):
        offered = await world.fake.autocomplete(
            world.user, "edit", channel=world.channel, focused=focused, value=""
        )
        assert offered == []
    refused = await reply(world, world.user, "quality")
    assert refused.content == messages.NO_ALLOWED_MODEL


async def test_a_shut_down_model_without_a_replacement_is_refused_too(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    today = Calendar(SHUTDOWN)
    async with running_bot(fake_discord, openai, tmp_path, catalog=orphan_catalog(), today=today) as world:
        refused = await reply(world, world.user, "settings", model="gpt-image-2")
        assert "GPT Image 2 is no longer available" in refused.content
        assert "Pick another model from the list" in refused.content
        assert await world.services.storage.settings.user_settings_row(world.user.id) is None


async def test_settings_show_the_model_edits_use_once_the_saved_one_is_shut_down(
    world: World, calendar: Calendar
):
    saved = await reply(world, world.user, "settings", model="gpt-image-2")
    assert fields(saved)["Model"] == "**GPT Image 2**\nset by you"
    calendar.day = SHUTDOWN
    shown = await reply(world, world.user, "settings")
    assert fields(shown)["Model"] == "**GPT Image 2.6 Sunburst**\nset by you"


async def test_quality_and_size_options_follow_the_chosen_model(world: World):
    qualities = await world.fake.autocomplete(
        world.user,
        "edit",
        channel=world.channel,
        focused="quality",
        value="",
        options={"model": "gpt-image-2.6-sunburst"},
    )
    assert [c["value"] for c in qualities] == ["low", "medium", "high", "xhigh", "max", "auto"]
    assert "credits" in qualities[0]["name"]
    default_qualities = await world.fake.autocomplete(
        world.user, "edit", channel=world.channel, focused="quality", value=""
    )
    assert [c["value"] for c in default_qualities] == ["low", "medium", "high", "auto"]
    custom = await world.fake.autocomplete(
        world.user, "edit", channel=world.channel, focused="size", value="2048x1152"
    )
    assert custom[0]["value"] == "2048x1152"
    # A value the model cannot take is refused, naming what it can; nothing is spent.
    it = await world.edit(PHOTO, quality="xhigh")
    text = await world.fake.wait_until(lambda: it.original_edits and it.original_edits[-1])
    assert "does not offer quality `xhigh`" in text and "low, medium, high, auto" in text
    it = await world.edit(PHOTO, size="2050x1152")
    text = await world.fake.wait_until(lambda: it.original_edits and it.original_edits[-1])
    assert "multiples of 16" in text
    assert world.openai.post_count == 0


async def test_quality_options_answer_in_time_when_the_members_defaults_are_slow_to_read(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """Discord drops an autocomplete answered after 3 s, and one cannot be deferred: a database that
    holds the member's defaults too long gives the bot's default model's options, not none."""
    await reply(world, world.user, "settings", model="gpt-image-2.6-sunburst")
    asked = {"focused": "quality", "value": "", "channel": world.channel}
    mine = await world.fake.autocomplete(world.user, "edit", **asked)  # type: ignore[arg-type]
    assert [c["value"] for c in mine] == ["low", "medium", "high", "xhigh", "max", "auto"]
    monkeypatch.setattr(ui, "AUTOCOMPLETE_READ_SECONDS", 0.2)
    gate, read = asyncio.Event(), world.services.policy.user_settings

    async def slow_read(user_id: int) -> Any:
        await gate.wait()
        return await read(user_id)

    monkeypatch.setattr(world.services.policy, "user_settings", slow_read)
    told = await world.fake.autocomplete(world.user, "edit", timeout=2.0, **asked)  # type: ignore[arg-type]
    assert [c["value"] for c in told] == ["low", "medium", "high", "auto"]  # the bot's default model
    gate.set()
    await world.fake.wait_until(lambda: not ui._late_reads)  # the late read finished, not cut off


def looks_catalog() -> Catalog:
    """2.6 Sunburst (free sizes, every background) before 1.5 (its listed sizes; opaque only here)."""
    return catalog(
        model(
            "gpt-image-2.6-sunburst",
            name="GPT Image 2.6 Sunburst",
            qualities=WITH_AUTO,
            free_sizes=True,
            price=0.01,
            routes=[route("openai", free_sizes=True)],
        ),
        model(
            "gpt-image-1.5",
            name="GPT Image 1.5",
            qualities=WITH_AUTO,
            price=0.01,
            routes=[route("openai", backgrounds=["auto", "opaque"])],
        ),
    )


async def test_settings_refuse_a_size_or_background_the_members_model_cannot_make(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Saved, such a default made every later /edit fail until the member found /settings reset."""
    async with running_bot(fake_discord, openai, tmp_path, catalog=looks_catalog()) as world:
        await reply(world, world.user, "settings", model="gpt-image-1.5")
        refused = await reply(world, world.user, "settings", size="2048x2048")
        assert refused.content == (
            "GPT Image 1.5 does not offer size `2048x2048`. "
            "Pick one of: auto, 1024x1024, 1536x1024, 1024x1536."
        )
        refused = await reply(world, world.user, "settings", background="transparent", format="png")
        assert refused.content == (
            "GPT Image 1.5 cannot make background `transparent` here. Pick one of: auto, opaque."
        )
        row = await world.services.storage.settings.user_settings_row(world.user.id)
        assert row is not None and (row["size"], row["background"], row["output_format"]) == (
            None,
            None,
            None,
        )


async def test_a_size_set_with_a_model_reset_is_checked_against_the_model_after_the_reset(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """1.5 saved, then `reset:model size:2048x2048`: the member's edits then use the bot's 2.6
    Sunburst, which makes that size. Checked against 1.5, it was refused (and the reset not made)."""
    async with running_bot(fake_discord, openai, tmp_path, catalog=looks_catalog()) as world:
        await reply(world, world.user, "settings", model="gpt-image-1.5")
        answer = await reply(world, world.user, "settings", reset="model", size="2048x2048")
        assert "does not offer size" not in (answer.content or "")
        row = await world.services.storage.settings.user_settings_row(world.user.id)
        assert row is not None and (row["size"], row["model"]) == ("2048x2048", None)
        # The other way round: the size is refused for the model being set in the same command.
        refused = await reply(world, world.user, "settings", model="gpt-image-1.5", size="2048x1152")
        assert "GPT Image 1.5 does not offer size `2048x1152`" in refused.content


async def test_a_saved_size_and_background_another_model_cannot_make_fall_back_to_auto_with_a_note(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Set for 2.6, then the member moves to 1.5: their edits run at auto, saying so, not refused."""
    async with running_bot(fake_discord, openai, tmp_path, catalog=looks_catalog()) as world:
        saved = await reply(
            world, world.user, "settings", size="2048x2048", background="transparent", format="png"
        )
        assert fields(saved)["Size"].startswith("**2048x2048**")
        await reply(world, world.user, "settings", model="gpt-image-1.5")
        it = await world.edit(PHOTO)
        assert (await world.finished(it)).startswith("Done")
        [sent] = [r for r in openai.requests if r.path.endswith("/images/edits")]
        assert (sent.fields["model"], sent.fields["size"], sent.fields["background"]) == (
            "gpt-image-1.5",
            "auto",
            "auto",
        )
        notes = " ".join(result_of(it).get("Note", []))
        assert "GPT Image 1.5 cannot make size `2048x2048`, so Retouch uses auto" in notes
        assert "GPT Image 1.5 cannot make background `transparent`, so Retouch uses auto" in notes
        # Typed on the command, the same size is refused by name, free.
        typed = await world.edit(PHOTO, size="2048x2048")
        text = await world.fake.wait_until(lambda: typed.original_edits and typed.original_edits[-1])
        assert "does not offer size `2048x2048`" in text and openai.post_count == 1


def png_only_catalog() -> Catalog:
    """2.6 Sunburst (every format) before 1.5, whose only route here makes PNG and WebP."""
    return catalog(
        model("gpt-image-2.6-sunburst", name="GPT Image 2.6 Sunburst", qualities=WITH_AUTO, price=0.01),
        model(
            "gpt-image-1.5",
            name="GPT Image 1.5",
            qualities=WITH_AUTO,
            price=0.01,
            routes=[route("openai", output_formats=["png", "webp"])],
        ),
    )


async def test_settings_refuse_a_format_the_members_model_cannot_make(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Saved, such a default made every edit fail on `format`, which no edit form can change."""
    async with running_bot(fake_discord, openai, tmp_path, catalog=png_only_catalog()) as world:
        await reply(world, world.user, "settings", model="gpt-image-1.5")
        refused = await reply(world, world.user, "settings", format="jpeg")
        assert refused.content == "GPT Image 1.5 cannot make format `jpeg` here. Pick one of: png, webp."
        row = await world.services.storage.settings.user_settings_row(world.user.id)
        assert row is not None and row["output_format"] is None


async def test_a_saved_format_another_model_cannot_make_falls_back_to_one_it_makes_with_a_note(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """JPEG set for 2.6 Sunburst, then the member moves to 1.5: their edits come as PNG, saying so."""
    async with running_bot(fake_discord, openai, tmp_path, catalog=png_only_catalog()) as world:
        await reply(world, world.user, "settings", format="jpeg")
        await reply(world, world.user, "settings", model="gpt-image-1.5")
        it = await world.edit(PHOTO)
        assert (await world.finished(it)).startswith("Done")
        [sent] = [r for r in openai.requests if r.path.endswith("/images/edits")]
        assert (sent.fields["model"], sent.fields["output_format"]) == ("gpt-image-1.5", "png")
        notes = " ".join(result_of(it).get("Note", []))
        assert "GPT Image 1.5 cannot make format `jpeg`, so Retouch uses png" in notes
        # Typed on the command, the format is refused by name, free.
        typed = await world.edit(PHOTO, format="jpeg")
        text = await world.fake.wait_until(lambda: typed.original_edits and typed.original_edits[-1])
        assert "set `format` to one of png, webp" in text and openai.post_count == 1


async def test_a_saved_format_the_model_makes_but_not_transparent_falls_back_for_a_transparent_default(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """WebP and a transparent background saved, on a model whose route makes transparency only as PNG
    (1min.ai's, in the packaged catalog): every edit with defaults was refused on the pair."""
    clear_png = catalog(
        model(
            "gpt-image-1.5",
            name="GPT Image 1.5",
            qualities=WITH_AUTO,
            price=0.01,
            routes=[route("openai", output_formats=["png", "webp"], transparent_formats=["png"])],
        )
    )
    async with running_bot(fake_discord, openai, tmp_path, catalog=clear_png) as world:
        await reply(world, world.user, "settings", format="webp", background="transparent")
        it = await world.edit(PHOTO)
        assert (await world.finished(it)).startswith("Done")
        [sent] = [r for r in openai.requests if r.path.endswith("/images/edits")]
        assert (sent.fields["output_format"], sent.fields["background"]) == ("png", "transparent")
        assert "cannot make format `webp`, so Retouch uses png" in " ".join(result_of(it).get("Note", []))


async def test_an_unknown_model_in_a_list_is_refused_naming_only_the_models_live_today(
    world: World, calendar: Calendar
):
    """A retired model named among the "Known" ones is then refused as retired when typed."""
    calendar.day = SHUTDOWN  # GPT Image 2 is shut down
    refused = await reply(world, world.owner, "admin policy limits", models="gpt-image-9")
    assert refused.content.endswith("Known: gpt-image-2.6-sunburst.")


async def test_openai_model_list_dates_show_in_diagnose_and_the_audit_channel(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    openai.shutdown_dates = {"gpt-image-2": "2027-01-20"}
    async with running_bot(
        fake_discord,
        openai,
        tmp_path,
        catalog=sunset_catalog(),
        today=Calendar(dt.date(2027, 1, 5)),
        audit=True,
    ) as world:
        lifecycle = world.services.edits.lifecycle
        model = lifecycle.catalog.get("gpt-image-2")
        assert lifecycle.route_end(model, model.routes[0]) == dt.date(2027, 1, 20)
        await world.fake.wait_until(
            lambda: any(
                "2027-01-20" in (m.content or "") for m in world.fake.channel_messages(world.audit_channel)
            )
        )
        it = await world.fake.slash(world.owner, "diagnose", channel=world.channel)
        message = await world.fake.wait_until(lambda: it.followups and it.followups[-1])
        assert "retires in 15 days (2027-01-20)" in str(message.embeds)


async def test_a_failed_model_list_changes_nothing(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    openai.fail_always(Fault.MODELS_ERROR)
    async with running_bot(
        fake_discord, openai, tmp_path, catalog=sunset_catalog(), today=Calendar(dt.date(2027, 1, 5))
    ) as world:
        it = await world.edit(PHOTO, quality="low", size="1024x1024")
        assert (await world.finished(it)).startswith("Done")
        assert models_sent(openai) == ["gpt-image-2"]
        assert "could not read openai's model list" in " ".join(world.services.diagnostics.model_warnings())


def token_priced_catalog() -> Catalog:
    """GPT Image 2 at its catalog prices and token rates, OpenAI only, no shutdown date: each edit is
    charged from the fake OpenAI's reported usage (input image and prompt tokens included)."""
    return catalog(
        model(
            "gpt-image-2",
            name="GPT Image 2",
            qualities=WITH_AUTO,
            free_sizes=True,
            max_input_images=16,
            input_tokens_per_image=6600,
            price=tiered(low=(0.006, 0.005), medium=(0.053, 0.041), high=(0.211, 0.165)),
            tokens={"text_input": 5.0, "image_input": 8.0, "image_output": 30.0},
            routes=[route("openai", free_sizes=True)],
        )
    )


@pytest.mark.parametrize("size", ["1024x1024", "3840x2160"])
async def test_the_up_to_price_a_quality_suggests_covers_what_that_edit_is_charged(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, size: str
):
    """The suggestion counts the input image and prompt every edit pays in tokens, and the size typed
    in the same command (a large free size costs more than any listed one), not the output image at
    the dearest listed size alone ("up to 6", then charged 16; 57 at 3840x2160)."""
    env = {"STARTING_CREDITS": "5000"}
    async with running_bot(fake_discord, openai, tmp_path, env=env, catalog=token_priced_catalog()) as world:
        prompt = "make it a watercolour"
        typed = {"model": "gpt-image-2", "size": size, "prompt": prompt}
        suggested = await world.fake.autocomplete(
            world.user, "edit", channel=world.channel, focused="quality", value="low", options=typed
        )
        [low] = [c["name"] for c in suggested if c["value"] == "low"]
        most = int(re.fullmatch(r"low — up to (\d+) credits per image", low).group(1))  # type: ignore[union-attr]
        it = await world.edit(PHOTO, prompt=prompt, model="gpt-image-2", quality="low", size=size)
        await world.finished(it)
        [job] = await world.fake.wait_until(lambda: [j for j in jobs(tmp_path) if j["captured"] is not None])
        assert job["state"] == "delivered"
        assert 0 < job["captured"] <= job["reserved"] <= most, (low, job)


def _up_to(suggested: list[dict[str, Any]], quality: str) -> int:
    [name] = [c["name"] for c in suggested if c["value"] == quality]
    return int(re.search(r"up to (\d+) credits", name).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize("quality", ["low", "high"])
async def test_a_quality_suggested_before_a_size_is_typed_is_priced_at_the_members_default_size(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, quality: str
):
    """With no size typed, the suggestion was priced at `auto`, while the edit runs at the member's
    default size: at a saved 3840x2160, "high — up to 264", then 1,679 credits charged."""
    env = {"STARTING_CREDITS": "5000"}
    async with running_bot(fake_discord, openai, tmp_path, env=env, catalog=token_priced_catalog()) as world:
        await reply(world, world.user, "settings", model="gpt-image-2", size="3840x2160")
        prompt = "make it a watercolour"
        suggested = await world.fake.autocomplete(
            world.user,
            "edit",
            channel=world.channel,
            focused="quality",
            value=quality,
            options={"prompt": prompt},
        )
        it = await world.edit(PHOTO, prompt=prompt, quality=quality)
        await world.finished(it)
        [job] = await world.fake.wait_until(lambda: [j for j in jobs(tmp_path) if j["captured"] is not None])
        assert job["state"] == "delivered" and job["size"] == "3840x2160"
        assert 0 < job["captured"] <= job["reserved"] <= _up_to(suggested, quality), job


async def test_the_quality_commands_suggestions_agree_with_its_prices_at_the_members_size(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """/quality's own `level` suggestions were priced at `auto` size, its embed at the member's size."""
    async with running_bot(fake_discord, openai, tmp_path, catalog=token_priced_catalog()) as world:
        await reply(world, world.user, "settings", model="gpt-image-2", size="3840x2160")
        shown = embed_text(await reply(world, world.user, "quality"))
        listed = int(re.search(r"\*\*low\*\* — up to (\d+) credits", shown).group(1))  # type: ignore[union-attr]
        suggested = await world.fake.autocomplete(
            world.user, "quality", channel=world.channel, focused="level", value="low"
        )
        assert _up_to(suggested, "low") == listed, (suggested, shown)
