"""The PostgreSQL backend: the same repositories over an asyncpg pool, for several bot processes.

Chosen by `DATABASE_URL=postgresql://…` (see `connection.open_database`). Transaction bodies are the
ones SQLite runs (`connection.py`): each is driven statement by statement on a pooled connection inside
BEGIN … COMMIT, its `?` placeholders rewritten to `$1, $2, …` once per statement text.

Isolation: READ COMMITTED, with the few reads that decide a write serialized by transaction-scoped
advisory locks the bodies ask for (`connection.lock`): every budget check takes one lock (the bot-wide
budget sums every server, so the checks cannot run side by side in any case), a job's movements take
its job's lock, per-member limits take the member's. The alternative, SERIALIZABLE, would make every
pair of concurrent reservations conflict on the summed tables and abort and re-run one of them: the
same serial order, paid for with wasted round trips. A reservation's own balance check needs no lock:
its conditional UPDATE waits for a concurrent one on the same row and re-checks the new balance.
A deadlock or serialization failure (40P01, 40001) re-runs the body on a fresh transaction.

`listen` keeps one pooled connection LISTENing on every channel asked for (a `notify` statement in a body
is a NOTIFY, sent when its transaction commits); a lost connection is replaced, and what it missed is
left to the listener's slower path (a job cancel's holder also reads it at its next lease renewal, a
fleet change is seen at the next shard round).

A caller cancelled while its transaction runs does not stop it: the body runs in its own task to COMMIT
or ROLLBACK, as on SQLite.

Schema: the SQLite migrations, translated (`postgres_ddl`: BIGINT for every INTEGER, so Discord ids
fit; identity columns for AUTOINCREMENT; byte-order collation for text, so ISO timestamps and range
filters compare as in SQLite), then the same-numbered file of `migrations/postgres/` where PostgreSQL
needs its own words (the triggers, SQLite's implicit rowid). The version lives in a `schema_version`
table; two processes starting together migrate once (an advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import random
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from bot.storage.connection import (
    Body,
    Clocked,
    DatabaseUnavailable,
    Statement,
    lock_key,
    lock_keys,
    migrated,
    migrations,
    pending_migrations,
    utcnow,
)
from bot.storage.refusals import refusal_for

log = logging.getLogger(__name__)
T = TypeVar("T")

# Connections per process. A transaction holds one for a few round trips; 10 keep a busy process's
# database work flowing without crowding PostgreSQL's default 100 connections when several run.
POOL_SIZE = 10
# Distinct statement texts each connection keeps prepared (the repositories write fewer than this).
STATEMENT_CACHE = 512
# A body caught in a deadlock or serialization failure runs again, this many times at most.
ATTEMPTS = 5
RETRY_STATES = frozenset({"40001", "40P01"})
# A listening connection that was lost is replaced after this long (what was sent meanwhile is missed).
LISTEN_RETRY_SECONDS = 5.0
# A stop waits this long at most for running transactions and taken connections: past it, what is
# still open is cut (PostgreSQL rolls an unfinished transaction back whole) and the stop goes on, where
# asyncpg's own close would wait for a connection nobody gives back for ever.
CLOSE_SECONDS = 15.0
CUT_WAIT_SECONDS = 1.0  # then how long the close's own work gets to notice the cut connections
MIGRATION_LOCK = lock_key(("migrations",))
# Server settings every session starts with, unless DATABASE_URL sets its own (`?name=value`, or in
# libpq's `options`), which is how an operator changes them.
# A transaction left open with nothing running (its process frozen, or cut off by the network, between
# two statements) is ended after a minute, instead of holding its locks (the budget lock stops every
# process's reservations) until the server hears its client is gone: two hours by the OS's defaults.
# Nothing of Retouch keeps a transaction waiting on its client that long: bodies, migrations and the
# copy to PostgreSQL send their statements back to back. And a client that went silent (its host gone,
# the network cut) is found dead in about a minute, outside a transaction too (the fleet's slots are
# session locks on idle connections, fleet_slots.py): keepalive probes after 30 s of silence, three
# 10 s apart, and data it leaves unacknowledged for 60 s (the server kept sending to it) ends it.
SESSION_SETTINGS: Mapping[str, str] = {
    "idle_in_transaction_session_timeout": "60s",
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "60000",  # milliseconds
}
PG_MIGRATIONS = "migrations/postgres"

_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\?")


@functools.lru_cache(maxsize=2048)
def postgres_sql(sql: str) -> str:
    """`sql` with its `?` placeholders numbered `$1, $2, …` (a `?` inside a string literal stays)."""
    numbers = iter(range(1, sql.count("?") + 1))
    return _PLACEHOLDER.sub(lambda m: m.group() if m.group() != "?" else f"${next(numbers)}", sql)


@functools.lru_cache(maxsize=16)
def _lock_sql(count: int) -> str:
    return "SELECT " + ", ".join(f"pg_advisory_xact_lock(${n})" for n in range(1, count + 1))


def _begin_and_lock(keys: Sequence[int]) -> str:
    """BEGIN and the body's first locks in one round trip (the keys are our own integers)."""
    return "BEGIN; SELECT " + ", ".join(f"pg_advisory_xact_lock({int(key)})" for key in keys)


def session_settings(dsn: str, defaults: Mapping[str, str] = SESSION_SETTINGS) -> dict[str, str]:
    """`defaults`, less those `dsn` sets itself: asyncpg lets settings given apart override the URL's."""
    own = dict(parse_qsl(urlsplit(dsn).query))
    options = own.get("options", "")  # `-c name=value …`, which settings sent apart would override too
    return {name: value for name, value in defaults.items() if name not in own and name not in options}


def postgres_ddl(sqlite_sql: str) -> str:
    """A SQLite migration in PostgreSQL's words; triggers are left to `migrations/postgres/`."""
    text = re.sub(r"--[^\n]*", "", sqlite_sql)
    text = re.sub(r"\bCREATE TRIGGER\b.*?\bEND;", "", text, flags=re.S)
    text = re.sub(r"\bDROP TRIGGER\b[^;]*;", "", text)
    text = text.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    )
    text = re.sub(r"\bINTEGER\b", "BIGINT", text)
    # SQLite compares text byte by byte; PostgreSQL's default collation may not (e.g. en_US).
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', text)


def _row_count(status: str) -> int:
    """The count at the end of a command tag such as `UPDATE 3` or `INSERT 0 1`."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


async def _step(conn: asyncpg.Connection, statement: Statement) -> Any:
    kind, sql, params = statement
    if kind == "one":
        return await conn.fetchrow(postgres_sql(sql), *params)
    if kind == "all":
        return await conn.fetch(postgres_sql(sql), *params)
    if kind == "run":
        return _row_count(await conn.execute(postgres_sql(sql), *params))
    if kind == "many":
        await conn.executemany(postgres_sql(sql), params)
        return None
    if kind == "notify":
        await conn.execute("SELECT pg_notify($1, $2)", *params)
        return None
    if kind == "lock":
        if params:
            keys = lock_keys(params)
            await conn.execute(_lock_sql(len(keys)), *keys)
        return None
    raise ValueError(f"unknown statement kind {kind!r}")


# What opening, or using, a connection raises when the database cannot be reached or the connection is
# gone (callers that go on without the database: the listener, the fleet's slots, start-up's message).
# InternalClientError too: a connection the server ended while it sat idle (a restart,
# pg_terminate_backend) can fail its next statement with it rather than with a lost connection's error.
CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# Messages of asyncpg's errors for a statement it refused to send: the connection's end had already
# been heard (a restart, an idle-session timeout, pg_terminate_backend, while it sat in the pool).
_NOT_SENT = ("cannot switch to state", "not connected", "connection is closed")


def _unsent(exc: BaseException) -> bool:
    """Whether asyncpg refused to send the statement at all (so running it again cannot repeat it).
    Exact classes only: their subclasses (a stale type cache, a protocol error) come after the server
    has run the statement."""
    kind = type(exc)
    return kind in (asyncpg.InternalClientError, asyncpg.InterfaceError) and str(exc).startswith(_NOT_SENT)


def _connection_lost(exc: BaseException) -> bool:
    """Whether `exc` says the connection is gone, not that a statement or its arguments were wrong."""
    if isinstance(exc, asyncpg.PostgresConnectionError | OSError):
        return True
    if isinstance(exc, asyncpg.DataError | asyncpg.UnsupportedClientFeatureError):
        return False
    return isinstance(exc, asyncpg.InterfaceError) or _unsent(exc)


class _LostBeforeCommit(Exception):
    """The connection was lost before COMMIT was sent: nothing of the transaction was kept, so it may
    run again on another connection (its body is re-runnable, as for a deadlock)."""


async def in_transaction(conn: asyncpg.Connection, body: Callable[[], Body[T]]) -> T:
    """Run a transaction body on `conn`: BEGIN, its statements, then COMMIT, or ROLLBACK if it fails.

    Every statement is a round trip, the one cost that matters here, so a body that starts by taking
    locks (most movements do) has them sent with its BEGIN. A connection lost before the COMMIT raises
    `_LostBeforeCommit` (run again by `_retrying`); one lost during the COMMIT raises as it is, since
    whether the COMMIT took cannot be known.
    """
    try:
        return await _in_transaction(conn, body)
    except Exception as exc:
        if _connection_lost(exc):
            raise _LostBeforeCommit() from exc
        raise


async def _in_transaction(conn: asyncpg.Connection, body: Callable[[], Body[T]]) -> T:
    steps = body()
    begun = False
    try:
        statement = next(steps)
        if statement.kind == "lock" and statement.params:
            # Begun before it is sent: a lock that fails leaves the transaction open, to roll back.
            begun, result = True, None
            await conn.execute(_begin_and_lock(lock_keys(statement.params)))
        else:
            await conn.execute("BEGIN")
            begun = True
            result = await _step(conn, statement)
        while True:
            result = await _step(conn, steps.send(result))
    except StopIteration as done:
        value: T = done.value
    except BaseException:
        if begun and not conn.is_closed() and conn.is_in_transaction():
            with contextlib.suppress(Exception):  # a broken connection: the pool drops it
                await conn.execute("ROLLBACK")
        raise
    finally:
        steps.close()
    if begun:  # a failed COMMIT ends the transaction too
        try:
            await conn.execute("COMMIT")
        except Exception as exc:
            raise _CommitUnknown() from exc  # whatever it was, it came during the COMMIT
    return value


class _CommitUnknown(Exception):
    """The connection was lost during COMMIT (carried past `in_transaction`'s retry, then unwrapped)."""


def _raise_original(marker: BaseException) -> NoReturn:
    """Raise the database's own error a retry marker carries, with its own cause kept."""
    error = marker.__cause__ or marker
    raise error from error.__cause__


async def _finished(task: asyncio.Future[Any], seconds: float) -> bool:
    """Whether `task` ends within `seconds`; waiting neither cancels it nor is held up by it."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    return bool(done)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection handed back (besides rolling back an open transaction).

    asyncpg's default resets the session (advisory locks, LISTEN, settings) with one more round trip
    per transaction; the repositories leave no session state (their locks end with the transaction).
    """


class _Listener:
    """Every channel a process listens on, on one pooled connection: LISTEN on each as it is asked for;
    when the connection is lost, a new one after LISTEN_RETRY_SECONDS, listening on all of them again.
    The pool does not reset sessions (`_keep_session`), so the listeners are removed before the
    connection goes back."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._heard: dict[str, list[Callable[[str], None]]] = {}
        self._asked = asyncio.Event()  # a channel was added while connected
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def add(self, channel: str, heard: Callable[[str], None]) -> None:
        if self._closed:  # the database is closed: nothing would ever be heard
            return
        self._heard.setdefault(channel, []).append(heard)
        self._asked.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="retouch-listen")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _deliver(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        for heard in self._heard.get(channel, ()):
            try:
                heard(payload)
            except Exception:
                log.exception("database: a %s listener failed", channel)

    async def _run(self) -> None:
        # This task must outlive every failure: if it ended, no NOTIFY would be heard until a restart.
        failing: str | None = None  # the error logged in full; the same again is not, every 5 s
        while True:
            try:
                async with self._pool.acquire() as conn:
                    await self._until_lost(conn)
                failing = None  # it listened until the connection was lost
            except CONNECTION_ERRORS as exc:
                log.info("database: not listening (%s); trying again", type(exc).__name__)
                failing = None  # a new failure after this is news again
            except Exception as exc:
                if repr(exc) != failing:
                    log.exception("database: listening failed; trying again every %g s", LISTEN_RETRY_SECONDS)
                failing = repr(exc)
            await asyncio.sleep(LISTEN_RETRY_SECONDS)

    async def _until_lost(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()

        def ended(_conn: Any) -> None:
            lost.set()

        listening: list[str] = []
        conn.add_termination_listener(ended)
        try:
            while not lost.is_set():
                self._asked.clear()
                for channel in [c for c in self._heard if c not in listening]:
                    await conn.add_listener(channel, self._deliver)
                    listening.append(channel)
                waits = [asyncio.ensure_future(e.wait()) for e in (lost, self._asked)]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()
        finally:
            # A lost connection has nothing left to undo (and refuses to be asked).
            with contextlib.suppress(Exception):
                conn.remove_termination_listener(ended)
            for channel in listening:
                with contextlib.suppress(Exception):
                    await conn.remove_listener(channel, self._deliver)


class PostgresDatabase(Clocked):
    """An asyncpg pool. Create with `await PostgresDatabase.open(dsn)`.

    `pool` is open to other stores sharing this database (leases, shards). Connections come back from
    it without a session reset: whoever sets session state (a session advisory lock, LISTEN, SET) on
    a connection undoes it before releasing the connection.
    """

    Error = asyncpg.PostgresError
    shared = True
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], dt.datetime] = utcnow) -> None:
        super().__init__(clock)
        self.pool = pool
        self._running: set[asyncio.Task[Any]] = set()
        self._listener = _Listener(pool)

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        pool_size: int = POOL_SIZE,
        settings: Mapping[str, str] = SESSION_SETTINGS,
        migrate: bool = True,
    ) -> PostgresDatabase:
        """Connect (query parameters of `dsn` other than libpq's own are server settings, e.g.
        `?search_path=retouch`, and override those of `settings`) and bring the schema up to date (with
        `migrate`, the default)."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=pool_size,
                statement_cache_size=STATEMENT_CACHE,
                reset=_keep_session,
                server_settings=session_settings(dsn, settings),
            )
        except (*CONNECTION_ERRORS, ValueError) as exc:
            if isinstance(exc, asyncpg.PostgresError) and (refusal := refusal_for(exc, dsn)) is not None:
                raise refusal from None
            # The exception's own text may quote the URL, password included (a ValueError is the
            # driver failing to read it); the class and SQLSTATE say enough.
            code = getattr(exc, "sqlstate", None)
            raise DatabaseUnavailable(type(exc).__name__ + (f" ({code})" if code else "")) from None
        try:
            return await migrated(cls(pool, clock), migrate=migrate)
        except asyncpg.PostgresError as exc:
            # A schema that does not exist or a missing privilege shows at the first CREATE TABLE; any
            # other failure inside a migration is a bug, reported with its traceback.
            if (refusal := refusal_for(exc, dsn)) is None:
                raise
            raise refusal from None

    async def close(self) -> None:
        """Let running transactions finish, stop listening, then close every connection; what is still
        open after CLOSE_SECONDS is cut, with a warning. Closing twice is harmless."""
        # The graceful close runs on its own and is waited for, not cancelled: a cancelled transaction
        # still sends its ROLLBACK, and on a connection that went silent (a partitioned network) that
        # waits for ever. Cutting every connection is what ends such waits.
        closing = asyncio.ensure_future(self._close_gracefully())
        try:
            finished = await _finished(closing, CLOSE_SECONDS)
        except asyncio.CancelledError:  # the stop itself is being cut short: so are the connections
            self.pool.terminate()
            raise
        if finished:
            closing.result()  # its error, if it failed, is the caller's
            return
        log.warning(
            "database: connections still in use %g s into the stop; cut off (an unfinished transaction "
            "rolls back)",
            CLOSE_SECONDS,
        )
        self.pool.terminate()
        if not await _finished(closing, CUT_WAIT_SECONDS):
            closing.cancel()  # not awaited: nothing it waits for can hold the stop up any more
        closing.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _close_gracefully(self) -> None:
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        await self._listener.close()
        await self.pool.close()

    def listen(self, channel: str, heard: Callable[[str], None]) -> None:
        """Call `heard(payload)` for each NOTIFY on `channel` until `close`, on the one pooled connection
        every channel shares (replaced after LISTEN_RETRY_SECONDS when it is lost)."""
        self._listener.add(channel, heard)

    # -- running work ---------------------------------------------------------------------------------

    async def _unstoppable(self, work: Coroutine[Any, Any, T]) -> T:
        """`work` in its own task, which a cancelled caller leaves running to its end."""
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        # Retrieve a failure nobody is left to await, so it is not reported as "never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(task)

    async def _retrying(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`work(connection)`, again on a fresh transaction after a deadlock or serialization failure,
        or on a fresh connection after losing one before anything was committed."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self.pool.acquire() as conn:
                    return await work(conn)
            except _CommitUnknown as exc:
                _raise_original(exc)
            except _LostBeforeCommit as exc:
                if attempt == ATTEMPTS:
                    _raise_original(exc)
                log.info("database connection lost (attempt %d); running the transaction again", attempt)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate not in RETRY_STATES or attempt == ATTEMPTS:
                    raise
                log.info("database %s (attempt %d); running the transaction again", exc.sqlstate, attempt)
            await asyncio.sleep(random.uniform(0, 0.01 * attempt))
        raise AssertionError("unreachable")

    async def _reading(self, read: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """A read, again on a fresh connection when the one the pool gave had been lost."""
        for attempt in range(1, ATTEMPTS + 1):
            # Taking a connection is outside the retry: one that cannot be opened is not tried again.
            async with self.pool.acquire() as conn:
                try:
                    return await read(conn)
                except Exception as exc:
                    if attempt == ATTEMPTS or not _connection_lost(exc):
                        raise
            log.info("database connection lost (attempt %d); reading again", attempt)
        raise AssertionError("unreachable")

    async def transaction(self, body: Callable[[], Body[T]]) -> T:
        """Run `body()` as one transaction on a pooled connection; what it returns, once committed."""

        return await self._unstoppable(self._retrying(lambda conn: in_transaction(conn, body)))

    async def one(self, sql: str, params: Sequence[Any] = ()) -> asyncpg.Record | None:
        text = postgres_sql(sql)
        return await self._reading(lambda conn: conn.fetchrow(text, *params))

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[asyncpg.Record]:
        text = postgres_sql(sql)
        rows: list[asyncpg.Record] = await self._reading(lambda conn: conn.fetch(text, *params))
        return rows

    async def write_one(self, sql: str, params: Sequence[Any]) -> int:
        """One statement, its own transaction (autocommit); its row count. Run again on a fresh
        connection only when asyncpg refused to send it (it had already heard of the connection's end);
        lost in flight, it may have committed, and that is raised."""

        async def once(conn: asyncpg.Connection) -> int:
            try:
                return _row_count(await conn.execute(postgres_sql(sql), *params))
            except Exception as exc:
                if _unsent(exc):
                    raise _LostBeforeCommit() from exc
                if _connection_lost(exc):
                    raise _CommitUnknown() from exc
                raise

        return await self._unstoppable(self._retrying(once))

    # -- schema ---------------------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply numbered migrations newer than `schema_version`, each in its own transaction with its
        version bump. Raises `SchemaTooNew` (touching nothing) for a database a newer release migrated.
        """
        own = dict(migrations(PG_MIGRATIONS))
        async with self.pool.acquire() as conn:
            # Two processes starting together: the second waits, then finds nothing left to apply.
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                version = await _version(conn)
                for number, sql in pending_migrations(version):
                    log.info("applying database migration %04d", number)
                    async with conn.transaction():
                        await conn.execute(postgres_ddl(sql) + own.get(number, ""))
                        await conn.execute(
                            "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL);"
                            "DELETE FROM schema_version;"
                            f"INSERT INTO schema_version (version) VALUES ({int(number)})"
                        )
                    version = number
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        return version

    async def schema_version(self) -> int:
        async with self.pool.acquire() as conn:
            return await _version(conn)

    async def check_writable(self) -> None:
        """Raise if the database cannot take a write right now (used by health checks)."""

        def body() -> Body[str]:
            row = yield Statement("one", "SELECT current_setting('transaction_read_only')", ())
            return str(row[0])

        if await self.transaction(body) == "on":  # a standby, or default_transaction_read_only
            raise DatabaseUnavailable("the database is read-only")


def schema_url(url: str, schema: str) -> str:
    """`url` with its connections' `search_path` set to `schema` (asyncpg passes query parameters it
    does not know to the server as settings), e.g. to keep Retouch's tables in a schema of their own."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"] + [("search_path", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextlib.asynccontextmanager
async def scratch_schema(url: str) -> AsyncIterator[str]:
    """A new, empty schema for tests and benchmarks: yields a URL whose connections use it, then drops
    it with everything in it."""
    name = f"retouch_scratch_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {name}")
        try:
            yield schema_url(url, name)
        finally:
            await conn.execute(f"DROP SCHEMA {name} CASCADE")
    finally:
        await conn.close()


async def _version(conn: asyncpg.Connection) -> int:
    """The schema version (0 for a database no migration has touched)."""
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
