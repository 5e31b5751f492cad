"""`/mask` and the "Edit image" menu end to end: the real bot against the fake Discord and fake OpenAI.

The fake OpenAI returns the colour-inverted input at the requested size (1024×1024 here, unlike the
451×300 photo), so every pixel the locality guarantee restores is visibly different from the model's.
"""

from __future__ import annotations

import asyncio
import io
import random
import re
import sys
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from bot import imaging, messages
from bot.catalog import Catalog
from bot.jobs.core import IntakeTurns
from bot.services import masking
from cogs.mask import MaskCog
from tests.catalogs import WITH_AUTO, catalog, model
from tests.durable import assert_books_balance, jobs, ledger_kinds, undo_button
from tests.durable import control as job_control
from tests.fakes.discord import FakeDiscord, FakeDiscordUsageError, FakeInteraction, FakeMessage, HeldRequests
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import World, running_bot

DATA = Path(__file__).resolve().parents[1] / "data"
PHOTO = (DATA / "chelsea.png").read_bytes()
PHOTO_SIZE = (451, 300)
BOX = (120, 60, 330, 240)  # the area a mask file marks for editing
STARTING = 100000

MASK_CATALOG: Catalog = catalog(
    model("gpt-image-1.5", name="GPT Image 1.5", qualities=WITH_AUTO, max_input_images=16, mask=True),
    model("gpt-image-1-mini", name="GPT Image 1 Mini", qualities=WITH_AUTO, max_input_images=16),
)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def box_mask(box: tuple[int, int, int, int] = BOX, size: tuple[int, int] = PHOTO_SIZE) -> bytes:
    """Black/white mask, white = edit."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
    return png(mask)


def rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


ORIGINAL = rgb(PHOTO)


def sample_points(step: int = 7) -> Iterable[tuple[int, int]]:
    width, height = PHOTO_SIZE
    return ((x, y) for y in range(0, height, step) for x in range(0, width, step))


def assert_only_box_changed(result: Image.Image, box: tuple[int, int, int, int], feather: int = 6) -> None:
    """Sampled pixels outside `box` equal the original exactly; deep inside they are the model's."""
    assert result.size == PHOTO_SIZE
    left, top, right, bottom = box
    outside = inside = 0
    for x, y in sample_points():
        if not (left <= x < right and top <= y < bottom):
            assert result.getpixel((x, y)) == ORIGINAL.getpixel((x, y)), f"outside pixel {(x, y)} changed"
            outside += 1
        elif left + feather < x < right - feather - 1 and top + feather < y < bottom - feather - 1:
            inside += result.getpixel((x, y)) != ORIGINAL.getpixel((x, y))
    assert outside > 500 and inside > 100


@pytest.fixture
async def world(fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path) -> AsyncIterator[World]:
    async with running_bot(fake_discord, openai, tmp_path, catalog=MASK_CATALOG) as w:
        yield w


def cog(world: World) -> MaskCog:
    # load_extension imports its own copy of cogs.mask, so isinstance against ours would fail.
    found = world.bot.get_cog("MaskCog")
    assert found is not None
    return found  # type: ignore[return-value]


async def mask_command(world: World, mask: bytes | None = None, **options: object) -> FakeInteraction:
    attachments = {"image": ("cat.png", PHOTO)}
    if mask is not None:
        attachments["mask"] = ("mask.png", mask)
    return await world.fake.slash(
        world.user,
        "mask",
        channel=world.channel,
        options={"prompt": "a red scarf", "quality": "low", "size": "1024x1024", **options},
        attachments=attachments,
    )


def control(message: FakeMessage, action: str) -> str | None:
    """The custom id of the picker/preview control `action` on `message`, if it is there."""
    for row in message.components:
        for component in row.get("components", []):
            custom_id = component.get("custom_id", "")
            if re.fullmatch(rf"retouch:mask:[0-9a-f]{{12}}:{action}", custom_id):
                return custom_id
    return None


async def shown(world: World, interaction: FakeInteraction, action: str) -> FakeMessage:
    """Wait until the interaction's private message offers `action`; return that message."""

    def ready() -> FakeMessage | None:
        message = interaction.original_message
        return message if message is not None and control(message, action) else None

    return await world.fake.wait_until(ready)


async def click(world: World, message: FakeMessage, action: str) -> FakeInteraction:
    custom_id = control(message, action)
    assert custom_id is not None, f"no {action} control on the message"
    return await world.fake.click(world.user, message, custom_id)


async def account(world: World) -> tuple[int, int] | None:
    found = await world.services.storage.ledger.get_account(world.guild.id, world.user.id)
    return None if found is None else (found.balance, found.held)


def public_results(interaction: FakeInteraction) -> list[FakeMessage]:
    return [m for m in interaction.followups if not m.ephemeral and m.files]


def fields(message: FakeMessage) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0]["fields"]}


async def test_run_edit_runs_the_quality_its_preview_priced_though_the_default_changed_since(world: World):
    """The member's default quality goes up between the preview and Run edit: the edit runs (and is
    held) at the quality the preview showed and priced, not at the new default's dearer one."""
    it = await world.fake.slash(
        world.user,
        "mask",
        channel=world.channel,
        options={"prompt": "a red scarf", "size": "1024x1024"},
        attachments={"image": ("cat.png", PHOTO), "mask": ("mask.png", box_mask())},
    )
    preview = await shown(world, it, "run")
    previewed = fields(preview)["Quality"]
    await world.services.policy.set_quality(world.guild.id, world.user.id, (), "high")
    assert previewed != "high"
    run = await click(world, preview, "run")
    assert (await world.finished(run)).startswith("Done")
    assert world.openai.requests[-1].fields["quality"] == previewed


async def test_mask_file_preview_then_run_changes_only_the_masked_area(world: World):
    it = await mask_command(world, box_mask())
    preview = await shown(world, it, "run")

    # Private preview, nothing spent yet: the tinted picture, the worst-case cost, the balance.
    assert it.callbacks[0]["type"] == 5 and preview.ephemeral
    assert [name for name, _ in preview.files] == ["mask_preview.jpg"]
    info = fields(preview)
    cost = int(re.fullmatch(r"up to (\d+) credits", info["Cost"])[1])
    assert info["Your balance"] == f"{STARTING} credits"
    assert info["Area"] == "28% of the image"
    assert world.openai.post_count == 0
    assert await account(world) == (STARTING, 0)

    run = await click(world, preview, "run")
    final = await world.finished(run)

    assert run.callbacks[0]["type"] == 7  # the click turned the preview into the progress message
    assert final.startswith("Done — ")
    charged = int(re.search(r"Done — (\d+) credits", final)[1])
    assert 0 < charged <= cost
    assert await account(world) == (STARTING - charged, 0)
    [result] = public_results(run)
    assert result.allowed_mentions == {"parse": []}
    assert_only_box_changed(rgb(result.files[0][1]), BOX)
    request = world.openai.requests[-1]
    assert request.mask is not None and request.mask.mode == "RGBA"
    assert (request.mask.width, request.mask.height) == PHOTO_SIZE
    assert preview.components == []  # the private message now holds the progress, not buttons


def strokes_on_clear(box: tuple[int, int, int, int] = BOX) -> bytes:
    """White strokes on a transparent layer: read by transparency, the strokes are what is kept."""
    mask = Image.new("RGBA", PHOTO_SIZE, (0, 0, 0, 0))
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(255, 255, 255, 255))
    return png(mask)


@pytest.mark.parametrize("invert", [False, True])
async def test_white_strokes_on_a_clear_layer_are_kept_and_the_preview_and_result_say_so(
    world: World, invert: bool
):
    """The member may have meant the strokes as the part to change: the preview says which part
    changes and how to flip it, and so does the result; with `invert` on, the strokes change and
    there is nothing to say."""
    it = await mask_command(world, strokes_on_clear(), invert=invert)
    preview = await shown(world, it, "run")
    notes = [f["value"] for f in preview.embeds[0]["fields"] if f["name"] == "Note"]
    assert notes == ([] if invert else [messages.MASK_LIGHT_ON_CLEAR])
    width, height = PHOTO_SIZE
    box_area = (BOX[2] - BOX[0]) * (BOX[3] - BOX[1])
    changed = box_area if invert else width * height - box_area
    assert fields(preview)["Area"] == f"{changed / (width * height):.0%} of the image"
    run = await click(world, preview, "run")
    await world.finished(run)
    [result] = public_results(run)
    said = " ".join(str(f.get("value")) for f in result.embeds[0].get("fields", []))
    assert (messages.MASK_LIGHT_ON_CLEAR in said) is not invert


async def test_picker_updates_as_cells_are_chosen_then_runs_on_those_cells(world: World):
    it = await mask_command(world)
    picker = await shown(world, it, "cells")
    assert picker.ephemeral and [name for name, _ in picker.files] == ["mask_grid.jpg"]
    select = picker.find_component(control(picker, "cells"))
    assert [o["value"] for o in select["options"]] == [str(n) for n in range(1, 10)]
    assert picker.find_component(control(picker, "next"))["disabled"] is True
    before = rgb(picker.files[0][1])

    pick = await world.fake.select(world.user, picker, control(picker, "cells"), ["1", "2"])
    await world.fake.wait_until(lambda: not picker.find_component(control(picker, "next")).get("disabled"))
    after = rgb(picker.files[0][1])
    assert pick.callbacks == [{"type": 6}]
    # Cell 1 (top left) is tinted magenta now; cell 9 (bottom right) is not.
    (r0, g0, _), (r1, g1, _) = before.getpixel((40, 40)), after.getpixel((40, 40))
    assert (r1 - g1) > (r0 - g0) + 40
    assert before.getpixel((400, 260)) == pytest.approx(after.getpixel((400, 260)), abs=12)
    defaults = [
        o["value"] for o in picker.find_component(control(picker, "cells"))["options"] if o.get("default")
    ]
    assert defaults == ["1", "2"]

    # A finer grid starts the selection over, with 16 cells to choose from.
    await click(world, picker, "grid")
    await world.fake.wait_until(lambda: len(picker.find_component(control(picker, "cells"))["options"]) == 16)
    await world.fake.select(world.user, picker, control(picker, "cells"), ["1"])
    await world.fake.wait_until(lambda: not picker.find_component(control(picker, "next")).get("disabled"))
    step = await click(world, picker, "next")
    preview = await shown(world, step, "run")
    assert control(preview, "back") is not None
    assert fields(preview)["Area"] == "6% of the image"
    assert world.openai.post_count == 0

    run = await click(world, preview, "run")
    assert (await world.finished(run)).startswith("Done")
    [result] = public_results(run)
    # Cell 1 of 4×4 on 451×300: x 0..112, y 0..75.
    assert_only_box_changed(rgb(result.files[0][1]), (0, 0, 112, 75))


@pytest.mark.parametrize("with_file", [True, False], ids=["mask file", "picker"])
async def test_every_preparation_of_a_mask_job_takes_an_intake_turn(world: World, with_file: bool):
    """The image (and mask file) of a /mask command were downloaded and checked outside the engine's
    intake turns (JobEngine.intake), so a burst of /mask commands all had their pictures decoding at once;
    only the final Run took a turn, as /edit does for all of its work."""
    turns = world.services.edits.engine.intake_turns
    edits = cog(world).edits
    real_prepare, held = edits.prepare, []

    async def prepare_in_a_turn(*args: Any, **kw: Any) -> Any:
        held.append(turns.inside)
        return await real_prepare(*args, **kw)

    edits.prepare = prepare_in_a_turn  # type: ignore[method-assign]
    it = await mask_command(world, box_mask() if with_file else None)
    if not with_file:
        picker = await shown(world, it, "cells")
        await world.fake.select(world.user, picker, control(picker, "cells"), ["1"])
        find = picker.find_component
        await world.fake.wait_until(lambda: not find(control(picker, "next")).get("disabled"))
        it = await click(world, picker, "next")
    preview = await shown(world, it, "run")
    assert turns.inside == 0  # not held while the preview waits for the member
    run = await click(world, preview, "run")
    assert (await world.finished(run)).startswith("Done")
    # The preview's preparation(s) (the picker's first, then its cells'), then Run's: each in a turn.
    assert held == ([1, 1] if with_file else [1, 1, 1])


async def test_a_burst_of_mask_commands_without_a_preview_holds_the_images_of_one_turn_at_a_time(
    world: World,
):
    """Without the preview, a /mask command prepared its job in one intake turn, then waited for another
    to queue it while holding the images: the rest of the burst got ahead and did the same, so every
    command's pictures were in memory at once however few the turns."""
    await world.services.storage.settings.update_user_settings(world.user.id, {"skip_mask_preview": 1})
    world.services.edits.engine.intake_turns = IntakeTurns(1)
    edits = cog(world).edits
    real_prepare, real_submit = edits.prepare, world.services.edits.submit
    holding, most = 0, 0

    async def prepare(*args: Any, **kw: Any) -> Any:
        nonlocal holding, most
        prepared = await real_prepare(*args, **kw)
        holding += 1
        most = max(most, holding)
        await asyncio.sleep(0.05)  # the other commands reach for their turns meanwhile
        return prepared

    async def submit(*args: Any, **kw: Any) -> Any:
        nonlocal holding
        holding -= 1
        return await real_submit(*args, **kw)

    edits.prepare = prepare  # type: ignore[method-assign]
    world.services.edits.submit = submit  # type: ignore[method-assign]
    its = await asyncio.gather(*(mask_command(world, box_mask()) for _ in range(3)))
    for it in its:
        assert (await world.finished(it)).startswith("Done")
    assert most == 1


async def test_cancel_moves_no_credits_and_calls_no_model(world: World):
    it = await mask_command(world, box_mask())
    preview = await shown(world, it, "cancel")
    cancel = await click(world, preview, "cancel")
    await world.fake.wait_until(lambda: preview.content.startswith("Cancelled"))

    assert cancel.callbacks[0]["type"] == 7 and preview.components == [] and preview.files == []
    assert "nothing was charged" in preview.content
    assert world.openai.post_count == 0
    assert await account(world) == (STARTING, 0)
    assert await world.services.storage.jobs.recent_jobs(world.guild.id, world.user.id) == []


def chosen_cells(message: FakeMessage) -> list[str]:
    select = message.find_component(control(message, "cells"))
    return [o["value"] for o in select["options"] if o.get("default")]


def mark_when_handled(mask: MaskCog, action: str) -> asyncio.Event:
    """An event set once every click on `action` from now on has been handled to its end."""
    done, real = asyncio.Event(), mask._handlers[action]

    async def handle_then_mark(*args: Any) -> None:
        try:
            await real(*args)
        finally:
            done.set()

    mask._handlers[action] = handle_then_mark
    return done


def prepare_held_until(mask: MaskCog, event: asyncio.Event) -> None:
    """The cog's job preparing (download, checks, pricing) waits for `event` before it runs."""
    real_prepare = mask.edits.prepare

    async def held(*args: Any, **kw: Any) -> Any:
        await event.wait()
        return await real_prepare(*args, **kw)

    mask.edits.prepare = held  # type: ignore[method-assign]


async def test_a_cancel_while_the_preview_is_being_prepared_stays_cancelled(world: World):
    """Cancel lands while Preview's work (downloading and checking the images) is still awaited: the
    preview that work then draws would bring back buttons whose session is gone."""
    it = await mask_command(world)
    picker = await shown(world, it, "cells")
    await world.fake.select(world.user, picker, control(picker, "cells"), ["1"])
    await world.fake.wait_until(lambda: not picker.find_component(control(picker, "next")).get("disabled"))
    mask = cog(world)
    cancelled = asyncio.Event()
    prepare_held_until(mask, cancelled)
    done = mark_when_handled(mask, "next")
    preparing = await world.fake.click(world.user, picker, control(picker, "next"))
    await world.fake.wait_until(lambda: preparing.acknowledged)
    await click(world, picker, "cancel")
    await world.fake.wait_until(lambda: picker.content.startswith("Cancelled"))
    cancelled.set()
    await asyncio.wait_for(done.wait(), 10)  # the preview's work has ended: nothing of it is drawn
    assert picker.content.startswith("Cancelled") and picker.components == []
    assert world.openai.post_count == 0


async def picker_with_the_first_cell(world: World) -> tuple[FakeInteraction, FakeMessage]:
    """/mask's picker with cell 1 chosen: the command's interaction and the picker's message."""
    it = await mask_command(world)
    picker = await shown(world, it, "cells")
    await world.fake.select(world.user, picker, control(picker, "cells"), ["1"])
    await world.fake.wait_until(lambda: chosen_cells(picker) == ["1"])
    return it, picker


def held_grid_drawing(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The picker's grid drawn only once `release` is set (a busy thread pool, a big photo); `drawing`
    tells it has begun."""
    drawing, release = threading.Event(), threading.Event()
    real_overlay = imaging.grid_overlay

    def slow_overlay(*args: Any, **kw: Any) -> bytes:
        drawing.set()
        release.wait(10)
        return real_overlay(*args, **kw)

    monkeypatch.setattr(imaging, "grid_overlay", slow_overlay)
    return drawing, release


async def test_a_slow_picker_redraw_landing_after_the_preview_leaves_the_preview(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """The member changes cells and clicks Preview before the picker's redraw (a busy thread pool, a big
    photo) is done: the preview with Run edit showed, then the late redraw put the picker back over it."""
    _, picker = await picker_with_the_first_cell(world)
    drawing, release = held_grid_drawing(monkeypatch)
    redrawn = mark_when_handled(cog(world), "cells")
    try:
        await world.fake.select(world.user, picker, control(picker, "cells"), ["1", "2"])
        await world.fake.wait_until(drawing.is_set)
        preview = await shown(world, await click(world, picker, "next"), "run")
        assert fields(preview)["Area"] == "22% of the image"  # cells 1 and 2
    finally:
        release.set()
    await asyncio.wait_for(redrawn.wait(), 10)
    assert control(preview, "run") is not None and control(preview, "cells") is None
    run = await click(world, preview, "run")
    assert (await world.finished(run)).startswith("Done")


async def test_run_edit_on_a_preview_left_for_change_area_goes_on_with_the_picker_not_an_error(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """Change area, then Run edit on the preview still shown while the picker is drawn: the member goes
    on from the picker, not from "Something went wrong" with the session dropped, and nothing runs."""
    it, picker = await picker_with_the_first_cell(world)
    preview = await shown(world, await click(world, picker, "next"), "run")
    drawing, release = held_grid_drawing(monkeypatch)
    went_back, ran = mark_when_handled(cog(world), "back"), mark_when_handled(cog(world), "run")
    try:
        await click(world, preview, "back")
        await world.fake.wait_until(drawing.is_set)
        run = await click(world, preview, "run")
        await asyncio.wait_for(ran.wait(), 10)
    finally:
        release.set()
    await asyncio.wait_for(went_back.wait(), 10)
    assert run.original_message is None or "went wrong" not in (run.original_message.content or "")
    picker_again = await shown(world, it, "cells")
    assert control(picker_again, "next") is not None and world.openai.post_count == 0


async def test_cells_changed_while_the_preview_is_prepared_show_the_picker_of_those_cells(world: World):
    """A cells click lands while Preview's work is awaited: the preview then drawn showed (and would
    have run) the cells picked before, though the member's newest pick was another."""
    _, picker = await picker_with_the_first_cell(world)
    mask = cog(world)
    picked = asyncio.Event()
    prepare_held_until(mask, picked)
    previewed = mark_when_handled(mask, "next")
    preparing = await click(world, picker, "next")
    await world.fake.wait_until(lambda: preparing.acknowledged)
    await world.fake.select(world.user, picker, control(picker, "cells"), ["1", "2"])
    await world.fake.wait_until(lambda: chosen_cells(picker) == ["1", "2"])
    picked.set()
    await asyncio.wait_for(previewed.wait(), 10)
    assert control(picker, "run") is None and chosen_cells(picker) == ["1", "2"]

    preview = await shown(world, await click(world, picker, "next"), "run")
    assert fields(preview)["Area"] == "22% of the image"


async def a_pick_held_at_its_acknowledgement(
    world: World, cells: list[str]
) -> tuple[FakeMessage, list[object], HeldRequests, FakeInteraction]:
    """The picker with its first cell, and a pick of `cells` whose acknowledgement Discord holds (release
    it with the third value); the list gets each cells click once the bot has handled it."""
    _, picker = await picker_with_the_first_cell(world)
    mask = cog(world)
    handled: list[object] = []
    real = mask._handlers["cells"]

    async def counted(*args: Any) -> None:
        try:
            await real(*args)
        finally:
            handled.append(args[0])

    mask._handlers["cells"] = counted
    held = world.fake.hold("POST", r"/interactions/\d+/[^/]+/callback")
    pick = await world.fake.select(world.user, picker, control(picker, "cells"), cells)
    await world.fake.wait_until(lambda: held.held)
    return picker, handled, held, pick


async def test_a_cells_click_acknowledged_after_a_newer_one_leaves_the_newer_cells(world: World):
    """Two picks in a row, the first one's acknowledgement answered last (Discord was slow with it): the
    first pick was applied after the second and drawn over it, so the picker (and the preview and edit
    made from it) showed the member's earlier choice instead of their last."""
    picker, handled, first_ack, older = await a_pick_held_at_its_acknowledgement(world, ["1", "2"])
    await world.fake.select(world.user, picker, control(picker, "cells"), ["1", "2", "3"])
    await world.fake.wait_until(lambda: chosen_cells(picker) == ["1", "2", "3"])
    first_ack.release()
    await world.fake.wait_until(lambda: len(handled) == 2 and older.acknowledged)
    assert chosen_cells(picker) == ["1", "2", "3"]

    preview = await shown(world, await click(world, picker, "next"), "run")
    assert fields(preview)["Area"] == "33% of the image"  # cells 1 to 3 of 3×3


async def test_a_pick_acknowledged_after_the_next_preview_click_is_still_the_members_last_pick(world: World):
    """The member picks cells 1 and 2, then presses Preview; Discord answers the pick's acknowledgement
    last. Ordering every click by id dropped the pick as older than Preview, so the preview (and a Run
    edit from it) showed one cell the member had already changed. A menu sends the whole choice: the
    late pick is still their last choice of cells, and what they see ends up with it."""
    picker, handled, first_ack, older = await a_pick_held_at_its_acknowledgement(world, ["1", "2"])
    preview_click = await click(world, picker, "next")
    await shown(world, preview_click, "run")
    first_ack.release()
    await world.fake.wait_until(lambda: len(handled) == 1 and older.acknowledged)
    message = preview_click.original_message
    if control(message, "cells"):  # the picker back, with the late pick
        assert chosen_cells(message) == ["1", "2"]
    else:  # or a preview of it
        assert fields(message)["Area"] == "22% of the image", fields(message)  # 2 cells of 3×3


@pytest.mark.parametrize("with_file", [False, True], ids=["picker", "mask file"])
async def test_the_picker_and_preview_are_drawn_from_a_small_picture_made_as_the_session_begins(
    world: World, monkeypatch: pytest.MonkeyPatch, with_file: bool
):
    """Every picker click and every preview decoded the whole image again, outside any intake turn: a
    40 MP photo took ~170 MB a click, eight clicks at once 1.8 GB. They are drawn from a picture no
    larger than they show, made once, and look the same as drawn from the image itself."""
    size = (2255, 1500)
    big = ORIGINAL.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    real_grid, real_tint, drawn_from = imaging.grid_overlay, imaging.tint_preview, []

    def opened(picture: bytes) -> bytes:
        with Image.open(io.BytesIO(picture)) as image:
            drawn_from.append(image.size)
        return picture

    monkeypatch.setattr(imaging, "grid_overlay", lambda p, *a, **kw: real_grid(opened(p), *a, **kw))
    monkeypatch.setattr(imaging, "tint_preview", lambda p, *a, **kw: real_tint(opened(p), *a, **kw))
    attachments = {"image": ("big.jpg", data)}
    if with_file:
        attachments["mask"] = ("mask.png", box_mask((0, 0, 751, 500), size))  # cell 1 of 3×3
    it = await world.fake.slash(
        world.user,
        "mask",
        channel=world.channel,
        options={"prompt": "a red scarf", "quality": "low", "size": "1024x1024"},
        attachments=attachments,
    )
    if not with_file:
        picker = await shown(world, it, "cells")
        await world.fake.select(world.user, picker, control(picker, "cells"), ["1"])
        await world.fake.wait_until(lambda: chosen_cells(picker) == ["1"])
        expected = rgb(real_grid(data, 3, 3, [1], max_side=masking.PICKER_MAX_SIDE))
        assert_looks_the_same(rgb(picker.files[0][1]), expected)
        it = await click(world, picker, "next")
    preview = await shown(world, it, "run")
    expected = rgb(real_tint(data, imaging.grid_region(size, 3, 3, [1])))
    assert_looks_the_same(rgb(preview.files[0][1]), expected)

    shown_at_most = max(masking.PICKER_MAX_SIDE, imaging.PREVIEW_MAX_SIDE)
    assert len(drawn_from) == (1 if with_file else 3)
    assert all(max(side) <= shown_at_most for side in drawn_from), drawn_from


def assert_looks_the_same(shown: Image.Image, expected: Image.Image) -> None:
    assert shown.size == expected.size
    difference = ImageStat.Stat(ImageChops.difference(shown, expected)).mean
    assert max(difference) < 2, difference


async def test_preview_expires_and_says_so(world: World):
    cog(world).sessions.timeout = 0.3
    it = await mask_command(world, box_mask())
    preview = await shown(world, it, "run")

    await world.fake.wait_until(lambda: "expired" in preview.content)

    assert preview.components == [] and preview.files == [] and preview.embeds == []
    assert "Nothing was charged" in preview.content
    assert world.openai.post_count == 0
    assert await account(world) == (STARTING, 0)


async def test_stale_button_after_a_lost_preview_says_it_expired(world: World):
    # A preview whose message could not be cleaned up (its token died) or that a restart forgot:
    # its buttons are still on screen, but the prepared job is gone.
    it = await mask_command(world, box_mask())
    preview = await shown(world, it, "run")
    sid = control(preview, "run").split(":")[2]
    world.fake.expire_token(it)
    cog(world).sessions.timeout = 0.05
    cog(world).sessions.arm(cog(world).sessions.get(sid))
    await world.fake.wait_until(lambda: cog(world).sessions.get(sid) is None)
    assert control(preview, "run") is not None

    stale = await click(world, preview, "run")
    await world.fake.wait_until(lambda: stale.acknowledged)

    assert stale.callbacks[0]["type"] == 7
    assert "expired" in preview.content and preview.components == []
    assert world.openai.post_count == 0
    assert await account(world) == (STARTING, 0)


async def test_mask_that_marks_nothing_is_refused_privately_without_cost(world: World):
    it = await mask_command(world, png(Image.new("L", PHOTO_SIZE, 0)))
    text = await world.fake.wait_until(
        lambda: (
            it.original_edits and "doesn't mark anything" in it.original_edits[-1] and it.original_edits[-1]
        )
    )
    assert "white" in text and it.ephemeral
    assert not [m for m in it.messages if not m.ephemeral]
    assert world.openai.post_count == 0
    assert await world.services.storage.jobs.recent_jobs(world.guild.id, world.user.id) == []


async def test_model_without_mask_support_is_refused_before_any_picker(world: World):
    it = await mask_command(world, model="gpt-image-1-mini")
    text = await world.fake.wait_until(lambda: it.original_edits and it.original_edits[-1])
    assert "cannot do masked edits" in text
    assert it.original_message.components == []
    assert world.openai.post_count == 0


async def test_users_who_skip_the_preview_get_the_edit_at_once(world: World):
    await world.services.storage.settings.update_user_settings(world.user.id, {"skip_mask_preview": 1})
    it = await mask_command(world, box_mask())
    final = await world.finished(it)
    assert final.startswith("Done")
    assert not any(control(m, "run") for m in it.messages)
    [result] = public_results(it)
    assert_only_box_changed(rgb(result.files[0][1]), BOX)


# What each output format's file starts with, and the extension its name ends with.
SIGNATURES = {
    "png": (b"\x89PNG\r\n\x1a\n", ".png"),
    "jpeg": (b"\xff\xd8\xff", ".jpg"),
    "webp": (b"RIFF", ".webp"),
}


def assert_box_changed_within_jpeg_loss(result: Image.Image, box: tuple[int, int, int, int]) -> None:
    """`assert_only_box_changed` for a JPEG, which cannot keep pixels exactly: outside the box the
    sampled pixels must stay close to the original (q90 moves them by 1.5 levels on average and 10 at
    most on this photo), while deep inside they are the model's inverted colours (about 85 away)."""
    assert result.size == PHOTO_SIZE
    left, top, right, bottom = box
    outside: list[int] = []
    inside: list[int] = []
    for x, y in sample_points():
        got, was = result.getpixel((x, y)), ORIGINAL.getpixel((x, y))
        difference = sum(abs(a - b) for a, b in zip(got, was, strict=True)) // 3
        if not (left <= x < right and top <= y < bottom):
            outside.append(difference)
        elif left + 6 < x < right - 7 and top + 6 < y < bottom - 7:
            inside.append(difference)
    assert sum(outside) / len(outside) < 4 and max(outside) < 25
    assert sum(inside) / len(inside) > 60


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_masked_result_comes_in_the_format_asked_for_with_the_outside_kept(world: World, fmt: str):
    await world.services.storage.settings.update_user_settings(world.user.id, {"skip_mask_preview": 1})
    it = await mask_command(world, box_mask(), format=fmt)
    assert (await world.finished(it)).startswith("Done")
    [result] = public_results(it)
    [(name, data)] = result.files
    magic, extension = SIGNATURES[fmt]
    assert data.startswith(magic) and name.endswith(extension)
    if fmt == "webp":
        assert data[8:12] == b"WEBP"
    if fmt == "jpeg":
        assert_box_changed_within_jpeg_loss(rgb(data), BOX)
    else:  # PNG, and WebP written lossless: the outside is exactly the original
        assert_only_box_changed(rgb(data), BOX)


async def test_edit_image_menu_without_mask_runs_a_plain_edit(world: World):
    posted = await world.fake.post_message(
        world.user, world.channel, "my cat", attachments=[("cat.png", PHOTO)]
    )
    menu = await world.fake.message_command(world.user, "Edit image", posted)
    form = await world.fake.wait_until(lambda: menu.modal)
    assert form["title"] == "Edit image"

    submit = await world.fake.submit_modal(world.user, menu, fields={"prompt": "make it blue"})
    final = await world.finished(submit)

    assert final.startswith("Done") and submit.ephemeral
    [result] = public_results(submit)
    assert rgb(result.files[0][1]).size == (1024, 1024)  # the whole model output: no mask, no restore
    request = world.openai.requests[-1]
    assert request.mask is None and request.fields["prompt"] == "make it blue"


async def test_edit_image_menu_edits_the_photo_of_a_message_whose_first_image_is_a_gif(world: World):
    """A GIF (which Retouch cannot edit) before the photo: the photo is edited, not the GIF refused."""
    frames = [Image.new("RGB", (64, 48), (i * 60, 0, 0)) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    posted = await world.fake.post_message(
        world.user, world.channel, attachments=[("fun.gif", gif.getvalue()), ("cat.png", PHOTO)]
    )
    menu = await world.fake.message_command(world.user, "Edit image", posted)
    await world.fake.wait_until(lambda: menu.modal)
    submit = await world.fake.submit_modal(world.user, menu, fields={"prompt": "make it blue"})
    assert (await world.finished(submit)).startswith("Done")
    [sent] = world.openai.requests[-1].images
    assert (sent.width, sent.height) == Image.open(io.BytesIO(PHOTO)).size  # the photo, not the GIF


async def test_an_edit_image_form_sent_twice_starts_one_edit(world: World):
    """A double press on Submit (a slow client) sends the form twice before discord.py closes it, which
    it does only once the first has downloaded the image and held the credits: one edit is started and
    charged, and the other submission is told privately that it was ignored."""
    posted = await world.fake.post_message(world.user, world.channel, attachments=[("cat.png", PHOTO)])
    menu = await world.fake.message_command(world.user, "Edit image", posted)
    form = await world.fake.wait_until(lambda: menu.modal)
    store = world.bot._connection._view_store
    await world.fake.wait_until(lambda: form["custom_id"] in store._modals)  # as a person could send it
    first = await world.fake.submit_modal(world.user, menu, fields={"prompt": "make it blue"})
    menu.modal = form  # the same form, sent again
    second = await world.fake.submit_modal(world.user, menu, fields={"prompt": "make it blue"})

    def ignored(it: FakeInteraction) -> bool:
        return any((c.get("data") or {}).get("content") == messages.ALREADY_STARTED for c in it.callbacks)

    def done(it: FakeInteraction) -> bool:
        return bool(it.original_edits) and it.original_edits[-1].startswith("Done")

    # Either may be the one that runs: both pass the form's check side by side.
    await world.fake.wait_until(lambda: all(ignored(it) or done(it) for it in (first, second)))
    assert [ignored(first), ignored(second)].count(True) == 1
    assert all(it.ephemeral for it in (first, second))
    assert world.openai.post_count == 1 and len(public_results(first) + public_results(second)) == 1


async def sent_form(world: World) -> tuple[FakeInteraction, dict[str, Any]]:
    """The "Edit image" menu used on a posted photo: its interaction and the form, once discord.py
    knows the form (a person cannot send it sooner)."""
    posted = await world.fake.post_message(world.user, world.channel, attachments=[("cat.png", PHOTO)])
    menu = await world.fake.message_command(world.user, "Edit image", posted)
    form = await world.fake.wait_until(lambda: menu.modal)
    store = world.bot._connection._view_store
    await world.fake.wait_until(lambda: form["custom_id"] in store._modals)
    return menu, form


def told_already_started(it: FakeInteraction) -> bool:
    return any((c.get("data") or {}).get("content") == messages.ALREADY_STARTED for c in it.callbacks)


async def test_an_edit_image_form_whose_start_failed_after_its_hold_is_not_started_again(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """Something fails after the credits were held (here the channel notice of a running edit): that
    edit runs all the same, and the form sent again must not start, and hold for, a second one."""
    controls: Any = world.bot.get_cog("MembersCog").controls  # type: ignore[union-attr]
    real_announce = controls.announce

    def failing_once(*args: Any) -> None:
        monkeypatch.setattr(controls, "announce", real_announce)
        raise RuntimeError("failed after the hold")

    monkeypatch.setattr(controls, "announce", failing_once)
    menu, form = await sent_form(world)
    first = await world.fake.submit_modal(world.user, menu, fields={"prompt": "make it blue"})
    await world.fake.wait_until(lambda: any("ref `" in e for e in first.original_edits))
    assert len(jobs(world.services.settings.data_dir)) == 1  # held: the edit was started
    menu.modal = form  # the same form, sent again (discord.py keeps a form open after an error)
    second = await world.fake.submit_modal(world.user, menu, fields={"prompt": "make it blue"})
    await world.fake.wait_until(lambda: told_already_started(second))
    await world.fake.wait_until(lambda: public_results(first))
    await world.fake.wait_until(lambda: jobs(world.services.settings.data_dir)[0]["state"] == "delivered")
    assert len(jobs(world.services.settings.data_dir)) == 1 and world.openai.post_count == 1
    assert_books_balance(world.services.settings.data_dir)


async def test_an_edit_image_form_whose_start_failed_before_any_hold_can_be_sent_again(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """The start failed before any credits were held (here its preparation): nothing runs, the form
    is still open, and sending it again starts the edit, once."""
    edits = world.services.edits
    real_prepare = edits.prepare

    async def failing_once(*args: Any, **kw: Any) -> Any:
        monkeypatch.setattr(edits, "prepare", real_prepare)
        raise RuntimeError("failed before the hold")

    monkeypatch.setattr(edits, "prepare", failing_once)
    menu, form = await sent_form(world)
    first = await world.fake.submit_modal(world.user, menu, fields={"prompt": "make it blue"})
    await world.fake.wait_until(lambda: any("ref `" in e for e in first.original_edits))
    menu.modal = form
    second = await world.fake.submit_modal(world.user, menu, fields={"prompt": "make it blue"})
    assert (await world.finished(second)).startswith("Done")
    assert not told_already_started(second) and world.openai.post_count == 1
    assert len(jobs(world.services.settings.data_dir)) == 1


async def test_an_edit_image_form_sent_after_a_restart_is_told_to_open_it_again(world: World):
    """A new process knows none of the forms the last one opened (discord.py keeps them in memory):
    the submission is answered, privately, instead of failing without a word. Nothing is spent."""
    posted = await world.fake.post_message(world.user, world.channel, attachments=[("cat.png", PHOTO)])
    menu = await world.fake.message_command(world.user, "Edit image", posted)
    await world.fake.wait_until(lambda: menu.modal)
    # What a restart forgets: discord.py's open forms, and the cog's.
    world.bot._connection._view_store._modals.clear()
    cog: Any = world.bot.get_cog("MaskCog")
    cog.open_forms = type(cog.open_forms)()
    submit = await world.fake.submit_modal(world.user, menu, fields={"prompt": "make it blue"})
    await world.fake.wait_until(lambda: submit.callbacks)
    assert submit.callbacks[0]["data"]["content"] == messages.FORM_EXPIRED and submit.ephemeral
    assert world.openai.post_count == 0


def test_a_form_stays_listed_past_its_timeout_until_discord_py_closes_it():
    """discord.py starts its timer once the form is sent, a moment after the cog lists it: listed for
    exactly the timeout, a submission in between would be answered twice ("expired", and the edit)."""
    from cogs.mask.menu import MODAL_TIMEOUT_SECONDS, OpenForms

    now = [0.0]
    forms = OpenForms(clock=lambda: now[0])
    forms.opened("k")
    now[0] += MODAL_TIMEOUT_SECONDS + 1
    assert "k" in forms  # discord.py may still answer it
    forms.closed("k")  # its timeout (on_timeout)
    assert "k" not in forms


async def test_a_refused_submission_keeps_the_form_listed_as_discord_py_keeps_it(world: World):
    """discord.py restarts a form's timer on each submission, one its check refuses included (the
    form stays open): the cog's listing restarts too, else it lapses first and both answer."""
    from cogs.mask.menu import MODAL_TIMEOUT_SECONDS, OpenForms

    now = [0.0]
    cog: Any = world.bot.get_cog("MaskCog")
    cog.open_forms = OpenForms(clock=lambda: now[0])
    posted = await world.fake.post_message(world.user, world.channel, attachments=[("cat.png", PHOTO)])
    menu = await world.fake.message_command(world.user, "Edit image", posted)
    await world.fake.wait_until(lambda: menu.modal)
    [key] = cog.open_forms._until
    now[0] += MODAL_TIMEOUT_SECONDS - 10
    await world.services.access.remove(world.guild.id, world.owner.id)  # the check now refuses
    refused = await world.fake.submit_modal(world.user, menu, fields={"prompt": "make it blue"})
    await world.fake.wait_until(lambda: refused.callbacks)
    now[0] += 100  # past the first listing's end, within discord.py's restarted timer
    assert key in cog.open_forms


async def test_an_edit_image_form_sent_after_its_timeout_is_told_to_open_it_again(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    # The module the running bot loaded (discord.py loads its extensions afresh): 15 minutes.
    monkeypatch.setattr(sys.modules["cogs.mask.menu"], "MODAL_TIMEOUT_SECONDS", 0.2)
    posted = await world.fake.post_message(world.user, world.channel, attachments=[("cat.png", PHOTO)])
    menu = await world.fake.message_command(world.user, "Edit image", posted)
    await world.fake.wait_until(lambda: menu.modal)
    await asyncio.sleep(0.5)  # discord.py's own timer: the form is forgotten
    submit = await world.fake.submit_modal(world.user, menu, fields={"prompt": "make it blue"})
    await world.fake.wait_until(lambda: submit.callbacks)
    assert submit.callbacks[0]["data"]["content"] == messages.FORM_EXPIRED
    assert world.openai.post_count == 0


async def test_edit_image_menu_with_mask_upload_previews_then_changes_only_the_mask(world: World):
    posted = await world.fake.post_message(world.user, world.channel, attachments=[("cat.png", PHOTO)])
    menu = await world.fake.message_command(world.user, "Edit image", posted)
    await world.fake.wait_until(lambda: menu.modal)
    # An OpenAI-style mask (transparent = edit) at half size: both conventions and sizes just work.
    half = Image.new("RGBA", (226, 150), (255, 255, 255, 255))
    ImageDraw.Draw(half).rectangle((60, 30, 164, 119), fill=(0, 0, 0, 0))
    submit = await world.fake.submit_modal(
        world.user, menu, fields={"prompt": "a red scarf"}, attachments={"mask": [("mask.png", png(half))]}
    )
    preview = await shown(world, submit, "run")
    assert world.openai.post_count == 0

    run = await click(world, preview, "run")
    assert (await world.finished(run)).startswith("Done")
    [result] = public_results(run)
    assert_only_box_changed(rgb(result.files[0][1]), (120, 60, 330, 240), feather=8)


async def test_edit_image_menu_on_a_message_without_image_says_so(world: World):
    posted = await world.fake.post_message(world.user, world.channel, "just words")
    menu = await world.fake.message_command(world.user, "Edit image", posted)
    await world.fake.wait_until(lambda: menu.acknowledged)
    assert menu.modal is None and menu.ephemeral
    assert "no image" in menu.original["content"]


async def test_mask_command_and_menu_are_registered(world: World):
    commands = world.fake.synced_commands(world.guild.id)
    by_name = {(c["name"], c["type"]): c for c in commands}
    options = {o["name"]: o for o in by_name[("mask", 1)]["options"]}
    assert list(options)[:2] == ["prompt", "image"]
    assert options["mask"]["type"] == 11 and not options["mask"].get("required")
    assert options["feather"]["min_value"] == 0 and options["feather"]["max_value"] == 64
    assert options["keep_outside"]["type"] == 5
    assert all(len(o["description"]) <= 100 for o in options.values())
    assert ("Edit image", 3) in by_name
    choices = await world.fake.autocomplete(
        world.user, "mask", channel=world.channel, focused="model", value=""
    )
    assert [c["value"] for c in choices] == ["gpt-image-1.5"]  # only models that can do masks


async def test_change_area_goes_back_to_the_picker_with_the_cells_kept(world: World):
    it = await mask_command(world)
    picker = await shown(world, it, "cells")
    await world.fake.select(world.user, picker, control(picker, "cells"), ["5"])
    await world.fake.wait_until(lambda: not picker.find_component(control(picker, "next")).get("disabled"))
    preview = await shown(world, await click(world, picker, "next"), "back")

    back = await click(world, preview, "back")
    again = await shown(world, back, "cells")

    chosen = [
        o["value"] for o in again.find_component(control(again, "cells"))["options"] if o.get("default")
    ]
    assert chosen == ["5"] and [name for name, _ in again.files] == ["mask_grid.jpg"]
    assert world.openai.post_count == 0


async def test_picker_runs_at_once_for_users_who_skip_the_preview(world: World):
    await world.services.storage.settings.update_user_settings(world.user.id, {"skip_mask_preview": 1})
    it = await mask_command(world)
    picker = await shown(world, it, "cells")
    assert picker.find_component(control(picker, "next"))["label"] == "Run edit"
    await world.fake.select(world.user, picker, control(picker, "cells"), ["9"])
    await world.fake.wait_until(lambda: not picker.find_component(control(picker, "next")).get("disabled"))

    run = await click(world, picker, "next")
    assert (await world.finished(run)).startswith("Done")
    [result] = public_results(run)
    # Cell 9 of 3×3 on 451×300: x 300..451, y 200..300.
    assert_only_box_changed(rgb(result.files[0][1]), (300, 200, 451, 300))


async def test_edit_image_form_with_a_useless_mask_gets_a_private_error(world: World):
    posted = await world.fake.post_message(world.user, world.channel, attachments=[("cat.png", PHOTO)])
    menu = await world.fake.message_command(world.user, "Edit image", posted)
    await world.fake.wait_until(lambda: menu.modal)
    everything = png(Image.new("L", PHOTO_SIZE, 255))
    submit = await world.fake.submit_modal(
        world.user, menu, fields={"prompt": "a red scarf"}, attachments={"mask": [("mask.png", everything)]}
    )
    text = await world.fake.wait_until(
        lambda: (
            submit.original_edits and "whole image" in submit.original_edits[-1] and submit.original_edits[-1]
        )
    )
    assert submit.ephemeral and "without a mask" in text
    assert not [m for m in submit.messages if not m.ephemeral]
    assert world.openai.post_count == 0


async def test_double_click_on_run_runs_once_and_keeps_the_progress(world: World):
    it = await mask_command(world, box_mask())
    preview = await shown(world, it, "run")
    custom_id = control(preview, "run")

    first, second = await asyncio.gather(
        world.fake.click(world.user, preview, custom_id), world.fake.click(world.user, preview, custom_id)
    )
    await world.fake.wait_until(lambda: first.acknowledged and second.acknowledged)
    ran = first if first.callbacks[0]["type"] == 7 else second
    ignored = second if ran is first else first
    assert (await world.finished(ran)).startswith("Done")

    assert ignored.callbacks == [{"type": 6}]  # acknowledged quietly, message left alone
    assert world.openai.post_count == 1
    assert len(public_results(ran)) == 1 and not public_results(ignored)
    assert preview.content.startswith("Done")


async def test_picker_menu_leaves_at_least_one_cell_out(world: World):
    # Every cell would leave nothing to keep (or, with invert, nothing to change): Discord refuses it.
    it = await mask_command(world)
    picker = await shown(world, it, "cells")
    assert picker.find_component(control(picker, "cells"))["max_values"] == 8
    with pytest.raises(FakeDiscordUsageError):
        await world.fake.select(world.user, picker, control(picker, "cells"), [str(n) for n in range(1, 10)])

    await click(world, picker, "grid")
    await world.fake.wait_until(lambda: len(picker.find_component(control(picker, "cells"))["options"]) == 16)
    assert picker.find_component(control(picker, "cells"))["max_values"] == 15


@pytest.mark.parametrize(
    ("invert", "skip_preview", "says"),
    [
        (False, False, "You picked every cell, so the whole image would change."),
        (True, False, "`invert` is on, so every cell would be kept and nothing would change."),
        (False, True, "You picked every cell, so the whole image would change."),
        (True, True, "`invert` is on, so every cell would be kept and nothing would change."),
    ],
)
async def test_every_cell_picked_is_refused_on_the_picker_which_stays_open(
    world: World, invert: bool, skip_preview: bool, says: str
):
    # A client that ignores the menu's limit sends all 9 cells; the member is told on the picker.
    await world.services.storage.settings.update_user_settings(
        world.user.id, {"skip_mask_preview": int(skip_preview)}
    )
    it = await mask_command(world, invert=invert)
    picker = await shown(world, it, "cells")
    sid = control(picker, "cells").split(":")[2]
    picker.find_component(control(picker, "cells"))["max_values"] = 9
    await world.fake.select(world.user, picker, control(picker, "cells"), [str(n) for n in range(1, 10)])
    await world.fake.wait_until(lambda: not picker.find_component(control(picker, "next")).get("disabled"))

    step = await click(world, picker, "next")
    await world.fake.wait_until(lambda: picker.content and says in picker.content)

    assert step.callbacks == [{"type": 6}] and picker.ephemeral
    assert "white" not in picker.content and "Leave at least one cell out" in picker.content
    assert cog(world).sessions.get(sid) is not None  # the picker is still usable
    assert picker.find_component(control(picker, "next"))["disabled"] is True  # pick again
    assert world.openai.post_count == 0
    assert await world.services.storage.jobs.recent_jobs(world.guild.id, world.user.id) == []

    # A selection that leaves one cell out goes on as usual.
    await world.fake.select(world.user, picker, control(picker, "cells"), [str(n) for n in range(1, 9)])
    await world.fake.wait_until(lambda: not picker.find_component(control(picker, "next")).get("disabled"))
    assert not picker.content  # the notice went with the new pick
    step = await click(world, picker, "next")
    if skip_preview:
        assert (await world.finished(step)).startswith("Done")
    else:
        preview = await shown(world, step, "run")
        assert fields(preview)["Area"] == ("11% of the image" if invert else "89% of the image")


@pytest.mark.parametrize("skip_preview", [False, True])
async def test_edit_image_menu_with_mask_on_a_result_continues_its_history(world: World, skip_preview: bool):
    it = await mask_command(world, box_mask())
    run = await click(world, await shown(world, it, "run"), "run")
    assert (await world.finished(run)).startswith("Done")
    [first] = public_results(run)
    await world.services.storage.settings.update_user_settings(
        world.user.id, {"skip_mask_preview": int(skip_preview)}
    )

    menu = await world.fake.message_command(world.user, "Edit image", first)
    form = await world.fake.wait_until(lambda: menu.modal)
    # discord.py knows the form only once it has read Discord's reply to opening it.
    await world.fake.wait_until(lambda: form["custom_id"] in world.bot._connection._view_store._modals)
    submit = await world.fake.submit_modal(
        world.user, menu, fields={"prompt": "now blue"}, attachments={"mask": [("mask.png", box_mask())]}
    )
    done = submit if skip_preview else await click(world, await shown(world, submit, "run"), "run")
    assert (await world.finished(done)).startswith("Done")
    [second] = public_results(done)

    job_id = second.embeds[0]["footer"]["text"].split()[-1]
    job = await world.services.storage.jobs.get_job(job_id)
    assert job is not None and job.origin_message_id == first.id  # as the menu without a mask does
    undo = undo_button(second)
    assert undo is not None
    await world.fake.click(world.user, second, undo)

    def reposted() -> list[FakeMessage]:
        """Undo posts the version before the masked edit again: the first result's picture."""
        messages = world.fake.channel_messages(world.channel.id)
        return [m for m in messages if m.id != first.id and m.files and m.files[0][1] == first.files[0][1]]

    await world.fake.wait_until(reposted)


def picker_cells(message: FakeMessage) -> int:
    """How many cells the picker on `message` offers."""
    return len(message.find_component(control(message, "cells"))["options"])


@pytest.mark.parametrize(
    ("size", "finer", "cell", "box"),
    [
        ((16, 6200), False, 2, (5, 0, 10, 2066)),  # 3×3: shrunk to the picker, 2 px across
        ((16, 3600), True, 6, (4, 900, 8, 1800)),  # 4×4
        ((3600, 16), True, 5, (0, 4, 900, 8)),  # 4×4, lying down
    ],
)
async def test_picker_on_a_long_thin_image_masks_exactly_the_cell_picked(
    world: World, size: tuple[int, int], finer: bool, cell: int, box: tuple[int, int, int, int]
):
    green = Image.new("RGB", size, (10, 200, 30))
    it = await world.fake.slash(
        world.user,
        "mask",
        channel=world.channel,
        options={"prompt": "a red stripe", "quality": "low", "size": "1024x1024", "feather": 0},
        attachments={"image": ("strip.png", png(green))},
    )
    picker = await shown(world, it, "cells")
    if finer:
        await click(world, picker, "grid")
        await world.fake.wait_until(lambda: picker_cells(picker) == 16)
    await world.fake.select(world.user, picker, control(picker, "cells"), [str(cell)])
    await world.fake.wait_until(lambda: not picker.find_component(control(picker, "next")).get("disabled"))
    preview = await shown(world, await click(world, picker, "next"), "run")
    run = await click(world, preview, "run")
    assert (await world.finished(run)).startswith("Done")

    [result] = public_results(run)
    edited = rgb(result.files[0][1])
    assert edited.size == size
    # The mask is the cell of the image's own size, exactly: the model's colours inside, green outside.
    inside = Image.new("L", size, 0)
    inside.paste(255, box)
    changed = ImageChops.difference(edited, green).convert("L").point(lambda v: 255 if v else 0)
    assert ImageChops.difference(changed, inside).getbbox() is None


def dithered_mask(side: int, seed: int = 3) -> bytes:
    """A 1-bit noise mask (a dithered selection): small as the 1-bit PNG a member uploads, larger as the
    8-bit region the bot stores for the job (`NormalizedMask.white_edit_png`)."""
    noise = random.Random(seed).randbytes(side * side // 8)
    return png(Image.frombytes("1", (side, side), noise))


async def ended_jobs(world: World, count: int) -> list[dict[str, Any]]:
    """The job rows, once `count` jobs have reached a terminal state."""
    data_dir = world.services.settings.data_dir

    def ended() -> list[dict[str, Any]] | None:
        rows = jobs(data_dir)
        done = [r for r in rows if r["state"] in ("delivered", "failed", "cancelled")]
        return rows if len(done) == count else None

    return await world.fake.wait_until(ended)


async def test_a_mask_under_the_input_limit_is_delivered_and_retried_though_its_stored_region_is_over_it(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path
):
    """The region the bot stores for a job is its own file, not an upload: read back for the restore
    (after the provider was paid) or for Retry, it is not refused by the limit on members' files."""
    side = 880
    mask = dithered_mask(side)
    flat = png(Image.new("RGB", (side, side), (40, 90, 160)))
    env = {"MAX_INPUT_MB": "0.1"}
    async with running_bot(fake_discord, openai, tmp_path, catalog=MASK_CATALOG, env=env) as world:
        cap = world.services.settings.max_input_bytes
        stored = imaging.normalize_mask(mask, (side, side), max_bytes=cap, max_pixels=side * side)
        assert len(flat) < len(mask) < cap < len(stored.white_edit_png())
        await world.services.storage.settings.update_user_settings(world.user.id, {"skip_mask_preview": 1})
        it = await world.fake.slash(
            world.user,
            "mask",
            channel=world.channel,
            options={"prompt": "a red scarf", "quality": "low", "size": "1024x1024"},
            attachments={"image": ("flat.png", flat), "mask": ("mask.png", mask)},
        )
        [first] = await ended_jobs(world, 1)
        assert first["state"] == "delivered"
        assert (await world.finished(it)).startswith("Done")
        [result] = public_results(it)

        retry = await world.fake.click(world.user, result, job_control(result, "retry"))
        assert (await world.finished(retry)).startswith("Done")
        rows = await ended_jobs(world, 2)
        assert [r["state"] for r in rows] == ["delivered", "delivered"]
        data_dir = world.services.settings.data_dir
        assert [ledger_kinds(data_dir, r["id"]) for r in rows] == [["reserve", "capture"]] * 2
        assert world.openai.post_count == 2
