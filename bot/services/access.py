"""Who the bot serves and how fast: approved servers, the operator, per-member rate limits, double clicks.

The operator is whoever pays the provider bills: `OWNER_IDS`, or the Discord application's owner(s)
when that is unset. `operator_ids` decides that in one place; the bot class calls it once at start-up
with what Discord says about the application, and everything else asks `AccessService.is_operator`.

A server is served when `ALLOWED_GUILD_IDS` lists it or the operator approved it (`/owner approve`, or
the Approve button the bot offers the operator in an unapproved server). Direct messages are served
only with `ALLOW_DMS=on`. Everything else gets a short private refusal before any work: no download,
no provider call, no credits. Plain values only; nothing here knows about Discord.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from bot import messages
from bot.config import Settings
from bot.errors import RetouchError
from bot.storage import Storage

log = logging.getLogger(__name__)

RATE_WINDOW_SECONDS = 60.0
# A second click on Retry or a second Edit again form for the same result within this window is the
# same request (a double click, a laggy client), not a new one.
DOUBLE_CLICK_SECONDS = 10.0
# How long the gate trusts a server's approval it read (see `AccessService.admit`).
GATE_APPROVAL_SECONDS = 30.0
DM_GUILD_ID = 0


class NotOperator(RetouchError):
    """Only the bot's operator may do this."""

    def __init__(self) -> None:
        super().__init__(messages.NOT_OPERATOR, code="not_operator")


class RateLimited(RetouchError):
    """The member ran more commands in a minute than `COMMANDS_PER_MINUTE` allows."""

    def __init__(self, per_minute: int, retry_after: float) -> None:
        super().__init__(messages.rate_limited(per_minute, retry_after), code="rate_limited")
        self.retry_after = retry_after


class AlreadyStarted(RetouchError):
    """A second click on the same button within the double-click window."""

    def __init__(self, text: str = messages.ALREADY_STARTED) -> None:
        super().__init__(text, code="double_click")


@dataclass(frozen=True)
class Admission:
    """Whether an interaction in a place may go on; if not, what to say and whether to offer Approve."""

    allowed: bool
    text: str = ""
    offer_approve: bool = False


def operator_ids(owner_ids: Iterable[int], application_owner_ids: Iterable[int]) -> frozenset[int]:
    """The operator: `OWNER_IDS` when set, else the application's owner (or its team's members)."""
    configured = frozenset(owner_ids)
    return configured or frozenset(application_owner_ids)


class AccessService:
    """Approved servers, the operator's ids, commands per minute and double-click claims."""

    def __init__(
        self, *, settings: Settings, storage: Storage, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.storage = storage
        self._monotonic = monotonic
        self._operators: frozenset[int] = settings.owner_ids
        self._recent: dict[int, deque[float]] = {}
        self._claims: dict[Hashable, float] = {}
        # Servers the gate found approved, and when: read again after GATE_APPROVAL_SECONDS.
        self._seen_approved: dict[int, float] = {}
        self._removals = 0  # a read that a removal here overtook is not trusted

    # -- the operator ------------------------------------------------------------------------------

    def set_operators(self, ids: Iterable[int]) -> None:
        """Called once by the bot class with `operator_ids(...)`."""
        self._operators = frozenset(ids)
        log.info("operator: %s", ", ".join(str(i) for i in sorted(self._operators)) or "unknown")

    @property
    def operators(self) -> frozenset[int]:
        return self._operators

    def is_operator(self, user_id: int) -> bool:
        return user_id in self._operators

    def require_operator(self, user_id: int) -> None:
        if not self.is_operator(user_id):
            raise NotOperator()

    # -- approved places ---------------------------------------------------------------------------

    async def approved(self, guild_id: int | None) -> bool:
        """Whether the bot serves this server (None or 0: direct messages)."""
        if not guild_id:
            return self.settings.allow_dms
        if guild_id in self.settings.allowed_guild_ids:
            return True
        approved, _ = await self.storage.settings.operator_guild(guild_id)
        return approved

    async def admit(self, guild_id: int | None, user_id: int) -> Admission:
        """The gate every command and button passes first.

        A server found approved is taken as approved for `GATE_APPROVAL_SECONDS` without reading the
        database again: the gate answers before its interaction is acknowledged, and on SQLite one long
        call (a big report) would otherwise hold every member's first answer past Discord's 3 s. Paid
        work reads the approval afresh when its credits are held (`policy`), so a withdrawal made on
        another process stops nothing paid late; one made here takes effect at once (`remove`)."""
        if (
            guild_id
            and self._monotonic() - self._seen_approved.get(guild_id, -math.inf) < GATE_APPROVAL_SECONDS
        ):
            return Admission(True)
        removals = self._removals
        if await self.approved(guild_id):
            if guild_id and removals == self._removals:
                self._seen_approved[guild_id] = self._monotonic()
            return Admission(True)
        operator = self.is_operator(user_id)
        if not guild_id:
            return Admission(False, messages.DMS_OFF_OPERATOR if operator else messages.DMS_OFF)
        if operator:
            return Admission(False, messages.NOT_APPROVED_OPERATOR, offer_approve=True)
        return Admission(False, messages.NOT_APPROVED)

    async def approve(self, guild_id: int, actor_id: int) -> None:
        self.require_operator(actor_id)
        await self.storage.settings.set_guild_approved(guild_id, True, actor_id=actor_id)
        log.info("guild %s approved by the operator %s", guild_id, actor_id)

    async def remove(self, guild_id: int, actor_id: int) -> bool:
        """Withdraw an approval. False when ALLOWED_GUILD_IDS still lists the server (the setting wins)."""
        self.require_operator(actor_id)
        try:
            await self.storage.settings.set_guild_approved(guild_id, False, actor_id=actor_id)
        finally:  # also when the write committed and its answer was lost
            self._removals += 1
            self._seen_approved.pop(guild_id, None)
        log.info("guild %s approval removed by the operator %s", guild_id, actor_id)
        return guild_id not in self.settings.allowed_guild_ids

    # -- abuse limits ------------------------------------------------------------------------------

    def take_command(self, user_id: int) -> None:
        """Count one command for a member; raise RateLimited past COMMANDS_PER_MINUTE (0 = no limit).

        Refused commands are not counted, so a member who waits the window out always gets back in.
        """
        limit = self.settings.commands_per_minute
        if limit <= 0:
            return
        now = self._monotonic()
        recent = self._recent.setdefault(user_id, deque())
        while recent and recent[0] <= now - RATE_WINDOW_SECONDS:
            recent.popleft()
        if len(recent) >= limit:
            raise RateLimited(limit, recent[0] + RATE_WINDOW_SECONDS - now)
        recent.append(now)
        if len(self._recent) > 10_000:  # forget members who went quiet, so memory stays bounded
            self._recent = {u: q for u, q in self._recent.items() if q and q[-1] > now - RATE_WINDOW_SECONDS}

    def claim(self, key: Hashable, *, refusal: str = messages.ALREADY_STARTED) -> None:
        """Start a one-off action (Retry of a job by a member); raise AlreadyStarted (saying `refusal`)
        if it started within DOUBLE_CLICK_SECONDS. `release` forgets a claim whose action was refused."""
        now = self._monotonic()
        self._claims = {k: t for k, t in self._claims.items() if t > now - DOUBLE_CLICK_SECONDS}
        if key in self._claims:
            raise AlreadyStarted(refusal)
        self._claims[key] = now

    def release(self, key: Hashable) -> None:
        self._claims.pop(key, None)
