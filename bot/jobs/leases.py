"""Job leases: with PostgreSQL any process can run any job, and a dead process's jobs are taken over.

Part of `JobEngine` (a mixin over `EngineCore`). Every job row names the process that runs it (`owner`)
and until when (`lease_expires_at`, the storage clock). The process that creates a job owns it. Every
third of JOB_LEASE_SECONDS a process renews, in one statement, the leases of every job it holds; a job
missing from the answer was claimed by another process while this one could not renew, and is dropped
here without a word or a ledger movement (its new owner settles it). In the same round a process claims
live jobs whose lease ran out (`Jobs.claim_jobs`: one statement, `FOR UPDATE SKIP LOCKED` on
PostgreSQL, so concurrent claimers each get different jobs) and resumes them through the start-up
recovery's own code (`JobRecovery._adopt`): queued jobs keep their place, submitted ones are polled and
never sent again, completed ones are delivered once, and calls whose outcome is unknown are released.
A round claims only its share (`claim_share`): the claimable jobs split evenly among the live processes
(as the shard leases count them, `share_with`), and no more than this process has room to run, so the
survivors of a dead process split its jobs instead of the first one to wake taking them all; at least
one, and the next round comes at once while any are left, so no job waits for a process with room.
A round comes early when another process's lease is about to run out, so a dead process's jobs move
one lease after its last renewal; a process that may not take jobs over (its clock, below, or a stop)
keeps to its third of a lease. A clean stop hands the jobs it does not finish back at once. Each round
also shares the providers' open circuits with the other processes (`CircuitBreaker.share`), and a circuit
that opens or closes here is shared at once (`_circuits_changed`), so every other process honours it from
its next round on rather than from the one after this process's next. The round also reads the model
routes' status again (`ModelLifecycle.refresh`): a route retired or brought back by another process
(a trial's answer, `/owner revive`) is so here from the next round on. A re-read of that small table
is simpler than a notification for what changes a few times a day, and a round is seconds.

A member's Cancel or Stop reaches the process serving their server's shard, which may not hold the
job. That process records the cancel on the job's row (`Jobs.request_cancel`) and tells the member when
it stops at the latest (`cancel_within`). The renewal statement brings it back to the holder (which
renews at once when the database's notification reaches it first: `_heard_cancel`), and the holder
cancels the job by the local cancel's own path (`_honour_cancel` → `JobEngine._halt`: the provider's
cancel call, the same charge or release, the same notice); a process that takes a job over with a
cancel recorded cancels it instead of resuming it. A request on a job that ended is not written.

Job leases are stamped with each process's own clock, so the fleet's clocks must agree: a clock ahead
would see live leases run out and take their jobs over. The shard leases measure every process's clock
against the database's (bot.storage.shard_leases) and tell each one how far it is from the fleet's
median (`hear_clock`). A process more than a twelfth of a lease away (`clock_bound`, at least a second)
takes over no job until its clock is back, and says so in its log and in `retouch_clock_apart_seconds`.
The other way round, a clock behind stamps leases that look run out to the rest while its process still
runs their jobs: every process leaves alone the jobs of a live process whose clock is that far off
(`clocks_off`, logged and counted in `retouch_fleet_clocks_off`), until it agrees again or dies (its
shard lease, on the database's clock, runs out and it leaves the fleet the shard leases report). So a
process reads only leases stamped by a clock at most two bounds, a sixth of a lease, from its own (of
two clocks that disagree each is half the gap from the median; among more, one ahead and one behind
can each be a bound away).

The margin, for a lease of L: a round stamps its leases until its start plus L, and the next round
starts a third of a lease after it ended. So the next renewal lands L/3 after the last plus a round's
duration (its renewal, the circuits, its claims) and the renewal statement's own, and finds 2L/3 less
those left; after one renewal that fails (a dropped connection), the one after finds L/3 less two
rounds' durations and a statement's. A claimer whose clock runs S ahead sees a lease run out S early,
and S is at most L/6: one failed renewal still leaves L/6 (5 s at the default 30 s) for those
durations, well under a second each unless the database is failing; none failed, L/2. Two failures in
a row leave nothing, as does a holder that stalls for half a lease: then its jobs move, which is what
leases are for. The bound was a sixth (two clocks up to L/3 apart), which left nothing after one failed
renewal: the clock ahead took over a job its holder still ran (a synchronous call released as cut off
while it ran, and billed). Under a 12 s lease the floor of a second (the measurement's own noise, a
statement's latency) is more than L/12, and under 6 s it leaves a failed renewal no margin. Takeover
time is unchanged: a dead process's jobs are claimed as soon as its lease runs out.

A process that lost a job cannot act on it: the writes that matter (the provider submit, the stored
result, the delivery record, the capture and the release) check `owner` in the same statement or
transaction and raise `LeaseLost` instead. With SQLite (one process) nothing is shared: start-up
takes every live job, as a restart always did, and there are no rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping

from bot.jobs.core import ActiveJob, EngineCore
from bot.jobs.model import db_time, parse_time
from bot.messages import TAKEN_OVER_ELSEWHERE
from bot.storage.jobs import CancelRequest, JobRow
from bot.tasks import Again, woken

log = logging.getLogger(__name__)

ROUNDS_PER_LEASE = 3
MIN_CLOCK_BOUND_SECONDS = 1.0
# Jobs claimed per round at most (the next round, due at once, takes more).
CLAIM_BATCH = 100


def claim_share(claimable: int, processes: int, room: int) -> int:
    """How many of `claimable` jobs one lease round claims: an even part for each of `processes` live
    processes (rounded up), no more than the `room` this process has to run them while the others may
    take the rest, and never fewer than one, so jobs are taken even while every process is busy."""
    even = math.ceil(claimable / max(1, processes))
    return max(1, min(CLAIM_BATCH, even, room))


# A round due because another process's lease runs out comes this long after it; never sooner.
EXPIRY_SLACK_SECONDS = 0.1
# What a member is promised for a cancel recorded for another process adds this to the lease wait:
# the round's own statements and the early round's slack.
CANCEL_SLACK_SECONDS = 1.0


class JobLeases(EngineCore):
    """JobEngine's leases: renew what this process runs, claim what a dead one left, hand back at stop."""

    def lease_until(self) -> str:
        """A lease taken or renewed now runs out at this storage-clock time."""
        return db_time(self.storage.now() + self.lease)

    def cancel_within(self, row: JobRow) -> int:
        """Seconds until a cancel recorded now for `row`'s holder has stopped the job, at the latest:
        a live holder sees it at its next lease round (a third of a lease); a dead one's job is taken
        over, and cancelled, once its lease runs out. Which of the two cannot be told from here."""
        interval = self.lease.total_seconds() / ROUNDS_PER_LEASE
        expires = parse_time(row.lease_expires_at) if row.owner else None
        left = (expires - self.storage.now()).total_seconds() if expires is not None else 0.0
        return math.ceil(max(interval, left) + CANCEL_SLACK_SECONDS)

    def held_jobs(self) -> set[str]:
        """The jobs this process runs, waits to run, will deliver again or still owes a release (their
        leases are renewed)."""
        return set(self._jobs) | set(self._redeliveries) | self._creating | set(self._owed)

    async def lease_round(self) -> dict[str, int]:
        """Renew this process's leases, drop the jobs it lost, then (shared database, still taking work)
        claim and resume jobs whose lease ran out. Returns what was taken over, as `recover` counts.
        The circuit breakers' open circuits are shared in the same round (bot.routing.breaker)."""
        await self.renew_leases()
        self._unclaimed = 0
        if self.shared:
            await self._share_circuits()
            await self._read_routes()
        if self.shared and self.accepting:
            return await self.take_over()
        return {}

    def clock_bound(self) -> float:
        """Seconds this process's clock may be from the fleet's and still take jobs over (above the
        measurement's own noise: a statement's latency): a quarter of what a lease has left after one
        failed renewal, so two clocks each at the bound take half of it, leaving the rounds' own
        durations the other half (the margin in the module's docstring)."""
        lease = self.lease.total_seconds()
        after_a_failed_renewal = lease - 2 * lease / ROUNDS_PER_LEASE
        return max(MIN_CLOCK_BOUND_SECONDS, after_a_failed_renewal / 4)

    def _clock_agrees(self) -> bool:
        """Whether this process's clock is known and near enough the fleet's to read other leases by."""
        return self.clock_heard and self.clock_apart <= self.clock_bound()

    def expect_clock(self) -> None:
        """Take nothing over until `hear_clock` first says how the fleet's clocks stand (a process that
        could not join the fleet at start-up knows nothing of the others' clocks yet)."""
        self.clock_heard = False

    def hear_clock(self, apart: float, others: Mapping[str, float] | None = None) -> None:
        """How far this process's clock is from the fleet's, and (`others`, by process name) how far
        every other live process's is, as the shard leases last measured them. Once this process may
        take jobs over again, its next lease round comes at once, not up to a third of a lease later
        (the rounds keep to their interval while it may not: `_until_next_round`)."""
        could = self._clock_agrees()
        self.clock_heard = True
        bound = self.clock_bound()
        self._hear_others(others or {}, bound)
        if (apart > bound) != (self.clock_apart > bound):
            if apart > bound:
                log.error(
                    "job leases: this host's clock is %.1f s from the other bot processes' (more than "
                    "%.0f s): taking over no jobs until the clocks agree (check NTP on every host)",
                    apart,
                    bound,
                )
            else:
                log.warning("job leases: this host's clock agrees with the fleet's again (%.1f s)", apart)
        self.clock_apart = apart
        if not could and self._clock_agrees():
            self._lease_wake.set()

    def _hear_others(self, others: Mapping[str, float], bound: float) -> None:
        """Leave alone the jobs of live processes whose clocks are off: a clock behind stamps leases
        that look run out here while its process still runs them. Once such a process dies, its shard
        lease (the database's clock) runs out, it leaves `others`, and its jobs are taken over."""
        off = frozenset(name for name, apart in others.items() if apart > bound and name != self.owner)
        for name in sorted(off - self.clocks_off):
            log.error(
                "job leases: process %s's clock is %.1f s from the other bot processes' (more than %.0f s):"
                " its jobs are not taken over while it runs (check NTP on its host)",
                name,
                others[name],
                bound,
            )
        for name in sorted(self.clocks_off - off):
            log.warning("job leases: process %s's clock agrees with the fleet's again, or it left", name)
        if self.clocks_off - off:  # its jobs, if it died, may be claimed now rather than at the next round
            self._lease_wake.set()
        self.clocks_off = off

    def share_with(self, processes: int) -> None:
        """`processes` live processes (this one included) share the database's jobs: a lease round
        claims an even part of what a dead process left (bot.sharding reports the fleet each round)."""
        self.fleet = max(1, processes)

    async def renew_leases(self) -> set[str]:
        """Extend the lease of every job held here; the ids another process took over (now dropped).
        The same statement brings back the cancels other processes recorded for these jobs, which
        are acted on here as a local cancel is (`_honour_cancel`)."""
        held = self.held_jobs()
        # A job being created may have no row yet when the statement runs, and be created by the time
        # its answer comes: one being created at either moment is not lost.
        creating = set(self._creating)
        renewal = await self.storage.jobs.renew_leases(self.owner, held, self.lease_until())
        lost = held - renewal.held - creating - self._creating
        for job_id in lost:
            self._lose(job_id)
        if lost:
            self._pump()
        for job_id, request in renewal.cancels.items():
            job = self._jobs.get(job_id)
            if job is not None:
                self._honour_cancel(job, request)
        return lost

    def _lose(self, job_id: str) -> None:
        """Another process runs `job_id` now: stop here without settling it. Its member hears only that
        it moved (on the progress message, which only this process can edit); the rest is the new
        holder's to tell."""
        log.warning("job %s: its lease here ran out and another process took it over; leaving it", job_id)
        handle = self._redeliveries.pop(job_id, None)
        if handle is not None:
            handle.cancel()
        job = self._jobs.get(job_id)
        if job is None:
            return
        if job_id in self._waiting:
            self._waiting.remove(job_id)
            self._jobs.pop(job_id, None)
            self._spawn(self._tell_live(job, TAKEN_OVER_ELSEWHERE))
            return
        job.abort_reason = "lost"  # a provider call in progress stops; its fenced writes would fail anyway
        job.abort.set()

    def _honour_cancel(self, job: ActiveJob, request: CancelRequest) -> None:
        """Cancel a job held here for a member whose click reached another process: the local cancel's
        own path (`JobEngine._halt`), told to the member as if they had clicked here. Once per job:
        every renewal brings the request back until the job has ended."""
        if job.cancel_seen or job.finishing:  # a result exists: it is posted, as after a late click
            return
        job.cancel_seen = True
        log.info("job %s: %s by %s through another process", job.id, request.reason, request.actor_id)
        if self._halt(job, request.reason, quiet=False):
            self._end_dequeued(job)

    async def take_over(self) -> dict[str, int]:
        """Claim this process's share of the live jobs whose lease ran out (a dead process's) and
        resume them as a restart does; never those of a live process whose clock is off (`clocks_off`).
        None while this process's own clock is too far from the fleet's, or not yet known
        (`expect_clock`): leases it sees as run out may be live."""
        if not self._clock_agrees():
            return {}
        self._claim_looked = self.storage.now()
        now, skip = db_time(self._claim_looked), self.clocks_off
        claimable = await self.storage.jobs.claimable_jobs(now, skip=skip)
        if not claimable:
            return await self._adopt([])
        processes = self.fleet or await self._count_fleet(now)
        limit = claim_share(claimable, processes, self._capacity() - len(self._jobs))
        rows = await self.storage.jobs.claim_jobs(self.owner, now, self.lease_until(), limit=limit, skip=skip)
        self._unclaimed = claimable - len(rows)
        counts = await self._adopt(rows)
        if rows:
            log.info(
                "job leases: took over %d of %d job(s) (%d processes): %s",
                len(rows),
                claimable,
                processes,
                ", ".join(f"{k} {v}" for k, v in counts.items() if v),
            )
        return counts

    async def _count_fleet(self, now: str) -> int:
        """Live processes when the shard leases have not said (`share_with`): this one and every other
        still holding a job's lease. An idle process holds none, so this may count too few, which
        only makes a round claim more."""
        return 1 + await self.storage.jobs.lease_holders(now, besides=self.owner)

    async def hand_back(self) -> int:
        """A clean stop: give up every live job not still running here, nor still being admitted (its
        credits being held: its lease runs out instead), for another process to claim at once (shared
        database only)."""
        if not self.shared:
            return 0
        handed = await self.storage.jobs.hand_back(self.owner, keep=self._running | self._creating)
        if handed:
            log.info("job leases: handed %d job(s) to the other processes", handed)
        return handed

    async def _share_circuits(self) -> None:
        # One exchange at a time: a round's and an early one must not interleave their reads and writes.
        async with self._circuits_lock:
            await self.router.breaker.share(self.storage.circuits)

    async def _read_routes(self) -> None:
        """The model routes another process retired or brought back (a trial's answer, `/owner revive`):
        the small `route_status` table read again. A failed read keeps this process's view till the next
        round; it must not cost the round its claims."""
        try:
            await self.lifecycle.refresh()
        except Exception as exc:
            log.warning("could not read the model routes' status again: %s", type(exc).__name__)

    def _circuits_changed(self) -> None:
        """A circuit opened or closed here: hand it to the other processes now, not at the next round."""
        if self._lease_task is not None and self._circuits_now is not None:
            self._circuits_now.ask()

    def _start_leases(self) -> None:
        if self.shared and self._lease_task is None:
            self._lease_task = asyncio.create_task(self._keep_leases(), name="retouch-job-leases")
            self._early_renewal = Again(self.renew_leases, "job leases: renewing at once")
            self._circuits_now = Again(self._share_circuits, "circuits: sharing at once")
            self.router.breaker.on_change = self._circuits_changed
            if not self._listening:
                self._listening = True
                self.storage.jobs.on_cancel_requested(self._heard_cancel)

    async def _stop_leases(self) -> None:
        self.router.breaker.on_change = None
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        for again in (self._early_renewal, self._circuits_now):
            if again is not None:
                await again.stop()
        self._lease_task = self._early_renewal = self._circuits_now = None

    def _heard_cancel(self, owner: str) -> None:
        """A cancel was just recorded for a job `owner` holds: when that is this process, renew now
        (the renewal brings the request back) rather than wait up to a third of a lease for the round."""
        if owner == self.owner and self._lease_task is not None and self._early_renewal is not None:
            self._early_renewal.ask()

    async def _keep_leases(self) -> None:
        interval = self.lease.total_seconds() / ROUNDS_PER_LEASE
        # Start-up recovery took only this process's share: the rest are claimed at once, not a third
        # of a lease later.
        wait = EXPIRY_SLACK_SECONDS if self._unclaimed > 0 else interval
        while True:
            await woken(self._lease_wake, wait)
            self._lease_wake.clear()
            wait = interval
            try:
                await self.lease_round()
                # Jobs left claimable (by this round's share, or handed back without a lease that
                # runs out) are claimed in the next round, at once.
                wait = await self._until_next_round(interval, busy=self._unclaimed > 0)
            except Exception as exc:  # the database is away: the leases run out, others take over
                log.warning("job leases not renewed (%s)", type(exc).__name__)

    async def _until_next_round(self, interval: float, *, busy: bool) -> float:
        """Seconds until the next round: a third of a lease, or just after another process's lease
        runs out (a live process renews long before), or at once while claimable jobs are left.

        Only a process that may claim comes early: one that takes nothing over (its clock off or not yet
        heard, or stopping) would find a lease that ran out still run out, round after round, every
        tenth of a second. Nor does a lease the last claim already saw run out (and left) bring a round
        at once: the next claim would leave it too. One that ran out since that claim looked does."""
        if busy:
            return EXPIRY_SLACK_SECONDS
        if not (self.accepting and self._clock_agrees()):
            return interval
        expiry = parse_time(await self.storage.jobs.next_lease_expiry(self.owner, skip=self.clocks_off))
        if expiry is None or (self._claim_looked is not None and expiry <= self._claim_looked):
            return interval
        due = (expiry - self.storage.now()).total_seconds() + EXPIRY_SLACK_SECONDS
        return max(EXPIRY_SLACK_SECONDS, min(interval, due))
