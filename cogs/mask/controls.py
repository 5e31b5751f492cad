"""The custom ids of the picker's and preview's controls, and the one dynamic item that routes every
click on them to the cog (also after a restart, when the click is answered as expired)."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import discord

from cogs._ui import admitted
from cogs.mask.sessions import MaskSession

CUSTOM_ID_PREFIX = "retouch:mask"
NO_MENTIONS = discord.AllowedMentions.none()

Action = Literal["cells", "grid", "next", "back", "run", "cancel"]
Handler = Callable[[discord.Interaction, MaskSession, list[str]], Awaitable[None]]


def control_id(sid: str, action: Action) -> str:
    return f"{CUSTOM_ID_PREFIX}:{sid}:{action}"


class MaskControl(
    discord.ui.DynamicItem[discord.ui.Item[Any]],
    template=CUSTOM_ID_PREFIX + r":(?P<sid>[0-9a-f]{12}):(?P<action>[a-z]+)",
):
    """Every button and menu of the picker and the preview; routes the click to the cog."""

    def __init__(self, item: discord.ui.Item[Any], sid: str, action: str) -> None:
        super().__init__(item)
        self.sid = sid
        self.action = action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any, /
    ) -> MaskControl:
        return cls(item, match["sid"], match["action"])

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        return await admitted(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        cog = interaction.client.get_cog("MaskCog")  # type: ignore[attr-defined]
        handler = getattr(cog, "on_control", None)
        if handler is not None:
            values = [str(v) for v in getattr(self.item, "values", [])]
            await handler(interaction, self.sid, self.action, values)


def button(sid: str, action: Action, label: str, style: discord.ButtonStyle, **kwargs: Any) -> MaskControl:
    item = discord.ui.Button[Any](
        label=label, style=style, custom_id=control_id(sid, action), row=1, **kwargs
    )
    return MaskControl(item, sid, action)


def attachment(data: bytes, filename: str) -> discord.File:
    return discord.File(io.BytesIO(data), filename=filename)
