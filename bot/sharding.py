"""Which Discord gateway shards this process serves: all of them, or its share among several processes.

With PostgreSQL, every process runs a `ShardCoordinator` over the lease tables
(bot/storage/shard_leases.py). Each round — one every third of the lease (`SHARD_LEASE_SECONDS`), one as
soon as another process's lease runs out, and one as soon as another frees shards or asks for some — it
says it is alive, renews the leases it holds, works out its quota, sheds or claims shards to reach it,
and hands the bot the shard ids to serve (`ShardPlan`). The bot (bot/client.py) connects and disconnects
shards to match.

The quota, and why it does not flap: the live processes running the fleet's shard count, oldest first;
with N shards and P of them, the first N mod P get ceil(N/P) shards and the others floor(N/P). Quotas add
up to N and change only when a process joins or dies, and only a process above its quota gives shards
up, so a steady set of processes never moves a shard. A newcomer is the youngest: its first round finds
nothing free and asks the others for shards, a process above its quota sheds its surplus at once, and
its release wakes the newcomer to claim it; until then the shards are served where they were. A stopping
process's shards are free at once and claimed by the others in the round their release wakes. A dead
process's shards are claimed by the others the moment its leases run out: one lease after its last
renewal.

Two processes never serve one shard: a shard changes hands only in the database, one statement at a
time, and a process stops serving a shard *before* it releases it. A process that cannot reach the
database stops serving every shard `SAFETY_MARGIN` (a third of the lease) before its leases can have
run out, and serves again what the database still says is its own once it can renew.

The fleet's shard count is the oldest live process's: `SHARD_COUNT`, or when that is 0, Discord's
recommended count as the first process read it (later processes adopt the fleet's). A process
configured with another SHARD_COUNT serves nothing (and says so) until the last process with the old
count has stopped, so a new count takes effect when every process has restarted with it.

The same rounds count the fleet for the provider limits (`on_fleet`, a `FleetPlace`): every live process
calls the providers with the same accounts, so each takes its part of their ceilings (bot/concurrency.py),
the remainder going to the first processes in name order (`rank`: a name never changes, and a process
that starts leaving keeps its place, so only a join or a departure moves anyone). A process is counted
from before it runs any job — it `join`s before the job engine starts (bot/app.py `start_services`),
before the gateway connects — to after its last provider call: a stop first gives every shard up at once
(`stop`, so the others serve its servers during its drain) but the process stays counted, marked
leaving, until its jobs have finished or been handed back (`leave`); a give-up the database refused is
tried again each round of the drain. A round that fails (the database, or the bot switching shards) is
logged and the next one tries again: the rounds never end before the process does. A process serving
no shard (more processes than shards, or one waiting for another shard count) counts as well: it still
runs jobs.
A process that joins or leaves also says so through PostgreSQL's NOTIFY, and every other process then
counts the fleet at once (`_recount`) instead of at its next round: a newcomer takes its part of the
ceilings at once, and the others shrink theirs within milliseconds (a lost notification: a round). So
does one that frees shards (a stop, a surplus given up) or is short of its quota, and every other
process then runs a round at once (`_wake`; a lost notification: the next regular round). A join alone
wakes nobody: the newcomer may still be starting (its recovery, the gateway's login), and shards shed for
it then would go unserved until its first round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import statistics
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from bot.storage.shard_leases import Fleet, ShardOwner, fleet_notice
from bot.tasks import Again, within, woken

log = logging.getLogger(__name__)
T = TypeVar("T")

# Rounds per lease: a lease outlives two missed rounds, and the third third is the margin below.
ROUNDS_PER_LEASE = 3
# A round due because another process's lease runs out comes this long after it, so that the lease has
# run out by the database's clock too; and never sooner than this after the previous round. A round due
# because another process freed shards (or wants some) comes this long after the notice, which gathers
# the notices sent with it: a flood of them brings one round per this time at most.
EXPIRY_SLACK_SECONDS = 0.1
# Processes started together (`docker compose up --scale retouch=3`) first all say they are alive, then
# claim: without this pause the first one would claim every shard and hand most of them back a round
# later, each hand-over costing a gateway reconnect.
JOIN_SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class ShardPlan:
    """The shards one process serves, out of `shard_count`."""

    shard_count: int
    shard_ids: frozenset[int]


@dataclass(frozen=True)
class FleetPlace:
    """What a round tells `on_fleet`: how many processes are live (this one included, leaving ones too),
    this process's index among their names sorted, which every process computes alike (None: this
    process is not among them), and how many seconds its clock is from the fleet's (`clock_apart`)."""

    processes: int
    rank: int | None
    clock_apart: float = 0.0
    # The same for every live process whose clock is known, by name (its jobs' leases are read by that
    # clock). Not part of the place: two places are equal when they put this process alike.
    clocks_apart: Mapping[str, float] = field(default_factory=dict, compare=False)


def place_in(owners: Sequence[ShardOwner], me: str) -> FleetPlace:
    """`me`'s place among the live `owners`."""
    names = sorted(o.name for o in owners)
    apart = clocks_apart(owners)
    return FleetPlace(len(names), names.index(me) if me in names else None, apart.get(me, 0.0), apart)


def clocks_apart(owners: Sequence[ShardOwner]) -> dict[str, float]:
    """Seconds between each process's clock and the median of the fleet's (each measured against the
    database's clock, so their differences are the processes' own), by name; a process whose clock is
    unknown is left out. The median, so one wrong clock among three is the one that is far; of two
    that disagree, both are, by half."""
    aheads = {o.name: o.clock_ahead for o in owners if o.clock_ahead is not None}
    if not aheads:
        return {}
    middle = statistics.median(aheads.values())
    return {name: abs(ahead - middle) for name, ahead in aheads.items()}


# Awaited until every shard left out of the plan has stopped being served (it may then be given to
# another process); shards new to the plan may keep connecting in the background.
Serve = Callable[[ShardPlan], Awaitable[None]]


class LeaseStore(Protocol):
    """What the coordinator needs from the lease tables (bot.storage.shard_leases.ShardLeases)."""

    async def prepare(self) -> None: ...
    async def live_owners(self) -> list[ShardOwner]: ...
    async def join(self, owner: str, shard_count: int) -> Fleet: ...
    async def renew(self, owner: str) -> frozenset[int]: ...
    async def claim(self, owner: str, shard_count: int, limit: int) -> frozenset[int]: ...
    async def release(self, owner: str, shard_ids: Collection[int]) -> None: ...
    async def retire(self, owner: str) -> None: ...
    async def ask_for_shards(self, owner: str) -> None: ...
    async def leave(self, owner: str) -> None: ...


class ShardSharing(Protocol):
    """What the bot asks of a shard source: join the fleet (before any job runs), start serving, ask
    whether it is healthy, stop serving (before the drain), leave the fleet (after it). `shared`: other
    processes take the shards over when this one stops."""

    shared: bool

    @property
    def healthy(self) -> bool: ...

    async def join(self, *, recommended: int) -> None: ...
    async def start(self, serve: Serve, *, recommended: int) -> None: ...
    async def stop(self) -> None: ...
    async def leave(self) -> None: ...


def staying(owners: Sequence[ShardOwner]) -> list[ShardOwner]:
    """The live processes that serve shards: all but those leaving (oldest first)."""
    return [o for o in owners if not o.leaving]


def quota(owners: Sequence[ShardOwner], me: str, shard_count: int) -> int:
    """How many shards `me` should hold among the live `owners` (oldest first); 0 while the fleet runs
    another shard count than `shard_count`, and for a process that is leaving."""
    owners = staying(owners)
    if not owners or owners[0].shard_count != shard_count:
        return 0
    peers = [o.name for o in owners if o.shard_count == shard_count]
    if me not in peers:
        return 0
    base, extra = divmod(shard_count, len(peers))
    return base + (1 if peers.index(me) < extra else 0)


def process_name() -> str:
    """A name no other process has, and that says where it runs (the container id under Docker)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class StaticShards:
    """One process, every shard (SQLite, `SHARD_COUNT` > 0): no database, nothing to renew."""

    shared = False

    def __init__(self, shard_count: int) -> None:
        self.shard_count = shard_count
        self._serve: Serve | None = None

    @property
    def healthy(self) -> bool:
        return True

    async def join(self, *, recommended: int) -> None:
        """Nothing to join: this process is the whole fleet."""

    async def leave(self) -> None:
        """Nothing to leave."""

    async def start(self, serve: Serve, *, recommended: int) -> None:
        self._serve = serve
        await serve(ShardPlan(self.shard_count, frozenset(range(self.shard_count))))

    async def stop(self) -> None:
        if self._serve is not None:
            serve, self._serve = self._serve, None
            await serve(ShardPlan(self.shard_count, frozenset()))


class ShardCoordinator:
    """This process's share of the shards, kept by leases in PostgreSQL (see the module docstring).

    `shard_count` None: the fleet's count, or Discord's recommended count for the first process.
    `monotonic` measures how long ago the leases were last renewed (injectable for tests); `on_fleet` hears
    the number of live processes and this one's place among them after every round.
    """

    shared = True

    def __init__(
        self,
        store: LeaseStore,
        *,
        lease_seconds: float,
        shard_count: int | None = None,
        owner: str | None = None,
        settle_seconds: float = JOIN_SETTLE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        on_fleet: Callable[[FleetPlace], None] | None = None,
        hear_changes: Callable[[Callable[[str], None]], bool] | None = None,
    ) -> None:
        self.store = store
        self.owner = owner or process_name()
        self.lease_seconds = lease_seconds
        self.interval = lease_seconds / ROUNDS_PER_LEASE
        self.configured_count = shard_count
        self.settle_seconds = settle_seconds
        self._monotonic = monotonic
        # Told how many processes are alive, and this one's place, after every round (the provider
        # limits are split by them).
        self.on_fleet = on_fleet
        # `ShardLeases.hear_changes`: told when another process joins or leaves, this one recounts the
        # fleet at once (`_recount`), not at its next round; told that shards were freed or are wanted,
        # it runs a round at once (`_wake`). Set to None once listening.
        self._hear_changes = hear_changes
        self._recount: Again | None = None
        self._wake = asyncio.Event()
        self._asked = False  # short of its quota, and the others were told (`_ask_if_short`)
        self.plan = ShardPlan(shard_count or 0, frozenset())
        self._serve: Serve | None = None
        self._renewed_at = -math.inf
        self.next_round = self.interval
        self._task: asyncio.Task[None] | None = None
        self._standby_logged = False
        self._joined = False
        self._leaving = False  # stopped serving; still counted until `leave`
        self._serving_unsure = False  # the bot failed to switch to `plan` (see `_apply`)
        self._retired = False  # the database has this process marked leaving, its shards free

    @property
    def healthy(self) -> bool:
        """The leases were renewed recently enough that what this process serves is its own."""
        return self._monotonic() < self._serve_until()

    def _serve_until(self) -> float:
        # Leases run out one lease after the round that renewed them started (the database dates them
        # later than that); a third of a lease before, this process stops serving, which leaves it that
        # long to close its shards before another process may claim them.
        return self._renewed_at + self.lease_seconds - self.interval

    async def join(self, *, recommended: int) -> None:
        """Say this process is alive, so the others count it and it counts them (`on_fleet`), before it
        runs any job; serves nothing yet. `recommended`: Discord's recommended shard count, used when
        neither SHARD_COUNT nor a running fleet sets one. Never raises for the database (the rounds
        after `start` try again)."""
        if self._joined:
            return
        try:
            await self._within(self.store.prepare())
            if self.configured_count is None:
                running = await self._within(self.store.live_owners())
                count = running[0].shard_count if running else recommended
                self.plan = ShardPlan(count, frozenset())
            fleet = await self._within(self.store.join(self.owner, self.plan.shard_count))
        except Exception as exc:  # the database is down: the background rounds keep trying
            log.warning("shard leases: could not join yet (%s); retrying", type(exc).__name__)
            if not self.plan.shard_count:
                self.plan = ShardPlan(recommended, frozenset())
            return
        self._joined = True
        self._tell_fleet(fleet.owners)

    async def start(self, serve: Serve, *, recommended: int) -> None:
        """Join (unless `join` did), claim a first share, and keep renewing in the background until
        `stop`. Never raises for the database: a failed round is retried on the next one."""
        self._serve = serve
        await self._first_rounds(recommended)
        self._task = asyncio.create_task(self._run(), name="retouch-shard-leases")

    async def _first_rounds(self, recommended: int) -> None:
        await self.join(recommended=recommended)
        if not self._joined:
            return
        await asyncio.sleep(self.settle_seconds)
        await self.tick()

    def _tell_fleet(self, owners: Sequence[ShardOwner]) -> None:
        self._listen_for_changes()
        if self.on_fleet is not None:
            self.on_fleet(place_in(owners, self.owner))

    def _listen_for_changes(self) -> None:
        """From the first time this process is counted: recount whenever another joins or leaves. A
        newcomer takes its part of the provider ceilings at once, so until the others have shrunk
        theirs the fleet is over the ceilings; this makes that milliseconds instead of a round. And run
        a round whenever another frees shards or is short of its own: a stop's shards are served again,
        and a newcomer has its share, within milliseconds instead of at the next regular round."""
        hear, self._hear_changes = self._hear_changes, None
        if hear is not None:
            self._recount = Again(self._count_fleet, "shard leases: counting the fleet at once")
            hear(self._fleet_changed)

    def _fleet_changed(self, payload: str) -> None:
        name, shards_moved = fleet_notice(payload)
        if name == self.owner or not self._joined:
            return
        if shards_moved:
            if not self._leaving:  # a leaving process claims nothing
                self._wake.set()
        elif self._recount is not None and self.on_fleet is not None:
            self._recount.ask()

    async def _count_fleet(self) -> None:
        owners = await self._within(self.store.live_owners())
        if self._joined:  # not after `leave`: a departed process no longer takes a part
            self._tell_fleet(owners)

    async def _run(self) -> None:
        while True:
            if await woken(self._wake, self.next_round):
                await asyncio.sleep(EXPIRY_SLACK_SECONDS)  # woken: gather the notices sent with this one
            await self.tick()

    async def tick(self) -> None:
        """One round: renew, rebalance, tell the bot (while draining: `_drain_round`). Never raises, so
        the rounds go on: a failure (the database's, or the bot's while it switches shards) is logged and
        the next round tries again; after enough of them the bot is told to serve nothing (see
        `_serve_until`)."""
        started = self._monotonic()
        self._wake.clear()  # what the notices heard until now said, this round reads
        try:
            if self._leaving:
                await self._drain_round()
                return
            # A round that comes too late (the event loop was held up) first stops serving: the leases may
            # be about to run out. The round itself then gives back whatever is still this process's own.
            await self._stop_if_unsafe()
            await self._round(started)
        except Exception as exc:  # every failure of the database counts as a missed renewal
            log.warning("shard leases: round failed (%s); the next one tries again", type(exc).__name__)
            with contextlib.suppress(Exception):  # `_apply` logged it; the next round tries again
                await self._stop_if_unsafe()

    async def _stop_if_unsafe(self) -> None:
        if (self.plan.shard_ids or self._serving_unsure) and not self.healthy:
            log.error(
                "stopped serving shards %s: their leases were not renewed for %.0f s, so another process "
                "may take them over",
                _ids(self.plan.shard_ids),
                self._monotonic() - self._renewed_at,
            )
            await self._apply(frozenset())

    async def _round(self, started: float) -> None:
        count = self.plan.shard_count
        fleet = await self._within(self.store.join(self.owner, count), deadline=True)
        held = await self._within(self.store.renew(self.owner), deadline=True)
        self._renewed_at = started
        self._joined = True
        owners = fleet.owners
        self._tell_fleet(owners)
        # Live processes renew long before their leases run out, so only a dead one's lease ends before
        # the next regular round: its shards are claimed right then, one lease after its last renewal.
        soon = self.interval if fleet.next_expiry is None else fleet.next_expiry + EXPIRY_SLACK_SECONDS
        self.next_round = max(EXPIRY_SLACK_SECONDS, min(self.interval, soon))
        count = self._adopt_fleet_count(owners, held)
        want = quota(owners, self.owner, count)
        self._say_if_standby(owners, count)
        surplus = frozenset(sorted(held)[want:])
        held -= surplus
        # Lost shards (claimed by another process while this one could not renew) and surplus ones stop
        # being served here, before the surplus is released for anyone else to claim.
        await self._apply(held)
        if surplus:
            await self._within(self.store.release(self.owner, surplus))
            log.info("shard leases: gave up shards %s (quota %d of %d)", _ids(surplus), want, count)
        elif len(held) < want:
            got = await self._within(self.store.claim(self.owner, count, want - len(held)))
            if got:
                log.info("shard leases: claimed shards %s (quota %d of %d)", _ids(got), want, count)
                held |= got
                await self._apply(held)
        await self._ask_if_short(len(held) < want)

    async def _ask_if_short(self, short: bool) -> None:
        """Short of its quota (a newcomer, or back from an outage), this process tells the others once,
        so one holding a surplus gives it up now rather than at its next regular round (its release then
        wakes this one to claim it). Once per shortage, so two short processes never wake each other."""
        if short and not self._asked:
            await self._within(self.store.ask_for_shards(self.owner))
        self._asked = short

    def _adopt_fleet_count(self, owners: Sequence[ShardOwner], held: frozenset[int]) -> int:
        """Without SHARD_COUNT, a process holding nothing follows the fleet's count (two processes that
        started together may have read different recommendations from Discord)."""
        owners = staying(owners)
        fleet = owners[0].shard_count if owners else self.plan.shard_count
        if self.configured_count is None and not held and fleet != self.plan.shard_count:
            log.info("shard leases: running %d shards, like the other processes", fleet)
            self.plan = ShardPlan(fleet, frozenset())
        return self.plan.shard_count

    def _say_if_standby(self, owners: Sequence[ShardOwner], count: int) -> None:
        owners = staying(owners)
        fleet = owners[0].shard_count if owners else count
        standby = fleet != count
        if standby and not self._standby_logged:
            log.warning(
                "SHARD_COUNT=%d but the running processes use %d shards: this process serves none until "
                "they have all stopped (restart every process to change the shard count)",
                count,
                fleet,
            )
        self._standby_logged = standby

    async def _apply(self, shard_ids: frozenset[int]) -> None:
        plan = ShardPlan(self.plan.shard_count, shard_ids)
        if plan != self.plan or self._serving_unsure:
            self.plan = plan
            if self._serve is not None:
                # Until the bot has switched, it may serve shards of either plan: a failure here stops the
                # round (nothing is released), and the next plan is handed over even if it is this one.
                self._serving_unsure = True
                try:
                    await self._serve(plan)
                except Exception:
                    log.exception("could not switch to serving shards %s", _ids(shard_ids))
                    raise
                self._serving_unsure = False

    async def _within(self, call: Awaitable[T], *, deadline: bool = False) -> T:
        """`call`, given at most one round; with `deadline`, also no later than the moment this process
        must stop serving, so a hung database cannot keep it serving past its leases."""
        timeout = self.interval
        if deadline and self.plan.shard_ids:
            timeout = max(0.0, min(timeout, self._serve_until() - self._monotonic()))
        return await within(call, timeout)

    async def stop(self) -> None:
        """A clean stop begins: stop serving, then free every shard at once for the other processes.
        This process still counts (marked leaving, renewed each round) until `leave`: its jobs are
        still draining, and the others must not take its part of the provider ceilings before."""
        await self._stop_task()
        await self._apply(frozenset())
        self._serve = None
        if self._leaving or not self._joined:
            return
        self._leaving = True
        self.next_round = self.interval
        try:
            await self._retire()
        except Exception as exc:  # `_drain_round` tries again
            log.warning("shard leases not released (%s); retrying each round", type(exc).__name__)
        self._task = asyncio.create_task(self._run(), name="retouch-shard-leaving")

    async def _retire(self) -> None:
        await self._within(self.store.retire(self.owner))
        self._retired = True
        log.info("shard leases released; counted among the processes until the drain ends")

    async def _drain_round(self) -> None:
        """While draining: say this process is alive (it serves nothing) and hear the fleet. Until the
        database has it marked leaving, also retire: counted as staying, it would keep its quota, and no
        other process would take its shards over for the whole drain."""
        self.next_round = self.interval
        fleet = await self._within(self.store.join(self.owner, self.plan.shard_count))
        if not self._retired:
            await self._retire()
        self._tell_fleet(fleet.owners)

    async def leave(self) -> None:
        """The drain is over (no provider call of this process is left): stop counting in the fleet."""
        await self._stop_task()
        if not self._joined:
            return
        self._joined = False
        if self._recount is not None:
            await self._recount.stop()
        try:
            await self._within(self.store.leave(self.owner))
        except Exception as exc:  # its row runs out by itself within one lease
            log.warning(
                "shard leases: could not leave the fleet (%s); counted for up to %.0f s more",
                type(exc).__name__,
                self.lease_seconds,
            )
        else:
            log.info("left the fleet")

    async def _stop_task(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _ids(shard_ids: Collection[int]) -> str:
    return ",".join(str(i) for i in sorted(shard_ids)) or "none"
