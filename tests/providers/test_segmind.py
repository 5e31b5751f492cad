"""Contract tests: `SegmindProvider` against the fake Segmind v1 API over real sockets."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
import pytest
from PIL import Image, ImageChops, ImageOps

from bot.providers import segmind as segmind_module
from bot.providers.base import InputImage
from bot.providers.errors import (
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
from bot.providers.segmind import SegmindProvider, classify_segmind_error, parse_reset_at
from tests.fakes._base import Gone
from tests.fakes.segmind_server import PRICE, FakeSegmind, Fault, RecordedRequest
from tests.fixtures import serving
from tests.providers.helpers import (
    DATA,
    adapter_builder,
    body,
    closed_port,
    decoded,
    edit_with_its_body_held_past_the_deadline,
    error_with_its_body_held_past_the_deadline,
    hole_mask,
    photo,
    request_builder,
    until,
)

MINI = "gpt-image-1-edit-mini"
HOLE = (256, 0, 512, 512)  # the right half of the 512x512 astronaut

edit_request = request_builder(prompt="make it black and white", model=MINI)


def openai_mask() -> InputImage:
    return hole_mask(HOLE, (255, 255, 255))  # white but opaque: keep (alpha decides)


fake = serving(FakeSegmind)


@pytest.fixture
def make_provider(fake: FakeSegmind, session: aiohttp.ClientSession) -> Callable[..., SegmindProvider]:
    return adapter_builder(SegmindProvider, fake, session, io_timeout=5.0, upload_url=fake.upload_url)


def edit_call(fake: FakeSegmind) -> RecordedRequest:
    return next(r for r in fake.requests if r.endpoint == "edit")


# ----------------------------------------------------------------------------- happy path


async def test_edit_uploads_once_then_posts_json_with_x_api_key_and_reads_the_image_body(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    source = photo()

    result = await provider.edit(edit_request((source, photo("rocket.jpg")), quality="low", size="1024x1536"))

    assert [r.endpoint for r in fake.requests] == ["upload", "edit"]
    upload = fake.requests[0]
    assert upload.key_ok and not upload.bearer
    assert [u.split(";")[0] for u in upload.json["data_urls"]] == ["data:image/png", "data:image/jpeg"]
    call = edit_call(fake)
    assert call.key_ok and not call.bearer
    assert call.content_type.startswith("application/json")
    assert call.json == {
        "prompt": "make it black and white",
        "image_urls": call.json["image_urls"],
        "size": "1024x1536",
        "quality": "low",
        "output_format": "png",
    }
    assert all(u.startswith(f"{fake.origin}/assets/") for u in call.json["image_urls"])
    (out,) = result.images
    expected = ImageOps.grayscale(decoded(source.data).convert("RGB")).convert("RGB")
    expected = expected.resize((1024, 1536), Image.Resampling.BILINEAR)
    assert ImageChops.difference(decoded(out.data).convert("RGB"), expected).getbbox() is None
    assert (result.quality, result.size) == ("low", "1024x1536")


async def test_x_cost_becomes_the_charge_and_the_request_id_is_kept(
    fake: FakeSegmind, provider: SegmindProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    result = await provider.edit(edit_request())

    call = edit_call(fake)
    assert result.cost_usd == "0.0280" == str(PRICE[MINI])
    assert Decimal(result.cost_usd) == Decimal(call.headers_out["x-cost"])
    assert result.request_id == call.headers_out["x-request-id"]
    assert call.headers_out["x-remaining-credits"] in caplog.text  # the balance is logged


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP")])
async def test_output_format_and_background_are_sent_and_honoured(
    fake: FakeSegmind, provider: SegmindProvider, fmt: str, pil: str
) -> None:
    result = await provider.edit(edit_request(output_format=fmt, background="opaque"))

    assert edit_call(fake).json["background"] == "opaque"
    assert result.images[0].format == fmt
    assert decoded(result.images[0].data).format == pil


async def test_auto_background_is_left_to_segmind_by_omitting_it(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    await provider.edit(edit_request(background="auto"))

    assert "background" not in edit_call(fake).json


async def test_mask_is_uploaded_and_only_the_transparent_area_changes(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    source = photo()

    result = await provider.edit(edit_request((source,), mask=openai_mask(), size="1024x1024"))

    call = edit_call(fake)
    assert call.json["mask"].startswith(f"{fake.origin}/assets/")
    assert len(fake.requests[0].json["data_urls"]) == 2  # the image and the mask, in one upload
    out = decoded(result.images[0].data).convert("RGB").resize((512, 512), Image.Resampling.BILINEAR)
    original = decoded(source.data).convert("RGB")
    r, g, b = out.getpixel((400, 300))  # inside the hole: grey
    assert max(r, g, b) - min(r, g, b) <= 6
    kept = original.getpixel((100, 300))  # outside: the original colours
    assert all(abs(a - c) <= 24 for a, c in zip(out.getpixel((100, 300)), kept, strict=True))


@pytest.mark.parametrize("mode", ["json-base64", "json-url"])
async def test_a_json_answer_is_understood_as_well(
    fake: FakeSegmind, provider: SegmindProvider, mode: str
) -> None:
    fake.response_mode = mode

    result = await provider.edit(edit_request())

    assert decoded(result.images[0].data).size == (1024, 1024)
    assert result.cost_usd == "0.0280"


async def test_an_image_made_before_the_deadline_is_delivered_though_its_download_outlasts_it(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    """A JSON answer's output URL points at an image made (and billed) just before the deadline: its
    download gets `DOWNLOAD_GRACE_SECONDS` past it, instead of ending as a timeout."""
    fake.response_mode = "json-url"
    fake.hold_outputs()
    request = edit_request(deadline=time.monotonic() + 3.0)
    run = asyncio.create_task(provider.edit(request))

    await until(lambda: any(r.path.startswith("/assets/out-") for r in fake.requests))
    await until(lambda: time.monotonic() > request.deadline or run.done())
    fake.release_outputs()
    result = await run

    assert decoded(result.images[0].data).size == (1024, 1024)


async def test_an_image_answered_before_the_deadline_is_checked_within_its_grace_past_it(
    fake: FakeSegmind, provider: SegmindProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image came back as the answer's body (made and billed) just before the deadline; it was still
    being checked (decoded whole, in a worker thread) past the deadline, and the job's own check ended
    it as a timeout. Checking it is fetching a finished result: `overdue` waits for it within its grace."""
    checking, go_on = asyncio.Event(), asyncio.Event()
    check = segmind_module.usable_image_format

    async def slow_check(data: bytes) -> str | None:
        checking.set()
        await go_on.wait()  # a large image decoded on a busy machine
        return await check(data)

    monkeypatch.setattr(segmind_module, "usable_image_format", slow_check)
    request = edit_request(deadline=time.monotonic() + 3.0)
    run = asyncio.create_task(provider.edit(request))

    await until(checking.is_set)
    await until(lambda: time.monotonic() > request.deadline)
    assert not request.overdue()  # what the job's check asks before it ends the job
    go_on.set()
    result = await run

    assert decoded(result.images[0].data).size == (1024, 1024)
    assert request.overdue()  # the check is over: nothing is fetched any more


async def test_an_image_whose_body_is_still_arriving_at_the_deadline_is_read_whole_within_its_grace(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    """The 200 (the image itself, made and billed) began just before the deadline and its body was still
    arriving when it passed: the read was cut off at the deadline, with the image. The body of a 200 is a
    finished result being fetched, with its grace past the deadline (`overdue` waits for it too)."""
    request = edit_request(deadline=time.monotonic() + 3.0)
    result = await edit_with_its_body_held_past_the_deadline(fake, provider, request)

    assert decoded(result.images[0].data).size == (1024, 1024)
    assert fake.post_count == 1


async def test_an_error_whose_body_is_still_arriving_at_the_deadline_gets_no_grace(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    """Only a 200's body is a finished result: an error's body held past the deadline is a timeout."""
    request = edit_request(deadline=time.monotonic() + 1.5)
    timeout = await error_with_its_body_held_past_the_deadline(fake, provider, request, Fault.SERVER_ERROR)
    assert timeout.accepted is True


@pytest.mark.parametrize("content_type", ["application/octet-stream", "image/jpeg", "binary/octet-stream"])
async def test_a_raw_image_is_taken_for_its_bytes_whatever_its_content_type_says(
    fake: FakeSegmind, provider: SegmindProvider, content_type: str
) -> None:
    """Which Content-Type v1 sends with its image is OPEN; the PNG asked for is paid for either way."""
    fake.image_content_type = content_type

    result = await provider.edit(edit_request(output_format="png"))

    assert result.images[0].format == "png" and decoded(result.images[0].data).size == (1024, 1024)


@pytest.mark.parametrize("mode", ["bytes", "json-base64", "json-url"])
@pytest.mark.parametrize("output_format", ["png", "jpeg"])
async def test_an_image_cut_off_behind_its_signature_is_an_accepted_server_error(
    fake: FakeSegmind, provider: SegmindProvider, mode: str, output_format: str
) -> None:
    """Only HTTP 200 is billed, and this one was: the member must not get (and pay for) a broken file,
    and the job is not sent elsewhere."""
    fake.response_mode = mode
    fake.fail_next(Fault.TRUNCATED_IMAGE)

    with pytest.raises(ServerError) as info:
        await provider.edit(edit_request(output_format=output_format))

    assert type(info.value) is ServerError
    assert (info.value.accepted, info.value.retryable_elsewhere) == (True, False)
    assert fake.post_count == 1


# ----------------------------------------------------------------------------- refused before any request


@pytest.mark.parametrize(
    ("change", "exc_type"),
    [
        ({"count": 2}, InvalidInput),
        ({"images": (photo(),) * 5}, InvalidInput),
        ({"model": "gpt-image-9-edit"}, ModelUnavailable),
    ],
    ids=["count", "five-images", "model"],
)
async def test_options_the_route_cannot_honour_are_refused_before_any_request(
    fake: FakeSegmind, provider: SegmindProvider, change: dict[str, object], exc_type: type[ProviderError]
) -> None:
    images = change.pop("images", None)

    with pytest.raises(exc_type) as info:
        await provider.edit(edit_request(images, **change))  # type: ignore[arg-type]

    assert info.value.accepted is False and info.value.retryable_elsewhere
    assert fake.requests == []


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "exc_type", "code", "accepted", "elsewhere"),
    [
        (Fault.MISSING_KEY, ServiceUnavailable, "unauthorized", False, True),
        (Fault.INVALID_KEY, ServiceUnavailable, "unauthorized", False, True),
        (Fault.NOT_ENOUGH_CREDITS, ServiceUnavailable, "insufficient_credits", False, True),
        (Fault.SPEND_LIMIT, ServiceUnavailable, "insufficient_credits", False, True),
        (Fault.CONTENT_TYPE, InvalidInput, "invalid_content_type", False, False),
        (Fault.FORBIDDEN, ModelUnavailable, "forbidden", False, True),
        (Fault.METHOD_NOT_ALLOWED, ServiceUnavailable, "method_not_allowed", False, True),
        (Fault.RETIRED, ModelGone, "retired", False, True),
        (Fault.SERVER_ERROR, ServerError, None, False, True),
        (Fault.GATEWAY_TIMEOUT, ServerError, None, True, False),
        (Fault.NOT_AN_IMAGE, ServerError, None, True, False),
    ],
)
async def test_each_fault_maps_to_its_exception_and_is_posted_exactly_once(
    fake: FakeSegmind,
    provider: SegmindProvider,
    fault: Fault,
    exc_type: type[ProviderError],
    code: str | None,
    accepted: bool,
    elsewhere: bool,
) -> None:
    fake.fail_always(fault)

    with pytest.raises(exc_type) as info:
        await provider.edit(edit_request())

    assert type(info.value) is exc_type
    assert info.value.code == code
    assert (info.value.accepted, info.value.retryable_elsewhere) == (accepted, elsewhere)
    assert fake.post_count == 1


async def test_an_error_that_quotes_the_api_key_is_raised_with_the_key_masked(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    """Segmind's message echoes the key it was sent: exception text ends up in logs."""
    fake.fail_next(Fault.KEY_ECHOED)

    with pytest.raises(ModelUnavailable) as info:
        await provider.edit(edit_request())

    assert fake.api_key not in str(info.value)
    assert "API key *** is not permitted" in str(info.value)


async def test_the_two_meanings_of_406_are_told_apart_by_their_message(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    fake.credits = Decimal("0.01")  # below the model's cost: Segmind refuses before zero
    with pytest.raises(ServiceUnavailable) as credits:
        await provider.edit(edit_request())

    fake.credits = Decimal(10)
    fake.fail_next(Fault.CONTENT_TYPE)
    with pytest.raises(InvalidInput) as content_type:
        await provider.edit(edit_request())

    assert credits.value.status == content_type.value.status == 406
    assert credits.value.code == "insufficient_credits"
    assert content_type.value.code == "invalid_content_type"


async def test_a_body_without_json_content_type_really_gets_the_content_type_406(
    fake: FakeSegmind, session: aiohttp.ClientSession
) -> None:
    async with session.post(
        f"{fake.base_url}/{MINI}", data=b'{"prompt": "p"}', headers={"x-api-key": fake.api_key}
    ) as resp:
        assert resp.status == 406
        err = classify_segmind_error(resp.status, await resp.read(), resp.headers, provider="segmind")

    assert isinstance(err, InvalidInput) and err.code == "invalid_content_type"


async def test_a_bearer_key_is_refused_like_the_real_api(
    fake: FakeSegmind, session: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with session.post(f"{fake.base_url}/{MINI}", json={"prompt": "p"}, headers=headers) as resp:
        assert resp.status == 401
        assert "x-api-key" in (await resp.json())["error"]


async def test_429_reset_time_within_the_deadline_is_waited_out_then_retried(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    fake.fail_next(Fault.RATE_LIMITED, retry_after=0.2)

    result = await provider.edit(edit_request(deadline=time.monotonic() + 30))

    assert [r.status for r in fake.requests if r.endpoint == "edit"] == [429, 200]
    assert "retry-after" not in {k.lower() for k in fake.requests[1].headers_out}
    assert len(result.images) == 1


async def test_429_reset_beyond_the_deadline_fails_at_once_as_not_accepted(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    fake.fail_next(Fault.RATE_LIMITED, retry_after=30)
    started = time.monotonic()

    with pytest.raises(RateLimited) as info:
        await provider.edit(edit_request(deadline=time.monotonic() + 5))

    assert time.monotonic() - started < 1.0
    assert info.value.retry_after is not None and 28 < info.value.retry_after <= 30
    assert info.value.accepted is False and info.value.retryable_elsewhere
    assert fake.post_count == 1


async def test_an_upload_failure_is_not_accepted_and_nothing_paid_is_sent(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    fake.fail_always(Fault.UPLOAD_ERROR)

    with pytest.raises(ServerError) as info:
        await provider.edit(edit_request())

    assert info.value.accepted is False and info.value.retryable_elsewhere
    assert fake.post_count == 0


async def test_the_deadline_caps_the_blocking_call_and_the_timeout_counts_as_accepted(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    fake.fail_always(Fault.HANG)
    started = time.monotonic()

    with pytest.raises(ProviderTimeout) as info:
        await provider.edit(edit_request(deadline=time.monotonic() + 0.4))

    assert time.monotonic() - started < 1.5
    assert info.value.accepted is True
    assert fake.post_count == 1


async def test_an_answer_larger_than_the_cap_is_refused(
    fake: FakeSegmind, make_provider: Callable[..., SegmindProvider]
) -> None:
    with pytest.raises(ServerError) as info:
        await make_provider(max_output_bytes=2000).edit(edit_request())

    assert info.value.accepted is True and fake.post_count == 1


async def test_the_key_never_reaches_logs_or_errors(
    fake: FakeSegmind, make_provider: Callable[..., SegmindProvider], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = make_provider(api_key="SG_deadbeefdeadbeef")

    with pytest.raises(ServiceUnavailable) as info:
        await provider.edit(edit_request())

    for text in (caplog.text, str(info.value), repr(provider)):
        assert "deadbeef" not in text


# ----------------------------------------------------------------------------- /diagnose check


async def test_check_reads_a_404_for_an_unknown_request_as_the_key_accepted(
    fake: FakeSegmind, provider: SegmindProvider
) -> None:
    health = await provider.check()

    assert (health.ok, health.reachable, health.authenticated) == (True, True, True)
    assert health.detail == "API key accepted"
    (call,) = fake.requests
    assert (call.method, call.endpoint, call.status) == ("GET", "status", 404)
    assert call.path.startswith("/v2/requests/") and call.path.endswith("/status")
    assert call.key_ok and not call.bearer
    assert fake.post_count == 0  # nothing billable


async def test_check_reports_a_refused_key_without_echoing_it(
    fake: FakeSegmind, make_provider: Callable[..., SegmindProvider]
) -> None:
    health = await make_provider(api_key="SG_deadbeefdeadbeef").check()

    assert (health.ok, health.reachable, health.authenticated) == (False, True, False)
    assert health.detail == "API key refused (HTTP 401 unauthorized)"
    assert "deadbeef" not in health.detail
    assert fake.requests[0].status == 401


async def test_check_reports_an_unreachable_service(make_provider: Callable[..., SegmindProvider]) -> None:
    health = await make_provider(base_url=f"http://127.0.0.1:{closed_port()}/v1").check()

    assert (health.ok, health.reachable, health.authenticated) == (False, False, None)
    assert health.detail.startswith("unreachable (")


async def test_fake_request_status_checks_the_key_before_the_id(
    fake: FakeSegmind, session: aiohttp.ClientSession
) -> None:
    url = f"{fake.origin}/v2/requests/some-id/status"
    async with session.get(url) as resp:
        assert resp.status == 401
        assert "x-api-key" in (await resp.json())["error"]
    async with session.get(url, headers={"Authorization": f"Bearer {fake.api_key}"}) as resp:
        assert resp.status == 401
    async with session.get(url, headers={"x-api-key": fake.api_key}) as resp:
        assert resp.status == 404
    async with session.post(url, headers={"x-api-key": fake.api_key}) as resp:
        assert resp.status == 405


# ----------------------------------------------------------------------------- units


def test_reset_at_is_read_in_every_plausible_format() -> None:
    now = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
    epoch = now.timestamp()

    assert parse_reset_at("2026-11-01T12:00:30Z", now=now) == 30
    assert parse_reset_at("2026-11-01T12:00:30.500+00:00", now=now) == 30.5
    assert parse_reset_at("2026-11-01 12:00:10", now=now) == 10  # naive: UTC
    assert parse_reset_at("Sun, 01 Nov 2026 12:01:00 GMT", now=now) == 60
    assert parse_reset_at(str(int(epoch) + 5), now=now) == 5
    assert parse_reset_at(str(int(epoch * 1000) + 7000), now=now) == 7
    assert parse_reset_at("2026-11-01T11:00:00Z", now=now) == 0  # already past
    assert parse_reset_at("soon", now=now) is None
    assert parse_reset_at(None, now=now) is None


@pytest.mark.parametrize(
    ("status", "raw", "exc_type", "code"),
    [
        (400, body(error="prompt is required"), InvalidInput, None),
        (400, body(error="Your request was flagged by moderation"), ProviderRejected, "moderation"),
        (
            401,
            body(error="unauthorized", error_description="API key is invalid"),
            ServiceUnavailable,
            "unauthorized",
        ),
        (406, body(error="Not enough credits"), ServiceUnavailable, "insufficient_credits"),
        (406, body(error="Invalid content type"), InvalidInput, "invalid_content_type"),
        (406, b"", ServiceUnavailable, "not_acceptable"),
        (405, b"<html>405 Not Allowed</html>", ServiceUnavailable, "method_not_allowed"),
        (410, body(error="deprecated"), ModelUnavailable, "retired"),
        (429, body(error="rate_limit_exceeded"), RateLimited, "rate_limited"),
        (500, body(error="generation failed"), ServerError, None),
        (408, b"<html>408 Request Timeout</html>", ProviderTimeout, "timeout"),  # not the input
        (422, body(status="FAILED", error="x"), InvalidInput, None),
    ],
)
def test_classify_segmind_error_table(
    status: int, raw: bytes, exc_type: type[ProviderError], code: str | None
) -> None:
    err = classify_segmind_error(status, raw, {"x-request-id": "r1"}, provider="segmind")

    assert type(err) is exc_type
    assert err.code == code
    assert err.request_id == "r1"
    if isinstance(err, RateLimited):
        assert err.retry_after is None  # no reset header, no Retry-After


# ----------------------------------------------------------------------------- GPT Image 2

GPT2 = "gpt-image-2"


async def post_edit(
    session: aiohttp.ClientSession, fake: FakeSegmind, model: str, body: dict
) -> tuple[int, dict]:
    async with session.post(
        f"{fake.base_url}/{model}", json=body, headers={"x-api-key": fake.api_key}
    ) as resp:
        return resp.status, await resp.json()


async def asset_url(session: aiohttp.ClientSession, fake: FakeSegmind) -> str:
    data_url = "data:image/png;base64," + base64.b64encode((DATA / "astronaut.png").read_bytes()).decode()
    async with session.post(
        fake.upload_url, json={"data_urls": [data_url]}, headers={"x-api-key": fake.api_key}
    ) as r:
        return (await r.json())["file_urls"][0]


@pytest.mark.parametrize(
    ("size", "quality", "background", "expected_size"),
    [
        ("2048x1152", "high", "auto", (2048, 1152)),
        ("1024x1024", "auto", "transparent", (1024, 1024)),
        ("1280x768", "low", "opaque", (1280, 768)),
    ],
)
async def test_gpt_image_2_sends_one_image_url_and_a_free_size_and_is_charged_from_x_cost(
    fake: FakeSegmind,
    provider: SegmindProvider,
    size: str,
    quality: str,
    background: str,
    expected_size: tuple[int, int],
) -> None:
    result = await provider.edit(edit_request(model=GPT2, size=size, quality=quality, background=background))

    body = edit_call(fake).json
    assert edit_call(fake).path == "/v1/gpt-image-2"
    expected = {"prompt", "image", "size", "output_format"}
    expected |= {"quality"} if quality != "auto" else set()
    expected |= {"background"} if background != "auto" else set()
    assert set(body) == expected
    assert isinstance(body["image"], str) and body["image"].startswith(f"{fake.origin}/assets/")
    assert body["size"] == size and body.get("quality", "auto") == quality
    assert decoded(result.images[0].data).size == expected_size
    assert result.cost_usd == str(PRICE[GPT2])


@pytest.mark.parametrize(
    "change",
    [
        {"images": (photo(), photo("coffee.png"))},  # one `image` only
        {"mask": hole_mask((0, 0, 256, 512), (0, 0, 0))},
        {"size": "wide"},
        {"size": "auto"},  # `size` is documented as WxH only: routing sends the nearest one
        {"quality": "xhigh"},
    ],
    ids=["two-images", "mask", "bad-size", "auto-size", "xhigh"],
)
async def test_gpt_image_2_requests_the_route_cannot_take_are_refused_before_anything_is_sent(
    fake: FakeSegmind, provider: SegmindProvider, change: dict
) -> None:
    images = change.pop("images", None)

    with pytest.raises(InvalidInput) as info:
        await provider.edit(edit_request(images, model=GPT2, **change))

    assert info.value.status is None and info.value.accepted is False
    assert fake.requests == []


@pytest.mark.parametrize(
    ("make_body", "text"),
    [
        (lambda url: {"prompt": "p", "image": [url]}, "one image URL"),
        (lambda url: {"prompt": "p", "image_urls": [url]}, "Unknown parameter"),
        (lambda url: {"prompt": "p", "image": url, "mask": url}, "Unknown parameter"),
        (lambda url: {"prompt": "p", "image": url, "quality": "auto"}, "quality must be"),
        (lambda url: {"prompt": "p", "image": url, "size": "auto"}, "size: must be WIDTHxHEIGHT"),
        (lambda url: {"prompt": "p", "image": url, "size": "1000x1000"}, "multiples of 16"),
        (lambda url: {"prompt": "p", "image": url, "size": "3072x960"}, "aspect ratio"),
        (lambda url: {"prompt": "p", "image": url, "size": "512x512"}, "pixels"),
    ],
    ids=["image-list", "image-urls", "mask", "auto-quality", "auto-size", "not-16", "too-wide", "too-small"],
)
async def test_fake_validates_the_gpt_image_2_route(
    fake: FakeSegmind, session: aiohttp.ClientSession, make_body: Callable[[str], dict], text: str
) -> None:
    credits = fake.credits

    status, payload = await post_edit(session, fake, GPT2, make_body(await asset_url(session, fake)))

    assert status == 400 and text in payload["error"]
    assert fake.credits == credits


async def test_fake_gpt_image_2_without_an_image_draws_from_text_alone(
    fake: FakeSegmind, session: aiohttp.ClientSession
) -> None:
    async with session.post(
        f"{fake.base_url}/{GPT2}", json={"prompt": "p"}, headers={"x-api-key": fake.api_key}
    ) as resp:
        assert resp.status == 200 and resp.content_type == "image/png"


@pytest.mark.parametrize(
    ("how", "status"), [(Gone.NOT_FOUND, 404), (Gone.GONE, 410), (Gone.NO_CHANNELS, 503)]
)
@pytest.mark.parametrize("model", [GPT2, MINI])
async def test_a_model_gone_at_segmind_is_model_gone_and_not_charged(
    fake: FakeSegmind, provider: SegmindProvider, model: str, how: Gone, status: int
) -> None:
    credits = fake.credits
    fake.retire_route(model, how)

    with pytest.raises(ModelGone) as info:
        await provider.edit(edit_request(model=model, size="1024x1024"))

    assert (info.value.status, info.value.accepted, info.value.retryable_elsewhere) == (status, False, True)
    assert fake.post_count == 1 and fake.credits == credits
