"""What a job asks of a route (`Needs`), which routes can honour it (`blockers`), the request as
a route gets it (`adapt`), and what the job costs there (`route_reserve_usd`, `charge_usd`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation

from bot.catalog import ModelEntry, Route, actual_usd, reserve_usd, usd_to_credits
from bot.domain.options import SIZES, HasOutputOptions, output_options, parse_size
from bot.providers.base import EditRequest, EditResult

log = logging.getLogger(__name__)

AUTO = "auto"
# The prompt a price shown before one is typed is held for (bytes: a token each in the worst case).
# A few sentences; a longer prompt adds its text tokens (5 credits per 1,000 bytes at $5/M and the
# default rate), which the edit's own hold still covers.
HINT_PROMPT_BYTES = 1000


# --------------------------------------------------------------------------- what a job needs


@dataclass(frozen=True, slots=True)
class Needs:
    """What one job asks of a route (plain values, so it can be checked before images are read)."""

    images: int
    size: str
    quality: str
    background: str
    output_format: str
    count: int = 1
    mask: bool = False
    prompt_chars: int = 0
    input_fidelity: bool = False

    @classmethod
    def of(cls, request: EditRequest) -> Needs:
        """What a provider request asks for (the route is chosen again for it)."""
        return cls.with_options(
            request,
            images=len(request.images),
            mask=request.mask is not None,
            prompt_chars=len(request.prompt),
            input_fidelity=request.input_fidelity is not None,
        )

    @classmethod
    def with_options(
        cls,
        options: HasOutputOptions,
        *,
        images: int,
        mask: bool,
        prompt_chars: int,
        input_fidelity: bool = False,
    ) -> Needs:
        """A job's needs from its options (a request, a stored job, the merged defaults) and inputs."""
        return cls(
            images=images,
            **output_options(options),
            mask=mask,
            prompt_chars=prompt_chars,
            input_fidelity=input_fidelity,
        )


def _concrete_sizes(route: Route) -> tuple[str, ...]:
    return tuple(s for s in route.sizes if s != AUTO)


def _concrete_qualities(route: Route) -> tuple[str, ...]:
    return tuple(q for q in route.qualities if q != AUTO)


def _takes_size(route: Route, size: str) -> bool:
    """A listed size, `auto` where a concrete size can stand in, or a free WxH on a free-size route.

    Free sizes were checked against the model's rules before routing (`ModelEntry.accepts_size`).
    """
    if size in route.sizes:
        return True
    if size == AUTO:
        return bool(_concrete_sizes(route))
    return route.free_sizes and parse_size(size) is not None


def blockers(route: Route, needs: Needs) -> tuple[str, ...]:
    """The options `route` cannot honour for `needs`; empty when the route is eligible.

    `count` never blocks (it is emulated without `n`), nor does `size=auto` on a route with
    concrete sizes (the nearest shape is picked) or `quality=auto` on a route that needs a concrete
    quality (see `adapt`).
    """
    out = []
    if needs.mask and not route.mask:
        out.append("mask")
    if needs.images > route.max_input_images:
        out.append("images")
    if not _takes_size(route, needs.size):
        out.append("size")
    if needs.quality not in route.qualities and not (needs.quality == AUTO and _concrete_qualities(route)):
        out.append("quality")
    if needs.background not in route.backgrounds:
        out.append("background")
    elif needs.mask and route.mask and needs.background not in route.mask_backgrounds:
        out.append("mask_background")
    if needs.output_format not in route.output_formats:
        out.append("format")
    elif needs.background == "transparent" and needs.output_format not in route.transparent_formats:
        out.append("transparent_format")
    if needs.prompt_chars > route.max_prompt_chars:
        out.append("prompt")
    if needs.input_fidelity and not route.input_fidelity:
        out.append("input_fidelity")
    return tuple(out)


def nearest_size(sizes: Sequence[str], width: int, height: int) -> str:
    """The `WxH` size in `sizes` whose shape is closest to `width`×`height` (first one on a tie)."""
    concrete = [s for s in sizes if s != AUTO]
    if not concrete:
        raise ValueError("no concrete size to choose from")
    target = math.log(max(width, 1) / max(height, 1))

    def distance(size: str) -> float:
        w, h = (int(v) for v in size.split("x"))
        return abs(math.log(w / h) - target)

    return min(concrete, key=distance)


def auto_quality(route: Route) -> str:
    """What `auto` quality becomes on a route that needs a concrete one (1min.ai, WaveSpeed's 2.x).

    "high" where the route has it (what OpenAI's `auto` usually picks), else its best listed one.
    On such a route `auto` is held and priced at this quality (`held_quality`), not the model's dearest.
    """
    concrete = _concrete_qualities(route)
    return "high" if "high" in concrete else concrete[-1]


def held_quality(route: Route, quality: str) -> str:
    """The quality a job's `quality` is priced at on `route`: itself, except an `auto` the route cannot
    leave to the service, which is sent (and so held) as `auto_quality`. Held at the model's dearest
    instead, `auto` looked dearer than it is there, and a member short of that was moved to a "cheaper"
    quality that cost more than `auto` would have."""
    if quality == AUTO and AUTO not in route.qualities and _concrete_qualities(route):
        return auto_quality(route)
    return quality


def adapt(request: EditRequest, route: Route) -> EditRequest:
    """The request as `route`'s provider gets it: its model id, and `auto` size/quality resolved
    where the route needs a concrete value."""
    changes: dict[str, object] = {"model": route.model}
    if request.size == AUTO and AUTO not in route.sizes and request.images:
        first = request.images[0]
        changes["size"] = nearest_size(_auto_sizes(route), first.width, first.height)
    if (quality := held_quality(route, request.quality)) != request.quality:
        changes["quality"] = quality
    return replace(request, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- prices


def route_reserve_usd(model: ModelEntry, route: Route, needs: Needs, *, prompt: str) -> Decimal:
    """The most a job can cost on `route`: flat price × count, or the model's worst-case list price
    (never below the route's `min_price` per image).

    On a list-priced route without `n`, every image is its own call and pays its own input tokens.
    """
    if route.price is not None:
        return route.price * needs.count
    per_call = needs.count if route.n else 1
    quality = held_quality(route, needs.quality)
    size = held_size(model, route, quality, needs.size)
    one = reserve_usd(model, quality=quality, size=size, count=per_call, n_inputs=needs.images, prompt=prompt)
    one = _at_least(route, one, per_call)
    return one if route.n else one * needs.count


@dataclass(frozen=True, slots=True)
class Hold:
    """The credits a job holds, and what they cover: the member never pays more, so a route whose
    worst case for the job needs more would leave the rest to the operator, past every budget that
    was checked against the hold."""

    credits: int
    credits_per_usd: int

    def covers(self, usd: Decimal) -> bool:
        """Whether a worst case of `usd` fits the hold. Rounded as the hold was (`usd_to_credits` of the
        worst case over the routes then), so no route the hold was priced on ever falls outside it."""
        return usd_to_credits(usd, self.credits_per_usd) <= self.credits


def dearest_edit(
    model: ModelEntry,
    routes: Sequence[Route],
    quality: str,
    size: str,
    *,
    images: int = 1,
    prompt: str | None = None,
) -> Decimal:
    """The most a one-image edit at `quality` and `size` with `images` input images and `prompt` is held
    (and so charged) on any of `routes`: the output image plus the input images' and prompt's tokens,
    as `route_reserve_usd` holds them. What the prices members are shown mean by "up to"; with no
    prompt yet, one of HINT_PROMPT_BYTES bytes. A route that cannot make `quality` or `size` never
    serves such a job, so its price is not counted; with no route known, the model's list price."""
    text = "x" * HINT_PROMPT_BYTES if prompt is None else prompt
    needs = replace(_probe(quality, size), images=max(images, 1), prompt_chars=len(text))
    able = [r for r in routes if not {"size", "quality"} & set(blockers(r, needs))]
    held = [route_reserve_usd(model, route, needs, prompt=text) for route in able or routes]
    if held:
        return max(held)
    return reserve_usd(model, quality=quality, size=size, count=1, n_inputs=needs.images, prompt=text)


def _probe(quality: str, size: str) -> Needs:
    """The least a job at `quality` and `size` needs (what a price hint asks of a route)."""
    return Needs(images=1, size=size, quality=quality, background=AUTO, output_format="png")


def _auto_sizes(route: Route) -> list[str]:
    """What `auto` size may become on a route that cannot leave it to the service: its standard sizes
    (1024x1024, 1536x1024, 1024x1536: what OpenAI's own `auto` picks from, and what `auto` is priced
    at), or, on a route with none of those, every size it has."""
    standard = [s for s in route.sizes if s in SIZES and s != AUTO]
    return standard or [s for s in route.sizes if s != AUTO]


def held_size(model: ModelEntry, route: Route, quality: str, size: str) -> str:
    """The size a job's `size` is priced at on `route` before its images are seen: itself, except an
    `auto` the route cannot leave to the service, which is held at the dearest size `adapt` may turn it
    into (on a route whose sizes are all large, such as 2048x1152, above the model's `auto` price)."""
    if size != AUTO or AUTO in route.sizes:
        return size
    # What `adapt` can pick: each size asked for its own shape gives the one `nearest_size` takes for
    # that shape (the first of several alike), and every shape is nearest to one of them.
    candidates = _auto_sizes(route)
    reachable = {nearest_size(candidates, *(int(v) for v in s.split("x"))) for s in candidates}
    return max([*reachable, AUTO], key=lambda s: model.image_price(quality, s))


def _at_least(route: Route, usd: Decimal, images: int) -> Decimal:
    """`usd` for `images` images on a list-priced route, raised to its published lowest price."""
    return usd if route.min_price is None else max(usd, route.min_price * images)


def _reported_cost(result: EditResult) -> Decimal | None:
    if result.cost_usd is None:
        return None
    try:
        value = Decimal(result.cost_usd)
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() and value >= 0 else None


def charge_usd(model: ModelEntry, route: Route, result: EditResult, request: EditRequest) -> Decimal:
    """What `result` (one provider call) costs on `route`.

    The provider's own reported charge first (Segmind's `x-cost`), then the route's flat price per
    delivered image, then the model's list price (token usage, else the per-image table for the
    quality and size the provider says it made, falling back to what was asked), never below the
    route's `min_price` per image.
    """
    reported = _reported_cost(result)
    if reported is not None:
        return reported
    if route.price is not None:
        return route.price * len(result.images)
    listed = actual_usd(
        model,
        usage=result.usage,
        images=len(result.images),
        quality=result.quality,
        size=result.size,
        requested_quality=request.quality,
        requested_size=request.size,
    )
    return _at_least(route, listed, len(result.images))


def split_charge(
    model: ModelEntry, route: Route, result: EditResult, request: EditRequest
) -> tuple[Decimal, Decimal]:
    """(what the member pays, what the provider billed beyond that) for one provider call.

    A call asked for `request.count` images is billed for all of them, but an image that came back
    unusable (skipped by the adapter) is not the member's: they pay for the images they receive, and
    the rest counts against the budgets as absorbed spend. A charge for the whole call (reported
    cost, token usage) is shared out per image; a per-image charge covers only what came back.
    """
    member = charge_usd(model, route, result, request)
    delivered, asked = len(result.images), max(request.count, 1)
    if delivered >= asked or delivered == 0:
        return member, Decimal(0)
    whole_call = _reported_cost(result) is not None or (
        route.price is None and result.usage is not None and model.tokens is not None
    )
    if whole_call:
        share = member * delivered / asked
        return share, member - share
    return member, member / delivered * (asked - delivered)
