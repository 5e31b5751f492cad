"""Tests for `bot.imagemeta.png_pixels_intact` and the upload check's use of it: a PNG it vouches for
is one Pillow decodes, the plain 8-bit PNGs most uploads are get that shortcut, and what it does not
vouch for is still decided by Pillow, with the same results and refusals as before.

(Metadata removal, the rest of `bot.imagemeta`, is tested with the upload check in test_imaging.py.)
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from bot import imaging
from bot.errors import InvalidImage
from bot.imagemeta import png_pixels_intact, strip_metadata
from bot.imaging import validate_image
from tests.test_imaging import DATA, LIMITS, photo, save, with_private_metadata

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def rows_stream(
    width: int, height: int, channels: int, filters: list[int], seed: int, depth: int = 8
) -> bytes:
    """Raw scanlines: a filter byte and random samples per row (any samples are a valid filtered row)."""
    rng = random.Random(seed)
    row_bytes = (width * channels * depth + 7) // 8
    return b"".join(bytes([filters[y % len(filters)]]) + rng.randbytes(row_bytes) for y in range(height))


def crafted_png(
    width: int,
    height: int,
    stream: bytes,
    *,
    colour: int = 2,
    depth: int = 8,
    interlace: int = 0,
    idat_size: int = 1 << 16,
    before: tuple[bytes, ...] = (),
    between: tuple[bytes, ...] = (),
    after: tuple[bytes, ...] = (),
) -> bytes:
    """A PNG built by hand around a compressed pixel `stream`, split into IDATs of `idat_size`. The
    extra chunks go before the IDATs, `between` the first and the second, or `after` the last."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    head = [chunk(b"IHDR", ihdr), *before]
    if colour == 3:
        head.append(chunk(b"PLTE", bytes(range(48))))  # 16 colours
    idats = [chunk(b"IDAT", stream[i : i + idat_size]) for i in range(0, max(1, len(stream)), idat_size)]
    idats[1:1] = between
    return SIGNATURE + b"".join([*head, *idats, *after, chunk(b"IEND", b"")])


def pillow_decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception:
        return False
    return True


TEXT = chunk(b"tEXt", b"Author\x00Alice")
ANIMATION = chunk(b"acTL", struct.pack(">II", 1, 0))  # one frame, played forever
FRAME = struct.pack(">IIIIIHHBB", 0, 40, 30, 0, 0, 1, 10, 0, 0)  # frame 0 covers the 40x30 picture


# --- what it vouches for ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (17, 5), (640, 480)])
def test_plain_8_bit_pngs_as_pillow_writes_them_are_vouched_for(mode: str, size: tuple[int, int]) -> None:
    picture = photo("coffee.png").resize(size).convert(mode)
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "Alice")
    assert png_pixels_intact(save(picture, "PNG", pnginfo=text))
    assert png_pixels_intact(save(picture, "PNG", compress_level=0))  # stored blocks: IDATs of raw rows


@pytest.mark.parametrize("name", ["astronaut.png", "chelsea.png", "coffee.png"])
def test_real_photos_are_vouched_for(name: str) -> None:
    assert png_pixels_intact((DATA / name).read_bytes())


def test_many_small_idat_chunks_and_one_large_one_are_both_read_whole() -> None:
    stream = zlib.compress(rows_stream(300, 200, 3, [0, 1, 2, 3, 4], seed=1))
    assert png_pixels_intact(crafted_png(300, 200, stream, idat_size=7))
    assert png_pixels_intact(crafted_png(300, 200, stream, idat_size=len(stream)))


def test_a_stream_that_inflates_far_beyond_its_rows_is_not_vouched_for_and_never_held_whole() -> None:
    # 64 MB of zeros: rows that would fit a 16384x1024 RGBA picture, declared as a 64x64 one.
    stream = zlib.compress(bytes(64 * 1024 * 1024), 9)
    assert not png_pixels_intact(crafted_png(64, 64, stream))


# --- what it leaves to Pillow --------------------------------------------------------------------------


def _plain(**changes: object) -> bytes:
    """A plain 40x30 RGB PNG built by hand, with some of its parts changed."""
    width, height = 40, 30
    raw = rows_stream(width, height, 3, [0, 1, 2, 3, 4], seed=2)
    parts: dict[str, object] = {"stream": zlib.compress(raw)}
    parts.update(changes)
    make = parts.pop("make", None)
    if callable(make):
        parts["stream"] = zlib.compress(make(raw))
    return crafted_png(width, height, **parts)  # type: ignore[arg-type]


def _cut_adler(stream: bytes) -> bytes:
    return stream[:-4] + bytes(4)


NOT_VOUCHED: list[tuple[str, Callable[[], bytes], bool]] = [
    # id, file, whether Pillow decodes it anyway (then the upload check still accepts it)
    ("plain control", _plain, True),  # the baseline all the others change one thing of
    ("an unknown row filter", lambda: _plain(make=lambda raw: b"\x05" + raw[1:]), False),
    ("rows missing, stream ends mid-row", lambda: _plain(make=lambda raw: raw[:-50]), False),
    ("rows missing, stream ends on a row", lambda: _plain(make=lambda raw: raw[: 121 * 20]), True),
    ("a row too many", lambda: _plain(make=lambda raw: raw + raw[:121]), True),
    ("stream cut short", lambda: _plain(stream=zlib.compress(b"\0" * 3630)[:-9]), False),
    ("wrong checksum", lambda: _plain(stream=_cut_adler(zlib.compress(b"\0" * 3630))), False),
    ("garbage after the stream", lambda: _plain(stream=zlib.compress(b"\0" * 3630) + b"junk"), True),
    ("not zlib at all", lambda: _plain(stream=b"\x78\x9c" + bytes(range(200))), False),
    ("no IDAT", lambda: _plain(stream=b"", idat_size=1)[:33] + chunk(b"IEND", b""), False),
    ("text after the pixels", lambda: _plain(after=(TEXT,)), True),
    ("text between the IDATs", lambda: _plain(idat_size=100, between=(TEXT,)), False),
    ("interlaced", lambda: _plain(interlace=1), False),
    (
        "16-bit",
        lambda: crafted_png(16, 16, zlib.compress(rows_stream(16, 16, 3, [4], 3, 16)), depth=16),
        True,
    ),
    ("palette", lambda: crafted_png(16, 16, zlib.compress(rows_stream(16, 16, 1, [4], 4)), colour=3), True),
    ("one-frame animation", lambda: _plain(before=(ANIMATION, chunk(b"fcTL", FRAME))), True),
]


@pytest.mark.parametrize(("make", "decodes"), [r[1:] for r in NOT_VOUCHED], ids=[r[0] for r in NOT_VOUCHED])
def test_what_it_does_not_vouch_for_pillow_decides(make: Callable[[], bytes], decodes: bool) -> None:
    data = make()
    control = data == _plain()
    assert png_pixels_intact(data) is control
    assert pillow_decodes(data) is decodes
    if decodes:
        assert validate_image(data, **LIMITS).data == strip_metadata(data, "image/png")
    else:
        with pytest.raises(InvalidImage) as refused:
            validate_image(data, **LIMITS)
        assert refused.value.code in ("corrupt", "too_small")


# --- soundness: whatever it vouches for, Pillow decodes -----------------------------------------------


@st.composite
def odd_pngs(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A hand-built PNG with any mix of defects, and whether it was built without one (plain, whole)."""
    colour = draw(st.sampled_from(sorted(CHANNELS)))
    depth = draw(st.sampled_from(DEPTHS[colour]))
    width, height = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    filters = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    extra_rows = draw(st.sampled_from([0, 0, 0, -1, 1]))
    raw = rows_stream(width, height + extra_rows, CHANNELS[colour], filters, draw(st.integers(0, 99)), depth)
    stream = zlib.compress(raw, draw(st.sampled_from([0, 6])))
    damage = draw(st.sampled_from(["none", "none", "cut", "flip", "append", "adler"]))
    if damage == "cut":
        stream = stream[: draw(st.integers(0, len(stream) - 1))]
    elif damage == "flip":
        at = draw(st.integers(0, len(stream) - 1))
        stream = stream[:at] + bytes([stream[at] ^ (1 << draw(st.integers(0, 7)))]) + stream[at + 1 :]
    elif damage == "append":
        stream += draw(st.binary(min_size=1, max_size=8))
    elif damage == "adler":
        stream = _cut_adler(stream)
    interlace = draw(st.sampled_from([0, 0, 0, 1]))
    placement = draw(st.sampled_from(["none", "before", "between", "after"]))
    extra = {placement: (TEXT,)} if placement != "none" else {}
    data = crafted_png(
        width,
        height,
        stream,
        colour=colour,
        depth=depth,
        interlace=interlace,
        idat_size=draw(st.integers(1, 64)),
        **extra,  # type: ignore[arg-type]
    )
    used = [filters[y % len(filters)] for y in range(height)]
    plain = (
        depth == 8
        and colour != 3
        and max(used) <= 4
        and extra_rows == 0
        and damage == "none"
        and interlace == 0
        and placement in ("none", "before")
    )
    return data, plain


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(odd_pngs())
def test_a_png_it_vouches_for_always_decodes_and_every_plain_whole_one_is_vouched_for(
    case: tuple[bytes, bool],
) -> None:
    data, plain = case
    vouched = png_pixels_intact(data)
    assert pillow_decodes(data) if vouched else not plain


# --- the upload check ----------------------------------------------------------------------------------


def test_a_plain_png_upload_is_checked_without_pillow_decoding_it(monkeypatch: pytest.MonkeyPatch) -> None:
    data = with_private_metadata("PNG")
    expected = validate_image(data, **LIMITS)

    def no_decode(self: Image.Image) -> None:
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decode)
    checked = validate_image(data, **LIMITS)
    assert checked == expected and checked.data == strip_metadata(data, "image/png")
    assert b"Alice Example" not in checked.data and b"PhoneCo" not in checked.data


PNG_UPLOADS: list[tuple[str, Callable[[], bytes]]] = [
    ("rgb with metadata", lambda: with_private_metadata("PNG")),
    ("rgba", lambda: save(photo("chelsea.png").convert("RGBA"), "PNG")),
    ("grey", lambda: save(photo("chelsea.png").convert("L"), "PNG")),
    ("grey alpha", lambda: save(photo("chelsea.png").convert("LA"), "PNG")),
    ("palette", lambda: save(photo("chelsea.png").convert("P"), "PNG")),
    ("16-bit grey", lambda: save(photo("chelsea.png").convert("I;16"), "PNG")),
    ("text after the pixels", lambda: save(photo("chelsea.png"), "PNG")[:-12] + TEXT + chunk(b"IEND", b"")),
]


@pytest.mark.parametrize("make", [r[1] for r in PNG_UPLOADS], ids=[r[0] for r in PNG_UPLOADS])
def test_the_shortcut_changes_no_upload_check_result(
    make: Callable[[], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make()
    shortcut = validate_image(data, **LIMITS)
    monkeypatch.setattr(imaging, "png_pixels_intact", lambda _: False)
    assert validate_image(data, **LIMITS) == shortcut


def test_a_png_without_metadata_comes_back_as_the_same_object_and_anything_else_is_stripped() -> None:
    """Nothing to drop: the upload's own bytes, not a copy. A text chunk, or bytes after IEND, are
    still removed (the copy is then made)."""
    stream = zlib.compress(rows_stream(40, 30, 3, [0, 1, 4], seed=1))
    plain = crafted_png(40, 30, stream)
    assert strip_metadata(plain, "image/png") is plain
    with_text = crafted_png(40, 30, stream, before=(TEXT,))
    assert strip_metadata(with_text, "image/png") == plain
    assert strip_metadata(plain + b"trailing", "image/png") == plain
