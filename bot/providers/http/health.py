"""Health checks for `/diagnose`: one cheap authenticated call, read as reachability and auth."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import aiohttp

from bot.providers.base import ProviderHealth
from bot.providers.errors import (
    ConnectionFailed,
    ProviderError,
    ProviderTimeout,
    RateLimited,
)
from bot.providers.http.requests import send_idempotent
from bot.providers.http.transport import Classifier, HttpResponse, RetryPolicy

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 8.0  # `/diagnose` must answer quickly even when a service is down
CHECK_POLICY = RetryPolicy(attempts=1)


async def send_check(
    session: aiohttp.ClientSession,
    url: str,
    *,
    provider: str,
    classify: Classifier,
    headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    """The one GET of a provider's `check()`: a single try within `CHECK_TIMEOUT`, nothing billable."""
    return await send_idempotent(
        session,
        "GET",
        url,
        policy=CHECK_POLICY,
        deadline=time.monotonic() + CHECK_TIMEOUT,
        call_timeout=CHECK_TIMEOUT,
        provider=provider,
        headers=headers,
        classify=classify,
    )


def health_from_error(exc: ProviderError, *, key_sent: bool = True) -> ProviderHealth:
    """What a failed check call says about the service: status and error code, never the body.

    With `key_sent=False` (a call that needs no key) an HTTP error says nothing about the key.
    """
    what = f"HTTP {exc.status}" if exc.status else type(exc).__name__
    if exc.code:
        what += f" {exc.code}"
    if isinstance(exc, ConnectionFailed | ProviderTimeout):
        return ProviderHealth(reachable=False, authenticated=None, detail=f"unreachable ({what})")
    if key_sent and exc.status in (401, 403):
        return ProviderHealth(reachable=True, authenticated=False, detail=f"API key refused ({what})")
    if key_sent and isinstance(exc, RateLimited):
        # A 429 comes after authentication: the key works, the account is just busy.
        return ProviderHealth(reachable=True, authenticated=True, detail=f"rate limited ({what})", ok=True)
    return ProviderHealth(reachable=True, authenticated=None, detail=f"error ({what})")
