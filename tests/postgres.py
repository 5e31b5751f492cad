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
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

URL_VARIABLE = "RETOUCH_TEST_DATABASE_URL"
TEST_DATABASE_URL = os.environ.get(URL_VARIABLE, "")

needs_postgres = pytest.mark.skipif(
    not TEST_DATABASE_URL, reason=f"needs PostgreSQL: set {URL_VARIABLE}=postgresql://…"
)

PoolOn = Callable[..., Awaitable[Any]]
T = TypeVar("T")


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


async def waiting_on(holder: Any) -> int:
    """How many sessions wait for a lock that `holder` (an asyncpg connection) holds."""
    return int(
        await holder.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            holder.get_server_pid(),
        )
    )


async def until_waiting_on(holder: Any, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Until some session waits for a lock `holder` holds (what `holder` then commits, it reads)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await waiting_on(holder):
        if loop.time() > deadline:
            raise TimeoutError("nobody waits for the locks held")
        await asyncio.sleep(0.01)


async def never_waiting_on(holder: Any, work: Awaitable[T]) -> T:
    """What `work` returns; fails the moment it waits for a lock `holder` holds (the caller ends
    `holder`'s transaction afterwards, which lets such a waiter go on)."""
    task = asyncio.ensure_future(work)
    while not task.done():
        assert not await waiting_on(holder), "it waited for a row another transaction holds"
        await asyncio.wait({task}, timeout=0.01)
    return task.result()


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
