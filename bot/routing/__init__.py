"""Routing: which provider serves an edit, in what order, and what happens when one fails.

Three modules: `rules` (what a job needs, which routes can honour it, prices), `breaker` (the
circuit breaker) and `router` (the executor). The names below are the package's public API.

A catalog model lists the routes that sell it (`bot.catalog.Route`): a provider, that provider's id
for the model, its price and what it can honour. For one job the router

1. keeps the routes whose provider is configured and that can honour every option the job asks
   for (**never silently drop a parameter**: a route without mask support, or with fewer input
   images, or without the asked size, quality, background or format is not eligible). Two things
   are emulated rather than refused: `count` on a route without `n` (one call per image, in
   parallel, charged per image delivered) and `size=auto` on a route with fixed sizes only (the
   size closest to the first image's shape, which is what "auto" picks at OpenAI);
2. keeps, for a job whose credits are held, only the routes whose worst case fits the hold (`Hold`): a
   route live again since the job was priced (a retired route's trial, a revive) may be dearer;
3. orders them by `PROVIDER_ORDER` (a per-call `order` can override it; routes of providers the
   order does not name follow in catalog order) and skips providers whose circuit breaker is open;
4. calls the first one. It falls back to the next route **only** when the provider provably did not
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

from bot.routing.breaker import (
    BREAKER_COOLDOWN,
    BREAKER_THRESHOLD,
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
)
from bot.routing.router import (
    CANCEL_TIMEOUT,
    OnAttempt,
    OnCall,
    OnGone,
    OnRouteSubmitted,
    RouteCheck,
    Router,
    Served,
)
from bot.routing.rules import (
    AUTO,
    Hold,
    Needs,
    adapt,
    auto_quality,
    blockers,
    charge_usd,
    dearest_edit,
    nearest_size,
    route_reserve_usd,
)

__all__ = [
    "AUTO",
    "BREAKER_COOLDOWN",
    "BREAKER_THRESHOLD",
    "CANCEL_TIMEOUT",
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "CircuitBreaker",
    "Hold",
    "Needs",
    "OnAttempt",
    "OnCall",
    "OnGone",
    "OnRouteSubmitted",
    "RouteCheck",
    "Router",
    "Served",
    "adapt",
    "auto_quality",
    "blockers",
    "charge_usd",
    "dearest_edit",
    "nearest_size",
    "route_reserve_usd",
]
