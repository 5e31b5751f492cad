"""Atlas Cloud adapter: upload inputs → submit a prediction → poll it → download the outputs.

Wire reference: shared spec `providers.md` §2. Flow for one job:

1. every input image (and the mask) is uploaded with `POST {base}/model/uploadMedia` (multipart
   `file`), giving a temporary `download_url` (the provider never sees a Discord CDN URL);
2. one paid `POST {base}/model/generateImage` with a flat JSON body `{model, prompt, ...}`;
3. `GET {base}/model/prediction/{id}` until `completed`/`succeeded` or a failure status;
4. the `outputs` are downloaded (http(s) only, size-capped, without our API key).

Decisions on the spec's OPEN points (providers.md §8.6):

* Body shape: flat `{model, ...fields}` as Atlas's own MCP server sends, never the `input` wrapper
  that one vendor example shows.
* Responses: enveloped `{code, data}` and bare objects are both read (`payload["data"]` when it is
  an object, else the payload itself). An HTTP 200 whose envelope `code` is an error status is
  treated as that error.
* Per-model fields are fixed here (`MODELS`); an unknown model id is refused before anything is
  uploaded, so a wrong image field can never turn an edit into a text-to-image job.
  `openai/gpt-image-1/edit` takes one `image` and an optional `mask_image`; the mini edit takes
  `images` (at most 4: the same model's limit on WaveSpeed, whose page Atlas's copies) and no mask.
* Mask polarity is contradictory (alpha per the schema, "white = edit" per the README); the mask is
  sent in the "alpha" convention of `bot.providers.masks`, which is transparent *and* white where
  to edit, so both readings select the same area. A catalog route may override it.
* `quality` "auto" is sent by omitting the field (Atlas's documented default, medium, then
  applies); `size` has no "auto" at Atlas, so routing resolves it before the request gets here.
  `background` and `output_format` have no field at all: only "auto" and "png" are accepted.
* Status: `completed`/`succeeded` are success; `failed`, `error`, `cancelled`/`canceled` and
  `timeout` are failures (message in `data.error`); anything else is still running. A failure is
  `JobFailed(accepted=True)` (or `ProviderRejected` when the message names a safety filter).
* Atlas documents no cancel call, so at the deadline polling simply stops and the job is reported
  as `ProviderTimeout(accepted=True)`. The adapter is a `ResumableProvider`: the prediction id is
  reported (`on_submitted`) before polling starts, and `resume(id, request)` polls it again after a
  restart without submitting anything.
* A 5xx on the submit without a prediction id is taken as "nothing was created" (the issue's rule)
  and may be retried elsewhere, except 504: a gateway that timed out may have passed the job on.
* Sync mode and base64 output are not used: their timeout and format are undocumented at Atlas.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.providers.base import EditRequest, EditResult, OnSubmitted, OutputImage
from bot.providers.errors import (
    InvalidInput,
    JobFailed,
    ModelUnavailable,
    ProviderError,
    ProviderRejected,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)
from bot.providers.http import (
    HttpResponse,
    RetryPolicy,
    fetch_output,
    gather_or_cancel,
    mark_unsubmitted,
    parse_retry_after,
    poll,
    redact_url,
    safe_message,
    send_idempotent,
    send_paid,
    sniff_image_format,
)
from bot.providers.masks import to_convention

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.atlascloud.ai/api/v1"
MAX_OUTPUT_BYTES = 50 * 1024 * 1024  # one result image; real ones are a few MB
POLL_INTERVAL = 2.0  # Atlas's own tools poll every 2-3 s
MAX_POLL_INTERVAL = 8.0
IO_TIMEOUT = 60.0  # one upload, poll or download call
SUBMIT_TIMEOUT = 60.0  # the submit only queues the job

SUCCESS = frozenset({"completed", "succeeded"})
FAILURE = frozenset({"failed", "error", "cancelled", "canceled", "timeout"})
_SAFETY_WORDS = ("nsfw", "safety", "moderation", "content policy", "sensitive")
_BALANCE_WORDS = ("insufficient", "balance", "top up", "recharge")


@dataclass(frozen=True, slots=True)
class ModelFields:
    """How one Atlas model takes its inputs."""

    image_field: str  # "image" (a single URL) or "images" (a list of URLs)
    max_images: int
    mask_field: str | None  # None: the model takes no mask
    qualities: tuple[str, ...] = ("low", "medium", "high")  # "auto" is sent by omitting the field
    sizes: tuple[str, ...] = ("1024x1024", "1536x1024", "1024x1536")


MODELS: dict[str, ModelFields] = {
    "openai/gpt-image-1/edit": ModelFields("image", 1, "mask_image"),
    "openai/gpt-image-1-mini/edit": ModelFields("images", 4, None),
}
DEFAULT_MASK_CONVENTIONS = {"openai/gpt-image-1/edit": "alpha"}


def _payload(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _data(payload: Any) -> dict[str, Any]:
    """The prediction object of an enveloped (`{code, data}`) or bare response ({} if neither)."""
    if not isinstance(payload, dict):
        return {}
    inner = payload.get("data")
    return inner if isinstance(inner, dict) else payload


def _envelope_status(payload: Any) -> int | None:
    """The envelope's `code` when it is an HTTP-like error status (some gateways answer 200 + code)."""
    code = payload.get("code") if isinstance(payload, dict) else None
    if isinstance(code, int) and not isinstance(code, bool) and code >= 400:
        return code
    return None


def _message(payload: Any) -> str:
    """Atlas error text: `error`, `msg` or `message`, top level or in `data` (the MCP client reads all)."""
    for source in (payload, _data(payload)):
        if not isinstance(source, dict):
            continue
        for key in ("error", "msg", "message"):
            value = source.get(key)
            if isinstance(value, str) and value.strip() and value.strip().lower() != "success":
                return value
    return ""


def classify_atlas_error(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> ProviderError:
    """Map one Atlas failure to a `ProviderError`: the only place that reads Atlas errors.

    Handles HTTP errors, an HTTP 200 whose envelope `code` is an error, and (status 2xx) a
    prediction that reports a failure status. 401/403 and any "insufficient balance" text (or 402)
    → ServiceUnavailable; 404 → ModelUnavailable; 429 → RateLimited; 400/422 → InvalidInput, or
    ProviderRejected when the text names a safety filter; 504 → ServerError(accepted=True); other
    5xx → ServerError that routing may retry elsewhere (no prediction id came back); a failed
    prediction → JobFailed(accepted=True) or ProviderRejected(accepted=True).
    """
    payload = _payload(body)
    raw = _message(payload)
    lowered = raw.lower()
    effective = _envelope_status(payload) if 200 <= status < 300 else status
    summary = f"HTTP {status}" + (f" (code {effective})" if effective not in (None, status) else "")
    if raw:
        summary += f": {safe_message(raw)}"
    kw: dict[str, Any] = {"provider": provider, "status": status}
    safety = any(word in lowered for word in _SAFETY_WORDS)

    if effective is None:  # a 2xx prediction in a failure state: the job ran (and may be billed)
        prediction_status = str(_data(payload).get("status") or "").lower() or None
        kw["code"] = prediction_status
        if safety:
            return ProviderRejected(summary, accepted=True, **kw)
        return JobFailed(summary, accepted=True, **kw)
    kw["status"] = effective
    if effective == 402 or any(word in lowered for word in _BALANCE_WORDS):
        return ServiceUnavailable(summary, code="insufficient_balance", **kw)
    if effective in (401, 403):
        return ServiceUnavailable(summary, code="unauthorized" if effective == 401 else "forbidden", **kw)
    if effective == 404:
        return ModelUnavailable(summary, code="not_found", **kw)
    if effective == 429:
        return RateLimited(summary, retry_after=parse_retry_after(headers), code="rate_limited", **kw)
    if effective >= 500:
        if effective == 504:
            return ServerError(summary, accepted=True, **kw)
        err = ServerError(summary, accepted=False, **kw)
        err.retryable_elsewhere = True  # the submit returned no prediction id: nothing was queued
        return err
    if safety:
        return ProviderRejected(summary, **kw)
    return InvalidInput(summary, **kw)


class AtlasCloudProvider:
    """Edits images through Atlas Cloud's prediction API (one paid submit per job, then polling)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        policy: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen dataclass, safe as a default
        call_timeout: float = SUBMIT_TIMEOUT,
        io_timeout: float = IO_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
        max_poll_interval: float = MAX_POLL_INTERVAL,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        mask_conventions: Mapping[str, str] | None = None,
        name: str = "atlascloud",
    ) -> None:
        self.name = name
        self._session = session
        self._api_key = api_key
        self._base = base_url.rstrip("/")
        self._policy = policy
        self._call_timeout = call_timeout
        self._io_timeout = io_timeout
        self._poll_interval = poll_interval
        self._max_poll_interval = max_poll_interval
        self._max_output_bytes = max_output_bytes
        self._mask_conventions = {**DEFAULT_MASK_CONVENTIONS, **(mask_conventions or {})}

    def __repr__(self) -> str:  # never show the key
        return f"AtlasCloudProvider(name={self.name!r}, url={redact_url(self._base)!r})"

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"}

    # ------------------------------------------------------------------ request checks

    def _fields_for(self, request: EditRequest) -> ModelFields:
        """The model's field layout, after checking the request asks nothing it cannot send."""
        fields = MODELS.get(request.model)
        if fields is None:
            raise ModelUnavailable(
                f"no known request fields for model {request.model!r}",
                provider=self.name,
                code="unknown_model",
            )
        problems = []
        if not request.images:
            problems.append("no input image")
        if len(request.images) > fields.max_images:
            problems.append(f"{len(request.images)} images (at most {fields.max_images})")
        if request.mask is not None and fields.mask_field is None:
            problems.append("a mask")
        if request.input_fidelity is not None:
            problems.append("input_fidelity (no such field)")
        if request.count != 1:
            problems.append(f"count={request.count} (no `n`; one image per prediction)")
        if request.quality != "auto" and request.quality not in fields.qualities:
            problems.append(f"quality={request.quality}")
        if request.size not in fields.sizes:
            problems.append(f"size={request.size}")
        if request.background != "auto":
            problems.append(f"background={request.background}")
        if request.output_format != "png":
            problems.append(f"output_format={request.output_format}")
        if problems:
            err = InvalidInput(
                f"{request.model} on Atlas cannot take: {', '.join(problems)}",
                provider=self.name,
                code="unsupported_option",
            )
            # Nothing was sent and the limit is this route's, not the user's: another route may do it.
            err.retryable_elsewhere = True
            raise err
        return fields

    # ------------------------------------------------------------------ the job

    async def edit(self, request: EditRequest, *, on_submitted: OnSubmitted | None = None) -> EditResult:
        """Run one edit. Raises a `ProviderError` subclass on failure (see `classify_atlas_error`).

        `on_submitted(prediction_id)` is awaited once Atlas has accepted the job, before polling.
        """
        fields = self._fields_for(request)
        files: list[tuple[bytes, str, str]] = [
            (image.data, f"image-{i}.{image.extension}", image.mime)
            for i, image in enumerate(request.images, start=1)
        ]
        if request.mask is not None:
            convention = self._mask_conventions.get(request.model, "alpha")
            try:
                mask = await asyncio.to_thread(to_convention, request.mask.data, convention)
            except ValueError as exc:
                raise InvalidInput(f"unusable mask: {exc}", provider=self.name, code="invalid_mask") from None
            files.append((mask, "mask.png", "image/png"))
        try:
            urls = await gather_or_cancel(
                *(self._upload(data, name, mime, request) for data, name, mime in files)
            )
        except ProviderError as err:
            raise mark_unsubmitted(err) from None

        body: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
        image_urls = urls[: len(request.images)]
        body[fields.image_field] = image_urls[0] if fields.image_field == "image" else image_urls
        if request.mask is not None and fields.mask_field:
            body[fields.mask_field] = urls[-1]
        if request.quality != "auto":
            body["quality"] = request.quality
        body["size"] = request.size

        resp = await send_paid(
            self._session,
            "POST",
            f"{self._base}/model/generateImage",
            policy=self._policy,
            deadline=request.deadline,
            call_timeout=self._call_timeout,
            json=body,
            headers=self._auth,
            provider=self.name,
            classify=classify_atlas_error,
        )
        prediction = self._submitted(resp)
        job_id = str(prediction["id"])
        log.debug("%s: %s prediction %s submitted", self.name, request.model, job_id)
        if on_submitted is not None:
            await on_submitted(job_id)
        if str(prediction.get("status") or "").lower() not in SUCCESS | FAILURE:
            prediction = await self._poll(job_id, request)
        return await self._result(prediction, job_id, request)

    async def resume(self, provider_job_id: str, request: EditRequest) -> EditResult:
        """Follow a prediction submitted earlier (e.g. before a restart) to its result. Never submits."""
        log.info("%s: resuming prediction %s", self.name, provider_job_id)
        return await self._result(await self._poll(provider_job_id, request), provider_job_id, request)

    async def _poll(self, job_id: str, request: EditRequest) -> dict[str, Any]:
        return await poll(
            lambda: self._fetch(job_id, request.deadline),
            is_done=lambda p: str(p.get("status") or "").lower() in SUCCESS | FAILURE,
            deadline=request.deadline,
            interval=self._poll_interval,
            max_interval=self._max_poll_interval,
            cancel=None,  # Atlas documents no cancel call
            provider=self.name,
        )

    async def _upload(self, data: bytes, filename: str, mime: str, request: EditRequest) -> str:
        def form() -> aiohttp.FormData:
            fd = aiohttp.FormData()
            # BytesIO: aiohttp writes a large raw-bytes part in one blocking call.
            fd.add_field("file", io.BytesIO(data), filename=filename, content_type=mime)
            return fd

        resp = await send_idempotent(
            self._session,
            "POST",
            f"{self._base}/model/uploadMedia",
            policy=self._policy,
            deadline=request.deadline,
            call_timeout=self._io_timeout,
            provider=self.name,
            headers=self._auth,
            data_factory=form,
            classify=classify_atlas_error,
        )
        payload = _payload(resp.body)
        if _envelope_status(payload) is not None:
            raise classify_atlas_error(resp.status, resp.body, resp.headers, provider=self.name)
        # The MCP types say `filename`, the vendor page `file_name`; only `download_url` is needed.
        url = _data(payload).get("download_url")
        if not isinstance(url, str) or not url.lower().startswith(("https://", "http://")):
            raise ServerError("uploadMedia returned no usable download_url", provider=self.name)
        return url

    def _submitted(self, resp: HttpResponse) -> dict[str, Any]:
        """The prediction from the submit's 2xx answer; its id is required to follow the job."""
        payload = _payload(resp.body)
        prediction = _data(payload)
        job_id = prediction.get("id")
        has_id = isinstance(job_id, (str, int)) and not isinstance(job_id, bool) and str(job_id) != ""
        if _envelope_status(payload) is not None:
            err = classify_atlas_error(resp.status, resp.body, resp.headers, provider=self.name)
            err.accepted = has_id or err.accepted
            raise err
        if not has_id:
            # A 2xx means Atlas took the request; without an id we cannot follow (or avoid paying) it.
            raise ServerError("HTTP 2xx but no prediction id", provider=self.name, accepted=True)
        return prediction

    async def _fetch(self, job_id: str, deadline: float) -> dict[str, Any]:
        try:
            resp = await send_idempotent(
                self._session,
                "GET",
                f"{self._base}/model/prediction/{job_id}",
                policy=self._policy,
                deadline=deadline,
                call_timeout=self._io_timeout,
                provider=self.name,
                headers=self._auth,
                classify=classify_atlas_error,
                accepted=True,
            )
        except ModelUnavailable as exc:  # a 404 here means the prediction vanished, not the model
            raise ServerError(f"prediction {job_id} not found", provider=self.name, accepted=True) from exc
        payload = _payload(resp.body)
        if _envelope_status(payload) is not None:
            err = classify_atlas_error(resp.status, resp.body, resp.headers, provider=self.name)
            err.accepted = True
            raise err
        return _data(payload)

    async def _result(self, prediction: dict[str, Any], job_id: str, request: EditRequest) -> EditResult:
        status = str(prediction.get("status") or "").lower()
        if status in FAILURE:
            body = json.dumps({"data": prediction}).encode()
            err = classify_atlas_error(200, body, {}, provider=self.name)
            err.request_id = job_id
            raise err
        outputs = prediction.get("outputs")
        if outputs is None:  # some payloads carry `output` (a string) instead
            outputs = prediction.get("output")
        items = [outputs] if isinstance(outputs, str) else outputs if isinstance(outputs, list) else []
        values = [v for v in items if isinstance(v, str) and v.strip()]
        if not values:
            raise ServerError(
                f"prediction {job_id} completed without outputs",
                provider=self.name,
                request_id=job_id,
                accepted=True,
            )
        blobs = await gather_or_cancel(
            *(
                fetch_output(
                    self._session,
                    value,
                    max_bytes=self._max_output_bytes,
                    deadline=request.deadline,
                    policy=self._policy,
                    call_timeout=self._io_timeout,
                    provider=self.name,
                )
                for value in values
            )
        )
        images = tuple(OutputImage(data=blob, format=sniff_image_format(blob) or "png") for blob in blobs)
        return EditResult(
            images=images,
            provider=self.name,
            quality=request.quality if request.quality != "auto" else None,
            size=request.size if request.size != "auto" else None,
            request_id=job_id,
        )
