"""Edits a member can afford: when the worst case of the asked quality does not fit, the best one that does.

A refused hold (the member's balance, or what is left of the server's monthly budget) is not a dead
end when a lower quality of the same edit fits: `auto` then runs at the highest quality that fits
(and says so), and a named quality is offered one step down with its price (`Offer`). The hold is
always the true worst case of what is sent: each candidate is priced by the router like any job.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from bot import messages
from bot.errors import InvalidOptions
from bot.services.edits import PreparedJob

AUTO = "auto"
# Dearest last. `auto` is held at the model's dearest quality only where a route leaves the choice to
# the model; on a route that sends it as `high` (rules.auto_quality) `xhigh` and `max` are dearer, so
# each candidate is checked to hold less than the job it replaces, not assumed to.
QUALITY_ORDER = ("low", "medium", "high", "xhigh", "max")


class Repricer(Protocol):
    """Prices a prepared job at another quality (the edit service implements it)."""

    def at_quality(self, prepared: PreparedJob, quality: str) -> PreparedJob:
        """The job at `quality`, held at that quality's worst case (bot.jobs.EditService)."""
        ...


@dataclass(frozen=True)
class Offer:
    """A refused job and the same job at a quality its payer can afford."""

    asked: PreparedJob
    cheaper: PreparedJob
    available: int

    @property
    def quality(self) -> str:
        return self.cheaper.chosen.quality

    @property
    def credits(self) -> int:
        return self.cheaper.reserve


def lower_qualities(prepared: PreparedJob) -> list[str]:
    """The model's qualities below the asked one, dearest first (all of them for `auto`)."""
    asked = prepared.chosen.quality
    listed = [q for q in QUALITY_ORDER if q in prepared.model.qualities]
    if asked != AUTO:
        listed = listed[: listed.index(asked)] if asked in listed else []
    return list(reversed(listed))


def best_affordable(edits: Repricer, prepared: PreparedJob, available: int) -> Offer | None:
    """The highest quality below the asked one whose worst case fits `available` credits and is below the
    asked job's, or None.

    Qualities no configured route can make are skipped (never offered, never held).
    """
    for quality in lower_qualities(prepared):
        try:
            cheaper = edits.at_quality(prepared, quality)
        except InvalidOptions:
            continue
        if cheaper.reserve <= available and cheaper.reserve < prepared.reserve:
            # Only a hold was refused, and the safety check runs before the hold: it passed already.
            return Offer(prepared, replace(cheaper, screened=True), available)
    return None


def auto_resolved(offer: Offer) -> PreparedJob:
    """The cheaper job for an `auto` request, with a note (shown on the result) of what it ran at."""
    note = messages.auto_quality_used(offer.asked.reserve, offer.available, offer.quality, offer.credits)
    return replace(offer.cheaper, notices=(*offer.cheaper.notices, note))


def offer_text(offer: Offer, *, budget: bool) -> str:
    """The private message that offers the cheaper run (`budget`: the server's monthly budget is short)."""
    asked = offer.asked
    return messages.cheaper_offer(
        asked.chosen.quality, asked.reserve, offer.available, offer.quality, offer.credits, budget=budget
    )


def button_label(offer: Offer) -> str:
    return messages.cheaper_button(offer.quality, offer.credits)
