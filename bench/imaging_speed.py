"""Benchmark 5 — imaging: sniff, validate (+ normalise), and fit-to-limit via `bot.imaging`.

Inputs are a real photo upscaled to 1024² and 4096², as PNG and JPEG. "normalise" is validation of
the same JPEG carrying EXIF orientation 6, which makes `validate_image` turn it upright and re-encode
it. fit-to-limit uses Discord's default 10 MiB upload limit, or half the file's size when the file
already fits (so there is work to do). Run from the repository root: `python -m bench.imaging_speed`.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

from PIL import Image

from bench._common import MIB, median, photo, table
from bot import imaging

DISCORD_LIMIT = 10 * MIB
MAX_BYTES = 200 * MIB  # validation limits far above the inputs: measure the work, not a refusal
MAX_PIXELS = 100_000_000


def rotated_jpeg(data: bytes) -> bytes:
    """The same JPEG with EXIF orientation 6 (camera held sideways)."""
    with Image.open(io.BytesIO(data)) as image:
        exif = image.getexif()
        exif[0x0112] = 6
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of `repeat` calls, in milliseconds (one warm-up call first)."""
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return median(samples)


def main(repeat_small: int, repeat_large: int) -> None:
    rows = []
    for side in (1024, 4096):
        repeat = repeat_small if side == 1024 else repeat_large
        for fmt in ("png", "jpeg"):
            data = photo(side, fmt)
            limit = DISCORD_LIMIT if len(data) > DISCORD_LIMIT else len(data) // 2
            fitted, fitted_fmt = imaging.fit_to_limit(data, fmt, limit)
            cases: list[tuple[str, Callable[[], object], str]] = [
                ("sniff", lambda d=data: imaging.sniff_mime(d), ""),
                (
                    "validate",
                    lambda d=data: imaging.validate_image(d, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS),
                    "",
                ),
            ]
            if fmt == "jpeg":
                rotated = rotated_jpeg(data)
                cases.append(
                    (
                        "validate + normalise (EXIF 6)",
                        lambda d=rotated: imaging.validate_image(
                            d, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS
                        ),
                        "",
                    )
                )
            cases.append(
                (
                    f"fit to {limit / MIB:.1f} MiB",
                    lambda d=data, f=fmt, lim=limit: imaging.fit_to_limit(d, f, lim),
                    f"→ {fitted_fmt} {len(fitted) / MIB:.2f} MiB",
                )
            )
            for name, fn, note in cases:
                ms = timed(fn, repeat)
                shown = f"{ms:.3f}" if ms < 1 else f"{ms:.1f}"
                rows.append((f"{side}² {fmt}", f"{len(data) / MIB:.2f}", name, shown, note))
    print(
        table(
            "Imaging: median wall time per call (one thread)",
            ("input", "MiB", "operation", "ms", "result"),
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10, help="runs per 1024² case")
    parser.add_argument("--repeat-large", type=int, default=3, help="runs per 4096² case")
    args = parser.parse_args()
    main(args.repeat, args.repeat_large)
