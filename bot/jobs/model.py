"""What a job is: its states, its stored spec, what it produces, and the errors that end it.

Plain values only (no I/O): the vocabulary the engine, the edit service, the Discord layer and
storage share. `JobState` is mirrored by a database constraint (migration 0008).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from bot import messages
from bot.errors import RetouchError, new_reference
from bot.routing import Needs

if TYPE_CHECKING:
    from bot.storage.jobs import JobRow

log = logging.getLogger(__name__)


class JobState(StrEnum):
    """Where a job stands (the `jobs.state` column; see `bot.jobs` for the state machine).

    A StrEnum, so a state compares equal to the string stored in the database.
    """

    QUEUED = "queued"  # the row and the input files exist, nothing is held yet
    RESERVED = "reserved"  # the credits are held; waiting in the queue for a slot
    SUBMITTING = "submitting"  # a provider call is about to be / being made
    SUBMITTED = "submitted"  # a submit-then-poll provider accepted the job and its id is stored
    COMPLETED = "completed"  # the result is on disk and described in the row; only delivery is left
    DELIVERED = "delivered"  # terminal: posted, hold captured
    FAILED = "failed"  # terminal: hold released
    CANCELLED = "cancelled"  # terminal: hold released (or charged when cancelled at a provider)


# -- errors ----------------------------------------------------------------------------------------


class JobFailed(RetouchError):
    """A job failed after it started; credits were released. Carries the log reference."""

    def __init__(self, user_message: str, *, ref: str, code: str) -> None:
        super().__init__(messages.with_reference(user_message, ref), code=code)
        self.ref = ref


class JobInterrupted(RetouchError):
    """A restart or shutdown ended the job before its result; the hold was released."""

    def __init__(self) -> None:
        super().__init__(messages.INTERRUPTED, code="interrupted")


class JobCancelled(RetouchError):
    """The job was cancelled (by its requester, a moderator or the queue's watchdog)."""

    def __init__(self) -> None:
        super().__init__(messages.CANCELLED, code="cancelled")


class JobTimedOut(RetouchError):
    """The watchdog cancelled a job past its deadline (in the queue or at the provider)."""

    def __init__(self, *, queued: bool) -> None:
        super().__init__(messages.timed_out(queued=queued), code="queue_timeout" if queued else "timeout")


class ModelRetired(JobFailed):
    """The job's model was shut down at every configured provider and the job cannot move. The hold
    is released; the reference ties the member's message to the provider's answers in the log."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message, ref=new_reference(), code="model_retired")


class NotAllowed(RetouchError):
    """Someone other than the requester (and without Manage Messages) tried to control a job."""


class SuspendJob(Exception):
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
    # CREDITS_PER_USD when `reserve` was priced (0: a row from before it was kept). A job run after the
    # operator changed the rate is checked against its hold at the rate it was held at, not refused.
    credits_per_usd: int = 0

    def held_rate(self, current: int) -> int:
        """The credits per US dollar `reserve` was priced at (`current` for a row that did not keep it)."""
        return self.credits_per_usd or current

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

    def needs(self) -> Needs:
        """What this job asks of a route (routing and pricing read it from the stored spec)."""
        return Needs.with_options(
            self, images=len(self.inputs), mask=self.mask is not None, prompt_chars=len(self.prompt)
        )

    @property
    def restores_outside(self) -> bool:
        """A masked job whose result gets the original's pixels back outside the mask."""
        return self.mask is not None and self.mask.keep_outside

    @property
    def input_names(self) -> list[str]:
        names = [f.name for f in self.inputs]
        if self.mask is not None:
            names += [self.mask.provider, self.mask.region]
        return names


def result_filename(job_id: str, index: int, ext: str) -> str:
    """A result image's name as posted. It names the job, so a post can be found, and tied to its
    job, without its embed: Discord drops embeds from a channel message where the bot lacks Embed
    Links."""
    return f"retouch_{job_id}_{index}.{ext}"


def names_result_of(filename: str, job_id: str) -> bool:
    """Whether a posted file is one of `job_id`'s results (before 2026-12-07, with 8 of its digits)."""
    return filename.startswith((f"retouch_{job_id}_", f"retouch_{job_id[:8]}_"))


@dataclass(frozen=True)
class ResultFile:
    """One stored result image, as it will be posted."""

    filename: str
    data: bytes
    format: str


@dataclass(frozen=True)
class EditOutcome:
    """A finished edit as the member sees it: the files, the model used, the charge and notes."""

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
    # Credits the provider billed beyond `charged` (images that came back unusable, failed calls it
    # took, any charge above the hold): nobody pays them, the budgets count them.
    absorbed: int = 0
    # A masked result whose outside pixels are the original's (a re-encode must keep or say otherwise).
    restored: bool = False


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
            created_at=parse_time(row.created_at) or dt.datetime.now(dt.UTC),
            interaction_at=parse_time(row.interaction_at),
            origin_message_id=row.origin_message_id,
        )


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


@dataclass(frozen=True)
class CancelAnswer:
    """What `JobEngine.cancel` did, for the control that asked: `text` for the person who clicked.

    `cancelled`: this process ended the job as cancelled, charging `charged` credits (a provider had
    it). `pending`: the job has not ended yet (another process holds it, or it is slow to stop here);
    how it ends reaches the member on its own (the job's progress message or a notice), so the control
    answers privately and leaves the progress message to it. Neither: it had already ended.
    """

    text: str
    cancelled: bool = False
    charged: int = 0
    pending: bool = False


# -- how results reach a member (the Discord layer implements these) ------------------------------


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


@dataclass(frozen=True)
class Delivered:
    """Where a result was posted: via interaction, channel or dm, and the message if known."""

    via: str
    channel_id: int | None = None
    message_id: int | None = None


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

    async def notify(self, job: JobInfo, text: str, *, charged: int) -> bool:
        """Tell the user how their job ended (`text` may say why; `charged`: the credits it cost them),
        privately where possible. False when nobody could be reached."""
        ...

    async def find(self, job: JobInfo) -> Delivered | None:
        """A result message already posted for `job` (a delivery a crash interrupted), or None."""
        ...


class NoDelivery:
    """The default before the Discord layer attaches: nothing can be delivered outside a LiveJob."""

    async def deliver(self, job: JobInfo, outcome: EditOutcome) -> Delivered:
        raise DeliveryFailed("no delivery route is attached")

    async def notify(self, job: JobInfo, text: str, *, charged: int) -> bool:
        log.info("job %s: nobody to tell (%s)", job.job_id, text)
        return False

    async def find(self, job: JobInfo) -> Delivered | None:
        return None


# -- who watches jobs, and small helpers -----------------------------------------------------------


class JobObserver:
    """Receives job lifecycle events (metrics, audit). Every method is a no-op by default.

    Observers must not raise; the engine logs and ignores their errors so a metrics bug never
    costs a user an edit.
    """

    def job_started(self, job_id: str, model: str) -> None: ...

    def provider_finished(self, provider: str, model: str, seconds: float, error: str | None) -> None: ...

    def jobs_adopted(self, how: str, count: int) -> None:
        """`count` live jobs another run or process left were picked up here (start-up recovery or a
        takeover) and `how` they went on: requeued, resumed, delivering, released, quarantined or
        cancelled."""

    def job_finished(
        self,
        job_id: str,
        state: JobState,
        *,
        model: str,
        provider: str | None,
        charged: int,
        seconds: float,
        error: str | None,
    ) -> None: ...


def db_time(moment: dt.datetime) -> str:
    """The database's timestamp format (UTC, milliseconds), so comparisons of strings work."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None
