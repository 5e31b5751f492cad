"""Getting images in and out: result downloads (never trusting a provider's URL), base64, format
sniffing and the check that a result decodes whole, and masks in a provider's convention (uploads are
`VendorClient.upload`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

import aiohttp
import pybase64

from bot.imaging import whole_image_format
from bot.providers.errors import (
    InvalidInput,
    ProviderError,
    ServerError,
)
from bot.providers.http.requests import send_idempotent
from bot.providers.http.transport import RetryPolicy, classify_http_status
from bot.providers.http.vendor import _SCHEME_PREFIX
from bot.providers.masks import to_convention

log = logging.getLogger(__name__)


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
        # copies below (each as large as the image), by pybase64's SIMD decoder (0.06 ms for a
        # 1024² answer where the stdlib takes 2 ms, on the event loop). Anything it refuses takes
        # the tolerant path, which decodes such clean input to the same bytes.
        try:
            return pybase64.b64decode(text, validate=True)
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


async def usable_image_format(data: bytes) -> str | None:
    """ "png", "jpeg" or "webp" when `data` is such an image that decodes whole, else None.

    A result must be checked this way, not only sniffed: an answer cut off in transit or on the
    provider's side (truncated base64, an interrupted upload) keeps its magic bytes, and would reach
    the member as a broken file they pay for. The decode runs in a worker thread
    (`bot.imaging.whole_image_format`) and holds one whole picture: callers check their images one
    after another, never together.
    """
    return await asyncio.to_thread(whole_image_format, data)


def classify_download(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> ProviderError:
    """A result download's error answer: 408, 429 and 5xx as usual (retried), any other status
    `ServerError(accepted=True)`, not retried.

    The URL is a job's result, not the provider's API: an expired presigned URL's 403 or a CDN's
    404/410 says nothing about the key (no admin alert, no circuit breaker) or the model; the job
    already ran and its result cannot be had.
    """
    if status in (408, 429) or status >= 500:
        return classify_http_status(status, body, headers, provider=provider)
    return ServerError(f"HTTP {status} for a result URL", provider=provider, status=status, accepted=True)


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
    `max_bytes` raises `ServerError` without being read further. Error answers are read by
    `classify_download`. Errors carry `accepted` (default True: a result is downloaded for a job
    that already ran).
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
        classify=classify_download,
        max_body=max_bytes,
        accepted=accepted,
        trusted=trusted,
    )
    return resp.body


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
    png/jpeg/webp image that decodes whole (`usable_image_format`). Errors are
    `ServerError(accepted=True)`: the job already ran (what is left of a 408/429/5xx or a lost
    connection after the retries keeps its own kind, accepted too).
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
    if await usable_image_format(data) is None:
        raise ServerError(
            "an output is not a png/jpeg/webp image that decodes whole", provider=provider, accepted=True
        )
    return data


async def convert_mask(mask_png: bytes, convention: str, *, provider: str) -> bytes:
    """The request's OpenAI-style mask re-encoded in a provider's `convention` (`bot.providers.masks`).

    Runs in a thread (Pillow). A mask that cannot be read is the user's problem: `InvalidInput` with
    code `invalid_mask`, which no other provider would take either.
    """
    try:
        return await asyncio.to_thread(to_convention, mask_png, convention)
    except ValueError as exc:
        raise InvalidInput(f"unusable mask: {exc}", provider=provider, code="invalid_mask") from None
