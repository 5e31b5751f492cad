"""Paid and idempotent requests: the two retry rules (see STYLE.md, "Calls that cost money").

* `send_paid` is for a request that CREATES a paid job. It is never sent again once it may have
  reached the server. It is retried only when it provably did not (the TCP/TLS connection could not
  be opened: refused, DNS, connect timeout) or when the server explicitly refused it with a 429 and
  told us how long to wait (a refusal did not start any work).
* `send_idempotent` is for GETs, polls, downloads and uploads: they retry 408/429/5xx and
  connection failures freely, with capped, jittered backoff, inside the job's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import aiohttp

from bot.providers.errors import (
    ConnectionFailed,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from bot.providers.http.transport import (
    DEFAULT_MIN_RETRY_WINDOW,
    MAX_RESPONSE_BYTES,
    BodyGrace,
    Classifier,
    HttpResponse,
    RetryPolicy,
    _BodyTooLarge,
    _call_timeout,
    _classified,
    _describe,
    _remaining,
    _request_once,
    classify_http_status,
    redact_url,
)
from bot.providers.netguard import (
    UnsafeDestination,
)

log = logging.getLogger(__name__)


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
    result_in_body: Callable[[], contextlib.AbstractContextManager[float]] | None = None,
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

    `result_in_body` is for a synchronous call whose 2xx answer carries the finished, billed result
    (`EditRequest.fetching_result`: it yields the result's own deadline, past `deadline`). Once a 2xx
    status line is in, the rest of its body is read inside it, and the call's timeout is pushed on by
    as much as that deadline is past `deadline`: a body still arriving when the job's deadline passes
    is not cut off (nor the job timed out) with the image it holds. An error answer and the wait for
    the status line get no such grace.

    Caveat: aiohttp may reuse a pooled keep-alive connection that the server has just closed; the
    POST then fails with a disconnect that is indistinguishable from one after the server read it,
    so it is reported as `accepted=True` (the safe side: a possible double charge is worse than a
    refunded failure).
    """
    if data_factory is not None and json is not None:
        raise ValueError("pass data_factory or json, not both")
    body_grace = None if result_in_body is None else _grace_past(result_in_body, deadline)
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
                body_grace=body_grace,
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
        refused = _classified(classify, resp, provider)
        if (
            isinstance(refused, RateLimited)
            and not refused.accepted
            and policy.retry_paid_429
            and attempt < policy.attempts
        ):
            told = refused.retry_after
            if (
                told is not None
                and told <= policy.max_retry_after
                and told + min_retry_window <= _remaining(deadline)
            ):
                log.warning(
                    "%s: %s answered 429, retry %s/%s in %.2fs (request id %s)",
                    provider,
                    redact_url(url),
                    attempt,
                    policy.attempts - 1,
                    told,
                    refused.request_id,
                )
                await asyncio.sleep(told)
                continue
        raise refused


def _grace_past(
    result_in_body: Callable[[], contextlib.AbstractContextManager[float]], deadline: float
) -> BodyGrace:
    """`result_in_body` as a body's grace: the seconds its deadline is past the call's `deadline`."""

    @contextlib.contextmanager
    def grace() -> Iterator[float]:
        with result_in_body() as result_deadline:
            yield result_deadline - deadline

    return grace


# --------------------------------------------------------------------------- idempotent requests


def _is_retryable(err: ProviderError) -> bool:
    """Whether an error answer is worth asking again: a rate limit, a timeout, or a server error the
    server reported as one (5xx), not a `ServerError` a classifier made of another status (a result
    URL's 403 or 404: `classify_download`)."""
    if isinstance(err, ServerError):
        return err.status is None or err.status >= 500
    return isinstance(err, (RateLimited, ProviderTimeout))


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
    `ProviderTimeout` or (for a 5xx) `ServerError` (so 408, 429 and 5xx with the default classifier,
    but not an OpenAI quota 429). It waits the server's retry-after when given, else `policy.delay(attempt)`,
    and stops when the wait would cross `deadline` or after `policy.attempts` calls; then the last
    error is raised. A retry-after longer than `policy.max_retry_after` is raised at once, without a
    retry (the policy's "do not retry here"), for a call that is not `accepted`; an `accepted` one (a
    poll, a result download) waits it when the deadline allows, since the provider already billed.

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
                if retry_after is not None and retry_after > policy.max_retry_after and not accepted:
                    # The policy's "do not retry here": a call that belongs to nothing paid yet (an
                    # upload) lets routing try another provider rather than wait that long. One for a
                    # job the provider took (a result download) waits it out within the deadline:
                    # given up, a result the provider billed would be lost.
                    raise err

        wait = policy.delay(attempt) if retry_after is None else retry_after
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
