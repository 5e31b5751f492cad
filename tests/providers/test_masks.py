"""`to_convention`: the one function that turns an OpenAI-style mask into each provider's convention."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.providers.masks import to_convention

SIZE = (64, 48)
HOLE = (16, 12, 40, 30)  # left, top, right, bottom of the area to edit


def openai_mask(mode: str = "RGBA", size: tuple[int, int] = SIZE) -> bytes:
    """An OpenAI-convention mask: opaque everywhere except a fully transparent rectangle."""
    if mode == "RGBA":
        img = Image.new("RGBA", size, (10, 200, 30, 255))  # the colour must not matter
        img.paste((10, 200, 30, 0), HOLE)
    elif mode == "LA":
        img = Image.new("LA", size, (128, 255))
        img.paste((128, 0), HOLE)
    else:  # a palette PNG whose index 1 is transparent (tRNS)
        img = Image.new("P", size, 0)
        img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        img.paste(1, HOLE)
        img.info["transparency"] = 1
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def inside(x: int, y: int) -> bool:
    return HOLE[0] <= x < HOLE[2] and HOLE[1] <= y < HOLE[3]


def load(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_white_convention_is_opaque_white_exactly_where_the_alpha_was_zero(mode: str) -> None:
    out = load(to_convention(openai_mask(mode), "white"))

    assert out.format == "PNG" and out.mode == "L" and out.size == SIZE
    for x, y in ((0, 0), (20, 15), (39, 29), (40, 30), (63, 47), (16, 11)):
        assert out.getpixel((x, y)) == (255 if inside(x, y) else 0), (x, y)
    assert sorted(v for _, v in out.getcolors()) == [0, 255]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_alpha_convention_says_the_same_region_in_alpha_and_in_colour(mode: str) -> None:
    out = load(to_convention(openai_mask(mode), "alpha"))

    assert out.mode == "RGBA" and out.size == SIZE
    assert out.getpixel((20, 15)) == (255, 255, 255, 0)  # transparent AND white: edit
    assert out.getpixel((0, 0)) == (0, 0, 0, 255)  # opaque AND black: keep
    # A reader that drops alpha and looks at the colours sees the same region as one reading alpha.
    colour = out.convert("L").tobytes()
    assert colour == bytes(255 - a for a in out.getchannel("A").tobytes())


def test_partly_transparent_pixels_are_kept_like_openai_does() -> None:
    img = Image.new("RGBA", SIZE, (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 8, 8))
    img.paste((0, 0, 0, 1), (8, 0, 16, 8))  # almost, but not fully, transparent
    buf = io.BytesIO()
    img.save(buf, "PNG")

    out = load(to_convention(buf.getvalue(), "white"))

    assert out.getpixel((2, 2)) == 255
    assert out.getpixel((10, 2)) == 0


def test_converting_an_alpha_output_again_is_stable() -> None:
    once = to_convention(openai_mask(), "alpha")

    assert to_convention(once, "alpha") == once
    assert to_convention(once, "white") == to_convention(openai_mask(), "white")


@pytest.mark.parametrize(
    ("data", "convention", "match"),
    [
        (openai_mask(), "black", "unknown mask convention"),
        (b"not an image", "white", "not a readable PNG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "white", "not a readable PNG"),
    ],
)
def test_bad_conventions_and_unreadable_bytes_are_refused(data: bytes, convention: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_convention(data, convention)


@pytest.mark.parametrize(("fmt", "match"), [("PNG", "no alpha channel"), ("JPEG", "must be a PNG")])
def test_a_mask_without_transparency_or_not_png_is_refused(fmt: str, match: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", SIZE, (255, 255, 255)).save(buf, fmt)

    with pytest.raises(ValueError, match=match):
        to_convention(buf.getvalue(), "alpha")
