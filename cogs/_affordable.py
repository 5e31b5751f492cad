"""The one-click cheaper run: a private "Run at medium for at most 60 credits" button.

Shown on the requester's private message when their balance (or the server's monthly budget) cannot
hold the asked quality's worst case but can hold a lower one. The offer keeps the already checked
images in memory and is forgotten after `OFFER_TIMEOUT_SECONDS` or a restart, like a /mask preview:
it is a choice about to be made, not a job. The button is a dynamic item (registered by
`cogs.members`) so a click that comes before discord.py has stored a view still finds its offer.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import discord

from bot.services.affordable import Offer, button_label, offer_text
from bot.services.edits import PreparedJob
from cogs._ui import PersistentControl

log = logging.getLogger(__name__)

OFFER_TIMEOUT_SECONDS = 300.0
NO_MENTIONS = discord.AllowedMentions.none()

# Runs the cheaper job on the click's interaction (cogs._results.run_and_publish, bound).
RunCheaper = Callable[[discord.Interaction, PreparedJob], Awaitable[object]]


@dataclass
class _Entry:
    offer: Offer
    run: RunCheaper
    expires: float


class OfferBook:
    """Open offers by id. `take` hands an offer out once: a double click cannot start two edits."""

    def __init__(self, timeout: float = OFFER_TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self._open: dict[str, _Entry] = {}

    def put(self, offer: Offer, run: RunCheaper) -> str:
        now = time.monotonic()
        # Forget expired offers whenever a new one comes: the book never grows without bound.
        self._open = {k: e for k, e in self._open.items() if e.expires > now}
        sid = secrets.token_hex(6)
        self._open[sid] = _Entry(offer, run, now + self.timeout)
        return sid

    def take(self, sid: str, user_id: int) -> _Entry | None:
        entry = self._open.get(sid)
        if entry is None or entry.offer.asked.job.user_id != user_id:
            return None
        del self._open[sid]
        return entry if entry.expires > time.monotonic() else None


class CheaperRun(PersistentControl, prefix="retouch:cheaper", fields={"sid": "[0-9a-f]{12}"}):
    """The offer's button; routes the click to the book of the members cog."""

    async def clicked(self, interaction: discord.Interaction) -> None:
        book: OfferBook | None = getattr(interaction.client.get_cog("MembersCog"), "offers", None)  # type: ignore[attr-defined]
        entry = book.take(self.state[0], interaction.user.id) if book is not None else None
        if entry is None:
            await interaction.response.send_message(
                "This offer was already used or has expired. Run the command again.", ephemeral=True
            )
            return
        interaction.extras["ephemeral_original"] = True
        await interaction.response.edit_message(
            content="Starting your edit…", view=None, allowed_mentions=NO_MENTIONS
        )
        await entry.run(interaction, entry.offer.cheaper)


def cheaper_view(sid: str, offer: Offer) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CheaperRun.button(sid, label=button_label(offer), style=discord.ButtonStyle.primary))
    return view


async def offer_cheaper(
    interaction: discord.Interaction, offer: Offer, *, budget: bool, run: RunCheaper
) -> None:
    """Turn the requester's private message into the offer (text and its one button)."""
    book: OfferBook | None = getattr(interaction.client.get_cog("MembersCog"), "offers", None)  # type: ignore[attr-defined]
    if book is None:  # the members cog is not loaded: nothing could answer the button
        raise RuntimeError("the members cog is not loaded")
    sid = book.put(offer, run)
    await interaction.edit_original_response(
        content=offer_text(offer, budget=budget), view=cheaper_view(sid, offer), allowed_mentions=NO_MENTIONS
    )
    log.info(
        "user %s offered %s at %d credits (asked %s at %d, %d available)",
        offer.asked.job.user_id,
        offer.quality,
        offer.credits,
        offer.asked.chosen.quality,
        offer.asked.reserve,
        offer.available,
    )
