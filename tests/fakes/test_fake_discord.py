"""The local fake Discord works with the real discord.py client and enforces Discord's rules.

Every test runs an unmodified ``commands.AutoShardedBot`` against the fake over real HTTP and a real
websocket; the bot's commands are small throwaway functions defined in each test.
"""

import asyncio
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.fakes.discord import (
    DEFAULT_BOT_PERMISSIONS,
    BotFailure,
    FakeChannel,
    FakeDiscord,
    FakeDiscordUsageError,
    FakeGuild,
    FakeUser,
    Permission,
)

World = tuple[FakeGuild, FakeChannel, FakeUser]
CommandLike = app_commands.Command[Any, ..., Any] | app_commands.Group | app_commands.ContextMenu
StartBot = Callable[..., Awaitable["ProbeBot"]]


def make_png(size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    """A small real PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = make_png()


class ProbeBot(commands.AutoShardedBot):
    """A throwaway bot that registers the commands a test hands it and syncs them in ``setup_hook``."""

    def __init__(
        self,
        app_commands_: Sequence[CommandLike],
        *,
        sync_guild: int | None,
        intents: discord.Intents,
    ) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None)
        self._probe_commands = app_commands_
        self._sync_guild = sync_guild
        self.runner: asyncio.Task[None] | None = None

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Skip discord.py's 5-second pause before each later IDENTIFY (the fake has no identify limit)."""

    async def setup_hook(self) -> None:
        guild = discord.Object(self._sync_guild) if self._sync_guild else None
        for command in self._probe_commands:
            self.tree.add_command(command, guild=guild)
        await self.tree.sync(guild=guild)


@pytest.fixture
async def start_bot(fake_discord: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartBot]:
    """Start a :class:`ProbeBot` against the fake and wait until it is ready; closes it at teardown."""
    monkeypatch.setattr(discord.http.Route, "BASE", fake_discord.api_base)
    started: list[tuple[ProbeBot, asyncio.Task[None]]] = []

    async def start(
        *app_commands_: CommandLike,
        sync_guild: FakeGuild | None = None,
        token: str | None = None,
        intents: discord.Intents | None = None,
        expected_errors: tuple[type[BaseException], ...] = (),
        listeners: Mapping[str, Callable[..., Awaitable[None]]] | None = None,
        dynamic_items: Sequence[type[discord.ui.DynamicItem[Any]]] = (),
        wait_ready: bool = True,
    ) -> ProbeBot:
        bot = ProbeBot(
            app_commands_,
            sync_guild=sync_guild.id if sync_guild else None,
            intents=intents or discord.Intents.default(),
        )
        bot._connection.guild_ready_timeout = 0.05
        for name, listener in (listeners or {}).items():
            bot.add_listener(listener, name)
        bot.add_dynamic_items(*dynamic_items)
        fake_discord.attach_error_capture(bot, expected=expected_errors)
        task = bot.runner = asyncio.create_task(bot.start(token or fake_discord.token))
        await asyncio.sleep(0)  # let start() reach its setup before anything waits on the bot
        started.append((bot, task))
        if wait_ready:
            fake_discord.watch_task(task)
            await fake_discord.wait_for(bot.wait_until_ready())
        return bot

    yield start
    for bot, task in started:
        fake_discord.unwatch_task(task)
        await bot.close()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def world(fake_discord: FakeDiscord) -> World:
    """A guild with a text channel #art and a member alice."""
    guild = await fake_discord.create_guild(name="Art Club")
    channel = await guild.create_text_channel("art")
    alice = fake_discord.create_user("alice")
    await guild.add_member(alice)
    return guild, channel, alice


def request_lines(fake: FakeDiscord) -> list[str]:
    """``METHOD /path status`` for every recorded request."""
    return [f"{r.method} {r.path} {r.status}" for r in fake.requests]


# ---------------------------------------------------------------------------------------- login


@pytest.mark.parametrize("shard_count", [1, 2])
async def test_autosharded_bot_logs_in_syncs_commands_and_receives_its_guilds(
    fake_discord: FakeDiscord, start_bot: StartBot, shard_count: int
) -> None:
    fake_discord.shard_count = shard_count
    guilds = [await fake_discord.create_guild(name=f"Guild {i}") for i in range(4)]
    channel = await guilds[0].create_text_channel("art")

    @app_commands.command(description="Edit an image")
    @app_commands.describe(prompt="What to change", image="The picture")
    async def edit(
        interaction: discord.Interaction,
        prompt: str,
        image: discord.Attachment,
        count: app_commands.Range[int, 1, 4] = 1,
    ) -> None:
        await interaction.response.send_message("ok")

    bot = await start_bot(edit)

    app_id = fake_discord.application_id
    lines = request_lines(fake_discord)
    for expected in (
        "GET /users/@me 200",
        "GET /oauth2/applications/@me 200",
        f"PUT /applications/{app_id}/commands 200",
        "GET /gateway/bot 200",
    ):
        assert expected in lines
    assert lines.count("GET /gateway 101") == shard_count
    assert bot.shard_count == shard_count
    assert bot.user is not None and bot.user.id == fake_discord.bot_user.id
    assert {g.id for g in bot.guilds} == {g.id for g in guilds}
    cached_channel = bot.get_channel(channel.id)
    assert isinstance(cached_channel, discord.TextChannel) and cached_channel.name == "art"
    # discord.py computes the same permissions from the GUILD_CREATE roles as the fake does.
    expected_permissions = guilds[0].base_permissions(fake_discord.bot_user.id)
    assert bot.get_guild(guilds[0].id).me.guild_permissions.value == expected_permissions
    [synced] = fake_discord.synced_commands()
    assert synced["name"] == "edit"
    assert [(o["name"], o["type"], o.get("required", False)) for o in synced["options"]] == [
        ("prompt", 3, True),
        ("image", 11, True),
        ("count", 4, False),
    ]
    assert (await bot.tree.fetch_commands())[0].id == int(synced["id"])


async def test_wrong_token_is_refused_with_discords_401(
    fake_discord: FakeDiscord, start_bot: StartBot
) -> None:
    bot = await start_bot(token="not-the-token", wait_ready=False)

    with pytest.raises(discord.LoginFailure):
        await fake_discord.wait_for(bot.runner, timeout=5)

    [login] = [r for r in fake_discord.requests if r.path == "/users/@me"]
    assert login.status == 401
    assert login.response == {"message": "401: Unauthorized", "code": 0}
    assert "not-the-token" not in repr(login)


async def test_privileged_intent_not_enabled_in_portal_closes_gateway_with_4014(
    fake_discord: FakeDiscord, start_bot: StartBot
) -> None:
    intents = discord.Intents.default()
    intents.message_content = True
    bot = await start_bot(intents=intents, wait_ready=False)

    with pytest.raises(discord.PrivilegedIntentsRequired):
        await fake_discord.wait_for(bot.runner, timeout=5)


async def test_reconnect_is_refused_resume_and_bot_identifies_again(
    fake_discord: FakeDiscord, start_bot: StartBot, monkeypatch: pytest.MonkeyPatch, world: World
) -> None:
    # After op 9 discord.py reconnects to DEFAULT_GATEWAY (discord.com), so point that at the fake too.
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake_discord.gateway_url)
    )
    await start_bot()

    await fake_discord.send_reconnect()

    def identify_count() -> int:
        return sum(1 for e in fake_discord.gateway_log if e.get("op") == 2)

    await fake_discord.wait_until(lambda: identify_count() == 2 and fake_discord.connected)
    assert [e["op"] for e in fake_discord.gateway_log if e.get("op") in (2, 6)] == [2, 6, 2]
    assert fake_discord.token not in repr(fake_discord.gateway_log)


# ---------------------------------------------------------------------------------------- slash commands


@pytest.mark.parametrize(
    ("sync_scope", "where"),
    [("global", "guild_channel"), ("guild", "guild_channel"), ("global", "dm")],
)
async def test_attachment_option_bytes_are_read_by_the_bot(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World, sync_scope: str, where: str
) -> None:
    guild, channel, alice = world
    if where == "dm":
        channel = fake_discord.dm_channel(alice)
    seen: dict[str, Any] = {}

    @app_commands.command(description="Edit an image")
    async def edit(
        interaction: discord.Interaction, prompt: str, image: discord.Attachment, count: int = 1
    ) -> None:
        seen.update(
            prompt=prompt,
            count=count,
            data=await image.read(),
            filename=image.filename,
            content_type=image.content_type,
            size=(image.width, image.height),
            limit=interaction.filesize_limit,
            user=interaction.user.id,
            guild=interaction.guild_id,
        )
        await interaction.response.send_message(f"read {len(seen['data'])} bytes")

    await start_bot(edit, sync_guild=guild if sync_scope == "guild" else None)
    interaction = await fake_discord.slash(
        alice,
        "edit",
        channel=channel,
        options={"prompt": "invert it", "count": 2},
        attachments={"image": ("my cat.png", PNG)},
    )
    await fake_discord.wait_until(lambda: interaction.original)

    assert seen == {
        "prompt": "invert it",
        "count": 2,
        "data": PNG,
        "filename": "my cat.png",
        "content_type": "image/png",
        "size": (8, 6),
        "limit": 10 * 1024 * 1024,
        "user": alice.id,
        "guild": guild.id if where == "guild_channel" else None,
    }
    assert interaction.original["content"] == f"read {len(PNG)} bytes"
    assert interaction.callbacks[0]["type"] == 4
    assert any(r.path.startswith("/cdn/attachments/") and r.status == 200 for r in fake_discord.requests)
    if sync_scope == "guild":
        assert fake_discord.synced_commands() == []
        assert interaction.payload["data"]["guild_id"] == str(guild.id)
        with pytest.raises(FakeDiscordUsageError, match="never synced"):
            await fake_discord.slash(alice, "edit", channel=fake_discord.dm_channel(alice))


async def test_attachment_urls_are_signed_and_expire(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world
    reads: list[bytes | int] = []
    go = asyncio.Event()

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction, image: discord.Attachment) -> None:
        await interaction.response.defer()
        reads.append(await image.read())
        await go.wait()
        try:
            await image.read()
        except discord.NotFound as exc:
            reads.append(exc.status)

    await start_bot(edit)
    await fake_discord.slash(alice, "edit", channel=channel, attachments={"image": ("cat.png", PNG)})
    await fake_discord.wait_until(lambda: reads)
    fake_discord.advance_time(25 * 3600)  # Discord CDN links carry an expiry (ex=...) of about a day
    go.set()
    await fake_discord.wait_until(lambda: len(reads) == 2)

    assert reads == [PNG, 404]


@pytest.mark.parametrize(
    ("command", "options", "problem"),
    [
        ("upscale", {"image": ("a.png", PNG)}, "never synced"),
        ("edit", {"count": 2}, "required option 'image' is missing"),
        ("edit", {"image": ("a.png", PNG), "count": "two"}, "expects an integer"),
        ("edit", {"image": ("a.png", PNG), "count": 9}, "outside the allowed range"),
        ("edit", {"image": ("a.png", PNG), "colour": "red"}, "has no options"),
    ],
)
async def test_slash_refuses_what_the_discord_client_would_not_send(
    fake_discord: FakeDiscord,
    start_bot: StartBot,
    world: World,
    command: str,
    options: dict[str, Any],
    problem: str,
) -> None:
    _, channel, alice = world

    @app_commands.command(description="Edit an image")
    async def edit(
        interaction: discord.Interaction, image: discord.Attachment, count: app_commands.Range[int, 1, 4] = 1
    ) -> None:
        await interaction.response.send_message("ok")

    await start_bot(edit)
    with pytest.raises(FakeDiscordUsageError, match=problem):
        await fake_discord.slash(alice, command, channel=channel, options=options)


async def test_subcommand_group_options_are_typed_and_permission_gated(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    guild, channel, alice = world
    admin = fake_discord.create_user("mod")
    await guild.add_member(admin, permissions=Permission.MANAGE_GUILD)
    received: list[tuple[int, int, str]] = []

    credits = app_commands.Group(
        name="credits", description="Credits", default_permissions=discord.Permissions(manage_guild=True)
    )

    @credits.command(name="grant", description="Give credits")
    async def grant(
        interaction: discord.Interaction, user: discord.Member, amount: int, role: discord.Role
    ) -> None:
        received.append((user.id, amount, role.name))
        await interaction.response.send_message("granted", ephemeral=True)

    vip = await guild.create_role("vip")
    await start_bot(credits)
    interaction = await fake_discord.slash(
        admin, "credits grant", channel=channel, options={"user": alice, "amount": 5, "role": vip}
    )
    await fake_discord.wait_until(lambda: interaction.acknowledged)

    assert received == [(alice.id, 5, "vip")]
    assert interaction.ephemeral
    [option] = interaction.payload["data"]["options"]
    assert option["type"] == 1 and [o["type"] for o in option["options"]] == [6, 4, 8]
    with pytest.raises(FakeDiscordUsageError, match="default_member_permissions"):
        await fake_discord.slash(
            alice, "credits grant", channel=channel, options={"user": alice, "amount": 1, "role": vip}
        )


async def test_autocomplete_returns_the_bots_choices(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world

    async def models(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        names = ["gpt-image-1", "gpt-image-1-mini", "flux"]
        return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

    @app_commands.command(description="Edit an image")
    @app_commands.autocomplete(model=models)
    async def edit(interaction: discord.Interaction, image: discord.Attachment, model: str) -> None:
        await interaction.response.send_message(model)

    await start_bot(edit)
    choices = await fake_discord.autocomplete(alice, "edit", channel=channel, focused="model", value="gpt")

    assert [c["value"] for c in choices] == ["gpt-image-1", "gpt-image-1-mini"]


# ---------------------------------------------------------------------------------------- responses


async def test_defer_then_followup_with_files_round_trips_the_bytes(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world
    outputs = [make_png(color=(245, 55, 225)), make_png((4, 4), (1, 2, 3))]
    downloaded: list[bytes] = []

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction, image: discord.Attachment) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(content="Downloading...")
        await image.read()
        await interaction.edit_original_response(content="Editing...")
        files = [discord.File(io.BytesIO(data), filename=f"edited_{i}.png") for i, data in enumerate(outputs)]
        message = await interaction.followup.send(
            "Here you go", files=files, embed=discord.Embed(title="Edited"), wait=True
        )
        downloaded.extend([await a.read() for a in message.attachments])
        await interaction.edit_original_response(content="Done.")

    await start_bot(edit)
    interaction = await fake_discord.slash(
        alice, "edit", channel=channel, attachments={"image": ("cat.png", PNG)}
    )
    await fake_discord.wait_until(lambda: interaction.original_edits[-1:] == ["Done."])

    assert interaction.deferred
    assert interaction.callbacks == [{"type": 5}]
    assert interaction.original_edits == ["Downloading...", "Editing...", "Done."]
    [followup] = interaction.followups
    assert followup is not interaction.original_message
    assert followup.files == [("edited_0.png", outputs[0]), ("edited_1.png", outputs[1])]
    assert followup.embeds[0]["title"] == "Edited"
    assert downloaded == outputs
    upload = next(
        r for r in fake_discord.requests if r.method == "POST" and r.path.endswith(interaction.token)
    )
    assert upload.part_names == ["payload_json", "files[0]", "files[1]"]
    assert upload.query["wait"] == "1"
    assert [m.id for m in interaction.messages] == [interaction.original_message.id, followup.id]


async def test_original_and_followups_are_edited_fetched_and_deleted_through_the_token(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world
    other = make_png(color=(1, 1, 1))
    fetched: list[str] = []
    done = asyncio.Event()

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("v1", file=discord.File(io.BytesIO(PNG), filename="a.png"))
        await interaction.edit_original_response(
            content="v2", attachments=[discord.File(io.BytesIO(other), filename="b.png")]
        )
        followup = await interaction.followup.send("f1", wait=True)
        await followup.edit(content="f2")
        fetched.append((await interaction.followup.fetch_message(followup.id)).content)
        fetched.append((await interaction.original_response()).content)
        await followup.delete()
        await interaction.delete_original_response()
        done.set()

    await start_bot(edit)
    interaction = await fake_discord.slash(alice, "edit", channel=channel)
    await fake_discord.wait_for(done.wait())

    callback = next(r for r in fake_discord.requests if r.path.endswith("/callback"))
    assert callback.part_names == ["payload_json", "files[0]"]
    assert interaction.original_edits == ["v2"]
    original = interaction.original_message
    assert original.files == [("b.png", other)]  # the PATCH's attachment list replaced a.png
    assert original.edits[0]["files"] == [("a.png", PNG)]
    assert fetched == ["f2", "v2"]
    assert original.deleted and interaction.followups[0].deleted
    assert interaction.original is None
    assert fake_discord.channel_messages(channel) == []


@pytest.mark.parametrize(
    ("defer_ephemeral", "first_followup_ephemeral", "second_followup_ephemeral"),
    [
        (False, True, True),  # the classic bug: the "private" error lands in the public thinking message
        (True, False, False),
        (False, False, True),
    ],
)
async def test_first_followup_after_defer_takes_over_original_and_keeps_its_visibility(
    fake_discord: FakeDiscord,
    start_bot: StartBot,
    world: World,
    defer_ephemeral: bool,
    first_followup_ephemeral: bool,
    second_followup_ephemeral: bool,
) -> None:
    _, channel, alice = world
    returned_ids: list[int] = []

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=defer_ephemeral, thinking=True)
        first = await interaction.followup.send("first", ephemeral=first_followup_ephemeral, wait=True)
        second = await interaction.followup.send("second", ephemeral=second_followup_ephemeral, wait=True)
        returned_ids.extend([first.id, second.id])

    await start_bot(edit)
    interaction = await fake_discord.slash(alice, "edit", channel=channel)
    await fake_discord.wait_until(lambda: len(returned_ids) == 2)

    first, second = interaction.followups
    assert first is interaction.original_message
    assert returned_ids == [interaction.original_message.id, second.id]
    assert first.content == "first" and not first.loading
    assert first.ephemeral is defer_ephemeral is interaction.ephemeral
    assert second.ephemeral is second_followup_ephemeral
    assert interaction.original_edits == []  # a takeover is not a PATCH


@pytest.mark.parametrize("how", ["slow_bot_real_time", "advanced_fake_clock"])
async def test_ack_after_the_deadline_gets_unknown_interaction_10062(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World, how: str
) -> None:
    _, channel, alice = world
    go = asyncio.Event()
    outcome: list[BaseException] = []
    if how == "slow_bot_real_time":
        fake_discord.ack_deadline = 0.2

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction) -> None:
        if how == "slow_bot_real_time":
            await asyncio.sleep(0.3)  # the bot's own slow work, not a test wait
        else:
            await go.wait()
        try:
            await interaction.response.defer()
        except discord.HTTPException as exc:
            outcome.append(exc)

    await start_bot(edit)
    interaction = await fake_discord.slash(alice, "edit", channel=channel)
    if how == "advanced_fake_clock":
        fake_discord.advance_time(3.01)
        go.set()
    await fake_discord.wait_until(lambda: outcome)

    [error] = outcome
    assert isinstance(error, discord.NotFound)
    assert (error.status, error.code, error.text) == (404, 10062, "Unknown interaction")
    assert not interaction.acknowledged and interaction.callbacks == []


async def test_second_acknowledgement_gets_40060(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world
    results: list[str | int] = []

    async def defer(interaction: discord.Interaction) -> None:
        try:
            await interaction.response.defer()
            results.append("ok")
        except discord.HTTPException as exc:
            results.append(exc.code)

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction) -> None:
        await defer(interaction)

    # An on_interaction listener racing the command is a real way to answer twice: both pass
    # discord.py's local "already responded" check before either request returns.
    await start_bot(edit, listeners={"on_interaction": defer})
    interaction = await fake_discord.slash(alice, "edit", channel=channel)
    await fake_discord.wait_until(lambda: len(results) == 2)

    assert sorted(results, key=str) == [40060, "ok"]
    rejected = [r for r in fake_discord.requests if r.path.endswith("/callback") and r.status == 400]
    assert rejected[0].response == {"message": "Interaction has already been acknowledged.", "code": 40060}
    assert len(interaction.callbacks) == 1


@pytest.mark.parametrize("expiry", ["fifteen_minutes_pass", "token_revoked"])
async def test_expired_token_gets_50027_and_a_bot_token_channel_message_still_works(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World, expiry: str
) -> None:
    _, channel, alice = world
    job_done = asyncio.Event()
    errors: list[discord.HTTPException] = []

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await job_done.wait()  # a provider job that outlives the token
        result = discord.File(io.BytesIO(PNG), filename="result.png")
        try:
            await interaction.followup.send("Done", file=result)
        except discord.HTTPException as exc:
            errors.append(exc)
            result.reset()
            await interaction.channel.send(f"{interaction.user.mention} your edit is ready", file=result)

    await start_bot(edit)
    interaction = await fake_discord.slash(alice, "edit", channel=channel)
    await fake_discord.wait_until(lambda: interaction.acknowledged)
    if expiry == "fifteen_minutes_pass":
        fake_discord.advance_time(15 * 60 + 1)
    else:
        fake_discord.expire_token(interaction.token)
    job_done.set()
    posted = await fake_discord.wait_until(
        lambda: [m for m in fake_discord.channel_messages(channel) if m.files and not m.interaction]
    )

    [error] = errors
    assert (error.status, error.code, error.text) == (401, 50027, "Invalid Webhook Token")
    assert posted[0].files == [("result.png", PNG)]
    assert posted[0].mentions == [alice.id]
    assert interaction.followups == []


# ---------------------------------------------------------------------------------------- message limits


async def test_without_embed_links_a_channel_message_loses_its_embed_and_an_embed_alone_is_refused(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, _ = world
    await channel.set_permissions(fake_discord.bot_user, deny=int(Permission.EMBED_LINKS))
    bot = await start_bot()
    text_channel = bot.get_channel(channel.id)
    assert isinstance(text_channel, discord.TextChannel)
    embed = discord.Embed(description="d").set_footer(text="job 1")

    kept = await text_channel.send("with text", embed=embed)
    assert kept.embeds == [] and fake_discord.message(kept.id).embeds == []
    with_file = await text_channel.send(embed=embed, file=discord.File(io.BytesIO(PNG), filename="a.png"))
    assert with_file.embeds == [] and len(with_file.attachments) == 1
    edited = await kept.edit(content="edited", embed=embed)
    assert edited.embeds == []
    with pytest.raises(discord.Forbidden) as refused:
        await text_channel.send(embed=embed)
    assert refused.value.code == 50013
    with pytest.raises(discord.HTTPException) as emptied:
        await kept.edit(content=None, embed=embed)
    assert (emptied.value.status, emptied.value.code) == (400, 50006)

    await channel.set_permissions(fake_discord.bot_user)  # Embed Links back: embeds are kept
    assert (await text_channel.send("again", embed=embed)).embeds[0].footer.text == "job 1"


async def test_a_nonce_over_25_characters_gets_50035(start_bot: StartBot, world: World) -> None:
    _, channel, _ = world
    bot = await start_bot()
    text_channel = bot.get_channel(channel.id)
    assert isinstance(text_channel, discord.TextChannel)
    assert (await text_channel.send("ok", nonce="n" * 25)).content == "ok"
    with pytest.raises(discord.HTTPException) as too_long:
        await text_channel.send("too long", nonce="n" * 26)
    assert (too_long.value.status, too_long.value.code) == (400, 50035)


@pytest.mark.parametrize("how", ["raw_multipart_with_11_files", "edit_keeping_10_and_adding_1"])
async def test_more_than_ten_attachments_gets_30015(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World, how: str
) -> None:
    _, channel, _ = world
    bot = await start_bot()
    text_channel = bot.get_channel(channel.id)
    assert isinstance(text_channel, discord.TextChannel)

    def files(n: int) -> list[discord.File]:
        return [discord.File(io.BytesIO(PNG), filename=f"{i}.png") for i in range(n)]

    with pytest.raises(discord.HTTPException) as raised:
        if how == "raw_multipart_with_11_files":
            # discord.py refuses 11 files itself, so build the request it would send by hand.
            form: list[dict[str, Any]] = [
                {"name": "payload_json", "value": json.dumps({"content": "eleven"})}
            ]
            form += [
                {
                    "name": f"files[{i}]",
                    "value": PNG,
                    "filename": f"{i}.png",
                    "content_type": "application/octet-stream",
                }
                for i in range(11)
            ]
            route = discord.http.Route("POST", "/channels/{channel_id}/messages", channel_id=channel.id)
            await bot.http.request(route, form=form)
        else:
            message = await text_channel.send(files=files(10))
            await message.edit(attachments=[*message.attachments, *files(1)])

    assert (raised.value.status, raised.value.code) == (400, 30015)


@pytest.mark.parametrize("path", ["interaction_followup", "channel_send"])
async def test_files_over_the_attachment_size_limit_together_get_413_40005(
    fake_discord: FakeDiscord, start_bot: StartBot, path: str
) -> None:
    guild = await fake_discord.create_guild(attachment_size_limit=1024)
    channel = await guild.create_text_channel("small")
    alice = fake_discord.create_user("alice")
    await guild.add_member(alice)
    outcome: list[Any] = []

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        outcome.append(interaction.filesize_limit)
        limit = interaction.filesize_limit
        # One file at the limit, one over it, then two that each fit but not together.
        for sizes in ((limit,), (limit + 1,), (limit // 2 + 1, limit // 2 + 1)):
            files = [
                discord.File(io.BytesIO(b"x" * size), filename=f"out{i}.bin") for i, size in enumerate(sizes)
            ]
            try:
                if path == "interaction_followup":
                    await interaction.followup.send(files=files)
                else:
                    await interaction.channel.send(files=files)
                outcome.append("ok")
            except discord.HTTPException as exc:
                outcome.append((exc.status, exc.code, exc.text))

    await start_bot(edit)
    await fake_discord.slash(alice, "edit", channel=channel)
    await fake_discord.wait_until(lambda: len(outcome) == 4)

    too_large = (413, 40005, "Request entity too large")
    assert outcome == [1024, "ok", too_large, too_large]


@pytest.mark.parametrize(
    ("payload", "status", "code", "error_path"),
    [
        ({"content": "x" * 2001}, 400, 50035, ["content"]),
        ({"embeds": [{"title": "t"}] * 11}, 400, 50035, ["embeds"]),
        ({"embeds": [{"description": "d" * 4000}, {"description": "d" * 2001}]}, 400, 50035, ["embeds"]),
        ({"embeds": [{"title": "t" * 257}]}, 400, 50035, ["embeds", "0", "title"]),
        ({"content": "   "}, 400, 50006, None),
        (
            {"content": "hi", "allowed_mentions": {"parse": ["users"], "users": ["1"]}},
            400,
            50035,
            ["allowed_mentions"],
        ),
    ],
)
async def test_message_limits_are_enforced_like_discord(
    fake_discord: FakeDiscord,
    start_bot: StartBot,
    world: World,
    payload: dict[str, Any],
    status: int,
    code: int,
    error_path: list[str] | None,
) -> None:
    _, channel, _ = world
    bot = await start_bot()
    route = discord.http.Route("POST", "/channels/{channel_id}/messages", channel_id=channel.id)

    with pytest.raises(discord.HTTPException) as raised:
        await bot.http.request(route, json=payload)

    assert (raised.value.status, raised.value.code) == (status, code)
    body = fake_discord.requests[-1].response
    if error_path is not None:
        node = body["errors"]
        for key in error_path:
            node = node[key]
        assert node["_errors"][0]["code"]


async def test_channel_message_records_allowed_mentions_and_who_was_pinged(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world
    bot = await start_bot()
    text_channel = bot.get_channel(channel.id)
    assert isinstance(text_channel, discord.TextChannel)

    await text_channel.send(f"{alice.mention} @everyone", allowed_mentions=discord.AllowedMentions.none())
    await text_channel.send(f"{alice.mention} done")

    quiet, loud = fake_discord.channel_messages(channel)
    assert quiet.allowed_mentions == {"parse": []}
    assert (quiet.mentions, quiet.mention_everyone) == ([], False)
    assert loud.allowed_mentions is None and loud.mentions == [alice.id]


async def test_missing_channel_permission_and_deleted_channel_fail_like_discord(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    guild, _, _ = world
    no_files = await guild.create_text_channel(
        "no-files", bot_permissions=DEFAULT_BOT_PERMISSIONS & ~Permission.ATTACH_FILES
    )
    gone = await guild.create_text_channel("gone")
    bot = await start_bot()
    no_files_channel, gone_channel = bot.get_channel(no_files.id), bot.get_channel(gone.id)
    assert isinstance(no_files_channel, discord.TextChannel) and isinstance(gone_channel, discord.TextChannel)
    await fake_discord.delete_channel(gone)

    with pytest.raises(discord.Forbidden) as forbidden:
        await no_files_channel.send(file=discord.File(io.BytesIO(PNG), filename="a.png"))
    await no_files_channel.send("text is fine")
    with pytest.raises(discord.NotFound) as not_found:
        await gone_channel.send("hello?")
    with pytest.raises(discord.NotFound) as no_message:
        await no_files_channel.fetch_message(12345)

    assert forbidden.value.code == 50013
    assert not_found.value.code == 10003
    assert no_message.value.code == 10008


async def test_channel_routes_fetch_edit_delete_and_members(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    guild, channel, alice = world
    bot = await start_bot()
    users_message = await fake_discord.post_message(alice, channel, "my picture")

    fetched_channel = await bot.fetch_channel(channel.id)
    assert isinstance(fetched_channel, discord.TextChannel)
    sent = await fetched_channel.send("status: queued")
    await sent.edit(content="status: done")
    again = await fetched_channel.fetch_message(sent.id)
    theirs = await fetched_channel.fetch_message(users_message.id)
    with pytest.raises(discord.Forbidden) as not_author:
        await theirs.edit(content="hijacked")
    with pytest.raises(discord.Forbidden) as no_manage:
        await theirs.delete()
    await sent.delete()
    member = await bot.get_guild(guild.id).fetch_member(alice.id)
    with pytest.raises(discord.NotFound) as no_member:
        await bot.get_guild(guild.id).fetch_member(12345)

    assert again.content == "status: done" and again.edited_at is not None
    assert theirs.author.id == alice.id and theirs.content == "my picture"
    assert (not_author.value.code, no_manage.value.code, no_member.value.code) == (50005, 50013, 10007)
    assert fake_discord.message(sent.id).deleted
    assert member.name == "alice"
    assert fake_discord.channel_messages(channel) == [users_message]


async def test_dm_to_user_with_closed_dms_gets_50007(fake_discord: FakeDiscord, start_bot: StartBot) -> None:
    open_user = fake_discord.create_user("open")
    closed_user = fake_discord.create_user("closed", dms_open=False)
    bot = await start_bot()

    await (await bot.fetch_user(open_user.id)).send("hi")
    with pytest.raises(discord.Forbidden) as raised:
        await (await bot.fetch_user(closed_user.id)).send("hi")

    assert raised.value.code == 50007
    [dm] = [m for m in fake_discord.messages if m.guild_id is None]
    assert dm.content == "hi" and fake_discord.channels[dm.channel_id].recipients == [open_user]


async def test_rate_limited_request_is_retried_by_discord_py(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.followup.send("after the 429")

    await start_bot(edit)
    fake_discord.rate_limit_next("POST /webhooks/", retry_after=0.05)
    interaction = await fake_discord.slash(alice, "edit", channel=channel)
    await fake_discord.wait_until(lambda: interaction.followups)

    statuses = [
        r.status for r in fake_discord.requests if r.method == "POST" and r.path.startswith("/webhooks/")
    ]
    assert statuses == [429, 200]
    limited = next(r for r in fake_discord.requests if r.status == 429)
    assert limited.response == {
        "message": "You are being rate limited.",
        "retry_after": 0.05,
        "global": False,
    }


# ---------------------------------------------------------------------------------------- threads, components


async def test_thread_created_from_a_followup_gets_the_result_file(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world
    threads: list[discord.Thread] = []

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(content="Working...")
        message = await interaction.followup.send("Results below", wait=True)
        # discord.py quirk: a followup's WebhookMessage has no guild, so message.create_thread()
        # raises before any request. Create the thread through the channel instead.
        with pytest.raises(ValueError, match="guild info"):
            await message.create_thread(name="Edits")
        thread = await interaction.channel.create_thread(
            name="Edits", message=message, auto_archive_duration=60
        )
        await thread.send(file=discord.File(io.BytesIO(PNG), filename="edited.png"))
        threads.append(thread)

    bot = await start_bot(edit)
    interaction = await fake_discord.slash(alice, "edit", channel=channel)
    await fake_discord.wait_until(lambda: threads)

    [followup] = interaction.followups
    thread = followup.thread
    assert thread is not None and thread.type == 11 and thread.id == followup.id
    assert thread.parent_id == channel.id and thread.name == "Edits"
    [in_thread] = fake_discord.channel_messages(thread)
    assert in_thread.files == [("edited.png", PNG)]
    assert threads[0].id == thread.id and threads[0].parent_id == channel.id
    await fake_discord.wait_until(
        lambda: bot.get_channel(thread.id) is not None
    )  # THREAD_CREATE reached the cache


async def test_thread_on_an_ephemeral_original_is_an_unknown_message(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world
    errors: list[discord.HTTPException] = []

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("only you", ephemeral=True)
        original = await interaction.original_response()
        try:
            await original.create_thread(name="Edits")
        except discord.HTTPException as exc:
            errors.append(exc)

    await start_bot(edit)
    await fake_discord.slash(alice, "edit", channel=channel)
    await fake_discord.wait_until(lambda: errors)

    assert (errors[0].status, errors[0].code) == (404, 10008)


class AgainView(discord.ui.View):
    """A "Run again" button and a quality select."""

    def __init__(self) -> None:
        super().__init__(timeout=60)
        self.quality: list[str] = []

    @discord.ui.button(label="Run again", custom_id="again", style=discord.ButtonStyle.primary)
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button["AgainView"]) -> None:
        await interaction.response.edit_message(content=f"clicked by {interaction.user.name}", view=None)

    @discord.ui.select(
        custom_id="quality",
        options=[discord.SelectOption(label=q, value=q) for q in ("low", "medium", "high")],
    )
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select["AgainView"]) -> None:
        self.quality = list(select.values)
        await interaction.response.defer()


async def test_button_click_and_select_round_trip(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world
    views: list[AgainView] = []

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction) -> None:
        view = AgainView()
        views.append(view)
        await interaction.response.send_message("Done.", view=view)

    await start_bot(edit)
    command = await fake_discord.slash(alice, "edit", channel=channel)
    message = await fake_discord.wait_until(lambda: command.original_message)
    assert message.find_component("again")["label"] == "Run again"

    picked = await fake_discord.select(alice, message, "quality", ["high"])
    await fake_discord.wait_until(lambda: picked.acknowledged)
    clicked = await fake_discord.click(alice, message, "again")
    await fake_discord.wait_until(lambda: clicked.acknowledged)

    assert views[0].quality == ["high"]
    assert picked.callbacks == [{"type": 6}] and picked.deferred
    assert clicked.callbacks[0]["type"] == 7
    assert message.content == "clicked by alice" and message.components == []
    assert clicked.original_message is message
    with pytest.raises(FakeDiscordUsageError, match="no component"):
        await fake_discord.click(alice, message, "again")


async def test_dynamic_button_on_an_old_message_works_after_a_bot_restart(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world
    retried: list[int] = []

    class RetryButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"job:(?P<job>[0-9]+):retry"):
        def __init__(self, job_id: int) -> None:
            super().__init__(discord.ui.Button(label="Retry", custom_id=f"job:{job_id}:retry"))
            self.job_id = job_id

        @classmethod
        async def from_custom_id(
            cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: Any
        ) -> "RetryButton":
            return cls(int(match["job"]))

        async def callback(self, interaction: discord.Interaction) -> None:
            retried.append(self.job_id)
            await interaction.response.send_message(f"retrying job {self.job_id}", ephemeral=True)

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("Failed.", view=discord.ui.View().add_item(RetryButton(42)))

    first = await start_bot(edit)
    command = await fake_discord.slash(alice, "edit", channel=channel)
    message = await fake_discord.wait_until(lambda: command.original_message)
    assert first.runner is not None
    fake_discord.unwatch_task(first.runner)
    await first.close()

    await start_bot(edit, dynamic_items=[RetryButton])  # a new process: no views in memory
    click = await fake_discord.click(alice, message, "job:42:retry")
    await fake_discord.wait_until(lambda: click.acknowledged)

    assert retried == [42]
    assert click.original["content"] == "retrying job 42" and click.ephemeral


class EditModal(discord.ui.Modal, title="Edit image"):
    """A text input plus a file upload, the way discord.py 2.7 builds them."""

    prompt = discord.ui.TextInput(label="Prompt", custom_id="prompt", max_length=200)
    image = discord.ui.Label(text="Image", component=discord.ui.FileUpload(custom_id="image", max_values=2))

    def __init__(self, sink: list[tuple[str, list[tuple[str, bytes]]]]) -> None:
        super().__init__(custom_id="edit-modal")
        self.sink = sink

    async def on_submit(self, interaction: discord.Interaction) -> None:
        upload = self.image.component
        assert isinstance(upload, discord.ui.FileUpload)
        files = [(a.filename, await a.read()) for a in upload.values]
        self.sink.append((self.prompt.value, files))
        await interaction.response.send_message("Queued", ephemeral=True)


async def test_modal_submit_with_text_input_and_file_upload(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world
    submitted: list[tuple[str, list[tuple[str, bytes]]]] = []

    @app_commands.command(description="Edit with a form")
    async def form(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(EditModal(submitted))

    await start_bot(form)
    opened = await fake_discord.slash(alice, "form", channel=channel)
    modal = await fake_discord.wait_until(lambda: opened.modal)
    assert modal["custom_id"] == "edit-modal"
    assert [c["type"] for c in modal["components"]] == [1, 18]

    with pytest.raises(FakeDiscordUsageError, match="required"):
        await fake_discord.submit_modal(alice, opened, "edit-modal", attachments={"image": [("a.png", PNG)]})
    submit = await fake_discord.submit_modal(
        alice,
        opened,
        "edit-modal",
        fields={"prompt": "make it blue"},
        attachments={"image": [("a.png", PNG)]},
    )
    await fake_discord.wait_until(lambda: submit.acknowledged)

    assert submitted == [("make it blue", [("a.png", PNG)])]
    assert submit.ephemeral and submit.original["content"] == "Queued"
    assert opened.modal is None


async def test_message_context_menu_on_a_users_image(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world
    received: list[bytes] = []

    @app_commands.context_menu(name="Edit image")
    async def edit_image(interaction: discord.Interaction, message: discord.Message) -> None:
        received.append(await message.attachments[0].read())
        await interaction.response.send_message(f"editing {message.attachments[0].filename}", ephemeral=True)

    await start_bot(edit_image)
    posted = await fake_discord.post_message(alice, channel, "look", attachments=[("cat.png", PNG)])
    interaction = await fake_discord.message_command(alice, "Edit image", posted)
    await fake_discord.wait_until(lambda: interaction.acknowledged)

    assert received == [PNG]
    assert interaction.original["content"] == "editing cat.png"
    assert interaction.payload["data"]["type"] == 3


# ---------------------------------------------------------------------------------------- harness behaviour


async def test_unknown_route_is_answered_404_and_recorded(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    guild, _, _ = world
    bot = await start_bot()

    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/guilds/{guild_id}/bans", guild_id=guild.id))

    [unknown] = fake_discord.unknown
    assert (unknown.method, unknown.path, unknown.status) == ("GET", f"/guilds/{guild.id}/bans", 404)
    fake_discord.unknown.clear()  # the fixture's teardown would fail the test otherwise


async def test_wait_until_fails_fast_when_a_malformed_event_kills_the_bot(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    await start_bot()
    broken = {
        "id": "1",
        "type": 2,
        "token": "t",
        "version": 1,
        "application_id": str(fake_discord.application_id),
    }

    await fake_discord.dispatch(
        "INTERACTION_CREATE", broken
    )  # no attachment_size_limit: discord.py KeyErrors

    with pytest.raises(BotFailure, match="watched bot task ended"):
        await fake_discord.wait_until(lambda: False, timeout=5)


async def test_bot_errors_are_captured_and_the_original_handler_still_runs(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, alice = world
    handled: list[str] = []

    class QuotaExceeded(Exception):
        pass

    @app_commands.command(description="Edit an image")
    async def edit(interaction: discord.Interaction) -> None:
        raise QuotaExceeded("no credits")

    bot = await start_bot(edit, expected_errors=(QuotaExceeded,))

    async def on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        handled.append(type(getattr(error, "original", error)).__name__)
        await interaction.response.send_message("You are out of credits.", ephemeral=True)

    bot.tree.on_error = on_error
    fake_discord.attach_error_capture(bot, expected=(QuotaExceeded,))
    interaction = await fake_discord.slash(alice, "edit", channel=channel)
    await fake_discord.wait_until(lambda: interaction.acknowledged)

    assert handled == ["QuotaExceeded"]
    assert isinstance(fake_discord.errors[0].__cause__, QuotaExceeded)
    assert interaction.original["content"] == "You are out of credits."


async def test_a_repeated_nonce_returns_the_first_message_instead_of_posting_twice(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, _ = world
    bot = await start_bot()
    target = bot.get_partial_messageable(channel.id)
    first = await target.send("result", nonce="rtjob1")
    again = await target.send("result", nonce="rtjob1")  # a retry after a crash
    other = await target.send("result", nonce="rtjob2")
    assert again.id == first.id != other.id
    assert len(fake_discord.channel_messages(channel)) == 2


async def test_held_requests_wait_for_the_test_and_can_be_released_dropped_cut_or_stopped(
    fake_discord: FakeDiscord, start_bot: StartBot, world: World
) -> None:
    _, channel, _ = world
    bot = await start_bot()
    target = bot.get_partial_messageable(channel.id)
    held = fake_discord.hold("POST", rf"/channels/{channel.id}/messages")
    sending = asyncio.create_task(target.send("slow"))
    await fake_discord.wait_until(lambda: held.held)
    assert not fake_discord.channel_messages(channel) and not sending.done()
    held.release()
    await sending
    assert [m.content for m in fake_discord.channel_messages(channel)] == ["slow"]

    dropped = fake_discord.hold("POST", rf"/channels/{channel.id}/messages")
    failing = asyncio.create_task(target.send("lost"))
    await fake_discord.wait_until(lambda: dropped.held)
    dropped.drop()
    with pytest.raises(discord.HTTPException):
        await failing
    assert [m.content for m in fake_discord.channel_messages(channel)] == ["slow"]
    await target.send("normal again")  # the rule is spent

    cut = fake_discord.hold("POST", rf"/channels/{channel.id}/messages", times=5)
    cut.cut()
    with pytest.raises(aiohttp.ClientError):
        await target.send("cut off")
    cut.stop()  # spent after one of its five
    await target.send("back")
    assert [m.content for m in fake_discord.channel_messages(channel)][-1] == "back"
