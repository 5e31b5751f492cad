"""The grid picker of `/mask` without a mask file: the member picks cells on a picture of the image
that is redrawn as they choose."""

from __future__ import annotations

from typing import Any

import discord

from bot.errors import InvalidMask
from bot.services import masking
from bot.services.edits import require_picked_area
from cogs._results import run_and_publish
from cogs._ui import EMBED_COLOUR
from cogs.mask.controls import NO_MENTIONS, MaskControl, attachment, button, control_id
from cogs.mask.preview import PricedPreview, as_now
from cogs.mask.sessions import MaskSession, minutes

PICKER_FILE = "mask_grid.jpg"


def picker_view(session: MaskSession) -> discord.ui.View:
    rows, cols = session.grid
    chosen = set(session.spec.cells)
    select = discord.ui.Select[Any](
        custom_id=control_id(session.sid, "cells"),
        placeholder="Pick the cells to change",
        min_values=0,
        # Every cell leaves nothing to keep (inverted: nothing to change), so Discord itself refuses
        # the last one; `_next` still checks, for a client that sends them anyway.
        max_values=rows * cols - 1,
        options=[
            discord.SelectOption(
                label=f"Cell {n}",
                description=f"row {(n - 1) // cols + 1}, column {(n - 1) % cols + 1}",
                value=str(n),
                default=n in chosen,
            )
            for n in range(1, rows * cols + 1)
        ],
        row=0,
    )
    other_rows, other_cols = masking.next_grid(session.grid)
    view = discord.ui.View(timeout=None)  # expiry is the session's, not the view's
    view.add_item(MaskControl(select, session.sid, "cells"))
    view.add_item(
        button(
            session.sid,
            "next",
            "Run edit" if session.skip_preview else "Preview",
            discord.ButtonStyle.success if session.skip_preview else discord.ButtonStyle.primary,
            disabled=not chosen,
        )
    )
    view.add_item(
        button(session.sid, "grid", f"Use a {other_rows}×{other_cols} grid", discord.ButtonStyle.secondary)
    )
    view.add_item(button(session.sid, "cancel", "Cancel", discord.ButtonStyle.secondary))
    return view


def picker_embed(session: MaskSession, timeout: float) -> discord.Embed:
    if session.spec.invert:
        how = "The tinted cells are **kept**; everything else will change (`invert` is on)."
    else:
        how = "The tinted cells will change; everything else stays exactly as it is."
    embed = discord.Embed(
        title="Pick the area to change",
        description=f"Choose cell numbers in the menu below, leaving at least one out. {how}",
        colour=EMBED_COLOUR,
    )
    embed.set_image(url=f"attachment://{PICKER_FILE}")
    if session.skip_preview:
        next_step = "Run edit starts the edit at once (skip_mask_preview is on in your /settings)."
    else:
        next_step = "Nothing is charged yet: Preview shows the cost first."
    embed.set_footer(text=f"{next_step} The picker expires after {minutes(timeout)} without a click.")
    return embed


class GridPicker(PricedPreview):
    """The picker's clicks: cells, another grid, on to the preview (or straight to the edit), and back
    from the preview to change the area."""

    async def _pick_cells(
        self, interaction: discord.Interaction, session: MaskSession, values: list[str]
    ) -> None:
        await interaction.response.defer()  # redrawing the picture may take longer than the 3 s ack
        if not self.sessions.touch(session, interaction, pick=True):  # older than a pick applied
            return
        session.job = masking.with_cells(session.job, session.grid, tuple(int(v) for v in values))
        await self._show_picker(interaction, session)

    async def _switch_grid(
        self, interaction: discord.Interaction, session: MaskSession, _: list[str]
    ) -> None:
        await interaction.response.defer()
        if not self.sessions.touch(session, interaction, pick=True):  # older than a pick applied
            return
        # Cell numbers mean other areas on another grid: start the selection over.
        session.job = masking.with_cells(session.job, masking.next_grid(session.grid), ())
        await self._show_picker(interaction, session)

    async def _next(self, interaction: discord.Interaction, session: MaskSession, _: list[str]) -> None:
        try:
            require_picked_area(session.spec)
        except InvalidMask as refusal:
            # Said on the picker, which stays open for another pick. The selection starts over: every
            # cell ticked would not fit the menu's limit when the picker is drawn again.
            await interaction.response.defer()
            self.sessions.touch(session, interaction)
            session.job = masking.with_cells(session.job, session.grid, ())
            await self._show_picker(interaction, session, notice=refusal.user_message)
            return
        if session.skip_preview:
            self.sessions.finish(session.sid)
            await self._acknowledge_run(interaction)
            job = as_now(session.job, interaction)
            await run_and_publish(
                self.bot,
                interaction,
                lambda progress: self.edits.prepare(job, progress=progress),
                origin_message_id=session.origin_message_id,
            )
            return
        await interaction.response.defer()
        self.sessions.touch(session, interaction)
        async with self.edits.engine.intake():  # as the first preparation (MaskCog._begin_session)
            prepared = await self.edits.prepare(session.job)
        if self._stale(session, interaction):  # a later click (other cells, Cancel) owns the message now
            return
        session.prepared = prepared
        await self._show_preview(interaction, session)

    async def _back(self, interaction: discord.Interaction, session: MaskSession, _: list[str]) -> None:
        await interaction.response.defer()
        self.sessions.touch(session, interaction)
        session.prepared = None
        await self._show_picker(interaction, session)

    async def _show_picker(
        self, interaction: discord.Interaction, session: MaskSession, *, notice: str | None = None
    ) -> None:
        """Draw the picker for the session's grid and cells; `notice` says why the last click went nowhere."""
        assert session.picture is not None
        picture = await masking.grid_picture(session.picture, session.grid, session.spec.cells)
        if self._stale(session, interaction):
            return
        await interaction.edit_original_response(
            content=notice,
            embed=picker_embed(session, self.sessions.timeout),
            attachments=[attachment(picture, PICKER_FILE)],
            view=picker_view(session),
            allowed_mentions=NO_MENTIONS,
        )
        self.sessions.arm(session)
