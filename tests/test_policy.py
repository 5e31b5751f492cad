"""Credit policy against a real SQLite file: allowance refills, tiers and clamping, admission limits,
admin permissions and the spend report. No Discord objects; time comes from an injectable clock."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.errors import InvalidOptions, RetouchError
from bot.lifecycle import ModelLifecycle
from bot.routing.rules import Needs, blockers
from bot.services.admin import (
    ALL_MODELS,
    NO_PERIOD,
    CreditAudit,
    CreditChange,
    GuildPolicy,
    Limits,
    NotPermitted,
    RoleTier,
    SpendReport,
    may_administer,
    next_period_start,
    parse_models,
)
from bot.services.edits import EditJob, EditOptions, JobDefaults, MaskSpec
from bot.services.policy import PolicyRefused, PolicyService, clamp
from bot.storage import Storage
from bot.storage.ledger import NotEnoughCredits
from bot.storage.reports import LedgerEntry
from tests.catalogs import catalog, flat, model, route, tiered
from tests.fixtures import policy_service, settings_for

GUILD, OTHER_GUILD = 100, 200
ALICE, BOB, ADMIN = 1, 2, 9
VIP, PRO = 501, 502
CATALOG = catalog(
    model(
        "gpt-image-1.5",
        name="GPT Image 1.5",
        price=tiered(low=(0.01, 0.02), medium=(0.04, 0.06), high=(0.16, 0.25)),
    ),
    model("gpt-image-1-mini", name="GPT Image 1 Mini", price=flat(0.005, 0.006)),
)


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


class Clock:
    """A clock the test moves by hand; Storage and the policy both read it."""

    def __init__(self, start: str = "2026-11-10T12:00:00") -> None:
        self.at = utc(start)

    def __call__(self) -> dt.datetime:
        return self.at

    def set(self, text: str) -> None:
        self.at = utc(text)

    def advance(self, seconds: float) -> None:
        self.at += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def storage_clock(clock: Clock) -> Clock:
    """The `storage` fixture (tests/conftest.py) reads this test's clock."""
    return clock


MakePolicy = Callable[..., PolicyService]


@pytest.fixture
async def make_policy(storage: Storage, tmp_path: Path) -> AsyncIterator[MakePolicy]:
    """The policy service as production wires it, over `storage` unless `store` is given; `audit`
    stands in for the audit log's credit hook. Its calendar is the storage's clock."""
    async with aiohttp.ClientSession() as session:

        def make(audit: CreditAudit | None = None, store: Storage | None = None, **env: str) -> PolicyService:
            # The operator approved both test servers (the bot serves only approved servers).
            env = {
                "OPENAI_API_KEY": "sk-test",
                "STARTING_CREDITS": "0",
                "ALLOWED_GUILD_IDS": f"{GUILD},{OTHER_GUILD}",
                **env,
            }
            settings = settings_for(tmp_path, **env)
            policy = policy_service(settings, CATALOG, store or storage, session)
            if audit is not None:
                policy.on_credit_change = audit
            return policy

        yield make


@pytest.fixture
def policy(make_policy: MakePolicy) -> PolicyService:
    return make_policy()


def job(user: int = ALICE, guild: int = GUILD, roles: tuple[int, ...] = ()) -> EditJob:
    return EditJob(guild, user, 7, [], EditOptions("make it blue"), 10_000_000, role_ids=roles)


async def new_job(storage: Storage, job_id: str, user: int = ALICE, guild: int = GUILD) -> str:
    await storage.jobs.create_job(
        job_id,
        guild_id=guild,
        user_id=user,
        channel_id=7,
        model="gpt-image-1.5",
        quality="low",
        size="auto",
        count=1,
    )
    return job_id


async def fund(storage: Storage, *users: int) -> None:
    for user in users:
        await storage.ledger.change_balance(
            GUILD, user, add=1000, actor_id=ADMIN, reason="setup", starting_credits=0
        )


async def assert_ledger_matches(storage: Storage, guild: int, user: int) -> None:
    """The ledger invariant: balance and held are exactly the sums of the account's ledger rows."""
    account = await storage.ledger.get_account(guild, user)
    totals = await storage.reports.ledger_totals(guild, user)
    assert account is not None
    assert (account.balance, account.held) == (totals.balance, totals.held)


async def allowance_rows(storage: Storage, user: int = ALICE, guild: int = GUILD) -> int:
    entries, _ = await storage.reports.account_history(guild, user, kinds=("grant",), offset=0, limit=1000)
    return sum(1 for e in entries if (e.reason or "").startswith("allowance"))


# -- allowance refills ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "first_use", "next_use", "refilled"),
    [
        ("monthly", "2026-01-31T23:59:59.999", "2026-02-01T00:00:00", True),
        ("monthly", "2026-02-01T00:00:00", "2026-02-28T23:59:59.999", False),
        ("monthly", "2026-12-31T23:59:59.999", "2027-01-01T00:00:00", True),
        ("monthly", "2028-02-01T00:00:00", "2028-02-29T23:59:59.999", False),  # leap day is still February
        ("monthly", "2028-02-29T12:00:00", "2028-03-01T00:00:00", True),
        ("monthly", "2026-04-30T23:59:59.999", "2026-05-01T00:00:00.001", True),
        ("daily", "2028-02-28T23:59:59.999", "2028-02-29T00:00:00", True),
        ("daily", "2028-02-29T00:00:00", "2028-02-29T23:59:59.999", False),
        ("daily", "2028-02-29T23:59:59.999", "2028-03-01T00:00:00", True),
        ("weekly", "2026-11-22T23:59:59.999", "2026-11-23T00:00:00", True),  # Sunday -> Monday
        ("weekly", "2026-11-23T00:00:00", "2026-11-29T23:59:59.999", False),  # Monday -> Sunday
    ],
)
async def test_allowance_tops_up_on_the_first_use_after_a_period_boundary(
    policy: PolicyService,
    storage: Storage,
    clock: Clock,
    period: str,
    first_use: str,
    next_use: str,
    refilled: bool,
):
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100, "period": period})
    clock.set(first_use)
    assert (await policy.credits(GUILD, ALICE, ())).account.balance == 100
    await storage.ledger.change_balance(
        GUILD, ALICE, set_to=40, actor_id=ADMIN, reason="spent", starting_credits=0
    )

    clock.set(next_use)
    summary = await policy.credits(GUILD, ALICE, ())

    assert summary.account.balance == (100 if refilled else 40)
    assert await allowance_rows(storage) == (2 if refilled else 1)
    assert summary.allowance.next_refill == next_period_start(period, clock.at)
    await assert_ledger_matches(storage, GUILD, ALICE)


@pytest.mark.parametrize(
    ("now", "next_refill"),
    [
        ("2026-01-31T10:00:00", "2026-02-01T00:00:00"),
        ("2028-02-29T10:00:00", "2028-03-01T00:00:00"),
        ("2026-12-15T00:00:00", "2027-01-01T00:00:00"),
    ],
)
async def test_credits_show_when_the_monthly_allowance_next_refills(
    policy: PolicyService, clock: Clock, now: str, next_refill: str
):
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100, "period": "monthly"})
    clock.set(now)
    summary = await policy.credits(GUILD, ALICE, ())
    assert summary.allowance.amount == 100 and summary.allowance.period == "monthly"
    assert summary.allowance.next_refill == utc(next_refill)


@pytest.mark.parametrize(
    ("balance", "allowance", "after"),
    [(0, 100, 100), (40, 100, 100), (100, 100, 100), (250, 100, 250)],
)
async def test_allowance_tops_up_to_its_amount_and_never_takes_credits_away(
    policy: PolicyService, storage: Storage, clock: Clock, balance: int, allowance: int, after: int
):
    await storage.ledger.change_balance(
        GUILD, ALICE, set_to=balance, actor_id=ADMIN, reason="setup", starting_credits=0
    )
    await policy.update_guild(GUILD, ADMIN, {"allowance": allowance, "period": "monthly"})
    assert (await policy.credits(GUILD, ALICE, ())).account.balance == after
    clock.advance(40 * 86400)
    assert (await policy.credits(GUILD, ALICE, ())).account.balance == max(after, allowance)
    await assert_ledger_matches(storage, GUILD, ALICE)


async def test_top_up_fills_only_what_is_free_of_holds_so_a_release_cannot_double_the_allowance(
    policy: PolicyService, storage: Storage, clock: Clock
):
    # Issue 11: this used to top up to 100 beside the 70 held, and the release then left 170.
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100, "period": "monthly"})
    clock.set("2026-11-30T23:59:00")
    await policy.reserve(await new_job(storage, "j1"), job(), 70)
    clock.set("2026-12-01T00:00:00")
    account = (await policy.credits(GUILD, ALICE, ())).account
    assert (account.balance, account.held) == (30, 70)
    await storage.ledger.release("j1")
    account = (await policy.credits(GUILD, ALICE, ())).account
    assert (account.balance, account.held) == (100, 0)
    await assert_ledger_matches(storage, GUILD, ALICE)


async def test_a_hold_captured_after_the_boundary_leaves_the_member_the_new_allowance(
    policy: PolicyService, storage: Storage, clock: Clock
):
    """The top-up counted November's holds as the member's; captured instead of released, they were
    November's spending. It used to leave the member with December's allowance gone (0 here, after
    a job that held all 100 was charged): each capture now adds what the top-up left out."""
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100, "period": "monthly"})
    clock.set("2026-11-30T23:59:00")
    await policy.reserve(await new_job(storage, "j1"), job(), 30)
    await policy.reserve(await new_job(storage, "j2"), job(), 40)
    clock.set("2026-12-01T00:00:00")
    account = (await policy.credits(GUILD, ALICE, ())).account
    assert (account.balance, account.held) == (30, 70)  # nothing added: 30 + 70 held make 100
    await policy.reserve(await new_job(storage, "j3"), job(), 20)  # December's own edit
    await storage.ledger.capture("j1", 30)
    account = (await policy.credits(GUILD, ALICE, ())).account
    assert (account.balance, account.held) == (40, 60)  # 10 free + the 30 November's job cost
    await storage.ledger.capture("j2", 10)
    await storage.ledger.capture("j3", 20)  # December's: paid from December's allowance
    account = (await policy.credits(GUILD, ALICE, ())).account
    assert (account.balance, account.held) == (80, 0)
    assert await storage.ledger.capture("j2", 10) is not None  # a repeated capture adds nothing
    assert (await storage.ledger.get_account(GUILD, ALICE)).balance == 80
    await assert_ledger_matches(storage, GUILD, ALICE)


async def test_a_hold_captured_after_the_boundary_adds_nothing_to_a_balance_above_the_allowance(
    policy: PolicyService, storage: Storage, clock: Clock
):
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100, "period": "monthly"})
    clock.set("2026-11-30T23:59:00")
    await storage.ledger.change_balance(
        GUILD, ALICE, set_to=200, actor_id=ADMIN, reason="gift", starting_credits=0
    )
    await policy.reserve(await new_job(storage, "j1"), job(), 70)
    clock.set("2026-12-01T00:00:00")
    await policy.credits(GUILD, ALICE, ())
    await storage.ledger.capture("j1", 50)
    account = (await policy.credits(GUILD, ALICE, ())).account
    assert (account.balance, account.held) == (150, 0)  # as if captured in November: no top-up due
    await assert_ledger_matches(storage, GUILD, ALICE)


@pytest.mark.parametrize(
    ("action", "amount", "balance"),
    [
        ("set", 0, 0),  # it was 50: the capture added the top-up the set had replaced
        ("set", 80, 80),  # 130
        ("grant", 50, 150),
        ("take", 30, 70),
        # More than the 50 available: it takes 50, and the 50 it could not take come off the top-up the
        # capture adds (captured first: 100, all taken). It ended at 50.
        ("take", 100, 0),
        ("take", 70, 30),
    ],
)
async def test_an_admins_change_before_a_hold_from_last_period_is_captured_ends_as_if_captured_first(
    policy: PolicyService, storage: Storage, clock: Clock, action: str, amount: int, balance: int
):
    """December's top-up counted November's hold as the member's, and its capture adds what the top-up
    left out. An admin's set replaces that pending top-up with the admin's number; a grant or take only
    moves credits, so it keeps it (the member ends where the capture coming first would leave them)."""
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100, "period": "monthly"})
    clock.set("2026-11-30T23:59:00")
    await policy.reserve(await new_job(storage, "j1"), job(), 50)
    clock.set("2026-12-01T00:00:05")
    account = (await policy.credits(GUILD, ALICE, ())).account
    assert (account.balance, account.held) == (50, 50)  # nothing added: 50 + 50 held make 100
    await policy.change_credits(GUILD, ADMIN, ALICE, action, amount, "early in December")
    await storage.ledger.capture("j1", 50)
    account = (await policy.credits(GUILD, ALICE, ())).account
    assert (account.balance, account.held) == (balance, 0)
    await assert_ledger_matches(storage, GUILD, ALICE)


async def test_precheck_refuses_a_member_whose_holds_already_cover_the_allowance_due(
    policy: PolicyService, storage: Storage, clock: Clock
):
    """No credits free, and the refill that is due would add nothing (the allowance tops up what is
    free of holds, and 100 are held): refused before any image is downloaded."""
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100, "period": "monthly"})
    clock.set("2026-11-30T23:59:00")
    await policy.reserve(await new_job(storage, "running"), job(), 100)  # November's refill, all held
    clock.set("2026-12-01T00:00:00")  # December's refill is due, but 100 are still held
    with pytest.raises(RetouchError) as refused:
        await policy.precheck(job())
    assert refused.value.code == "insufficient_credits"
    await storage.ledger.release("running")
    await policy.precheck(job())  # with the hold gone, the refill would give 100: let through


@pytest.mark.parametrize("used_first", [False, True], ids=["not-used-yet", "used-first"])
@pytest.mark.parametrize(
    ("action", "amount", "balance"),
    [("grant", 100, 200), ("take", 20, 80), ("set", 0, 0), ("set", 250, 250)],
)
async def test_an_admins_change_early_in_a_period_lands_on_the_refilled_balance_used_or_not(
    policy: PolicyService,
    storage: Storage,
    clock: Clock,
    used_first: bool,
    action: str,
    amount: int,
    balance: int,
):
    """Refills are made at the member's next use. An admin's change made before it was topped up over
    (a `set 0` ended at 100) or counted against the top-up (a prize of 100 left 130, not 200), unlike
    the same change made after the member's first use; the refill that is due now comes first."""
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100, "period": "monthly"})
    clock.set("2026-01-15T12:00:00")
    await policy.credits(GUILD, ALICE, ())  # January's top-up: 100
    await policy.change_credits(GUILD, ADMIN, ALICE, "set", 30, "spent most of it")
    clock.set("2026-02-01T00:05:00")
    if used_first:
        await policy.credits(GUILD, ALICE, ())
    await policy.change_credits(GUILD, ADMIN, ALICE, action, amount, "early in February")
    assert (await policy.credits(GUILD, ALICE, ())).account.balance == balance
    assert await allowance_rows(storage) == 2  # January's and February's
    await assert_ledger_matches(storage, GUILD, ALICE)


async def test_the_refill_before_an_admins_change_is_the_members_tier_allowance(
    policy: PolicyService, storage: Storage
):
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100, "period": "monthly"})
    await policy.set_tier(GUILD, VIP, ADMIN, allowance=500)
    change = await policy.change_credits(GUILD, ADMIN, ALICE, "grant", 50, "prize", (VIP,))
    assert change.balance == 550
    assert (await policy.credits(GUILD, ALICE, (VIP,))).account.balance == 550


async def test_an_admins_change_for_someone_whose_roles_are_unknown_leaves_the_refill_to_their_next_use(
    policy: PolicyService, storage: Storage
):
    """A member who left the server has no roles to read: a refill at the base allowance spent the
    period's, and a tier member who came back got the base amount for the rest of it."""
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100, "period": "monthly"})
    await policy.set_tier(GUILD, VIP, ADMIN, allowance=500)
    change = await policy.change_credits(GUILD, ADMIN, ALICE, "grant", 50, "prize", None)
    assert change.balance == 50 + policy.settings.starting_credits
    assert await allowance_rows(storage) == 0
    assert (await policy.credits(GUILD, ALICE, (VIP,))).account.balance == 500  # back: their tier's top-up


async def test_concurrent_uses_at_the_boundary_refill_exactly_once(
    make_policy: MakePolicy, policy: PolicyService, storage: Storage, clock: Clock, database_url: str
):
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100, "period": "monthly"})
    clock.set("2026-11-30T23:59:59.999")
    await policy.credits(GUILD, ALICE, ())
    await storage.ledger.change_balance(
        GUILD, ALICE, set_to=10, actor_id=ADMIN, reason="spent", starting_credits=0
    )
    clock.set("2026-12-01T00:00:00")
    # A second connection to the same database stands in for another process using it.
    other = await Storage.open(database_url, clock=clock)
    try:
        other_policy = make_policy(store=other)
        uses = [p.credits(GUILD, ALICE, ()) for p in (policy, other_policy) for _ in range(10)]
        balances = {s.account.balance for s in await asyncio.gather(*uses)}
    finally:
        await other.close()
    assert balances == {100}
    assert await allowance_rows(storage) == 2  # November's and December's, nothing more
    await assert_ledger_matches(storage, GUILD, ALICE)


async def test_a_new_member_gets_the_servers_starting_credits_then_the_allowance(
    policy: PolicyService, storage: Storage
):
    await policy.update_guild(GUILD, ADMIN, {"allowance": 300, "period": "weekly", "starting_credits": 50})
    account = (await policy.credits(GUILD, ALICE, ())).account
    assert account.balance == 300
    entries, _ = await storage.reports.account_history(GUILD, ALICE, kinds=("grant",), offset=0, limit=10)
    assert sorted((e.amount, e.reason) for e in entries) == [
        (50, "starting credits"),
        (250, "allowance weekly:2026-11-09"),
    ]


async def test_without_an_allowance_period_nothing_refills(policy: PolicyService, clock: Clock):
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100})
    summary = await policy.credits(GUILD, ALICE, ())
    assert summary.account.balance == 0 and summary.allowance.next_refill is None


# -- tiers, defaults and clamping -------------------------------------------------------------------

BASE = GuildPolicy(
    GUILD, allowance=100, period="monthly", max_quality="low", models=frozenset({"gpt-image-1-mini"})
)


@pytest.mark.parametrize(
    ("tiers", "roles", "expected"),
    [
        ((), (), Limits(100, "low", frozenset({"gpt-image-1-mini"}), 4)),
        ((RoleTier(VIP, allowance=500),), (), Limits(100, "low", frozenset({"gpt-image-1-mini"}), 4)),
        (
            (RoleTier(VIP, allowance=500),),
            (VIP,),
            Limits(500, "low", frozenset({"gpt-image-1-mini"}), 4, (VIP,)),
        ),
        # The most generous value of each rule wins across tiers; "high" is a cap (xhigh and max are
        # dearer), only "max", the top level, caps nothing.
        (
            (
                RoleTier(VIP, allowance=500, max_quality="medium"),
                RoleTier(PRO, allowance=200, max_quality="high"),
            ),
            (VIP, PRO),
            Limits(500, "high", frozenset({"gpt-image-1-mini"}), 4, (VIP, PRO)),
        ),
        (
            (RoleTier(VIP, max_quality="xhigh"), RoleTier(PRO, max_quality="max")),
            (VIP, PRO),
            Limits(100, None, frozenset({"gpt-image-1-mini"}), 4, (VIP, PRO)),
        ),
        (
            (RoleTier(VIP, models=frozenset({"gpt-image-1.5"})),),
            (VIP,),
            Limits(100, "low", frozenset({"gpt-image-1-mini", "gpt-image-1.5"}), 4, (VIP,)),
        ),
        ((RoleTier(VIP, models=frozenset({ALL_MODELS})),), (VIP,), Limits(100, "low", None, 4, (VIP,))),
        # A tier on @everyone (role id = guild id) applies to every member.
        (
            (RoleTier(GUILD, allowance=150),),
            (),
            Limits(150, "low", frozenset({"gpt-image-1-mini"}), 4, (GUILD,)),
        ),
        # A smaller allowance on a tier never lowers the base.
        (
            (RoleTier(VIP, allowance=10),),
            (VIP,),
            Limits(100, "low", frozenset({"gpt-image-1-mini"}), 4, (VIP,)),
        ),
    ],
)
def test_role_tiers_only_widen_the_servers_rules(
    tiers: tuple[RoleTier, ...], roles: tuple[int, ...], expected: Limits
):
    policy = GuildPolicy(**{**BASE.__dict__, "tiers": tiers})
    assert policy.limits_for(roles) == expected


def test_max_images_is_the_most_generous_tier_and_never_above_the_bots_maximum():
    policy = GuildPolicy(
        GUILD, max_images=1, tiers=(RoleTier(VIP, max_images=2), RoleTier(PRO, max_images=3))
    )
    assert policy.limits_for(()).max_images == 1
    assert policy.limits_for((VIP, PRO)).max_images == 3


ANY = Limits(0, None, None, 4)
CHOSEN = JobDefaults("gpt-image-1.5", "high", "auto", "auto", "png", 1)
# The models live for a bot with an OpenAI key on 10 November 2026 (what the policy service gives `clamp`).
USABLE = ModelLifecycle(CATALOG, frozenset({"openai"}), lambda: dt.date(2026, 11, 10)).usable


def with_(**changes: Any) -> JobDefaults:
    return replace(CHOSEN, **changes)


@pytest.mark.parametrize(
    ("chosen", "limits", "expected", "notice"),
    [
        (CHOSEN, ANY, CHOSEN, None),
        (CHOSEN, Limits(0, "medium", None, 4), with_(quality="medium"), "at most **medium** quality"),
        (with_(quality="auto"), Limits(0, "medium", None, 4), with_(quality="medium"), "medium"),
        (with_(quality="low"), Limits(0, "medium", None, 4), with_(quality="low"), None),
        (with_(quality="auto"), ANY, with_(quality="auto"), None),
        # A cap at high keeps members off the dearer levels GPT Image 2.5 and 2.6 add.
        (with_(quality="max"), Limits(0, "high", None, 4), with_(quality="high"), "at most **high** quality"),
        (with_(quality="xhigh"), Limits(0, "xhigh", None, 4), with_(quality="xhigh"), None),
        # auto may come back as (and is held at) max on GPT Image 2.5/2.6: a cap at high makes it high.
        (
            with_(quality="auto"),
            Limits(0, "high", None, 4),
            with_(quality="high"),
            "at most **high** quality",
        ),
        (
            with_(count=4),
            Limits(0, None, None, 2),
            with_(count=2),
            "at most 2 image(s) per edit",
        ),
        (
            CHOSEN,
            Limits(0, None, frozenset({"gpt-image-1-mini"}), 4),
            with_(model="gpt-image-1-mini"),
            "can't use GPT Image 1.5, so Retouch uses GPT Image 1 Mini",
        ),
    ],
)
def test_clamping_applies_the_cap_and_says_so(
    chosen: JobDefaults, limits: Limits, expected: JobDefaults, notice: str | None
):
    result, notices = clamp(chosen, limits, catalog=CATALOG, usable=USABLE)
    assert result == expected
    if notice is None:
        assert notices == ()
    else:
        [text] = notices
        assert notice in text


def test_clamping_refuses_when_no_allowed_model_exists():
    with pytest.raises(PolicyRefused) as refused:
        clamp(CHOSEN, Limits(0, None, frozenset({"gone"}), 4), catalog=CATALOG, usable=USABLE)
    assert refused.value.code == "no_allowed_model"


async def test_a_default_above_the_role_cap_is_capped_for_jobs_and_the_quality_view(policy: PolicyService):
    await policy.update_guild(GUILD, ADMIN, {"max_quality": "medium"})
    await policy.set_tier(GUILD, VIP, ADMIN, max_quality="high")
    await policy.set_quality(GUILD, ALICE, (), "high")

    chosen = await policy.defaults_for(GUILD, ALICE)
    capped, notices = await policy.clamp(job(), chosen)
    vip, vip_notices = await policy.clamp(job(roles=(VIP,)), chosen)
    view = await policy.quality_view(GUILD, ALICE, ())

    assert (chosen.quality, capped.quality, vip.quality) == ("high", "medium", "high")
    assert "at most **medium**" in notices[0] and vip_notices == ()
    assert view.capped and view.defaults.effective.quality == "medium"
    # Per-image list prices at the default size (auto = the larger size's price), in credits.
    assert [(p.quality, p.credits, p.allowed) for p in view.prices] == [
        ("low", 20, True),
        ("medium", 60, True),
        ("high", 250, False),
        ("auto", 250, False),
    ]


@pytest.mark.parametrize(
    ("user", "server", "expected_quality", "expected_source"),
    [
        ({}, {}, "auto", "bot"),
        ({}, {"default_quality": "low"}, "low", "server"),
        ({"quality": "high"}, {"default_quality": "low"}, "high", "you"),
    ],
)
async def test_user_defaults_win_over_server_defaults_which_win_over_bot_settings(
    policy: PolicyService,
    storage: Storage,
    user: dict[str, str],
    server: dict[str, str],
    expected_quality: str,
    expected_source: str,
):
    if user:
        await storage.settings.update_user_settings(ALICE, user)
    if server:
        await policy.update_guild(GUILD, ADMIN, server)
    defaults = await policy.effective_defaults(GUILD, ALICE, ())
    assert defaults.chosen.quality == expected_quality
    assert defaults.sources["quality"] == expected_source
    assert (await policy.defaults_for(GUILD, ALICE)).quality == expected_quality


async def test_a_stored_default_model_the_catalog_no_longer_has_falls_back_to_the_next_default(
    policy: PolicyService, storage: Storage
):
    """The operator's CATALOG_PATH copy dropped a model members had saved: their edits (which have no
    model option) must not all be refused as naming an unknown model."""
    await storage.settings.update_user_settings(ALICE, {"model": "gpt-image-9-removed"})
    defaults = await policy.effective_defaults(GUILD, ALICE, ())
    assert defaults.chosen.model == policy.bot_default_model()
    assert defaults.sources["model"] == "bot"


async def test_quality_prices_are_the_most_any_configured_route_charges(storage: Storage, tmp_path: Path):
    """With WaveSpeed configured, a low-quality image may cost its "from" price there, not the list."""
    resold = catalog(
        model(
            "m",
            price=(0.01, 0.02),
            qualities=["low", "medium", "high"],
            routes=[
                "openai",
                # What WaveSpeed's GPT Image 2 edit takes (the start-up check disables a route that
                # promises more), sold "from" $0.05.
                route(
                    "wavespeed",
                    model="openai/gpt-image-2/edit",
                    min_price=0.05,
                    sizes=["auto"],
                    max_input_images=4,
                    backgrounds=["auto"],
                    output_formats=["png"],
                ),
            ],
        )
    )
    keys = {"OPENAI_API_KEY": "sk-test", "ALLOWED_GUILD_IDS": str(GUILD)}
    async with aiohttp.ClientSession() as session:
        alone = policy_service(settings_for(tmp_path, **keys), resold, storage, session)
        both = policy_service(
            settings_for(tmp_path, WAVESPEED_API_KEY="ws-test", **keys), resold, storage, session
        )
        shown = [
            [(p.quality, p.credits) for p in (await s.quality_view(GUILD, ALICE, ())).prices]
            for s in (alone, both)
        ]
    assert shown[0][0] == ("low", 20)  # the list price at the default (auto = larger) size
    assert shown[1][0] == ("low", 50)  # WaveSpeed's lowest price is above it


async def test_a_default_quality_is_never_moved_above_the_members_cap(storage: Storage, tmp_path: Path):
    """A model that offers nothing at or below the cap: its cheapest level would pass the cap, so the
    quality stays as capped (and the job refuses it by name) instead of running above the cap."""
    high_only = catalog(model("pro", name="Pro", qualities=["high", "auto"], price=flat(0.2, 0.25, ["high"])))
    settings = settings_for(tmp_path, OPENAI_API_KEY="sk-test", ALLOWED_GUILD_IDS=str(GUILD))
    async with aiohttp.ClientSession() as session:
        policy = policy_service(settings, high_only, storage, session)
        await policy.update_guild(GUILD, ADMIN, {"max_quality": "medium"})
        capped, _ = await policy.clamp(job(), await policy.defaults_for(GUILD, ALICE))
    assert capped.quality == "medium"


async def test_settings_reset_returns_to_the_server_default(policy: PolicyService):
    await policy.update_guild(GUILD, ADMIN, {"default_size": "1024x1024"})
    await policy.update_settings(GUILD, ALICE, {"size": "1536x1024", "output_format": "webp"})
    assert (await policy.defaults_for(GUILD, ALICE)).size == "1536x1024"
    await policy.update_settings(GUILD, ALICE, {}, reset=["size"])
    defaults = await policy.defaults_for(GUILD, ALICE)
    assert (defaults.size, defaults.output_format) == ("1024x1024", "webp")


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"model": "dall-e-9"}, "unknown_model"),
        ({"background": "transparent", "output_format": "jpeg"}, "transparent_jpeg"),
        ({"size": "999x999"}, "bad_option"),
    ],
)
async def test_settings_refuse_what_no_job_could_use(
    policy: PolicyService, changes: dict[str, str], code: str
):
    with pytest.raises(InvalidOptions) as refused:
        await policy.update_settings(GUILD, ALICE, changes)
    assert refused.value.code == code


def test_model_lists_typed_by_admins_are_checked_against_the_catalog():
    assert parse_models("gpt-image-1.5, gpt-image-1-mini", CATALOG, allow_all_marker=False) == frozenset(
        {"gpt-image-1.5", "gpt-image-1-mini"}
    )
    assert parse_models("all", CATALOG, allow_all_marker=False) is None
    assert parse_models("all", CATALOG, allow_all_marker=True) == frozenset({ALL_MODELS})
    with pytest.raises(InvalidOptions):
        parse_models("gpt-image-9", CATALOG, allow_all_marker=False)


# -- admission: monthly cap, cooldown, concurrency --------------------------------------------------


@pytest.mark.parametrize(
    ("cap_usd", "reserves", "first_refused"),
    [
        ("0.05", [20, 20, 20], 2),  # 40 fits under 50 credits, 60 would pass it
        ("0.06", [20, 20, 20, 20], 3),  # reaching the cap exactly is allowed
        ("0.01", [20], 0),
        ("0.10", [30, 30, 30, 30], 3),
    ],
)
async def test_the_guild_cap_refuses_the_job_that_would_pass_it(
    policy: PolicyService, storage: Storage, cap_usd: str, reserves: list[int], first_refused: int
):
    await policy.update_guild(GUILD, ADMIN, {"monthly_cap_usd": Decimal(cap_usd)})
    await fund(storage, ALICE, BOB)
    outcomes = []
    for index, credits in enumerate(reserves):
        user = (ALICE, BOB)[index % 2]  # the cap is per server, not per member
        try:
            await policy.reserve(await new_job(storage, f"j{index}", user), job(user), credits)
            outcomes.append("held")
        except PolicyRefused as exc:
            assert exc.code == "guild_cap"
            outcomes.append("refused")
    assert outcomes.index("refused") == first_refused


async def test_the_guild_cap_counts_this_months_captures_and_current_holds(
    policy: PolicyService, storage: Storage, clock: Clock
):
    await policy.update_guild(GUILD, ADMIN, {"monthly_cap_usd": Decimal("0.05")})
    await fund(storage, ALICE)
    clock.set("2026-10-31T23:00:00")
    await policy.reserve(await new_job(storage, "october"), job(), 50)
    await storage.ledger.capture("october", 50)  # last month's spend does not count in November
    clock.set("2026-11-01T00:00:00")
    await policy.reserve(await new_job(storage, "a"), job(), 30)
    await storage.ledger.capture("a", 10)  # 10 captured; the 20 not charged goes back
    await policy.reserve(await new_job(storage, "b"), job(), 30)  # 10 + 30 held = 40
    with pytest.raises(PolicyRefused) as refused:
        await policy.reserve(await new_job(storage, "c"), job(), 11)  # 51 > 50
    assert "only 10 are left" in refused.value.user_message
    await policy.reserve(await new_job(storage, "d"), job(), 10)  # exactly 50
    with pytest.raises(PolicyRefused) as exhausted:
        await policy.reserve(await new_job(storage, "e"), job(), 1)
    assert "used its image budget" in exhausted.value.user_message
    assert await storage.reports.ledger_rows("c") == [] and await storage.reports.ledger_rows("e") == []
    await assert_ledger_matches(storage, GUILD, ALICE)


async def test_every_budget_in_dollars_rounds_down_to_credits(storage: Storage, make_policy: MakePolicy):
    """A fraction of a credit left in a dollar budget is not spendable: rounding it up would let the
    spend pass the dollars set."""
    policy = make_policy(CREDITS_PER_USD="100", MONTHLY_BUDGET_USD="1.009", OWNER_IDS=str(ADMIN))
    await policy.update_guild(GUILD, ADMIN, {"monthly_cap_usd": Decimal("1.005")})
    await policy.set_allotment(GUILD, ADMIN, Decimal("0.999"))
    assert policy.cap_credits(await policy.guild_policy(GUILD)) == 100
    assert policy.bot_cap_credits() == 100
    assert await policy.allotment_credits(GUILD) == 99


async def test_a_budget_refusal_offers_only_what_every_budget_still_allows(
    storage: Storage, make_policy: MakePolicy
):
    """The server's cap has 50 credits left, but another server holds 90 of the bot's 100: a cheaper
    run may hold 10 at most, and that is what the refusal says and offers (a 40-credit offer would
    itself be refused). It is refused as the bot's budget, the one that leaves the least: raising the
    server's cap would not help."""
    policy = make_policy(MONTHLY_BUDGET_USD="0.10")
    await policy.update_guild(GUILD, ADMIN, {"monthly_cap_usd": Decimal("0.05")})
    for guild in (GUILD, OTHER_GUILD):
        await storage.ledger.change_balance(
            guild, ALICE, add=10_000, actor_id=ADMIN, reason="x", starting_credits=0
        )
    await policy.reserve(await new_job(storage, "other", guild=OTHER_GUILD), job(guild=OTHER_GUILD), 90)
    for asked in (60, 40):
        with pytest.raises(PolicyRefused) as refused:
            await policy.reserve(await new_job(storage, f"asked-{asked}"), job(), asked)
        assert (refused.value.code, refused.value.available) == ("bot_budget", 10)
        assert "only 10" in refused.value.user_message
    await policy.reserve(await new_job(storage, "fits"), job(), 10)


async def test_concurrent_jobs_cannot_both_slip_under_the_guild_cap(policy: PolicyService, storage: Storage):
    await policy.update_guild(GUILD, ADMIN, {"monthly_cap_usd": Decimal("0.05")})
    await fund(storage, ALICE)
    ids = [await new_job(storage, f"j{i}") for i in range(6)]
    results = await asyncio.gather(*(policy.reserve(i, job(), 20) for i in ids), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 2
    assert all(isinstance(r, PolicyRefused) for r in results if isinstance(r, BaseException))


async def test_cooldown_refuses_until_it_has_passed_and_ignores_refunded_jobs(
    policy: PolicyService, storage: Storage, clock: Clock
):
    await policy.update_guild(GUILD, ADMIN, {"cooldown_seconds": 30})
    await fund(storage, ALICE, BOB)
    started = clock.at
    await policy.reserve(await new_job(storage, "a"), job(), 10)
    clock.advance(10)
    with pytest.raises(PolicyRefused) as refused:
        await policy.reserve(await new_job(storage, "b"), job(), 10)
    assert refused.value.code == "cooldown"
    assert f"<t:{int((started + dt.timedelta(seconds=30)).timestamp())}:R>" in refused.value.user_message
    await policy.reserve(await new_job(storage, "bob"), job(BOB), 10)  # per member
    clock.advance(20)
    await policy.reserve(await new_job(storage, "c"), job(), 10)
    await storage.ledger.release("c", "provider failed")  # a failed edit does not make the user wait
    await policy.reserve(await new_job(storage, "d"), job(), 10)


async def test_running_jobs_limit_refuses_the_extra_job_until_one_settles(
    policy: PolicyService, storage: Storage
):
    await policy.update_guild(GUILD, ADMIN, {"max_concurrent": 2})
    await fund(storage, ALICE)
    await policy.reserve(await new_job(storage, "a"), job(), 10)
    await policy.reserve(await new_job(storage, "b"), job(), 10)
    with pytest.raises(PolicyRefused) as refused:
        await policy.reserve(await new_job(storage, "c"), job(), 10)
    assert refused.value.code == "too_many_running" and "2 edit(s) running" in refused.value.user_message
    await storage.ledger.capture("a", 10)
    await policy.reserve(await new_job(storage, "d"), job(), 10)


async def test_concurrent_jobs_cannot_pass_the_running_jobs_limit(policy: PolicyService, storage: Storage):
    await policy.update_guild(GUILD, ADMIN, {"max_concurrent": 1})
    await fund(storage, ALICE)
    ids = [await new_job(storage, f"j{i}") for i in range(5)]
    results = await asyncio.gather(*(policy.reserve(i, job(), 10) for i in ids), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1


async def test_not_enough_credits_still_surfaces_as_the_ledgers_own_error(
    policy: PolicyService, storage: Storage
):
    with pytest.raises(NotEnoughCredits):
        await policy.reserve(await new_job(storage, "a"), job(), 10)


# -- admin permissions and credit changes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("admin_ids", "owner_ids", "user", "manage_guild", "allowed"),
    [
        ("", "", ALICE, False, False),  # a member without Manage Server
        ("", "", ADMIN, True, True),  # no allow-list: Manage Server is enough
        (str(ADMIN), "", ADMIN, True, True),  # on the allow-list
        (str(ADMIN), "", BOB, True, False),  # a server Administrator not on the list
        (str(ADMIN), "", ADMIN, False, False),  # listed, but not a manager of this server
        (str(ADMIN), str(BOB), BOB, True, True),  # the bot's owners count as listed
    ],
)
def test_admin_permission_needs_manage_server_and_the_allow_list_when_set(
    make_policy: MakePolicy, admin_ids: str, owner_ids: str, user: int, manage_guild: bool, allowed: bool
):
    policy = make_policy(ADMIN_USER_IDS=admin_ids, OWNER_IDS=owner_ids)
    if allowed:
        policy.authorize_admin(user, manage_guild=manage_guild)
    else:
        with pytest.raises(NotPermitted):
            policy.authorize_admin(user, manage_guild=manage_guild)
    allow_list = policy.settings.admin_user_ids | (policy.settings.owner_ids if admin_ids else frozenset())
    assert may_administer(user, manage_guild=manage_guild, allow_list=allow_list) is allowed


@pytest.mark.parametrize(
    ("start", "action", "amount", "moved", "balance", "kind"),
    [
        (100, "grant", 50, 50, 150, "grant"),
        (100, "take", 30, -30, 70, "adjust"),
        (100, "take", 500, -100, 0, "adjust"),  # never below zero
        (100, "set", 20, -80, 20, "adjust"),
        (100, "set", 400, 300, 400, "grant"),
        (100, "set", 100, 0, 100, "adjust"),  # recorded even when nothing moves
    ],
)
async def test_each_admin_credit_change_is_one_ledger_row_with_the_admin_and_is_audited(
    make_policy: MakePolicy,
    storage: Storage,
    start: int,
    action: str,
    amount: int,
    moved: int,
    balance: int,
    kind: str,
):
    audited: list[CreditChange] = []

    async def audit(change: CreditChange) -> None:
        audited.append(change)

    policy = make_policy(audit=audit, STARTING_CREDITS=str(start))
    change = await policy.change_credits(GUILD, ADMIN, ALICE, action, amount, "  for the contest  ")
    entries, total = await storage.reports.account_history(
        GUILD, ALICE, kinds=("grant", "adjust"), offset=0, limit=10
    )
    assert (change.moved, change.balance) == (moved, balance)
    assert total == 2  # the starting grant, then the admin's row
    assert (entries[0].kind, entries[0].amount, entries[0].actor_id) == (kind, moved, ADMIN)
    assert entries[0].reason == f"{action}: for the contest"
    assert audited == [change]
    await assert_ledger_matches(storage, GUILD, ALICE)


async def test_a_failing_audit_hook_never_undoes_or_blocks_a_credit_change(
    make_policy: MakePolicy, storage: Storage
):
    async def broken(change: CreditChange) -> None:
        raise RuntimeError("audit channel gone")

    change = await make_policy(audit=broken).change_credits(GUILD, ADMIN, ALICE, "grant", 5, "thanks")
    assert change.balance == 5 and (await storage.ledger.get_account(GUILD, ALICE)).balance == 5  # type: ignore[union-attr]


# -- the spend report -------------------------------------------------------------------------------


async def make_activity(policy: PolicyService, storage: Storage, clock: Clock) -> None:
    """A month of mixed ledger rows in two guilds, plus rows from the month before."""
    await policy.update_guild(GUILD, ADMIN, {"allowance": 100, "period": "monthly"})
    clock.set("2026-10-20T10:00:00")
    await policy.change_credits(GUILD, ADMIN, ALICE, "grant", 500, '=HYPERLINK("http://x")')
    await policy.reserve(await new_job(storage, "oct"), job(), 40)
    await storage.ledger.capture("oct", 33)
    clock.set("2026-11-02T09:00:00")
    for index, (user, reserve, charge) in enumerate([(ALICE, 40, 25), (BOB, 60, 60), (ALICE, 20, None)]):
        job_id = await new_job(storage, f"nov{index}", user)
        await policy.reserve(job_id, job(user), reserve)
        await storage.jobs.set_job_state(job_id, "completed", provider="openai")
        if charge is None:
            await storage.ledger.release(job_id, "failed")
        else:
            await storage.ledger.capture(job_id, charge)
        clock.advance(3600)
    await policy.change_credits(GUILD, ADMIN, BOB, "take", 15, "refund abuse")
    await policy.reserve(await new_job(storage, "running", BOB), job(BOB), 12)  # still held
    await policy.change_credits(OTHER_GUILD, ADMIN, ALICE, "grant", 999, "other server")


async def ledger_rows(storage: Storage, guild: int, since: str, until: str) -> list[dict[str, Any]]:
    rows = await storage.db.all(
        "SELECT * FROM ledger WHERE guild_id = ? AND created_at >= ? AND created_at < ? ORDER BY id",
        (guild, since, until),
    )
    return [dict(r) for r in rows]


async def test_the_report_csv_equals_the_ledger_to_the_credit(
    policy: PolicyService, storage: Storage, clock: Clock
):
    await make_activity(policy, storage, clock)
    report = await policy.report(GUILD, "this month")
    rows = list(csv.DictReader(io.StringIO(report.csv())))
    ledger = await ledger_rows(storage, GUILD, "2026-11-01", "2026-12-01")

    assert [int(r["id"]) for r in rows] == [r["id"] for r in ledger]
    for column in ("amount", "delta_balance", "delta_held", "user_id"):
        assert [int(r[column]) for r in rows] == [r[column] for r in ledger]
    assert [r["kind"] for r in rows] == [r["kind"] for r in ledger]
    captures = [r for r in ledger if r["kind"] == "capture"]
    assert report.spent == sum(r["amount"] for r in captures) == 85
    assert dict(report.by_user) == {ALICE: 25, BOB: 60}
    assert dict(report.by_model) == {"gpt-image-1.5": 85} and dict(report.by_provider) == {"openai": 85}
    assert report.admin_granted == -15  # the take; October's grant is not in this month
    assert report.allowances == 100  # bob's first top-up (alice was already above the allowance)


async def test_a_report_counts_admins_changes_the_same_after_retention_erased_who_and_why(
    policy: PolicyService, storage: Storage, clock: Clock
):
    await make_activity(policy, storage, clock)
    before = await policy.report(GUILD, "all time")
    await storage.jobs.prune_history(clock() + dt.timedelta(days=400))  # every admin erased
    after = await policy.report(GUILD, "all time")
    assert all(e.actor_id is None for e in after.entries)
    assert (after.admin_granted, after.starting, after.allowances) == (
        before.admin_granted,
        before.starting,
        before.allowances,
    )
    assert before.admin_granted != 0


async def test_an_all_time_report_adds_up_to_every_balance_and_hold(
    policy: PolicyService, storage: Storage, clock: Clock
):
    await make_activity(policy, storage, clock)
    rows = list(csv.DictReader(io.StringIO((await policy.report(GUILD, "all time")).csv())))
    for user in (ALICE, BOB):
        mine = [r for r in rows if int(r["user_id"]) == user]
        account = await storage.ledger.get_account(GUILD, user)
        assert account is not None
        assert sum(int(r["delta_balance"]) for r in mine) == account.balance
        assert sum(int(r["delta_held"]) for r in mine) == account.held
    assert all(int(r["user_id"]) != 999 for r in rows) and "other server" not in str(rows)


async def test_last_months_report_holds_only_last_months_rows(
    policy: PolicyService, storage: Storage, clock: Clock
):
    await make_activity(policy, storage, clock)
    report = await policy.report(GUILD, "last month")
    assert report.spent == 33 and {e.created_at[:7] for e in report.entries} == {"2026-10"}


def test_report_cells_that_look_like_formulas_stay_text():
    entry = LedgerEntry(
        1, GUILD, ALICE, None, "adjust", -5, -5, 0, ADMIN, '=HYPERLINK("http://x")', "2026-11-01"
    )
    report = SpendReport(GUILD, "this month", None, None, (entry,), 1000)
    [row] = list(csv.DictReader(io.StringIO(report.csv())))
    assert row["reason"] == '\'=HYPERLINK("http://x")'
    assert row["amount"] == "-5"  # numbers are never altered


# -- rules a mutation pass found untested: each test below fails if its rule is changed -----------


THREE = catalog(model("a", name="A"), model("b", name="B"), model("c", name="C"))
THREE_USABLE = ModelLifecycle(THREE, frozenset({"openai"}), lambda: dt.date(2026, 11, 10)).usable


# a model the member's roles allow is kept, whatever the defaults are.
def test_an_allowed_model_is_kept_without_a_notice():
    limits = Limits(0, None, frozenset({"gpt-image-1.5", "gpt-image-1-mini"}), 4)
    result = clamp(with_(), limits, catalog=CATALOG, usable=USABLE, fallbacks=["gpt-image-1-mini"])
    assert result == (with_(), ())


# a disallowed model moves to the server's (then the bot's) default when that
# is allowed, before the allowed list's alphabetical order.
def test_a_disallowed_model_moves_to_the_default_before_the_other_allowed_models():
    limits = Limits(0, None, frozenset({"b", "c"}), 4)
    result, notices = clamp(with_(model="a"), limits, catalog=THREE, usable=THREE_USABLE, fallbacks=["c"])
    assert result.model == "c" and "so Retouch uses C" in notices[0]


# a count exactly at the limit is not a change and is not announced.
def test_a_count_at_the_limit_is_kept_without_a_notice():
    assert clamp(with_(count=2), Limits(0, None, None, 2), catalog=CATALOG, usable=USABLE) == (
        with_(count=2),
        (),
    )


# the engine's check before moving a job to another model lets the member use
# a model the server allows.
async def test_allows_model_admits_exactly_the_servers_allowed_models(
    policy: PolicyService, storage: Storage
):
    await storage.settings.update_guild_policy(GUILD, {"models": "gpt-image-1-mini"}, actor_id=ADMIN)
    assert await policy.allows_model(GUILD, (), "gpt-image-1-mini")
    assert not await policy.allows_model(GUILD, (), "gpt-image-1.5")
    assert await policy.allows_model(OTHER_GUILD, (), "gpt-image-1.5")  # no list: every model


# a Retry's quality came with the earlier job's model: on a model that lacks it,
# it is fitted like a default rather than kept (and refused) as if typed for this model.
async def test_a_retrys_quality_on_a_model_without_it_is_fitted_like_a_default(policy: PolicyService):
    chosen = replace(await policy.defaults_for(GUILD, ALICE), model="gpt-image-1.5", quality="xhigh")
    retry = replace(
        job(),
        options=EditOptions("make it blue", model="gpt-image-1.5", quality="xhigh", model_is_default=True),
    )
    typed = replace(job(), options=EditOptions("make it blue", model="gpt-image-1.5", quality="xhigh"))
    assert (await policy.clamp(retry, chosen))[0].quality == "high"
    assert (await policy.clamp(typed, chosen))[0].quality == "xhigh"  # refused by name later


# so is its size (and background): one the job's model cannot make runs at auto, with a note.
async def test_a_retrys_size_on_a_model_without_it_is_fitted_like_a_default(policy: PolicyService):
    chosen = replace(await policy.defaults_for(GUILD, ALICE), model="gpt-image-1.5", size="2048x2048")
    options = EditOptions("make it blue", model="gpt-image-1.5", size="2048x2048")
    retry = replace(job(), options=replace(options, model_is_default=True))
    fitted, notices = await policy.clamp(retry, chosen)
    assert fitted.size == "auto" and "cannot make size `2048x2048`" in notices[-1]
    assert (await policy.clamp(replace(job(), options=options), chosen))[0].size == "2048x2048"


# /mask has no background option, so a masked edit always has the member's saved one: a saved
# background no route makes with a mask runs at auto with a note, as any other saved default the
# model cannot make, instead of being refused ("set your background in /settings") every time.
@pytest.mark.parametrize("saved", ["transparent", "opaque"])
async def test_a_saved_background_the_models_masked_edits_lack_falls_back_to_auto_with_a_note(
    storage: Storage, tmp_path: Path, saved: str
):
    inpainter = route("openai", mask=True, mask_backgrounds=["auto"])  # a plain edit takes every background
    masks = catalog(
        model("inpaint", name="Inpaint", mask=True, routes=[inpainter]),
        model("full", name="Full", mask=True, routes=[route("openai", mask=True)]),
    )
    settings = settings_for(tmp_path, OPENAI_API_KEY="sk-test", ALLOWED_GUILD_IDS=str(GUILD))
    async with aiohttp.ClientSession() as session:
        policy = policy_service(settings, masks, storage, session)
        await storage.settings.update_user_settings(ALICE, {"background": saved, "output_format": "png"})
        chosen = replace(await policy.defaults_for(GUILD, ALICE), model="inpaint")
        masked = replace(job(), mask=MaskSpec(grid=(3, 3), cells=(5,)))

        fitted, notices = await policy.clamp(masked, chosen)
        assert fitted.background == "auto"
        assert notices == (
            f"Inpaint cannot make background `{saved}` with a mask, so Retouch uses auto "
            "(change it with /settings).",
        )
        assert await policy.clamp(job(), chosen) == (chosen, ())  # unmasked: the saved one stands
        full = replace(chosen, model="full")
        assert await policy.clamp(masked, full) == (full, ())  # a route makes it with a mask
        # Carried by a Retry with the model the member picked: kept, and refused by name if need be.
        typed = EditOptions("make it blue", model="inpaint", background=saved)
        assert (await policy.clamp(replace(masked, options=typed), chosen))[0].background == saved


# a server whose spend is already above a cap lowered since is told its budget
# is used up, and offered no cheaper run (not a negative amount).
async def test_spend_above_a_lowered_cap_is_refused_as_used_up(policy: PolicyService, storage: Storage):
    await policy.update_guild(GUILD, ADMIN, {"monthly_cap_usd": Decimal("0.10")})
    await fund(storage, ALICE)
    await policy.reserve(await new_job(storage, "a"), job(), 50)
    await policy.update_guild(GUILD, ADMIN, {"monthly_cap_usd": Decimal("0.03")})
    with pytest.raises(PolicyRefused) as refused:
        await policy.reserve(await new_job(storage, "b"), job(), 1)
    assert (refused.value.code, refused.value.available) == ("guild_cap", None)
    assert "used its image budget" in refused.value.user_message


# a period with an allowance of 0 shows no refill.
async def test_a_period_without_an_allowance_shows_no_refill(policy: PolicyService):
    await policy.update_guild(GUILD, ADMIN, {"allowance": 0, "period": "monthly"})
    allowance = (await policy.credits(GUILD, ALICE, ())).allowance
    assert (allowance.amount, allowance.period, allowance.next_refill) == (0, NO_PERIOD, None)


# a model the member may not use moves to the server's default model first.
async def test_a_disallowed_model_moves_to_the_servers_default_model(storage: Storage, tmp_path: Path):
    settings = settings_for(tmp_path, OPENAI_API_KEY="sk-test", ALLOWED_GUILD_IDS=str(GUILD))
    async with aiohttp.ClientSession() as session:
        policy = policy_service(settings, THREE, storage, session)
        await storage.settings.update_guild_policy(
            GUILD, {"models": "b c", "default_model": "c"}, actor_id=ADMIN
        )
        await storage.settings.update_user_settings(ALICE, {"model": "a"})
        used, notices = await policy.clamp(job(), await policy.defaults_for(GUILD, ALICE))
    assert used.model == "c" and "so Retouch uses C" in notices[0]


# a default below every level the model offers moves up to its cheapest level
# when that is exactly the member's cap.
async def test_a_default_below_every_offered_level_moves_up_to_a_cheapest_level_at_the_cap(
    storage: Storage, tmp_path: Path
):
    high_only = catalog(model("pro", name="Pro", qualities=["high"], price=flat(0.2, 0.25, ["high"])))
    settings = settings_for(tmp_path, OPENAI_API_KEY="sk-test", ALLOWED_GUILD_IDS=str(GUILD))
    async with aiohttp.ClientSession() as session:
        policy = policy_service(settings, high_only, storage, session)
        await policy.update_guild(GUILD, ADMIN, {"max_quality": "high"})
        await storage.settings.update_user_settings(ALICE, {"quality": "low"})
        fitted, _ = await policy.clamp(job(), await policy.defaults_for(GUILD, ALICE))
    assert fitted.quality == "high"


# With nothing live, the bot's own default stands even if the catalog no longer has it: the job
# then refuses it by name (a saved member or server model the catalog dropped is skipped instead).
async def test_with_nothing_live_the_bots_default_model_stands_even_if_the_catalog_lacks_it(
    storage: Storage, tmp_path: Path
):
    dead = catalog(model("old", qualities=["low"], price=1, shutdown="2020-01-01"))
    settings = settings_for(
        tmp_path, OPENAI_API_KEY="sk-test", ALLOWED_GUILD_IDS=str(GUILD), DEFAULT_MODEL="dropped"
    )
    async with aiohttp.ClientSession() as session:
        policy = policy_service(settings, dead, storage, session)
        defaults = await policy.effective_defaults(GUILD, ALICE, ())
    assert (defaults.chosen.model, defaults.sources["model"]) == ("dropped", "bot")


@pytest.mark.parametrize("reason", ["\u200b\u200b", "\u3164", "\x00\x07", " \u2066 \u2069 "])
async def test_an_admins_reason_with_nothing_to_read_is_refused(policy: PolicyService, reason: str):
    """Kept in the ledger and posted to the audit channel: zero-width or control characters only were
    accepted as a reason (a blank line on record, raw NUL and BEL in the operator's channel)."""
    with pytest.raises(InvalidOptions) as refused:
        await policy.change_credits(GUILD, ADMIN, ALICE, "grant", 10, reason)
    assert refused.value.code == "no_reason"


async def test_an_admins_reason_is_kept_without_control_characters(policy: PolicyService, storage: Storage):
    change = await policy.change_credits(GUILD, ADMIN, ALICE, "grant", 10, "prize\x00 for the \u202econtest")
    assert change.reason == "prize for the contest"


# A masked edit with a saved transparent background takes a format some route makes transparent
# *with a mask*: a route that makes transparent PNG but whose inpainter takes no background (1min.ai)
# must not decide the format, or routing finds no route for the masked edit and refuses it.
@pytest.mark.parametrize("saved", ["jpeg", "png"])
async def test_a_masked_transparent_edits_format_is_one_a_route_makes_transparent_with_a_mask(
    storage: Storage, tmp_path: Path, saved: str
):
    inpainter = route(  # transparent PNG unmasked, no background with a mask
        "openai", model="inpaint-a", mask=True, mask_backgrounds=["auto"], transparent_formats=["png"]
    )
    full = route("openai", model="inpaint-b", mask=True, transparent_formats=["webp"])
    masks = catalog(model("mixed", name="Mixed", mask=True, routes=[inpainter, full]))
    settings = settings_for(tmp_path, OPENAI_API_KEY="sk-test", ALLOWED_GUILD_IDS=str(GUILD))
    async with aiohttp.ClientSession() as session:
        policy = policy_service(settings, masks, storage, session)
        await storage.settings.update_user_settings(
            ALICE, {"background": "transparent", "output_format": saved}
        )
        chosen = replace(await policy.defaults_for(GUILD, ALICE), model="mixed")
        masked = replace(job(), mask=MaskSpec(grid=(3, 3), cells=(5,)))

        fitted, notices = await policy.clamp(masked, chosen)
        assert (fitted.background, fitted.output_format) == ("transparent", "webp")
        with_mask = " with a mask" if saved == "png" else ""  # JPEG is refused with or without one
        assert notices == (
            f"Mixed cannot make format `{saved}`{with_mask}, so Retouch uses webp "
            "(change it with /settings).",
        )
        # Some route takes the masked edit as fitted (before, none did: the job was refused).
        needs = Needs.with_options(fitted, images=1, mask=True, prompt_chars=10)
        assert [r.model for r in masks.models["mixed"].routes if not blockers(r, needs)] == ["inpaint-b"]
        # Unmasked, the first route makes transparent PNG: the format falls to (or stays) PNG.
        assert (await policy.clamp(job(), chosen))[0].output_format == "png"
