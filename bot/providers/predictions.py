"""The submit-then-poll ("prediction") flow that Atlas Cloud and WaveSpeed share.

Both APIs run a job the same way (providers.md §2.3, §3.3): every input file is uploaded on its own
(multipart `file`) and comes back as a `download_url`; one paid JSON submit answers with a job object
(`id`, `status`, `outputs`, `error`); the job is followed with GETs until its status is terminal;
its outputs are URLs or base64 text. Neither documents a cancel call, so at the deadline polling
just stops with an accepted timeout.

What differs stays in each vendor's module: a `PredictionApi` (paths, status words, where error
text is, the models' field layouts) and the adapter's paid request body (`_submission`).

One module (over 400 lines) because it is one flow, the job's whole life at either vendor: split,
the submit's, the polls' and the result's readings of the same job object would sit apart.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Unpack

import aiohttp

from bot.providers.base import EditRequest, EditResult, OnSubmitted, OutputImage
from bot.providers.errors import (
    ConnectionFailed,
    ModelUnavailable,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from bot.providers.http import (
    HttpResponse,
    NotAnswered,
    before_submit,
    classify_reseller,
    gather_or_cancel,
    is_http_url,
    parse_json,
    poll,
    sniff_image_format,
    unsupported_options,
    usable_job_id,
)
from bot.providers.reseller import AdapterOptions, ResellerAdapter

log = logging.getLogger(__name__)

SAFETY_WORDS = ("nsfw", "safety", "moderation", "content policy", "sensitive")
# What a route with an `output_format` field may be asked for (without one only "png" is honoured).
OUTPUT_FORMATS = ("png", "jpeg", "webp")


@dataclass(frozen=True, slots=True)
class ModelFields:
    """How one model takes its inputs on a prediction API."""

    image_field: str  # "image" (a single URL) or "images" (a list of URLs)
    max_images: int
    mask_field: str | None  # None: the model takes no mask
    qualities: tuple[str, ...]  # values that may be sent; "auto" is sent by omitting the field
    sizes: tuple[str, ...]  # values that may be sent, in the bot's `WxH` form
    # The route has an `output_format` field; without one only "png" can be honoured (nothing sent).
    output_format: bool = False
    # The route takes `aspect_ratio` + `resolution` instead of `size` (WaveSpeed's 2.x routes); `sizes`
    # then lists the `WxH` sizes the adapter can map exactly.
    aspect_ratio: bool = False
    # The route publishes `enable_base64_output` and `enable_sync_mode` (WaveSpeed's 1.x routes): a route
    # without them is never sent them, as a vendor may refuse a field its schema lacks.
    base64_and_sync: bool = False

    @property
    def offered_sizes(self) -> tuple[str, ...]:
        """The sizes a request may ask for: `sizes`, or only "auto" on a route with no size field."""
        return self.sizes or ("auto",)

    def image_body(self, image_urls: list[str], mask_url: str | None) -> dict[str, Any]:
        """The body fields that carry the uploaded inputs."""
        body: dict[str, Any] = {
            self.image_field: image_urls[0] if self.image_field == "image" else image_urls
        }
        if mask_url is not None and self.mask_field:
            body[self.mask_field] = mask_url
        return body

    def problems(self, request: EditRequest, *, noun: str) -> list[str]:
        """What in `request` this model's fields cannot carry (one `noun`, a job, makes one image)."""
        problems = []
        if request.mask is not None and self.mask_field is None:
            problems.append("a mask")
        if request.input_fidelity is not None:
            problems.append("input_fidelity (no such field)")
        if request.count != 1:
            problems.append(f"count={request.count} (no `n`; one image per {noun})")
        if request.quality != "auto" and request.quality not in self.qualities:
            problems.append(f"quality={request.quality}")
        if request.size not in self.offered_sizes:
            problems.append(f"size={request.size}")
        if request.background != "auto":
            problems.append(f"background={request.background}")
        if request.output_format not in (OUTPUT_FORMATS if self.output_format else ("png",)):
            problems.append(f"output_format={request.output_format}")
        return problems


def job_status(job: dict[str, Any]) -> str:
    """A job's status word, lower-cased ("" when absent)."""
    return str(job.get("status") or "").lower()


def job_of(payload: Any) -> dict[str, Any]:
    """The job object of an enveloped (`{code, message, data}`) or bare answer ({} if neither)."""
    if not isinstance(payload, dict):
        return {}
    inner = payload.get("data")
    return inner if isinstance(inner, dict) else payload


def job_id_in(payload: Any) -> str | None:
    """The id of the job an answer names (enveloped or bare), or None when it names none. Any text: an
    error answer naming a job says one was made, whatever its id (`usable_job_id` is for following it)."""
    job_id = job_of(payload).get("id")
    if isinstance(job_id, (str, int)) and not isinstance(job_id, bool) and str(job_id) != "":
        return str(job_id)
    return None


def envelope_status(payload: Any) -> int | None:
    """The envelope's `code` when it is an HTTP-like error status: some gateways answer 200 + code
    (WaveSpeed's uploads report `code: 500` that way)."""
    code = payload.get("code") if isinstance(payload, dict) else None
    if isinstance(code, int) and not isinstance(code, bool) and code >= 400:
        return code
    return None


@dataclass(frozen=True, slots=True)
class PredictionApi:
    """One vendor's prediction API: everything the shared flow must not guess."""

    service: str  # how messages name the vendor
    noun: str  # the vendor's word for a job ("prediction", "task"), used in messages
    upload_path: str  # multipart `file` upload that answers with a `download_url`
    upload_name: str  # how messages name that call
    job_path: str  # GET of one job, with an `{id}` placeholder
    success: frozenset[str]
    failure: frozenset[str]
    output_fields: tuple[str, ...]  # where a finished job lists its results (the first one present)
    models: Mapping[str, ModelFields]  # the field layout of every model the adapter can send
    # Where an error's text is: the first of these keys with text, at the top level and in the job
    # object (`job_message_first`: the job object is read first).
    message_keys: tuple[str, ...]
    job_message_first: bool
    balance_words: tuple[str, ...]  # wording that means the account must be topped up
    poll_interval: float  # the first wait between polls (then growing up to `max_poll_interval`)
    max_poll_interval: float
    timeout_statuses: frozenset[str] = frozenset()  # failure statuses reported as a timeout

    def message(self, payload: Any) -> str:
        """The error text of a decoded answer ("" when none; "success" is not an error)."""
        sources = (job_of(payload), payload) if self.job_message_first else (payload, job_of(payload))
        for source in sources:
            if not isinstance(source, dict):
                continue
            for key in self.message_keys:
                value = source.get(key)
                if isinstance(value, str) and value.strip() and value.strip().lower() != "success":
                    return value
        return ""

    def message_of(self, body: bytes) -> str:
        return self.message(parse_json(body))

    def job_id_of(self, body: bytes) -> str | None:
        """The id of the job an error answer's body names: only inside its `data` envelope, where
        the vendors put a job. A bare `id` beside an error message is a gateway's request id."""
        payload = parse_json(body)
        inner = payload.get("data") if isinstance(payload, dict) else None
        return job_id_in(inner) if isinstance(inner, dict) else None

    def classify(
        self, status: int, body: bytes, headers: Mapping[str, str], *, provider: str
    ) -> ProviderError:
        """Map one failure to a `ProviderError` (`classify_reseller`): HTTP errors, an HTTP 200 whose
        envelope `code` is an error, and (status 2xx) a job in a failure state."""
        return classify_reseller(
            status,
            body,
            headers,
            provider=provider,
            message=self.message,
            job_state=lambda payload: job_status(job_of(payload)) or None,
            safety_words=SAFETY_WORDS,
            billing_words=self.balance_words,
            error_in_answer=envelope_status,
            timeout_states=self.timeout_statuses,
        )


class PredictionOptions(AdapterOptions, total=False):
    """The keyword settings of `PredictionAdapter` (see `AdapterOptions`)."""

    poll_interval: float | None
    max_poll_interval: float | None


class PredictionAdapter(ResellerAdapter):
    """An adapter for a prediction API (`api`): upload the inputs, submit, poll, fetch the outputs.

    A `ResumableProvider`: the job id is reported (`on_submitted`) before polling starts, and
    `resume(id, request)` polls it again after a restart without submitting anything. The vendor's
    module supplies the paid request (`_submission`): its path and JSON body.
    """

    api: ClassVar[PredictionApi]
    _max_upload_bytes: int | None = None  # the vendor's limit on one uploaded image, where it has one

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str,
        base_url: str | None = None,
        *,
        poll_interval: float | None = None,
        max_poll_interval: float | None = None,
        **options: Unpack[AdapterOptions],
    ) -> None:
        super().__init__(session, api_key, base_url, **options)
        self._poll_interval = self.api.poll_interval if poll_interval is None else poll_interval
        self._max_poll_interval = (
            self.api.max_poll_interval if max_poll_interval is None else max_poll_interval
        )

    def _submission(
        self, request: EditRequest, fields: ModelFields, image_urls: list[str], mask_url: str | None
    ) -> tuple[str, dict[str, Any]]:
        """The paid request for these uploaded inputs: its path (under the base URL) and JSON body."""
        raise NotImplementedError

    async def edit(self, request: EditRequest, *, on_submitted: OnSubmitted | None = None) -> EditResult:
        """Run one edit. Raises a `ProviderError` subclass on failure (see the vendor's classifier).

        `on_submitted(job_id)` is awaited once the vendor has accepted the job, before polling.
        """
        job_id, job = await self._submit(request, on_submitted)
        return await self._finish(job_id, request, job)

    async def resume(self, provider_job_id: str, request: EditRequest) -> EditResult:
        """Follow a job submitted earlier (e.g. before a restart) to its result. Never submits."""
        log.info("%s: resuming %s %s", self.name, self.api.noun, provider_job_id)
        return await self._finish(provider_job_id, request)

    def _error_in(self, resp: HttpResponse, payload: Any) -> ProviderError | None:
        """The vendor's error when a 2xx answer reports one in its body (`payload` is the decoded body)."""
        if envelope_status(payload) is None:
            return None
        return self._client.error(resp.status, resp.body, resp.headers)

    def _is_done(self, job: dict[str, Any]) -> bool:
        return job_status(job) in self.api.success | self.api.failure

    # ------------------------------------------------------------------ before the submit

    def _check_request(self, request: EditRequest) -> ModelFields:
        """The model's field layout, after checking the request asks nothing it cannot send."""
        fields = self.api.models.get(request.model)
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
        limit = self._max_upload_bytes
        too_big = [i for i, im in enumerate(request.images, 1) if limit is not None and len(im.data) > limit]
        if too_big and limit is not None:
            problems.append(f"image(s) {too_big} over the {limit // 2**20} MB upload limit")
        problems += fields.problems(request, noun=self.api.noun)
        if problems:
            raise unsupported_options(request.model, self.api.service, problems, provider=self.name)
        return fields

    async def _upload_inputs(self, request: EditRequest) -> tuple[list[str], str | None]:
        """Upload every input image and the mask (in the vendor's convention), all at once; return
        their URLs. Nothing paid has been sent yet, so a failure here is marked as not submitted."""
        files: list[tuple[bytes, str, str]] = [
            (image.data, f"image-{i}.{image.extension}", image.mime)
            for i, image in enumerate(request.images, start=1)
        ]
        mask = await self._vendor_mask(request)
        if mask is not None:
            files.append((mask, "mask.png", "image/png"))
        urls = await before_submit(
            gather_or_cancel(*(self._upload(file, request.deadline) for file in files))
        )
        return urls[: len(request.images)], urls[-1] if mask is not None else None

    async def _upload(self, file: tuple[bytes, str, str], deadline: float) -> str:
        url = self._client.url(self.api.upload_path)
        resp = await self._client.upload(url, "file", file, deadline=deadline)
        payload = parse_json(resp.body)
        if (err := self._error_in(resp, payload)) is not None:
            raise err
        download_url = job_of(payload).get("download_url")
        if not is_http_url(download_url) or not isinstance(download_url, str):
            raise ServerError(f"{self.api.upload_name} returned no usable download_url", provider=self.name)
        return download_url

    # ------------------------------------------------------------------ the paid submit

    async def _submit(
        self, request: EditRequest, on_submitted: OnSubmitted | None
    ) -> tuple[str, dict[str, Any]]:
        """Check and upload the inputs and send the one paid submit (never re-sent once it may have
        arrived); report the job id (`on_submitted`) and return it with the job.

        An answer that says the route's model is gone, with no job id, raises `ModelGone`
        (see `bot.providers.http.gone_on_submit`). An error answer that names a job in its `data`
        (a 2xx with an error, a 5xx or a 408) is raised accepted and never sent elsewhere, nor
        followed (`bot.providers.http.names_a_job`).
        """
        fields = self._check_request(request)
        image_urls, mask_url = await self._upload_inputs(request)
        path, body = self._submission(request, fields, image_urls, mask_url)
        resp = await self._client.submit(
            self._client.url(path), body, deadline=request.deadline, model=request.model
        )
        job_id, job = self._accepted(resp, request.model)
        log.debug("%s: %s %s %s submitted", self.name, request.model, self.api.noun, job_id)
        if on_submitted is not None:
            await on_submitted(job_id)
        return job_id, job

    def _accepted(self, resp: HttpResponse, model: str) -> tuple[str, dict[str, Any]]:
        """The job from the submit's 2xx answer; its id is required to follow the job.

        An error inside the 2xx envelope is read as an error answer to the submit (it names a job, or
        the "model gone" rule applies).
        """
        payload = parse_json(resp.body)
        job_id = job_id_in(payload)
        if envelope_status(payload) is not None:
            classify = self._client.submit_classifier(model)
            raise classify(resp.status, resp.body, resp.headers, provider=self.name)
        if job_id is None or not usable_job_id(job_id):
            # A 2xx means the vendor took the request; without an id we cannot follow (or avoid paying) it,
            # nor with one that could not be recorded or polled as it is (its text stays out of the log).
            what = "no" if job_id is None else "an unusable"
            raise ServerError(f"HTTP 2xx but {what} {self.api.noun} id", provider=self.name, accepted=True)
        return job_id, job_of(payload)

    # ------------------------------------------------------------------ after the submit

    async def _finish(
        self, job_id: str, request: EditRequest, job: dict[str, Any] | None = None
    ) -> EditResult:
        """Follow the job until it ends (unless `job` already has) and return its result.

        Without `job` (resuming after a restart) polling starts at once; nothing is ever submitted.
        """
        if job is None or not self._is_done(job):
            job = await poll(
                lambda: self._fetch(job_id, request.deadline),
                is_done=self._is_done,
                deadline=request.deadline,
                interval=self._poll_interval,
                max_interval=self._max_poll_interval,
                cancel=None,  # neither vendor documents a cancel call
                provider=self.name,
            )
        return await self._result(job, job_id, request)

    async def _fetch(self, job_id: str, deadline: float) -> dict[str, Any]:
        url = self._client.url(self.api.job_path.format(id=job_id))
        try:
            resp = await self._client.call("GET", url, deadline=deadline, accepted=True)
        except ModelUnavailable as exc:  # a 404 here means the job vanished, not the model
            raise self._vanished(job_id) from exc
        except (RateLimited, ServerError, ConnectionFailed) as exc:
            # The vendor did not answer (after the GET's own retries); the paid job may well be running.
            raise NotAnswered(exc) from exc
        except ProviderTimeout as exc:
            if time.monotonic() < deadline:  # this GET timed out, the job's deadline has not
                raise NotAnswered(exc) from exc
            raise
        payload = parse_json(resp.body)
        if (err := self._error_in(resp, payload)) is not None:
            if isinstance(err, ModelUnavailable):  # a 404 in the envelope of a 200, read as the HTTP one
                raise self._vanished(job_id) from err
            err.accepted = True
            # A 5xx, 429 or 408 in the envelope of a 200: the vendor did not answer this poll.
            if type(err) in (RateLimited, ServerError) or (
                type(err) is ProviderTimeout and err.status == 408
            ):
                raise NotAnswered(err)
            raise err
        return job_of(payload)

    def _vanished(self, job_id: str) -> ServerError:
        """A poll's 404 (an HTTP status or an envelope's `code`): the job is gone, not the model, and
        it was submitted (it may have been billed)."""
        return ServerError(f"{self.api.noun} {job_id} not found", provider=self.name, accepted=True)

    async def _result(self, job: dict[str, Any], job_id: str, request: EditRequest) -> EditResult:
        if job_status(job) in self.api.failure:
            # The classifier reads a failed job as it reads a poll's answer: inside the `data` envelope.
            err = self._client.error(200, json.dumps({"data": job}).encode(), {})
            err.request_id = job_id
            raise err
        outputs = next((job[f] for f in self.api.output_fields if job.get(f) is not None), None)
        items = [outputs] if isinstance(outputs, str) else outputs if isinstance(outputs, list) else []
        flags = _flags(job.get("has_nsfw_contents"))
        # An output the vendor's safety filter flagged is blanked: never posted.
        kept = [v for i, v in enumerate(items) if not (i < len(flags) and flags[i])]
        values = [v for v in kept if isinstance(v, str) and v.strip()]
        if items and not values and any(flags):
            # The vendor's safety filter blanked every output: nothing to post. It ran (and may
            # bill), so the member is not charged and the budgets count it.
            raise ProviderRejected(
                f"{self.api.noun} {job_id}: every output flagged by the safety filter",
                provider=self.name,
                request_id=job_id,
                code="nsfw_output",
                accepted=True,
            )
        if not values:
            raise ServerError(
                f"{self.api.noun} {job_id} completed without outputs",
                provider=self.name,
                request_id=job_id,
                accepted=True,
            )
        if len(values) > request.count:
            # Only what was asked for is fetched and delivered (and charged for): each output may be
            # up to `max_output_bytes`, and a job listing many more must not fill the memory.
            log.warning(
                "%s: %s %s listed %d outputs for %d asked; the %d extra are not fetched",
                self.name,
                self.api.noun,
                job_id,
                len(values),
                request.count,
                len(values) - request.count,
            )
            values = values[: request.count]
        with request.fetching_result() as deadline:  # a finished job's download outlasts its deadline
            blobs = await self._client.outputs(values, deadline=deadline)
        return EditResult(
            images=tuple(OutputImage(data=blob, format=sniff_image_format(blob) or "png") for blob in blobs),
            provider=self.name,
            quality=request.quality if request.quality != "auto" else None,
            size=request.size if request.size != "auto" else None,
            request_id=job_id,
        )


def _flags(raw: object) -> list[bool]:
    """`has_nsfw_contents`: one bool per output (anything else reads as no flags)."""
    return [v is True for v in raw] if isinstance(raw, list) else []
