"""PostgreSQL for the tests that need one: a pool on a fresh schema per test, or a visible skip.

Set `RETOUCH_TEST_DATABASE_URL` (e.g. `postgresql://postgres@127.0.0.1:5432/test`) to run them; without it
they are skipped with that reason, never silently. A test module imports `pg_pool` (the fixture) and
asks for it; every pool it opens with `pool_on` sees only that test's schema, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

URL_VARIABLE = "RETOUCH_TEST_DATABASE_URL"
TEST_DATABASE_URL = os.environ.get(URL_VARIABLE, "")

needs_postgres = pytest.mark.skipif(
    not TEST_DATABASE_URL, reason=f"needs PostgreSQL: set {URL_VARIABLE}=postgresql://…"
)

PoolOn = Callable[..., Awaitable[Any]]


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A schema of its own for this test, dropped with everything in it when the test ends."""
    if not TEST_DATABASE_URL:
        pytest.skip(f"needs PostgreSQL: set {URL_VARIABLE}=postgresql://…")
    import asyncpg

    name = f"test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await conn.execute(f"CREATE SCHEMA {name}")
        yield name
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        await conn.close()


@pytest.fixture
async def pool_on(pg_schema: str) -> AsyncIterator[PoolOn]:
    """`await pool_on(**options)`: an asyncpg pool whose sessions see only this test's schema (closed
    when the test ends). Each process of a multi-process test gets a pool of its own."""
    import asyncpg

    pools: list[Any] = []

    async def open_pool(**options: Any) -> Any:
        options = {"min_size": 1, "max_size": 4, **options}
        options["server_settings"] = {"search_path": pg_schema, **options.get("server_settings", {})}
        pool = await asyncpg.create_pool(TEST_DATABASE_URL, **options)
        pools.append(pool)
        return pool

    try:
        yield open_pool
    finally:
        for pool in pools:
            await pool.close()


@pytest.fixture
async def pg_pool(pool_on: PoolOn) -> Any:
    """One asyncpg pool on this test's schema."""
    return await pool_on()
