"""Routing: which provider serves an edit, in what order, and what happens when one fails.

A catalog model lists the routes that sell it (`bot.catalog.Route`): a provider, that provider's id
for the model, its price and what it can honour. For one job the router

1. keeps the routes whose provider is configured and that can honour every option the job asks
   for (**never silently drop a parameter**: a route without mask support, or with fewer input
   images, or without the asked size, quality, background or format is not eligible). Two things
   are emulated rather than refused: `count` on a route without `n` (one call per image, in
   parallel, charged per image delivered) and `size=auto` on a route with fixed sizes only (the
   size closest to the first image's shape, which is what "auto" picks at OpenAI);
2. orders them by `PROVIDER_ORDER` (a per-call `order` can override it; routes of providers the
   order does not name follow in catalog order) and skips providers whose circuit breaker is open;
3. calls the first one. It falls back to the next route **only** when the provider provably did not
   take the job (`not exc.accepted and exc.retryable_elsewhere`: connection refused, auth or
   balance problems, a 429 whose wait outlasts the deadline, a 5xx on a submit that returned no
   job id, a failed upload). Anything the provider may have accepted (and billed) is never sent
   anywhere else: the error goes back to the job service, which refunds the user.

The result carries the route that served it, so the charge follows that route: the provider's own
reported cost (Segmind's `x-cost`), else the route's flat price per delivered image, else the
model's list price (OpenAI token usage or per-image table).

Nothing here knows about Discord.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation

from bot.catalog import ModelEntry, Route, actual_usd, reserve_usd
from bot.concurrency import LimitState, ProviderLimiter
from bot.domain.options import Usage, parse_size
from bot.errors import InvalidOptions
from bot.providers import errors as perr
from bot.providers.base import CancellableProvider, EditRequest, EditResult, Provider, ResumableProvider

log = logging.getLogger(__name__)

AUTO = "auto"
BREAKER_THRESHOLD = 3  # consecutive failures that open a provider's circuit
BREAKER_COOLDOWN = 60.0  # seconds an open circuit skips its provider before one trial call

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"

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
        return cls(
            images=len(request.images),
            size=request.size,
            quality=request.quality,
            background=request.background,
            output_format=request.output_format,
            count=request.count,
            mask=request.mask is not None,
            prompt_chars=len(request.prompt),
            input_fidelity=request.input_fidelity is not None,
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
    if needs.output_format not in route.output_formats:
        out.append("format")
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
    The hold for `auto` is the model's dearest quality, so this never costs more than was held.
    """
    concrete = _concrete_qualities(route)
    return "high" if "high" in concrete else concrete[-1]


def adapt(request: EditRequest, route: Route) -> EditRequest:
    """The request as `route`'s provider gets it: its model id, and `auto` size/quality resolved
    where the route needs a concrete value."""
    changes: dict[str, object] = {"model": route.model}
    if request.size == AUTO and AUTO not in route.sizes and request.images:
        first = request.images[0]
        changes["size"] = nearest_size(route.sizes, first.width, first.height)
    if request.quality == AUTO and AUTO not in route.qualities:
        changes["quality"] = auto_quality(route)
    return replace(request, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- prices


def route_reserve_usd(model: ModelEntry, route: Route, needs: Needs, *, prompt: str) -> Decimal:
    """The most a job can cost on `route`: flat price × count, or the model's worst-case list price.

    On a list-priced route without `n`, every image is its own call and pays its own input tokens.
    """
    if route.price is not None:
        return route.price * needs.count
    per_call = needs.count if route.n else 1
    one = reserve_usd(
        model, quality=needs.quality, size=needs.size, count=per_call, n_inputs=needs.images, prompt=prompt
    )
    return one if route.n else one * needs.count


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
    quality and size the provider says it made, falling back to what was asked).
    """
    reported = _reported_cost(result)
    if reported is not None:
        return reported
    if route.price is not None:
        return route.price * len(result.images)
    return actual_usd(
        model,
        usage=result.usage,
        images=len(result.images),
        quality=result.quality,
        size=result.size,
        requested_quality=request.quality,
        requested_size=request.size,
    )


# --------------------------------------------------------------------------- circuit breaker


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    trial: bool = False


class CircuitBreaker:
    """Skips a provider after `threshold` consecutive failures, for `cooldown` seconds.

    After the cool-down one trial call is let through (half-open); its success closes the circuit,
    its failure opens it for another cool-down. Opening and closing are logged. `clock` is
    injectable so tests need no sleeps.
    """

    def __init__(
        self,
        *,
        threshold: int = BREAKER_THRESHOLD,
        cooldown: float = BREAKER_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or cooldown < 0:
            raise ValueError("threshold must be at least 1 and cooldown not negative")
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def _circuit(self, provider: str) -> _Circuit:
        return self._circuits.setdefault(provider, _Circuit())

    def state(self, provider: str) -> str:
        """closed, half_open (cooled down, or its trial call is running) or open."""
        c = self._circuit(provider)
        if c.opened_at is None:
            return CLOSED
        if c.trial or self._clock() - c.opened_at >= self.cooldown:
            return HALF_OPEN
        return OPEN

    def states(self) -> dict[str, str]:
        """Every provider seen so far and its state (for metrics)."""
        return {name: self.state(name) for name in self._circuits}

    def allow(self, provider: str) -> bool:
        """May a call go to `provider` now? Taking the half-open trial slot counts as a call."""
        c = self._circuit(provider)
        if c.opened_at is None:
            return True
        if c.trial or self._clock() - c.opened_at < self.cooldown:
            return False
        c.trial = True
        log.info("circuit for %s is half-open: letting one trial call through", provider)
        return True

    def record(self, provider: str, healthy: bool | None) -> None:
        """The outcome of a call that `allow` let through: True worked, False failed, None no verdict."""
        c = self._circuit(provider)
        was_trial, c.trial = c.trial, False
        if healthy is None:
            return  # e.g. cancelled, or an answer that says nothing about health: free the slot only
        if healthy:
            if c.opened_at is not None:
                log.warning("circuit for %s closed: it answered again", provider)
            c.failures, c.opened_at = 0, None
            return
        c.failures += 1
        if was_trial:
            c.opened_at = self._clock()
            log.warning(
                "circuit for %s re-opened: the trial call failed; skipping it for %.0f s",
                provider,
                self.cooldown,
            )
        elif c.opened_at is None and c.failures >= self.threshold:
            c.opened_at = self._clock()
            log.warning(
                "circuit for %s opened after %d consecutive failures; skipping it for %.0f s",
                provider,
                c.failures,
                self.cooldown,
            )


def _verdict(exc: perr.ProviderError) -> bool | None:
    """What a failure says about the provider's health."""
    if isinstance(exc, perr.ProviderRejected | perr.InvalidInput):
        # An answer refusing the input shows the provider works; a refusal made locally by the
        # adapter (no status: nothing was sent) shows nothing either way.
        return True if exc.status is not None else None
    if isinstance(exc, perr.ModelUnavailable):
        return None  # one model is missing; the provider may be fine
    return False


# --------------------------------------------------------------------------- the executor


@dataclass(frozen=True)
class Served:
    """A finished edit and the route that served it (the charge follows that route)."""

    result: EditResult
    route: Route
    cost_usd: Decimal
    requested: int  # images asked for
    refused_by: tuple[str, ...] = field(default=())  # providers tried first that did not take the job

    @property
    def notice(self) -> str | None:
        """User-facing text when fewer images came back than were asked for."""
        delivered = len(self.result.images)
        if delivered >= self.requested:
            return None
        return (
            f"Only {delivered} of the {self.requested} images could be made; "
            f"you were charged for {delivered}."
        )


def _merge(results: Sequence[EditResult]) -> EditResult:
    """One result from the parallel single-image calls of an emulated `count`."""
    if len(results) == 1:
        return results[0]
    usages = [r.usage for r in results if r.usage is not None]
    usage = None
    if usages:
        usage = Usage(
            input_text_tokens=sum(u.input_text_tokens for u in usages),
            input_image_tokens=sum(u.input_image_tokens for u in usages),
            output_image_tokens=sum(u.output_image_tokens for u in usages),
            output_text_tokens=sum(u.output_text_tokens for u in usages),
        )
    costs = [_reported_cost(r) for r in results]
    known = [c for c in costs if c is not None]  # a total only when every call reported its cost
    return EditResult(
        images=tuple(image for r in results for image in r.images),
        provider=results[0].provider,
        quality=next((r.quality for r in results if r.quality), None),
        size=next((r.size for r in results if r.size), None),
        usage=usage,
        request_id=",".join(r.request_id for r in results if r.request_id) or None,
        cost_usd=str(sum(known, Decimal(0))) if len(known) == len(costs) else None,
    )


def _worst(errors: Sequence[perr.ProviderError]) -> perr.ProviderError:
    """The error to report when every call of an emulated `count` failed.

    One the provider may have accepted comes first (so nothing is re-sent elsewhere), then one that
    may not go elsewhere, then the first.
    """
    for keep in (lambda e: e.accepted, lambda e: not e.retryable_elsewhere):
        for err in errors:
            if keep(err):
                return err
    return errors[0]


OnAttempt = Callable[[Route], Awaitable[None]]
RouteCheck = Callable[[ModelEntry, Route], bool]
# Called (not awaited) with True when a paid call is sent to `route`, False when it was refused untaken.
OnCall = Callable[[Route, bool], None]
OnGone = Callable[[ModelEntry, Route, perr.ModelGone], Awaitable[object]]
# Awaited with the route and the provider's job id when a submit-then-poll provider accepts a call.
OnRouteSubmitted = Callable[[Route, str], Awaitable[None]]
CANCEL_TIMEOUT = 10.0  # seconds a best-effort remote cancel may take


class Router:
    """Picks routes for a model, runs the job on the first healthy one, falls back when allowed.

    `limiter` keeps each provider's calls in flight within its adaptive limit (`bot.concurrency`):
    a call over the limit waits for a slot before it is sent, and a 429 the provider did not accept is
    sent again to the same provider once its Retry-After has passed, unless that outlasts the job's
    deadline (then the next route is tried, as for any call not taken). `limits` is the older form:
    fixed caps per provider.
    """

    def __init__(
        self,
        providers: Mapping[str, Provider],
        *,
        order: Sequence[str] = (),
        breaker: CircuitBreaker | None = None,
        limits: Mapping[str, int] | None = None,
        live: RouteCheck | None = None,
        on_gone: OnGone | None = None,
        limiter: ProviderLimiter | None = None,
    ) -> None:
        self.providers = providers
        self.order = tuple(order)
        self.breaker = breaker or CircuitBreaker()
        # Which routes are still live (bot.lifecycle: shutdown dates, model lists, "model gone").
        self._live = live
        # Awaited when a provider answers "model gone" before the job moves to the next route.
        self._on_gone = on_gone
        self.limiter = limiter or ProviderLimiter.fixed(limits or {})

    def resumable(self, provider: str) -> bool:
        """Whether `provider` is configured and can follow its jobs again after a restart."""
        return isinstance(self.providers.get(provider), ResumableProvider)

    def configured(self, model: ModelEntry, *, order: Sequence[str] | None = None) -> list[Route]:
        """The model's routes whose provider is configured, in routing order."""
        ranking = {name: i for i, name in enumerate(self.order if order is None else order)}
        routes = [
            r
            for r in model.routes
            if r.provider in self.providers and (self._live is None or self._live(model, r))
        ]
        # sorted() is stable: providers the order does not name keep their catalog order, last.
        return sorted(routes, key=lambda r: ranking.get(r.provider, len(ranking)))

    def eligible(self, model: ModelEntry, needs: Needs, *, order: Sequence[str] | None = None) -> list[Route]:
        """Configured routes that can honour every option in `needs`, in routing order."""
        return [r for r in self.configured(model, order=order) if not blockers(r, needs)]

    def require(self, model: ModelEntry, needs: Needs, *, order: Sequence[str] | None = None) -> list[Route]:
        """Like `eligible`, but raises `InvalidOptions` naming the option(s) to change when none is."""
        configured = self.configured(model, order=order)
        if not configured:
            raise InvalidOptions(
                f"No configured image service sells {model.name}. Pick another model.", code="no_route"
            )
        eligible = [r for r in configured if not blockers(r, needs)]
        if eligible:
            return eligible
        # Name what to change for the route that needs the fewest changes (ties: routing order).
        closest = min(configured, key=lambda r: len(blockers(r, needs)))
        problems = blockers(closest, needs)
        raise InvalidOptions(
            _unservable_message(model, closest, needs, problems), code=f"route_{problems[0]}"
        )

    def reserve_usd(
        self, model: ModelEntry, needs: Needs, *, prompt: str, order: Sequence[str] | None = None
    ) -> Decimal:
        """The most the job can cost on whichever eligible route ends up serving it."""
        routes = self.require(model, needs, order=order)
        return max(route_reserve_usd(model, r, needs, prompt=prompt) for r in routes)

    def circuits(self) -> dict[str, str]:
        """{provider: closed | half_open | open} for every configured provider (for metrics)."""
        return {name: self.breaker.state(name) for name in self.providers}

    def concurrency(self) -> dict[str, LimitState]:
        """Every configured provider's limit in force (for /diagnose and metrics)."""
        return self.limiter.snapshot(self.providers)

    def capacity(self) -> int:
        """Calls the configured providers together may have in flight now (what the engine admits)."""
        return self.limiter.capacity(self.providers)

    async def run(
        self,
        model: ModelEntry,
        request: EditRequest,
        *,
        order: Sequence[str] | None = None,
        on_attempt: OnAttempt | None = None,
        on_submitted: OnRouteSubmitted | None = None,
        on_call: OnCall | None = None,
    ) -> Served:
        """Run `request` (whose `model` is ignored: each route has its own id) on the first route that
        takes it. Raises `InvalidOptions` when no route can honour it, else the provider's error.

        `on_attempt(route)` is awaited before each route is tried; `on_submitted(route, job_id)` when
        a resumable provider accepted a call (once per call of an emulated `count`); `on_call(route,
        sent)` when a paid call leaves (after any wait for the provider's limit) and, with False, when
        the provider refused it without taking it.
        """
        routes = self.require(model, Needs.of(request), order=order)
        refused: list[tuple[Route, perr.ProviderError]] = []
        skipped: list[str] = []
        for route in routes:
            if refused and request.remaining() <= 0:
                break
            if not self.breaker.allow(route.provider):
                skipped.append(route.provider)
                continue
            adapted = adapt(request, route)
            verdict: bool | None = None
            try:
                if on_attempt is not None:
                    await on_attempt(route)
                results = await self._call(
                    self.providers[route.provider], route, adapted, on_submitted, on_call
                )
                verdict = True
            except perr.ProviderError as exc:
                verdict = _verdict(exc)
                if exc.accepted or not exc.retryable_elsewhere:
                    raise
                if isinstance(exc, perr.ModelGone) and self._on_gone is not None:
                    await self._on_gone(model, route, exc)
                refused.append((route, exc))
                log.warning(
                    "%s did not take the job (%s, status %s, code %s); trying the next route",
                    route.provider,
                    type(exc).__name__,
                    exc.status,
                    exc.code,
                )
                continue
            finally:
                self.breaker.record(route.provider, verdict)
            cost = sum((charge_usd(model, route, r, adapted) for r in results), Decimal(0))
            served = Served(
                result=_merge(results),
                route=route,
                cost_usd=cost,
                requested=request.count,
                refused_by=tuple(r.provider for r, _ in refused),
            )
            if refused:
                log.info("job served by %s after %s refused it", route.provider, ", ".join(served.refused_by))
            return served
        if refused:
            raise refused[-1][1]
        raise perr.ServerError(
            f"every eligible provider is paused by its circuit breaker ({', '.join(skipped)})",
            provider=",".join(skipped),
            code="circuit_open",
        )

    async def resume(
        self,
        model: ModelEntry,
        provider: str,
        job_ids: Sequence[str],
        request: EditRequest,
        *,
        route_model: str | None = None,
    ) -> Served:
        """Follow jobs `provider` accepted earlier (one per call of an emulated `count`) to their result.

        Nothing is submitted. Charged like `run`: per image that comes back, on the route that took
        them (`route_model` names it where the provider sells the model on several routes). Raises
        the provider's error (or `ServerError` when the route or adapter is gone).
        """
        # The route that accepted the job, even if it has been retired since (nothing new is sent).
        route = next(
            (
                r
                for r in model.routes
                if r.provider == provider and (route_model is None or r.model == route_model)
            ),
            None,
        )
        adapter = self.providers.get(provider)
        if route is None or not isinstance(adapter, ResumableProvider) or not job_ids:
            raise perr.ServerError(
                f"cannot resume on {provider}: no such route or the adapter cannot resume",
                provider=provider,
                accepted=True,
            )
        adapted = replace(adapt(request, route), count=1)

        async def one(job_id: str) -> EditResult:
            return await self.limiter.call(
                provider, lambda: adapter.resume(job_id, adapted), deadline=adapted.deadline
            )

        results = await self._gather(route, [one(job_id) for job_id in job_ids])
        cost = sum((charge_usd(model, route, r, adapted) for r in results), Decimal(0))
        return Served(result=_merge(results), route=route, cost_usd=cost, requested=request.count)

    async def cancel(self, provider: str, job_ids: Sequence[str]) -> bool:
        """Best effort: ask `provider` to stop jobs it accepted. False when it has no cancel call."""
        adapter = self.providers.get(provider)
        if not isinstance(adapter, CancellableProvider):
            return False
        for job_id in job_ids:
            try:
                async with asyncio.timeout(CANCEL_TIMEOUT):
                    await adapter.cancel(job_id)
            except (perr.ProviderError, TimeoutError) as exc:
                log.warning("%s: cancelling job %s failed: %s", provider, job_id, type(exc).__name__)
        return True

    async def _call(
        self,
        provider: Provider,
        route: Route,
        request: EditRequest,
        on_submitted: OnRouteSubmitted | None = None,
        on_call: OnCall | None = None,
    ) -> list[EditResult]:
        """One call, or (no `n`) one single-image call per wanted image, in parallel.

        With an emulated count, the images that came back are kept even if some calls failed (the
        user is charged per image delivered); only when all failed is an error raised.
        """

        async def one(req: EditRequest) -> EditResult:
            async def send() -> EditResult:
                if on_call is not None:
                    on_call(route, True)
                try:
                    if on_submitted is None or not isinstance(provider, ResumableProvider):
                        return await provider.edit(req)

                    async def submitted(job_id: str) -> None:
                        await on_submitted(route, job_id)

                    return await provider.edit(req, on_submitted=submitted)
                except perr.ProviderError as exc:
                    if not exc.accepted and on_call is not None:
                        on_call(route, False)  # refused before any work: nothing is owed for it
                    raise

            return await self.limiter.call(route.provider, send, deadline=req.deadline)

        if request.count == 1 or route.n:
            return [await one(request)]
        single = replace(request, count=1)
        return await self._gather(route, [one(single) for _ in range(request.count)], request.count)

    async def _gather(
        self, route: Route, calls: Sequence[Awaitable[EditResult]], wanted: int | None = None
    ) -> list[EditResult]:
        """Run parallel single-image calls; keep what came back, raise only when every call failed."""
        if len(calls) == 1:
            return [await calls[0]]
        wanted = wanted or len(calls)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        results = [o for o in outcomes if isinstance(o, EditResult)]
        errors: list[perr.ProviderError] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, perr.ProviderError):
                    raise outcome
                errors.append(outcome)
        if results:
            if errors:
                log.warning(
                    "%s: %d of %d images failed (%s)",
                    route.provider,
                    len(errors),
                    wanted,
                    ", ".join(sorted({type(e).__name__ for e in errors})),
                )
            return results
        raise _worst(errors)


def _unservable_message(model: ModelEntry, route: Route, needs: Needs, problems: tuple[str, ...]) -> str:
    """User text naming the options to change (with what the closest route offers)."""
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
        f"The image services configured for {model.name} cannot do this as asked: "
        f"{'; '.join(hints)}, or pick another model."
    )
