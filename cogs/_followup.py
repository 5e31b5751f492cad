"""A public followup sent exactly once.

discord.py sends a webhook request again on its own after a 5xx or a reset connection. For an
interaction followup that is unsafe: Discord may have posted the message before failing, and a
followup (unlike a channel message) takes no nonce, so each retry can post another copy of a paid
result. `send_once` lets discord.py retry only a 429, which Discord refused unsent, and otherwise raises
`PostMayHaveLanded`, so the caller can look for the message before posting it anywhere else.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import aiohttp
import discord
from discord.webhook.async_ import AsyncWebhookAdapter, async_context


class PostMayHaveLanded(Exception):
    """Discord answered a followup with a 5xx, or the connection failed: it may have posted it."""


class _Watched:
    """One request's context manager that marks its session unsure when the answer says nothing."""

    def __init__(self, owner: _OneAttempt, request: Any) -> None:
        self._owner = owner
        self._request = request

    async def __aenter__(self) -> aiohttp.ClientResponse:
        try:
            response: aiohttp.ClientResponse = await self._request.__aenter__()
        except Exception:
            self._owner.unsure = True
            raise
        if response.status >= 500:
            self._owner.unsure = True
        return response

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._request.__aexit__(kind, exc, tb)


class _OneAttempt:
    """Stands in for the HTTP session of one webhook request: a second try after an unsure answer is
    refused before anything is sent."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self.unsure = False

    def request(self, *args: Any, **kwargs: Any) -> _Watched:
        if self.unsure:
            raise PostMayHaveLanded
        return _Watched(self, self._session.request(*args, **kwargs))


class _OnceAdapter(AsyncWebhookAdapter):
    async def request(self, route: Any, session: aiohttp.ClientSession, **kwargs: Any) -> Any:
        return await super().request(route, _OneAttempt(session), **kwargs)  # type: ignore[arg-type]


# One adapter for every such followup, so they share discord.py's per-webhook rate-limit locks.
_ONCE = _OnceAdapter()


async def send_once(interaction: discord.Interaction, **kwargs: Any) -> discord.WebhookMessage:
    """`interaction.followup.send(..., wait=True)`, never sent twice (see the module docstring).
    Raises `PostMayHaveLanded` when Discord's answer leaves it unknown whether the message was posted."""
    # discord.py picks its webhook adapter from this context variable; setting it here affects only
    # this task.
    reset = async_context.set(_ONCE)
    try:
        return await interaction.followup.send(**kwargs, wait=True)
    finally:
        async_context.reset(reset)
