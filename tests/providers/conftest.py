"""Fixtures the provider tests share. Each test module defines its own `fake` and `make_provider`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from bot.providers.netguard import GuardedConnector


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # The production connector: result URLs from provider answers are fetched only through it.
    async with aiohttp.ClientSession(connector=GuardedConnector()) as s:
        yield s


@pytest.fixture
def provider(make_provider: Callable[..., Any]) -> Any:
    """The module's adapter with the test defaults (see its `make_provider`)."""
    return make_provider()
