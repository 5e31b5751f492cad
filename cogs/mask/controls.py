"""The custom ids of the picker's and preview's controls, and the one dynamic item that routes every
click on them to the cog (also after a restart, when the click is answered as expired)."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import discord

from cogs._ui import PersistentControl, admitted
from cogs.mask.sessions import MaskSession

NO_MENTIONS = discord.AllowedMentions.none()

Action = Literal["cells", "grid", "next", "back", "run", "cancel"]
Handler = Callable[[discord.Interaction, MaskSession, list[str]], Awaitable[None]]


class MaskControl(
    PersistentControl,
    prefix="retouch:mask",
    fields={"sid": "[0-9a-f]{12}", "action": "[a-z]+"},
    cog="MaskCog",
    handler="on_control",
):
    """Every button and menu of the picker and the preview; routes the click to the cog."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        return await admitted(interaction)

    def arguments(self) -> tuple[Any, ...]:
        # A menu's click also carries the options chosen in it.
        return (*self.state, [str(v) for v in getattr(self.item, "values", [])])


def control_id(sid: str, action: Action) -> str:
    return MaskControl.custom_id_of(sid, action)


def button(sid: str, action: Action, label: str, style: discord.ButtonStyle, **kwargs: Any) -> MaskControl:
    return MaskControl.button(sid, action, label=label, style=style, row=1, **kwargs)


def attachment(data: bytes, filename: str) -> discord.File:
    return discord.File(io.BytesIO(data), filename=filename)
