"""The catalog is the one statement of what each route can do; this checks it against the adapters.

A route in the catalog says which sizes, qualities, backgrounds, formats, how many input images and
whether masks its provider takes. Routing believes it (`bot.routing.blockers`), so a route that
promises more than its adapter can send would fail every job that relies on the promise. At start-up
every configured route is tried against its adapter's own local check (`ValidatingProvider`), one
declared capability at a time (and a mask with each background routing lets a masked edit have), with
nothing sent anywhere; a route that fails is disabled (logged,
shown by `/diagnose`) and the bot keeps editing on the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace

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
    """A mask, then with it each other background routing lets a masked edit have (`blockers`): a
    vendor's inpainter may take no background where its plain edit does (1min.ai)."""
    yield "a mask", masked
    for background in route.mask_backgrounds:
        if background not in route.backgrounds or background == masked.background:
            continue  # never asked (routing refuses the background first), or just probed
        if background != "transparent":
            yield f"a mask with background {background}", replace(masked, background=background)
            continue
        for fmt in route.transparent_formats:
            if fmt in route.output_formats:
                yield (
                    f"a mask with background transparent as {fmt}",
                    replace(masked, background="transparent", output_format=fmt),
                )


def route_problems(route: Route, adapter: ValidatingProvider) -> list[str]:
    """What `route` declares that `adapter` would refuse (empty: the catalog and the adapter agree)."""
    problems = []
    for what, request in _probes(route):
        try:
            adapter.validate(request)
        except ProviderError as exc:
            problems.append(f"{what} ({type(exc).__name__})")
    return problems


def disabled_routes(catalog: Catalog, providers: Mapping[str, Provider]) -> dict[tuple[str, str], str]:
    """{(provider, route model): why} for every configured route whose adapter refuses a declared
    capability. Adapters without a local check (OpenAI takes what the API takes) are trusted."""
    disabled: dict[tuple[str, str], str] = {}
    for model in catalog.models.values():
        for route in model.routes:
            adapter = providers.get(route.provider)
            if not isinstance(adapter, ValidatingProvider):
                continue
            problems = route_problems(route, adapter)
            if problems:
                shown = ", ".join(problems[:MAX_SHOWN]) + (" …" if len(problems) > MAX_SHOWN else "")
                reason = f"the {route.provider} adapter cannot send {shown}"
                disabled[route.key] = reason
                _log_disabled(model, route, reason)
    return disabled


def _log_disabled(model: ModelEntry, route: Route, reason: str) -> None:
    log.error(
        "catalog route %s/%s of %s disabled: %s; fix the catalog (CATALOG_PATH) or the route",
        route.provider,
        route.model,
        model.id,
        reason,
    )
