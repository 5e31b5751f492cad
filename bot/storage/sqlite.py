"""The SQLite backend: one connection on one thread, transaction bodies driven there, commits grouped.

`sqlite3` from the standard library, on ONE dedicated worker thread (`ThreadPoolExecutor(max_workers=1)`,
reached with `loop.run_in_executor`): the connection is created, used and closed on that thread only.
WAL, `synchronous=FULL`, `busy_timeout`, foreign keys on, and `BEGIN IMMEDIATE` for every write so a
reservation can never race another, in this process or another one on the same file.

A transaction body (see `connection.py`) runs whole on the worker: its statements go straight to
sqlite3, with no hop back to the event loop between them. Bodies waiting while the worker is busy
are committed together (group commit): the next hop runs them one after another inside one BEGIN
IMMEDIATE, each in its own SAVEPOINT (a body that fails rolls back to it, alone), then COMMITs once.
Each caller hears back only after that COMMIT, so nothing is acknowledged before it is durable, and a
failed COMMIT fails every body in it. Under load that is one fsync for many transactions instead of
one each; a lone caller's transaction runs alone, as before.

The worker runs one call at a time, in order, so no statement from elsewhere can ever run inside a
transaction; reads go straight to the worker, so they never wait behind writes still queued. A caller
cancelled after its body was handed to the worker does not stop it: the worker runs it to COMMIT or
ROLLBACK, so no transaction is ever left open (a call cancelled before that never runs).

One bot process per file: the engine assumes it is the only one (start-up recovery takes every live
job; nothing is leased), so two bots on one file (`docker compose --scale` without a PostgreSQL
DATABASE_URL) would run every job twice. The running bot opens its file with `sole_process`, which
holds an exclusive `flock` on `<file>.lock` until the database is closed (the kernel drops it when the
process dies, `kill -9` included) and refuses to start while another process holds it. The copy to
PostgreSQL (`copy.py`) takes it too, so it never copies a file a bot is writing. Other openers
(`--sync`, tests, benches, tools reading the file beside the bot) do not take it; `--sync` opens it
without migrating, since only the lock's holder may change the schema under a running bot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bot.storage.connection import (
    Body,
    Clocked,
    DatabaseInUse,
    Statement,
    migrated,
    pending_migrations,
    utcnow,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class DatabaseClosing(sqlite3.ProgrammingError):
    """A write transaction asked for after the close began: it is refused, not queued (what sqlite3
    raises for a closed connection, so callers treat both alike)."""

    def __init__(self) -> None:
        super().__init__("the database is closing: it takes no new transaction")


BUSY_TIMEOUT_MS = 10_000
# Beside the database file: the lock the running bot holds (never deleted: a lock file removed while a
# process waits for it would let two processes hold "the" lock on two different files).
LOCK_SUFFIX = ".lock"
# Bodies committed together at most: bounds how long one COMMIT keeps another process waiting.
MAX_GROUP = 64

# What one queued transaction becomes: its body, and the future its caller awaits.
_Queued = tuple[Callable[[], Body[Any]], "asyncio.Future[Any]"]
# A body's outcome on the worker: (True, value) or (False, the exception it raised).
_Outcome = tuple[bool, Any]


# -- on the database thread ---------------------------------------------------------------------------
# Plain sqlite3 functions, run on the worker thread. They must never touch the event loop.


def _one(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
    cur = db.execute(sql, params)
    try:
        row: sqlite3.Row | None = cur.fetchone()
        return row
    finally:
        cur.close()


def _all(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
    cur = db.execute(sql, params)
    try:
        return cur.fetchall()
    finally:
        cur.close()


def _run(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    return db.execute(sql, params).rowcount


def _many(db: sqlite3.Connection, sql: str, params: Sequence[Sequence[Any]]) -> None:
    db.executemany(sql, params)


def _lock(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> None:
    """BEGIN IMMEDIATE already holds the database's only write lock."""


def _notify(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> None:
    """One process uses the file: nobody else listens."""


_STEPS: dict[str, Callable[[sqlite3.Connection, str, Any], Any]] = {
    "one": _one,
    "all": _all,
    "run": _run,
    "many": _many,
    "lock": _lock,
    "notify": _notify,
}


def drive(db: sqlite3.Connection, body: Callable[[], Body[T]]) -> T:
    """Run a transaction body's statements on `db` (inside a transaction the caller opened)."""
    steps = body()
    try:
        statement: Statement = next(steps)
        while True:
            kind, sql, params = statement
            statement = steps.send(_STEPS[kind](db, sql, params))
    except StopIteration as done:
        result: T = done.value
        return result
    finally:
        steps.close()


def in_transaction(db: sqlite3.Connection, body: Callable[[], Body[T]]) -> T:
    """Run `body` as one write transaction; BEGIN IMMEDIATE takes the write lock up front."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = drive(db, body)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # body failed, or COMMIT did and left the transaction open
            db.execute("ROLLBACK")
        raise
    return result


def _grouped(db: sqlite3.Connection, bodies: list[Callable[[], Body[Any]]]) -> list[_Outcome]:
    """Several bodies in one transaction, each in its own savepoint; one COMMIT for all of them."""
    outcomes: list[_Outcome] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for body in bodies:
            db.execute("SAVEPOINT body")
            try:
                outcomes.append((True, drive(db, body)))
            except Exception as exc:
                if not db.in_transaction:  # an error SQLite answers by rolling back everything
                    raise
                db.execute("ROLLBACK TO body")
                outcomes.append((False, exc))
            db.execute("RELEASE body")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return outcomes


def run_group(db: sqlite3.Connection, bodies: list[Callable[[], Body[Any]]]) -> list[_Outcome]:
    """Every body's outcome once its transaction ended; all of them fail if the COMMIT does."""
    try:
        if len(bodies) == 1:  # alone: no savepoint needed
            return [(True, in_transaction(db, bodies[0]))]
        return _grouped(db, bodies)
    except Exception as exc:
        return [(False, exc)] * len(bodies)


def _connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
    db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    return db


def _apply_migration(db: sqlite3.Connection, number: int, sql: str) -> None:
    try:
        # executescript commits on its own, so the version bump rides inside the script.
        db.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")
    except BaseException:
        if db.in_transaction:  # a failing statement stops the script before its COMMIT
            db.execute("ROLLBACK")
        raise


def _check_writable() -> Body[None]:
    yield Statement("one", "SELECT 1", ())


def hold_sole_process_lock(path: str) -> int:
    """Take the exclusive lock on `<path>.lock` without waiting; its file descriptor (closing it lets
    go). Raises DatabaseInUse when another process holds it.

    `flock` belongs to the open file, not the process: the kernel drops it when the process dies,
    however it dies, and the descriptor is not inherited by child processes (Python opens it
    non-inheritable), so a stale lock cannot outlive the bot.
    """
    fd = os.open(path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUse(path) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class SQLiteDatabase(Clocked):
    """One SQLite connection on its own thread. Create with `await SQLiteDatabase.open(path)`."""

    Error = sqlite3.Error
    shared = False  # one process (two on one file would each run every job)
    skip_locked = ""  # BEGIN IMMEDIATE: a claim runs alone

    def __init__(
        self,
        conn: sqlite3.Connection,
        worker: ThreadPoolExecutor,
        clock: Callable[[], dt.datetime] = utcnow,
        lock_fd: int | None = None,
    ) -> None:
        super().__init__(clock)
        self._conn = conn
        self._worker = worker
        self._lock_fd = lock_fd  # the sole-process lock, held until close
        self._closed = False
        self._closing = False  # `close` began: new transactions are refused, queued ones still commit
        self._queue: list[_Queued] = []
        self._writing = False  # a transaction (or a group of them) is with the worker
        self._committer: asyncio.Task[None] | None = None  # kept: the loop holds tasks only weakly
        self._settled = asyncio.Event()  # set while `_writing` is False: what `close` waits for
        self._settled.set()

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        sole_process: bool = False,
        migrate: bool = True,
    ) -> SQLiteDatabase:
        """Open (creating if needed) the database file and bring its schema up to date (with `migrate`,
        the default). With `sole_process`, first take the file's lock (DatabaseInUse if another process
        has it)."""
        on_disk = str(path) != ":memory:"
        if on_disk:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Before connecting: a second bot must not even migrate the file the first one runs on.
        lock_fd = hold_sole_process_lock(str(path)) if sole_process and on_disk else None
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retouch-db")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(worker, _connect, str(path))
        except BaseException:
            worker.shutdown(wait=False)
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return await migrated(cls(conn, worker, clock, lock_fd), migrate=migrate)

    def listen(self, channel: str, heard: Callable[[str], None]) -> None:
        """Nothing to hear: no other process writes to this database."""

    async def close(self) -> None:
        """Commit the transactions begun before it, close the connection on its thread, then let the
        thread end. Transactions asked for once it began are refused (`DatabaseClosing`). Closing twice
        is harmless."""
        if self._closed:
            return
        # From here no transaction joins the queue: under steady load it would never empty, and the
        # close (a shutdown) would wait for ever.
        self._closing = True
        try:
            # Transactions begun before the close commit first. `_writing` stays set until none is
            # queued: a lone transaction hands those queued meanwhile on only once the worker answers it,
            # so a close queued on the worker before then would come ahead of them.
            while self._writing:
                await self._settled.wait()
            await self.run(lambda db: db.close())
        finally:
            self._closed = True
            self._worker.shutdown(wait=False)
            if self._lock_fd is not None:  # after the connection: another bot may start now
                os.close(self._lock_fd)
                self._lock_fd = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(sqlite3_connection, *args)` on the database thread: one round trip, however many
        statements `fn` runs. SQLite only (tests, migrations): repositories write bodies."""
        if self._closed:
            # What sqlite3 itself raises for a closed connection (the worker thread is gone too).
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, fn, self._conn, *args)

    async def transaction(self, body: Callable[[], Body[T]]) -> T:
        """Run `body()` on the database thread as one write transaction, committed with whatever other
        bodies are waiting (see the module docstring). Returns what the body returns, once committed."""
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        if self._closing:
            raise DatabaseClosing()
        loop = asyncio.get_running_loop()
        if self._writing:  # a transaction is on the worker: wait for the next group
            done: asyncio.Future[T] = loop.create_future()
            self._queue.append((body, done))
            return await done
        # Alone: straight to the worker, as cheap as a hop gets.
        self._set_writing(True)
        try:
            [(ok, value)] = await loop.run_in_executor(self._worker, run_group, self._conn, [body])
        finally:
            # Those who queued meanwhile go next (after this body, even if its caller was cancelled:
            # the worker runs calls in order).
            if self._queue:
                self._committer = asyncio.create_task(self._commit_queued())
            else:
                self._set_writing(False)
        if not ok:
            raise value
        result: T = value
        return result

    async def _commit_queued(self) -> None:
        """Hand the waiting bodies to the worker, a group per hop, until none are left."""
        loop = asyncio.get_running_loop()
        waiting: list[_Queued] = []
        try:
            while self._queue:
                waiting = [item for item in self._queue[:MAX_GROUP] if not item[1].cancelled()]
                del self._queue[:MAX_GROUP]
                if not waiting:
                    continue
                outcomes = await loop.run_in_executor(
                    self._worker, run_group, self._conn, [body for body, _ in waiting]
                )
                for (_, done), (ok, value) in zip(waiting, outcomes, strict=True):
                    if done.done():  # its caller was cancelled meanwhile; the body ran anyway
                        continue
                    if ok:
                        done.set_result(value)
                    else:
                        done.set_exception(value)
                waiting = []
        except BaseException as exc:  # the worker is gone, or this task was cancelled
            for _, done in [*waiting, *self._queue]:
                if done.done():
                    continue
                if isinstance(exc, Exception):
                    done.set_exception(exc)
                else:
                    done.cancel()
            self._queue.clear()
            raise
        finally:
            self._set_writing(False)

    def _set_writing(self, writing: bool) -> None:
        self._writing = writing
        if writing:
            self._settled.clear()
        else:
            self._settled.set()

    async def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        return await self.run(_one, sql, params)

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await self.run(_all, sql, params)

    async def write_one(self, sql: str, params: Sequence[Any]) -> int:
        """One statement in its own write transaction; its row count."""

        def body() -> Body[int]:
            changed: int = yield Statement("run", sql, params)
            return changed

        return await self.transaction(body)

    # -- schema -------------------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply numbered migrations newer than `PRAGMA user_version` (refusing, untouched, a database a
        newer release migrated: `SchemaTooNew`). Returns the new version."""
        version = await self.schema_version()
        for number, sql in pending_migrations(version):
            log.info("applying database migration %04d", number)
            await self.run(_apply_migration, number, sql)
            version = number
        return version

    async def schema_version(self) -> int:
        row = await self.one("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def check_writable(self) -> None:
        """Raise if the database cannot take a write right now (used by health checks)."""
        await self.transaction(_check_writable)
