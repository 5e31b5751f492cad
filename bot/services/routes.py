"""The operator's view of the model routes (`/owner routes`, `/owner revive`), in plain values.

What a route's state is and how one comes back is `bot.lifecycle`'s; this only lets the operator, and no
one else, read and change it.
"""

from __future__ import annotations

from bot.catalog import Route
from bot.lifecycle import ModelLifecycle, RouteState
from bot.services.access import AccessService


class RouteService:
    """Lists routes and brings back a retired one, for the operator only."""

    def __init__(self, *, access: AccessService, lifecycle: ModelLifecycle) -> None:
        self.access = access
        self.lifecycle = lifecycle

    def states(self, actor_id: int) -> list[RouteState]:
        """Every configured route, live or not and why (the operator only)."""
        self.access.require_operator(actor_id)
        return self.lifecycle.route_states()

    async def revive(self, actor_id: int, model_id: str, provider: str) -> list[Route]:
        """Bring back `model_id`'s routes on `provider` that a "model gone" answer retired (the operator
        only; logged and announced with who did it)."""
        self.access.require_operator(actor_id)
        return await self.lifecycle.revive(model_id.strip(), provider.strip().lower(), actor_id=actor_id)
