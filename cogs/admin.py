"""`/admin …`: guild policy for server managers."""

from __future__ import annotations

import logging
from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import RetouchBot
from cogs._admin_policy import policy_groups
from cogs._ui import RetouchCog

log = logging.getLogger(__name__)


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class AdminGroup(app_commands.Group, name="admin", description="Retouch settings for this server"):
    """`/admin`: the server's rules, credits and tiers (Manage Server)."""

    def __init__(self, bot: RetouchBot) -> None:
        super().__init__()
        self.bot = bot
        # /admin credits|policy|tier: they check the ADMIN_USER_IDS allow-list themselves.
        for group in policy_groups(bot):
            self.add_command(group)

    @app_commands.command(
        name="threads", description="Open a thread under each result posted in a text channel"
    )
    @app_commands.describe(value="on, off, or default (the bot-wide THREAD_RESULTS setting)")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def threads(self, interaction: discord.Interaction, value: Literal["on", "off", "default"]) -> None:
        assert interaction.guild_id is not None  # guild_only
        # Like every /admin command: Manage Server, and the ADMIN_USER_IDS allow-list when it is set.
        self.bot.services.policy.authorize_admin(
            interaction.user.id, manage_guild=interaction.permissions.manage_guild
        )
        setting = None if value == "default" else value == "on"
        await interaction.response.defer(ephemeral=True, thinking=True)  # a write may wait on a busy database
        await self.bot.services.policy.set_thread_results(interaction.guild_id, interaction.user.id, setting)
        await interaction.followup.send(f"Result threads: **{value}**.", ephemeral=True)


class AdminCog(RetouchCog):
    """Mounts `/admin` and its subgroups."""

    def __init__(self, bot: RetouchBot) -> None:
        super().__init__(bot, AdminGroup(bot))

    @commands.Cog.listener()
    async def on_guild_available(self, guild: discord.Guild) -> None:
        """Roles deleted while the bot was away (Discord does not replay the deletions): their tiers
        go when the server's roles are known again, at each connection."""
        if guild.get_role(guild.id) is None:  # no roles known (not even @everyone): nothing to judge by
            return
        try:
            policy = await self.bot.services.policy.guild_policy(guild.id)
            for tier in policy.tiers:
                if tier.role_id != guild.id and guild.get_role(tier.role_id) is None:
                    await self.bot.services.policy.remove_tier(guild.id, tier.role_id)
                    log.info("guild %s: role %s is gone; its tier is removed", guild.id, tier.role_id)
        except Exception:
            log.exception("guild %s: could not check its tiers' roles", guild.id)

    @commands.Cog.listener()
    async def on_guild_role_delete(self, role: discord.Role) -> None:
        """A role deleted in Discord takes its tier with it: `/admin tier remove` can no longer name it
        (Discord's picker offers only roles that exist), and the stale line would stay in the rules."""
        try:
            if await self.bot.services.policy.remove_tier(role.guild.id, role.id):
                log.info("guild %s: role %s was deleted; its tier is removed", role.guild.id, role.id)
        except Exception:
            log.exception("guild %s: the tier of deleted role %s stays", role.guild.id, role.id)


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(AdminCog(bot))
