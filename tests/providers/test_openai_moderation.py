"""Contract tests: `OpenAIProvider.moderate` (the free safety check) against the fake OpenAI's
`POST /v1/moderations` over real sockets, and the fake's validation of what it receives; the safety
check (bot.services.moderation) that asks it."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import pytest

from bot.errors import InvalidImage
from bot.providers.base import InputImage
from bot.providers.errors import InvalidInput, ProviderTimeout, ServerError
from bot.providers.openai import (
    ModerationVerdict,
    OpenAIProvider,
    classify_openai_error,
    moderation_body,
    parse_moderation,
)
from bot.services import moderation
from bot.services.moderation import (
    OUTAGE_AUDIT_SECONDS,
    STRICT_SCORE,
    Flagged,
    SafetyCheck,
    _about_the_file,
    verdict_category,
)
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.fixtures import serving
from tests.providers.helpers import FAST, photo

fake = serving(FakeOpenAI)


async def nothing(_guild_id: int) -> None:
    """No server chose a level: the default applies."""


def adapter(fake: FakeOpenAI, session: aiohttp.ClientSession) -> OpenAIProvider:
    return OpenAIProvider(session, fake.api_key, fake.base_url, policy=FAST, call_timeout=5.0)


async def test_a_clean_prompt_and_image_pass_and_a_listed_word_is_flagged(
    fake: FakeOpenAI, session: aiohttp.ClientSession
):
    provider = adapter(fake, session)
    image = photo()
    clean = await provider.moderate("a watercolour cat", (image.mime, image.data), within=5.0)
    assert (clean.flagged, clean.categories) == (False, ())
    fake.flag_text("axe", "violence", score=0.8)
    hit = await provider.moderate("an AXE murderer", None, within=5.0)
    assert (hit.flagged, hit.categories, hit.scores["violence"]) == (True, ("violence",), 0.8)
    assert fake.moderation_requests[-1] == {
        "model": "omni-moderation-latest",
        "input": [{"type": "text", "text": "an AXE murderer"}],
    }
    assert fake.post_count == 0  # moderation is not an edit call


async def test_a_server_error_is_retried_and_a_hang_ends_at_the_deadline(
    fake: FakeOpenAI, session: aiohttp.ClientSession
):
    provider = adapter(fake, session)
    fake.fail_next(Fault.MODERATION_ERROR)
    assert not (await provider.moderate("hello", None, within=5.0)).flagged
    assert fake.moderation_statuses == [500, 200]
    fake.fail_always(Fault.MODERATION_ERROR)
    with pytest.raises(ServerError):
        await provider.moderate("hello", None, within=5.0)
    fake.clear_faults()
    fake.fail_always(Fault.MODERATION_HANG)
    with pytest.raises(ProviderTimeout):
        await provider.moderate("hello", None, within=0.3)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def splice(value: Any, image: str) -> Any:
    """`value` with every "PHOTO" replaced by `image` (the table stays readable)."""
    if isinstance(value, dict):
        return {k: splice(v, image) for k, v in value.items()}
    if isinstance(value, list):
        return [splice(v, image) for v in value]
    return image if value == "PHOTO" else value


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"model": "gpt-4o", "input": "hi"}, 400, "Invalid value for 'model'"),
        ({"model": "omni-moderation-latest"}, 400, "'input' is a required property"),
        ({"input": [{"type": "audio", "audio": "x"}]}, 400, "Invalid value for 'input[0]'"),
        (
            {
                "input": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}
                ]
            },
            400,
            "not a supported image",
        ),
        ({"input": [{"type": "image_url", "image_url": {"url": "PHOTO"}}] * 2}, 400, "Only one image"),
        (
            {
                "model": "text-moderation-latest",
                "input": [{"type": "image_url", "image_url": {"url": "PHOTO"}}],
            },
            400,
            "does not support image inputs",
        ),
        ({"input": "hi", "stream": True}, 400, "Unrecognized request argument"),
        ({"input": ["one", "two"]}, 200, None),
    ],
)
async def test_the_fake_validates_requests_like_the_api(
    fake: FakeOpenAI, session: aiohttp.ClientSession, body: dict[str, Any], status: int, says: str | None
):
    payload = splice(body, data_url(photo().data))
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with session.post(f"{fake.base_url}/moderations", json=payload, headers=headers) as resp:
        answer = await resp.json()
    assert resp.status == status
    if says is not None:
        assert says in answer["error"]["message"]
    else:
        assert [r["flagged"] for r in answer["results"]] == [False, False]  # one result per string


async def test_the_fake_refuses_a_missing_key_and_the_adapter_refuses_a_malformed_answer(
    fake: FakeOpenAI, session: aiohttp.ClientSession
):
    async with session.post(f"{fake.base_url}/moderations", json={"input": "hi"}) as resp:
        assert resp.status == 401
    with pytest.raises(ServerError):
        parse_moderation({"results": []})
    with pytest.raises(ServerError):
        parse_moderation({"results": [{"categories": {}}]})


@pytest.mark.parametrize(
    ("text", "image"),
    [
        ("a cat", None),
        (None, ("image/png", b"\x89PNG fake bytes")),
        ('say "retouch-image-slot" \\ \u00e9', ("image/jpeg", bytes(range(256)) * 40)),
    ],
)
def test_the_moderation_body_is_the_json_the_api_expects(text, image):
    """The image's base64 is spliced into the body as bytes; the result must be exactly the JSON a
    plain encoder would write (a prompt naming the slot cannot break it)."""
    parts = []
    if text:
        parts.append({"type": "text", "text": text})
    if image is not None:
        url = f"data:{image[0]};base64,{base64.b64encode(image[1]).decode()}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    expected = {"model": "omni-moderation-latest", "input": parts}
    assert json.loads(moderation_body(text, image)) == expected


async def test_a_large_image_cannot_time_the_safety_check_out_and_so_skip_it(
    fake: FakeOpenAI, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
):
    """Re-encoding a big upload for the check is the bot's own work: were it timed with the service's
    answer, a big enough image would time the check out, and an outage lets the edit through."""
    fake.flag_text("axe", "violence", score=0.8)
    check = SafetyCheck(
        adapter(fake, session).moderate, level_of=nothing, default_level="standard", timeout=0.3
    )
    made_ready = moderation._image_input

    def slow_to_make_ready(image: InputImage) -> tuple[str, bytes]:
        time.sleep(0.5)  # longer than the whole check may wait for the service
        return made_ready(image)

    monkeypatch.setattr(moderation, "_image_input", slow_to_make_ready)
    with pytest.raises(Flagged):
        await check.screen(guild_id=1, user_id=2, channel_id=3, prompt="an axe", images=(photo(),))


UNREADABLE = (
    400,
    b'{"error": {"message": "The image data is not a supported image.", "code": "invalid_image_format"}}',
)


@pytest.mark.parametrize(
    ("status", "body", "refused"),
    [
        (*UNREADABLE, True),
        (413, b"<html>413 Request Entity Too Large</html>", False),  # a proxy's body limit
        (
            400,
            b'{"error": {"message": "Unrecognized argument: x", "code": "unknown_parameter"}}',
            False,
        ),
        (422, b'{"error": {"message": "image inputs are not supported by this gateway"}}', False),
    ],
)
async def test_only_an_answer_about_the_file_refuses_an_image_any_other_4xx_is_an_outage(
    status: int, body: bytes, refused: bool
):
    """A file the check cannot read is refused (let through, it would skip the check); a gateway or
    request problem is the service's, and like any outage lets the edit go ahead."""
    error = classify_openai_error(status, body, {}, provider="openai")

    async def moderate(text: str | None, image: Any, *, within: float) -> ModerationVerdict:
        if image is not None:
            raise error
        return parse_moderation({"results": [{"flagged": False, "categories": {}, "category_scores": {}}]})

    check = SafetyCheck(moderate, level_of=nothing, default_level="standard", timeout=5)
    screening = check.screen(guild_id=1, user_id=2, channel_id=3, prompt="a cat", images=(photo(),))
    if refused:
        with pytest.raises(InvalidImage, match="could not read your image"):
            await screening
    else:
        await screening  # an outage: the edit goes ahead


async def test_the_other_checks_stop_when_one_image_is_refused():
    unreadable = classify_openai_error(*UNREADABLE, {}, provider="openai")
    waiting: list[asyncio.Task[Any]] = []

    async def moderate(text: str | None, image: Any, *, within: float) -> ModerationVerdict:
        if image is not None and not waiting:
            waiting.append(asyncio.current_task())  # type: ignore[arg-type]
            await asyncio.sleep(0)
            raise unreadable
        await asyncio.Event().wait()  # the service is slow to answer the others
        raise AssertionError("never answered")

    check = SafetyCheck(moderate, level_of=nothing, default_level="standard", timeout=5)
    before = asyncio.all_tasks()
    with pytest.raises(InvalidImage):
        await check.screen(guild_id=1, user_id=2, channel_id=3, prompt="a cat", images=(photo(), photo()))
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() - before if not t.done()] == []


# -- rules a mutation pass found untested: each test below fails if its rule is changed -----------


def test_each_level_refuses_what_it_should_and_names_the_worst_category():
    high_unflagged = ModerationVerdict(False, (), {"violence": 0.6, "hate": 0.1})
    assert verdict_category(high_unflagged, "off") is None
    assert verdict_category(high_unflagged, "standard") is None  # the API's own `flagged` only
    assert verdict_category(high_unflagged, "strict") == "violence"
    at_the_line = ModerationVerdict(False, (), {"violence": STRICT_SCORE})
    assert verdict_category(at_the_line, "strict") == "violence"  # "at least" STRICT_SCORE
    flagged = ModerationVerdict(True, ("hate", "violence"), {"hate": 0.5, "violence": 0.9})
    assert verdict_category(flagged, "off") is None
    assert verdict_category(flagged, "standard") == "violence"  # the flagged category scoring highest


@pytest.mark.parametrize(("status", "about_the_file"), [(400, True), (413, False), (422, False)])
def test_only_a_400_about_the_image_refuses_it_other_refusals_let_the_edit_go_unchecked(
    status: int, about_the_file: bool
):
    """A 400 saying the image is unreadable is about the member's file (refused, free); a 413 or 422
    with the same words is about the request this bot built, so the check fails open."""
    refusal = InvalidInput("HTTP error: invalid image", provider="openai", status=status)
    assert _about_the_file(refusal) is about_the_file


async def test_an_outage_is_reported_once_per_interval_not_per_edit():
    """Every edit during an outage goes ahead unchecked; the audit channel hears of it once, then
    again only after `OUTAGE_AUDIT_SECONDS`."""

    async def moderate(text: str | None, image: Any, *, within: float) -> ModerationVerdict:
        raise ServerError("HTTP 503", provider="openai", status=503)

    now, told = [1000.0], []

    async def report(line: str) -> None:
        told.append(line)

    check = SafetyCheck(
        moderate, level_of=nothing, default_level="standard", timeout=5, report=report, clock=lambda: now[0]
    )
    for advance in (0, 1, OUTAGE_AUDIT_SECONDS - 2, 1):  # the last lands exactly on the interval
        now[0] += advance
        await check.screen(guild_id=1, user_id=2, channel_id=3, prompt="a cat", images=())
    assert len(told) == 2 and all(
        line.startswith("⚠️ Safety check unavailable (ServerError)") for line in told
    )
