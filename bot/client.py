"""The Discord bot class, its command tree (the one error router) and its wiring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from collections.abc import Mapping
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.app import Services, start_services
from bot.errors import RetouchError, ShuttingDown, new_reference
from bot.services.access import RateLimited, operator_ids
from bot.sharding import ShardPlan, ShardSharing

log = logging.getLogger(__name__)

# Extensions are listed explicitly; one that fails to load stops start-up.
EXTENSIONS = (
    "cogs.edit",
    "cogs.mask",
    "cogs.job_controls",
    "cogs.credits",
    "cogs.settings",
    "cogs.admin",
    "cogs.diagnose",
    "cogs.owner",
    "cogs.members",
)
HEARTBEAT_SECONDS = 15.0
# After the job drain, how long command handlers get to send their last message.
REPLY_GRACE_SECONDS = 10.0
# The operator's commands work anywhere (approving the first server needs them); they check the user.
OPERATOR_COMMAND = "owner"
# The Approve button offered to the operator in an unapproved server; cogs.owner handles the click.
APPROVE_CUSTOM_ID = "retouch:approve:{guild_id}"
# Discord takes one IDENTIFY per 5 s from a bot (`max_concurrency` 1, all but the largest bots);
# discord.py waits as long before each shard it starts but the first.
IDENTIFY_GAP_SECONDS = 5.0
# Discord refuses (400) a message longer than this; a refusal it refuses leaves the user on "thinking…".
MESSAGE_CHARS = 2000


class DevGuildUnavailable(Exception):
    """Discord will not take the commands for DEV_GUILD_ID's server: the bot is not in it."""

    def __init__(self, guild_id: int, status: int) -> None:
        super().__init__(f"DEV_GUILD_ID {guild_id}: HTTP {status}")
        self.guild_id = guild_id
        self.status = status


# The click is handled by cogs.owner's dynamic item; this view only renders the button, and a timeout
# keeps discord.py from holding every such reply's view in memory for good.
APPROVE_VIEW_SECONDS = 60.0


def approve_view(guild_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=APPROVE_VIEW_SECONDS)
    custom_id = APPROVE_CUSTOM_ID.format(guild_id=guild_id)
    view.add_item(
        discord.ui.Button(label="Approve this server", style=discord.ButtonStyle.success, custom_id=custom_id)
    )
    return view


def point_discord_at(api_base: str) -> None:
    """Send every REST call (and, via GET /gateway/bot, the gateway) to `api_base` — a proxy or a fake."""
    discord.http.Route.BASE = api_base.rstrip("/")


async def reply_privately(
    interaction: discord.Interaction, text: str, *, view: discord.ui.View | None = None
) -> None:
    """Tell only the invoking user, whatever state the interaction is in. Never raises."""
    # bot.messages keeps what it quotes short; this is the backstop for any text that is still too long.
    if len(text) > MESSAGE_CHARS:
        text = text[: MESSAGE_CHARS - 1] + "…"
    if interaction.extras.get("token_dead"):
        # Discord already refused this token once; another try only adds to the invalid-request count.
        log.info("could not tell user %s about an error: the interaction token is spent", interaction.user.id)
        return
    try:
        if not interaction.response.is_done():
            if view is not None:
                await interaction.response.send_message(text, ephemeral=True, view=view)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        elif interaction.extras.get("ephemeral_original"):
            # Our deferred progress message is already private: turn it into the error.
            await interaction.edit_original_response(content=text, embed=None, attachments=[], view=None)
        else:
            await interaction.followup.send(text, ephemeral=True)
    except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
        log.warning("could not tell user %s about an error: %s", interaction.user.id, type(exc).__name__)


class RetouchTree(app_commands.CommandTree):
    """Routes every command error to a short private message; logs the unexpected with a reference."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        bot = interaction.client
        if not isinstance(bot, RetouchBot) or interaction.type is discord.InteractionType.autocomplete:
            # Autocomplete costs nothing and cannot show a message (Discord refuses any other answer
            # to it), so it is answered even while the bot stops.
            return True
        if not bot.services.edits.accepting:
            await reply_privately(interaction, ShuttingDown().user_message)
            return False
        data: Mapping[str, object] = interaction.data or {}
        if data.get("name") == OPERATOR_COMMAND:
            return True
        return await bot.admit(interaction, counts=True)

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        original = getattr(error, "original", None) or error
        name = interaction.command.qualified_name if interaction.command else "?"
        if isinstance(original, RetouchError):
            log.info("/%s for user %s refused: %s", name, interaction.user.id, original.code)
            text = original.user_message
        elif isinstance(error, app_commands.MissingPermissions | app_commands.CheckFailure):
            text = "You don't have permission to use this command here."
        elif isinstance(error, app_commands.CommandOnCooldown):
            text = f"Slow down — try again in {error.retry_after:.0f} s."
        else:
            ref = new_reference()
            log.error("unexpected error in /%s (ref %s)", name, ref, exc_info=original)
            text = messages.unexpected(ref)
        await reply_privately(interaction, text)


async def _stay_closed(*_args: object) -> None:
    """Stands in for a retired shard's reconnect methods (see `SwitchableShards._retire`)."""


def _drop_event(_item: object) -> None:
    """Stands in for a retired shard's way into discord.py's queue (see `SwitchableShards._retire`)."""


class SwitchableShards(commands.AutoShardedBot):
    """An AutoShardedBot whose shards can change while it runs. discord.py starts its shards once, at
    connect; with `sharing` (bot/sharding.py) this bot instead serves the plans it is handed: shards
    left out stop at once, new ones start in the background, one IDENTIFY at a time. Without it, this is
    discord.py's own behaviour (Discord's recommended count, every shard in this process)."""

    def __init__(self, *args: Any, sharing: ShardSharing | None = None, **options: Any) -> None:
        super().__init__(*args, **options)
        self.sharing = sharing
        self.identify_gap = IDENTIFY_GAP_SECONDS
        self._wanted = ShardPlan(0, frozenset())
        self._gateway: yarl.URL | None = None
        self._launcher: asyncio.Task[None] | None = None
        self._last_identify = -math.inf
        self._sharing_stopped = False
        self._left_fleet = False
        self._recommended: int | None = None  # Discord's recommended shard count, once read
        # Shards given up while discord.py may still be connecting them again (see `_retire`); weak, as a
        # running re-identify holds its shard and nothing else needs one once it is done.
        self._retired: weakref.WeakSet[Any] = weakref.WeakSet()
        self._late_closes: set[asyncio.Task[None]] = set()

    def _running_shards(self) -> dict[int, Any]:
        # discord.py keeps its running shards in this private mapping: it has no public way to add or drop
        # one while the client runs. (tests/test_shards_e2e.py exercises it with real gateway connections.)
        shards: dict[int, Any] = self.__dict__["_AutoShardedClient__shards"]
        return shards

    async def launch_shards(self) -> None:
        if self.sharing is None:
            await super().launch_shards()
            return
        if self.is_closed():
            return
        await self.sharing.start(self.serve_shards, recommended=await self.recommended_shards())

    async def recommended_shards(self) -> int:
        """Discord's recommended shard count (for a fleet that has none yet), read once with the gateway
        URL from GET /gateway/bot (through DISCORD_API_BASE, like discord.py when it picks the count)."""
        if self._recommended is None or self._gateway is None:
            recommended, url, _limits = await self.http.get_bot_gateway()
            self._recommended, self._gateway = recommended, yarl.URL(url)
        return self._recommended

    async def serve_shards(self, plan: ShardPlan) -> None:
        """Serve exactly `plan`: returns once every shard left out of it is closed; the missing ones are
        started in the background."""
        self._wanted = plan
        running = self._running_shards()
        if plan.shard_count != self.shard_count:
            for shard_id in list(running):  # another count maps every server to another shard
                await self._retire(shard_id)
            self.shard_count = self._connection.shard_count = plan.shard_count
        for shard_id in [s for s in running if s not in plan.shard_ids]:
            await self._retire(shard_id)
        # discord.py dispatches `ready` once as many shards as these have sent READY.
        self.shard_ids = self._connection.shard_ids = sorted(plan.shard_ids)
        if plan.shard_ids - running.keys() and (self._launcher is None or self._launcher.done()):
            self._launcher = asyncio.create_task(self._launch_missing(), name="retouch-shard-launcher")

    async def _launch_missing(self) -> None:
        assert self._gateway is not None
        loop = asyncio.get_running_loop()
        while not self.is_closed():
            missing = sorted(self._wanted.shard_ids - self._running_shards().keys())
            if not missing:
                return
            # Waiting here rather than in discord.py's identify hook (which waits with the socket already
            # open) means a plan that drops this shard meanwhile costs no connection at all.
            await asyncio.sleep(max(0.0, self._last_identify + self.identify_gap - loop.time()))
            shard_id = missing[0]
            if shard_id not in self._wanted.shard_ids:
                continue
            self._last_identify = loop.time()
            plan = self._wanted
            await self.launch_shard(self._gateway, shard_id, initial=True)  # initial: no second wait
            log.info("serving shard %d of %d", shard_id, plan.shard_count)
            if shard_id not in self._wanted.shard_ids or self._wanted.shard_count != plan.shard_count:
                await self._retire(shard_id)  # the plan changed while it connected

    async def _retire(self, shard_id: int) -> None:
        """Stop serving one shard: its reader stops at once, its socket closes, its servers leave the
        cache."""
        shard = self._running_shards().pop(shard_id, None)
        if shard is None:
            return
        self._neutralise(shard)
        await shard.disconnect()
        for guild in [g for g in self.guilds if g.shard_id == shard_id]:
            self._connection._remove_guild(guild)
        log.info("stopped serving shard %d", shard_id)

    def _neutralise(self, shard: Any) -> None:
        """Make sure a shard given up never comes back. A reconnect discord.py queued for it must not run;
        and one already running (its gateway loop awaits `reidentify()`/`reconnect()` inline, so nothing
        here can cancel it) sets a new socket and calls `launch()` when it is done, or, if it fails, queues
        another reconnect (or a terminate, which would close the whole client)."""
        shard.reconnect = shard.reidentify = _stay_closed
        shard._queue_put = _drop_event
        shard.launch = lambda: self._close_late(shard)
        self._retired.add(shard)

    def _close_late(self, shard: Any) -> None:
        # Instead of starting its reader: the new socket never serves an event, and closes.
        log.info("closing shard %d: it reconnected after it was given up", shard.id)
        task = asyncio.create_task(shard.close(), name="retouch-retired-shard")
        self._late_closes.add(task)
        task.add_done_callback(self._late_closes.discard)

    async def close(self) -> None:
        # discord.py closes only the shards it still runs; a given-up one may have connected again since.
        for shard in list(self._retired):
            await shard.close()
        if self._late_closes:
            await asyncio.wait(self._late_closes)
        await super().close()

    def shards_connected(self) -> bool:
        """Every shard of the plan is connected (true with none: a process with no shard still runs
        jobs), and the plan is still this process's own."""
        if self.sharing is None:
            return self.is_ready() and math.isfinite(self.latency)
        running = self._running_shards()
        return self.sharing.healthy and all(
            s in running and math.isfinite(running[s].ws.latency) for s in self._wanted.shard_ids
        )

    async def stop_serving(self) -> None:
        """Close every shard and free it for the other processes at once (idempotent)."""
        if self._launcher is not None:
            self._launcher.cancel()
        if self.sharing is not None and not self._sharing_stopped:
            self._sharing_stopped = True
            await self.sharing.stop()

    async def leave_fleet(self) -> None:
        """After the drain: this process has no provider call left, so the others may take its part of
        the provider ceilings (idempotent)."""
        if self.sharing is not None and not self._left_fleet:
            self._left_fleet = True
            await self.sharing.leave()


class RetouchBot(SwitchableShards):
    """The bot. Receives its services from the entry point; owns only Discord-side state."""

    def __init__(
        self, services: Services, *, sync_commands: bool = False, shards: ShardSharing | None = None
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            tree_cls=RetouchTree,
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            sharing=shards,
        )
        self.services = services
        services.metrics.watch(shards=lambda: len(self.shards))  # discord.py's running shards
        self.sync_commands = sync_commands
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = False
        if services.settings.audit_channel_id:
            services.audit.attach(self._post_audit)

    async def _post_audit(self, text: str) -> None:
        """The audit log's only Discord-facing part: one plain message, mentions never ping."""
        channel_id = self.services.settings.audit_channel_id
        assert channel_id is not None
        await self.get_partial_messageable(channel_id).send(
            text, allowed_mentions=discord.AllowedMentions.none()
        )

    async def admit(self, interaction: discord.Interaction, *, counts: bool) -> bool:
        """The gate in front of every command, button and form: an unapproved server (or DMs while
        they are off) and a member over their commands per minute get a short private answer, before
        any download, provider call or credit. `counts`: this interaction counts as a command."""
        access = self.services.access
        try:
            verdict = await access.admit(interaction.guild_id, interaction.user.id)
        except Exception:
            # discord.py runs these checks outside the paths that reach an error handler: unanswered,
            # the member would see "This interaction failed" and the log no reference.
            ref = new_reference()
            log.exception("could not check access for user %s (ref %s)", interaction.user.id, ref)
            await reply_privately(interaction, messages.unexpected(ref))
            return False
        if not verdict.allowed:
            log.info("refused user %s in unapproved place %s", interaction.user.id, interaction.guild_id)
            view = (
                approve_view(interaction.guild_id) if verdict.offer_approve and interaction.guild_id else None
            )
            await reply_privately(interaction, verdict.text, view=view)
            return False
        if counts:
            try:
                access.take_command(interaction.user.id)
            except RateLimited as exc:
                log.info("user %s rate limited", interaction.user.id)
                await reply_privately(interaction, exc.user_message)
                return False
        return True

    async def _find_operator(self) -> None:
        """Who the operator is, decided once: OWNER_IDS, else the application's owner (or team)."""
        settings = self.services.settings
        owners: list[int] = []
        if not settings.owner_ids:
            try:
                # discord.py read the application at login; ask again only if it did not.
                info = self.application or await self.application_info()
            except (discord.HTTPException, aiohttp.ClientError) as exc:
                log.warning("could not read the application's owner (%s); set OWNER_IDS", type(exc).__name__)
            else:
                owners = [m.id for m in info.team.members] if info.team else [info.owner.id]
        self.services.access.set_operators(operator_ids(settings.owner_ids, owners))

    async def setup_hook(self) -> None:
        # Fixed order: database, services, extensions, then command sync only when asked.
        storage = self.services.storage
        # `--sync` needs no table and may run beside the bot: it never migrates (see `run`).
        version = await (storage.schema_version() if self.sync_commands else storage.migrate())
        log.info("database ready (schema %d)", version)
        await self._find_operator()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if not self.sync_commands:  # `--sync` publishes the commands and exits: no jobs run then
            # Jobs the last process left (queued, at a provider, or with an undelivered result) are
            # settled or resumed now, before the gateway connects and new commands can arrive; with
            # shared shards, once this process has joined the fleet (its part of the provider ceilings).
            recommended = await self.recommended_shards() if self.sharing is not None else 0
            await start_services(self.services, self.sharing, recommended=recommended)
        settings = self.services.settings
        if settings.dev_guild_id:
            await self._sync_dev_guild(settings.dev_guild_id)
        if self.sync_commands:
            synced = await self.tree.sync()
            log.info("synced %d global commands (they may take up to an hour to appear)", len(synced))
        else:  # `--sync` serves nothing: the heartbeat file is the running bot's on this host, not its own
            self._heartbeat = asyncio.create_task(self._beat(), name="retouch-heartbeat")

    async def _sync_dev_guild(self, guild_id: int) -> None:
        """Publish the commands to DEV_GUILD_ID's server only (they appear there at once)."""
        guild = discord.Object(guild_id)
        self.tree.copy_global_to(guild=guild)
        try:
            synced = await self.tree.sync(guild=guild)
        except (discord.Forbidden, discord.NotFound) as exc:
            # Discord answers 403 "Missing Access" (50001) for a server the bot is not in, and 404 for
            # an id that is no server at all: both are the setting, not the network.
            raise DevGuildUnavailable(guild_id, exc.status) from exc
        log.info("synced %d commands to dev guild %s", len(synced), guild_id)

    async def on_ready(self) -> None:
        log.info(
            "connected as %s (%s) to %d guild(s)", self.user, getattr(self.user, "id", "?"), len(self.guilds)
        )

    def connected(self) -> bool:
        return not self.is_closed() and self.shards_connected()

    async def _beat(self) -> None:
        """Refresh the heartbeat file while the gateway is up; the container HEALTHCHECK reads it."""
        path = self.services.settings.heartbeat_path
        while not self.is_closed():
            if self.connected():
                with contextlib.suppress(OSError):
                    path.write_text(str(int(time.time())))
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def shutdown(self) -> None:
        """Graceful stop: refuse new commands, let jobs finish within the grace period, then close."""
        if self._stopping:
            return
        self._stopping = True
        if self.sharing is not None and self.sharing.shared:
            # Other processes take this one's servers over now, instead of after the drain below.
            await self.stop_serving()
        grace = self.services.settings.shutdown_grace_seconds
        log.info("shutting down: waiting up to %.1f s for %d job(s)", grace, self.services.edits.in_flight)
        aborted = await self.services.edits.drain(grace)
        log.info("shutdown: %d job(s) aborted and refunded", aborted)
        await self._finish_replies()
        await self.services.audit.flush()
        await self.close()

    async def _finish_replies(self) -> None:
        """Let command handlers finish telling their users (e.g. "you were not charged") before the
        HTTP session closes under them. discord.py runs each slash command in a task named
        "CommandTree-invoker", button, menu and form callbacks (e.g. /mask's Run edit) in tasks
        named "discord-ui-…", and event listeners in tasks named after the event: the Edit again and
        Edit image forms are answered from `on_interaction` listeners."""
        me = asyncio.current_task()
        names = ("CommandTree-invoker", "discord-ui-", "discord.py: on_interaction")
        pending = [t for t in asyncio.all_tasks() if t is not me and t.get_name().startswith(names)]
        if pending:
            await asyncio.wait(pending, timeout=REPLY_GRACE_SECONDS)

    async def close(self) -> None:
        # Idempotent after shutdown(); on a bare close it stops the watchdog and parks queued jobs.
        await self.services.edits.drain(0)
        if self._heartbeat is not None:  # only the process that beats removes the file
            self._heartbeat.cancel()
            with contextlib.suppress(OSError):
                self.services.settings.heartbeat_path.unlink(missing_ok=True)
        await self.stop_serving()
        await self.leave_fleet()  # after the drain above: no provider call of this process is left
        await super().close()
