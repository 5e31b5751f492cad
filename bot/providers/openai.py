"""OpenAI Images API adapter: `POST {base_url}/images/edits`, multipart, synchronous.

Wire reference: shared spec `providers.md` §1. Decisions on the spec's OPEN points:

* `model`, `size`, `quality`, `background` and `output_format` are always sent explicitly: the
  API's defaults changed over time (the default model) or contradict each other (`size`: `auto`
  in the SDK and JSON schema, `1024x1024` in the multipart schema). `size` comes from the request
  (whose default is `auto`).
* `input_fidelity` is sent only when the request sets it; the catalog leaves it unset for models
  that do not support it (`gpt-image-1-mini`), so it is never sent for mini.
* `moderation` is never sent: it is not in the multipart schema and multipart edits rejected it
  in 2025. `stream` is never sent (a Discord bot has no use for partial images).
* A 5xx is `ServerError(accepted=True)`: the endpoint is synchronous, so a 5xx may come after the
  image was generated and billed. The job is therefore never re-sent elsewhere.
* One file part per image, always named `image[]` (as the SDK and the curl examples do for
  several files; the API accepts it for one file too).
* GPT Image 2.x (models-2026-12.md §3): free `WxH` sizes and the `xhigh`/`max` qualities are sent
  as given; the catalog decides what each model may take, and the API answers 400 otherwise.
* `model_not_found` on an edit is `ModelGone` (`accepted=False`) whatever its 4xx status: OpenAI
  answers it for a shut-down model, and nothing ran; the status is as commonly reported (404), not
  documented (providers.md §1.6), so a 400 with that code is the same answer. 401/403/429 keep
  their own meaning (a 403 for an unverified organisation stays `ServiceUnavailable`).
* Discovery: `list_models()` reads `GET /models` and each entry's `shutdown_date`.
* Safety check: `moderate()` posts one text and/or one image (as a data URL) to the free
  `POST /moderations` with `omni-moderation-latest`; it creates nothing, so it is retried like a GET.

One module (about 470 lines) because everything here reads or writes OpenAI's wire format; the
shared HTTP rules already live in `bot.providers.http`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import aiohttp
import aiohttp.payload
import pybase64

from bot.domain.options import Usage
from bot.providers.base import EditRequest, EditResult, ListedModel, OutputImage, ProviderHealth
from bot.providers.errors import (
    InvalidInput,
    ModelGone,
    ModelUnavailable,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)
from bot.providers.http import (
    RetryPolicy,
    decode_base64_image,
    health_from_error,
    parse_json,
    parse_retry_after,
    redact_url,
    redirected,
    send_check,
    send_idempotent,
    send_paid,
    usable_image_format,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
REQUEST_ID_HEADER = "x-request-id"
MAX_LOG_MESSAGE = 200  # provider messages kept in exception text (for logs) are cut to this length
# A retried submit needs time to run: an edit takes tens of seconds, so a 429 is only retried when
# this much time is left after waiting (otherwise it would be billed and then time out).
MIN_RETRY_WINDOW = 30.0
MODERATION_MODEL = "omni-moderation-latest"  # free; classifies text and images
LIST_TIMEOUT = 30.0  # the whole model listing, retries included: discovery must not hang start-up

_SAFETY_CODES = frozenset({"moderation_blocked", "content_policy_violation"})
_QUOTA = "insufficient_quota"
# The account's spending limit or billing, answered as a 400 `invalid_request_error`: the operator
# must act, and another provider may still serve the job.
_BILLING_CODES = frozenset({"billing_hard_limit_reached", "billing_not_active"})
# API keys (`sk-...`, `sk-proj-...`, also the masked `sk-abc***wxyz` form in 401 messages).
_KEY_PATTERN = re.compile(r"\bsk-[A-Za-z0-9_\-*]+")


class _ImagePart(aiohttp.payload.Payload):
    """Image bytes as one multipart part, sent as slices of the caller's own `bytes`.

    `io.BytesIO` (aiohttp's advice for large parts) copies the whole image as soon as aiohttp asks for
    its size (`getbuffer`) and keeps that copy until the response has arrived, then copies it again
    chunk by chunk; plain `bytes` would go to the socket in one write. This copies nothing: each slice
    is a memoryview, and aiohttp waits for the socket to drain between slices.
    """

    _autoclose = True  # memory only, nothing to close (aiohttp >= 3.12 asks)
    CHUNK = 256 * 1024

    def __init__(self, data: bytes, *, filename: str, content_type: str) -> None:
        super().__init__(data, filename=filename, content_type=content_type)
        self._size = len(data)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def write(self, writer: Any) -> None:
        view = memoryview(self._value)
        for start in range(0, len(view), self.CHUNK):
            await writer.write(view[start : start + self.CHUNK])


def _short(message: str) -> str:
    """A provider message made safe for exception text: keys masked, length capped."""
    message = _KEY_PATTERN.sub("sk-***", " ".join(message.split()))
    if len(message) > MAX_LOG_MESSAGE:
        message = message[: MAX_LOG_MESSAGE - 1] + "…"
    return message


def _error_object(body: bytes) -> dict[str, Any]:
    """The `error` object of an OpenAI error body, or {} when the body is not one (e.g. HTML)."""
    payload = parse_json(body)
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return payload["error"]
    return {}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def classify_openai_error(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> ProviderError:
    """Map one OpenAI error response to a `ProviderError` (the only place that reads OpenAI errors).

    400 `moderation_blocked` / `content_policy_violation` → ProviderRejected; 401/403 →
    ServiceUnavailable; `model_not_found` with any other 4xx → ModelGone (a shut-down model; nothing
    ran; providers.md §1.6 gives its status only as commonly reported); other 400 → InvalidInput;
    other 404 → ModelUnavailable; 429 `insufficient_quota`
    → ServiceUnavailable (never retried); other 429 → RateLimited with the retry-after hint;
    408 → ProviderTimeout; ≥500 → ServerError(accepted=True). Non-JSON bodies (proxy HTML pages)
    are classified by status.
    A moderation block at the output stage (when the body says so) is marked `accepted=True`:
    the image was generated, so it may have been billed.
    """
    error = _error_object(body)
    err_type = _str_or_none(error.get("type"))
    code = _str_or_none(error.get("code"))
    raw_message = error.get("message") if isinstance(error.get("message"), str) else ""
    summary = f"HTTP {status}"
    if err_type or code:
        summary += f" {err_type or '-'}/{code or '-'}"
    if raw_message:
        summary += f": {_short(raw_message)}"
    kw: dict[str, Any] = {
        "provider": provider,
        "status": status,
        "code": code or err_type,
        "request_id": headers.get(REQUEST_ID_HEADER),
    }

    if status == 400 and (code in _SAFETY_CODES or err_type == "image_generation_user_error"):
        details = error.get("moderation_details")
        stage = details.get("moderation_stage") if isinstance(details, dict) else None
        return ProviderRejected(summary, accepted=stage == "output", **kw)
    if code in _BILLING_CODES:  # the operator's account, not the member's input (400 or 429)
        return ServiceUnavailable(summary, **kw)
    if status == 429:
        if _QUOTA in (code, err_type):
            return ServiceUnavailable(summary, **kw)
        return RateLimited(summary, retry_after=parse_retry_after(headers), **kw)
    if status in (401, 403):
        return ServiceUnavailable(summary, **kw)
    if code == "model_not_found" and 400 <= status < 500:
        return ModelGone(summary, **kw)
    if status == 404:
        return ModelUnavailable(summary, **kw)
    if status >= 500:
        return ServerError(summary, accepted=True, **kw)
    if status == 408:  # the server gave up waiting for the request: not the member's input
        return ProviderTimeout(summary, **kw)
    if 400 <= status < 500:
        return InvalidInput(summary, **kw)
    if 300 <= status < 400:  # nothing was created; the base URL is not the service's own
        return redirected(status, headers, provider=provider)
    return ServerError(summary, **kw)  # 1xx: nothing was created


def parse_model_list(payload: object, *, provider: str = "openai") -> list[ListedModel]:
    """The models of a `GET /models` answer, with their `shutdown_date` when one can be read.

    Entries without a string `id` are skipped. A missing or null `shutdown_date` is None; one that is
    not a `YYYY-MM-DD` day is logged and read as None (a garbled date must not retire anything).
    Raises `ServerError` when the answer is not a list at all.
    """
    items = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        raise ServerError("GET /models answered without a data list", provider=provider)
    models: list[ListedModel] = []
    for item in items:
        model_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(model_id, str) or not model_id:
            continue
        raw = item.get("shutdown_date")
        shutdown: date | None = None
        if raw is not None:
            try:
                shutdown = date.fromisoformat(raw) if isinstance(raw, str) and len(raw) == 10 else None
            except ValueError:
                shutdown = None
            if shutdown is None:
                log.warning(
                    "%s: unreadable shutdown_date %r for %s; ignored", provider, _short(str(raw)), model_id
                )
        models.append(ListedModel(id=model_id, shutdown_date=shutdown))
    return models


@dataclass(frozen=True)
class ModerationVerdict:
    """One moderation answer: the API's own `flagged`, the categories it flagged, and every score."""

    flagged: bool
    categories: tuple[str, ...]
    scores: Mapping[str, float]


_IMAGE_SLOT = "retouch-image-slot"


def moderation_body(text: str | None, image: tuple[str, bytes] | None) -> bytes:
    """The JSON body of a moderation call (BLOCKING: base64 of the image).

    The image's base64 is spliced in as bytes rather than run through the JSON encoder: base64 needs
    no escaping, and encoding a multi-megabyte string was the safety check's main cost. The image is
    the last part, so the slot is found from the end even if the prompt happens to contain its name.
    """
    parts: list[dict[str, Any]] = []
    if text:
        parts.append({"type": "text", "text": text})
    if image is not None:
        parts.append({"type": "image_url", "image_url": {"url": _IMAGE_SLOT}})
    head = json.dumps({"model": MODERATION_MODEL, "input": parts}).encode()
    if image is None:
        return head
    mime, data = image
    before, _, after = head.rpartition(_IMAGE_SLOT.encode())
    return b"".join((before, f"data:{mime};base64,".encode(), pybase64.b64encode(data), after))


def parse_moderation(payload: object, *, provider: str = "openai") -> ModerationVerdict:
    """`results[0]` of a moderation answer; anything else is a `ServerError` (nothing was created)."""
    results = payload.get("results") if isinstance(payload, dict) else None
    first = results[0] if isinstance(results, list) and results else None
    if not isinstance(first, dict) or not isinstance(first.get("flagged"), bool):
        raise ServerError("moderation answer without results[0].flagged", provider=provider, accepted=False)
    found_categories, found_scores = first.get("categories"), first.get("category_scores")
    categories: dict[Any, Any] = found_categories if isinstance(found_categories, dict) else {}
    raw_scores: dict[Any, Any] = found_scores if isinstance(found_scores, dict) else {}
    scores = {str(k): float(v) for k, v in raw_scores.items() if isinstance(v, int | float)}
    flagged = tuple(sorted(str(k) for k, v in categories.items() if v is True))
    return ModerationVerdict(first["flagged"], flagged, scores)


def _health_from_error(exc: ProviderError) -> ProviderHealth:
    """What a failed `GET /models` says: the shared reading, plus OpenAI's `insufficient_quota`."""
    if exc.code == _QUOTA and exc.status not in (401, 403):
        what = f"HTTP {exc.status} {exc.code}" if exc.status else f"{type(exc).__name__} {exc.code}"
        return ProviderHealth(reachable=True, authenticated=True, detail=f"out of quota or billing ({what})")
    return health_from_error(exc)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _text_and_image(total: object, details: object) -> tuple[int, int]:
    """(text, image) tokens of one side of `usage`: its details' counts, the image count being every
    token of `total` that is not text when the details give none (no details at all: all of them)."""
    if not isinstance(details, dict):
        return 0, _int(total)
    text = _int(details.get("text_tokens"))
    return text, _int(details.get("image_tokens")) or max(0, _int(total) - text)


def parse_usage(raw: object) -> Usage | None:
    """Map OpenAI `usage` to `Usage`; None when absent or when it shows no image output tokens.

    Where `input_tokens_details` or `output_tokens_details` is missing, or gives no `image_tokens`
    (an empty `{}` included), the side's tokens that are not text are counted as image tokens: image
    tokens are the dearer kind, so a cost estimate errs high rather than low.
    """
    if not isinstance(raw, dict):
        return None
    input_text, input_image = _text_and_image(raw.get("input_tokens"), raw.get("input_tokens_details"))
    output_text, output_image = _text_and_image(raw.get("output_tokens"), raw.get("output_tokens_details"))
    if not output_image:
        # An edit always bills image output: a usage that shows none cannot be priced from (it would
        # charge nothing), so the job is charged the list price instead.
        return None
    return Usage(
        input_text_tokens=input_text,
        input_image_tokens=input_image,
        output_image_tokens=output_image,
        output_text_tokens=output_text,
    )


class OpenAIProvider:
    """Edits images with OpenAI's `/images/edits` (GPT Image models), one synchronous POST per job."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        policy: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen dataclass, safe as a default
        call_timeout: float = 240.0,
        name: str = "openai",
    ) -> None:
        self.name = name
        self._session = session
        self._api_key = api_key
        self._url = f"{base_url.rstrip('/')}/images/edits"
        self._models_url = f"{base_url.rstrip('/')}/models"
        self._moderations_url = f"{base_url.rstrip('/')}/moderations"
        self._policy = policy
        self._call_timeout = call_timeout

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIProvider(name={self.name!r}, url={redact_url(self._url)!r})"

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"}

    async def check(self) -> ProviderHealth:
        """Reachability and auth via `GET /models`: authenticated, free, and small."""
        try:
            await send_check(
                self._session,
                self._models_url,
                provider=self.name,
                classify=classify_openai_error,
                headers=self._auth,
            )
        except ProviderError as exc:
            return _health_from_error(exc)
        return ProviderHealth(reachable=True, authenticated=True, detail="API key accepted", ok=True)

    async def list_models(self) -> list[ListedModel]:
        """The models this key can use, from `GET /models`, each with its `shutdown_date`.

        Free and idempotent, so failures are retried like any GET within `LIST_TIMEOUT`; then a
        `ProviderError` subclass is raised (mapped by `classify_openai_error`; an answer that is not
        a model list is a `ServerError`).
        """
        payload = await self._free_call("GET", self._models_url, within=LIST_TIMEOUT)
        return parse_model_list(payload, provider=self.name)

    async def moderate(
        self, text: str | None, image: tuple[str, bytes] | None, *, within: float
    ) -> ModerationVerdict:
        """Classify a prompt and/or one image (mime, bytes) with the free moderation model.

        Retried like any idempotent call for up to `within` seconds, then a `ProviderError` is raised.
        """
        body = await asyncio.to_thread(moderation_body, text, image)
        payload = await self._free_call("POST", self._moderations_url, within=within, body=body)
        return parse_moderation(payload, provider=self.name)

    async def _free_call(self, method: str, url: str, *, within: float, body: bytes | None = None) -> Any:
        """A call that creates nothing (retried like a GET for up to `within` seconds); its decoded
        JSON answer, or None when the answer is not JSON. `body` is sent as JSON."""
        resp = await send_idempotent(
            self._session,
            method,
            url,
            policy=self._policy,
            deadline=time.monotonic() + within,
            call_timeout=within,
            provider=self.name,
            headers=self._auth if body is None else {**self._auth, "Content-Type": "application/json"},
            data_factory=None if body is None else lambda: body,
            classify=classify_openai_error,
            request_id_header=REQUEST_ID_HEADER,
        )
        return parse_json(resp.body)

    def _form(self, request: EditRequest) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("model", request.model)
        form.add_field("prompt", request.prompt)
        for index, image in enumerate(request.images, start=1):
            name = f"image-{index}.{image.extension}"
            part = _ImagePart(image.data, filename=name, content_type=image.mime)
            form.add_field("image[]", part, filename=name, content_type=image.mime)
        if request.mask is not None:
            part = _ImagePart(request.mask.data, filename="mask.png", content_type="image/png")
            form.add_field("mask", part, filename="mask.png", content_type="image/png")
        form.add_field("n", str(request.count))
        form.add_field("size", request.size)
        form.add_field("quality", request.quality)
        form.add_field("background", request.background)
        form.add_field("output_format", request.output_format)
        if request.input_fidelity is not None:
            form.add_field("input_fidelity", request.input_fidelity)
        if request.user_hash:
            form.add_field("user", request.user_hash)
        return form

    async def edit(self, request: EditRequest) -> EditResult:
        """Run one edit. Raises a `ProviderError` subclass on failure (see `classify_openai_error`)."""
        if not request.images:
            raise InvalidInput("no input image", provider=self.name)
        if request.mask is not None and request.mask.mime != "image/png":
            raise InvalidInput("the mask must be a PNG", provider=self.name)
        resp = await send_paid(
            self._session,
            "POST",
            self._url,
            policy=self._policy,
            deadline=request.deadline,
            call_timeout=self._call_timeout,
            data_factory=lambda: self._form(request),
            headers=self._auth,
            provider=self.name,
            classify=classify_openai_error,
            request_id_header=REQUEST_ID_HEADER,
            min_retry_window=MIN_RETRY_WINDOW,
            # A 200's body is the images themselves (base64, several MB), made and billed: its read is
            # fetching a finished result, with its grace past the job's deadline.
            result_in_body=request.fetching_result,
        )
        # The answer is here and billed: checking its images (decoded whole, in a worker thread) is
        # fetching a finished result, which gets its grace past the job's deadline (`overdue`).
        with request.fetching_result():
            result = await self._result(parse_json(resp.body), resp.request_id)
        log.debug(
            "%s: %s edit returned %s image(s), request id %s",
            self.name,
            request.model,
            len(result.images),
            result.request_id,
        )
        return result

    async def _result(self, payload: object, request_id: str | None) -> EditResult:
        """Decode `data[].b64_json`. Each image's format is read from its bytes (the echoed
        `output_format` describes what was asked for, the bytes are what arrived); items that are
        missing, undecodable, or not a png/jpeg/webp image that decodes whole (a cut-off answer keeps
        its signature) are skipped: the member pays for the images they get (`split_charge`).
        The images are decoded one after another, so one whole picture is in memory at a time."""

        def unusable(why: str) -> ServerError:
            return ServerError(
                f"HTTP 200 but {why}", provider=self.name, request_id=request_id, accepted=True
            )

        if not isinstance(payload, dict):
            raise unusable("the body is not a JSON object")
        images: list[OutputImage] = []
        items = payload.get("data")
        for item in items if isinstance(items, list) else ():
            b64 = item.get("b64_json") if isinstance(item, dict) else None
            if not isinstance(b64, str) or not b64:
                continue
            try:
                data = decode_base64_image(b64)
            except ValueError:
                log.warning("%s: skipping an undecodable image (request id %s)", self.name, request_id)
                continue
            fmt = await usable_image_format(data)
            if fmt is None:
                log.warning(
                    "%s: skipping data that is not a whole png/jpeg/webp image (request id %s)",
                    self.name,
                    request_id,
                )
                continue
            images.append(OutputImage(data=data, format=fmt))
        if not images:
            raise unusable("no usable image in data[]")
        quality = payload.get("quality")
        size = payload.get("size")
        return EditResult(
            images=tuple(images),
            provider=self.name,
            quality=quality if isinstance(quality, str) else None,
            size=size if isinstance(size, str) else None,
            usage=parse_usage(payload.get("usage")),
            request_id=request_id,
        )
