"""Benchmark 8 — memory under a burst: 500 members' `/edit` at once against one bot process, or several.

The bot (`python -m bot`, its own process) keeps its shipped admission limits (`MAX_CONCURRENT_JOBS`,
`MAX_JOBS_PER_USER`), so most of the burst waits in its queue while at most `MAX_CONCURRENT_JOBS`
edits run; the fake OpenAI holds each edit for `--delay` seconds (1 s). Each member sends one edit.
Measured per row, on a fresh bot:

* ack p99: INTERACTION_CREATE → the bot's first answer (the defer), on the fake Discord's clock;
* last delivery: the first INTERACTION_CREATE of the burst → the last result at the fake Discord;
* peak RSS: the bot process's VmHWM (`/proc/<pid>/status`), and its RSS when the burst was over;
* the bot's CPU seconds for the burst (comparable on a busy host, unlike the times);
* the most edits the bot reported queued and in flight at once (`/metrics`, sampled);
* the most edit calls the fake OpenAI was working on at once (counted by the fake itself, not sampled),
  beside the ceiling the processes split between them (`OPENAI_MAX_CONCURRENT`, else
  `MAX_CONCURRENT_JOBS`): what the provider's account saw, whatever each process's gauges said.

`--processes N [N ...]` (N > 1 needs PostgreSQL: `--database-url`, else RETOUCH_TEST_DATABASE_URL) starts N
bots on a fresh schema sharing the gateway's N shards through the leases, one server per shard, and
spreads the members' edits over the servers; then the peak RSS and CPU are per process, with the jobs
each one started (`retouch_jobs_started`), and every edit must reach Discord exactly once.
`--database-url` with one process measures the lone bot on PostgreSQL instead of SQLite; so does
`--processes 1 3`, which measures one and three processes side by side in one run.

`--before REF` runs the same burst first on the bot as it is at git revision REF (exported to a
temporary folder), then on this checkout: before and after side by side in one run.
Run from the repository root: `python -m bench.burst_memory --before main`.
Target (issue 15): peak RSS under 400 MiB per process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import MIB, ROOT, metric_sum, percentile, photo, table
from bench._world import Rig, rig
from bot.config import load_settings

TARGET_MIB = 400
SAMPLE_SECONDS = 0.25


@dataclass
class Fleet:
    """The bots measured: how many processes, on which database (None: SQLite), with which settings."""

    processes: int = 1
    database_url: str | None = None
    bot_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Peaks:
    """What the sampler saw: the most jobs queued and in flight at once."""

    queued: float = 0.0
    in_flight: float = 0.0


async def sample(world: Rig, peaks: Peaks, stop: asyncio.Event) -> None:
    """Read the bots' queue and in-flight gauges (summed over the processes) until `stop` (a scrape
    error skips one sample)."""
    while not stop.is_set():
        with contextlib.suppress(Exception):
            pages = await asyncio.gather(*(bot.metrics() for bot in world.bots))
            peaks.queued = max(peaks.queued, sum(metric_sum(p, "retouch_jobs_queued") for p in pages))
            peaks.in_flight = max(
                peaks.in_flight, sum(metric_sum(p, "retouch_jobs_in_flight") for p in pages)
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_SECONDS)


def provider_ceiling(fleet: Fleet) -> int:
    """OpenAI's ceiling on calls at once, for the whole fleet, as the bots read their settings."""
    shipped = load_settings({"DISCORD_TOKEN": "x" * 59, "OPENAI_API_KEY": "sk-bench", **fleet.bot_env})
    [openai] = [p for p in shipped.providers if p.name == "openai"]
    return openai.max_concurrent or shipped.max_concurrent_jobs


def each(values: list[float], spec: str = ".0f") -> str:
    """One number per process, in start order."""
    return " / ".join(format(v, spec) for v in values)


async def jobs_started(world: Rig) -> list[float]:
    pages = await asyncio.gather(*(bot.metrics() for bot in world.bots))
    return [metric_sum(page, "retouch_jobs_started_total") for page in pages]


async def burst(
    label: str, root: Path, count: int, delay: float, image: bytes, fleet: Fleet
) -> tuple[object, ...]:
    """`count` members' edits at once on fresh bots running from `root`; one table row."""
    async with rig(
        provider_delay=delay,
        defaults=True,
        users=count,
        root=root,
        bot_env=fleet.bot_env,
        processes=fleet.processes,
        database_url=fleet.database_url,
    ) as world:
        # One edit in each server first opens every bot's connections.
        warm = [await world.edit(image, index) for index in range(fleet.processes)]
        await world.wait_all(warm, timeout=120)
        idle_mib = [bot.rss_mib("VmRSS") for bot in world.bots]
        cpu_before = [bot.cpu_seconds() for bot in world.bots]
        started_before = await jobs_started(world)
        peaks, stop = Peaks(), asyncio.Event()
        sampler = asyncio.create_task(sample(world, peaks, stop))
        sent = time.monotonic()
        its = [await world.edit(image, index) for index in range(count)]
        await world.wait_all(its, timeout=1200)
        wall = time.monotonic() - sent
        stop.set()
        await sampler
        cpu = [bot.cpu_seconds() - before for bot, before in zip(world.bots, cpu_before, strict=True)]
        started = [n - b for n, b in zip(await jobs_started(world), started_before, strict=True)]
        peak_mib = [bot.rss_mib("VmHWM") for bot in world.bots]
        after_mib = [bot.rss_mib("VmRSS") for bot in world.bots]
        results = [world.result_time(it) for it in its]
        once = sum(sum(bool(m.attachments) for m in it.followups) == 1 for it in its)
        acks = [(ack - it.created_at) * 1000 for it in its if (ack := world.ack_time(it)) is not None]
    # Filled in by the fake when the rig stopped: the most edit calls it held at once, warm-up included
    # (one edit a process, one after another).
    at_provider = world.openai.stats.get("peak_in_flight") if world.openai is not None else None
    delivered = [t for t in results if t is not None]
    last = max(delivered) - min(it.created_at for it in its) if delivered else float("nan")
    return (
        label,
        f"{len(acks)}/{count}",
        f"{percentile(acks, 99):.0f}" if acks else "-",
        f"{len(delivered)}/{count}",
        f"{once}/{count}",
        f"{last:.1f}",
        f"{wall:.1f}",
        each(started),
        each(cpu, ".1f"),
        f"{peaks.queued:.0f}",
        f"{peaks.in_flight:.0f}",
        "-" if at_provider is None else f"{at_provider} (ceiling {provider_ceiling(fleet)})",
        each(idle_mib),
        each(peak_mib),
        each(after_mib),
    )


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """The repository's files at `revision`, exported (not checked out) to a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="retouch-before-") as folder:
        archive = Path(folder) / "tree.tar"
        with open(archive, "wb") as out:
            subprocess.run(["git", "archive", revision], cwd=ROOT, stdout=out, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(Path(folder) / "tree", filter="data")
        yield Path(folder) / "tree"


def revision_name(revision: str) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return f"{revision} ({done.stdout.strip()})"


async def main(
    count: int, delay: float, fmt: str, before: str | None, runs: int, fleets: list[Fleet]
) -> None:
    image = photo(1024, fmt)
    rows = []
    for _ in range(runs):
        for fleet in fleets:
            where = "SQLite" if fleet.database_url is None else "PostgreSQL"
            settings = f", {fleet.processes} process(es), {where}"
            settings += "".join(f", {k}={v}" for k, v in fleet.bot_env.items())
            if before is not None:
                with checkout(before) as tree:
                    label = f"before: {revision_name(before)}{settings}"
                    rows.append(await burst(label, tree, count, delay, image, fleet))
            rows.append(await burst(f"this checkout{settings}", ROOT, count, delay, image, fleet))
    print(
        table(
            f"Memory under a burst: {count} members' /edit at once (several processes: one server a "
            f"shard), default limits, {delay:g} s provider, 1024² {fmt} ({len(image) / MIB:.2f} MiB), "
            f"{os.cpu_count()} CPUs (target: peak RSS < {TARGET_MIB} MiB a process; "
            "a / b / c: one value a process)",
            (
                "bot",
                "acked",
                "ack p99 ms",
                "delivered",
                "delivered once",
                "last delivery s",
                "burst wall s",
                "jobs started",
                "bot CPU s",
                "most queued",
                "most in flight",
                "most at the provider",
                "idle RSS MiB",
                "peak RSS MiB",
                "RSS after MiB",
            ),
            rows,
        )
    )


def parse() -> tuple[argparse.Namespace, list[Fleet]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=500, help="members, one edit each, all at once")
    parser.add_argument("--delay", type=float, default=1.0, help="provider latency, seconds")
    parser.add_argument("--format", choices=("png", "jpeg"), default="png")
    parser.add_argument("--before", metavar="REF", help="also measure the bot at this git revision first")
    parser.add_argument("--runs", type=int, default=1, help="rounds (before, then this checkout)")
    parser.add_argument(
        "--bot-env", nargs="*", default=[], metavar="KEY=VALUE", help="settings for every bot measured"
    )
    parser.add_argument(
        "--processes", type=int, nargs="+", default=[1], metavar="N", help="bot processes sharing the shards"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("RETOUCH_TEST_DATABASE_URL"),
        help="PostgreSQL (a fresh schema each burst); needed for --processes > 1",
    )
    args = parser.parse_args()
    several = max(args.processes) > 1
    if several and not args.database_url:
        parser.error("--processes > 1 needs PostgreSQL: --database-url or RETOUCH_TEST_DATABASE_URL")
    # One process stays on SQLite unless PostgreSQL is asked for on the command line, or the same run
    # measures several processes too (then all of them are on PostgreSQL, side by side).
    url = args.database_url if several or "--database-url" in sys.argv else None
    extra = dict(item.split("=", 1) for item in args.bot_env)
    return args, [Fleet(n, url, extra) for n in args.processes]


if __name__ == "__main__":
    args, fleets = parse()
    asyncio.run(main(args.count, args.delay, args.format, args.before, args.runs, fleets))
