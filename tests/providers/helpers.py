"""Helpers the provider contract tests share: test images, request and adapter builders, a fast policy."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from PIL import Image

from bot.providers.base import EditRequest, EditResult, InputImage, Provider
from bot.providers.errors import ProviderTimeout
from bot.providers.http import RetryPolicy

DATA = Path(__file__).resolve().parent.parent / "data"
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, jitter=0.25, max_retry_after=5.0)
FAST_POLLING = {"poll_interval": 0.01, "max_poll_interval": 0.02}  # for the submit-then-poll adapters
MIMES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def input_image(data: bytes) -> InputImage:
    with Image.open(io.BytesIO(data)) as img:
        return InputImage(data=data, mime=MIMES[img.format or ""], width=img.width, height=img.height)


def photo(name: str = "astronaut.png") -> InputImage:
    """A test photo from `tests/data` (the astronaut is 512x512)."""
    return input_image((DATA / name).read_bytes())


def hole_mask(hole: tuple[int, int, int, int], colour: tuple[int, int, int]) -> InputImage:
    """An OpenAI-convention mask for the 512x512 photo: opaque `colour`, fully transparent in `hole`."""
    img = Image.new("RGBA", (512, 512), (*colour, 255))
    img.paste((*colour, 0), hole)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return InputImage(data=buf.getvalue(), mime="image/png", width=512, height=512)


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def body(**fields: object) -> bytes:
    """A JSON error body, for the classifier tables."""
    return json.dumps(fields).encode()


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Wait for `condition` (something a fake or the clock does), polling, failing after `timeout`."""
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


class HoldsAnswers(Protocol):
    """A fake that can send a 200's status line and half its body, then hold the rest (tests/fakes/_base)."""

    answers_held: int

    def hold_answers(self) -> None: ...
    def release_answers(self) -> None: ...
    def fail_next(self, fault: Any) -> None: ...


async def edit_with_its_body_held_past_the_deadline(
    fake: HoldsAnswers, provider: Provider, request: EditRequest
) -> EditResult:
    """`provider.edit(request)`, whose 200 (the result, made and billed) `fake` holds halfway until past
    the job's deadline: checked to be still reading, inside its grace (not cut off, not `overdue`),
    then let through. The result the edit returned."""
    fake.hold_answers()
    run = asyncio.create_task(provider.edit(request))
    await until(lambda: fake.answers_held == 1)  # the 200 and half its body are in; the rest is not
    await until(lambda: time.monotonic() > request.deadline + 0.3)
    assert not run.done() and not request.overdue()  # still reading, inside its grace
    fake.release_answers()
    return await run


async def error_with_its_body_held_past_the_deadline(
    fake: HoldsAnswers, provider: Provider, request: EditRequest, fault: Any
) -> ProviderTimeout:
    """`provider.edit(request)` whose answer is `fault`, its body held past the deadline: only a 200's
    body is a finished result, so this is a timeout at the deadline. The timeout raised."""
    fake.hold_answers()
    fake.fail_next(fault)
    try:
        await provider.edit(request)
    except ProviderTimeout as exc:
        assert fake.answers_held == 1
        return exc
    finally:
        fake.release_answers()
    raise AssertionError("an error's body held past the deadline was not a timeout")


def request_builder(
    *, prompt: str, model: str, seconds: float = 30.0, **defaults: object
) -> Callable[..., EditRequest]:
    """`edit_request(images=None, **fields)` for one vendor's tests: the astronaut, `prompt`,
    `model` and `defaults` unless given, and a deadline `seconds` from the call."""

    def edit_request(images: tuple[InputImage, ...] | None = None, **kw: Any) -> EditRequest:
        kw.setdefault("deadline", time.monotonic() + seconds)
        for name, value in defaults.items():
            kw.setdefault(name, value)
        return EditRequest(
            images=images or (photo(),),
            prompt=str(kw.pop("prompt", prompt)),
            model=str(kw.pop("model", model)),
            **kw,
        )

    return edit_request


def adapter_builder(
    adapter: Callable[..., Any], fake: Any, session: aiohttp.ClientSession, **defaults: object
) -> Callable[..., Any]:
    """`make_provider(**kw)`: `adapter` pointed at `fake` with its key, the FAST policy, 5 s calls
    and `defaults`; any of them can be overridden (`api_key=`, `base_url=`, ...)."""

    def make(**kw: Any) -> Any:
        for name, value in {"policy": FAST, "call_timeout": 5.0, **defaults}.items():
            kw.setdefault(name, value)
        api_key = str(kw.pop("api_key", fake.api_key))
        base_url = str(kw.pop("base_url", fake.base_url))
        return adapter(session, api_key, base_url, **kw)

    return make
