"""WaveSpeed (API v3) adapter: upload inputs → submit a task → poll it (or sync mode) → get outputs.

Wire reference: shared spec `providers.md` §3. Flow for one job:

1. every input image (and the mask) goes to `POST {base}/media/upload/binary` (multipart `file`),
   giving a `download_url` (the provider never sees a Discord CDN URL);
2. one paid `POST {base}/{model path}` with a JSON body; in sync mode (`sync_mode=True`) it waits
   for the result, and when WaveSpeed's own sync wait runs out (`data.code` 5004, "Sync mode timed
   out") the same task is polled, never re-submitted;
3. `GET {base}/predictions/{id}/result` until `completed` or a failure status. A failed task comes
   back as HTTP 200 with `data.status` "failed" (or "cancelled"/"timeout") and `data.error`;
4. `outputs` are base64 (`enable_base64_output`, which saves one download per image) or URLs;
   both are accepted, URLs downloaded from http(s) only with a size cap and without our key.

Decisions on the spec's OPEN points (providers.md §8.7):

* gpt-image-1 edit path: the catalog's route model id is the path; the packaged catalog uses
  `openai/gpt-image-1/edit`. A wrong path fails with a 404 (nothing billed), while the documented
  `openai/gpt-image-1` might be a text-to-image endpoint that ignores `image`; both ids are known here.
* Result endpoint: `/predictions/{id}/result` (vendor page, SDK, the `urls.get` the API returns).
* Upload: the classic `/media/upload/binary` the issue names (the SDK's newer two-step flow and
  `/upload` are not used); the image limit is taken as 20 MB, the smallest figure given.
* Size separator: `*` (`1024*1024`), as the parameter table's enum writes it; `auto` is native.
* Mini edit: no `quality`/`size` fields are sent (the vendor page lists none), so that route only
  honours "auto" for both; at most 4 `images`.
* Mask polarity: sent in the "alpha" convention of `bot.providers.masks` (transparent *and* white
  where to edit), which reads the same under both documented conventions.
* Base64 prefix: bare and `data:` forms are both decoded.
* Errors: the bodies are undocumented; the message is read from `message`/`error`/`data.error`.
  401 (a key that was never activated by a top-up) and any "insufficient balance" text (or 402)
  need the admin; a 5xx on the submit without a task id is taken as "nothing was created" (the
  issue's rule) except 504. A task WaveSpeed cancelled or timed out is reported as failed/timeout;
  WaveSpeed refunds failed tasks itself.
* WaveSpeed documents no cancel call: at the deadline polling stops with an accepted timeout.
* Resumable (`ResumableProvider`): the task id is reported (`on_submitted`) before polling starts,
  and `resume(id, request)` polls it again after a restart without submitting anything. A
  new account's tier runs 3 tasks at once (`WAVESPEED_MAX_CONCURRENT`, enforced by routing).
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
    ProviderTimeout,
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

DEFAULT_BASE_URL = "https://api.wavespeed.ai/api/v3"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # "Images 20 MB" (the smallest of the documented limits)
MAX_OUTPUT_BYTES = 50 * 1024 * 1024
POLL_INTERVAL = 1.0  # the SDK polls every second
MAX_POLL_INTERVAL = 5.0
IO_TIMEOUT = 60.0  # one upload, poll or download call
SUBMIT_TIMEOUT = 60.0  # an async submit only queues the task
SYNC_SUBMIT_TIMEOUT = 240.0  # must outlast WaveSpeed's own sync wait (about 90 s), or the id is lost
SYNC_TIMEOUT_CODE = 5004

SUCCESS = frozenset({"completed"})
FAILURE = frozenset({"failed", "cancelled", "canceled", "timeout"})
_SAFETY_WORDS = ("nsfw", "safety", "moderation", "content policy", "sensitive")
_BALANCE_WORDS = ("insufficient", "balance", "top up", "top-up", "recharge")


@dataclass(frozen=True, slots=True)
class ModelFields:
    """How one WaveSpeed model takes its inputs."""

    image_field: str  # "image" (a single URL) or "images" (a list of URLs)
    max_images: int
    mask_field: str | None
    qualities: tuple[str, ...]  # values that may be sent; "auto" is sent by omitting the field
    sizes: tuple[str, ...]  # values that may be sent, in the bot's `WxH` form


_FULL = ModelFields(
    "image", 1, "mask_image", ("low", "medium", "high"), ("auto", "1024x1024", "1536x1024", "1024x1536")
)
MODELS: dict[str, ModelFields] = {
    "openai/gpt-image-1-mini/edit": ModelFields("images", 4, None, (), ()),
    "openai/gpt-image-1/edit": _FULL,
    "openai/gpt-image-1": _FULL,  # the docs page's curl path for the same edit parameters
}
DEFAULT_MASK_CONVENTIONS = {"openai/gpt-image-1/edit": "alpha", "openai/gpt-image-1": "alpha"}


def _payload(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _data(payload: Any) -> dict[str, Any]:
    """The task object of an enveloped (`{code, message, data}`) or bare response ({} if neither)."""
    if not isinstance(payload, dict):
        return {}
    inner = payload.get("data")
    return inner if isinstance(inner, dict) else payload


def _envelope_status(payload: Any) -> int | None:
    """The envelope's `code` when it is an error status (uploads report `code: 500` that way)."""
    code = payload.get("code") if isinstance(payload, dict) else None
    if isinstance(code, int) and not isinstance(code, bool) and code >= 400:
        return code
    return None


def _message(payload: Any) -> str:
    for source in (_data(payload), payload):
        if not isinstance(source, dict):
            continue
        for key in ("error", "message", "msg", "detail"):
            value = source.get(key)
            if isinstance(value, str) and value.strip() and value.strip().lower() != "success":
                return value
    return ""


def _is_sync_timeout(task: dict[str, Any]) -> bool:
    """WaveSpeed's own sync wait ran out: the task goes on and must be polled, not re-sent."""
    error = task.get("error")
    return task.get("code") == SYNC_TIMEOUT_CODE or (
        str(task.get("status") or "").lower() == "processing"
        and isinstance(error, str)
        and "sync mode timed out" in error.lower()
    )


def classify_wavespeed_error(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> ProviderError:
    """Map one WaveSpeed failure to a `ProviderError`: the only place that reads WaveSpeed errors.

    Handles HTTP errors, an HTTP 200 whose envelope `code` is an error, and (status 2xx) a task
    whose `data.status` is a failure: "failed" → JobFailed (ProviderRejected when the text names a
    safety filter), "cancelled" → JobFailed, "timeout" → ProviderTimeout, all `accepted=True`.
    401/403 and "insufficient balance" (or 402) → ServiceUnavailable; 404 → ModelUnavailable;
    429 → RateLimited; other 4xx → InvalidInput; 504 → ServerError(accepted=True); other 5xx →
    ServerError that routing may retry elsewhere (the submit returned no task id).
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

    if effective is None:  # a task in a failure state: it ran, and may have been billed
        task_status = str(_data(payload).get("status") or "").lower() or None
        kw["code"] = task_status
        if task_status == "timeout":
            return ProviderTimeout(summary, accepted=True, **kw)
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
        err.retryable_elsewhere = True  # no task id came back: nothing was queued
        return err
    if safety:
        return ProviderRejected(summary, **kw)
    return InvalidInput(summary, **kw)


class WaveSpeedProvider:
    """Edits images through WaveSpeed's v3 task API (one paid submit per job, then polling)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        sync_mode: bool = False,
        base64_output: bool = True,
        policy: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen dataclass, safe as a default
        call_timeout: float | None = None,
        io_timeout: float = IO_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
        max_poll_interval: float = MAX_POLL_INTERVAL,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        mask_conventions: Mapping[str, str] | None = None,
        name: str = "wavespeed",
    ) -> None:
        self.name = name
        self._session = session
        self._api_key = api_key
        self._base = base_url.rstrip("/")
        self._sync_mode = sync_mode
        self._base64_output = base64_output
        self._policy = policy
        if call_timeout is None:
            call_timeout = SYNC_SUBMIT_TIMEOUT if sync_mode else SUBMIT_TIMEOUT
        self._call_timeout = call_timeout
        self._io_timeout = io_timeout
        self._poll_interval = poll_interval
        self._max_poll_interval = max_poll_interval
        self._max_output_bytes = max_output_bytes
        self._max_upload_bytes = max_upload_bytes
        self._mask_conventions = {**DEFAULT_MASK_CONVENTIONS, **(mask_conventions or {})}

    def __repr__(self) -> str:  # never show the key
        return (
            f"WaveSpeedProvider(name={self.name!r}, url={redact_url(self._base)!r}, sync={self._sync_mode})"
        )

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"}

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
        too_big = [i for i, image in enumerate(request.images, 1) if len(image.data) > self._max_upload_bytes]
        if too_big:
            problems.append(f"image(s) {too_big} over the {self._max_upload_bytes // 2**20} MB upload limit")
        if request.mask is not None and fields.mask_field is None:
            problems.append("a mask")
        if request.input_fidelity is not None:
            problems.append("input_fidelity (no such field)")
        if request.count != 1:
            problems.append(f"count={request.count} (no `n`; one image per task)")
        if request.quality != "auto" and request.quality not in fields.qualities:
            problems.append(f"quality={request.quality}")
        if request.size != "auto" and request.size not in fields.sizes:
            problems.append(f"size={request.size}")
        if request.background != "auto":
            problems.append(f"background={request.background}")
        if request.output_format != "png":
            problems.append(f"output_format={request.output_format}")
        if problems:
            err = InvalidInput(
                f"{request.model} on WaveSpeed cannot take: {', '.join(problems)}",
                provider=self.name,
                code="unsupported_option",
            )
            # Nothing was sent and the limit is this route's, not the user's: another route may do it.
            err.retryable_elsewhere = True
            raise err
        return fields

    async def edit(self, request: EditRequest, *, on_submitted: OnSubmitted | None = None) -> EditResult:
        """Run one edit. Raises a `ProviderError` subclass on failure (see `classify_wavespeed_error`).

        `on_submitted(task_id)` is awaited once WaveSpeed has accepted the task, before polling.
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

        body: dict[str, Any] = {"prompt": request.prompt}
        image_urls = urls[: len(request.images)]
        body[fields.image_field] = image_urls[0] if fields.image_field == "image" else image_urls
        if request.mask is not None and fields.mask_field:
            body[fields.mask_field] = urls[-1]
        if fields.qualities and request.quality != "auto":
            body["quality"] = request.quality
        if fields.sizes:
            body["size"] = request.size.replace("x", "*")  # the API's enum writes 1024*1024
        body["enable_base64_output"] = self._base64_output
        body["enable_sync_mode"] = self._sync_mode

        resp = await send_paid(
            self._session,
            "POST",
            f"{self._base}/{request.model.strip('/')}",
            policy=self._policy,
            deadline=request.deadline,
            call_timeout=self._call_timeout,
            json=body,
            headers=self._auth,
            provider=self.name,
            classify=classify_wavespeed_error,
        )
        task = self._submitted(resp)
        task_id = str(task["id"])
        if on_submitted is not None:
            await on_submitted(task_id)
        status = str(task.get("status") or "").lower()
        if self._sync_mode and _is_sync_timeout(task):
            log.info("%s: sync wait ran out for task %s; polling it instead", self.name, task_id)
        if status not in SUCCESS | FAILURE:
            task = await self._poll(task_id, request)
        return await self._result(task, task_id, request)

    async def resume(self, provider_job_id: str, request: EditRequest) -> EditResult:
        """Follow a task submitted earlier (e.g. before a restart) to its result. Never submits."""
        log.info("%s: resuming task %s", self.name, provider_job_id)
        return await self._result(await self._poll(provider_job_id, request), provider_job_id, request)

    async def _poll(self, task_id: str, request: EditRequest) -> dict[str, Any]:
        return await poll(
            lambda: self._fetch(task_id, request.deadline),
            is_done=lambda t: str(t.get("status") or "").lower() in SUCCESS | FAILURE,
            deadline=request.deadline,
            interval=self._poll_interval,
            max_interval=self._max_poll_interval,
            cancel=None,  # WaveSpeed documents no cancel call
            provider=self.name,
        )

    async def _upload(self, data: bytes, filename: str, mime: str, request: EditRequest) -> str:
        def form() -> aiohttp.FormData:
            fd = aiohttp.FormData()
            fd.add_field("file", io.BytesIO(data), filename=filename, content_type=mime)
            return fd

        resp = await send_idempotent(
            self._session,
            "POST",
            f"{self._base}/media/upload/binary",
            policy=self._policy,
            deadline=request.deadline,
            call_timeout=self._io_timeout,
            provider=self.name,
            headers=self._auth,
            data_factory=form,
            classify=classify_wavespeed_error,
        )
        payload = _payload(resp.body)
        if _envelope_status(payload) is not None:
            raise classify_wavespeed_error(resp.status, resp.body, resp.headers, provider=self.name)
        url = _data(payload).get("download_url")
        if not isinstance(url, str) or not url.lower().startswith(("https://", "http://")):
            raise ServerError("media upload returned no usable download_url", provider=self.name)
        return url

    def _submitted(self, resp: HttpResponse) -> dict[str, Any]:
        """The task from the submit's 2xx answer; its id is required to follow the job."""
        payload = _payload(resp.body)
        task = _data(payload)
        task_id = task.get("id")
        has_id = isinstance(task_id, (str, int)) and not isinstance(task_id, bool) and str(task_id) != ""
        if _envelope_status(payload) is not None:
            err = classify_wavespeed_error(resp.status, resp.body, resp.headers, provider=self.name)
            err.accepted = has_id or err.accepted
            raise err
        if not has_id:
            raise ServerError("HTTP 2xx but no task id", provider=self.name, accepted=True)
        return task

    async def _fetch(self, task_id: str, deadline: float) -> dict[str, Any]:
        try:
            resp = await send_idempotent(
                self._session,
                "GET",
                f"{self._base}/predictions/{task_id}/result",
                policy=self._policy,
                deadline=deadline,
                call_timeout=self._io_timeout,
                provider=self.name,
                headers=self._auth,
                classify=classify_wavespeed_error,
                accepted=True,
            )
        except ModelUnavailable as exc:  # a 404 here means the task vanished, not the model
            raise ServerError(f"task {task_id} not found", provider=self.name, accepted=True) from exc
        payload = _payload(resp.body)
        if _envelope_status(payload) is not None:
            err = classify_wavespeed_error(resp.status, resp.body, resp.headers, provider=self.name)
            err.accepted = True
            raise err
        return _data(payload)

    async def _result(self, task: dict[str, Any], task_id: str, request: EditRequest) -> EditResult:
        if str(task.get("status") or "").lower() in FAILURE:
            err = classify_wavespeed_error(200, json.dumps({"data": task}).encode(), {}, provider=self.name)
            err.request_id = task_id
            raise err
        outputs = task.get("outputs")
        items = [outputs] if isinstance(outputs, str) else outputs if isinstance(outputs, list) else []
        values = [v for v in items if isinstance(v, str) and v.strip()]
        if not values:
            raise ServerError(
                f"task {task_id} completed without outputs",
                provider=self.name,
                request_id=task_id,
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
            request_id=task_id,
        )
