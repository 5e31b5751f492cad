"""The HTTP helper every provider adapter shares: retries, deadlines, polling, downloads.

Two kinds of request, two rules (see STYLE.md, "Calls that cost money"):

* `send_paid` is for a request that CREATES a paid job. It is never sent again once it may have
  reached the server. It is retried only when it provably did not (the TCP/TLS connection could not
  be opened: refused, DNS, connect timeout) or when the server explicitly refused it with a 429 and
  told us how long to wait (a refusal did not start any work).
* `send_idempotent` is for GETs, polls, downloads and uploads: they retry 408/429/5xx and
  connection failures freely, with capped, jittered backoff, inside the job's deadline.

Every call gets an `aiohttp.ClientTimeout` no longer than the time left before the job's deadline.
Nothing here knows about Discord or about one vendor: each vendor passes its own `classify`
function that turns an error response into a `ProviderError`.

Redirects are followed here, not by aiohttp (at most `MAX_REDIRECTS`): the caller's headers, which
carry the API key, never go to another origin, and every hop outside the trusted origins must be a
public http(s) address, checked on the connected socket (`bot.providers.netguard`). A URL taken from a
provider's answer (`download`, `fetch_output`) is never trusted itself.

Logging never includes API keys, headers or URL query strings (signed URLs): URLs are logged
through `redact_url`, and exception messages are built here rather than copied from aiohttp
(whose messages can contain the full URL).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import io
import json as _json
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from yarl import URL

from bot.providers.base import ProviderHealth
from bot.providers.errors import (
    ConnectionFailed,
    InvalidInput,
    ModelGone,
    ModelUnavailable,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)
from bot.providers.masks import to_convention
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
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def decode_base64_image(s: str) -> bytes:
    """Decode base64 image data, bare or as a `data:image/...;base64,` URL.

    Whitespace and missing padding are tolerated (some providers wrap or trim). Raises
    `ValueError` for anything that is not valid base64 or is a non-image / non-base64 data URL.
    """
    text = s.strip()  # the same object, not a copy, when there is nothing to strip
    if text[:5].lower() == "data:":
        header, sep, text = text.partition(",")
        if not sep:
            raise ValueError("data URL without a comma")
        meta = header[5:].lower().split(";")
        if not meta[0].startswith("image/") or "base64" not in meta[1:]:
            raise ValueError("not a base64 image data URL")
    if text:
        # Fast path for what providers almost always send (standard alphabet, padded, no line
        # breaks): decoded straight from the str, without the whitespace-free and ASCII-encoded
        # copies below (each as large as the image). Anything strict mode refuses takes the
        # tolerant path, which decodes such clean input to the same bytes.
        try:
            return binascii.a2b_base64(text, strict_mode=True)
        except (binascii.Error, ValueError):
            pass
    text = "".join(text.split())
    if not text:
        raise ValueError("empty base64 data")
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.b64decode(text, altchars=b"-_", validate=True)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("invalid base64 image data") from exc


def sniff_image_format(data: bytes) -> str | None:
    """ "png", "jpeg" or "webp" from the magic bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


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
) -> HttpResponse:
    """One request, following at most `MAX_REDIRECTS` redirects itself (aiohttp's own would re-send
    custom key headers such as `x-api-key` to any host).

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
        with peer_checked(not hop_trusted):
            async with session.request(
                method,
                current,
                headers=dict(headers) if headers and origin_of(target) == first else None,
                params=params if hops == 0 else None,
                timeout=client_timeout,
                allow_redirects=False,
                **kwargs,
            ) as resp:
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
                body = await _read_capped(resp, max_body)
                return HttpResponse(
                    status=resp.status,
                    headers=resp.headers,
                    body=body,
                    request_id=resp.headers.get(request_id_header),
                )


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


# --------------------------------------------------------------------------- paid requests


async def send_paid(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    policy: RetryPolicy,
    deadline: float,
    call_timeout: float,
    data_factory: Callable[[], Any] | None = None,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
    provider: str,
    classify: Classifier = classify_http_status,
    max_body: int = MAX_RESPONSE_BYTES,
    request_id_header: str = "x-request-id",
    min_retry_window: float = DEFAULT_MIN_RETRY_WINDOW,
) -> HttpResponse:
    """Send a request that creates a paid job; never resend it once it may have reached the server.

    Returns the 2xx response (body fully read, at most `max_body` bytes). Any other status is
    turned into an exception by `classify` and raised.

    Retried (at most `policy.attempts` calls in all, never past `deadline`):
      * connect failures before any byte was sent (refused, DNS, TLS, connect timeout);
      * a 429 that `classify` maps to `RateLimited` (so not a quota error) carrying a retry-after
        that is at most `policy.max_retry_after` and leaves `min_retry_window` seconds before the
        deadline. A longer hint is raised at once, without waiting, so routing can go elsewhere.

    Never retried, and raised with `accepted=True` because the provider may be working (and
    billing) already: a read timeout (`ProviderTimeout`), a reset or disconnect after sending
    (`ConnectionFailed`), an oversized body (`ServerError`), and whatever `classify` says of a
    5xx (the vendor classifiers return `ServerError(accepted=True)`: a synchronous provider that
    answers 5xx may still have generated, and billed, the image).

    `data_factory` builds a fresh body for every attempt (a multipart `FormData` cannot be sent
    twice); `json` is an alternative for JSON bodies. Redirects are not followed: a redirected
    POST would be a second submission. Each call's timeout is `min(call_timeout, time left)`;
    `ProviderTimeout(accepted=False)` is raised if the deadline is gone before a call.

    Caveat: aiohttp may reuse a pooled keep-alive connection that the server has just closed; the
    POST then fails with a disconnect that is indistinguishable from one after the server read it,
    so it is reported as `accepted=True` (the safe side: a possible double charge is worse than a
    refunded failure).
    """
    if data_factory is not None and json is not None:
        raise ValueError("pass data_factory or json, not both")
    attempt = 0
    while True:
        attempt += 1
        timeout = _call_timeout(deadline, call_timeout)
        if timeout is None:
            raise ProviderTimeout(
                f"{method} {redact_url(url)}: deadline passed before the request was sent",
                provider=provider,
                accepted=False,
            )
        try:
            resp = await _request_once(
                session,
                method,
                url,
                client_timeout=timeout,
                headers=headers,
                params=None,
                data_factory=data_factory,
                json_body=json,
                max_body=max_body,
                allow_redirects=False,
                request_id_header=request_id_header,
            )
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
            # Raised while opening the connection: no byte of the request left this machine.
            err = ConnectionFailed(
                f"{method} {redact_url(url)}: could not connect: {_describe(exc)}",
                provider=provider,
                accepted=False,
            )
            wait = policy.delay(attempt)
            if attempt >= policy.attempts or wait >= _remaining(deadline):
                raise err from None
            log.warning(
                "%s: connect to %s failed (%s), retry %s/%s in %.2fs",
                provider,
                redact_url(url),
                _describe(exc),
                attempt,
                policy.attempts - 1,
                wait,
            )
            await asyncio.sleep(wait)
            continue
        except _BodyTooLarge:
            raise ServerError(
                f"{method} {redact_url(url)}: response larger than {max_body} bytes",
                provider=provider,
                accepted=True,
            ) from None
        except TimeoutError as exc:
            raise ProviderTimeout(
                f"{method} {redact_url(url)}: no complete response in time: {_describe(exc)}",
                provider=provider,
                accepted=True,
            ) from None
        except aiohttp.InvalidURL:
            raise ConnectionFailed(
                f"{method} {redact_url(url)}: invalid URL", provider=provider, accepted=False
            ) from None
        except UnsafeDestination as exc:
            raise ConnectionFailed(
                f"{method} {redact_url(url)}: {exc}", provider=provider, accepted=False
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionFailed(
                f"{method} {redact_url(url)}: connection failed after sending: {_describe(exc)}",
                provider=provider,
                accepted=True,
            ) from None

        if resp.ok:
            return resp
        err = _classified(classify, resp, provider)
        if isinstance(err, RateLimited) and not err.accepted and attempt < policy.attempts:
            wait = err.retry_after
            if (
                wait is not None
                and wait <= policy.max_retry_after
                and wait + min_retry_window <= _remaining(deadline)
            ):
                log.warning(
                    "%s: %s answered 429, retry %s/%s in %.2fs (request id %s)",
                    provider,
                    redact_url(url),
                    attempt,
                    policy.attempts - 1,
                    wait,
                    err.request_id,
                )
                await asyncio.sleep(wait)
                continue
        raise err


# --------------------------------------------------------------------------- idempotent requests


def _is_retryable(err: ProviderError) -> bool:
    return isinstance(err, (RateLimited, ServerError, ProviderTimeout))


async def send_idempotent(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    policy: RetryPolicy,
    deadline: float,
    call_timeout: float,
    provider: str,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    json: Any = None,
    data_factory: Callable[[], Any] | None = None,
    classify: Classifier = classify_http_status,
    max_body: int = MAX_RESPONSE_BYTES,
    request_id_header: str = "x-request-id",
    accepted: bool = False,
    allow_redirects: bool = True,
    trusted: Collection[str] | None = None,
) -> HttpResponse:
    """Send a request that is safe to repeat (GET, poll, download, upload) and return the 2xx response.

    Retries connection failures, timeouts and any status that `classify` maps to `RateLimited`,
    `ServerError` or `ProviderTimeout` (so 408, 429 and 5xx with the default classifier, but not
    an OpenAI quota 429). It waits the server's retry-after when given (up to
    `policy.max_retry_after`), else `policy.delay(attempt)`, and stops when the wait would cross
    `deadline` or after `policy.attempts` calls; then the last error is raised.

    Errors raised here carry `accepted=accepted`: the call itself creates nothing, so whether
    money is at stake depends on what it belongs to (pass True when polling or downloading for a
    job that was already submitted).

    Redirects (at most `MAX_REDIRECTS`) never carry `headers` to another origin. Pass `trusted` (the
    adapter's configured base URLs) when `url` came from a provider's answer: then `url` itself, and
    every hop outside those origins, must be a public http(s) address (`bot.providers.netguard`);
    a refused one raises `ServerError` without a retry.
    """
    if data_factory is not None and json is not None:
        raise ValueError("pass data_factory or json, not both")
    attempt = 0
    while True:
        attempt += 1
        timeout = _call_timeout(deadline, call_timeout)
        if timeout is None:
            raise ProviderTimeout(
                f"{method} {redact_url(url)}: deadline passed", provider=provider, accepted=accepted
            )
        retry_after: float | None = None
        try:
            resp = await _request_once(
                session,
                method,
                url,
                client_timeout=timeout,
                headers=headers,
                params=params,
                data_factory=data_factory,
                json_body=json,
                max_body=max_body,
                allow_redirects=allow_redirects,
                request_id_header=request_id_header,
                trusted=trusted,
            )
        except _BodyTooLarge:
            raise ServerError(
                f"{method} {redact_url(url)}: response larger than {max_body} bytes",
                provider=provider,
                accepted=accepted,
            ) from None
        except aiohttp.InvalidURL:
            raise ConnectionFailed(
                f"{method} {redact_url(url)}: invalid URL", provider=provider, accepted=accepted
            ) from None
        except UnsafeDestination as exc:
            # The provider pointed us at a place the bot must not go: an unusable answer, not retried.
            raise ServerError(
                f"{method} {redact_url(url)}: {exc}", provider=provider, accepted=accepted
            ) from None
        except TimeoutError as exc:
            err: ProviderError = ProviderTimeout(
                f"{method} {redact_url(url)}: timed out: {_describe(exc)}",
                provider=provider,
                accepted=accepted,
            )
            reason = _describe(exc)
        except (aiohttp.ClientError, OSError) as exc:
            err = ConnectionFailed(
                f"{method} {redact_url(url)}: connection failed: {_describe(exc)}",
                provider=provider,
                accepted=accepted,
            )
            reason = _describe(exc)
        else:
            if resp.ok:
                return resp
            err = _classified(classify, resp, provider, accepted=accepted)
            if not _is_retryable(err):
                raise err
            reason = f"HTTP {resp.status}"
            if isinstance(err, RateLimited):
                retry_after = err.retry_after

        if retry_after is not None and retry_after <= policy.max_retry_after:
            wait = retry_after
        else:
            wait = policy.delay(attempt)
        if attempt >= policy.attempts or wait >= _remaining(deadline):
            raise err from None
        log.info(
            "%s: %s %s failed (%s), retry %s/%s in %.2fs",
            provider,
            method,
            redact_url(url),
            reason,
            attempt,
            policy.attempts - 1,
            wait,
        )
        await asyncio.sleep(wait)


# --------------------------------------------------------------------------- polling


async def poll(
    fetch: Callable[[], Awaitable[T]],
    *,
    is_done: Callable[[T], bool],
    deadline: float,
    interval: float,
    max_interval: float,
    cancel: Callable[[], Awaitable[object]] | None = None,
    backoff: float = 1.5,
    jitter: float = 0.25,
    provider: str = "",
    cancel_timeout: float = CANCEL_TIMEOUT,
) -> T:
    """Call `fetch()` until `is_done(result)` and return that result.

    Waits `interval` after the first unfinished result, growing by `backoff` up to `max_interval`,
    each wait reduced by up to `jitter` (a fraction). Exceptions from `fetch` or `is_done` (for
    example a vendor's "job failed" error) propagate unchanged. When the deadline passes (between
    fetches, or as a `ProviderTimeout` from a fetch that ran out of time) `cancel()` is awaited if
    given, with its own `cancel_timeout`; its errors are logged, never raised. Then
    `ProviderTimeout(accepted=True)` is raised: the job was submitted and may still be billed.
    """
    delay = interval
    while True:
        if _remaining(deadline) <= 0:
            break
        try:
            result = await fetch()
        except ProviderTimeout:
            if _remaining(deadline) > 0:
                raise
            break
        if is_done(result):
            return result
        remaining = _remaining(deadline)
        if remaining <= 0:
            break
        wait = min(delay, max_interval) * (1.0 - random.uniform(0.0, jitter))
        await asyncio.sleep(min(wait, remaining))
        delay = min(delay * backoff, max_interval)

    if cancel is not None:
        try:
            async with asyncio.timeout(cancel_timeout):
                await cancel()
        except Exception as exc:
            log.warning("%s: cancelling the job after its deadline failed: %s", provider, _describe(exc))
    raise ProviderTimeout("job did not finish before its deadline", provider=provider, accepted=True)


# --------------------------------------------------------------------------- downloads


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    deadline: float,
    policy: RetryPolicy | None = None,
    call_timeout: float = 60.0,
    headers: Mapping[str, str] | None = None,
    provider: str = "",
    allow_data_url: bool = False,
    accepted: bool = True,
    trusted: Collection[str] = (),
) -> bytes:
    """Fetch a result file (http/https only) with a size cap, retrying like an idempotent GET.

    `url` came from a provider, so it (and every redirect hop) must be a public address unless its
    origin is one of the `trusted` base URLs (`bot.providers.netguard`).

    Any other scheme, and `data:` URLs unless `allow_data_url`, are refused with `ServerError`
    (the URL came from a provider response, so it is an unusable response). A body larger than
    `max_bytes` raises `ServerError` without being read further. Errors carry `accepted`
    (default True: a result is downloaded for a job that already ran).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "data":
        if not allow_data_url:
            raise ServerError("refusing a data: URL", provider=provider, accepted=accepted)
        try:
            data = decode_base64_image(url)
        except ValueError:
            raise ServerError("undecodable data: URL", provider=provider, accepted=accepted) from None
        if len(data) > max_bytes:
            raise ServerError(
                f"data: URL larger than {max_bytes} bytes", provider=provider, accepted=accepted
            )
        return data
    if scheme not in ("http", "https"):
        raise ServerError(
            f"refusing to download a {scheme or 'schemeless'} URL", provider=provider, accepted=accepted
        )
    resp = await send_idempotent(
        session,
        "GET",
        url,
        policy=policy or RetryPolicy(),
        deadline=deadline,
        call_timeout=call_timeout,
        provider=provider,
        headers=headers,
        max_body=max_bytes,
        accepted=accepted,
        trusted=trusted,
    )
    return resp.body


# --------------------------------------------------------------------------- shared by the async adapters

_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")
_SCHEME_PREFIX = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
MAX_MESSAGE = 200  # provider messages kept in exception text (for logs) are cut to this length


def safe_message(text: object, *, secrets: tuple[str, ...] = (), limit: int = MAX_MESSAGE) -> str:
    """A provider-supplied message made fit for exception text and logs.

    Whitespace is collapsed, URLs lose their query strings (signed URLs) through `redact_url`,
    every string in `secrets` (the API key) is masked, and the result is cut to `limit` characters.
    """
    message = " ".join(str(text).split())
    message = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), message)
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    if len(message) > limit:
        message = message[: limit - 1] + "…"
    return message


def mark_unsubmitted(err: ProviderError) -> ProviderError:
    """Mark `err` as raised before the paid request was sent (an upload or a local check failed).

    Nothing was created or billed, so routing may try another provider: `accepted` becomes False
    and, for the server-side kinds (`ServerError`, `ProviderTimeout`) whose class default says
    otherwise, `retryable_elsewhere` becomes True. Refusals (bad input, safety) keep their class's
    rule: another provider would refuse them too.
    """
    err.accepted = False
    if isinstance(err, (ServerError, ProviderTimeout)):
        err.retryable_elsewhere = True
    return err


async def fetch_output(
    session: aiohttp.ClientSession,
    value: str,
    *,
    max_bytes: int,
    deadline: float,
    policy: RetryPolicy,
    call_timeout: float,
    provider: str,
    trusted: Collection[str] = (),
) -> bytes:
    """The bytes of one result an async provider listed in its `outputs`: a URL or base64 text.

    An http(s) URL is downloaded (no provider headers: result URLs are public or presigned, and
    the API key must never reach a CDN); a `data:image/...;base64,` URL or bare base64 (the
    vendors' "base64 output" modes, whose exact form is not documented) is decoded. Any other
    scheme is refused, and so is a URL that is not public unless its origin is one of the `trusted`
    base URLs (the adapter's configured ones). The bytes are capped at `max_bytes` and must be a
    png/jpeg/webp image. Errors are `ServerError(accepted=True)`: the job already ran.
    """
    text = value.strip()
    # Base64 has no colon, so anything with a `scheme:` prefix is a URL (download() vets the scheme).
    if _SCHEME_PREFIX.match(text):
        data = await download(
            session,
            text,
            max_bytes=max_bytes,
            deadline=deadline,
            policy=policy,
            call_timeout=call_timeout,
            provider=provider,
            allow_data_url=True,
            trusted=trusted,
        )
    else:
        try:
            data = decode_base64_image(text)
        except ValueError:
            raise ServerError(
                "an output is neither a URL nor base64", provider=provider, accepted=True
            ) from None
        if len(data) > max_bytes:
            raise ServerError(f"an output is larger than {max_bytes} bytes", provider=provider, accepted=True)
    if sniff_image_format(data) is None:
        raise ServerError("an output is not a png/jpeg/webp image", provider=provider, accepted=True)
    return data


async def gather_or_cancel(*aws: Awaitable[T]) -> list[T]:
    """`asyncio.gather`, except that the first failure cancels the others (and waits for them).

    Used for parallel uploads: one failed upload makes the job fail, and the rest must not keep
    running (or keep a connection busy) after the caller has moved on.
    """
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# --------------------------------------------------------------------------- shared by the reseller adapters


def parse_json(body: bytes) -> Any:
    """The body decoded as JSON, or None when it is not JSON (an HTML error page, an empty body)."""
    try:
        return _json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def is_http_url(value: object) -> bool:
    """Whether `value` is an http(s) URL string: what an upload must hand back to be usable."""
    return isinstance(value, str) and value.lower().startswith(("https://", "http://"))


def error_summary(status: int, message: str, *, code: int | None = None) -> str:
    """`HTTP 200 (code 402): <message>`: an error's status for exception text and logs.

    `code` is an error status a vendor put inside the body (shown when it differs from `status`);
    the message is made safe by `safe_message` and left out when empty.
    """
    summary = f"HTTP {status}" + (f" (code {code})" if code not in (None, status) else "")
    return summary + (f": {safe_message(message)}" if message else "")


def submit_server_error(summary: str, *, status: int, **kw: Any) -> ServerError:
    """A 5xx answer to a paid submit that returned no job, for vendors where nothing was created.

    Routing may then try another provider (`accepted=False`, retryable elsewhere), except after a
    504: a gateway that gave up waiting may already have passed the job on, so it stays accepted.
    """
    if status == 504:
        return ServerError(summary, status=status, accepted=True, **kw)
    err = ServerError(summary, status=status, accepted=False, **kw)
    err.retryable_elsewhere = True
    return err


def unsupported_options(model: str, service: str, problems: list[str], *, provider: str) -> InvalidInput:
    """The error for a request that a route cannot carry, found before anything was sent.

    The limit is the route's, not the user's, so another route may do the job: it is marked
    retryable elsewhere (and, as nothing was sent, not accepted).
    """
    err = InvalidInput(
        f"{model} on {service} cannot take: {', '.join(problems)}",
        provider=provider,
        code="unsupported_option",
    )
    err.retryable_elsewhere = True
    return err


# What resellers and gateways say when a model (or the upstream channel behind it) is gone for good
# (models-2026-12.md §1): a 404/410 for the model, or any error whose message says so.
_GONE_WORDS = (
    "not found",
    "no longer available",
    "retired",
    "deprecated",
    "no available channel",
    "does not exist",
    "discontinued",
    "decommissioned",
    "shut down",
)
# Statuses that mean "not for you" rather than "gone": auth, billing, access, rate limits.
_NEVER_GONE = frozenset({401, 402, 403, 429, 504})


def says_model_gone(message: str, model: str = "") -> bool:
    """Whether an error message says the model (or its channel) is gone: it must name the model
    (the word "model", "channel", or the model id itself) AND use one of the gone words, so that
    "media not found" about an uploaded file is not mistaken for a retired model."""
    lowered = message.lower()
    names_it = "model" in lowered or "channel" in lowered or bool(model and model.lower() in lowered)
    return names_it and any(word in lowered for word in _GONE_WORDS)


def gone_on_submit(err: ProviderError, message: str, *, model: str = "") -> ProviderError:
    """A submit's error as `ModelGone` when the provider says this route's model is gone.

    For the answer to a paid submit that created nothing (no job id came back): a 404 or 410, or
    any other 4xx/5xx (e.g. 503 "no available channels") whose `message` says the model is gone
    (`says_model_gone`). Auth, billing, access and rate-limit answers (401/402/403/429) and 504 (a
    gateway that may have passed the job on) never are. The provider did not take the job, so the
    result is `accepted=False` even where the vendor's rule for a 5xx says otherwise: an answer
    that the model does not exist is proof that nothing ran. Call it only for submits: a 404 on a
    poll means the job vanished, not the model.
    """
    status = err.status
    if status is None or status < 400 or status in _NEVER_GONE or isinstance(err, ModelGone):
        return err
    if status not in (404, 410) and not says_model_gone(message, model):
        return err
    return ModelGone(
        str(err),
        provider=err.provider,
        status=status,
        code=err.code if err.code and err.code != "not_found" else "model_gone",
        request_id=err.request_id,
        accepted=False,
    )


def submit_classifier(
    classify: Classifier, message_of: Callable[[bytes], str], *, model: str = ""
) -> Classifier:
    """`classify` for one paid submit of `model`: the same mapping, plus `gone_on_submit`.

    `message_of` reads the vendor's error text from a body (each vendor's envelope differs).
    """

    def classify_submit(
        status: int, body: bytes, headers: Mapping[str, str], *, provider: str
    ) -> ProviderError:
        err = classify(status, body, headers, provider=provider)
        if err.status is None:
            err.status = status
        return gone_on_submit(err, message_of(body), model=model)

    return classify_submit


async def convert_mask(mask_png: bytes, convention: str, *, provider: str) -> bytes:
    """The request's OpenAI-style mask re-encoded in a provider's `convention` (`bot.providers.masks`).

    Runs in a thread (Pillow). A mask that cannot be read is the user's problem: `InvalidInput` with
    code `invalid_mask`, which no other provider would take either.
    """
    try:
        return await asyncio.to_thread(to_convention, mask_png, convention)
    except ValueError as exc:
        raise InvalidInput(f"unusable mask: {exc}", provider=provider, code="invalid_mask") from None


async def upload_file(
    session: aiohttp.ClientSession,
    url: str,
    *,
    field: str,
    data: bytes,
    filename: str,
    mime: str,
    deadline: float,
    policy: RetryPolicy,
    call_timeout: float,
    provider: str,
    headers: Mapping[str, str],
    classify: Classifier,
) -> HttpResponse:
    """POST one file as a multipart form whose only part is named `field`; return the 2xx answer.

    An upload creates nothing billable, so it follows the `send_idempotent` rules (a fresh form
    for every try). The answer is the vendor's to read.
    """

    def form() -> aiohttp.FormData:
        fd = aiohttp.FormData()
        # BytesIO: aiohttp writes a large raw-bytes part in one blocking call.
        fd.add_field(field, io.BytesIO(data), filename=filename, content_type=mime)
        return fd

    return await send_idempotent(
        session,
        "POST",
        url,
        policy=policy,
        deadline=deadline,
        call_timeout=call_timeout,
        provider=provider,
        headers=headers,
        data_factory=form,
        classify=classify,
    )


# --------------------------------------------------------------------------- health checks (`/diagnose`)

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
