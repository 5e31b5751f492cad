"""Property-style checks of masks and the locality guarantee on real photos at their own sizes.

tests/test_imaging.py pins each mask mode and the restore rule on small, hand-made cases. Here seeded
random masks are drawn for every test photo, in varied modes and sizes, and pushed through the same
steps a `/mask` job takes: normalise for the photo, encode for OpenAI, restore the outside of a
model output whose size and aspect differ from the photo's. Each case checks every pixel.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

from bot.imaging import decode, match_geometry, normalize_mask, restore_outside

DATA = Path(__file__).parent / "data"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
LIMITS = {"max_bytes": 50 * 1024 * 1024, "max_pixels": 40_000_000}
MODEL_SIZES = ((1024, 1024), (1536, 1024), (1024, 1536))  # what GPT Image models return


def photo(name: str) -> Image.Image:
    with Image.open(DATA / name) as image:
        return image.convert("RGB")


def encoded(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    if fmt == "PNG":
        params.setdefault("compress_level", 1)  # level 6 would spend most of this file's time in zlib
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def random_region(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Seeded blobs (L: 255 = edit) covering a sensible part of the picture: 2 %..90 %."""
    width, height = size
    while True:
        region = Image.new("L", size, 0)
        draw = ImageDraw.Draw(region)
        for _ in range(rng.randint(1, 5)):
            x0, y0 = rng.randrange(-width // 4, width), rng.randrange(-height // 4, height)
            x1, y1 = x0 + rng.randint(width // 10, width // 2), y0 + rng.randint(height // 10, height // 2)
            shape = rng.choice(("ellipse", "rectangle", "polygon"))
            if shape == "polygon":
                draw.polygon([(rng.randrange(width), rng.randrange(height)) for _ in range(5)], fill=255)
            else:
                getattr(draw, shape)((x0, y0, x1, y1), fill=255)
        coverage = region.histogram()[255] / (width * height)
        if 0.02 <= coverage <= 0.9:
            return region


def binary(region: Image.Image) -> Image.Image:
    return region.point(lambda v: 255 if v >= 128 else 0)


# How users draw masks, each built from a white-means-edit region. Transparent styles erase the area.
def as_1(region: Image.Image) -> bytes:
    return encoded(region.convert("1"))


def as_l(region: Image.Image) -> bytes:
    return encoded(region)


def as_rgb(region: Image.Image) -> bytes:
    return encoded(Image.merge("RGB", (region, region, region)))


def as_p(region: Image.Image) -> bytes:
    return encoded(region.convert("P"))


def as_rgba_erased(region: Image.Image) -> bytes:
    layer = Image.new("RGBA", region.size, (40, 40, 40, 255))
    layer.putalpha(ImageOps.invert(region))
    return encoded(layer)


def as_la_erased(region: Image.Image) -> bytes:
    return encoded(Image.merge("LA", (Image.new("L", region.size, 255), ImageOps.invert(region))))


def as_p_transparency(region: Image.Image) -> bytes:
    indexed = ImageOps.invert(region).point(lambda v: 1 if v else 0).convert("P")
    indexed.putpalette([0, 0, 0, 255, 255, 255])
    return encoded(indexed, transparency=0)  # index 0 (the area to edit) is transparent


def as_webp_erased(region: Image.Image) -> bytes:
    layer = Image.new("RGBA", region.size, (255, 255, 255, 255))
    layer.putalpha(ImageOps.invert(region))
    return encoded(layer, "WEBP", lossless=True)


STYLES: dict[str, Callable[[Image.Image], bytes]] = {
    "1": as_1,
    "L": as_l,
    "RGB": as_rgb,
    "P": as_p,
    "RGBA erased": as_rgba_erased,
    "LA erased": as_la_erased,
    "P transparency": as_p_transparency,
    "WebP erased": as_webp_erased,
}
SCALES = (1.0, 0.5, 0.37, 1.6)  # same size, drawn on a thumbnail, odd rounding, drawn larger


def mask_cases() -> list[tuple[str, int]]:
    return [(name, seed) for name in PHOTOS for seed in range(5)]


@pytest.mark.parametrize(("name", "seed"), mask_cases())
def test_any_mask_style_and_size_normalises_to_the_drawn_area(name: str, seed: int) -> None:
    rng = random.Random(f"{name}-{seed}")
    image = photo(name)
    style = rng.choice(sorted(STYLES))
    scale = rng.choice(SCALES)
    invert = rng.random() < 0.3
    drawn_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    drawn = random_region(drawn_size, rng)

    mask = normalize_mask(STYLES[style](drawn), image.size, invert=invert, **LIMITS)

    # Rule: threshold at the mask's own size, then NEAREST to the photo's size, then invert if asked.
    expected = binary(drawn).resize(image.size, Image.Resampling.NEAREST)
    if invert:
        expected = ImageOps.invert(expected)
    assert mask.region.size == image.size and mask.region.mode == "L"
    assert ImageChops.difference(mask.region, expected).getbbox() is None, (style, scale, invert)
    assert mask.coverage == pytest.approx(expected.histogram()[255] / (image.width * image.height))
    # What OpenAI receives: same size as the photo, alpha 0 exactly where the edit goes.
    sent = Image.open(io.BytesIO(mask.openai_png()))
    assert (sent.format, sent.mode, sent.size) == ("PNG", "RGBA", image.size)
    assert ImageChops.difference(sent.getchannel("A"), ImageOps.invert(expected)).getbbox() is None


@pytest.mark.parametrize("name", PHOTOS)
def test_a_photo_used_as_its_own_mask_marks_its_bright_half(name: str) -> None:
    image = photo(name)
    mask = normalize_mask(encoded(image), image.size, **LIMITS)
    assert ImageChops.difference(mask.region, binary(image.convert("L"))).getbbox() is None


def assert_pixels_equal_where(a: Image.Image, b: Image.Image, where: Image.Image) -> None:
    """Every pixel under `where` (L, 255) is identical in `a` and `b`."""
    difference = ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v else 0)
    assert ImageChops.multiply(difference, where).getbbox() is None


def locality_cases() -> list[tuple[str, tuple[int, int], int]]:
    """Every photo on every model canvas; a hard edge on the square one, the default seam elsewhere."""
    return [(name, size, 0 if size[0] == size[1] else 6) for name in PHOTOS for size in MODEL_SIZES]


@pytest.mark.parametrize(("name", "model_size", "feather"), locality_cases())
def test_restore_on_real_photos_changes_nothing_outside_the_mask(
    name: str, model_size: tuple[int, int], feather: int
) -> None:
    original_data = (DATA / name).read_bytes()
    original = decode(original_data).convert("RGB")
    # A model output like the fake's: the picture inverted, on the model's own canvas.
    model = ImageOps.invert(original).resize(model_size, Image.Resampling.BILINEAR)
    region = random_region(original.size, random.Random(f"{name}-{model_size}"))

    data, fmt = restore_outside(original_data, encoded(model), region, feather=feather)
    out = decode(data).convert("RGB")
    fitted = match_geometry(model, original.size)

    assert fmt == "png" and out.size == original.size  # always the original's geometry
    # Outside the (unfeathered) mask: exactly the original.
    assert_pixels_equal_where(out, original, ImageOps.invert(region))
    # Deeper inside than the feather (chessboard distance, one 3×3 erosion per pixel): the model's.
    deep = region
    for _ in range(feather):
        deep = deep.filter(ImageFilter.MinFilter(3))
    assert_pixels_equal_where(out, fitted, deep)
    # Everywhere, and so on the seam: each channel lies between the original and the model's.
    low, high = ImageChops.darker(original, fitted), ImageChops.lighter(original, fitted)
    assert ImageChops.subtract(low, out).getbbox() is None
    assert ImageChops.subtract(out, high).getbbox() is None
