"""What the fake provider servers share: a lifecycle on 127.0.0.1, fault switches, and small helpers.

A fake subclasses `FakeServer`, sends every request through its own `_dispatch`, and says which of
its requests each fault applies to (`fault_targets`). Everything a vendor's API is made of (routes,
validation, error bodies, the "edit" it renders) stays in that fake's module, like the vendor quirks
in the adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Self

from aiohttp import BodyPartReader, web
from PIL import Image, UnidentifiedImageError

WEB_FORMATS = ("PNG", "JPEG", "WEBP")


@dataclass
class FaultRule:
    """A switched-on failure: how many more requests it spoils (None = until cleared)."""

    fault: StrEnum
    remaining: int | None
    retry_after: float


class Gone(StrEnum):
    """How a reseller fake answers a submit for a route told to be gone (`FakeServer.retire_route`).

    models-2026-12.md §1: resellers say nothing about their routes after OpenAI's shutdown; gateways
    answer a 404 or 410 for the model, or a 503 "no available channels".
    """

    NOT_FOUND = "not_found"  # 404 "model ... not found"
    GONE = "gone"  # 410 "model ... is no longer available"
    NO_CHANNELS = "no_channels"  # 503 "no available channels for model ..."


GONE_ANSWERS = {
    Gone.NOT_FOUND: (404, "model {model} not found"),
    Gone.GONE: (410, "model {model} is no longer available (retired)"),
    Gone.NO_CHANNELS: (503, "no available channels for model {model}"),
}


def free_size_problem(size: str) -> str | None:
    """Why `size` breaks OpenAI's GPT Image 2.x size rules (models-2026-12.md §3), or None if it is fine.

    `auto`, or `WxH` with both edges multiples of 16, a ratio between 1:3 and 3:1, 655,360 to
    8,294,400 pixels and no edge over 3840.
    """
    if size == "auto":
        return None
    width, sep, height = size.partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) == 0 or int(height) == 0:
        return "must be auto or WIDTHxHEIGHT"
    w, h = int(width), int(height)
    if w % 16 or h % 16:
        return "both edges must be multiples of 16"
    if max(w, h) > 3 * min(w, h):
        return "the aspect ratio must be between 1:3 and 3:1"
    if not 655_360 <= w * h <= 8_294_400:
        return "the image must have between 655,360 and 8,294,400 pixels"
    if max(w, h) > 3840:
        return "the longest edge must be at most 3840"
    return None


class FakeServer:
    """The lifecycle (`async with`, `start`/`close`) and fault bookkeeping of one fake API."""

    fault_type: ClassVar[type[StrEnum]]  # the fake's `Fault` enum
    fault_targets: ClassVar[Mapping[StrEnum, str]] = {}  # which requests a fault spoils
    default_target: ClassVar[str]  # ... when `fault_targets` does not name it
    client_max_size: ClassVar[int] = 64 * 1024**2  # the largest body aiohttp will read

    def __init__(self, *, api_key: str) -> None:
        self.api_key = api_key
        self.gone_routes: dict[str, Gone] = {}  # route (model id) -> how its submits answer
        self._faults: list[FaultRule] = []
        self._release = asyncio.Event()  # set by `close()`: requests held by a HANG fault give up
        self._outputs_open = asyncio.Event()  # cleared by `hold_outputs`: result downloads wait
        self._outputs_open.set()
        self._answers_open = asyncio.Event()  # cleared by `hold_answers`: paid calls' bodies wait
        self._answers_open.set()
        self.answers_held = 0  # answers whose status line and headers went out with their body held
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Self:
        app = web.Application(client_max_size=self.client_max_size)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def close(self) -> None:
        """Stop serving. Requests stuck in a HANG fault are released first."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake is not started")
        return self._port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ fault switches

    def fail_next(self, fault: StrEnum | str, times: int = 1, *, retry_after: float = 1.0) -> None:
        """Make the next `times` requests the fault applies to fail with it (rules queue in order).

        `retry_after` is the hint sent with a rate-limit fault (fractions keep tests fast).
        """
        self._faults.append(FaultRule(self.fault_type(fault), times, retry_after))

    def fail_always(self, fault: StrEnum | str, *, retry_after: float = 1.0) -> None:
        """Make every request the fault applies to fail with it until `clear_faults()`."""
        self._faults.append(FaultRule(self.fault_type(fault), None, retry_after))

    def clear_faults(self) -> None:
        self._faults.clear()

    def hold_outputs(self) -> None:
        """Keep every download of a result waiting, unanswered, until `release_outputs` (or the fake
        closes): a slow CDN, for a job whose result is still coming when its deadline passes."""
        self._outputs_open.clear()

    def release_outputs(self) -> None:
        self._outputs_open.set()

    def hold_answers(self) -> None:
        """Send each paid call's answer (a synchronous one: the image itself) the way a slow link
        delivers a large body: its status line, headers and the first half of its body at once, the
        rest only at `release_answers` (or when the fake closes)."""
        self._answers_open.clear()

    def release_answers(self) -> None:
        self._answers_open.set()

    async def _answer(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """`response`, its body held halfway while answers are held (`hold_answers`)."""
        if self._answers_open.is_set() or not isinstance(response, web.Response) or response.body is None:
            return response
        raw = response.body
        body = raw if isinstance(raw, bytes) else await raw.as_bytes()
        streamed = web.StreamResponse(status=response.status, headers=response.headers)
        streamed.content_length = len(body)
        await streamed.prepare(request)
        await streamed.write(body[: len(body) // 2])
        self.answers_held += 1
        await self._until_open(self._answers_open)
        with contextlib.suppress(ConnectionResetError):  # the client gave up meanwhile
            await streamed.write(body[len(body) // 2 :])
            await streamed.write_eof()
        return streamed

    async def _until_open(self, gate: asyncio.Event) -> None:
        """Wait until `gate` is set or the fake closes."""
        waits = {asyncio.ensure_future(event.wait()) for event in (gate, self._release)}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _output_gate(self) -> None:
        """Where a result download waits while outputs are held."""
        if not self._outputs_open.is_set():
            await self._until_open(self._outputs_open)

    def retire_route(self, route: str, how: Gone | str = Gone.NOT_FOUND) -> None:
        """From now on, every submit for `route` answers "model gone" in the way `how` says
        (nothing is created). Polls of jobs already accepted are not affected."""
        self.gone_routes[route] = Gone(how)

    def gone_answer(self, route: str) -> tuple[int, str] | None:
        """`(status, message)` for a submit of a retired route, or None while it is served."""
        how = self.gone_routes.get(route)
        if how is None:
            return None
        status, message = GONE_ANSWERS[how]
        return status, message.format(model=route)

    def _take(self, target: str) -> FaultRule | None:
        """The first rule for `target` requests, used up by one (None when no fault applies)."""
        for index, rule in enumerate(self._faults):
            if self.fault_targets.get(rule.fault, self.default_target) == target:
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._faults.pop(index)
                return rule
        return None


class HttpError(Exception):
    """An error answer; each fake writes it in its vendor's error body."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# ----------------------------------------------------------------------------- request bodies


def json_object(request: web.Request, body: bytes, record: Any) -> dict[str, Any]:
    """The JSON object a submit must carry (kept in `record.json`); an `HttpError` 400 otherwise."""
    if request.content_type != "application/json":
        raise HttpError(400, "Content-Type must be application/json")
    try:
        payload = json.loads(body)
    except ValueError:
        raise HttpError(400, "invalid JSON body") from None
    record.json = payload
    if not isinstance(payload, dict):
        raise HttpError(400, "the body must be a JSON object")
    return payload


@dataclass(frozen=True)
class FilePart:
    name: str
    filename: str
    data: bytes
    content_type: str


async def read_file_parts(request: web.Request, names: list[str] | None = None) -> list[FilePart]:
    """The file parts of a multipart body, in order (other parts are read and dropped).

    A body of any other type is read and dropped (no parts). `names`, when given, gets each file
    part's name as it is read, so a request record shows what arrived even if reading fails later.
    """
    if not request.content_type.startswith("multipart/"):
        await request.read()
        return []
    parts: list[FilePart] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        data = await part.read()
        if part.filename is not None:
            if names is not None:
                names.append(part.name or "")
            parts.append(FilePart(part.name or "", part.filename, data, part.headers.get("Content-Type", "")))
    return parts


# ----------------------------------------------------------------------------- images


def decode_image(data: bytes, formats: tuple[str, ...] = WEB_FORMATS) -> Image.Image | None:
    """The image in `data`, fully loaded (blocking); None unless it decodes as one of `formats`."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    return img if img.format in formats else None


def mask_region(mask: Image.Image) -> Image.Image | None:
    """The edit region ("L", 255 = edit) of an alpha or a white = edit mask; None if it marks nothing.

    A mask with fully transparent pixels is read as alpha (transparent = edit, colours ignored);
    an opaque one as black and white (white = edit).
    """
    rgba = mask.convert("RGBA")
    region = rgba.getchannel("A").point(lambda a: 255 if a == 0 else 0)
    if region.getbbox() is None:
        region = rgba.convert("L").point(lambda v: 255 if v >= 128 else 0)
    return region if region.getbbox() is not None else None


def edited(
    source: Image.Image, region: Image.Image | None, effect: Callable[[Image.Image], Image.Image]
) -> Image.Image:
    """A fake's "edit" (blocking): `effect` applied to the RGB source, inside `region` only when given."""
    rgb = source.convert("RGB")
    out = effect(rgb)
    if region is not None:
        out = Image.composite(out, rgb, region.resize(rgb.size))
    return out


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    """`img` saved as `fmt` (PIL's name), quickly: PNG barely compressed, others at quality 85."""
    buf = io.BytesIO()
    img.save(buf, fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 85}))
    return buf.getvalue()
