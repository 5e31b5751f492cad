"""What the `model`, `quality` and `size` options offer: autocomplete suggestions from the catalog.

Qualities and sizes differ per model (GPT Image 2.5 and 2.6 add `xhigh` and `max`; GPT Image 2 takes
free `WxH` sizes), so the options follow the chosen (or default) model instead of a fixed list.
Suggestions are (name, value) pairs; the cogs turn them into Discord choices. Typed values that are
not suggested still reach the service, which refuses them naming what the model can take.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bot.catalog import ModelEntry, Route, usd_to_credits
from bot.routing import dearest_edit

MAX_CHOICES = 25  # Discord's limit per autocomplete answer
AUTO = "auto"

Choice = tuple[str, str]


def model_options(models: Iterable[ModelEntry], current: str, *, mask_only: bool = False) -> list[Choice]:
    """Live models whose id or name contains what was typed (catalog order)."""
    typed = current.strip().lower()
    return [
        (m.name, m.id)
        for m in models
        if (m.mask or not mask_only) and (typed in m.id.lower() or typed in m.name.lower())
    ][:MAX_CHOICES]


def quality_options(
    model: ModelEntry,
    current: str,
    *,
    credits_per_usd: int,
    routes: Sequence[Route] = (),
    size: str = AUTO,
    images: int = 1,
    prompt: str | None = None,
) -> list[Choice]:
    """The model's qualities with the most a one-image edit can be held (and so charged) at each: at
    `size` (`auto`: the dearest listed one), with its `images` input images and `prompt` (the options
    typed so far in the same command; see `dearest_edit` before a prompt is typed), on the dearest of
    `routes`, the routes that may serve it here. The output image alone is often under half of it."""
    typed = current.strip().lower()
    out = []
    for quality in model.qualities:
        if typed and typed not in quality:
            continue
        usd = dearest_edit(model, routes, quality, size, images=images, prompt=prompt)
        most = usd_to_credits(usd, credits_per_usd)
        label = "lets the model choose" if quality == AUTO else "per image"
        out.append((f"{quality} — up to {most} credits {label}", quality))
    return out[:MAX_CHOICES]


def size_options(model: ModelEntry, current: str) -> list[Choice]:
    """The model's listed sizes matching what was typed, and the typed size itself when the model
    can make it (free `WxH` sizes), first."""
    typed = current.strip().lower().replace(" ", "").replace("×", "x")
    out: list[Choice] = []
    if typed and typed not in model.sizes and model.accepts_size(typed):
        out.append((f"{typed} (custom)", typed))
    out.extend((size, size) for size in model.sizes if typed in size)
    if not out and model.size_rules is not None:
        # Nothing matches: say what a custom size must look like (the value keeps what was typed,
        # so choosing it gets the service's own explanation).
        hint = f"{typed or 'WIDTHxHEIGHT'}: {model.size_rules.describe()}"
        out.append((hint[:100], (typed or AUTO)[:100]))
    return out[:MAX_CHOICES]


def normalize_size(size: str | None) -> str | None:
    """A typed size in canonical form (`2048X1152`, `2048 × 1152` → `2048x1152`)."""
    if size is None:
        return None
    return size.strip().lower().replace(" ", "").replace("×", "x")
