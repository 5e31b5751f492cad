"""Admin-facing policy: the server's rules and role tiers, admin credit changes, reports, allotments.

What a server's rules are (`GuildPolicy`, `RoleTier`, the `Limits` they give one member) and what
admins and the operator do with them. The member-facing side (defaults, allowances, reservations,
the views) is `bot.services.policy`, whose `PolicyService` includes the `PolicyAdmin` methods below.

**Tiers only widen**: the guild's base rules apply to everyone; a role tier can give more (a bigger
allowance, a higher quality cap, more models, more images per job). For each rule the most generous
applicable value wins, so holding two tiered roles never makes anything stricter.

Above every server's rules sits the operator's money: a bot-wide MONTHLY_BUDGET_USD and an optional
monthly allotment per server that only the operator sets. Both are checked in the reservation's own
transaction, like the server's budget, so credits an admin hands out can never buy more provider
spend than the operator granted.

Over ~400 lines because it was cut out of one 1,000-line module by moving code, not rewriting it:
the rules' plain data, the report (with its CSV) and the admin methods each stay whole.
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
from typing import TYPE_CHECKING, Any

from bot import messages
from bot.catalog import Catalog, SizeRules
from bot.config import Settings
from bot.domain.options import QUALITIES, QUALITY_RANK, SIZES
from bot.domain.text import showable, visible
from bot.errors import InvalidOptions, RetouchError
from bot.services.access import AccessService
from bot.services.edits import MAX_IMAGES_PER_EDIT
from bot.storage import Storage
from bot.storage.ledger import ALLOWANCE_REASON
from bot.storage.reports import LedgerEntry

if TYPE_CHECKING:
    from bot.lifecycle import ModelLifecycle

log = logging.getLogger(__name__)

PERIODS = ("daily", "weekly", "monthly")
NO_PERIOD = "none"
CAPPABLE_QUALITIES = ("low", "medium", "high", "xhigh", "max")  # "max", the top level, caps nothing
ALL_MODELS = "*"
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


def period_key(period: str, now: dt.datetime) -> str | None:
    """The refill record's name for the period containing `now`; None when there is no allowance."""
    if period not in PERIODS:
        return None
    return f"{period}:{period_start(period, now).date().isoformat()}"


def next_period_start(period: str, now: dt.datetime) -> dt.datetime:
    """When the period containing `now` ends (the next refill)."""
    start = period_start(period, now)
    if period == "daily":
        return start + dt.timedelta(days=1)
    if period == "weekly":
        return start + dt.timedelta(days=7)
    return (start + dt.timedelta(days=32)).replace(day=1)


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
    raise InvalidOptions(messages.report_period(REPORT_PERIODS), code="bad_period")


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
            max_quality=None if max_quality == "max" else max_quality,  # the top level caps nothing
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
    audited: bool = False  # posted in the audit channel (set once the audit hook has answered)


@dataclass(frozen=True)
class ServerSpend:
    """One server's spend this month against its allotment (the operator's report)."""

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
    spent: int = 0  # charged to members (captures)
    # Billed by the image services for this server's jobs, charged to no member (not ledger rows).
    absorbed: int = 0
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
        elif e.kind in ("grant", "adjust") and (e.actor_id is not None or e.reason is None):
            # No reason at all: an admin's change whose admin and text JOB_HISTORY_DAYS erased (every
            # other grant is written with one: "starting credits", "allowance …").
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
SIZE_HELP = messages.size_help(SIZES, SizeRules().describe())


def _setting_text(value: bool | None) -> str:
    return "the default" if value is None else ("on" if value else "off")


def valid_size(size: str) -> bool:
    return size in SIZES or SizeRules().problem(size) is None


def may_administer(user_id: int, *, manage_guild: bool, allow_list: frozenset[int]) -> bool:
    """Manage Server is always required; when an allow-list is configured, membership is too.

    Discord's default permission only hides the command, and a server can change it, so this runs on
    every call. Even a server Administrator is refused when they are not on a configured list.
    """
    return manage_guild and (not allow_list or user_id in allow_list)


def parse_models(
    text: str, catalog: Catalog, *, allow_all_marker: bool, offered: Iterable[str] | None = None
) -> frozenset[str] | None:
    """A list of model ids typed by an admin ("all" = every model). Raises InvalidOptions if unknown,
    naming the models `offered` (default: the catalog's; the service names only the live ones, since a
    retired one is refused anyway)."""
    ids = {part for part in text.replace(",", " ").split() if part}
    if not ids or ids == {"all"}:
        return frozenset({ALL_MODELS}) if allow_all_marker else None
    unknown = sorted(ids - set(catalog.models))
    if unknown:
        known = list(catalog.models if offered is None else offered)
        raise InvalidOptions(messages.unknown_models(unknown, known), code="unknown_model")
    return frozenset(ids)


def _models_column(models: frozenset[str] | None) -> str | None:
    return None if models is None else " ".join(sorted(models))


# -- the admin half of the service --------------------------------------------------------------------

CreditAudit = Callable[[CreditChange], Awaitable[None]]
# The audit hook for allotment changes: True when the change was posted in the audit channel.
AllotmentAudit = Callable[[AllotmentChange], Awaitable[bool | None]]


class PolicyAdmin:
    """The admin-facing half of `PolicyService` (bot.services.policy), which this is mixed into.

    A mixin rather than a class of its own so that every caller keeps one policy object; the state and
    the reads it uses are `PolicyService`'s, declared here only for the type checker.
    """

    settings: Settings
    catalog: Catalog
    lifecycle: ModelLifecycle
    storage: Storage
    access: AccessService
    on_credit_change: CreditAudit
    on_allotment_change: AllotmentAudit

    if TYPE_CHECKING:

        def now(self) -> dt.datetime: ...

        async def guild_policy(self, guild_id: int) -> GuildPolicy: ...

        def _starting(self, policy: GuildPolicy) -> int: ...

        async def allotment(self, guild_id: int) -> Decimal | None: ...

        def bot_cap_credits(self) -> int | None: ...

    # -- admin -----------------------------------------------------------------------------------

    def authorize_admin(self, user_id: int, *, manage_guild: bool) -> None:
        """Raise NotPermitted unless this user may change credits and policy in this server."""
        allow_list = self.settings.admin_user_ids
        if allow_list and self.access.is_operator(user_id):
            # The operator (OWNER_IDS, else the application's owner) is always on the list.
            allow_list = allow_list | {user_id}
        if may_administer(user_id, manage_guild=manage_guild, allow_list=allow_list):
            return
        if not manage_guild:
            raise NotPermitted(messages.NEEDS_MANAGE_SERVER, code="not_admin")
        raise NotPermitted(messages.NOT_ON_ADMIN_LIST, code="not_on_admin_list")

    def allowed_models(self, text: str, *, allow_all_marker: bool) -> frozenset[str] | None:
        """A list of model ids typed by an admin (`parse_models`), each usable today. A shut-down one
        is refused naming its replacement: saved as the only model members may use, it would lock
        every one of them out."""
        live = [m.id for m in self.lifecycle.available()]
        models = parse_models(text, self.catalog, allow_all_marker=allow_all_marker, offered=live)
        for model_id in sorted(models or ()):
            if model_id != ALL_MODELS:
                self.lifecycle.choosable(model_id)
        return models

    async def update_guild(self, guild_id: int, actor_id: int, changes: Mapping[str, Any]) -> GuildPolicy:
        """Change server rules. Keys are GuildPolicy fields; values in their Python form."""
        columns: dict[str, Any] = {}
        for name, value in changes.items():
            columns.update(self._guild_column(name, value))
        if "default_model" in changes or "models" in changes:
            await self._check_default_allowed(guild_id, changes)
        if columns:
            await self.storage.settings.update_guild_policy(guild_id, columns, actor_id=actor_id)
            log.info("guild %s policy changed by %s: %s", guild_id, actor_id, sorted(columns))
        return await self.guild_policy(guild_id)

    async def set_thread_results(self, guild_id: int, actor_id: int, value: bool | None) -> None:
        """`/admin threads`: on, off, or None for the bot-wide default. Logged with who changed it,
        as every other rule is (guild_settings keeps no author)."""
        await self.storage.settings.set_guild_thread_results(guild_id, value)
        log.info("guild %s result threads set to %s by %s", guild_id, _setting_text(value), actor_id)

    async def set_moderation(self, guild_id: int, actor_id: int, level: str | None) -> None:
        """`/admin policy moderation`: off, standard, strict, or None for the bot-wide default. Logged
        with who changed it: turning the safety check off is the operator's business to trace."""
        await self.storage.settings.set_guild_moderation(guild_id, level)
        log.info("guild %s safety check set to %s by %s", guild_id, level or "the default", actor_id)

    async def _check_default_allowed(self, guild_id: int, changes: Mapping[str, Any]) -> None:
        """The server's default model must be one its rules let somebody use (everyone, with the
        @everyone tier, or a role's tier): else every member's edit moves off it with a note ("your
        roles can't use …") while the admin was told "Saved."."""
        current = await self.guild_policy(guild_id)
        default = changes.get("default_model", current.default_model)
        after = replace(current, models=changes.get("models", current.models))
        # A saved default the catalog has dropped since is skipped by every member's defaults anyway.
        if default is None or default not in self.catalog.models:
            return
        everyone = after.limits_for(())
        reach = [everyone.models, *(after.limits_for((t.role_id,)).models for t in after.tiers)]
        if any(models is None or default in models for models in reach):
            return
        allowed = everyone.models or frozenset()
        names = [self.catalog.models[m].name if m in self.catalog.models else m for m in sorted(allowed)]
        name = self.catalog.models[default].name
        raise InvalidOptions(messages.default_model_not_allowed(name, names), code="default_not_allowed")

    def _guild_column(self, name: str, value: Any) -> dict[str, Any]:
        if name == "period":
            if value not in (*PERIODS, NO_PERIOD):
                raise InvalidOptions(messages.ALLOWANCE_PERIOD, code="bad_period")
            return {"allowance_period": value}
        if name in ("max_quality",) and value not in (None, *CAPPABLE_QUALITIES):
            raise InvalidOptions(messages.QUALITY_CAP, code="bad_quality")
        if name == "default_quality" and value not in (None, *QUALITIES):
            raise InvalidOptions(messages.quality_one_of(QUALITIES), code="bad_quality")
        if name == "default_size" and value is not None and not valid_size(value):
            raise InvalidOptions(SIZE_HELP, code="bad_size")
        if name == "default_model" and value is not None:
            self.lifecycle.choosable(value)  # unknown or dead: refused, naming the replacement
        if name == "models":
            return {"models": _models_column(value)}
        if name == "monthly_cap_usd":
            # Kept exactly as given (never rounded): it is turned into credits rounding down, so one
            # under a credit would be a cap of 0 that refuses every edit.
            if value is not None and Decimal(value) * self.settings.credits_per_usd < 1:
                raise InvalidOptions(
                    messages.under_one_credit("budget", self.settings.credits_per_usd), code="bad_cap"
                )
            return {"monthly_cap_usd": None if value is None else str(Decimal(value))}
        if name == "provider_order":
            known = {r.provider for m in self.catalog.models.values() for r in m.routes}
            unknown = [p for p in value if p not in known]
            if unknown:
                raise InvalidOptions(
                    messages.unknown_providers(unknown, sorted(known)), code="unknown_provider"
                )
            # A provider is ranked once, where the admin first named it (PROVIDER_ORDER is read the
            # same way). Repeats kept, the stored order was as long as an admin cared to type, past
            # what the policy embed's field can show; without them it is at most the known providers.
            return {"provider_order": " ".join(dict.fromkeys(value)) or None}
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
            raise InvalidOptions(messages.QUALITY_CAP, code="bad_quality")
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
        self,
        guild_id: int,
        actor_id: int,
        user_id: int,
        action: str,
        amount: int,
        reason: str,
        role_ids: Iterable[int] | None = (),
    ) -> CreditChange:
        """An admin's `grant`, `take` or `set`: one ledger row with the acting admin, then the audit.

        `role_ids` are the member's roles: the allowance refill that is due for them (their tier's
        amount) is made first, so the change lands on the balance the member's next use would see.
        None when they are not known (someone no longer in the server): no refill is made then, as
        one at the base amount would spend the period's refill of a tier member who comes back.
        """
        if action not in ("grant", "take", "set") or amount < 0:
            raise InvalidOptions(messages.CREDIT_ACTION, code="bad_credit_action")
        # Kept in the ledger and posted to the operator's audit channel: a reason of zero-width or
        # control characters only was accepted as one (a blank line on record).
        reason = showable(reason).strip()[:MAX_REASON_CHARS]
        if not visible(reason):
            raise InvalidOptions(messages.NO_REASON, code="no_reason")
        policy = await self.guild_policy(guild_id)
        account, moved = await self.storage.ledger.change_balance(
            guild_id,
            user_id,
            add={"grant": amount, "take": -amount}.get(action, 0),
            set_to=amount if action == "set" else None,
            actor_id=actor_id,
            reason=f"{action}: {reason}",
            starting_credits=self._starting(policy),
            allowance=policy.limits_for(role_ids or ()).allowance,
            period_of=None if role_ids is None else functools.partial(period_key, policy.period),
        )
        change = CreditChange(guild_id, user_id, actor_id, action, amount, moved, account.balance, reason)
        log.info("credits %s by %s for user %s in guild %s: %+d", action, actor_id, user_id, guild_id, moved)
        await self._audit(change)
        return change

    async def _audit(self, change: CreditChange) -> None:
        # The one call site for credit changes; bot/app.py wires `on_credit_change` to the audit log.
        try:
            await self.on_credit_change(change)
        except Exception:
            log.exception("audit hook failed for a credit change in guild %s", change.guild_id)

    async def report(self, guild_id: int, period: str) -> SpendReport:
        """The guild's ledger over `period` with spend per user, model and provider."""
        since, until = report_range(period, self.now())
        entries = await self.storage.reports.guild_ledger(guild_id, since=since, until=until)
        report = SpendReport(guild_id, period, since, until, tuple(entries), self.settings.credits_per_usd)
        absorbed = await self.storage.reports.absorbed_credits(guild_id, since=since, until=until)
        return replace(summarize(report), absorbed=absorbed)

    # -- the operator ----------------------------------------------------------------------------

    async def set_allotment(self, guild_id: int, actor_id: int, usd: Decimal | None) -> AllotmentChange:
        """The operator gives a server a monthly USD allotment (None removes it); audited."""
        self.access.require_operator(actor_id)
        if usd is not None and (not usd.is_finite() or usd < 0):
            raise InvalidOptions(messages.ALLOTMENT, code="bad_allotment")
        if usd is not None and 0 < usd * self.settings.credits_per_usd < 1:  # floored to 0 credits
            raise InvalidOptions(
                messages.under_one_credit("allotment", self.settings.credits_per_usd), code="bad_allotment"
            )
        before = await self.allotment(guild_id)
        await self.storage.settings.set_guild_allotment(
            guild_id, None if usd is None else str(usd), actor_id=actor_id
        )
        change = AllotmentChange(guild_id, actor_id, before, usd)
        log.info("guild %s allotment changed by the operator %s: %s -> %s", guild_id, actor_id, before, usd)
        try:
            change = replace(change, audited=await self.on_allotment_change(change) is True)
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
