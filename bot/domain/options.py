"""The options vocabulary: qualities, sizes, backgrounds, output formats, the output options every
form of a job carries, and token usage.

A leaf: it imports nothing of ours, so the catalog, the services, the providers and the cogs all
speak the same words without depending on each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, TypedDict

# Every quality any model takes, cheapest first ("auto" lets the model choose). A model's own list is
# in the catalog: GPT Image 2 stops at high, 2.5 and 2.6 add xhigh and max.
QUALITIES = ("low", "medium", "high", "xhigh", "max", "auto")
# The sizes every GPT Image model offers. Newer models also take free `WxH` sizes (see `parse_size`).
SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536")
BACKGROUNDS = ("auto", "opaque", "transparent")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
TRANSPARENT_FORMATS = ("png", "webp")  # JPEG has no alpha channel
# ASCII digits only: `str.isdigit()` (and `\d`) also take "²" and other scripts' digits, which `int()`
# refuses or a provider would not understand. No edge needs 10 digits (and `int()` refuses over 4,300).
_WXH = re.compile(r"([0-9]{1,9})x([0-9]{1,9})")
# How qualities compare (a role's cap, the level a model uses for a default it lacks). `auto` may come
# back as high, so it ranks (and is priced) as high.
QUALITY_RANK = {"low": 0, "medium": 1, "high": 2, "xhigh": 3, "max": 4, "auto": 2}


def parse_size(size: str) -> tuple[int, int] | None:
    """`(width, height)` of a `WxH` size such as `2048x1152`, or None for `auto` or malformed text."""
    match = _WXH.fullmatch(size)
    if match is None:
        return None
    w, h = int(match[1]), int(match[2])
    return (w, h) if w > 0 and h > 0 else None


class HasOutputOptions(Protocol):
    """Anything that carries a job's output options under these names: the merged defaults, the
    stored job spec, the provider request."""

    @property
    def quality(self) -> str: ...
    @property
    def size(self) -> str: ...
    @property
    def background(self) -> str: ...
    @property
    def output_format(self) -> str: ...
    @property
    def count(self) -> int: ...


class OutputOptions(TypedDict):
    """A job's output options as keyword arguments, for the next form of the job to take."""

    quality: str
    size: str
    background: str
    output_format: str
    count: int


def output_options(job: HasOutputOptions) -> OutputOptions:
    """The output options `job` carries (`Form(**output_options(job), ...)`): each form of a job
    passes on the same five."""
    return OutputOptions(
        quality=job.quality,
        size=job.size,
        background=job.background,
        output_format=job.output_format,
        count=job.count,
    )


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as reported by the provider (OpenAI `usage`); zeros when a field was absent."""

    input_text_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    output_text_tokens: int = 0
