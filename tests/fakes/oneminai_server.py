"""A fake 1min.ai API on 127.0.0.1 for provider tests (providers.md §5 and §7).

Served: `POST /api/assets` (multipart field `asset`, answering `asset` + `fileContent.path`),
`POST /api/features` with `type` `IMAGE_EDITOR` or `IMAGE_INPAINTER` (synchronous, answering an
`aiRecord`), and a stand-in for the private S3 bucket at `/s3/asset.1min.ai/<path>` that only
serves presigned URLs (the `temporaryUrl`, with an `X-Amz-Signature` query).

It validates like a strict 1min.ai: the `API-KEY` header (not Bearer), JSON content type, the known
`promptObject` fields per feature (unknown ones are a 400: `background` on the inpainter, `maskUrl`
on the editor, a wrong image field), asset *paths* it handed out (a URL is not an asset path, so a
Discord CDN URL fails), the 4,000-character prompt limit, the fixed sizes, `n` 1-10, and for the
inpainter a black-and-white mask (white = edit) the size of the image: a mask with transparency is
refused, since sending an OpenAI-style alpha mask here is exactly the bug to catch. Results are
real images: the input turned upside down (only where the mask is white, for the inpainter), at
the requested size. With `n > 1`, `resultObject` lists every path but only the first has a
`temporaryUrl`, as documented.

Errors are undocumented (OPEN): the fault switches model the spec's assumptions (401, a low-credit
4xx with a JSON `message`, 429, 5xx) plus a record whose status is not SUCCESS.

`model: gpt-image-2` (models-2026-12.md §4) is served by `IMAGE_EDITOR` only: `promptObject.size` is
REQUIRED and a free `WxH` within OpenAI's 2.x rules (no `auto`), `quality` is REQUIRED (low/medium/
high). `fake.retire_route(model, how)` makes feature calls for that model answer "model gone" (`Gone`:
404, 410 or 503 "no available channels").
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from aiohttp import web
from PIL import Image

from tests.fakes._base import (
    FakeServer,
    HttpError,
    decode_image,
    edited,
    encode,
    free_size_problem,
    read_file_parts,
)

DEFAULT_API_KEY = "1min-test-key-0123456789"
MODELS = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-2")
FREE_SIZE_MODELS = ("gpt-image-2",)  # editor only; `size` and `quality` required
SIZES = ("1024x1024", "1024x1536", "1536x1024")
QUALITIES = ("low", "medium", "high")
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
BACKGROUNDS = ("auto", "preserve", "transparent", "white", "black")
COMMON = frozenset({"imageUrl", "prompt", "size", "n", "quality", "output_format", "output_compression"})
FEATURE_FIELDS = {"IMAGE_EDITOR": COMMON | {"background"}, "IMAGE_INPAINTER": COMMON | {"maskUrl"}}
MAX_PROMPT = 4000
BUCKET = "asset.1min.ai"


class Fault(StrEnum):
    """Failures the fake can be told to produce (see `FakeOneMin.fail_next`); all assumed (OPEN)."""

    UNAUTHORIZED = "unauthorized"  # 401 on the next request of any kind
    NO_CREDITS = "no_credits"  # 400 {"message": "Insufficient credits ..."} on the feature call
    RATE_LIMITED = "rate_limited"  # 429 with retry-after on the feature call
    SERVER_ERROR = "server_error"  # 500 on the feature call
    UPLOAD_ERROR = "upload_error"  # 503 on /assets
    RECORD_FAILED = "record_failed"  # 200 with aiRecord.status "FAILED" and no temporaryUrl
    NO_URL = "no_url"  # 200 SUCCESS but no temporaryUrl
    # 200 SUCCESS, but the stored result is cut off after its first third (signature and header
    # intact): an upload to the bucket that was interrupted.
    TRUNCATED_RESULT = "truncated_result"
    HANG = "hang"  # the feature call never answers (until the fake closes)
    # 408 as a gateway's HTML page (no aiRecord) on the feature call, after the generation was made and
    # billed: an edge that gave up waiting for it.
    GATEWAY_TIMEOUT = "gateway_timeout"


_TARGETS = {Fault.UNAUTHORIZED: "auth", Fault.UPLOAD_ERROR: "assets"}  # the rest: the feature call


@dataclass
class RecordedRequest:
    """One request as the fake saw it (the API-KEY header is never stored)."""

    method: str
    path: str
    endpoint: str  # assets | features | s3 | other
    authorized: bool
    has_api_key: bool
    content_type: str
    json: Any = None
    file_parts: list[str] = field(default_factory=list)
    status: int | None = None


class _ApiError(HttpError):
    """An error answer: `{"message": message, "statusCode": status}` (the format is OPEN)."""


def white_region(mask: Image.Image) -> Image.Image:
    """The inpainter's edit region: white pixels ("L", 255 = edit)."""
    return mask.convert("L").point(lambda v: 255 if v >= 128 else 0)


def render(source: Image.Image, region: Image.Image | None, size: tuple[int, int], fmt: str) -> bytes:
    """1min.ai's "edit" (blocking): upside down (inside `region` only), resized, encoded as `fmt`."""
    out = edited(source, region, lambda rgb: rgb.rotate(180))
    return encode(out.resize(size, Image.Resampling.BILINEAR), fmt)


class FakeOneMin(FakeServer):
    """The fake server. Start with `async with FakeOneMin() as fake` or `await fake.start()`."""

    fault_type = Fault
    fault_targets = _TARGETS
    default_target = "features"

    def __init__(self, *, api_key: str = DEFAULT_API_KEY) -> None:
        super().__init__(api_key=api_key)
        self.requests: list[RecordedRequest] = []
        self.objects: dict[str, bytes] = {}  # bucket path -> bytes (assets and results)
        self.billed_timeouts = 0  # feature calls made (and billed) whose answer was a gateway's 408
        self.success_word = "SUCCESS"  # a finished record's `status` (its spelling is undocumented)
        self.next_record_ids: list[str] = []  # `uuid`s the next records are given (then random hex)

    @property
    def base_url(self) -> str:
        return f"{self.origin}/api"

    @property
    def feature_count(self) -> int:
        """Feature calls (the paid ones), whatever their outcome."""
        return sum(1 for r in self.requests if r.endpoint == "features")

    # ------------------------------------------------------------------ request handling

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        endpoint = {"/api/assets": "assets", "/api/features": "features"}.get(path, "other")
        if path.startswith(f"/s3/{BUCKET}/"):
            endpoint = "s3"
        key = request.headers.get("API-KEY")
        record = RecordedRequest(
            method=request.method,
            path=path,
            endpoint=endpoint,
            authorized=key == self.api_key,
            has_api_key=key is not None,
            content_type=request.content_type,
        )
        self.requests.append(record)
        try:
            response = await self._handle(request, record)
        except _ApiError as err:
            body = {"message": err.message, "statusCode": err.status}
            response = web.json_response(body, status=err.status, headers=err.headers)
        record.status = response.status
        return await self._answer(request, response) if record.endpoint == "features" else response

    async def _handle(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if record.endpoint == "s3":
            await self._output_gate()
            if "X-Amz-Signature" not in request.query:
                raise _ApiError(403, "AccessDenied: the bucket is private")
            data = self.objects.get(request.path.removeprefix(f"/s3/{BUCKET}/"))
            if data is None:
                raise _ApiError(404, "NoSuchKey")
            return web.Response(body=data, content_type="application/octet-stream")
        if record.endpoint == "other":
            await request.read()
            raise _ApiError(404, f"Cannot {request.method} {request.path}")
        if request.method != "POST":
            await request.read()
            raise _ApiError(404, f"Cannot {request.method} {request.path}")
        if record.endpoint == "assets":
            return await self._assets(request, record)
        body = await request.read()
        self._check_auth(record)
        return await self._features(request, body, record)

    def _check_auth(self, record: RecordedRequest) -> None:
        if not record.authorized or self._take("auth") is not None:
            raise _ApiError(401, "Unauthorized")

    async def _assets(self, request: web.Request, record: RecordedRequest) -> web.Response:
        files = await read_file_parts(request, record.file_parts)
        self._check_auth(record)
        if self._take("assets") is not None:
            raise _ApiError(503, "Service Unavailable")
        if [f.name for f in files] != ["asset"]:
            raise _ApiError(400, "asset is required (multipart field 'asset')")
        filename, data, mime = files[0].filename, files[0].data, files[0].content_type
        stamp = datetime.now(UTC).strftime("%Y_%m_%d_%H_%M_%S_%f")[:-3]
        name = f"{stamp}_{secrets.token_hex(3)}_{filename}"
        path = f"images/{name}"
        self.objects[path] = data
        return web.json_response(
            {
                "asset": {
                    "fieldname": "asset",
                    "originalname": filename,
                    "mimetype": mime,
                    "size": len(data),
                    "bucket": BUCKET,
                    "key": path,
                    "acl": "private",
                    "location": f"https://{BUCKET}.s3.us-east-1.amazonaws.com/{path}",
                },
                "fileContent": {
                    "uuid": secrets.token_hex(16),
                    "path": path,
                    "type": filename.rsplit(".", 1)[-1],
                    "name": name,
                },
            }
        )

    def _asset(self, path: object, what: str) -> Image.Image:
        data = self.objects.get(path) if isinstance(path, str) else None
        img = decode_image(data) if data else None
        if img is None:
            raise _ApiError(400, f"{what}: asset not found or not an image ({path!r})")
        return img

    async def _features(self, request: web.Request, body: bytes, record: RecordedRequest) -> web.Response:
        if request.content_type != "application/json":
            raise _ApiError(400, "Content-Type must be application/json")
        try:
            payload = json.loads(body)
        except ValueError:
            raise _ApiError(400, "invalid JSON") from None
        record.json = payload
        if not isinstance(payload, dict) or set(payload) - {"type", "model", "promptObject"}:
            raise _ApiError(400, "the body takes type, model and promptObject")
        feature, model, obj = payload.get("type"), payload.get("model"), payload.get("promptObject")
        if feature not in FEATURE_FIELDS:
            raise _ApiError(400, f"unknown feature type {feature!r}")
        if (gone := self.gone_answer(str(model))) is not None:
            raise _ApiError(*gone)
        free_size = model in FREE_SIZE_MODELS
        if model not in MODELS or (free_size and feature != "IMAGE_EDITOR"):
            raise _ApiError(400, f"model {model!r} is not available for {feature}")
        if not isinstance(obj, dict):
            raise _ApiError(400, "promptObject is required")

        rule = self._take("features")
        if rule is not None:
            match rule.fault:
                case Fault.NO_CREDITS:
                    raise _ApiError(
                        400, "Insufficient credits. Please upgrade your plan or buy more credits."
                    )
                case Fault.RATE_LIMITED:
                    raise _ApiError(
                        429, "Too many requests", headers={"retry-after": f"{rule.retry_after:g}"}
                    )
                case Fault.SERVER_ERROR:
                    raise _ApiError(500, "Internal server error")
                case Fault.HANG:
                    await self._release.wait()
                    raise _ApiError(503, "the fake was closed while hanging")
                case Fault.GATEWAY_TIMEOUT:
                    self.billed_timeouts += 1
                    return web.Response(
                        status=408, text="<html><h1>408 Request Timeout</h1></html>", content_type="text/html"
                    )

        unknown = sorted(set(obj) - FEATURE_FIELDS[feature])
        if unknown:
            raise _ApiError(400, f"promptObject: unknown field(s) for {feature}: {', '.join(unknown)}")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _ApiError(400, "promptObject.prompt is required")
        if len(prompt) > MAX_PROMPT:
            raise _ApiError(400, f"promptObject.prompt must be at most {MAX_PROMPT} characters")
        if free_size:
            for name in ("size", "quality"):
                if name not in obj:
                    raise _ApiError(400, f"promptObject.{name} is required for {model}")
            size = obj["size"]
            problem = free_size_problem(size) if isinstance(size, str) and size != "auto" else "is not WxH"
            if problem is not None:
                raise _ApiError(400, f"promptObject.size: {problem}")
        else:
            size = obj.get("size", "1024x1024")
            if size not in SIZES:
                raise _ApiError(400, f"promptObject.size must be one of {', '.join(SIZES)}")
        n = obj.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
            raise _ApiError(400, "promptObject.n must be 1-10")
        if obj.get("quality", "medium") not in QUALITIES:
            raise _ApiError(400, "promptObject.quality must be low, medium or high")
        fmt = obj.get("output_format", "png")
        if fmt not in FORMATS:
            raise _ApiError(400, "promptObject.output_format must be png, jpeg or webp")
        compression = obj.get("output_compression", 85)
        if not isinstance(compression, int) or not 0 <= compression <= 100:
            raise _ApiError(400, "promptObject.output_compression must be 0-100")
        background = obj.get("background", "auto")
        if background not in BACKGROUNDS or (background == "transparent" and fmt != "png"):
            raise _ApiError(400, "promptObject.background is invalid (transparent needs png)")
        source = self._asset(obj.get("imageUrl"), "imageUrl")
        region = None
        if feature == "IMAGE_INPAINTER":
            mask = self._asset(obj.get("maskUrl"), "maskUrl")
            has_transparency = mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info
            if has_transparency and mask.convert("RGBA").getchannel("A").getextrema()[0] < 255:
                raise _ApiError(
                    400, "maskUrl must be a black and white image (white = edit), not transparent"
                )
            if mask.size != source.size:
                raise _ApiError(400, "maskUrl must have the same dimensions as imageUrl")
            region = white_region(mask)
            if region.getbbox() is None:
                raise _ApiError(400, "maskUrl marks nothing to edit")

        width, height = (int(v) for v in size.split("x"))
        data = await asyncio.to_thread(render, source, region, (width, height), FORMATS[fmt])
        if rule is not None and rule.fault == Fault.TRUNCATED_RESULT:
            data = data[: len(data) // 3]
        stamp = datetime.now(UTC).strftime("%Y_%m_%d_%H_%M_%S_%f")[:-3]
        results = [f"development/images/{stamp}_{i}_edited.{fmt}" for i in range(n)]
        for path in results:
            self.objects[path] = data
        status = self.success_word
        temporary: str | None = (
            f"{self.origin}/s3/{BUCKET}/{results[0]}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Expires=604800&X-Amz-Signature={secrets.token_hex(16)}"
        )
        if rule is not None and rule.fault == Fault.RECORD_FAILED:
            status, temporary, results = "FAILED", None, []
        if rule is not None and rule.fault == Fault.NO_URL:
            temporary = None
        record_body: dict[str, Any] = {
            "uuid": self.next_record_ids.pop(0) if self.next_record_ids else secrets.token_hex(16),
            "userId": "user-1",
            "teamId": "team-1",
            "teamUser": {
                "teamId": "team-1",
                "userId": "user-1",
                "creditLimit": 100000000,
                "usedCredit": 28000,
            },
            "model": model,
            "type": feature,
            "metadata": None,
            "status": status,
            "createdAt": datetime.now(UTC).isoformat(),
            "aiRecordDetail": {"promptObject": obj, "resultObject": results, "responseObject": {}},
            "additionalData": None,
            "temporaryUrl": temporary,
        }
        if temporary is None:
            del record_body["temporaryUrl"]
        return web.json_response({"aiRecord": record_body})
