"""A fake Segmind v1 API on 127.0.0.1 for provider tests (providers.md §4 and §7).

Served: `POST /v1/gpt-image-1-edit-mini` and `POST /v1/gpt-image-1-edit` (synchronous: the answer
is the image itself), the asset upload `POST /upload-asset` (the SDK's JSON `{"data_urls": [...]}`
and the multipart `file` form another spec documents), the uploaded assets at loopback URLs, and the
v2 request status `GET /v2/requests/{id}/status` (auth checked first, then 404: this fake runs no v2
requests, so every id is unknown).

It validates like a strict Segmind: `x-api-key` only (a Bearer token is a 401), a JSON Content-Type
(otherwise the 406 "Invalid content type" that is easy to mistake for a credits error), known
fields only (unknown ones are a 400, so a wrong image field cannot pass), enums, `image_urls` that
this server handed out (a bare string is accepted too: an old example sends one), and a mask the
size of the first image, read as alpha or as white = edit (polarity is OPEN). The answer is a real
image: the first input turned to greyscale (only inside the mask, when there is one) at the
requested size (1024x1024 for `auto`), in the requested format, with `x-cost`,
`x-remaining-credits`, `x-generation-time`, `x-seed-value` and `x-request-id` headers.
`response_mode` switches the 200 answer to JSON (`{"image": base64}` or `{"output": [url]}`), since
whether v1 may answer JSON is OPEN.

`POST /v1/gpt-image-2` (models-2026-12.md §4): one `image` URL makes it an edit (a list, or
`image_urls`, is a 400; without `image` it draws from the prompt alone); `size` is `auto` or a free
`WxH` within OpenAI's 2.x rules; `quality` low/medium/high (strict: "auto" is not documented for
it); no mask. `fake.retire_route(model, how)` makes that model's calls answer "model gone" (`Gone`:
404, 410 or 503 "no available channels"); `Fault.RETIRED` is the one-off 410.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from aiohttp import web
from PIL import Image, ImageOps

from tests.fakes._base import (
    FakeServer,
    FaultRule,
    decode_image,
    edited,
    encode,
    free_size_problem,
    mask_region,
    read_file_parts,
)

DEFAULT_API_KEY = "SG_0123456789abcdef"
MODELS = ("gpt-image-1-edit-mini", "gpt-image-1-edit", "gpt-image-2")
GPT2 = "gpt-image-2"
FIELDS = frozenset(
    {
        "prompt",
        "image_urls",
        "mask",
        "size",
        "quality",
        "background",
        "output_compression",
        "output_format",
        "moderation",
    }
)
GPT2_FIELDS = (FIELDS - {"image_urls", "mask"}) | {"image"}
SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536")
QUALITIES = ("auto", "low", "medium", "high")
GPT2_QUALITIES = ("low", "medium", "high")
BACKGROUNDS = ("transparent", "opaque")
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
MODERATIONS = ("low", "auto")
# What one call costs here (USD): a stand-in for Segmind's undocumented price table.
PRICE = {
    "gpt-image-1-edit-mini": Decimal("0.0280"),
    "gpt-image-1-edit": Decimal("0.1400"),
    "gpt-image-2": Decimal("0.0530"),
}


class Fault(StrEnum):
    """Failures the fake can be told to produce (see `FakeSegmind.fail_next`)."""

    MISSING_KEY = "missing_key"  # 401 "Missing Authorization or x-api-key in header"
    INVALID_KEY = "invalid_key"  # 401 "Unauthorized. API key is invalid or may have expired"
    NOT_ENOUGH_CREDITS = "not_enough_credits"  # 406 naming balance and cost
    SPEND_LIMIT = "spend_limit"  # 406 team spend limit reached
    CONTENT_TYPE = "content_type"  # 406 "Invalid content type" even for a JSON body
    FORBIDDEN = "forbidden"  # 403 model not permitted for the account
    KEY_ECHOED = "key_echoed"  # 403 whose message quotes the x-api-key it was sent
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405 with an HTML body
    RETIRED = "retired"  # 410 model retired
    RATE_LIMITED = "rate_limited"  # 429 with x-rate-limit-reset-at-utc, no Retry-After
    SERVER_ERROR = "server_error"  # 500 (not billed)
    GATEWAY_TIMEOUT = "gateway_timeout"  # 504 from the gateway
    UPLOAD_ERROR = "upload_error"  # 500 on upload-asset
    NOT_AN_IMAGE = "not_an_image"  # 200 image/png whose body is not an image
    # 200 whose image is cut off after its first third (signature and header intact), in every
    # `response_mode`: an answer interrupted on Segmind's side.
    TRUNCATED_IMAGE = "truncated_image"
    HANG = "hang"  # the edit call never answers (until the fake closes)


_TARGETS = {Fault.UPLOAD_ERROR: "upload"}  # every other fault spoils the edit call


@dataclass
class RecordedRequest:
    """One request as the fake saw it (the key header is never stored)."""

    method: str
    path: str
    endpoint: str  # edit | upload | asset | status | other
    key_ok: bool
    bearer: bool
    content_type: str
    json: Any = None
    status: int | None = None
    headers_out: dict[str, str] = field(default_factory=dict)


class _ApiError(Exception):
    def __init__(
        self, status: int, body: dict[str, Any] | str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body
        self.headers = headers or {}


def render(
    source: Image.Image, region: Image.Image | None, size: tuple[int, int], fmt: str, transparent: bool
) -> bytes:
    """Segmind's "edit" (blocking): greyscale (inside `region` only), resized, encoded as `fmt`."""
    out = edited(source, region, lambda rgb: ImageOps.grayscale(rgb).convert("RGB"))
    out = out.resize(size, Image.Resampling.BILINEAR)
    if transparent and fmt != "JPEG":
        out = out.convert("RGBA")
        out.putalpha(Image.new("L", size, 255))
        out.paste((0, 0, 0, 0), (0, 0, size[0] // 8, size[1] // 8))
    return encode(out, fmt)


class FakeSegmind(FakeServer):
    """The fake server. Start with `async with FakeSegmind() as fake` or `await fake.start()`."""

    fault_type = Fault
    fault_targets = _TARGETS
    default_target = "edit"
    client_max_size = 128 * 1024**2

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, credits: Decimal = Decimal("10.0")) -> None:
        super().__init__(api_key=api_key)
        self.credits = credits
        self.response_mode = "bytes"  # bytes | json-base64 | json-url
        # The Content-Type of a raw image answer (None: image/<format>); whether it follows the format,
        # or is even an image type, is OPEN.
        self.image_content_type: str | None = None
        self.requests: list[RecordedRequest] = []
        self.assets: dict[str, bytes] = {}

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def upload_url(self) -> str:
        return f"{self.origin}/upload-asset"

    @property
    def post_count(self) -> int:
        """Edit calls (the paid ones), whatever their outcome."""
        return sum(1 for r in self.requests if r.endpoint == "edit")

    # ------------------------------------------------------------------ request handling

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/v1/"):
            endpoint = "edit"
        elif path == "/upload-asset":
            endpoint = "upload"
        elif path.startswith("/assets/"):
            endpoint = "asset"
        elif path.startswith("/v2/requests/"):
            endpoint = "status"
        else:
            endpoint = "other"
        record = RecordedRequest(
            method=request.method,
            path=path,
            endpoint=endpoint,
            key_ok=request.headers.get("x-api-key") == self.api_key,
            bearer=request.headers.get("Authorization", "").startswith("Bearer"),
            content_type=request.headers.get("Content-Type", ""),
        )
        self.requests.append(record)
        try:
            response = await self._handle(request, record)
        except _ApiError as err:
            if isinstance(err.body, str):
                response = web.Response(status=err.status, text=err.body, content_type="text/html")
            else:
                response = web.json_response(err.body, status=err.status)
            response.headers.update(err.headers)
        record.status = response.status
        record.headers_out = dict(response.headers)
        return await self._answer(request, response) if endpoint == "edit" else response

    async def _handle(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if record.endpoint == "asset":
            if request.path.startswith("/assets/out-"):
                await self._output_gate()
            data = self.assets.get(request.path)
            if data is None:
                raise _ApiError(404, {"error": "asset not found"})
            return web.Response(
                body=data, content_type="image/png" if data[:4] == b"\x89PNG" else "image/jpeg"
            )
        if record.endpoint == "upload":
            return await self._upload(request, record)
        if record.endpoint == "status":
            return await self._status(request, record)
        body = await request.read()
        if record.endpoint == "other" or request.path.removeprefix("/v1/") not in MODELS:
            raise _ApiError(404, {"error": f"Model not found: {request.path.removeprefix('/v1/')}"})
        rule = self._take("edit")
        if (rule is not None and rule.fault == Fault.METHOD_NOT_ALLOWED) or request.method != "POST":
            raise _ApiError(405, "<html><head><title>405 Not Allowed</title></head><body>405</body></html>")
        self._check_key(request, record, rule)
        if not request.headers.get("Content-Type", "").startswith("application/json") or (
            rule is not None and rule.fault == Fault.CONTENT_TYPE
        ):
            raise _ApiError(406, {"error": "Invalid content type. Use application/json"})
        return await self._edit(request, body, record, rule)

    def _check_key(self, request: web.Request, record: RecordedRequest, rule: FaultRule | None) -> None:
        if (rule is not None and rule.fault == Fault.MISSING_KEY) or "x-api-key" not in request.headers:
            raise _ApiError(401, {"error": "Missing Authorization or x-api-key in header"})
        if (rule is not None and rule.fault == Fault.INVALID_KEY) or not record.key_ok:
            raise _ApiError(
                401,
                {
                    "error": "unauthorized",
                    "error_description": "Unauthorized. API key is invalid or may have expired",
                    "status_code": 401,
                },
            )

    async def _status(self, request: web.Request, record: RecordedRequest) -> web.Response:
        """`GET /v2/requests/{id}/status`: the key first (the auth layer), then the unknown id."""
        await request.read()
        parts = request.path.removeprefix("/v2/requests/").split("/")
        if len(parts) != 2 or parts[1] != "status" or not parts[0]:
            raise _ApiError(404, {"error": "Not found"})
        if request.method != "GET":
            raise _ApiError(405, "<html><head><title>405 Not Allowed</title></head><body>405</body></html>")
        self._check_key(request, record, None)
        raise _ApiError(404, {"error": f"Request {parts[0]} not found (records expire)"})

    async def _upload(self, request: web.Request, record: RecordedRequest) -> web.Response:
        blobs: list[bytes] = []
        if request.content_type.startswith("multipart/"):
            parts = await read_file_parts(request)
            blobs = [part.data for part in parts if part.name == "file" and part.filename]
        else:
            raw = await request.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
            record.json = payload
            urls = payload.get("data_urls") if isinstance(payload, dict) else None
            if not isinstance(urls, list) or not urls:
                self._check_key(request, record, None)
                raise _ApiError(400, {"error": "data_urls must be a non-empty list"})
            for url in urls:
                header, _, b64 = str(url).partition(",")
                if not header.startswith("data:image/") or ";base64" not in header:
                    self._check_key(request, record, None)
                    raise _ApiError(400, {"error": "each data_url must be a base64 image data URL"})
                try:
                    blobs.append(base64.b64decode(b64, validate=True))
                except (binascii.Error, ValueError):
                    raise _ApiError(400, {"error": "invalid base64"}) from None
        self._check_key(request, record, None)
        if self._take("upload") is not None:
            raise _ApiError(500, {"error": "Internal Server Error"})
        if not blobs:
            raise _ApiError(400, {"error": "no file"})
        urls = []
        for data in blobs:
            extension = "png" if data[:4] == b"\x89PNG" else "jpg"
            path = f"/assets/{secrets.token_hex(8)}.{extension}"
            self.assets[path] = data
            urls.append(f"{self.origin}{path}")
        return web.json_response({"file_urls": urls, "message": "Files uploaded successfully"})

    def _image_at(self, url: object, what: str) -> Image.Image:
        if not isinstance(url, str) or not url.startswith(f"{self.origin}/assets/"):
            raise _ApiError(400, {"error": f"{what}: could not fetch {url!r}"})
        data = self.assets.get(url.removeprefix(self.origin))
        img = decode_image(data) if data else None
        if img is None:
            raise _ApiError(400, {"error": f"{what}: not a valid image"})
        return img

    async def _edit(
        self, request: web.Request, body: bytes, record: RecordedRequest, rule: FaultRule | None
    ) -> web.StreamResponse:
        model = request.path.removeprefix("/v1/")
        if (gone := self.gone_answer(model)) is not None:
            raise _ApiError(gone[0], {"error": gone[1]})
        try:
            fields = json.loads(body)
        except ValueError:
            raise _ApiError(400, {"error": "Invalid JSON body"}) from None
        record.json = fields
        if not isinstance(fields, dict):
            raise _ApiError(400, {"error": "the body must be a JSON object"})
        if rule is not None:
            await self._fault(rule, model)
        gpt2 = model == GPT2
        unknown = sorted(set(fields) - (GPT2_FIELDS if gpt2 else FIELDS))
        if unknown:
            raise _ApiError(400, {"error": f"Unknown parameter(s): {', '.join(unknown)}"})
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _ApiError(400, {"error": "prompt is required"})
        if gpt2:
            image = fields.get("image")
            if image is not None and not isinstance(image, str):
                raise _ApiError(400, {"error": "image must be one image URL"})
            sources = [self._image_at(image, "image")] if image is not None else []
            size = fields.get("size", "auto")
            # The page documents `size` as WxH (models-2026-12.md §4): `auto` is not taken as given.
            problem = (
                "must be WIDTHxHEIGHT"
                if size == "auto" and "size" in fields
                else free_size_problem(str(size))
            )
            if problem is not None:
                raise _ApiError(400, {"error": f"size: {problem}"})
            enums = [("quality", GPT2_QUALITIES, "medium")]
        else:
            urls = fields.get("image_urls")
            if isinstance(urls, str):  # an old JS example sends a bare string
                urls = [urls]
            if not isinstance(urls, list) or not urls:
                raise _ApiError(400, {"error": "image_urls is required"})
            sources = [self._image_at(u, "image_urls") for u in urls]
            enums = [("size", SIZES, "auto"), ("quality", QUALITIES, "auto")]
        for name, allowed, default in (
            *enums,
            ("background", BACKGROUNDS, "opaque"),
            ("output_format", tuple(FORMATS), "png"),
            ("moderation", MODERATIONS, "auto"),
        ):
            if fields.get(name, default) not in allowed:
                raise _ApiError(400, {"error": f"{name} must be one of {', '.join(allowed)}"})
        compression = fields.get("output_compression", 100)
        if not isinstance(compression, int) or not 1 <= compression <= 100:
            raise _ApiError(400, {"error": "output_compression must be 1-100"})
        region = None
        if fields.get("mask") is not None:
            mask = self._image_at(fields["mask"], "mask")
            if mask.size != sources[0].size:
                raise _ApiError(400, {"error": "mask must have the same dimensions as the image"})
            region = mask_region(mask)
            if region is None:
                raise _ApiError(400, {"error": "mask marks nothing to edit"})

        cost = PRICE[model]
        if self.credits < cost:
            raise _ApiError(406, {"error": f"Not enough credits. Balance: {self.credits}, cost: {cost}"})
        size = fields.get("size", "auto")
        width, height = (1024, 1024) if size == "auto" else (int(v) for v in size.split("x"))
        fmt = fields.get("output_format", "png")
        transparent = fields.get("background") == "transparent"
        source = sources[0] if sources else Image.new("RGB", (width, height), (90, 140, 200))  # text-to-image
        data = await asyncio.to_thread(render, source, region, (width, height), FORMATS[fmt], transparent)
        if rule is not None and rule.fault == Fault.NOT_AN_IMAGE:
            data = b"<html>not an image</html>"
        if rule is not None and rule.fault == Fault.TRUNCATED_IMAGE:
            data = data[: len(data) // 3]
        self.credits -= cost
        headers = {
            "x-remaining-credits": str(self.credits),
            "x-cost": str(cost),
            "x-generation-time": "1.23",
            "x-seed-value": "42",
            "x-request-id": secrets.token_hex(8),
        }
        if self.response_mode == "json-base64":
            return web.json_response({"image": base64.b64encode(data).decode()}, headers=headers)
        if self.response_mode == "json-url":
            path = f"/assets/out-{secrets.token_hex(8)}.{fmt}"
            self.assets[path] = data
            return web.json_response({"output": [f"{self.origin}{path}?signature=abc"]}, headers=headers)
        # Whether Content-Type follows output_format is OPEN; the older page says image/jpeg always.
        content_type = self.image_content_type or f"image/{fmt}"
        return web.Response(body=data, headers=headers, content_type=content_type)

    async def _fault(self, rule: FaultRule, model: str) -> None:
        match rule.fault:
            case Fault.NOT_ENOUGH_CREDITS:
                message = f"Not enough credits. Your balance is $0.01 but this model costs ${PRICE[model]}"
                raise _ApiError(406, {"error": message})
            case Fault.SPEND_LIMIT:
                raise _ApiError(406, {"error": "Team spend limit reached"})
            case Fault.FORBIDDEN:
                raise _ApiError(403, {"error": "This model is not permitted for your team"})
            case Fault.KEY_ECHOED:
                raise _ApiError(403, {"error": f"API key {self.api_key} is not permitted to use {model}"})
            case Fault.RETIRED:
                raise _ApiError(410, {"error": f"Model {model} has been deprecated"})
            case Fault.RATE_LIMITED:
                reset = datetime.now(UTC) + timedelta(seconds=rule.retry_after)
                raise _ApiError(
                    429,
                    {"error": "rate_limit_exceeded", "error_description": "Too many requests"},
                    headers={"x-rate-limit-reset-at-utc": reset.isoformat(timespec="milliseconds")},
                )
            case Fault.SERVER_ERROR:
                raise _ApiError(500, {"error": "Internal Server Error: generation failed"})
            case Fault.GATEWAY_TIMEOUT:
                raise _ApiError(504, "<html><body>504 Gateway Time-out</body></html>")
            case Fault.HANG:
                await self._release.wait()
                raise _ApiError(503, {"error": "the fake was closed while hanging"})
            case Fault.NOT_AN_IMAGE | Fault.TRUNCATED_IMAGE:
                return
        raise AssertionError(f"unhandled fault {rule.fault}")
