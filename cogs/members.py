"""What members notice: the one-click cheaper run (bot.affordable) and its open offers.

The offers are this process's memory (see `cogs._affordable`); the button is a dynamic item so a
click that arrives before discord.py stored a view still reaches its offer.
"""

from __future__ import annotations

from discord.ext import commands

from bot.client import RetouchBot
from cogs._affordable import CheaperRun, OfferBook


class MembersCog(commands.Cog):
    def __init__(self, bot: RetouchBot) -> None:
        self.bot = bot
        self.offers = OfferBook()

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(CheaperRun)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(CheaperRun)


async def setup(bot: RetouchBot) -> None:
    await bot.add_cog(MembersCog(bot))
