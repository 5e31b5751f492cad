"""The edit pipeline end to end below Discord: real SQLite ledger, real OpenAI adapter, fake OpenAI server."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import threading
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from bot import imaging, messages
from bot.catalog import Catalog, load_catalog, reserve_usd, usd_to_credits
from bot.domain.text import visible
from bot.errors import InsufficientCredits, InvalidImage, InvalidMask, InvalidOptions, RetouchError
from bot.jobs import results as results_module
from bot.jobs.core import IntakeTurns
from bot.jobs.model import JobInterrupted, JobObserver
from bot.providers.http import RetryPolicy
from bot.providers.openai import OpenAIProvider
from bot.services.edits import EditJob, EditOptions, EditService, MaskSpec, Upload
from bot.services.policy import PolicyRefused
from bot.storage import Storage
from tests.catalogs import NOVEMBER_CATALOG, TEST_CATALOG, WITH_AUTO, catalog, model, route
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.fixtures import edit_service, serving, settings_for
from tests.live import NoResult, RecordingLive, run_prepared, run_to_end

DATA = Path(__file__).parent / "data"
GUILD, USER = 1, 2
OTHER_USER = 7
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02, max_retry_after=1.0)
TODAY = dt.date(2026, 11, 21)
# A model priced only by list price (no token rates), so a job's charge equals its reservation.


def photo(name: str = "chelsea.png") -> bytes:
    return (DATA / name).read_bytes()


def upload(data: bytes, label: str = "image") -> Upload:
    async def read() -> bytes:
        return data

    return Upload(label=label, filename=f"{label}.png", size=len(data), read=read)


def make_job(*uploads: Upload, **options: object) -> EditJob:
    opts = EditOptions(prompt=str(options.pop("prompt", "make it a watercolour")), **options)  # type: ignore[arg-type]
    return EditJob(
        guild_id=GUILD,
        user_id=USER,
        channel_id=3,
        uploads=list(uploads) or [upload(photo())],
        options=opts,
        upload_limit=10 * 1024 * 1024,
    )


fake = serving(FakeOpenAI)


@pytest.fixture
async def make_service(fake: FakeOpenAI, storage: Storage, tmp_path: Path):
    async with aiohttp.ClientSession() as session:

        def make(catalog: Catalog | None = None, **env: str) -> EditService:
            # The November 2026 default model, which these tests were written against.
            env = {"STARTING_CREDITS": "1000", "DEFAULT_MODEL": "gpt-image-1.5", **env}
            settings = settings_for(tmp_path, fake, **env)
            provider = OpenAIProvider(session, fake.api_key, fake.base_url, policy=FAST, call_timeout=1.5)
            return edit_service(
                settings,
                catalog or load_catalog(NOVEMBER_CATALOG),
                storage,
                {"openai": provider},
                approve=[GUILD],
                today=lambda: TODAY,
            )

        yield make


async def job_kinds(storage: Storage, job_id: str) -> list[str]:
    return [row["kind"] for row in await storage.reports.ledger_rows(job_id)]


async def assert_books_balance(storage: Storage) -> None:
    for account in await storage.reports.all_accounts():
        totals = await storage.reports.ledger_totals(account.guild_id, account.user_id)
        assert (account.balance, account.held) == (totals.balance, totals.held)
        assert account.balance + account.held == totals.granted - totals.captured


async def test_edit_delivers_a_real_image_and_charges_its_usage_cost(make_service, fake, storage):
    service = make_service()
    live = RecordingLive()
    outcome = await run_to_end(
        service, make_job(model="gpt-image-1-mini", quality="low", size="1024x1024"), live
    )
    assert fake.post_count == 1
    [delivered] = live.delivered
    image = Image.open(io.BytesIO(delivered.files[0].data))
    assert image.size == (1024, 1024)
    assert delivered.model_id == "gpt-image-1-mini" and delivered.quality == "low"
    # Charged from the usage tokens the fake reported, within the worst-case reservation.
    account = await storage.ledger.get_account(GUILD, USER)
    assert account.held == 0
    assert account.balance == 1000 - outcome.charged == delivered.balance_after
    assert outcome.charged > 0
    assert await job_kinds(storage, outcome.job_id) == ["reserve", "capture"]
    assert (await storage.jobs.get_job(outcome.job_id)).state == "delivered"
    assert live.lines[0].startswith("Checking") and any("Editing with" in s for s in live.lines)
    await assert_books_balance(storage)


async def test_retired_model_runs_on_its_replacement_and_says_so(make_service, fake):
    outcome = await run_to_end(make_service(), make_job(model="gpt-image-1"))
    assert fake.requests[-1].fields["model"] == "gpt-image-1.5"
    assert "retired" in outcome.notices[0]


async def test_up_to_four_images_are_sent_in_one_request(make_service, fake):
    uploads = [
        upload(photo(n), f"image{i}") for i, n in enumerate(["chelsea.png", "coffee.png", "rocket.jpg"])
    ]
    outcome = await run_to_end(make_service(), make_job(*uploads, count=2))
    assert len(fake.requests[-1].images) == 3
    assert len(outcome.files) == 2


async def test_concurrent_jobs_never_overspend(make_service, fake, storage):
    """200 jobs at once for a balance that covers exactly k: k provider calls, k captures, balance 0."""
    service = make_service(catalog=TEST_CATALOG, STARTING_CREDITS="0")
    k = 7
    per_job = usd_to_credits(
        reserve_usd(
            TEST_CATALOG.get("gpt-image-1.5"),
            quality="high",
            size="1024x1024",
            count=1,
            n_inputs=1,
            prompt="p",
        ),
        1000,
    )
    await storage.ledger.grant(GUILD, USER, per_job * k, actor_id=None, reason="test", starting_credits=0)
    small = io.BytesIO()
    Image.open(DATA / "chelsea.png").resize((64, 64)).save(small, "PNG")
    job = make_job(upload(small.getvalue()), quality="high", size="1024x1024", prompt="p")

    async def attempt() -> str:
        try:
            await run_to_end(service, job)
            return "ok"
        except RetouchError as exc:
            # Refused at the hold (InsufficientCredits) or, once the balance is gone, by the up-front
            # check before any download: both are "not enough credits", and neither holds anything.
            if exc.code != "insufficient_credits":
                raise
            return "refused"

    results = await asyncio.gather(*(attempt() for _ in range(200)))
    assert results.count("ok") == k
    assert results.count("refused") == 200 - k
    assert fake.post_count == k
    account = await storage.ledger.get_account(GUILD, USER)
    assert (account.balance, account.held) == (0, 0)
    totals = await storage.reports.ledger_totals(GUILD, USER)
    assert totals.captured == per_job * k
    await assert_books_balance(storage)


def truncated_png() -> bytes:
    data = photo()
    return data[: len(data) // 2]


def huge_declared_png() -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    return out.getvalue()


def tiff_named_png() -> bytes:
    out = io.BytesIO()
    Image.open(DATA / "chelsea.png").save(out, "TIFF")
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "declared_size"),
    [
        pytest.param(b"just some text, not an image", None, id="text-file"),
        pytest.param(truncated_png(), None, id="truncated-png"),
        pytest.param(huge_declared_png(), None, id="30000x30000-png"),
        pytest.param(animated_gif(), None, id="animated-gif"),
        pytest.param(tiff_named_png(), None, id="renamed-tiff"),
        pytest.param(photo(), 50 * 1024 * 1024, id="over-the-size-cap"),
    ],
)
async def test_bad_inputs_are_refused_before_any_credit_or_provider_call(
    make_service, fake, storage, data, declared_size
):
    bad = upload(data)
    if declared_size is not None:
        bad = replace(bad, size=declared_size)
    with pytest.raises(InvalidImage) as info:
        await run_to_end(make_service(), make_job(bad))
    assert "Traceback" not in info.value.user_message
    assert fake.post_count == 0
    assert await storage.ledger.get_account(GUILD, USER) is None  # not even an account was touched


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prompt": "x" * 32001}, "at most 32000"),
        ({"background": "transparent", "output_format": "jpeg"}, "transparent"),
        ({"model": "no-such-model"}, "Unknown model"),
        ({"prompt": "   "}, "prompt is empty"),
        # Only invisible characters (zero-width space and joiner, a direction mark): nothing to read.
        ({"prompt": "\u200b\u200d \u200e"}, "prompt is empty"),
        # Hangul fillers and the braille blank draw nothing; nor does a combining mark on no letter.
        ({"prompt": "\u3164\u115f\u1160\uffa0"}, "prompt is empty"),
        ({"prompt": "\u2800 \u034f\u0301"}, "prompt is empty"),
    ],
)
async def test_impossible_options_are_refused_for_free(make_service, fake, storage, options, message):
    with pytest.raises(InvalidOptions, match=message):
        await run_to_end(make_service(), make_job(**options))
    assert fake.post_count == 0


async def test_not_enough_credits_is_refused_without_a_provider_call(make_service, fake, storage):
    service = make_service(STARTING_CREDITS="1")
    with pytest.raises(InsufficientCredits) as info:
        await run_to_end(service, make_job(quality="high"))
    assert info.value.available == 1
    assert fake.post_count == 0
    assert (await storage.ledger.get_account(GUILD, USER)).balance == 1


@pytest.mark.parametrize(
    ("fault", "words", "posts"),
    [
        (Fault.MODERATION_BLOCKED, "safety system", 1),
        (Fault.INVALID_IMAGE, "could not use this image", 1),
        (Fault.UNAUTHORIZED, "not available for this bot", 1),
        (Fault.ORG_VERIFICATION, "not available for this bot", 1),
        # Shut down without notice: the job moves to the next live model (one extra call), which the
        # fake refuses too; the member is told the model was shut down and refunded.
        (Fault.MODEL_NOT_FOUND, "was shut down", 2),
        (Fault.INSUFFICIENT_QUOTA, "not available for this bot", 1),
        (Fault.SERVER_ERROR, "failed to answer", 1),
        (Fault.RESET_AFTER_BODY, "failed to answer", 1),
        (Fault.EMPTY_RESULT, "failed to answer", 1),
        # A 200 whose one image is cut off behind an intact signature: nothing broken is delivered.
        (Fault.TRUNCATED_IMAGE, "failed to answer", 1),
    ],
)
async def test_provider_failures_release_credits_exactly_once(
    make_service, fake, storage, fault, words, posts
):
    fake.fail_always(fault)
    with pytest.raises(NoResult) as info:  # the member's progress message ends with the failure
        await run_to_end(make_service(), make_job())
    assert words in info.value.text
    assert "not charged" in info.value.text and "ref `" in info.value.text
    assert fake.post_count == posts
    jobs = await storage.jobs.recent_jobs(GUILD, USER)
    assert [j.state for j in jobs] == ["failed"]
    assert await job_kinds(storage, jobs[0].id) == ["reserve", "release"]
    account = await storage.ledger.get_account(GUILD, USER)
    assert (account.balance, account.held) == (1000, 0)


async def test_rate_limit_with_short_retry_after_is_retried_once(make_service, fake, storage):
    fake.fail_next(Fault.RATE_LIMITED, retry_after=0.05)
    outcome = await run_to_end(make_service(), make_job())
    assert fake.post_count == 2
    assert outcome.charged > 0
    assert (await storage.ledger.get_account(GUILD, USER)).held == 0


async def test_provider_that_never_answers_times_out_and_refunds(make_service, fake, storage):
    fake.fail_always(Fault.HANG)
    with pytest.raises(NoResult, match="too long") as info:
        await run_to_end(make_service(), make_job())
    assert info.value.ref is not None  # a failure, with its log reference
    assert fake.post_count == 1
    assert (await storage.ledger.get_account(GUILD, USER)).held == 0


async def test_failed_delivery_is_refunded(make_service, fake, storage):
    live = RecordingLive(refuse=ConnectionError("discord is down"))
    with pytest.raises(NoResult) as info:
        await run_to_end(make_service(), make_job(), live)
    assert info.value.ref is not None and live.delivered == []  # a failure, with its log reference
    account = await storage.ledger.get_account(GUILD, USER)
    assert (account.balance, account.held) == (1000, 0)


async def test_shutdown_drain_aborts_unfinished_jobs_and_refunds_them(make_service, fake, storage):
    fake.fail_always(Fault.HANG)
    service = make_service()
    live = RecordingLive()
    task = asyncio.create_task(run_to_end(service, make_job(), live))
    await live.shown("Editing", timeout=5)
    aborted = await service.drain(0.05)
    assert aborted == 1
    with pytest.raises(NoResult) as info:
        await task
    assert info.value.text == JobInterrupted().user_message
    assert (await storage.ledger.get_account(GUILD, USER)).held == 0
    assert [j.state for j in await storage.jobs.recent_jobs(GUILD, USER)] == ["cancelled"]
    assert not service.accepting


async def test_result_larger_than_the_upload_limit_is_reencoded_to_fit(make_service, fake):
    job = replace(make_job(size="1536x1024"), upload_limit=200_000)
    delivered = (await run_to_end(make_service(), job)).files[0]
    assert len(delivered.data) <= 200_000
    Image.open(io.BytesIO(delivered.data)).verify()


class EventLog(JobObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def job_started(self, job_id: str, model: str) -> None:
        self.events.append(("started", model))

    def provider_finished(self, provider: str, model: str, seconds: float, error: str | None) -> None:
        self.events.append(("provider", provider, str(error)))

    def job_finished(self, job_id: str, state: str, **kw: object) -> None:
        self.events.append(("finished", state, str(kw["error"])))


class BrokenObserver(JobObserver):
    def job_started(self, job_id: str, model: str) -> None:
        raise RuntimeError("metrics bug")


async def test_observers_see_each_job_and_cannot_break_it(make_service, fake):
    service = make_service()
    log = EventLog()
    service.observers += [BrokenObserver(), log]
    await run_to_end(service, make_job())
    fake.fail_next(Fault.MODERATION_BLOCKED)
    with pytest.raises(NoResult) as info:
        await run_to_end(service, make_job())
    assert info.value.ref is not None  # a failure, with its log reference
    assert log.events == [
        ("started", "gpt-image-1.5"),
        ("provider", "openai", "None"),
        ("finished", "delivered", "None"),
        ("started", "gpt-image-1.5"),
        ("provider", "openai", "ProviderRejected"),
        ("finished", "failed", "ProviderRejected"),
    ]


def white_box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> bytes:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    out = io.BytesIO()
    mask.save(out, "PNG")
    return out.getvalue()


async def test_masked_edit_sends_an_alpha_mask_and_keeps_the_outside_exact(make_service, fake, storage):
    original = Image.open(DATA / "coffee.png").convert("RGB")
    box = (100, 100, 300, 250)
    mask = MaskSpec(upload=upload(white_box_mask((300, 200), (50, 50, 150, 125)), "mask"), feather=4)
    job = replace(make_job(upload(photo("coffee.png"))), mask=mask)
    outcome = await run_to_end(make_service(), job)
    sent = fake.requests[-1].mask
    assert sent is not None and sent.mode == "RGBA" and (sent.width, sent.height) == original.size
    result = Image.open(io.BytesIO(outcome.files[0].data)).convert("RGB")
    assert result.size == original.size
    inside = result.crop((box[0] + 6, box[1] + 6, box[2] - 6, box[3] - 6))
    outside_pixels = [
        (x, y)
        for x in range(0, original.width, 7)
        for y in range(0, original.height, 7)
        if not (box[0] <= x < box[2] and box[1] <= y < box[3])
    ]
    assert all(result.getpixel(p) == original.getpixel(p) for p in outside_pixels)
    assert inside.tobytes() != original.crop((106, 106, 294, 244)).tobytes()


async def test_a_masked_result_written_as_png_instead_of_the_format_asked_says_so(
    make_service, fake, monkeypatch
):
    """A side too long for WebP or JPEG (tests/test_imaging.py: the restore then writes PNG): the
    result says why it is not the format the member asked for."""
    real = imaging.restore_outside

    def too_long(*args: object, **kw: object) -> tuple[bytes, str]:
        return real(*args, **{**kw, "fmt": "png"})  # type: ignore[arg-type]

    monkeypatch.setattr(imaging, "restore_outside", too_long)
    mask = MaskSpec(grid=(3, 3), cells=(5,))
    job = replace(make_job(output_format="webp"), mask=mask)
    outcome = await run_to_end(make_service(), job)
    assert outcome.files[0].format == "png"
    assert messages.kept_as_png("webp") in outcome.notices
    assert messages.kept_as_png("webp") == "Saved as PNG: WebP cannot hold an image this long on one side."


def limit_giving(share: int) -> int:
    """The upload limit that gives one file `share` bytes (`imaging.share_of_upload`)."""
    return next(limit for limit in range(share, 2 * share) if imaging.share_of_upload(limit, 1) >= share)


def outside_changed(result: bytes, original: bytes, region: Image.Image) -> tuple[int, int, int, int] | None:
    """The box of pixels outside `region` (white = the marked area) that differ from the original's."""
    from PIL import ImageChops

    got = Image.open(io.BytesIO(result)).convert("RGB")
    base = Image.open(io.BytesIO(original)).convert("RGB")
    diff = ImageChops.difference(got, base)
    return Image.composite(Image.new("RGB", diff.size), diff, region.convert("L")).getbbox()


async def test_a_masked_result_too_large_for_the_upload_limit_stays_exact_or_says_it_is_not(
    make_service, fake
):
    """A restored PNG over its share of Discord's limit went through the lossy rungs (WebP, JPEG,
    smaller): every pixel outside the mask changed, in a format the member did not ask for, unsaid.
    Lossless WebP keeps them when it fits; when nothing exact fits, the result says so."""
    service = make_service()
    job = replace(make_job(output_format="png"), mask=MaskSpec(grid=(3, 3), cells=(5,)))
    png = (await run_to_end(service, job)).files[0].data
    lossless = imaging.encode(Image.open(io.BytesIO(png)), "webp", lossless=True)
    assert len(lossless) < len(png)
    original = photo()
    region = imaging.grid_region(Image.open(io.BytesIO(original)).size, 3, 3, [5])

    fits = await run_to_end(service, replace(job, upload_limit=limit_giving(len(lossless))))
    [kept] = fits.files
    assert kept.format == "webp" and outside_changed(kept.data, original, region) is None
    assert messages.KEPT_AS_LOSSLESS_WEBP in fits.notices

    smaller = await run_to_end(service, replace(job, upload_limit=limit_giving(len(lossless) - 1)))
    [made] = smaller.files
    assert len(made.data) < len(lossless) and outside_changed(made.data, original, region) is not None
    assert messages.RESTORED_NOT_EXACT in smaller.notices


async def test_a_masked_jpeg_made_smaller_for_the_upload_limit_claims_no_lossless_copy(make_service, fake):
    """JPEG was never exact: a JPEG result re-encoded to fit says nothing about pixels kept (it was told
    "the same pixels as the PNG", in lossless WebP, of a lossy WebP)."""
    service = make_service()
    job = replace(make_job(output_format="jpeg"), mask=MaskSpec(grid=(3, 3), cells=(5,)))
    jpeg = (await run_to_end(service, job)).files[0].data
    fitted = await run_to_end(service, replace(job, upload_limit=limit_giving(len(jpeg) - 1)))
    [made] = fitted.files
    assert made.data != jpeg
    assert messages.KEPT_AS_LOSSLESS_WEBP not in fitted.notices
    assert messages.RESTORED_NOT_EXACT not in fitted.notices


@pytest.mark.parametrize(
    ("fitted", "asked", "said"),
    [
        ([("png", "as is"), ("png", "lossless")], "png", [messages.KEPT_AS_LOSSLESS_WEBP]),
        ([("png", "as is")], "webp", [messages.kept_as_png("webp")]),
        (
            [("png", "as is"), ("png", "smaller")],
            "jpeg",
            [messages.kept_as_png("jpeg"), messages.RESTORED_NOT_EXACT],
        ),
        ([("webp", "lossless")], "webp", []),
        ([("jpeg", "smaller")], "jpeg", []),
        ([("png", "as is")], "png", []),
    ],
)
def test_a_restored_results_notices_follow_each_image(
    fitted: list[tuple[str, str]], asked: str, said: list[str]
):
    """Per image: one of two PNGs kept and the other made lossless WebP is not "too long for PNG"; a
    PNG kept for a long side still says so beside another image made smaller."""
    assert list(results_module._format_notices(fitted, asked)) == said


async def test_masked_results_are_restored_a_few_at_a_time(make_service, fake, monkeypatch):
    """A 40-megapixel restore holds about 700 MB: with many jobs running, only `restore_turns` of
    them restore at once (the rest wait with their result stored), so memory stays bounded."""
    service = make_service()
    service.engine.restore_turns = IntakeTurns(1)
    lock, running, most = threading.Lock(), [0], [0]
    real = imaging.restore_outside

    def slow_restore(*args: object, **kw: object) -> tuple[bytes, str]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.1)  # long enough for the other jobs' results to arrive meanwhile
            return real(*args, **kw)  # type: ignore[arg-type]
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(imaging, "restore_outside", slow_restore)
    mask = MaskSpec(grid=(3, 3), cells=(5,))
    outcomes = await asyncio.gather(*(run_to_end(service, replace(make_job(), mask=mask)) for _ in range(3)))
    assert len(outcomes) == 3 and most[0] == 1


async def test_a_retired_models_replacement_must_be_allowed_on_the_server(make_service, storage):
    """The server allows only gpt-image-1 (set while it was live); once it is shut down its jobs move
    to gpt-image-1.5, which the server never allowed: refused, not run (and held) there."""
    service = make_service()
    await storage.settings.update_guild_policy(GUILD, {"models": "gpt-image-1"}, actor_id=9)
    job = make_job(model="gpt-image-1", quality="high", size="1024x1024")
    with pytest.raises(PolicyRefused) as refused:
        await service.prepare(job)
    assert refused.value.code == "no_allowed_model"
    await storage.settings.update_guild_policy(GUILD, {"models": "gpt-image-1 gpt-image-1.5"}, actor_id=9)
    assert (await service.prepare(job)).model.id == "gpt-image-1.5"


async def test_grid_cells_become_the_mask(make_service, fake):
    job = replace(make_job(), mask=MaskSpec(grid=(3, 3), cells=(5,)))
    await run_to_end(make_service(), job)
    assert fake.requests[-1].mask is not None


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (MaskSpec(grid=(3, 3), cells=()), "Pick at least one"),
        (MaskSpec(grid=(3, 3), cells=tuple(range(1, 10))), "You picked every cell"),
        (MaskSpec(grid=(3, 3), cells=tuple(range(1, 10)), invert=True), "every cell would be kept"),
        (MaskSpec(upload=upload(white_box_mask((64, 64), (0, 0, 0, 0)), "mask")), "mask"),
    ],
)
async def test_useless_masks_are_refused_for_free(make_service, fake, storage, mask, message):
    with pytest.raises(InvalidMask, match=message):
        await run_to_end(make_service(), replace(make_job(), mask=mask))
    assert fake.post_count == 0


async def test_prepare_prices_without_moving_credits(make_service, fake, storage):
    prepared = await make_service().prepare(make_job(quality="high", size="1024x1024"))
    assert prepared.reserve == 133  # gpt-image-1.5 high square: $0.133
    assert fake.post_count == 0
    assert await storage.ledger.get_account(GUILD, USER) is None


# -- rules a mutation pass found untested: each test below fails if its rule is changed -----------


async def test_a_prompt_exactly_as_long_as_the_model_takes_is_accepted(make_service, fake):
    prepared = await make_service().prepare(make_job(prompt="x" * 32000))
    assert prepared.model.max_prompt_chars == 32000


async def test_a_transparent_background_needs_png_or_webp_not_jpeg(make_service, fake):
    service = make_service()
    for fmt in ("png", "webp"):
        prepared = await service.prepare(make_job(background="transparent", output_format=fmt))
        assert prepared.chosen.background == "transparent"
    with pytest.raises(InvalidOptions) as refused:
        await service.prepare(make_job(background="transparent", output_format="jpeg"))
    assert refused.value.code == "transparent_jpeg"


async def test_an_upload_declared_exactly_at_the_size_cap_is_read(make_service, fake):
    service = make_service()
    at_cap = replace(upload(photo()), size=service.settings.max_input_bytes)
    prepared = await service.prepare(make_job(at_cap))
    assert len(prepared.images) == 1


async def test_an_edit_takes_at_most_four_images_even_on_a_model_that_takes_more(make_service, fake):
    service = make_service()
    five = [upload(photo(), f"image{i}") for i in range(5)]
    job = make_job(*five, model="gpt-image-1.5")
    assert service.catalog.get("gpt-image-1.5").max_input_images > 4
    with pytest.raises(InvalidOptions) as refused:
        await service.prepare(job)
    assert refused.value.code == "too_many_images"


async def test_a_mask_file_declared_over_the_cap_is_refused_before_it_is_downloaded(make_service, fake):
    service = make_service()
    reads = []

    async def read() -> bytes:
        reads.append(1)
        return white_box_mask((64, 64), (0, 0, 32, 32))

    huge = Upload(label="mask", filename="mask.png", size=service.settings.max_input_bytes + 1, read=read)
    with pytest.raises(InvalidMask) as refused:
        await service.prepare(replace(make_job(), mask=MaskSpec(upload=huge)))
    assert refused.value.code == "too_large"
    assert reads == []
    assert fake.post_count == 0


async def test_a_job_moved_off_a_retired_model_keeps_the_model_asked_for_but_not_as_picked(
    make_service, fake
):
    """Its spec says which model was asked for (Retry, Edit again carry it) and that the member's pick
    did not run: Edit again then moves with the default instead of being refused as a dead pick."""
    service = make_service()
    prepared = await service.prepare(make_job(model="gpt-image-1"))
    assert (prepared.chosen.model, prepared.model.id) == ("gpt-image-1", "gpt-image-1.5")
    outcome = await run_prepared(service, prepared, RecordingLive())
    again = await service.again_options(outcome.job_id, "again", user_id=USER)
    assert (again.model, again.model_is_default) == ("gpt-image-1", True)


@pytest.mark.parametrize(
    ("model", "clicker", "expected"),
    [
        ("gpt-image-1-mini", USER, ("gpt-image-1-mini", False)),
        ("gpt-image-1-mini", OTHER_USER, ("gpt-image-1-mini", False)),  # a pick is part of the edit
        (None, USER, ("gpt-image-1.5", True)),
        (None, OTHER_USER, (None, False)),  # the requester's default: the clicker's own decide
    ],
)
async def test_edit_again_carries_the_requesters_default_model_only_for_the_requester(
    make_service, fake, model: str | None, clicker: int, expected: tuple[str | None, bool]
):
    service = make_service()
    outcome = await run_to_end(service, make_job(model=model))
    again = await service.again_options(outcome.job_id, "again", user_id=clicker)
    assert (again.model, again.model_is_default) == expected


async def test_edit_again_on_a_picked_model_gone_without_a_successor_runs_on_the_default(make_service, fake):
    """The form has no model option: refused as a dead pick, the member could not act on it."""
    mini = ("gpt-image-1-mini", {"name": "GPT Image 1 Mini", "qualities": WITH_AUTO})
    before = catalog(model("gpt-image-1.5", qualities=WITH_AUTO), model(mini[0], **mini[1]))
    gone = route("openai", shutdown=TODAY - dt.timedelta(days=1))
    after = catalog(model("gpt-image-1.5", qualities=WITH_AUTO), model(mini[0], routes=[gone], **mini[1]))
    outcome = await run_to_end(make_service(before), make_job(model="gpt-image-1-mini"))
    service = make_service(after)
    again = await service.again_options(outcome.job_id, "again", user_id=USER)
    assert (again.model, again.model_is_default) == ("gpt-image-1-mini", True)
    prepared = await service.prepare(replace(make_job(), options=again))
    assert prepared.model.id == "gpt-image-1.5"
    assert prepared.resolution.notice == messages.defaulted("GPT Image 1 Mini", prepared.model.name)


async def test_a_retried_masked_job_keeps_its_mask_settings_and_whether_its_model_was_picked(
    make_service, fake
):
    service = make_service()
    mask = MaskSpec(grid=(3, 3), cells=(5,), feather=0, keep_outside=False)
    defaulted = await run_to_end(service, replace(make_job(), mask=mask))
    picked = await run_to_end(service, make_job(model="gpt-image-1-mini"))
    where = {"user_id": USER, "guild_id": GUILD, "role_ids": (), "channel_id": 3, "upload_limit": 1 << 20}
    retry = await service.retry_job(defaulted.job_id, **where)
    assert retry.mask is not None
    assert (retry.mask.feather, retry.mask.keep_outside) == (0, False)
    assert retry.options.model_is_default is True
    retry = await service.retry_job(picked.job_id, **where)
    assert (retry.options.model, retry.options.model_is_default) == ("gpt-image-1-mini", False)


@pytest.mark.parametrize(
    "damage",
    [lambda png: png[: len(png) // 2], lambda png: b"", lambda png: white_box_mask((8, 8), (2, 2, 6, 6))],
    ids=["truncated", "empty", "another-size"],
)
async def test_a_retry_whose_stored_mask_was_damaged_is_told_the_mask_is_unreadable(
    make_service, fake, caplog, damage
):
    """A region.png damaged on disk since the job ran: imaging's ValueError reached the member as
    "Something went wrong" (before stored masks were read as written, it was the corrupt-mask message)."""
    service = make_service()
    outcome = await run_to_end(service, replace(make_job(), mask=MaskSpec(grid=(3, 3), cells=(5,))))
    where = {"user_id": USER, "guild_id": GUILD, "role_ids": (), "channel_id": 3, "upload_limit": 1 << 20}
    retry = await service.retry_job(outcome.job_id, **where)
    assert retry.mask is not None and retry.mask.upload is not None
    region = service.engine.files.folder(outcome.job_id) / retry.mask.upload.filename
    region.write_bytes(damage(region.read_bytes()))
    posts = fake.post_count

    with caplog.at_level("WARNING", logger="bot.services.edits"), pytest.raises(InvalidMask) as refused:
        await service.prepare(retry)

    assert (refused.value.code, refused.value.user_message) == ("corrupt", messages.corrupt("`mask`"))
    assert any("stored mask region.png of a Retry is unusable" in r.getMessage() for r in caplog.records)
    assert fake.post_count == posts


async def test_a_prepared_job_the_safety_check_already_passed_is_not_screened_again(make_service, fake):
    service = make_service()
    screened: list[str] = []

    class Safety:
        async def screen(self, *, prompt: str, **_: object) -> None:
            screened.append(prompt)

    service.safety = Safety()  # type: ignore[assignment]
    prepared = await service.prepare(make_job(prompt="first"))
    await run_prepared(service, prepared, RecordingLive())
    await run_prepared(service, replace(prepared, screened=True), RecordingLive())
    assert screened == ["first"]


async def test_a_retired_models_replacement_the_server_forbids_moves_to_the_servers_allowed_default(
    make_service, fake, storage
):
    service = make_service()
    await storage.settings.update_guild_policy(
        GUILD, {"models": "gpt-image-1 gpt-image-1-mini", "default_model": "gpt-image-1-mini"}, actor_id=9
    )
    prepared = await service.prepare(make_job(model="gpt-image-1", quality="high", size="1024x1024"))
    assert prepared.model.id == "gpt-image-1-mini"
    assert prepared.chosen.model == "gpt-image-1"  # the model asked for, for Retry and Edit again


@pytest.mark.parametrize("prompt", ["cafe\u0301 style", "🐱", "猫を青く", "नीला करो", "\u3164make it blue"])
def test_a_prompt_with_anything_to_read_is_not_called_empty(prompt: str) -> None:
    assert visible(prompt)
