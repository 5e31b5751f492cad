"""PostgreSQL for the tests that need one: a pool on a fresh schema per test, or a visible skip.

Set `RETOUCH_TEST_DATABASE_URL` (e.g. `postgresql://postgres@127.0.0.1:5432/test`) to run them; without it
they are skipped with that reason, never silently. A test module imports `pg_pool` (the fixture) and
asks for it; every pool it opens with `pool_on` sees only that test's schema, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


class SilentNetwork:
    """A TCP relay to PostgreSQL that can go silent: it keeps every connection open but stops passing
    bytes either way, as a partitioned network does (no FIN, no RST: the client just hears nothing).
    With `cut_after`, the first client message holding those bytes is passed on and then both sides of
    that connection are closed: the server gets it, the client never hears the answer."""

    def __init__(self, database_url: str) -> None:
        self._target = urlsplit(database_url)
        self.upstream = (self._target.hostname or "127.0.0.1", self._target.port or 5432)
        self.silent = False
        self.cut_after: bytes | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SilentNetwork:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    @property
    def url(self) -> str:
        """The database's URL, through this relay."""
        assert self._server is not None
        port = int(self._server.sockets[0].getsockname()[1])
        return urlunsplit(self._target._replace(netloc=f"{self._target.username}@127.0.0.1:{port}"))

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers += [writer, up_writer]
        both = (writer, up_writer)
        await asyncio.gather(self._pump(reader, up_writer, both), self._pump(up_reader, writer, ()))

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        cut: tuple[asyncio.StreamWriter, ...],
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not self.silent:
                    writer.write(data)
                if cut and self.cut_after is not None and self.cut_after in data:
                    self.cut_after = None
                    await writer.drain()
                    for end in cut:
                        end.transport.abort()
                    return
