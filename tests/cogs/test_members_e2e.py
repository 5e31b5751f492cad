"""What members notice (issue 13), end to end through the real bot against the fake Discord and OpenAI:
edits a member can afford (a one-click cheaper run; `auto` resolving to what fits)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bot.catalog import parse_catalog
from tests.durable import PHOTO, assert_books_balance, jobs, ledger_kinds, results
from tests.fakes.discord import FakeDiscord, FakeInteraction, FakeMessage, FakeUser
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import World, running_bot

# Square prices 10 / 60 / 200 credits: 150 credits cover medium but not high (nor auto, priced as high).
CATALOG = parse_catalog(
    {
        "models": {
            "gpt-image-1.5": {
                "name": "GPT Image 1.5",
                "price": {
                    "low": {"square": 0.01, "other": 0.02},
                    "medium": {"square": 0.06, "other": 0.08},
                    "high": {"square": 0.2, "other": 0.25},
                },
                "routes": [{"provider": "openai"}],
            }
        }
    }
)
SQUARE = "1024x1024"
CHEAPER_PREFIX = "retouch:cheaper:"


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


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
        # Refused at auto (nothing held), then held at medium's true worst case.
        assert [(j["state"], j["reserved"]) for j in jobs(tmp_path)] == [("failed", 0), ("delivered", 60)]
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
