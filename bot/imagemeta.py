"""Container-level work without Pillow: metadata removal (PNG chunks, JPEG segments, WebP RIFF
chunks) and a check that a PNG's pixel stream is complete. Pure.

Uploads are forwarded to image providers, and a phone photo's EXIF carries the GPS position where
it was taken, the camera's serial number and the time; XMP and IPTC blocks, comments and PNG text
chunks carry names and edit histories. None of it helps an edit. `strip_metadata` removes it
without decoding a pixel (no generation loss, no Pillow), keeping what decides how the picture
looks: the ICC colour profile, PNG colour chunks (sRGB, gAMA, cHRM, cICP) and transparency, and
JPEG's JFIF and Adobe segments (the Adobe one says how a CMYK file's colours are stored). Anything
after the image's end marker (a second MPO picture with its own EXIF, an appended archive) goes too.

A structure these walkers cannot follow raises `ValueError`; the caller then re-encodes the decoded
picture instead (`bot.imaging.validate_image`).

`png_pixels_intact` lets the upload check skip Pillow's decode of the commonest upload, an 8-bit PNG:
inflating its rows proves them whole at about 40 % of the cost of decoding them (Pillow also
unfilters every row into a picture that is then thrown away).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary PNG chunks that affect how the picture looks; every other ancillary chunk (tEXt, zTXt,
# iTXt, eXIf, tIME, vendor chunks, APNG's acTL/fcTL/fdAT of a one-frame file) is dropped.
PNG_KEPT_ANCILLARY = frozenset(
    {b"tRNS", b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"sBIT", b"pHYs", b"bKGD", b"cICP", b"mDCv", b"cLLi"}
)
# JPEG APPn segments kept, by their identifier: JFIF (not its JFXX thumbnail extension), the ICC
# profile (split over several APP2 segments), Adobe (colour transform of CMYK/YCCK files).
JPEG_KEPT_APP = ((0xE0, b"JFIF\x00"), (0xE2, b"ICC_PROFILE\x00"), (0xEE, b"Adobe"))
WEBP_KEPT_CHUNKS = frozenset({b"VP8X", b"ICCP", b"ALPH", b"VP8 ", b"VP8L", b"ANIM", b"ANMF"})
_VP8X_EXIF_FLAG = 0x08
_VP8X_XMP_FLAG = 0x04
# png_pixels_intact: samples per pixel of the colour types it vouches for (grey, RGB, grey+alpha,
# RGBA; not palette, whose colour table Pillow checks only when it decodes), at 8 bits per sample.
PNG_PLAIN_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
PNG_FILTER_TYPES = bytes(range(5))  # None, Sub, Up, Average, Paeth: the byte starting every row
PNG_ANIMATION_CHUNKS = frozenset({b"acTL", b"fcTL", b"fdAT"})
INFLATE_IN_STEP = 64 * 1024  # compressed bytes fed at a time (keeps zlib's unconsumed tail small)
INFLATE_OUT_STEP = 1024 * 1024  # inflated bytes held at a time: memory stays bounded for any ratio


def strip_metadata(data: bytes, mime: str) -> bytes:
    """`data` without metadata (see the module docstring); the same object when there was none.

    `mime` is the sniffed type: image/png, image/jpeg or image/webp. Raises `ValueError` when the
    container cannot be walked (truncated, malformed); the bytes were decodable, so the caller
    re-encodes them.
    """
    if mime == "image/png":
        out = _strip_png(data)
    elif mime == "image/jpeg":
        out = _strip_jpeg(data)
    elif mime == "image/webp":
        out = _strip_webp(data)
    else:
        raise ValueError(f"no metadata walker for {mime}")
    return data if out == data else out


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, start, end) of every chunk up to and including IEND; `ValueError` when malformed."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise ValueError("PNG ends before IEND")
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data) or not kind.isalpha():
            raise ValueError("malformed PNG chunk")
        yield kind, pos, end
        if kind == b"IEND":
            return
        pos = end


def _strip_png(data: bytes) -> bytes:
    chunks = list(_png_chunks(data))
    kept = [(start, end) for kind, start, end in chunks if kind[:1].isupper() or kind in PNG_KEPT_ANCILLARY]
    if len(kept) == len(chunks) and chunks[-1][2] == len(data):
        return data  # nothing to drop: no copy of a multi-MB file, nor a comparison with one
    return b"".join([PNG_SIGNATURE, *(data[start:end] for start, end in kept)])


def png_pixels_intact(data: bytes) -> bool:
    """Whether PNG `data`'s pixel rows are provably complete and decodable. BLOCKING (inflates them).

    True only for the layout most uploads have: IHDR first, 8 bits per sample, grey or RGB with or
    without alpha, not interlaced, not animated, and the IDAT chunks one after another straight
    before IEND, their data one zlib stream (checksum included) that inflates to exactly one
    filter byte (0-4) and one row of samples per row. Pillow decodes such a file whenever it could
    open its header, so `bot.imaging` then skips its decode. False means "not shown", never
    "broken": the caller decodes the file with Pillow, which decides. Never raises.
    """
    layout = _plain_png_layout(data)
    if layout is None:
        return False
    row_bytes, rows, idat = layout
    return _inflates_to_rows(data, idat, row_bytes + 1, rows)


def _plain_png_layout(data: bytes) -> tuple[int, int, list[tuple[int, int]]] | None:
    """(bytes per row, rows, IDAT payload spans) of a PNG `png_pixels_intact` vouches for, else None."""
    try:
        chunks = list(_png_chunks(data))
    except ValueError:
        return None
    kinds = [kind for kind, _, _ in chunks]
    if kinds[0] != b"IHDR" or chunks[0][2] - chunks[0][1] != 25 or b"IDAT" not in kinds:
        return None
    first = kinds.index(b"IDAT")
    last = len(kinds) - 2  # the chunk before IEND
    if kinds[first : last + 1] != [b"IDAT"] * (last + 1 - first) or PNG_ANIMATION_CHUNKS & set(kinds):
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(
        ">IIBBBBB", data, chunks[0][1] + 8
    )
    if depth != 8 or colour not in PNG_PLAIN_CHANNELS or compression or filtering or interlace:
        return None
    spans = [(start + 8, end - 4) for _, start, end in chunks[first : last + 1]]
    return width * PNG_PLAIN_CHANNELS[colour], height, spans


def _inflates_to_rows(data: bytes, spans: list[tuple[int, int]], stride: int, rows: int) -> bool:
    """Whether the IDAT data at `spans` is one zlib stream of exactly `rows` rows of `stride` bytes,
    each starting with a known filter type. Inflates in bounded steps and keeps none of it."""
    inflater = zlib.decompressobj()
    expected, produced = stride * rows, 0
    view = memoryview(data)
    try:
        for start, end in spans:
            for at in range(start, end, INFLATE_IN_STEP):
                pending: bytes | memoryview = view[at : min(end, at + INFLATE_IN_STEP)]
                while True:
                    out = inflater.decompress(pending, INFLATE_OUT_STEP)
                    # Rows start every `stride` bytes of the whole stream: the first in `out` is at
                    # the offset that completes the row `produced` bytes left open.
                    if out[(-produced) % stride :: stride].translate(None, PNG_FILTER_TYPES):
                        return False
                    produced += len(out)
                    if produced > expected:
                        return False
                    pending = inflater.unconsumed_tail
                    if not pending and len(out) < INFLATE_OUT_STEP:
                        break
    except zlib.error:
        return False
    return inflater.eof and produced == expected and not inflater.unused_data


def _strip_jpeg(data: bytes) -> bytes:
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG")
    out = bytearray(b"\xff\xd8")
    pos = 2
    size = len(data)
    while True:
        if pos + 2 > size or data[pos] != 0xFF:
            raise ValueError("JPEG marker expected")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:  # EOI: whatever follows is not this picture
            out += b"\xff\xd9"
            return bytes(out)
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            out += data[pos : pos + 2]
            pos += 2
            continue
        if pos + 4 > size:
            raise ValueError("JPEG segment header cut off")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > size:
            raise ValueError("malformed JPEG segment")
        if _keep_jpeg_segment(marker, data[pos + 4 : end]):
            out += data[pos:end]
        pos = end
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next real marker
            scan_end = _scan_end(data, pos)
            out += data[pos:scan_end]
            pos = scan_end


def _keep_jpeg_segment(marker: int, payload: bytes) -> bool:
    if marker == 0xFE:  # COM
        return False
    if 0xE0 <= marker <= 0xEF:
        return any(marker == m and payload.startswith(ident) for m, ident in JPEG_KEPT_APP)
    return True


def _scan_end(data: bytes, pos: int) -> int:
    """Where the entropy-coded data from `pos` ends: the next 0xFF that starts a marker other than a
    stuffed byte (FF00) or a restart marker (FFD0-FFD7)."""
    size = len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= size:
            raise ValueError("JPEG scan without an end")
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1 if following == 0xFF else 2
            continue
        return pos


def _strip_webp(data: bytes) -> bytes:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP")
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    if riff_end > len(data):
        raise ValueError("WebP shorter than its RIFF size")
    chunks: list[bytes] = []
    pos = 12
    while pos < riff_end:
        if pos + 8 > riff_end:
            raise ValueError("WebP chunk header cut off")
        kind = data[pos : pos + 4]
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        end = pos + 8 + length + (length & 1)
        if end > riff_end and pos + 8 + length != riff_end:
            raise ValueError("malformed WebP chunk")
        chunk = data[pos : min(end, riff_end)]
        if kind == b"VP8X" and length >= 1:
            flags = chunk[8] & ~(_VP8X_EXIF_FLAG | _VP8X_XMP_FLAG)
            chunk = chunk[:8] + bytes([flags]) + chunk[9:]
        if kind in WEBP_KEPT_CHUNKS:
            chunks.append(chunk + (b"\x00" if len(chunk) & 1 else b""))
        pos = end
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + len(body).to_bytes(4, "little") + body
