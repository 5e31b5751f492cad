"""Member-facing policy: defaults, allowances, the reservation's rules, and what members are shown.

Policy is plain data read and written through `Storage`; nothing here knows about Discord. The
server's rules, role tiers and what admins and the operator change are `bot.services.admin`, whose
`PolicyAdmin` methods `PolicyService` includes (one object for every caller). Two rules shape this
side:

- **Defaults**: an option given on a command wins over the user's own default (`/quality`,
  `/settings`), which wins over the server's default, which wins over the bot-wide setting.
- **Allowances top up to** their amount, they do not add it: on the first use after a period boundary
  (midnight UTC; Monday for weekly; the 1st for monthly) the available balance is raised to the
  allowance if it is below it. Unused allowance does not pile up, and credits an admin granted on top
  are never taken away. Refills are lazy (no timer) and exactly once per period (see
  `Storage.refill_allowance`). Credits held by a running job count as the member's: the top-up only
  fills what is free of holds, so a hold released after the boundary cannot double the allowance.

`reserve` also checks the money above the server's rules (MONTHLY_BUDGET_USD and the operator's
allotment, both described in `bot.services.admin`), in the reservation's own transaction.

Over ~400 lines (and `PolicyService` over ~300) because it was moved, not rewritten, out of one
1,000-line module: the reservation with its refusals and the reads it shares with the views stay
together.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from bot import messages
from bot.catalog import Catalog, ModelEntry, Route, usd_to_credits
from bot.config import Settings
from bot.domain.options import BACKGROUNDS, OUTPUT_FORMATS, QUALITIES, QUALITY_RANK
from bot.errors import InvalidOptions, RetouchError
from bot.lifecycle import ModelLifecycle
from bot.routing import dearest_edit
from bot.routing.rules import AUTO
from bot.services.access import AccessService
from bot.services.admin import (
    NO_PERIOD,
    PERIODS,
    SIZE_HELP,
    AllotmentAudit,
    CreditAudit,
    GuildPolicy,
    Limits,
    PolicyAdmin,
    RoleTier,
    next_period_start,
    period_key,
    period_start,
    valid_size,
)
from bot.services.edits import EditJob, JobDefaults
from bot.storage import Storage
from bot.storage.ledger import Account
from bot.storage.limits import ReserveGuard, ReserveRefused
from bot.storage.reports import LedgerEntry

HISTORY_PAGE_SIZE = 8
HISTORY_KINDS = ("grant", "adjust", "capture")


# -- errors -----------------------------------------------------------------------------------------


class PolicyRefused(RetouchError):
    """A server rule (cooldown, running jobs, monthly budget, allowed models) refused the job."""

    def __init__(self, user_message: str, *, code: str = "error", available: int | None = None) -> None:
        super().__init__(user_message, code=code)
        # What the rule still allows (credits left in the budget): a cheaper edit can be offered.
        self.available = available


# -- time -------------------------------------------------------------------------------------------


def discord_timestamp(moment: dt.datetime, style: str = "R") -> str:
    """Discord's `<t:…>` markup: every reader sees the moment in their own time zone."""
    return f"<t:{int(moment.timestamp())}:{style}>"


# -- plain data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserSettings:
    """A user's own defaults; None = use the server's (then the bot's)."""

    user_id: int
    quality: str | None = None
    model: str | None = None
    size: str | None = None
    output_format: str | None = None
    background: str | None = None
    skip_mask_preview: bool | None = None


@dataclass(frozen=True)
class Allowance:
    """A member's allowance: topped up to `amount` at each period start."""

    amount: int
    period: str
    next_refill: dt.datetime | None  # None when there is no allowance


@dataclass(frozen=True)
class CreditsSummary:
    """What `/credits` shows: balance, holds, allowance and its next refill."""

    account: Account
    allowance: Allowance


@dataclass(frozen=True)
class HistoryPage:
    """One page of a member's credit history."""

    entries: tuple[LedgerEntry, ...]
    page: int  # 0-based
    pages: int
    total: int


@dataclass(frozen=True)
class EffectiveDefaults:
    """A user's defaults after the server's rules, with where each came from and what changed."""

    chosen: JobDefaults  # before the server's caps
    effective: JobDefaults  # what jobs use
    sources: dict[str, str]  # field -> "you" | "server" | "bot"
    limits: Limits
    notices: tuple[str, ...]
    skip_mask_preview: bool


@dataclass(frozen=True)
class LevelPrice:
    """One quality's price in credits for `/quality`, and whether the member's roles allow it."""

    quality: str
    credits: int
    allowed: bool


@dataclass(frozen=True)
class QualityView:
    """What `/quality` shows: the default, the cap, the price of each level and the balance."""

    defaults: EffectiveDefaults
    model_name: str
    prices: tuple[LevelPrice, ...]
    balance: int

    @property
    def capped(self) -> bool:
        return self.defaults.effective.quality != self.defaults.chosen.quality


@dataclass(frozen=True)
class Budget:
    """This month's spend in credits against every cap above it (None = no such cap)."""

    captured: int  # spent: charged to members, plus results the bot paid for but could not deliver
    held: int
    server_cap: int | None  # the server admins' own /admin policy budget
    allotment: int | None  # the operator's allotment for the server
    bot_captured: int
    bot_held: int
    bot_cap: int | None  # MONTHLY_BUDGET_USD

    @property
    def used(self) -> int:
        return self.captured + self.held

    @property
    def bot_used(self) -> int:
        return self.bot_captured + self.bot_held


# -- pure rules -------------------------------------------------------------------------------------


def clamp(
    chosen: JobDefaults,
    limits: Limits,
    *,
    catalog: Catalog,
    usable: Callable[[ModelEntry], bool],
    fallbacks: Iterable[str] = (),
) -> tuple[JobDefaults, tuple[str, ...]]:
    """Bring model, quality and count within `limits`. Returns the job's values and what changed.

    `usable` says which models are live here (`ModelLifecycle.usable`).
    """
    notices = []
    if limits.models is not None and chosen.model in catalog.models and chosen.model not in limits.models:
        allowed = [
            m
            for m in (*fallbacks, *sorted(limits.models))
            if m in limits.models and m in catalog.models and usable(catalog.models[m])
        ]
        if not allowed:
            raise PolicyRefused(messages.NO_ALLOWED_MODEL, code="no_allowed_model")
        notices.append(
            messages.role_model(catalog.models[chosen.model].name, catalog.models[allowed[0]].name)
        )
        chosen = replace(chosen, model=allowed[0])
    cap = limits.max_quality
    # `auto` lets the model choose, and on GPT Image 2.5 and 2.6 it may choose (and is held at) xhigh or
    # max: under any cap it becomes the cap itself.
    if cap is not None and (
        QUALITY_RANK.get(chosen.quality, 0) > QUALITY_RANK[cap] or chosen.quality == "auto"
    ):
        notices.append(messages.role_quality(cap, chosen.quality))
        chosen = replace(chosen, quality=cap)
    if chosen.count > limits.max_images:
        notices.append(messages.role_images(limits.max_images))
        chosen = replace(chosen, count=limits.max_images)
    return chosen, tuple(notices)


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(text.split()) if text else ()


def _policy_from_rows(
    guild_id: int, row: Mapping[str, Any] | None, tiers: list[dict[str, Any]]
) -> GuildPolicy:
    parsed = tuple(
        RoleTier(
            role_id=t["role_id"],
            allowance=t["allowance"],
            max_quality=t["max_quality"],
            models=frozenset(_split(t["models"])) if t["models"] else None,
            max_images=t["max_images"],
        )
        for t in tiers
    )
    if row is None:
        return GuildPolicy(guild_id, tiers=parsed)
    return GuildPolicy(
        guild_id=guild_id,
        allowance=row["allowance"],
        period=row["allowance_period"],
        starting_credits=row["starting_credits"],
        max_quality=row["max_quality"],
        models=frozenset(_split(row["models"])) if row["models"] else None,
        max_images=row["max_images"],
        monthly_cap_usd=Decimal(row["monthly_cap_usd"]) if row["monthly_cap_usd"] else None,
        cooldown_seconds=row["cooldown_seconds"],
        max_concurrent=row["max_concurrent"],
        default_model=row["default_model"],
        default_quality=row["default_quality"],
        default_size=row["default_size"],
        # Without repeats, also for an order stored before `PolicyAdmin` dropped them.
        provider_order=tuple(dict.fromkeys(_split(row["provider_order"]))),
        tiers=parsed,
    )


# -- the service ------------------------------------------------------------------------------------


class PolicyService(PolicyAdmin):
    """Reads and writes policy through Storage; the job service calls `clamp` and `reserve`."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        storage: Storage,
        lifecycle: ModelLifecycle,
        access: AccessService,
        on_credit_change: CreditAudit,
        on_allotment_change: AllotmentAudit,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.storage = storage
        # Which models are live here, and the default model when DEFAULT_MODEL is unset.
        self.lifecycle = lifecycle
        # Called after every admin grant/take/set (the audit log). Failures are logged, never raised.
        self.on_credit_change = on_credit_change
        # Who the operator is (only they set allotments) and which servers are approved.
        self.access = access
        self.on_allotment_change = on_allotment_change

    # -- reading ---------------------------------------------------------------------------------

    def now(self) -> dt.datetime:
        return self.storage.now()

    async def guild_policy(self, guild_id: int) -> GuildPolicy:
        if guild_id == 0:  # direct messages: no server, no server rules
            return GuildPolicy(0)
        row = await self.storage.settings.guild_policy_row(guild_id)
        return _policy_from_rows(guild_id, row, await self.storage.settings.role_tier_rows(guild_id))

    async def user_settings(self, user_id: int) -> UserSettings:
        row = await self.storage.settings.user_settings_row(user_id)
        if row is None:
            return UserSettings(user_id)
        skip = row["skip_mask_preview"]
        return UserSettings(
            user_id=user_id,
            quality=row["quality"],
            model=row["model"],
            size=row["size"],
            output_format=row["output_format"],
            background=row["background"],
            skip_mask_preview=None if skip is None else bool(skip),
        )

    async def defaults_for(self, guild_id: int, user_id: int) -> JobDefaults:
        """The EditService's defaults lookup: user settings > server defaults > bot settings."""
        chosen, _ = self._merge(await self.guild_policy(guild_id), await self.user_settings(user_id))
        return chosen

    async def effective_defaults(
        self, guild_id: int, user_id: int, role_ids: Iterable[int]
    ) -> EffectiveDefaults:
        """A user's defaults as their next job in this server would really use them."""
        policy = await self.guild_policy(guild_id)
        user = await self.user_settings(user_id)
        chosen, sources = self._merge(policy, user)
        limits = policy.limits_for(role_ids)
        effective, notices = self._clamp(chosen, limits, policy)
        return EffectiveDefaults(chosen, effective, sources, limits, notices, bool(user.skip_mask_preview))

    async def effective_choice(
        self, guild_id: int, user_id: int, role_ids: Iterable[int], model_id: str | None = None
    ) -> JobDefaults:
        """The defaults a member's job here would run with (its model `model_id` when typed on the
        command), within the server's rules for their roles: what a price shown before the job means."""
        policy = await self.guild_policy(guild_id)
        chosen, _ = self._merge(policy, await self.user_settings(user_id))
        if model_id is not None:
            chosen = replace(chosen, model=model_id)
        effective, _ = self._clamp(chosen, policy.limits_for(role_ids), policy)
        return effective

    def _merge(self, policy: GuildPolicy, user: UserSettings) -> tuple[JobDefaults, dict[str, str]]:
        s = self.settings
        layers = {
            "model": (user.model, policy.default_model, self.bot_default_model()),
            "quality": (user.quality, policy.default_quality, s.default_quality),
            "size": (user.size, policy.default_size, s.default_size),
            "background": (user.background, None, s.default_background),
            "output_format": (user.output_format, None, s.default_format),
        }
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, (mine, server, bot) in layers.items():
            for source, value in (("you", mine), ("server", server), ("bot", bot)):
                if name == "model" and source != "bot" and value not in self.catalog.models:
                    continue  # saved, then dropped from the operator's catalog: the next layer's
                if value is not None:
                    values[name], sources[name] = value, source
                    break
        return JobDefaults(**values, provider_order=policy.provider_order), sources

    def bot_default_model(self) -> str:
        """The bot-wide default model: DEFAULT_MODEL, else the first live catalog model here."""
        try:
            return self.lifecycle.default_model().id
        except InvalidOptions:  # nothing is live: the job itself will say so
            return self.settings.default_model or next(iter(self.catalog.models))

    def model_for_view(self, model_id: str) -> ModelEntry:
        """The model a member's defaults really use today (for prices shown before any job)."""
        try:
            return self.lifecycle.resolve(model_id, picked=False).model
        except InvalidOptions:
            return self.catalog.get(model_id)

    def _clamp(
        self,
        chosen: JobDefaults,
        limits: Limits,
        policy: GuildPolicy,
        *,
        typed: frozenset[str] = frozenset(),
        masked: bool = False,
    ) -> tuple[JobDefaults, tuple[str, ...]]:
        """The member's limits, then a quality, size, background and format the model offers (with a
        mask, when `masked`), each unless `typed` on the command (a typed value the model lacks is
        refused by name when the job is checked)."""
        fallbacks = [m for m in (policy.default_model, self.bot_default_model()) if m]
        chosen, notices = clamp(
            chosen, limits, catalog=self.catalog, usable=self.lifecycle.usable, fallbacks=fallbacks
        )
        if "quality" not in typed:
            chosen, notices = self._offered_quality(chosen, notices, limits.max_quality)
        return self._offered_look(chosen, notices, typed, masked=masked)

    def _offered_look(
        self, chosen: JobDefaults, notices: tuple[str, ...], typed: frozenset[str], *, masked: bool
    ) -> tuple[JobDefaults, tuple[str, ...]]:
        """A default size or background the model in use cannot make becomes its `auto` (the model's
        choice), and a default format one it makes, with a notice. Saved with another model in mind
        (/settings, then another model), it must not make every edit fail. A `masked` edit counts only
        what the model's routes make with a mask: /mask has no background option, so a saved background
        its inpainters lack (1min.ai's: auto only) would refuse every masked edit."""
        if chosen.model not in self.catalog.models:  # unknown: the job refuses it by name
            return chosen, notices
        model = self.model_for_view(chosen.model)
        if "size" not in typed and not model.accepts_size(chosen.size) and model.accepts_size(AUTO):
            notices = (*notices, messages.default_not_offered(model.name, "size", chosen.size))
            chosen = replace(chosen, size=AUTO)
        makes = self._backgrounds_made(model, masked=masked)
        if "background" not in typed and makes and chosen.background not in makes and AUTO in makes:
            notice = messages.default_not_offered(model.name, "background", chosen.background, masked=masked)
            notices = (*notices, notice)
            chosen = replace(chosen, background=AUTO)
        # A format has no `auto`: the first one a live route makes, and for a transparent background
        # the first one it makes transparent, when there is one (a saved WebP on a route that makes
        # transparency only as PNG fails the same way as one the route does not make at all).
        transparent = chosen.background == "transparent"
        clear = self._formats_made(model, transparent=True, masked=masked) if transparent else []
        usable = clear or self._formats_made(model, masked=masked)
        if "output_format" not in typed and usable and chosen.output_format not in usable:
            fmt = usable[0]
            # The mask is named when it is what rules the saved format out (made so without one).
            unmasked = self._formats_made(model, transparent=transparent) if masked else []
            notice = messages.default_not_offered(
                model.name, "format", chosen.output_format, uses=fmt, masked=chosen.output_format in unmasked
            )
            notices = (*notices, notice)
            chosen = replace(chosen, output_format=fmt)
        return chosen, notices

    def _routes_for(self, model: ModelEntry, *, masked: bool) -> list[Route]:
        """The live routes of `model` that could take the edit (`masked`: those that take a mask)."""
        return [r for r in self.lifecycle.live_routes(model) if r.mask or not masked]

    def _backgrounds_made(self, model: ModelEntry, *, masked: bool = False) -> list[str]:
        """The backgrounds some live route of `model` makes (`masked`: with a mask, as routing reads a
        route's `mask_backgrounds`), in the usual order (none: no live route, and the job says so)."""
        routes = self._routes_for(model, masked=masked)
        made = {b for r in routes for b in (r.masked_backgrounds if masked else r.backgrounds)}
        return [b for b in BACKGROUNDS if b in made]

    def _formats_made(
        self, model: ModelEntry, *, transparent: bool = False, masked: bool = False
    ) -> list[str]:
        """The output formats some live route of `model` makes (`transparent`: makes with a
        transparent background; `masked`: takes a mask, and with `transparent` makes transparent with
        one, as routing reads `masked_backgrounds`), in the usual order (none: no live route, and the
        job says so)."""
        routes = self._routes_for(model, masked=masked)
        if transparent:
            # A route whose inpainter takes no background (1min.ai) makes no transparent masked edit in
            # any format: its PNG must not pick the format, or no route takes the job as fitted.
            routes = [
                r for r in routes if "transparent" in (r.masked_backgrounds if masked else r.backgrounds)
            ]
        made = {f for r in routes for f in r.output_formats if not transparent or f in r.transparent_formats}
        return [f for f in OUTPUT_FORMATS if f in made]

    def _offered_quality(
        self, chosen: JobDefaults, notices: tuple[str, ...], cap: str | None
    ) -> tuple[JobDefaults, tuple[str, ...]]:
        """A default quality the model in use lacks becomes its nearest offered level (with a notice),
        never one above the member's cap (the job then refuses the quality by name)."""
        if chosen.model not in self.catalog.models:  # unknown: the job refuses it by name
            return chosen, notices
        model = self.model_for_view(chosen.model)
        quality = model.quality_for_default(chosen.quality)
        if quality == chosen.quality or (cap is not None and QUALITY_RANK[quality] > QUALITY_RANK[cap]):
            return chosen, notices
        notice = messages.default_quality_not_offered(model.name, chosen.quality, quality)
        return replace(chosen, quality=quality), (*notices, notice)

    # -- the job service's hooks -----------------------------------------------------------------

    async def allows_model(self, guild_id: int, role_ids: tuple[int, ...], model_id: str) -> bool:
        """Whether the server's rules let a member with `role_ids` use `model_id`."""
        models = await self.models_allowed(guild_id, role_ids)
        return models is None or model_id in models

    async def models_allowed(self, guild_id: int, role_ids: Iterable[int]) -> frozenset[str] | None:
        """The models the server's rules let a member with `role_ids` use (None: every model)."""
        return (await self.guild_policy(guild_id)).limits_for(role_ids).models

    async def clamp(self, job: EditJob, chosen: JobDefaults) -> tuple[JobDefaults, tuple[str, ...]]:
        """Bring a job's model, quality and count within the member's limits in its server, and a
        default quality (none typed on the command) to one the job's model offers."""
        policy = await self.guild_policy(job.guild_id)
        # A Retry's options came with the earlier job's model: on another model (a default that has
        # changed since, a dropped one) they are fitted like defaults, not refused as if typed for it.
        typed = frozenset(
            name
            for name in ("quality", "size", "background", "output_format")
            if getattr(job.options, name) is not None and not job.options.model_is_default
        )
        limits = policy.limits_for(job.role_ids)
        return self._clamp(chosen, limits, policy, typed=typed, masked=job.mask is not None)

    async def reserve(self, job_id: str, job: EditJob, credits: int) -> Account:
        """Refill the allowance if due, then hold `credits` under the server's admission rules.

        Cooldown, running jobs and the monthly budget are checked in the reservation's own
        transaction. Raises PolicyRefused, or NotEnoughCredits like `Storage.reserve`.
        """
        if not await self.access.approved(job.guild_id):  # a server unapproved since the command began
            raise PolicyRefused(messages.NOT_APPROVED_ANY_MORE, code="unapproved")
        policy = await self.guild_policy(job.guild_id)
        await self._refill(policy, policy.limits_for(job.role_ids), job.user_id)
        try:
            return await self.storage.ledger.reserve(
                job_id,
                job.guild_id,
                job.user_id,
                credits,
                starting_credits=self._starting(policy),
                guard=await self._guard(policy),
            )
        except ReserveRefused as exc:
            raise self._refusal(exc, policy, credits) from None

    async def precheck(self, job: EditJob) -> None:
        """Refuse before any download what the reservation would refuse anyway: a member with no
        credits left (after any allowance that is due) or a server or bot with no budget left."""
        policy = await self.guild_policy(job.guild_id)
        limits = policy.limits_for(job.role_ids)
        # Read only: a refused command must not even create the member's account.
        account = await self.storage.ledger.get_account(job.guild_id, job.user_id)
        balance = account.balance if account else self._starting(policy)
        held = account.held if account else 0
        if balance <= 0:
            period = period_key(policy.period, self.now())
            due = (
                period is not None
                and limits.allowance > held
                and not await self.storage.ledger.refilled(job.guild_id, job.user_id, period)
            )
            if not due:
                raise RetouchError(messages.NO_CREDITS_LEFT, code="insufficient_credits")
        server_cap, allotment = self.cap_credits(policy), await self.allotment_credits(job.guild_id)
        if server_cap is None and allotment is None and self.bot_cap_credits() is None:
            return  # no budget applies: the month's spend need not be read on every command
        budget = await self._budget(job.guild_id, server_cap, allotment)
        for reason, used, cap in (
            ("allotment", budget.used, budget.allotment),
            ("guild_cap", budget.used, budget.server_cap),
            ("bot_budget", budget.bot_used, budget.bot_cap),
        ):
            if cap is not None and used >= cap:
                raise self._refusal(ReserveRefused(reason, used=used, limit=cap), policy, 1)

    def _starting(self, policy: GuildPolicy) -> int:
        if policy.starting_credits is None:
            return self.settings.starting_credits
        return policy.starting_credits

    def cap_credits(self, policy: GuildPolicy) -> int | None:
        """The monthly budget in credits, rounded down so it never exceeds the dollars set."""
        if policy.monthly_cap_usd is None:
            return None
        return math.floor(policy.monthly_cap_usd * self.settings.credits_per_usd)

    def bot_cap_credits(self) -> int | None:
        """MONTHLY_BUDGET_USD in credits (rounded down), None when it is 0 (no cap)."""
        usd = self.settings.monthly_budget_usd
        return math.floor(usd * self.settings.credits_per_usd) if usd > 0 else None

    async def allotment(self, guild_id: int) -> Decimal | None:
        """The operator's monthly allotment for a server in USD (None: up to the bot-wide budget)."""
        if guild_id == 0:
            return None
        _, usd = await self.storage.settings.operator_guild(guild_id)
        return Decimal(usd) if usd else None

    async def allotment_credits(self, guild_id: int) -> int | None:
        usd = await self.allotment(guild_id)
        return None if usd is None else math.floor(usd * self.settings.credits_per_usd)

    async def _guard(self, policy: GuildPolicy) -> ReserveGuard:
        return ReserveGuard(
            cooldown_seconds=policy.cooldown_seconds,
            max_concurrent=policy.max_concurrent,
            guild_cap=self.cap_credits(policy),
            cap_since=period_start("monthly", self.now()),
            allotment=await self.allotment_credits(policy.guild_id),
            bot_cap=self.bot_cap_credits(),
        )

    def _refusal(self, exc: ReserveRefused, policy: GuildPolicy, credits: int) -> PolicyRefused:
        if exc.reason == "cooldown" and exc.retry_at is not None:
            return PolicyRefused(
                messages.cooldown(policy.cooldown_seconds, discord_timestamp(exc.retry_at)), code="cooldown"
            )
        if exc.reason == "concurrency":
            return PolicyRefused(messages.too_many_running(exc.used), code="too_many_running")
        # A budget refusal names the budget with the least left: what any smaller job may still hold.
        left = max(0, exc.limit - exc.used)
        resume = discord_timestamp(next_period_start("monthly", self.now()))
        if exc.reason in ("allotment", "bot_budget"):
            share = exc.reason == "allotment"
            if left == 0:
                return PolicyRefused(
                    messages.operator_budget_spent(share=share, resume=resume), code=exc.reason
                )
            return PolicyRefused(
                messages.operator_budget_short(share=share, credits=credits, left=left),
                code=exc.reason,
                available=left,
            )
        if left == 0:
            return PolicyRefused(messages.server_budget_spent(resume), code="guild_cap")
        return PolicyRefused(messages.server_budget_short(credits, left), code="guild_cap", available=left)

    # -- accounts --------------------------------------------------------------------------------

    async def _refill(self, policy: GuildPolicy, limits: Limits, user_id: int) -> Account:
        return await self.storage.ledger.refill_allowance(
            policy.guild_id,
            user_id,
            amount=limits.allowance,
            period_of=functools.partial(period_key, policy.period),
            starting_credits=self._starting(policy),
        )

    async def credits(self, guild_id: int, user_id: int, role_ids: Iterable[int]) -> CreditsSummary:
        """The account (refilled if a period has started since its last use) and its allowance."""
        policy = await self.guild_policy(guild_id)
        limits = policy.limits_for(role_ids)
        account = await self._refill(policy, limits, user_id)
        has_allowance = policy.period in PERIODS and limits.allowance > 0
        next_refill = next_period_start(policy.period, self.now()) if has_allowance else None
        period = policy.period if has_allowance else NO_PERIOD
        return CreditsSummary(
            account, Allowance(limits.allowance if has_allowance else 0, period, next_refill)
        )

    async def history(self, guild_id: int, user_id: int, page: int) -> HistoryPage:
        """A page of the user's grants, adjustments and charges, newest first."""
        page = max(0, page)
        entries, total = await self.storage.reports.account_history(
            guild_id, user_id, kinds=HISTORY_KINDS, offset=page * HISTORY_PAGE_SIZE, limit=HISTORY_PAGE_SIZE
        )
        pages = max(1, math.ceil(total / HISTORY_PAGE_SIZE))
        if page >= pages and total:
            return await self.history(guild_id, user_id, pages - 1)
        return HistoryPage(tuple(entries), page, pages, total)

    # -- user defaults ---------------------------------------------------------------------------

    async def quality_view(self, guild_id: int, user_id: int, role_ids: Iterable[int]) -> QualityView:
        """The user's default quality, the server's cap, prices per level and the balance."""
        role_ids = tuple(role_ids)
        defaults = await self.effective_defaults(guild_id, user_id, role_ids)
        model = self.model_for_view(defaults.effective.model)
        cap = defaults.limits.max_quality
        size = defaults.effective.size
        routes = self.lifecycle.live_routes(model)  # a reseller may charge more than the list price
        prices = tuple(
            LevelPrice(
                q,
                # What a one-image edit at the member's size is held: its input image and prompt too.
                usd_to_credits(dearest_edit(model, routes, q, size), self.settings.credits_per_usd),
                cap is None or QUALITY_RANK[q] <= QUALITY_RANK[cap],
            )
            for q in model.qualities
        )
        summary = await self.credits(guild_id, user_id, role_ids)
        return QualityView(defaults, model.name, prices, summary.account.balance)

    async def set_quality(self, guild_id: int, user_id: int, role_ids: Iterable[int], quality: str) -> None:
        """Save the member's default quality: one the model their edits here use offers."""
        defaults = await self.effective_defaults(guild_id, user_id, role_ids)
        model = self.model_for_view(defaults.effective.model)
        if quality not in model.qualities:
            raise InvalidOptions(messages.quality_not_offered(model, quality), code="bad_quality")
        await self.storage.settings.update_user_settings(user_id, {"quality": quality})

    async def update_settings(
        self, guild_id: int, user_id: int, changes: Mapping[str, Any], reset: Iterable[str] = ()
    ) -> None:
        """Set and/or reset (to the server's default) some of a user's defaults.

        Names are UserSettings fields. A value given in the same call wins over its reset.
        """
        if changes.get("size") is not None and not valid_size(changes["size"]):
            raise InvalidOptions(SIZE_HELP, code="bad_option")
        allowed = {
            "quality": QUALITIES,
            "background": BACKGROUNDS,
            "output_format": OUTPUT_FORMATS,
        }
        fields: dict[str, Any] = dict.fromkeys(reset)
        for name, value in changes.items():
            if value is None:
                continue
            if name == "model":
                self.lifecycle.choosable(value)  # raises InvalidOptions for an unknown or dead id
            elif name in allowed and value not in allowed[name]:
                raise InvalidOptions(messages.not_one_of(name, allowed[name]), code="bad_option")
            fields[name] = int(value) if name == "skip_mask_preview" else value
        policy, saved = await self.guild_policy(guild_id), await self.user_settings(user_id)
        current, _ = self._merge(policy, saved)
        background = fields.get("background", current.background) or self.settings.default_background
        fmt = fields.get("output_format", current.output_format) or self.settings.default_format
        if background == "transparent" and fmt == "jpeg":
            raise InvalidOptions(messages.TRANSPARENT_NEEDS_FORMAT, code="transparent_jpeg")
        # Checked against the model the member has once these changes and resets are made.
        after, _ = self._merge(policy, replace(saved, **{k: v for k, v in fields.items() if k != "user_id"}))
        self._check_look(after.model, changes)
        if fields:
            await self.storage.settings.update_user_settings(user_id, fields)

    def _check_look(self, model_id: str, changes: Mapping[str, Any]) -> None:
        """Refuse a size, background or format set now that the model the member's edits use cannot
        make (a later change of model is met by `_offered_look` instead)."""
        if model_id not in self.catalog.models:
            return
        model = self.model_for_view(model_id)
        size = changes.get("size")
        if size is not None and not model.accepts_size(size):
            raise InvalidOptions(messages.size_not_offered(model, size), code="bad_size")
        for option, key, made in (
            ("background", "background", self._backgrounds_made(model)),
            ("format", "output_format", self._formats_made(model)),
        ):
            value = changes.get(key)
            if value is not None and made and value not in made:
                raise InvalidOptions(
                    messages.option_not_offered(model.name, option, value, made), code="bad_option"
                )

    async def budget(self, guild_id: int) -> Budget:
        """This month's spend for the server and the bot, as the reservation's caps count it."""
        server_cap = self.cap_credits(await self.guild_policy(guild_id))
        return await self._budget(guild_id, server_cap, await self.allotment_credits(guild_id))

    async def _budget(self, guild_id: int, server_cap: int | None, allotment: int | None) -> Budget:
        spend = await self.storage.reports.spend_by_guild(period_start("monthly", self.now()))
        captured, held = spend.get(guild_id, (0, 0))
        return Budget(
            captured=captured,
            held=held,
            server_cap=server_cap,
            allotment=allotment,
            bot_captured=sum(c for c, _ in spend.values()),
            bot_held=sum(h for _, h in spend.values()),
            bot_cap=self.bot_cap_credits(),
        )
