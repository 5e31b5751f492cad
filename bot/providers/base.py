"""The provider protocol: what every image-edit adapter takes and returns.

Nothing here knows about Discord. Adapters receive plain bytes and strings and return plain bytes,
so the job service can run them, test them and swap them without a bot.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol, runtime_checkable

from bot.domain.options import Usage


@dataclass(frozen=True, slots=True)
class InputImage:
    """One validated input image. `mime` is sniffed from the bytes, never taken from a filename."""

    data: bytes
    mime: str  # image/png | image/jpeg | image/webp
    width: int
    height: int

    @property
    def extension(self) -> str:
        return {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}[self.mime]


# A job its provider finished just before the deadline still has its result to download (a CDN fetch
# of a few MB): it gets this long past the deadline, so an image made and paid for is not thrown away.
# Below the watchdog's grace (bot.jobs.running.DEADLINE_GRACE_SECONDS), which stays the backstop.
DOWNLOAD_GRACE_SECONDS = 20.0


@dataclass(slots=True, eq=False)
class ResultFetches:
    """How many calls of one job are downloading the result of a job their provider finished
    (`EditRequest.fetching_result`): one object, shared by the copies of a request (`replace`)."""

    count: int = 0


@dataclass(frozen=True, slots=True)
class EditRequest:
    """Everything a provider needs for one edit job.

    `model` is the provider-facing model id (bot.lifecycle resolves user choices and retirements before
    a request is built). `deadline` is a `time.monotonic()` instant after which the adapter must give up.
    `mask`, when present, follows the OpenAI convention (PNG, alpha 0 = edit, same size as the first
    image); adapters convert it to their own convention.
    """

    images: tuple[InputImage, ...]
    prompt: str
    model: str
    quality: str = "auto"
    size: str = "auto"
    background: str = "auto"
    output_format: str = "png"
    count: int = 1
    user_hash: str | None = None
    mask: InputImage | None = None
    input_fidelity: str | None = None  # only sent when the catalog says the model supports it
    deadline: float = field(default_factory=lambda: time.monotonic() + 300.0)
    fetches: ResultFetches = field(default_factory=ResultFetches, compare=False, repr=False)

    def remaining(self) -> float:
        """Seconds left before the job's deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    @contextlib.contextmanager
    def fetching_result(self) -> Iterator[float]:
        """Around the download of a result the provider has finished: yields the download's deadline,
        `DOWNLOAD_GRACE_SECONDS` past the job's, and marks the job as fetching meanwhile (`overdue`)."""
        self.fetches.count += 1
        try:
            yield self.deadline + DOWNLOAD_GRACE_SECONDS
        finally:
            self.fetches.count -= 1

    def overdue(self) -> bool:
        """Whether the job's time is up: its deadline passed and no finished result is being fetched,
        or the download's grace passed too. A job not yet finished never runs past its deadline."""
        now = time.monotonic()
        if now < self.deadline:
            return False
        return self.fetches.count == 0 or now >= self.deadline + DOWNLOAD_GRACE_SECONDS


@dataclass(frozen=True, slots=True)
class OutputImage:
    """One image a provider made, in the format it says."""

    data: bytes
    format: str  # png | jpeg | webp


@dataclass(frozen=True, slots=True)
class EditResult:
    """What one provider call returned: images, what it resolved `auto` to, usage and cost."""

    images: tuple[OutputImage, ...]
    provider: str
    quality: str | None = None  # resolved quality (never "auto" when the provider reports it)
    size: str | None = None  # resolved size
    usage: Usage | None = None
    request_id: str | None = None
    cost_usd: str | None = None  # provider-reported charge (e.g. Segmind x-cost), as a decimal string


@dataclass(frozen=True, slots=True)
class ListedModel:
    """One model a provider lists as served (OpenAI `GET /v1/models`).

    `shutdown_date` is the day the provider says the model stops working, or None when it gives
    none (or gave one that could not be read).
    """

    id: str
    shutdown_date: date | None = None


@runtime_checkable
class Provider(Protocol):
    """An adapter for one service that sells GPT Image edits."""

    name: str

    async def edit(self, request: EditRequest) -> EditResult:
        """Run one edit. Raises a `bot.providers.errors.ProviderError` subclass on failure."""
        ...


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """The result of a provider's cheapest authenticated call (for `/diagnose`).

    `authenticated` is None when the call could not tell (the service was unreachable or failed).
    `detail` is short and safe to show an admin: a status and error code, never a response body.
    """

    reachable: bool
    authenticated: bool | None
    detail: str
    ok: bool = False


@runtime_checkable
class CheckableProvider(Protocol):
    """Optional: an adapter that can check reachability and auth without paying for anything."""

    async def check(self) -> ProviderHealth:
        """Make the cheapest authenticated call the API offers. Never raises for HTTP failures."""
        ...


@runtime_checkable
class ValidatingProvider(Protocol):
    """Optional: an adapter that knows, locally, which requests it can send (the resellers' field
    tables). The catalog's routes are checked against it at start-up."""

    def validate(self, request: EditRequest) -> None:
        """Raise a `ProviderError` (InvalidInput, ModelUnavailable) for a request it cannot send."""
        ...


# Awaited with the provider's job id as soon as a submit-then-poll provider has accepted a job.
OnSubmitted = Callable[[str], Awaitable[None]]


@runtime_checkable
class ResumableProvider(Protocol):
    """Optional: a submit-then-poll adapter whose jobs can be followed again, e.g. after a restart.

    `edit(request, on_submitted=cb)` awaits `cb(provider_job_id)` once the provider has accepted the
    job and *before* it starts polling, so the caller can record the id first (an error from `cb`
    ends the edit). `resume(provider_job_id, request)` polls that job again until `request.deadline`
    and returns its result, raising the same errors as `edit`; it never submits anything.
    """

    async def edit(self, request: EditRequest, *, on_submitted: OnSubmitted | None = None) -> EditResult:
        """Run one edit, reporting the provider's job id through `on_submitted` when it is accepted."""
        ...

    async def resume(self, provider_job_id: str, request: EditRequest) -> EditResult:
        """Follow a job submitted earlier to its result (`request` is the one it was submitted with)."""
        ...


@runtime_checkable
class CancellableProvider(Protocol):
    """Optional: an adapter that can stop a job the provider has accepted (none of today's vendors
    documents one). Best effort: raise a `ProviderError` if the provider refuses."""

    async def cancel(self, provider_job_id: str) -> None:
        """Ask the provider to stop the job (and, if it bills that way, not to charge for it)."""
        ...
