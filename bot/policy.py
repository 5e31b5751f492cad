"""Credit policy: per-user defaults, guild rules, role tiers, allowances, spend caps and admin controls.

Policy is plain data (the dataclasses below) read and written through `Storage`; nothing here knows
about Discord. Three rules shape it:

- **Defaults**: an option given on a command wins over the user's own default (`/quality`,
  `/settings`), which wins over the server's default, which wins over the bot-wide setting.
- **Tiers only widen**: the guild's base rules apply to everyone; a role tier can give more (a bigger
  allowance, a higher quality cap, more models, more images per job). For each rule the most
  generous applicable value wins, so holding two tiered roles never makes anything stricter.
- **Allowances top up to** their amount, they do not add it: on the first use after a period boundary
  (midnight UTC; Monday for weekly; the 1st for monthly) the available balance is raised to the
  allowance if it is below it. Unused allowance does not pile up, and credits an admin granted on top
  are never taken away. Refills are lazy (no timer) and exactly once per period (see
  `Storage.refill_allowance`). Credits held by a running job count as the member's: the top-up only
  fills what is free of holds, so a hold released after the boundary cannot double the allowance.

Above every server's rules sits the operator's money: a bot-wide MONTHLY_BUDGET_USD and an optional
monthly allotment per server that only the operator sets. Both are checked in the reservation's own
transaction, like the server's budget, so credits an admin hands out can never buy more provider
spend than the operator granted.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from bot.access import AccessService
from bot.catalog import Catalog, ModelEntry, SizeRules, usd_to_credits
from bot.config import Settings
from bot.errors import InvalidOptions, RetouchError
from bot.lifecycle import ModelLifecycle
from bot.providers.base import BACKGROUNDS, OUTPUT_FORMATS, QUALITIES, SIZES
from bot.services.edits import MAX_IMAGES_PER_EDIT, EditJob, JobDefaults
from bot.storage import Storage
from bot.storage.ledger import ALLOWANCE_REASON, Account
from bot.storage.limits import ReserveGuard, ReserveRefused
from bot.storage.reports import LedgerEntry

log = logging.getLogger(__name__)

PERIODS = ("daily", "weekly", "monthly")
NO_PERIOD = "none"
CAPPABLE_QUALITIES = ("low", "medium", "high")
# `auto` may come back as high, so it ranks (and is priced) as high.
QUALITY_RANK = {"low": 0, "medium": 1, "high": 2, "xhigh": 3, "max": 4, "auto": 2}
ALL_MODELS = "*"
HISTORY_PAGE_SIZE = 8
HISTORY_KINDS = ("grant", "adjust", "capture")
REPORT_PERIODS = ("this month", "last month", "this week", "today", "all time")
MAX_REASON_CHARS = 200
# Spreadsheets run cells starting with these as formulas; an admin's reason text must stay text.
CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = (
    "id",
    "created_at",
    "user_id",
    "kind",
    "amount",
    "delta_balance",
    "delta_held",
    "job_id",
    "model",
    "provider",
    "actor_id",
    "reason",
)


# -- errors -----------------------------------------------------------------------------------------


class PolicyRefused(RetouchError):
    """A server rule (cooldown, running jobs, monthly budget, allowed models) refused the job."""

    def __init__(self, user_message: str, *, code: str = "error", available: int | None = None) -> None:
        super().__init__(user_message, code=code)
        # What the rule still allows (credits left in the budget): a cheaper edit can be offered.
        self.available = available


class NotPermitted(RetouchError):
    """The user may not run this admin command here."""


# -- time -------------------------------------------------------------------------------------------


def period_start(period: str, now: dt.datetime) -> dt.datetime:
    """Start (UTC midnight) of the daily / weekly (Monday) / monthly period containing `now`."""
    now = now.astimezone(dt.UTC)
    day = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC)
    if period == "daily":
        return day
    if period == "weekly":
        return day - dt.timedelta(days=day.weekday())
    if period == "monthly":
        return day.replace(day=1)
    raise ValueError(f"unknown period {period!r}")


def next_period_start(period: str, now: dt.datetime) -> dt.datetime:
    """When the period containing `now` ends (the next refill)."""
    start = period_start(period, now)
    if period == "daily":
        return start + dt.timedelta(days=1)
    if period == "weekly":
        return start + dt.timedelta(days=7)
    return (start + dt.timedelta(days=32)).replace(day=1)


def period_key(period: str, now: dt.datetime) -> str | None:
    """The refill record's name for the period containing `now`; None when there is no allowance."""
    if period not in PERIODS:
        return None
    return f"{period}:{period_start(period, now).date().isoformat()}"


def report_range(period: str, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
    """[since, until) of a report period; None for an open end ("all time")."""
    named = {"this month": "monthly", "this week": "weekly", "today": "daily"}
    if period in named:
        return period_start(named[period], now), next_period_start(named[period], now)
    if period == "last month":
        this_month = period_start("monthly", now)
        return period_start("monthly", this_month - dt.timedelta(days=1)), this_month
    if period == "all time":
        return None, None
    raise InvalidOptions(f"Pick a report period: {', '.join(REPORT_PERIODS)}.", code="bad_period")


def discord_timestamp(moment: dt.datetime, style: str = "R") -> str:
    """Discord's `<t:…>` markup: every reader sees the moment in their own time zone."""
    return f"<t:{int(moment.timestamp())}:{style}>"


# -- plain data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleTier:
    """Extra room for members of one role. None means "no more than the server's base rule"."""

    role_id: int
    allowance: int | None = None
    max_quality: str | None = None
    models: frozenset[str] | None = None  # containing ALL_MODELS = every model
    max_images: int | None = None


@dataclass(frozen=True)
class GuildPolicy:
    """A server's rules. The defaults are "no rule": no allowance, no cap, every model."""

    guild_id: int
    allowance: int = 0
    period: str = NO_PERIOD
    starting_credits: int | None = None  # None = the bot-wide STARTING_CREDITS
    max_quality: str | None = None  # None = no cap
    models: frozenset[str] | None = None  # None = every model
    max_images: int | None = None  # None = MAX_IMAGES_PER_EDIT
    monthly_cap_usd: Decimal | None = None
    cooldown_seconds: int = 0
    max_concurrent: int = 0  # 0 = no limit
    default_model: str | None = None
    default_quality: str | None = None
    default_size: str | None = None
    provider_order: tuple[str, ...] = ()  # for provider routing; empty = the catalog's order
    tiers: tuple[RoleTier, ...] = ()

    def limits_for(self, role_ids: Iterable[int]) -> Limits:
        """This server's rules for a member with `role_ids`, widened by every tier they hold."""
        roles = set(role_ids) | {self.guild_id}  # @everyone's role id is the guild id
        tiers = [t for t in self.tiers if t.role_id in roles]
        allowance = max([self.allowance, *(t.allowance for t in tiers if t.allowance is not None)])
        max_quality = self.max_quality
        if max_quality is not None:
            caps = [max_quality, *(t.max_quality for t in tiers if t.max_quality)]
            max_quality = max(caps, key=QUALITY_RANK.__getitem__)
        models = self.models
        for tier in tiers:
            if models is None or tier.models is None:
                continue
            models = None if ALL_MODELS in tier.models else models | tier.models
        base_images = self.max_images or MAX_IMAGES_PER_EDIT
        max_images = max([base_images, *(t.max_images for t in tiers if t.max_images)])
        return Limits(
            allowance=allowance,
            max_quality=None if max_quality == "high" else max_quality,  # high caps nothing
            models=models,
            max_images=min(max_images, MAX_IMAGES_PER_EDIT),
            tier_role_ids=tuple(t.role_id for t in tiers),
        )


@dataclass(frozen=True)
class Limits:
    """What one member may do in one server."""

    allowance: int
    max_quality: str | None  # None = any quality
    models: frozenset[str] | None  # None = any model
    max_images: int
    tier_role_ids: tuple[int, ...] = ()


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
    account: Account
    allowance: Allowance


@dataclass(frozen=True)
class HistoryPage:
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
class CreditChange:
    """One admin grant / take / set, as recorded in the ledger."""

    guild_id: int
    user_id: int
    actor_id: int
    action: str
    requested: int
    moved: int
    balance: int
    reason: str


@dataclass(frozen=True)
class AllotmentChange:
    """The operator changed a server's monthly allotment (None = no allotment of its own)."""

    guild_id: int
    actor_id: int
    before: Decimal | None
    after: Decimal | None


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


@dataclass(frozen=True)
class ServerSpend:
    guild_id: int
    approved: bool
    captured: int
    held: int
    allotment: int | None


@dataclass(frozen=True)
class OperatorReport:
    """Every server's spend this month against its allotment, and the bot's against its budget."""

    since: dt.datetime
    servers: tuple[ServerSpend, ...]
    bot_cap: int | None
    credits_per_usd: int

    @property
    def used(self) -> int:
        return sum(s.captured + s.held for s in self.servers)

    def usd(self, credits: int) -> Decimal:
        return Decimal(credits) / self.credits_per_usd


@dataclass(frozen=True)
class SpendReport:
    """A guild's ledger over a period and the spend in it (captured credits)."""

    guild_id: int
    period: str
    since: dt.datetime | None
    until: dt.datetime | None
    entries: tuple[LedgerEntry, ...]
    credits_per_usd: int
    by_user: tuple[tuple[int, int], ...] = ()
    by_model: tuple[tuple[str, int], ...] = ()
    by_provider: tuple[tuple[str, int], ...] = ()
    spent: int = 0
    admin_granted: int = 0  # net of takes
    allowances: int = 0
    starting: int = 0

    def usd(self, credits: int) -> Decimal:
        return Decimal(credits) / self.credits_per_usd

    def csv(self) -> str:
        """Every ledger row of the period, one line each: the report's numbers add up from these."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for e in self.entries:
            row = [getattr(e, column) for column in CSV_COLUMNS]
            writer.writerow(["" if v is None else _csv_text(v) for v in row])
        return out.getvalue()


def _csv_text(value: object) -> object:
    if isinstance(value, str) and value.startswith(CSV_FORMULA_PREFIXES):
        return "'" + value
    return value


def summarize(report: SpendReport) -> SpendReport:
    """Fill the totals of a report from its entries (so the CSV and the summary cannot disagree)."""
    users: Counter[int] = Counter()
    models: Counter[str] = Counter()
    providers: Counter[str] = Counter()
    admin = allowances = starting = 0
    for e in report.entries:
        if e.kind == "capture":
            users[e.user_id] += e.amount
            models[e.model or "unknown"] += e.amount
            providers[e.provider or "unknown"] += e.amount
        elif e.actor_id is not None and e.kind in ("grant", "adjust"):
            admin += e.amount
        elif e.kind == "grant" and (e.reason or "").startswith(ALLOWANCE_REASON):
            allowances += e.amount
        elif e.kind == "grant":
            starting += e.amount
    return replace(
        report,
        by_user=tuple(users.most_common()),
        by_model=tuple(models.most_common()),
        by_provider=tuple(providers.most_common()),
        spent=sum(users.values()),
        admin_granted=admin,
        allowances=allowances,
        starting=starting,
    )


# -- pure rules -------------------------------------------------------------------------------------


# The broadest sizes any model takes: listed ones, or free WxH within GPT Image 2's rules. Whether the
# member's model takes a stored size is checked (and explained) when a job uses it.
SIZE_HELP = (
    f"Size must be one of {', '.join(SIZES)}, or WIDTHxHEIGHT for models that take free sizes "
    f"({SizeRules().describe()})."
)


def valid_size(size: str) -> bool:
    return size in SIZES or SizeRules().problem(size) is None


def may_administer(user_id: int, *, manage_guild: bool, allow_list: frozenset[int]) -> bool:
    """Manage Server is always required; when an allow-list is configured, membership is too.

    Discord's default permission only hides the command, and a server can change it, so this runs on
    every call. Even a server Administrator is refused when they are not on a configured list.
    """
    return manage_guild and (not allow_list or user_id in allow_list)


def clamp(
    chosen: JobDefaults,
    limits: Limits,
    *,
    catalog: Catalog,
    today: dt.date,
    fallbacks: Iterable[str] = (),
    usable: Callable[[ModelEntry], bool] | None = None,
) -> tuple[JobDefaults, tuple[str, ...]]:
    """Bring model, quality and count within `limits`. Returns the job's values and what changed.

    `usable` says which models are live here (bot.lifecycle); without it, the catalog's dates.
    """
    live = usable or (lambda m: not m.retired(today))
    notices = []
    if limits.models is not None and chosen.model in catalog.models and chosen.model not in limits.models:
        allowed = [
            m
            for m in (*fallbacks, *sorted(limits.models))
            if m in limits.models and m in catalog.models and live(catalog.models[m])
        ]
        if not allowed:
            raise PolicyRefused(
                "None of the image models is enabled for your roles on this server. Ask a server admin.",
                code="no_allowed_model",
            )
        notices.append(
            f"Your roles on this server can't use {catalog.models[chosen.model].name}, "
            f"so Retouch uses {catalog.models[allowed[0]].name}."
        )
        chosen = replace(chosen, model=allowed[0])
    cap = limits.max_quality
    if cap is not None and QUALITY_RANK.get(chosen.quality, 0) > QUALITY_RANK[cap]:
        notices.append(
            f"Your roles on this server allow at most **{cap}** quality, so Retouch uses {cap} "
            f"instead of {chosen.quality}."
        )
        chosen = replace(chosen, quality=cap)
    if chosen.count > limits.max_images:
        notices.append(
            f"Your roles on this server allow at most {limits.max_images} image(s) per edit, "
            f"so Retouch makes {limits.max_images}."
        )
        chosen = replace(chosen, count=limits.max_images)
    return chosen, tuple(notices)


def parse_models(text: str, catalog: Catalog, *, allow_all_marker: bool) -> frozenset[str] | None:
    """A list of model ids typed by an admin ("all" = every model). Raises InvalidOptions if unknown."""
    ids = {part for part in text.replace(",", " ").split() if part}
    if not ids or ids == {"all"}:
        return frozenset({ALL_MODELS}) if allow_all_marker else None
    unknown = sorted(ids - set(catalog.models))
    if unknown:
        raise InvalidOptions(
            f"Unknown model(s): {', '.join(unknown)}. Known: {', '.join(catalog.models)}.",
            code="unknown_model",
        )
    return frozenset(ids)


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(text.split()) if text else ()


def _models_column(models: frozenset[str] | None) -> str | None:
    return None if models is None else " ".join(sorted(models))


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
        provider_order=_split(row["provider_order"]),
        tiers=parsed,
    )


# -- the service ------------------------------------------------------------------------------------

CreditAudit = Callable[[CreditChange], Awaitable[None]]
AllotmentAudit = Callable[[AllotmentChange], Awaitable[None]]


class PolicyService:
    """Reads and writes policy through Storage; the job service calls `clamp` and `reserve`."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        storage: Storage,
        on_credit_change: CreditAudit | None = None,
        lifecycle: ModelLifecycle | None = None,
        access: AccessService | None = None,
        on_allotment_change: AllotmentAudit | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.storage = storage
        # Which models are live here, and the default model when DEFAULT_MODEL is unset.
        self.lifecycle = lifecycle
        # Called after every admin grant/take/set (the audit log). Failures are logged, never raised.
        self.on_credit_change = on_credit_change
        # Who the operator is (only they set allotments) and which servers are approved.
        self.access = access or AccessService(settings=settings, storage=storage)
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
                if value is not None:
                    values[name], sources[name] = value, source
                    break
        return JobDefaults(**values, provider_order=policy.provider_order), sources

    def bot_default_model(self) -> str:
        """The bot-wide default model: DEFAULT_MODEL, else the first live catalog model here."""
        if self.lifecycle is None:
            return self.settings.default_model or next(iter(self.catalog.models))
        try:
            return self.lifecycle.default_model().id
        except InvalidOptions:  # nothing is live: the job itself will say so
            return self.settings.default_model or next(iter(self.catalog.models))

    def model_for_view(self, model_id: str) -> ModelEntry:
        """The model a member's defaults really use today (for prices shown before any job)."""
        if self.lifecycle is None:
            return self.catalog.resolve(model_id, self.now().date()).model
        try:
            return self.lifecycle.resolve(model_id, picked=False).model
        except InvalidOptions:
            return self.catalog.get(model_id)

    def _clamp(
        self, chosen: JobDefaults, limits: Limits, policy: GuildPolicy
    ) -> tuple[JobDefaults, tuple[str, ...]]:
        fallbacks = [m for m in (policy.default_model, self.bot_default_model()) if m]
        usable = self.lifecycle.usable if self.lifecycle is not None else None
        return clamp(
            chosen, limits, catalog=self.catalog, today=self.now().date(), fallbacks=fallbacks, usable=usable
        )

    # -- the job service's hooks -----------------------------------------------------------------

    async def clamp(self, job: EditJob, chosen: JobDefaults) -> tuple[JobDefaults, tuple[str, ...]]:
        """Bring a job's model, quality and count within the member's limits in its server."""
        policy = await self.guild_policy(job.guild_id)
        return self._clamp(chosen, policy.limits_for(job.role_ids), policy)

    async def reserve(self, job_id: str, job: EditJob, credits: int) -> Account:
        """Refill the allowance if due, then hold `credits` under the server's admission rules.

        Cooldown, running jobs and the monthly budget are checked in the reservation's own
        transaction. Raises PolicyRefused, or NotEnoughCredits like `Storage.reserve`.
        """
        if not await self.access.approved(job.guild_id):  # a server unapproved since the command began
            raise PolicyRefused(
                "Retouch is not enabled on this server. Nothing was charged.", code="unapproved"
            )
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
                raise RetouchError(
                    "You have no credits left on this server, so nothing was done. Ask a server admin "
                    "for credits, or wait for your allowance to refill (see /credits).",
                    code="insufficient_credits",
                )
        budget = await self.budget(job.guild_id)
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
                f"This server allows one edit every {policy.cooldown_seconds} s. "
                f"You can start the next one {discord_timestamp(exc.retry_at)}.",
                code="cooldown",
            )
        if exc.reason == "concurrency":
            return PolicyRefused(
                f"You already have {exc.used} edit(s) running, the most this server allows at once. "
                "Start this one when one of them has finished.",
                code="too_many_running",
            )
        left = max(0, exc.limit - exc.used)
        resume = discord_timestamp(next_period_start("monthly", self.now()))
        if exc.reason in ("allotment", "bot_budget"):
            whose = "this server's share of" if exc.reason == "allotment" else "all of"
            if left == 0:
                return PolicyRefused(
                    f"Retouch has used {whose} the image budget its operator set for this month. "
                    f"Edits resume {resume}, or the bot's operator can raise it. Nothing was charged.",
                    code=exc.reason,
                )
            return PolicyRefused(
                f"This edit can cost up to {credits} credits, but only {left} are left in {whose} the "
                "image budget the bot's operator set for this month. Try a lower quality or fewer "
                "images. Nothing was charged.",
                code=exc.reason,
            )
        if left == 0:
            return PolicyRefused(
                f"This server has used its image budget for this month. Edits resume {resume}, "
                "or a server admin can raise the budget.",
                code="guild_cap",
            )
        return PolicyRefused(
            f"This edit can cost up to {credits} credits, but only {left} are left in this server's "
            f"budget for this month. Try a lower quality or fewer images, or ask a server admin.",
            code="guild_cap",
            available=left,
        )

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
        prices = tuple(
            LevelPrice(
                q,
                usd_to_credits(model.image_price(q, size), self.settings.credits_per_usd),
                cap is None or QUALITY_RANK[q] <= QUALITY_RANK[cap],
            )
            for q in model.qualities
        )
        summary = await self.credits(guild_id, user_id, role_ids)
        return QualityView(defaults, model.name, prices, summary.account.balance)

    async def set_quality(self, user_id: int, quality: str) -> None:
        if quality not in QUALITIES:
            raise InvalidOptions(f"Quality must be one of {', '.join(QUALITIES)}.", code="bad_quality")
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
                self.catalog.get(value)  # raises InvalidOptions for an unknown id
            elif name in allowed and value not in allowed[name]:
                raise InvalidOptions(
                    f"`{name}` must be one of {', '.join(allowed[name])}.", code="bad_option"
                )
            fields[name] = int(value) if name == "skip_mask_preview" else value
        current, _ = self._merge(await self.guild_policy(guild_id), await self.user_settings(user_id))
        background = fields.get("background", current.background) or self.settings.default_background
        fmt = fields.get("output_format", current.output_format) or self.settings.default_format
        if background == "transparent" and fmt == "jpeg":
            raise InvalidOptions(
                "A transparent background needs PNG or WebP output. Set the format to png or webp.",
                code="transparent_jpeg",
            )
        if fields:
            await self.storage.settings.update_user_settings(user_id, fields)

    # -- admin -----------------------------------------------------------------------------------

    def authorize_admin(self, user_id: int, *, manage_guild: bool) -> None:
        """Raise NotPermitted unless this user may change credits and policy in this server."""
        allow_list = self.settings.admin_user_ids
        if allow_list:
            allow_list = allow_list | self.settings.owner_ids
        if may_administer(user_id, manage_guild=manage_guild, allow_list=allow_list):
            return
        if not manage_guild:
            raise NotPermitted("You need the Manage Server permission to do that.", code="not_admin")
        raise NotPermitted(
            "Only the admins listed in this bot's ADMIN_USER_IDS setting can change credits and policy.",
            code="not_on_admin_list",
        )

    async def update_guild(self, guild_id: int, actor_id: int, changes: Mapping[str, Any]) -> GuildPolicy:
        """Change server rules. Keys are GuildPolicy fields; values in their Python form."""
        columns: dict[str, Any] = {}
        for name, value in changes.items():
            columns.update(self._guild_column(name, value))
        if columns:
            await self.storage.settings.update_guild_policy(guild_id, columns, actor_id=actor_id)
            log.info("guild %s policy changed by %s: %s", guild_id, actor_id, sorted(columns))
        return await self.guild_policy(guild_id)

    def _guild_column(self, name: str, value: Any) -> dict[str, Any]:
        if name == "period":
            if value not in (*PERIODS, NO_PERIOD):
                raise InvalidOptions("The period must be daily, weekly or monthly.", code="bad_period")
            return {"allowance_period": value}
        if name in ("max_quality",) and value not in (None, *CAPPABLE_QUALITIES):
            raise InvalidOptions("The quality cap must be low, medium or high.", code="bad_quality")
        if name == "default_quality" and value not in (None, *QUALITIES):
            raise InvalidOptions(f"Quality must be one of {', '.join(QUALITIES)}.", code="bad_quality")
        if name == "default_size" and value is not None and not valid_size(value):
            raise InvalidOptions(SIZE_HELP, code="bad_size")
        if name == "default_model" and value is not None:
            self.catalog.get(value)
        if name == "models":
            return {"models": _models_column(value)}
        if name == "monthly_cap_usd":
            # Kept exactly as given (never rounded): it is turned into credits rounding down.
            return {"monthly_cap_usd": None if value is None else str(Decimal(value))}
        if name == "provider_order":
            known = {r.provider for m in self.catalog.models.values() for r in m.routes}
            unknown = [p for p in value if p not in known]
            if unknown:
                raise InvalidOptions(
                    f"Unknown provider(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.",
                    code="unknown_provider",
                )
            return {"provider_order": " ".join(value) or None}
        return {name: value}

    async def set_tier(
        self,
        guild_id: int,
        role_id: int,
        actor_id: int,
        *,
        allowance: int | None = None,
        max_quality: str | None = None,
        models: frozenset[str] | None = None,
        max_images: int | None = None,
    ) -> RoleTier:
        """Create or replace a role's tier (what is not given inherits the server's base rule)."""
        if max_quality not in (None, *CAPPABLE_QUALITIES):
            raise InvalidOptions("The quality cap must be low, medium or high.", code="bad_quality")
        fields = {
            "allowance": allowance,
            "max_quality": max_quality,
            "models": _models_column(models),
            "max_images": max_images,
        }
        await self.storage.settings.put_role_tier(guild_id, role_id, fields, actor_id=actor_id)
        log.info("guild %s tier for role %s set by %s", guild_id, role_id, actor_id)
        return RoleTier(role_id, allowance, max_quality, models, max_images)

    async def remove_tier(self, guild_id: int, role_id: int) -> bool:
        return await self.storage.settings.delete_role_tier(guild_id, role_id)

    async def change_credits(
        self, guild_id: int, actor_id: int, user_id: int, action: str, amount: int, reason: str
    ) -> CreditChange:
        """An admin's `grant`, `take` or `set`: one ledger row with the acting admin, then the audit."""
        if action not in ("grant", "take", "set") or amount < 0:
            raise InvalidOptions("Use grant, take or set with a positive amount.", code="bad_credit_action")
        reason = reason.strip()[:MAX_REASON_CHARS]
        if not reason:
            raise InvalidOptions("Give a reason; it is kept in the ledger.", code="no_reason")
        policy = await self.guild_policy(guild_id)
        account, moved = await self.storage.ledger.change_balance(
            guild_id,
            user_id,
            add={"grant": amount, "take": -amount}.get(action, 0),
            set_to=amount if action == "set" else None,
            actor_id=actor_id,
            reason=f"{action}: {reason}",
            starting_credits=self._starting(policy),
        )
        change = CreditChange(guild_id, user_id, actor_id, action, amount, moved, account.balance, reason)
        log.info("credits %s by %s for user %s in guild %s: %+d", action, actor_id, user_id, guild_id, moved)
        await self._audit(change)
        return change

    async def _audit(self, change: CreditChange) -> None:
        # AUDIT HOOK — the one call site for credit changes. bot/app.py wires `on_credit_change` to the
        # audit log (bot/audit.py's credit_change) when that module exists.
        if self.on_credit_change is None:
            return
        try:
            await self.on_credit_change(change)
        except Exception:
            log.exception("audit hook failed for a credit change in guild %s", change.guild_id)

    async def report(self, guild_id: int, period: str) -> SpendReport:
        """The guild's ledger over `period` with spend per user, model and provider."""
        since, until = report_range(period, self.now())
        entries = await self.storage.reports.guild_ledger(guild_id, since=since, until=until)
        report = SpendReport(guild_id, period, since, until, tuple(entries), self.settings.credits_per_usd)
        return summarize(report)

    async def budget(self, guild_id: int) -> Budget:
        """This month's spend for the server and the bot, as the reservation's caps count it."""
        spend = await self.storage.reports.spend_by_guild(period_start("monthly", self.now()))
        captured, held = spend.get(guild_id, (0, 0))
        return Budget(
            captured=captured,
            held=held,
            server_cap=self.cap_credits(await self.guild_policy(guild_id)),
            allotment=await self.allotment_credits(guild_id),
            bot_captured=sum(c for c, _ in spend.values()),
            bot_held=sum(h for _, h in spend.values()),
            bot_cap=self.bot_cap_credits(),
        )

    # -- the operator ----------------------------------------------------------------------------

    async def set_allotment(self, guild_id: int, actor_id: int, usd: Decimal | None) -> AllotmentChange:
        """The operator gives a server a monthly USD allotment (None removes it); audited."""
        self.access.require_operator(actor_id)
        if usd is not None and (not usd.is_finite() or usd < 0):
            raise InvalidOptions("The allotment must be 0 or more US dollars.", code="bad_allotment")
        before = await self.allotment(guild_id)
        await self.storage.settings.set_guild_allotment(
            guild_id, None if usd is None else str(usd), actor_id=actor_id
        )
        change = AllotmentChange(guild_id, actor_id, before, usd)
        log.info("guild %s allotment changed by the operator %s: %s -> %s", guild_id, actor_id, before, usd)
        if self.on_allotment_change is not None:
            try:
                await self.on_allotment_change(change)
            except Exception:
                log.exception("audit hook failed for an allotment change in guild %s", guild_id)
        return change

    async def operator_report(self, actor_id: int) -> OperatorReport:
        """Every server with spend, an approval or an allotment, this month (the operator only)."""
        self.access.require_operator(actor_id)
        since = period_start("monthly", self.now())
        spend = await self.storage.reports.spend_by_guild(since)
        known = await self.storage.settings.operator_guilds()
        ids = set(spend) | set(known) | set(self.settings.allowed_guild_ids)
        rate = self.settings.credits_per_usd
        servers = []
        for guild_id in sorted(ids):
            approved, usd = known.get(guild_id, (False, None))
            captured, held = spend.get(guild_id, (0, 0))
            allotment = math.floor(Decimal(usd) * rate) if usd else None
            approved = approved or guild_id in self.settings.allowed_guild_ids
            servers.append(ServerSpend(guild_id, approved, captured, held, allotment))
        servers.sort(key=lambda s: -(s.captured + s.held))
        return OperatorReport(since, tuple(servers), self.bot_cap_credits(), rate)
