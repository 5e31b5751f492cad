"""Contract tests: `AtlasCloudProvider` against the fake Atlas Cloud API over real sockets."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable

import aiohttp
import pytest
from PIL import Image, ImageChops, ImageOps

from bot.catalog import Route, load_catalog
from bot.providers.atlascloud import GPT_IMAGE_2_SIZES, AtlasCloudProvider, classify_atlas_error
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
from bot.providers.http import fetch_output, mask_secrets, safe_message
from bot.routing import Router
from tests.fakes._base import Gone
from tests.fakes.atlascloud_server import GPT_IMAGE_2_SIZES as FAKE_GPT_IMAGE_2_SIZES
from tests.fakes.atlascloud_server import FakeAtlas, Fault
from tests.fixtures import serving
from tests.providers.helpers import (
    DATA,
    FAST,
    FAST_POLLING,
    adapter_builder,
    body,
    closed_port,
    decoded,
    hole_mask,
    photo,
    request_builder,
)

MINI = "openai/gpt-image-1-mini/edit"
FULL = "openai/gpt-image-1/edit"
HOLE = (128, 128, 384, 256)  # the masked area of the 512x512 astronaut

edit_request = request_builder(prompt="make it look like a watercolour", model=MINI, size="1024x1024")


def openai_mask() -> InputImage:
    """An OpenAI-convention mask: opaque, with a fully transparent rectangle to edit."""
    return hole_mask(HOLE, (30, 60, 90))


fake = serving(FakeAtlas)


@pytest.fixture
def make_provider(fake: FakeAtlas, session: aiohttp.ClientSession) -> Callable[..., AtlasCloudProvider]:
    return adapter_builder(AtlasCloudProvider, fake, session, io_timeout=5.0, **FAST_POLLING)


# ----------------------------------------------------------------------------- happy path


async def test_mini_edit_uploads_first_then_submits_flat_fields_and_polls_to_completion(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    images = (photo(), photo("rocket.jpg"))

    result = await provider.edit(edit_request(images, quality="low", size="1024x1536"))

    assert [r.endpoint for r in fake.requests[:3]] == ["upload", "upload", "submit"]
    assert all(r.authorized for r in fake.requests if r.endpoint != "file")
    assert [r.file_parts for r in fake.requests[:2]] == [["file"], ["file"]]
    submit = next(r for r in fake.requests if r.endpoint == "submit")
    assert submit.content_type == "application/json"
    assert set(submit.json) == {"model", "prompt", "images", "quality", "size"}
    assert submit.json["model"] == MINI and submit.json["quality"] == "low"
    assert all(url.startswith(fake.origin + "/storage/uploads/") for url in submit.json["images"])
    assert fake.count("poll") == fake.polls_to_finish
    assert fake.submit_count == 1
    assert result.provider == "atlascloud"
    assert result.request_id in fake.predictions
    assert (result.quality, result.size) == ("low", "1024x1536")
    (out,) = result.images
    assert out.format == "png"
    assert decoded(out.data).size == (1024, 1536)


async def test_the_result_is_the_fakes_real_edit_of_the_uploaded_image(provider: AtlasCloudProvider) -> None:
    source = photo()

    result = await provider.edit(edit_request((source,), size="1024x1024"))

    expected = ImageOps.invert(decoded(source.data).convert("RGB")).resize(
        (1024, 1024), Image.Resampling.BILINEAR
    )
    got = decoded(result.images[0].data).convert("RGB")
    assert ImageChops.difference(got, expected).getbbox() is None


async def test_auto_quality_is_sent_by_leaving_the_field_out(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    result = await provider.edit(edit_request(quality="auto"))

    submit = next(r for r in fake.requests if r.endpoint == "submit")
    assert "quality" not in submit.json
    assert result.quality is None  # Atlas does not say which quality it used


async def test_masked_edit_sends_one_image_and_a_mask_that_edits_exactly_the_transparent_area(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    source = photo()

    result = await provider.edit(edit_request((source,), model=FULL, mask=openai_mask(), size="1024x1024"))

    submit = next(r for r in fake.requests if r.endpoint == "submit")
    assert set(submit.json) == {"model", "prompt", "image", "mask_image", "size"}
    assert isinstance(submit.json["image"], str)
    out = decoded(result.images[0].data).convert("RGB").resize((512, 512))
    original = decoded(source.data).convert("RGB")
    inside = ((HOLE[0] + HOLE[2]) // 2, (HOLE[1] + HOLE[3]) // 2)
    outside = (20, 20)
    inverted = tuple(255 - c for c in original.getpixel(inside))
    assert all(abs(a - b) <= 24 for a, b in zip(out.getpixel(inside), inverted, strict=True))
    assert all(
        abs(a - b) <= 24 for a, b in zip(out.getpixel(outside), original.getpixel(outside), strict=True)
    )


async def test_bare_unenveloped_answers_are_understood(fake: FakeAtlas, provider: AtlasCloudProvider) -> None:
    fake.envelope = False

    result = await provider.edit(edit_request())

    assert len(result.images) == 1
    assert fake.submit_count == 1


async def test_a_catalog_override_can_flip_the_mask_convention_to_white(
    fake: FakeAtlas, make_provider: Callable[..., AtlasCloudProvider]
) -> None:
    provider = make_provider(mask_conventions={FULL: "white"})

    await provider.edit(edit_request(model=FULL, mask=openai_mask()))

    submit = next(r for r in fake.requests if r.endpoint == "submit")
    mask_bytes, _ = fake.uploads[submit.json["mask_image"].removeprefix(fake.origin)]
    mask = decoded(mask_bytes)
    assert mask.mode == "L"  # opaque, white = edit
    assert mask.getpixel((200, 200)) == 255 and mask.getpixel((10, 10)) == 0


# ----------------------------------------------------------------------------- refused before any request


@pytest.mark.parametrize(
    ("change", "exc_type"),
    [
        ({"count": 2}, InvalidInput),
        ({"mask": openai_mask()}, InvalidInput),  # the mini edit has no mask field
        ({"model": FULL, "images": (photo(), photo())}, InvalidInput),  # `image` is one URL
        ({"images": (photo(),) * 5}, InvalidInput),
        ({"size": "auto"}, InvalidInput),  # Atlas has no auto size; routing resolves it
        ({"background": "transparent"}, InvalidInput),
        ({"output_format": "jpeg"}, InvalidInput),
        ({"model": "openai/gpt-image-9/edit"}, ModelUnavailable),
    ],
    ids=[
        "count",
        "mask-on-mini",
        "two-images-on-full",
        "five-images",
        "auto-size",
        "background",
        "jpeg",
        "model",
    ],
)
async def test_options_the_route_cannot_honour_are_refused_before_any_request(
    fake: FakeAtlas, provider: AtlasCloudProvider, change: dict[str, object], exc_type: type[ProviderError]
) -> None:
    images = change.pop("images", None)

    with pytest.raises(exc_type) as info:
        await provider.edit(edit_request(images, **change))  # type: ignore[arg-type]

    assert info.value.accepted is False
    assert info.value.retryable_elsewhere  # the route's limit, not the user's: another route may serve it
    assert fake.requests == []


async def test_a_mask_without_transparency_is_the_users_problem_and_goes_nowhere(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (512, 512), (255, 255, 255)).save(buf, "PNG")
    opaque = InputImage(data=buf.getvalue(), mime="image/png", width=512, height=512)

    with pytest.raises(InvalidInput) as info:
        await provider.edit(edit_request(model=FULL, mask=opaque))

    assert info.value.code == "invalid_mask" and not info.value.retryable_elsewhere
    assert fake.requests == []


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "exc_type", "accepted", "elsewhere", "submits"),
    [
        (Fault.UNAUTHORIZED, ServiceUnavailable, False, True, 0),
        (Fault.UPLOAD_ERROR, ServerError, False, True, 0),
        (Fault.INSUFFICIENT_BALANCE, ServiceUnavailable, False, True, 1),
        (Fault.BALANCE_IN_ENVELOPE, ServiceUnavailable, False, True, 1),
        (Fault.SERVER_ERROR, ServerError, False, True, 1),
        (Fault.GATEWAY_TIMEOUT, ServerError, True, False, 1),
        (Fault.SUBMIT_WITHOUT_ID, ServerError, True, False, 1),
        (Fault.JOB_FAILED, ProviderJobFailed, True, False, 1),
        (Fault.JOB_NSFW, ProviderRejected, True, False, 1),
        (Fault.NO_OUTPUTS, ServerError, True, False, 1),
    ],
)
async def test_each_fault_maps_to_its_exception_and_the_job_is_submitted_at_most_once(
    fake: FakeAtlas,
    provider: AtlasCloudProvider,
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


async def test_outputs_beyond_the_requested_count_are_neither_fetched_nor_delivered(
    fake: FakeAtlas, provider: AtlasCloudProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """A prediction listing 40 outputs for one image asked: one is downloaded and returned (the member
    is charged per image), the rest are only counted in the log, never held in memory."""
    fake.fail_next(Fault.EXTRA_OUTPUTS)

    with caplog.at_level(logging.WARNING, logger="bot.providers.predictions"):
        result = await provider.edit(edit_request())

    assert len(result.images) == 1
    assert fake.count("file") == 1
    assert "listed 40 outputs for 1 asked" in caplog.text
    assert "/storage/outputs/" not in caplog.text


async def test_a_failed_prediction_carries_its_id_and_message(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    fake.fail_next(Fault.JOB_FAILED)

    with pytest.raises(ProviderJobFailed) as info:
        await provider.edit(edit_request())

    assert info.value.request_id in fake.predictions
    assert "upstream model error" in str(info.value)
    assert info.value.code == "failed"


async def test_a_failed_predictions_message_never_carries_the_api_key(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    """A job's error text quoting our Authorization header: exception text ends up in logs."""
    fake.fail_next(Fault.JOB_FAILED_KEY_ECHOED)

    with pytest.raises(ProviderJobFailed) as info:
        await provider.edit(edit_request())

    text = str(info.value)
    assert fake.api_key not in text and fake.api_key[:8] not in text
    assert "upstream refused 'Authorization: ***'" in text


async def test_a_poll_error_is_retried_and_the_job_still_completes(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    fake.fail_next(Fault.POLL_ERROR)

    result = await provider.edit(edit_request())

    assert len(result.images) == 1
    assert next(r.status for r in fake.requests if r.endpoint == "poll") == 503
    assert fake.submit_count == 1


async def test_a_408_on_a_poll_is_a_timeout_not_the_members_input_and_polling_goes_on(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    """A gateway's 408 on a poll says nothing about what was sent: the paid job is still running."""
    fake.fail_next(Fault.POLL_TIMEOUT)

    result = await provider.edit(edit_request())

    assert len(result.images) == 1 and fake.submit_count == 1
    assert next(r.status for r in fake.requests if r.endpoint == "poll") == 408


@pytest.mark.parametrize("how", ["http", "envelope"])
async def test_a_prediction_not_found_on_a_poll_is_an_accepted_server_error_however_it_is_said(
    fake: FakeAtlas, provider: AtlasCloudProvider, how: str
) -> None:
    """A 404 on a poll means the prediction vanished, not the model: the same error whether Atlas
    says it with the HTTP status or with `code: 404` in a 200's envelope."""
    if how == "http":
        call = provider.resume("pred_that_never_was", edit_request())
    else:
        fake.fail_next(Fault.POLL_NOT_FOUND_IN_ENVELOPE)
        call = provider.edit(edit_request())

    with pytest.raises(ServerError) as info:
        await call

    assert type(info.value) is ServerError
    assert info.value.accepted is True and not info.value.retryable_elsewhere
    assert "not found" in str(info.value)
    assert fake.count("poll") == 1 and fake.submit_count == (1 if how == "envelope" else 0)


async def test_a_poll_outage_longer_than_one_gets_retries_does_not_give_up_the_paid_job(
    fake: FakeAtlas, provider: AtlasCloudProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """Atlas answered 503 to 4 rounds of polls (each round is a GET and its own retries): the job was
    submitted and paid for and is still running, so polling goes on until its deadline, not until one
    GET's retries run out."""
    fake.fail_next(Fault.POLL_ERROR, times=4 * FAST.attempts)

    with caplog.at_level(logging.WARNING, logger="bot.providers.http.polling"):
        result = await provider.edit(edit_request(deadline=time.monotonic() + 30))

    assert len(result.images) == 1 and fake.submit_count == 1
    assert [r.status for r in fake.requests if r.endpoint == "poll"].count(503) == 4 * FAST.attempts
    assert caplog.text.count("polling got no answer") == 1  # said once per outage, not per GET


async def test_a_poll_outage_until_the_deadline_ends_as_an_accepted_timeout(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    fake.fail_always(Fault.POLL_ERROR)

    with pytest.raises(ProviderTimeout) as info:
        await provider.edit(edit_request(deadline=time.monotonic() + 0.5))

    assert info.value.accepted is True  # the job may still be billed
    assert isinstance(info.value.__cause__, ServerError)  # what the polls got, for the log
    assert fake.submit_count == 1


async def test_429_with_a_short_retry_after_is_resent_because_nothing_was_queued(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    fake.fail_next(Fault.RATE_LIMITED, retry_after=0.05)

    result = await provider.edit(edit_request(deadline=time.monotonic() + 30))

    assert [r.status for r in fake.requests if r.endpoint == "submit"] == [429, 200]
    assert len(result.images) == 1


async def test_429_beyond_the_deadline_fails_at_once_as_not_accepted(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    fake.fail_next(Fault.RATE_LIMITED, retry_after=4)

    with pytest.raises(RateLimited) as info:
        await provider.edit(edit_request(deadline=time.monotonic() + 3))

    assert info.value.retry_after == 4
    assert info.value.accepted is False and info.value.retryable_elsewhere
    assert fake.submit_count == 1


async def test_deadline_stops_polling_and_reports_an_accepted_timeout_without_any_cancel_call(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    fake.fail_next(Fault.NEVER_FINISHES)
    started = time.monotonic()

    with pytest.raises(ProviderTimeout) as info:
        await provider.edit(edit_request(deadline=time.monotonic() + 0.4))

    assert time.monotonic() - started < 1.5
    assert info.value.accepted is True and not info.value.retryable_elsewhere
    assert fake.submit_count == 1
    assert fake.count("poll") >= 2
    # Atlas documents no cancel call: nothing but uploads, one submit and GET polls were sent.
    assert {(r.method, r.endpoint) for r in fake.requests} == {
        ("POST", "upload"),
        ("POST", "submit"),
        ("GET", "poll"),
    }


async def test_a_hanging_submit_times_out_as_accepted_and_is_not_resent(
    fake: FakeAtlas, make_provider: Callable[..., AtlasCloudProvider]
) -> None:
    fake.fail_always(Fault.HANG)

    with pytest.raises(ProviderTimeout) as info:
        await make_provider(call_timeout=0.3).edit(edit_request())

    assert info.value.accepted is True
    assert fake.submit_count == 1


async def test_an_output_larger_than_the_cap_is_refused(
    fake: FakeAtlas, make_provider: Callable[..., AtlasCloudProvider]
) -> None:
    with pytest.raises(ServerError) as info:
        await make_provider(max_output_bytes=1000).edit(edit_request())

    assert info.value.accepted is True
    assert fake.submit_count == 1


async def test_the_key_and_signed_url_queries_never_reach_logs_or_errors(
    fake: FakeAtlas, make_provider: Callable[..., AtlasCloudProvider], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = make_provider()
    await provider.edit(edit_request())
    fake.fail_next(Fault.JOB_FAILED)
    with pytest.raises(ProviderJobFailed) as info:
        await provider.edit(edit_request())

    for text in (caplog.text, repr(provider), str(info.value)):
        assert fake.api_key not in text
        assert "sig=" not in text


# ----------------------------------------------------------------------------- /diagnose check


async def test_check_proves_reachability_through_the_keyless_catalog_and_says_the_key_is_unchecked(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    health = await provider.check()

    assert (health.ok, health.reachable, health.authenticated) == (True, True, None)
    assert "API key not checked" in health.detail
    assert [(r.method, r.endpoint) for r in fake.requests] == [("GET", "models")]
    assert not fake.requests[0].authorized  # the key is not sent where it is not needed
    assert fake.requests[0].status == 200


async def test_check_reports_an_http_error_without_judging_the_key(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    fake.fail_next(Fault.CATALOG_ERROR)

    health = await provider.check()

    assert (health.ok, health.reachable, health.authenticated) == (False, True, None)
    assert health.detail == "error (HTTP 503)"
    assert fake.count("models") == 1  # one try: an admin is waiting


async def test_check_reports_an_unreachable_service(make_provider: Callable[..., AtlasCloudProvider]) -> None:
    health = await make_provider(base_url=f"http://127.0.0.1:{closed_port()}/api/v1").check()

    assert (health.ok, health.reachable, health.authenticated) == (False, False, None)
    assert health.detail.startswith("unreachable (")


# ----------------------------------------------------------------------------- the fake validates


async def post(
    session: aiohttp.ClientSession, fake: FakeAtlas, body: object, *, key: str | None = None
) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key or fake.api_key}"}
    async with session.post(f"{fake.base_url}/model/generateImage", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def uploaded_url(session: aiohttp.ClientSession, fake: FakeAtlas) -> str:
    form = aiohttp.FormData()
    form.add_field("file", (DATA / "astronaut.png").read_bytes(), filename="a.png", content_type="image/png")
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with session.post(f"{fake.base_url}/model/uploadMedia", data=form, headers=headers) as resp:
        return (await resp.json())["data"]["download_url"]


@pytest.mark.parametrize(
    ("make_body", "status", "text"),
    [
        (lambda url: {"model": MINI, "prompt": "p", "image": url}, 400, "unknown field"),  # wrong image field
        (lambda url: {"model": MINI, "prompt": "p"}, 400, "missing required field 'images'"),
        (lambda url: {"model": FULL, "prompt": "p", "images": [url]}, 400, "unknown field"),
        (lambda url: {"model": MINI, "prompt": "p", "images": [url], "width": 512}, 400, "unknown field"),
        (lambda url: {"model": MINI, "prompt": "p", "images": [url], "size": "auto"}, 400, "size must be"),
        (lambda url: {"model": MINI, "prompt": "p", "images": [url], "quality": "auto"}, 400, "quality must"),
        (
            lambda url: {"model": MINI, "prompt": "p", "images": ["https://cdn.discordapp.com/a.png"]},
            400,
            "cannot fetch",
        ),
        (lambda url: {"model": "openai/dall-e/edit", "prompt": "p"}, 404, "not found"),
    ],
    ids=[
        "image-on-mini",
        "no-images",
        "images-on-full",
        "extra-field",
        "auto-size",
        "auto-quality",
        "cdn",
        "model",
    ],
)
async def test_fake_rejects_wrong_fields_like_a_strict_atlas(
    fake: FakeAtlas,
    session: aiohttp.ClientSession,
    make_body: Callable[[str], dict],
    status: int,
    text: str,
) -> None:
    url = await uploaded_url(session, fake)

    got, payload = await post(session, fake, make_body(url))

    assert got == status
    assert text in payload["msg"]


async def test_fake_serves_the_catalog_without_a_key_and_only_to_get(
    fake: FakeAtlas, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{fake.base_url}/models") as resp:
        assert resp.status == 200
        models = [m["model"] for m in (await resp.json())["data"]]
    async with session.post(f"{fake.base_url}/models", json={}) as resp:
        assert resp.status == 405

    assert models == [FULL, MINI, "openai/gpt-image-2/edit", "openai/gpt-image-2-developer/edit"]


async def test_fake_accepts_the_input_wrapper_and_sync_and_base64_modes(
    fake: FakeAtlas, session: aiohttp.ClientSession
) -> None:
    url = await uploaded_url(session, fake)

    status, payload = await post(
        session,
        fake,
        {"model": MINI, "input": {"prompt": "p", "images": [url]}, "enable_sync_mode": False},
    )
    assert status == 200 and payload["data"]["status"] == "processing"
    status, payload = await post(
        session,
        fake,
        {
            "model": MINI,
            "prompt": "p",
            "images": [url],
            "enable_sync_mode": True,
            "enable_base64_output": True,
        },
    )
    assert status == 200 and payload["data"]["status"] == "completed"
    assert payload["data"]["outputs"][0].startswith("data:image/png;base64,")
    status, payload = await post(session, fake, {"model": MINI, "prompt": "p", "images": [url]}, key="wrong")
    assert status == 401


# ----------------------------------------------------------------------------- classify unit


@pytest.mark.parametrize(
    ("status", "raw", "headers", "exc_type", "accepted", "elsewhere"),
    [
        (401, body(code=401, msg="Invalid API key"), {}, ServiceUnavailable, False, True),
        (402, body(code=402, msg="Payment required"), {}, ServiceUnavailable, False, True),
        (400, body(message="Insufficient balance"), {}, ServiceUnavailable, False, True),
        (200, body(code=402, msg="insufficient balance"), {}, ServiceUnavailable, False, True),
        (403, body(error="forbidden"), {}, ServiceUnavailable, False, True),
        (404, body(code=404, msg="model not found"), {}, ModelUnavailable, False, True),
        (429, body(code=429, msg="slow down"), {"retry-after": "3"}, RateLimited, False, True),
        (400, body(code=400, msg="prompt rejected by the safety system"), {}, ProviderRejected, False, False),
        (422, b"<html>bad</html>", {}, InvalidInput, False, False),
        (500, b"", {}, ServerError, False, True),
        (502, b"<html>bad gateway</html>", {}, ServerError, False, True),
        (504, b"", {}, ServerError, True, False),
        (
            200,
            body(code=200, data={"id": "p", "status": "failed", "error": "boom"}),
            {},
            ProviderJobFailed,
            True,
            False,
        ),
        (
            200,
            body(id="p", status="failed", error="NSFW content detected"),
            {},
            ProviderRejected,
            True,
            False,
        ),
    ],
)
def test_classify_atlas_error_table(
    status: int,
    raw: bytes,
    headers: dict[str, str],
    exc_type: type[ProviderError],
    accepted: bool,
    elsewhere: bool,
) -> None:
    err = classify_atlas_error(status, raw, headers, provider="atlascloud")

    assert type(err) is exc_type
    assert (err.accepted, err.retryable_elsewhere) == (accepted, elsewhere)
    if isinstance(err, RateLimited):
        assert err.retry_after == 3.0


# ----------------------------------------------------------------------------- shared helpers it relies on


@pytest.mark.parametrize(
    "value",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "data:text/plain;base64,aGk=",
        "bm90IGFuIGltYWdl",
        "%%%",
    ],
    ids=["file", "ftp", "text-data-url", "base64-not-image", "garbage"],
)
async def test_outputs_are_only_taken_from_http_urls_or_image_base64(
    session: aiohttp.ClientSession, value: str
) -> None:
    with pytest.raises(ServerError) as info:
        await fetch_output(
            session,
            value,
            max_bytes=10_000,
            deadline=time.monotonic() + 5,
            policy=FAST,
            call_timeout=1,
            provider="atlascloud",
        )

    assert info.value.accepted is True


def test_safe_message_strips_signed_queries_masks_the_key_and_is_short() -> None:
    text = (
        "failed to fetch https://cdn.example/out.png?X-Amz-Signature=abc&token=k with key sk-SECRET "
        + "x" * 500
    )

    cleaned = safe_message(text, secrets=("sk-SECRET",))

    assert "X-Amz" not in cleaned and "token=" not in cleaned and "sk-SECRET" not in cleaned
    assert "https://cdn.example/out.png" in cleaned
    assert len(cleaned) <= 200


def test_a_message_cut_inside_the_key_has_the_start_of_the_key_masked_too() -> None:
    key = "atlas-SECRET-0123456789abcdef"
    cut = safe_message("x" * 190 + f" key {key} refused", secrets=())  # cut inside the key

    masked = mask_secrets(f"HTTP 403: {cut}", (f"Bearer {key}", key))

    assert cut.endswith("…") and key[:4] in cut
    assert masked.endswith(" key ***…") and key[:4] not in masked


# ----------------------------------------------------------------------------- GPT Image 2 routes

GPT2_ROUTES = ("openai/gpt-image-2/edit", "openai/gpt-image-2-developer/edit")


@pytest.mark.parametrize("route", GPT2_ROUTES)
@pytest.mark.parametrize(("size", "quality"), [("2048x1152", "high"), ("1024x1536", "auto")])
async def test_gpt_image_2_routes_send_images_quality_and_a_listed_size(
    fake: FakeAtlas, provider: AtlasCloudProvider, route: str, size: str, quality: str
) -> None:
    result = await provider.edit(
        edit_request((photo(), photo("coffee.png")), model=route, size=size, quality=quality)
    )

    submit = next(r for r in fake.requests if r.endpoint == "submit").json
    expected = {"model", "prompt", "images", "size"} | ({"quality"} if quality != "auto" else set())
    assert set(submit) == expected
    assert (submit["model"], submit["size"], len(submit["images"])) == (route, size, 2)
    assert submit.get("quality", "auto") == quality
    assert decoded(result.images[0].data).size == tuple(int(v) for v in size.split("x"))


def test_the_gpt_image_2_size_list_is_what_the_fake_accepts() -> None:
    assert set(GPT_IMAGE_2_SIZES) == set(FAKE_GPT_IMAGE_2_SIZES)
    assert "auto" not in GPT_IMAGE_2_SIZES


@pytest.mark.parametrize(
    "change",
    [
        {"size": "auto"},  # no auto at Atlas: the catalog gives this route none
        {"size": "1536x864"},  # a valid 2.x size, but not one of Atlas's eight
        {"quality": "xhigh"},
        {"mask": hole_mask(HOLE, (0, 0, 0))},
        {"output_format": "webp"},
    ],
    ids=["auto-size", "unlisted-size", "xhigh", "mask", "webp"],
)
async def test_gpt_image_2_requests_the_route_cannot_take_are_refused_before_anything_is_sent(
    fake: FakeAtlas, provider: AtlasCloudProvider, change: dict
) -> None:
    with pytest.raises(InvalidInput) as info:
        await provider.edit(edit_request(model="openai/gpt-image-2/edit", **change))

    assert info.value.status is None and info.value.accepted is False
    assert fake.requests == []


@pytest.mark.parametrize(
    ("make_body", "text"),
    [
        (
            lambda url: {"model": GPT2_ROUTES[0], "prompt": "p", "images": [url], "size": "auto"},
            "size must be",
        ),
        (
            lambda url: {"model": GPT2_ROUTES[1], "prompt": "p", "images": [url], "size": "1536x864"},
            "size must",
        ),
        (lambda url: {"model": GPT2_ROUTES[0], "prompt": "p", "image": url}, "unknown field"),
        (
            lambda url: {"model": GPT2_ROUTES[0], "prompt": "p", "images": [url], "mask_image": url},
            "unknown field",
        ),
        (lambda url: {"model": GPT2_ROUTES[0], "prompt": "p", "images": [url] * 17}, "1 to 16"),
        (
            lambda url: {"model": GPT2_ROUTES[1], "prompt": "p", "images": [url], "quality": "max"},
            "quality must",
        ),
    ],
    ids=["auto-size", "unlisted-size", "single-image-field", "mask", "seventeen-images", "max-quality"],
)
async def test_fake_validates_the_gpt_image_2_routes(
    fake: FakeAtlas, session: aiohttp.ClientSession, make_body: Callable[[str], dict], text: str
) -> None:
    status, payload = await post(session, fake, make_body(await uploaded_url(session, fake)))

    assert status == 400
    assert text in payload["msg"]
    assert fake.predictions == {}


@pytest.mark.parametrize(
    ("how", "status"), [(Gone.NOT_FOUND, 404), (Gone.GONE, 410), (Gone.NO_CHANNELS, 503)]
)
@pytest.mark.parametrize("route", [GPT2_ROUTES[0], MINI])
async def test_a_route_gone_at_submit_is_model_gone_and_nothing_was_created(
    fake: FakeAtlas, provider: AtlasCloudProvider, route: str, how: Gone, status: int
) -> None:
    fake.retire_route(route, how)

    with pytest.raises(ModelGone) as info:
        await provider.edit(edit_request(model=route))

    assert (info.value.status, info.value.accepted, info.value.retryable_elsewhere) == (status, False, True)
    assert fake.submit_count == 1
    assert fake.predictions == {}


async def test_an_input_not_found_beside_the_routes_name_fails_the_job_and_leaves_the_route_live(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    retired: list[str] = []

    async def on_gone(model: object, route: Route, exc: ModelGone) -> None:
        retired.append(route.model)

    fake.fail_next(Fault.INPUT_NOT_FOUND)
    router = Router({"atlascloud": provider}, on_gone=on_gone)

    with pytest.raises(InvalidInput) as info:
        await router.run(load_catalog().get("gpt-image-2"), edit_request(quality="low"))

    assert "input image not found" in str(info.value)
    assert retired == [] and fake.predictions == {}


async def test_a_route_retired_after_the_submit_does_not_touch_the_accepted_prediction(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    async def retire_now(prediction_id: str) -> None:
        fake.retire_route(GPT2_ROUTES[0], Gone.NOT_FOUND)

    result = await provider.edit(edit_request(model=GPT2_ROUTES[0]), on_submitted=retire_now)

    assert result.images and fake.submit_count == 1


async def test_a_404_on_a_poll_is_a_vanished_prediction_not_a_gone_model(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    async def forget(prediction_id: str) -> None:
        fake.predictions.clear()  # the prediction vanishes; polls answer 404

    with pytest.raises(ServerError) as info:
        await provider.edit(edit_request(model=GPT2_ROUTES[0]), on_submitted=forget)

    assert not isinstance(info.value, ModelUnavailable)
    assert info.value.accepted is True
    assert fake.submit_count == 1


async def test_a_gone_route_reported_inside_a_200_envelope_is_model_gone_too(
    fake: FakeAtlas, provider: AtlasCloudProvider
) -> None:
    fake.gone_in_envelope = True
    fake.retire_route(GPT2_ROUTES[1], Gone.NO_CHANNELS)

    with pytest.raises(ModelGone) as info:
        await provider.edit(edit_request(model=GPT2_ROUTES[1]))

    assert fake.requests[-1].status == 200
    assert (info.value.status, info.value.accepted) == (503, False)
