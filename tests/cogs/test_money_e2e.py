"""The operator's money end to end (issue 11): approved servers only, the bot-wide budget and per-server
allotments, limits checked before any download, and buttons that re-check the present. The real bot
against the fake Discord and fake OpenAI."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot import messages
from bot.catalog import Catalog
from tests.cogs.test_mask_e2e import MASK_CATALOG, box_mask
from tests.cogs.test_members_e2e import edit_again
from tests.durable import (
    CATALOG,
    PHOTO,
    assert_books_balance,
    component_id,
    control,
    jobs,
    results,
    undo_button,
)
from tests.fakes.discord import FakeDiscord, FakeInteraction, FakeMessage, FakeUser, Permission
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.harness import World, running_bot

# An unapproved server: the harness's guild with ALLOWED_GUILD_IDS emptied.
UNAPPROVED = {"ALLOWED_GUILD_IDS": ""}


@asynccontextmanager
async def bot(
    fake: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, catalog: Catalog = CATALOG, **env: str
) -> AsyncIterator[World]:
    async with running_bot(fake, openai, tmp_path, env=env, catalog=catalog, audit=True) as world:
        yield world


def downloads(world: World) -> int:
    """Attachment downloads from the fake CDN."""
    return sum(1 for r in world.fake.requests if r.path.startswith("/cdn/"))


async def answer(world: World, it: FakeInteraction) -> str:
    """The private text the interaction was answered with (a direct reply or the edited defer)."""

    def said() -> str | None:
        for message in it.messages:
            if not message.loading and message.content:
                return message.content
        return it.original_edits[-1] if it.original_edits else None

    return await world.fake.wait_until(said)


async def command(world: World, user: FakeUser, name: str, /, **options: Any) -> FakeInteraction:
    return await world.fake.slash(user, name, channel=world.channel, options=options)


async def published(world: World, it: FakeInteraction) -> FakeMessage:
    await world.finished(it)
    [message] = await world.fake.wait_until(lambda: results(it.followups))
    return message


async def member(world: World, name: str, **kw: Any) -> FakeUser:
    user = world.fake.create_user(name)
    await world.guild.add_member(user, **kw)
    return user


# -- approved servers only --------------------------------------------------------------------------


async def test_an_unapproved_server_gets_a_private_refusal_and_no_download_call_or_account(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path, **UNAPPROVED) as world:
        it = await world.edit(PHOTO)
        text = await answer(world, it)
        assert "not enabled on this server" in text
        assert it.messages[0].ephemeral and not it.messages[0].components  # no Approve for members
        credits = await command(world, world.user, "credits")
        assert "not enabled on this server" in await answer(world, credits)
        assert openai.post_count == 0 and downloads(world) == 0
        assert await world.services.storage.ledger.get_account(world.guild.id, world.user.id) is None


async def test_the_operator_is_offered_an_approve_button_that_approves_the_server(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path, **UNAPPROVED) as world:
        # Not even the operator's own command is run before the server is approved.
        it = await world.edit(PHOTO, user=world.owner)
        assert "approve the server with the button below" in await answer(world, it)
        [message] = it.messages
        [button] = [c for row in message.components for c in row["components"]]
        assert openai.post_count == 0 and downloads(world) == 0
        assert not await world.services.access.approved(world.guild.id)
        clicked = await world.fake.click(world.owner, message, button["custom_id"])
        await world.fake.wait_until(lambda: clicked.callbacks)
        assert await world.services.access.approved(world.guild.id)
        done = await world.finished(await world.edit(PHOTO))
        assert done.startswith("Done") and openai.post_count == 1


async def test_owner_commands_approve_and_remove_a_server_and_refuse_everyone_else(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path, **UNAPPROVED) as world:
        admin = await member(world, "admin", permissions=int(Permission.ADMINISTRATOR))
        refused = await command(world, admin, "owner approve")
        assert "Only the operator" in await answer(world, refused)
        assert not await world.services.access.approved(world.guild.id)
        approved = await command(world, world.owner, "owner approve")
        assert "is approved" in await answer(world, approved)
        result = await published(world, await world.edit(PHOTO))
        removed = await command(world, world.owner, "owner remove")
        assert "no longer approved" in await answer(world, removed)
        # A result's buttons stop working too: Retry costs nothing in a server that is not approved.
        retry = await world.fake.click(world.user, result, control(result, "retry"))
        assert "not enabled on this server" in await answer(world, retry)
        assert openai.post_count == 1
        # Approved again, a server keeps the allotment it had: the answer says so.
        await world.services.policy.set_allotment(world.guild.id, world.owner.id, Decimal("0.25"))
        again = await command(world, world.owner, "owner approve")
        assert (await answer(world, again)).endswith("is approved. Its allotment stands: $0.25 a month.")


async def test_an_allotment_whose_audit_post_fails_does_not_claim_it_was_recorded(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path) as world:
        await world.audit_channel.set_permissions(fake_discord.bot_user, deny=int(Permission.SEND_MESSAGES))
        set_ = await command(world, world.owner, "owner allotment", usd=0.02)
        assert await answer(world, set_) == f"Server `{world.guild.id}` may now spend $0.02 a month."
        assert await world.services.policy.allotment(world.guild.id) == Decimal("0.02")


# Commands whose first database call comes after their acknowledgement: (command, options, the
# service or store and the method that is made to wait).
SLOW_FIRST_CALLS: list[tuple[str, dict[str, Any], Callable[[Any], tuple[Any, str]]]] = [
    ("owner approve", {}, lambda s: (s.access, "approve")),
    ("owner remove", {}, lambda s: (s.access, "remove")),
    ("owner allotment", {"usd": 5.0}, lambda s: (s.policy, "set_allotment")),
    ("admin threads", {"value": "on"}, lambda s: (s.storage.settings, "set_guild_thread_results")),
    ("history", {}, lambda s: (s.history, "recent")),
]


@pytest.mark.parametrize(("name", "options", "slow"), SLOW_FIRST_CALLS, ids=[c[0] for c in SLOW_FIRST_CALLS])
async def test_a_command_whose_database_call_outlasts_three_seconds_is_still_answered(
    fake_discord: FakeDiscord,
    openai: FakeOpenAI,
    tmp_path: Path,
    name: str,
    options: dict[str, Any],
    slow: Callable[[Any], tuple[Any, str]],
):
    """A busy database (SQLite runs one call at a time) may hold a read or write past Discord's 3 s for
    a first answer: each of these commands acknowledges first, so it is answered, not "did not respond"."""
    async with bot(fake_discord, openai, tmp_path) as world:
        owner, method = slow(world.services)
        gate, call = asyncio.Event(), getattr(owner, method)

        async def after_the_gate(*args: Any, **kwargs: Any) -> Any:
            await gate.wait()
            return await call(*args, **kwargs)

        setattr(owner, method, after_the_gate)
        it = await command(world, world.owner, name, **options)
        await world.fake.wait_until(lambda: it.callbacks)
        assert it.callbacks[0]["type"] == 5  # deferred, before the call
        world.fake.advance_time(4)
        gate.set()
        assert await answer(world, it)
        assert "Something went wrong" not in await answer(world, it)


async def test_an_allotment_set_without_an_audit_channel_does_not_claim_it_was_recorded_there(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with running_bot(fake_discord, openai, tmp_path, catalog=CATALOG) as world:
        set_ = await command(world, world.owner, "owner allotment", usd=0.02)
        assert await answer(world, set_) == f"Server `{world.guild.id}` may now spend $0.02 a month."


# Not a server id: digits other than ASCII ones, more than SQLite's largest integer, and 0 (DMs).
NOT_SERVER_IDS = ["²", "١٢٣", "9" * 30, str(2**63), "0"]


@pytest.mark.parametrize("server", NOT_SERVER_IDS)
@pytest.mark.parametrize("name", ["owner approve", "owner remove", "owner allotment"])
async def test_owner_commands_say_a_server_id_that_is_not_one_is_not_a_number(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, name: str, server: str
):
    async with bot(fake_discord, openai, tmp_path) as world:
        it = await command(world, world.owner, name, server=server)
        assert await answer(world, it) == messages.SERVER_ID_NOT_A_NUMBER


async def test_a_member_can_still_cancel_an_edit_after_the_servers_approval_is_withdrawn(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """Cancel costs nothing; refusing it would leave a queued edit to run and be charged."""
    async with bot(fake_discord, openai, tmp_path, MAX_CONCURRENT_JOBS="1", **UNAPPROVED) as world:
        await world.services.access.approve(world.guild.id, world.owner.id)
        openai.delay = 30.0
        running = await world.edit(PHOTO)
        await world.fake.wait_until(lambda: openai.post_count == 1)
        queued = await world.edit(PHOTO)
        cancel = await world.fake.wait_until(
            lambda: queued.original_message and control(queued.original_message, "cancel")
        )
        removed = await command(world, world.owner, "owner remove")
        assert "no longer approved" in await answer(world, removed)

        await world.fake.click(world.user, queued.original_message, cancel)

        await world.fake.wait_until(lambda: "Cancelled" in queued.original_message.content)
        assert queued.original_message.content == "Cancelled — you were not charged."
        assert running.original_message is not None and openai.post_count == 1


async def test_undo_is_refused_like_the_other_posting_buttons_once_approval_is_withdrawn(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path, **UNAPPROVED) as world:
        await world.services.access.approve(world.guild.id, world.owner.id)
        first = await published(world, await world.edit(PHOTO))
        second = await published(world, await edit_again(world, first, "now at night"))
        removed = await command(world, world.owner, "owner remove")
        assert "no longer approved" in await answer(world, removed)
        undo = await world.fake.click(world.user, second, undo_button(second))
        assert "not enabled on this server" in await answer(world, undo)
        assert len(results(world.fake.channel_messages(world.channel))) == 2  # nothing posted again


async def test_a_gate_that_cannot_read_the_approvals_answers_with_a_reference_not_silence(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """discord.py runs the gate outside the paths that reach an error handler: a database error in it
    left commands and buttons unanswered ("This interaction failed") with nothing in the log to find."""
    async with bot(fake_discord, openai, tmp_path, **UNAPPROVED) as world:
        await world.services.access.approve(world.guild.id, world.owner.id)
        result = await published(world, await world.edit(PHOTO))

        async def unreachable(guild_id: int) -> object:
            raise ConnectionError("database unreachable")

        world.services.storage.settings.operator_guild = unreachable  # type: ignore[method-assign]
        world.services.access._seen_approved.clear()  # the approval the edit found is read again
        slash = await command(world, world.user, "credits")
        retry = await world.fake.click(world.user, result, control(result, "retry"))
        for it in (slash, retry):
            text = await answer(world, it)
            [ref] = re.findall(r"ref `([^`]+)`", text)
            assert text == messages.unexpected(ref) and it.messages[0].ephemeral
            assert f"could not check access for user {world.user.id} (ref {ref})" in caplog.text
        assert openai.post_count == 1


# -- the budget that ends at the operator -----------------------------------------------------------


async def test_an_admin_who_grants_a_million_credits_and_fires_30_edits_cannot_pass_the_budget(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    # $0.10 a month, bot-wide; each edit holds up to $0.02 (20 credits) and costs $0.02 (auto size).
    env = {"MONTHLY_BUDGET_USD": "0.10", "COMMANDS_PER_MINUTE": "0", "MAX_JOBS_PER_USER": "30"}
    async with bot(fake_discord, openai, tmp_path, **env) as world:
        openai.delay = 0.3
        granted = await command(
            world, world.owner, "admin credits grant", user=world.owner, amount=1_000_000, reason="mine"
        )
        assert "Gave 1000000 credits" in await answer(world, granted)
        fired = await asyncio.gather(*(world.edit(PHOTO, user=world.owner) for _ in range(30)))
        texts = [await world.fake.wait_until(lambda it=it: _ended(it), timeout=60) for it in fired]
        done = [t for t in texts if t.startswith("Done")]
        refused = [t for t in texts if "image budget its operator set" in t or "left in all of" in t]
        assert len(done) + len(refused) == 30  # every command is answered
        assert 1 <= len(done) <= 5 and openai.post_count == len(done)
        data_dir = world.services.settings.data_dir
        charged = sum(int(r["captured"] or 0) for r in jobs(data_dir))
        assert charged <= 100  # credits = $0.10 at 1,000 per dollar; the provider got no more
        assert_books_balance(data_dir)


def _ended(it: FakeInteraction) -> str | None:
    last = it.original_edits[-1] if it.original_edits else ""
    return last if last.startswith("Done") or "budget" in last or "ref `" in last else None


async def test_the_operators_allotment_caps_a_server_audits_changes_and_shows_in_reports(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path) as world:
        admin = await member(world, "admin", permissions=int(Permission.ADMINISTRATOR))
        refused = await command(world, admin, "owner allotment", usd=0.02)
        assert "Only the operator" in await answer(world, refused)
        set_ = await command(world, world.owner, "owner allotment", usd=0.02)
        assert await answer(world, set_) == (
            f"Server `{world.guild.id}` may now spend $0.02 a month. Recorded in the audit channel."
        )
        await world.fake.wait_until(
            lambda: [m for m in world.fake.channel_messages(world.audit_channel) if "Allotment" in m.content]
        )
        assert (await world.finished(await world.edit(PHOTO))).startswith("Done")  # charged 10 of 20 held
        # The server's own budget and an admin's grants cannot lift the operator's allotment.
        await command(world, admin, "admin policy budget", usd=1000)
        await command(world, admin, "admin credits grant", user=world.user, amount=10_000, reason="more")
        it = await world.edit(PHOTO)
        assert "this server's share of the image budget" in await world.fake.wait_until(lambda: _ended(it))
        assert openai.post_count == 1
        report = await command(world, admin, "admin credits report")
        message = await world.fake.wait_until(lambda: [m for m in report.messages if m.embeds])
        fields = {f["name"]: f["value"] for f in message[-1].embeds[0]["fields"]}
        assert "This server: $0.01 (10 billed + 0 held) of its allotment $0.02" in " ".join(fields.values())
        owner = await command(world, world.owner, "owner report")
        shown = await world.fake.wait_until(lambda: [m for m in owner.messages if m.embeds])
        embed = shown[-1].embeds[0]
        assert "**$0.01** (10 credits" in embed["description"]
        assert "of the bot-wide budget: $20.00" in embed["description"]
        assert f"`{world.guild.id}` (approved) — $0.01 of $0.02" in embed["fields"][0]["value"]


async def test_the_operator_report_of_many_servers_ends_with_how_many_more_there_are(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path) as world:
        settings = world.services.storage.settings
        for i in range(30):
            guild_id = 1_400_000_000_000_000_000 + i
            await settings.set_guild_approved(guild_id, i % 2 == 0, actor_id=world.owner.id)
            await settings.set_guild_allotment(guild_id, "1234.56", actor_id=world.owner.id)
        owner = await command(world, world.owner, "owner report")
        [shown] = await world.fake.wait_until(lambda: [m for m in owner.messages if m.embeds])
        *servers, more = shown.embeds[0]["fields"][0]["value"].split("\n")
        assert all(re.fullmatch(r"`\d+` \((not )?approved\) — \$0\.00 of .+", line) for line in servers)
        assert more == f"…and {31 - len(servers)} more"  # the 30 servers and the harness's own


# -- limits before work ------------------------------------------------------------------------------


async def test_the_commands_per_minute_limit_refuses_before_any_download(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path, COMMANDS_PER_MINUTE="2") as world:
        for _ in range(2):
            assert (await world.finished(await world.edit(PHOTO))).startswith("Done")
        before = downloads(world)
        it = await world.edit(PHOTO)
        assert "Slow down" in await answer(world, it)
        assert downloads(world) == before and openai.post_count == 2
        other = await member(world, "bob")  # the limit is per member
        assert (await world.finished(await world.edit(PHOTO, user=other))).startswith("Done")


async def test_a_member_with_no_credits_and_no_allowance_due_is_refused_before_the_download(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path, STARTING_CREDITS="0") as world:
        it = await world.edit(PHOTO)
        assert "no credits left" in await world.fake.wait_until(
            lambda: it.original_edits and it.original_edits[-1]
        )
        assert downloads(world) == 0 and openai.post_count == 0
        # With an allowance due, the same member gets through (the top-up happens at the reservation).
        await command(world, world.owner, "admin policy allowance", amount=100, period="daily")
        assert (await world.finished(await world.edit(PHOTO))).startswith("Done")


async def test_open_mask_previews_per_member_are_capped_before_any_download(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path, MASK_CATALOG, MAX_MASK_PREVIEWS="1") as world:
        first = await world.fake.slash(
            world.user,
            "mask",
            channel=world.channel,
            options={"prompt": "a hat"},
            attachments={"image": ("photo.png", PHOTO)},
        )
        await world.fake.wait_until(lambda: first.original_message and first.original_message.components)
        before = downloads(world)
        second = await world.fake.slash(
            world.user,
            "mask",
            channel=world.channel,
            options={"prompt": "a scarf"},
            attachments={"image": ("photo.png", PHOTO)},
        )
        text = await world.fake.wait_until(lambda: second.original_edits and second.original_edits[-1])
        assert "already have 1 /mask preview" in text
        assert downloads(world) == before and openai.post_count == 0


# -- buttons re-check the present -----------------------------------------------------------------------


async def test_retry_uses_the_members_roles_now_not_the_ones_stored_with_the_job(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path) as world:
        vip = await world.guild.create_role("vip")
        bob = await member(world, "bob", roles=[vip])
        await command(world, world.owner, "admin policy limits", max_quality="low")
        await command(world, world.owner, "admin tier set", role=vip, max_quality="high")
        result = await published(world, await world.edit(PHOTO, user=bob, quality="high"))
        assert openai.requests[-1].fields["quality"] == "high"
        world.guild.members[bob.id].role_ids.remove(vip.id)  # bob lost the tier role
        retry = await world.fake.click(bob, result, control(result, "retry"))
        await published(world, retry)
        assert openai.requests[-1].fields["quality"] == "low"


async def test_a_double_click_on_retry_starts_one_job(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path) as world:
        result = await published(world, await world.edit(PHOTO))
        openai.fail_always(Fault.HANG)
        clicks = await asyncio.gather(
            *(world.fake.click(world.user, result, control(result, "retry")) for _ in range(2))
        )
        texts = await world.fake.wait_until(
            lambda: all(c.original_edits for c in clicks) and [c.original_edits[-1] for c in clicks]
        )
        assert any("already being started" in t for t in texts)
        await world.fake.wait_until(lambda: openai.post_count >= 2)
        assert len(jobs(world.services.settings.data_dir)) == 2
        openai.clear_faults()


async def start_from(world: World, result: FakeMessage, button: str) -> FakeInteraction:
    """A click on the result's Retry, or its Edit again form sent (the same prompt each time)."""
    if button == "retry":
        return await world.fake.click(world.user, result, control(result, "retry"))
    return await edit_again(world, result, "now at night")


def fail_once_after_the_hold(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The channel notice of a running edit, posted once its credits are held, fails once."""
    controls: Any = world.bot.get_cog("MembersCog").controls  # type: ignore[union-attr]
    real_announce = controls.announce

    def failing_once(*args: Any) -> None:
        monkeypatch.setattr(controls, "announce", real_announce)
        raise RuntimeError("failed after the hold")

    monkeypatch.setattr(controls, "announce", failing_once)


def hold_the_double_click_window(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The access service's clock stands still: a click is within the first one's window however slow
    the machine (only a released guard lets a second start through)."""
    monkeypatch.setattr(world.services.access, "_monotonic", lambda: 1000.0)


@pytest.mark.parametrize("button", ["retry", "again"])
async def test_a_start_from_a_result_that_failed_after_its_hold_is_not_started_again(
    fake_discord: FakeDiscord,
    openai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    button: str,
):
    """Something fails after the Retry's (or Edit again's) credits were held: that edit runs all the
    same, and a second click must not start, and hold for, another one."""
    async with bot(fake_discord, openai, tmp_path) as world:
        result = await published(world, await world.edit(PHOTO))
        hold_the_double_click_window(world, monkeypatch)
        fail_once_after_the_hold(world, monkeypatch)
        first = await start_from(world, result, button)
        await world.fake.wait_until(lambda: any("ref `" in e for e in first.original_edits))
        assert len(jobs(world.services.settings.data_dir)) == 2  # held: the edit was started
        second = await start_from(world, result, button)
        text = await world.fake.wait_until(lambda: second.original_edits and second.original_edits[-1])
        assert text == messages.ALREADY_STARTED
        data_dir = world.services.settings.data_dir
        await world.fake.wait_until(lambda: all(j["state"] == "delivered" for j in jobs(data_dir)))
        assert len(jobs(data_dir)) == 2 and openai.post_count == 2
        assert_books_balance(data_dir)


@pytest.mark.parametrize("button", ["retry", "again"])
async def test_a_start_from_a_result_that_failed_before_any_hold_can_be_tried_again(
    fake_discord: FakeDiscord,
    openai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    button: str,
):
    """The start failed before any credits were held (here its preparation): nothing runs, and the
    next click starts the edit, once."""
    async with bot(fake_discord, openai, tmp_path) as world:
        result = await published(world, await world.edit(PHOTO))
        hold_the_double_click_window(world, monkeypatch)
        edits = world.services.edits
        real_prepare = edits.prepare

        async def failing_once(*args: Any, **kw: Any) -> Any:
            monkeypatch.setattr(edits, "prepare", real_prepare)
            raise RuntimeError("failed before the hold")

        monkeypatch.setattr(edits, "prepare", failing_once)
        first = await start_from(world, result, button)
        await world.fake.wait_until(lambda: any("ref `" in e for e in first.original_edits))
        assert len(jobs(world.services.settings.data_dir)) == 1
        second = await start_from(world, result, button)
        assert (await world.finished(second)).startswith("Done")
        assert len(jobs(world.services.settings.data_dir)) == 2 and openai.post_count == 2


async def test_run_edit_on_a_mask_preview_uses_the_members_roles_at_the_click(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path, MASK_CATALOG) as world:
        vip = await world.guild.create_role("vip")
        bob = await member(world, "bob", roles=[vip])
        await command(world, world.owner, "admin policy limits", max_quality="low")
        await command(world, world.owner, "admin tier set", role=vip, max_quality="high")
        it = await world.fake.slash(
            bob,
            "mask",
            channel=world.channel,
            options={"prompt": "a red scarf", "quality": "high", "size": "1024x1024"},
            attachments={"image": ("cat.png", PHOTO), "mask": ("mask.png", box_mask())},
        )
        preview = await world.fake.wait_until(
            lambda: it.original_message and mask_control(it.original_message)
        )
        assert "high" in str(it.original_message.embeds)  # previewed at the tier's quality
        world.guild.members[bob.id].role_ids.remove(vip.id)  # bob lost the tier role meanwhile
        await world.fake.click(bob, it.original_message, preview)
        await world.fake.wait_until(lambda: openai.post_count == 1)
        assert openai.requests[-1].fields["quality"] == "low"


def mask_control(message: FakeMessage) -> str | None:
    return component_id(message, lambda c: c.endswith(":run"))


async def test_edit_again_sent_twice_for_the_same_result_starts_one_job(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    async with bot(fake_discord, openai, tmp_path) as world:
        result = await published(world, await world.edit(PHOTO))
        forms = [await world.fake.click(world.user, result, control(result, "again")) for _ in range(2)]
        await world.fake.wait_until(lambda: all(f.modal is not None for f in forms))
        openai.fail_always(Fault.HANG)
        sent = await asyncio.gather(
            *(world.fake.submit_modal(world.user, f, fields={"prompt": "now at night"}) for f in forms)
        )
        texts = await world.fake.wait_until(
            lambda: all(s.original_edits for s in sent) and [s.original_edits[-1] for s in sent]
        )
        assert any("already being started" in t for t in texts)
        await world.fake.wait_until(lambda: openai.post_count >= 2)
        assert len(jobs(world.services.settings.data_dir)) == 2
        openai.clear_faults()
