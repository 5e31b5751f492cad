"""Contract tests: `WaveSpeedProvider` against the fake WaveSpeed v3 API over real sockets."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable

import aiohttp
import pytest
from PIL import Image, ImageChops, ImageOps

from bot.providers.base import InputImage
from bot.providers.errors import (
    InvalidInput,
    ModelGone,
    ModelUnavailable,
    ProviderError,
    ProviderJobFailed,
    ProviderRejected,
    ProviderTimeout,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)
from bot.providers.wavespeed import (
    GPT_IMAGE_2_RATIOS,
    GPT_IMAGE_2X_RATIOS,
    GPT_IMAGE_2X_ROUTES,
    ROUTE_SIZES,
    WaveSpeedProvider,
    aspect_and_resolution,
    classify_wavespeed_error,
)
from tests.fakes._base import Gone
from tests.fakes.wavespeed_server import PIXELS as FAKE_PIXELS
from tests.fakes.wavespeed_server import FakeWaveSpeed, Fault
from tests.fixtures import serving
from tests.providers.helpers import (
    DATA,
    FAST,
    FAST_POLLING,
    adapter_builder,
    body,
    decoded,
    hole_mask,
    photo,
    request_builder,
    until,
)

MINI = "openai/gpt-image-1-mini/edit"
FULL = "openai/gpt-image-1/edit"
HOLE = (0, 0, 256, 512)  # the left half of the 512x512 astronaut

edit_request = request_builder(prompt="turn it into a pencil sketch", model=MINI)


def openai_mask() -> InputImage:
    return hole_mask(HOLE, (200, 10, 10))


fake = serving(FakeWaveSpeed)


@pytest.fixture
def make_provider(fake: FakeWaveSpeed, session: aiohttp.ClientSession) -> Callable[..., WaveSpeedProvider]:
    return adapter_builder(WaveSpeedProvider, fake, session, io_timeout=5.0, **FAST_POLLING)


def submit_of(fake: FakeWaveSpeed) -> dict:
    return next(r for r in fake.requests if r.endpoint == "submit").json


# ----------------------------------------------------------------------------- happy path


async def test_mini_edit_uploads_then_submits_only_documented_fields_and_polls_the_result(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider
) -> None:
    result = await provider.edit(edit_request((photo(), photo("coffee.png"))))

    assert [r.endpoint for r in fake.requests[:3]] == ["upload", "upload", "submit"]
    assert [r.path for r in fake.requests[:2]] == ["/api/v3/media/upload/binary"] * 2
    body = submit_of(fake)
    assert set(body) == {"prompt", "images", "enable_base64_output", "enable_sync_mode"}
    assert body["enable_base64_output"] is True and body["enable_sync_mode"] is False
    assert len(body["images"]) == 2
    polls = [r for r in fake.requests if r.endpoint == "poll"]
    assert len(polls) == fake.polls_to_finish
    assert all(r.path.endswith("/result") and r.method == "GET" for r in polls)
    assert fake.count("file") == 0  # base64 output saved the download
    assert result.request_id in fake.tasks
    (out,) = result.images
    expected = ImageOps.mirror(decoded(photo().data).convert("RGB")).resize(
        (1024, 1024), Image.Resampling.BILINEAR
    )
    assert ImageChops.difference(decoded(out.data).convert("RGB"), expected).getbbox() is None


@pytest.mark.parametrize("model", [FULL, "openai/gpt-image-1"])
async def test_full_model_sends_image_mask_quality_and_a_star_size_and_edits_only_the_mask(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, model: str
) -> None:
    source = photo()

    result = await provider.edit(
        edit_request((source,), model=model, mask=openai_mask(), quality="high", size="1536x1024")
    )

    body = submit_of(fake)
    assert set(body) == {
        "prompt",
        "image",
        "mask_image",
        "quality",
        "size",
        "enable_base64_output",
        "enable_sync_mode",
    }
    assert (body["quality"], body["size"]) == ("high", "1536*1024")
    assert next(r for r in fake.requests if r.endpoint == "submit").path == f"/api/v3/{model}"
    out = decoded(result.images[0].data).convert("RGB")
    assert out.size == (1536, 1024)
    back = out.resize((512, 512), Image.Resampling.BILINEAR)
    original = decoded(source.data).convert("RGB")
    # Right half kept; left half (the mask's transparent area) mirrored from the right half.
    for (x, y), want in (
        ((400, 300), original.getpixel((400, 300))),
        ((100, 300), original.getpixel((411, 300))),
    ):
        assert all(abs(a - b) <= 40 for a, b in zip(back.getpixel((x, y)), want, strict=True)), (x, y)
    assert (result.quality, result.size) == ("high", "1536x1024")


async def test_auto_size_and_quality_on_the_full_model(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider
) -> None:
    await provider.edit(edit_request(model=FULL))

    body = submit_of(fake)
    assert body["size"] == "auto"
    assert "quality" not in body


async def test_url_outputs_are_downloaded_without_the_key_and_the_signature_is_never_logged(
    fake: FakeWaveSpeed, make_provider: Callable[..., WaveSpeedProvider], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.url_outputs = True  # a route that answers with URLs although base64 was asked for

    result = await make_provider().edit(edit_request())

    downloads = [r for r in fake.requests if r.endpoint == "file"]
    assert len(downloads) == 1 and not downloads[0].has_auth_header
    assert decoded(result.images[0].data).format == "PNG"
    assert "Signature" not in caplog.text and fake.api_key not in caplog.text


@pytest.mark.parametrize("prefix", [False, True])
async def test_bare_and_data_url_base64_outputs_both_decode(
    session: aiohttp.ClientSession, prefix: bool
) -> None:
    async with FakeWaveSpeed(base64_prefix=prefix) as fake:
        provider = WaveSpeedProvider(session, fake.api_key, fake.base_url, policy=FAST, poll_interval=0.01)
        result = await provider.edit(edit_request())

    assert decoded(result.images[0].data).size == (1024, 1024)


async def test_a_task_finished_before_its_deadline_is_delivered_though_its_download_outlasts_it(
    fake: FakeWaveSpeed, make_provider: Callable[..., WaveSpeedProvider]
) -> None:
    """Polls and the download shared the job's deadline: a task completed just before it (a CDN fetch
    of a 4k result takes a while) ended as a timeout, its image made and paid for and thrown away.
    Once the task is seen finished, its download gets `DOWNLOAD_GRACE_SECONDS` past the deadline."""
    fake.url_outputs = True
    fake.hold_outputs()
    request = edit_request(deadline=time.monotonic() + 3.0)
    run = asyncio.create_task(make_provider().edit(request))

    await until(lambda: fake.count("file") == 1)  # completed: its result is being fetched
    await until(lambda: time.monotonic() > request.deadline or run.done())
    fake.release_outputs()
    result = await run

    assert len(result.images) == 1 and decoded(result.images[0].data).size == (1024, 1024)


@pytest.mark.parametrize("url_outputs", [False, True], ids=["base64", "url"])
async def test_a_completed_task_whose_output_is_cut_off_is_an_accepted_server_error(
    fake: FakeWaveSpeed, make_provider: Callable[..., WaveSpeedProvider], url_outputs: bool
) -> None:
    """The task ran (billed), but its image stops after a third: no result, nothing sent again, and
    never passed on as an image."""
    fake.url_outputs = url_outputs
    fake.fail_next(Fault.OUTPUT_TRUNCATED)

    with pytest.raises(ServerError) as info:
        await make_provider().edit(edit_request())

    assert type(info.value) is ServerError
    assert info.value.accepted is True and not info.value.retryable_elsewhere
    assert fake.submit_count == 1


async def test_sync_mode_returns_the_finished_task_without_polling(
    fake: FakeWaveSpeed, make_provider: Callable[..., WaveSpeedProvider]
) -> None:
    result = await make_provider(sync_mode=True).edit(edit_request())

    assert submit_of(fake)["enable_sync_mode"] is True
    assert fake.count("poll") == 0
    assert len(result.images) == 1


async def test_sync_wait_timeout_5004_falls_back_to_polling_the_same_task(
    fake: FakeWaveSpeed, make_provider: Callable[..., WaveSpeedProvider]
) -> None:
    fake.fail_next(Fault.SYNC_TIMEOUT)

    result = await make_provider(sync_mode=True).edit(edit_request())

    assert fake.submit_count == 1
    assert fake.count("poll") >= 1
    (task_id,) = fake.tasks
    assert result.request_id == task_id
    assert len(result.images) == 1


# ----------------------------------------------------------------------------- refused before any request


@pytest.mark.parametrize(
    ("change", "exc_type"),
    [
        ({"quality": "low"}, InvalidInput),  # the mini edit has no quality field at WaveSpeed
        ({"size": "1024x1024"}, InvalidInput),
        ({"count": 3}, InvalidInput),
        ({"mask": openai_mask()}, InvalidInput),
        ({"images": (photo(),) * 5}, InvalidInput),
        ({"model": FULL, "images": (photo(), photo())}, InvalidInput),
        ({"output_format": "webp"}, InvalidInput),
        ({"background": "opaque"}, InvalidInput),
        ({"model": "openai/gpt-image-1-mini"}, ModelUnavailable),
    ],
    ids=[
        "quality",
        "size",
        "count",
        "mask-on-mini",
        "five-images",
        "two-on-full",
        "webp",
        "background",
        "model",
    ],
)
async def test_options_the_route_cannot_honour_are_refused_before_any_request(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, change: dict[str, object], exc_type: type[ProviderError]
) -> None:
    images = change.pop("images", None)

    with pytest.raises(exc_type) as info:
        await provider.edit(edit_request(images, **change))  # type: ignore[arg-type]

    assert info.value.accepted is False
    assert info.value.retryable_elsewhere  # the route's limit, not the user's: another route may serve it
    assert fake.requests == []


async def test_an_image_over_the_upload_limit_is_refused_before_uploading(
    fake: FakeWaveSpeed, make_provider: Callable[..., WaveSpeedProvider]
) -> None:
    with pytest.raises(InvalidInput, match="upload limit"):
        await make_provider(max_upload_bytes=1000).edit(edit_request())

    assert fake.requests == []


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "exc_type", "accepted", "elsewhere", "submits"),
    [
        (Fault.UNAUTHORIZED, ServiceUnavailable, False, True, 0),
        (Fault.UPLOAD_ERROR, ServerError, False, True, 0),
        (Fault.INSUFFICIENT_BALANCE, ServiceUnavailable, False, True, 1),
        (Fault.SERVER_ERROR, ServerError, False, True, 1),
        (Fault.JOB_FAILED, ProviderJobFailed, True, False, 1),
        (Fault.JOB_CANCELLED, ProviderJobFailed, True, False, 1),
        (Fault.JOB_TIMEOUT, ProviderTimeout, True, False, 1),
        # Completed, but the safety filter blanked the output (has_nsfw_contents): never posted.
        (Fault.OUTPUT_NSFW, ProviderRejected, True, False, 1),
    ],
)
async def test_each_fault_maps_to_its_exception_and_the_job_is_submitted_at_most_once(
    fake: FakeWaveSpeed,
    provider: WaveSpeedProvider,
    fault: Fault,
    exc_type: type[ProviderError],
    accepted: bool,
    elsewhere: bool,
    submits: int,
) -> None:
    fake.fail_always(fault)

    with pytest.raises(exc_type) as info:
        await provider.edit(edit_request())

    assert type(info.value) is exc_type
    assert info.value.accepted is accepted
    assert info.value.retryable_elsewhere is elsewhere
    assert fake.submit_count == submits


async def test_an_http_200_failure_is_a_failed_job_with_the_task_id(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider
) -> None:
    fake.fail_next(Fault.JOB_FAILED)

    with pytest.raises(ProviderJobFailed) as info:
        await provider.edit(edit_request())

    last_poll = [r for r in fake.requests if r.endpoint == "poll"][-1]
    assert last_poll.status == 200
    assert info.value.request_id in fake.tasks
    assert info.value.code == "failed"


async def test_a_poll_502_is_retried(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    fake.fail_next(Fault.POLL_ERROR)

    result = await provider.edit(edit_request())

    assert next(r.status for r in fake.requests if r.endpoint == "poll") == 502
    assert len(result.images) == 1 and fake.submit_count == 1


async def test_a_poll_outage_longer_than_one_gets_retries_does_not_give_up_the_paid_job(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider
) -> None:
    fake.fail_next(Fault.POLL_ERROR, times=3 * FAST.attempts)

    result = await provider.edit(edit_request(deadline=time.monotonic() + 30))

    assert len(result.images) == 1 and fake.submit_count == 1
    assert [r.status for r in fake.requests if r.endpoint == "poll"].count(502) == 3 * FAST.attempts


@pytest.mark.parametrize("fault", [Fault.POLL_ENVELOPE_ERROR, Fault.POLL_ENVELOPE_TIMEOUT])
async def test_a_poll_answered_200_with_a_server_error_in_its_envelope_is_polled_on(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, fault: Fault
) -> None:
    """A 5xx or a 408 inside a 200's envelope: the vendor did not answer this poll; the job runs on."""
    fake.fail_next(fault, times=2)

    result = await provider.edit(edit_request(deadline=time.monotonic() + 30))

    assert len(result.images) == 1 and fake.submit_count == 1


async def test_429_beyond_the_deadline_is_not_accepted_and_may_go_elsewhere(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider
) -> None:
    fake.fail_next(Fault.RATE_LIMITED, retry_after=10)

    with pytest.raises(RateLimited) as info:
        await provider.edit(edit_request(deadline=time.monotonic() + 3))

    assert info.value.accepted is False and info.value.retryable_elsewhere
    assert fake.submit_count == 1


async def test_deadline_stops_polling_with_an_accepted_timeout_and_sends_no_cancel(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider
) -> None:
    fake.fail_next(Fault.NEVER_FINISHES)
    started = time.monotonic()

    with pytest.raises(ProviderTimeout) as info:
        await provider.edit(edit_request(deadline=time.monotonic() + 0.4))

    assert time.monotonic() - started < 1.5
    assert info.value.accepted is True
    assert fake.submit_count == 1
    assert {(r.method, r.endpoint) for r in fake.requests} == {
        ("POST", "upload"),
        ("POST", "submit"),
        ("GET", "poll"),
    }


async def test_a_hanging_sync_submit_times_out_as_accepted_and_is_not_resent(
    fake: FakeWaveSpeed, make_provider: Callable[..., WaveSpeedProvider]
) -> None:
    fake.fail_always(Fault.HANG)

    with pytest.raises(ProviderTimeout) as info:
        await make_provider(sync_mode=True, call_timeout=0.3).edit(edit_request())

    assert info.value.accepted is True
    assert fake.submit_count == 1


# ----------------------------------------------------------------------------- the fake validates


async def upload(
    session: aiohttp.ClientSession, fake: FakeWaveSpeed, path: str = "/media/upload/binary"
) -> dict:
    form = aiohttp.FormData()
    form.add_field("file", (DATA / "astronaut.png").read_bytes(), filename="a.png", content_type="image/png")
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with session.post(f"{fake.base_url}{path}", data=form, headers=headers) as resp:
        return await resp.json()


async def submit(
    session: aiohttp.ClientSession, fake: FakeWaveSpeed, model: str, body: dict
) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with session.post(f"{fake.base_url}/{model}", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_fake_serves_every_documented_upload_flow_and_both_result_paths(
    fake: FakeWaveSpeed, session: aiohttp.ClientSession
) -> None:
    classic = (await upload(session, fake))["data"]["download_url"]
    alt = (await upload(session, fake, "/upload"))["data"]["url"]
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    meta = {"filename": "a.png", "size": 10, "content_type": "image/png"}
    async with session.post(f"{fake.base_url}/media/uploads", json=meta, headers=headers) as resp:
        ticket = (await resp.json())["data"]
    async with session.put(ticket["upload"]["url"], data=(DATA / "astronaut.png").read_bytes()) as resp:
        assert resp.status == 200
    newest = ticket["download_url"]

    for url in (classic, alt, newest):
        status, payload = await submit(session, fake, MINI, {"prompt": "p", "images": [url]})
        assert status == 200, payload
        task_id = payload["data"]["id"]
        for suffix in ("/result", ""):
            async with session.get(f"{fake.base_url}/predictions/{task_id}{suffix}", headers=headers) as resp:
                assert resp.status == 200


@pytest.mark.parametrize(
    ("model", "make_body", "text"),
    [
        (MINI, lambda url: {"prompt": "p", "image": url}, "unknown parameter"),  # wrong image field
        (MINI, lambda url: {"prompt": "p", "images": [url], "quality": "low"}, "unknown parameter"),
        (FULL, lambda url: {"prompt": "p", "images": [url]}, "unknown parameter"),
        (FULL, lambda url: {"prompt": "p", "image": url, "size": "512*512"}, "size must be"),
        (FULL, lambda url: {"prompt": "p", "image": "https://cdn.discordapp.com/x.png"}, "cannot download"),
        (MINI, lambda url: {"prompt": "p", "images": [url] * 5}, "1 to 4"),
    ],
    ids=["image-on-mini", "quality-on-mini", "images-on-full", "bad-size", "cdn-url", "five-images"],
)
async def test_fake_rejects_wrong_fields_like_a_strict_wavespeed(
    fake: FakeWaveSpeed,
    session: aiohttp.ClientSession,
    model: str,
    make_body: Callable[[str], dict],
    text: str,
) -> None:
    url = (await upload(session, fake))["data"]["download_url"]

    status, payload = await submit(session, fake, model, make_body(url))

    assert status == 400
    assert text in payload["message"]


async def test_fake_refuses_a_webp_on_the_mini_edit_whose_page_says_jpg_png(
    fake: FakeWaveSpeed, session: aiohttp.ClientSession
) -> None:
    buffer = io.BytesIO()
    Image.open(DATA / "astronaut.png").convert("RGB").save(buffer, "WEBP")
    form = aiohttp.FormData()
    form.add_field("file", buffer.getvalue(), filename="a.webp", content_type="image/webp")
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with session.post(f"{fake.base_url}/media/upload/binary", data=form, headers=headers) as resp:
        url = (await resp.json())["data"]["download_url"]  # the upload takes WebP (§3.7)

    status, payload = await submit(session, fake, MINI, {"prompt": "p", "images": [url]})
    assert (status, payload["message"]) == (400, "images must be JPG or PNG")
    png = (await upload(session, fake))["data"]["download_url"]
    assert (await submit(session, fake, MINI, {"prompt": "p", "images": [png]}))[0] == 200


async def test_fake_switch_lets_the_mini_edit_take_quality_and_size(session: aiohttp.ClientSession) -> None:
    async with FakeWaveSpeed(mini_accepts_quality_size=True) as fake:
        url = (await upload(session, fake))["data"]["download_url"]
        status, _ = await submit(session, fake, MINI, {"prompt": "p", "images": [url], "size": "1024x1536"})
    assert status == 200


# ----------------------------------------------------------------------------- classify unit


@pytest.mark.parametrize(
    ("status", "raw", "exc_type", "accepted", "elsewhere"),
    [
        (401, body(code=401, message="invalid authentication"), ServiceUnavailable, False, True),
        (402, b"", ServiceUnavailable, False, True),
        (400, body(code=400, message="Insufficient balance"), ServiceUnavailable, False, True),
        (200, body(code=500, message="upload failed", data=None), ServerError, False, True),
        (404, body(code=404, message="model not found"), ModelUnavailable, False, True),
        (429, b"Too Many Requests", RateLimited, False, True),
        (400, body(code=400, message="prompt blocked by content moderation"), ProviderRejected, False, False),
        (400, body(code=400, message="bad size"), InvalidInput, False, False),
        (503, b"", ServerError, False, True),
        (504, b"", ServerError, True, False),
        (
            200,
            body(code=200, data={"id": "t", "status": "failed", "error": "boom"}),
            ProviderJobFailed,
            True,
            False,
        ),
        (200, body(code=200, data={"id": "t", "status": "cancelled"}), ProviderJobFailed, True, False),
        (200, body(code=200, data={"id": "t", "status": "timeout"}), ProviderTimeout, True, False),
        (
            200,
            body(code=200, data={"status": "failed", "error": "NSFW detected"}),
            ProviderRejected,
            True,
            False,
        ),
        (  # the input's fault: not the provider's health (the breaker counts it as an answer)
            200,
            body(code=200, data={"status": "failed", "error": "cannot identify image file"}),
            InvalidInput,
            True,
            False,
        ),
    ],
)
def test_classify_wavespeed_error_table(
    status: int, raw: bytes, exc_type: type[ProviderError], accepted: bool, elsewhere: bool
) -> None:
    err = classify_wavespeed_error(status, raw, {}, provider="wavespeed")

    assert type(err) is exc_type
    assert (err.accepted, err.retryable_elsewhere) == (accepted, elsewhere)


# ----------------------------------------------------------------------------- GPT Image 2 routes

GPT2 = "openai/gpt-image-2/edit"
FLARE_26 = "openai/gpt-image-2.6-flare/edit"
SUNBURST_25 = "openai/gpt-image-2.5-sunburst/edit"


@pytest.mark.parametrize(
    ("route", "size", "ratio", "resolution"),
    [
        (GPT2, "1024x1024", "1:1", "1k"),
        (GPT2, "1536x1024", "3:2", "1k"),
        (GPT2, "1024x1536", "2:3", "1k"),
        (GPT2, "2048x2048", "1:1", "2k"),
        (GPT2, "2048x1152", "16:9", "2k"),
        (FLARE_26, "768x1024", "3:4", "1k"),
        (SUNBURST_25, "2048x1024", "2:1", "1k"),
        ("openai/gpt-image-2.6-sunburst/edit", "864x2016", "9:21", "1k"),
    ],
)
async def test_an_exact_size_becomes_aspect_ratio_and_resolution_and_no_size_is_sent(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, route: str, size: str, ratio: str, resolution: str
) -> None:
    result = await provider.edit(edit_request(model=route, size=size, quality="high"))

    body = submit_of(fake)
    assert "size" not in body
    assert (body["aspect_ratio"], body["resolution"], body["quality"]) == (ratio, resolution, "high")
    assert fake.requests[[r.endpoint for r in fake.requests].index("submit")].path == f"/api/v3/{route}"
    assert decoded(result.images[0].data).size == tuple(int(v) for v in size.split("x"))


async def test_the_4k_tier_is_reached_through_its_exact_size(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider
) -> None:
    result = await provider.edit(edit_request(model=GPT2, size="3840x2160"))

    assert (submit_of(fake)["aspect_ratio"], submit_of(fake)["resolution"]) == ("16:9", "4k")
    assert decoded(result.images[0].data).size == (3840, 2160)


async def test_auto_size_sends_neither_field_and_follows_the_input(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider
) -> None:
    result = await provider.edit(edit_request(model=GPT2, size="auto", quality="auto"))

    body = submit_of(fake)
    assert set(body) == {"prompt", "images"}
    assert decoded(result.images[0].data).size == (1024, 1024)  # the square astronaut: 1:1 at 1k


@pytest.mark.parametrize("sync_mode", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("route", [GPT2, *GPT_IMAGE_2X_ROUTES])
async def test_a_2x_route_is_sent_no_base64_or_sync_flag_and_its_task_is_polled_and_downloaded(
    fake: FakeWaveSpeed, make_provider: Callable[..., WaveSpeedProvider], route: str, sync_mode: bool
) -> None:
    """The flags are published for the 1.x routes only (models-2026-12.md §4 lists neither for 2.x):
    a 2.x route may refuse a field its schema lacks. Without them its result is a URL, downloaded,
    and its task is polled whatever WAVESPEED_SYNC_MODE says."""
    result = await make_provider(sync_mode=sync_mode).edit(edit_request(model=route, size="1024x1024"))

    body = submit_of(fake)
    assert not {"enable_base64_output", "enable_sync_mode"} & set(body)
    assert fake.count("poll") >= 1 and fake.count("file") == 1
    assert decoded(result.images[0].data).size == (1024, 1024)


@pytest.mark.parametrize(
    ("route", "size"),
    [
        (GPT2, "2048x1024"),  # 2:1 is only on the 2.5/2.6 routes
        (GPT2, "1280x768"),  # a valid OpenAI size with no exact aspect/resolution pair
        (FLARE_26, "1600x896"),
        (FLARE_26, "4096x4096"),
        (SUNBURST_25, "1536x512"),  # 3:1 exists, but its pixels are not published: never guessed
    ],
)
async def test_a_size_that_maps_to_no_ratio_and_resolution_is_refused_before_anything_is_sent(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, route: str, size: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        await provider.edit(edit_request(model=route, size=size))

    assert info.value.status is None and info.value.accepted is False
    assert f"size={size}" in str(info.value)
    assert fake.requests == []


def test_route_sizes_lists_exactly_what_each_route_can_map_and_the_fake_renders_them() -> None:
    for route, sizes in ROUTE_SIZES.items():
        assert sizes[0] == "auto"
        for size in sizes[1:]:
            pair = aspect_and_resolution(size)
            assert pair is not None
            ratios = GPT_IMAGE_2_RATIOS if route == GPT2 else GPT_IMAGE_2X_RATIOS
            if route in (GPT2, *GPT_IMAGE_2X_ROUTES):
                assert pair[0] in ratios
                assert FAKE_PIXELS[pair] == tuple(int(v) for v in size.split("x"))
    assert len(ROUTE_SIZES[GPT2]) == 1 + 10 * 2 + 3  # auto; ten ratios at 1k/2k; 4k for 16:9, 9:16, 21:9
    assert "2048x1024" in ROUTE_SIZES[FLARE_26] and "2048x1024" not in ROUTE_SIZES[GPT2]
    assert ROUTE_SIZES["openai/gpt-image-1-mini/edit"] == ("auto",)


@pytest.mark.parametrize("quality", ["xhigh", "max"])
async def test_25_and_26_routes_take_xhigh_max_output_format_and_a_mask(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, quality: str
) -> None:
    result = await provider.edit(
        edit_request(model=FLARE_26, quality=quality, output_format="jpeg", mask=openai_mask())
    )

    body = submit_of(fake)
    assert (body["quality"], body["output_format"]) == (quality, "jpeg")
    assert isinstance(body["images"], list) and body["mask_image"].startswith(fake.origin)
    assert result.images[0].format == "jpeg"


@pytest.mark.parametrize(
    "change",
    [{"quality": "xhigh"}, {"output_format": "webp"}, {"mask": hole_mask(HOLE, (0, 0, 0))}],
    ids=["xhigh", "webp", "mask"],
)
async def test_gpt_image_2_route_refuses_what_only_25_and_26_take(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, change: dict
) -> None:
    with pytest.raises(InvalidInput):
        await provider.edit(edit_request(model=GPT2, **change))

    assert fake.requests == []


@pytest.mark.parametrize(
    ("model", "make_body", "text"),
    [
        (GPT2, lambda url: {"prompt": "p", "images": [url], "size": "1024*1024"}, "unknown parameter"),
        (GPT2, lambda url: {"prompt": "p", "image": url}, "unknown parameter"),
        (GPT2, lambda url: {"prompt": "p"}, "images is required"),
        (GPT2, lambda url: {"prompt": "p", "images": [url], "quality": "xhigh"}, "quality must"),
        (GPT2, lambda url: {"prompt": "p", "images": [url], "aspect_ratio": "2:1"}, "aspect_ratio must"),
        (GPT2, lambda url: {"prompt": "p", "images": [url], "output_format": "png"}, "unknown parameter"),
        (GPT2, lambda url: {"prompt": "p", "images": [url], "mask_image": url}, "unknown parameter"),
        (FLARE_26, lambda url: {"prompt": "p", "images": [url], "resolution": "8k"}, "resolution must"),
        (
            FLARE_26,
            lambda url: {"prompt": "p", "images": [url], "aspect_ratio": "1:1", "resolution": "4k"},
            "not available",
        ),
        (FLARE_26, lambda url: {"prompt": "p", "images": [url], "output_format": "gif"}, "output_format"),
        (FLARE_26, lambda url: {"prompt": "p", "images": [url], "quality": "ultra"}, "quality must"),
        (GPT2, lambda url: {"prompt": "p", "images": [url], "enable_sync_mode": False}, "unknown parameter"),
        (
            FLARE_26,
            lambda url: {"prompt": "p", "images": [url], "enable_base64_output": True},
            "unknown parameter",
        ),
    ],
    ids=[
        "size",
        "single-image",
        "no-images",
        "xhigh-on-2",
        "2-1-on-2",
        "format-on-2",
        "mask-on-2",
        "8k",
        "square-4k",
        "gif",
        "ultra",
        "sync-flag-on-2",
        "base64-flag-on-26",
    ],
)
async def test_fake_validates_the_gpt_image_2_routes(
    fake: FakeWaveSpeed,
    session: aiohttp.ClientSession,
    model: str,
    make_body: Callable[[str], dict],
    text: str,
) -> None:
    url = (await upload(session, fake))["data"]["download_url"]

    status, payload = await submit(session, fake, model, make_body(url))

    assert status == 400
    assert text in payload["message"]
    assert fake.tasks == {}


@pytest.mark.parametrize(
    ("how", "status"), [(Gone.NOT_FOUND, 404), (Gone.GONE, 410), (Gone.NO_CHANNELS, 503)]
)
@pytest.mark.parametrize("route", [GPT2, FLARE_26, MINI])
async def test_a_route_gone_at_submit_is_model_gone_and_no_task_was_created(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, route: str, how: Gone, status: int
) -> None:
    fake.retire_route(route, how)

    with pytest.raises(ModelGone) as info:
        await provider.edit(edit_request(model=route))

    assert (info.value.status, info.value.accepted, info.value.retryable_elsewhere) == (status, False, True)
    assert fake.submit_count == 1 and fake.tasks == {}


async def test_a_route_retired_after_the_submit_still_delivers_the_accepted_task(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider
) -> None:
    async def retire_now(task_id: str) -> None:
        fake.retire_route(GPT2, Gone.NO_CHANNELS)

    result = await provider.edit(edit_request(model=GPT2), on_submitted=retire_now)

    assert result.images and fake.submit_count == 1


async def test_a_404_on_a_poll_is_a_vanished_task_not_a_gone_model(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider
) -> None:
    async def forget(task_id: str) -> None:
        fake.tasks.clear()

    with pytest.raises(ServerError) as info:
        await provider.edit(edit_request(model=FLARE_26), on_submitted=forget)

    assert not isinstance(info.value, ModelUnavailable)
    assert info.value.accepted is True
