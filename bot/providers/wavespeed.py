"""WaveSpeed (API v3) adapter: upload inputs → submit a task → poll it (or sync mode) → get outputs.

Wire reference: shared spec `providers.md` §3. Flow for one job:

1. every input image (and the mask) goes to `POST {base}/media/upload/binary` (multipart `file`),
   giving a `download_url` (the provider never sees a Discord CDN URL);
2. one paid `POST {base}/{model path}` with a JSON body; in sync mode (`sync_mode=True`) a route
   that publishes `enable_sync_mode` (the 1.x routes) waits for the result, and when WaveSpeed's own
   sync wait runs out (`data.code` 5004, "Sync mode timed out") the same task is polled, never
   re-submitted;
3. `GET {base}/predictions/{id}/result` until `completed` or a failure status (a 2.x route's task
   always: it has no sync mode). A failed task comes back as HTTP 200 with `data.status` "failed" (or
   "cancelled"/"timeout") and `data.error`;
4. `outputs` are base64 where `enable_base64_output` is published and asked for (the 1.x routes: it
   saves one download per image) or URLs, the API's default (the 2.x routes, which are never sent
   either flag: models-2026-12.md §4 lists none, and a route may refuse a field it lacks); URLs are
   downloaded from http(s) only, with a size cap and without our key.

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
* GPT Image 2 routes (models-2026-12.md §4): `openai/gpt-image-2/edit` takes `images`, `prompt`,
  `aspect_ratio` (10 ratios), `resolution` 1k/2k/4k and `quality` low/medium/high, and no `size`;
  the 2.5 and 2.6 flare/sunburst edit routes add `xhigh`/`max`, 15 ratios from 1:3 to 3:1,
  `output_format` and a mask (sent as `mask_image`, the field WaveSpeed's gpt-image-1 edit uses:
  the 2.x field name is not published). The request's `size` becomes `aspect_ratio` +
  `resolution` only when it is exactly one of `PIXELS` (what each pair produces); `auto` sends
  neither, so WaveSpeed follows the input. Any other size is refused before anything is sent.
  `ROUTE_SIZES` lists, per route, every size the adapter can send (for the catalog). WaveSpeed
  publishes no pixels for its 1k/2k/4k tiers: `PIXELS` is inferred from OpenAI's sizes as a
  gateway documents them per aspect ratio and tier (docs.aireiter.com's gpt-image-2 table); pairs
  it marks as over OpenAI's pixel limit (e.g. 1:1 at 4k), and 1:3/3:1, have no entry and are never
  sent. The 2.x image limit is not published: 16, the model's own limit, is assumed.
* Mask polarity: sent in the "alpha" convention of `bot.providers.masks` (transparent *and* white
  where to edit), which reads the same under both documented conventions.
* Base64 prefix: bare and `data:` forms are both decoded.
* "Model gone": a 404/410 answer to the submit (the model is the path), or an error whose message
  says the model is not found / retired / has no available channels, raises `ModelGone`
  (not a 5xx that says it passes, "maintenance", "try again later": `_PASSING`, nor a 404 about
  something the request carried)
  (`accepted=False`). A 404 on a poll still means the task vanished (`ServerError`, accepted).
* Errors: the bodies are undocumented; the message is read from `message`/`error`/`data.error`.
  401 (a key that was never activated by a top-up) and any "insufficient balance" text (or 402)
  need the admin; a 5xx on the submit without a task id is taken as "nothing was created" (the
  issue's rule) except 504. An error answer after which the task may exist (a 2xx with an error,
  a 5xx, a 408) whose body names one (`data.id`) is raised accepted and never sent elsewhere; it is
  not followed, as the id may be stale. A task WaveSpeed cancelled or timed out is reported as failed/timeout;
  WaveSpeed refunds failed tasks itself.
* WaveSpeed documents no cancel call: at the deadline polling stops with an accepted timeout.
* Resumable (`ResumableProvider`): the task id is reported (`on_submitted`) before polling starts,
  and `resume(id, request)` polls it again after a restart without submitting anything. A
  new account's tier runs 3 tasks at once (`WAVESPEED_MAX_CONCURRENT`, enforced by routing).
* No `check()` for `/diagnose`: WaveSpeed documents no account or catalog call, and its only GET
  (a task's result) needs a real task id, so `/diagnose` shows "no check available".

The upload → submit → poll → download steps are `bot.providers.predictions`, shared with Atlas
Cloud; this module supplies WaveSpeed's paths, envelope, status words and error mapping.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Unpack

import aiohttp

from bot.providers.base import EditRequest, OnSubmitted
from bot.providers.errors import ProviderError
from bot.providers.http import redact_url
from bot.providers.predictions import (
    ModelFields,
    PredictionAdapter,
    PredictionApi,
    PredictionOptions,
    job_status,
)
from bot.providers.reseller import Vendor

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wavespeed.ai/api/v3"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # "Images 20 MB" (the smallest of the documented limits)
SUBMIT_TIMEOUT = 60.0  # an async submit only queues the task
SYNC_SUBMIT_TIMEOUT = 240.0  # must outlast WaveSpeed's own sync wait (about 90 s), or the id is lost
SYNC_TIMEOUT_CODE = 5004

SUCCESS = frozenset({"completed"})
FAILURE = frozenset({"failed", "cancelled", "canceled", "timeout"})
_BALANCE_WORDS = ("insufficient", "balance", "top up", "top-up", "recharge")

_FULL = ModelFields(
    "image",
    1,
    "mask_image",
    ("low", "medium", "high"),
    ("auto", "1024x1024", "1536x1024", "1024x1536"),
    base64_and_sync=True,
)

# (aspect_ratio, resolution) -> the `WxH` image it produces. Inferred (see the module docstring).
PIXELS: dict[tuple[str, str], str] = {
    ("1:1", "1k"): "1024x1024",
    ("1:1", "2k"): "2048x2048",
    ("3:2", "1k"): "1536x1024",
    ("3:2", "2k"): "2048x1360",
    ("2:3", "1k"): "1024x1536",
    ("2:3", "2k"): "1360x2048",
    ("4:3", "1k"): "1024x768",
    ("4:3", "2k"): "2048x1536",
    ("3:4", "1k"): "768x1024",
    ("3:4", "2k"): "1536x2048",
    ("5:4", "1k"): "1280x1024",
    ("5:4", "2k"): "2560x2048",
    ("4:5", "1k"): "1024x1280",
    ("4:5", "2k"): "2048x2560",
    ("16:9", "1k"): "1536x864",
    ("16:9", "2k"): "2048x1152",
    ("16:9", "4k"): "3840x2160",
    ("9:16", "1k"): "864x1536",
    ("9:16", "2k"): "1152x2048",
    ("9:16", "4k"): "2160x3840",
    ("2:1", "1k"): "2048x1024",
    ("2:1", "2k"): "2688x1344",
    ("2:1", "4k"): "3840x1920",
    ("1:2", "1k"): "1024x2048",
    ("1:2", "2k"): "1344x2688",
    ("1:2", "4k"): "1920x3840",
    ("21:9", "1k"): "2016x864",
    ("21:9", "2k"): "2688x1152",
    ("21:9", "4k"): "3840x1648",
    ("9:21", "1k"): "864x2016",
    ("9:21", "2k"): "1152x2688",
    ("9:21", "4k"): "1648x3840",
}
# The aspect ratios each 2.x route documents (models-2026-12.md §4). The 15 of the 2.5/2.6 routes are
# given only as "1:3 to 3:1": taken as gpt-image-2's ten plus 2:1, 1:2, 9:21, 1:3 and 3:1.
GPT_IMAGE_2_RATIOS = ("1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
GPT_IMAGE_2X_RATIOS = (*GPT_IMAGE_2_RATIOS, "2:1", "1:2", "9:21", "1:3", "3:1")
GPT_IMAGE_2X_ROUTES = (
    "openai/gpt-image-2.5-flare/edit",
    "openai/gpt-image-2.5-sunburst/edit",
    "openai/gpt-image-2.6-flare/edit",
    "openai/gpt-image-2.6-sunburst/edit",
)
MAX_GPT_IMAGE_2_IMAGES = 16  # unpublished at WaveSpeed: the model's own limit at OpenAI


def _mappable_sizes(ratios: tuple[str, ...]) -> tuple[str, ...]:
    """`auto` and every `WxH` that one of `ratios` produces at some resolution, in table order."""
    return ("auto", *(size for (ratio, _), size in PIXELS.items() if ratio in ratios))


def aspect_and_resolution(size: str) -> tuple[str, str] | None:
    """The `(aspect_ratio, resolution)` that produces exactly `size` (each size has at most one)."""
    return next((key for key, pixels in PIXELS.items() if pixels == size), None)


_GPT_IMAGE_2 = ModelFields(
    "images",
    MAX_GPT_IMAGE_2_IMAGES,
    None,
    ("low", "medium", "high"),
    _mappable_sizes(GPT_IMAGE_2_RATIOS),
    aspect_ratio=True,
)
_GPT_IMAGE_2X = ModelFields(
    "images",
    MAX_GPT_IMAGE_2_IMAGES,
    "mask_image",
    ("low", "medium", "high", "xhigh", "max"),
    _mappable_sizes(GPT_IMAGE_2X_RATIOS),
    output_format=True,
    aspect_ratio=True,
)
MODELS: dict[str, ModelFields] = {
    "openai/gpt-image-1-mini/edit": ModelFields("images", 4, None, (), (), base64_and_sync=True),
    "openai/gpt-image-1/edit": _FULL,
    "openai/gpt-image-1": _FULL,  # the docs page's curl path for the same edit parameters
    "openai/gpt-image-2/edit": _GPT_IMAGE_2,
    **dict.fromkeys(GPT_IMAGE_2X_ROUTES, _GPT_IMAGE_2X),
}
# Every size the adapter can send on each route ("auto" included where the route has it): the catalog
# should offer exactly these for WaveSpeed routes. The mini edit takes no size, so only "auto".
ROUTE_SIZES: dict[str, tuple[str, ...]] = {route: f.offered_sizes for route, f in MODELS.items()}


def _is_sync_timeout(task: dict[str, Any]) -> bool:
    """WaveSpeed's own sync wait ran out: the task goes on and must be polled, not re-sent."""
    error = task.get("error")
    return task.get("code") == SYNC_TIMEOUT_CODE or (
        job_status(task) == "processing" and isinstance(error, str) and "sync mode timed out" in error.lower()
    )


WAVESPEED_API = PredictionApi(
    service="WaveSpeed",
    noun="task",
    upload_path="/media/upload/binary",
    upload_name="media upload",
    job_path="/predictions/{id}/result",
    success=SUCCESS,
    failure=FAILURE,
    output_fields=("outputs",),
    models=MODELS,
    message_keys=("error", "message", "msg", "detail"),
    job_message_first=True,
    balance_words=_BALANCE_WORDS,
    poll_interval=1.0,  # the SDK polls every second
    max_poll_interval=5.0,
    timeout_statuses=frozenset({"timeout"}),
)


def classify_wavespeed_error(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> ProviderError:
    """Map one WaveSpeed failure to a `ProviderError`: the only place that reads WaveSpeed errors.

    Handles HTTP errors, an HTTP 200 whose envelope `code` is an error, and (status 2xx) a task
    whose `data.status` is a failure: "failed" → ProviderJobFailed (ProviderRejected when the text names a
    safety filter), "cancelled" → ProviderJobFailed, "timeout" → ProviderTimeout, all `accepted=True`.
    401/403 and "insufficient balance" (or 402) → ServiceUnavailable; 404 → ModelUnavailable;
    429 → RateLimited; other 4xx → InvalidInput; 504 → ServerError(accepted=True); other 5xx →
    ServerError that routing may retry elsewhere (the submit returned no task id).
    """
    return WAVESPEED_API.classify(status, body, headers, provider=provider)


class WaveSpeedProvider(PredictionAdapter):
    """Edits images through WaveSpeed's v3 task API (one paid submit per job, then polling)."""

    vendor = Vendor(
        name="wavespeed",
        base_url=DEFAULT_BASE_URL,
        call_timeout=SUBMIT_TIMEOUT,
        classify=classify_wavespeed_error,
        message_of=WAVESPEED_API.message_of,
        job_id_of=WAVESPEED_API.job_id_of,
    )
    api = WAVESPEED_API

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str,
        base_url: str | None = None,
        *,
        sync_mode: bool = False,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        **options: Unpack[PredictionOptions],
    ) -> None:
        if options.get("call_timeout") is None and sync_mode:
            options["call_timeout"] = SYNC_SUBMIT_TIMEOUT
        super().__init__(session, api_key, base_url, **options)
        self._sync_mode = sync_mode
        self._max_upload_bytes = max_upload_bytes

    def __repr__(self) -> str:  # never show the key
        return (
            f"WaveSpeedProvider(name={self.name!r}, url={redact_url(self._base)!r}, sync={self._sync_mode})"
        )

    def _submission(
        self, request: EditRequest, fields: ModelFields, image_urls: list[str], mask_url: str | None
    ) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"prompt": request.prompt, **fields.image_body(image_urls, mask_url)}
        if fields.qualities and request.quality != "auto":
            body["quality"] = request.quality
        if fields.aspect_ratio:
            pair = aspect_and_resolution(request.size)  # `_check_request` checked the route can take it
            if pair is not None:  # "auto": neither is sent, and WaveSpeed follows the input image
                body["aspect_ratio"], body["resolution"] = pair
        elif fields.sizes:
            body["size"] = request.size.replace("x", "*")  # the API's enum writes 1024*1024
        if fields.output_format:
            body["output_format"] = request.output_format
        if fields.base64_and_sync:  # the 2.x routes publish neither: their outputs are URLs, polled for
            body["enable_base64_output"] = True
            body["enable_sync_mode"] = self._sync_mode
        return f"/{request.model.strip('/')}", body  # the model id is the path

    async def _submit(
        self, request: EditRequest, on_submitted: OnSubmitted | None
    ) -> tuple[str, dict[str, Any]]:
        task_id, task = await super()._submit(request, on_submitted)
        if self._sync_mode and self.api.models[request.model].base64_and_sync and _is_sync_timeout(task):
            log.info("%s: sync wait ran out for task %s; polling it instead", self.name, task_id)
        return task_id, task
