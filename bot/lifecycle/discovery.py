"""Reading a provider's model list (OpenAI's `GET /v1/models`): at start-up, then once a day.

What a list says is applied by `ModelLifecycle.apply_listing` (dates kept beside the catalog's, routes
it no longer lists retired, new image models reported); this module reads it, bounds the read, and
keeps a failed or useless read from changing anything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bot.providers.errors import (
    ConnectionFailed,
    ProviderTimeout,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)

if TYPE_CHECKING:
    from bot.lifecycle.live import ModelLifecycle

# The package's one logger: its lines keep the name operators filter on (and tests read).
log = logging.getLogger("bot.lifecycle")

# The provider whose model list (GET /v1/models) carries shutdown dates.
OPENAI = "openai"
# OpenAI's image models: an id with this prefix the catalog does not know is a new model to look at.
IMAGE_MODEL_PREFIX = "gpt-image-"
# OpenAI's model list is read at start-up and then this often.
DISCOVERY_INTERVAL_SECONDS = 24 * 3600

DISCOVERY_TIMEOUT_SECONDS = 20.0  # a listing that hangs must not hold up start-up


class ListedModel(Protocol):
    """One entry of a provider's model list (OpenAI `GET /v1/models`, see the OpenAI adapter)."""

    @property
    def id(self) -> str: ...

    @property
    def shutdown_date(self) -> dt.date | None: ...


Lister = Callable[[], Awaitable[Sequence[ListedModel]]]


@dataclass(frozen=True)
class DiscoveryReport:
    """What one read of a provider's model list showed an admin."""

    provider: str
    ok: bool
    soon: tuple[str, ...] = ()  # "gpt-image-2 on openai shuts down on 2027-02-10 (in 20 days)"
    unknown: tuple[str, ...] = ()  # gpt-image-* ids the catalog does not know
    missing: tuple[str, ...] = ()  # catalog models the list does not have
    error: str | None = None


def _why_unread(exc: Exception) -> str:
    """Why a model list could not be read, in /diagnose's words (the class name goes to the log)."""
    if isinstance(exc, ServiceUnavailable):
        return "the service refused the key or the account"
    if isinstance(exc, TimeoutError | ProviderTimeout):
        return "no answer in time"
    if isinstance(exc, ConnectionFailed | OSError):  # ConnectionError is an OSError
        return "the service could not be reached"
    if isinstance(exc, ServerError | RateLimited):
        return "the service is busy or failing"
    return "an answer it could not read (see the log)"


async def discover_once(lifecycle: ModelLifecycle, provider: str, lister: Lister) -> DiscoveryReport:
    """Read `provider`'s model list once and apply it. A failure changes nothing (logged)."""
    try:
        async with asyncio.timeout(DISCOVERY_TIMEOUT_SECONDS):
            listing = await lister()
    except Exception as exc:  # any failure: keep the catalog's view
        log.warning(
            "could not read %s's model list (%s); keeping the catalog's dates", provider, type(exc).__name__
        )
        return lifecycle.listing_failed(provider, _why_unread(exc))
    if not lifecycle.names_any_route(provider, listing):
        # A gateway at OPENAI_BASE_URL that lists only its chat models, or a key whose project sees
        # no image model: applied, it would mark every route unlisted and stop all editing, while a
        # real shutdown is caught by its date or by the provider's "model gone" answer anyway.
        log.warning(
            "%s's model list names none of the catalog's models for it; keeping the catalog's view",
            provider,
        )
        return lifecycle.listing_failed(provider, "lists none of the catalog's models")
    return await lifecycle.apply_listing(provider, listing)


async def discover_forever(
    lifecycle: ModelLifecycle,
    provider: str,
    lister: Lister,
    *,
    interval: float = DISCOVERY_INTERVAL_SECONDS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Re-read the model list every `interval` seconds (the first read is `discover_once` at start)."""
    while True:
        await sleep(interval)
        await discover_once(lifecycle, provider, lister)
