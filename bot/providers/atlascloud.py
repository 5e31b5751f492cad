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
  The GPT Image 2 routes (`openai/gpt-image-2/edit`, `openai/gpt-image-2-developer/edit`,
  models-2026-12.md §4) take `images`, `prompt`, `quality` low/medium/high and `size` from a fixed
  list of eight (`GPT_IMAGE_2_SIZES`, no `auto`) and no mask. Their image limit is not published:
  16, the model's own limit at OpenAI, is assumed.
* Mask polarity is contradictory (alpha per the schema, "white = edit" per the README); the mask is
  sent in the "alpha" convention of `bot.providers.masks`, which is transparent *and* white where
  to edit, so both readings select the same area. A catalog route may override it.
* `quality` "auto" is sent by omitting the field (Atlas's documented default, medium, then
  applies); the packaged catalog's GPT Image 2 routes list no "auto" quality, so routing sends them
  high (what they are charged for) instead. `size` has no "auto" at Atlas, so routing resolves it
  before the request gets here.
  `background` and `output_format` have no field at all: only "auto" and "png" are accepted.
* Status: `completed`/`succeeded` are success; `failed`, `error`, `cancelled`/`canceled` and
  `timeout` are failures (message in `data.error`); anything else is still running. A failure is
  `ProviderJobFailed(accepted=True)` (or `ProviderRejected` when the message names a safety filter).
* Atlas documents no cancel call, so at the deadline polling simply stops and the job is reported
  as `ProviderTimeout(accepted=True)`. The adapter is a `ResumableProvider`: the prediction id is
  reported (`on_submitted`) before polling starts, and `resume(id, request)` polls it again after a
  restart without submitting anything.
* A 5xx on the submit without a prediction id is taken as "nothing was created" (the issue's rule)
  and may be retried elsewhere, except 504: a gateway that timed out may have passed the job on.
  An error answer after which the prediction may exist (a 2xx with an error, a 5xx, a 408) whose
  body names one (`data.id`) is raised accepted and never sent elsewhere; it is not followed, as
  the id may be stale (`bot.providers.http.names_a_job`).
* "Model gone": a 404/410 answer to the submit, or an error whose message says the model is not
  found / no longer available / retired / has no available channels, raises `ModelGone`
  (not a 5xx that says it passes, "maintenance", "try again later": `_PASSING`, nor a 404 about
  something the request carried)
  (`accepted=False`), so routing may retire the route. A 404 on a poll still means the prediction
  vanished (`ServerError`, accepted).
* Sync mode and base64 output are not used: their timeout and format are undocumented at Atlas.
* `/diagnose`: `check()` calls the catalog, `GET /models`, the only documented GET that needs no
  job id. It takes no key, so it proves that Atlas answers but not that the key works; the
  result says so.

The upload → submit → poll → download steps are `bot.providers.predictions`, shared with WaveSpeed;
this module supplies Atlas's paths, envelope, status words and error mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.providers.base import EditRequest, ProviderHealth
from bot.providers.errors import ProviderError
from bot.providers.http import health_from_error, send_check
from bot.providers.predictions import ModelFields, PredictionAdapter, PredictionApi
from bot.providers.reseller import Vendor

DEFAULT_BASE_URL = "https://api.atlascloud.ai/api/v1"
SUBMIT_TIMEOUT = 60.0  # the submit only queues the job

SUCCESS = frozenset({"completed", "succeeded"})
FAILURE = frozenset({"failed", "error", "cancelled", "canceled", "timeout"})
_BALANCE_WORDS = ("insufficient", "balance", "top up", "recharge")

_QUALITIES = ("low", "medium", "high")  # "auto" is sent by omitting the field
_SIZES = ("1024x1024", "1536x1024", "1024x1536")  # no "auto" at Atlas
# The sizes Atlas's GPT Image 2 edit routes take (models-2026-12.md §4): a fixed list, no "auto".
GPT_IMAGE_2_SIZES = (
    "1024x1024",
    "1024x1536",
    "1536x1024",
    "2048x2048",
    "2048x1152",
    "1152x2048",
    "3840x2160",
    "2160x3840",
)
GPT_IMAGE_2_MAX_IMAGES = 16  # unpublished at Atlas: the model's own limit at OpenAI
_GPT_IMAGE_2 = ModelFields("images", GPT_IMAGE_2_MAX_IMAGES, None, _QUALITIES, GPT_IMAGE_2_SIZES)
MODELS: dict[str, ModelFields] = {
    "openai/gpt-image-1/edit": ModelFields("image", 1, "mask_image", _QUALITIES, _SIZES),
    "openai/gpt-image-1-mini/edit": ModelFields("images", 4, None, _QUALITIES, _SIZES),
    "openai/gpt-image-2/edit": _GPT_IMAGE_2,
    "openai/gpt-image-2-developer/edit": _GPT_IMAGE_2,
}

ATLAS_API = PredictionApi(
    service="Atlas",
    noun="prediction",
    # Answers `download_url` and `filename` (MCP types) or `file_name` (vendor page): only the URL is read.
    upload_path="/model/uploadMedia",
    upload_name="uploadMedia",
    job_path="/model/prediction/{id}",
    success=SUCCESS,
    failure=FAILURE,
    output_fields=("outputs", "output"),  # some payloads carry `output` (a string) instead
    models=MODELS,
    # `error`, `msg` or `message`, top level or in `data` (the MCP client reads all).
    message_keys=("error", "msg", "message"),
    job_message_first=False,
    balance_words=_BALANCE_WORDS,
    poll_interval=2.0,  # Atlas's own tools poll every 2-3 s
    max_poll_interval=8.0,
)


def classify_atlas_error(
    status: int, body: bytes, headers: Mapping[str, str], *, provider: str
) -> ProviderError:
    """Map one Atlas failure to a `ProviderError`: the only place that reads Atlas errors.

    Handles HTTP errors, an HTTP 200 whose envelope `code` is an error, and (status 2xx) a
    prediction that reports a failure status. 401/403 and any "insufficient balance" text (or 402)
    → ServiceUnavailable; 404 → ModelUnavailable; 429 → RateLimited; 400/422 → InvalidInput, or
    ProviderRejected when the text names a safety filter; 504 → ServerError(accepted=True); other
    5xx → ServerError that routing may retry elsewhere (no prediction id came back); a failed
    prediction → ProviderJobFailed(accepted=True) or ProviderRejected(accepted=True).
    """
    return ATLAS_API.classify(status, body, headers, provider=provider)


class AtlasCloudProvider(PredictionAdapter):
    """Edits images through Atlas Cloud's prediction API (one paid submit per job, then polling)."""

    vendor = Vendor(
        name="atlascloud",
        base_url=DEFAULT_BASE_URL,
        call_timeout=SUBMIT_TIMEOUT,
        classify=classify_atlas_error,
        message_of=ATLAS_API.message_of,
        job_id_of=ATLAS_API.job_id_of,
    )
    api = ATLAS_API

    async def check(self) -> ProviderHealth:
        """Reachability through the catalog, `GET /models`: free, but it takes no key, so the key
        itself is not checked (the result says so). Never raises for HTTP failures."""
        try:
            await send_check(
                self._client.session,
                self._client.url("/models"),
                provider=self.name,
                classify=classify_atlas_error,
            )
        except ProviderError as exc:
            return health_from_error(exc, key_sent=False)
        return ProviderHealth(
            reachable=True,
            authenticated=None,
            detail="reachable; API key not checked (Atlas's GET /models needs none)",
            ok=True,
        )

    def _submission(
        self, request: EditRequest, fields: ModelFields, image_urls: list[str], mask_url: str | None
    ) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": request.model,
            "prompt": request.prompt,
            **fields.image_body(image_urls, mask_url),
        }
        if request.quality != "auto":
            body["quality"] = request.quality
        body["size"] = request.size
        return "/model/generateImage", body
