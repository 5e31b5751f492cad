"""Image maths: validating uploads, masks, fitting results under Discord's limit, compositing.

Every function here is pure and BLOCKING (Pillow decodes and encodes on the calling thread), so the
app calls them through `asyncio.to_thread`. Nothing here knows about Discord or providers: bytes and
Pillow images in, bytes, Pillow images and small dataclasses out. User-facing failures are raised
as `InvalidImage` / `InvalidMask` with a code; their text comes from `bot.messages`. Pillow's
exception text is never shown (it is logged at debug level).

Why one module of ~1000 lines: STYLE.md keeps every blocking Pillow call in one place, and validation,
masks, fitting and compositing share its decoders, bomb guards and mode tables. The seams for a later
split are the section headers (validate, masks, fit, restore), each with its own tests file section.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from PIL import (
    ExifTags,
    Image,
    ImageChops,
    ImageCms,
    ImageDraw,
    ImageFilter,
    ImageFont,
    ImageMath,
    ImageOps,
    ImageStat,
)

from bot import messages
from bot.errors import InvalidImage, InvalidMask, RetouchError
from bot.imagemeta import png_pixels_intact, strip_metadata
from bot.providers.base import InputImage

log = logging.getLogger(__name__)

# --- Uploads -------------------------------------------------------------------------------------
ACCEPTED_MIMES = ("image/png", "image/jpeg", "image/webp")
MIN_SIDE = 16  # px; smaller inputs are icons or mistakes, and the models need something to look at
# Formats whose EXIF orientation we apply (see validate_image). MPO is how Pillow opens a JPEG that
# carries extra pictures (phone gain maps, depth maps, stereo pairs); frame 0 is the photo itself.
ORIENTED_FORMATS = ("JPEG", "MPO", "WEBP")
ANIMATED_FORMATS = ("PNG", "WEBP")  # APNG and animated WebP; MPO's extra frames are not animation
REORIENTED_JPEG_QUALITY = 95  # re-encoding an upright photo at 95 is visually lossless
EIGHT_BIT_STRIP_ROWS = 256  # rows of a 16-bit grey upload scaled at a time (40 MP: ~6 MB per 32-bit strip)

# --- fit_to_limit ----------------------------------------------------------------------------------
FIT_WEBP_QUALITIES = (90, 80, 70, 60, 50)
FIT_JPEG_QUALITIES = (85, 70, 55, 40)  # only for images without transparency
FIT_SCALE_STEP = 0.8  # each downscale keeps at most 80 % of the sides
FIT_SCALE_SAFETY = 0.95  # bytes shrink a little slower than pixels: aim slightly below the estimate
FIT_MIN_SIDE = 64  # px; if a 64 px image cannot fit, the limit is absurd
# WebP q50 is 35-38 % of q90's size on our test photos: a limit under that share of the q90 size
# means the bottom rung is worth probing first (it only changes how fast the answer is found).
FIT_LADDER_RATIO = 0.35
FIT_WEBP_METHOD = 2  # libwebp effort: within ~5 % of the default (4) in size, at under half the time
WEBP_MAX_SIDE = 16383  # libwebp cannot encode larger sides
JPEG_MAX_SIDE = 65500  # libjpeg's limit
_MAX_SIDE = {"webp": WEBP_MAX_SIDE, "jpeg": JPEG_MAX_SIDE}
RESIZE_REDUCING_GAP = 3.0  # lets Pillow pre-shrink by whole factors; indistinguishable from plain LANCZOS
DEFAULT_WEBP_QUALITY = 90
DEFAULT_JPEG_QUALITY = 90
DEFAULT_PNG_COMPRESS_LEVEL = 6  # zlib default; flat masks need it (4x smaller than level 1)
RESULT_PNG_COMPRESS_LEVEL = 1  # photos: ~2 % larger than level 6 at a third of the time
# libwebp's lossless effort (0-100) with FIT_WEBP_METHOD: on a 2.8 MP photo 0.35 s and 1.3 MB, against
# 0.7 s and 1.2 MB at 50 and 1.7 MB at 0 (PNG at RESULT_PNG_COMPRESS_LEVEL: 2.3 MB).
WEBP_LOSSLESS_EFFORT = 20
JPEG_FLATTEN_BACKGROUND = (255, 255, 255)  # JPEG has no alpha; transparent pixels become white

# --- Masks -----------------------------------------------------------------------------------------
MASK_THRESHOLD = 128  # alpha below / luminance at or above this marks a pixel
MASK_MIN_COVERAGE = 0.001  # fewer marked pixels than this means "nothing marked"
MASK_MAX_COVERAGE = 0.999  # more than this means "everything marked"
MASK_ASPECT_TOLERANCE = 0.02  # a mask may differ from the image's shape by rounding plus 2 %
OPENAI_MASK_MAX_BYTES = 4_000_000  # OpenAI refuses masks of 4 MB or more

# --- Compositing -----------------------------------------------------------------------------------
ASPECT_TOLERANCE = 0.01  # edited and original "have the same shape" within 1 %
FEATHER_PX = 6

# --- Previews --------------------------------------------------------------------------------------
PREVIEW_MAX_SIDE = 1024
PREVIEW_JPEG_QUALITY = 85
PREVIEW_BACKGROUND = (128, 128, 128)  # transparent areas are shown on mid grey
TINT_RGB = (255, 0, 170)  # magenta reads as "selected" on skin, sky and foliage alike
TINT_OPACITY = 110  # 0..255
OUTLINE_RGB = (255, 0, 170)
GRID_LINE_RGB = (255, 255, 255)
GRID_SHADOW_RGB = (0, 0, 0)
LABEL_RGB = (255, 255, 255)
LABEL_STROKE_RGB = (0, 0, 0)
LABEL_SIZE_FRACTION = 0.35  # of the smaller cell side
LABEL_MIN_PX = 12
LABEL_MAX_PX = 96
# A grid cell on the picker is at least this many pixels each way, room for its outline and number.
# Without it a very long, thin image shrinks to a strip narrower than its columns (or rows).
GRID_MIN_CELL_PX = 32

_PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_FORMAT_MIMES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"}
_HEIF_BRANDS = {b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_I_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


# === Sniffing and decoding =========================================================================


def sniff_mime(data: bytes) -> str | None:
    """The MIME type of `data` from its magic bytes, or None. Pure, BLOCKING (trivially cheap).

    Knows the accepted types (PNG, JPEG, WebP) and the ones people commonly upload by mistake
    (GIF, TIFF, BMP, HEIC/HEIF/AVIF, PDF) so errors can name what the file really is.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return "image/tiff"
    if data[:2] == b"BM" and len(data) >= 26:
        return "image/bmp"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    if data[4:8] == b"ftyp":
        return _sniff_ftyp(data)
    return None


def _sniff_ftyp(data: bytes) -> str | None:
    """HEIF-family files share one ISO-BMFF box; the brands say whether it is HEIC, AVIF or HEIF."""
    box_end = min(len(data), max(16, int.from_bytes(data[:4], "big")))
    # Major brand, then the compatible brands after the 4-byte minor version.
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, box_end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "image/avif"
    if brands & _HEIC_BRANDS:
        return "image/heic"
    if brands & _HEIF_BRANDS:
        return "image/heif"
    return None


def decode(data: bytes, *, at_least: int | None = None) -> Image.Image:
    """Open and fully decode `data`, turned upright for JPEG/WebP EXIF orientation. BLOCKING.

    For bytes we produced or already validated (provider output, `InputImage.data`); untrusted
    uploads go through `validate_image` / `normalize_mask` first. Pillow errors propagate as is.
    With `at_least` (for a picture shrunk to that many px anyway), a JPEG may be decoded at 1/2, 1/4 or
    1/8 of its size while its longer side keeps `at_least` px: libjpeg's DCT scaling, a 40 MP photo
    then takes ~8 MB instead of 120.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        _refuse_bomb(image.size, None)
        if at_least is not None:
            image.draft(None, _shrunk_to(image.size, at_least))  # a no-op for other formats
        image.load()
    if image.format in ORIENTED_FORMATS:
        ImageOps.exif_transpose(image, in_place=True)
    return image


def _shrunk_to(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """`size` scaled so its longer side is `longest` (rounded up, never enlarged)."""
    scale = min(1.0, longest / max(size))
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def whole_image_format(data: bytes) -> str | None:
    """ "png", "jpeg" or "webp" when `data` is such an image and every pixel of it decodes, else None.
    BLOCKING (decodes it, except a plain 8-bit PNG, whose rows are only inflated: `png_pixels_intact`).

    For a provider's result: a cut-off answer still starts with the magic bytes `sniff_mime` reads.
    Pillow's bomb limit applies, as for `decode`, and its `LOAD_TRUNCATED_IMAGES` must stay off (the
    default; nothing here sets it), or a cut-off file would decode with its missing rows painted grey.
    The decoded picture is dropped before returning. Never raises.
    """
    mime = sniff_mime(data)
    if mime not in ACCEPTED_MIMES:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # formats= pins the decoder to the sniffed type, as for uploads; the header is read either way.
            with Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[mime]]) as image:
                _refuse_bomb(image.size, None)
                if mime != "image/png" or not png_pixels_intact(data):
                    image.load()
    except Exception:  # truncated data, bad CRCs, broken entropy coding, a bomb: none of it can be sent
        log.debug("a %s result does not decode", mime, exc_info=True)
        return None
    return mime.removeprefix("image/")


def _refuse_bomb(size: tuple[int, int], limit: int | None) -> None:
    """Raise Pillow's `DecompressionBombError` for more pixels than `limit` or Pillow's own limit.

    The warning filter set around an open only makes Pillow's check stricter where it holds: it is
    process-wide state that `catch_warnings` swaps, so a decode in another thread can restore the old
    filters in the middle of this one's. This check on the header depends on nothing shared."""
    caps = [cap for cap in (limit, Image.MAX_IMAGE_PIXELS) if cap is not None]
    pixels = size[0] * size[1]
    if caps and pixels > min(caps):
        raise Image.DecompressionBombError(f"{pixels} pixels, over the limit of {min(caps)}")


def encode(
    image: Image.Image,
    fmt: str,
    quality: int | None = None,
    *,
    compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL,
    lossless: bool = False,
) -> bytes:
    """Encode `image` as png, jpeg (or jpg) or webp. Pure, BLOCKING.

    Converts modes the format cannot store: JPEG flattens transparency onto white, WebP keeps alpha
    as RGBA. `quality` applies to JPEG/WebP (defaults 90); `compress_level` (zlib 0-9) to PNG.
    `lossless` makes WebP keep every pixel exactly, even the colour under a transparent one (`quality`
    is then ignored); PNG is always lossless and JPEG never is.
    Keeps the ICC profile so colours do not shift, when it describes the pixels written (`_with_profile`:
    a grey original's grey profile on RGB pixels is applied instead); drops EXIF (GPS, and an orientation
    we already applied).
    """
    fmt = normalize_format(fmt)
    # Pillow copies some metadata from `image.info` unless told otherwise (a JPEG's comment, XMP):
    # say "none" explicitly, so nothing private survives a re-encode.
    extra: dict[str, object] = {"exif": b"", "xmp": b"", "comment": b""}
    buffer = io.BytesIO()
    if fmt == "jpeg":
        jpeg_image = _flatten(image, JPEG_FLATTEN_BACKGROUND) if _has_alpha(image) else image
        if jpeg_image.mode not in ("L", "RGB"):
            jpeg_image = jpeg_image.convert("RGB")
        jpeg_image, icc = _with_profile(jpeg_image)
        q = DEFAULT_JPEG_QUALITY if quality is None else quality
        jpeg_image.save(buffer, "JPEG", quality=q, optimize=True, icc_profile=icc, **extra)
    elif fmt == "webp":
        webp_image, icc = _with_profile(image.convert("RGBA" if _has_alpha(image) else "RGB"))
        if lossless:
            # exact: libwebp would otherwise rewrite the colour of fully transparent pixels.
            options: dict[str, object] = {"lossless": True, "exact": True, "quality": WEBP_LOSSLESS_EFFORT}
        else:
            options = {"quality": DEFAULT_WEBP_QUALITY if quality is None else quality}
        webp_image.save(buffer, "WEBP", method=FIT_WEBP_METHOD, icc_profile=icc, **options, **extra)
    else:
        png_image = image
        if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
            png_image = image.convert("RGBA" if _has_alpha(image) else "RGB")
        png_image, icc = _with_profile(png_image)
        # icc_profile=b"" (none) must be said: PNG's encoder would otherwise take the one in `info`.
        png_image.save(buffer, "PNG", compress_level=compress_level, exif=b"", icc_profile=icc)
    return buffer.getvalue()


# The ICC colour space (the signature at bytes 16-20 of a profile's header) of each mode `encode` writes.
_ICC_SPACE_OF_MODE = {
    "1": b"GRAY",
    "L": b"GRAY",
    "LA": b"GRAY",
    "I": b"GRAY",
    "I;16": b"GRAY",
    "P": b"RGB ",
    "RGB": b"RGB ",
    "RGBA": b"RGB ",
}


def _with_profile(image: Image.Image) -> tuple[Image.Image, bytes]:
    """`image` and the ICC profile to write with it (b"" for none): never one whose colour space is not
    the pixels' (PNG forbids it; ImageCms cannot build a transform from it, and colour-managed viewers
    either ignore it or show wrong colours).

    The one mismatch we make ourselves is a grey profile (Photoshop's "Dot Gain 20%") on RGB(A) pixels:
    a greyscale original widened to RGB by an edit, a transparent flatten or `fit_to_limit`. Its pixels
    are then converted through the profile to sRGB (`_grey_profile_to_srgb`) and written untagged, as
    `_cmyk_to_rgb` does, rather than only losing the profile: a viewer shows each untagged pixel as sRGB,
    so a restored result's outside pixels stay exactly what a colour-managed viewer showed of the
    original. Any other mismatch (never made here) only drops the profile."""
    icc = image.info.get("icc_profile") or b""
    space = icc[16:20]
    if not icc or space == _ICC_SPACE_OF_MODE.get(image.mode):
        return image, icc
    if space == b"GRAY" and image.mode in ("RGB", "RGBA"):
        return _grey_profile_to_srgb(image, icc), b""
    log.debug("dropping a %r ICC profile that cannot describe %s pixels", space, image.mode)
    return image, b""


def _grey_profile_to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    """RGB(A) pixels whose numbers are in a grey profile's terms, as sRGB. BLOCKING.

    Each channel goes through the profile's tone curve: a table of what ImageCms makes of every grey
    level, applied per channel. A pixel with R = G = B (every pixel kept from a grey original) becomes
    exactly what ImageCms makes of that grey; colours an edit added follow the same curve, as the model
    answered in the original's numbers. An unusable profile leaves the pixels as they are (sRGB assumed).
    """
    levels = Image.frombytes("L", (256, 1), bytes(range(256)))
    try:
        converted = ImageCms.profileToProfile(
            levels,
            ImageCms.ImageCmsProfile(io.BytesIO(icc)),
            ImageCms.createProfile("sRGB"),
            outputMode="RGB",
        )
    except (ImageCms.PyCMSError, OSError, ValueError):
        log.debug("grey profile unusable; writing the pixels untagged", exc_info=True)
        return image
    if not isinstance(converted, Image.Image):
        return image
    rgb = converted.tobytes()  # R, G, B of level 0, then of level 1, ...
    table = list(rgb[0::3]) + list(rgb[1::3]) + list(rgb[2::3])
    if image.mode == "RGBA":
        table += range(256)  # alpha unchanged
    return image.point(table)


def normalize_format(fmt: str) -> str:
    """An output format as the encoders name it (`jpg` is `jpeg`); ValueError for one they lack."""
    fmt = fmt.lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in _FORMAT_MIMES:
        raise ValueError(f"unsupported output format {fmt!r}")
    return fmt


def _has_alpha(image: Image.Image) -> bool:
    """Whether the image carries transparency data at all (channel or palette/tRNS)."""
    return image.mode in _ALPHA_MODES or image.has_transparency_data


def _lowest(band: Image.Image) -> float:
    """The smallest value of a single-band image (Pillow types `getextrema` for every mode)."""
    lowest = band.getextrema()[0]
    return float(lowest) if isinstance(lowest, int | float) else float(min(lowest))


def _is_transparent(image: Image.Image) -> bool:
    """Whether any pixel is actually less than opaque (an all-255 alpha channel does not count)."""
    return _has_alpha(image) and _lowest(_alpha(image)) < 255


def _alpha(image: Image.Image) -> Image.Image:
    """The alpha channel as mode L (palette and tRNS transparency expanded)."""
    return image.getchannel("A") if image.mode in ("RGBA", "LA") else image.convert("RGBA").getchannel("A")


def _flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, background)
    flat.paste(rgba, mask=rgba.getchannel("A"))
    if "icc_profile" in image.info:  # a grey one too: `encode` applies it to these RGB pixels
        flat.info["icc_profile"] = image.info["icc_profile"]
    return flat


# === Validating uploads ============================================================================


def validate_image(data: bytes, *, max_bytes: int, max_pixels: int, label: str = "image") -> InputImage:
    """Check an uploaded image and return it as an `InputImage`. Pure, BLOCKING (decodes it fully;
    a plain 8-bit PNG only has its rows inflated, which proves the same: `png_pixels_intact`).

    Raises `InvalidImage` (message names `label`) when the file is empty or over `max_bytes`, is not
    a PNG, JPEG or WebP by its bytes (whatever its name), declares more than `max_pixels` pixels
    (checked from the header before any pixel memory is allocated; Pillow's own bomb limit,
    `Image.MAX_IMAGE_PIXELS`, also applies), has a side under `MIN_SIDE`, is animated, or is
    truncated/corrupt.

    Returns the original bytes with their metadata removed (EXIF with its GPS position, XMP, IPTC,
    comments, text chunks: `bot.imagemeta`, lossless, the ICC profile kept), or the original object
    itself when there was none, so nothing private reaches a provider. Re-encoded instead:
      * a JPEG/WebP with an EXIF orientation other than 1 is turned upright so the model sees what
        the user sees: JPEG q95 without transparency (a photo: PNG would be 5-10x larger), else PNG;
      * a CMYK JPEG becomes RGB (through its ICC profile when it has one) as JPEG q95, since the
        providers expect RGB;
      * a file whose container cannot be walked for metadata is re-encoded from its pixels.
    Each is shrunk with `fit_to_limit` if that went over `max_bytes`. PNG orientation tags (rare,
    honoured inconsistently by viewers) are not applied.
    """
    image, mime = _open_checked(
        data,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        label=label,
        error=InvalidImage,
        min_side=MIN_SIDE,
        pixels=False,
    )
    orientation = _orientation(image)
    if image.mode == "CMYK":
        upright = ImageOps.exif_transpose(image) if orientation not in (None, 1) else image
        return _reencoded(_cmyk_to_rgb(upright), "jpeg", max_bytes)
    if image.mode in _I_MODES:
        # 16-bit grey: every later step (the safety check's copy, the preview, the masked restore)
        # converts with Pillow, which clips values above 255 to white. Scaled to 8 bits once, here,
        # so the provider, the safety check and the restore all see the same picture.
        upright = ImageOps.exif_transpose(image) if orientation not in (None, 1) else image
        return _reencoded(_eight_bit(upright), "png", max_bytes)
    if orientation in (None, 1):
        try:
            clean = strip_metadata(data, mime)
        except ValueError:
            log.debug("re-encoding %s: its container could not be walked", label, exc_info=True)
            fmt = "png" if mime == "image/png" or _is_transparent(image) else "jpeg"
            return _reencoded(image, fmt, max_bytes)
        return InputImage(data=clean, mime=mime, width=image.width, height=image.height)
    upright = ImageOps.exif_transpose(image)
    return _reencoded(upright, "png" if _is_transparent(upright) else "jpeg", max_bytes)


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grey picture as 8-bit L, scaled (its high byte), ICC kept; as LA when
    a tRNS colour key makes one grey level transparent.

    Converted `EIGHT_BIT_STRIP_ROWS` rows at a time: each step works on 32-bit "I" pixels, and whole
    40 MP pictures held three of those (160 MB each) at once for a 92 KB upload."""
    # The key is a 16-bit level: kept as is on the 8-bit picture it named an impossible level (PNG
    # writes it anyway), so the keyed pixels turned opaque. Scaling it would also key every level
    # sharing its high byte; an alpha band keeps exactly the pixels that were transparent.
    key = image.info.get("transparency")
    keyed = isinstance(key, int)
    out = Image.new("LA" if keyed else "L", image.size)
    for top in range(0, image.height, EIGHT_BIT_STRIP_ROWS):
        strip = image.crop((0, top, image.width, min(image.height, top + EIGHT_BIT_STRIP_ROWS)))
        wide = strip.convert("I")
        grey = wide.point(lambda v: v * (1 / 256)).convert("L")
        if keyed:
            alpha = ImageMath.lambda_eval(lambda a: (a["m"] != key) * 255, m=wide).convert("L")
            grey = Image.merge("LA", (grey, alpha))
        out.paste(grey, (0, top))
    if "icc_profile" in image.info:
        out.info["icc_profile"] = image.info["icc_profile"]
    return out


def _reencoded(image: Image.Image, fmt: str, max_bytes: int) -> InputImage:
    """`image` encoded as `fmt` (JPEG at q95; EXIF dropped, ICC kept) and fitted under `max_bytes`."""
    out, fmt = fit_to_limit(encode(image, fmt, REORIENTED_JPEG_QUALITY), fmt, max_bytes)
    with Image.open(io.BytesIO(out)) as header:  # reads the header only
        width, height = header.size
    return InputImage(data=out, mime=_FORMAT_MIMES[fmt], width=width, height=height)


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """A CMYK picture as RGB: through its own ICC profile to sRGB when it has a usable one."""
    icc = image.info.get("icc_profile")
    rgb: Image.Image | None = None
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(
                image, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            rgb = converted if isinstance(converted, Image.Image) else None
        except (ImageCms.PyCMSError, OSError, ValueError):
            log.debug("CMYK profile unusable; converting without it", exc_info=True)
    if rgb is None:
        rgb = image.convert("RGB")
    rgb.info.pop("icc_profile", None)  # a CMYK profile would misdescribe RGB pixels; sRGB is assumed
    rgb.info.pop("exif", None)
    return rgb


def _orientation(image: Image.Image) -> int | None:
    if image.format not in ORIENTED_FORMATS:
        return None
    try:
        return image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # a malformed EXIF block should not sink an otherwise fine photo
        log.debug("ignoring unreadable EXIF", exc_info=True)
        return None


def _open_checked(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    label: str,
    error: type[RetouchError],
    min_side: int,
    pixels: bool = True,
    before_decode: Callable[[Image.Image], None] | None = None,
) -> tuple[Image.Image, str]:
    """Run every upload check and return the image with its sniffed MIME type, fully decoded.

    With `pixels=False` a PNG whose rows `png_pixels_intact` proves whole is returned opened but not
    decoded (Pillow decodes it if its pixels are ever used): the check costs less than half the
    decode, and the upload check of a plain PNG needs no pixel. The checks are the same either way.
    `before_decode` is the caller's own check of the opened image (its header), run before any decode.
    """
    name = f"`{label}`"
    if not data:
        raise error(messages.empty_file(name), code="empty")
    if len(data) > max_bytes:
        raise error(messages.too_large(name, len(data), max_bytes), code="too_large")
    mime = sniff_mime(data)
    if mime not in ACCEPTED_MIMES:
        raise error(messages.wrong_type(name, mime), code="unsupported_type")
    # Pillow refuses more than its own bomb limit whatever `max_pixels` says (bot.config caps
    # MAX_INPUT_MEGAPIXELS to it): the message names the limit that applies.
    if Image.MAX_IMAGE_PIXELS is not None:
        max_pixels = min(max_pixels, Image.MAX_IMAGE_PIXELS)
    too_many_pixels = error(messages.too_many_pixels(name, max_pixels), code="too_many_pixels")
    corrupt = error(messages.corrupt(name), code="corrupt")
    # catch_warnings swaps a process-wide filter list, which other threads may restore under this one:
    # the check that counts is `_refuse_bomb` on the header, which depends on no shared state.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            # formats= pins the decoder to the sniffed type, so a polyglot cannot pick another one.
            image = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[mime]])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise too_many_pixels from None
        except Exception:  # Pillow raises a zoo of types on malformed headers; all mean "corrupt"
            log.debug("could not open %s", label, exc_info=True)
            raise corrupt from None
        width, height = image.size
        try:
            _refuse_bomb(image.size, max_pixels)
        except Image.DecompressionBombError:
            raise too_many_pixels from None
        if min(width, height) < min_side:
            raise error(messages.too_small(name, width, height, min_side), code="too_small")
        with _decode_errors(label, too_many_pixels, corrupt):
            frames = getattr(image, "n_frames", 1) if image.format in ANIMATED_FORMATS else 1
        if frames > 1:
            raise error(messages.animated(name, frames), code="animated")
        if before_decode is not None:
            before_decode(image)
        with _decode_errors(label, too_many_pixels, corrupt):
            if pixels or mime != "image/png" or not png_pixels_intact(data):
                image.load()
    return image, mime


@contextlib.contextmanager
def _decode_errors(label: str, too_many_pixels: RetouchError, corrupt: RetouchError) -> Iterator[None]:
    """Pillow's failures while reading pixels, as the upload errors a member is shown."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_many_pixels from None
    except Exception:  # truncated data, bad CRCs, broken entropy coding, ...
        log.debug("could not decode %s", label, exc_info=True)
        raise corrupt from None


# === Fitting under an upload limit =================================================================


# Room kept in one upload for the message around its files (its JSON, an embed, the multipart framing).
UPLOAD_OVERHEAD = 16 * 1024


def share_of_upload(limit: int, files: int) -> int:
    """Bytes each of `files` files may take for all of them, and their message, to fit one upload of
    `limit` bytes: Discord's limit bounds the whole request, not each file."""
    room = limit - min(UPLOAD_OVERHEAD, limit // 16)
    return max(1, room // max(1, files))


# How `fit_result` made an image fit: unchanged, re-encoded with the same pixels, or made smaller.
AS_IS, LOSSLESS, SMALLER = "as is", "lossless", "smaller"


def fit_result(data: bytes, fmt: str, limit: int, *, exact: bool) -> tuple[bytes, str, str]:
    """`fit_to_limit`, trying the same pixels as lossless WebP first when `exact` (a restored result,
    not JPEG): the data, its format, and how it was fitted (`AS_IS`, `LOSSLESS`, `SMALLER`). BLOCKING.
    A masked result's outside pixels are the original's to the bit: the lossy rungs of `fit_to_limit`
    would change every one of them."""
    fmt = normalize_format(fmt)
    if len(data) <= limit:
        return data, fmt, AS_IS
    if exact and fmt != "jpeg":
        source = decode(data)
        if max(source.size) <= WEBP_MAX_SIDE:
            lossless = encode(source, "webp", lossless=True)
            if len(lossless) <= limit:
                return lossless, "webp", LOSSLESS
    smaller, smaller_fmt = fit_to_limit(data, fmt, limit)
    return smaller, smaller_fmt, SMALLER


def fit_to_limit(data: bytes, fmt: str, limit: int) -> tuple[bytes, str]:
    """Return (`data`, `fmt`) unchanged if it fits in `limit` bytes, else a smaller encoding. BLOCKING.

    A finished, paid edit must never be lost to Discord's upload limit. Quality goes first, pixels
    last: WebP at qualities `FIT_WEBP_QUALITIES` (keeps alpha), then, only without transparency,
    JPEG at `FIT_JPEG_QUALITIES`; if nothing fits, downscale (LANCZOS, from the one decoded
    original, never cumulatively) by at least `FIT_SCALE_STEP` per round, jumping straight to the
    scale the byte ratio predicts, and try again. At each size the best WebP quality that fits is
    found with the top rung, then bisection (probing the bottom rung first when the top rung's
    size says it is unlikely to fit): 1-4 WebP encodes per size tried. `fmt` is png, jpeg or webp (jpg
    accepted); the returned format is one of those. Raises ValueError only when even a
    `FIT_MIN_SIDE`-pixel version does not fit (an absurd limit).
    """
    fmt = normalize_format(fmt)
    if len(data) <= limit:
        return data, fmt
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    source = decode(data)
    transparent = _is_transparent(source)
    target_mode = "RGBA" if transparent else "RGB"
    if source.mode != target_mode:
        source = source.convert(target_mode)
    longest = max(source.size)
    min_scale = min(1.0, FIT_MIN_SIDE / longest)
    scale = min(1.0, WEBP_MAX_SIDE / longest)
    while True:
        size = _scaled(source.size, scale)
        frame = (
            source
            if size == source.size
            else source.resize(size, Image.Resampling.LANCZOS, reducing_gap=RESIZE_REDUCING_GAP)
        )
        found, smallest = _best_encoding(frame, transparent, limit)
        if found is not None:
            return found
        if scale <= min_scale:
            raise ValueError(f"cannot fit a {FIT_MIN_SIDE} px image into {limit} bytes")
        # Encoded size grows roughly with pixel count: predict the scale that fits at the lowest
        # quality, and never take a step smaller than FIT_SCALE_STEP.
        predicted = scale * math.sqrt(limit / smallest) * FIT_SCALE_SAFETY
        scale = max(min_scale, min(scale * FIT_SCALE_STEP, predicted))


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _best_encoding(frame: Image.Image, transparent: bool, limit: int) -> tuple[tuple[bytes, str] | None, int]:
    """The highest-quality rung that fits at this size, and the smallest byte count seen."""
    qualities = FIT_WEBP_QUALITIES
    sizes: dict[int, int] = {}

    def attempt(index: int) -> bytes | None:
        out = encode(frame, "webp", qualities[index])
        sizes[index] = len(out)
        return out if len(out) <= limit else None

    if (best := attempt(0)) is not None:  # the common case: the top rung fits
        return (best, "webp"), sizes[0]
    lo, hi = 1, len(qualities) - 1
    if limit < sizes[0] * FIT_LADDER_RATIO:
        # The bottom rung is probably too big as well: one encode confirms it and skips the ladder.
        best = attempt(hi)
        if best is None:
            return _jpeg_rung(frame, transparent, limit, min(sizes.values()))
        hi -= 1
    while lo <= hi:  # bisect for the best fitting rung: sizes fall as quality falls
        mid = (lo + hi) // 2
        if (out := attempt(mid)) is not None:
            best, hi = out, mid - 1
        else:
            lo = mid + 1
    if best is not None:
        return (best, "webp"), min(sizes.values())
    return _jpeg_rung(frame, transparent, limit, min(sizes.values()))


def _jpeg_rung(
    frame: Image.Image, transparent: bool, limit: int, smallest: int
) -> tuple[tuple[bytes, str] | None, int]:
    """First JPEG rung that fits (never for transparent images), and the smallest size seen."""
    if transparent:
        return None, smallest
    # On grainy content JPEG at 40-55 can undercut WebP at 50, and JPEG encodes take milliseconds
    # even at 16 MP, so trying them before giving up pixels is cheap.
    for quality in FIT_JPEG_QUALITIES:
        out = encode(frame, "jpeg", quality)
        smallest = min(smallest, len(out))
        if len(out) <= limit:
            return (out, "jpeg"), smallest
    return None, smallest


# === Masks =========================================================================================


@dataclass(frozen=True, slots=True, eq=False)  # identity equality: comparing pixels is costly
class NormalizedMask:
    """Where to edit, at the image's exact size. `region` is mode L: 255 = edit, 0 = keep.

    Treat `region` as read-only: the dataclass is frozen, the Pillow image inside it is not.
    """

    region: Image.Image
    coverage: float  # fraction of pixels marked for editing
    # Read by its transparency, with everything opaque in it light: white strokes on a transparent
    # layer, which a member may well have meant as "change here" (the preview and result say so).
    light_on_clear: bool = False

    def openai_png(self) -> bytes:
        """RGBA PNG, alpha 0 where to edit and 255 elsewhere (OpenAI's convention). BLOCKING.

        Raises `InvalidMask` in the unlikely case it reaches OpenAI's 4 MB cap (only noise-like
        masks do; flat shapes compress to a few kB).
        """
        black = Image.new("L", self.region.size, 0)
        rgba = Image.merge("RGBA", (black, black, black, ImageOps.invert(self.region)))
        out = encode(rgba, "png")
        if len(out) >= OPENAI_MASK_MAX_BYTES:
            raise InvalidMask(messages.MASK_TOO_DETAILED, code="mask_too_detailed")
        return out

    def white_edit_png(self) -> bytes:
        """L-mode PNG, white where to edit and black elsewhere. BLOCKING."""
        return encode(self.region, "png")


def mask_for_convention(mask: NormalizedMask, convention: str) -> bytes:
    """Mask PNG in a provider's convention: "alpha" (transparent = edit) or "white" (white = edit)."""
    if convention == "alpha":
        return mask.openai_png()
    if convention == "white":
        return mask.white_edit_png()
    raise ValueError(f"unknown mask convention {convention!r}")


def normalize_mask(
    mask_data: bytes,
    image_size: tuple[int, int],
    *,
    invert: bool = False,
    max_bytes: int,
    max_pixels: int,
) -> NormalizedMask:
    """Turn an uploaded mask of any mode and size into a `NormalizedMask` for `image_size`. BLOCKING.

    The file is checked like an upload (type by bytes, size, pixels, bombs, animation, corruption;
    no minimum side, so a 2×2 sketch of quadrants is fine). Rule: if the mask has meaningful
    transparency (any alpha below 128, palette transparency included), transparent pixels mark the
    edit; otherwise luminance >= 128 (white) does; 16-bit greys are judged on their full range.
    `invert` flips the result. Thresholding happens at the mask's own size, then the region is
    resized to `image_size` with NEAREST. Raises `InvalidMask` when the mask's shape differs from
    the image's beyond rounding (it was drawn for another picture: read from its header, so such a
    mask is never decoded), or when nothing or everything is marked.
    """

    def drawn_for_this_image(opened: Image.Image) -> None:
        upright = _upright_size(opened)
        if not _same_shape(upright, image_size):
            raise InvalidMask(messages.mask_shape(upright, image_size), code="mask_shape")

    image, _ = _open_checked(
        mask_data,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        label="mask",
        error=InvalidMask,
        min_side=1,
        before_decode=drawn_for_this_image,
    )
    if image.format in ORIENTED_FORMATS:
        ImageOps.exif_transpose(image, in_place=True)
    alpha = _read_alpha(image)
    region = _edit_region(image, alpha)
    if region.size != image_size:
        region = region.resize(image_size, Image.Resampling.NEAREST)
    light = alpha is not None and _light_on_clear(image, alpha)
    return replace(mask_from_region(region, invert=invert), light_on_clear=light)


def stored_mask(region_png: bytes, image_size: tuple[int, int], *, invert: bool = False) -> NormalizedMask:
    """A job's stored region (`NormalizedMask.white_edit_png`, written by the bot) read back. BLOCKING.

    Not a member's upload, so not checked as one: its 8-bit PNG can be larger than the 1-bit mask the
    member sent, and refusing it by MAX_INPUT_MB failed a job after the provider was paid. It is bounded
    instead by what the bot wrote: exactly `image_size` (an image that passed the upload checks), checked
    from the header before any pixel is decoded. Raises `ValueError` for any other file (another size,
    or one Pillow cannot read: empty, truncated, damaged), `InvalidMask` as `mask_from_region` does.
    """
    try:
        image = Image.open(io.BytesIO(region_png), formats=["PNG"])
        if image.size != image_size:
            raise ValueError(f"stored region is {image.size}, not the image's {image_size}")
        image.load()
    except ValueError:
        raise
    except Exception as exc:  # Pillow's zoo (UnidentifiedImageError, truncated data, bad CRCs, ...)
        raise ValueError(f"stored region is unreadable ({type(exc).__name__}: {exc})") from exc
    return mask_from_region(image, invert=invert)


def mask_from_region(region: Image.Image, *, invert: bool = False) -> NormalizedMask:
    """Wrap a region (mode L, >= 128 = edit) as a `NormalizedMask`, refusing empty/full ones. BLOCKING."""
    region = _binarize(region)
    if invert:
        region = ImageOps.invert(region)
    coverage = region.histogram()[255] / (region.width * region.height)
    if coverage < MASK_MIN_COVERAGE:
        raise InvalidMask(messages.MASK_EMPTY, code="mask_empty")
    if coverage > MASK_MAX_COVERAGE:
        raise InvalidMask(messages.MASK_FULL, code="mask_full")
    return NormalizedMask(region=region, coverage=coverage)


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """The size `image` has once its EXIF orientation is applied (read from its header)."""
    width, height = image.size
    return (height, width) if _orientation(image) in _SIDEWAYS else (width, height)


_SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations that turn the picture a quarter: width and height swap


def _same_shape(mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """Same aspect ratio, allowing a pixel of rounding on the mask plus MASK_ASPECT_TOLERANCE."""
    (mw, mh), (iw, ih) = mask_size, image_size
    expected_w = mh * iw / ih
    expected_h = mw * ih / iw
    return abs(mw - expected_w) <= max(1.0, MASK_ASPECT_TOLERANCE * expected_w) or abs(
        mh - expected_h
    ) <= max(1.0, MASK_ASPECT_TOLERANCE * expected_h)


def _read_alpha(image: Image.Image) -> Image.Image | None:
    """The mask's alpha band (mode L) when the mask is read by its transparency (any alpha below
    MASK_THRESHOLD), else None: it is read by its luminance."""
    if _has_alpha(image) and image.mode not in _I_MODES:
        alpha = _alpha(image)
        if _lowest(alpha) < MASK_THRESHOLD:
            return alpha
    return None


def _edit_region(image: Image.Image, alpha: Image.Image | None) -> Image.Image:
    """Threshold any mask mode into an L image: 255 = edit, 0 = keep (before `invert`). `alpha`:
    `_read_alpha(image)`."""
    if alpha is not None:
        return alpha.point(_LUT_EDIT_WHEN_LOW)
    if image.mode in _I_MODES:
        # Pillow clips 16-bit greys to 255 when converting to L, so threshold at half the 16-bit range.
        high = ImageMath.lambda_eval(lambda a: (a["m"] >= 32768) * 255, m=image.convert("I"))
        return high.convert("L")
    grey = (
        image.convert("L")
        if image.mode in ("1", "L", "LA", "P", "RGB", "RGBA")
        else image.convert("RGB").convert("L")
    )
    return grey.point(_LUT_EDIT_WHEN_HIGH)


def _light_on_clear(image: Image.Image, alpha: Image.Image) -> bool:
    """Whether every opaque pixel of a mask read by its transparency (`alpha`, its band) is light."""
    opaque = alpha.point(_LUT_EDIT_WHEN_HIGH)
    if not opaque.getbbox():
        return False
    darkest = ImageStat.Stat(image.convert("L"), mask=opaque).extrema[0][0]
    return darkest >= MASK_THRESHOLD


_LUT_EDIT_WHEN_LOW = [255 if v < MASK_THRESHOLD else 0 for v in range(256)]
_LUT_EDIT_WHEN_HIGH = [255 if v >= MASK_THRESHOLD else 0 for v in range(256)]


def _binarize(region: Image.Image) -> Image.Image:
    return region.convert("L").point(_LUT_EDIT_WHEN_HIGH)


# === Compositing ===================================================================================


def match_geometry(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Fit a model output onto the original's geometry. Pure, BLOCKING.

    Rule: same size → unchanged. Aspect ratios within `ASPECT_TOLERANCE` (1 %) → resized to `size`
    with LANCZOS. Otherwise → scaled to COVER `size` keeping its aspect ratio, then center-cropped
    (done as one LANCZOS resample of the centered source box), so nothing is stretched and the
    models' square or 3:2 canvases line up with the original's middle.
    """
    if image.size == size:
        return image
    (w, h), (target_w, target_h) = image.size, size
    if abs((w / h) / (target_w / target_h) - 1) <= ASPECT_TOLERANCE:
        return image.resize(size, Image.Resampling.LANCZOS)
    target_aspect = target_w / target_h
    if w / h > target_aspect:  # source is wider: keep full height, crop the sides
        crop_w = h * target_aspect
        box = ((w - crop_w) / 2, 0.0, (w + crop_w) / 2, float(h))
    else:  # source is taller: keep full width, crop top and bottom
        crop_h = w / target_aspect
        box = (0.0, (h - crop_h) / 2, float(w), (h + crop_h) / 2)
    return image.resize(size, Image.Resampling.LANCZOS, box=box)


def restore_outside(
    original: bytes, edited: bytes, region: Image.Image, *, feather: int = FEATHER_PX, fmt: str = "png"
) -> tuple[bytes, str]:
    """Paste the edit back into the original only inside `region`. Returns (bytes, format). BLOCKING.

    The edited image is first fitted to the original's size with `match_geometry`. Locality
    guarantee, with distance measured as chessboard distance (square neighbourhoods) to the nearest
    pixel outside the region: pixels outside the region are EXACTLY the original's decoded pixels;
    pixels more than `feather` inside are EXACTLY the fitted edit; the `feather`-pixel seam inside
    the boundary blends between the two (each channel between them). `feather=0` gives a hard edge.
    Parts of a region narrower than about 2*feather never reach full strength. Works in RGBA when
    either image has transparency, else RGB. The output is encoded as `fmt` (the format the member
    asked for: png, jpeg/jpg or webp) and carries the original's ICC profile (the model saw, and
    answers in, the original's colour numbers); a grey original's grey profile cannot describe the RGB
    result, which is converted through it to sRGB instead (`_with_profile`), so "the original's pixels"
    are then the original as a colour-managed viewer shows it. PNG and WebP (written lossless) keep the
    guarantee exactly; JPEG cannot: its pixels carry one generation of compression loss, and transparency is
    flattened onto white as `encode` does. `region` is mode L (>= 128 = edit) at the original's size;
    ValueError otherwise.
    """
    if feather < 0:
        raise ValueError("feather must be >= 0")
    base = decode(original)
    if region.size != base.size:
        raise ValueError(f"region is {region.size}, original is {base.size}")
    model = decode(edited)
    mode = "RGBA" if _has_alpha(base) or _has_alpha(model) else "RGB"
    icc = base.info.get("icc_profile")
    out = base if base.mode == mode else base.convert(mode)  # decode() gave us our own copy
    region = _binarize(region)
    box = _grown_bbox(region)
    if box is not None:
        # Work on the region's bounding box (plus a 1 px border of kept pixels): identical results
        # because the filters replicate edges, and far cheaper when the region is small.
        fitted = match_geometry(model.convert(mode), base.size)
        out.paste(fitted.crop(box), box, _blend_alpha(region.crop(box), feather))
    if icc:
        out.info["icc_profile"] = icc
    fmt = normalize_format(fmt)
    if max(out.size) > _MAX_SIDE.get(fmt, max(out.size)):
        # WebP and JPEG cannot hold a side this long (a panorama): PNG keeps the paid result, exactly.
        fmt = "png"
    # Lossless wherever the format allows it (PNG, WebP): the kept pixels are the point of the job.
    return encode(out, fmt, compress_level=RESULT_PNG_COMPRESS_LEVEL, lossless=True), fmt


def _grown_bbox(region: Image.Image) -> tuple[int, int, int, int] | None:
    bbox = region.getbbox()
    if bbox is None:
        return None
    left, top, right, bottom = bbox
    return max(0, left - 1), max(0, top - 1), min(region.width, right + 1), min(region.height, bottom + 1)


def _blend_alpha(region: Image.Image, feather: int) -> Image.Image:
    """Blend weights: 0 outside `region`, 255 deeper than `feather`, a ramp in between.

    Erode by e = ceil(f/2), then box-blur by b = floor(f/2). A pixel outside the region only sees
    pixels within b <= e of it, none of which survived the erosion, so its weight is exactly 0; a
    pixel deeper than e + b = f only sees eroded pixels, so its weight is exactly 255. The final
    `darker` with the region makes the outside guarantee independent of the blur's arithmetic.
    """
    if feather == 0:
        return region
    inner = region
    for _ in range((feather + 1) // 2):  # repeated 3x3 is cheaper than one large rank filter
        inner = inner.filter(ImageFilter.MinFilter(3))
    if feather // 2:
        inner = inner.filter(ImageFilter.BoxBlur(feather // 2))
    return ImageChops.darker(inner, region)


# === Previews ======================================================================================


def preview_picture(image_data: bytes, max_side: int) -> bytes:
    """PNG of `image_data` as previews show it: upright, RGB (transparency on mid grey), at most `max_side`
    px. BLOCKING. For a picture drawn again and again: `tint_preview` and `grid_overlay` take it as they
    take the image (at a `max_side` no larger) and draw the same, decoding ~1 MP instead of a photo."""
    return encode(_preview_base(image_data, max_side), "png", compress_level=RESULT_PNG_COMPRESS_LEVEL)


def tint_preview(image_data: bytes, region: Image.Image, *, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """JPEG preview: the image (at most `max_side` px) with the edit area tinted and outlined. BLOCKING.

    Always JPEG (quality 85): it is a throwaway picture in a Discord message, a few hundred kB
    instead of a few MB. Transparent areas show on mid grey. `region` is resized to the preview.
    """
    preview = _preview_base(image_data, max_side)
    # BOX + "any coverage" keeps thin strokes visible that NEAREST would drop when shrinking.
    region = region if region.mode == "L" else region.convert("L")  # not a copy of a full-size region
    small = region.resize(preview.size, Image.Resampling.BOX).point(lambda v: 255 if v else 0)
    _tint(preview, small)
    edge = ImageChops.subtract(small.filter(ImageFilter.MaxFilter(3)), small.filter(ImageFilter.MinFilter(3)))
    preview.paste(OUTLINE_RGB, mask=edge)
    return encode(preview, "jpeg", PREVIEW_JPEG_QUALITY)


def grid_region(image_size: tuple[int, int], rows: int, cols: int, cells: Iterable[int]) -> Image.Image:
    """L-mode region (255 = edit) covering the chosen grid cells, numbered 1..rows*cols row-major.

    Pure, BLOCKING. Raises ValueError for rows/cols < 1 and `InvalidMask` for a cell number that
    does not exist (cell numbers come from users).
    """
    boxes = _cell_boxes(image_size, rows, cols)
    region = Image.new("L", image_size, 0)
    for cell in cells:
        if not 1 <= cell <= len(boxes):
            raise InvalidMask(messages.no_such_cell(cell, len(boxes)), code="mask_cell")
        region.paste(255, boxes[cell - 1])
    return region


def grid_overlay(
    image_data: bytes,
    rows: int,
    cols: int,
    selected: Iterable[int] = (),
    *,
    max_side: int = PREVIEW_MAX_SIDE,
) -> bytes:
    """JPEG preview with a numbered rows×cols grid; `selected` cells tinted. BLOCKING.

    Cells split the image exactly as `grid_region` does. Numbers use Pillow's default font, white
    with a black outline so they read on any picture. A side too short for `GRID_MIN_CELL_PX` per
    cell is stretched to that (beyond `max_side` only if `max_side` itself is that short): each cell
    still shows its share of the picture, and the mask is made from the image's own size, not this.
    """
    preview = _room_for_cells(_preview_base(image_data, max_side), rows, cols)
    _tint(preview, grid_region(preview.size, rows, cols, selected))
    boxes = _cell_boxes(preview.size, rows, cols)
    draw = ImageDraw.Draw(preview)
    line = max(1, min(preview.size) // 400)
    for left, top, right, bottom in boxes:  # shadow first, so white lines stay visible on white
        draw.rectangle((left, top, right - 1, bottom - 1), outline=GRID_SHADOW_RGB, width=line + 1)
        draw.rectangle((left, top, right - 1, bottom - 1), outline=GRID_LINE_RGB, width=line)
    cell_side = min(preview.width // cols, preview.height // rows)
    font = _label_font(cell_side)
    stroke = max(1, round(font.size / 12)) if isinstance(font, ImageFont.FreeTypeFont) else 1
    for number, (left, top, right, bottom) in enumerate(boxes, start=1):
        center = ((left + right) / 2, (top + bottom) / 2)
        draw.text(
            center,
            str(number),
            fill=LABEL_RGB,
            font=font,
            anchor="mm",
            stroke_width=stroke,
            stroke_fill=LABEL_STROKE_RGB,
        )
    return encode(preview, "jpeg", PREVIEW_JPEG_QUALITY)


def _cell_boxes(size: tuple[int, int], rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """Row-major cell boxes whose edges are integer splits of the size (no gaps, no overlaps)."""
    if rows < 1 or cols < 1:
        raise ValueError("rows and cols must be >= 1")
    width, height = size
    xs = [i * width // cols for i in range(cols + 1)]
    ys = [j * height // rows for j in range(rows + 1)]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


def _room_for_cells(preview: Image.Image, rows: int, cols: int) -> Image.Image:
    """`preview`, stretched along any side that gives a cell fewer than `GRID_MIN_CELL_PX` pixels."""
    size = (max(preview.width, cols * GRID_MIN_CELL_PX), max(preview.height, rows * GRID_MIN_CELL_PX))
    return preview if size == preview.size else preview.resize(size, Image.Resampling.BICUBIC)


def _preview_base(image_data: bytes, max_side: int) -> Image.Image:
    image = decode(image_data, at_least=max_side)
    preview = _flatten(image, PREVIEW_BACKGROUND) if _has_alpha(image) else image.convert("RGB")
    preview.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=RESIZE_REDUCING_GAP)
    return preview


def _tint(preview: Image.Image, region: Image.Image) -> None:
    """Blend TINT_RGB over `preview` in place where `region` is set."""
    opacity = region.point(lambda v: TINT_OPACITY if v >= MASK_THRESHOLD else 0)
    preview.paste(Image.new("RGB", preview.size, TINT_RGB), mask=opacity)


def _label_font(cell_side: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    size = min(LABEL_MAX_PX, max(LABEL_MIN_PX, round(cell_side * LABEL_SIZE_FRACTION)))
    return ImageFont.load_default(size)
