"""The DM fallback keeps to a DM's upload limit, whatever the server's boost level allowed; a credit
history line says who changed the credits, also once retention erased the admin."""

from __future__ import annotations

import io
import random
from dataclasses import replace

from PIL import Image

from bot import messages
from bot.jobs.model import EditOutcome, ResultFile
from bot.storage.reports import LedgerEntry
from cogs._delivery import DM_UPLOAD_LIMIT, fit_for_dm
from cogs.credits import entry_line


def noisy_png(side: int) -> bytes:
    rng = random.Random(7)
    image = Image.frombytes("RGB", (side, side), bytes(rng.getrandbits(8) for _ in range(side * side * 3)))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def outcome(*files: ResultFile) -> EditOutcome:
    return EditOutcome(
        job_id="0" * 16,
        prompt="p",
        model_id="m",
        model_name="M",
        provider="openai",
        quality="low",
        size="1024x1024",
        files=files,
        charged=1,
        balance_after=1,
    )


async def test_a_result_too_big_for_a_dm_is_re_encoded_to_fit_and_small_ones_are_left_alone():
    big = ResultFile("retouch_0_1.png", noisy_png(256), "png")
    small = ResultFile("retouch_0_2.png", noisy_png(16), "png")
    limit = len(big.data) // 2

    fitted = await fit_for_dm(outcome(big, small), limit)

    first, second = fitted.files
    assert len(first.data) <= limit and first.filename.startswith("retouch_0_1.")
    assert first.filename.rsplit(".", 1)[1] == {"jpeg": "jpg"}.get(first.format, first.format)
    assert second is small
    assert DM_UPLOAD_LIMIT == 10 * 1024 * 1024  # Discord's default, which DMs get
    # Said, once: the server's fit line (if any) is replaced by the DM's.
    earlier = messages.fitted_to_upload_limit(["jpeg"])
    fitted = await fit_for_dm(replace(outcome(big, small), notices=("kept", earlier)), limit)
    assert fitted.notices == ("kept", messages.fitted_to_upload_limit([fitted.files[0].format]))


async def test_results_that_fit_a_dm_alone_but_not_together_are_fitted_to_their_share():
    first = ResultFile("retouch_0_1.png", noisy_png(128), "png")
    second = ResultFile("retouch_0_2.png", noisy_png(128), "png")
    limit = len(first.data) * 3 // 2  # one fits a DM, the two together do not

    fitted = await fit_for_dm(outcome(first, second), limit)

    assert sum(len(f.data) for f in fitted.files) <= limit


async def test_a_png_too_big_for_a_dm_keeps_its_pixels_as_lossless_webp_when_that_fits():
    """A masked result's outside pixels are the original's: the DM's re-encode must not change them
    when an exact encoding fits (the lossy rungs change every pixel)."""
    flat = Image.new("RGB", (256, 256), (200, 120, 40))
    flat.paste((10, 200, 90), (40, 40, 200, 120))
    buf = io.BytesIO()
    flat.save(buf, "PNG", compress_level=0)  # large as PNG, tiny as lossless WebP
    big = ResultFile("retouch_0_1.png", buf.getvalue(), "png")
    limit = len(big.data) // 4

    [fitted] = (await fit_for_dm(replace(outcome(big), restored=True), limit)).files

    assert fitted.format == "webp" and len(fitted.data) <= limit
    assert Image.open(io.BytesIO(fitted.data)).convert("RGB").tobytes() == flat.tobytes()


async def test_a_restored_result_made_lossy_for_a_dm_says_its_outside_is_no_longer_exact():
    """Exact in the channel (a boosted server's limit), too large for a DM even as lossless WebP: the DM
    copy must not keep saying "the same pixels"."""
    restored = ResultFile("retouch_0_1.webp", noisy_png(256), "png")
    channel = replace(outcome(restored), notices=(messages.KEPT_AS_LOSSLESS_WEBP,), restored=True)

    dm = await fit_for_dm(channel, len(restored.data) // 2)

    assert dm.files[0].data != restored.data
    assert dm.notices == (messages.RESTORED_NOT_EXACT,)
    unmasked = await fit_for_dm(replace(channel, restored=False, notices=()), len(restored.data) // 2)
    # Any other result is made to fit, and says in which format (not a claim about its outside).
    assert unmasked.notices == (messages.fitted_to_upload_limit([unmasked.files[0].format]),)


def test_a_credit_history_line_names_an_admins_change_after_retention_erased_who_and_why():
    def line(amount: int, actor: int | None, reason: str | None) -> str:
        kind = "grant" if amount > 0 else "adjust"
        return entry_line(
            LedgerEntry(1, 2, 3, None, kind, amount, amount, 0, actor, reason, "2026-11-01T00:00:00")
        )

    assert line(-100, None, None).endswith("**-100 credits** · by an admin")  # not "· grant"
    assert line(50, 9, "grant: prize").endswith("· by <@9> — grant: prize")
    assert line(20, None, "starting credits").endswith("· starting credits")
