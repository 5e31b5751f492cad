"""A fake WaveSpeed v3 API on 127.0.0.1 for provider tests (providers.md §3 and §7).

Served: the three documented upload flows (`POST /api/v3/media/upload/binary` and `/api/v3/upload`,
multipart `file`; the SDK's newer `POST /api/v3/media/uploads` + `PUT` of the bytes), the edit
submits (`/api/v3/openai/gpt-image-1-mini/edit`, and both documented gpt-image-1 edit paths,
`/api/v3/openai/gpt-image-1/edit` and `/api/v3/openai/gpt-image-1`), both result paths
(`/api/v3/predictions/{id}/result` and `/api/v3/predictions/{id}`), and the stored files at loopback
URLs (results carry a fake signature in the query string).

It validates like a strict WaveSpeed: Bearer auth, JSON content type, per-model fields (unknown
fields are a 400, so an `image` sent to the mini edit fails instead of becoming text-to-image),
that every image URL is one it handed out, enums (sizes with `*` or `x`, both documented), and a
mask the size of the image, read as alpha (transparent = edit) or as white = edit (polarity is OPEN).
Whether the mini edit takes `quality`/`size` is OPEN: refused unless `mini_accepts_quality_size`. Its
`images` must be JPG or PNG, as its page says (an uploaded WebP is stored, and refused on submit).
Tasks go `created` → `processing` → `completed` over `polls_to_finish` polls, with real images: the
first input mirrored left-right (only inside the mask, when there is one) at the requested size
(1024x1024 for `auto` and for the mini edit). Sync mode answers with the finished task, after
`sync_wait` seconds (how long the edit keeps the submit waiting; none by default), or with
`data.code` 5004 "Sync mode timed out" while the task keeps running (`Fault.SYNC_TIMEOUT`).

The GPT Image 2 edit routes (models-2026-12.md §4): `openai/gpt-image-2/edit` takes `images` (required,
1 to 16), `prompt`, `aspect_ratio` (10 ratios), `resolution` 1k/2k/4k and `quality` low/medium/high,
and no `size`; the 2.5 and 2.6 flare/sunburst edit routes add `xhigh`/`max`, 15 ratios from 1:3 to
3:1, `output_format` and `mask_image`. None takes `enable_sync_mode` or `enable_base64_output`
(unknown fields, refused): their outputs are URLs and their tasks are polled. The image is rendered
at the pixels `PIXELS` gives for the ratio and resolution (a pair without an entry, e.g. 1:1 at 4k,
is a 400); without `aspect_ratio` the ratio nearest the first input's is used, without `resolution`
1k. `fake.retire_route(route, how)` makes every submit for that route answer "model gone" (`Gone`:
404, 410 or 503 "no available channels") without creating a task; tasks already running still
finish.

One module (over 400 lines) because it is one vendor's whole API surface: splitting routes from
validation would scatter what a reader compares against the spec.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiohttp import web
from PIL import Image, ImageOps

from tests.fakes._base import (
    WEB_FORMATS,
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

DEFAULT_API_KEY = "ws-test-key-0123456789abcdef"
MINI = "openai/gpt-image-1-mini/edit"
FULL_PATHS = ("openai/gpt-image-1/edit", "openai/gpt-image-1")
FLAGS = frozenset({"enable_sync_mode", "enable_base64_output"})
MINI_FIELDS = FLAGS | {"prompt", "images"}
FULL_FIELDS = FLAGS | {"prompt", "image", "mask_image", "quality", "size"}
QUALITIES = ("low", "medium", "high")
SIZES = {"auto", "1024*1024", "1024*1536", "1536*1024", "1024x1024", "1024x1536", "1536x1024"}
MAX_IMAGES = 4
MAX_UPLOAD_BYTES = 20 * 1024 * 1024

GPT2 = "openai/gpt-image-2/edit"
GPT2X = (
    "openai/gpt-image-2.5-flare/edit",
    "openai/gpt-image-2.5-sunburst/edit",
    "openai/gpt-image-2.6-flare/edit",
    "openai/gpt-image-2.6-sunburst/edit",
)
# models-2026-12.md §4 lists no `enable_sync_mode` / `enable_base64_output` for the 2.x routes: refused.
GPT2_FIELDS = frozenset({"prompt", "images", "aspect_ratio", "resolution", "quality"})
GPT2X_FIELDS = GPT2_FIELDS | {"output_format", "mask_image"}
GPT2_RATIOS = ("1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
GPT2X_RATIOS = (*GPT2_RATIOS, "2:1", "1:2", "9:21", "1:3", "3:1")
GPT2X_QUALITIES = (*QUALITIES, "xhigh", "max")
RESOLUTIONS = ("1k", "2k", "4k")
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
MAX_GPT2_IMAGES = 16
# What each (aspect_ratio, resolution) renders here: OpenAI's sizes per ratio and tier as a gateway
# documents them (WaveSpeed publishes none), plus stand-ins for 1:3 and 3:1. Missing pairs are a 400.
PIXELS = {
    ("1:1", "1k"): (1024, 1024),
    ("1:1", "2k"): (2048, 2048),
    ("3:2", "1k"): (1536, 1024),
    ("3:2", "2k"): (2048, 1360),
    ("2:3", "1k"): (1024, 1536),
    ("2:3", "2k"): (1360, 2048),
    ("4:3", "1k"): (1024, 768),
    ("4:3", "2k"): (2048, 1536),
    ("3:4", "1k"): (768, 1024),
    ("3:4", "2k"): (1536, 2048),
    ("5:4", "1k"): (1280, 1024),
    ("5:4", "2k"): (2560, 2048),
    ("4:5", "1k"): (1024, 1280),
    ("4:5", "2k"): (2048, 2560),
    ("16:9", "1k"): (1536, 864),
    ("16:9", "2k"): (2048, 1152),
    ("16:9", "4k"): (3840, 2160),
    ("9:16", "1k"): (864, 1536),
    ("9:16", "2k"): (1152, 2048),
    ("9:16", "4k"): (2160, 3840),
    ("2:1", "1k"): (2048, 1024),
    ("2:1", "2k"): (2688, 1344),
    ("2:1", "4k"): (3840, 1920),
    ("1:2", "1k"): (1024, 2048),
    ("1:2", "2k"): (1344, 2688),
    ("1:2", "4k"): (1920, 3840),
    ("21:9", "1k"): (2016, 864),
    ("21:9", "2k"): (2688, 1152),
    ("21:9", "4k"): (3840, 1648),
    ("9:21", "1k"): (864, 2016),
    ("9:21", "2k"): (1152, 2688),
    ("9:21", "4k"): (1648, 3840),
    ("3:1", "1k"): (1536, 512),
    ("3:1", "2k"): (2304, 768),
    ("3:1", "4k"): (3840, 1280),
    ("1:3", "1k"): (512, 1536),
    ("1:3", "2k"): (768, 2304),
    ("1:3", "4k"): (1280, 3840),
}


class Fault(StrEnum):
    """Failures the fake can be told to produce (see `FakeWaveSpeed.fail_next`)."""

    UNAUTHORIZED = "unauthorized"  # 401 "key not activated" on the next request of any kind
    INSUFFICIENT_BALANCE = "insufficient_balance"  # 402 "Insufficient balance" on the submit (OPEN)
    RATE_LIMITED = "rate_limited"  # 429 on the submit
    SERVER_ERROR = "server_error"  # 500 on the submit, nothing created
    # 502 on the submit whose body names the task it created (it runs on and can be polled).
    SERVER_ERROR_NAMING_TASK = "server_error_naming_task"
    UPLOAD_ERROR = "upload_error"  # HTTP 200 with {"code": 500} on an upload
    POLL_ERROR = "poll_error"  # 502 on a result poll
    POLL_ENVELOPE_ERROR = "poll_envelope_error"  # HTTP 200 with {"code": 500} on a result poll
    POLL_ENVELOPE_TIMEOUT = "poll_envelope_timeout"  # HTTP 200 with {"code": 408} on a result poll
    JOB_FAILED = "job_failed"  # HTTP 200, data.status "failed", data.error set
    JOB_CANCELLED = "job_cancelled"  # HTTP 200, data.status "cancelled"
    JOB_TIMEOUT = "job_timeout"  # HTTP 200, data.status "timeout"
    NEVER_FINISHES = "never_finishes"  # the task stays "processing"
    OUTPUT_NSFW = "output_nsfw"  # the task completes, its output blanked and flagged in has_nsfw_contents
    # The task completes, but its output is cut off after its first third (an interrupted upload on
    # WaveSpeed's side): the signature and header are intact, most of the pixel data is missing.
    OUTPUT_TRUNCATED = "output_truncated"
    SYNC_TIMEOUT = "sync_timeout"  # sync submit: "processing" + data.code 5004; the task goes on
    HANG = "hang"  # the submit never answers (until the fake closes)


_TARGETS = {
    Fault.UNAUTHORIZED: "auth",
    Fault.UPLOAD_ERROR: "upload",
    Fault.POLL_ERROR: "poll",
    Fault.POLL_ENVELOPE_ERROR: "poll",
    Fault.POLL_ENVELOPE_TIMEOUT: "poll",
    Fault.JOB_FAILED: "job",
    Fault.JOB_CANCELLED: "job",
    Fault.JOB_TIMEOUT: "job",
    Fault.NEVER_FINISHES: "job",
    Fault.OUTPUT_NSFW: "job",
    Fault.OUTPUT_TRUNCATED: "job",
}
_JOB_END = {Fault.JOB_FAILED: "failed", Fault.JOB_CANCELLED: "cancelled", Fault.JOB_TIMEOUT: "timeout"}
_JOB_ERROR = {
    "failed": "Generation failed: the upstream provider returned an error",
    "cancelled": "Task cancelled by server",
    "timeout": "Task timeout by server",
}


@dataclass
class RecordedRequest:
    """One request as the fake saw it (the Authorization header is never stored)."""

    method: str
    path: str
    endpoint: str  # upload | submit | poll | put | file | other
    authorized: bool
    has_auth_header: bool
    content_type: str
    json: Any = None
    file_parts: list[str] = field(default_factory=list)
    status: int | None = None


@dataclass
class _Task:
    id: str
    model: str
    output: bytes
    end: str  # completed | failed | cancelled | timeout | never
    base64_output: bool
    polls: int = 0
    status: str = "created"
    nsfw: bool = False  # its output was blanked by the safety filter (has_nsfw_contents says so)


class _ApiError(HttpError):
    """An error answer: `{"code": status, "message": message, "data": null}`."""


class _EnvelopeError(_ApiError):
    """An error reported inside an HTTP 200 envelope (`{"code": 500, ...}`)."""


IMAGE_FORMATS = (*WEB_FORMATS, "GIF", "BMP", "TIFF")  # what the upload documents for images
MINI_IMAGE_FORMATS = ("JPEG", "PNG")  # the mini edit's page: "JPG/PNG" (providers.md §3.2), so no WebP


def render(source: Image.Image, region: Image.Image | None, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    """WaveSpeed's "edit" (blocking): the source mirrored (inside `region` only), resized, as `fmt`."""
    return encode(edited(source, region, ImageOps.mirror).resize(size, Image.Resampling.BILINEAR), fmt)


def nearest_ratio(size: tuple[int, int], ratios: tuple[str, ...]) -> str:
    """The ratio in `ratios` closest to `size`'s (what "detected from the input" means here)."""
    aspect = size[0] / size[1]

    def distance(ratio: str) -> float:
        w, h = (int(v) for v in ratio.split(":"))
        return abs(w / h - aspect)

    return min(ratios, key=distance)


class FakeWaveSpeed(FakeServer):
    """The fake server. Start with `async with FakeWaveSpeed() as fake` or `await fake.start()`."""

    fault_type = Fault
    fault_targets = _TARGETS
    default_target = "submit"

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        polls_to_finish: int = 2,
        base64_prefix: bool = False,
        url_outputs: bool = False,
        mini_accepts_quality_size: bool = False,
    ) -> None:
        super().__init__(api_key=api_key)
        self.polls_to_finish = polls_to_finish
        self.base64_prefix = base64_prefix  # base64 outputs as data: URLs (True) or bare (False)
        # Answer with URLs even when base64 was asked for: a route that does not honour the flag.
        self.url_outputs = url_outputs
        self.mini_accepts_quality_size = mini_accepts_quality_size
        self.sync_wait = 0.0  # seconds a sync submit is held before its finished task is answered
        # While True, tasks stay "processing" however often they are polled (`hold_results`).
        self.holding = False
        self.requests: list[RecordedRequest] = []
        self.files: dict[str, tuple[bytes, str]] = {}  # path -> (bytes, content type)
        self.tasks: dict[str, _Task] = {}
        self.next_ids: list[str] = []  # ids the next tasks are given, in order (then random hex)
        self._pending_puts: dict[str, str] = {}  # PUT path -> file path (newest upload flow)

    @property
    def base_url(self) -> str:
        return f"{self.origin}/api/v3"

    @property
    def submit_count(self) -> int:
        return self.count("submit")

    def count(self, endpoint: str) -> int:
        return sum(1 for r in self.requests if r.endpoint == endpoint)

    # ------------------------------------------------------------------ switches

    def hold_results(self) -> None:
        """Keep every task "processing" until `release_results` (to stop a job at `submitted`)."""
        self.holding = True

    def release_results(self) -> None:
        """Let held tasks finish on their next poll."""
        self.holding = False

    # ------------------------------------------------------------------ responses

    @staticmethod
    def _ok(data: dict[str, Any]) -> web.Response:
        return web.json_response({"code": 200, "message": "success", "data": data})

    def _task_json(self, task: _Task, *, sync_timeout: bool = False) -> dict[str, Any]:
        outputs: list[str] = []
        if task.status == "completed":
            if task.base64_output and not self.url_outputs:
                b64 = base64.b64encode(task.output).decode()
                outputs.append(f"data:image/png;base64,{b64}" if self.base64_prefix else b64)
            else:
                outputs.append(f"{self.origin}/media/outputs/{task.id}.png?Expires=604800&Signature=fake")
        data: dict[str, Any] = {
            "id": task.id,
            "model": task.model,
            "outputs": outputs,
            "urls": {"get": f"{self.base_url}/predictions/{task.id}/result"},
            "has_nsfw_contents": [task.nsfw] * len(outputs),
            "status": task.status,
            "created_at": "2026-11-01T12:34:56.789Z",
            "error": _JOB_ERROR.get(task.status, ""),
            "timings": {"inference": 2500},
        }
        if sync_timeout:
            data["code"] = 5004
            data["error"] = "Sync mode timed out after 90 seconds; query the result later"
        return data

    # ------------------------------------------------------------------ request handling

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        sub = path.removeprefix("/api/v3/")
        if path in ("/api/v3/media/upload/binary", "/api/v3/upload", "/api/v3/media/uploads"):
            endpoint = "upload"
        elif sub in (MINI, *FULL_PATHS, GPT2, *GPT2X):
            endpoint = "submit"
        elif sub.startswith("predictions/"):
            endpoint = "poll"
        elif path in self._pending_puts:
            endpoint = "put"
        elif path.startswith("/media/"):
            endpoint = "file"
        else:
            endpoint = "other"
        auth = request.headers.get("Authorization")
        record = RecordedRequest(
            method=request.method,
            path=path,
            endpoint=endpoint,
            authorized=auth == f"Bearer {self.api_key}",
            has_auth_header=auth is not None,
            content_type=request.content_type,
        )
        self.requests.append(record)
        try:
            response = await self._handle(request, record)
        except _EnvelopeError as err:
            response = web.json_response({"code": err.status, "message": err.message, "data": None})
        except HttpError as err:  # `_ApiError`, or one raised by a shared helper
            body = {"code": err.status, "message": err.message, "data": None}
            response = web.json_response(body, status=err.status, headers=err.headers)
        record.status = response.status
        return response

    async def _handle(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if record.endpoint == "file":
            if request.path.startswith("/media/outputs/"):
                await self._output_gate()
            stored = self.files.get(request.path)
            if stored is None:
                raise _ApiError(404, "file not found")
            return web.Response(body=stored[0], content_type=stored[1])
        if record.endpoint == "put":
            return await self._put(request)
        if record.endpoint == "other":
            await request.read()
            raise _ApiError(404, "Not Found")
        if record.endpoint == "upload":
            return await self._upload(request, record)
        body = await request.read()
        expected = "GET" if record.endpoint == "poll" else "POST"
        if request.method != expected:
            raise _ApiError(405, "Method Not Allowed")
        self._check_auth(record)
        if record.endpoint == "poll":
            return self._poll(request)
        return await self._submit(request, body, record)

    def _check_auth(self, record: RecordedRequest) -> None:
        if not record.authorized or self._take("auth") is not None:
            # New keys only work after the account's first top-up.
            raise _ApiError(401, "Invalid authentication: the API key is invalid or not activated")

    def _store(self, data: bytes, content_type: str) -> str:
        token = secrets.token_hex(6)
        extension = "png" if data.startswith(b"\x89PNG") else "jpg"
        path = f"/media/uploads/{token}/image.{extension}"
        self.files[path] = (data, content_type or "application/octet-stream")
        return path

    async def _upload(self, request: web.Request, record: RecordedRequest) -> web.Response:
        if request.path == "/api/v3/media/uploads":  # the SDK's newest flow: JSON, then a PUT
            body = await request.read()
            self._check_auth(record)
            try:
                meta = json.loads(body)
            except ValueError:
                raise _ApiError(400, "invalid JSON body") from None
            record.json = meta
            if not isinstance(meta, dict) or not {"filename", "size", "content_type"} <= set(meta):
                raise _ApiError(400, "filename, size and content_type are required")
            token = secrets.token_hex(6)
            file_path = f"/media/uploads/{token}/{meta['filename']}"
            put_path = f"/upload-target/{token}"
            self._pending_puts[put_path] = file_path
            return self._ok(
                {
                    "download_url": f"{self.origin}{file_path}",
                    "upload": {
                        "method": "PUT",
                        "url": f"{self.origin}{put_path}?X-Amz-Signature=fake",
                        "headers": {"Content-Type": meta["content_type"]},
                    },
                }
            )
        files = await read_file_parts(request, record.file_parts)
        self._check_auth(record)
        if self._take("upload") is not None:
            raise _EnvelopeError(500, "upload failed")  # documented: `code` is 500 on failure
        if [f.name for f in files] != ["file"]:
            raise _ApiError(400, "exactly one multipart file part named 'file' is required")
        data, content_type = files[0].data, files[0].content_type
        if len(data) > MAX_UPLOAD_BYTES:
            raise _ApiError(400, "file too large (images: 20 MB)")
        path = self._store(data, content_type)
        url = f"{self.origin}{path}"
        if request.path == "/api/v3/upload":
            return self._ok({"url": url})
        return self._ok({"type": "image", "download_url": url, "filename": "image.png", "size": len(data)})

    async def _put(self, request: web.Request) -> web.Response:
        data = await request.read()
        if request.method != "PUT" or "Authorization" in request.headers:
            raise _ApiError(400, "PUT the bytes without an Authorization header")
        file_path = self._pending_puts.pop(request.path)
        self.files[file_path] = (data, request.content_type)
        return web.Response(status=200)

    def _image_at(self, url: object, field_name: str) -> Image.Image:
        if not isinstance(url, str) or not url.startswith(f"{self.origin}/media/uploads/"):
            raise _ApiError(400, f"{field_name}: cannot download {url!r}")
        stored = self.files.get(url.removeprefix(self.origin))
        img = decode_image(stored[0], IMAGE_FORMATS) if stored else None
        if img is None:
            raise _ApiError(400, f"{field_name}: not a readable image")
        return img

    async def _submit(self, request: web.Request, body: bytes, record: RecordedRequest) -> web.StreamResponse:
        fields = json_object(request, body, record)
        model = request.path.removeprefix("/api/v3/")
        if (gone := self.gone_answer(model)) is not None:
            raise _ApiError(*gone)

        rule = self._take("submit")
        if rule is not None:
            match rule.fault:
                case Fault.INSUFFICIENT_BALANCE:
                    raise _ApiError(402, "Insufficient balance, please top up your account")
                case Fault.RATE_LIMITED:
                    raise _ApiError(
                        429, "Too Many Requests", headers={"retry-after": f"{rule.retry_after:g}"}
                    )
                case Fault.SERVER_ERROR:
                    raise _ApiError(500, "Internal Server Error")
                case Fault.HANG:
                    await self._release.wait()
                    raise _ApiError(503, "the fake was closed while hanging")

        if model == GPT2 or model in GPT2X:
            return await self._submit_gpt2(model, fields, rule)
        allowed = set(MINI_FIELDS if model == MINI else FULL_FIELDS)
        if model == MINI and self.mini_accepts_quality_size:
            allowed |= {"quality", "size"}
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise _ApiError(400, f"unknown parameter(s) for {model}: {', '.join(unknown)}")
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _ApiError(400, "prompt is required")
        for flag in FLAGS:
            if flag in fields and not isinstance(fields[flag], bool):
                raise _ApiError(400, f"{flag} must be a boolean")
        quality = fields.get("quality", "medium")
        if quality not in QUALITIES:
            raise _ApiError(400, f"quality must be one of {', '.join(QUALITIES)}")
        size = fields.get("size", "auto")
        if size not in SIZES:
            raise _ApiError(400, "size must be auto, 1024*1024, 1024*1536 or 1536*1024")
        if model == MINI:
            urls = fields.get("images")
            if not isinstance(urls, list) or not 1 <= len(urls) <= MAX_IMAGES:
                raise _ApiError(400, f"images must hold 1 to {MAX_IMAGES} URLs")
            sources = [self._image_at(u, "images") for u in urls]
            if any(source.format not in MINI_IMAGE_FORMATS for source in sources):
                raise _ApiError(400, "images must be JPG or PNG")
        else:
            if "image" not in fields:
                raise _ApiError(400, "image is required")
            sources = [self._image_at(fields["image"], "image")]
        region = None
        if fields.get("mask_image") is not None:
            mask = self._image_at(fields["mask_image"], "mask_image")
            if mask.format != "PNG" or mask.size != sources[0].size:
                raise _ApiError(400, "mask_image must be a PNG the size of the image")
            region = mask_region(mask)
            if region is None:
                raise _ApiError(400, "mask_image marks nothing to edit")

        width, height = (
            (1024, 1024) if size == "auto" else (int(v) for v in size.replace("*", "x").split("x"))
        )
        return await self._create_task(model, fields, rule, sources[0], region, (width, height), "PNG")

    async def _submit_gpt2(
        self, model: str, fields: dict[str, Any], rule: FaultRule | None
    ) -> web.StreamResponse:
        """A submit to a GPT Image 2 route: `aspect_ratio` + `resolution` instead of `size`."""
        full = model in GPT2X
        unknown = sorted(set(fields) - (GPT2X_FIELDS if full else GPT2_FIELDS))
        if unknown:
            raise _ApiError(400, f"unknown parameter(s) for {model}: {', '.join(unknown)}")
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _ApiError(400, "prompt is required")
        qualities = GPT2X_QUALITIES if full else QUALITIES
        if fields.get("quality", "medium") not in qualities:
            raise _ApiError(400, f"quality must be one of {', '.join(qualities)}")
        ratios = GPT2X_RATIOS if full else GPT2_RATIOS
        ratio = fields.get("aspect_ratio")
        if ratio is not None and ratio not in ratios:
            raise _ApiError(400, f"aspect_ratio must be one of {', '.join(ratios)}")
        resolution = fields.get("resolution", "1k")
        if resolution not in RESOLUTIONS:
            raise _ApiError(400, "resolution must be one of 1k, 2k, 4k")
        fmt = fields.get("output_format", "png")
        if fmt not in OUTPUT_FORMATS:
            raise _ApiError(400, "output_format must be one of png, jpeg, webp")
        urls = fields.get("images")
        if not isinstance(urls, list) or not 1 <= len(urls) <= MAX_GPT2_IMAGES:
            raise _ApiError(400, f"images is required: 1 to {MAX_GPT2_IMAGES} URLs")
        sources = [self._image_at(u, "images") for u in urls]
        ratio = ratio or nearest_ratio(sources[0].size, ratios)
        size = PIXELS.get((ratio, resolution))
        if size is None:
            raise _ApiError(400, f"resolution {resolution} is not available for aspect_ratio {ratio}")
        region = None
        if fields.get("mask_image") is not None:
            mask = self._image_at(fields["mask_image"], "mask_image")
            if mask.format != "PNG" or mask.size != sources[0].size:
                raise _ApiError(400, "mask_image must be a PNG the size of the first image")
            region = mask_region(mask)
            if region is None:
                raise _ApiError(400, "mask_image marks nothing to edit")
        return await self._create_task(model, fields, rule, sources[0], region, size, OUTPUT_FORMATS[fmt])

    async def _create_task(
        self,
        model: str,
        fields: dict[str, Any],
        rule: FaultRule | None,
        source: Image.Image,
        region: Image.Image | None,
        size: tuple[int, int],
        fmt: str,
    ) -> web.StreamResponse:
        """Render the edit, store the task, and answer the submit (sync or not)."""
        job_rule = self._take("job")
        end = "completed"
        nsfw = job_rule is not None and job_rule.fault == Fault.OUTPUT_NSFW
        truncated = job_rule is not None and job_rule.fault == Fault.OUTPUT_TRUNCATED
        if job_rule is not None and not (nsfw or truncated):
            end = "never" if job_rule.fault == Fault.NEVER_FINISHES else _JOB_END[job_rule.fault]
        output = await asyncio.to_thread(render, source, region, size, fmt)
        if nsfw:  # a flagged output comes back blanked: the same size, all black
            output = encode(Image.new("RGB", size), fmt)
        if truncated:
            output = output[: len(output) // 3]
        task = _Task(
            id=self.next_ids.pop(0) if self.next_ids else secrets.token_hex(12),
            model=model,
            output=output,
            end=end,
            base64_output=bool(fields.get("enable_base64_output")),
            nsfw=nsfw,
        )
        self.tasks[task.id] = task
        # Stored now; its URL is only given out once the task says `completed`.
        self.files[f"/media/outputs/{task.id}.png"] = (output, "image/png")
        if rule is not None and rule.fault == Fault.SERVER_ERROR_NAMING_TASK:
            body = {"code": 502, "message": "upstream error", "data": self._task_json(task)}
            return web.json_response(body, status=502)
        if fields.get("enable_sync_mode"):
            if rule is not None and rule.fault == Fault.SYNC_TIMEOUT:
                task.status = "processing"
                return self._ok(self._task_json(task, sync_timeout=True))
            if end != "never" and not self.holding:
                with contextlib.suppress(TimeoutError):  # the fake's close ends the wait early
                    await asyncio.wait_for(self._release.wait(), self.sync_wait)
                task.status = end
                return self._ok(self._task_json(task))
        return self._ok(self._task_json(task))

    def _poll(self, request: web.Request) -> web.Response:
        if (rule := self._take("poll")) is not None:
            if rule.fault == Fault.POLL_ENVELOPE_ERROR:  # how its API reports a failure in a 200
                raise _EnvelopeError(500, "internal server error")
            if rule.fault == Fault.POLL_ENVELOPE_TIMEOUT:
                raise _EnvelopeError(408, "request timeout")
            raise _ApiError(502, "Bad Gateway")
        parts = request.path.removeprefix("/api/v3/predictions/").split("/")
        if len(parts) > 2 or (len(parts) == 2 and parts[1] != "result"):
            raise _ApiError(404, "Not Found")
        task = self.tasks.get(parts[0])
        if task is None:
            raise _ApiError(404, "prediction not found")
        task.polls += 1
        if task.status in ("created", "processing"):
            if self.holding or task.end == "never" or task.polls < self.polls_to_finish:
                task.status = "processing"
            else:
                task.status = task.end
        return self._ok(self._task_json(task))
