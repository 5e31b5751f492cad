"""The executor: runs a job on the first route that takes it, falls back only when the provider
provably did not take it, follows resumed jobs, and asks providers to stop what was cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from bot import messages
from bot.catalog import ModelEntry, Route
from bot.concurrency import LimitState, ProviderLimiter
from bot.domain.options import Usage
from bot.errors import InvalidOptions
from bot.providers import errors as perr
from bot.providers.base import CancellableProvider, EditRequest, EditResult, Provider, ResumableProvider
from bot.routing.breaker import CircuitBreaker, _verdict
from bot.routing.rules import (
    Hold,
    Needs,
    _reported_cost,
    adapt,
    blockers,
    route_reserve_usd,
    split_charge,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the executor


@dataclass(frozen=True)
class Served:
    """A finished edit and the route that served it (the charge follows that route)."""

    result: EditResult
    route: Route
    cost_usd: Decimal  # what the member pays: the images that came back
    requested: int  # images asked for
    refused_by: tuple[str, ...] = field(default=())  # providers tried first that did not take the job
    # Billed by the provider for images that came back unusable and for failed calls it took: the
    # budgets count it, nobody pays it.
    absorbed_usd: Decimal = Decimal(0)

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


def _charges(
    model: ModelEntry, route: Route, results: Sequence[EditResult], request: EditRequest, lost: int
) -> tuple[Decimal, Decimal]:
    """(member's charge, absorbed) summed over a job's calls; without native `n`, each call asked
    for one image. A failed call the provider accepted (`lost`) may be billed: nobody pays for it,
    but it is absorbed at what its siblings (the same request) cost."""
    asked = request if route.n else replace(request, count=1)
    split = [split_charge(model, route, r, asked) for r in results]
    member = sum((m for m, _ in split), Decimal(0))
    unpaid = member / len(results) * lost if results else Decimal(0)
    return member, sum((a for _, a in split), unpaid)


def _within(model: ModelEntry, routes: Sequence[Route], needs: Needs, prompt: str, hold: Hold) -> list[Route]:
    """`routes` whose worst case for the job fits its hold. The hold was priced on the routes live then;
    one live again since (a retired route's trial come due, a revive) may be dearer, and the member
    never pays above the hold, so the operator would. Raises `InvalidOptions` when none fits."""
    within: list[tuple[Route, Decimal]] = []
    dearer: list[tuple[Route, Decimal]] = []
    for route in routes:
        worst = route_reserve_usd(model, route, needs, prompt=prompt)
        (within if hold.covers(worst) else dearer).append((route, worst))
    if dearer:
        log.warning(
            "%s: not sending this job to %s: dearer than its hold of %d credits (priced on the routes then)",
            model.id,
            ", ".join(f"{r.provider} (up to ${usd})" for r, usd in dearer),
            hold.credits,
        )
    if not within:
        raise InvalidOptions(messages.over_hold(model.name), code="over_hold")
    return [route for route, _ in within]


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
# Awaited with the route just before each paid call leaves, after any wait for the provider's limit (and
# again before a call sent again after a 429): what it raises keeps the call from leaving.
OnSend = Callable[[Route], Awaitable[None]]
RouteCheck = Callable[[ModelEntry, Route], bool]
# Called (not awaited) with True when a paid call is sent to `route`, False when it was refused untaken.
OnCall = Callable[[Route, bool], None]
OnGone = Callable[[ModelEntry, Route, perr.ModelGone], Awaitable[object]]
# Called (not awaited) when a call on a route delivered a result, sent by `run` or followed by `resume`
# (bot.lifecycle: a retired route on its trial is back; no failure changes that). It runs on the served
# job's path, between the provider's answer and the job's deadline check: it must not raise, and anything
# slow (a write, an audit post) it starts in the background.
OnAnswer = Callable[[ModelEntry, Route], object]
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
        on_answer: OnAnswer | None = None,
        on_trial: Callable[[Route], bool] | None = None,
        limiter: ProviderLimiter | None = None,
    ) -> None:
        self.providers = providers
        self.order = tuple(order)
        self.breaker = breaker or CircuitBreaker()
        # Which routes are still live (bot.lifecycle: shutdown dates, model lists, "model gone").
        self._live = live
        # Awaited when a provider answers "model gone" before the job moves to the next route.
        self._on_gone = on_gone
        # Called when a call delivered a result (a retired route on its trial comes back).
        self._on_answer = on_answer
        # Whether a route is a retired one on its trial (bot.lifecycle `trial_due`): a refused input of
        # it that took nothing moves the job on (`_trying`): its retirement came from untrusted answers.
        self._on_trial = on_trial
        self.limiter = limiter or ProviderLimiter.fixed(limits or {})

    def _trying(self, route: Route, exc: perr.ProviderError) -> bool:
        """A retired route on its trial that refused the job's input without taking it (the answers that
        retired such routes by mistake were worded so): the job moves to the next route, not fail, where
        another route sells the model. Only a refused input: a timeout (a 408 may come after the work) or
        a safety block (perhaps at the output, billed) is never sent to a second provider."""
        return isinstance(exc, perr.InvalidInput) and self._on_trial is not None and self._on_trial(route)

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
            raise InvalidOptions(messages.no_route(model.name), code="no_route")
        eligible = [r for r in configured if not blockers(r, needs)]
        if eligible:
            return eligible
        # Name what to change for the route that needs the fewest changes (ties: routing order).
        closest = min(configured, key=lambda r: len(blockers(r, needs)))
        problems = blockers(closest, needs)
        raise InvalidOptions(messages.unservable(model.name, closest, problems), code=f"route_{problems[0]}")

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
        on_send: OnSend | None = None,
        hold: Hold | None = None,
    ) -> Served:
        """Run `request` (whose `model` is ignored: each route has its own id) on the first route that
        takes it. Raises `InvalidOptions` when no route can honour it, else the provider's error.

        `on_attempt(route)` is awaited before each route is tried; `on_submitted(route, job_id)` when
        a resumable provider accepted a call (once per call of an emulated `count`); `on_call(route,
        sent)` when a paid call leaves (after any wait for the provider's limit) and, with False, when
        the provider refused it without taking it; `on_send(route)` just before each paid call leaves
        (see `OnSend`). With `hold` (the credits held for the job), only routes whose worst case fits it
        are tried; `InvalidOptions` (code `over_hold`) when none does.
        """
        needs = Needs.of(request)
        routes = self.require(model, needs, order=order)
        if hold is not None:
            routes = _within(model, routes, needs, request.prompt, hold)
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
                results, lost = await self._call(
                    self.providers[route.provider], route, adapted, on_submitted, on_call, on_send
                )
                verdict = True
                if self._on_answer is not None:
                    self._on_answer(model, route)
            except perr.ProviderError as exc:
                verdict = _verdict(exc)
                if exc.accepted or not (exc.retryable_elsewhere or self._trying(route, exc)):
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
            member, absorbed = _charges(model, route, results, adapted, lost)
            served = Served(
                result=_merge(results),
                route=route,
                cost_usd=member,
                requested=request.count,
                refused_by=tuple(r.provider for r, _ in refused),
                absorbed_usd=absorbed,
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
            # The provider has the job: its polls wait their turn, never refused for another provider.
            return await self.limiter.call(
                provider,
                lambda: adapter.resume(job_id, adapted),
                deadline=adapted.deadline,
                may_go_elsewhere=False,
            )

        results, lost = await self._gather(route, [one(job_id) for job_id in job_ids])
        if self._on_answer is not None:  # a result, as in `run` (a trial's job followed after a restart)
            self._on_answer(model, route)
        member, absorbed = _charges(model, route, results, adapted, lost)
        return Served(
            result=_merge(results),
            route=route,
            cost_usd=member,
            requested=request.count,
            absorbed_usd=absorbed,
        )

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
        on_send: OnSend | None = None,
    ) -> tuple[list[EditResult], int]:
        """One call, or (no `n`) one single-image call per wanted image, in parallel.

        With an emulated count, the images that came back are kept even if some calls failed (the
        user is charged per image delivered); only when all failed is an error raised. Also returns
        how many failed calls the provider may have billed (it accepted them).
        """

        async def one(req: EditRequest) -> EditResult:
            async def send() -> EditResult:
                if on_send is not None:
                    await on_send(route)
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
            return [await one(request)], 0
        single = replace(request, count=1)
        return await self._gather(route, [one(single) for _ in range(request.count)], request.count)

    async def _gather(
        self, route: Route, calls: Sequence[Awaitable[EditResult]], wanted: int | None = None
    ) -> tuple[list[EditResult], int]:
        """Run parallel single-image calls; keep what came back, raise only when every call failed.
        Also returns how many failed calls the provider may have billed (it accepted them)."""
        if len(calls) == 1:
            return [await calls[0]], 0
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
            return results, sum(1 for e in errors if e.accepted)
        raise _worst(errors)
