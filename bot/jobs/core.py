"""The state every part of `JobEngine` shares, one live job's process-local record, and the small
helpers (telling the user, observers, background tasks) the parts have in common.

`JobEngine` (bot.jobs.engine: the queue and the public API) is assembled from mixins that each own
one concern and all derive from `EngineCore`: the provider call (bot.jobs.running), the stored
result (bot.jobs.results), delivery (bot.jobs.delivery), endings and settlement (bot.jobs.endings),
and start-up, shutdown, recovery and the watchdog (bot.jobs.recovery). Mixins rather than
collaborator objects keep every method and attribute name of the former single class, so code
that reaches into the engine (tests, hooks) did not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bot.catalog import Catalog
from bot.concurrency import FairTurns, FeedbackThrottle
from bot.config import Settings
from bot.jobs.files import JobFiles
from bot.jobs.model import (
    Delivery,
    JobInfo,
    JobObserver,
    JobState,
    JobStatus,
    LiveJob,
    NoDelivery,
    db_time,
)
from bot.lifecycle import ModelLifecycle
from bot.routing import Router
from bot.sharding import process_name
from bot.storage import Storage
from bot.storage.jobs import JobRow, LeaseLost
from bot.storage.ledger import LedgerConflict
from bot.tasks import Again

log = logging.getLogger(__name__)
T = TypeVar("T")
ModelAllowed = Callable[[int, tuple[int, ...], str], Awaitable[bool]]


async def _any_model(guild_id: int, role_ids: tuple[int, ...], model_id: str) -> bool:
    return True


ETA_WINDOW = 20  # recent jobs whose median run time gives the queue's ETA
# Commands that may hold their images in memory at once: from the download, through the checks and
# the safety check, until `submit` has stored them as the job's files (`JobEngine.intake`). A burst's
# other commands wait for a turn with nothing downloaded, so a process's memory follows this and the
# jobs running, not the size of the burst. 16 keeps two CPUs busy validating while others wait for
# the safety check's answer; each turn holds a few MiB for a 1024² PNG (the bench.burst_memory numbers).
INTAKE_AT_ONCE = 16
# Seconds between tries of a settlement whose transaction failed (`EngineCore._settling`).
SETTLE_RETRY_PAUSES = (0.2, 1.0, 3.0)
# The one file left of a job whose settlement is owed: how it ended (`EngineCore._owe`).
ENDED_NOTE = "ended.json"
# Masked results restored at once: one 40-megapixel restore holds about 700 MB while it runs (the
# original, the model's output fitted to it, the blend), so with 64 jobs running a burst of large
# masked results would outgrow the container's memory; the others wait, their results stored.
RESTORES_AT_ONCE = 2
SHUTDOWN_ABORT_WAIT_SECONDS = 10.0
# A paid result Discord could not take because of a passing failure (a 5xx, a timeout, a dropped
# connection) is posted again from the stored result after this long, doubling up to the cap, until
# RESULT_RETENTION_HOURS after it was made; only then is it given up (and not charged).
DELIVERY_RETRY_FIRST_SECONDS = 5.0
DELIVERY_RETRY_MAX_SECONDS = 600.0


@dataclass(eq=False)
class ActiveJob:
    """What this process knows about a live job besides its row."""

    info: JobInfo
    model: str
    live: LiveJob | None = None
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    abort_reason: str = ""
    quiet: bool = False  # whoever cancelled it tells the user
    cancel_seen: bool = False  # a cancel another process recorded is being acted on here
    task: asyncio.Task[None] | None = None
    provider: str | None = None
    submitted: list[str] = field(default_factory=list)
    # Paid calls sent to `provider` and not refused unworked (the router's on_call): a count, since a
    # job of several images on a route without `n` has several out at once.
    calling: int = 0
    # Calls that left before this process ran the job (a restart, a takeover): the row's `calls_sent`.
    # None: not counted (a row from an older release), so any image may have been billed.
    sent_before: int | None = 0
    # Calls of the route tried last that are out or were sent and not refused unworked, counted as each
    # leaves (`calls_sent` on the row is the most this reached).
    leaving: int = 0
    clock_start: float = field(default_factory=time.monotonic)  # admitted (observers' job seconds)
    run_start: float | None = None  # left the queue in this process (the ETA's run times)
    finishing: bool = False  # past the provider: storing and posting the result
    stored: bool = False  # its result is stored and its row `completed`: a restart posts it
    billed: int | None = None  # credits the provider bills for the result it returned (None: none yet)
    ended_with: str | None = None  # what its end told the member, or would have but for a quiet cancel
    charged: int = 0  # what its end charged the member (a cancel once a provider had it)
    ended_state: str | None = None  # the state its end settles it in (cancelled or failed)
    posted: bool = False  # its result is posted (by this process, or found posted before a restart)
    delivery_retries: int = 0  # stored-result deliveries put off after a transient failure

    @property
    def id(self) -> str:
        return self.info.job_id

    @property
    def calls_sent(self) -> int | None:
        """Paid calls of this job that left for the provider, in this process and before it (a call the
        provider accepted counts even if this process never saw it leave); None when not known."""
        if self.sent_before is None:
            return None
        return max(self.calling + self.sent_before, len(self.submitted))

    def adopt_row(self, row: JobRow) -> None:
        """What the row says of the job's calls, for a job this process picks up (a restart, a
        takeover): the ids the provider gave and how many calls had left."""
        self.submitted = list(row.provider_job_ids)
        self.sent_before = row.calls_sent


class IntakeTurns:
    """Turns for a step that holds large images in memory: commands between downloading their images
    and having them stored as a job's files (`intake_turns`), and masked results being restored
    (`restore_turns`).

    At most `at_once` hold a turn; the others wait, in the order they came, holding nothing yet.
    `inside` and `waiting` say how many do each (for tests and diagnostics).
    """

    def __init__(self, at_once: int) -> None:
        self.at_once = at_once
        self._turns = asyncio.Semaphore(at_once)
        self.inside = 0
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one turn for the duration of the `async with` block."""
        self.waiting += 1
        try:
            await self._turns.acquire()
        finally:
            self.waiting -= 1
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1
            self._turns.release()


class EngineCore:
    """The engine's shared state and helpers; `JobEngine` adds the queue and the public API."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        storage: Storage,
        router: Router,
        files: JobFiles,
        observers: list[JobObserver],
        lifecycle: ModelLifecycle,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.storage = storage
        self.router = router
        self.lifecycle = lifecycle  # where a job goes when its model is shut down mid-run
        self.files = files
        self.observers = observers  # shared with EditService, which the members cog extends in place
        self.delivery: Delivery = NoDelivery()
        self.max_concurrent = settings.max_concurrent_jobs
        self.max_per_user = settings.max_jobs_per_user
        self.accepting = True
        self._jobs: dict[str, ActiveJob] = {}
        self._waiting: list[str] = []  # job ids in the order they were admitted
        self._running: set[str] = set()
        self._creating: set[str] = set()  # folders written whose row may not exist yet
        self.intake_turns = IntakeTurns(INTAKE_AT_ONCE)
        # Whether a server lets a member (by roles) use a model: where a job whose model died mid-run
        # may move (bot.services.policy; set by EditService, every model without it).
        self.model_allowed: ModelAllowed = _any_model
        self.restore_turns = IntakeTurns(RESTORES_AT_ONCE)
        self._idle = asyncio.Event()
        self._idle.set()
        self._durations: deque[float] = deque(maxlen=ETA_WINDOW)
        self._background: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        # job id -> the next delivery try of a result Discord could not take
        self._redeliveries: dict[str, asyncio.TimerHandle] = {}
        # job id -> the release of a job that ended here while its settlement kept failing
        # (`JobEndings._end`), made by the watchdog's rounds (`JobRecovery.settle_owed`): no task is left
        # to try it again, and the watchdog stops only the jobs it tracks, so the hold stayed until the
        # next start although the member had been told they were not charged.
        self._owed: dict[str, Callable[[], Awaitable[object]]] = {}
        self.delivery_retry_first = DELIVERY_RETRY_FIRST_SECONDS
        self.delivery_retry_max = DELIVERY_RETRY_MAX_SECONDS
        # Waiting jobs' "Queued — position N" lines: changed text only, rate-limited (bot.concurrency).
        self.queue_feedback: FeedbackThrottle[str, JobStatus] = FeedbackThrottle()
        self._turns = FairTurns()  # the queue's order (members and servers take turns)
        self._feedback_task: asyncio.Task[None] | None = None
        self._feedback_offered = asyncio.Event()  # wakes the sender early: a new job's line is due now
        # Job leases (bot.jobs.leases): this process's name on the jobs it runs, and whether other
        # processes share the database (PostgreSQL) and so may take over jobs whose lease ran out.
        self.owner = owner or process_name()
        self.shared = storage.db.shared
        self.lease = dt.timedelta(seconds=settings.job_lease_seconds)
        self._lease_task: asyncio.Task[None] | None = None
        # Live processes on the database, this one included, as the shard leases last counted them
        # (`share_with`); None until told, when a lease round counts the jobs' holders instead.
        self.fleet: int | None = None
        self._unclaimed = 0  # claimable jobs the last lease round left for others (or the next round)
        # When (storage clock) the last claim looked for leases that ran out; None: none has looked yet.
        self._claim_looked: dt.datetime | None = None
        # Wakes the lease rounds early: this process may take jobs over again (its clock agrees once
        # more), or a live process whose jobs were left alone was dropped from those (`hear_clock`).
        self._lease_wake = asyncio.Event()
        # Seconds between this process's clock and the fleet's (`hear_clock`); too far, it takes over
        # no other process's jobs.
        self.clock_apart = 0.0
        # Other live processes whose clocks are that far from the fleet's: their leases cannot be read
        # here, so their jobs are left to them while they live (`hear_clock`).
        self.clocks_off: frozenset[str] = frozenset()
        # False from `expect_clock` (a process sharing a database, before it joins the fleet) until the
        # shard leases first say how the clocks stand: until then nothing is taken over.
        self.clock_heard = True
        # A cancel recorded by another process wakes this one at once (PostgreSQL NOTIFY) to renew early,
        # and a circuit that opened or closed here is shared at once: both set up with the leases
        # (bot.jobs.leases `_start_leases`).
        self._listening = False
        self._early_renewal: Again | None = None
        self._circuits_now: Again | None = None
        self._circuits_lock = asyncio.Lock()

    def queued_until(self, created_at: dt.datetime) -> str:
        """When a job requested at `created_at` has waited too long in the queue (the watchdog's
        deadline_at while it waits): at its creation, and when a call that never left queues it again."""
        return db_time(created_at + dt.timedelta(seconds=self.settings.queue_timeout_seconds))

    # -- implemented by JobEngine (`_end`, `_maybe_billed` and `_provider_price` by its endings part,
    # `_adopt` by recovery, `_halt` and `_end_dequeued` by its cancel); declared here for the others --

    def _launch(self, job: ActiveJob) -> None:
        raise NotImplementedError

    def _pump(self) -> None:
        raise NotImplementedError

    def _capacity(self) -> int:
        raise NotImplementedError

    async def _end(self, job: ActiveJob, exc: BaseException) -> None:
        raise NotImplementedError

    def _halt(self, job: ActiveJob, reason: str, *, quiet: bool) -> bool:
        raise NotImplementedError

    def _end_dequeued(self, job: ActiveJob, exc: BaseException | None = None) -> asyncio.Future[None]:
        raise NotImplementedError

    async def _adopt(self, rows: list[JobRow]) -> dict[str, int]:
        raise NotImplementedError

    async def _provider_price(self, job: ActiveJob) -> int | None:
        raise NotImplementedError

    async def _maybe_billed(self, job: ActiveJob, billable: bool) -> int:
        raise NotImplementedError

    # -- small helpers -----------------------------------------------------------------------------

    async def _settling(self, job: ActiveJob, settle: Callable[[], Awaitable[T]]) -> T:
        """Run a settlement of `job` (a capture or a release, one transaction, or a read it depends on:
        its price, the check before a paid call leaves), trying it again after a failure that changed
        nothing (a locked SQLite file, a PostgreSQL connection lost before COMMIT; settlements are
        idempotent, so one that did commit is found settled). Another process's job (LeaseLost) or one
        settled the other way (LedgerConflict) is not tried again; still failing after
        `SETTLE_RETRY_PAUSES`, it raises."""
        pauses = iter(SETTLE_RETRY_PAUSES)
        while True:
            try:
                return await settle()
            except (LeaseLost, LedgerConflict):
                raise
            except Exception as exc:
                pause = next(pauses, None)  # 4.2 s in all: within a shutdown's wait for aborted jobs
                if pause is None:
                    raise
                log.warning("job %s: settling it failed (%s); trying again", job.id, exc)
                await asyncio.sleep(pause)

    async def _owe(
        self, job_id: str, settle: Callable[[], Awaitable[object]], ended: Mapping[str, object]
    ) -> None:
        """A job that ended here while its settlement kept failing: the watchdog's rounds make `settle`.
        Its files give way to a note of how it ended (`ENDED_NOTE`): a process that stops before the
        settlement is made leaves the row to the next start, or on PostgreSQL to another process,
        which settles it as `ended` says, silently, instead of running it again, posting its stored
        result or telling the member a second, different story."""
        note = json.dumps(ended).encode()
        try:
            # The note first, then the rest goes: whoever recovers the row meanwhile finds one or the
            # other, never a folder with neither (which it would release with the restart message).
            await asyncio.to_thread(self.files.write, job_id, {ENDED_NOTE: note})
            await asyncio.to_thread(self.files.keep_only, job_id, ENDED_NOTE)
        except OSError:
            log.exception("job %s: could not write how it ended; its files go", job_id)
            with contextlib.suppress(OSError):  # released by whoever recovers it, not run again
                await asyncio.to_thread(self.files.remove, job_id)
        # Owed once its note is written: a watchdog round that made it sooner would leave the note.
        self._owed[job_id] = settle

    def _ended_note(self, job_id: str) -> dict[str, Any] | None:
        """How a job ended whose settlement is owed, by this process or one that stopped (`_owe`);
        None while it has not ended so (files are on the volume every process shares)."""
        try:
            note = json.loads(self.files.read(job_id, ENDED_NOTE))
        except (OSError, ValueError):
            return None
        return note if isinstance(note, dict) else None

    async def _forget(self, job_id: str) -> None:
        """A job released for good: its files and its prompt go (nothing will run or post it again)."""
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.files.remove, job_id)
        with contextlib.suppress(Exception):  # the sweep clears it otherwise
            await self.storage.jobs.forget_job_details(job_id)  # the prompt goes with the images

    async def _say(self, job: ActiveJob, text: str, *, charged: int = 0) -> None:
        """Tell the user how their job ended (having cost them `charged`): on the live progress message
        if there is one, else through the Delivery."""
        shown = False
        if job.live is not None:
            try:
                shown = await job.live.finish(text)
            except Exception as exc:
                log.info("job %s: progress message unavailable: %s", job.id, type(exc).__name__)
        if not shown:
            try:
                await self.delivery.notify(job.info, text, charged=charged)
            except Exception as exc:
                log.warning("job %s: could not tell the user: %s", job.id, type(exc).__name__)

    async def _tell_live(self, job: ActiveJob, text: str) -> None:
        """Tell the user only if their command is still in this process; a job that was already
        recovered once needs no channel message each time the bot restarts."""
        if job.live is not None:
            with contextlib.suppress(Exception):
                await job.live.finish(text)

    async def _update(self, job: ActiveJob, status: JobStatus) -> None:
        if job.live is None:
            return
        try:
            await job.live.update(status)
        except Exception as exc:
            log.debug("job %s: progress update failed: %s", job.id, type(exc).__name__)

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Future[T]:
        """Run `coro` in the background (a stop waits for it: `_flush_background`); its task."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _flush_background(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=SHUTDOWN_ABORT_WAIT_SECONDS)

    def _notify(self, event: str, *args: object, **kwargs: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, event)(*args, **kwargs)
            except Exception:
                log.exception("job observer %r failed on %s", observer, event)

    def _finished(
        self, job: ActiveJob, state: JobState, provider: str | None, charged: int, error: str | None
    ) -> None:
        self._notify(
            "job_finished",
            job.id,
            state,
            model=job.model,
            provider=provider or None,
            charged=charged,
            seconds=time.monotonic() - job.clock_start,
            error=error,
        )
