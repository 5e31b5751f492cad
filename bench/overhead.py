"""Benchmark 1 — overhead: one `/edit` end to end against a provider of fixed latency (0 s and 1 s).

The real bot (`python -m bot`) edits a 1024² real photo through the fake Discord; the fake
OpenAI answers after `delay` seconds. The photo is sent as PNG and as JPEG (PNG validation decodes
more, which shows in the overhead). For each edit, end to end is INTERACTION_CREATE → the result
message reaching Discord (both on the fake Discord's clock), and provider time is what the bot itself
measured around its provider call (the change in `retouch_provider_latency_seconds_sum` on its
/metrics, edits run one at a time). Run from the repository root: `python -m bench.overhead`.
Target: end to end ≤ 1.02× provider time.
"""

from __future__ import annotations

import argparse
import asyncio

from bench._common import median, metric_sum, percentile, photo, table
from bench._world import rig

TARGET_RATIO = 1.02
PROVIDER_SUM = "retouch_provider_latency_seconds_sum"


async def run(delay: float, count: int, image: bytes) -> tuple[list[float], list[float]]:
    """(end-to-end seconds, provider seconds) for `count` sequential edits."""
    e2e, provider = [], []
    async with rig(provider_delay=delay) as world:
        for index in range(count + 1):  # the first edit warms connections and is not counted
            before = metric_sum(await world.bot.metrics(), PROVIDER_SUM)
            it = await world.edit(image, index)
            await world.wait_all([it], timeout=60)
            after = metric_sum(await world.bot.metrics(), PROVIDER_SUM)
            done = world.result_time(it)
            if done is None:
                raise RuntimeError(f"edit failed: {it.original_edits[-1:]}\n{world.bot.log_tail()}")
            if index:
                e2e.append(done - it.created_at)
                provider.append(after - before)
    return e2e, provider


async def main(delays: list[float], count: int, formats: list[str]) -> None:
    rows = []
    for fmt in formats:
        image = photo(1024, fmt)
        for delay in delays:
            rows.append(await row(fmt, delay, count, image))
    print(
        table(
            f"Overhead: /edit end to end ÷ provider time, 1024² photo (target ≤ {TARGET_RATIO}×)",
            (
                "input",
                "provider delay",
                "edits",
                "e2e median ms",
                "provider median ms",
                "overhead median ms",
                "ratio median",
                "ratio p99",
            ),
            rows,
        )
    )


async def row(fmt: str, delay: float, count: int, image: bytes) -> tuple[object, ...]:
    """One table row: `count` edits of `image` against a provider answering after `delay` s."""
    e2e, provider = await run(delay, count, image)
    ratios = [total / spent for total, spent in zip(e2e, provider, strict=True)]
    overhead_ms = [(total - spent) * 1000 for total, spent in zip(e2e, provider, strict=True)]
    return (
        fmt,
        f"{delay:g} s",
        count,
        f"{median(e2e) * 1000:.0f}",
        f"{median(provider) * 1000:.0f}",
        f"{median(overhead_ms):.0f}",
        f"{median(ratios):.3f}",
        f"{percentile(ratios, 99):.3f}",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20, help="edits per delay")
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--formats", nargs="+", choices=("png", "jpeg"), default=["png", "jpeg"])
    args = parser.parse_args()
    asyncio.run(main(args.delays, args.count, args.formats))
