"""The model catalog and pricing: which models exist, what they can do, what they cost.

Loaded from a TOML file (the packaged `data/catalog.toml`, or `CATALOG_PATH`), so retirements and price
changes need no release. All money is `Decimal` so 0.011 × 1000 is exactly 11 credits, never 12.

Why ~620 lines: the types, the price arithmetic and the file parser describe the same fields and
change together when the catalog gains one (free sizes, route dates); the parser is the natural
part to move out next (`parse_catalog` and its helpers).
"""

from __future__ import annotations

import datetime as dt
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from bot import messages
from bot.config import KNOWN_PROVIDERS
from bot.domain.options import (
    BACKGROUNDS,
    OUTPUT_FORMATS,
    QUALITIES,
    QUALITY_RANK,
    SIZES,
    TRANSPARENT_FORMATS,
    Usage,
    parse_size,
)
from bot.errors import InvalidOptions

PACKAGED_CATALOG = "catalog.toml"
PRICED_QUALITIES = ("low", "medium", "high", "xhigh", "max")
# A model that lists no qualities offers these (the GPT Image 1 and 2 set).
DEFAULT_QUALITIES = ("low", "medium", "high", "auto")
MILLION = Decimal(1_000_000)
# Users see this many days of warning before a model they pick is retired.
RETIREMENT_WARNING_DAYS = 30
MASK_CONVENTIONS = ("alpha", "white")  # see bot.providers.masks
LIST_PRICE = "list"
SQUARE_SIZE = "1024x1024"
SQUARE_PIXELS = 1024 * 1024
# The keys a `[models.ID]` section may have: a typo (`shutdwon`, `replacment`) would otherwise be
# ignored, and the model would silently keep no shutdown date or no replacement.
MODEL_KEYS = frozenset(
    {
        "name",
        "price",
        "tokens",
        "qualities",
        "sizes",
        "free_sizes",
        "max_input_images",
        "mask",
        "input_fidelity",
        "max_prompt_chars",
        "input_tokens_per_image",
        "shutdown",
        "replacement",
        "snapshots",
        "routes",
    }
)
ROUTE_KEYS = frozenset(
    {
        "provider",
        "shutdown",
        "free_sizes",
        "model",
        "price",
        "min_price",
        "mask",
        "mask_convention",
        "max_input_images",
        "sizes",
        "qualities",
        "backgrounds",
        "mask_backgrounds",
        "output_formats",
        "transparent_formats",
        "n",
        "max_prompt_chars",
        "input_fidelity",
    }
)


class CatalogError(Exception):
    """The catalog file is unreadable or inconsistent. Lists every problem."""


@dataclass(frozen=True)
class SizeRules:
    """Which free `WxH` sizes a model takes besides its listed ones (GPT Image 2 and later).

    Both edges a multiple of `multiple`, the long edge at most `max_ratio` times the short one, the
    pixel count within [min_pixels, max_pixels] and the longest edge at most `max_edge`.
    """

    multiple: int = 16
    min_pixels: int = 655_360
    max_pixels: int = 8_294_400
    max_edge: int = 3840
    max_ratio: Decimal = Decimal(3)

    def problem(self, size: str) -> str | None:
        """Why `size` is not a free size this model takes, or None when it is."""
        parsed = parse_size(size)
        if parsed is None:
            return "it is not WIDTHxHEIGHT"
        w, h = parsed
        if w % self.multiple or h % self.multiple:
            return f"both edges must be multiples of {self.multiple}"
        if max(w, h) > self.max_edge:
            return f"the longest edge is at most {self.max_edge}"
        if Decimal(max(w, h)) / Decimal(min(w, h)) > self.max_ratio:
            return f"the long edge is at most {self.max_ratio}× the short one"
        if not self.min_pixels <= w * h <= self.max_pixels:
            return f"it must have between {self.min_pixels:,} and {self.max_pixels:,} pixels"
        return None

    def describe(self) -> str:
        """Short user-facing text: what a free size must look like."""
        return (
            f"any WIDTHxHEIGHT with both edges multiples of {self.multiple}, up to {self.max_edge} "
            f"on the long edge, {self.min_pixels:,}–{self.max_pixels:,} pixels, at most "
            f"{self.max_ratio}:1"
        )


@dataclass(frozen=True)
class Route:
    """One provider selling a model, with that provider's price and what it can honour.

    `model` is the provider's own id for the model. `price` is a flat USD price per delivered
    image, or None for the model's list price (its token rates or per-image table). A capability
    left out of the catalog inherits the model's value; `n` defaults to False (routing then makes
    one call per image, which is always correct). "auto" in `sizes`/`qualities`/`backgrounds`
    means the route can leave that choice to the service.
    """

    provider: str
    model: str
    price: Decimal | None = None
    mask: bool = False
    mask_convention: str | None = None  # None: the provider adapter's own convention
    max_input_images: int = 1
    sizes: tuple[str, ...] = SIZES
    qualities: tuple[str, ...] = DEFAULT_QUALITIES
    backgrounds: tuple[str, ...] = BACKGROUNDS
    # The backgrounds a masked edit can have here (1min.ai's inpainter has no background field: auto).
    mask_backgrounds: tuple[str, ...] = BACKGROUNDS
    output_formats: tuple[str, ...] = OUTPUT_FORMATS
    # The formats a transparent background can be made in here (OpenAI: PNG or WebP; 1min.ai: PNG).
    transparent_formats: tuple[str, ...] = TRANSPARENT_FORMATS
    n: bool = False
    max_prompt_chars: int = 32000
    input_fidelity: bool = False
    # The day this provider stops selling the model (OpenAI's dates sit on the `openai` route).
    shutdown: dt.date | None = None
    # The route takes any free `WxH` size the model's SizeRules allow, not only `sizes`.
    free_sizes: bool = False
    # A list-priced route's published "from" price per image: what one image is held and charged at
    # least, where the reseller's own table is unknown but its lowest price is above OpenAI's.
    min_price: Decimal | None = None

    @property
    def list_priced(self) -> bool:
        return self.price is None

    @property
    def masked_backgrounds(self) -> tuple[str, ...]:
        """The backgrounds a masked edit can ask for here: its `mask_backgrounds` that the route makes
        at all (the catalog keeps one within the other; a route built in code may not)."""
        return tuple(b for b in self.mask_backgrounds if b in self.backgrounds)

    @property
    def key(self) -> tuple[str, str]:
        """(provider, provider's model id): what a retirement or a discovered date is recorded under."""
        return (self.provider, self.model)


@dataclass(frozen=True)
class TokenRates:
    """USD per 1M tokens."""

    text_input: Decimal
    image_input: Decimal
    image_output: Decimal
    text_output: Decimal = Decimal(0)


@dataclass(frozen=True)
class ModelEntry:
    """One model: what members may ask of it, its prices and dates, and the routes that sell it."""

    id: str
    name: str
    qualities: tuple[str, ...]
    sizes: tuple[str, ...]
    max_input_images: int
    mask: bool
    input_fidelity: bool
    max_prompt_chars: int
    prices: dict[str, dict[str, Decimal]]  # quality -> {"square": usd, "other": usd}
    routes: tuple[Route, ...]
    input_tokens_per_image: int = 6500
    tokens: TokenRates | None = None
    shutdown: dt.date | None = None
    replacement: str | None = None
    snapshots: tuple[str, ...] = ()  # dated ids of the same model (what OpenAI's model list shows)
    size_rules: SizeRules | None = None  # free WxH sizes; None = only `sizes`

    def route_shutdown(self, route: Route) -> dt.date | None:
        """When `route` stops: its own date, or the model's (a date on every route), whichever is first."""
        dates = [d for d in (route.shutdown, self.shutdown) if d is not None]
        return min(dates) if dates else None

    def accepts_size(self, size: str) -> bool:
        """A listed size, or a free `WxH` within the model's rules."""
        if size in self.sizes:
            return True
        return self.size_rules is not None and self.size_rules.problem(size) is None

    def quality_for_default(self, quality: str) -> str:
        """What a default `quality` (one not typed on the command) means for this model: itself when
        offered, else the dearest level offered at or below it, else the cheapest the model offers.

        A default is often set with another model in mind (/quality, then /settings model, or a
        server default); it must not make every edit fail, nor cost more than it asked for.
        """
        if quality in self.qualities:
            return quality
        levels = [q for q in self.qualities if q != "auto"]  # `auto` is the model's choice, not a level
        rank = QUALITY_RANK.get(quality, 0)
        below = [q for q in levels if QUALITY_RANK[q] <= rank]
        if below:
            return max(below, key=QUALITY_RANK.__getitem__)
        return min(self.qualities, key=QUALITY_RANK.__getitem__)

    def priced_qualities(self) -> tuple[str, ...]:
        return tuple(q for q in self.qualities if q in self.prices)

    def image_price(self, quality: str, size: str) -> Decimal:
        """List price of one output image, an upper bound where nothing is published.

        `auto` quality is priced as the model's dearest quality and `auto` size as the dearest listed
        one. No formula for free sizes is published (and the published non-square sizes cost less
        than the square one), so a free size is the square price scaled up by its area.
        """
        q = (
            max(self.priced_qualities(), key=lambda k: self.prices[k]["square"])
            if quality == "auto"
            else quality
        )
        by_size = self.prices[q]
        if size == "auto":
            return max(by_size.values())
        if size == SQUARE_SIZE:
            return by_size["square"]
        if size in SIZES:
            return by_size["other"]
        parsed = parse_size(size)
        if parsed is None:
            return max(by_size.values())
        scale = max(Decimal(1), Decimal(parsed[0] * parsed[1]) / SQUARE_PIXELS)
        return max(by_size.values()) * scale


@dataclass(frozen=True)
class Resolution:
    """The model a job will really use, plus a notice when it differs from what was asked."""

    model: ModelEntry
    notice: str | None = None


@dataclass(frozen=True)
class Catalog:
    """Every model the bot knows, in preference order (the catalog file's order)."""

    models: dict[str, ModelEntry] = field(default_factory=dict)

    def get(self, model_id: str) -> ModelEntry:
        try:
            return self.models[model_id]
        except KeyError:
            raise InvalidOptions(messages.unknown_model(model_id), code="unknown_model") from None


def usd_to_credits(usd: Decimal, credits_per_usd: int) -> int:
    """Credits = ceil(USD × rate), computed exactly."""
    return math.ceil(usd * credits_per_usd)


def reserve_usd(
    model: ModelEntry, *, quality: str, size: str, count: int, n_inputs: int, prompt: str
) -> Decimal:
    """The most a job can cost: every image at its worst price, plus worst-case input tokens."""
    total = model.image_price(quality, size) * count
    if model.tokens is not None:
        image_tokens = model.input_tokens_per_image * n_inputs
        # A byte-level tokenizer never makes more tokens than the text has UTF-8 bytes: the true worst
        # case (English runs near one token per four characters, but emoji and some scripts reach
        # several tokens per character, above any per-character guess).
        text_tokens = len(prompt.encode("utf-8"))
        total += (model.tokens.image_input * image_tokens + model.tokens.text_input * text_tokens) / MILLION
    return total


def actual_usd(
    model: ModelEntry,
    *,
    usage: Usage | None,
    images: int,
    quality: str | None,
    size: str | None,
    requested_quality: str,
    requested_size: str,
    provider_cost: str | None = None,
) -> Decimal:
    """What a finished job really cost.

    Preference: the provider's own reported charge, then usage tokens × token rates, then the list
    price of the quality and size the provider says it produced (falling back to what was asked).
    """
    if provider_cost is not None:
        return Decimal(provider_cost)
    if usage is not None and model.tokens is not None:
        t = model.tokens
        return (
            t.text_input * usage.input_text_tokens
            + t.image_input * usage.input_image_tokens
            + t.image_output * usage.output_image_tokens
            + t.text_output * usage.output_text_tokens
        ) / MILLION
    q = quality if quality in model.prices else requested_quality
    made = size is not None and size != "auto" and (size in SIZES or parse_size(size) is not None)
    s = size if made and size is not None else requested_size
    return model.image_price(q, s) * images


def _decimal(value: Any) -> Decimal:
    # TOML floats go through repr so 0.011 stays 0.011 instead of its binary approximation.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))


class _NotATable(ValueError):
    """A catalog value that must be a table is something else; its text is the whole problem."""


def _table(value: Any, where: str, shape: str) -> dict[str, Any]:
    """`value` when it is a TOML table; otherwise one catalog problem saying what `where` must be
    (a number where a table belongs would otherwise surface as an AttributeError traceback)."""
    if not isinstance(value, dict):
        raise _NotATable(f"{where}: must be a table {shape}")
    return value


def _prices(raw: dict[str, Any], where: str) -> dict[str, dict[str, Decimal]]:
    """`price.<quality> = { square = USD, other = USD }` for each priced quality the model lists."""
    table = _table(raw["price"], f"{where}.price", "of qualities, e.g. price.low = { square = …, other = … }")
    return {
        q: {
            k: _decimal(v)
            for k, v in _table(table[q], f"{where}.price.{q}", "{ square = …, other = … }").items()
        }
        for q in PRICED_QUALITIES
        if q in table
    }


def _token_rates(value: Any, where: str) -> TokenRates | None:
    """`tokens = { text_input = …, image_input = …, image_output = … }` (USD per 1M), or None."""
    if not value:
        return None
    table = _table(value, f"{where}.tokens", "of USD per 1M tokens (text_input, image_input, image_output)")
    return TokenRates(**{k: _decimal(v) for k, v in table.items()})


def _parse_model(model_id: str, raw: dict[str, Any], problems: list[str]) -> ModelEntry | None:
    where = f"models.{model_id}"
    try:
        _table(raw, where, "(a [models.ID] section)")
        _unknown_keys(raw, MODEL_KEYS, where, problems)
        prices = _prices(raw, where)
        qualities = tuple(raw.get("qualities", DEFAULT_QUALITIES))
        unknown = [q for q in qualities if q not in QUALITIES]
        if unknown:
            problems.append(f"{where}.qualities: unknown value(s) {', '.join(map(repr, unknown))}")
        missing = [q for q in qualities if q != "auto" and q not in prices]
        if "auto" in qualities and not prices:
            missing.append("any (needed to price auto)")
        if missing:
            problems.append(f"{where}: no price for quality {', '.join(missing)}")
        for q, by_size in prices.items():
            if set(by_size) != {"square", "other"}:
                problems.append(f"{where}.price.{q}: needs exactly `square` and `other`")
        tokens = _token_rates(raw.get("tokens"), where)
        # A negative price shrinks holds and charges (or makes a hold negative): never spend the
        # operator's money on a typo.
        amounts = {f"price.{q}.{k}": v for q, by_size in prices.items() for k, v in by_size.items()}
        amounts |= {f"tokens.{k}": v for k, v in vars(tokens).items()} if tokens else {}
        for name, value in amounts.items():
            if not value.is_finite() or value < 0:
                problems.append(f"{where}.{name}: must be a number of USD, 0 or more")
        rules = _size_rules(raw.get("free_sizes", False), where, problems)
        sizes = tuple(raw.get("sizes", SIZES))
        bad_sizes = [v for v in sizes if v not in SIZES and (rules is None or rules.problem(v))]
        if bad_sizes:
            problems.append(f"{where}.sizes: unknown value(s) {', '.join(map(repr, bad_sizes))}")
        entry = ModelEntry(
            id=model_id,
            name=raw.get("name", model_id),
            qualities=qualities,
            sizes=sizes,
            max_input_images=_count(raw, "max_input_images", 1, where, problems),
            mask=_flag(raw, "mask", False, where, problems),
            input_fidelity=_flag(raw, "input_fidelity", False, where, problems),
            max_prompt_chars=_count(raw, "max_prompt_chars", 32000, where, problems),
            prices=prices,
            routes=(),
            # A negative or zero count would shrink every hold below what the job can cost.
            input_tokens_per_image=_count(raw, "input_tokens_per_image", 6500, where, problems),
            tokens=tokens,
            shutdown=_date(raw, where, problems),
            replacement=raw.get("replacement") or None,
            snapshots=tuple(raw.get("snapshots", ())),
            size_rules=rules,
        )
        raw_routes = raw.get("routes", [])
        routes = tuple(
            _parse_route(entry, f"{where}.routes[{i}]", r, problems) for i, r in enumerate(raw_routes)
        )
        if not routes:
            problems.append(f"{where}: no routes (which provider sells it?)")
        return replace(entry, routes=routes)
    except _NotATable as exc:
        problems.append(str(exc))
        return None
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        problems.append(f"{where}: {type(exc).__name__}: {exc}")
        return None


def _flag(raw: dict[str, Any], key: str, default: bool, where: str, problems: list[str]) -> bool:
    """A TOML boolean. `mask = "no"` is a non-empty string, which `bool()` would read as true."""
    value = raw.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"{where}.{key}: must be true or false, not {value!r}")
        return default
    return value


def _count(raw: dict[str, Any], key: str, default: int, where: str, problems: list[str]) -> int:
    """A whole number of at least 1 (images, characters, tokens): 0 or less would refuse every job
    or shrink its hold, and would only show when a member's edit fails."""
    value = raw.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # `4.0` loaded before the check: a catalog that worked must keep working
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"{where}.{key}: must be at least 1 (a whole number), not {value!r}")
        return default
    return value


def _date(raw: dict[str, Any], where: str, problems: list[str]) -> dt.date | None:
    """`shutdown`: a TOML date (or an ISO `YYYY-MM-DD` string); empty means none.

    A TOML date and time (`2027-02-10T00:00:00Z`) is refused: it is a `datetime`, which every
    comparison with today's `date` would fail on at run time.
    """
    value = raw.get("shutdown")
    if value in (None, ""):
        return None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    shown = value.isoformat() if isinstance(value, dt.date | dt.time) else repr(value)
    problems.append(f"{where}.shutdown: must be a date (YYYY-MM-DD, no time of day), not {shown}")
    return None


# What a `free_sizes` table may set, and the least each may be: an edge multiple of 0 divides by
# zero when a member types a size, and a long edge under 1× the short one fits no size at all.
SIZE_RULE_MINIMUMS: dict[str, int] = {
    "multiple": 1,
    "min_pixels": 0,
    "max_pixels": 1,
    "max_edge": 1,
    "max_ratio": 1,
}


def _size_rules(value: Any, where: str, problems: list[str]) -> SizeRules | None:
    """`free_sizes = true` (GPT Image 2's rules) or a table overriding some of them."""
    if value is True:
        return SizeRules()
    if value is False or value == {}:  # an empty table meant none before the rules were checked
        return None
    if not isinstance(value, dict):
        problems.append(f"{where}.free_sizes: must be true, false or a table of rules, not {value!r}")
        return None
    fields: dict[str, Any] = {}
    for key, raw in value.items():
        least = SIZE_RULE_MINIMUMS.get(key)
        if least is None:
            problems.append(
                f"{where}.free_sizes: unknown rule {key!r} (known: {', '.join(SIZE_RULE_MINIMUMS)})"
            )
            continue
        number = _decimal(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None
        whole = key != "max_ratio"
        if number is None or not number.is_finite() or number < least or (whole and number % 1):
            kind = "a whole number" if whole else "a number"
            problems.append(f"{where}.free_sizes.{key}: must be {kind} of at least {least}, not {raw!r}")
            continue
        fields[key] = number if key == "max_ratio" else int(number)
    return SizeRules(**fields)


def _choices(
    raw: dict[str, Any],
    key: str,
    default: tuple[str, ...],
    allowed: tuple[str, ...] | Callable[[str], bool],
    where: str,
    problems: list[str],
    *,
    if_none: str = "",
) -> tuple[str, ...]:
    """`raw[key]` (else `default`), each value checked; `if_none` says what to write instead of none."""
    values = tuple(raw.get(key, default))
    ok = allowed if callable(allowed) else allowed.__contains__
    unknown = [v for v in values if not ok(v)]
    if unknown:
        problems.append(f"{where}.{key}: unknown value(s) {', '.join(map(repr, unknown))}")
    if not values:
        problems.append(f"{where}.{key}: must list at least one value{if_none}")
    return values


def _unknown_keys(raw: dict[str, Any], known: frozenset[str], where: str, problems: list[str]) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)}")


def _parse_route(model: ModelEntry, where: str, raw: dict[str, Any], problems: list[str]) -> Route:
    """One `routes` entry. Capabilities left out inherit the model's; problems are collected."""
    _table(raw, where, '(provider = "…", …)')
    _unknown_keys(raw, ROUTE_KEYS, where, problems)
    provider = raw["provider"]
    if provider not in KNOWN_PROVIDERS:
        # A misspelt provider would pass and the route would never be used (no such key is configured).
        problems.append(
            f"{where}.provider: unknown provider {provider!r} (known: {', '.join(KNOWN_PROVIDERS)})"
        )
    raw_price = raw.get("price", LIST_PRICE)
    price: Decimal | None = None
    if raw_price != LIST_PRICE:
        price = _decimal(raw_price)
        if not price.is_finite() or price < 0:
            problems.append(f'{where}.price: must be "{LIST_PRICE}" or a USD amount of 0 or more')
    min_price = _decimal(raw["min_price"]) if "min_price" in raw else None
    if min_price is not None and (not min_price.is_finite() or min_price < 0 or price is not None):
        problems.append(f"{where}.min_price: must be a USD amount of 0 or more, on a list-priced route")
    convention = raw.get("mask_convention")
    if convention is not None and convention not in MASK_CONVENTIONS:
        problems.append(f"{where}.mask_convention: must be one of {', '.join(MASK_CONVENTIONS)}")
    backgrounds = _choices(raw, "backgrounds", BACKGROUNDS, BACKGROUNDS, where, problems)
    mask_backgrounds = _choices(
        raw,
        "mask_backgrounds",
        backgrounds,
        BACKGROUNDS,
        where,
        problems,
        if_none=" (a route that takes no masked edits says mask = false)",
    )
    if not set(mask_backgrounds) <= set(backgrounds):
        problems.append(f"{where}.mask_backgrounds: must be among the route's backgrounds")
    free = _flag(raw, "free_sizes", False, where, problems)
    if free and model.size_rules is None:
        problems.append(f"{where}.free_sizes: the model takes no free sizes (set free_sizes on the model)")
    return Route(
        provider=provider,
        model=raw.get("model", model.id),
        price=price,
        mask=_flag(raw, "mask", model.mask, where, problems),
        mask_convention=convention,
        max_input_images=_count(raw, "max_input_images", model.max_input_images, where, problems),
        sizes=_choices(raw, "sizes", model.sizes, model.accepts_size, where, problems),
        qualities=_choices(raw, "qualities", model.qualities, model.qualities, where, problems),
        backgrounds=backgrounds,
        mask_backgrounds=mask_backgrounds,
        output_formats=_choices(raw, "output_formats", OUTPUT_FORMATS, OUTPUT_FORMATS, where, problems),
        transparent_formats=_choices(
            raw, "transparent_formats", TRANSPARENT_FORMATS, TRANSPARENT_FORMATS, where, problems
        ),
        n=_flag(raw, "n", False, where, problems),
        max_prompt_chars=_count(raw, "max_prompt_chars", model.max_prompt_chars, where, problems),
        input_fidelity=_flag(raw, "input_fidelity", model.input_fidelity, where, problems),
        shutdown=_date(raw, where, problems),
        free_sizes=free,
        min_price=min_price,
    )


def parse_catalog(data: dict[str, Any]) -> Catalog:
    problems: list[str] = []
    models = {}
    raw_models = data.get("models", {})
    if not isinstance(raw_models, dict):
        raise CatalogError("`models` must be a table of model entries")
    for model_id, raw in raw_models.items():
        entry = _parse_model(model_id, raw, problems)
        if entry is not None:
            models[model_id] = entry
    for m in models.values():
        if m.replacement and m.replacement not in models:
            problems.append(f"models.{m.id}.replacement: unknown model {m.replacement!r}")
    if not models and not problems:
        problems.append("the catalog lists no models")
    if problems:
        raise CatalogError("; ".join(problems))
    return Catalog(models)


def load_catalog(path: Path | None = None) -> Catalog:
    """Load `path`, or the catalog shipped inside the package."""
    try:
        if path is None:
            text = (resources.files("bot") / "data" / PACKAGED_CATALOG).read_text("utf-8")
        else:
            text = path.read_text("utf-8")
        return parse_catalog(tomllib.loads(text))
    except UnicodeDecodeError as exc:
        # TOML files are UTF-8; an editor's Latin-1 or UTF-16 save is said as such, not as a traceback.
        raise CatalogError(
            f"cannot read the model catalog {path or PACKAGED_CATALOG}: it is not UTF-8 text "
            f"(byte {exc.object[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        ) from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"cannot read the model catalog {path or PACKAGED_CATALOG}: {exc}") from exc
