"""Benchmark 2 — ack latency under load: INTERACTION_CREATE → defer with 100 `/edit`s in flight.

All `/edit`s are sent in one burst to the real bot (`python -m bot`) through the fake Discord while
the fake OpenAI holds each for `delay` seconds, so they are all in flight together. Ack latency is
measured on the fake Discord's clock, from dispatching INTERACTION_CREATE to receiving the defer
callback (what Discord's 3-second window measures), and cross-checked with the bot's own
`retouch_ack_latency_seconds` histogram. Run from the repository root: `python -m bench.ack_latency`.
Target: p99 < 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench._common import median, metric_sum, percentile, photo, table
from bench._world import rig

TARGET_P99_MS = 250


async def main(count: int, delay: float, fmt: str) -> None:
    image = photo(1024, fmt)
    async with rig(provider_delay=delay) as world:
        warm = await world.edit(image)  # opens the bot's connections first
        await world.wait_all([warm], timeout=60)
        burst = [await world.edit(image, index) for index in range(count)]
        sent = time.monotonic()
        await world.wait_all(burst, timeout=120 + delay)
        wall = time.monotonic() - sent
        page = await world.bot.metrics()
        acks = [world.ack_time(it) for it in burst]
    latencies = [(ack - it.created_at) * 1000 for ack, it in zip(acks, burst, strict=True) if ack is not None]
    bot_mean = (
        metric_sum(page, "retouch_ack_latency_seconds_sum")
        / metric_sum(page, "retouch_ack_latency_seconds_count")
    ) * 1000
    ok = sum(world.succeeded(it) for it in burst)
    p99 = percentile(latencies, 99)
    rows = [
        (
            count,
            f"{delay:g} s",
            fmt,
            f"{len(latencies)}/{count}",
            f"{median(latencies):.1f}",
            f"{p99:.1f}",
            f"{max(latencies):.1f}",
            f"{bot_mean:.1f}",
            f"{ok}/{count}",
            f"{wall:.2f}",
        )
    ]
    verdict = "meets" if p99 < TARGET_P99_MS and len(latencies) == count else "misses"
    print(
        table(
            f"Ack latency under load: INTERACTION_CREATE → defer ({verdict} target p99 < {TARGET_P99_MS} ms)",
            (
                "in flight",
                "provider delay",
                "input",
                "acked",
                "p50 ms",
                "p99 ms",
                "max ms",
                "bot-side mean ms",
                "edits delivered",
                "burst wall s",
            ),
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--delay", type=float, default=2.0, help="provider latency, seconds")
    parser.add_argument("--format", choices=("png", "jpeg"), default="png")
    args = parser.parse_args()
    asyncio.run(main(args.count, args.delay, args.format))
