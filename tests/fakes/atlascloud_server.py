"""A fake Atlas Cloud prediction API on 127.0.0.1 for provider tests (providers.md §2 and §7).

It serves `POST /api/v1/model/uploadMedia` (multipart `file`), `POST /api/v1/model/generateImage`
(flat JSON, or the `input` wrapper one vendor example shows), `GET /api/v1/model/prediction/{id}`,
the model catalog `GET /api/v1/models` (no auth, as documented: each entry names its schema URL),
and the uploaded and generated files themselves at loopback URLs (generated ones carry a fake
signature in their query string, like presigned URLs). It validates like a strict Atlas would:
Bearer auth, JSON content type, per-model fields (an unknown field is a 400: a wrong image field
must never pass as a text-to-image job), enums, that every image URL is one this server handed out,
and that a mask matches the image. A prediction is `processing` for `polls_to_finish` polls, then
`completed` with real images: the first input inverted (only inside the mask, when there is one),
resized to the requested size. The mask may be alpha (transparent = edit) or white = edit: the spec
leaves the polarity OPEN, so both are accepted.

The GPT Image 2 routes (`openai/gpt-image-2/edit`, `openai/gpt-image-2-developer/edit`,
models-2026-12.md §4) take `images` (1 to 16 URLs; the limit is unpublished, the model's own is
assumed), `prompt`, `quality` low/medium/high and `size` from their fixed list of eight (no `auto`),
and no mask. `fake.retire_route(route, Gone.NOT_FOUND | Gone.GONE | Gone.NO_CHANNELS)` makes every
submit for that route answer 404 / 410 / 503 "no available channels" without creating anything;
predictions already running still finish. With `fake.gone_in_envelope = True` that answer comes as
HTTP 200 with the status in the envelope's `code` (as Atlas reports some errors).

Usage::

    async with FakeAtlas() as fake:
        provider = AtlasCloudProvider(session, fake.api_key, fake.base_url, poll_interval=0.01)
        fake.fail_next(Fault.INSUFFICIENT_BALANCE)
        fake.envelope = False               # answer with bare objects instead of {code, data}
        fake.submit_count, fake.requests[-1].json
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiohttp import web
from PIL import Image, ImageOps

from tests.fakes._base import (
    FakeServer,
    FaultRule,
    HttpError,
    decode_image,
    edited,
    encode,
    json_object,
    mask_region,
    read_file_parts,
)

DEFAULT_API_KEY = "atlas-test-key-0123456789abcdef"
QUALITIES = ("low", "medium", "high")
SIZES = ("1024x1024", "1024x1536", "1536x1024")
COMMON_FIELDS = frozenset({"model", "prompt", "quality", "size", "enable_sync_mode", "enable_base64_output"})
GPT_IMAGE_2_ROUTES = ("openai/gpt-image-2/edit", "openai/gpt-image-2-developer/edit")
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
MODEL_FIELDS = {
    "openai/gpt-image-1/edit": COMMON_FIELDS | {"image", "mask_image"},
    "openai/gpt-image-1-mini/edit": COMMON_FIELDS | {"images"},
    **dict.fromkeys(GPT_IMAGE_2_ROUTES, COMMON_FIELDS | {"images"}),
}
REQUIRED = {
    "openai/gpt-image-1/edit": ("prompt", "image"),
    "openai/gpt-image-1-mini/edit": ("prompt", "images"),
    **dict.fromkeys(GPT_IMAGE_2_ROUTES, ("prompt", "images")),
}
MODEL_SIZES = {route: GPT_IMAGE_2_SIZES for route in GPT_IMAGE_2_ROUTES}  # the rest: SIZES
MAX_MINI_IMAGES = 4  # OPEN at Atlas; the same model's limit at WaveSpeed
EXTRA_OUTPUTS = 40  # how many outputs a prediction lists under `Fault.EXTRA_OUTPUTS`
MAX_IMAGES = {route: 16 for route in GPT_IMAGE_2_ROUTES}  # the rest: MAX_MINI_IMAGES


class Fault(StrEnum):
    """Failures the fake can be told to produce (see `FakeAtlas.fail_next`)."""

    UNAUTHORIZED = "unauthorized"  # 401 on the next request of any kind
    INSUFFICIENT_BALANCE = "insufficient_balance"  # 402 "Insufficient balance" on the submit
    BALANCE_IN_ENVELOPE = "balance_in_envelope"  # HTTP 200 but {"code": 402, "msg": ...} on the submit
    RATE_LIMITED = "rate_limited"  # 429 on the submit, with retry-after
    SERVER_ERROR = "server_error"  # 500 on the submit, no prediction created
    GATEWAY_TIMEOUT = "gateway_timeout"  # 504 on the submit, but the prediction WAS created
    SUBMIT_WITHOUT_ID = "submit_without_id"  # 200 on the submit with no id (the job was created)
    # 500 on the submit whose body names the prediction it created (it runs on and can be polled).
    SERVER_ERROR_NAMING_JOB = "server_error_naming_job"
    # 400 "<route>: input image not found" on the submit, nothing created: an input it could not fetch,
    # said beside the route's name (a wording that names the model and "not found" without it being gone).
    INPUT_NOT_FOUND = "input_not_found"
    UPLOAD_ERROR = "upload_error"  # 500 on uploadMedia
    POLL_ERROR = "poll_error"  # 503 on a poll (the next one succeeds)
    POLL_TIMEOUT = "poll_timeout"  # 408 on a poll, a gateway giving up on it (the next one succeeds)
    # HTTP 200 with {"code": 404, "msg": "prediction not found"} on a poll: the prediction is gone.
    POLL_NOT_FOUND_IN_ENVELOPE = "poll_not_found_in_envelope"
    JOB_FAILED = "job_failed"  # the next prediction ends `failed` with `data.error`
    # The next prediction ends `failed`, its `data.error` quoting the Authorization header it was sent.
    JOB_FAILED_KEY_ECHOED = "job_failed_key_echoed"
    JOB_NSFW = "job_nsfw"  # the next prediction ends `failed` with a safety message
    NEVER_FINISHES = "never_finishes"  # the next prediction stays `processing`
    NO_OUTPUTS = "no_outputs"  # the next prediction completes with an empty `outputs`
    EXTRA_OUTPUTS = "extra_outputs"  # the next prediction lists `EXTRA_OUTPUTS` outputs, not one
    HANG = "hang"  # the submit never answers (until the fake closes)
    CATALOG_ERROR = "catalog_error"  # 503 on GET /models


_TARGETS = {
    Fault.CATALOG_ERROR: "models",
    Fault.UNAUTHORIZED: "auth",
    Fault.UPLOAD_ERROR: "upload",
    Fault.POLL_ERROR: "poll",
    Fault.POLL_TIMEOUT: "poll",
    Fault.POLL_NOT_FOUND_IN_ENVELOPE: "poll",
    Fault.JOB_FAILED: "job",
    Fault.JOB_FAILED_KEY_ECHOED: "job",
    Fault.JOB_NSFW: "job",
    Fault.NEVER_FINISHES: "job",
    Fault.NO_OUTPUTS: "job",
    Fault.EXTRA_OUTPUTS: "job",
}


@dataclass
class RecordedRequest:
    """One request as the fake saw it (the Authorization header is never stored)."""

    method: str
    path: str
    endpoint: str  # upload | submit | poll | models | file | other
    authorized: bool
    content_type: str
    json: Any = None
    file_parts: list[str] = field(default_factory=list)
    status: int | None = None


@dataclass
class _Prediction:
    id: str
    model: str
    outputs: list[bytes]
    fault: Fault | None
    base64_output: bool
    polls: int = 0
    status: str = "processing"


class _ApiError(HttpError):
    """An error answer: `{"code": status, "msg": message, "data": null}`."""


class _EnvelopeError(_ApiError):
    """An error reported inside an HTTP 200 envelope (`{"code": 402, "msg": ...}`)."""


def render(source: Image.Image, region: Image.Image | None, size: tuple[int, int]) -> bytes:
    """Atlas's "edit" (blocking): the source inverted (inside `region` only), resized, as PNG."""
    return encode(edited(source, region, ImageOps.invert).resize(size, Image.Resampling.BILINEAR))


class FakeAtlas(FakeServer):
    """The fake server. Start with `async with FakeAtlas() as fake` or `await fake.start()`."""

    fault_type = Fault
    fault_targets = _TARGETS
    default_target = "submit"

    def __init__(
        self, *, api_key: str = DEFAULT_API_KEY, polls_to_finish: int = 2, base64_prefix: bool = True
    ) -> None:
        super().__init__(api_key=api_key)
        self.polls_to_finish = polls_to_finish
        self.base64_prefix = base64_prefix  # base64 outputs as data: URLs (True) or bare (False)
        self.envelope = True  # {code, message, data} (True) or bare objects (False)
        self.gone_in_envelope = False  # a retired route's answer as HTTP 200 + envelope `code`
        # While True, predictions stay "processing" however often they are polled (`hold_results`).
        self.holding = False
        self.requests: list[RecordedRequest] = []
        self.uploads: dict[str, tuple[bytes, str]] = {}  # path -> (bytes, content type)
        self.predictions: dict[str, _Prediction] = {}
        self.next_ids: list[str] = []  # ids the next predictions are given, in order (then `pred_<hex>`)

    @property
    def base_url(self) -> str:
        return f"{self.origin}/api/v1"

    @property
    def submit_count(self) -> int:
        return sum(1 for r in self.requests if r.endpoint == "submit")

    def count(self, endpoint: str) -> int:
        return sum(1 for r in self.requests if r.endpoint == endpoint)

    # ------------------------------------------------------------------ responses

    def _ok(self, data: dict[str, Any]) -> web.Response:
        body = {"code": 200, "message": "success", "data": data} if self.envelope else data
        return web.json_response(body)

    def _error_body(self, err: _ApiError) -> dict[str, Any]:
        return {"code": err.status, "msg": err.message, "data": None}

    def _prediction_json(self, p: _Prediction) -> dict[str, Any]:
        outputs: list[str] = []
        if p.status == "completed":
            for i, data in enumerate(p.outputs):
                if p.base64_output:
                    b64 = base64.b64encode(data).decode()
                    outputs.append(f"data:image/png;base64,{b64}" if self.base64_prefix else b64)
                else:
                    outputs.append(f"{self.origin}/storage/outputs/{p.id}-{i}.png?sig={secrets.token_hex(8)}")
        return {
            "id": p.id,
            "model": p.model,
            "status": p.status,
            "outputs": outputs,
            "urls": {"get": f"{self.base_url}/model/prediction/{p.id}"},
            "has_nsfw_contents": [False] * len(outputs),
            "error": self._failure_text(p) if p.status == "failed" else "",
            "created_at": "2026-11-01T00:00:00Z",
        }

    def _failure_text(self, p: _Prediction) -> str:
        if p.fault == Fault.JOB_NSFW:
            return "Content flagged as NSFW by the safety checker"
        if p.fault == Fault.JOB_FAILED_KEY_ECHOED:
            return f"Generation failed: upstream refused 'Authorization: Bearer {self.api_key}'"
        return "Generation failed: upstream model error"

    # ------------------------------------------------------------------ request handling

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        endpoint = {
            "/api/v1/model/uploadMedia": "upload",
            "/api/v1/model/generateImage": "submit",
            "/api/v1/models": "models",
        }.get(path, "poll" if path.startswith("/api/v1/model/prediction/") else "other")
        if path.startswith("/storage/"):
            endpoint = "file"
        record = RecordedRequest(
            method=request.method,
            path=path,
            endpoint=endpoint,
            authorized=request.headers.get("Authorization") == f"Bearer {self.api_key}",
            content_type=request.content_type,
        )
        self.requests.append(record)
        try:
            response = await self._handle(request, record)
        except _EnvelopeError as err:
            response = web.json_response(self._error_body(err), status=200)
        except HttpError as err:  # `_ApiError`, or one raised by a shared helper
            response = web.json_response(self._error_body(err), status=err.status, headers=err.headers)
        record.status = response.status
        return response

    async def _handle(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if record.endpoint == "file":
            return self._serve_file(request)
        if record.endpoint == "other":
            await request.read()
            raise _ApiError(404, f"route {request.method} {request.path} not found")
        expected = "GET" if record.endpoint in ("poll", "models") else "POST"
        if request.method != expected:
            await request.read()
            raise _ApiError(405, "method not allowed")
        if record.endpoint == "models":  # the catalog needs no key
            await request.read()
            return self._models()
        if record.endpoint == "upload":
            return await self._upload(request, record)
        body = await request.read()
        self._check_auth(request, record)
        if record.endpoint == "poll":
            return self._poll(request)
        return await self._submit(request, body, record)

    def _check_auth(self, request: web.Request, record: RecordedRequest) -> None:
        if not record.authorized or self._take("auth") is not None:
            raise _ApiError(401, "Unauthorized: invalid or expired API key")

    def _models(self) -> web.Response:
        if self._take("models") is not None:
            raise _ApiError(503, "service temporarily unavailable")
        models = [
            {
                "model": model,
                "type": "Image",
                "schema": f"{self.origin}/schema/{model.replace('/', '-')}.json",
            }
            for model in MODEL_FIELDS
        ]
        return web.json_response(
            {"code": 200, "message": "success", "data": models} if self.envelope else models
        )

    def _serve_file(self, request: web.Request) -> web.Response:
        path = request.path
        if path.startswith("/storage/outputs/"):
            name = path.rsplit("/", 1)[-1].removesuffix(".png")
            pred_id, _, index = name.rpartition("-")
            p = self.predictions.get(pred_id)
            if p is None or not index.isdigit() or int(index) >= len(p.outputs):
                raise _ApiError(404, "no such file")
            return web.Response(body=p.outputs[int(index)], content_type="image/png")
        stored = self.uploads.get(path)
        if stored is None:
            raise _ApiError(404, "no such file")
        return web.Response(body=stored[0], content_type=stored[1])

    async def _upload(self, request: web.Request, record: RecordedRequest) -> web.Response:
        files = await read_file_parts(request, record.file_parts)
        self._check_auth(request, record)
        rule = self._take("upload")
        if rule is not None:
            raise _ApiError(500, "upload failed: storage unavailable")
        if not request.content_type.startswith("multipart/"):
            raise _ApiError(400, "Content-Type must be multipart/form-data")
        if [f.name for f in files] != ["file"]:
            raise _ApiError(400, "exactly one file part named 'file' is required")
        data, content_type = files[0].data, files[0].content_type
        token = secrets.token_hex(6)
        extension = "png" if data.startswith(b"\x89PNG") else "jpg"
        filename = f"upload-{token}.{extension}"
        path = f"/storage/uploads/{token}/{filename}"
        self.uploads[path] = (data, content_type or "application/octet-stream")
        url = f"{self.origin}{path}"
        if self.envelope:
            return self._ok({"type": "image", "download_url": url, "filename": filename, "size": len(data)})
        # The vendor page's variant of the same answer uses `file_name` and adds `content_type`.
        return self._ok(
            {"download_url": url, "file_name": filename, "content_type": content_type, "size": len(data)}
        )

    def _image_at(self, url: object, field_name: str) -> Image.Image:
        """The uploaded image behind `url`, which must be one this fake handed out."""
        if not isinstance(url, str) or not url.startswith(f"{self.origin}/storage/uploads/"):
            raise _ApiError(400, f"{field_name}: cannot fetch {url!r} (only public media URLs are accepted)")
        stored = self.uploads.get(url.removeprefix(self.origin))
        if stored is None:
            raise _ApiError(400, f"{field_name}: media not found")
        img = decode_image(stored[0])
        if img is None:
            raise _ApiError(400, f"{field_name}: unsupported or corrupt image")
        return img

    async def _submit(self, request: web.Request, body: bytes, record: RecordedRequest) -> web.StreamResponse:
        payload = json_object(request, body, record)
        fields = dict(payload)
        if isinstance(fields.get("input"), dict):  # the wrapped variant of one vendor example
            fields = {"model": fields.get("model"), **fields["input"]}
        model = fields.get("model")
        allowed = MODEL_FIELDS.get(model) if isinstance(model, str) else None
        if allowed is None:
            raise _ApiError(404, f"model {model!r} not found")
        if (gone := self.gone_answer(model)) is not None:
            raise (_EnvelopeError if self.gone_in_envelope else _ApiError)(*gone)

        rule = self._take("submit")
        if rule is not None:
            await self._submit_fault(rule, model)

        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise _ApiError(400, f"unknown field(s) for {model}: {', '.join(unknown)}")
        for name in REQUIRED[model]:
            if name not in fields:
                raise _ApiError(400, f"missing required field '{name}'")
        prompt = fields["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise _ApiError(400, "prompt must be a non-empty string")
        quality = fields.get("quality", "medium")
        if quality not in QUALITIES:
            raise _ApiError(400, f"quality must be one of {', '.join(QUALITIES)}")
        size = fields.get("size", "1024x1024")
        sizes = MODEL_SIZES.get(model, SIZES)
        if size not in sizes:
            raise _ApiError(400, f"size must be one of {', '.join(sizes)}")
        for flag in ("enable_sync_mode", "enable_base64_output"):
            if flag in fields and not isinstance(fields[flag], bool):
                raise _ApiError(400, f"{flag} must be a boolean")

        if "images" in allowed:
            urls = fields["images"]
            most = MAX_IMAGES.get(model, MAX_MINI_IMAGES)
            if not isinstance(urls, list) or not 1 <= len(urls) <= most:
                raise _ApiError(400, f"images must be a list of 1 to {most} URLs")
            sources = [self._image_at(u, "images") for u in urls]
        else:
            sources = [self._image_at(fields["image"], "image")]
        region = None
        if fields.get("mask_image") is not None:
            mask = self._image_at(fields["mask_image"], "mask_image")
            if mask.format != "PNG" or mask.size != sources[0].size:
                raise _ApiError(400, "mask_image must be a PNG the size of the image")
            region = mask_region(mask)
            if region is None:
                raise _ApiError(400, "mask_image marks nothing to edit (or its alpha and colours disagree)")

        width, height = (int(v) for v in size.split("x"))
        job_fault = self._take("job")
        outputs = EXTRA_OUTPUTS if job_fault and job_fault.fault == Fault.EXTRA_OUTPUTS else 1
        output = await asyncio.to_thread(render, sources[0], region, (width, height))
        prediction = _Prediction(
            id=self.next_ids.pop(0) if self.next_ids else f"pred_{secrets.token_hex(8)}",
            model=model,
            outputs=[] if job_fault and job_fault.fault == Fault.NO_OUTPUTS else [output] * outputs,
            fault=job_fault.fault if job_fault else None,
            base64_output=bool(fields.get("enable_base64_output")),
        )
        self.predictions[prediction.id] = prediction
        if rule is not None and rule.fault == Fault.GATEWAY_TIMEOUT:
            raise _ApiError(504, "gateway timeout")
        if rule is not None and rule.fault == Fault.SERVER_ERROR_NAMING_JOB:
            body = {"code": 500, "msg": "internal server error", "data": self._prediction_json(prediction)}
            return web.json_response(body, status=500)
        if rule is not None and rule.fault == Fault.SUBMIT_WITHOUT_ID:
            return self._ok({"status": "processing"})
        if fields.get("enable_sync_mode"):
            self._advance(prediction, finish=True)
        return self._ok(self._prediction_json(prediction))

    async def _submit_fault(self, rule: FaultRule, model: str) -> None:
        match rule.fault:
            case Fault.INPUT_NOT_FOUND:
                raise _ApiError(400, f"{model}: input image not found")
            case Fault.INSUFFICIENT_BALANCE:
                raise _ApiError(402, "Insufficient balance, please top up your account")
            case Fault.BALANCE_IN_ENVELOPE:
                raise _EnvelopeError(402, "Insufficient balance")
            case Fault.RATE_LIMITED:
                raise _ApiError(429, "Too many requests", headers={"retry-after": f"{rule.retry_after:g}"})
            case Fault.SERVER_ERROR:
                raise _ApiError(500, "internal server error")
            case Fault.HANG:
                await self._release.wait()
                raise _ApiError(503, "the fake was closed while hanging")
            case Fault.GATEWAY_TIMEOUT | Fault.SUBMIT_WITHOUT_ID | Fault.SERVER_ERROR_NAMING_JOB:
                return  # the prediction is created first; the answer is spoiled afterwards
        raise AssertionError(f"unhandled fault {rule.fault}")

    def hold_results(self) -> None:
        """Keep every prediction "processing" until `release_results` (to stop a job at `submitted`)."""
        self.holding = True

    def release_results(self) -> None:
        """Let held predictions finish on their next poll."""
        self.holding = False

    def _advance(self, p: _Prediction, *, finish: bool = False) -> None:
        p.polls += 1
        if p.status != "processing" or p.fault == Fault.NEVER_FINISHES or self.holding:
            return
        if finish or p.polls >= self.polls_to_finish:
            failures = (Fault.JOB_FAILED, Fault.JOB_FAILED_KEY_ECHOED, Fault.JOB_NSFW)
            p.status = "failed" if p.fault in failures else "completed"

    def _poll(self, request: web.Request) -> web.Response:
        if (rule := self._take("poll")) is not None:
            if rule.fault == Fault.POLL_TIMEOUT:
                raise _ApiError(408, "Request Timeout")
            if rule.fault == Fault.POLL_NOT_FOUND_IN_ENVELOPE:
                raise _EnvelopeError(404, "prediction not found")
            raise _ApiError(503, "service temporarily unavailable")
        p = self.predictions.get(request.path.rsplit("/", 1)[-1])
        if p is None:
            raise _ApiError(404, "prediction not found")
        self._advance(p)
        return self._ok(self._prediction_json(p))
