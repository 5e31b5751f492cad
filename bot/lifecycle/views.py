"""The operator's and admins' view of the lifecycle: each configured route's state (`/owner routes`)
and the admin-facing lines about the catalog's models (`/diagnose`, the daily audit).

Only reads: every fact comes from `ModelLifecycle`'s readers, and nothing here changes a route.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.catalog import RETIREMENT_WARNING_DAYS, ModelEntry, Route

if TYPE_CHECKING:
    from bot.lifecycle.live import ModelLifecycle


@dataclass(frozen=True)
class RouteState:
    """One configured route as the operator sees it (`ModelLifecycle.route_states`, `/owner routes`)."""

    model: str
    provider: str
    route_model: str  # the provider's id for the model
    live: bool
    # Why it is not live, or None: "disabled …", "retired …", "not in the model list", "shut down …".
    why: str | None = None
    gone_reason: str | None = None  # retired after a "model gone" answer: its class, status and code
    gone_at: dt.datetime | None = None
    trial_at: dt.datetime | None = None  # when it is tried again (None: never, or it is not retired)
    trial_due: bool = False  # retired, and live again for its trial


@dataclass(frozen=True)
class ModelNotice:
    """One admin-facing line about the catalog's models (see `ModelLifecycle.notices`)."""

    text: str
    # About a model as a whole (retired, replaced): what any server admin may see. False: about one
    # provider's route or model list, which runs on the operator's keys and is the operator's business.
    model_level: bool
    # A model that died on the dates the catalog (or its provider) set, with a usable replacement:
    # what was planned, kept in the catalog on purpose so old picks move on. Information, not a warning.
    expected: bool = False
    # A model-level summary of what the per-route lines already tell the operator (a model whose
    # every route retires soon): for the admins who do not see those lines.
    summary: bool = False


def route_states(lifecycle: ModelLifecycle) -> list[RouteState]:
    """Every configured route of every catalog model, in catalog order, with why it is not live."""
    return [
        route_state(lifecycle, model, route)
        for model in lifecycle.catalog.models.values()
        for route in model.routes
        if route.provider in lifecycle.configured
    ]


def dead_otherwise(lifecycle: ModelLifecycle, model: ModelEntry, route: Route) -> str | None:
    """Why a configured route is not live whatever a "model gone" answer said (disabled at
    start-up, missing from its provider's list, past its date), or None. Such a route is never
    asked again: its trial, or a revive, would not bring it back."""
    facts, end = lifecycle.facts(route), lifecycle.route_end(model, route)
    if route.key in lifecycle.disabled:
        return f"disabled: {lifecycle.disabled[route.key]}"
    if facts.listed is False:
        return f"missing from {route.provider}'s model list"
    if end is not None and lifecycle.today() >= end:
        return f"shut down on {end:%Y-%m-%d}"
    return None


def route_state(lifecycle: ModelLifecycle, model: ModelEntry, route: Route) -> RouteState:
    facts, live = lifecycle.facts(route), lifecycle.route_live(model, route)
    otherwise = dead_otherwise(lifecycle, model, route)
    why = otherwise
    if why is None and facts.gone:
        why = f'answered "model gone" ({facts.gone_reason})'
    return RouteState(
        model=model.id,
        provider=route.provider,
        route_model=route.model,
        live=live,
        why=why,
        gone_reason=facts.gone_reason,
        gone_at=facts.gone_at,
        trial_at=lifecycle.trial_at(route) if otherwise is None else None,
        trial_due=lifecycle.trial_due(route) and live,
    )


def notices(lifecycle: ModelLifecycle) -> list[ModelNotice]:
    """Admin-facing lines: dead routes and models (planned retirements included) and dates within the
    warning window, each marked whether it is about a model as a whole or about a provider, and
    whether it is a planned retirement (information) rather than something to look at."""
    out: list[ModelNotice] = []
    today = lifecycle.today()
    if not lifecycle.available():
        # What `/healthz` reports as "no live model", said to every admin (members refused an edit
        # are sent to /diagnose), without naming the operator's providers.
        out.append(
            ModelNotice(
                "no model can edit: every catalog model is shut down or sold by no service here", True
            )
        )
    for model in lifecycle.catalog.models.values():
        configured = [r for r in model.routes if r.provider in lifecycle.configured]
        if not configured:
            continue
        if not lifecycle.usable(model):
            out.append(_retired_notice(lifecycle, model, configured))
            # The operator is told which of its routes a "model gone" answer retired, and how to
            # bring one back, or what else keeps it dead (the model line names no provider).
            for r in configured:
                where = f"{model.id} on {r.provider}"
                if lifecycle.facts(r).gone:
                    out.append(ModelNotice(_gone_notice(lifecycle, model, r, where), False))
                elif r.key in lifecycle.disabled:
                    out.append(ModelNotice(f"{where} is disabled: {lifecycle.disabled[r.key]}", False))
            continue
        if (soon := _retiring_notice(lifecycle, model, configured)) is not None:
            out.append(soon)
        for route in configured:
            facts, end = lifecycle.facts(route), lifecycle.route_end(model, route)
            where = f"{model.id} on {route.provider}"
            line = None
            if route.key in lifecycle.disabled:
                line = f"{where} is disabled: {lifecycle.disabled[route.key]}"
            elif facts.gone:
                line = _gone_notice(lifecycle, model, route, where)
            elif facts.listed is False:
                line = f"{where} is missing from {route.provider}'s model list"
            elif end is not None and today >= end:
                line = f"{where} retired on {end:%Y-%m-%d}"
            elif end is not None and (end - today).days <= RETIREMENT_WARNING_DAYS:
                line = f"{where} retires in {(end - today).days} days ({end:%Y-%m-%d})"
            if line is not None:
                out.append(ModelNotice(line, False))
            if route.key in lifecycle.narrowed and lifecycle.route_live(model, route):
                out.append(ModelNotice(f"{where} is narrowed: {lifecycle.narrowed[route.key]}", False))
    for report in lifecycle.discovery():
        out.extend(
            ModelNotice(f"{report.provider} lists a model the catalog does not know: {i}", False)
            for i in report.unknown
        )
    return out


def _gone_notice(lifecycle: ModelLifecycle, model: ModelEntry, route: Route, where: str) -> str:
    """A route a "model gone" answer retired: why, since when, when it is tried again, how to revive."""
    facts = lifecycle.facts(route)
    since = f", {facts.gone_at:%Y-%m-%d %H:%M} UTC" if facts.gone_at else ""
    if (otherwise := dead_otherwise(lifecycle, model, route)) is not None:
        return f'{where} answered "model gone" ({facts.gone_reason}{since}) and is {otherwise}'
    if lifecycle.trial_due(route):
        return f'{where} answered "model gone" ({facts.gone_reason}{since}) and is being tried again'
    at = lifecycle.trial_at(route)
    then = f"tried again from {at:%Y-%m-%d %H:%M} UTC" if at else "not tried again"
    revive = f"`/owner revive model:{model.id} provider:{route.provider}`"
    return (
        f'{where} answered "model gone" and is retired ({facts.gone_reason}{since}); '
        f"{then}, or {revive} brings it back"
    )


def _retired_notice(lifecycle: ModelLifecycle, model: ModelEntry, configured: Sequence[Route]) -> ModelNotice:
    """A dead model. Expected when every configured route ended on its date (the catalog's or
    the provider's announced one) and a replacement takes its edits; a warning when a route went
    before its date (the provider said "gone", or dropped it from its list) or nothing replaces it."""
    # Where its edits go: its replacement chain, else (a replacement no configured service sells)
    # the default or the next live model, as `fallbacks` moves them.
    target = next(lifecycle.fallbacks(model), None)
    ends = [lifecycle.route_end(model, route) for route in configured]
    dated = [end for end in ends if end is not None and lifecycle.today() >= end]
    if target is not None and len(dated) == len(ends):
        return ModelNotice(
            f"{model.id} retired on {max(dated):%Y-%m-%d}; edits go to {target.id}", True, expected=True
        )
    then = f"edits go to {target.id}" if target else "no model takes its edits"
    return ModelNotice(f"{model.id} is retired on every configured service ({then})", True)


def _retiring_notice(
    lifecycle: ModelLifecycle, model: ModelEntry, configured: Sequence[Route]
) -> ModelNotice | None:
    """A live model whose every configured route ends within `RETIREMENT_WARNING_DAYS`: said about
    the model as a whole, so admins who may not see the per-route lines (which name the
    operator's providers) are told too."""
    today = lifecycle.today()
    ends = [lifecycle.route_end(model, route) for route in configured if lifecycle.route_live(model, route)]
    if not ends or any(end is None or (end - today).days > RETIREMENT_WARNING_DAYS for end in ends):
        return None
    last = max(end for end in ends if end is not None)
    target = next(lifecycle.fallbacks(model), None)  # never `model` itself
    then = f"edits then go to {target.id}" if target else "no model takes its edits after that"
    return ModelNotice(
        f"{model.id} retires in {(last - today).days} days ({last:%Y-%m-%d}); {then}", True, summary=True
    )
