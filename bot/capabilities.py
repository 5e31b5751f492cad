"""The catalog is the one statement of what each route can do; this checks it against the adapters.

A route in the catalog says which sizes, qualities, backgrounds, formats, how many input images and
whether masks its provider takes. Routing believes it (`bot.routing.blockers`), so a route that
promises more than its adapter can send would fail every job that relies on the promise. At start-up
every configured route is tried against its adapter's own local check (`ValidatingProvider`), one
declared capability at a time (and a mask with each background routing lets a masked edit have), with
nothing sent anywhere; a route that fails is disabled (logged, shown by `/diagnose`) and the bot keeps
editing on the others. A route whose only failures are a mask with some backgrounds (a catalog copy
older than `mask_backgrounds`: 1min.ai's inpainter takes no background) is narrowed instead: its masked
edits keep the backgrounds that passed, its other edits go on (logged, shown by `/diagnose`). One whose
only failures are masks, with every background, is narrowed the same way to no masked edits at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from bot.catalog import Catalog, ModelEntry, Route
from bot.providers.base import EditRequest, InputImage, Provider, ValidatingProvider
from bot.providers.errors import ProviderError

log = logging.getLogger(__name__)

MAX_SHOWN = 4  # problems named per disabled route (the first ones say what to fix)
# A stand-in input: adapters check counts and declared sizes, never decode pixels locally.
_PROBE_IMAGE = InputImage(data=b"\x89PNG probe", mime="image/png", width=1024, height=1024)


def _probes(route: Route) -> Iterator[tuple[str, EditRequest]]:
    """One request per declared capability: the route's first choice of everything, then each
    size, quality, background and format in turn, the most images, a mask (and with it each background
    a masked edit may have), the longest prompt."""
    base = EditRequest(
        images=(_PROBE_IMAGE,),
        prompt="probe",
        model=route.model,
        quality=route.qualities[0],
        size=route.sizes[0],
        background=route.backgrounds[0],
        output_format=route.output_formats[0],
        deadline=time.monotonic() + 60,
    )
    yield "its first choices", base
    for size in route.sizes:
        yield f"size {size}", replace(base, size=size)
    for quality in route.qualities:
        yield f"quality {quality}", replace(base, quality=quality)
    for background in route.backgrounds:
        if background == "transparent" and base.output_format not in route.transparent_formats:
            continue  # never asked together (routing, or the job service for JPEG, refuses it first)
        yield f"background {background}", replace(base, background=background)
    if "transparent" in route.backgrounds:
        for fmt in route.transparent_formats:
            if fmt in route.output_formats:
                yield (
                    f"background transparent as {fmt}",
                    replace(base, background="transparent", output_format=fmt),
                )
    for fmt in route.output_formats:
        yield f"format {fmt}", replace(base, output_format=fmt)
    yield (
        f"{route.max_input_images} input images",
        replace(base, images=(_PROBE_IMAGE,) * route.max_input_images),
    )
    if route.mask:
        yield from _mask_probes(route, replace(base, mask=_PROBE_IMAGE))
    yield f"a {route.max_prompt_chars}-character prompt", replace(base, prompt="x" * route.max_prompt_chars)


def _mask_probes(route: Route, masked: EditRequest) -> Iterator[tuple[str, EditRequest]]:
    """A mask with each background routing lets a masked edit have (`blockers`), `auto` said as just
    "a mask": a vendor's inpainter may take no background where its plain edit does (1min.ai)."""
    for background in route.masked_backgrounds:  # another is never asked: routing refuses it first
        if background != "transparent":
            what = "a mask" if background == "auto" else f"a mask with background {background}"
            yield what, replace(masked, background=background)
            continue
        for fmt in route.transparent_formats:
            if fmt in route.output_formats:
                yield (
                    f"a mask with background transparent as {fmt}",
                    replace(masked, background="transparent", output_format=fmt),
                )


def _refusals(route: Route, adapter: ValidatingProvider) -> list[tuple[str, EditRequest]]:
    """Each probe of `route` that `adapter` refuses: (what it tried and the error's name, the request)."""
    refused = []
    for what, request in _probes(route):
        try:
            adapter.validate(request)
        except ProviderError as exc:
            refused.append((f"{what} ({type(exc).__name__})", request))
    return refused


def route_problems(route: Route, adapter: ValidatingProvider) -> list[str]:
    """What `route` declares that `adapter` would refuse (empty: the catalog and the adapter agree)."""
    return [what for what, _ in _refusals(route, adapter)]


@dataclass(frozen=True)
class RouteCheck:
    """What the start-up check found. `catalog` is what routing may believe: the checked catalog with
    each narrowed route's masked edits cut to the backgrounds its adapter sends (or off). `disabled` and
    `narrowed`: {(provider, route model): why}."""

    catalog: Catalog
    disabled: dict[tuple[str, str], str] = field(default_factory=dict)
    narrowed: dict[tuple[str, str], str] = field(default_factory=dict)


def check_routes(catalog: Catalog, providers: Mapping[str, Provider]) -> RouteCheck:
    """Every configured route checked against its adapter: disabled when it declares a capability the
    adapter refuses, narrowed when only (some or all backgrounds of) its masked edits are refused. Adapters
    without a local check (OpenAI takes what the API takes) are trusted."""
    check = RouteCheck(catalog)
    models = {}
    for model in catalog.models.values():
        routes = tuple(_checked_route(model, route, providers, check) for route in model.routes)
        if routes == model.routes:
            models[model.id] = model
            continue
        # Narrowed to no masked edits on every configured route: the model is not offered for /mask
        # (a masked edit of it is refused by name, as for a model without masks, not by its routes).
        masks = model.mask and any(r.mask for r in routes if r.provider in providers)
        models[model.id] = replace(model, routes=routes, mask=masks)
    return replace(check, catalog=Catalog(models)) if check.narrowed else check


def _checked_route(
    model: ModelEntry, route: Route, providers: Mapping[str, Provider], check: RouteCheck
) -> Route:
    """`route` as routing may believe it (narrowed, or as written), its finding put in `check`."""
    adapter = providers.get(route.provider)
    if not isinstance(adapter, ValidatingProvider):
        return route
    refused = _refusals(route, adapter)
    if not refused:
        return route
    problems = [what for what, _ in refused]
    shown = ", ".join(problems[:MAX_SHOWN]) + (" …" if len(problems) > MAX_SHOWN else "")
    cannot = f"the {route.provider} adapter cannot send {shown}"
    kept = _mask_backgrounds_kept(route, [request for _, request in refused])
    if kept is None:
        check.disabled[route.key] = cannot
        _log_disabled(model, route, cannot)
        return route
    if not kept:
        # Every mask failed, nothing else did: its unmasked edits still work, so only masks are taken off.
        check.narrowed[route.key] = f"it takes no masked edits: {cannot}"
        _log_narrowed(model, route, check.narrowed[route.key], fix="set its mask = false")
        return replace(route, mask=False)
    check.narrowed[route.key] = f"its masked edits take background {' or '.join(kept)} only: {cannot}"
    _log_narrowed(model, route, check.narrowed[route.key], fix="set its mask_backgrounds")
    return replace(route, mask_backgrounds=kept)


def _mask_backgrounds_kept(route: Route, refused: list[EditRequest]) -> tuple[str, ...] | None:
    """The backgrounds `route`'s masked edits keep when every refused request was a mask with one of
    its mask backgrounds (empty: none passed, and the route keeps only its unmasked edits; None:
    something else failed, and the route is disabled)."""
    if any(r.mask is None or r.background not in route.mask_backgrounds for r in refused):
        return None
    lost = {r.background for r in refused}
    return tuple(b for b in route.masked_backgrounds if b not in lost)


def _log_disabled(model: ModelEntry, route: Route, reason: str) -> None:
    log.error(
        "catalog route %s/%s of %s disabled: %s; fix the catalog (CATALOG_PATH) or the route",
        route.provider,
        route.model,
        model.id,
        reason,
    )


def _log_narrowed(model: ModelEntry, route: Route, reason: str, *, fix: str) -> None:
    log.warning(
        "catalog route %s/%s of %s narrowed: %s; %s in the catalog (CATALOG_PATH)",
        route.provider,
        route.model,
        model.id,
        reason,
        fix,
    )
