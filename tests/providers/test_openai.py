"""Contract tests: `OpenAIProvider` against the fake OpenAI Images API over real sockets."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from datetime import date
from decimal import Decimal

import aiohttp
import pytest
from PIL import Image

from bot.catalog import Route, load_catalog
from bot.domain.options import Usage
from bot.providers.atlascloud import AtlasCloudProvider
from bot.providers.base import InputImage, ListedModel
from bot.providers.errors import (
    ConnectionFailed,
    InvalidInput,
    ModelGone,
    ModelUnavailable,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)
from bot.providers.openai import (
    OpenAIProvider,
    _health_from_error,
    classify_openai_error,
    parse_model_list,
    parse_usage,
)
from bot.routing import Router
from bot.routing.rules import Needs, route_reserve_usd
from tests.fakes.atlascloud_server import FakeAtlas
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.fixtures import serving
from tests.providers.helpers import (
    DATA,
    FAST,
    FAST_POLLING,
    adapter_builder,
    closed_port,
    decoded,
    edit_with_its_body_held_past_the_deadline,
    error_with_its_body_held_past_the_deadline,
    input_image,
    photo,
    request_builder,
)


def png(size: tuple[int, int], mode: str = "RGBA", hole: bool = True) -> bytes:
    """A PNG of `size`; for RGBA, opaque with a fully transparent rectangle (the area to edit)."""
    color = (0, 0, 0, 255) if mode == "RGBA" else (0, 0, 0)
    img = Image.new(mode, size, color)
    if hole and mode == "RGBA":
        img.paste((0, 0, 0, 0), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


edit_request = request_builder(
    prompt="make it look like a watercolour", model="gpt-image-1-mini", seconds=60.0
)


fake = serving(FakeOpenAI)


@pytest.fixture
def make_provider(fake: FakeOpenAI, session: aiohttp.ClientSession) -> Callable[..., OpenAIProvider]:
    return adapter_builder(OpenAIProvider, fake, session)


# ----------------------------------------------------------------------------- happy path


async def test_single_image_edit_sends_exactly_the_documented_multipart_fields(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    result = await provider.edit(edit_request(quality="low", size="1024x1536", user_hash="u-1f2e"))

    rec = fake.requests[-1]
    assert rec.authorized
    assert "Authorization" not in rec.headers and "authorization" not in rec.headers
    assert rec.part_names == [
        "model",
        "prompt",
        "image[]",
        "n",
        "size",
        "quality",
        "background",
        "output_format",
        "user",
    ]
    assert rec.fields == {
        "model": "gpt-image-1-mini",
        "prompt": "make it look like a watercolour",
        "n": "1",
        "size": "1024x1536",
        "quality": "low",
        "background": "auto",
        "output_format": "png",
        "user": "u-1f2e",
    }
    (image,) = rec.images
    assert (image.filename, image.content_type, image.format) == ("image-1.png", "image/png", "png")
    assert (image.width, image.height) == (512, 512)
    assert rec.status == 200
    assert result.provider == "openai"
    assert (result.quality, result.size) == ("low", "1024x1536")


async def test_four_images_are_sent_as_image_array_parts_with_their_sniffed_types(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    images = tuple(photo(n) for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"))

    await provider.edit(edit_request(images))

    rec = fake.requests[-1]
    assert [f.part_name for f in rec.images] == ["image[]"] * 4
    assert [f.content_type for f in rec.images] == ["image/png"] * 3 + ["image/jpeg"]
    assert [f.format for f in rec.images] == ["png", "png", "png", "jpeg"]
    assert [f.filename for f in rec.images] == ["image-1.png", "image-2.png", "image-3.png", "image-4.jpg"]
    assert [f.size for f in rec.images] == [len(i.data) for i in images]


async def test_mask_is_sent_as_a_png_part_and_accepted(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    mask = input_image(png((512, 512)))

    result = await provider.edit(edit_request(mask=mask, model="gpt-image-1"))

    rec = fake.requests[-1]
    assert rec.mask is not None
    assert (rec.mask.filename, rec.mask.content_type, rec.mask.format) == ("mask.png", "image/png", "png")
    assert rec.mask.mode == "RGBA"
    assert len(result.images) == 1


async def test_input_fidelity_is_omitted_when_unset_and_sent_when_requested(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    await provider.edit(edit_request(model="gpt-image-1-mini"))
    assert "input_fidelity" not in fake.requests[-1].part_names

    await provider.edit(edit_request(model="gpt-image-1", input_fidelity="high"))
    assert fake.requests[-1].fields["input_fidelity"] == "high"


async def test_moderation_stream_and_user_are_never_sent_unless_set(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    await provider.edit(edit_request())

    names = set(fake.requests[-1].part_names)
    assert not names & {"moderation", "stream", "user", "input_fidelity", "mask", "response_format"}


@pytest.mark.parametrize(
    ("output_format", "size", "count", "expected_size"),
    [
        ("png", "auto", 1, (1024, 1024)),
        ("jpeg", "1536x1024", 2, (1536, 1024)),
        ("webp", "1024x1536", 3, (1024, 1536)),
    ],
)
async def test_returned_images_decode_in_the_requested_format_and_size(
    provider: OpenAIProvider,
    output_format: str,
    size: str,
    count: int,
    expected_size: tuple[int, int],
) -> None:
    result = await provider.edit(edit_request(output_format=output_format, size=size, count=count))

    assert len(result.images) == count
    for out in result.images:
        assert out.format == output_format
        with Image.open(io.BytesIO(out.data)) as img:
            assert img.format.lower() == output_format
            assert img.size == expected_size
    assert result.size == f"{expected_size[0]}x{expected_size[1]}"
    assert result.quality == "medium"  # auto is reported as the resolved quality


async def test_transparent_background_png_keeps_an_alpha_channel(provider: OpenAIProvider) -> None:
    result = await provider.edit(edit_request(background="transparent"))

    with Image.open(io.BytesIO(result.images[0].data)) as img:
        assert img.mode == "RGBA"
        assert img.getchannel("A").getextrema()[0] == 0


async def test_usage_and_request_id_are_kept(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    result = await provider.edit(edit_request(quality="high", count=2, prompt="x" * 40))

    assert result.request_id == fake.requests[-1].request_id
    assert result.request_id and result.request_id.startswith("req_")
    assert result.usage is not None
    assert result.usage.input_text_tokens == 10
    assert result.usage.input_image_tokens > 0
    assert result.usage.output_image_tokens == 2 * 4160
    assert result.usage.output_text_tokens == 0


# ----------------------------------------------------------------------------- the fake validates


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda: {"mask": input_image(png((512, 512), mode="RGB"))}, "invalid_image_file"),  # no alpha
        (lambda: {"mask": input_image(png((256, 256)))}, "invalid_image_file"),  # wrong size
        (lambda: {"model": "gpt-image-1-mini", "input_fidelity": "high"}, "unsupported_parameter"),
        (lambda: {"background": "transparent", "output_format": "jpeg"}, "invalid_value"),
        (lambda: {"quality": "standard"}, "invalid_value"),
        (lambda: {"size": "512x512"}, "invalid_value"),
        (lambda: {"count": 11}, "integer_above_max_value"),
        (lambda: {"count": 0}, "integer_below_min_value"),
        (lambda: {"prompt": "p" * 32_001}, "string_above_max_length"),
        (lambda: {"images": (input_image(png((8, 8))),) * 17}, "array_above_max_length"),
    ],
    ids=[
        "mask-without-alpha",
        "mask-size-mismatch",
        "input-fidelity-on-mini",
        "transparent-jpeg",
        "bad-quality",
        "bad-size",
        "n-too-big",
        "n-zero",
        "prompt-too-long",
        "seventeen-images",
    ],
)
async def test_fake_rejects_what_the_real_api_rejects_and_it_maps_to_invalid_input(
    fake: FakeOpenAI, provider: OpenAIProvider, change: Callable[[], dict[str, object]], code: str
) -> None:
    kw = change()
    images = kw.pop("images", None)

    with pytest.raises(InvalidInput) as info:
        await provider.edit(edit_request(images, **kw))  # type: ignore[arg-type]

    assert info.value.code == code
    assert info.value.status == 400
    assert info.value.accepted is False
    assert fake.post_count == 1


async def test_bytes_that_are_not_an_image_are_rejected_like_the_real_api(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    bogus = InputImage(data=b"\x89PNG\r\n\x1a\n" + b"not really", mime="image/png", width=1, height=1)

    with pytest.raises(InvalidInput) as info:
        await provider.edit(edit_request((bogus,)))

    assert info.value.code == "invalid_image_file"


async def test_fake_enforces_the_upload_size_limit(session: aiohttp.ClientSession) -> None:
    image = photo("astronaut.png")
    async with FakeOpenAI(max_image_bytes=len(image.data)) as small:  # the limit is "<", not "<="
        provider = OpenAIProvider(session, small.api_key, small.base_url, policy=FAST)
        with pytest.raises(InvalidInput) as info:
            await provider.edit(edit_request((image,)))

    assert info.value.code == "file_too_large"
    assert small.requests[-1].images[0].size == len(image.data)


async def test_a_slow_answer_past_the_call_timeout_is_a_timeout_after_the_work_was_done(
    fake: FakeOpenAI, make_provider: Callable[..., OpenAIProvider]
) -> None:
    fake.delay = 0.4  # the fake generates the image, then waits before answering

    with pytest.raises(ProviderTimeout) as info:
        await make_provider(call_timeout=0.2).edit(edit_request())

    assert info.value.accepted is True
    assert fake.post_count == 1


async def test_wrong_api_key_is_a_service_error_and_the_key_never_leaks(
    fake: FakeOpenAI,
    make_provider: Callable[..., OpenAIProvider],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "sk-proj-Very5ecretKeyThatMustNotLeak"
    provider = make_provider(api_key=secret)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ServiceUnavailable) as info:
        await provider.edit(edit_request())

    assert info.value.status == 401 and info.value.code == "invalid_api_key"
    assert fake.post_count == 1
    for text in (str(info.value), repr(provider), caplog.text):
        assert secret not in text
        assert "Very5ecret" not in text


@pytest.mark.parametrize("retired", [False, True])
async def test_unknown_or_retired_model_is_model_unavailable(
    make_provider: Callable[..., OpenAIProvider], fake: FakeOpenAI, retired: bool
) -> None:
    model = "gpt-image-1" if retired else "gpt-image-9"
    if retired:
        fake.retired.add(model)

    with pytest.raises(ModelUnavailable) as info:
        await make_provider().edit(edit_request(model=model))

    assert info.value.code == "model_not_found"
    assert info.value.retryable_elsewhere


async def post_raw(
    session: aiohttp.ClientSession,
    fake: FakeOpenAI,
    parts: list[tuple[str, object]],
    *,
    key: str | None = None,
) -> tuple[int, dict]:
    """POST a hand-built multipart form; `parts` values are str fields or (filename, bytes, mime) files."""
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in parts:
        if isinstance(value, tuple):
            filename, data, mime = value
            form.add_field(name, data, filename=filename, content_type=mime)
        else:
            form.add_field(name, str(value))
    headers = {"Authorization": f"Bearer {key or fake.api_key}"}
    async with session.post(f"{fake.base_url}/images/edits", data=form, headers=headers) as resp:
        return resp.status, await resp.json()


ASTRONAUT = ("a.png", (DATA / "astronaut.png").read_bytes(), "image/png")
ROCKET = ("r.jpg", (DATA / "rocket.jpg").read_bytes(), "image/jpeg")


@pytest.mark.parametrize(
    "image_parts",
    [[("image", ASTRONAUT)], [("image", ASTRONAUT), ("image", ROCKET)], [("image[]", ASTRONAUT)]],
    ids=["image", "repeated-image", "image-array"],
)
async def test_fake_accepts_every_documented_image_part_name(
    fake: FakeOpenAI, session: aiohttp.ClientSession, image_parts: list[tuple[str, object]]
) -> None:
    status, payload = await post_raw(session, fake, [("model", "gpt-image-1"), ("prompt", "p"), *image_parts])

    assert status == 200, payload
    assert len(fake.requests[-1].images) == len(image_parts)
    assert set(payload) >= {"created", "data", "usage", "size", "quality", "output_format", "background"}


@pytest.mark.parametrize(
    ("parts", "status", "code"),
    [
        ([("model", "gpt-image-1"), ("image", ASTRONAUT)], 400, "missing_required_parameter"),
        ([("model", "gpt-image-1"), ("prompt", "p")], 400, "missing_required_parameter"),
        ([("model", "gpt-image-1"), ("prompt", "p"), ("image", "a string")], 400, "invalid_type"),
        (
            [("model", "gpt-image-1"), ("prompt", "p"), ("image", ASTRONAUT), ("moderation", "low")],
            400,
            "unknown_parameter",
        ),
        (
            [("model", "gpt-image-1"), ("prompt", "p"), ("image", ("a.png", ASTRONAUT[1], "text/plain"))],
            400,
            "unsupported_file_mimetype",
        ),
        (
            [("model", "gpt-image-1"), ("prompt", "p"), ("image", ("a.gif", b"GIF89a...", "image/png"))],
            400,
            "invalid_image_file",
        ),
        (
            [("model", "gpt-image-1"), ("prompt", "p"), ("image", ASTRONAUT), ("mask", ROCKET)],
            400,
            "invalid_image_file",
        ),
        ([("model", "dall-e-2"), ("prompt", "p"), ("image", ASTRONAUT)], 404, "model_not_found"),
    ],
    ids=[
        "no-prompt",
        "no-image",
        "image-as-string",
        "moderation",
        "bad-mime",
        "not-an-image",
        "jpeg-mask",
        "unserved-model",
    ],
)
async def test_fake_rejects_malformed_forms_with_openai_error_bodies(
    fake: FakeOpenAI, session: aiohttp.ClientSession, parts: list[tuple[str, object]], status: int, code: str
) -> None:
    got_status, payload = await post_raw(session, fake, parts)

    assert got_status == status
    assert payload["error"]["code"] == code
    assert set(payload["error"]) >= {"message", "type", "param", "code"}


async def test_fake_rejects_a_json_body_and_a_missing_key(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    url = f"{fake.base_url}/images/edits"
    async with session.post(
        url, json={"prompt": "p"}, headers={"Authorization": f"Bearer {fake.api_key}"}
    ) as r:
        assert r.status == 400
    async with session.post(url, data=aiohttp.FormData({"prompt": "p"})) as r:
        assert r.status == 401
        assert (await r.json())["error"]["type"] == "invalid_request_error"
    status, payload = await post_raw(session, fake, [("prompt", "p"), ("image", ASTRONAUT)], key="sk-wrong")
    assert (status, payload["error"]["code"]) == (401, "invalid_api_key")


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "exc_type", "status", "accepted"),
    [
        (Fault.MODERATION_BLOCKED, ProviderRejected, 400, False),
        (Fault.INVALID_IMAGE, InvalidInput, 400, False),
        (Fault.UNAUTHORIZED, ServiceUnavailable, 401, False),
        (Fault.ORG_VERIFICATION, ServiceUnavailable, 403, False),
        (Fault.MODEL_NOT_FOUND, ModelGone, 404, False),
        (Fault.INSUFFICIENT_QUOTA, ServiceUnavailable, 429, False),
        (Fault.SERVER_ERROR, ServerError, 500, True),
        (Fault.EMPTY_RESULT, ServerError, None, True),
        (Fault.UNUSABLE_IMAGE, ServerError, None, True),
        (Fault.TRUNCATED_IMAGE, ServerError, None, True),  # its only image: nothing usable is left
        (Fault.RESET_AFTER_BODY, ConnectionFailed, None, True),
    ],
)
async def test_each_fault_maps_to_its_exception_and_is_sent_exactly_once(
    fake: FakeOpenAI,
    provider: OpenAIProvider,
    fault: Fault,
    exc_type: type[ProviderError],
    status: int | None,
    accepted: bool,
) -> None:
    fake.fail_always(fault)

    with pytest.raises(exc_type) as info:
        await provider.edit(edit_request())

    assert type(info.value) is exc_type
    assert info.value.accepted is accepted
    assert fake.post_count == 1
    if status is not None:
        assert info.value.status == status
        assert info.value.request_id == fake.requests[-1].request_id


@pytest.mark.parametrize("fault", [Fault.UNUSABLE_IMAGE, Fault.TRUNCATED_IMAGE])
async def test_an_image_that_does_not_decode_whole_is_left_out_of_the_result(
    fake: FakeOpenAI, provider: OpenAIProvider, fault: Fault
) -> None:
    """A 200 whose last image is no image, or is cut off behind an intact signature: the others are
    the result (the member pays for those: `split_charge`), and nothing broken is passed on."""
    fake.fail_next(fault)

    result = await provider.edit(edit_request(count=3, output_format="png"))

    assert len(result.images) == 2
    for out in result.images:
        assert decoded(out.data).size == (1024, 1024)
    assert result.usage is not None  # the call is still billed for all three
    assert fake.post_count == 1


async def test_moderation_block_is_not_retryable_elsewhere(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.fail_next(Fault.MODERATION_BLOCKED)

    with pytest.raises(ProviderRejected) as info:
        await provider.edit(edit_request())

    assert info.value.code == "moderation_blocked"
    assert not info.value.retryable_elsewhere


@pytest.mark.parametrize("fault", [Fault.RATE_LIMITED, Fault.RATE_LIMITED_MS])
async def test_429_with_retry_after_inside_the_deadline_is_retried_and_succeeds(
    fake: FakeOpenAI, provider: OpenAIProvider, fault: Fault
) -> None:
    fake.fail_next(fault, retry_after=0.05)

    result = await provider.edit(edit_request(deadline=time.monotonic() + 120))

    assert fake.post_count == 2
    assert [r.status for r in fake.requests] == [429, 200]
    assert len(result.images) == 1


async def test_429_with_retry_after_beyond_the_deadline_fails_at_once(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.fail_next(Fault.RATE_LIMITED, retry_after=4)
    started = time.monotonic()

    with pytest.raises(RateLimited) as info:
        await provider.edit(edit_request(deadline=time.monotonic() + 3))

    assert time.monotonic() - started < 1.0
    assert info.value.retry_after == 4
    assert info.value.accepted is False and info.value.retryable_elsewhere
    assert fake.post_count == 1


async def test_429_that_keeps_coming_stops_after_the_policy_attempts(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.fail_always(Fault.RATE_LIMITED_MS, retry_after=0.01)

    with pytest.raises(RateLimited):
        await provider.edit(edit_request(deadline=time.monotonic() + 120))

    assert fake.post_count == FAST.attempts


async def test_hang_times_out_within_the_call_timeout_as_accepted(
    fake: FakeOpenAI, make_provider: Callable[..., OpenAIProvider]
) -> None:
    fake.fail_always(Fault.HANG)
    provider = make_provider(call_timeout=0.5)
    started = time.monotonic()

    with pytest.raises(ProviderTimeout) as info:
        await provider.edit(edit_request())

    assert 0.4 < time.monotonic() - started < 2.0
    assert info.value.accepted is True
    assert fake.post_count == 1


async def test_the_job_deadline_caps_the_call_timeout(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.fail_always(Fault.HANG)
    started = time.monotonic()

    with pytest.raises(ProviderTimeout) as info:
        await provider.edit(edit_request(deadline=time.monotonic() + 0.3))

    assert time.monotonic() - started < 1.5
    assert info.value.accepted is True


async def test_an_answer_whose_body_is_still_arriving_at_the_deadline_is_read_whole_not_cut_off(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """The 200's status line came just before the job's deadline and its body (the images, base64,
    several MB) was still arriving when it passed: the read was cut off at the deadline (and the job's
    check, `overdue`, would end it too) with the image made and billed. The body of a 200 is a
    finished result being fetched, with its grace past the deadline."""
    request = edit_request(deadline=time.monotonic() + 3.0)
    result = await edit_with_its_body_held_past_the_deadline(fake, provider, request)
    assert len(result.images) == 1 and decoded(result.images[0].data) is not None  # whole
    assert request.fetches.count == 0  # the fetching mark went with the read
    assert fake.post_count == 1


async def test_an_error_answer_whose_body_is_still_arriving_at_the_deadline_gets_no_grace(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """Only a 200's body is a finished result: an error's body held past the deadline is a timeout
    there, as before (the wait for the status line is too: `test_the_job_deadline_caps_the_call_timeout`)."""
    request = edit_request(deadline=time.monotonic() + 1.0)
    timeout = await error_with_its_body_held_past_the_deadline(fake, provider, request, Fault.SERVER_ERROR)
    assert timeout.accepted is True
    fake.release_answers()


async def test_expired_deadline_sends_nothing(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    with pytest.raises(ProviderTimeout) as info:
        await provider.edit(edit_request(deadline=time.monotonic() - 1))

    assert info.value.accepted is False
    assert fake.post_count == 0


async def test_connection_refused_is_retried_then_fails_as_not_accepted() -> None:
    port = closed_port()
    attempts = 0

    async def on_request_start(*_: object) -> None:
        nonlocal attempts
        attempts += 1

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        provider = OpenAIProvider(session, "sk-test", f"http://127.0.0.1:{port}/v1", policy=FAST)
        with pytest.raises(ConnectionFailed) as info:
            await provider.edit(edit_request())

    assert info.value.accepted is False
    assert info.value.retryable_elsewhere
    assert attempts == FAST.attempts


# ----------------------------------------------------------------------------- classify / usage units


def body(type_: str | None, code: str | None, message: str = "m", **extra: object) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code, **extra}}
    ).encode()


@pytest.mark.parametrize(
    ("status", "raw", "headers", "exc_type", "accepted"),
    [
        (400, body("image_generation_user_error", "moderation_blocked"), {}, ProviderRejected, False),
        (400, body("invalid_request_error", "content_policy_violation"), {}, ProviderRejected, False),
        (400, body("invalid_request_error", "invalid_image_file"), {}, InvalidInput, False),
        (400, b"<html>Bad Request</html>", {}, InvalidInput, False),
        # The account's spending limit: the operator's to fix, and another provider may serve the job.
        (400, body("invalid_request_error", "billing_hard_limit_reached"), {}, ServiceUnavailable, False),
        (401, body("invalid_request_error", "invalid_api_key"), {}, ServiceUnavailable, False),
        (403, body("invalid_request_error", None), {}, ServiceUnavailable, False),
        (404, body("invalid_request_error", "model_not_found"), {}, ModelGone, False),
        # providers.md §1.6 gives 404 only as commonly reported: the code says the model is gone.
        (400, body("invalid_request_error", "model_not_found"), {}, ModelGone, False),
        (410, body("invalid_request_error", "model_not_found"), {}, ModelGone, False),
        (404, body("invalid_request_error", None), {}, ModelUnavailable, False),
        (429, body("insufficient_quota", "insufficient_quota"), {}, ServiceUnavailable, False),
        (429, body("insufficient_quota", None), {"retry-after": "5"}, ServiceUnavailable, False),
        (429, body("requests", "rate_limit_exceeded"), {"retry-after": "7"}, RateLimited, False),
        (500, body("server_error", None), {}, ServerError, True),
        (502, b"<html><body>502 Bad Gateway</body></html>", {}, ServerError, True),
        (503, b"", {}, ServerError, True),
        (408, b"<html>408 Request Timeout</html>", {}, ProviderTimeout, False),  # not the input
        (418, b"\xff\xfe not json", {}, InvalidInput, False),
    ],
)
def test_classify_openai_error_table(
    status: int, raw: bytes, headers: dict[str, str], exc_type: type[ProviderError], accepted: bool
) -> None:
    err = classify_openai_error(status, raw, {"x-request-id": "req_1", **headers}, provider="openai")

    assert type(err) is exc_type
    assert err.accepted is accepted
    assert (err.status, err.request_id, err.provider) == (status, "req_1", "openai")
    if isinstance(err, RateLimited):
        assert err.retry_after == 7.0


def test_classify_output_stage_moderation_counts_as_accepted() -> None:
    raw = body(
        "image_generation_user_error", "moderation_blocked", moderation_details={"moderation_stage": "output"}
    )

    err = classify_openai_error(400, raw, {}, provider="openai")

    assert isinstance(err, ProviderRejected) and err.accepted is True


def test_classify_truncates_long_messages_and_masks_keys() -> None:
    raw = body(
        "invalid_request_error",
        "invalid_api_key",
        message="Incorrect API key sk-proj-abcDEF123 " + "x" * 5000,
    )

    err = classify_openai_error(401, raw, {}, provider="openai")

    assert "abcDEF123" not in str(err)
    assert len(str(err)) < 300


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (
            {
                "input_tokens": 700,
                "output_tokens": 1200,
                "input_tokens_details": {"text_tokens": 50, "image_tokens": 650},
                "output_tokens_details": {"image_tokens": 1190, "text_tokens": 10},
            },
            Usage(50, 650, 1190, 10),
        ),
        ({"input_tokens": 700, "output_tokens": 1200}, Usage(0, 700, 1200, 0)),
        # Details without image_tokens: the output tokens that are not text are the image's.
        ({"output_tokens": 1200, "output_tokens_details": {"text_tokens": 10}}, Usage(0, 0, 1190, 10)),
        # The same on the input side, where these tokens were once lost (priced as nothing).
        (
            {"input_tokens": 700, "output_tokens": 1200, "input_tokens_details": {"text_tokens": 50}},
            Usage(50, 650, 1200, 0),
        ),
        (
            {
                "input_tokens": 700,
                "output_tokens": 1200,
                "input_tokens_details": {},
                "output_tokens_details": {},
            },
            Usage(0, 700, 1200, 0),
        ),
        # No image output to be read: not priced from tokens at all (it would charge nothing), so
        # the job is charged the list price. These once came back as zero-token usages.
        ({"input_tokens_details": {"text_tokens": 5}}, None),
        ({"input_tokens": "many", "output_tokens": -3}, None),
        ({}, None),
        ({"input_tokens": 700.0, "output_tokens": 1200.0}, None),
    ],
)
def test_parse_usage(raw: object, expected: Usage | None) -> None:
    assert parse_usage(raw) == expected


@pytest.mark.parametrize(
    ("error", "detail", "authenticated"),
    [
        (
            ServiceUnavailable("q", status=429, code="insufficient_quota"),
            "out of quota or billing (HTTP 429 insufficient_quota)",
            True,
        ),
        (
            ServiceUnavailable("k", status=401, code="invalid_api_key"),
            "API key refused (HTTP 401 invalid_api_key)",
            False,
        ),
        (
            RateLimited("r", status=429, code="rate_limit_exceeded"),
            "rate limited (HTTP 429 rate_limit_exceeded)",
            True,
        ),
        (ConnectionFailed("c"), "unreachable (ConnectionFailed)", None),
    ],
)
def test_a_failed_check_reads_quota_before_the_shared_rules(error, detail, authenticated) -> None:
    health = _health_from_error(error)
    assert (health.detail, health.authenticated) == (detail, authenticated)


# ----------------------------------------------------------------------------- the GPT Image 2 line


@pytest.mark.parametrize(
    ("model", "size", "quality", "expected_size"),
    [
        ("gpt-image-2", "2048x1152", "high", (2048, 1152)),
        ("gpt-image-2-2026-04-21", "auto", "low", (1024, 1024)),
        ("gpt-image-2.5-flare", "1024x1024", "xhigh", (1024, 1024)),
        ("gpt-image-2.5-sunburst-2026-09-08", "1536x1024", "max", (1536, 1024)),
        ("gpt-image-2.6-flare", "1280x768", "max", (1280, 768)),
        ("gpt-image-2.6-sunburst", "768x2304", "xhigh", (768, 2304)),
    ],
)
async def test_2x_models_get_free_sizes_and_their_qualities_sent_as_given(
    fake: FakeOpenAI,
    provider: OpenAIProvider,
    model: str,
    size: str,
    quality: str,
    expected_size: tuple[int, int],
) -> None:
    result = await provider.edit(edit_request(model=model, size=size, quality=quality))

    rec = fake.requests[-1]
    assert (rec.fields["model"], rec.fields["size"], rec.fields["quality"]) == (model, size, quality)
    assert "input_fidelity" not in rec.part_names
    with Image.open(io.BytesIO(result.images[0].data)) as img:
        assert img.size == expected_size
    assert result.size == f"{expected_size[0]}x{expected_size[1]}"
    assert result.quality == quality
    assert result.usage is not None and result.usage.output_image_tokens > 0


async def test_xhigh_and_max_cost_more_output_tokens_than_high(provider: OpenAIProvider) -> None:
    tokens = {}
    for quality in ("high", "xhigh", "max"):
        result = await provider.edit(edit_request(model="gpt-image-2.6-flare", quality=quality))
        assert result.usage is not None
        tokens[quality] = result.usage.output_image_tokens

    assert tokens["high"] < tokens["xhigh"] < tokens["max"]


@pytest.mark.parametrize("model", ["gpt-image-2", "gpt-image-2.5-flare", "gpt-image-2.6-sunburst"])
async def test_fake_bills_2x_input_images_at_high_fidelity_always(
    provider: OpenAIProvider, model: str
) -> None:
    """models-2026-12.md §2: "2.x reads reference images at high fidelity always" (and refuses the
    `input_fidelity` parameter, which the adapter never sends to it)."""
    high = await provider.edit(edit_request(model="gpt-image-1", input_fidelity="high"))
    low = await provider.edit(edit_request(model="gpt-image-1", input_fidelity="low"))

    result = await provider.edit(edit_request(model=model))

    assert result.usage is not None and high.usage is not None and low.usage is not None
    assert result.usage.input_image_tokens == high.usage.input_image_tokens > low.usage.input_image_tokens


# models-2026-12.md §2: the 2.x line bills image output at $30 per 1M tokens, and one output image
# costs the listed price (1024x1024, and 1536x1024 / 1024x1536); 2.6 at the upper end of its estimate.
# A size with no published price is the square price scaled up by its area (what the bot holds).
OUTPUT_USD_PER_TOKEN_2X = Decimal(30) / 1_000_000
LISTED_2X_OUTPUT = [
    ("gpt-image-2", "low", "1024x1024", "0.006"),
    ("gpt-image-2", "medium", "1024x1024", "0.053"),
    ("gpt-image-2-2026-04-21", "high", "1024x1024", "0.211"),
    ("gpt-image-2", "high", "1024x1536", "0.165"),
    ("gpt-image-2.5-flare", "low", "1024x1024", "0.006"),
    ("gpt-image-2.5-flare", "medium", "1024x1024", "0.013"),
    ("gpt-image-2.5-sunburst", "high", "1024x1024", "0.053"),
    ("gpt-image-2.5-sunburst-2026-09-08", "xhigh", "1024x1024", "0.094"),
    ("gpt-image-2.5-flare", "max", "1024x1024", "0.211"),
    ("gpt-image-2.5-sunburst", "max", "1536x1024", "0.165"),
    ("gpt-image-2.5-flare", "high", "2048x2048", str(4 * Decimal("0.053"))),
    ("gpt-image-2.6-flare", "low", "1024x1024", "0.024"),
    ("gpt-image-2.6-sunburst", "medium", "1024x1024", "0.053"),
    ("gpt-image-2.6-flare", "high", "1024x1024", "0.053"),
    ("gpt-image-2.6-sunburst", "xhigh", "1024x1024", "0.094"),
    ("gpt-image-2.6-flare", "max", "1024x1024", "0.211"),
    ("gpt-image-2.6-sunburst", "xhigh", "1536x1024", "0.074"),
]


@pytest.mark.parametrize(("model", "quality", "size", "listed"), LISTED_2X_OUTPUT)
async def test_fake_bills_2x_output_tokens_worth_the_listed_price(
    provider: OpenAIProvider, model: str, quality: str, size: str, listed: str
) -> None:
    result = await provider.edit(edit_request(model=model, quality=quality, size=size, count=2))

    assert result.usage is not None
    billed = result.usage.output_image_tokens * OUTPUT_USD_PER_TOKEN_2X / 2
    # Never above the list price (a correct hold covers it), and not far below it (the tokens are
    # whole, so a price that is no exact number of tokens is billed a fraction of a token short).
    assert Decimal(listed) * Decimal("0.99") < billed <= Decimal(listed)


async def test_sixteen_input_images_are_accepted_for_gpt_image_2(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    small = input_image(png((64, 64), mode="RGB"))

    await provider.edit(edit_request((small,) * 16, model="gpt-image-2"))

    assert len(fake.requests[-1].images) == 16


@pytest.mark.parametrize(
    ("model", "change", "param", "code"),
    [
        ("gpt-image-2", {"quality": "xhigh"}, "quality", "invalid_value"),  # only 2.5 and 2.6
        ("gpt-image-2-2026-04-21", {"quality": "max"}, "quality", "invalid_value"),
        ("gpt-image-1.5", {"quality": "max"}, "quality", "invalid_value"),
        ("gpt-image-1", {"size": "2048x2048"}, "size", "invalid_value"),  # 1.x: the fixed three
        ("gpt-image-2", {"size": "1000x1000"}, "size", "invalid_value"),  # not multiples of 16
        ("gpt-image-2.5-flare", {"size": "3072x960"}, "size", "invalid_value"),  # wider than 3:1
        ("gpt-image-2.5-sunburst", {"size": "512x512"}, "size", "invalid_value"),  # too few pixels
        ("gpt-image-2.6-flare", {"size": "3840x2176"}, "size", "invalid_value"),  # too many pixels
        ("gpt-image-2.6-sunburst", {"size": "3856x1296"}, "size", "invalid_value"),  # edge over 3840
        ("gpt-image-2.6-sunburst", {"size": "wide"}, "size", "invalid_value"),
        ("gpt-image-2", {"input_fidelity": "high"}, "input_fidelity", "unsupported_parameter"),
        ("gpt-image-2.6-flare", {"input_fidelity": "low"}, "input_fidelity", "unsupported_parameter"),
    ],
)
async def test_fake_validates_2x_sizes_qualities_and_fidelity_per_model_like_the_api(
    fake: FakeOpenAI,
    provider: OpenAIProvider,
    session: aiohttp.ClientSession,
    model: str,
    change: dict[str, str],
    param: str,
    code: str,
) -> None:
    with pytest.raises(InvalidInput) as info:
        await provider.edit(edit_request(model=model, **change))
    assert (info.value.status, info.value.code, info.value.accepted) == (400, code, False)

    status, payload = await post_raw(
        session, fake, [("model", model), ("prompt", "p"), ("image", ASTRONAUT), *change.items()]
    )
    assert (status, payload["error"]["param"], payload["error"]["code"]) == (400, param, code)


@pytest.mark.parametrize("size", ["3840x2160", "2160x3840", "1024x3072", "816x816"])
async def test_fake_accepts_2x_sizes_at_the_edges_of_the_rules(
    fake: FakeOpenAI, session: aiohttp.ClientSession, size: str
) -> None:
    parts = [("model", "gpt-image-2"), ("prompt", "p"), ("image", ASTRONAUT), ("size", size)]
    if size != "816x816":  # the big ones: check the validation only, not the rendering
        parts.append(("quality", "extreme"))  # an invalid quality is reported after a valid size
        status, payload = await post_raw(session, fake, parts)
        assert (status, payload["error"]["param"]) == (400, "quality")
        return
    status, payload = await post_raw(session, fake, parts)  # 665,856 pixels: just above the minimum
    assert (status, payload["size"]) == (200, "816x816")


async def test_fake_without_a_model_uses_the_current_line_not_a_shut_down_default(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    status, payload = await post_raw(
        session, fake, [("prompt", "p"), ("image", ASTRONAUT), ("size", "1280x768")]
    )

    assert (status, payload["size"]) == (200, "1280x768")  # a 2.x size: the default is gpt-image-2


async def test_a_400_model_not_found_retires_the_openai_route_and_the_job_moves_on(
    fake: FakeOpenAI, provider: OpenAIProvider, session: aiohttp.ClientSession
) -> None:
    retired: list[str] = []

    async def on_gone(model: object, route: Route, exc: ModelGone) -> None:
        retired.append(route.provider)

    fake.retire("gpt-image-2", status=400)
    async with FakeAtlas() as atlas:
        atlas_provider = AtlasCloudProvider(
            session, atlas.api_key, atlas.base_url, policy=FAST, **FAST_POLLING
        )
        router = Router({"openai": provider, "atlascloud": atlas_provider}, on_gone=on_gone)

        served = await router.run(
            load_catalog().get("gpt-image-2"), edit_request(quality="low", size="1024x1024")
        )

    assert served.route.provider == "atlascloud" and served.result.images
    assert retired == ["openai"] and fake.post_count == 1


@pytest.mark.parametrize("status", [404, 400])  # providers.md §1.6: 404 as commonly reported, not pinned down
@pytest.mark.parametrize("listed", [False, True])
async def test_a_retired_model_is_model_gone_on_edit_and_not_accepted(
    fake: FakeOpenAI, provider: OpenAIProvider, listed: bool, status: int
) -> None:
    fake.retire("gpt-image-2", listed=listed, status=status)

    with pytest.raises(ModelGone) as info:
        await provider.edit(edit_request(model="gpt-image-2"))

    assert (info.value.status, info.value.code, info.value.accepted) == (status, "model_not_found", False)
    assert info.value.retryable_elsewhere
    assert fake.post_count == 1
    ids = [m.id for m in await provider.list_models()]
    assert ("gpt-image-2" in ids) is listed
    await provider.edit(edit_request(model="gpt-image-2.6-sunburst"))  # its replacement still works


async def test_org_verification_403_is_not_model_gone(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.fail_next(Fault.ORG_VERIFICATION)

    with pytest.raises(ServiceUnavailable) as info:
        await provider.edit(edit_request(model="gpt-image-2"))

    assert not isinstance(info.value, ModelUnavailable)


# ----------------------------------------------------------------------------- discovery: GET /v1/models


async def test_list_models_reads_every_served_model_with_its_shutdown_date(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.shutdown_dates = {"gpt-image-2": "2027-02-10", "gpt-image-2-2026-04-21": "2027-02-10"}

    models = {m.id: m for m in await provider.list_models()}

    assert set(models) == fake.models
    assert models["gpt-image-2"] == ListedModel("gpt-image-2", date(2027, 2, 10))
    assert models["gpt-image-2-2026-04-21"].shutdown_date == date(2027, 2, 10)
    assert models["gpt-image-2.6-sunburst"].shutdown_date is None  # null in the listing
    rec = fake.requests[-1]
    assert (rec.method, rec.path, rec.authorized) == ("GET", "/v1/models", True)


async def test_a_garbled_shutdown_date_is_read_as_none_and_logged(
    fake: FakeOpenAI, provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    fake.shutdown_dates = {
        "gpt-image-2": "soon",
        "gpt-image-2.5-flare": 20270210,
        "gpt-image-2.5-sunburst": "2027-13-01",
        "gpt-image-2.6-flare": "2027-02-10T00:00:00Z",
        "gpt-image-2.6-sunburst": "2027-03-01",
    }
    caplog.set_level(logging.WARNING)

    models = {m.id: m.shutdown_date for m in await provider.list_models()}

    for model in ("gpt-image-2", "gpt-image-2.5-flare", "gpt-image-2.5-sunburst", "gpt-image-2.6-flare"):
        assert models[model] is None
        assert model in caplog.text
    assert models["gpt-image-2.6-sunburst"] == date(2027, 3, 1)


async def test_a_listing_500_is_retried_and_a_lasting_one_raises_a_provider_error(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.fail_next(Fault.MODELS_ERROR)
    assert await provider.list_models()  # the GET is retried

    fake.fail_always(Fault.MODELS_ERROR)
    with pytest.raises(ServerError) as info:
        await provider.list_models()

    assert info.value.status == 500
    assert sum(1 for r in fake.requests if r.path == "/v1/models" and r.status == 500) == 1 + FAST.attempts
    assert fake.post_count == 0  # the edits are untouched


async def test_a_listing_with_a_wrong_key_is_a_service_error(
    make_provider: Callable[..., OpenAIProvider],
) -> None:
    with pytest.raises(ServiceUnavailable) as info:
        await make_provider(api_key="sk-wrong").list_models()

    assert info.value.status == 401


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"object": "list", "data": []}, []),
        (
            {
                "data": [
                    {"id": "a", "shutdown_date": None},
                    {"id": "b"},
                    {"id": 3},
                    "junk",
                    {"object": "model"},
                ]
            },
            [ListedModel("a"), ListedModel("b")],
        ),
        ({"data": [{"id": "a", "shutdown_date": "2027-02-10"}]}, [ListedModel("a", date(2027, 2, 10))]),
    ],
)
def test_parse_model_list_tolerates_odd_entries(payload: object, expected: list[ListedModel]) -> None:
    assert parse_model_list(payload) == expected


@pytest.mark.parametrize("payload", [None, [], {"object": "list"}, {"data": {"id": "a"}}])
def test_parse_model_list_refuses_an_answer_that_is_not_a_list(payload: object) -> None:
    with pytest.raises(ServerError):
        parse_model_list(payload)


@pytest.mark.parametrize("model_id", ["gpt-image-2", "gpt-image-2.5-flare", "gpt-image-2.6-sunburst"])
@pytest.mark.parametrize("shape", [(2304, 768), (2048, 768), (4000, 3000)])
async def test_the_packaged_hold_covers_a_2x_edit_of_the_widest_inputs_at_high_fidelity(
    fake: FakeOpenAI, provider: OpenAIProvider, model_id: str, shape: tuple[int, int]
) -> None:
    """2.x reads every input at high fidelity: the widest shapes make the most tiles (8), which the
    packaged catalog's input_tokens_per_image must hold, or the operator pays what the hold missed."""
    model = load_catalog().models[model_id]
    wide = input_image(png(shape, mode="RGB"))
    request = edit_request((wide,) * 16, model=model_id, quality="high", size="1024x1024")
    served = await Router({"openai": provider}).run(model, request)
    [route] = [r for r in model.routes if r.provider == "openai"]
    held = route_reserve_usd(model, route, Needs.of(request), prompt=request.prompt)
    assert served.cost_usd <= held, (served.cost_usd, held)
