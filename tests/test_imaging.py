"""Tests for bot.imaging: upload checks, masks, fitting under limits, compositing and previews."""

from __future__ import annotations

import io
import random
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageChops, ImageCms, ImageDraw, ImageOps, ImageStat

from bot import imaging, messages
from bot.errors import InvalidImage, InvalidMask
from bot.imagemeta import strip_metadata
from bot.imaging import (
    NormalizedMask,
    decode,
    encode,
    fit_to_limit,
    grid_overlay,
    grid_region,
    mask_for_convention,
    mask_from_region,
    match_geometry,
    normalize_mask,
    restore_outside,
    sniff_mime,
    stored_mask,
    tint_preview,
    validate_image,
)

DATA = Path(__file__).parent / "data"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
LIMITS = {"max_bytes": 20_000_000, "max_pixels": 40_000_000}
MASK_LIMITS = {"max_bytes": 20_000_000, "max_pixels": 20_000_000}
MIB = 1024 * 1024


# --- helpers ---------------------------------------------------------------------------------------


@cache
def photo_bytes(name: str) -> bytes:
    return (DATA / name).read_bytes()


@cache
def photo(name: str) -> Image.Image:
    with Image.open(DATA / name) as image:
        return image.convert("RGB")


def save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size in a valid IHDR but carries no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def frames(count: int = 3, size: tuple[int, int] = (64, 48)) -> list[Image.Image]:
    return [Image.new("RGB", size, (40 * i, 255 - 40 * i, 90)) for i in range(count)]


def animated(fmt: str) -> bytes:
    first, *rest = frames()
    return save(first, fmt, save_all=True, append_images=rest, duration=100, loop=0)


def with_orientation(image: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    params: dict[str, object] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        params["quality"] = 95
    return save(image, fmt, **params)


def half_and_half(size: tuple[int, int]) -> Image.Image:
    """L image: left half white, right half black."""
    image = Image.new("L", size, 0)
    image.paste(255, (0, 0, size[0] // 2, size[1]))
    return image


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()


# --- sniff_mime ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 16, "image/png"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 16, "image/jpeg"),
        (b"RIFF\x10\0\0\0WEBPVP8 ", "image/webp"),
        (b"GIF89a" + b"\0" * 16, "image/gif"),
        (b"GIF87a" + b"\0" * 16, "image/gif"),
        (b"II*\x00" + b"\0" * 16, "image/tiff"),
        (b"MM\x00*" + b"\0" * 16, "image/tiff"),
        (b"BM" + b"\0" * 30, "image/bmp"),
        (b"%PDF-1.7\n" + b"\0" * 16, "application/pdf"),
        (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "image/heic"),
        (b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic", "image/heic"),
        (b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf", "image/avif"),
        (b"\0\0\0\x14ftypmif1\0\0\0\0mif1", "image/heif"),
        (b"\0\0\0\x18ftypisom\0\0\0\0isomiso2", None),  # an MP4 video
        (b"RIFF\x10\0\0\0WAVEfmt ", None),
        (b"hello, world", None),
        (b"", None),
    ],
)
def test_sniff_mime_names_type_from_magic_bytes(head: bytes, expected: str | None) -> None:
    assert sniff_mime(head) == expected


@pytest.mark.parametrize("name", PHOTOS)
def test_sniff_mime_recognises_real_photos(name: str) -> None:
    assert sniff_mime(photo_bytes(name)) == ("image/jpeg" if name.endswith(".jpg") else "image/png")


# --- validate_image: refusals ----------------------------------------------------------------------


def _truncated(name: str) -> bytes:
    data = photo_bytes(name)
    return data[: len(data) // 2]


REFUSALS: list[tuple[str, Callable[[], bytes], dict[str, int], str, str]] = [
    # id, data, limit overrides, error code, text the message must contain (case-insensitive)
    ("empty file", lambda: b"", {}, "empty", "empty"),
    ("text file", lambda: b"just some notes, not an image\n" * 10, {}, "unsupported_type", "not an image"),
    ("truncated png", lambda: _truncated("astronaut.png"), {}, "corrupt", "damaged or incomplete"),
    ("truncated jpeg", lambda: _truncated("rocket.jpg"), {}, "corrupt", "damaged or incomplete"),
    ("png header only", lambda: png_header_only(640, 480), {}, "corrupt", "damaged or incomplete"),
    ("png declaring 30000x30000", lambda: png_header_only(30000, 30000), {}, "too_many_pixels", "pixels"),
    (
        "png declaring over pillow warn limit",
        lambda: png_header_only(10000, 10000),
        {"max_pixels": 500_000_000},
        "too_many_pixels",
        "pixels",
    ),
    (  # MAX_INPUT_MEGAPIXELS=120: the message named 120 MP when refusing 100 MP
        "png under max_pixels but over pillow's limit",
        lambda: png_header_only(10000, 10000),
        {"max_pixels": 120_000_000},
        "too_many_pixels",
        "the limit is 89.5 megapixels",
    ),
    (
        "png declaring over max_pixels",
        lambda: png_header_only(8000, 8000),
        {},
        "too_many_pixels",
        "40 megapixels",
    ),
    (
        "real photo over small max_pixels",
        lambda: photo_bytes("coffee.png"),
        {"max_pixels": 100_000},
        "too_many_pixels",
        "pixels",
    ),
    ("animated gif", lambda: animated("GIF"), {}, "unsupported_type", "a GIF"),
    ("animated png", lambda: animated("PNG"), {}, "animated", "3 frames"),
    ("animated webp", lambda: animated("WEBP"), {}, "animated", "3 frames"),
    ("tiff renamed to png", lambda: save(photo("chelsea.png"), "TIFF"), {}, "unsupported_type", "a TIFF"),
    ("bmp", lambda: save(photo("chelsea.png"), "BMP"), {}, "unsupported_type", "a BMP"),
    ("pdf", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", {}, "unsupported_type", "a PDF"),
    ("heic", lambda: b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64, {}, "unsupported_type", "HEIC"),
    (
        "over max_bytes",
        lambda: photo_bytes("astronaut.png"),
        {"max_bytes": 500_000},
        "too_large",
        "0.5 MB limit",
    ),
    ("tiny image", lambda: save(Image.new("RGB", (8, 8), "red"), "PNG"), {}, "too_small", "16 pixels"),
    ("one pixel tall", lambda: save(Image.new("RGB", (400, 1), "red"), "PNG"), {}, "too_small", "400×1"),
]


@pytest.mark.parametrize(
    ("data", "overrides", "code", "text"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_validate_image_refuses_with_actionable_message(
    data: Callable[[], bytes], overrides: dict[str, int], code: str, text: str
) -> None:
    with pytest.raises(InvalidImage) as caught:
        validate_image(data(), **{**LIMITS, **overrides}, label="image2")
    message = caught.value.user_message
    assert caught.value.code == code
    assert "image2" in message
    assert text.lower() in message.lower()
    # Never Pillow's text: no exception names, no "cannot identify image file <_io.BytesIO ...>".
    for leak in ("error", "PIL", "BytesIO", "Traceback", "0x"):
        assert leak not in message


@pytest.mark.parametrize(
    "data",
    [
        lambda: animated("GIF"),
        lambda: save(photo("coffee.png"), "TIFF"),
        lambda: b"plain text",
        lambda: b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64,
    ],
    ids=["gif", "tiff", "text", "heic"],
)
def test_refused_type_tells_user_what_to_upload(data: Callable[[], bytes]) -> None:
    with pytest.raises(InvalidImage) as caught:
        validate_image(data(), **LIMITS)
    assert caught.value.code == "unsupported_type"
    assert "upload a png, jpeg or webp" in caught.value.user_message.lower()


def test_pillow_bomb_limit_and_warning_filters_are_left_alone() -> None:
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    with pytest.raises(InvalidImage):
        validate_image(png_header_only(30000, 30000), **LIMITS)
    with pytest.raises(InvalidImage):
        validate_image(png_header_only(10000, 10000), max_bytes=1000, max_pixels=10**9)
    assert limit == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters


def filters_lost_to_another_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a decode sees when another thread's `catch_warnings` restored the process's filters in the
    middle of it: Pillow's bomb warning is not an error (here: ignored, so nothing is printed)."""
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    monkeypatch.setattr(imaging.warnings, "simplefilter", lambda *args, **kwargs: None)


def test_an_output_over_pillows_pixel_limit_is_refused_whatever_the_warning_filters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Provider output is decoded in worker threads; the bomb check must not hang on shared state."""
    bomb = save(Image.new("1", (10000, 10000), 0), "PNG")  # 100 MP, over Pillow's 89 MP, under 2x
    with warnings.catch_warnings():
        filters_lost_to_another_thread(monkeypatch)
        with pytest.raises(Image.DecompressionBombError):
            decode(bomb)
        with pytest.raises(InvalidImage) as caught:
            validate_image(bomb, max_bytes=1_000_000, max_pixels=10**9)
        assert caught.value.code == "too_many_pixels"


def test_real_decompression_bomb_is_refused_before_decoding() -> None:
    # 36 MP of one colour compresses to a few kB: tiny upload, huge allocation if decoded.
    bomb = save(Image.new("L", (6000, 6000), 0), "PNG", compress_level=1)
    assert len(bomb) < 200_000
    with pytest.raises(InvalidImage) as caught:
        validate_image(bomb, max_bytes=1_000_000, max_pixels=16_000_000)
    assert caught.value.code == "too_many_pixels"


# --- validate_image: acceptance --------------------------------------------------------------------


def blocks(data: bytes) -> list[bytes]:
    """The container's block names, in order: PNG chunk types, JPEG markers before the first scan
    (as b"APP1", b"COM", ...), WebP chunk ids. Written independently of `bot.imagemeta`."""
    names: list[bytes] = []
    if data.startswith(b"\x89PNG"):
        pos = 8
        while pos < len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            names.append(data[pos + 4 : pos + 8])
            pos += 12 + length
    elif data.startswith(b"\xff\xd8"):
        pos = 2
        while data[pos + 1] != 0xDA:
            marker = data[pos + 1]
            label = (
                f"APP{marker - 0xE0}" if 0xE0 <= marker <= 0xEF else "COM" if marker == 0xFE else hex(marker)
            )
            names.append(label.encode() + b":" + data[pos + 4 : pos + 8])
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    else:
        pos = 12
        while pos < len(data):
            length = int.from_bytes(data[pos + 4 : pos + 8], "little")
            names.append(data[pos : pos + 4])
            pos += 8 + length + (length & 1)
    return names


PRIVATE_BLOCKS = (b"tEXt", b"iTXt", b"zTXt", b"tIME", b"eXIf", b"EXIF", b"XMP ", b"APP1:", b"APP13:", b"COM:")


def assert_same_picture_without_metadata(result_data: bytes, original: bytes) -> None:
    """Lossless removal: the same decoded pixels and ICC profile, and no metadata block left."""
    with Image.open(io.BytesIO(original)) as before, Image.open(io.BytesIO(result_data)) as after:
        assert same_pixels(before.convert("RGBA"), after.convert("RGBA"))
        assert after.info.get("icc_profile") == before.info.get("icc_profile")
        assert not after.getexif()
    assert not [b for b in blocks(result_data) if b.startswith(PRIVATE_BLOCKS)]


@pytest.mark.parametrize("name", PHOTOS)
def test_valid_photo_keeps_its_pixels_and_colour_profile_but_not_its_metadata(name: str) -> None:
    data = photo_bytes(name)  # each carries text chunks, a timestamp or a comment
    result = validate_image(data, **LIMITS)
    assert result.data != data
    assert_same_picture_without_metadata(result.data, data)
    assert (result.width, result.height) == photo(name).size
    assert result.mime == sniff_mime(data)


@pytest.mark.parametrize(
    ("make", "mime"),
    [
        (lambda: save(photo("chelsea.png"), "WEBP", quality=80), "image/webp"),
        (lambda: save(photo("chelsea.png").convert("RGBA"), "WEBP", lossless=True), "image/webp"),
        (lambda: save(photo("chelsea.png").convert("L"), "JPEG"), "image/jpeg"),
        (lambda: save(photo("chelsea.png").convert("P"), "PNG"), "image/png"),
        (lambda: save(Image.new("RGB", (16, 16), "blue"), "PNG"), "image/png"),  # exactly MIN_SIDE
    ],
    ids=["webp", "webp lossless alpha", "grey jpeg", "palette png", "min side"],
)
def test_valid_upload_without_metadata_is_returned_untouched(make: Callable[[], bytes], mime: str) -> None:
    data = make()
    result = validate_image(data, **LIMITS)
    assert result.data is data
    assert result.mime == mime
    with Image.open(io.BytesIO(data)) as image:
        assert (result.width, result.height) == image.size


def gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PhoneCo"
    exif[ExifTags.Base.Orientation] = 1
    exif[ExifTags.Base.BodySerialNumber] = "SN-123456"
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (48.0, 51.0, 29.0),
        ExifTags.GPS.GPSLongitudeRef: "E",
        ExifTags.GPS.GPSLongitude: (2.0, 17.0, 40.0),
    }
    return exif


XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://ns.adobe.com/xap/1.0/"/></x:xmpmeta>'


def with_private_metadata(fmt: str) -> bytes:
    """A photo with GPS EXIF, XMP, a comment or text chunk, and an ICC profile, as `fmt`."""
    source = Image.open(io.BytesIO(photo_bytes("chelsea.png")))
    icc = source.info["icc_profile"]
    image = source.convert("RGB")
    if fmt == "PNG":
        from PIL import PngImagePlugin

        text = PngImagePlugin.PngInfo()
        text.add_text("Author", "Alice Example")
        return save(image, "PNG", exif=gps_exif(), pnginfo=text, icc_profile=icc)
    if fmt == "JPEG":
        return save(image, "JPEG", exif=gps_exif(), xmp=XMP, comment=b"taken at home", icc_profile=icc)
    return save(image, "WEBP", exif=gps_exif(), xmp=XMP, icc_profile=icc, lossless=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: with_private_metadata("JPEG"),
        lambda: with_private_metadata("PNG"),
        lambda: with_private_metadata("WEBP"),
        lambda: with_orientation(photo("chelsea.png"), "PNG", 6),  # PNG orientation tags are not applied
        lambda: save(
            photo("rocket.jpg"), "MPO", save_all=True, append_images=[ImageOps.mirror(photo("rocket.jpg"))]
        ),
    ],
    ids=["jpeg gps", "png gps", "webp gps", "png exif", "mpo"],
)
def test_metadata_never_leaves_the_bot_but_the_picture_and_its_profile_do(make: Callable[[], bytes]) -> None:
    data = make()
    result = validate_image(data, **LIMITS)
    assert b"PhoneCo" not in result.data and b"SN-123456" not in result.data
    assert_same_picture_without_metadata(result.data, data)
    assert result.mime == sniff_mime(data)


def test_a_re_encoded_upload_carries_no_comment_or_xmp() -> None:
    """Turning a photo upright re-encodes it; Pillow would copy its comment and XMP unless told not to."""
    exif = gps_exif()
    exif[ExifTags.Base.Orientation] = 6
    data = save(photo("rocket.jpg"), "JPEG", exif=exif, comment=b"taken at home", xmp=XMP)
    result = validate_image(data, **LIMITS)
    assert result.data != data
    assert not [b for b in blocks(result.data) if b.startswith(PRIVATE_BLOCKS)]
    assert b"taken at home" not in result.data and b"xmpmeta" not in result.data


def test_a_png_whose_container_cannot_be_walked_is_re_encoded_as_png_from_its_pixels() -> None:
    """A PNG Pillow decodes but whose chunks the metadata walker cannot follow (here it ends before its
    IEND) is re-encoded from its pixels, without its metadata. It stays a PNG even though it is opaque:
    the member's exact pixels, not a JPEG's approximation of them (JPEG is for photos that arrived as
    JPEG or WebP)."""
    data = with_private_metadata("PNG")[:-12]  # the IEND chunk cut off
    with pytest.raises(ValueError):
        strip_metadata(data, "image/png")
    result = validate_image(data, **LIMITS)
    assert result.mime == "image/png"
    assert_same_picture_without_metadata(result.data, data)
    assert b"Alice Example" not in result.data and b"PhoneCo" not in result.data


def test_a_16_bit_grey_png_is_sent_as_8_bit_grey_scaled_not_clipped_to_white() -> None:
    """Pillow's own conversions clip every 16-bit value above 255 to white: the safety check's copy,
    the preview and the masked restore all saw a blank picture while the provider got the photo."""
    grey = photo("chelsea.png").convert("L")
    deep = Image.new("I;16", grey.size)
    deep.putdata([v * 257 for v in grey.get_flattened_data()])  # the same picture over 0..65535
    result = validate_image(save(deep, "PNG"), **LIMITS)
    with Image.open(io.BytesIO(result.data)) as image:
        assert (image.mode, image.format, image.size) == ("L", "PNG", grey.size)
        assert ImageChops.difference(image, grey).getbbox() is None  # v*257 >> 8 is v again
    region = Image.new("L", grey.size, 0)
    region.paste(255, (0, 0, 20, 20))
    edited = save(Image.new("RGB", grey.size, (255, 0, 0)), "PNG")
    kept, _ = restore_outside(result.data, edited, region, feather=0)
    outside = decode(kept).convert("L").crop((20, 20, *grey.size))
    assert ImageChops.difference(outside, grey.crop((20, 20, *grey.size))).getbbox() is None


def test_a_16_bit_grey_png_with_a_transparent_grey_level_keeps_those_pixels_transparent() -> None:
    """Its tRNS key (a 16-bit level) stayed on the 8-bit picture: the PNG sent on named a grey level
    over 255, and the keyed pixels came out opaque. Only the keyed level becomes transparent, not the
    levels that share its high byte."""
    levels = [5000, 5001, 1000, 65535]  # the key, its high byte's neighbour, two others
    deep = Image.new("I;16", (64, 64))
    deep.putdata([levels[x // 16] for _ in range(64) for x in range(64)])
    result = validate_image(save(deep, "PNG", transparency=5000), **LIMITS)
    with Image.open(io.BytesIO(result.data)) as image:
        assert (image.mode, image.format, image.info.get("transparency")) == ("LA", "PNG", None)
        assert [image.getpixel((x, 0)) for x in (0, 16, 32, 48)] == [(19, 0), (19, 255), (3, 255), (255, 255)]
        assert image.getchannel("A").crop((0, 0, 16, 64)).getextrema() == (0, 0)
        assert image.getchannel("A").crop((16, 0, 64, 64)).getextrema() == (255, 255)


# Builds a flat 16-bit grey PNG with a tRNS key row by row (a few kB of memory, ~100 kB of file), then
# prints the high-water RSS (KiB on Linux) before and after validating it as an upload.
_DEEP_PNG_PEAK = r"""
import resource, struct, sys, zlib
from bot import imaging
width, height = map(int, sys.argv[1:])
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
packer = zlib.compressobj(9)
row = b"\x00" + b"\x12\x34" * width
idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
       + chunk(b"tRNS", struct.pack(">H", 1234)) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
imaging.validate_image(png, max_bytes=20_000_000, max_pixels=40_000_000)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_a_16_bit_grey_png_is_scaled_without_whole_32_bit_copies_of_it() -> None:
    """A 92 kB 16-bit grey PNG with a tRNS key at 39.9 MP peaked at ~750 MB: the scaling held three
    full-size 32-bit copies (4 bytes a pixel each) besides the decoded picture (2) and the 8-bit result
    (LA: 4). Measured in a fresh process at 10 MP: ~8.5 bytes a pixel now, ~19 before."""
    width, height = 4000, 2500
    run = subprocess.run(
        [sys.executable, "-c", _DEEP_PNG_PEAK, str(width), str(height)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    before, peak = map(int, run.stdout.split())
    grown = (peak - before) * 1024
    assert grown < 12 * width * height, f"validating grew the process by {grown / MIB:.0f} MiB"


def test_a_16_bit_grey_png_taller_than_a_strip_is_scaled_the_same_in_every_strip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scaling goes a few rows at a time: rows at and across the strips' edges come out as in one pass."""
    levels = [5000, 5001, 1000, 65535, 0, 257]
    deep = Image.new("I;16", (23, 61))
    deep.putdata([levels[(x + y) % len(levels)] for y in range(61) for x in range(23)])
    data = save(deep, "PNG", transparency=5000)
    whole = validate_image(data, **LIMITS)
    monkeypatch.setattr(imaging, "EIGHT_BIT_STRIP_ROWS", 7)
    strips = validate_image(data, **LIMITS)
    with Image.open(io.BytesIO(whole.data)) as one, Image.open(io.BytesIO(strips.data)) as many:
        assert one.mode == many.mode == "LA"
        assert ImageChops.difference(one, many).getbbox() is None
        last_row = [many.getpixel((x, 60)) for x in range(6)]
        assert last_row == [(19, 0), (19, 255), (3, 255), (255, 255), (0, 255), (1, 255)]


@pytest.mark.parametrize(("size", "fmt"), [((17000, 40), "webp"), ((40, 66000), "jpeg")])
def test_a_masked_result_too_long_for_its_format_comes_back_as_png(size: tuple[int, int], fmt: str) -> None:
    """A panorama the provider already made (and billed): WebP cannot hold a side over 16,383 px nor
    JPEG one over 65,500, so the restore writes PNG rather than fail and lose it."""
    original = save(Image.new("RGB", size, (10, 20, 30)), "PNG")
    region = Image.new("L", size, 0)
    region.paste(255, (0, 0, 10, 10))
    edited = save(Image.new("RGB", (1536, 1024), (200, 0, 0)), "PNG")
    data, out = restore_outside(original, edited, region, fmt=fmt)
    assert out == "png" and sniff_mime(data) == "image/png" and decode(data).size == size


def test_a_cmyk_jpeg_is_sent_as_rgb() -> None:
    cmyk = photo("rocket.jpg").convert("CMYK")
    data = save(cmyk, "JPEG", quality=95, exif=gps_exif())
    result = validate_image(data, **LIMITS)
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.mode == "RGB" and image.format == "JPEG" and not image.getexif()
        assert image.size == cmyk.size
        # Colours survive the conversion (JPEG noise aside).
        diff = ImageChops.difference(image.convert("RGB"), cmyk.convert("RGB"))
        assert max(ImageStat.Stat(diff).mean) < 4
    assert result.mime == "image/jpeg"


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_is_turned_upright(orientation: int) -> None:
    source = photo("rocket.jpg")
    data = with_orientation(source, "JPEG", orientation)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))

    result = validate_image(data, **LIMITS)

    assert result.data != data
    assert result.mime == "image/jpeg"
    assert (result.width, result.height) == expected.size
    upright = Image.open(io.BytesIO(result.data))
    assert upright.getexif().get(ExifTags.Base.Orientation) in (None, 1)
    difference = ImageChops.difference(upright.convert("RGB"), expected.convert("RGB")).convert("L")
    assert sum(difference.histogram()[i] * i for i in range(256)) / (upright.width * upright.height) < 3


def test_exif_rotated_webp_with_alpha_becomes_lossless_png() -> None:
    source = photo("chelsea.png").convert("RGBA")
    source.putalpha(Image.linear_gradient("L").resize(source.size))
    data = save(source, "WEBP", lossless=True, exif=_orientation_exif(6))

    result = validate_image(data, **LIMITS)

    assert result.mime == "image/png"
    assert (result.width, result.height) == (source.height, source.width)
    # Compare with the WebP's own pixels: lossless WebP may drop colour under alpha 0.
    with Image.open(io.BytesIO(data)) as stored:
        expected = stored.convert("RGBA").transpose(Image.Transpose.ROTATE_270)
    assert same_pixels(decode(result.data), expected)


def test_exif_rotated_photo_stays_under_max_bytes() -> None:
    data = with_orientation(photo("rocket.jpg").resize((1280, 854)), "JPEG", 6)
    # q95 re-encoding is bigger than the camera's file; the limit still holds.
    result = validate_image(data, max_bytes=len(data), max_pixels=40_000_000)
    assert len(result.data) <= len(data)
    assert result.width < result.height


def _orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif.tobytes()


# --- encode / decode -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "jpg", "webp", "PNG"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "1"])
def test_encode_handles_every_mode(fmt: str, mode: str) -> None:
    image = photo("chelsea.png").convert(mode) if mode != "I;16" else Image.new("I;16", (40, 30), 30000)
    out = encode(image, fmt)
    expected = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
    assert sniff_mime(out) == expected[fmt.lower()]
    assert decode(out).size == image.size


def test_encode_refuses_unknown_format() -> None:
    with pytest.raises(ValueError):
        encode(photo("chelsea.png"), "gif")


def test_decode_applies_exif_orientation() -> None:
    data = with_orientation(photo("rocket.jpg"), "JPEG", 6)
    assert decode(data).size == (427, 640)


# --- fit_to_limit ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_photo_png() -> bytes:
    """A 4096×4096 photo (upscaled, so it compresses like a real large photo, not noise)."""
    big = photo("astronaut.png").resize((4096, 4096), Image.Resampling.BILINEAR)
    return save(big, "PNG", compress_level=0)  # stored, not deflated: fast to make and to read


@pytest.mark.parametrize("limit", [10 * MIB, 2 * MIB, 300_000], ids=["10MiB", "2MiB", "300KB"])
def test_fit_to_limit_shrinks_large_photo_under_limit(big_photo_png: bytes, limit: int) -> None:
    assert len(big_photo_png) > limit
    out, fmt = fit_to_limit(big_photo_png, "png", limit)
    assert len(out) <= limit
    assert sniff_mime(out) == f"image/{fmt}"
    assert decode(out).size == (4096, 4096)  # these limits are met by quality alone


def test_fit_to_limit_returns_input_unchanged_when_it_fits() -> None:
    data = photo_bytes("rocket.jpg")
    out, fmt = fit_to_limit(data, "jpg", len(data))
    assert out is data
    assert fmt == "jpeg"


def test_fit_to_limit_downscales_when_quality_is_not_enough() -> None:
    noise = Image.effect_noise((1200, 800), 120).convert("RGB")
    data = save(noise, "PNG")
    out, _ = fit_to_limit(data, "png", 40_000)
    image = decode(out)
    assert len(out) <= 40_000
    assert image.width < 1200
    assert abs(image.width / image.height - 1.5) < 0.02


def test_fit_to_limit_keeps_transparency() -> None:
    source = photo("astronaut.png").convert("RGBA")
    source.putalpha(Image.radial_gradient("L").resize(source.size))
    data = save(source, "PNG")
    out, fmt = fit_to_limit(data, "png", 20_000)
    assert len(out) <= 20_000
    assert fmt == "webp"
    fitted = decode(out)
    assert fitted.mode == "RGBA"
    assert fitted.getchannel("A").getextrema()[0] < 50


def test_fit_to_limit_refuses_absurd_limit() -> None:
    with pytest.raises(ValueError):
        fit_to_limit(photo_bytes("coffee.png"), "png", 20)


# --- normalize_mask --------------------------------------------------------------------------------

IMAGE_SIZE = (120, 80)


def _mask_1() -> bytes:
    return save(half_and_half(IMAGE_SIZE).convert("1"), "PNG")


def _mask_l() -> bytes:
    return save(half_and_half(IMAGE_SIZE), "PNG")


def _mask_la_opaque() -> bytes:
    return save(Image.merge("LA", (half_and_half(IMAGE_SIZE), Image.new("L", IMAGE_SIZE, 255))), "PNG")


def _mask_la_transparent() -> bytes:
    # Grey says "right half"; transparency says "left half". Transparency wins.
    alpha = ImageOps.invert(half_and_half(IMAGE_SIZE))
    return save(Image.merge("LA", (ImageOps.invert(half_and_half(IMAGE_SIZE)), alpha)), "PNG")


def _mask_p() -> bytes:
    image = half_and_half(IMAGE_SIZE).point(lambda v: 1 if v else 0).convert("P")
    image.putpalette([0, 0, 0, 255, 255, 255])
    return save(image, "PNG")


def _mask_p_transparency() -> bytes:
    # Index 0 is black but transparent (left half), index 1 is opaque white (right half).
    image = ImageOps.invert(half_and_half(IMAGE_SIZE)).point(lambda v: 1 if v else 0).convert("P")
    image.putpalette([0, 0, 0, 255, 255, 255])
    return save(image, "PNG", transparency=0)


def _mask_rgb_colours() -> bytes:
    image = Image.new("RGB", IMAGE_SIZE, (20, 20, 120))  # dark blue: luminance 31
    image.paste((250, 230, 40), (0, 0, IMAGE_SIZE[0] // 2, IMAGE_SIZE[1]))  # yellow: luminance 223
    return save(image, "PNG")


def _mask_rgba_opaque() -> bytes:
    return save(half_and_half(IMAGE_SIZE).convert("RGBA"), "PNG")


def _mask_rgba_openai_style() -> bytes:
    # A copy of the picture (white here) with the area to edit erased to transparent black.
    image = Image.new("RGBA", IMAGE_SIZE, (255, 255, 255, 255))
    image.paste((0, 0, 0, 0), (0, 0, IMAGE_SIZE[0] // 2, IMAGE_SIZE[1]))
    return save(image, "PNG")


def _mask_i16() -> bytes:
    # Left: 40000, above half of 65535: edit. Right: 30000, below half: keep. (Built from raw
    # bytes because Pillow's paste() mangles 16-bit fill values.)
    w, h = IMAGE_SIZE
    row = struct.pack(f"<{w}H", *([40000] * (w // 2) + [30000] * (w - w // 2)))
    return save(Image.frombytes("I;16", IMAGE_SIZE, row * h), "PNG")


def _mask_webp_alpha() -> bytes:
    return save(Image.open(io.BytesIO(_mask_rgba_openai_style())), "WEBP", lossless=True)


def _mask_jpeg() -> bytes:
    return save(half_and_half(IMAGE_SIZE).convert("RGB"), "JPEG", quality=70)


MASK_MODES = {
    "1": (_mask_1, "1"),
    "L": (_mask_l, "L"),
    "LA opaque": (_mask_la_opaque, "LA"),
    "LA transparent": (_mask_la_transparent, "LA"),
    "P": (_mask_p, "P"),
    "P transparency": (_mask_p_transparency, "P"),
    "RGB colours": (_mask_rgb_colours, "RGB"),
    "RGBA opaque": (_mask_rgba_opaque, "RGBA"),
    "RGBA transparent": (_mask_rgba_openai_style, "RGBA"),
    "I;16": (_mask_i16, "I;16"),
    "WebP alpha": (_mask_webp_alpha, "RGBA"),
    "JPEG": (_mask_jpeg, "RGB"),
}


@pytest.mark.parametrize(("make", "mode"), MASK_MODES.values(), ids=MASK_MODES.keys())
def test_normalize_mask_reads_every_mode_left_half(make: Callable[[], bytes], mode: str) -> None:
    data = make()
    assert Image.open(io.BytesIO(data)).mode == mode  # the case really exercises that mode
    mask = normalize_mask(data, IMAGE_SIZE, **MASK_LIMITS)
    assert mask.region.mode == "L"
    assert mask.region.size == IMAGE_SIZE
    assert same_pixels(mask.region, half_and_half(IMAGE_SIZE))
    assert mask.coverage == pytest.approx(0.5)


@pytest.mark.parametrize(("make", "mode"), MASK_MODES.values(), ids=MASK_MODES.keys())
def test_normalize_mask_invert_flips_every_mode(make: Callable[[], bytes], mode: str) -> None:
    mask = normalize_mask(make(), IMAGE_SIZE, invert=True, **MASK_LIMITS)
    assert same_pixels(mask.region, ImageOps.invert(half_and_half(IMAGE_SIZE)))


def test_normalize_mask_white_means_edit_black_means_keep() -> None:
    mask_image = Image.new("L", IMAGE_SIZE, 0)
    mask_image.paste(255, (10, 20, 30, 40))
    mask = normalize_mask(save(mask_image, "PNG"), IMAGE_SIZE, **MASK_LIMITS)
    assert mask.region.getpixel((15, 25)) == 255
    assert mask.region.getpixel((50, 50)) == 0
    assert mask.region.getbbox() == (10, 20, 30, 40)


def test_normalize_mask_ignores_alpha_that_is_barely_transparent() -> None:
    # Alpha never below 128 is not "meaningful transparency": luminance decides.
    image = half_and_half(IMAGE_SIZE).convert("RGBA")
    image.putalpha(200)
    mask = normalize_mask(save(image, "PNG"), IMAGE_SIZE, **MASK_LIMITS)
    assert same_pixels(mask.region, half_and_half(IMAGE_SIZE))


def _strokes_on_clear(stroke: tuple[int, int, int], background: tuple[int, int, int, int]) -> bytes:
    image = Image.new("RGBA", IMAGE_SIZE, background)
    image.paste((*stroke, 255), (10, 20, 30, 40))
    return save(image, "PNG")


def _photo_with_hole() -> bytes:
    image = photo("chelsea.png").convert("RGBA").resize(IMAGE_SIZE)
    image.paste((0, 0, 0, 0), (10, 20, 30, 40))
    return save(image, "PNG")


@pytest.mark.parametrize(
    ("make", "light_on_clear"),
    [
        (lambda: _strokes_on_clear((255, 255, 255), (0, 0, 0, 0)), True),
        (lambda: _strokes_on_clear((250, 250, 200), (255, 255, 255, 0)), True),
        (_mask_rgba_openai_style, True),  # a white layer with the part to change erased: the same
        (_mask_p_transparency, True),
        (lambda: _strokes_on_clear((0, 0, 0), (0, 0, 0, 0)), False),  # black on clear: OpenAI's own kind
        (_photo_with_hole, False),  # the picture itself with a hole (OpenAI's own example)
        (_mask_l, False),  # no transparency: white is what changes
        (_mask_rgba_opaque, False),
    ],
    ids=[
        "white strokes",
        "light strokes",
        "white layer, erased",
        "palette",
        "black strokes",
        "photo",
        "grey",
        "opaque RGBA",
    ],
)
def test_normalize_mask_notes_light_strokes_on_a_transparent_layer(
    make: Callable[[], bytes], light_on_clear: bool
) -> None:
    """Transparency decides, so light strokes on a clear layer are kept, and the mask says it was read
    so (the member may have meant the strokes as what to change)."""
    mask = normalize_mask(make(), IMAGE_SIZE, **MASK_LIMITS)
    assert mask.light_on_clear is light_on_clear
    assert normalize_mask(make(), IMAGE_SIZE, invert=True, **MASK_LIMITS).light_on_clear is light_on_clear


@pytest.mark.parametrize(
    ("mask_size", "image_size"),
    [((60, 40), (600, 400)), ((1200, 800), (120, 80)), ((601, 400), (600, 400)), ((2, 2), (600, 400))],
    ids=["smaller", "larger", "off by one", "2x2 sketch"],
)
def test_normalize_mask_resizes_to_image_size(
    mask_size: tuple[int, int], image_size: tuple[int, int]
) -> None:
    mask = normalize_mask(save(half_and_half(mask_size), "PNG"), image_size, **MASK_LIMITS)
    assert mask.region.size == image_size
    assert set(mask.region.histogram()[1:255]) == {0}  # still strictly binary after resizing
    assert mask.coverage == pytest.approx(0.5, abs=0.01)


def test_normalize_mask_refuses_mask_of_another_shape() -> None:
    with pytest.raises(InvalidMask) as caught:
        normalize_mask(save(half_and_half((512, 512)), "PNG"), (600, 400), **MASK_LIMITS)
    assert caught.value.code == "mask_shape"


def test_a_mask_of_another_shape_is_refused_from_its_header_before_any_decode() -> None:
    # No pixel data at all: a decode would call it corrupt, so only the header was read.
    with pytest.raises(InvalidMask) as caught:
        normalize_mask(png_header_only(512, 512), (600, 400), **MASK_LIMITS)
    assert caught.value.code == "mask_shape"
    assert caught.value.user_message == messages.mask_shape((512, 512), (600, 400))


def test_a_sideways_stored_jpeg_mask_is_judged_by_its_upright_shape() -> None:
    """Stored 80×120 with EXIF orientation 6, shown 120×80: the shape the member drew on."""
    upright = half_and_half(IMAGE_SIZE).convert("RGB")
    data = with_orientation(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", 6)
    mask = normalize_mask(data, IMAGE_SIZE, **MASK_LIMITS)
    assert mask.region.size == IMAGE_SIZE
    assert mask.region.getpixel((10, 40)) == 255 and mask.region.getpixel((110, 40)) == 0


def _mask_with_marked_pixels(count: int) -> bytes:
    image = Image.new("L", (100, 100), 0)
    for i in range(count):
        image.putpixel((i % 100, i // 100), 255)
    return save(image, "PNG")


@pytest.mark.parametrize(
    ("data", "invert", "code"),
    [
        (lambda: save(Image.new("L", (100, 100), 0), "PNG"), False, "mask_empty"),
        (lambda: save(Image.new("L", (100, 100), 255), "PNG"), False, "mask_full"),
        (lambda: save(Image.new("L", (100, 100), 0), "PNG"), True, "mask_full"),
        (lambda: save(Image.new("RGBA", (100, 100), (0, 0, 0, 0)), "PNG"), False, "mask_full"),
        (lambda: _mask_with_marked_pixels(5), False, "mask_empty"),  # 0.05 %: a stray click
        (lambda: _mask_with_marked_pixels(9_995), False, "mask_full"),
    ],
    ids=["black", "white", "black inverted", "all transparent", "nearly empty", "nearly full"],
)
def test_normalize_mask_refuses_nothing_or_everything_marked(
    data: Callable[[], bytes], invert: bool, code: str
) -> None:
    with pytest.raises(InvalidMask) as caught:
        normalize_mask(data(), (100, 100), invert=invert, **MASK_LIMITS)
    assert caught.value.code == code


def test_normalize_mask_accepts_small_but_real_area() -> None:
    mask = normalize_mask(_mask_with_marked_pixels(20), (100, 100), **MASK_LIMITS)
    assert mask.coverage == pytest.approx(0.002)


@pytest.mark.parametrize(
    ("data", "overrides", "code"),
    [
        (lambda: animated("GIF"), {}, "unsupported_type"),
        (lambda: _truncated("chelsea.png"), {}, "corrupt"),
        (lambda: png_header_only(30000, 30000), {}, "too_many_pixels"),
        (lambda: save(half_and_half(IMAGE_SIZE), "PNG"), {"max_bytes": 100}, "too_large"),
        (lambda: animated("PNG"), {}, "animated"),
    ],
    ids=["gif", "truncated", "bomb", "too large", "animated"],
)
def test_normalize_mask_validates_file_like_an_upload(
    data: Callable[[], bytes], overrides: dict[str, int], code: str
) -> None:
    with pytest.raises(InvalidMask) as caught:
        normalize_mask(data(), IMAGE_SIZE, **{**MASK_LIMITS, **overrides})
    assert caught.value.code == code
    assert "mask" in caught.value.user_message


def test_normalize_mask_handles_huge_allowed_mask() -> None:
    huge = Image.new("L", (4096, 4096), 0)
    ImageDraw.Draw(huge).ellipse((1024, 1024, 3072, 3072), fill=255)
    mask = normalize_mask(save(huge, "PNG"), (512, 512), **MASK_LIMITS)
    assert mask.region.size == (512, 512)
    assert mask.coverage == pytest.approx(3.14159 / 16, rel=0.02)


# --- mask encodings --------------------------------------------------------------------------------


@pytest.fixture
def ellipse_mask() -> NormalizedMask:
    region = Image.new("L", (1536, 1024), 0)
    ImageDraw.Draw(region).ellipse((300, 200, 900, 800), fill=255)
    return mask_from_region(region)


def test_openai_png_is_transparent_exactly_where_to_edit(ellipse_mask: NormalizedMask) -> None:
    data = ellipse_mask.openai_png()
    assert sniff_mime(data) == "image/png"
    assert len(data) < 4_000_000
    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGBA"
    assert image.size == ellipse_mask.region.size
    assert same_pixels(image.getchannel("A"), ImageOps.invert(ellipse_mask.region))
    assert mask_for_convention(ellipse_mask, "alpha") == data


def test_white_edit_png_is_white_exactly_where_to_edit(ellipse_mask: NormalizedMask) -> None:
    data = ellipse_mask.white_edit_png()
    image = Image.open(io.BytesIO(data))
    assert image.mode == "L"
    assert same_pixels(image, ellipse_mask.region)
    assert mask_for_convention(ellipse_mask, "white") == data


def test_mask_for_convention_refuses_unknown_convention(ellipse_mask: NormalizedMask) -> None:
    with pytest.raises(ValueError):
        mask_for_convention(ellipse_mask, "black")


def test_openai_png_refuses_mask_over_provider_cap(
    ellipse_mask: NormalizedMask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imaging, "OPENAI_MASK_MAX_BYTES", 100)
    with pytest.raises(InvalidMask) as caught:
        ellipse_mask.openai_png()
    assert caught.value.code == "mask_too_detailed"


def test_openai_png_of_full_size_mask_is_far_under_cap() -> None:
    region = Image.new("L", (4096, 4096), 0)
    ImageDraw.Draw(region).polygon([(100, 4000), (2000, 50), (4000, 3900)], fill=255)
    assert len(mask_from_region(region).openai_png()) < 400_000


def test_a_stored_region_reads_back_as_written(ellipse_mask: NormalizedMask) -> None:
    """A job's own region, however large its PNG, with no upload limit to pass."""
    mask = stored_mask(ellipse_mask.white_edit_png(), ellipse_mask.region.size)
    assert same_pixels(mask.region, ellipse_mask.region)
    assert mask.coverage == ellipse_mask.coverage


def test_a_stored_region_of_another_size_is_refused_before_its_pixels_are_read() -> None:
    # No pixel data at all: only the header can have been read.
    with pytest.raises(ValueError, match="not the image's"):
        stored_mask(png_header_only(1024, 1536), (1536, 1024))


@pytest.mark.parametrize(
    "damage",
    [
        lambda png, size: b"",
        lambda png, size: png[: len(png) // 2],
        lambda png, size: b"\x89PNG" + bytes(64),
        lambda png, size: png_header_only(*size),
    ],
    ids=["empty", "truncated", "garbage", "no-pixels"],
)
def test_a_damaged_stored_region_is_refused_as_a_value_error(
    ellipse_mask: NormalizedMask, damage: Callable[[bytes, tuple[int, int]], bytes]
) -> None:
    """Pillow's own errors (UnidentifiedImageError, OSError on truncated data) were let through, so a
    caller mapping the documented ValueError (Retry: `EditService._load_mask`) missed them."""
    size = ellipse_mask.region.size
    with pytest.raises(ValueError, match="stored region is unreadable"):
        stored_mask(damage(ellipse_mask.white_edit_png(), size), size)


# --- restore_outside: locality ---------------------------------------------------------------------

LOCALITY_SIZE = (112, 84)


def random_region(seed: int, size: tuple[int, int] = LOCALITY_SIZE) -> Image.Image:
    """Random blobs, bars and specks, some crossing the border; never empty, never everything."""
    rng = random.Random(seed)
    region = Image.new("L", size, 0)
    draw = ImageDraw.Draw(region)
    w, h = size
    for _ in range(rng.randint(1, 4)):
        x0, y0 = rng.randint(-20, w), rng.randint(-20, h)
        x1, y1 = x0 + rng.randint(3, w // 2), y0 + rng.randint(3, h // 2)
        shape = rng.choice(["ellipse", "rectangle", "polygon"])
        if shape == "polygon":
            draw.polygon([(rng.randint(-10, w + 10), rng.randint(-10, h + 10)) for _ in range(5)], fill=255)
        else:
            getattr(draw, shape)((x0, y0, x1, y1), fill=255)
    for _ in range(rng.randint(0, 30)):  # specks thinner than any feather
        region.putpixel((rng.randrange(w), rng.randrange(h)), 255)
    if region.getbbox() is None:
        region.paste(255, (10, 10, 40, 30))
    region.putpixel((w - 1, h - 1), 0)  # ensure something stays outside
    return region


def chessboard_distance(region: Image.Image) -> list[int]:
    """Per pixel: chessboard distance to the nearest pixel outside the region (0 outside)."""
    w, h = region.size
    far = w + h
    d = [0 if v < 128 else far for v in region.tobytes()]
    forward = ((-1, 0), (-1, -1), (0, -1), (1, -1))
    backward = ((1, 0), (1, 1), (0, 1), (-1, 1))
    for offsets, ys, xs in (
        (forward, range(h), range(w)),
        (backward, range(h - 1, -1, -1), range(w - 1, -1, -1)),
    ):
        for y in ys:
            for x in xs:
                i = y * w + x
                if d[i] == 0:
                    continue
                for dx, dy in offsets:
                    nx, ny = x + dx, y + dy
                    if 0 <= nx < w and 0 <= ny < h:
                        d[i] = min(d[i], d[ny * w + nx] + 1)
    return d


def assert_locality(
    original: Image.Image, edit: Image.Image, out: Image.Image, region: Image.Image, feather: int
) -> None:
    channels = len(original.getbands())
    o, e, r = original.tobytes(), edit.tobytes(), out.tobytes()
    distance = chessboard_distance(region)
    seam = 0
    for i, d in enumerate(distance):
        px = slice(i * channels, (i + 1) * channels)
        if d == 0:
            assert r[px] == o[px], f"pixel {i} outside the region changed"
        elif d > feather:
            assert r[px] == e[px], f"pixel {i} deep inside the region is not the edit"
        else:
            seam += 1
            for a, b, v in zip(o[px], e[px], r[px], strict=True):
                assert min(a, b) <= v <= max(a, b), f"seam pixel {i} is not between original and edit"
    assert feather == 0 or seam > 0


@pytest.fixture(scope="module")
def locality_pair() -> tuple[Image.Image, Image.Image]:
    original = photo("coffee.png").resize(LOCALITY_SIZE)
    edit = photo("chelsea.png").resize(LOCALITY_SIZE)
    return original, edit


@pytest.mark.parametrize("feather", [0, 1, 2, 5, 6, 13])
@pytest.mark.parametrize("seed", range(6))
def test_restore_outside_keeps_outside_exact_and_inside_exact(
    locality_pair: tuple[Image.Image, Image.Image], seed: int, feather: int
) -> None:
    original, edit = locality_pair
    region = random_region(seed)
    data, fmt = restore_outside(save(original, "PNG"), save(edit, "PNG"), region, feather=feather)
    assert fmt == "png"
    assert sniff_mime(data) == "image/png"
    assert_locality(original, edit, decode(data), region, feather)


def test_restore_outside_with_transparent_original(locality_pair: tuple[Image.Image, Image.Image]) -> None:
    original, edit = locality_pair
    original = original.convert("RGBA")
    original.putalpha(Image.linear_gradient("L").resize(original.size))
    region = random_region(42)
    data, _ = restore_outside(save(original, "PNG"), save(edit, "PNG"), region, feather=4)
    out = decode(data)
    assert out.mode == "RGBA"
    assert_locality(original, edit.convert("RGBA"), out, region, feather=4)


@pytest.mark.parametrize("transparent", [False, True], ids=["opaque", "transparent"])
def test_restore_outside_as_webp_keeps_outside_and_inside_exact(
    locality_pair: tuple[Image.Image, Image.Image], transparent: bool
) -> None:
    original, edit = locality_pair
    if transparent:
        original = original.convert("RGBA")
        original.putalpha(Image.linear_gradient("L").resize(original.size))
        original.paste((10, 200, 30, 0), (0, 0, 30, 30))  # invisible colour: it must survive too
        edit = edit.convert("RGBA")
    region = random_region(11)
    data, fmt = restore_outside(save(original, "PNG"), save(edit, "PNG"), region, feather=4, fmt="webp")
    assert (fmt, sniff_mime(data)) == ("webp", "image/webp")
    assert_locality(original, edit, decode(data), region, feather=4)


def test_restore_outside_as_jpeg_is_a_flattened_jpeg_close_to_the_original_outside(
    locality_pair: tuple[Image.Image, Image.Image],
) -> None:
    original, edit = locality_pair
    transparent = original.convert("RGBA")
    transparent.putalpha(255)
    transparent.paste((0, 0, 0, 0), (0, 0, 20, 20))  # a hole outside the region: JPEG makes it white
    region = Image.new("L", original.size, 0)
    region.paste(255, (50, 30, 100, 70))
    data, fmt = restore_outside(save(transparent, "PNG"), save(edit, "PNG"), region, feather=0, fmt="jpeg")
    assert (fmt, sniff_mime(data)) == ("jpeg", "image/jpeg")
    out = decode(data)
    assert out.mode == "RGB" and out.size == original.size
    assert ImageStat.Stat(out.crop((2, 2, 18, 18))).mean == pytest.approx([255, 255, 255], abs=3)
    # JPEG is lossy, so "exactly the original" becomes "close": at q90 the mean error of a block of
    # this small, detailed photo is about 5 levels, while the edit (another photo) is 55-63 away.
    kept = (0, 32, 40, 84)  # away from the hole and the region, whose edges ring
    assert max(ImageStat.Stat(ImageChops.difference(out.crop(kept), original.crop(kept))).mean) < 10
    assert min(ImageStat.Stat(ImageChops.difference(edit.crop(kept), original.crop(kept))).mean) > 40


def test_restore_outside_with_greyscale_original(locality_pair: tuple[Image.Image, Image.Image]) -> None:
    original, edit = locality_pair
    grey = original.convert("L")
    region = random_region(7)
    data, _ = restore_outside(save(grey, "PNG"), save(edit, "JPEG", quality=90), region, feather=3)
    out = decode(data)
    assert out.mode == "RGB"
    assert_locality(grey.convert("RGB"), decode(save(edit, "JPEG", quality=90)), out, region, feather=3)


def grey_icc_profile(gamma: float = 1.8) -> bytes:
    """A minimal ICC v2 grey profile (colour space GRAY: a white point and one tone curve), the kind
    greyscale photos carry (Photoshop's "Dot Gain 20%"). ImageCms cannot create one."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    d50 = s15(0.9642) + s15(1.0) + s15(0.8249)
    name = b"Grey test\0"
    tags = [
        (b"desc", b"desc" + bytes(4) + struct.pack(">I", len(name)) + name + bytes(8 + 3 + 67)),
        (b"wtpt", b"XYZ " + bytes(4) + d50),
        (b"kTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))),
        (b"cprt", b"text" + bytes(4) + b"none\0"),
    ]
    table, body = b"", b""
    start = 128 + 4 + 12 * len(tags)
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", start + len(body), len(data))
        body += data
    header = struct.pack(">I", start + len(body)) + b"lcms" + struct.pack(">I", 0x02100000)
    header += b"mntrGRAYXYZ " + bytes(12) + b"acspAPPL" + bytes(24) + d50 + bytes(48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def icc_space(data: bytes) -> tuple[str, str | None]:
    """The mode an encoded image decodes to, and the colour space of the ICC profile it carries."""
    with Image.open(io.BytesIO(data)) as image:
        icc = image.info.get("icc_profile")
        space = ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip() if icc else None
        return image.mode, space


def as_viewed(image: Image.Image) -> Image.Image:
    """`image` as a colour-managed viewer shows it: in sRGB, through its own profile when it has one."""
    icc = image.info.get("icc_profile")
    if not icc:
        return image.convert("RGB")
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    srgb = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    assert isinstance(srgb, Image.Image)
    return srgb


@pytest.fixture
def grey_with_profile(locality_pair: tuple[Image.Image, Image.Image]) -> bytes:
    grey = save(locality_pair[0].convert("L"), "PNG", icc_profile=grey_icc_profile())
    # The profile matters: as shown, the picture is not its bare grey numbers.
    assert ImageChops.difference(as_viewed(decode(grey)), decode(grey).convert("RGB")).getbbox()
    return grey


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_restoring_a_grey_original_with_a_grey_profile_writes_srgb_not_that_profile(
    locality_pair: tuple[Image.Image, Image.Image], grey_with_profile: bytes, fmt: str
) -> None:
    """The result is RGB and carried the original's GRAY profile: PNG forbids that, ImageCms cannot use
    it, and colour-managed viewers showed wrong colours. It is converted through the profile to sRGB
    and written untagged, so outside the region it is still the original as the member sees it."""
    region = Image.new("L", LOCALITY_SIZE, 0)
    region.paste(255, (50, 30, 100, 70))
    data, _ = restore_outside(grey_with_profile, save(locality_pair[1], "PNG"), region, feather=2, fmt=fmt)
    assert icc_space(data) == ("RGB", None)
    out, seen = decode(data), as_viewed(decode(grey_with_profile))
    if fmt == "jpeg":  # lossy: close to the original as seen (the edit is 40+ levels away), not equal
        kept = (0, 32, 40, 84)  # away from the region, whose edges ring
        assert max(ImageStat.Stat(ImageChops.difference(out.crop(kept), seen.crop(kept))).mean) < 10
    else:
        changed = ImageChops.difference(out, seen).convert("L").point(lambda v: 255 if v else 0)
        assert ImageChops.multiply(changed, ImageOps.invert(region)).getbbox() is None


@pytest.mark.parametrize(
    ("widen", "tolerance"),
    [
        (lambda data: encode(decode(data), "webp", lossless=True), 0),
        (lambda data: fit_to_limit(data, "png", len(data) // 2)[0], 4),
        (lambda data: encode(decode(data).convert("LA"), "jpeg"), 4),
    ],
    ids=["widened to webp", "fitted under a limit", "flattened to jpeg"],
)
def test_a_grey_picture_with_a_grey_profile_written_as_rgb_is_converted_to_srgb(
    grey_with_profile: bytes, widen: Callable[[bytes], bytes], tolerance: float
) -> None:
    """WebP has no grey mode, `fit_to_limit` works in RGB, and JPEG flattens transparency to RGB: each
    wrote RGB pixels with the GRAY profile Pillow had copied along."""
    out = widen(grey_with_profile)
    assert icc_space(out) == ("RGB", None)
    difference = ImageChops.difference(decode(out), as_viewed(decode(grey_with_profile)))
    assert max(ImageStat.Stat(difference).mean) <= tolerance


def test_restore_outside_without_region_returns_original_pixels(
    locality_pair: tuple[Image.Image, Image.Image],
) -> None:
    original, edit = locality_pair
    data, _ = restore_outside(save(original, "PNG"), save(edit, "PNG"), Image.new("L", original.size, 0))
    assert same_pixels(decode(data), original)


def test_restore_outside_keeps_original_colour_profile() -> None:
    original = photo_bytes("astronaut.png")
    icc = Image.open(io.BytesIO(original)).info["icc_profile"]
    region = grid_region((512, 512), 2, 2, [1])
    data, _ = restore_outside(original, save(photo("chelsea.png"), "PNG"), region)
    assert Image.open(io.BytesIO(data)).info.get("icc_profile") == icc


def test_restore_outside_refuses_region_of_wrong_size(locality_pair: tuple[Image.Image, Image.Image]) -> None:
    original, edit = locality_pair
    with pytest.raises(ValueError):
        restore_outside(save(original, "PNG"), save(edit, "PNG"), Image.new("L", (10, 10), 255))


# --- restore_outside / match_geometry: geometry ----------------------------------------------------


def banded(size: tuple[int, int], band: int) -> Image.Image:
    """Green picture with a red band on top and a blue band at the bottom, `band` px high."""
    image = Image.new("RGB", size, (0, 200, 0))
    image.paste((255, 0, 0), (0, 0, size[0], band))
    image.paste((0, 0, 255), (0, size[1] - band, size[0], size[1]))
    return image


@pytest.mark.parametrize(
    ("edited_size", "original_size", "expected"),
    [
        ((1024, 1024), (600, 400), "cover"),
        ((1536, 1024), (600, 400), "resize"),
        ((1024, 1536), (400, 600), "resize"),
        ((1536, 1024), (601, 400), "resize"),  # 0.2 % off: same shape
        ((1536, 1024), (400, 600), "cover"),
        ((1024, 1024), (1024, 1024), "same"),
    ],
)
def test_match_geometry_rule(
    edited_size: tuple[int, int], original_size: tuple[int, int], expected: str
) -> None:
    edited = photo("astronaut.png").resize(edited_size)
    fitted = match_geometry(edited, original_size)
    assert fitted.size == original_size
    if expected == "same":
        assert fitted is edited
    elif expected == "resize":
        assert same_pixels(fitted, edited.resize(original_size, Image.Resampling.LANCZOS))
    else:
        assert not same_pixels(fitted, edited.resize(original_size, Image.Resampling.LANCZOS))


def test_square_edit_of_landscape_original_is_center_cropped_not_stretched() -> None:
    # 1024² cover-scaled to 600² then cropped to the middle 400 rows: the bands (140 px -> 82 px)
    # lie entirely in the 100 px cut from top and bottom.
    original = photo_bytes("coffee.png")
    region = Image.new("L", (600, 400), 255)
    data, _ = restore_outside(original, save(banded((1024, 1024), 140), "PNG"), region, feather=0)
    out = decode(data)
    assert out.size == (600, 400)
    red, green, blue = (channel.getextrema() for channel in out.split())
    assert red[1] < 40 and blue[1] < 40 and green[0] > 160


@pytest.mark.parametrize("edited_size", [(1024, 1024), (1536, 1024)])
def test_restore_outside_returns_original_geometry(edited_size: tuple[int, int]) -> None:
    original = photo_bytes("coffee.png")
    edited = photo("chelsea.png").resize(edited_size)
    region = grid_region((600, 400), 2, 2, [2, 4])
    data, _ = restore_outside(original, save(edited, "PNG", compress_level=1), region, feather=0)
    out = decode(data)
    assert out.size == (600, 400)
    fitted = match_geometry(edited, (600, 400))
    assert same_pixels(out.crop((300, 0, 600, 400)), fitted.crop((300, 0, 600, 400)))
    assert same_pixels(out.crop((0, 0, 300, 400)), photo("coffee.png").crop((0, 0, 300, 400)))


# --- previews --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "max_side", "expected"),
    [("astronaut.png", 256, (256, 256)), ("coffee.png", 1024, (600, 400)), ("rocket.jpg", 320, (320, 214))],
)
def test_tint_preview_is_a_downscaled_jpeg(name: str, max_side: int, expected: tuple[int, int]) -> None:
    size = photo(name).size
    region = Image.new("L", size, 0)
    region.paste(255, (0, 0, size[0] // 2, size[1] // 2))
    data = tint_preview(photo_bytes(name), region, max_side=max_side)
    assert sniff_mime(data) == "image/jpeg"
    preview = decode(data)
    assert preview.size == expected
    plain = photo(name).resize(expected)
    inside, outside = (expected[0] // 4, expected[1] // 4), (expected[0] * 3 // 4, expected[1] * 3 // 4)
    # Tinted area moves toward magenta (more red+blue than green); the rest stays close.
    r, g, b = preview.getpixel(inside)
    r0, g0, b0 = plain.getpixel(inside)
    assert (r - g) + (b - g) > (r0 - g0) + (b0 - g0) + 40
    assert (
        sum(abs(a - c) for a, c in zip(preview.getpixel(outside), plain.getpixel(outside), strict=True)) < 60
    )


def test_tint_preview_accepts_transparent_image() -> None:
    image = photo("chelsea.png").convert("RGBA")
    image.putalpha(128)
    data = tint_preview(save(image, "PNG"), grid_region(image.size, 3, 3, [5]))
    assert decode(data).size == image.size


def test_a_jpeg_shrunk_anyway_is_decoded_at_a_fraction_of_its_size_that_keeps_the_side_asked() -> None:
    """Pictures shown at a few hundred px decoded the whole photo first (40 MP: ~120 MB a picker click);
    libjpeg's DCT scaling decodes 1/2..1/8 of it, never below the side asked for, upright."""
    big = save(photo("rocket.jpg").resize((2560, 1600)), "JPEG", quality=90)
    assert decode(big).size == (2560, 1600)
    assert decode(big, at_least=320).size == (320, 200)  # 1/8
    assert decode(big, at_least=400).size == (640, 400)  # 1/4: 1/8 would leave 320 px
    assert decode(big, at_least=4000).size == (2560, 1600)
    sideways = with_orientation(photo("rocket.jpg").resize((2560, 1600)), "JPEG", 6)
    assert decode(sideways, at_least=320).size == (200, 320)
    assert decode(photo_bytes("coffee.png"), at_least=100).size == (600, 400)  # PNG: decoded whole


def test_the_preview_picture_is_an_upright_flat_rgb_png_no_larger_than_asked() -> None:
    image = photo("rocket.jpg").convert("RGBA")
    image.putalpha(0)  # all transparent: shown on the previews' mid grey
    picture = Image.open(io.BytesIO(imaging.preview_picture(with_orientation(image, "WEBP", 6), 320)))
    assert picture.format == "PNG" and picture.mode == "RGB"
    assert picture.height == 320 and picture.width < 320
    assert picture.getextrema() == tuple((v, v) for v in imaging.PREVIEW_BACKGROUND)


@pytest.mark.parametrize(
    ("name", "fmt"), [("rocket.jpg", "JPEG"), ("coffee.png", "PNG"), ("chelsea.png", "WEBP")]
)
def test_grid_and_tint_drawn_from_the_preview_picture_look_as_drawn_from_the_image(
    name: str, fmt: str
) -> None:
    """The picker and the preview are drawn from `preview_picture` (made once per /mask session), not
    from the image at each click: the same size, and the same picture but for resampling noise."""
    image = photo(name).convert("RGBA")
    image = image.resize((image.width * 4, image.height * 4), Image.Resampling.BICUBIC)
    image.putalpha(Image.linear_gradient("L").resize(image.size))  # some of it shows on grey
    data = save(image.convert("RGB") if fmt == "JPEG" else image, fmt)
    picture = imaging.preview_picture(data, imaging.PREVIEW_MAX_SIDE)
    assert max(decode(picture).size) == imaging.PREVIEW_MAX_SIDE
    region = grid_region(image.size, 3, 3, [1, 5])
    pairs = [
        (grid_overlay(picture, 3, 3, [2], max_side=768), grid_overlay(data, 3, 3, [2], max_side=768)),
        (tint_preview(picture, region), tint_preview(data, region)),
    ]
    for drawn, expected in pairs:
        assert decode(drawn).size == decode(expected).size
        difference = ImageStat.Stat(ImageChops.difference(decode(drawn), decode(expected))).mean
        assert max(difference) < 2, difference


@pytest.mark.parametrize(
    ("rows", "cols", "cells", "boxes"),
    [
        (3, 4, [1], [(0, 0, 150, 133)]),
        (3, 4, [12], [(450, 266, 600, 400)]),
        (3, 4, [1, 12], [(0, 0, 150, 133), (450, 266, 600, 400)]),
        (1, 2, [2], [(300, 0, 600, 400)]),
        (2, 2, [1, 2, 3], [(0, 0, 600, 200), (0, 200, 300, 400)]),
    ],
)
def test_grid_region_marks_exactly_the_chosen_cells(
    rows: int, cols: int, cells: list[int], boxes: list[tuple[int, int, int, int]]
) -> None:
    region = grid_region((600, 400), rows, cols, cells)
    expected = Image.new("L", (600, 400), 0)
    for box in boxes:
        expected.paste(255, box)
    assert region.mode == "L"
    assert same_pixels(region, expected)


def test_grid_cells_tile_the_image_without_gaps() -> None:
    region = grid_region((601, 401), 7, 9, range(1, 64))
    assert region.getextrema() == (255, 255)


@pytest.mark.parametrize("cell", [0, 13, -1])
def test_grid_region_refuses_cell_that_does_not_exist(cell: int) -> None:
    with pytest.raises(InvalidMask) as caught:
        grid_region((600, 400), 3, 4, [cell])
    assert "1 to 12" in caught.value.user_message


def test_grid_region_refuses_empty_grid() -> None:
    with pytest.raises(ValueError):
        grid_region((600, 400), 0, 3, [])


@pytest.mark.parametrize(
    ("name", "rows", "cols", "max_side", "expected"),
    [
        ("coffee.png", 3, 4, 1024, (600, 400)),
        ("astronaut.png", 4, 4, 300, (300, 300)),
        ("rocket.jpg", 2, 3, 500, (500, 334)),
    ],
)
def test_grid_overlay_draws_numbered_grid(
    name: str, rows: int, cols: int, max_side: int, expected: tuple[int, int]
) -> None:
    plain = decode(grid_overlay(photo_bytes(name), rows, cols, max_side=max_side))
    picked = decode(grid_overlay(photo_bytes(name), rows, cols, [1], max_side=max_side))
    assert plain.size == picked.size == expected
    photo_only = photo(name).resize(expected)
    assert ImageChops.difference(plain, photo_only).getbbox() is not None  # lines and numbers drawn
    # Selecting cell 1 tints cell 1 and nothing far from it.
    diff = ImageChops.difference(plain, picked).convert("L").point(lambda v: 255 if v > 24 else 0)
    left, top, right, bottom = diff.getbbox()
    assert left <= 4 and top <= 4  # the grid line is drawn over the tint's edge
    assert right <= expected[0] // cols + 4 and bottom <= expected[1] // rows + 4


@pytest.mark.parametrize(
    ("size", "rows", "cols", "expected"),
    [((16, 6200), 3, 3, (96, 768)), ((16, 3600), 4, 4, (128, 768)), ((3600, 16), 4, 4, (768, 128))],
)
def test_grid_overlay_of_a_thin_strip_gives_every_cell_room(
    size: tuple[int, int], rows: int, cols: int, expected: tuple[int, int]
) -> None:
    # Shrunk to 768 px, these are 2 or 3 px across: fewer pixels than the grid has columns (rows).
    strip = save(Image.new("RGB", size, (10, 200, 30)), "PNG")
    last = rows * cols
    plain = decode(grid_overlay(strip, rows, cols, max_side=768))
    picked = decode(grid_overlay(strip, rows, cols, [last], max_side=768))
    assert plain.size == picked.size == expected
    assert expected[0] // cols >= imaging.GRID_MIN_CELL_PX and expected[1] // rows >= imaging.GRID_MIN_CELL_PX
    # The last cell (bottom right) is tinted, and nothing far from it.
    diff = ImageChops.difference(plain, picked).convert("L").point(lambda v: 255 if v > 24 else 0)
    left, top, right, bottom = diff.getbbox()
    assert left >= expected[0] * (cols - 1) // cols - 4 and top >= expected[1] * (rows - 1) // rows - 4
    assert right >= expected[0] - 4 and bottom >= expected[1] - 4  # the grid line is drawn over its edge


# -- rules a mutation pass found untested: each test below fails if its rule is changed -----------


def test_an_upload_of_exactly_max_pixels_is_accepted():
    data = save(Image.new("RGB", (100, 50), (10, 120, 200)), "PNG")
    image = imaging.validate_image(data, max_bytes=MIB, max_pixels=100 * 50)
    assert (image.width, image.height) == (100, 50)


def test_files_of_one_message_share_its_upload_limit_less_the_overhead():
    limit = 8 * MIB
    assert imaging.share_of_upload(limit, 1) == limit - imaging.UPLOAD_OVERHEAD
    assert imaging.share_of_upload(limit, 4) == (limit - imaging.UPLOAD_OVERHEAD) // 4
    assert 4 * imaging.share_of_upload(limit, 4) + imaging.UPLOAD_OVERHEAD <= limit
    assert imaging.share_of_upload(1600, 1) == 1500  # a tiny limit keeps a sixteenth for the message


def test_the_feather_ramp_is_the_same_on_every_side_of_the_area() -> None:
    """Black kept outside a box, white made inside it: the blend rises the same way from each of the
    box's four edges (the work is cropped to the box plus a border, which must not change that)."""
    size, box, feather = (64, 48), (16, 12, 48, 36), 6
    region = Image.new("L", size, 0)
    region.paste(255, box)
    out, _ = restore_outside(
        save(Image.new("RGB", size, (0, 0, 0)), "PNG"),
        save(Image.new("RGB", size, (255, 255, 255)), "PNG"),
        region,
        feather=feather,
    )
    grey = Image.open(io.BytesIO(out)).convert("L")
    left, top, right, bottom = box
    across = [grey.getpixel((x, 24)) for x in range(left, right)]
    down = [grey.getpixel((32, y)) for y in range(top, bottom)]
    assert across == across[::-1] and down == down[::-1]
    assert across[: feather + 2] == down[: feather + 2]
    assert across[0] < 255 and across[feather + 1] == 255  # a ramp, then the edit at full strength
