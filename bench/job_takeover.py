"""How fast a dead process's edits move to the others through the job leases: `python -m bench.job_takeover`.

Starts `--processes` real processes on one PostgreSQL schema and one DATA_DIR, each running the
production services and job engine (`bot.app.build_services`, real timers, the lease rounds) against a
fake WaveSpeed in this process that accepts every job and holds its result. The first process submits
`--jobs` edits: WaveSpeed's limit's worth wait there (`submitted`), the rest in the queue (`reserved`).
Then, `--runs` times: `kill -9` of the process holding the most jobs, and the time until every live job
is held by a survivor (claimed, and resumed: polled, or queued again); a new process replaces the dead
one. Also reported: how long after the dead process's last lease ran out that happened (the round
scheduling's own delay), and how many jobs WaveSpeed received more than once (must be 0).

Needs PostgreSQL: `--database-url`, else RETOUCH_TEST_DATABASE_URL; without either it says so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench._common import ROOT, table

GUILD = 1
LIVE = "('queued', 'reserved', 'submitting', 'submitted', 'completed')"


async def until_none(query: Callable[[], Awaitable[Any]]) -> None:
    """Wait until `query()` finds nothing (the change happens in another process: nothing to await)."""
    while True:
        if not await query():
            return
        await asyncio.sleep(0.01)


UPLOAD_LIMIT = 10 * 1024 * 1024


async def run_worker(url: str, name: str, data_dir: str, lease: float, wavespeed: str, submit: int) -> None:
    """One process: the production services on the shared database; submits `submit` edits, then idles."""
    import aiohttp

    from bot.app import build_providers, build_services
    from bot.catalog import load_catalog
    from bot.config import load_settings
    from bot.services.edits import EditJob, EditOptions, Upload
    from bot.storage import Storage
    from tests.durable import PHOTO

    key, base = wavespeed.split(" ", 1)
    settings = load_settings(
        {
            "DISCORD_TOKEN": "t" * 20,
            "DATA_DIR": data_dir,
            "DATABASE_URL": url,
            "JOB_LEASE_SECONDS": str(lease),
            "WAVESPEED_API_KEY": key,
            "WAVESPEED_BASE_URL": base,
            "CATALOG_PATH": str(Path(data_dir) / "catalog.toml"),
            "ALLOWED_GUILD_IDS": str(GUILD),
            "MODERATION": "off",
            "MAX_CONCURRENT_JOBS": str(max(4, submit)),
        }
    )
    storage = await Storage.open(url)
    async with aiohttp.ClientSession() as session:
        services = build_services(
            settings, load_catalog(settings.catalog_path), storage, build_providers(settings, session)
        )
        services.edits.engine.owner = name
        await services.edits.start()

        async def read() -> bytes:
            return PHOTO

        for n in range(submit):
            options = EditOptions("make it a watercolour", model="ws-mini")
            upload = Upload("image", "photo.png", len(PHOTO), read)
            job = EditJob(GUILD, 1000 + n, 7, [upload], options, upload_limit=UPLOAD_LIMIT)
            await services.edits.submit(await services.edits.prepare(job))
        # Settled: WaveSpeed holds its limit's worth, the rest wait in the queue (reserved), or at
        # WaveSpeed's concurrency slot (submitting) when the engine runs more than the slots allow.
        await until_none(lambda: storage.db.one("SELECT id FROM jobs WHERE state = 'queued'"))
        await asyncio.sleep(2)
        print(json.dumps({"ready": name}), flush=True)
        await asyncio.Event().wait()  # until killed


class Bench:
    def __init__(self, url: str, data_dir: str, lease: float, wavespeed: str) -> None:
        self.url, self.data_dir, self.lease, self.wavespeed = url, data_dir, lease, wavespeed
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    async def spawn(self, submit: int = 0) -> str:
        name = f"w{len(self.processes)}-{secrets.token_hex(2)}"
        command = [sys.executable, "-m", "bench.job_takeover", "--worker", name, "--database-url", self.url]
        command += ["--data-dir", self.data_dir, "--lease", str(self.lease), "--wavespeed", self.wavespeed]
        command += ["--submit", str(submit)]
        process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        if not line:
            raise RuntimeError(f"worker {name} did not start")
        self.processes[name] = process
        return name

    async def kill(self, name: str) -> float:
        killed = time.time()
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        return killed

    async def close(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGKILL)
            await process.wait()


async def measure(url: str, processes: int, jobs: int, lease: float, runs: int) -> list[list[Any]]:
    import asyncpg

    from bot.storage.postgres import scratch_schema
    from tests.durable import CATALOG_TOML
    from tests.fakes.wavespeed_server import FakeWaveSpeed

    fake = FakeWaveSpeed(polls_to_finish=1)
    await fake.start()
    fake.hold_results()
    async with scratch_schema(url) as target:
        with tempfile.TemporaryDirectory() as data_dir:
            (Path(data_dir) / "catalog.toml").write_text(CATALOG_TOML)
            bench = Bench(target, data_dir, lease, f"{fake.api_key} {fake.base_url}")
            db = await asyncpg.connect(target)
            try:
                return await _kills(bench, db, fake, processes, jobs, runs)
            finally:
                await bench.close()
                await db.close()
                await fake.close()


async def _kills(bench: Bench, db: Any, fake: Any, processes: int, jobs: int, runs: int) -> list[list[Any]]:
    """Start the processes, then `runs` times kill the one holding the most jobs and time the takeover."""
    rows: list[list[Any]] = []
    holder = await bench.spawn(submit=jobs)
    for _ in range(processes - 1):
        await bench.spawn()
    for run in range(1, runs + 1):
        expiry = await db.fetchval("SELECT MAX(lease_expires_at) FROM jobs WHERE owner = $1", holder)
        killed = await bench.kill(holder)
        ran_out = dt.datetime.fromisoformat(expiry).timestamp()
        while True:
            # Every live job held by a live process: claimed and resumed, queued again, or (a call
            # that was waiting for WaveSpeed's slot, its outcome unknown) released.
            owners = await db.fetch(f"SELECT owner FROM jobs WHERE state IN {LIVE}")
            if all(r["owner"] in bench.processes for r in owners):
                taken = time.time()
                break
            await asyncio.sleep(0.01)
        counts = [r["owner"] for r in owners]
        holder = max(set(counts), key=counts.count)
        took, after_expiry = f"{taken - killed:.2f}", f"{taken - ran_out:.2f}"
        await until_none(lambda: db.fetchval("SELECT count(*) FROM jobs WHERE state = 'queued'"))
        sent = await db.fetchval("SELECT count(*) FROM jobs WHERE provider_request_id IS NOT NULL")
        at_provider = await db.fetchval("SELECT count(*) FROM jobs WHERE state = 'submitted'")
        twice = fake.submit_count - sent
        live, owned_by = len(owners), len(set(counts))
        rows.append([f"kill -9 #{run}", live, at_provider, took, after_expiry, owned_by, twice])
        await bench.spawn()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=os.environ.get("RETOUCH_TEST_DATABASE_URL", ""))
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20, help="edits waiting at the provider when it dies")
    parser.add_argument("--lease", type=float, default=30.0, help="JOB_LEASE_SECONDS")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--wavespeed", help=argparse.SUPPRESS)
    parser.add_argument("--submit", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = run_worker(
            args.database_url, args.worker, args.data_dir, args.lease, args.wavespeed, args.submit
        )
        asyncio.run(work)
        return 0
    if not args.database_url:
        print("bench.job_takeover: skipped, needs PostgreSQL (--database-url or RETOUCH_TEST_DATABASE_URL)")
        return 0
    rows = asyncio.run(measure(args.database_url, args.processes, args.jobs, args.lease, args.runs))
    print(
        table(
            f"Job takeover, {args.processes} processes, {args.jobs} edits, JOB_LEASE_SECONDS={args.lease:g}",
            [
                "event",
                "live jobs",
                "at WaveSpeed after",
                "all taken over after (s)",
                "after the lease ran out (s)",
                "new owners",
                "resubmitted",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
