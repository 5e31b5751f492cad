"""A fake OpenAI Images API (`POST /v1/images/edits`, plus `GET /v1/models` and the free
`POST /v1/moderations`) on 127.0.0.1 for tests.

It behaves like the real service as described in `providers.md` §1 (§1.9 and §7): it parses the
multipart body, validates what it receives the way the API does and fails with the API's error
shapes, and returns real images (the first input image inverted, tinted per output, resized to the
resolved size and encoded in the requested format) with `usage` and an `x-request-id` header.

Usage::

    async with FakeOpenAI() as fake:
        provider = OpenAIProvider(session, fake.api_key, fake.base_url)
        fake.fail_next(Fault.SERVER_ERROR)          # next request only
        fake.fail_next(Fault.RATE_LIMITED_MS, times=2, retry_after=0.05)
        fake.fail_always(Fault.HANG)                # until clear_faults()
        FakeOpenAI(max_in_flight=5)                 # a 6th edit at once gets an immediate 429
        ...
        fake.requests[-1].fields["model"], fake.post_count

The GPT Image 2 line (models-2026-12.md §3) is validated per model: `gpt-image-2`, `-2.5-flare`,
`-2.5-sunburst`, `-2.6-flare`, `-2.6-sunburst` and the dated snapshots take `auto` or a free `WxH`
size (edges multiples of 16, ratio 1:3 to 3:1, 655,360 to 8,294,400 pixels, no edge over 3840);
2.5 and 2.6 also take quality `xhigh` and `max`; none of them takes `input_fidelity` (sources
disagree, so the fake is strict). The 1.x models keep the three fixed sizes.

Lifecycle, only ever as a test sets it (the fake never reads the date)::

    fake.shutdown_dates = {"gpt-image-2": "2027-02-10"}   # what GET /v1/models reports (raw)
    fake.retire("gpt-image-2")                  # edits answer 404 model_not_found; unlisted
    fake.retire("gpt-image-2", listed=True)     # ... but still listed
    fake.retire("gpt-image-2", status=400)      # ... answering 400 model_not_found (§1.6 hedges it)
    fake.fail_next(Fault.MODELS_ERROR)          # the next GET /v1/models answers 500

Moderation (the free safety check): `fake.flag_text("knife", "violence")`,
`fake.flag_images("sexual", score=0.4)` (`only=` a test on the decoded image),
`fake.fail_next(Fault.MODERATION_ERROR)` / `MODERATION_HANG`;
bodies land in `fake.moderation_requests`, never in `requests`, and are not counted in `post_count`.
More than one image per request is refused (the strict side; the adapter sends one per call).

Deliberate limits (documented, not accidents): only the multipart form is implemented (a JSON body
gets a 400 saying so); `stream=true` is refused; `dall-e-2` and other non-GPT-image models are not
served (404 `model_not_found`). Where the real behaviour is OPEN in the spec, the fake takes the
strict side: `input_fidelity` for `gpt-image-1-mini` and the 2.x models is a 400, and `moderation`
on multipart is an unknown parameter (switch `accept_moderation=True` to model the 2026 reports).
A request without `model` gets `DEFAULT_MODEL`: the documented default (`gpt-image-1.5`) is shut
down and its successor is not documented, so the fake assumes the current line's first model (the
adapter always sends `model`).

One module (over 800 lines) because it is OpenAI's whole edit surface (multipart parsing,
per-model validation, error bodies, rendering, the model listing) in the order a reader checks it
against the spec; each part is small and only this fake uses it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import io
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from aiohttp import BodyPartReader, web
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from tests.fakes._base import FakeServer, FaultRule, free_size_problem

DEFAULT_API_KEY = "sk-test-fake-0123456789abcdef"
# The current line (models-2026-12.md §1) and its dated snapshots.
CURRENT_MODELS = (
    "gpt-image-2",
    "gpt-image-2-2026-04-21",
    "gpt-image-2.5-flare",
    "gpt-image-2.5-flare-2026-09-08",
    "gpt-image-2.5-sunburst",
    "gpt-image-2.5-sunburst-2026-09-08",
    "gpt-image-2.6-flare",
    "gpt-image-2.6-sunburst",
)
# Still served here so that tests written for them keep working: shutdowns are what a test configures.
OLDER_MODELS = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "chatgpt-image-latest")
MODELS = frozenset({*CURRENT_MODELS, *OLDER_MODELS})
DEFAULT_MODEL = "gpt-image-2"  # used when `model` is absent (see the module docstring)
FREE_SIZE_MODELS = frozenset(CURRENT_MODELS)  # `auto` or any WxH within the 2.x rules
XHIGH_MODELS = frozenset(m for m in CURRENT_MODELS if m.startswith(("gpt-image-2.5", "gpt-image-2.6")))
NO_INPUT_FIDELITY = frozenset({"gpt-image-1-mini", *CURRENT_MODELS})
# "2.x reads reference images at high fidelity always" (models-2026-12.md §2): their input images
# are billed at high fidelity (and they refuse `input_fidelity`, above).
HIGH_FIDELITY_MODELS = frozenset(CURRENT_MODELS)

# The status of a retired model's `model_not_found`: 404 as commonly reported, but providers.md §1.6
# does not pin it down, so a test may ask for 400.
RETIRED_STATUSES = frozenset({400, 404})

MAX_IMAGE_BYTES = 50 * 1024 * 1024  # "< 50 MB each"
MAX_MASK_BYTES = 4 * 1024 * 1024  # "< 4 MB"
MAX_IMAGES = 16
MAX_PROMPT = 32_000

SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
QUALITIES = ("low", "medium", "high", "auto")
XHIGH_QUALITIES = ("low", "medium", "high", "xhigh", "max", "auto")
BACKGROUNDS = ("transparent", "opaque", "auto")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
INPUT_FIDELITIES = ("high", "low")
ACCEPTED_MIMES = ("image/png", "image/jpeg", "image/webp")
PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}

KNOWN_FIELDS = frozenset(
    {
        "image",
        "image[]",
        "mask",
        "prompt",
        "model",
        "n",
        "size",
        "quality",
        "background",
        "output_format",
        "output_compression",
        "input_fidelity",
        "stream",
        "partial_images",
        "user",
        "response_format",
    }
)
FILE_FIELDS = frozenset({"image", "image[]", "mask"})

# POST /v1/moderations (free): models, the snapshot `-latest` answers as, the categories it scores.
MODERATION_MODELS = ("omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest")
MODERATION_SNAPSHOT = "omni-moderation-2024-09-26"
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
MODERATION_FLAG_SCORE = 0.5  # the fake's own `flagged` threshold (the real ones are unpublished)
MODERATION_MAX_BODY = 32 * 1024 * 1024
# Output tokens per 1024x1024 image for the 1.x models (OpenAI's published figures for gpt-image-1;
# xhigh and max are stand-ins), scaled by area for other sizes (which reproduces the published
# 1536x1024 figures).
OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160, "xhigh": 8320, "max": 16640}
# The 2.x line bills image output at $30 per 1M tokens (models-2026-12.md §2, "Token rates").
OUTPUT_USD_PER_TOKEN_2X = Decimal(30) / 1_000_000
# models-2026-12.md §2's output price per image, (1024x1024, 1536x1024 / 1024x1536) by quality. The
# fake bills the tokens these prices buy (rounded down, so an image never costs above its list price):
# the published figure at a published size, the square one scaled by area at any other size (no
# formula is published). 2.6 has no table: the upper end of §2's low/medium estimates, its
# non-square column "scaled as above" (as 2.5's).
LIST_PRICES_2X: dict[str, dict[str, tuple[str, str]]] = {
    "gpt-image-2": {"low": ("0.006", "0.005"), "medium": ("0.053", "0.041"), "high": ("0.211", "0.165")},
    "gpt-image-2.5": {
        "low": ("0.006", "0.005"),
        "medium": ("0.013", "0.010"),
        "high": ("0.053", "0.041"),
        "xhigh": ("0.094", "0.074"),
        "max": ("0.211", "0.165"),
    },
    "gpt-image-2.6": {
        "low": ("0.024", "0.020"),
        "medium": ("0.053", "0.041"),
        "high": ("0.053", "0.041"),
        "xhigh": ("0.094", "0.074"),
        "max": ("0.211", "0.165"),
    },
}
OUTPUT_TOKENS_2X = {
    family: {
        quality: tuple(int(Decimal(usd) / OUTPUT_USD_PER_TOKEN_2X) for usd in prices)
        for quality, prices in table.items()
    }
    for family, table in LIST_PRICES_2X.items()
}


class Fault(StrEnum):
    """Failures the fake can be told to produce (see `FakeOpenAI.fail_next`)."""

    MODERATION_BLOCKED = "moderation_blocked"  # 400 image_generation_user_error, after validation
    INVALID_IMAGE = "invalid_image"  # 400 invalid_request_error "Invalid image file or mode"
    UNAUTHORIZED = "unauthorized"  # 401 invalid_api_key
    ORG_VERIFICATION = "org_verification"  # 403 "Your organization must be verified"
    MODEL_NOT_FOUND = "model_not_found"  # 404
    RATE_LIMITED = "rate_limited"  # 429 rate_limit_exceeded + retry-after (seconds)
    RATE_LIMITED_MS = "rate_limited_ms"  # 429 rate_limit_exceeded + retry-after-ms (+ rounded retry-after)
    INSUFFICIENT_QUOTA = "insufficient_quota"  # 429 insufficient_quota, no retry-after
    SERVER_ERROR = "server_error"  # 500
    HANG = "hang"  # never answers (until the fake is closed)
    RESET_AFTER_BODY = "reset_after_body"  # reads the whole body, then aborts the TCP connection
    EMPTY_RESULT = "empty_result"  # 200 whose `data` holds no image (every field but `created` is optional)
    # 200 billed (usage) for every image, but the last item's data is not an image (a broken output).
    UNUSABLE_IMAGE = "unusable_image"
    # The same, but the last image is cut off after its first third: its signature and header are
    # intact, most of its pixel data is missing (an answer truncated on the way).
    TRUNCATED_IMAGE = "truncated_image"
    MODELS_ERROR = "models_error"  # 500 on GET /v1/models (the listing, not the edits)
    MODERATION_ERROR = "moderation_error"  # 500 on POST /v1/moderations
    MODERATION_HANG = "moderation_hang"  # POST /v1/moderations never answers (until closed)


# Every other fault spoils an edit.
_TARGETS = {
    Fault.MODELS_ERROR: "models",
    Fault.MODERATION_ERROR: "moderation",
    Fault.MODERATION_HANG: "moderation",
}
_POST_VALIDATION_FAULTS = frozenset(
    {
        Fault.MODERATION_BLOCKED,
        Fault.INVALID_IMAGE,
        Fault.EMPTY_RESULT,
        Fault.UNUSABLE_IMAGE,
        Fault.TRUNCATED_IMAGE,
    }
)
# How each spoiling fault breaks the last image of an answer.
_SPOILERS: dict[Fault, Callable[[bytes], bytes]] = {
    Fault.UNUSABLE_IMAGE: lambda image: b"\x00" * 64,  # valid base64 of bytes that are no image
    Fault.TRUNCATED_IMAGE: lambda image: image[: len(image) // 3],
}


@dataclass(frozen=True)
class RecordedFile:
    """One file part as received. `format`/`width`/`height`/`mode` are None when it did not decode."""

    part_name: str
    filename: str | None
    content_type: str | None
    size: int
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None


@dataclass
class RecordedRequest:
    """One request as the fake saw it (the Authorization header is never stored)."""

    method: str
    path: str
    headers: dict[str, str]
    authorized: bool
    request_id: str
    part_names: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    files: list[RecordedFile] = field(default_factory=list)
    status: int | None = None
    fault: Fault | None = None
    error_code: str | None = None

    @property
    def images(self) -> list[RecordedFile]:
        return [f for f in self.files if f.part_name in ("image", "image[]")]

    @property
    def mask(self) -> RecordedFile | None:
        return next((f for f in self.files if f.part_name == "mask"), None)


class ApiError(Exception):
    """An OpenAI-shaped error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        error.update(self.extra)
        return {"error": error}


def _invalid_value(param: str, value: str, allowed: Iterable[str]) -> ApiError:
    choices = ", ".join(f"'{a}'" for a in allowed)
    return ApiError(
        400,
        f"Invalid value: '{value}'. Supported values are: {choices}.",
        code="invalid_value",
        param=param,
    )


def _invalid_image(index: int, param: str = "image") -> ApiError:
    return ApiError(
        400,
        f"Invalid image file or mode for image {index}, please check your image file.",
        code="invalid_image_file",
        param=param,
    )


@dataclass
class _Upload:
    part_name: str
    filename: str | None
    content_type: str | None
    data: bytes
    too_large: bool
    record_index: int  # position in `RecordedRequest.files`


@dataclass
class _Decoded:
    format: str
    width: int
    height: int
    mode: str
    has_alpha: bool


# The fake stands in for a service whose image work runs on its own machines: the same input decoded or
# rendered twice costs this process nothing the second time, so a benchmark's burst of identical
# uploads measures the bot, not the fake's Pillow work on the same two CPUs. Results are identical.
RENDER_CACHE = 32


@functools.lru_cache(maxsize=RENDER_CACHE)
def _decode(data: bytes) -> _Decoded | None:
    """Decode image bytes fully (blocking). None when they are not a png/jpeg/webp image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = PIL_FORMATS.get(img.format or "")
            if fmt is None:
                return None
            img.load()
            has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
            return _Decoded(fmt, img.width, img.height, img.mode, has_alpha)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def _moderation_inputs(raw: object, model: str) -> list[list[tuple[str, str]]]:
    """The input as groups of (kind, value): a string, a list of strings (one result each), or one
    multimodal list of `text` / `image_url` parts (one result). Raises ApiError like the API."""
    if isinstance(raw, str):
        return [[("text", raw)]]
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'input' is a required property.", param="input")
    if all(isinstance(item, str) for item in raw):
        return [[("text", item)] for item in raw]
    group: list[tuple[str, str]] = []
    for index, part in enumerate(raw):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            group.append(("text", part["text"]))
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            group.append(("image", _moderation_image(part["image_url"].get("url"), index)))
        else:
            raise ApiError(400, f"Invalid value for 'input[{index}]'.", param=f"input[{index}]")
    images = sum(kind == "image" for kind, _ in group)
    if images and not model.startswith("omni-moderation"):
        raise ApiError(400, f"Model {model} does not support image inputs.", param="input")
    if images > 1:  # the strict side: the adapter sends one image per call
        raise ApiError(400, "Only one image input is supported per request.", param="input")
    return [group]


def _moderation_image(url: object, index: int) -> str:
    """A data URL's image, checked like the API (decodable png/jpeg/webp/gif); http(s) URLs pass."""
    if not isinstance(url, str):
        raise ApiError(400, f"Invalid value for 'input[{index}].image_url.url'.", param=f"input[{index}]")
    if url.startswith(("http://", "https://")):
        return url
    head, _, data = url.partition(",")
    if not (head.startswith("data:image/") and head.endswith(";base64")):
        raise ApiError(
            400, "Invalid image URL: expected a data URL or an http(s) URL.", code="invalid_image_url"
        )
    problem = _data_url_problem(data)
    if problem is not None:
        raise ApiError(400, problem, code="invalid_image_format")
    return url


@functools.lru_cache(maxsize=RENDER_CACHE)
def _data_url_problem(data: str) -> str | None:
    """Why a data URL's base64 is not a usable image, or None (cached like `_decode`)."""
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        return "Invalid base64 image data."
    return None if _decode(raw) is not None else "The image data is not a supported image."


_TINTS = ((0, 0, 0), (255, 64, 64), (64, 255, 64), (64, 64, 255), (255, 255, 64))


@functools.lru_cache(maxsize=RENDER_CACHE)
def _b64(data: bytes) -> bytes:
    """A rendered output as base64 (cached with the render itself)."""
    return base64.b64encode(data)


_B64_SLOT = "\x00b64\x00"  # stands in for each image in the JSON body; JSON escapes it, so it is unique


def _json_with_images(body: dict[str, Any], images: list[bytes]) -> bytes:
    """`body` as JSON with the `_B64_SLOT`s, in order, replaced by `images`' base64 (as a string).

    Base64 needs no JSON escaping: splicing it in as bytes spares the encoder a scan and a copy of
    several MB per answer, CPU the fake would otherwise take from the bot it shares the machine with.
    """
    pieces = json.dumps(body).encode().split(json.dumps(_B64_SLOT).encode())
    assert len(pieces) == len(images) + 1
    out = [pieces[0]]
    for image, piece in zip(images, pieces[1:], strict=True):
        out += [b'"', _b64(image), b'"', piece]
    return b"".join(out)


@functools.lru_cache(maxsize=RENDER_CACHE)
def _render(
    source: bytes, n: int, size: tuple[int, int], output_format: str, transparent: bool
) -> tuple[bytes, ...]:
    """The edited images (blocking): the source inverted, tinted per output, resized, encoded."""
    with Image.open(io.BytesIO(source)) as img:
        base = ImageOps.invert(img.convert("RGB")).resize(size, Image.Resampling.BILINEAR)
    outputs = []
    for i in range(n):
        tint = _TINTS[i % len(_TINTS)]
        out = base if i == 0 else Image.blend(base, Image.new("RGB", size, tint), 0.25)
        if transparent:
            alpha = Image.new("L", size, 255)
            alpha.paste(0, (0, 0, size[0] // 4, size[1] // 4))  # a transparent corner
            out = out.convert("RGBA")
            out.putalpha(ImageChops.multiply(alpha, out.getchannel("A")))
        buf = io.BytesIO()
        if output_format == "png":
            out.save(buf, "PNG", compress_level=1)
        elif output_format == "jpeg":
            out.save(buf, "JPEG", quality=85)
        else:
            out.save(buf, "WEBP", quality=80, method=0)
        outputs.append(buf.getvalue())
    return tuple(outputs)


def _output_tokens(model: str, quality: str, width: int, height: int) -> int:
    """Output image tokens of one `width`x`height` image at `quality` (see `OUTPUT_TOKENS_2X`)."""
    family = next((f for f in ("gpt-image-2.6", "gpt-image-2.5", "gpt-image-2") if model.startswith(f)), None)
    if family is None:
        return math.ceil(OUTPUT_TOKENS[quality] * width * height / 1024**2)
    square, other = OUTPUT_TOKENS_2X[family][quality]
    if sorted((width, height)) == [1024, 1536]:
        return other
    return math.ceil(square * width * height / 1024**2)


def _image_tokens(width: int, height: int, fidelity: str) -> int:
    """Input image tokens, tile-based like OpenAI's vision pricing; high fidelity costs far more."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    tiles = math.ceil(w * scale / 512) * math.ceil(h * scale / 512)
    tokens = 65 + 129 * tiles
    return tokens * 6 if fidelity == "high" else tokens


class FakeOpenAI(FakeServer):
    """The fake server. Start with `async with FakeOpenAI() as fake` or `await fake.start()`.

    Faults apply to edit requests (`POST /v1/images/edits`) only.
    """

    fault_type = Fault
    fault_targets = _TARGETS
    default_target = "edit"
    client_max_size = 1024**2

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        models: Iterable[str] = MODELS,
        retired: Iterable[str] = (),
        delay: float = 0.0,
        accept_moderation: bool = False,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        max_mask_bytes: int = MAX_MASK_BYTES,
        max_images: int = MAX_IMAGES,
        max_in_flight: int | None = None,
        busy_retry_after: float | None = 1.0,
    ) -> None:
        super().__init__(api_key=api_key)
        self.models = set(models)
        self.retired = set(retired)  # answer 404 model_not_found on edits (see `retire`)
        self.listed_retired: set[str] = set()  # retired models GET /v1/models still lists
        self.retired_status: dict[str, int] = {}  # what each retired model answers (404 when unset)
        # What GET /v1/models reports as each model's `shutdown_date` (sent as given; null when absent).
        self.shutdown_dates: dict[str, object] = {}
        self.delay = delay  # seconds to wait before answering (benchmarks); 0 by default
        self.accept_moderation = accept_moderation
        self.max_image_bytes = max_image_bytes
        self.max_mask_bytes = max_mask_bytes
        self.max_images = max_images
        self.requests: list[RecordedRequest] = []
        self.post_count = 0  # edit calls (the paid ones); moderation calls are counted apart
        # Edits worked on at once; one more is refused at once with 429 rate_limit_exceeded (with
        # `retry-after: busy_retry_after` unless None), the way a provider's concurrency cap answers.
        self.max_in_flight = max_in_flight
        self.busy_retry_after = busy_retry_after
        self.in_flight = 0
        self.peak_in_flight = 0
        self.busy_refusals = 0
        self.edits_served = 0  # edit POSTs answered 200 (each one a paid image)
        # POST /v1/moderations: every body received (auth header never kept), and what to flag.
        self.moderation_requests: list[dict[str, Any]] = []
        self.moderation_statuses: list[int] = []
        self._text_flags: dict[str, tuple[str, float]] = {}
        self._image_flag: tuple[str, float, Callable[[Image.Image], bool] | None] | None = None
        self._refuse_images = False

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def retire(self, model: str, *, listed: bool = False, status: int = 404) -> None:
        """Shut `model` down: edits answer `status` `model_not_found`; `GET /v1/models` drops it unless
        `listed` (the listing may lag behind the shutdown).

        `status` is 404 (as commonly reported) or 400: providers.md §1.6 does not pin it down.
        """
        if status not in RETIRED_STATUSES:
            raise ValueError(f"a retired model answers one of {sorted(RETIRED_STATUSES)}, not {status}")
        self.retired.add(model)
        self.retired_status[model] = status
        if listed:
            self.listed_retired.add(model)
        else:
            self.listed_retired.discard(model)

    def flag_text(self, word: str, category: str, score: float = 0.95) -> None:
        """Moderation scores text containing `word` (any case) at `score` for `category`; it is
        `flagged` from `MODERATION_FLAG_SCORE` on (the real thresholds are per category, unpublished)."""
        self._text_flags[word.lower()] = (category, score)

    def flag_images(
        self, category: str, score: float = 0.95, *, only: Callable[[Image.Image], bool] | None = None
    ) -> None:
        """Moderation scores every image (or `only` those it is true of) at `score` for `category`
        (see `flag_text`)."""
        self._image_flag = (category, score, only)

    def refuse_images(self) -> None:
        """Moderation answers every image with the API's 400 for data it cannot read (as for a file
        its decoder refuses that another service's decoder takes)."""
        self._refuse_images = True

    # ------------------------------------------------------------------ request handling

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.path.rstrip("/") == "/v1/moderations":
            return await self._moderation_dispatch(request)
        if request.method == "POST":
            self.post_count += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=headers,
            authorized=request.headers.get("Authorization") == f"Bearer {self.api_key}",
            request_id=f"req_{uuid.uuid4().hex}",
        )
        self.requests.append(record)
        edit = request.method == "POST" and request.path.rstrip("/") == "/v1/images/edits"
        if edit and self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            return await self._busy(request, record)
        self.in_flight += edit
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        started = time.monotonic()
        try:
            try:
                response = await self._handle(request, record)
            except ApiError as err:
                record.error_code = err.code or err.type
                response = web.json_response(err.body(), status=err.status, headers=err.headers)
            except _Aborted:
                record.status = None
                return web.Response(status=500)  # never delivered: the transport is gone
            if self.delay:  # cut short by close() so a test's teardown never waits for it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._release.wait(), self.delay)
        finally:
            self.in_flight -= edit
        if edit and response.status == 200:
            self.edits_served += 1
        response.headers["x-request-id"] = record.request_id
        response.headers["openai-processing-ms"] = str(int((time.monotonic() - started) * 1000))
        response.headers["openai-version"] = "2020-10-01"
        record.status = response.status
        return await self._answer(request, response) if edit else response

    async def _handle(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        path = request.path.rstrip("/")
        if request.method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
            return self._models(request, record, path.removeprefix("/v1/models").lstrip("/"))
        if path != "/v1/images/edits":
            await request.read()
            raise ApiError(404, f"Invalid URL ({request.method} {request.path})")
        if request.method != "POST":
            raise ApiError(405, f"Invalid method for URL ({request.method} {request.path})")

        # Like the real edge, the whole body is read before answering (even errors): answering
        # early would make the client see a broken pipe instead of the status.
        uploads, fields, parse_error = await self._read_form(request, record)

        auth = request.headers.get("Authorization")
        if auth is None:
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if not record.authorized:
            raise ApiError(
                401,
                "Incorrect API key provided: sk-****. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

        rule = self._take("edit")
        if rule is not None:
            record.fault = rule.fault
            if rule.fault not in _POST_VALIDATION_FAULTS:
                await self._raise_fault(rule, request, fields, record)
        if parse_error is not None:
            raise parse_error

        params = await self._validate(uploads, fields, record)
        if rule is not None:
            return await self._raise_fault(rule, request, fields, record, params)
        return await self._respond(params)

    async def _busy(self, request: web.Request, record: RecordedRequest) -> web.Response:
        """Over `max_in_flight`: the body is read (like the real edge), then an immediate 429."""
        async for _ in request.content.iter_chunked(64 * 1024):  # not read(): it caps at 1 MiB
            pass
        self.busy_refusals += 1
        err = ApiError(
            429,
            "Rate limit reached for requests in organization org-fake. Please try again later.",
            type_="requests",
            code="rate_limit_exceeded",
            headers={} if self.busy_retry_after is None else {"retry-after": f"{self.busy_retry_after:g}"},
        )
        record.status, record.error_code = 429, err.code
        response = web.json_response(err.body(), status=429, headers=err.headers)
        response.headers["x-request-id"] = record.request_id
        return response

    def _models(self, request: web.Request, record: RecordedRequest, model: str) -> web.Response:
        """`GET /v1/models[/{model}]` (what `/diagnose` calls): auth checked like the edit route."""
        if request.headers.get("Authorization") is None:
            raise ApiError(401, "You didn't provide an API key.")
        if not record.authorized:
            raise ApiError(401, "Incorrect API key provided: sk-****.", code="invalid_api_key")
        if self._take("models") is not None:
            raise ApiError(
                500, "The server had an error while processing your request.", type_="server_error"
            )
        served = sorted(self.models - (self.retired - self.listed_retired))
        if model and model not in served:
            raise ApiError(404, f"The model '{model}' does not exist", code="model_not_found")
        entries = [
            {
                "id": m,
                "object": "model",
                "created": 1700000000,
                "owned_by": "system",
                "shutdown_date": self.shutdown_dates.get(m),
            }
            for m in served
        ]
        if model:
            return web.json_response(next(e for e in entries if e["id"] == model))
        return web.json_response({"object": "list", "data": entries})

    async def _moderation_dispatch(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/moderations` (free): validated like the API, scored by `flag_text`/`flag_images`."""
        request_id = f"modr_req_{uuid.uuid4().hex}"
        try:
            response = await self._moderate(request)
        except ApiError as err:
            response = web.json_response(err.body(), status=err.status, headers=err.headers)
        response.headers["x-request-id"] = request_id
        self.moderation_statuses.append(response.status)
        return response

    async def _moderate(self, request: web.Request) -> web.Response:
        body, size = await self._read_part_stream(request, MODERATION_MAX_BODY)
        if request.method != "POST":
            raise ApiError(405, f"Invalid method for URL ({request.method} {request.path})")
        if request.headers.get("Authorization") is None:
            raise ApiError(401, "You didn't provide an API key.")
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise ApiError(401, "Incorrect API key provided: sk-****.", code="invalid_api_key")
        if size > MODERATION_MAX_BODY:
            raise ApiError(413, "Request body too large.", type_="invalid_request_error")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "We could not parse the JSON body of your request.")
        self.moderation_requests.append(payload)
        rule = self._take("moderation")
        if rule is not None and rule.fault == Fault.MODERATION_HANG:
            await self._release.wait()
            raise ApiError(503, "The fake was closed while hanging.", type_="server_error")
        if rule is not None:
            raise ApiError(
                500, "The server had an error while processing your request.", type_="server_error"
            )
        model = payload.get("model", MODERATION_MODELS[0])
        if model not in MODERATION_MODELS:
            raise ApiError(400, f"Invalid value for 'model': '{model}'.", param="model", code="invalid_value")
        inputs = _moderation_inputs(payload.get("input"), model)
        if self._refuse_images and any(kind == "image" for group in inputs for kind, _ in group):
            raise ApiError(400, "The image data is not a supported image.", code="invalid_image_format")
        unknown = sorted(set(payload) - {"model", "input"})
        if unknown:
            raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}")
        results = [self._score(group) for group in inputs]
        return web.json_response(
            {"id": f"modr-{uuid.uuid4().hex[:24]}", "model": MODERATION_SNAPSHOT, "results": results}
        )

    @staticmethod
    async def _read_part_stream(request: web.Request, limit: int) -> tuple[bytes, int]:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
        return b"".join(chunks), size

    def _score(self, group: list[tuple[str, str]]) -> dict[str, Any]:
        """One result for a group of inputs (a multimodal array is one group)."""
        scores = dict.fromkeys(MODERATION_CATEGORIES, 0.0001)
        applied: dict[str, list[str]] = {c: [] for c in MODERATION_CATEGORIES}
        for kind, value in group:
            hits: list[tuple[str, float]] = []
            if kind == "text":
                hits = [hit for word, hit in self._text_flags.items() if word in value.lower()]
            elif self._image_flag is not None:
                category, score, only = self._image_flag
                if only is None or (value.startswith("data:") and only(_data_url_image(value))):
                    hits = [(category, score)]
            for category, score in hits:
                scores[category] = max(scores[category], score)
                applied[category].append(kind)
        categories = {c: scores[c] >= MODERATION_FLAG_SCORE for c in MODERATION_CATEGORIES}
        return {
            "flagged": any(categories.values()),
            "categories": categories,
            "category_scores": scores,
            "category_applied_input_types": applied,
        }

    async def _read_form(
        self, request: web.Request, record: RecordedRequest
    ) -> tuple[list[_Upload], dict[str, str], ApiError | None]:
        """Read the whole body; return the parts and the first error found while parsing."""
        if not request.content_type.startswith("multipart/"):
            await request.read()
            if request.content_type == "application/json":
                return [], {}, ApiError(400, "This fake only implements the multipart/form-data edit form.")
            return (
                [],
                {},
                ApiError(
                    400,
                    f"Invalid Content-Type header ({request.content_type}), expected multipart/form-data.",
                ),
            )
        uploads: list[_Upload] = []
        fields: dict[str, str] = {}
        error: ApiError | None = None
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader) or part.name is None:
                    await part.release()
                    error = error or ApiError(400, "Could not parse multipart form")
                    continue
                name = part.name
                record.part_names.append(name)
                limit = self.max_mask_bytes if name == "mask" else self.max_image_bytes
                data, size = await self._read_part(part, limit)
                if part.filename is not None:
                    content_type = part.headers.get("Content-Type")
                    uploads.append(
                        _Upload(name, part.filename, content_type, data, size >= limit, len(record.files))
                    )
                    record.files.append(
                        RecordedFile(name, part.filename, part.headers.get("Content-Type"), size)
                    )
                    if name not in FILE_FIELDS and name in KNOWN_FIELDS:
                        error = error or ApiError(
                            400,
                            f"Invalid type for '{name}': expected a string, but got a file instead.",
                            code="invalid_type",
                            param=name,
                        )
                else:
                    try:
                        value = data.decode(part.get_charset("utf-8"))
                    except (UnicodeDecodeError, LookupError):
                        value = data.decode("utf-8", "replace")
                    fields[name] = value
                    record.fields[name] = value
                    if name in FILE_FIELDS:
                        index = "[0]" if name != "mask" else ""
                        error = error or ApiError(
                            400,
                            f"Invalid type for '{name}{index}': expected a file, but got a string instead.",
                            code="invalid_type",
                            param=f"{name}{index}",
                        )
        except ValueError:  # malformed multipart (bad boundary, truncated body)
            await request.read()
            error = error or ApiError(400, "Could not parse multipart form")
        return uploads, fields, error

    @staticmethod
    async def _read_part(part: BodyPartReader, limit: int) -> tuple[bytes, int]:
        """Read one part; return its first `limit + 1` bytes (the rest is read and dropped) and its size.

        The limits are strict ("< 50 MB"), so a part of exactly `limit` bytes is too large.
        """
        chunks: list[bytes] = []
        size = 0
        while chunk := await part.read_chunk(256 * 1024):
            if size <= limit:
                chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)[: limit + 1], size

    async def _raise_fault(
        self,
        rule: FaultRule,
        request: web.Request,
        fields: dict[str, str],
        record: RecordedRequest,
        params: _Params | None = None,
    ) -> web.Response:
        """Produce the switched-on failure: raises `ApiError`/`_Aborted`, or returns a bad 200."""
        model = fields.get("model", DEFAULT_MODEL)
        match rule.fault:
            case Fault.MODERATION_BLOCKED:
                raise ApiError(
                    400,
                    "Your request was rejected by the safety system. If you believe this is an error, "
                    f"contact us at help.openai.com and include the request ID {record.request_id}. "
                    "safety_violations=[sexual].",
                    type_="image_generation_user_error",
                    code="moderation_blocked",
                    param=None,
                    extra={"moderation_details": {"moderation_stage": "input", "categories": ["sexual"]}},
                )
            case Fault.INVALID_IMAGE:
                raise _invalid_image(1)
            case Fault.UNAUTHORIZED:
                raise ApiError(
                    401,
                    "Incorrect API key provided: sk-****. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    code="invalid_api_key",
                )
            case Fault.ORG_VERIFICATION:
                raise ApiError(
                    403,
                    f"Your organization must be verified to use the model `{model}`. Please go to: "
                    "https://platform.openai.com/settings/organization/general and click on Verify "
                    "Organization.",
                )
            case Fault.MODEL_NOT_FOUND:
                raise ApiError(
                    404,
                    f"The model `{model}` does not exist or you do not have access to it.",
                    code="model_not_found",
                )
            case Fault.RATE_LIMITED:
                raise ApiError(
                    429,
                    "Rate limit exceeded for images per minute in organization org-fake. Limit: 5/1min. "
                    f"Current: 6/1min. Please try again in {rule.retry_after:g}s.",
                    type_="requests",
                    code="rate_limit_exceeded",
                    headers={"retry-after": f"{rule.retry_after:g}", **self._ratelimit_headers()},
                )
            case Fault.RATE_LIMITED_MS:
                raise ApiError(
                    429,
                    "Rate limit exceeded for images per minute in organization org-fake. Limit: 5/1min. "
                    "Current: 6/1min.",
                    type_="requests",
                    code="rate_limit_exceeded",
                    headers={
                        "retry-after-ms": str(round(rule.retry_after * 1000)),
                        "retry-after": str(max(1, math.ceil(rule.retry_after))),
                        **self._ratelimit_headers(),
                    },
                )
            case Fault.INSUFFICIENT_QUOTA:
                raise ApiError(
                    429,
                    "You exceeded your current quota, please check your plan and billing details.",
                    type_="insufficient_quota",
                    code="insufficient_quota",
                )
            case Fault.SERVER_ERROR:
                raise ApiError(
                    500,
                    "The server had an error while processing your request. Sorry about that!",
                    type_="server_error",
                )
            case Fault.HANG:
                await self._release.wait()
                raise ApiError(503, "The fake was closed while hanging.", type_="server_error")
            case Fault.RESET_AFTER_BODY:
                if request.transport is not None:
                    request.transport.abort()
                raise _Aborted
            case Fault.EMPTY_RESULT:
                return web.json_response({"created": int(time.time()), "data": []})
            case Fault.UNUSABLE_IMAGE | Fault.TRUNCATED_IMAGE:
                assert params is not None
                return await self._respond(params, spoil_last=_SPOILERS[rule.fault])
        raise AssertionError(f"unhandled fault {rule.fault}")

    @staticmethod
    def _ratelimit_headers() -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": "5",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "12s",
        }

    async def _validate(
        self, uploads: list[_Upload], fields: dict[str, str], record: RecordedRequest
    ) -> _Params:
        """Validate like the API and return the resolved parameters (raises `ApiError`)."""
        model = fields.get("model", DEFAULT_MODEL)
        if model not in self.models:
            raise ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if model in self.retired:
            raise ApiError(
                self.retired_status.get(model, 404),
                f"The model `{model}` has been deprecated, learn more here: "
                "https://platform.openai.com/docs/deprecations",
                code="model_not_found",
            )
        for name in list(fields) + [u.part_name for u in uploads]:
            if name == "moderation" and self.accept_moderation:
                continue
            if name not in KNOWN_FIELDS:
                raise ApiError(400, f"Unknown parameter: '{name}'.", code="unknown_parameter", param=name)

        prompt = fields.get("prompt")
        if not prompt:
            raise ApiError(
                400,
                "Missing required parameter: 'prompt'.",
                code="missing_required_parameter",
                param="prompt",
            )
        if len(prompt) > MAX_PROMPT:
            raise ApiError(
                400,
                f"Invalid 'prompt': string too long. Expected a string with maximum length {MAX_PROMPT}, "
                f"but got a string with length {len(prompt)} instead.",
                code="string_above_max_length",
                param="prompt",
            )
        n = self._int_field(fields, "n", 1, 1, 10)
        if model in FREE_SIZE_MODELS:
            size = fields.get("size", "auto")
            problem = free_size_problem(size)
            if problem is not None:
                raise ApiError(
                    400,
                    f"Invalid value: '{size}'. The size {problem} (or be 'auto').",
                    code="invalid_value",
                    param="size",
                )
        else:
            size = self._enum(fields, "size", SIZES, "auto")
        quality = self._enum(
            fields, "quality", XHIGH_QUALITIES if model in XHIGH_MODELS else QUALITIES, "auto"
        )
        background = self._enum(fields, "background", BACKGROUNDS, "auto")
        output_format = self._enum(fields, "output_format", OUTPUT_FORMATS, "png")
        self._int_field(fields, "output_compression", 100, 0, 100)
        self._int_field(fields, "partial_images", 0, 0, 3)
        fidelity = fields.get("input_fidelity")
        if fidelity is not None:
            if model in NO_INPUT_FIDELITY:
                raise ApiError(
                    400,
                    f"The 'input_fidelity' parameter is not supported for model '{model}'.",
                    code="unsupported_parameter",
                    param="input_fidelity",
                )
            self._enum(fields, "input_fidelity", INPUT_FIDELITIES, "low")
        if background == "transparent" and output_format == "jpeg":
            raise ApiError(
                400,
                "Transparent background is not supported for output format 'jpeg'. Use 'png' or 'webp'.",
                code="invalid_value",
                param="background",
            )
        if fields.get("stream", "false").lower() not in ("false", "0"):
            raise ApiError(400, "This fake does not implement streaming.", param="stream")
        if "response_format" in fields:
            raise ApiError(
                400,
                f"The 'response_format' parameter is not supported for model '{model}'.",
                code="unsupported_parameter",
                param="response_format",
            )

        images = [u for u in uploads if u.part_name in ("image", "image[]")]
        if not images:
            raise ApiError(
                400, "Missing required parameter: 'image'.", code="missing_required_parameter", param="image"
            )
        if len(images) > self.max_images:
            raise ApiError(
                400,
                f"Invalid 'image': array too long. Expected an array with maximum length "
                f"{self.max_images}, but got an array with length {len(images)} instead.",
                code="array_above_max_length",
                param="image",
            )
        decoded: list[_Decoded] = []
        for index, upload in enumerate(images, start=1):
            decoded.append(await self._check_file(upload, index, "image", record))
        masks = [u for u in uploads if u.part_name == "mask"]
        if len(masks) > 1:
            raise ApiError(400, "Only one 'mask' may be provided.", param="mask")
        if masks:
            mask = await self._check_file(masks[0], 1, "mask", record)
            if mask.format != "png" or not mask.has_alpha:
                raise _invalid_image(1, param="mask")
            if (mask.width, mask.height) != (decoded[0].width, decoded[0].height):
                raise ApiError(
                    400,
                    "Invalid mask image: the mask must have the same dimensions as the image "
                    f"({decoded[0].width}x{decoded[0].height}), got {mask.width}x{mask.height}.",
                    code="invalid_image_file",
                    param="mask",
                )
        return _Params(
            model=model,
            prompt=prompt,
            n=n,
            size=size,
            quality=quality,
            background=background,
            output_format=output_format,
            input_fidelity="high" if model in HIGH_FIDELITY_MODELS else fidelity or "low",
            source=images[0].data,
            inputs=[(d.width, d.height) for d in decoded],
        )

    async def _check_file(self, upload: _Upload, index: int, param: str, record: RecordedRequest) -> _Decoded:
        """Check one uploaded file's size, declared type and bytes; note what it decoded to."""
        if upload.too_large:
            limit = self.max_mask_bytes if param == "mask" else self.max_image_bytes
            raise ApiError(
                400,
                f"Invalid file '{param}': file too large. Maximum size is {limit} bytes.",
                code="file_too_large" if param == "image" else "invalid_image_file",
                param=param,
            )
        mime = (upload.content_type or "").split(";")[0].strip().lower()
        if mime not in ACCEPTED_MIMES:
            raise ApiError(
                400,
                f"Invalid file '{param}': unsupported mimetype ('{mime or 'none'}'). Supported file formats "
                "are 'image/jpeg', 'image/png', and 'image/webp'.",
                code="unsupported_file_mimetype",
                param=param,
            )
        decoded = await asyncio.to_thread(_decode, upload.data)
        if decoded is None:
            raise _invalid_image(index, param=param)
        recorded = record.files[upload.record_index]
        record.files[upload.record_index] = dataclasses.replace(
            recorded, format=decoded.format, width=decoded.width, height=decoded.height, mode=decoded.mode
        )
        return decoded

    @staticmethod
    def _enum(fields: dict[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
        value = fields.get(name, default)
        if value not in allowed:
            raise _invalid_value(name, value, allowed)
        return value

    @staticmethod
    def _int_field(fields: dict[str, str], name: str, default: int, low: int, high: int) -> int:
        raw = fields.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(
                400,
                f"Invalid type for '{name}': expected an integer, but got a string instead.",
                code="invalid_type",
                param=name,
            ) from None
        if value < low:
            raise ApiError(
                400,
                f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
                f"but got {value} instead.",
                code="integer_below_min_value",
                param=name,
            )
        if value > high:
            raise ApiError(
                400,
                f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
                f"but got {value} instead.",
                code="integer_above_max_value",
                param=name,
            )
        return value

    async def _respond(
        self, params: _Params, *, spoil_last: Callable[[bytes], bytes] | None = None
    ) -> web.Response:
        size = "1024x1024" if params.size == "auto" else params.size
        quality = "medium" if params.quality == "auto" else params.quality
        transparent = params.background == "transparent"
        width, height = (int(v) for v in size.split("x"))
        outputs = await asyncio.to_thread(
            _render, params.source, params.n, (width, height), params.output_format, transparent
        )
        text_tokens = max(1, math.ceil(len(params.prompt) / 4))
        image_tokens = sum(_image_tokens(w, h, params.input_fidelity) for w, h in params.inputs)
        output_tokens = _output_tokens(params.model, quality, width, height) * params.n
        body = {
            "created": int(time.time()),
            "background": "transparent" if transparent else "opaque",
            "data": [{"b64_json": _B64_SLOT} for _ in outputs],
            "output_format": params.output_format,
            "quality": quality,
            "size": size,
            "usage": {
                "total_tokens": text_tokens + image_tokens + output_tokens,
                "input_tokens": text_tokens + image_tokens,
                "output_tokens": output_tokens,
                "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
                "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
            },
        }
        images = list(outputs)
        if spoil_last is not None:
            images[-1] = spoil_last(images[-1])
        # BytesIO: several MB of base64 as raw bytes would be written in one blocking call.
        return web.Response(body=io.BytesIO(_json_with_images(body, images)), content_type="application/json")


class _Aborted(Exception):
    """The connection was dropped on purpose; there is nothing to answer."""


@dataclass(frozen=True)
class _Params:
    model: str
    prompt: str
    n: int
    size: str
    quality: str
    background: str
    output_format: str
    input_fidelity: str
    source: bytes
    inputs: list[tuple[int, int]]


def _data_url_image(url: str) -> Image.Image:
    """The image a `data:` URL carries (`_moderation_image` has checked that it decodes)."""
    return Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2])))
