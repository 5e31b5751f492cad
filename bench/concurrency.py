"""Benchmark 3 — concurrency: 1, 10, 100 and 500 `/edit`s in flight against a 2 s provider.

Each level gets a fresh bot process (`python -m bot`), so its peak RSS (VmHWM) is that level's alone.
Total time runs from the first INTERACTION_CREATE to the last result reaching the fake Discord. The
fakes run outside the bot process (fake Discord here, fake OpenAI in its own process) but share this
machine's CPUs with it. Run from the repository root: `python -m bench.concurrency`.
Target: 500 jobs in < 3 s and < 400 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from bench._common import metric_sum, percentile, photo, table
from bench._world import rig

TARGET_SECONDS = 3.0
TARGET_MIB = 400


async def level(count: int, delay: float, image: bytes, bot_env: dict[str, str]) -> tuple[object, ...]:
    """Run `count` simultaneous edits on a fresh bot; one table row."""
    async with rig(provider_delay=delay, bot_env=bot_env) as world:
        idle_mib = world.bot.rss_mib("VmRSS")
        cpu_before = world.bot.cpu_seconds()
        burst = [await world.edit(image, index) for index in range(count)]
        await world.wait_all(burst, timeout=600)
        cpu_ms_per_job = (world.bot.cpu_seconds() - cpu_before) * 1000 / count
        peak_mib = world.bot.rss_mib("VmHWM")
        page = await world.bot.metrics()
        results = [world.result_time(it) for it in burst]
        acks = [(ack - it.created_at) * 1000 for it in burst if (ack := world.ack_time(it)) is not None]
    delivered = [t for t in results if t is not None]
    total = max(delivered) - min(it.created_at for it in burst) if delivered else float("nan")
    provider_mean = metric_sum(page, "retouch_provider_latency_seconds_sum") / max(
        1.0, metric_sum(page, "retouch_provider_latency_seconds_count")
    )
    return (
        count,
        f"{len(acks)}/{count}",
        f"{percentile(acks, 99):.0f}" if acks else "-",
        f"{len(delivered)}/{count}",
        f"{total:.2f}",
        f"{provider_mean:.2f}",
        f"{cpu_ms_per_job:.0f}",
        f"{idle_mib:.0f}",
        f"{peak_mib:.0f}",
    )


async def main(levels: list[int], delay: float, fmt: str, bot_env: dict[str, str]) -> None:
    image = photo(1024, fmt)
    rows = [await level(count, delay, image, bot_env) for count in levels]
    print(
        table(
            f"Concurrency: simultaneous /edit, {delay:g} s provider, 1024² {fmt}, {os.cpu_count()} CPUs "
            f"(target: 500 in < {TARGET_SECONDS:g} s and < {TARGET_MIB} MiB)",
            (
                "jobs",
                "acked in 3 s",
                "ack p99 ms",
                "delivered",
                "total s",
                "bot-side provider mean s",
                "bot CPU ms/job",
                "idle RSS MiB",
                "peak RSS MiB",
            ),
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 100, 500])
    parser.add_argument("--delay", type=float, default=2.0, help="provider latency, seconds")
    parser.add_argument("--format", choices=("png", "jpeg"), default="png")
    parser.add_argument(
        "--bot-env", nargs="*", default=[], metavar="KEY=VALUE", help="extra settings for the bot process"
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.bot_env)
    asyncio.run(main(args.levels, args.delay, args.format, extra))
