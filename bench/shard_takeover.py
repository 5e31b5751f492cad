"""How fast shards move between processes through the PostgreSQL leases: `python -m bench.shard_takeover`.

Starts `--processes` real processes, each running the production `ShardCoordinator` (database clock,
real timers, the start-up pause, the notices between processes) over one PostgreSQL schema of its own,
and records every shard plan each one hands its bot, with a timestamp. Then, `--runs` times: `kill -9`
of a process serving shards, and the time until the survivors serve them again; then a new process, and
the time until it serves its share. Every plan of every live process is checked: no shard is ever served
by two at once.

What is measured is the coordination; the bot then connects the shard (one gateway IDENTIFY, about a
second on Discord; tests/test_shards_e2e.py connects real shards to the fake Discord).

Needs PostgreSQL: `--database-url`, else RETOUCH_TEST_DATABASE_URL; without either it says so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench._common import ROOT, table


@dataclass
class Worker:
    name: str
    process: asyncio.subprocess.Process
    plans: list[tuple[float, frozenset[int]]] = field(default_factory=list)
    killed_at: float | None = None

    @property
    def serving(self) -> frozenset[int]:
        return self.plans[-1][1] if self.plans else frozenset()


async def run_worker(url: str, name: str, shards: int, lease: float) -> None:
    """One process: a coordinator whose "bot" prints each plan it is handed as a JSON line."""
    import asyncpg

    from bot.sharding import ShardCoordinator, ShardPlan
    from bot.storage.postgres import PostgresDatabase
    from bot.storage.shard_leases import ShardLeases

    pool = await asyncpg.create_pool(url, min_size=1, max_size=3)  # the URL names the bench's schema
    db = PostgresDatabase(pool)  # its `listen`: the processes hear each other, as `python -m bot` wires it
    store = ShardLeases(pool, lease=dt.timedelta(seconds=lease), listen=db.listen)
    coordinator = ShardCoordinator(
        store,
        lease_seconds=lease,
        shard_count=shards,
        owner=name,
        on_fleet=lambda place: None,
        hear_changes=store.hear_changes,
    )

    async def serve(plan: ShardPlan) -> None:
        print(json.dumps({"t": time.time(), "shards": sorted(plan.shard_ids)}), flush=True)

    await coordinator.start(serve, recommended=shards)
    await asyncio.Event().wait()  # until killed


class Bench:
    def __init__(self, url: str, shards: int, lease: float) -> None:
        self.url, self.shards, self.lease = url, shards, lease
        self.workers: list[Worker] = []
        self.changed = asyncio.Event()
        self.readers: list[asyncio.Task[None]] = []

    async def spawn(self) -> Worker:
        name = f"w{len(self.workers)}"
        command = [sys.executable, "-m", "bench.shard_takeover", "--worker", name]
        command += ["--database-url", self.url, "--shards", str(self.shards), "--lease", str(self.lease)]
        process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        worker = Worker(name, process)
        self.workers.append(worker)
        self.readers.append(asyncio.create_task(self._read(worker)))
        return worker

    async def _read(self, worker: Worker) -> None:
        assert worker.process.stdout is not None
        async for line in worker.process.stdout:
            event = json.loads(line)
            worker.plans.append((event["t"], frozenset(event["shards"])))
            self.changed.set()

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.killed_at is None]

    async def until(self, condition: Any, within: float) -> float:
        """Wait until `condition()` holds; the time.time() of the plan that made it hold."""
        deadline = time.monotonic() + within
        while not condition():
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the shards did not settle in time")
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                continue
        return max(t for w in self.live() for t, _ in w.plans[-1:]) if self.live() else time.time()

    def covered_once(self) -> bool:
        served = [w.serving for w in self.live()]
        return sum(len(s) for s in served) == self.shards and frozenset().union(*served) == set(
            range(self.shards)
        )

    def overlaps(self) -> int:
        """Moments at which two live processes served one shard (every plan, replayed in time order)."""
        events = sorted(
            (t, w.name, plan)
            for w in self.workers
            for t, plan in w.plans
            if w.killed_at is None or t < w.killed_at
        )
        current: dict[str, frozenset[int]] = {}
        bad = 0
        for t, name, plan in events:
            current[name] = plan
            live = [p for n, p in current.items() if not self._dead_at(n, t)]
            bad += sum(len(a & b) for i, a in enumerate(live) for b in live[i + 1 :])
        return bad

    def _dead_at(self, name: str, t: float) -> bool:
        worker = next(w for w in self.workers if w.name == name)
        return worker.killed_at is not None and worker.killed_at <= t

    async def kill(self, worker: Worker) -> float:
        worker.killed_at = time.time()
        worker.process.send_signal(signal.SIGKILL)
        await worker.process.wait()
        return worker.killed_at

    async def close(self) -> None:
        for worker in self.live():
            worker.process.send_signal(signal.SIGKILL)
            await worker.process.wait()


async def measure(url: str, processes: int, shards: int, lease: float, runs: int) -> list[list[Any]]:
    from bot.storage.postgres import scratch_schema

    async with scratch_schema(url) as target:
        return await _measure(Bench(target, shards, lease), processes, shards, lease, runs)


async def _measure(bench: Bench, processes: int, shards: int, lease: float, runs: int) -> list[list[Any]]:
    rows: list[list[Any]] = []
    try:
        started = time.time()
        for _ in range(processes):
            await bench.spawn()
        settled = await bench.until(
            lambda: len(bench.live()) == processes and bench.covered_once(), 4 * lease
        )
        rows.append(["start", f"{processes} processes", "—", f"{settled - started:.1f}", bench.overlaps()])
        for run in range(1, runs + 1):
            victim = max(bench.live(), key=lambda w: len(w.serving))
            lost = victim.serving
            killed = await bench.kill(victim)
            taken = await bench.until(
                lambda lost=lost: lost <= frozenset().union(*(w.serving for w in bench.live())), 3 * lease
            )
            newcomer = await bench.spawn()
            joined = time.time()
            share = shards // len(bench.live())
            settled = await bench.until(
                lambda w=newcomer, share=share: len(w.serving) >= share and bench.covered_once(), 4 * lease
            )
            took, joined_after = f"{taken - killed:.1f}", f"{settled - joined:.1f}"
            rows.append([f"kill -9 #{run}", f"shards {sorted(lost)}", took, joined_after, bench.overlaps()])
    finally:
        await bench.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=os.environ.get("RETOUCH_TEST_DATABASE_URL", ""))
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--lease", type=float, default=30.0, help="SHARD_LEASE_SECONDS")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(run_worker(args.database_url, args.worker, args.shards, args.lease))
        return 0
    if not args.database_url:
        print("bench.shard_takeover: skipped, needs PostgreSQL (--database-url or RETOUCH_TEST_DATABASE_URL)")
        return 0
    rows = asyncio.run(measure(args.database_url, args.processes, args.shards, args.lease, args.runs))
    print(
        table(
            f"Shard takeover, {args.processes} processes, {args.shards} shards, "
            f"SHARD_LEASE_SECONDS={args.lease:g}",
            ["event", "what", "served again after (s)", "all shards served once after (s)", "overlaps"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
