"""Budgets counted from running totals (bot/storage/spend.py, migration 0012), on both backends.

The oracle is the definition the budget checks used to evaluate over the whole ledger: credits captured
since the period start, plus absorbed provider spend since then, plus every open hold, per server or for
the bot. The totals must give the same numbers, or (only for rows stamped before a period but committed
after its mark) more, never fewer."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.services.admin import period_start
from bot.storage import Storage, connection, ledger
from bot.storage.connection import Body, iso, lock
from bot.storage.limits import ReserveGuard, ReserveRefused
from bot.storage.spend import MARK_DELAY, spent
from tests.test_policy import Clock, new_job, utc

GUILDS = (100, 200, 0)  # 0: direct messages, a server id like any other here
USERS = (1, 2)
RICH = 10**9


@pytest.fixture
def clock() -> Clock:
    return Clock("2026-10-20T12:00:00")


@pytest.fixture
def storage_clock(clock: Clock) -> Clock:
    """The `storage` fixture (tests/conftest.py) reads this test's clock."""
    return clock


# -- the oracle and what the budgets count ------------------------------------------------------------------


async def exact(storage: Storage, since: dt.datetime | None, guild: int | None) -> int:
    """Spend since `since` plus open holds, summed over every row (what the budgets counted before 0012)."""
    text = iso(since) if since else ""
    where = "" if guild is None else " AND guild_id = ?"
    held_where = "" if guild is None else " WHERE guild_id = ?"
    params: tuple[Any, ...] = (text, text) if guild is None else (text, guild, text, guild, guild)
    row = await storage.db.one(
        "SELECT (SELECT COALESCE(SUM(amount), 0) FROM ledger "
        f"        WHERE kind = 'capture' AND created_at >= ?{where}), "
        f"       (SELECT COALESCE(SUM(credits), 0) FROM absorbed_spend WHERE created_at >= ?{where}), "
        f"       (SELECT COALESCE(SUM(held), 0) FROM accounts{held_where})",
        params,
    )
    assert row is not None
    return int(row[0]) + int(row[1]) + int(row[2])


async def exact_by_guild(storage: Storage, since: dt.datetime) -> dict[int, tuple[int, int]]:
    held = {
        r[0]: int(r[1])
        for r in await storage.db.all("SELECT guild_id, SUM(held) FROM accounts GROUP BY guild_id")
    }
    found = {}
    for guild in set(held) | set(GUILDS):
        total = await exact(storage, since, guild)
        if total:
            found[guild] = (total - held.get(guild, 0), held.get(guild, 0))
    return found


async def counted(storage: Storage, since: dt.datetime | None, guild: int) -> tuple[int, int]:
    """(the server's, the bot's) spend as a budget check reads it: under the budget lock, which marks the
    period when it is due."""

    def body() -> Body[tuple[int | None, int | None]]:
        yield lock(("budget",))
        return (yield from spent(storage.now(), since, guild, True))

    used, bot_used = await storage.db.transaction(body)
    assert used is not None and bot_used is not None
    return used, bot_used


async def assert_totals_match_the_rows(storage: Storage) -> None:
    totals = await storage.db.all("SELECT guild_id, captured, absorbed FROM spend_totals")
    rows = await storage.db.all(
        "SELECT guild_id, SUM(captured), SUM(absorbed) FROM ("
        "  SELECT guild_id, amount AS captured, 0 AS absorbed FROM ledger WHERE kind = 'capture'"
        "  UNION ALL SELECT guild_id, 0, credits FROM absorbed_spend) AS spend GROUP BY guild_id"
    )
    assert {r[0]: (r[1], r[2]) for r in totals} == {r[0]: (int(r[1]), int(r[2])) for r in rows}


async def assert_counted_exactly(storage: Storage, since: dt.datetime | None) -> None:
    for guild in GUILDS:
        assert await counted(storage, since, guild) == (
            await exact(storage, since, guild),
            await exact(storage, since, None),
        )
    if since is not None:
        assert await storage.reports.spend_by_guild(since) == await exact_by_guild(storage, since)


async def fund(storage: Storage) -> None:
    for guild, user in itertools.product(GUILDS, USERS):
        await storage.ledger.grant(guild, user, RICH, actor_id=None, reason="test", starting_credits=0)


# -- a randomized mix of every movement, across servers and periods ---------------------------------------

MOVES = st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from(GUILDS), st.sampled_from(USERS), st.integers(1, 50)),
    st.tuples(st.just("capture"), st.integers(0, 99), st.integers(0, 60)),
    st.tuples(st.just("cancel_at_provider"), st.integers(0, 99), st.integers(0, 60)),
    st.tuples(st.just("release"), st.integers(0, 99), st.integers(0, 30)),  # with that much absorbed
    st.tuples(st.just("tick"), st.sampled_from([1, 30, 60, 61, 3_600, 5 * 86_400])),
    st.tuples(st.just("month"), st.sampled_from([0, 0, 30, 59, 60, 61, 120])),  # seconds into the next month
    st.tuples(st.just("check"), st.booleans()),  # also since the beginning
)
_jobs = itertools.count()


class Run:
    """One example's movements on the shared database (its jobs are its own; the clock only moves
    forward, so each example starts a month after every row written before it)."""

    def __init__(self, storage: Storage, clock: Clock) -> None:
        self.storage, self.clock = storage, clock
        self.open: list[str] = []

    def month(self) -> dt.datetime:
        return period_start("monthly", self.clock())

    async def next_month(self, seconds: int) -> None:
        start = period_start("monthly", period_start("monthly", self.clock()) + dt.timedelta(days=32))
        self.clock.at = start + dt.timedelta(seconds=seconds)

    async def move(self, step: tuple[Any, ...]) -> None:
        kind, *args = step
        ledger = self.storage.ledger
        if kind == "reserve":
            guild, user, amount = args
            job_id = await new_job(self.storage, f"p{next(_jobs)}", user=user, guild=guild)
            await ledger.reserve(job_id, guild, user, amount, starting_credits=0)
            self.open.append(job_id)
        elif kind in ("capture", "cancel_at_provider", "release") and self.open:
            job_id = self.open.pop(args[0] % len(self.open))
            if kind == "capture":
                # With part of the provider's bill absorbed (images that came back unusable).
                await ledger.settle_delivered(
                    job_id, args[1], via="followup", channel_id=1, message_id=2, absorbed=args[1] % 3
                )
            elif kind == "cancel_at_provider":
                await ledger.settle_cancelled_at_provider(job_id, args[1], error_code="cancelled")
            else:
                await ledger.settle_released(job_id, "failed", error_code="lost", absorbed=args[1])
        elif kind == "tick":
            self.clock.advance(args[0])
        elif kind == "month":
            await self.next_month(args[0])
        elif kind == "check":
            await assert_counted_exactly(self.storage, None if args[0] else self.month())


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(moves=st.lists(MOVES, max_size=40))
async def test_running_totals_equal_the_ledgers_sums_after_any_mix_of_movements(
    storage: Storage, clock: Clock, moves: list[tuple[Any, ...]]
):
    run = Run(storage, clock)
    if await storage.ledger.get_account(GUILDS[0], USERS[0]) is None:
        await fund(storage)
    await run.next_month(90)  # this example's first month is past MARK_DELAY: its marks are due
    for step in [*moves, ("check", False), ("month", 0), ("tick", 61), ("check", False)]:
        await run.move(step)
    await assert_totals_match_the_rows(storage)
    await assert_counted_exactly(storage, None)
    for job_id in run.open:  # later examples start with nothing held
        await storage.ledger.release(job_id)


# -- periods: a new month, the first minute, a future start, a clock going back ----------------------------


async def reserve(
    storage: Storage, job_id: str, amount: int, guild: int = GUILDS[0], user: int = USERS[0]
) -> str:
    await new_job(storage, job_id, user=user, guild=guild)
    await storage.ledger.reserve(job_id, guild, user, amount, starting_credits=0)
    return job_id


async def spend_in(storage: Storage, prefix: str, captured: int, absorbed: int, held: int) -> None:
    """Captured, absorbed and still-held credits in the first server, now."""
    await storage.ledger.capture(await reserve(storage, f"{prefix}-c", captured), captured)
    await storage.ledger.settle_released(
        await reserve(storage, f"{prefix}-a", 1), "failed", error_code="lost", absorbed=absorbed
    )
    await reserve(storage, f"{prefix}-h", held)


async def test_a_new_month_counts_from_its_first_day(storage: Storage, clock: Clock):
    await fund(storage)
    clock.set("2026-11-20T10:00:00")
    await spend_in(storage, "nov", captured=30, absorbed=5, held=10)
    await spend_in(storage, "nov-other", captured=7, absorbed=0, held=0)
    december = utc("2026-12-01T00:00:00")
    clock.set("2026-12-01T00:00:00")  # a capture stamped at the very start of December is December's
    await storage.ledger.capture(await reserve(storage, "midnight", 2), 2)
    clock.set("2026-12-01T00:00:30")  # the first minute: summed over December's rows, no marks yet
    assert await counted(storage, december, GUILDS[0]) == (12, 12)
    assert await storage.db.all("SELECT * FROM spend_periods") == []
    clock.set("2026-12-01T00:02:00")
    assert await counted(storage, december, GUILDS[0]) == (12, 12)  # November's 42 spent stay behind
    marks = await storage.db.all("SELECT guild_id, captured_before, absorbed_before FROM spend_marks")
    assert sorted(tuple(m) for m in marks) == [(GUILDS[0], 37, 5)]
    period = await storage.db.one("SELECT captured_before, absorbed_before FROM spend_periods")
    assert period is not None and tuple(period) == (37, 5)
    await storage.ledger.capture("nov-h", 8)  # November's hold, captured in December, counts in December
    await spend_in(storage, "dec", captured=20, absorbed=3, held=4)
    december_spend = 2 + 8 + 20 + 3 + 4
    assert await counted(storage, december, GUILDS[0]) == (december_spend, december_spend)
    assert await counted(storage, None, GUILDS[0]) == (37 + 5 + december_spend, 37 + 5 + december_spend)
    guard = ReserveGuard(guild_cap=december_spend + 10, cap_since=december)  # room for 10 more, not 11
    await new_job(storage, "dec-fits")
    await storage.ledger.reserve("dec-fits", GUILDS[0], USERS[0], 10, starting_credits=0, guard=guard)
    await new_job(storage, "dec-over")
    with pytest.raises(ReserveRefused) as refused:
        await storage.ledger.reserve("dec-over", GUILDS[0], USERS[0], 1, starting_credits=0, guard=guard)
    assert (refused.value.used, refused.value.limit) == (december_spend + 10, guard.guild_cap)
    clock.set("2027-01-01T00:05:00")
    assert await counted(storage, utc("2027-01-01T00:00:00"), GUILDS[0]) == (4 + 10, 4 + 10)
    await assert_counted_exactly(storage, december)


async def test_absorbed_spend_counts_in_a_periods_first_minute_too(storage: Storage, clock: Clock):
    """Before the period's marks are due, spend is summed from the rows: the provider spend nobody paid
    for counts there as it does once the period is marked."""
    await fund(storage)
    december = utc("2026-12-01T00:00:00")
    clock.set("2026-12-01T00:00:10")
    job = await reserve(storage, "first-minute", 1)
    await storage.ledger.settle_released(job, "failed", error_code="lost", absorbed=7)
    clock.set("2026-12-01T00:00:30")
    assert await counted(storage, december, GUILDS[0]) == (7, 7)
    assert await storage.db.all("SELECT * FROM spend_periods") == []  # still summed from the rows
    guard = ReserveGuard(guild_cap=7, bot_cap=7, cap_since=december)
    await new_job(storage, "over")
    with pytest.raises(ReserveRefused):
        await storage.ledger.reserve("over", GUILDS[0], USERS[0], 1, starting_credits=0, guard=guard)


async def test_a_period_that_starts_in_the_future_counts_only_the_holds(storage: Storage, clock: Clock):
    await fund(storage)
    clock.set("2026-11-20T10:00:00")
    await spend_in(storage, "nov", captured=30, absorbed=5, held=10)
    december = utc("2026-12-01T00:00:00")
    assert await counted(storage, december, GUILDS[0]) == (10, 10)
    await spend_in(storage, "nov-later", captured=6, absorbed=1, held=2)  # still before December
    assert await counted(storage, december, GUILDS[0]) == (12, 12)
    assert await storage.db.all("SELECT * FROM spend_marks") == []


async def test_a_clock_that_goes_back_never_counts_less_than_was_spent(storage: Storage, clock: Clock):
    await fund(storage)
    november, december = utc("2026-11-01T00:00:00"), utc("2026-12-01T00:00:00")
    clock.set("2026-11-20T10:00:00")
    await spend_in(storage, "nov", captured=30, absorbed=5, held=10)
    clock.set("2026-12-05T10:00:00")
    await spend_in(storage, "dec", captured=20, absorbed=3, held=4)
    await assert_counted_exactly(storage, december)  # marks December
    clock.set("2026-11-25T10:00:00")  # back into November: its marks are taken now, December's rows included
    await assert_counted_exactly(storage, november)
    await spend_in(
        storage, "back", captured=6, absorbed=1, held=2
    )  # stamped in November, after December's marks
    await assert_counted_exactly(storage, november)
    clock.set("2026-12-06T10:00:00")
    for guild in GUILDS:
        used, bot_used = await counted(storage, december, guild)
        late = 7 if guild == GUILDS[0] else 0  # counted in December although stamped in November
        assert used == await exact(storage, december, guild) + late
        assert bot_used == await exact(storage, december, None) + 7


async def test_a_capture_stamped_before_the_month_but_committed_after_its_mark_is_counted_in_it(
    storage: Storage, clock: Clock, database_url: str
):
    """A process whose clock is behind (or a transaction that read the clock just before midnight)
    writes a capture stamped in November after another process marked December: it is counted in
    December's spend too (a budget refuses a little early), never left out of both months."""
    behind = Clock("2026-11-30T23:59:59")
    late = await Storage.open(database_url, clock=behind)
    try:
        await fund(storage)
        clock.set("2026-11-30T23:00:00")
        await reserve(storage, "straggler", 40)
        await storage.ledger.capture(await reserve(storage, "november", 25), 25)
        december = utc("2026-12-01T00:00:00")
        clock.set("2026-12-01T00:01:00")  # MARK_DELAY after midnight: December is marked now
        assert clock() == december + MARK_DELAY
        assert await counted(storage, december, GUILDS[0]) == (40, 40)
        assert await late.ledger.capture("straggler", 30) is not None  # stamped 23:59:59, committed now
        row = await storage.db.one(
            "SELECT created_at FROM ledger WHERE job_id = 'straggler' AND kind = 'capture'"
        )
        assert row is not None and row[0] < iso(december)
        assert await exact(storage, december, GUILDS[0]) == 0  # by its stamp it is November's
        assert await counted(storage, december, GUILDS[0]) == (30, 30)  # over-counted, not lost
        assert await storage.reports.spend_by_guild(december) == {GUILDS[0]: (30, 0)}  # what /owner shows
        guard = ReserveGuard(guild_cap=35, cap_since=december)
        await new_job(storage, "after")
        with pytest.raises(ReserveRefused) as refused:
            await storage.ledger.reserve("after", GUILDS[0], USERS[0], 10, starting_credits=0, guard=guard)
        assert refused.value.used == 30
        clock.set("2027-01-01T00:01:00")  # January's marks count it before January, where it belongs
        assert await counted(storage, utc("2027-01-01T00:00:00"), GUILDS[0]) == (0, 0)
    finally:
        await late.close()


# -- the migration -----------------------------------------------------------------------------------------


async def test_migration_12_counts_the_history_written_before_it(
    database_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
):
    shipped = connection.migrations
    monkeypatch.setattr(
        connection, "migrations", lambda folder="migrations": [m for m in shipped(folder) if m[0] <= 11]
    )
    # The history is written by the releases of schema 11, which had no allowance top-up to complete
    # at a capture (migration 16's columns).
    monkeypatch.setattr(ledger, "_refill_shortfall", lambda *args: iter(()))
    storage = await Storage.open(database_url, clock=clock)
    try:
        assert await storage.schema_version() == 11
        await fund(storage)
        for month, (captured, absorbed, held) in zip(("10", "11"), ((30, 5, 10), (20, 3, 4)), strict=True):
            clock.set(f"2026-{month}-15T10:00:00")
            await spend_in(storage, f"m{month}", captured=captured, absorbed=absorbed, held=held)
            await reserve(storage, f"m{month}-other", 9, guild=GUILDS[1], user=USERS[1])
            await storage.ledger.capture(f"m{month}-other", 6)
            await storage.ledger.release(await reserve(storage, f"m{month}-gone", 3, guild=GUILDS[2]))
        monkeypatch.undo()
        assert await storage.migrate() == connection.latest_schema_version()  # 12 and any after it
        await assert_totals_match_the_rows(storage)
        totals = await storage.db.all(
            "SELECT guild_id, captured, absorbed FROM spend_totals ORDER BY guild_id"
        )
        assert [tuple(t) for t in totals] == [(GUILDS[0], 50, 8), (GUILDS[1], 12, 0)]
        clock.set("2026-11-20T10:00:00")
        await assert_counted_exactly(storage, utc("2026-11-01T00:00:00"))
        await assert_counted_exactly(storage, None)
        await storage.ledger.capture("m11-h", 4)  # and the triggers keep counting after it
        await assert_totals_match_the_rows(storage)
        await assert_counted_exactly(storage, utc("2026-11-01T00:00:00"))
    finally:
        await storage.close()


async def test_absorbed_spend_rows_cannot_be_changed_or_deleted(storage: Storage):
    await fund(storage)
    await storage.ledger.settle_released(
        await reserve(storage, "lost", 5), "failed", error_code="lost", absorbed=5
    )
    for sql in ("UPDATE absorbed_spend SET credits = 0", "DELETE FROM absorbed_spend"):
        with pytest.raises(storage.db.Error, match="append-only"):
            await storage.db.write_one(sql, ())
    await assert_totals_match_the_rows(storage)


# -- what a check costs ---------------------------------------------------------------------------------


async def plan(storage: Storage, sql: str, params: tuple[Any, ...]) -> str:
    """How the database runs `sql`; on PostgreSQL with sequential scans off, so the answer says whether an
    index can serve it at all (its planner rightly scans the few rows of a test table instead)."""
    if not storage.db.shared:
        return "\n".join(r[3] for r in await storage.db.all("EXPLAIN QUERY PLAN " + sql, params))

    def body() -> Body[str]:
        yield connection.execute("SET LOCAL enable_seqscan = off")
        rows = yield connection.fetch_all("EXPLAIN " + sql, params)
        return "\n".join(r[0] for r in rows)

    return await storage.db.transaction(body)


async def test_open_holds_are_summed_through_the_index_of_accounts_holding_something(storage: Storage):
    await fund(storage)
    await reserve(storage, "held", 5)
    server = await plan(
        storage, "SELECT SUM(held) FROM accounts WHERE guild_id = ? AND held > 0", (GUILDS[0],)
    )
    bot = await plan(storage, "SELECT SUM(held) FROM accounts WHERE held > 0", ())
    assert "accounts_open_holds" in server and "accounts_open_holds" in bot, (server, bot)


@pytest.mark.sqlite_only
async def test_a_budget_check_reads_no_ledger_rows_once_its_month_is_marked(storage: Storage, clock: Clock):
    """The month's captures are not what a budget check reads any more: the cost of a check must not grow
    with them."""
    await fund(storage)
    month = period_start("monthly", clock())
    for n in range(5):
        await storage.ledger.capture(await reserve(storage, f"spent{n}", 10), 10)
    guard = ReserveGuard(guild_cap=10**6, allotment=10**6, bot_cap=10**6, cap_since=month)
    await new_job(storage, "marks")
    await storage.ledger.reserve("marks", GUILDS[0], USERS[0], 1, starting_credits=0, guard=guard)
    statements: list[str] = []
    await storage.db.run(lambda db: db.set_trace_callback(statements.append))
    await new_job(storage, "checked")
    await storage.ledger.reserve("checked", GUILDS[0], USERS[0], 1, starting_credits=0, guard=guard)
    await storage.db.run(lambda db: db.set_trace_callback(None))
    budget = [sql for sql in statements if "spend_totals" in sql]
    assert budget, statements
    for sql in statements:
        assert "absorbed_spend" not in sql and "SUM(amount)" not in sql, sql


async def test_marks_of_periods_older_than_two_months_are_pruned_and_counts_stay_exact(
    storage: Storage, clock: Clock
):
    await fund(storage)
    months = [utc(f"2026-{m:02d}-01T00:00:00") for m in (9, 10, 11, 12)]
    for n, month in enumerate(months):
        clock.at = month + dt.timedelta(days=3)
        await spend_in(storage, f"m{n}", captured=10 + n, absorbed=n, held=1)
        await assert_counted_exactly(storage, month)  # marks the month
    periods = await storage.db.all("SELECT since FROM spend_periods ORDER BY since")
    assert [p[0] for p in periods] == [iso(m) for m in months]

    clock.at = utc("2026-12-10T00:00:00")
    assert await storage.ledger.prune_spend_marks() == 2  # September's and October's: over 62 days old
    periods = await storage.db.all("SELECT since FROM spend_periods ORDER BY since")
    assert [p[0] for p in periods] == [iso(m) for m in months[2:]]
    marks = await storage.db.all("SELECT DISTINCT since FROM spend_marks ORDER BY since")
    assert [m[0] for m in marks] == [iso(m) for m in months[2:]]
    assert await storage.ledger.prune_spend_marks() == 0
    await assert_counted_exactly(storage, months[3])  # this month's budgets read their marks as before
    await assert_counted_exactly(storage, months[2])  # last month's report too
    await assert_counted_exactly(storage, months[0])  # a pruned period is summed, or marked again
