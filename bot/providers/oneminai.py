"""1min.ai adapter: upload the input as an asset → one synchronous feature call → download the result.

Wire reference: shared spec `providers.md` §5. Flow for one job:

1. the input image (and the mask) go to `POST {base}/assets` (multipart field `asset`); the edit
   request refers to them by their bucket path `fileContent.path` (the provider never sees a
   Discord CDN URL);
2. one paid `POST {base}/features`: `type: IMAGE_EDITOR` for a text-guided edit, or
   `IMAGE_INPAINTER` with `maskUrl` for a masked edit (white = edit, black = keep);
3. the result is downloaded from `aiRecord.temporaryUrl` (a presigned S3 URL: http(s) only, size
   capped, never with our key, and its query string never logged).

Decisions on the spec's OPEN points (providers.md §8.9):

* Errors are undocumented. 401/403 and any credit/balance/quota wording (or 402) need the admin;
  404 → model unavailable; 429 → rate limited (Retry-After if sent); other 4xx → invalid input
  (or a safety refusal by its wording). A 5xx is taken as *accepted*: the call is synchronous and
  nothing says a failed call is not charged, so it is never re-sent elsewhere.
* `aiRecord.status`: only `SUCCESS`, in any case (or no status with a `temporaryUrl`), is success;
  any other value is a failed job, `accepted=True`.
* `n` is always 1: only one `temporaryUrl` comes back and fetching the other `resultObject` paths
  is undocumented, so paying for images that cannot be delivered is avoided; routing emulates
  `count` with parallel calls.
* `size` is required and has no `auto` (routing resolves it); `quality` "auto" is sent by omitting
  it (default medium). `background`: only the editor has it, and only "auto" and "transparent"
  mean what the bot means (1min's `preserve`/`white`/`black` are not OpenAI values). A masked edit
  therefore takes background "auto" only. `output_compression` is sent as 100 for jpeg/webp so the
  output matches the other providers (1min's default is 85).
* Prompts longer than 4,000 characters and more than one input image are refused up front.
* GPT Image 2 (`model: gpt-image-2`, editor only, models-2026-12.md §4): `size` is REQUIRED and is a
  free `WxH` (OpenAI's 2.x rules), `quality` is REQUIRED (low/medium/high). A request with size or
  quality "auto" is therefore refused before anything is sent (the catalog offers this route no
  "auto"). No inpainter is documented for it, so a masked edit is refused too.
* "Model gone": a 404/410 answer to the feature call, or an error whose message says the model is
  not found / no longer available / retired / has no available channels, raises `ModelGone`
  (not a 5xx that says it passes, "maintenance", "try again later": `_PASSING`, nor a 404 about
  something the request carried)
  (`accepted=False`, even for a 5xx: an answer that the model is gone proves nothing ran), unless
  a 2xx, 5xx or 408 answer carries an `aiRecord.uuid`: a record was made, so that error is accepted
  whatever it says (a 4xx refuses the request, whatever record it echoes).
* The upload limit is undocumented (a third party says 50 MB); the bot's own input cap is smaller.
* No `check()` for `/diagnose`: 1min.ai documents no GET at all (no account, credit or catalog
  call), and every documented call costs or stores something, so `/diagnose` shows "no check
  available".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from bot.domain.options import parse_size
from bot.providers.base import EditRequest, EditResult, OutputImage
from bot.providers.errors import (
    ModelUnavailable,
    ProviderError,
    ServerError,
)
from bot.providers.http import (
    before_submit,
    classify_reseller,
    gather_or_cancel,
    is_http_url,
    parse_json,
    sniff_image_format,
    unsupported_options,
    usable_job_id,
)
from bot.providers.reseller import ResellerAdapter, Vendor

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.1min.ai/api"
CALL_TIMEOUT = 240.0  # the feature call blocks while the image is made
MAX_PROMPT_CHARS = 4000
MODELS = frozenset({"gpt-image-1", "gpt-image-1-mini", "gpt-image-2"})
# Models whose editor takes any `WxH` size and requires both `size` and `quality` (no inpainter).
FREE_SIZE_MODELS = frozenset({"gpt-image-2"})
SIZES = ("1024x1024", "1024x1536", "1536x1024")
QUALITIES = ("low", "medium", "high")  # "auto" is sent by omitting the field
OUTPUT_FORMATS = ("png", "jpeg", "webp")
EDITOR_BACKGROUNDS = ("auto", "transparent")

_SAFETY_WORDS = ("nsfw", "safety", "moderation", "content policy", "flagged")
_CREDIT_WORDS = ("credit", "balance", "quota", "insufficient")


def _message(payload: Any) -> str:
    if not isinstance(payload, dict):
        return ""
    record = payload.get("aiRecord")
    for source in (payload, payload.get("error"), record if isinstance(record, dict) else None):
        if isinstance(source, str) and source.strip():
            return source
        if isinstance(source, dict):
            for key in ("message", "error", "msg", "detail"):
                value = source.get(key)
                if isinstance(value, str) and value.strip():
                    return value
    return ""


def _record_id(body: bytes) -> str | None:
    """`aiRecord.uuid` of an answer: the record of a call 1min.ai took (None when absent)."""
    payload = parse_json(body)
    record = payload.get("aiRecord") if isinstance(payload, dict) else None
    uuid = record.get("uuid") if isinstance(record, dict) else None
    return uuid if isinstance(uuid, str) and uuid else None


def _record_status(payload: Any) -> str | None:
    """`aiRecord.status`, lower-cased (None when absent)."""
    record = payload.get("aiRecord") if isinstance(payload, dict) else None
    record_status = record.get("status") if isinstance(record, dict) else None
    return record_status.lower() if isinstance(record_status, str) else None


def classify_oneminai_error(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> ProviderError:
    """Map one 1min.ai failure to a `ProviderError`: the only place that reads 1min.ai errors.

    The error format is undocumented, so the status decides and the message refines: a 2xx whose
    `aiRecord.status` is not SUCCESS → ProviderJobFailed (ProviderRejected for safety wording), accepted;
    401/403, 402 or credit wording → ServiceUnavailable; 404 → ModelUnavailable; 429 → RateLimited;
    other 4xx → InvalidInput (ProviderRejected for safety wording); 5xx → ServerError(accepted=True).
    """
    return classify_reseller(
        status,
        body,
        headers,
        provider=provider,
        message=_message,
        job_state=_record_status,
        safety_words=_SAFETY_WORDS,
        billing_words=_CREDIT_WORDS,
        billing_code="insufficient_credits",
        safety_code="moderation",
        synchronous=True,
    )


class OneMinAIProvider(ResellerAdapter):
    """Edits images through 1min.ai's feature API (IMAGE_EDITOR / IMAGE_INPAINTER), one call per job."""

    vendor = Vendor(
        name="oneminai",
        base_url=DEFAULT_BASE_URL,
        call_timeout=CALL_TIMEOUT,
        key_header="API-KEY",
        classify=classify_oneminai_error,
        message_of=lambda body: _message(parse_json(body)),
        job_id_of=_record_id,
        mask_convention="white",  # the inpainter: white = edit, black = keep
    )

    def _check_request(self, request: EditRequest) -> None:
        if request.model not in MODELS:
            raise ModelUnavailable(
                f"1min.ai does not serve model {request.model!r}", provider=self.name, code="unknown_model"
            )
        problems = []
        if len(request.images) != 1:
            problems.append(f"{len(request.images)} images (exactly 1)")
        if len(request.prompt) > MAX_PROMPT_CHARS:
            problems.append(f"a {len(request.prompt)}-character prompt (at most {MAX_PROMPT_CHARS})")
        if request.input_fidelity is not None:
            problems.append("input_fidelity (no such field)")
        if request.count != 1:
            problems.append(f"count={request.count} (one image per call)")
        if request.model in FREE_SIZE_MODELS:
            # `size` and `quality` are required on this route: "auto" cannot be sent by omitting them.
            if parse_size(request.size) is None:
                problems.append(f"size={request.size} (a WxH size is required)")
            if request.quality not in QUALITIES:
                problems.append(f"quality={request.quality} (low, medium or high is required)")
            if request.mask is not None:
                problems.append("a mask (no inpainter for this model)")
        else:
            if request.size not in SIZES:
                problems.append(f"size={request.size}")
            if request.quality != "auto" and request.quality not in QUALITIES:
                problems.append(f"quality={request.quality}")
        if request.output_format not in OUTPUT_FORMATS:
            problems.append(f"output_format={request.output_format}")
        backgrounds = ("auto",) if request.mask is not None else EDITOR_BACKGROUNDS
        if request.background not in backgrounds:
            problems.append(f"background={request.background}")
        elif request.background == "transparent" and request.output_format != "png":
            problems.append(f"background=transparent as {request.output_format} (PNG only)")
        if problems:
            raise unsupported_options(request.model, "1min.ai", problems, provider=self.name)

    async def edit(self, request: EditRequest) -> EditResult:
        """Run one edit. Raises a `ProviderError` subclass on failure (see `classify_oneminai_error`)."""
        self._check_request(request)
        image = request.images[0]
        files = [(image.data, f"image.{image.extension}", image.mime)]
        if (mask := await self._vendor_mask(request)) is not None:
            files.append((mask, "mask.png", "image/png"))
        paths = await before_submit(
            gather_or_cancel(*(self._upload(file, request.deadline) for file in files))
        )

        prompt_object: dict[str, Any] = {
            "imageUrl": paths[0],
            "prompt": request.prompt,
            "size": request.size,
            "n": 1,
            "output_format": request.output_format,
        }
        if request.quality != "auto":
            prompt_object["quality"] = request.quality
        if request.output_format in ("jpeg", "webp"):
            prompt_object["output_compression"] = 100
        if request.mask is not None:
            feature = "IMAGE_INPAINTER"
            prompt_object["maskUrl"] = paths[1]
        else:
            feature = "IMAGE_EDITOR"
            prompt_object["background"] = request.background
        resp = await self._client.submit(
            self._client.url("/features"),
            {"type": feature, "model": request.model, "promptObject": prompt_object},
            deadline=request.deadline,
            model=request.model,
            # A 200 means the image is made and billed: reading its answer (the record that links it) is
            # fetching a finished result, with its grace past the job's deadline.
            result_in_body=request.fetching_result,
        )
        payload = parse_json(resp.body)
        record = payload.get("aiRecord") if isinstance(payload, dict) else None
        if not isinstance(record, dict):
            raise ServerError("HTTP 200 but no aiRecord", provider=self.name, accepted=True)
        uuid = record.get("uuid")
        # The job's row keeps it: one it could not hold (a NUL, which PostgreSQL refuses) gives way to
        # the HTTP request id.
        record_id = uuid if isinstance(uuid, str) and usable_job_id(uuid) else resp.request_id
        status = record.get("status")
        url = record.get("temporaryUrl")
        # Read without regard to case, as `_record_status` reads it for the classifier.
        if (status is not None and str(status).lower() != "success") or (status is None and not url):
            failure = self._client.error(resp.status, resp.body, resp.headers)
            failure.request_id = record_id
            raise failure
        if not is_http_url(url) or not isinstance(url, str):
            raise ServerError(
                "the record has no http(s) temporaryUrl",
                provider=self.name,
                request_id=record_id,
                accepted=True,
            )
        with request.fetching_result() as deadline:  # the image is made: its download outlasts the deadline
            data = await self._client.output(url, deadline=deadline)
        log.debug("%s: %s %s done (record %s)", self.name, request.model, feature, record_id)
        return EditResult(
            images=(OutputImage(data=data, format=sniff_image_format(data) or request.output_format),),
            provider=self.name,
            quality=request.quality if request.quality != "auto" else None,
            size=request.size,
            request_id=record_id,
        )

    async def _upload(self, file: tuple[bytes, str, str], deadline: float) -> str:
        """Upload one asset; returns its bucket path (`fileContent.path`, else `asset.key`)."""
        # The multipart field is `asset`, not `file`.
        resp = await self._client.upload(self._client.url("/assets"), "asset", file, deadline=deadline)
        payload = parse_json(resp.body)
        file_content = payload.get("fileContent") if isinstance(payload, dict) else None
        asset = payload.get("asset") if isinstance(payload, dict) else None
        path = file_content.get("path") if isinstance(file_content, dict) else None
        if not isinstance(path, str) or not path:
            path = asset.get("key") if isinstance(asset, dict) else None
        if not isinstance(path, str) or not path:
            raise ServerError("asset upload returned no fileContent.path", provider=self.name)
        return path
