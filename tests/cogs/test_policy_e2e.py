"""`/quality`, `/settings`, `/credits` and `/admin credits|policy|tier` end to end: the real bot against
the fake Discord, with the fake OpenAI as the provider."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bot import messages
from tests.catalogs import catalog, model, tiered
from tests.fakes.discord import (
    FakeDiscord,
    FakeDiscordUsageError,
    FakeInteraction,
    FakeMessage,
    FakeUser,
    Permission,
)
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.harness import World, eventually, running_bot

DATA = Path(__file__).resolve().parents[1] / "data"
PHOTO = (DATA / "chelsea.png").read_bytes()
# Distinct prices per quality, so the prices /quality shows can be told apart.
GPT_IMAGE_1_5 = model(
    "gpt-image-1.5",
    name="GPT Image 1.5",
    price=tiered(low=(0.01, 0.02), medium=(0.04, 0.06), high=(0.16, 0.25)),
)
CATALOG = catalog(GPT_IMAGE_1_5)
MOD_ID, BOSS_ID = 700_000_000_000_001, 700_000_000_000_002


@pytest.fixture
async def world(fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path) -> AsyncIterator[World]:
    async with running_bot(fake_discord, openai, tmp_path, catalog=CATALOG) as w:
        yield w


async def reply(world: World, actor: FakeUser, command: str, /, **options: Any) -> FakeMessage:
    """Run a slash command and return its (private) answer, whether sent directly or after a defer."""
    it = await world.fake.slash(actor, command, channel=world.channel, options=options)

    def answered() -> FakeMessage | None:
        done = [m for m in it.messages if not m.loading]
        return done[-1] if done else None

    return await world.fake.wait_until(answered)


def embed_text(message: FakeMessage) -> str:
    parts = []
    for embed in message.embeds:
        parts += [embed.get("title", ""), embed.get("description", "")]
        parts += [f"{f['name']}: {f['value']}" for f in embed.get("fields", [])]
        parts.append(embed.get("footer", {}).get("text", ""))
    return "\n".join([message.content or "", *parts])


def fields(message: FakeMessage) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0].get("fields", [])}


async def edit_and_wait(
    world: World, user: FakeUser | None = None, **options: Any
) -> tuple[FakeInteraction, str]:
    it = await world.edit(PHOTO, user=user, **options)
    return it, await world.finished(it)


def result_fields(it: FakeInteraction) -> dict[str, Any]:
    [result] = [m for m in it.followups if not m.ephemeral]
    notes = [f["value"] for f in result.embeds[0]["fields"] if f["name"] == "Note"]
    return {**fields(result), "Note": notes}


async def test_quality_shows_prices_then_sets_the_default_that_edit_then_uses(world: World):
    shown = await reply(world, world.user, "quality")
    text = embed_text(shown)
    assert shown.ephemeral
    assert "Your default quality is **auto** (the bot's default)" in text
    # Per image at the default size (auto = priced as the larger size), in credits.
    # Up to: the worst case of a one-image edit (no token rates in this catalog: the image's price).
    prices = ("**low** — up to 20", "**medium** — up to 60", "**high** — up to 250", "**auto** — up to 250")
    for line in prices:
        assert line in text
    assert "Your balance: 100000 credits" in text

    saved = await reply(world, world.user, "quality", level="low")
    assert "Saved" in embed_text(saved)
    assert "**low** (set by you)" in embed_text(await reply(world, world.user, "quality"))

    it, final = await edit_and_wait(world)
    assert final.startswith("Done")
    assert world.openai.requests[-1].fields["quality"] == "low"
    assert result_fields(it)["Quality"] == "low"

    await edit_and_wait(world, quality="high")  # an option on the command always wins
    assert world.openai.requests[-1].fields["quality"] == "high"


async def test_quality_refuses_a_level_the_members_model_does_not_offer_and_keeps_the_default(world: World):
    refused = await reply(world, world.user, "quality", level="max")
    text = embed_text(refused)
    assert refused.ephemeral
    assert "GPT Image 1.5 does not offer quality `max`" in text and "low, medium, high, auto" in text
    assert "Your default quality is **auto** (the bot's default)" in embed_text(
        await reply(world, world.user, "quality")
    )
    _, final = await edit_and_wait(world)
    assert final.startswith("Done")
    assert world.openai.requests[-1].fields["quality"] == "auto"


async def test_a_stored_default_quality_the_model_lacks_uses_its_nearest_level_below_and_an_option_is_refused(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """A default saved for one model (/quality max on 2.6) still edits after /settings moves the member
    to a model without it: the nearest level below (high), said in a note; typing max is still refused."""
    sunburst = model(
        "gpt-image-2.6-sunburst",
        name="GPT Image 2.6 Sunburst",
        price=0.01,
        qualities=["low", "medium", "high", "xhigh", "max", "auto"],
    )
    two = catalog(sunburst, GPT_IMAGE_1_5)  # 2.6 Sunburst is the bot's default
    async with running_bot(fake_discord, openai, tmp_path, catalog=two) as world:
        assert "Saved" in embed_text(await reply(world, world.user, "quality", level="max"))
        await reply(world, world.user, "settings", model="gpt-image-1.5")
        it, final = await edit_and_wait(world)
        assert final.startswith("Done")
        assert world.openai.requests[-1].fields["quality"] == "high"
        assert any("GPT Image 1.5 does not offer max" in note for note in result_fields(it)["Note"])
        refused = await world.edit(PHOTO, quality="max")
        text = await world.fake.wait_until(lambda: refused.original_edits and refused.original_edits[-1])
        assert "GPT Image 1.5 does not offer quality `max`" in text
        assert world.openai.post_count == 1


async def test_settings_change_and_reset_the_defaults_edit_uses(world: World):
    changed = await reply(world, world.user, "settings", size="1024x1024", format="webp")
    assert fields(changed)["Size"].startswith("**1024x1024**\nset by you")
    await edit_and_wait(world)
    request = world.openai.requests[-1].fields
    assert (request["size"], request["output_format"]) == ("1024x1024", "webp")

    reset = await reply(world, world.user, "settings", reset="everything")
    assert fields(reset)["Size"] == "**auto**\nthe bot's default"


# A model that takes free WIDTHxHEIGHT sizes, so a typed size is parsed (and offered back) as one.
FREE_SIZES = catalog(model("gpt-image-2", name="GPT Image 2", free_sizes=True))


@pytest.mark.parametrize("typed", ["²x²", "١٠٢٤x١٠٢٤", "1" * 4400 + "x1024"])
async def test_a_size_in_other_digits_than_ascii_is_refused_and_not_offered_or_saved(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, typed: str
):
    async with running_bot(fake_discord, openai, tmp_path, catalog=FREE_SIZES) as world:
        offered = await world.fake.autocomplete(
            world.user, "settings", channel=world.channel, focused="size", value=typed
        )
        assert offered and not any("(custom)" in choice["name"] for choice in offered)
        refused = await reply(world, world.user, "settings", size=typed)
        assert refused.content.startswith("Size must be one of")
        assert await world.services.storage.settings.user_settings_row(world.user.id) is None


LONG = "x" * 2100  # past Discord's 2,000 characters for a message
LONG_INPUTS = [
    ("settings", {"model": LONG}),
    ("quality", {"level": LONG}),
    ("admin policy limits", {"models": LONG}),
    ("admin policy defaults", {"providers": LONG}),
]


@pytest.mark.parametrize(("name", "options"), LONG_INPUTS)
async def test_a_refusal_of_a_long_input_quotes_it_short_and_reaches_the_member(
    world: World, name: str, options: dict[str, str]
):
    refused = await reply(world, world.owner, name, **options)
    assert "x" * (messages.ECHO_CHARS - 1) + "…" in refused.content
    assert "x" * messages.ECHO_CHARS not in refused.content


async def test_a_refusal_longer_than_discord_takes_is_cut_to_fit_rather_than_lost(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(messages, "ECHO_CHARS", 10_000)  # a refusal that quotes all 2,100 characters
    refused = await reply(world, world.user, "settings", model=LONG)
    assert len(refused.content) == 2000 and refused.content.endswith("x…")


async def test_a_role_cap_below_the_default_is_shown_and_applied_and_a_tier_lifts_it(world: World):
    vip = await world.guild.create_role("vip")
    bob = world.fake.create_user("bob")
    await world.guild.add_member(bob, roles=[vip])
    await reply(world, world.owner, "admin policy limits", max_quality="medium")
    await reply(world, world.owner, "admin tier set", role=vip, max_quality="high")

    shown = await reply(world, world.user, "quality", level="high")
    assert "at most **medium** quality" in embed_text(shown)
    assert "**high** — up to 250 credits per image — above your limit here" in embed_text(shown)
    it, _ = await edit_and_wait(world)
    assert world.openai.requests[-1].fields["quality"] == "medium"
    assert any("at most **medium**" in note for note in result_fields(it)["Note"])

    await reply(world, bob, "quality", level="high")
    it, _ = await edit_and_wait(world, user=bob)
    assert world.openai.requests[-1].fields["quality"] == "high"
    assert result_fields(it)["Note"] == []


async def test_the_monthly_budget_refuses_the_edit_that_would_pass_it(world: World):
    await reply(world, world.owner, "admin policy budget", usd=0.025)
    for _ in range(2):  # 10 credits each at low quality, square
        _, final = await edit_and_wait(world, quality="low", size="1024x1024")
        assert final.startswith("Done")
    it = await world.edit(PHOTO, quality="low", size="1024x1024")
    refusal = await world.fake.wait_until(lambda: [e for e in it.original_edits if "budget" in e])
    assert "only 5 are left" in refusal[-1]
    assert world.openai.post_count == 2


@pytest.mark.parametrize(
    ("who", "allow_list", "outcome"),
    [
        ("member", "", "hidden"),  # Discord itself hides the Manage Server command
        ("manager", "", "granted"),
        ("manager", str(MOD_ID), "granted"),  # on the allow-list
        ("administrator", str(MOD_ID), "refused"),  # a server Administrator, not on the list
        ("operator", str(MOD_ID), "granted"),  # the application's owner, without OWNER_IDS: always
    ],
)
async def test_only_admins_allowed_by_the_settings_can_grant_credits(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, who: str, allow_list: str, outcome: str
):
    env: Mapping[str, str] = {"ADMIN_USER_IDS": allow_list} if allow_list else {}
    async with running_bot(fake_discord, openai, tmp_path, env=env, catalog=CATALOG) as world:
        mod = fake_discord.create_user("mod", id=MOD_ID)
        boss = fake_discord.create_user("boss", id=BOSS_ID)
        await world.guild.add_member(mod, permissions=Permission.MANAGE_GUILD)
        await world.guild.add_member(boss, permissions=Permission.ADMINISTRATOR)
        actor = {"member": world.user, "manager": mod, "administrator": boss, "operator": world.owner}[who]
        options = {"user": world.user, "amount": 250, "reason": "contest winner"}
        if outcome == "hidden":
            with pytest.raises(FakeDiscordUsageError, match="default_member_permissions"):
                await world.fake.slash(actor, "admin credits grant", channel=world.channel, options=options)
            return
        answer = await reply(world, actor, "admin credits grant", **options)
        account = await world.services.storage.ledger.get_account(world.guild.id, world.user.id)
        if outcome == "granted":
            assert "Gave 250 credits" in answer.content and answer.allowed_mentions == {"parse": []}
            assert account is not None and account.balance == 100250
            entries, _ = await world.services.storage.reports.account_history(
                world.guild.id, world.user.id, kinds=("grant",), offset=0, limit=1
            )
            assert (entries[0].actor_id, entries[0].reason) == (actor.id, "grant: contest winner")
        else:
            assert "ADMIN_USER_IDS" in answer.content and answer.ephemeral
            assert account is None  # nothing was written


async def test_the_thread_setting_keeps_to_the_admin_allow_list_too(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with running_bot(fake_discord, openai, tmp_path, env={"ADMIN_USER_IDS": str(MOD_ID)}) as world:
        boss = fake_discord.create_user("boss", id=BOSS_ID)  # Manage Server, not on the list
        await world.guild.add_member(boss, permissions=Permission.MANAGE_GUILD)
        answer = await reply(world, boss, "admin threads", value="on")
        assert "ADMIN_USER_IDS" in answer.content and answer.ephemeral
        assert await world.services.storage.settings.guild_thread_results(world.guild.id) is None


async def test_credits_pages_the_history_with_buttons(world: World):
    policy = world.services.policy
    assert policy is not None
    for n in range(10):
        await policy.change_credits(
            world.guild.id, world.owner.id, world.user.id, "grant", n + 1, f"gift {n}"
        )
    await reply(world, world.owner, "admin policy allowance", amount=100, period="monthly")

    first = await reply(world, world.user, "credits")
    text = embed_text(first)
    assert "**Available:** 100055 credits" in text and "topped up to 100 monthly" in text
    assert "**Next refill:** <t:" in text
    assert "gift 9" in text and "gift 0" not in text and "Page 1 of 2" in text
    assert first.find_component("retouch:credits:0:newer")["disabled"]

    clicked = await world.fake.click(world.user, first, "retouch:credits:1:older")
    await world.fake.wait_until(lambda: "Page 2 of 2" in embed_text(first))  # acknowledged, then edited
    assert clicked.callbacks[0]["type"] == 6
    text = embed_text(first)
    assert "gift 0" in text and "starting credits" in text and "Page 2 of 2" in text
    assert first.find_component("retouch:credits:2:older")["disabled"]


async def test_a_credits_page_whose_database_work_outlasts_three_seconds_still_turns(world: World):
    """The page refills a due allowance, a write that may wait on a busy database: the click is
    acknowledged first, so a wait past Discord's 3 s for a first answer does not fail it."""
    policy = world.services.policy
    for n in range(10):
        await policy.change_credits(world.guild.id, world.owner.id, world.user.id, "grant", 1, f"gift {n}")
    first = await reply(world, world.user, "credits")
    gate, credits = asyncio.Event(), policy.credits

    async def slow_credits(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await credits(*args, **kwargs)

    policy.credits = slow_credits  # type: ignore[method-assign]
    clicked = await world.fake.click(world.user, first, "retouch:credits:1:older")
    await world.fake.wait_until(lambda: clicked.callbacks)
    world.fake.advance_time(4)
    gate.set()
    await world.fake.wait_until(lambda: "Page 2 of 2" in embed_text(first))


async def test_taking_from_an_empty_balance_says_from_whom(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    empty = {"STARTING_CREDITS": "0"}
    async with running_bot(fake_discord, openai, tmp_path, catalog=CATALOG, env=empty, audit=True) as world:
        took = await reply(world, world.owner, "admin credits take", user=world.user, amount=5, reason="oops")
        assert took.content.startswith(f"Took 0 credits from <@{world.user.id}> (they only had 0 available).")
        # The audit channel says the same: it read "gave 0 credits to".
        [posted] = await world.fake.wait_until(lambda: world.fake.channel_messages(world.audit_channel))
        assert f"<@{world.owner.id}> took 0 credits from <@{world.user.id}>" in posted.content


async def test_a_grant_to_a_member_who_has_not_used_the_bot_comes_after_their_tiers_allowance(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """The allowance is topped up at a member's next use; the grant used to come first and be counted
    against it (a prize of 50 left 500, not 550). The refill is their tier's, from their roles."""
    empty = {"STARTING_CREDITS": "0"}
    async with running_bot(fake_discord, openai, tmp_path, catalog=CATALOG, env=empty) as world:
        vip = await world.guild.create_role("vip")
        bob = world.fake.create_user("bob")
        await world.guild.add_member(bob, roles=[vip])
        await reply(world, world.owner, "admin policy allowance", amount=100, period="monthly")
        await reply(world, world.owner, "admin tier set", role=vip, allowance=500)
        gave = await reply(world, world.owner, "admin credits grant", user=bob, amount=50, reason="prize")
        assert gave.content.startswith(f"Gave 50 credits to <@{bob.id}>. Balance now **550**.")
        shown = await reply(world, bob, "credits")
        assert "**Available:** 550 credits" in embed_text(shown)


async def test_a_budget_below_a_cent_is_shown_as_set_and_one_below_a_credit_is_refused(world: World):
    """$0.004 is 4 credits: shown as $0.00 it read as no budget at all. $0.0004 floors to 0 credits,
    a cap that refuses every edit while 0 means no cap: refused, saying the least it can be."""
    shown = await reply(world, world.owner, "admin policy budget", usd=0.004)
    assert fields(shown)["Monthly budget"].startswith("$0.004 = 4 credits")
    refused = await reply(world, world.owner, "admin policy budget", usd=0.0004)
    assert refused.content == (
        "That budget is less than one credit, so it would refuse every edit. "
        "Set at least $0.001, or 0 for none."
    )
    allotted = await reply(world, world.owner, "owner allotment", usd=0.004)
    assert "$0.004 a month" in allotted.content
    refused = await reply(world, world.owner, "owner allotment", usd=0.0004)
    assert refused.content.startswith("That allotment is less than one credit")
    shown = await reply(world, world.owner, "admin policy show")
    assert fields(shown)["Monthly budget"].startswith("$0.004 = 4 credits")
    assert "of its allotment $0.004" in fields(shown)["Operator's budget"]


async def test_a_server_default_model_its_own_model_list_forbids_is_refused_either_way(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Saved, every member's edit moved off it with "your roles can't use GPT Image 2", and /settings
    called the model it moved to the server's default."""
    two = catalog(GPT_IMAGE_1_5, model("gpt-image-2", name="GPT Image 2"))
    async with running_bot(fake_discord, openai, tmp_path, catalog=two) as world:
        await reply(world, world.owner, "admin policy limits", models="gpt-image-1.5")
        refused = await reply(world, world.owner, "admin policy defaults", model="gpt-image-2")
        assert refused.content.startswith(
            "GPT Image 2 is not among this server's allowed models (GPT Image 1.5), so it cannot be the "
            "server's default."
        )
        assert (await world.services.policy.guild_policy(world.guild.id)).default_model is None
        # The other order: the list may not leave out the default already set.
        await reply(world, world.owner, "admin policy limits", models="all")
        await reply(world, world.owner, "admin policy defaults", model="gpt-image-2")
        refused = await reply(world, world.owner, "admin policy limits", models="gpt-image-1.5")
        assert refused.content.startswith("GPT Image 2 is not among this server's allowed models")
        assert (await world.services.policy.guild_policy(world.guild.id)).models is None


async def test_a_server_default_model_a_role_tier_allows_is_accepted(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """A tier lets its members use the default (@everyone's tier: every member): somebody can use
    it, so it is the admin's call, as it was before the check above."""
    two = catalog(GPT_IMAGE_1_5, model("gpt-image-2", name="GPT Image 2"))
    async with running_bot(fake_discord, openai, tmp_path, catalog=two) as world:
        await reply(world, world.owner, "admin policy limits", models="gpt-image-1.5")
        vip = await world.guild.create_role("vip")
        await reply(world, world.owner, "admin tier set", role=vip, models="gpt-image-2")
        saved = await reply(world, world.owner, "admin policy defaults", model="gpt-image-2")
        assert saved.content == "Saved."
        await reply(world, world.owner, "admin policy defaults", clear=True)
        await reply(world, world.owner, "admin tier remove", role=vip)
        await reply(world, world.owner, "admin tier set", role=world.guild.everyone, models="gpt-image-2")
        saved = await reply(world, world.owner, "admin policy defaults", model="gpt-image-2")
        assert saved.content == "Saved."
        assert (await world.services.policy.guild_policy(world.guild.id)).default_model == "gpt-image-2"


async def test_model_options_offer_only_the_models_the_members_roles_may_use_here(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """A model the server's rules forbid the member was offered, then silently swapped for an allowed
    one when the edit ran; the quality prices follow the model the edit would really use."""
    two = catalog(GPT_IMAGE_1_5, model("gpt-image-2", name="GPT Image 2", price=(0.3, 0.4)))
    async with running_bot(fake_discord, openai, tmp_path, catalog=two) as world:
        await reply(world, world.owner, "admin policy limits", models="gpt-image-1.5")
        vip = await world.guild.create_role("vip")
        await reply(world, world.owner, "admin tier set", role=vip, models="gpt-image-2")
        bob = world.fake.create_user("bob")
        await world.guild.add_member(bob, roles=[vip])

        async def offered(actor: FakeUser, focused: str, **options: str) -> list[str]:
            choices = await world.fake.autocomplete(
                actor, "edit", channel=world.channel, focused=focused, options=options
            )
            return [c["value" if focused == "model" else "name"] for c in choices]

        assert await offered(world.user, "model") == ["gpt-image-1.5"]
        assert await offered(bob, "model") == ["gpt-image-1.5", "gpt-image-2"]
        listed = await offered(world.user, "quality")
        assert await offered(world.user, "quality", model="gpt-image-2") == listed
        assert await offered(bob, "quality", model="gpt-image-2") != listed


async def test_a_deleted_roles_tier_goes_with_it(world: World):
    """`/admin tier remove` needs the role, which Discord's picker no longer offers once deleted: the
    stale tier stayed in the rules for good."""
    vip = await world.guild.create_role("vip")
    await reply(world, world.owner, "admin tier set", role=vip, allowance=900)
    assert [t.role_id for t in (await world.services.policy.guild_policy(world.guild.id)).tiers] == [vip.id]
    await world.guild.delete_role(vip)

    async def gone() -> bool:
        return not (await world.services.policy.guild_policy(world.guild.id)).tiers

    await eventually(gone)


async def test_a_role_deleted_while_the_bot_was_away_loses_its_tier_when_it_connects(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Discord does not replay a GUILD_ROLE_DELETE the bot missed: the next connection checks."""
    async with running_bot(fake_discord, openai, tmp_path, catalog=CATALOG) as world:
        vip = await world.guild.create_role("vip")
        kept = await world.guild.create_role("kept")
        await reply(world, world.owner, "admin tier set", role=vip, allowance=900)
        await reply(world, world.owner, "admin tier set", role=kept, allowance=800)
        guild = world.guild
    await guild.delete_role(vip)  # no bot connected
    async with running_bot(fake_discord, openai, tmp_path, catalog=CATALOG) as world:

        async def only_kept() -> bool:
            tiers = (await world.services.policy.guild_policy(guild.id)).tiers
            return [t.role_id for t in tiers] == [kept.id]

        await eventually(only_kept)


async def test_the_report_says_what_the_services_billed_that_no_member_paid(world: World):
    """One of two images comes back unusable: the member pays for one, the provider billed two. The
    report said "10 credits spent" beside a budget line of 20, and the 10 the bot paid nowhere."""
    world.openai.fail_next(Fault.UNUSABLE_IMAGE)
    await edit_and_wait(world, count=2, quality="low", size="1024x1024")
    answer = await reply(world, world.owner, "admin credits report")
    text = embed_text(answer)
    assert "**10 credits charged to members ($0.01)**" in text
    assert "also billed **10 credits ($0.01)** that no member was charged for" in text
    assert "This server: $0.02 (20 billed + 0 held)" in text  # the budget counts both


async def test_the_report_is_an_embed_plus_a_csv_equal_to_the_ledger(world: World):
    await edit_and_wait(world, quality="low", size="1024x1024")
    await reply(world, world.owner, "admin credits take", user=world.user, amount=5, reason="typo")

    answer = await reply(world, world.owner, "admin credits report")
    [(filename, data)] = answer.files
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    ledger = await world.services.storage.reports.guild_ledger(world.guild.id, since=None, until=None)

    assert filename.startswith(f"retouch-ledger-{world.guild.id}-this-month")
    assert [(int(r["id"]), int(r["amount"]), r["kind"]) for r in rows] == [
        (e.id, e.amount, e.kind) for e in ledger
    ]
    text = embed_text(answer)
    assert "**10 credits charged to members ($0.01)**" in text
    assert f"<@{world.user.id}> — 10" in text and "gpt-image-1.5 — 10" in text and "openai — 10" in text
    assert "By admins (net): -5" in text


async def test_policy_commands_are_registered_with_their_shapes(world: World):
    commands = {c["name"]: c for c in world.fake.synced_commands(world.guild.id)}
    assert {"quality", "settings", "credits", "admin"} <= set(commands)
    assert commands["credits"]["options"] == []  # the user view; admin actions live under /admin credits
    admin = {o["name"]: o for o in commands["admin"]["options"]}
    assert int(commands["admin"]["default_member_permissions"]) == Permission.MANAGE_GUILD
    assert {o["name"] for o in admin["credits"]["options"]} == {"grant", "take", "set", "report"}
    assert {o["name"] for o in admin["policy"]["options"]} == {
        "show",
        "allowance",
        "limits",
        "budget",
        "defaults",
        "moderation",
    }
    assert {o["name"] for o in admin["tier"]["options"]} == {"set", "remove"}


async def test_a_grant_is_posted_to_the_audit_channel_with_the_acting_admin(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with running_bot(fake_discord, openai, tmp_path, catalog=CATALOG, audit=True) as world:
        await reply(world, world.owner, "admin credits grant", user=world.user, amount=42, reason="art prize")
        [posted] = world.fake.channel_messages(world.audit_channel)
        assert f"<@{world.owner.id}> gave 42 credits to <@{world.user.id}>" in posted.content
        assert "art prize" in posted.content and posted.allowed_mentions == {"parse": []}


async def test_policy_show_lists_every_rule_an_admin_set(world: World):
    vip = await world.guild.create_role("vip")
    await reply(
        world, world.owner, "admin policy defaults", quality="low", size="1024x1024", providers="openai"
    )
    await reply(world, world.owner, "admin policy limits", cooldown=30, max_running=2, models="gpt-image-1.5")
    await reply(world, world.owner, "admin tier set", role=vip, allowance=900, max_images=4)
    await reply(world, world.owner, "admin policy budget", usd=12.5)

    text = embed_text(await reply(world, world.owner, "admin policy show"))
    assert "quality low · size 1024x1024" in text and "Providers: openai" in text
    assert "Cooldown 30 s · running edits per member: 2" in text and "models gpt-image-1.5" in text
    assert f"<@&{vip.id}>: allowance 900, 4 images per edit" in text
    assert "$12.50 = 12500 credits" in text
    assert (await world.services.policy.defaults_for(world.guild.id, world.user.id)).quality == "low"

    removed = await reply(world, world.owner, "admin tier remove", role=vip)
    assert "Removed the tier" in removed.content
    assert "Role tiers (the most generous applies): None" in embed_text(removed)
    bad = await reply(world, world.owner, "admin policy limits", models="gpt-image-9")
    assert "Unknown model(s): gpt-image-9" in bad.content


# Two providers sell the model, so an order can name both (a route's provider is known to the order
# whether or not it is configured).
TWO_ROUTES = catalog(model("gpt-image-1.5", name="GPT Image 1.5", routes=("openai", "wavespeed")))


async def test_a_provider_order_is_kept_without_repeats_so_the_policy_can_always_be_shown(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Repeats in `providers` are dropped, each provider kept where first named. Kept, 200 names made
    the policy embed's field too long: Discord refused the answer to the saved change, and every later
    /admin policy reply in the server. An order stored with repeats before that is shown without them."""
    async with running_bot(fake_discord, openai, tmp_path, catalog=TWO_ROUTES) as world:
        typed = " ".join(["wavespeed", "openai"] * 100)  # 1,599 characters: a valid option value
        saved = await reply(world, world.owner, "admin policy defaults", providers=typed)
        # Kept though this bot has no WaveSpeed key (one may come), and said.
        assert saved.content == (
            "Saved. wavespeed has no API key on this bot, so edits skip it until the bot's operator sets one."
        )
        assert fields(saved)["Defaults"].endswith("\nProviders: wavespeed → openai")
        row = await world.services.storage.settings.guild_policy_row(world.guild.id)
        assert row is not None and row["provider_order"] == "wavespeed openai"

        repeated = " ".join(["openai"] * 200)  # as such an order was stored before
        await world.services.storage.settings.update_guild_policy(
            world.guild.id, {"provider_order": repeated}, actor_id=world.owner.id
        )
        shown = await reply(world, world.owner, "admin policy show")
        assert fields(shown)["Defaults"].endswith("\nProviders: openai")


async def test_turning_the_safety_check_or_result_threads_off_is_logged_with_the_admin_who_did_it(
    world: World, caplog: pytest.LogCaptureFixture
):
    """guild_settings keeps no author, so the log is the only trace of who switched the free safety
    check off (the operator's to answer for) or result threads."""
    caplog.set_level(logging.INFO, logger="bot.services.admin")
    await reply(world, world.owner, "admin policy moderation", level="off")
    await reply(world, world.owner, "admin threads", value="off")
    assert await world.services.storage.settings.guild_moderation(world.guild.id) == "off"
    assert await world.services.storage.settings.guild_thread_results(world.guild.id) is False
    assert f"guild {world.guild.id} safety check set to off by {world.owner.id}" in caplog.text
    assert f"guild {world.guild.id} result threads set to off by {world.owner.id}" in caplog.text
