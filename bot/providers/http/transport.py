"""Transport: one HTTP request with deadlines, size caps, redirects that are checked hop by hop
and never carry the caller's credentials to another origin, and the shared retry policy.

Logging never includes API keys, headers or URL query strings (signed URLs): URLs are logged
through `redact_url`, and exception messages are built here rather than copied from aiohttp
(whose messages can contain the full URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json as _json
import logging
import math
import random
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from yarl import URL

from bot.providers.errors import (
    InvalidInput,
    ModelUnavailable,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)
from bot.providers.netguard import (
    MAX_REDIRECTS,
    UnsafeDestination,
    can_check_peers,
    check_untrusted_url,
    origin_of,
    peer_checked,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds to open a TCP/TLS connection (part of every call's budget)
MAX_RESPONSE_BYTES = 128 * 1024 * 1024  # 10 base64 PNGs at 1536x1024 fit with room to spare
DEFAULT_MIN_RETRY_WINDOW = 1.0  # a paid retry needs at least this long left after its wait
CANCEL_TIMEOUT = 10.0  # a poll's cancel call runs after the deadline, so it gets its own budget
_READ_CHUNK = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

T = TypeVar("T")
# Around the read of a 2xx body that is itself a finished, billed result: yields how many seconds that
# read may outlast the call's own timeout (`send_paid`'s `result_in_body`).
BodyGrace = Callable[[], contextlib.AbstractContextManager[float]]


class Classifier(Protocol):
    """Maps one error response to an exception (each vendor has exactly one such function)."""

    def __call__(
        self, status: int, body: bytes, headers: Mapping[str, str], *, provider: str
    ) -> ProviderError: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """One retry policy for every provider.

    `attempts` counts the first try (3 = one call plus up to two retries). Backoff doubles from
    `base_delay` up to `max_delay` and is reduced by up to `jitter` (a fraction) so that clients
    that failed together do not retry together. A server's retry-after hint is honoured only up to
    `max_retry_after` seconds; a longer wait is treated as "do not retry here".
    """

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 60.0
    # Whether `send_paid` waits out a 429's retry-after and sends again by itself. The bot turns it
    # off: its adaptive limiter (bot.concurrency) sends a refused paid call again, counting the wait
    # and the call against the provider's limit, which an adapter-internal retry would hide.
    retry_paid_429: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a fraction between 0 and 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), capped and jittered."""
        exponent = max(0, attempt - 1)
        capped = min(self.max_delay, self.base_delay * (2.0 ** min(exponent, 30)))
        return capped * (1.0 - random.uniform(0.0, self.jitter))


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A fully read response. `headers` is case-insensitive (aiohttp's CIMultiDictProxy)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    request_id: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-cased ("" when absent)."""
        raw = _header(self.headers, "content-type") or ""
        return raw.split(";", 1)[0].strip().lower()

    def json(self) -> Any:
        """Decode the body as JSON. Raises `ValueError` when it is not JSON."""
        return _json.loads(self.body)


# --------------------------------------------------------------------------- small helpers


def redact_url(url: object) -> str:
    """The URL without query string, fragment or user info: safe to log.

    Signed download URLs carry their credentials in the query, and `user:pass@host` URLs in the
    netloc; neither may reach a log line.
    """
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup that also works on a plain dict."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def http_date(text: str) -> datetime | None:
    """An HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`), or None when `text` is not one."""
    try:
        return email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None


def seconds_until(when: datetime, now: datetime | None = None) -> float:
    """Seconds from `now` (default: the current time) until `when`, a naive time read as UTC; 0 for
    a time in the past (a server's "wait until" hint)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait, or None when it gave no usable hint.

    Reads `retry-after-ms` first (OpenAI sends it), then `retry-after` as seconds or as an
    HTTP date (a date in the past gives 0). Negative, infinite or malformed values give None.
    """
    raw_ms = _header(headers, "retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms.strip())
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        when = http_date(raw)
        return None if when is None else seconds_until(when)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def redirected(status: int, headers: Mapping[str, str], *, provider: str) -> ServiceUnavailable:
    """A 3xx answer to a call that follows no redirects (a paid submit): the base URL is not the
    service's own (http:// for https://, an old host), which the operator must fix. Nothing was made,
    and it says nothing about the member's input."""
    location = next((v for k, v in headers.items() if k.lower() == "location"), "")
    where = redact_url(location) if location else "another address"
    return ServiceUnavailable(
        f"HTTP {status}: redirected to {where}; check the provider's base URL",
        provider=provider,
        status=status,
        code="redirected",
    )


def classify_http_status(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> ProviderError:
    """A vendor-neutral mapping for providers without a documented error format.

    5xx keeps `accepted=True` (the server answered, but may have done the work). Vendors with a
    known error body write their own classifier instead.
    """
    msg = f"HTTP {status}"
    if status == 429:
        return RateLimited(msg, retry_after=parse_retry_after(headers), provider=provider, status=status)
    if status in (401, 402, 403):
        return ServiceUnavailable(msg, provider=provider, status=status)
    if status in (404, 410):
        return ModelUnavailable(msg, provider=provider, status=status)
    if status == 408:
        return ProviderTimeout(msg, provider=provider, status=status)
    if 400 <= status < 500:
        return InvalidInput(msg, provider=provider, status=status)
    if 300 <= status < 400:
        return redirected(status, headers, provider=provider)
    return ServerError(msg, provider=provider, status=status, accepted=status >= 500)


def _describe(exc: BaseException) -> str:
    """A log-safe description of a transport exception (aiohttp's own text can contain the URL)."""
    name = type(exc).__name__
    os_error = getattr(exc, "os_error", None)
    strerror = getattr(os_error, "strerror", None) or getattr(exc, "strerror", None)
    return f"{name} ({strerror})" if strerror else name


def _remaining(deadline: float) -> float:
    return deadline - time.monotonic()


def _call_timeout(deadline: float, call_timeout: float) -> aiohttp.ClientTimeout | None:
    """The timeout for one call, or None when the deadline has already passed."""
    remaining = _remaining(deadline)
    if remaining <= 0:
        return None
    total = min(call_timeout, remaining)
    return aiohttp.ClientTimeout(total=total, connect=min(CONNECT_TIMEOUT, total))


class _BodyTooLarge(Exception):
    pass


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > max_bytes:
        raise _BodyTooLarge(declared)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise _BodyTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


async def _request_once(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    client_timeout: aiohttp.ClientTimeout,
    headers: Mapping[str, str] | None,
    params: Mapping[str, str] | None,
    data_factory: Callable[[], Any] | None,
    json_body: Any,
    max_body: int,
    allow_redirects: bool,
    request_id_header: str,
    trusted: Collection[str] | None = None,
    body_grace: BodyGrace | None = None,
) -> HttpResponse:
    """One request, following at most `MAX_REDIRECTS` redirects itself (aiohttp's own would re-send
    custom key headers such as `x-api-key` to any host).

    With `body_grace`, the body of a 2xx answer is read inside it, for as much longer than
    `client_timeout.total` as it says; an error answer's body, and the wait for the status line, are not.

    `trusted=None` means the bot built `url` from a configured base URL, so its origin is trusted;
    otherwise `url` came from a provider and only the origins of the `trusted` base URLs are. Every
    hop to an untrusted origin must pass the public-address rule (`bot.providers.netguard`), and
    `headers` (the API key) are sent only to `url`'s own origin, never across a redirect.
    Raises `UnsafeDestination` for a refused hop.
    """
    first = origin_of(url)
    allowed = {first} if trusted is None else {origin_of(u) for u in trusted}
    allowed.discard(None)
    current: str | URL = url
    hops = 0
    while True:
        try:
            target = current if isinstance(current, URL) else URL(current)
        except (ValueError, TypeError):
            raise aiohttp.InvalidURL(redact_url(current)) from None
        hop_trusted = origin_of(target) in allowed and target.scheme.lower() in ("http", "https")
        if not hop_trusted:
            check_untrusted_url(target)
            if not can_check_peers(session):
                raise UnsafeDestination("this HTTP session cannot check peer addresses")
        kwargs: dict[str, Any] = {}
        if data_factory is not None:
            kwargs["data"] = data_factory()
        if json_body is not None:
            kwargs["json"] = json_body
        # aiohttp's total timeout cannot be moved once the call is out, so with a grace this hop's is
        # kept here instead, where the body's read can push it on.
        limit = asyncio.timeout(None if body_grace is None else client_timeout.total)
        hop_timeout = client_timeout if body_grace is None else _without_total(client_timeout)
        with peer_checked(not hop_trusted):
            async with (
                limit,
                session.request(
                    method,
                    current,
                    headers=dict(headers) if headers and origin_of(target) == first else None,
                    params=params if hops == 0 else None,
                    timeout=hop_timeout,
                    allow_redirects=False,
                    **kwargs,
                ) as resp,
            ):
                location = resp.headers.get("Location")
                if allow_redirects and resp.status in _REDIRECT_STATUSES and location:
                    hops += 1
                    if hops > MAX_REDIRECTS:
                        raise UnsafeDestination(f"more than {MAX_REDIRECTS} redirects")
                    try:
                        current = resp.url.join(URL(location))
                    except (ValueError, TypeError):
                        raise UnsafeDestination("a redirect to an unusable location") from None
                    # As browsers and aiohttp do: 303, and 301/302 after a POST, continue as a bodiless GET.
                    if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                        method, data_factory, json_body = "GET", None, None
                    continue
                with _graced(limit, body_grace if 200 <= resp.status < 300 else None):
                    body = await _read_capped(resp, max_body)
                return HttpResponse(
                    status=resp.status,
                    headers=resp.headers,
                    body=body,
                    request_id=resp.headers.get(request_id_header),
                )


def _without_total(timeout: aiohttp.ClientTimeout) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, connect=timeout.connect)


@contextlib.contextmanager
def _graced(limit: asyncio.Timeout, body_grace: BodyGrace | None) -> Iterator[None]:
    """Inside `body_grace` (when given), with `limit` pushed on by the seconds it yields."""
    if body_grace is None:
        yield
        return
    with body_grace() as seconds:
        when = limit.when()
        if when is not None:
            limit.reschedule(when + max(0.0, seconds))
        yield


def _classified(
    classify: Classifier, resp: HttpResponse, provider: str, *, accepted: bool | None = None
) -> ProviderError:
    err = classify(resp.status, resp.body, resp.headers, provider=provider)
    if err.request_id is None:
        err.request_id = resp.request_id
    if err.status is None:
        err.status = resp.status
    if accepted is not None:
        err.accepted = accepted
    return err
