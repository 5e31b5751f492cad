"""The submit-then-poll ("prediction") flow that Atlas Cloud and WaveSpeed share.

Both APIs run a job the same way (providers.md §2.3, §3.3): every input file is uploaded on its own
(multipart `file`) and comes back as a `download_url`; one paid JSON submit answers with a job object
(`id`, `status`, `outputs`, `error`); the job is followed with GETs until its status is terminal;
its outputs are URLs or base64 text. Neither documents a cancel call, so at the deadline polling
just stops with an accepted timeout.

What differs stays in each vendor's module and is handed over in a `PredictionApi`: the paths, how
an answer's job object and an error reported inside a 2xx answer are read (the envelope), the status
words, and the vendor's one error classifier.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.providers.base import EditRequest, EditResult, OutputImage
from bot.providers.errors import (
    InvalidInput,
    ModelUnavailable,
    ProviderError,
    ProviderRejected,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)
from bot.providers.http import (
    Classifier,
    HttpResponse,
    RetryPolicy,
    convert_mask,
    fetch_output,
    gather_or_cancel,
    is_http_url,
    mark_unsubmitted,
    parse_json,
    parse_retry_after,
    poll,
    send_idempotent,
    send_paid,
    sniff_image_format,
    submit_classifier,
    submit_server_error,
    upload_file,
)


@dataclass(frozen=True, slots=True)
class PredictionApi:
    """One vendor's prediction API: everything the shared flow must not guess."""

    noun: str  # the vendor's word for a job ("prediction", "task"), used in messages
    upload_path: str  # multipart `file` upload that answers with a `download_url`
    upload_name: str  # how messages name that call
    job_path: str  # GET of one job, with an `{id}` placeholder
    success: frozenset[str]
    failure: frozenset[str]
    output_fields: tuple[str, ...]  # where a finished job lists its results (the first one present)
    job_of: Callable[[Any], dict[str, Any]]  # the job object of a decoded answer ({} when none)
    error_in_answer: Callable[[Any], int | None]  # an error status reported inside a 2xx answer
    classify: Classifier
    message_of: Callable[[bytes], str]  # the error text of a body (to tell "model gone" answers)


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

    def image_body(self, image_urls: list[str], mask_url: str | None) -> dict[str, Any]:
        """The body fields that carry the uploaded inputs."""
        body: dict[str, Any] = {
            self.image_field: image_urls[0] if self.image_field == "image" else image_urls
        }
        if mask_url is not None and self.mask_field:
            body[self.mask_field] = mask_url
        return body


def job_status(job: dict[str, Any]) -> str:
    """A job's status word, lower-cased ("" when absent)."""
    return str(job.get("status") or "").lower()


class Predictions:
    """The shared flow for one adapter: its session, key header, policy and timeouts."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api: PredictionApi,
        *,
        base_url: str,
        provider: str,
        headers: dict[str, str],
        policy: RetryPolicy,
        submit_timeout: float,
        io_timeout: float,
        poll_interval: float,
        max_poll_interval: float,
        max_output_bytes: int,
    ) -> None:
        self._session = session
        self._api = api
        self._base = base_url
        self._provider = provider
        self._headers = headers
        self._policy = policy
        self._submit_timeout = submit_timeout
        self._io_timeout = io_timeout
        self._poll_interval = poll_interval
        self._max_poll_interval = max_poll_interval
        self._max_output_bytes = max_output_bytes

    def is_done(self, job: dict[str, Any]) -> bool:
        return job_status(job) in self._api.success | self._api.failure

    def _error_in(self, resp: HttpResponse, payload: Any) -> ProviderError | None:
        """The vendor's error when a 2xx answer reports one in its body (`payload` is the decoded body)."""
        if self._api.error_in_answer(payload) is None:
            return None
        return self._api.classify(resp.status, resp.body, resp.headers, provider=self._provider)

    # ------------------------------------------------------------------ before the submit

    async def upload_inputs(self, request: EditRequest, mask_convention: str) -> tuple[list[str], str | None]:
        """Upload every input image and the mask (converted), all at once; return their URLs.

        Nothing paid has been sent yet, so a failure here is marked as not submitted.
        """
        files: list[tuple[bytes, str, str]] = [
            (image.data, f"image-{i}.{image.extension}", image.mime)
            for i, image in enumerate(request.images, start=1)
        ]
        if request.mask is not None:
            mask = await convert_mask(request.mask.data, mask_convention, provider=self._provider)
            files.append((mask, "mask.png", "image/png"))
        try:
            urls = await gather_or_cancel(
                *(self._upload(data, name, mime, request.deadline) for data, name, mime in files)
            )
        except ProviderError as err:
            raise mark_unsubmitted(err) from None
        return urls[: len(request.images)], urls[-1] if request.mask is not None else None

    async def _upload(self, data: bytes, filename: str, mime: str, deadline: float) -> str:
        resp = await upload_file(
            self._session,
            f"{self._base}{self._api.upload_path}",
            field="file",
            data=data,
            filename=filename,
            mime=mime,
            deadline=deadline,
            policy=self._policy,
            call_timeout=self._io_timeout,
            provider=self._provider,
            headers=self._headers,
            classify=self._api.classify,
        )
        payload = parse_json(resp.body)
        if (err := self._error_in(resp, payload)) is not None:
            raise err
        url = self._api.job_of(payload).get("download_url")
        if not is_http_url(url) or not isinstance(url, str):
            raise ServerError(
                f"{self._api.upload_name} returned no usable download_url", provider=self._provider
            )
        return url

    # ------------------------------------------------------------------ the paid submit

    async def submit(
        self, path: str, body: dict[str, Any], deadline: float, *, model: str = ""
    ) -> tuple[str, dict[str, Any]]:
        """Send the one paid submit (never re-sent once it may have arrived); return the job id and job.

        An answer that says `model`'s route is gone, with no job id, raises `ModelGone`
        (see `bot.providers.http.gone_on_submit`).
        """
        resp = await send_paid(
            self._session,
            "POST",
            f"{self._base}{path}",
            policy=self._policy,
            deadline=deadline,
            call_timeout=self._submit_timeout,
            json=body,
            headers=self._headers,
            provider=self._provider,
            classify=submit_classifier(self._api.classify, self._api.message_of, model=model),
        )
        return self._accepted(resp, model)

    def _accepted(self, resp: HttpResponse, model: str = "") -> tuple[str, dict[str, Any]]:
        """The job from the submit's 2xx answer; its id is required to follow the job."""
        payload = parse_json(resp.body)
        job = self._api.job_of(payload)
        job_id = job.get("id")
        has_id = isinstance(job_id, (str, int)) and not isinstance(job_id, bool) and str(job_id) != ""
        if (err := self._error_in(resp, payload)) is not None:
            if not has_id:  # an error inside a 2xx envelope, and no job: the submit created nothing
                classify = submit_classifier(self._api.classify, self._api.message_of, model=model)
                err = classify(resp.status, resp.body, resp.headers, provider=self._provider)
            err.accepted = has_id or err.accepted
            raise err
        if not has_id:
            # A 2xx means the vendor took the request; without an id we cannot follow (or avoid paying) it.
            raise ServerError(f"HTTP 2xx but no {self._api.noun} id", provider=self._provider, accepted=True)
        return str(job_id), job

    # ------------------------------------------------------------------ after the submit

    async def finish(
        self, job_id: str, request: EditRequest, job: dict[str, Any] | None = None
    ) -> EditResult:
        """Follow the job until it ends (unless `job` already has) and return its result.

        Without `job` (resuming after a restart) polling starts at once; nothing is ever submitted.
        """
        if job is None or not self.is_done(job):
            job = await poll(
                lambda: self._fetch(job_id, request.deadline),
                is_done=self.is_done,
                deadline=request.deadline,
                interval=self._poll_interval,
                max_interval=self._max_poll_interval,
                cancel=None,  # neither vendor documents a cancel call
                provider=self._provider,
            )
        return await self._result(job, job_id, request)

    async def _fetch(self, job_id: str, deadline: float) -> dict[str, Any]:
        try:
            resp = await send_idempotent(
                self._session,
                "GET",
                f"{self._base}{self._api.job_path.format(id=job_id)}",
                policy=self._policy,
                deadline=deadline,
                call_timeout=self._io_timeout,
                provider=self._provider,
                headers=self._headers,
                classify=self._api.classify,
                accepted=True,
            )
        except ModelUnavailable as exc:  # a 404 here means the job vanished, not the model
            raise ServerError(
                f"{self._api.noun} {job_id} not found", provider=self._provider, accepted=True
            ) from exc
        payload = parse_json(resp.body)
        if (err := self._error_in(resp, payload)) is not None:
            err.accepted = True
            raise err
        return self._api.job_of(payload)

    async def _result(self, job: dict[str, Any], job_id: str, request: EditRequest) -> EditResult:
        if job_status(job) in self._api.failure:
            # The classifier reads a failed job as it reads a poll's answer: inside the `data` envelope.
            body = json.dumps({"data": job}).encode()
            err = self._api.classify(200, body, {}, provider=self._provider)
            err.request_id = job_id
            raise err
        outputs = next((job[f] for f in self._api.output_fields if job.get(f) is not None), None)
        items = [outputs] if isinstance(outputs, str) else outputs if isinstance(outputs, list) else []
        values = [v for v in items if isinstance(v, str) and v.strip()]
        if not values:
            raise ServerError(
                f"{self._api.noun} {job_id} completed without outputs",
                provider=self._provider,
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
                    provider=self._provider,
                    trusted=(self._base,),  # the result may be on the API's own origin; others must be public
                )
                for value in values
            )
        )
        images = tuple(OutputImage(data=blob, format=sniff_image_format(blob) or "png") for blob in blobs)
        return EditResult(
            images=images,
            provider=self._provider,
            quality=request.quality if request.quality != "auto" else None,
            size=request.size if request.size != "auto" else None,
            request_id=job_id,
        )


def classify_status(
    status: int, summary: str, headers: Mapping[str, str], *, balance: bool, safety: bool, provider: str
) -> ProviderError:
    """The HTTP-status half of Atlas's and WaveSpeed's error mapping (their tables are the same).

    Each vendor's classifier reads its own envelope and words first and passes what it found:
    `balance` (402 or balance wording) and `safety` (a safety filter named in the text).
    """
    kw: dict[str, Any] = {"provider": provider, "status": status}
    if status == 402 or balance:
        return ServiceUnavailable(summary, code="insufficient_balance", **kw)
    if status in (401, 403):
        return ServiceUnavailable(summary, code="unauthorized" if status == 401 else "forbidden", **kw)
    if status == 404:
        return ModelUnavailable(summary, code="not_found", **kw)
    if status == 429:
        return RateLimited(summary, retry_after=parse_retry_after(headers), code="rate_limited", **kw)
    if status >= 500:
        return submit_server_error(summary, **kw)  # no job id came back: nothing was queued
    if safety:
        return ProviderRejected(summary, **kw)
    return InvalidInput(summary, **kw)
