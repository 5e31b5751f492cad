"""The operator's money at the service level (issue 11), against a real SQLite file: the bot-wide
budget and per-server allotments inside the reservation's transaction, the checks made before any
download, the operator's commands, and the access gate (approved servers, rate limit, double clicks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.config import ConfigError, load_settings
from bot.errors import RetouchError
from bot.messages import DMS_OFF, NOT_APPROVED
from bot.services.access import (
    GATE_APPROVAL_SECONDS,
    AccessService,
    AlreadyStarted,
    NotOperator,
    RateLimited,
    operator_ids,
)
from bot.services.admin import AllotmentAudit, AllotmentChange
from bot.services.policy import PolicyRefused, PolicyService
from bot.storage import Storage
from bot.storage.ledger import NotEnoughCredits
from tests.fixtures import policy_service
from tests.test_policy import ADMIN, ALICE, BOB, CATALOG, GUILD, OTHER_GUILD, Clock, job, new_job

OPERATOR = 77
BASE_ENV = {"DISCORD_TOKEN": "t" * 20, "OPENAI_API_KEY": "sk-test", "STARTING_CREDITS": "0"}


@pytest.fixture
def storage_clock() -> Clock:
    """The `storage` fixture (tests/conftest.py) reads a clock this test controls."""
    return Clock()


MakePolicy = Callable[..., PolicyService]


@pytest.fixture
async def make_policy(storage: Storage, tmp_path: Path) -> AsyncIterator[MakePolicy]:
    """The policy service as production wires it over `storage`, with `env` on top of BASE_ENV;
    `audit` stands in for the audit log's allotment hook. Its calendar is the storage's clock."""
    async with aiohttp.ClientSession() as session:

        def make(audit: AllotmentAudit | None = None, **env: str) -> PolicyService:
            settings = load_settings(
                {
                    **BASE_ENV,
                    "DATA_DIR": str(tmp_path),
                    "ALLOWED_GUILD_IDS": f"{GUILD},{OTHER_GUILD}",
                    "OWNER_IDS": str(OPERATOR),
                    **env,
                }
            )
            policy = policy_service(settings, CATALOG, storage, session)
            if audit is not None:
                policy.on_allotment_change = audit
            return policy

        yield make


async def fire(
    policy: PolicyService, storage: Storage, jobs: list[tuple[str, int, int]], credits: int
) -> int:
    """Reserve `credits` for every (job id, guild, user) at once; how many were held."""

    async def one(job_id: str, guild: int, user: int) -> bool:
        await new_job(storage, job_id, user=user, guild=guild)
        try:
            await policy.reserve(job_id, job(user=user, guild=guild), credits)
        except (PolicyRefused, NotEnoughCredits):
            return False
        return True

    held = await asyncio.gather(*(one(*j) for j in jobs))
    return sum(held)


# -- the budget hierarchy ---------------------------------------------------------------------------


async def test_concurrent_reservations_in_two_servers_never_pass_the_bot_wide_budget(
    storage: Storage, make_policy: MakePolicy
):
    policy = make_policy(MONTHLY_BUDGET_USD="0.10")  # 100 credits
    for guild in (GUILD, OTHER_GUILD):  # each server's admin hands out far more than the budget
        await storage.ledger.change_balance(
            guild, ALICE, add=1_000_000, actor_id=ADMIN, reason="mine", starting_credits=0
        )
    jobs = [(f"j{i}", GUILD if i % 2 else OTHER_GUILD, ALICE) for i in range(30)]
    assert await fire(policy, storage, jobs, 15) == 6  # 6 × 15 = 90 ≤ 100 < 7 × 15
    for job_id, _, _ in jobs:  # captured spend keeps counting after the holds are settled
        row = await storage.jobs.get_job(job_id)
        if row is not None and row.state == "reserved":
            await storage.ledger.capture(job_id, 15)
    with pytest.raises(PolicyRefused) as refused:
        await policy.reserve(await new_job(storage, "late"), job(), 15)
    assert refused.value.code == "bot_budget"
    assert "Nothing was charged" in refused.value.user_message


async def test_an_allotment_caps_a_server_below_the_budget_and_its_own_admins_cannot_lift_it(
    storage: Storage, make_policy: MakePolicy
):
    policy = make_policy(MONTHLY_BUDGET_USD="0")  # 0 = no bot-wide cap
    assert policy.bot_cap_credits() is None
    await policy.set_allotment(GUILD, OPERATOR, Decimal("0.05"))
    await policy.update_guild(GUILD, ADMIN, {"monthly_cap_usd": Decimal("1000")})
    await storage.ledger.change_balance(
        GUILD, ALICE, add=1_000_000, actor_id=ADMIN, reason="x", starting_credits=0
    )
    jobs = [(f"a{i}", GUILD, ALICE) for i in range(10)]
    assert await fire(policy, storage, jobs, 20) == 2  # 50 credits: two holds of 20
    with pytest.raises(PolicyRefused) as refused:
        await policy.reserve(await new_job(storage, "a-late"), job(), 20)
    assert refused.value.code == "allotment"
    # Another server is not limited by this one's allotment.
    await storage.ledger.change_balance(
        OTHER_GUILD, BOB, add=100, actor_id=ADMIN, reason="x", starting_credits=0
    )
    await policy.reserve(await new_job(storage, "b", user=BOB, guild=OTHER_GUILD), job(BOB, OTHER_GUILD), 20)
    budget = await policy.budget(GUILD)
    assert (budget.used, budget.allotment, budget.bot_used) == (40, 50, 60)


async def test_only_the_operator_sets_allotments_and_every_change_is_audited(
    storage: Storage, make_policy: MakePolicy
):
    seen: list[AllotmentChange] = []

    async def audit(change: AllotmentChange) -> None:
        seen.append(change)

    policy = make_policy(audit)
    with pytest.raises(NotOperator):
        await policy.set_allotment(GUILD, ADMIN, Decimal("5"))
    await policy.set_allotment(GUILD, OPERATOR, Decimal("5"))
    await policy.set_allotment(GUILD, OPERATOR, None)
    assert seen == [
        AllotmentChange(GUILD, OPERATOR, None, Decimal("5")),
        AllotmentChange(GUILD, OPERATOR, Decimal("5"), None),
    ]
    with pytest.raises(NotOperator):
        await policy.operator_report(ADMIN)


async def test_the_operator_report_shows_each_servers_spend_against_its_allotment(
    storage: Storage, make_policy: MakePolicy
):
    policy = make_policy()
    await policy.set_allotment(OTHER_GUILD, OPERATOR, Decimal("2"))
    await storage.ledger.change_balance(GUILD, ALICE, add=100, actor_id=ADMIN, reason="x", starting_credits=0)
    await policy.reserve(await new_job(storage, "r1"), job(), 30)
    await storage.ledger.capture("r1", 25)
    await policy.reserve(await new_job(storage, "r2"), job(), 10)
    report = await policy.operator_report(OPERATOR)
    by_id = {s.guild_id: s for s in report.servers}
    assert (by_id[GUILD].captured, by_id[GUILD].held, by_id[GUILD].allotment) == (25, 10, None)
    assert (by_id[OTHER_GUILD].captured, by_id[OTHER_GUILD].allotment) == (0, 2000)
    assert report.used == 35 and report.bot_cap == 20_000  # the documented $20 default


async def test_an_unapproved_server_is_refused_at_the_reservation_too(
    storage: Storage, make_policy: MakePolicy
):
    policy = make_policy(ALLOWED_GUILD_IDS=str(OTHER_GUILD), STARTING_CREDITS="100")
    with pytest.raises(PolicyRefused) as refused:
        await policy.reserve(await new_job(storage, "u"), job(), 10)
    assert refused.value.code == "unapproved"
    assert await storage.ledger.get_account(GUILD, ALICE) is None


# -- before any download ------------------------------------------------------------------------------


async def test_precheck_refuses_no_credits_and_no_allowance_without_creating_an_account(
    storage: Storage, make_policy: MakePolicy
):
    policy = make_policy()
    with pytest.raises(RetouchError) as refused:
        await policy.precheck(job())
    assert refused.value.code == "insufficient_credits"
    assert await storage.ledger.get_account(GUILD, ALICE) is None
    await policy.update_guild(GUILD, ADMIN, {"allowance": 50, "period": "daily"})
    await policy.precheck(job())  # an allowance is due: let it through to the reservation
    await policy.credits(GUILD, ALICE, ())  # refilled now; spend it all
    await storage.ledger.change_balance(
        GUILD, ALICE, set_to=0, actor_id=ADMIN, reason="x", starting_credits=0
    )
    with pytest.raises(RetouchError):
        await policy.precheck(job())  # this period's allowance was already paid out


async def test_precheck_refuses_when_the_servers_allotment_is_used_up(
    storage: Storage, make_policy: MakePolicy
):
    policy = make_policy()
    await policy.set_allotment(GUILD, OPERATOR, Decimal("0.01"))
    await storage.ledger.change_balance(GUILD, ALICE, add=100, actor_id=ADMIN, reason="x", starting_credits=0)
    await policy.reserve(await new_job(storage, "p"), job(), 10)
    with pytest.raises(PolicyRefused) as refused:
        await policy.precheck(job())
    assert refused.value.code == "allotment"


async def test_precheck_reads_the_months_spend_only_where_a_budget_applies(
    storage: Storage, make_policy: MakePolicy, monkeypatch: pytest.MonkeyPatch
):
    """Every command is prechecked: without any budget, the month's spend is not worth reading."""
    read: list[object] = []
    spend_by_guild = storage.reports.spend_by_guild

    async def counting(since: object) -> dict[int, tuple[int, int]]:
        read.append(since)
        return await spend_by_guild(since)  # type: ignore[arg-type]

    monkeypatch.setattr(storage.reports, "spend_by_guild", counting)
    await storage.ledger.change_balance(GUILD, ALICE, add=100, actor_id=ADMIN, reason="x", starting_credits=0)
    await make_policy(MONTHLY_BUDGET_USD="0").precheck(job())
    assert read == []
    await make_policy().precheck(job())  # the default bot-wide budget
    assert len(read) == 1


# -- the gate -----------------------------------------------------------------------------------------


def access(storage: Storage, tmp_path: Path, now: list[float] | None = None, **env: str) -> AccessService:
    settings = load_settings({**BASE_ENV, "DATA_DIR": str(tmp_path), **env})
    clock = now if now is not None else [0.0]
    return AccessService(settings=settings, storage=storage, monotonic=lambda: clock[0])


@pytest.mark.parametrize(
    ("owner_ids", "app_owners", "expected"),
    [((), (5,), {5}), ((1, 2), (5,), {1, 2}), ((), (5, 6), {5, 6}), ((), (), set())],
)
def test_the_operator_is_owner_ids_else_the_applications_owners(
    owner_ids: tuple[int, ...], app_owners: tuple[int, ...], expected: set[int]
):
    assert operator_ids(owner_ids, app_owners) == frozenset(expected)


async def test_only_listed_or_operator_approved_servers_are_served_and_dms_only_when_turned_on(
    storage: Storage, tmp_path: Path
):
    gate = access(storage, tmp_path, ALLOWED_GUILD_IDS=str(GUILD))
    gate.set_operators({OPERATOR})
    assert (await gate.admit(GUILD, ALICE)).allowed
    member = await gate.admit(OTHER_GUILD, ALICE)
    assert (member.allowed, member.text, member.offer_approve) == (False, NOT_APPROVED, False)
    assert (await gate.admit(OTHER_GUILD, OPERATOR)).offer_approve
    with pytest.raises(NotOperator):
        await gate.approve(OTHER_GUILD, ALICE)
    await gate.approve(OTHER_GUILD, OPERATOR)
    assert (await gate.admit(OTHER_GUILD, ALICE)).allowed
    assert await gate.remove(OTHER_GUILD, OPERATOR) is True
    assert not await gate.approved(OTHER_GUILD)
    assert await gate.remove(GUILD, OPERATOR) is False  # the setting still lists it
    assert (await gate.admit(None, ALICE)).text == DMS_OFF
    dms = access(storage, tmp_path, ALLOW_DMS="on")
    assert (await dms.admit(None, ALICE)).allowed


async def test_the_gate_trusts_an_approval_it_read_for_a_while_and_forgets_a_removal_at_once(
    storage: Storage, tmp_path: Path
):
    """The gate answers before its interaction is acknowledged: an approved server is not read again
    for every command (one long SQLite call would hold them all), but a refusal is never remembered
    (an approval made elsewhere counts at once) and a removal made here ends the trust at once."""
    now = [0.0]
    gate = access(storage, tmp_path, now)
    gate.set_operators({OPERATOR})
    reads, operator_guild = [0], storage.settings.operator_guild

    async def counted(guild_id: int) -> tuple[bool, str | None]:
        reads[0] += 1
        return await operator_guild(guild_id)

    storage.settings.operator_guild = counted  # type: ignore[method-assign]
    assert not (await gate.admit(OTHER_GUILD, ALICE)).allowed
    assert not (await gate.admit(OTHER_GUILD, ALICE)).allowed and reads[0] == 2
    await storage.settings.set_guild_approved(OTHER_GUILD, True, actor_id=OPERATOR)  # another process
    assert (await gate.admit(OTHER_GUILD, ALICE)).allowed and reads[0] == 3
    now[0] += GATE_APPROVAL_SECONDS - 1
    assert (await gate.admit(OTHER_GUILD, BOB)).allowed and reads[0] == 3
    await storage.settings.set_guild_approved(OTHER_GUILD, False, actor_id=OPERATOR)  # another process
    assert (await gate.admit(OTHER_GUILD, ALICE)).allowed and reads[0] == 3  # trusted a while longer
    assert not await gate.approved(OTHER_GUILD)  # what paid work reads when it holds credits
    now[0] += 1
    assert not (await gate.admit(OTHER_GUILD, ALICE)).allowed and reads[0] == 5
    await gate.approve(OTHER_GUILD, OPERATOR)
    assert (await gate.admit(OTHER_GUILD, ALICE)).allowed
    assert await gate.remove(OTHER_GUILD, OPERATOR)
    assert not (await gate.admit(OTHER_GUILD, ALICE)).allowed  # removed here: at once


async def test_a_removal_here_is_not_undone_by_an_approval_read_it_overtook(storage: Storage, tmp_path: Path):
    """An admit that read "approved" just before a removal here, and answers after it, must not leave
    the server trusted for the next commands."""
    now = [0.0]
    gate = access(storage, tmp_path, now)
    gate.set_operators({OPERATOR})
    await gate.approve(OTHER_GUILD, OPERATOR)
    operator_guild = storage.settings.operator_guild
    read, answer = asyncio.Event(), asyncio.Event()

    async def slow_answer(guild_id: int) -> tuple[bool, str | None]:
        found = await operator_guild(guild_id)
        read.set()
        await answer.wait()
        return found

    storage.settings.operator_guild = slow_answer  # type: ignore[method-assign]
    admitting = asyncio.create_task(gate.admit(OTHER_GUILD, ALICE))
    await read.wait()
    storage.settings.operator_guild = operator_guild  # type: ignore[method-assign]
    assert await gate.remove(OTHER_GUILD, OPERATOR)
    answer.set()
    assert (await admitting).allowed  # it was approved when it was read
    assert not (await gate.admit(OTHER_GUILD, ALICE)).allowed


async def test_a_removal_whose_answer_is_lost_still_ends_the_gates_trust(storage: Storage, tmp_path: Path):
    gate = access(storage, tmp_path)
    gate.set_operators({OPERATOR})
    await gate.approve(OTHER_GUILD, OPERATOR)
    assert (await gate.admit(OTHER_GUILD, ALICE)).allowed  # trusted from now on
    set_guild_approved = storage.settings.set_guild_approved

    async def answer_lost(*args: Any, **kwargs: Any) -> None:
        await set_guild_approved(*args, **kwargs)
        raise ConnectionResetError("the answer is lost")

    storage.settings.set_guild_approved = answer_lost  # type: ignore[method-assign]
    with pytest.raises(ConnectionResetError):
        await gate.remove(OTHER_GUILD, OPERATOR)
    assert not (await gate.admit(OTHER_GUILD, ALICE)).allowed


async def test_commands_per_minute_are_limited_per_member_in_a_sliding_window(
    storage: Storage, tmp_path: Path
):
    now = [100.0]
    gate = access(storage, tmp_path, now, COMMANDS_PER_MINUTE="2")
    gate.take_command(ALICE)
    now[0] += 30
    gate.take_command(ALICE)
    with pytest.raises(RateLimited) as limited:
        gate.take_command(ALICE)
    assert limited.value.retry_after == pytest.approx(30)
    gate.take_command(BOB)  # another member is not held up
    now[0] += 30.5
    gate.take_command(ALICE)  # the first command left the window
    unlimited = access(storage, tmp_path, now, COMMANDS_PER_MINUTE="0")
    for _ in range(100):
        unlimited.take_command(ALICE)


async def test_a_double_click_is_claimed_once_and_a_refused_start_frees_it(storage: Storage, tmp_path: Path):
    now = [0.0]
    gate = access(storage, tmp_path, now)
    gate.claim(("retry", "job1", ALICE))
    with pytest.raises(AlreadyStarted):
        gate.claim(("retry", "job1", ALICE))
    gate.claim(("retry", "job1", BOB))
    now[0] += 11
    gate.claim(("retry", "job1", ALICE))  # a deliberate second retry later is a new one
    gate.release(("retry", "job1", ALICE))
    gate.claim(("retry", "job1", ALICE))


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"MONTHLY_BUDGET_USD": "-1"}, "MONTHLY_BUDGET_USD"),
        ({"MONTHLY_BUDGET_USD": "lots"}, "MONTHLY_BUDGET_USD"),
        (
            {"ALLOWED_GUILD_IDS": "12,abc"},
            "ALLOWED_GUILD_IDS must be a comma-separated list of Discord server ids",
        ),
        ({"COMMANDS_PER_MINUTE": "-3"}, "COMMANDS_PER_MINUTE"),
        ({"ALLOW_DMS": "maybe"}, "ALLOW_DMS"),
    ],
)
def test_money_settings_are_validated(env: dict[str, str], problem: str):
    with pytest.raises(ConfigError) as error:
        load_settings({**BASE_ENV, **env})
    assert any(problem in p for p in error.value.problems)


def test_money_settings_defaults():
    settings = load_settings(BASE_ENV)
    assert settings.monthly_budget_usd == Decimal("20") and settings.allowed_guild_ids == frozenset()
    assert (settings.allow_dms, settings.commands_per_minute, settings.max_mask_previews) == (False, 10, 3)
    assert load_settings({**BASE_ENV, "MONTHLY_BUDGET_USD": "12.34"}).monthly_budget_usd == Decimal("12.34")
