"""What every database backend provides, and the statements repositories write transactions with.

Two backends sit behind the same repositories: SQLite (`sqlite.py`, the embedded default) and
PostgreSQL (`postgres.py`, for several bot processes on one database). `open_database(target)` picks one
from `DATABASE_URL`: a file path or `sqlite:///path`, or `postgresql://…`.

A write transaction is a *body*: a generator function that yields `Statement`s and receives each
one's result (`row = yield fetch_one(sql, params)`), then returns the transaction's value. The SQL is
written once, in the dialect both backends accept (`?` placeholders, `ON CONFLICT`, `RETURNING`,
`COALESCE`, `CAST(? AS BIGINT)` where a bare parameter would have no type), so the money rules exist
once. The SQLite backend drives a body synchronously on its database thread (one hop from the event
loop per transaction, several transactions per commit); the PostgreSQL backend drives it with asyncpg
(`?` becomes `$n`, translated once per statement text).

What a backend must provide (`Database`):
- `open(target, clock)` / `close()`, and `migrate()` applying the numbered migrations in
  `migrations/` once, tracked by a version number (`schema_version()`), refusing a database newer than
  it knows (`SchemaTooNew`); `check_writable()` for health checks.
- `now()` / `timestamp()`: the injected clock, stored as the ISO-8601 UTC text `stamp` writes (range
  filters compare these strings byte by byte); `injected_now()`: the same, or None when it is the
  host's own clock (a moment processes on several hosts compare is better the database's).
- `one(sql, params)` / `all(sql, params)`: reads outside any transaction, returning rows addressable by
  column name and by index (`Row`).
- `transaction(body)`: runs `body()` as ONE write transaction that commits whole or rolls back whole,
  never left open by a cancelled caller (a caller cancelled while its body runs does not stop it).
  The ledger's guarantees rest on it: a reservation is a single conditional `UPDATE … WHERE balance >=
  ?` whose result decides, a job's movements take `lock(("job", id))` first, and every budget check
  takes `lock(("budget",))` before it reads the sums it compares. SQLite runs one writer at a time, so
  its locks cost nothing; PostgreSQL runs bodies concurrently under READ COMMITTED and takes them as
  transaction-scoped advisory locks. A body must be re-runnable (no effects outside its statements):
  PostgreSQL runs it again after a deadlock or serialization failure, and on a fresh connection after
  losing one before the COMMIT (never after: whether that COMMIT took cannot be known).
- `write_one(sql, params)`: one statement in its own write transaction, returning its row count.
- `Error`: the driver's exception class, for callers that must tell a refused statement apart.
- `shared`: whether several processes may use the database at once (PostgreSQL), so work in it is
  shared out by leases (bot/jobs/leases.py); SQLite runs one process.
- `skip_locked`: what ends a `SELECT` that picks rows for a claim so concurrent claimers pass each
  other's rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL; nothing on SQLite, whose one writer is enough).
- `listen(channel, heard)`: call `heard(payload)` for every `notify(channel, payload)` statement another
  process's transaction committed, until `close`; best effort (a lost connection hears nothing until it
  is replaced), so it only hastens what a slower path also does. Nothing on SQLite (one process).
A failing statement ends its body (PostgreSQL cannot continue a transaction after an error), so
bodies never catch database errors.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Generator, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

T = TypeVar("T")

MIGRATIONS_PACKAGE = "bot.storage"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite:///"


class SchemaTooNew(Exception):
    """The database was written by a newer release: this one must not touch it."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"database schema version {found} is newer than this release knows ({known})")
        self.found = found
        self.known = known


class DatabaseUnavailable(Exception):
    """The database server could not be reached or refused the connection (the text names no secret)."""


class DatabaseRefused(Exception):
    """The database server refused what the bot needs for a reason its operator fixes once (a database,
    role or schema that does not exist, a missing privilege): the text says which and what to do, and
    names no secret."""


class DatabaseInUse(Exception):
    """Another bot process runs on this SQLite file: one file serves one process (PostgreSQL, several)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"another process holds the SQLite database {path}")
        self.path = path


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    """The ledger's timestamp format in UTC, so range filters can compare strings."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def stamp(moment: dt.datetime) -> str:
    """A clock reading as stored in `*_at` columns (the clock is UTC already)."""
    return moment.isoformat(timespec="milliseconds")


def checked(fields: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """`fields`, after making sure every name is a known column."""
    # Column names are interpolated into SQL, so only known names ever get that far.
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown fields: {sorted(unknown)}")
    return fields


# -- statements ----------------------------------------------------------------------------------------


class Statement(NamedTuple):
    """One step of a transaction body; the backend sends back its result.

    `kind`: "one" (the first row or None), "all" (every row), "run" (the row count), "many" (the same
    statement for each parameter tuple; None), "lock" (`params` are the scopes to lock; None) or
    "notify" (`params`: channel and payload; None).
    """

    kind: str
    sql: str
    params: Any


# A transaction body: yields statements, receives their results, returns the transaction's value.
Body = Generator[Statement, Any, T]


def fetch_one(sql: str, params: Sequence[Any] = ()) -> Statement:
    """The statement's first row, or None (`SELECT`, or a write with `RETURNING`)."""
    return Statement("one", sql, params)


def fetch_all(sql: str, params: Sequence[Any] = ()) -> Statement:
    """Every row the statement returns."""
    return Statement("all", sql, params)


def execute(sql: str, params: Sequence[Any] = ()) -> Statement:
    """A write; the body receives how many rows it changed."""
    return Statement("run", sql, params)


def execute_many(sql: str, params: Sequence[Sequence[Any]]) -> Statement:
    """The same write once per parameter tuple."""
    return Statement("many", sql, params)


def lock(*scopes: tuple[Any, ...]) -> Statement:
    """Hold these named locks until the transaction ends, e.g. `lock(("job", job_id))`.

    For reads that decide a write under PostgreSQL's READ COMMITTED (a sum checked against a budget, a
    job's ledger rows before its capture): a second process taking the same lock waits until this
    transaction committed, then reads what it wrote. SQLite already runs one writer at a time.
    """
    return Statement("lock", "", scopes)  # keys are made by the backend that needs them (lock_keys)


def notify(channel: str, payload: str) -> Statement:
    """Tell the processes listening on `channel` (`Database.listen`) once this transaction commits
    (PostgreSQL's NOTIFY: never if it rolls back). Nothing on SQLite, where no other process listens."""
    return Statement("notify", "", (channel, payload))


def lock_key(scope: tuple[Any, ...]) -> int:
    """A signed 64-bit key for `scope`, the same in every process (unlike `hash`)."""
    digest = hashlib.blake2b(repr(scope).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_keys(scopes: Sequence[tuple[Any, ...]]) -> list[int]:
    """The keys of a `lock` statement's scopes, sorted: taken in that order by every transaction, two
    transactions can never each hold a lock the other waits for."""
    return sorted({lock_key(scope) for scope in scopes})


# -- the backend contract --------------------------------------------------------------------------------


class Row(Protocol):
    """A result row: `row["column"]`, `row[0]`, `dict(row)` and unpacking (sqlite3.Row, asyncpg.Record)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...

    def keys(self) -> Any: ...


class Reader(Protocol):
    """What a read-only repository needs (`reports.py`: reads and the storage clock): a `Database`, or
    one connection inside a transaction that must see its own uncommitted rows (the copy to PostgreSQL
    verifies through it)."""

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def all(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Row]: ...

    def now(self) -> dt.datetime: ...


class Database(Protocol):
    """A backend: see this module's docstring for what each method promises."""

    @property
    def Error(self) -> type[Exception]:  # the driver's exception class
        ...

    @property
    def shared(self) -> bool: ...

    @property
    def skip_locked(self) -> str: ...

    def now(self) -> dt.datetime: ...

    def injected_now(self) -> dt.datetime | None: ...

    def timestamp(self) -> str: ...

    async def transaction(self, body: Callable[[], Body[T]]) -> T: ...

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def all(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Row]: ...

    async def write_one(self, sql: str, params: Sequence[Any]) -> int: ...

    async def migrate(self) -> int: ...

    async def schema_version(self) -> int: ...

    async def check_writable(self) -> None: ...

    def listen(self, channel: str, heard: Callable[[str], None]) -> None: ...

    async def close(self) -> None: ...


class Clocked:
    """The injected storage clock, which both backends hold: every policy date is read from it."""

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self._clock = clock

    def now(self) -> dt.datetime:
        """The storage clock (injectable in tests)."""
        return self._clock()

    def injected_now(self) -> dt.datetime | None:
        """The storage clock when one was injected (tests); None when it is this host's own (`utcnow`):
        then a moment several processes must agree on is read from the database's clock instead."""
        return None if self._clock is utcnow else self._clock()

    def timestamp(self) -> str:
        """The clock as stored in `*_at` columns."""
        return stamp(self._clock())


DatabaseT = TypeVar("DatabaseT", bound="Database")


async def migrated(database: DatabaseT, *, migrate: bool = True) -> DatabaseT:
    """`database` with its schema brought up to date; closed again if that fails. Without `migrate`,
    only checked: a schema from a newer release is still refused (`SchemaTooNew`), nothing is applied."""
    try:
        if migrate:
            await database.migrate()
        else:
            pending_migrations(await database.schema_version())
    except BaseException:
        await database.close()
        raise
    return database


def pending_migrations(version: int) -> list[tuple[int, str]]:
    """The packaged migrations newer than `version`, in order.

    Raises `SchemaTooNew` for a database a newer release has migrated: an older release cannot know
    what its columns and rules mean, and would write rows it cannot keep.
    """
    known = latest_schema_version()
    if version > known:
        raise SchemaTooNew(version, known)
    return [(number, sql) for number, sql in migrations() if number > version]


def is_postgres(target: Path | str) -> bool:
    return str(target).startswith(POSTGRES_SCHEMES)


def sqlite_path(target: Path | str) -> str:
    """The file a SQLite target names: a path, or `sqlite:///relative` / `sqlite:////absolute`."""
    text = str(target)
    return text[len(SQLITE_SCHEME) :] if text.startswith(SQLITE_SCHEME) else text


async def open_database(
    target: Path | str,
    *,
    clock: Callable[[], dt.datetime] = utcnow,
    sole_process: bool = False,
    migrate: bool = True,
) -> Database:
    """Open (creating if needed) the database `target` names and bring its schema up to date.

    `sole_process` (the running bot): on SQLite, hold the file for this process until it closes, and
    raise DatabaseInUse if another process holds it (see `sqlite.py`); PostgreSQL serves several.
    `migrate=False` (`--sync`, which runs no jobs): leave the schema as it is, so an opener that may run
    beside the bot, without its lock, never migrates the file under it.
    """
    if is_postgres(target):
        from bot.storage.postgres import PostgresDatabase  # asyncpg only loads when it is used

        return await PostgresDatabase.open(str(target), clock=clock, migrate=migrate)
    from bot.storage.sqlite import SQLiteDatabase

    return await SQLiteDatabase.open(
        sqlite_path(target), clock=clock, sole_process=sole_process, migrate=migrate
    )


# -- migrations ----------------------------------------------------------------------------------------


def migrations(folder: str = "migrations") -> list[tuple[int, str]]:
    """(number, SQL) of every numbered migration in `folder` of this package, in order."""
    found = []
    for entry in (resources.files(MIGRATIONS_PACKAGE) / folder).iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text("utf-8")))
    return sorted(found)


def latest_schema_version() -> int:
    """The schema version the packaged migrations lead to (what `/diagnose` compares against)."""
    return max((number for number, _ in migrations()), default=0)
