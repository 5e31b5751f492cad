"""The job engine: a durable queue of edit jobs that survives restarts, crashes and slow providers.

Every job is a database row with a state machine, and every transition is written *before* the
action it guards:

    queued ─reserve─▶ reserved ─slot─▶ submitting ─accepted─▶ submitted ─▶ completed ─▶ delivered
       └──────────────────┴───────────────────┴────────────────────┴─────────────┴──▶ failed / cancelled

* `queued`: the row and the input files exist, nothing is held yet (a refused reservation ends here).
* `reserved`: the credits are held and the job waits in the queue for a slot (global, per user, and
  per provider inside the router).
* `submitting`: a provider call is about to be / being made. For a synchronous provider the outcome
  of a call interrupted by a crash is unknown.
* `submitted`: a submit-then-poll provider accepted the job and its id is stored, so polling can
  resume after a restart.
* `completed`: the result files are on disk and described in the row; only delivery is left.
* `delivered` (hold captured) / `failed` / `cancelled` (hold released): terminal, each settled
  exactly once in the same transaction as the state change.

Money rule: the user is charged for a result they received, and for a job they cancelled after a
provider accepted it and gave it an id (the provider bills for that one; the Cancel button says so).
A job that ends any other way — cancelled before that, timed out, interrupted by a restart while
its outcome is unknown, or undeliverable — is released in full, even when the provider may have
billed us.

Nothing here knows about Discord: results and notices go through a `Delivery` (how to reach a user
from any process) and, while the job's own process is alive, a `LiveJob` (the command's progress
message and interaction). Interaction tokens are never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import random
import secrets
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import aiohttp

from bot import imaging
from bot.catalog import Catalog, ModelEntry, Route, usd_to_credits
from bot.concurrency import FairTurns, FeedbackThrottle
from bot.config import Settings
from bot.errors import (
    InsufficientCredits,
    RetouchError,
    ShuttingDown,
    message_for_provider_error,
    new_reference,
)
from bot.jobfiles import JobFiles
from bot.lifecycle import ModelLifecycle
from bot.providers import errors as perr
from bot.providers.base import EditRequest, EditResult, InputImage, OutputImage
from bot.routing import Needs, Router, Served, route_reserve_usd
from bot.storage import LIVE_STATES, TERMINAL_STATES, JobRow, LedgerConflict, NotEnoughCredits, Storage

log = logging.getLogger(__name__)

# How often the "editing with <model> (N s)" stage is refreshed while the provider works.
PROGRESS_TICK_SECONDS = 5.0
# The watchdog steps in this long after a job's provider deadline, so the adapter's own timeout
# (with its better error) normally fires first.
DEADLINE_GRACE_SECONDS = 30.0
# A job resumed after a restart gets at least this long to fetch a result the provider may have
# finished meanwhile, even if its own deadline passed while the bot was down.
RESUME_MIN_SECONDS = 60.0
WATCHDOG_INTERVAL_SECONDS = 5.0
SWEEP_INTERVAL_SECONDS = 3600.0
ETA_WINDOW = 20  # recent jobs whose median run time gives the queue's ETA
CANCEL_WAIT_SECONDS = 15.0  # how long a cancel waits for a running job to stop
SHUTDOWN_ABORT_WAIT_SECONDS = 10.0
# A paid result Discord could not take because of a passing failure (a 5xx, a timeout, a dropped
# connection) is posted again from the stored result after this long, doubling up to the cap, until
# RESULT_RETENTION_HOURS after it was made; only then is it given up (and not charged).
DELIVERY_RETRY_FIRST_SECONDS = 5.0
DELIVERY_RETRY_MAX_SECONDS = 600.0

RESTARTED_BEFORE_START = (
    "Retouch restarted before your edit could start. You were not charged; please run it again."
)
RESTARTED_MID_SUBMIT = (
    "Retouch restarted while your edit was being made, so the result was lost. "
    "You were not charged; please run it again."
)
SUSPENDED_AT_PROVIDER = (
    "Retouch is restarting. Your edit is still being made and will be posted in this channel when "
    "it is ready."
)
SUSPENDED_IN_QUEUE = (
    "Retouch is restarting. Your edit keeps its place in the queue and starts when Retouch is back."
)
CANCELLED_AT_PROVIDER = (
    "Cancelled. The image service had already started this edit and charges for it, so "
    "{charged} credits were charged."
)
UNDELIVERABLE = "Your edit was made but could not be posted here or sent to you by DM. You were not charged"
DELIVERY_DELAYED = (
    "Your edit is ready, but Discord is not taking it right now. It will be posted as soon as Discord "
    "answers again; nothing is charged until it is."
)


# -- errors ----------------------------------------------------------------------------------------


class JobFailed(RetouchError):
    """A job failed after it started; credits were released. Carries the log reference."""

    def __init__(self, user_message: str, *, ref: str, code: str) -> None:
        super().__init__(f"{user_message} (ref `{ref}`)", code=code)
        self.ref = ref


class JobInterrupted(RetouchError):
    def __init__(self) -> None:
        super().__init__(
            "Retouch had to restart before your edit finished. You were not charged; please run it again.",
            code="interrupted",
        )


class JobCancelled(RetouchError):
    def __init__(self) -> None:
        super().__init__("Cancelled — you were not charged.", code="cancelled")


class JobTimedOut(RetouchError):
    """The watchdog cancelled a job past its deadline (in the queue or at the provider)."""

    def __init__(self, *, queued: bool) -> None:
        where = "waited too long in the queue" if queued else "took too long"
        super().__init__(
            f"Your edit {where} and was cancelled. You were not charged; please try again later.",
            code="queue_timeout" if queued else "timeout",
        )


class JobSuspended(RetouchError):
    """The bot is shutting down; the job stays in the database and continues after the restart."""

    def __init__(self, text: str = SUSPENDED_AT_PROVIDER) -> None:
        super().__init__(text, code="suspended")


class ModelRetired(JobFailed):
    """The job's model was shut down at every configured provider and the job cannot move. The hold
    is released; the reference ties the member's message to the provider's answers in the log."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message, ref=new_reference(), code="model_retired")


class NotAllowed(RetouchError):
    """Someone other than the requester (and without Manage Messages) tried to control a job."""


class DeliveryFailed(Exception):
    """A delivery route could not post the result (the next route, if any, is tried).

    `uncertain`: the request may have reached Discord (a timeout, a dropped connection, a 5xx), so
    the message may exist; the engine looks for it before posting anywhere else.
    `transient`: the failure may pass (Discord or the network, not a refusal): the engine posts the
    stored result again later instead of giving it up.
    """

    def __init__(self, reason: str, *, uncertain: bool = False, transient: bool = False) -> None:
        super().__init__(reason)
        self.uncertain = uncertain
        self.transient = transient


def is_transient(exc: BaseException) -> bool:
    """Whether a delivery failure may pass by itself (worth posting the stored result again later)."""
    if isinstance(exc, DeliveryFailed):
        return exc.transient
    return isinstance(exc, aiohttp.ClientError | TimeoutError | OSError)


class _Suspend(Exception):
    """Internal: stop working on a job without settling it (it resumes after the restart)."""


# -- what a job is -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """One input image of a job, stored as `name` in the job's folder."""

    name: str
    label: str  # the command option it came from
    mime: str
    width: int
    height: int


@dataclass(frozen=True)
class MaskFiles:
    """A masked job's mask: what the provider gets, and where the edit may change the image."""

    provider: str  # OpenAI-convention PNG (alpha 0 = edit), the adapters convert it
    region: str  # L-mode PNG, white = edit: restores the outside, and is Retry's mask upload
    feather: int
    keep_outside: bool


@dataclass(frozen=True)
class JobSpec:
    """Everything a job needs to run, again after a restart, or once more for Retry (JSON in the row)."""

    prompt: str
    model: str  # the catalog model that runs (after retirements)
    requested_model: str  # what the user asked for (Retry resolves it again)
    model_name: str
    quality: str
    size: str
    background: str
    output_format: str
    count: int
    reserve: int
    upload_limit: int
    user_hash: str
    inputs: tuple[InputFile, ...]
    mask: MaskFiles | None = None
    notices: tuple[str, ...] = ()  # server-rule and retirement notices shown with the result
    role_ids: tuple[int, ...] = ()
    provider_order: tuple[str, ...] = ()  # the server's order at submit time; empty = PROVIDER_ORDER
    # The member named the model (the command's `model` option). A job that did not is moved to another
    # live model when its own is shut down mid-run; one that did is told and offered the replacement.
    model_picked: bool = False

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        data = json.loads(text)
        data["inputs"] = tuple(InputFile(**item) for item in data["inputs"])
        data["mask"] = MaskFiles(**data["mask"]) if data.get("mask") else None
        data["notices"] = tuple(data.get("notices") or ())
        data["role_ids"] = tuple(data.get("role_ids") or ())
        data["provider_order"] = tuple(data.get("provider_order") or ())
        return cls(**data)

    @property
    def input_names(self) -> list[str]:
        names = [f.name for f in self.inputs]
        if self.mask is not None:
            names += [self.mask.provider, self.mask.region]
        return names


@dataclass(frozen=True)
class ResultFile:
    filename: str
    data: bytes
    format: str


@dataclass(frozen=True)
class EditOutcome:
    job_id: str
    prompt: str
    model_id: str
    model_name: str
    provider: str
    quality: str
    size: str
    files: tuple[ResultFile, ...]
    charged: int
    balance_after: int
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Origin:
    """Where a job came from: when the user's interaction was created (its token's age decides how
    the result is delivered) and the message it was started from, if any (linked in late results)."""

    interaction_at: dt.datetime | None = None
    message_id: int | None = None


@dataclass(frozen=True)
class JobInfo:
    """A job as the delivery layer sees it: who asked, where, and when."""

    job_id: str
    guild_id: int
    user_id: int
    channel_id: int | None
    created_at: dt.datetime
    interaction_at: dt.datetime | None = None
    origin_message_id: int | None = None

    @classmethod
    def of(cls, row: JobRow) -> JobInfo:
        return cls(
            job_id=row.id,
            guild_id=row.guild_id,
            user_id=row.user_id,
            channel_id=row.channel_id,
            created_at=_parse(row.created_at) or dt.datetime.now(dt.UTC),
            interaction_at=_parse(row.interaction_at),
            origin_message_id=row.origin_message_id,
        )


@dataclass(frozen=True)
class Delivered:
    """Where a result was posted: via interaction, channel or dm, and the message if known."""

    via: str
    channel_id: int | None = None
    message_id: int | None = None


@dataclass(frozen=True)
class JobStatus:
    """One progress line for a job's live progress message."""

    job_id: str
    stage: str  # queued | running | finishing
    text: str
    cancellable: bool
    position: int = 0  # place in the queue (1 = next), 0 when running
    eta_seconds: float | None = None
    accepted: bool = False  # a provider accepted the job: cancelling it now is charged


@dataclass(frozen=True)
class Ticket:
    """What `submit` returns: the job's id and its place in the queue (0 = started at once)."""

    job_id: str
    position: int
    eta_seconds: float | None


class LiveJob(Protocol):
    """The process-local side of one job (the command's progress message). Never persisted: after a
    restart a job has no LiveJob and the engine's `Delivery` reaches the user instead."""

    async def update(self, status: JobStatus) -> None:
        """Show a progress line (queue position and ETA, the stage, a Cancel control)."""
        ...

    async def deliver(self, outcome: EditOutcome) -> Delivered:
        """Post the result through the live route; raise (e.g. DeliveryFailed) to fall back."""
        ...

    async def finish(self, text: str | None) -> bool:
        """Stop updating and show `text` (if any) as the last line. False if it could not be shown."""
        ...


class Delivery(Protocol):
    """How results and notices reach a user from any process (implemented by the Discord layer)."""

    async def deliver(self, job: JobInfo, outcome: EditOutcome) -> Delivered:
        """Post the result (e.g. channel message, then DM). Raise DeliveryFailed when nothing worked."""
        ...

    async def notify(self, job: JobInfo, text: str) -> bool:
        """Tell the user something about their job. False when nobody could be reached."""
        ...

    async def find(self, job: JobInfo) -> Delivered | None:
        """A result message already posted for `job` (a delivery a crash interrupted), or None."""
        ...


class NoDelivery:
    """The default before the Discord layer attaches: nothing can be delivered outside a LiveJob."""

    async def deliver(self, job: JobInfo, outcome: EditOutcome) -> Delivered:
        raise DeliveryFailed("no delivery route is attached")

    async def notify(self, job: JobInfo, text: str) -> bool:
        log.info("job %s: nobody to tell (%s)", job.job_id, text)
        return False

    async def find(self, job: JobInfo) -> Delivered | None:
        return None


class JobObserver:
    """Receives job lifecycle events (metrics, audit). Every method is a no-op by default.

    Observers must not raise; the engine logs and ignores their errors so a metrics bug never
    costs a user an edit.
    """

    def job_started(self, job_id: str, model: str) -> None: ...

    def provider_finished(self, provider: str, model: str, seconds: float, error: str | None) -> None: ...

    def job_finished(
        self,
        job_id: str,
        state: str,
        *,
        model: str,
        provider: str | None,
        charged: int,
        seconds: float,
        error: str | None,
    ) -> None: ...


Reserve = Callable[[str], Awaitable[object]]


@dataclass(eq=False)
class _Job:
    """What this process knows about a live job besides its row."""

    info: JobInfo
    model: str
    live: LiveJob | None = None
    waiter: asyncio.Future[EditOutcome] | None = None
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    abort_reason: str = ""
    quiet: bool = False  # whoever cancelled it tells the user
    task: asyncio.Task[None] | None = None
    provider: str | None = None
    submitted: list[str] = field(default_factory=list)
    clock_start: float = field(default_factory=time.monotonic)  # admitted (observers' job seconds)
    run_start: float | None = None  # left the queue in this process (the ETA's run times)
    finishing: bool = False  # past the provider: storing and posting the result
    position: int = 0
    delivery_retries: int = 0  # stored-result deliveries put off after a transient failure

    @property
    def id(self) -> str:
        return self.info.job_id


def _iso(moment: dt.datetime) -> str:
    """The database's timestamp format (UTC, milliseconds), so comparisons of strings work."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def _parse(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def describe_wait(seconds: float) -> str:
    """A short, honest duration for queue estimates."""
    if seconds < 60:
        return "less than a minute"
    return f"about {max(1, round(seconds / 60))} min"


class JobEngine:
    """Runs edit jobs from the database: queue, limits, provider calls, delivery, recovery, watchdog.

    One instance per process. `submit` admits a job (its credits are held at once) and returns;
    `wait` awaits its end in this process. `recover` (start-up) picks up every live job the last
    process left behind, `drain` (shutdown) stops taking work without losing any.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        storage: Storage,
        router: Router,
        files: JobFiles,
        observers: list[JobObserver],
        lifecycle: ModelLifecycle | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.storage = storage
        self.router = router
        self.lifecycle = lifecycle  # where a job goes when its model is shut down mid-run
        self.files = files
        self.observers = observers  # shared with EditService, which tests extend in place
        self.delivery: Delivery = NoDelivery()
        self.max_concurrent = settings.max_concurrent_jobs
        self.max_per_user = settings.max_jobs_per_user
        self.accepting = True
        self._jobs: dict[str, _Job] = {}
        self._waiting: list[str] = []  # job ids in the order they were admitted
        self._running: set[str] = set()
        self._creating: set[str] = set()  # folders written whose row may not exist yet
        self._waiters: dict[str, asyncio.Future[EditOutcome]] = {}  # for `wait`, until it is called
        self._idle = asyncio.Event()
        self._idle.set()
        self._durations: deque[float] = deque(maxlen=ETA_WINDOW)
        self._background: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        # job id -> the next delivery try of a result Discord could not take, and the job
        self._redeliveries: dict[str, tuple[asyncio.TimerHandle, _Job]] = {}
        self.delivery_retry_first = DELIVERY_RETRY_FIRST_SECONDS
        self.delivery_retry_max = DELIVERY_RETRY_MAX_SECONDS
        # Waiting jobs' "Queued — position N" lines: changed text only, rate-limited (bot.concurrency).
        self.queue_feedback: FeedbackThrottle[str, JobStatus] = FeedbackThrottle()
        self._turns = FairTurns()  # the queue's order (members and servers take turns)
        self._feedback_task: asyncio.Task[None] | None = None
        self._feedback_offered = asyncio.Event()  # wakes the sender early: a new job's line is due now

    # -- public API -------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Jobs running now (at a provider or being delivered)."""
        return len(self._running)

    @property
    def queued(self) -> int:
        """Jobs waiting for a slot."""
        return len(self._waiting)

    def attach_delivery(self, delivery: Delivery) -> None:
        """Set how results and notices reach users outside a live command (the Discord layer)."""
        self.delivery = delivery

    async def submit(
        self,
        spec: JobSpec,
        files: dict[str, bytes],
        *,
        guild_id: int,
        user_id: int,
        channel_id: int | None,
        reserve: Reserve,
        live: LiveJob | None = None,
        origin: Origin | None = None,
        wait: bool = False,
    ) -> Ticket:
        """Store the job and its files, hold its credits (`reserve(job_id)`), and queue it.

        Raises InsufficientCredits or the RetouchError `reserve` raised (nothing is held then).
        With `wait`, `wait(job_id)` can be awaited afterwards.
        """
        if not self.accepting:
            raise ShuttingDown()
        origin = origin or Origin()
        job_id = secrets.token_hex(8)
        now = self.storage.now()
        self._creating.add(job_id)
        try:
            await asyncio.to_thread(self.files.write, job_id, files)
            await self.storage.create_job(
                job_id,
                guild_id=guild_id,
                user_id=user_id,
                channel_id=channel_id,
                model=spec.model,
                quality=spec.quality,
                size=spec.size,
                count=spec.count,
                spec=spec.to_json(),
                interaction_at=_iso(origin.interaction_at) if origin.interaction_at else None,
                origin_message_id=origin.message_id,
                deadline_at=_iso(now + dt.timedelta(seconds=self.settings.queue_timeout_seconds)),
                files_expire_at=_iso(now + dt.timedelta(hours=self.settings.input_retention_hours)),
            )
        except BaseException:
            await asyncio.to_thread(self.files.remove, job_id)
            raise
        finally:
            self._creating.discard(job_id)
        info = JobInfo(job_id, guild_id, user_id, channel_id, now, origin.interaction_at, origin.message_id)
        job = _Job(info, spec.model, live=live)
        self._notify("job_started", job_id, spec.model)
        await self._admit(job, reserve)
        if wait:
            job.waiter = self._waiters[job_id] = asyncio.get_running_loop().create_future()
        self._jobs[job_id] = job
        self._waiting.append(job_id)
        self._pump()
        position = self._position(job_id)
        return Ticket(job_id, position, self.eta(position) if position else None)

    async def wait(self, job_id: str) -> EditOutcome:
        """The outcome of a job submitted with `wait=True`; raises what ended it otherwise.

        Once per job: the outcome is handed over and forgotten.
        """
        waiter = self._waiters.pop(job_id, None)
        if waiter is None:
            raise KeyError(f"job {job_id} is not awaitable")
        return await waiter

    async def cancel(self, job_id: str, *, actor_id: int, can_manage: bool, quiet: bool = True) -> str:
        """Cancel a job for its requester or a member who can manage messages; returns what to say.

        Before a provider accepted the job (gave it an id) the hold is released in full. After that
        its cancel call is made when it has one, and the job is charged what that provider charges
        for it (it bills us whether or not the result is wanted), so it also counts toward cooldowns
        and budgets. A synchronous call still in flight has no acceptance to go by and stays free. A job
        whose result exists is not cancelled (it is being posted).
        With `quiet`, the caller shows the returned text instead of the job's progress message.
        """
        row = await self.storage.get_job(job_id)
        if row is None:
            raise RetouchError("This edit is not known any more.", code="unknown_job")
        if actor_id != row.user_id and not can_manage:
            raise NotAllowed(
                "Only the person who asked for this edit, or a member who can manage messages, can "
                "cancel it.",
                code="not_allowed",
            )
        if row.state in TERMINAL_STATES or row.state == "completed":
            return _too_late(row.state)
        job = self._jobs.get(job_id)
        if job is None:
            return _too_late(row.state)
        job.quiet = quiet
        if job_id in self._waiting:
            self._waiting.remove(job_id)
            await self._end(job, JobCancelled())
            self._jobs.pop(job_id, None)
            self._pump()
            return JobCancelled().user_message
        job.abort_reason = job.abort_reason or "cancelled"
        job.abort.set()
        if job.task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(job.task), CANCEL_WAIT_SECONDS)
        after = await self.storage.get_job(job_id)
        if after is not None and after.state == "cancelled" and after.captured:
            return CANCELLED_AT_PROVIDER.format(charged=after.captured)
        if after is not None and after.state == "cancelled":
            return JobCancelled().user_message
        return _too_late(after.state if after else "delivered")

    def eta(self, position: int) -> float | None:
        """Seconds until a job at `position` in the queue has its result (median of recent runs)."""
        if not self._durations or position <= 0:
            return None
        median = statistics.median(self._durations)
        rounds = math.ceil(position / self._capacity())
        return median * (rounds + 1)

    async def start(self) -> None:
        """Recover what the last process left, then run the watchdog. Call once, before commands."""
        await self.recover()
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="retouch-watchdog")

    async def drain(self, grace: float) -> int:
        """Stop taking jobs; let running ones finish for up to `grace` seconds; returns how many were
        aborted and refunded.

        Nothing durable is lost: queued jobs keep their place (and their hold) for the next start;
        jobs a resumable provider accepted are left `submitted` and resumed after the restart; only
        a synchronous provider call still running is aborted and released.
        """
        self.accepting = False
        await self._stop_watchdog()
        for handle, job in self._redeliveries.values():  # rows stay `completed`: the next start posts them
            handle.cancel()
            self._resolve(job, JobSuspended())
        self._redeliveries.clear()
        for job_id in list(self._waiting):
            job = self._jobs.pop(job_id)
            await self._tell_live(job, SUSPENDED_IN_QUEUE)
            self._resolve(job, JobSuspended(SUSPENDED_IN_QUEUE))
        self._waiting.clear()
        if self._feedback_task is not None:
            self._feedback_task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        # A job past its provider is left to post its result (or to be delivered after the restart).
        left = [self._jobs[j] for j in self._running if j in self._jobs and not self._jobs[j].finishing]
        aborted = 0
        for job in left:
            resumable = (
                bool(job.submitted) and job.provider is not None and self.router.resumable(job.provider)
            )
            job.abort_reason = "suspend" if resumable else "shutdown"
            aborted += not resumable
            job.abort.set()
        if left:
            log.warning(
                "shutdown: stopping %d unfinished job(s); %d refunded, the rest resume after the restart",
                len(left),
                aborted,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), SHUTDOWN_ABORT_WAIT_SECONDS)
        await self._flush_background()
        return aborted

    # -- admission and the queue -----------------------------------------------------------------

    async def _admit(self, job: _Job, reserve: Reserve) -> None:
        """Hold the job's credits; on refusal end it as failed (nothing held) and raise."""
        try:
            await reserve(job.id)
        except NotEnoughCredits as exc:
            await self._refused(job, "insufficient_credits")
            raise InsufficientCredits(exc.needed, exc.available) from None
        except RetouchError as exc:
            await self._refused(job, exc.code)
            raise
        except BaseException:
            await self._refused(job, "internal")
            raise

    async def _refused(self, job: _Job, code: str) -> None:
        await self.storage.settle_released(job.id, "failed", error_code=code)
        await asyncio.to_thread(self.files.remove, job.id)
        await self.storage.forget_job_details(job.id)  # the prompt goes with the images
        self._finished(job, "failed", None, 0, code)

    def _position(self, job_id: str) -> int:
        order = self._queue_order()
        return order.index(job_id) + 1 if job_id in order else 0

    def _queue_order(self) -> list[str]:
        """Waiting jobs in the order they start: servers, and members within a server, take turns."""
        waiting = ((j, self._jobs[j].info.guild_id, self._jobs[j].info.user_id) for j in self._waiting)
        running = [(job.info.guild_id, job.info.user_id) for j in self._running if (job := self._jobs.get(j))]
        return self._turns.order(waiting, running)

    def _capacity(self) -> int:
        """Jobs that may run at once: MAX_CONCURRENT_JOBS, or fewer while the providers' adaptive limits
        together allow fewer calls (the rest wait here, in fair order, rather than at a provider)."""
        return max(1, min(self.max_concurrent, self.router.capacity()))

    def _pump(self) -> None:
        """Start waiting jobs while slots are free (global, then per user), then show new positions."""
        if self.accepting:
            capacity = self._capacity()
            for job_id in self._queue_order():
                if len(self._running) >= capacity:
                    break
                job = self._jobs[job_id]
                mine = sum(1 for r in self._running if self._jobs[r].info.user_id == job.info.user_id)
                if mine >= self.max_per_user:
                    continue
                self._waiting.remove(job_id)
                self._turns.started(job.info.guild_id, job.info.user_id)
                self._launch(job)
        order = self._queue_order()
        self.queue_feedback.retain(set(order))
        for index, job_id in enumerate(order, start=1):
            job = self._jobs[job_id]
            if job.position != index:
                job.position = index
                eta = self.eta(index)
                text = f"Queued — position {index} in line."
                if eta is not None:
                    text += f" Your result should be ready in {describe_wait(eta)}."
                status = JobStatus(job_id, "queued", text, True, index, eta)
                self.queue_feedback.offer(job_id, text, status, priority=index)
        if self.queue_feedback.pending:
            self._feedback_offered.set()
            if self._feedback_task is None or self._feedback_task.done():
                self._feedback_task = asyncio.ensure_future(self._send_queue_feedback())

    async def _send_queue_feedback(self) -> None:
        """Send waiting jobs' new lines as the throttle allows, until none is pending."""
        while True:
            self.queue_feedback.retain(set(self._waiting))
            wait = self.queue_feedback.next_in()
            if wait is None:
                return
            if wait > 0:
                self._feedback_offered.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._feedback_offered.wait(), wait)
                continue
            for status in self.queue_feedback.due():
                job = self._jobs.get(status.job_id)
                if job is not None and status.job_id in self._waiting:
                    self._spawn(self._update(job, status))

    def _launch(self, job: _Job) -> None:
        self._running.add(job.id)
        self._idle.clear()
        job.position = 0
        job.task = asyncio.create_task(self._work(job), name=f"retouch-job-{job.id}")

    async def _work(self, job: _Job) -> None:
        try:
            await self._run(job)
        finally:
            self._running.discard(job.id)
            self._jobs.pop(job.id, None)
            if not self._running:
                self._idle.set()
            self._pump()

    async def _run(self, job: _Job) -> None:
        """One job from wherever it stands to a terminal state (or a suspension at shutdown)."""
        try:
            row = await self.storage.get_job(job.id)
            if row is None or not row.spec:
                raise RuntimeError(f"job {job.id} has no stored spec")
            spec = JobSpec.from_json(row.spec)
            if row.state == "completed":
                job.finishing = True
                outcome = await self._stored_outcome(row, spec)
            else:
                served, spec = await self._produce(job, row, spec)
                outcome = await self._complete(job, spec, served)
            await self._deliver(job, row, spec, outcome)
        except _Suspend:
            log.info(
                "job %s left at %s for the next start (%s)", job.id, job.provider, ",".join(job.submitted)
            )
            await self._tell_live(job, SUSPENDED_AT_PROVIDER)
            self._resolve(job, JobSuspended())
        except BaseException as exc:
            await self._end(job, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    # -- running at the provider -----------------------------------------------------------------

    async def _produce(self, job: _Job, row: JobRow, spec: JobSpec) -> tuple[Served, JobSpec]:
        """Run the job at a provider (or follow what one accepted before a restart). Returns the
        result and the job's spec, which names another model if its own was shut down mid-run."""
        model = self.catalog.models.get(spec.model)
        if model is None:
            raise RuntimeError(f"model {spec.model} is no longer in the catalog")
        if row.state == "submitted" and row.provider and row.provider_job_ids:
            job.provider, job.submitted = row.provider, list(row.provider_job_ids)
            remaining = await self._resume_window(job, row)
            request = await self._request(job.id, spec, remaining)
            call = self.router.resume(
                model, row.provider, job.submitted, request, route_model=row.provider_model
            )
            return await self._follow(job, model, request, call, row.started_at), spec
        started = self.storage.now()
        job.run_start = time.monotonic()
        timeout = self.settings.job_timeout_seconds
        await self.storage.update_job(
            job.id,
            started_at=_iso(started),
            deadline_at=_iso(started + dt.timedelta(seconds=timeout + DEADLINE_GRACE_SECONDS)),
        )
        request = await self._request(job.id, spec, timeout)

        async def attempt(route: Route) -> None:
            job.provider = route.provider
            await self.storage.set_job_state(
                job.id, "submitting", provider=route.provider, provider_model=route.model
            )

        async def submitted(route: Route, provider_job_id: str) -> None:
            job.submitted.append(provider_job_id)
            await self.storage.mark_submitted(job.id, route.provider, provider_job_id)

        while True:
            call = self.router.run(
                model, request, order=spec.provider_order or None, on_attempt=attempt, on_submitted=submitted
            )
            try:
                return await self._follow(job, model, request, call, _iso(started)), spec
            except perr.ModelGone as exc:
                if exc.accepted or self.lifecycle is None or self.lifecycle.usable(model):
                    raise  # taken, or other routes of the model only failed for other reasons
                # No provider took the job, so it may run elsewhere: the router already retired the
                # dead routes; every route of this model is gone.
                model, spec = await self._next_model(job, spec, model)

    async def _next_model(self, job: _Job, spec: JobSpec, dead: ModelEntry) -> tuple[ModelEntry, JobSpec]:
        """The live model a job moves to when `dead` is shut down everywhere, within its hold.

        Only for a job whose member did not pick the model; the first candidate (replacement chain,
        default, catalog order) that can honour the job's options for at most what is held wins.
        Raises ModelRetired (the hold is released, the member is offered the replacement) otherwise.
        """
        lifecycle = self.lifecycle
        if lifecycle is None:
            raise self._retired(job, dead, f"{dead.name} is no longer available. You were not charged.")
        if spec.model_picked:
            raise self._retired(job, dead, lifecycle.dead_message(dead, mid_run=True))
        for candidate in lifecycle.fallbacks(dead):
            worst = self._worst_credits(candidate, spec)
            if worst is None or worst > spec.reserve:
                continue
            notice = f"{dead.name} was shut down by the image service, so this edit used {candidate.name}."
            moved = replace(
                spec, model=candidate.id, model_name=candidate.name, notices=(*spec.notices, notice)
            )
            await self.storage.update_job(job.id, model=candidate.id, spec=moved.to_json())
            log.warning("job %s: %s is gone at every provider; moving to %s", job.id, dead.id, candidate.id)
            return candidate, moved
        raise self._retired(job, dead, lifecycle.dead_message(dead, mid_run=True))

    def _retired(self, job: _Job, dead: ModelEntry, text: str) -> ModelRetired:
        error = ModelRetired(text)
        log.warning(
            "job %s: %s is gone at every configured provider, not moved (ref %s)", job.id, dead.id, error.ref
        )
        return error

    def _worst_credits(self, model: ModelEntry, spec: JobSpec) -> int | None:
        """What `spec` would hold on `model`, or None when the model cannot take its options."""
        if spec.quality not in model.qualities or not model.accepts_size(spec.size):
            return None
        needs = Needs(
            images=len(spec.inputs),
            size=spec.size,
            quality=spec.quality,
            background=spec.background,
            output_format=spec.output_format,
            count=spec.count,
            mask=spec.mask is not None,
            prompt_chars=len(spec.prompt),
        )
        order = spec.provider_order or None
        if not self.router.eligible(model, needs, order=order):
            return None
        usd = self.router.reserve_usd(model, needs, prompt=spec.prompt, order=order)
        return usd_to_credits(usd, self.settings.credits_per_usd)

    async def _resume_window(self, job: _Job, row: JobRow) -> float:
        """Seconds a resumed job may still poll; pushes the watchdog deadline out to match."""
        started = _parse(row.started_at) or self.storage.now()
        left = (started - self.storage.now()).total_seconds() + self.settings.job_timeout_seconds
        window = max(left, RESUME_MIN_SECONDS)
        deadline = self.storage.now() + dt.timedelta(seconds=window + DEADLINE_GRACE_SECONDS)
        await self.storage.update_job(job.id, deadline_at=_iso(deadline))
        log.info(
            "job %s: resuming %s at %s (%.0f s left)", job.id, ",".join(job.submitted), job.provider, window
        )
        return window

    async def _request(self, job_id: str, spec: JobSpec, seconds: float) -> EditRequest:
        """The provider request, rebuilt from the stored spec and files."""

        def load() -> tuple[tuple[InputImage, ...], InputImage | None]:
            images = tuple(
                InputImage(self.files.read(job_id, f.name), f.mime, f.width, f.height) for f in spec.inputs
            )
            mask = None
            if spec.mask is not None:
                first = images[0]
                data = self.files.read(job_id, spec.mask.provider)
                mask = InputImage(data, "image/png", first.width, first.height)
            return images, mask

        images, mask = await asyncio.to_thread(load)
        return EditRequest(
            images=images,
            prompt=spec.prompt,
            model=spec.model,
            quality=spec.quality,
            size=spec.size,
            background=spec.background,
            output_format=spec.output_format,
            count=spec.count,
            user_hash=spec.user_hash,
            mask=mask,
            deadline=time.monotonic() + seconds,
        )

    async def _follow(
        self,
        job: _Job,
        model: ModelEntry,
        request: EditRequest,
        call: Awaitable[Served],
        started_at: str | None,
    ) -> Served:
        """Await the provider while showing progress; stop on cancel, watchdog, shutdown or deadline."""
        task = asyncio.ensure_future(call)
        aborted = asyncio.create_task(job.abort.wait())
        begun = _parse(started_at) or self.storage.now()
        clock = time.monotonic()
        try:
            while True:
                elapsed = max(0, int((self.storage.now() - begun).total_seconds()))
                text = f"Editing with {model.name}… ({elapsed} s)"
                await self._update(
                    job, JobStatus(job.id, "running", text, True, accepted=bool(job.submitted))
                )
                done, _ = await asyncio.wait(
                    {task, aborted}, timeout=PROGRESS_TICK_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if task in done:
                    served = self._served(job, model, task, clock)
                    break
                if aborted in done:
                    await self._stop_remote(job)
                    raise self._abort_error(job)
                if request.remaining() <= 0:
                    raise perr.ProviderTimeout("job deadline passed", provider=job.provider, accepted=True)
        finally:
            for pending in (task, aborted):
                if not pending.done():
                    pending.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(task, aborted, return_exceptions=True)
        if not served.result.images:
            raise perr.ServerError(
                "provider returned no images", provider=served.route.provider, accepted=True
            )
        return served

    def _served(self, job: _Job, model: ModelEntry, task: asyncio.Future[Served], clock: float) -> Served:
        seconds = time.monotonic() - clock
        try:
            served = task.result()
        except perr.ProviderError as exc:
            self._notify(
                "provider_finished", exc.provider or job.provider or "", model.id, seconds, type(exc).__name__
            )
            raise
        self._notify("provider_finished", served.route.provider, model.id, seconds, None)
        return served

    def _abort_error(self, job: _Job) -> BaseException:
        match job.abort_reason:
            case "suspend":
                return _Suspend()
            case "shutdown":
                return JobInterrupted()
            case "timeout":
                return JobTimedOut(queued=False)
            case _:
                return JobCancelled()

    async def _stop_remote(self, job: _Job) -> None:
        """After a cancel or timeout, ask the provider to stop what it accepted (if it can)."""
        if job.abort_reason not in ("cancelled", "timeout") or not job.submitted or not job.provider:
            return
        if not await self.router.cancel(job.provider, job.submitted):
            log.info(
                "job %s: %s has no cancel call; the provider may still bill us for it", job.id, job.provider
            )

    # -- the result ------------------------------------------------------------------------------

    async def _complete(self, job: _Job, spec: JobSpec, served: Served) -> EditOutcome:
        """Store the result (files, then the row) before anything is posted."""
        job.finishing = True
        await self._update(job, JobStatus(job.id, "finishing", "Uploading the result…", False))
        result = served.result
        charged = min(usd_to_credits(served.cost_usd, self.settings.credits_per_usd), spec.reserve)
        if spec.mask is not None and spec.mask.keep_outside:
            result = await self._restore_outside(job.id, spec, result)
        files = await self._fit(job.id, result, spec.upload_limit)
        await asyncio.to_thread(self.files.write, job.id, {disk: f.data for disk, f in files})
        notices = (served.notice,) if served.notice else ()
        record = {
            "files": [{"disk": disk, "filename": f.filename, "format": f.format} for disk, f in files],
            "provider": result.provider,
            "quality": result.quality or spec.quality,
            "size": result.size or spec.size,
            "charged": charged,
            "notices": list(notices),
        }
        now = self.storage.now()
        await self.storage.set_job_state(
            job.id,
            "completed",
            provider=result.provider,
            provider_request_id=result.request_id or (",".join(job.submitted) or None),
            result=json.dumps(record),
            completed_at=_iso(now),
        )
        if job.run_start is not None:  # a job resumed after a restart says nothing about run times
            self._durations.appendleft(time.monotonic() - job.run_start)
        return await self._outcome(job.id, spec, record, tuple(f for _, f in files))

    async def _stored_outcome(self, row: JobRow, spec: JobSpec) -> EditOutcome:
        """The outcome of a job completed before a restart, read back from the row and its files."""
        record = json.loads(row.result or "{}")
        entries = record.get("files") or []
        blobs = await asyncio.to_thread(lambda: [self.files.read(row.id, e["disk"]) for e in entries])
        files = tuple(
            ResultFile(e["filename"], data, e["format"]) for e, data in zip(entries, blobs, strict=True)
        )
        return await self._outcome(row.id, spec, record, files)

    async def _outcome(
        self, job_id: str, spec: JobSpec, record: dict[str, Any], files: tuple[ResultFile, ...]
    ) -> EditOutcome:
        charged = int(record["charged"])
        row = await self.storage.get_job(job_id)
        account = await self.storage.get_account(row.guild_id, row.user_id) if row else None
        return EditOutcome(
            job_id=job_id,
            prompt=spec.prompt,
            model_id=spec.model,
            model_name=spec.model_name,
            provider=str(record["provider"]),
            quality=str(record["quality"]),
            size=str(record["size"]),
            files=files,
            charged=charged,
            # What the balance will be once this job's hold is settled.
            balance_after=(account.balance if account else 0) + spec.reserve - charged,
            notices=spec.notices + tuple(record.get("notices") or ()),
        )

    async def _restore_outside(self, job_id: str, spec: JobSpec, result: EditResult) -> EditResult:
        """The locality guarantee: pixels outside the mask come back exactly as they were."""
        assert spec.mask is not None
        original = await asyncio.to_thread(self.files.read, job_id, spec.inputs[0].name)
        region_png = await asyncio.to_thread(self.files.read, job_id, spec.mask.region)
        first = spec.inputs[0]
        mask = await asyncio.to_thread(
            imaging.normalize_mask,
            region_png,
            (first.width, first.height),
            max_bytes=self.settings.max_input_bytes,
            max_pixels=self.settings.max_input_pixels,
        )
        restored = []
        for image in result.images:
            data, fmt = await asyncio.to_thread(
                imaging.restore_outside, original, image.data, mask.region, feather=spec.mask.feather
            )
            restored.append(OutputImage(data, fmt))
        return replace(result, images=tuple(restored))

    async def _fit(self, job_id: str, result: EditResult, limit: int) -> list[tuple[str, ResultFile]]:
        """Each image under the upload limit, named for users and for the job's folder."""
        files = []
        for index, image in enumerate(result.images, start=1):
            data, fmt = await asyncio.to_thread(imaging.fit_to_limit, image.data, image.format, limit)
            ext = "jpg" if fmt == "jpeg" else fmt
            files.append(
                (f"result-{index}.{ext}", ResultFile(f"retouch_{job_id[:8]}_{index}.{ext}", data, fmt))
            )
        return files

    # -- delivery ----------------------------------------------------------------------------------

    async def _deliver(self, job: _Job, row: JobRow, spec: JobSpec, outcome: EditOutcome) -> None:
        """Post the result (live route, then the Delivery), capture only once it is posted."""
        if row.delivery_attempted_at:
            # A delivery was under way when the last process died (or failed on a passing error): it
            # may have landed. When Discord cannot even be asked, posting again could post it twice.
            try:
                found = await self.delivery.find(job.info)
            except Exception as exc:
                log.warning("job %s: could not check for an earlier delivery: %s", job.id, type(exc).__name__)
                if is_transient(exc) and await self._deliver_later(job, row):
                    return
                found = None
            if found is not None:
                log.info("job %s: its result was already posted (%s) before the restart", job.id, found.via)
                await self._delivered(job, outcome, found)
                return
        await self.storage.update_job(job.id, delivery_attempted_at=_iso(self.storage.now()))
        delivered = None
        if job.live is not None:
            try:
                delivered = await job.live.deliver(outcome)
            except Exception as exc:
                log.info("job %s: live delivery failed (%s); trying the channel", job.id, type(exc).__name__)
                if getattr(exc, "uncertain", False):
                    delivered = await self._find(job)
        if delivered is None:
            try:
                delivered = await self.delivery.deliver(job.info, outcome)
            except Exception as exc:
                log.warning("job %s: delivery failed: %s", job.id, type(exc).__name__)
                if is_transient(exc) and await self._deliver_later(job, row):
                    return
        if delivered is None:
            await self._undeliverable(job, outcome)
            return
        await self._delivered(job, outcome, delivered)

    async def _deliver_later(self, job: _Job, row: JobRow) -> bool:
        """Put off the delivery of a stored result after a transient failure; False once it is too late.

        The row stays `completed` (the hold stays held), so a restart meanwhile delivers it too. The
        next try looks for an earlier post first (`delivery_attempted_at` is set), and channel posts
        carry a nonce, so the result is not posted twice.
        """
        made = _parse(row.completed_at) or self.storage.now()
        give_up_at = made + dt.timedelta(hours=self.settings.result_retention_hours)
        if not self.accepting:
            log.info("job %s: delivery left for the next start", job.id)
            self._resolve(job, JobSuspended())
            return True
        job.delivery_retries += 1
        delay = min(
            self.delivery_retry_max, self.delivery_retry_first * 2.0 ** min(job.delivery_retries - 1, 30)
        )
        delay *= 1.0 - random.uniform(0.0, 0.25)
        if self.storage.now() + dt.timedelta(seconds=delay) >= give_up_at:
            return False
        log.warning(
            "job %s: delivery try %d failed; trying again in %.0f s", job.id, job.delivery_retries, delay
        )
        if job.delivery_retries == 1:
            await self._tell_live(job, DELIVERY_DELAYED)
        handle = asyncio.get_running_loop().call_later(delay, self._redeliver, job)
        self._redeliveries[job.id] = (handle, job)
        return True

    def _redeliver(self, job: _Job) -> None:
        self._redeliveries.pop(job.id, None)
        if not self.accepting or job.id in self._jobs:
            return
        job.live = None  # its progress message already said what happened
        job.finishing = True
        self._jobs[job.id] = job
        self._launch(job)

    async def _find(self, job: _Job) -> Delivered | None:
        try:
            return await self.delivery.find(job.info)
        except Exception as exc:
            # Unknown: deliver again. A duplicate costs nothing (capture is once per job); a lost
            # paid result is what this engine exists to prevent.
            log.warning("job %s: could not check for an earlier delivery: %s", job.id, type(exc).__name__)
            return None

    async def _delivered(self, job: _Job, outcome: EditOutcome, where: Delivered) -> None:
        settled = await self.storage.settle_delivered(
            job.id, outcome.charged, via=where.via, channel_id=where.channel_id, message_id=where.message_id
        )
        if settled is not None:
            outcome = replace(outcome, charged=settled[1])
        # From here on the job is posted and charged: nothing below may turn it into a "failed,
        # not charged" job (the sweep deletes files left behind).
        names = [f"result-{i}.{f.filename.rsplit('.', 1)[-1]}" for i, f in enumerate(outcome.files, start=1)]
        try:
            await asyncio.to_thread(self.files.delete, job.id, names)
        except Exception as exc:
            log.warning("job %s: delivered, but its result files stay until the sweep: %s", job.id, exc)
        self._finished(job, "delivered", outcome.provider, outcome.charged, None)
        log.info(
            "job %s delivered via %s: model=%s provider=%s images=%d charged=%d",
            job.id,
            where.via,
            outcome.model_id,
            outcome.provider,
            len(outcome.files),
            outcome.charged,
        )
        if job.live is not None:
            with contextlib.suppress(Exception):
                await job.live.finish(
                    f"Done — {outcome.charged} credits charged, {outcome.balance_after} left."
                )
        self._resolve(job, outcome)

    async def _undeliverable(self, job: _Job, outcome: EditOutcome) -> None:
        """Nobody could be reached: release the hold, keep the result for a while, tell the admin."""
        ref = new_reference()
        # Free to the member, but the provider was paid: it still counts against the budgets.
        await self.storage.settle_released(
            job.id, "failed", error_code="undeliverable", error_ref=ref, absorbed=outcome.charged
        )
        keep = self.storage.now() + dt.timedelta(hours=self.settings.result_retention_hours)
        await self.storage.update_job(job.id, files_expire_at=_iso(keep))
        log.error(
            "job %s: result could not be delivered anywhere (ref %s); released, files kept in %s until %s",
            job.id,
            ref,
            self.files.folder(job.id),
            _iso(keep),
        )
        self._finished(job, "failed", outcome.provider, 0, "undeliverable")
        error = JobFailed(UNDELIVERABLE, ref=ref, code="undeliverable")
        if job.live is not None:
            with contextlib.suppress(Exception):
                await job.live.finish(error.user_message)
        self._resolve(job, error)

    # -- endings -----------------------------------------------------------------------------------

    async def _end(self, job: _Job, exc: BaseException) -> None:
        """Settle a job that will not be delivered: release its hold exactly once, record why, tell the
        user (unless whoever cancelled it does), and hand the waiter a user-safe error."""
        ref = new_reference()
        # Accepted = the provider gave the job an id (a submit-then-poll provider): it bills for it now.
        at_provider = isinstance(exc, JobCancelled) and job.abort_reason == "cancelled" and job.submitted
        if at_provider and await self._charge_cancelled(job, ref):
            return
        cancelled = isinstance(exc, JobInterrupted | JobCancelled | JobTimedOut | asyncio.CancelledError)
        state = "cancelled" if cancelled else "failed"
        # Provider errors are labelled by class: a bounded set, unlike vendors' free-form codes.
        is_provider = isinstance(exc, perr.ProviderError)
        code = str(type(exc).__name__ if is_provider else getattr(exc, "code", None) or type(exc).__name__)
        try:
            absorbed = await self._maybe_billed(job, exc)
            await self.storage.settle_released(
                job.id, state, error_code=code, error_ref=ref, absorbed=absorbed
            )
        except LedgerConflict:
            # Captured means posted: the member has the result and was charged for it. Say so.
            log.error("job %s: failed after it was delivered and charged (ref %s)", job.id, ref, exc_info=exc)
            await self._end_charged(job, ref)
            return
        except Exception:
            log.exception("job %s: could not release credits (ref %s)", job.id, ref)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.files.remove, job.id)
        with contextlib.suppress(Exception):  # the sweep clears it otherwise
            await self.storage.forget_job_details(job.id)  # the prompt goes with the images
        error = self._user_error(job, exc, ref)
        self._finished(job, state, getattr(exc, "provider", None) or job.provider, 0, code)
        if not job.quiet:
            await self._say(job, error.user_message)
        elif job.live is not None:
            with contextlib.suppress(Exception):
                await job.live.finish(None)
        self._resolve(job, exc if isinstance(exc, asyncio.CancelledError) else error)

    async def _maybe_billed(self, job: _Job, exc: BaseException) -> int:
        """Credits a provider may bill for a job that ends unpaid: a call that was sent and then cut
        off (cancel, deadline, shutdown) or that the provider may have accepted before failing. The
        member is not charged, but the budgets count it, so cut-off calls cannot outspend them."""
        cut_off = isinstance(exc, JobCancelled | JobTimedOut | JobInterrupted | asyncio.CancelledError)
        if job.provider is None or not (cut_off or getattr(exc, "accepted", False)):
            return 0
        return await self._provider_price(job) or 0

    async def _provider_price(self, job: _Job) -> int | None:
        """What the job's provider charges for it: its price for the job's options in credits, at most
        the hold. None when it cannot be priced."""
        row = await self.storage.get_job(job.id)
        spec = JobSpec.from_json(row.spec) if row is not None and row.spec else None
        model = self.catalog.models.get(spec.model) if spec is not None else None
        # The route that had the job (a provider may sell the model on several, at different prices).
        taken = row.provider_model if row is not None else None
        route = (
            next(
                (r for r in model.routes if r.provider == job.provider and taken in (None, r.model)),
                None,
            )
            if model
            else None
        )
        if spec is None or model is None or route is None:
            return None
        needs = Needs(
            images=len(spec.inputs),
            size=spec.size,
            quality=spec.quality,
            background=spec.background,
            output_format=spec.output_format,
            count=spec.count,
            mask=spec.mask is not None,
            prompt_chars=len(spec.prompt),
        )
        usd = route_reserve_usd(model, route, needs, prompt=spec.prompt)
        return min(usd_to_credits(usd, self.settings.credits_per_usd), spec.reserve)

    async def _charge_cancelled(self, job: _Job, ref: str) -> bool:
        """A member cancelled a job a provider already accepted: charge what that provider charges for
        it. False when it cannot be priced (it is then released like any other cancel)."""
        charged = await self._provider_price(job)
        if charged is None:
            return False
        try:
            settled = await self.storage.settle_cancelled_at_provider(
                job.id, charged, error_code="cancelled_at_provider", error_ref=ref
            )
        except LedgerConflict:
            return False
        charged = settled[1] if settled is not None else 0
        log.info("job %s cancelled after %s had it: charged %d", job.id, job.provider, charged)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.files.remove, job.id)
        self._finished(job, "cancelled", job.provider, charged, "cancelled_at_provider")
        text = CANCELLED_AT_PROVIDER.format(charged=charged)
        if not job.quiet:
            await self._say(job, text)
        elif job.live is not None:
            with contextlib.suppress(Exception):
                await job.live.finish(None)
        self._resolve(job, JobCancelled())
        return True

    async def _end_charged(self, job: _Job, ref: str) -> None:
        """An error after the charge was recorded: the job counts as delivered, and the member is not
        told they were not charged."""
        row = await self.storage.get_job(job.id)
        charged = int(row.captured or 0) if row is not None else 0
        self._finished(job, "delivered", job.provider, charged, None)
        error = JobFailed(
            f"Your edit was posted and charged ({charged} credits), but something went wrong afterwards.",
            ref=ref,
            code="after_delivery",
        )
        if job.live is not None:
            with contextlib.suppress(Exception):
                await job.live.finish(error.user_message)
        self._resolve(job, error)

    def _user_error(self, job: _Job, exc: BaseException, ref: str) -> RetouchError:
        """What the user is told: provider and unexpected errors get text and a log reference."""
        if isinstance(exc, perr.ProviderError):
            log.warning(
                "job %s failed (ref %s): %s from %s status=%s code=%s request_id=%s: %s",
                job.id,
                ref,
                type(exc).__name__,
                exc.provider,
                exc.status,
                exc.code,
                exc.request_id,
                exc,
            )
            if isinstance(exc, perr.ServiceUnavailable):
                log.error(
                    "provider %s needs the admin's attention (auth, billing or access) ref %s",
                    exc.provider,
                    ref,
                )
            return JobFailed(message_for_provider_error(exc), ref=ref, code=type(exc).__name__)
        if isinstance(exc, RetouchError):
            return exc
        if isinstance(exc, asyncio.CancelledError):
            return JobInterrupted()
        log.error("job %s failed unexpectedly (ref %s)", job.id, ref, exc_info=exc)
        return JobFailed(
            "Something went wrong with this edit. You were not charged.", ref=ref, code="internal"
        )

    async def _say(self, job: _Job, text: str) -> None:
        """Tell the user: on the live progress message if there is one, else through the Delivery."""
        shown = False
        if job.live is not None:
            try:
                shown = await job.live.finish(text)
            except Exception as exc:
                log.info("job %s: progress message unavailable: %s", job.id, type(exc).__name__)
        if not shown:
            try:
                await self.delivery.notify(job.info, text)
            except Exception as exc:
                log.warning("job %s: could not tell the user: %s", job.id, type(exc).__name__)

    async def _tell_live(self, job: _Job, text: str) -> None:
        """Tell the user only if their command is still in this process; a job that was already
        recovered once needs no channel message each time the bot restarts."""
        if job.live is not None:
            with contextlib.suppress(Exception):
                await job.live.finish(text)

    def _resolve(self, job: _Job, result: EditOutcome | BaseException) -> None:
        waiter = job.waiter
        if waiter is None or waiter.done():
            return
        if isinstance(result, asyncio.CancelledError):
            waiter.cancel()
        elif isinstance(result, BaseException):
            waiter.set_exception(result)
        else:
            waiter.set_result(result)

    # -- start-up recovery ---------------------------------------------------------------------------

    async def recover(self) -> dict[str, int]:
        """Pick up every live job the last process left, before new commands are taken.

        * `queued` (no hold yet) and `submitting` (a call whose outcome is unknown) are released and
          the user is told; * `reserved` jobs are queued again in their old order; * `submitted`
          jobs resume polling (released like `submitting` if the provider cannot resume);
          * `completed` jobs are delivered from the stored result (after checking whether a delivery
          the crash interrupted had landed). Then holds without a live job are released, and job
          folders past their retention are deleted.
        """
        counts = dict.fromkeys(
            ("requeued", "resumed", "delivering", "released", "quarantined", "orphan_holds", "swept"), 0
        )
        self._durations.extend(await self.storage.recent_run_seconds(ETA_WINDOW))
        for row in await self.storage.jobs_in_states(LIVE_STATES):
            if row.id in self._jobs:
                continue
            try:
                outcome = await self._recover_one(row)
            except Exception as exc:
                # One unreadable row (hand-edited, written by a broken build, a damaged file) must not
                # keep every other job and the bot itself from starting.
                outcome = await self._quarantine(row, exc)
            counts[outcome] += 1
        counts["orphan_holds"] = await self._release_orphan_holds()
        for guild_id, user_id, held, open_ in await self.storage.held_mismatches():
            log.error(
                "recovery: account %s/%s holds %d credits but its open jobs hold %d",
                guild_id,
                user_id,
                held,
                open_,
            )
        try:
            counts["swept"] = await self.sweep()
        except Exception:
            log.exception("recovery: the sweep failed; the watchdog runs it again within the hour")
        if any(counts.values()):
            log.info("recovery: %s", ", ".join(f"{k} {v}" for k, v in counts.items() if v))
        self._pump()
        return counts

    async def _recover_one(self, row: JobRow) -> str:
        job = _Job(JobInfo.of(row), row.model, provider=row.provider)
        spec = JobSpec.from_json(row.spec) if row.spec else None
        usable = spec is not None and await asyncio.to_thread(self.files.exists, row.id, spec.input_names)
        if row.state == "reserved" and usable:
            self._jobs[row.id] = job
            self._waiting.append(row.id)
            return "requeued"
        resumable = row.provider is not None and self.router.resumable(row.provider)
        if row.state == "submitted" and usable and row.provider_job_ids and resumable:
            self._jobs[row.id] = job
            self._launch(job)  # it already holds a slot at the provider: no queueing behind new jobs
            return "resumed"
        if row.state == "completed" and row.result:
            _check_record(json.loads(row.result))
            self._jobs[row.id] = job
            self._launch(job)
            return "delivering"
        text = RESTARTED_BEFORE_START if row.state in ("queued", "reserved") else RESTARTED_MID_SUBMIT
        code = "restart_before_start" if row.state in ("queued", "reserved") else "restart_outcome_unknown"
        await self.storage.settle_released(row.id, "cancelled", error_code=code, error_ref=new_reference())
        await asyncio.to_thread(self.files.remove, row.id)
        await self.storage.forget_job_details(row.id)  # the prompt goes with the images
        self._finished(job, "cancelled", row.provider, 0, code)
        log.warning("recovery: job %s was %s when the bot stopped; released (%s)", row.id, row.state, code)
        self._spawn(self._say(job, text))
        return "released"

    async def _quarantine(self, row: JobRow, exc: Exception) -> str:
        """Set aside a job whose row cannot be recovered: release its hold, mark it failed with the
        code `quarantined`, keep its row and files for the admin, and say so in the log."""
        ref = new_reference()
        self._jobs.pop(row.id, None)
        with contextlib.suppress(ValueError):
            self._waiting.remove(row.id)
        log.error(
            "recovery: job %s (state %s) is unreadable and was quarantined (ref %s): %s",
            row.id,
            row.state,
            ref,
            type(exc).__name__,
            exc_info=exc,
        )
        try:
            await self.storage.settle_released(row.id, "failed", error_code="quarantined", error_ref=ref)
        except Exception as settle_exc:
            log.error("recovery: could not settle quarantined job %s: %s", row.id, type(settle_exc).__name__)
        with contextlib.suppress(Exception):
            job = _Job(JobInfo.of(row), str(row.model))
            self._finished(job, "failed", row.provider, 0, "quarantined")  # metrics and the audit channel
            self._spawn(self._say(job, f"{RESTARTED_MID_SUBMIT} (ref `{ref}`)"))
        return "quarantined"

    async def _release_orphan_holds(self) -> int:
        """Release holds whose job is gone or already ended, so every account's `held` is exactly
        the sum of its live jobs' reservations."""
        released = 0
        for hold in await self.storage.open_holds():
            if hold.job_state in LIVE_STATES:
                continue
            try:
                await self.storage.release(hold.job_id, reason="orphan_hold")
            except LedgerConflict:
                continue
            released += 1
            log.warning(
                "recovery: released an orphaned hold of %d credits (job %s)", hold.amount, hold.job_id
            )
        return released

    async def sweep(self) -> int:
        """Delete job folders whose job is gone, or ended and past its retention (with the job's prompt
        and options), then prune history older than JOB_HISTORY_DAYS. Returns how many folders went."""
        now = _iso(self.storage.now())
        removed = 0
        for job_id in await asyncio.to_thread(self.files.job_ids):
            if job_id in self._jobs or job_id in self._creating:
                continue
            row = await self.storage.get_job(job_id)
            expired = row is None or (
                row.state in TERMINAL_STATES and (row.files_expire_at is None or row.files_expire_at < now)
            )
            if expired:
                await asyncio.to_thread(self.files.remove, job_id)
                if row is not None:  # the prompt goes with the images
                    await self.storage.forget_job_details(job_id)
                removed += 1
        # Rows whose folder is already gone (failed, cancelled, refused) or was never written.
        await self.storage.forget_expired_details()
        history = self.storage.now() - dt.timedelta(days=self.settings.job_history_days)
        jobs, ledger = await self.storage.prune_history(history)
        if jobs or ledger:
            log.info("retention: %d old job row(s) deleted, %d ledger row(s) lost their detail", jobs, ledger)
        return removed

    # -- the watchdog --------------------------------------------------------------------------------

    async def watchdog_tick(self) -> int:
        """Cancel (and release) every live job past its deadline; returns how many were stopped."""
        stopped = 0
        for row in await self.storage.overdue_jobs(self.storage.now()):
            job = self._jobs.get(row.id)
            if job is None:
                continue
            if row.id in self._waiting:
                self._waiting.remove(row.id)
                await self._end(job, JobTimedOut(queued=True))
                self._jobs.pop(row.id, None)
            elif not job.abort.is_set():
                log.warning(
                    "watchdog: job %s is past its deadline at %s; cancelling it", row.id, row.provider
                )
                job.abort_reason = "timeout"
                job.abort.set()
            else:
                continue
            stopped += 1
        if stopped:
            self._pump()
        return stopped

    async def _watch(self) -> None:
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_SECONDS)
            try:
                await self.watchdog_tick()
                if time.monotonic() - last_sweep >= SWEEP_INTERVAL_SECONDS:
                    last_sweep = time.monotonic()
                    await self.sweep()
            except Exception:
                log.exception("watchdog round failed")

    async def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    # -- small helpers -----------------------------------------------------------------------------

    async def _update(self, job: _Job, status: JobStatus) -> None:
        if job.live is None:
            return
        try:
            await job.live.update(status)
        except Exception as exc:
            log.debug("job %s: progress update failed: %s", job.id, type(exc).__name__)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _flush_background(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=SHUTDOWN_ABORT_WAIT_SECONDS)

    def _notify(self, event: str, *args: object, **kwargs: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, event)(*args, **kwargs)
            except Exception:
                log.exception("job observer %r failed on %s", observer, event)

    def _finished(self, job: _Job, state: str, provider: str | None, charged: int, error: str | None) -> None:
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


def _check_record(record: Any) -> None:
    """Raise ValueError unless `record` is a stored result the engine can deliver (see `_complete`)."""
    files = record.get("files") if isinstance(record, dict) else None
    usable = isinstance(files, list) and all(
        isinstance(f, dict) and isinstance(f.get("disk"), str) and isinstance(f.get("filename"), str)
        for f in files
    )
    if (
        not usable
        or not isinstance(record.get("charged"), int)
        or not isinstance(record.get("provider"), str)
    ):
        raise ValueError("the stored result is not readable")


def _too_late(state: str) -> str:
    if state == "completed":
        return "Too late to cancel: your edit is finished and being posted."
    if state == "delivered":
        return "Too late to cancel: your edit was already posted."
    return "This edit has already ended."
