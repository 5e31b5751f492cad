"""Segmind (v1, synchronous) adapter: upload inputs → one POST that answers with the image itself.

Wire reference: shared spec `providers.md` §4. Flow for one job:

1. all input images (and the mask) are uploaded in one `POST {upload_url}` with the SDK's JSON body
   `{"data_urls": [...]}`, giving public `file_urls` (the provider never sees a Discord CDN URL);
2. one paid `POST {base}/{model}` (`x-api-key`, JSON) that blocks until the image is made and
   answers with its bytes; `x-cost` is the charge (→ `EditResult.cost_usd`) and
   `x-remaining-credits` what is left (logged).

Decisions on the spec's OPEN points (providers.md §8.8):

* v1 only (the model pages' endpoint). The answer is read by its `Content-Type`: `image/*` is the
  image; JSON is searched for an output URL or base64 (`image`, `images`, `output`, `url`), since
  newer pages call `response.json()` on v1. Anything else is an unusable answer.
* `image_urls` carries uploaded URLs, never base64 or data URLs (their acceptance is OPEN); at most
  4 (the bot's own limit; Segmind gives none). The upload uses the SDK's JSON `data_urls` form.
* `mask` is sent only with a mask (the examples omit it although a table calls it required), in
  the "alpha" convention of `bot.providers.masks` (transparent *and* white where to edit), which
  reads the same under OpenAI's convention and under "white = edit".
* `background` "auto" is sent by omitting the field (Segmind's default, opaque, applies); `size`
  and `quality` "auto" are native. `moderation` and `output_compression` are left at their
  defaults (auto, 100), as the OpenAI adapter does.
* 406 means "not enough credits" (or a team spend limit) or "invalid content type": told apart by
  the message; an unrecognised 406 is treated as a billing problem (the admin is told, routing may
  go elsewhere). 429 carries `x-rate-limit-reset-at-utc`, not Retry-After: it is read as an ISO
  8601 time, an HTTP date or epoch seconds and turned into a `retry_after`.
* Only HTTP 200 is billed (Segmind's docs), so a 5xx is "not accepted" and may be retried
  elsewhere, except 504: a gateway that gave up waiting may leave a job that still completes.
* `x-cost` is taken as USD (Segmind bills in USD credits); a missing or malformed value leaves
  `cost_usd` unset so the route's catalog price applies.
* There is nothing to poll or cancel: the deadline caps the one blocking call.
* GPT Image 2 (`POST /v1/gpt-image-2`, models-2026-12.md §4): exactly one `image` URL makes the call
  an edit (without it the route draws from text alone, so the adapter never sends it without one);
  no mask and no `image_urls`. `size` is a free `WxH` (Segmind's page gives OpenAI's 2.x rules and
  documents no `auto`: routing sends the standard size nearest the input's shape instead);
  `quality` is sent only when it is low/medium/high (its allowed values are not readable on the
  page, so "auto" is left to Segmind's default by omitting it); `background` as for 1.x.
* "Model gone": a 404 (unknown slug) or 410 (retired) answer to the edit call, or an error whose
  message says the model is gone or has no available channels, raises `ModelGone`
  (not a 5xx that says it passes, "maintenance", "try again later": `_PASSING`, nor a 404 about
  something the request carried)
  (`accepted=False`; only HTTP 200 is billed). 403 (not permitted for the team) stays
  `ModelUnavailable`.
* `/diagnose`: `check()` asks the v2 API for the status of a request id that cannot exist
  (`GET /v2/requests/{id}/status`, documented, authenticated and free). Segmind's auth layer answers
  401 for a missing or bad key before anything else, and the endpoint 404 for an unknown id, so a
  404 means the key was accepted.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Unpack

import aiohttp
import pybase64

from bot.domain.options import parse_size
from bot.providers.base import EditRequest, EditResult, OutputImage, ProviderHealth
from bot.providers.errors import (
    InvalidInput,
    ModelUnavailable,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)
from bot.providers.http import (
    before_submit,
    error_summary,
    health_from_error,
    http_date,
    is_http_url,
    mentions,
    parse_json,
    parse_retry_after,
    redirected,
    seconds_until,
    send_check,
    sniff_image_format,
    submit_server_error,
    unsupported_options,
    usable_image_format,
)
from bot.providers.reseller import AdapterOptions, ResellerAdapter, Vendor

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.segmind.com/v1"
DEFAULT_UPLOAD_URL = "https://workflows-api.segmind.com/upload-asset"
CALL_TIMEOUT = 240.0  # the v1 call blocks while the image is made (about 42-57 s on the model pages)
MAX_IMAGES = 4
QUALITIES = ("auto", "low", "medium", "high")
SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536")
BACKGROUNDS = ("auto", "opaque", "transparent")  # "auto" is sent by omitting the field
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MODELS = frozenset({"gpt-image-1-edit-mini", "gpt-image-1-edit", "gpt-image-2"})
# Models whose route takes one `image` URL (edit mode) instead of `image_urls`, and no mask.
SINGLE_IMAGE_MODELS = frozenset({"gpt-image-2"})
SINGLE_IMAGE_QUALITIES = ("auto", "low", "medium", "high")  # "auto" is sent by omitting the field
CHECK_REQUEST_ID = "retouch-diagnose-no-such-request"  # `check()` asks for it; Segmind answers 404

_SAFETY_WORDS = ("nsfw", "safety", "moderation", "content policy", "flagged")
_CREDIT_WORDS = ("credit", "balance", "spend limit", "insufficient")
_CONTENT_TYPE_WORDS = ("content type", "content-type")


def _error_text(body: bytes) -> str:
    """Segmind's message: `error` (or `error_description`, `message`, `detail`); "" for HTML."""
    payload = parse_json(body)
    if not isinstance(payload, dict):
        return ""
    parts = [payload.get(k) for k in ("error", "error_description", "message", "detail")]
    return " ".join(p for p in parts if isinstance(p, str) and p.strip())


def parse_reset_at(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds until `x-rate-limit-reset-at-utc`, or None when the value is unusable.

    The format is undocumented, so ISO 8601 (a naive time is UTC), HTTP dates and epoch seconds
    (milliseconds when implausibly large) are all read. A time in the past gives 0.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number) and number > 0:
        return seconds_until(datetime.fromtimestamp(number / 1000 if number > 1e11 else number, UTC), now)
    try:
        when: datetime | None = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        when = http_date(text)
    return None if when is None else seconds_until(when, now)


def classify_segmind_error(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> ProviderError:
    """Map one Segmind error response to a `ProviderError`: the only place that reads Segmind errors.

    400 → InvalidInput (ProviderRejected when the text names a safety filter); 401 → ServiceUnavailable;
    403/404/410 → ModelUnavailable; 405 (an HTML page: a misconfigured URL) → ServiceUnavailable;
    406 → ServiceUnavailable for credits or a spend limit, InvalidInput for "invalid content type"
    (by the message); 429 → RateLimited with `retry_after` from `x-rate-limit-reset-at-utc`;
    408 → ProviderTimeout; 504 → ServerError(accepted=True); other 5xx → ServerError that may go
    elsewhere (only 200 is billed); other 4xx → InvalidInput.
    """
    raw = _error_text(body)
    lowered = raw.lower()
    summary = error_summary(status, raw)
    kw: dict[str, Any] = {"provider": provider, "status": status, "request_id": headers.get("x-request-id")}

    if status == 401:
        return ServiceUnavailable(summary, code="unauthorized", **kw)
    if status == 406:
        if mentions(lowered, _CONTENT_TYPE_WORDS):
            return InvalidInput(summary, code="invalid_content_type", **kw)
        code = "insufficient_credits" if mentions(lowered, _CREDIT_WORDS) else "not_acceptable"
        return ServiceUnavailable(summary, code=code, **kw)
    if status in (403, 404, 410):
        code = {403: "forbidden", 404: "not_found", 410: "retired"}[status]
        return ModelUnavailable(summary, code=code, **kw)
    if status == 405:
        return ServiceUnavailable(summary or "HTTP 405 (HTML page)", code="method_not_allowed", **kw)
    if status == 429:
        retry_after = parse_reset_at(headers.get("x-rate-limit-reset-at-utc"))
        if retry_after is None:
            retry_after = parse_retry_after(headers)
        return RateLimited(summary, retry_after=retry_after, code="rate_limited", **kw)
    if status == 408:  # the server (or a gateway) gave up waiting: says nothing about the input
        return ProviderTimeout(summary, code="timeout", **kw)
    if status >= 500:
        return submit_server_error(summary, **kw)  # only HTTP 200 is billed: nothing was charged
    if 300 <= status < 400:  # not the member's input: the base URL is not the service's own
        return redirected(status, headers, provider=provider)
    if mentions(lowered, _SAFETY_WORDS):
        return ProviderRejected(summary, code="moderation", **kw)
    return InvalidInput(summary, **kw)


def _free_size_ok(size: str) -> bool:
    """A `WxH` the adapter can send to a free-size route (the catalog checks the rules). Not `auto`:
    the page documents `size` as WxH only, so routing turns `auto` into the nearest standard size."""
    return parse_size(size) is not None


def _cost(headers: Mapping[str, str]) -> str | None:
    """`x-cost` as a plain decimal string, or None when it is missing or not a finite, non-negative number."""
    raw = headers.get("x-cost")
    if raw is None:
        return None
    try:
        value = Decimal(raw.strip())
    except (InvalidOperation, ValueError):
        return None
    if not value.is_finite() or value < 0:
        return None
    return format(value, "f")


def _json_outputs(payload: Any) -> list[str]:
    """Output URLs or base64 strings found in a JSON answer (its shape is undocumented for v1)."""
    if not isinstance(payload, dict):
        return []
    found: list[str] = []
    for key in ("image", "images", "output", "outputs", "url"):
        value = payload.get(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item.strip():
                found.append(item)
    return found


class SegmindProvider(ResellerAdapter):
    """Edits images through Segmind's synchronous v1 API (one paid POST per job)."""

    vendor = Vendor(
        name="segmind",
        base_url=DEFAULT_BASE_URL,
        call_timeout=CALL_TIMEOUT,
        key_header="x-api-key",  # Segmind rejects the key as a Bearer token
        classify=classify_segmind_error,
        message_of=_error_text,
    )

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str,
        base_url: str | None = None,
        *,
        upload_url: str = DEFAULT_UPLOAD_URL,
        **options: Unpack[AdapterOptions],
    ) -> None:
        super().__init__(session, api_key, base_url, **options)
        self._upload_url = upload_url

    async def check(self) -> ProviderHealth:
        """Reachability and the key via the status of a request that does not exist (free).

        A 404 for that id comes after the auth layer, so the key works; 401 means it was refused.
        Never raises for HTTP failures.
        """
        url = f"{self._base.removesuffix('/v1')}/v2/requests/{CHECK_REQUEST_ID}/status"
        try:
            await send_check(
                self._client.session,
                url,
                provider=self.name,
                classify=classify_segmind_error,
                headers=self._client.headers,
            )
        except ProviderError as exc:
            if exc.status != 404:
                return health_from_error(exc)
        return ProviderHealth(reachable=True, authenticated=True, detail="API key accepted", ok=True)

    def _check_request(self, request: EditRequest) -> None:
        if request.model not in MODELS:
            raise ModelUnavailable(
                f"no known request fields for model {request.model!r}",
                provider=self.name,
                code="unknown_model",
            )
        single = request.model in SINGLE_IMAGE_MODELS
        problems = []
        max_images = 1 if single else MAX_IMAGES
        if not 1 <= len(request.images) <= max_images:
            problems.append(f"{len(request.images)} images (1 to {max_images})")
        if single and request.mask is not None:
            problems.append("a mask")
        if request.input_fidelity is not None:
            problems.append("input_fidelity (no such field)")
        if request.count != 1:
            problems.append(f"count={request.count} (no `n`; one image per call)")
        if single and not _free_size_ok(request.size):
            problems.append(f"size={request.size}")
        for name, value, allowed in (
            ("quality", request.quality, SINGLE_IMAGE_QUALITIES if single else QUALITIES),
            ("size", request.size, None if single else SIZES),
            ("background", request.background, BACKGROUNDS),
            ("output_format", request.output_format, OUTPUT_FORMATS),
        ):
            if allowed is not None and value not in allowed:
                problems.append(f"{name}={value}")
        if problems:
            raise unsupported_options(request.model, "Segmind", problems, provider=self.name)

    async def edit(self, request: EditRequest) -> EditResult:
        """Run one edit. Raises a `ProviderError` subclass on failure (see `classify_segmind_error`)."""
        self._check_request(request)
        files = [(image.data, image.mime) for image in request.images]
        if (mask := await self._vendor_mask(request)) is not None:
            files.append((mask, "image/png"))
        urls = await before_submit(self._upload(files, request.deadline))

        body: dict[str, Any] = {"prompt": request.prompt}
        if request.model in SINGLE_IMAGE_MODELS:
            body["image"] = urls[0]  # one image URL: edit mode
            if request.quality != "auto":
                body["quality"] = request.quality
        else:
            body["image_urls"] = urls[: len(request.images)]
            body["quality"] = request.quality
        body["size"] = request.size
        body["output_format"] = request.output_format
        if request.mask is not None:
            body["mask"] = urls[-1]
        if request.background != "auto":
            body["background"] = request.background

        resp = await self._client.submit(
            self._client.url(f"/{request.model}"),
            body,  # as JSON: aiohttp sets `Content-Type: application/json`; without it Segmind answers 406
            deadline=request.deadline,
            model=request.model,
            max_body=self._client.max_output_bytes,  # the answer is the image itself
            # ... made and billed: its read is fetching a finished result, with its grace past the deadline
            result_in_body=request.fetching_result,
        )
        request_id = resp.request_id
        remaining = resp.headers.get("x-remaining-credits")
        log.info(
            "%s: %s edit done (request id %s, cost %s, credits left %s)",
            self.name,
            request.model,
            request_id,
            resp.headers.get("x-cost"),
            remaining,
        )
        data = await self._image_from(resp.content_type, resp.body, request, request_id)
        return EditResult(
            images=(OutputImage(data=data, format=sniff_image_format(data) or "png"),),
            provider=self.name,
            quality=request.quality if request.quality != "auto" else None,
            size=request.size if request.size != "auto" else None,
            request_id=request_id,
            cost_usd=_cost(resp.headers),
        )

    async def _upload(self, files: list[tuple[bytes, str]], deadline: float) -> list[str]:
        """All files in one call (the SDK's batch JSON form); returns their public URLs in order."""
        data_urls = [f"data:{mime};base64,{pybase64.b64encode(data).decode('ascii')}" for data, mime in files]
        resp = await self._client.call(
            "POST", self._upload_url, deadline=deadline, json={"data_urls": data_urls}
        )
        payload = parse_json(resp.body)
        urls = payload.get("file_urls") if isinstance(payload, dict) else None
        if not isinstance(urls, list) or len(urls) != len(files) or not all(is_http_url(u) for u in urls):
            raise ServerError("upload-asset returned no usable file_urls", provider=self.name)
        return urls

    async def _image_from(
        self, content_type: str, body: bytes, request: EditRequest, request_id: str | None
    ) -> bytes:
        """The image of a 200 answer: the body itself, or what a JSON answer points to."""

        def unusable(why: str) -> ServerError:
            return ServerError(
                f"HTTP 200 but {why}", provider=self.name, request_id=request_id, accepted=True
            )

        # The bytes decide: what Content-Type v1 sends with its image is OPEN (image/jpeg always,
        # image/<format>, or a generic one), and a paid image must not be thrown away for its label.
        if content_type != "application/json" and sniff_image_format(body) is not None:
            # Made and billed: checking it is fetching a finished result, with its grace past the deadline.
            with request.fetching_result():
                usable = await usable_image_format(body)
            if usable is None:  # cut off or corrupt behind its signature
                raise unusable("the image does not decode whole")
            return body
        if content_type.startswith("image/"):
            raise unusable("the body is not a png/jpeg/webp image")
        if content_type == "application/json":
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise unusable("the JSON body does not parse") from None
            values = _json_outputs(payload)
            if not values:
                raise unusable("the JSON body holds no image")
            with request.fetching_result() as deadline:  # made: its download outlasts the deadline
                return await self._client.output(values[0], deadline=deadline)
        raise unusable(f"the content type is {content_type or 'missing'}")
