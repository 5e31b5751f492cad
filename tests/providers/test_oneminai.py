"""Contract tests: `OneMinAIProvider` against the fake 1min.ai API over real sockets."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
import pytest
from PIL import Image, ImageChops

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
from bot.providers.oneminai import OneMinAIProvider, classify_oneminai_error
from tests.fakes._base import Gone
from tests.fakes.oneminai_server import FakeOneMin, Fault
from tests.fixtures import serving
from tests.providers.helpers import (
    DATA,
    adapter_builder,
    body,
    decoded,
    edit_with_its_body_held_past_the_deadline,
    error_with_its_body_held_past_the_deadline,
    hole_mask,
    photo,
    request_builder,
    until,
)

HOLE = (0, 256, 512, 512)  # the bottom half of the 512x512 astronaut

edit_request = request_builder(
    prompt="transform into a watercolor painting", model="gpt-image-1-mini", size="1024x1024"
)


def openai_mask() -> InputImage:
    return hole_mask(HOLE, (0, 0, 0))


fake = serving(FakeOneMin)


@pytest.fixture
def make_provider(fake: FakeOneMin, session: aiohttp.ClientSession) -> Callable[..., OneMinAIProvider]:
    return adapter_builder(OneMinAIProvider, fake, session, io_timeout=5.0)


def feature_call(fake: FakeOneMin) -> dict:
    return next(r for r in fake.requests if r.endpoint == "features").json


# ----------------------------------------------------------------------------- happy path


async def test_editor_uploads_the_asset_then_calls_image_editor_and_downloads_the_temporary_url(
    fake: FakeOneMin, provider: OneMinAIProvider
) -> None:
    source = photo()

    result = await provider.edit(edit_request((source,), quality="high", size="1536x1024"))

    assert [r.endpoint for r in fake.requests] == ["assets", "features", "s3"]
    upload = fake.requests[0]
    assert upload.authorized and upload.file_parts == ["asset"]
    body = feature_call(fake)
    assert body["type"] == "IMAGE_EDITOR" and body["model"] == "gpt-image-1-mini"
    prompt_object = body["promptObject"]
    assert prompt_object["imageUrl"].startswith("images/")  # an asset path, not a URL
    assert prompt_object == {
        "imageUrl": prompt_object["imageUrl"],
        "prompt": "transform into a watercolor painting",
        "size": "1536x1024",
        "n": 1,
        "output_format": "png",
        "quality": "high",
        "background": "auto",
    }
    download = fake.requests[2]
    assert not download.has_api_key  # the presigned S3 URL never gets our key
    expected = decoded(source.data).convert("RGB").rotate(180).resize((1536, 1024), Image.Resampling.BILINEAR)
    assert ImageChops.difference(decoded(result.images[0].data).convert("RGB"), expected).getbbox() is None
    assert (result.quality, result.size) == ("high", "1536x1024")
    assert result.request_id and len(result.request_id) == 32


async def test_a_record_id_the_jobs_row_could_not_hold_gives_way_to_the_request_id(
    fake: FakeOneMin, provider: OneMinAIProvider
) -> None:
    """The result's id is stored on the job's row when it completes: PostgreSQL refuses a NUL in text,
    and the image, made and billed, would then never be recorded."""
    fake.next_record_ids.append("rec\x00ord")

    result = await provider.edit(edit_request())

    assert len(result.images) == 1
    assert result.request_id != "rec\x00ord" and "\x00" not in (result.request_id or "")


@pytest.mark.parametrize("word", ["SUCCESS", "success", "Success"])
async def test_a_finished_record_is_a_success_however_its_status_is_cased(
    fake: FakeOneMin, provider: OneMinAIProvider, word: str
) -> None:
    """The spelling of `aiRecord.status` is undocumented; the classifier reads it lower-cased, so the
    success check must too (or a made, billed image would be reported as a failed job)."""
    fake.success_word = word

    result = await provider.edit(edit_request())

    assert len(result.images) == 1 and fake.feature_count == 1


async def test_auto_quality_is_omitted_and_jpeg_gets_full_compression_quality(
    fake: FakeOneMin, provider: OneMinAIProvider
) -> None:
    result = await provider.edit(edit_request(quality="auto", output_format="jpeg"))

    prompt_object = feature_call(fake)["promptObject"]
    assert "quality" not in prompt_object
    assert prompt_object["output_compression"] == 100
    assert result.images[0].format == "jpeg" and result.quality is None


async def test_masked_edit_uses_the_inpainter_with_a_white_equals_edit_mask(
    fake: FakeOneMin, provider: OneMinAIProvider
) -> None:
    source = photo()

    result = await provider.edit(edit_request((source,), mask=openai_mask()))

    body = feature_call(fake)
    assert body["type"] == "IMAGE_INPAINTER"
    assert set(body["promptObject"]) == {"imageUrl", "maskUrl", "prompt", "size", "n", "output_format"}
    mask = decoded(fake.objects[body["promptObject"]["maskUrl"]])
    assert mask.mode == "L" and mask.getpixel((10, 400)) == 255 and mask.getpixel((10, 10)) == 0
    out = decoded(result.images[0].data).convert("RGB").resize((512, 512), Image.Resampling.BILINEAR)
    original = decoded(source.data).convert("RGB")
    flipped = original.rotate(180)
    for point, want in (
        ((100, 100), original.getpixel((100, 100))),
        ((100, 400), flipped.getpixel((100, 400))),
    ):
        assert all(abs(a - b) <= 24 for a, b in zip(out.getpixel(point), want, strict=True)), point


async def test_transparent_background_is_passed_to_the_editor(
    fake: FakeOneMin, provider: OneMinAIProvider
) -> None:
    await provider.edit(edit_request(background="transparent"))

    assert feature_call(fake)["promptObject"]["background"] == "transparent"


# ----------------------------------------------------------------------------- refused before any request


@pytest.mark.parametrize(
    ("change", "exc_type"),
    [
        ({"prompt": "p" * 4001}, InvalidInput),
        ({"images": (photo(), photo())}, InvalidInput),
        ({"size": "auto"}, InvalidInput),
        ({"count": 2}, InvalidInput),
        ({"background": "opaque"}, InvalidInput),
        (
            {"mask": openai_mask(), "background": "transparent"},
            InvalidInput,
        ),  # the inpainter has no background
        ({"background": "transparent", "output_format": "webp"}, InvalidInput),  # PNG only
        ({"model": "gpt-image-1.5"}, ModelUnavailable),
    ],
    ids=[
        "long-prompt",
        "two-images",
        "auto-size",
        "count",
        "opaque",
        "mask-with-background",
        "transparent-webp",
        "model",
    ],
)
async def test_options_the_route_cannot_honour_are_refused_before_any_request(
    fake: FakeOneMin, provider: OneMinAIProvider, change: dict[str, object], exc_type: type[ProviderError]
) -> None:
    images = change.pop("images", None)

    with pytest.raises(exc_type) as info:
        await provider.edit(edit_request(images, **change))  # type: ignore[arg-type]

    assert info.value.accepted is False and info.value.retryable_elsewhere
    assert fake.requests == []


async def test_a_4000_character_prompt_is_accepted(fake: FakeOneMin, provider: OneMinAIProvider) -> None:
    await provider.edit(edit_request(prompt="p" * 4000))

    assert fake.feature_count == 1


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "exc_type", "accepted", "elsewhere", "calls"),
    [
        (Fault.UNAUTHORIZED, ServiceUnavailable, False, True, 0),
        (Fault.UPLOAD_ERROR, ServerError, False, True, 0),
        (Fault.NO_CREDITS, ServiceUnavailable, False, True, 1),
        (Fault.SERVER_ERROR, ServerError, True, False, 1),
        (Fault.RECORD_FAILED, ProviderJobFailed, True, False, 1),
        (Fault.NO_URL, ServerError, True, False, 1),
        # SUCCESS, but the result at its URL is cut off behind an intact signature: never passed on.
        (Fault.TRUNCATED_RESULT, ServerError, True, False, 1),
    ],
)
async def test_each_fault_maps_to_its_exception_and_the_feature_is_called_at_most_once(
    fake: FakeOneMin,
    provider: OneMinAIProvider,
    fault: Fault,
    exc_type: type[ProviderError],
    accepted: bool,
    elsewhere: bool,
    calls: int,
) -> None:
    fake.fail_always(fault)

    with pytest.raises(exc_type) as info:
        await provider.edit(edit_request())

    assert type(info.value) is exc_type
    assert (info.value.accepted, info.value.retryable_elsewhere) == (accepted, elsewhere)
    assert fake.feature_count == calls


async def test_429_is_retried_after_its_retry_after(fake: FakeOneMin, provider: OneMinAIProvider) -> None:
    fake.fail_next(Fault.RATE_LIMITED, retry_after=0.05)

    result = await provider.edit(edit_request())

    assert [r.status for r in fake.requests if r.endpoint == "features"] == [429, 200]
    assert len(result.images) == 1


async def test_429_beyond_the_deadline_is_not_accepted(fake: FakeOneMin, provider: OneMinAIProvider) -> None:
    fake.fail_next(Fault.RATE_LIMITED, retry_after=20)

    with pytest.raises(RateLimited) as info:
        await provider.edit(edit_request(deadline=time.monotonic() + 3))

    assert info.value.accepted is False and info.value.retryable_elsewhere
    assert fake.feature_count == 1


async def test_the_deadline_caps_the_synchronous_call_as_an_accepted_timeout(
    fake: FakeOneMin, provider: OneMinAIProvider
) -> None:
    fake.fail_always(Fault.HANG)
    started = time.monotonic()

    with pytest.raises(ProviderTimeout) as info:
        await provider.edit(edit_request(deadline=time.monotonic() + 0.4))

    assert time.monotonic() - started < 1.5
    assert info.value.accepted is True
    assert fake.feature_count == 1


async def test_the_presigned_query_and_the_key_never_reach_logs(
    fake: FakeOneMin, make_provider: Callable[..., OneMinAIProvider], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = make_provider(max_output_bytes=100)  # the download fails and gets logged/raised

    with pytest.raises(ServerError) as info:
        await provider.edit(edit_request())

    for text in (caplog.text, str(info.value), repr(provider)):
        assert "X-Amz" not in text
        assert fake.api_key not in text


# ----------------------------------------------------------------------------- the fake validates


async def post_feature(session: aiohttp.ClientSession, fake: FakeOneMin, body: dict) -> tuple[int, dict]:
    async with session.post(
        f"{fake.base_url}/features", json=body, headers={"API-KEY": fake.api_key}
    ) as resp:
        return resp.status, await resp.json()


async def upload(
    session: aiohttp.ClientSession, fake: FakeOneMin, data: bytes, field_name: str = "asset"
) -> dict:
    form = aiohttp.FormData()
    form.add_field(field_name, data, filename="x.png", content_type="image/png")
    async with session.post(f"{fake.base_url}/assets", data=form, headers={"API-KEY": fake.api_key}) as resp:
        return await resp.json()


async def test_fake_refuses_an_alpha_mask_on_the_inpainter_and_a_file_field_on_assets(
    fake: FakeOneMin, session: aiohttp.ClientSession
) -> None:
    image_path = (await upload(session, fake, (DATA / "astronaut.png").read_bytes()))["fileContent"]["path"]
    mask_path = (await upload(session, fake, openai_mask().data))["fileContent"]["path"]

    status, payload = await post_feature(
        session,
        fake,
        {
            "type": "IMAGE_INPAINTER",
            "model": "gpt-image-1",
            "promptObject": {
                "imageUrl": image_path,
                "maskUrl": mask_path,
                "prompt": "p",
                "size": "1024x1024",
            },
        },
    )
    assert status == 400 and "not transparent" in payload["message"]
    assert "asset is required" in (await upload(session, fake, b"x", field_name="file"))["message"]


@pytest.mark.parametrize(
    ("feature", "prompt_object", "text"),
    [
        ("IMAGE_EDITOR", {"maskUrl": "images/x"}, "unknown field"),
        ("IMAGE_INPAINTER", {"background": "auto"}, "unknown field"),
        ("IMAGE_EDITOR", {"image": "images/x"}, "unknown field"),
        ("IMAGE_EDITOR", {"size": "auto"}, "size must be"),
        ("IMAGE_EDITOR", {"imageUrl": "https://cdn.discordapp.com/a.png"}, "asset not found"),
    ],
    ids=["mask-on-editor", "background-on-inpainter", "wrong-image-field", "auto-size", "cdn-url"],
)
async def test_fake_rejects_wrong_prompt_object_fields(
    fake: FakeOneMin, session: aiohttp.ClientSession, feature: str, prompt_object: dict, text: str
) -> None:
    path = (await upload(session, fake, (DATA / "astronaut.png").read_bytes()))["fileContent"]["path"]
    obj = {"imageUrl": path, "prompt": "p", "size": "1024x1024", **prompt_object}

    status, payload = await post_feature(
        session, fake, {"type": feature, "model": "gpt-image-1", "promptObject": obj}
    )

    assert status == 400
    assert text in payload["message"]


async def test_fake_with_n_above_one_lists_every_result_but_links_only_the_first(
    fake: FakeOneMin, session: aiohttp.ClientSession
) -> None:
    path = (await upload(session, fake, (DATA / "astronaut.png").read_bytes()))["fileContent"]["path"]

    status, payload = await post_feature(
        session,
        fake,
        {
            "type": "IMAGE_EDITOR",
            "model": "gpt-image-1",
            "promptObject": {"imageUrl": path, "prompt": "p", "n": 3},
        },
    )

    assert status == 200
    record = payload["aiRecord"]
    assert len(record["aiRecordDetail"]["resultObject"]) == 3
    assert isinstance(record["temporaryUrl"], str)


# ----------------------------------------------------------------------------- classify unit


@pytest.mark.parametrize(
    ("status", "raw", "exc_type", "accepted"),
    [
        (401, body(message="Unauthorized"), ServiceUnavailable, False),
        (402, b"", ServiceUnavailable, False),
        (400, body(message="Insufficient credits"), ServiceUnavailable, False),
        (403, body(error={"message": "Your credit limit was reached"}), ServiceUnavailable, False),
        (404, body(message="model not found"), ModelUnavailable, False),
        (429, body(message="Too many requests"), RateLimited, False),
        (400, body(message="Prompt flagged by the safety system"), ProviderRejected, False),
        (400, body(message="size is invalid"), InvalidInput, False),
        (500, b"<html>oops</html>", ServerError, True),
        (200, body(aiRecord={"status": "FAILED"}), ProviderJobFailed, True),
    ],
)
def test_classify_oneminai_error_table(
    status: int, raw: bytes, exc_type: type[ProviderError], accepted: bool
) -> None:
    err = classify_oneminai_error(status, raw, {}, provider="oneminai")

    assert type(err) is exc_type
    assert err.accepted is accepted
    assert err.retryable_elsewhere is (
        not accepted and exc_type in (ServiceUnavailable, ModelUnavailable, RateLimited)
    )


# ----------------------------------------------------------------------------- GPT Image 2

GPT2 = "gpt-image-2"


@pytest.mark.parametrize(("size", "quality"), [("2048x1152", "high"), ("1280x768", "low")])
async def test_gpt_image_2_always_sends_its_required_size_and_quality(
    fake: FakeOneMin, provider: OneMinAIProvider, size: str, quality: str
) -> None:
    result = await provider.edit(edit_request(model=GPT2, size=size, quality=quality))

    call = feature_call(fake)
    assert (call["type"], call["model"]) == ("IMAGE_EDITOR", GPT2)
    prompt_object = call["promptObject"]
    assert (prompt_object["size"], prompt_object["quality"]) == (size, quality)
    assert decoded(result.images[0].data).size == tuple(int(v) for v in size.split("x"))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"size": "auto"}, "size=auto"),  # required: "auto" cannot be sent by leaving it out
        ({"quality": "auto"}, "quality=auto"),
        ({"quality": "xhigh"}, "quality=xhigh"),
        ({"mask": hole_mask(HOLE, (0, 0, 0))}, "a mask"),  # no inpainter for gpt-image-2
    ],
    ids=["auto-size", "auto-quality", "xhigh", "mask"],
)
async def test_gpt_image_2_refuses_auto_and_masks_before_anything_is_sent(
    fake: FakeOneMin, provider: OneMinAIProvider, change: dict, why: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        await provider.edit(edit_request(model=GPT2, **{"quality": "medium", **change}))

    assert info.value.status is None and info.value.accepted is False
    assert why in str(info.value)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("feature", "change", "text"),
    [
        ("IMAGE_EDITOR", {"size": None}, "size is required"),
        ("IMAGE_EDITOR", {"quality": None}, "quality is required"),
        ("IMAGE_EDITOR", {"size": "auto"}, "not WxH"),
        ("IMAGE_EDITOR", {"size": "1000x1000"}, "multiples of 16"),
        ("IMAGE_EDITOR", {"size": "4096x1536"}, "at most 3840"),
        ("IMAGE_EDITOR", {"quality": "max"}, "quality must be"),
        ("IMAGE_INPAINTER", {}, "not available for IMAGE_INPAINTER"),
    ],
    ids=["no-size", "no-quality", "auto-size", "not-16", "edge", "max", "inpainter"],
)
async def test_fake_validates_gpt_image_2_like_a_strict_1min(
    fake: FakeOneMin, session: aiohttp.ClientSession, feature: str, change: dict, text: str
) -> None:
    path = (await upload(session, fake, (DATA / "astronaut.png").read_bytes()))["fileContent"]["path"]
    prompt_object = {"imageUrl": path, "prompt": "p", "size": "1024x1024", "quality": "medium", **change}
    prompt_object = {k: v for k, v in prompt_object.items() if v is not None}

    status, payload = await post_feature(
        session, fake, {"type": feature, "model": GPT2, "promptObject": prompt_object}
    )

    assert status == 400 and text in payload["message"]


@pytest.mark.parametrize(
    ("how", "status"), [(Gone.NOT_FOUND, 404), (Gone.GONE, 410), (Gone.NO_CHANNELS, 503)]
)
@pytest.mark.parametrize("model", [GPT2, "gpt-image-1-mini"])
async def test_a_model_gone_at_1min_is_model_gone_and_not_accepted_even_as_a_5xx(
    fake: FakeOneMin, provider: OneMinAIProvider, model: str, how: Gone, status: int
) -> None:
    fake.retire_route(model, how)

    with pytest.raises(ModelGone) as info:
        await provider.edit(edit_request(model=model, quality="medium"))

    assert (info.value.status, info.value.accepted, info.value.retryable_elsewhere) == (status, False, True)
    assert fake.feature_count == 1


async def test_an_image_made_before_the_deadline_is_delivered_though_its_download_outlasts_it(
    fake: FakeOneMin, provider: OneMinAIProvider
) -> None:
    """The feature call made (and billed) the image just before the deadline: fetching its
    temporaryUrl gets `DOWNLOAD_GRACE_SECONDS` past it, instead of ending as a timeout."""
    fake.hold_outputs()
    request = edit_request(deadline=time.monotonic() + 3.0, quality="medium")
    run = asyncio.create_task(provider.edit(request))

    await until(lambda: any(r.endpoint == "s3" for r in fake.requests))
    await until(lambda: time.monotonic() > request.deadline or run.done())
    fake.release_outputs()
    result = await run

    assert len(result.images) == 1 and fake.feature_count == 1


async def test_an_answer_whose_body_is_still_arriving_at_the_deadline_is_read_whole_within_its_grace(
    fake: FakeOneMin, provider: OneMinAIProvider
) -> None:
    """The feature call's 200 (the image made and billed) began just before the deadline and its body
    (the record linking the image) was still arriving when it passed: the read was cut off at the
    deadline, and the paid image lost. The body of a 200 is a finished result being fetched, with its
    grace past the deadline (`overdue` waits for it too)."""
    request = edit_request(deadline=time.monotonic() + 3.0, quality="medium")
    result = await edit_with_its_body_held_past_the_deadline(fake, provider, request)

    assert decoded(result.images[0].data).size == (1024, 1024)
    assert fake.feature_count == 1


async def test_an_error_whose_body_is_still_arriving_at_the_deadline_gets_no_grace(
    fake: FakeOneMin, provider: OneMinAIProvider
) -> None:
    """Only a 200's body is a finished result: an error's body held past the deadline is a timeout."""
    request = edit_request(deadline=time.monotonic() + 1.5)
    timeout = await error_with_its_body_held_past_the_deadline(fake, provider, request, Fault.SERVER_ERROR)
    assert timeout.accepted is True


async def test_a_plain_500_stays_accepted(fake: FakeOneMin, provider: OneMinAIProvider) -> None:
    fake.fail_next(Fault.SERVER_ERROR)

    with pytest.raises(ServerError) as info:
        await provider.edit(edit_request(model=GPT2, quality="medium"))

    assert info.value.accepted is True and not isinstance(info.value, ModelUnavailable)
