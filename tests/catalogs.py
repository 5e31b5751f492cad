"""Catalogs for tests: one builder for the small catalogs tests write, and the frozen November file.

`catalog(model("m", price=0.01, routes=["openai", route("atlascloud", model="x")]))` builds the same
`Catalog` that `load_catalog` reads from a TOML file with those entries; only what a test is about
needs writing out (see `model` for the defaults). Catalogs a bot process reads from a file stay TOML
(tests/durable.py), and the November snapshot stays a file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bot.catalog import DEFAULT_QUALITIES, PRICED_QUALITIES, Catalog, parse_catalog

# bot/data/catalog.toml as shipped in November 2026: gpt-image-1, -1-mini and -1.5 on five providers.
NOVEMBER_CATALOG = Path(__file__).parent / "data" / "catalog-2026-11.toml"

LIST_QUALITIES = ("low", "medium", "high")  # the qualities a list price is given for
WITH_AUTO = [*LIST_QUALITIES, "auto"]  # what a 1.x model offers; auto is priced as high

ModelSpec = tuple[str, dict[str, Any]]


def flat(
    square: float, other: float | None = None, qualities: Iterable[str] = LIST_QUALITIES
) -> dict[str, Any]:
    """The same list price at every quality: `square` for 1024x1024, `other` (default `square`) else."""
    return {q: {"square": square, "other": square if other is None else other} for q in qualities}


def tiered(**by_quality: tuple[float, float]) -> dict[str, Any]:
    """A list price per quality, each `(square, other)`: `tiered(low=(0.01, 0.02), high=(0.2, 0.25))`."""
    return {q: {"square": square, "other": other} for q, (square, other) in by_quality.items()}


def route(provider: str, **fields: Any) -> dict[str, Any]:
    """One `[[models.X.routes]]` entry: `provider` and its fields (model, price, shutdown, ...)."""
    return {"provider": provider, **fields}


def model(
    model_id: str,
    *,
    price: float | tuple[float, float] | dict[str, Any] = (0.01, 0.02),
    routes: Iterable[str | dict[str, Any]] = ("openai",),
    **fields: Any,
) -> ModelSpec:
    """One `[models.X]` entry, sold on `routes` (provider names or `route(...)` entries; OpenAI alone
    by default), with any other catalog `fields` (name, qualities, max_input_images, mask, shutdown,
    replacement, ...).

    `price` is a price table (`flat`, `tiered`), or one number (or a `(square, other)` pair, $0.01 and
    $0.02 by default) for every quality the model offers that a list price is given for.
    """
    if not isinstance(price, dict):
        square, other = price if isinstance(price, tuple) else (price, None)
        offered = fields.get("qualities", DEFAULT_QUALITIES)
        price = flat(square, other, qualities=[q for q in offered if q in PRICED_QUALITIES])
    entry = {"price": price, "routes": [route(r) if isinstance(r, str) else r for r in routes], **fields}
    return model_id, entry


def catalog(*models: ModelSpec) -> Catalog:
    """The parsed catalog of `models` (each from `model`), in the order given."""
    return parse_catalog({"models": dict(models)})


# One model, list-priced, no shutdown date: end-to-end results must not depend on today's date, and a
# job's charge equals its reservation (no token rates).
TEST_CATALOG: Catalog = catalog(
    model("gpt-image-1.5", name="GPT Image 1.5", qualities=WITH_AUTO, max_input_images=16)
)
