"""Shards shared out among processes by leases in PostgreSQL (bot/sharding.py over
bot/storage/shard_leases.py), against the real database: every test has a schema of its own, and one
clock drives both the leases' expiry and the coordinators' sense of time, so nothing sleeps."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Awaitable, Callable, Collection
from typing import Any, cast

import pytest

from bot.concurrency import ProviderLimiter
from bot.sharding import (
    FleetPlace,
    ShardCoordinator,
    ShardPlan,
    StaticShards,
    clocks_apart,
    place_in,
    quota,
)
from bot.storage.shard_leases import ShardLeases, ShardOwner
from tests import postgres
from tests.postgres import PoolOn, never_waiting_on

pg_schema, pool_on, pg_pool = postgres.pg_schema, postgres.pool_on, postgres.pg_pool  # the fixtures

LEASE = 30.0


class Clock:
    """The test's time: the lease store reads it as the wall clock, the coordinators as `monotonic`."""

    def __init__(self) -> None:
        self.start = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
        self.elapsed = 0.0

    def __call__(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        return self.elapsed

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds


class Bot:
    """Stands in for the Discord client: records the plans it was told to serve."""

    def __init__(self) -> None:
        self.plans: list[ShardPlan] = []

    async def serve(self, plan: ShardPlan) -> None:
        self.plans.append(plan)

    @property
    def serving(self) -> frozenset[int]:
        return self.plans[-1].shard_ids if self.plans else frozenset()


class Flaky:
    """A lease store that fails every call while `down` is set, as when the database is unreachable."""

    def __init__(self, store: ShardLeases) -> None:
        self.store = store
        self.down = False

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        call = getattr(self.store, name)

        async def maybe(*args: Any) -> Any:
            if self.down:
                raise ConnectionRefusedError("the database is down")
            return await call(*args)

        return maybe


class LateAnswers:
    """A lease store whose renewals answer `delay` seconds after the database dated them (a slow network
    back to the process)."""

    def __init__(self, store: ShardLeases, clock: Clock) -> None:
        self.store, self.clock, self.delay = store, clock, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def renew(self, owner: str) -> frozenset[int]:
        held = await self.store.renew(owner)
        self.clock.advance(self.delay)
        return held


class Hung:
    """A lease store whose database stops answering once `hung` is set, while time goes on."""

    def __init__(self, store: ShardLeases, clock: Clock) -> None:
        self.store, self.clock, self.hung = store, clock, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def join(self, owner: str, shard_count: int) -> Any:
        while self.hung:
            self.clock.advance(0.5)
            await asyncio.sleep(0.01)
        return await self.store.join(owner, shard_count)


class _SameHost:
    """Equal to a `clock_apart` of processes on this one host: near 0, the measurement's own latency."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, float) and 0.0 <= other < SAME_HOST_SECONDS

    def __repr__(self) -> str:
        return f"<under {SAME_HOST_SECONDS} s>"


SAME_HOST_SECONDS = 1.0


def here(processes: int, rank: int) -> FleetPlace:
    """The place a process of these tests hears: every one runs on this host, so its clock agrees."""
    return FleetPlace(processes, rank, cast(float, _SameHost()))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(pg_pool: Any, clock: Clock) -> ShardLeases:
    return ShardLeases(pg_pool, lease=dt.timedelta(seconds=LEASE), clock=clock)


class Fleet:
    """Coordinators (processes) over one lease store, each with its recorded bot."""

    def __init__(self, store: Any, clock: Clock, shard_count: int | None = 3) -> None:
        self.store, self.clock, self.shard_count = store, clock, shard_count
        self.bots: dict[str, Bot] = {}
        self.processes: dict[str, ShardCoordinator] = {}

    async def start(
        self,
        name: str,
        *,
        shard_count: int | None = 0,
        recommended: int = 3,
        on_fleet: Callable[[FleetPlace], None] | None = None,
    ) -> ShardCoordinator:
        count = self.shard_count if shard_count == 0 else shard_count
        process = ShardCoordinator(
            self.store,
            lease_seconds=LEASE,
            shard_count=count,
            owner=name,
            settle_seconds=0,
            monotonic=self.clock.monotonic,
            on_fleet=on_fleet,
        )
        self.processes[name] = process
        self.bots[name] = Bot()
        # What `start` does, less the background loop: the test runs the rounds (`rounds`).
        process._serve = self.bots[name].serve
        await process._first_rounds(recommended)
        return process

    async def rounds(self, n: int = 1, *names: str) -> None:
        """`n` rounds of every named process (all by default), one renewal interval apart."""
        for _ in range(n):
            self.clock.advance(LEASE / 3)
            for name in names or self.processes:
                await self.processes[name].tick()

    def serving(self) -> dict[str, set[int]]:
        return {name: set(bot.serving) for name, bot in self.bots.items()}


def disjoint(sets: Collection[Collection[int]]) -> bool:
    return all(not set(a) & set(b) for a, b in itertools.combinations(sets, 2))


@pytest.mark.parametrize(
    ("owners", "count", "expected"),
    [
        (["a"], 3, [3]),
        (["a", "b"], 3, [2, 1]),
        (["a", "b", "c"], 3, [1, 1, 1]),
        (["a", "b", "c"], 4, [2, 1, 1]),
        (["a", "b", "c", "d"], 3, [1, 1, 1, 0]),
        (["a", "b", "c"], 16, [6, 5, 5]),
    ],
)
def test_quotas_add_up_to_the_shard_count_and_the_oldest_get_the_extra_shards(owners, count, expected):
    live = [ShardOwner(name, count) for name in owners]
    assert [quota(live, name, count) for name in owners] == expected
    assert sum(expected) == count


def test_a_process_with_another_shard_count_than_the_oldest_gets_no_quota():
    live = [ShardOwner("old", 3), ShardOwner("new", 6), ShardOwner("old2", 3)]
    assert quota(live, "new", 6) == 0
    # The processes of the fleet's count share every shard among themselves.
    assert [quota(live, "old", 3), quota(live, "old2", 3)] == [2, 1]


async def test_three_processes_split_three_shards_one_each(store, clock):
    fleet = Fleet(store, clock)
    for name in ("a", "b", "c"):
        await fleet.start(name)
    await fleet.rounds(2)
    # a claimed all three alone; one round later it kept the lowest and the others took one each.
    assert fleet.serving() == {"a": {0}, "b": {1}, "c": {2}}
    assert await store.holders() == {s: n for n, held in fleet.serving().items() for s in held}


async def test_a_newcomer_gets_its_share_as_the_others_shed_their_surplus(store, clock):
    fleet = Fleet(store, clock, shard_count=4)
    await fleet.start("a")
    assert fleet.serving() == {"a": {0, 1, 2, 3}}
    await fleet.start("b")
    assert fleet.serving()["b"] == set()  # nothing is free yet
    await fleet.rounds(1)
    assert fleet.serving() == {"a": {0, 1}, "b": {2, 3}}
    await fleet.start("c")
    await fleet.rounds(2)
    # c is the youngest: the oldest keeps the extra shard; nobody serves a shard twice, none is left out.
    assert [len(fleet.serving()[n]) for n in "abc"] == [2, 1, 1]
    assert set().union(*fleet.serving().values()) == {0, 1, 2, 3}
    assert disjoint(list(fleet.serving().values()))
    # Steady state: more rounds move nothing (no flapping).
    before = fleet.serving()
    plans = {n: len(bot.plans) for n, bot in fleet.bots.items()}
    await fleet.rounds(5)
    assert fleet.serving() == before
    assert {n: len(bot.plans) for n, bot in fleet.bots.items()} == plans


async def test_a_process_that_stops_renewing_loses_its_shards_after_the_lease(store, clock):
    fleet = Fleet(store, clock)
    for name in ("a", "b", "c"):
        await fleet.start(name)
    places: list[FleetPlace] = []  # what a's provider limits hear: how many processes share them
    fleet.processes["a"].on_fleet = places.append
    await fleet.rounds(2)
    assert places == [here(3, 0)] * 2
    dead = fleet.serving()["c"]
    assert len(dead) == 1
    # c is killed: it neither renews nor releases. Until its lease runs out nobody takes its shard.
    await fleet.rounds(2, "a", "b")
    assert not (fleet.serving()["a"] | fleet.serving()["b"]) & dead
    assert set((await store.holders()).values()) == {"a", "b", "c"}
    # A third round is one lease after c's last renewal: its shard is taken over, within that round.
    await fleet.rounds(1, "a", "b")
    assert places[-1] == here(2, 0)  # c no longer counts as alive: a's part of each ceiling grows
    assert fleet.serving()["a"] | fleet.serving()["b"] == {0, 1, 2}
    assert disjoint([fleet.serving()["a"], fleet.serving()["b"]])
    assert set((await store.holders()).values()) == {"a", "b"}


async def test_a_clean_stop_frees_the_shards_at_once_and_counts_the_process_until_its_drain_ends(
    store, clock
):
    fleet = Fleet(store, clock)
    await fleet.start("a")
    b = await fleet.start("b")
    await fleet.rounds(1)
    leaving = fleet.serving()["b"]
    assert leaving
    places: list[FleetPlace] = []  # what a's provider limits hear: how many processes share them
    fleet.processes["a"].on_fleet = places.append
    del fleet.processes["b"]
    await b.stop()
    assert fleet.bots["b"].serving == frozenset()
    assert not set(await store.holders()) & leaving  # free, without waiting for the lease
    await fleet.rounds(1, "a")
    assert fleet.serving()["a"] == {0, 1, 2}  # a serves b's servers while b drains ...
    assert places == [here(2, 0)]  # ... and b's last provider calls still count against the ceilings
    assert [(o.name, o.leaving) for o in await store.live_owners()] == [("a", False), ("b", True)]
    await b.leave()  # the drain is over
    assert [o.name for o in await store.live_owners()] == ["a"]
    await fleet.rounds(1, "a")
    assert places == [here(2, 0), here(1, 0)]


class RetireFailsOnce:
    """A lease store whose first `retire` fails (a database blip at SIGTERM)."""

    def __init__(self, store: ShardLeases) -> None:
        self.store, self.failed = store, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def retire(self, owner: str) -> None:
        if not self.failed:
            self.failed = True
            raise ConnectionResetError("the database went away for a moment")
        await self.store.retire(owner)


async def test_a_stop_whose_release_fails_releases_on_the_next_drain_round(store, clock):
    fleet = Fleet(store, clock)
    await fleet.start("a")
    blip = Fleet(RetireFailsOnce(store), clock)
    b = await blip.start("b")
    await fleet.rounds(1)  # a gives a shard up for b ...
    await b.tick()  # ... and b claims it
    assert blip.serving()["b"]
    await b.stop()  # SIGTERM: the release fails; the drain begins
    assert blip.serving()["b"] == set()
    await fleet.rounds(1, "a")
    await b.tick()  # the drain's round says b is alive, and releases its shards this time
    assert [(o.name, o.leaving) for o in await store.live_owners()] == [("a", False), ("b", True)]
    await fleet.rounds(1, "a")
    assert fleet.serving()["a"] == {0, 1, 2}  # during the drain, not after it
    await b.leave()


async def test_each_process_hears_its_place_in_name_order_and_the_fleets_parts_add_up_to_the_ceiling(
    store, clock
):
    fleet = Fleet(store, clock)
    heard: dict[str, list[FleetPlace]] = {}
    limits: dict[str, ProviderLimiter] = {}  # each process's own limiter, one account's ceiling of 4

    def process(name: str) -> Callable[[FleetPlace], None]:
        heard[name] = []
        limits[name] = ProviderLimiter({"p": (4, 4)})

        def on_fleet(place: FleetPlace) -> None:
            heard[name].append(place)
            limits[name].share_with(place.processes, place.rank)

        return on_fleet

    def parts() -> dict[str, int]:
        return {name: lim.limit("p") for name, lim in limits.items()}

    # c is the oldest and b the youngest: places go by name, which no join or stop reorders.
    for name in ("c", "a", "b"):
        await fleet.start(name, on_fleet=process(name))
        clock.advance(1)
    assert [o.name for o in await store.live_owners()] == ["c", "a", "b"]
    assert [heard[n][0] for n in ("c", "a", "b")] == [here(1, 0), here(2, 0), here(3, 1)]
    await fleet.rounds(1)
    assert {n: places[-1] for n, places in heard.items()} == {
        "a": here(3, 0),
        "b": here(3, 1),
        "c": here(3, 2),
    }
    assert parts() == {"a": 2, "b": 1, "c": 1}  # 4 over 3: the whole ceiling, the first name the extra
    # a starts its drain: marked leaving and oldest no more, it keeps its place and its part until it leaves.
    a = fleet.processes.pop("a")
    await a.stop()
    await fleet.rounds(1)
    assert (heard["b"][-1], heard["c"][-1]) == (here(3, 1), here(3, 2))
    assert sum(parts().values()) == 4
    await a.leave()
    del limits["a"]
    await fleet.rounds(1)
    assert (heard["b"][-1], heard["c"][-1]) == (here(2, 0), here(2, 1))
    assert parts() == {"b": 2, "c": 2}


def test_a_leaving_process_gets_no_quota_and_does_not_set_the_fleets_shard_count():
    # The oldest (listed first) is leaving: its share and its shard count go to the ones staying.
    live = [ShardOwner("old", 6, leaving=True), ShardOwner("a", 3), ShardOwner("b", 3)]
    assert [quota(live, name, 3) for name in ("a", "b")] == [2, 1]
    assert quota(live, "old", 6) == 0


async def test_concurrent_claims_never_give_one_shard_to_two_processes(pool_on: PoolOn, clock):
    # Ten processes, each with its own connections, claiming all they can at the same moment, again and
    # again, while leases keep running out under them.
    count = 8
    stores = [
        ShardLeases(await pool_on(max_size=1), lease=dt.timedelta(seconds=LEASE), clock=clock)
        for _ in range(10)
    ]
    await stores[0].prepare()
    names = [f"p{i}" for i in range(len(stores))]
    for _ in range(6):
        claimed = await asyncio.gather(
            *(s.claim(n, count, count) for s, n in zip(stores, names, strict=True))
        )
        assert disjoint(claimed)
        holders = await stores[0].holders()
        assert {s: n for n, got in zip(names, claimed, strict=True) for s in got}.items() <= holders.items()
        renewed = await asyncio.gather(*(s.renew(n) for s, n in zip(stores, names, strict=True)))
        assert disjoint(renewed)
        clock.advance(LEASE)  # everything runs out: the next claims race for every shard again


async def test_a_claim_passes_over_a_shard_another_claim_holds_instead_of_waiting(
    store, pool_on: PoolOn, clock
):
    """A shard row another process's claim has locked (until it commits) is skipped: the claim takes the
    next free shard at once instead of queueing every process's round behind that transaction, and the
    skipped shard is still free for a later claim."""
    await store.prepare()
    assert await store.claim("a", 3, 3) == {0, 1, 2}
    await store.release("a", {0, 1, 2})
    async with (await pool_on(max_size=1)).acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM shard_leases WHERE shard_id = 0 FOR UPDATE")
        assert await never_waiting_on(holder, store.claim("b", 3, 1)) == {1}
    assert await store.claim("c", 3, 1) == {0}


async def test_a_process_claims_below_its_count_releases_only_its_own_and_waits_only_for_others_leases(
    store, clock
):
    """What the rounds rely on from the lease table: a claim never takes a shard at or above the count
    it runs (rows of a larger count the fleet ran before are still there), a release frees only the
    caller's own shards (one it lost meanwhile stays with the process that took it), and the expiry a
    process's next round comes early for is another process's lease, never one of its own."""
    await store.prepare()
    assert await store.claim("old", 6, 6) == set(range(6))
    await store.release("old", {1, 2, 3, 4, 5})
    assert await store.claim("new", 3, 3) == {1, 2}
    await store.release("new", {0, 1})
    assert await store.holders() == {0: "old", 2: "new"}
    clock.advance(10)
    assert await store.renew("old") == {0}  # old's lease now runs 30 s more, new's 20 s
    assert (await store.join("new", 3)).next_expiry == pytest.approx(LEASE)
    assert (await store.join("old", 6)).next_expiry == pytest.approx(LEASE - 10)


async def test_the_margin_to_stop_serving_counts_from_the_rounds_start_not_from_a_late_answer(store, clock):
    """The database dates a renewal when it runs it, and its answer may come seconds later. The third of a
    lease a process keeps to close its shards is counted from when the round began, before the leases
    were dated, so a late answer cannot keep it serving into the time another process may claim them."""
    late = LateAnswers(store, clock)
    fleet = Fleet(late, clock)
    process = await fleet.start("a")
    late.delay = 5.0
    await fleet.rounds(1)  # begins at 10 s, when the leases are dated; the answer comes at 15 s
    assert fleet.serving() == {"a": {0, 1, 2}}
    clock.advance(LEASE * 2 / 3 - late.delay)  # two thirds of a lease after the round began
    assert not process.healthy
    assert await store.holders() == {0: "a", 1: "a", 2: "a"}  # a third of a lease still to run


async def test_a_round_the_database_does_not_answer_is_cut_off_when_the_process_must_stop_serving(
    store, clock
):
    """A round's calls to the database are given no longer than the process may still serve: once the
    database stops answering, the process stops serving by then, while its leases still run, instead of
    waiting a whole round and serving past them."""
    hung = Hung(store, clock)
    fleet = Fleet(hung, clock)
    process = await fleet.start("a")  # renewed at 0: serves until 20 s; the leases run to 30 s
    clock.advance(LEASE * 2 / 3 - 0.05)
    assert process.healthy
    hung.hung = True
    await process.tick()
    assert fleet.serving() == {"a": set()}
    assert clock.monotonic() < LEASE


async def test_a_process_cut_off_from_the_database_stops_serving_before_its_leases_can_run_out(store, clock):
    flaky = Flaky(store)
    fleet = Fleet(flaky, clock)
    process = await fleet.start("a")
    assert fleet.serving() == {"a": {0, 1, 2}}
    assert process.healthy
    flaky.down = True
    await fleet.rounds(1)  # one missed renewal: still within the lease, keeps serving
    assert fleet.serving() == {"a": {0, 1, 2}}
    await fleet.rounds(1)  # two: a third of the lease is left, the margin to close the shards
    assert fleet.serving() == {"a": set()}
    assert not process.healthy
    # The leases have not run out in the database yet, so nobody has taken the shards ...
    assert await store.holders() == {0: "a", 1: "a", 2: "a"}
    # ... and once the database answers again the process serves what is still its own.
    flaky.down = False
    await fleet.rounds(1)
    assert fleet.serving() == {"a": {0, 1, 2}}
    assert process.healthy


class Stubborn(Bot):
    """A bot whose next switch to `fail_on` fails once (closing a shard's socket raised)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_on: frozenset[int] | None = None

    async def serve(self, plan: ShardPlan) -> None:
        if plan.shard_ids == self.fail_on:
            self.fail_on = None
            raise RuntimeError("closing a shard failed")
        await super().serve(plan)


async def test_a_round_whose_bot_fails_to_switch_is_logged_and_the_rounds_go_on(
    store, clock, caplog: pytest.LogCaptureFixture
):
    flaky = Flaky(store)
    fleet = Fleet(flaky, clock)
    process = await fleet.start("a")
    bot = Stubborn()
    fleet.bots["a"], process._serve = bot, bot.serve
    bot.fail_on = frozenset()
    flaky.down = True
    await fleet.rounds(2)  # must stop serving: the first try fails, and the round tries once more
    assert bot.plans == [ShardPlan(3, frozenset())]
    assert "could not switch to serving shards none" in caplog.text
    flaky.down = False
    await fleet.rounds(1)
    assert bot.serving == {0, 1, 2}
    bot.fail_on = frozenset({0, 1})  # a newcomer: a must give a shard up, and fails to stop serving it
    await fleet.start("b")
    await fleet.rounds(1, "a")
    assert await store.holders() == {0: "a", 1: "a", 2: "a"}  # nothing released while b may serve them
    await fleet.rounds(1)  # the next round hands the same plan over again, then releases
    assert (fleet.serving(), await store.holders()) == ({"a": {0, 1}, "b": {2}}, {0: "a", 1: "a", 2: "b"})


async def test_a_process_back_from_an_outage_serves_only_what_nobody_took_over(store, clock):
    flaky = Flaky(store)
    fleet = Fleet(flaky, clock)
    await fleet.start("a")
    other = Fleet(store, clock)
    await other.start("b")
    await fleet.rounds(1)
    await other.rounds(0)
    assert (fleet.serving()["a"], other.serving()["b"]) == ({0, 1}, set())
    flaky.down = True
    for _ in range(4):  # past a's leases: b takes everything
        await fleet.rounds(1)
        await other.processes["b"].tick()
    assert other.serving()["b"] == {0, 1, 2}
    assert fleet.serving()["a"] == set()
    flaky.down = False
    await fleet.rounds(1)
    await other.processes["b"].tick()
    # a is back and gets its quota again through the normal hand-over, never a shard b still serves.
    await fleet.rounds(1)
    await other.processes["b"].tick()
    await fleet.rounds(1)
    assert disjoint([fleet.serving()["a"], other.serving()["b"]])
    assert fleet.serving()["a"] | other.serving()["b"] == {0, 1, 2}


async def test_a_process_with_another_shard_count_waits_until_the_old_fleet_is_gone(store, clock):
    fleet = Fleet(store, clock)
    old = await fleet.start("old")
    clock.advance(1)
    new = await fleet.start("new", shard_count=6)
    await fleet.rounds(2)
    assert fleet.serving() == {"old": {0, 1, 2}, "new": set()}
    await old.stop()
    del fleet.processes["old"]
    await fleet.rounds(1)
    assert new.plan == ShardPlan(6, frozenset(range(6)))  # from the old one's stop, not its leave
    await old.leave()


async def test_without_shard_count_a_process_follows_the_running_fleet(store, clock):
    fleet = Fleet(store, clock, shard_count=None)
    first = await fleet.start("a", recommended=2)
    assert first.plan == ShardPlan(2, frozenset({0, 1}))
    # Discord recommends 3 by the time the second process starts: it runs the fleet's 2 anyway.
    second = await fleet.start("b", recommended=3)
    await fleet.rounds(2)
    assert second.plan.shard_count == 2
    assert fleet.serving() == {"a": {0}, "b": {1}}


async def test_static_shards_serve_every_shard_until_stopped():
    bot = Bot()
    static = StaticShards(4)
    await static.start(bot.serve, recommended=1)
    assert bot.plans == [ShardPlan(4, frozenset({0, 1, 2, 3}))]
    await static.stop()
    assert bot.plans[-1] == ShardPlan(4, frozenset())


async def test_a_round_that_comes_too_late_stops_serving_first_then_serves_what_is_still_its_own(
    store, clock
):
    fleet = Fleet(store, clock)
    await fleet.start("a")
    clock.advance(LEASE * 2 / 3)  # the event loop was held up past the moment to stop serving
    await fleet.processes["a"].tick()
    assert [set(p.shard_ids) for p in fleet.bots["a"].plans] == [{0, 1, 2}, set(), {0, 1, 2}]


async def test_the_next_round_comes_when_a_silent_process_lease_runs_out(store, clock):
    fleet = Fleet(store, clock)
    await fleet.start("a")
    await fleet.start("b")
    await fleet.rounds(1)
    a = fleet.processes["a"]
    assert a.next_round == LEASE / 3  # b renews: nothing runs out before the regular round
    await fleet.rounds(2, "a")  # b is silent from here on: its lease runs out at 40 s
    assert a.next_round == LEASE / 3
    clock.advance(5)
    await a.tick()
    assert a.next_round == pytest.approx(5 + 0.1)  # 5 s from now, sooner than the regular round
    clock.advance(a.next_round)
    await a.tick()
    assert fleet.serving()["a"] == {0, 1, 2}


async def listening(pool: Any, channel: str) -> None:
    """Until one of `pool`'s sessions (its application_name: this test's alone, whatever else runs on
    the server) LISTENs on `channel`; a notification sent before that is missed."""
    for _ in range(200):
        sessions = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = current_setting("
            "'application_name') AND query = $1",
            f'LISTEN "{channel}"',
        )
        if sessions:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"nobody listens on {channel}")


async def test_a_process_joining_or_leaving_is_counted_by_the_others_at_once_not_at_their_next_round(
    pool_on: PoolOn, clock: Clock
):
    import secrets

    from bot.storage.postgres import PostgresDatabase
    from bot.storage.shard_leases import FLEET_CHANNEL

    pg_pool = await pool_on(server_settings={"application_name": f"retouch-test-{secrets.token_hex(4)}"})

    db = PostgresDatabase(pg_pool)  # its `listen`, as `python -m bot` wires it
    store = ShardLeases(pg_pool, lease=dt.timedelta(seconds=LEASE), clock=clock, listen=db.listen)
    heard: dict[str, list[FleetPlace]] = {"a": [], "b": []}

    def coordinator(name: str) -> ShardCoordinator:
        return ShardCoordinator(
            store,
            lease_seconds=LEASE,
            shard_count=3,
            owner=name,
            settle_seconds=0,
            monotonic=clock.monotonic,
            on_fleet=heard[name].append,
            hear_changes=store.hear_changes,
        )

    a, b = coordinator("a"), coordinator("b")
    try:
        await a.join(recommended=3)
        await listening(pg_pool, FLEET_CHANNEL)
        assert heard["a"] == [here(1, 0)]
        # No round runs and the clock stands still: only the notification can tell a.
        await b.join(recommended=3)
        assert heard["b"] == [here(2, 1)]
        await until_heard(heard["a"], here(2, 0))
        # A round's renewal of a process already counted tells nobody.
        await b.tick()
        await asyncio.sleep(0.2)
        assert heard["a"] == [here(1, 0), here(2, 0)]
        await b.leave()
        await until_heard(heard["a"], here(1, 0))
        assert heard["a"] == [here(1, 0), here(2, 0), here(1, 0)]
    finally:
        await a.leave()
        await db.close()


async def until_heard(places: list[FleetPlace], wanted: FleetPlace, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Until the last place heard is `wanted`; no round runs meanwhile, so only a notification can do it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not places or places[-1] != wanted:
        if loop.time() > deadline:
            raise TimeoutError(f"heard {places}, never {wanted}")
        await asyncio.sleep(0.01)


class Hearing:
    """Processes over one lease store that hear each other's notices, as `python -m bot` wires them, each
    running its rounds in the background as in production. Their lease is so long that no regular round
    comes during a test: only a notice can bring one."""

    LEASE = 3600.0

    def __init__(self, pool: Any, clock: Clock) -> None:
        from bot.storage.postgres import PostgresDatabase

        self.pool, self.clock = pool, clock
        self.db = PostgresDatabase(pool)
        lease = dt.timedelta(seconds=self.LEASE)
        self.store = ShardLeases(pool, lease=lease, clock=clock, listen=self.db.listen)
        self.bots: dict[str, Bot] = {}
        self.processes: dict[str, ShardCoordinator] = {}

    @classmethod
    async def on(cls, pool_on: PoolOn, clock: Clock) -> Hearing:
        import secrets

        return cls(
            await pool_on(server_settings={"application_name": f"retouch-test-{secrets.token_hex(4)}"}), clock
        )

    def process(self, name: str) -> ShardCoordinator:
        self.bots[name] = Bot()
        self.processes[name] = ShardCoordinator(
            self.store,
            lease_seconds=self.LEASE,
            shard_count=3,
            owner=name,
            settle_seconds=0,
            monotonic=self.clock.monotonic,
            on_fleet=lambda place: None,  # the provider limits' part, as in production
            hear_changes=self.store.hear_changes,
        )
        return self.processes[name]

    async def start(self, name: str) -> ShardCoordinator:
        """What the bot does at start: join, a first round, then the rounds in the background."""
        from bot.storage.shard_leases import FLEET_CHANNEL

        process = self.processes.get(name) or self.process(name)
        await process.start(self.bots[name].serve, recommended=3)
        await listening(self.pool, FLEET_CHANNEL)
        return process

    def serving(self) -> dict[str, set[int]]:
        return {name: set(bot.serving) for name, bot in self.bots.items()}

    async def close(self) -> None:
        for process in self.processes.values():
            await process.stop()
            await process.leave()
        await self.db.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Until `condition()` holds; in a `Hearing` fleet only a notice can make it hold."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError("never came")
        await asyncio.sleep(0.01)


async def test_a_newcomer_gets_its_share_as_it_starts_not_at_the_others_next_round(
    pool_on: PoolOn, clock: Clock
):
    fleet = await Hearing.on(pool_on, clock)
    try:
        await fleet.start("a")
        assert fleet.serving() == {"a": {0, 1, 2}}
        # b joins (before its jobs start) but is not serving yet: a keeps every shard, nothing unserved.
        await fleet.process("b").join(recommended=3)
        await asyncio.sleep(0.3)
        assert fleet.serving() == {"a": {0, 1, 2}, "b": set()}
        # b's first round finds nothing free and asks: a sheds its surplus at once, and b claims it.
        await fleet.start("b")
        await until(lambda: fleet.serving() == {"a": {0, 1}, "b": {2}})
    finally:
        await fleet.close()


async def test_a_clean_stops_shards_are_served_by_the_others_at_once_not_at_their_next_round(
    pool_on: PoolOn, clock: Clock
):
    fleet = await Hearing.on(pool_on, clock)
    try:
        await fleet.start("a")
        b = await fleet.start("b")
        await until(lambda: fleet.serving() == {"a": {0, 1}, "b": {2}})
        await b.stop()  # SIGTERM on b (a rolling restart): it stops serving, its shards are free
        assert fleet.serving()["b"] == set()
        await until(lambda: fleet.serving()["a"] == {0, 1, 2})
    finally:
        await fleet.close()


async def test_a_flood_of_notices_brings_one_round_not_one_each(pool_on: PoolOn, clock: Clock):
    from bot.storage.shard_leases import FLEET_CHANNEL, NOTIFY_FLEET, SHARDS_MOVED

    fleet = await Hearing.on(pool_on, clock)
    try:
        a = await fleet.start("a")
        rounds: list[float] = []
        tick = a.tick

        async def counted() -> None:
            rounds.append(clock.monotonic())
            await tick()

        a.tick = counted  # type: ignore[method-assign]
        async with fleet.pool.acquire() as conn, conn.transaction():
            for i in range(50):
                await conn.execute(NOTIFY_FLEET, FLEET_CHANNEL, f"{SHARDS_MOVED}other-{i}")
        await until(lambda: rounds)
        await asyncio.sleep(0.5)
        assert len(rounds) <= 2
    finally:
        await fleet.close()


# -- the fleet's clocks -----------------------------------------------------------------------------


def test_each_process_hears_its_clocks_distance_from_the_fleets_median():
    owners = [ShardOwner("a", 3, clock_ahead=0.2), ShardOwner("b", 3, clock_ahead=-0.1)]
    owners.append(ShardOwner("fast", 3, clock_ahead=60.2))
    assert place_in(owners, "fast").clock_apart == pytest.approx(
        60.0
    )  # one wrong clock among three: that one
    assert place_in(owners, "a").clock_apart == pytest.approx(0.0) and place_in(
        owners, "b"
    ).clock_apart == pytest.approx(0.3)
    # Two that disagree: neither can tell which is right, so both are half the gap away.
    pair = owners[1:]
    assert (place_in(pair, "b").clock_apart, place_in(pair, "fast").clock_apart) == (
        pytest.approx(30.15),
        pytest.approx(30.15),
    )
    # A process that has not said (an older release) is left out; one not listed is not apart.
    old = [*owners, ShardOwner("old", 3)]
    assert (
        place_in(old, "fast").clock_apart == pytest.approx(60.0) and place_in(old, "old").clock_apart == 0.0
    )
    assert place_in(owners, "gone").clock_apart == 0.0
    # Every process hears everyone's, so the others can leave a wrong clock's jobs alone.
    assert clocks_apart(old) == {
        "a": pytest.approx(0.0),
        "b": pytest.approx(0.3),
        "fast": pytest.approx(60.0),
    }
    assert place_in(old, "a").clocks_apart == clocks_apart(old)
    assert clocks_apart([ShardOwner("old", 3)]) == {}


async def test_each_process_records_how_far_its_clock_is_ahead_of_the_databases(pg_pool, clock):
    """Measured against the database's own clock, not the injected one, so a host whose clock is a
    minute ahead of the others' shows it, and every process sees it."""
    lease = dt.timedelta(seconds=LEASE)
    ahead = dt.timedelta(seconds=60)
    store = ShardLeases(pg_pool, lease=lease, clock=clock)
    fast = ShardLeases(pg_pool, lease=lease, clock=clock, host_clock=lambda: dt.datetime.now(dt.UTC) + ahead)
    await store.prepare()
    await store.join("a", 3)
    await store.join("b", 3)
    fleet = await fast.join("fast", 3)
    seen = {o.name: o.clock_ahead for o in fleet.owners}
    # Relative to each other, not to the database: under faketime every clock here is off by as much.
    assert seen["fast"] - seen["a"] == pytest.approx(60.0, abs=SAME_HOST_SECONDS)
    assert seen["b"] - seen["a"] == pytest.approx(0.0, abs=SAME_HOST_SECONDS)
    assert place_in(fleet.owners, "fast").clock_apart == pytest.approx(60.0, abs=SAME_HOST_SECONDS)
    assert place_in(fleet.owners, "a").clocks_apart["fast"] == pytest.approx(60.0, abs=SAME_HOST_SECONDS)
    assert place_in(await store.live_owners(), "a") == here(3, 0)
    # Its clock is put right: the next time it says it is alive, the record follows.
    fast._host_clock = lambda: dt.datetime.now(dt.UTC)
    fleet = await fast.join("fast", 3)
    assert place_in(fleet.owners, "fast") == here(3, 2)


async def test_a_cancel_landing_as_a_shard_rounds_call_ends_still_cancels() -> None:
    """`stop` cancels the shard loop and waits for it. Each call of a round was bounded with
    `asyncio.wait_for`, which on Python 3.11 returns the result of a call that finished as the cancel
    landed: the loop ran on and the stop (a shutdown) waited for it for ever (seen once in CI)."""
    process = ShardCoordinator(cast(Any, object()), lease_seconds=LEASE, shard_count=1, owner="a")
    call: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(process._within(call))
    for _ in range(2):
        await asyncio.sleep(0)  # the round is waiting for its call
    call.set_result(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
