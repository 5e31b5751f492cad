"""Issue 15's scale-out acceptance with real processes: three OS processes on one PostgreSQL, one
member's balance covering k holds, 50 edits fired at once spread over all three — exactly k provider
calls, exactly k results, and the ledger reconciles.

Each child (tests/fleet_process.py) is built as `python -m bot` builds itself, below Discord: settings
from its environment, its own asyncpg pool, its own provider session, `build_services`, shard and job
lease rounds running. They share the database, DATA_DIR and the fake OpenAI in this process, as
`docker compose --scale retouch=3` would. Each child prepares its share of the edits, says it is ready,
and submits them all when the parent writes one `go` to every child at once, so the holds of the three
processes meet in the database together (tests/fleet_process.py says why preparing comes first). Needs
PostgreSQL (skipped with the reason otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from bot.storage import Storage
from tests.durable import CATALOG_TOML
from tests.fakes.openai_server import FakeOpenAI
from tests.fixtures import TOKEN, provider_env
from tests.fleet_process import GO, GUILD, MEMBER
from tests.test_storage_processes import assert_books_reconcile

ROOT = Path(__file__).resolve().parents[1]
SHARES = (17, 17, 16)  # 50 edits over three processes
K = 7  # holds the member's balance covers
WAIT = 60.0  # the whole fleet, start to exit, on a loaded 2-core machine (it takes a few seconds)
STACKS_WAIT = 1.0  # for a hung child to write its stacks before it is killed


class Fleet:
    """Child processes speaking JSON lines (tests/fleet_process.py); every one still running is killed
    when the fleet closes, whatever happened."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[asyncio.subprocess.Process] = []

    def _log_path(self, index: int) -> Path:
        return self.logs / f"child-{index}.log"

    def _new_log(self, index: int) -> BinaryIO:
        # A file, not a pipe: nobody has to read a child's logs while it runs for it to go on writing.
        return self._log_path(index).open("wb")

    async def start(self, edits: int, processes: int) -> None:
        """A child that prepares `edits` once its rounds count `processes` live processes."""
        index = len(self.procs)
        with self._new_log(index) as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.fleet_process",
                str(edits),
                str(processes),
                cwd=ROOT,
                env=self.env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        self.procs.append(proc)

    def log(self, index: int) -> str:
        """The end of a child's logs (shown when it failed)."""
        return self._log_path(index).read_text(errors="replace")[-4000:]

    async def read_all(self) -> list[dict[str, Any]]:
        """Each child's next JSON line."""
        return list(await asyncio.gather(*(self._read(i) for i in range(len(self.procs)))))

    async def _read(self, index: int) -> dict[str, Any]:
        proc = self.procs[index]
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            await proc.wait()
            raise AssertionError(f"child {index} exited with {proc.returncode}:\n{self.log(index)}")
        message: dict[str, Any] = json.loads(line)
        return message

    async def go(self) -> None:
        """The start signal, written to every child before any is awaited, so they fire together."""
        await self.tell(GO, *range(len(self.procs)))

    async def tell(self, command: str, *indexes: int) -> None:
        """Write `command` to the children at `indexes`, to all of them before any is awaited."""
        for index in indexes:
            stdin = self.procs[index].stdin
            assert stdin is not None
            stdin.write(f"{command}\n".encode())
        for index in indexes:
            stdin = self.procs[index].stdin
            assert stdin is not None
            await stdin.drain()

    async def read(self, *indexes: int) -> list[dict[str, Any]]:
        """The next JSON line of each child at `indexes`."""
        return list(await asyncio.gather(*(self._read(i) for i in indexes)))

    async def exits(self) -> list[int | None]:
        return [await proc.wait() for proc in self.procs]

    async def close(self) -> None:
        """Kill every child still running; first, each one's stacks to its log, printed (pytest shows
        them with a failure), so a child that hung says where."""
        hung = [i for i, proc in enumerate(self.procs) if proc.returncode is None]
        for index in hung:
            self.procs[index].send_signal(signal.SIGUSR1)
        if hung:
            await asyncio.sleep(STACKS_WAIT)
        for index in hung:
            self.procs[index].kill()
            await self.procs[index].wait()
            print(f"child {index} killed; its log ends:\n{self.log(index)}", file=sys.stderr)


@contextlib.asynccontextmanager
async def fleet(env: dict[str, str], logs: Path, shares: tuple[int, ...]) -> AsyncIterator[Fleet]:
    processes = Fleet(env, logs)
    try:
        for edits in shares:
            await processes.start(edits, len(shares))
        yield processes
    finally:
        await processes.close()


def child_env(openai: FakeOpenAI, database: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a bot process on `database`, with the fake OpenAI as its one provider, then
    `extra`. Its PYTHONPATH puts this checkout first, so the children import the code under test. Shard
    leases are the shortest allowed, so the children count each other within a second."""
    catalog = data_dir / "catalog.toml"
    catalog.write_text(CATALOG_TOML)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": path,
        "DISCORD_TOKEN": TOKEN,
        **provider_env("openai", openai),
        "DATABASE_URL": database,
        "CATALOG_PATH": str(catalog),
        "DATA_DIR": str(data_dir),
        "ALLOWED_GUILD_IDS": str(GUILD),
        "STARTING_CREDITS": "0",
        "MODERATION": "off",
        "SHARD_COUNT": "1",
        "SHARD_LEASE_SECONDS": "3",
        **extra,
    }


async def test_three_processes_firing_fifty_edits_at_once_for_a_balance_of_k_holds_run_exactly_k(
    postgres_url: str, openai: FakeOpenAI, tmp_path: Path
):
    storage = await Storage.open(postgres_url)  # migrated here, before any child opens it
    try:
        ledger = storage.ledger
        # One credit lets the children's price check pass; the rest tops it up to exactly k holds.
        await ledger.grant(GUILD, MEMBER, 1, actor_id=None, reason="t", starting_credits=0)
        env = child_env(openai, postgres_url, tmp_path)
        async with asyncio.timeout(WAIT), fleet(env, tmp_path, SHARES) as children:
            ready = await children.read_all()
            assert all(Path(r["code"]).is_relative_to(ROOT) for r in ready), ready  # this checkout's code
            assert len({r["owner"] for r in ready}) == len(SHARES)  # three engines, three names
            [per_job] = {r["per_job"] for r in ready}
            await ledger.grant(GUILD, MEMBER, per_job * K - 1, actor_id=None, reason="t", starting_credits=0)
            await children.go()
            reports = await children.read_all()
            assert await children.exits() == [0, 0, 0]

        # Every process fired its share; how the k admissions fell among them is the race's business.
        assert [len(r["outcomes"]) for r in reports] == list(SHARES)
        outcomes = Counter(o for r in reports for o in r["outcomes"])
        assert outcomes == {"ok": K, "insufficient_credits": sum(SHARES) - K}
        assert openai.post_count == K

        # Each result was run to the end by the process that admitted it, and by no other.
        rows = await storage.db.all("SELECT id, owner FROM jobs WHERE state = 'delivered'")
        ran_by = {r["id"]: r["owner"] for r in rows}
        admitted_by = {job_id: ready[i]["owner"] for i, r in enumerate(reports) for job_id in r["delivered"]}
        assert len(ran_by) == K and ran_by == admitted_by

        account = await ledger.get_account(GUILD, MEMBER)
        assert account is not None and (account.balance, account.held) == (0, 0)
        totals = await storage.reports.ledger_totals(GUILD, MEMBER)
        assert (totals.granted, totals.captured) == (per_job * K, per_job * K)
        await assert_books_reconcile(storage)
    finally:
        await storage.close()
