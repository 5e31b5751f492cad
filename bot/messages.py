"""The words a member reads when an image, a mask or a model choice is refused — in one place.

The pure modules (`bot.imaging`, `bot.catalog`, `bot.lifecycle`) decide *that* something is refused
and why (a code and its facts); the sentences live here, so wording changes in one file and the
domain modules hold no user text. Every sentence says what happened and what to do next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.catalog import Route

ACCEPTED = "Upload a PNG, JPEG or WebP"
_KIND_NAMES = {
    "image/gif": "a GIF",
    "image/tiff": "a TIFF",
    "image/bmp": "a BMP",
    "image/heic": "a HEIC photo",
    "image/heif": "a HEIF photo",
    "image/avif": "an AVIF",
    "application/pdf": "a PDF",
}
_KIND_TIPS = {
    "image/gif": " (save the frame you want as PNG)",
    "image/heic": " (on iPhone, export or share it as JPEG)",
    "image/heif": " (export it as JPEG)",
    "application/pdf": " (export the page as PNG)",
}


# -- images and masks (bot.imaging) ---------------------------------------------------------------


def empty_file(name: str) -> str:
    return f"{name} is an empty file. Upload the image again."


def too_large(name: str, size: int, limit: int) -> str:
    return (
        f"{name} is {megabytes(size)}, over the {megabytes(limit)} limit. "
        "Upload a smaller file (a JPEG or WebP export is usually much smaller)."
    )


def wrong_type(name: str, mime: str | None) -> str:
    if mime is None:
        return f"{name} is not an image Retouch can read. {ACCEPTED}."
    kind = _KIND_NAMES.get(mime, "that type of file")
    return f"{name} is {kind}, which Retouch can't edit. {ACCEPTED}{_KIND_TIPS.get(mime, '')}."


def too_many_pixels(name: str, max_pixels: int) -> str:
    return (
        f"{name} has too many pixels (the limit is {megapixels(max_pixels)}). "
        "Downscale it and upload it again."
    )


def corrupt(name: str) -> str:
    return (
        f"{name} could not be read: the file looks damaged or incomplete. Re-export it and upload it again."
    )


def too_small(name: str, width: int, height: int, min_side: int) -> str:
    return f"{name} is only {width}×{height} pixels. Upload an image at least {min_side} pixels on each side."


def animated(name: str, frames: int) -> str:
    return (
        f"{name} is animated ({frames} frames). Upload a still image: a PNG, JPEG or WebP "
        "of the frame you want."
    )


MASK_TOO_DETAILED = "The mask is too detailed for the image service. Use simpler, solid shapes and try again."
MASK_EMPTY = (
    "The mask doesn't mark anything to edit. Paint the area to change white (or erase it to "
    "transparent) and leave the rest black, or turn `invert` off."
)
MASK_FULL = (
    "The mask marks the whole image. Mark only the part to change, or use the edit command "
    "without a mask to change everything."
)


def mask_shape(mask_size: tuple[int, int], image_size: tuple[int, int]) -> str:
    return (
        f"The mask is {mask_size[0]}×{mask_size[1]} but the image is {image_size[0]}×{image_size[1]}, "
        "a different shape. Draw the mask over a copy of the image so both match."
    )


def no_such_cell(cell: int, cells: int) -> str:
    return f"There is no cell {cell}. Pick cell numbers from 1 to {cells}."


def megabytes(size: int) -> str:
    # Binary megabytes labelled "MB", as Discord's own upload limits are.
    return f"{_short_number(size / (1024 * 1024))} MB"


def megapixels(pixels: int) -> str:
    return f"{_short_number(pixels / 1_000_000)} megapixels"


def _short_number(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


# -- models (bot.catalog, bot.lifecycle) ----------------------------------------------------------


def unknown_model(model_id: str) -> str:
    return f"Unknown model `{model_id}`. Pick one from the list the `model` option suggests."


def retired_without_replacement(name: str, day: str) -> str:
    return (
        f"{name} was retired on {day} and no replacement is configured. Pick another model, or ask "
        "an admin to update the model catalog."
    )


NO_LIVE_MODEL = (
    "No image model is available from the image services this bot is set up with. "
    "Ask the bot's operator to check `/diagnose`."
)


def model_gone(name: str, *, mid_run: bool, replacement: tuple[str, str] | None) -> str:
    """A picked model no configured service sells any more; `replacement` is (name, id)."""
    head = (
        f"{name} was shut down by the image service while your edit was waiting."
        if mid_run
        else f"{name} is no longer available from the image services this bot uses."
    )
    if replacement is not None:
        offer = f"Its replacement is **{replacement[0]}**: run the edit again with `model: {replacement[1]}`"
    else:
        offer = "Run the edit again with another model"
    return f"{head} {offer}, or leave `model` empty for the default. You were not charged."


def retiring_on(name: str, day: str) -> str:
    return f"{name} will be retired on {day}."


def replaced(asked: str, used: str) -> str:
    return f"{asked} has been retired, so this edit used {used} instead."


def defaulted(asked: str, used: str) -> str:
    return f"{asked} is no longer available, so this edit used {used}."


def default_moved(dead: str, target: str | None) -> str:
    """The one-time notice to a member whose stored default pointed at a dead model."""
    then = f"your default is now {target}" if target else "your edits now use the bot's default model"
    return f"{dead} is no longer available, so {then} (change it with /settings)."


def moved_mid_run(dead: str, used: str) -> str:
    return f"{dead} was shut down by the image service, so this edit used {used}."


# -- routes (bot.routing) -------------------------------------------------------------------------

# How each blocking option is named to the user (the /edit option names).
_OPTION_NAMES = {
    "mask": "mask",
    "images": "images",
    "size": "size",
    "quality": "quality",
    "background": "background",
    "format": "format",
    "prompt": "prompt",
    "input_fidelity": "input fidelity",
}


def no_route(model: str) -> str:
    return f"No configured image service sells {model}. Pick another model."


def unservable(model: str, route: Route, problems: tuple[str, ...]) -> str:
    """The options to change so `route` (the closest one) can serve the job, with what it offers."""
    hints = []
    for problem in problems:
        match problem:
            case "mask":
                hints.append("remove the `mask`")
            case "images":
                hints.append(f"attach at most {route.max_input_images} image(s)")
            case "size":
                hints.append(f"set `size` to one of {', '.join(route.sizes)}")
            case "quality":
                hints.append(f"set `quality` to one of {', '.join(route.qualities)}")
            case "background":
                hints.append(f"set `background` to one of {', '.join(route.backgrounds)}")
            case "format":
                hints.append(f"set `format` to one of {', '.join(route.output_formats)}")
            case "prompt":
                hints.append(f"shorten the prompt to {route.max_prompt_chars} characters")
            case _:
                hints.append(f"drop `{_OPTION_NAMES.get(problem, problem)}`")
    return (
        f"The image services configured for {model} cannot do this as asked: "
        f"{'; '.join(hints)}, or pick another model."
    )
