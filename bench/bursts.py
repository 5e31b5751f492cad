"""Benchmark 7 — bursts with the shipped defaults: 20 members' `/edit`s at once, and a provider that
answers 429 above 5 edits in flight.

The bot (`python -m bot`, its own process) keeps its default admission limits (MAX_CONCURRENT_JOBS,
MAX_JOBS_PER_USER: 10 members × 2 edits) and its adaptive per-provider limits. Each scenario gets a
fresh bot: three edits one after another give the one-edit time (median), then the burst is sent at
once. Total = first INTERACTION_CREATE of the burst → last result at the fake Discord. "bot CPU s" is
the CPU time the bot process used during the burst: it moves far less than the totals when other work
shares the machine, so it is the number to compare code versions by on a busy host.

* `1 s provider, never 429`: target total ÷ one edit ≤ 1.5.
* `429 above 5 in flight`: the fake OpenAI refuses a 6th edit at once with 429 (with `retry-after`, or
  without one). Target: every edit delivered, each made exactly once at the fake (`served` = edits),
  and the limit the bot reports in `/metrics` settles at 5.

Run from the repository root: `python -m bench.bursts`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from typing import Any

from bench._common import metric_sum, photo, table
from bench._world import rig

TARGET_RATIO = 1.5
SINGLES = 3


async def scenario(
    name: str,
    count: int,
    delay: float,
    image: bytes,
    openai_options: dict[str, Any],
    bot_env: dict[str, str] | None = None,
) -> tuple[object, ...]:
    """One fresh bot: SINGLES edits one after another, then `count` at once; one table row."""
    async with rig(
        provider_delay=delay,
        defaults=True,
        openai_options=openai_options,
        bot_env=bot_env,
    ) as world:
        singles = []
        for index in range(SINGLES):
            it = await world.edit(image, index)
            await world.wait_all([it], timeout=120)
            done = world.result_time(it)
            singles.append(done - it.created_at if done is not None else float("nan"))
        before = await world.bot.metrics()
        cpu_before = world.bot.cpu_seconds()
        burst = [await world.edit(image, index) for index in range(count)]
        await world.wait_all(burst, timeout=600)
        cpu = world.bot.cpu_seconds() - cpu_before
        page = await world.bot.metrics()
        results = [world.result_time(it) for it in burst]
    stats = world.openai.stats if world.openai is not None else {}
    delivered = [t for t in results if t is not None]
    one = statistics.median(singles)
    total = max(delivered) - min(it.created_at for it in burst) if delivered else float("nan")
    limit = metric_sum(page, "retouch_provider_concurrency_limit")
    calls = {
        name: metric_sum(page, f"retouch_provider_latency_seconds_{name}")
        - metric_sum(before, f"retouch_provider_latency_seconds_{name}")
        for name in ("sum", "count")
    }
    provider_mean = calls["sum"] / max(1.0, calls["count"])
    return (
        name,
        count,
        f"{one:.2f}",
        f"{total:.2f}",
        f"{total / one:.2f}",
        f"{provider_mean:.2f}",
        f"{cpu:.2f}",
        f"{len(delivered)}/{count}",
        f"{stats.get('edits_served', '?')}/{count + SINGLES}",
        stats.get("busy_refusals", "?"),
        stats.get("peak_in_flight", "?"),
        f"{limit:.0f}",
    )


async def main(
    count: int, delay: float, cap: int, fmt: str, only_uncapped: bool, bot_env: dict[str, str]
) -> None:
    image = photo(1024, fmt)
    settings = "".join(f", {k}={v}" for k, v in bot_env.items())
    rows = [await scenario(f"{delay:g} s provider, never 429{settings}", count, delay, image, {}, bot_env)]
    if only_uncapped:
        rows += [await scenario(f"{delay:g} s provider, never 429 (again)", count, delay, image, {}, bot_env)]
    else:
        rows += [
            await scenario(
                f"429 above {cap} in flight, retry-after 1 s",
                count,
                delay,
                image,
                {"max_in_flight": cap, "busy_retry_after": 1.0},
            ),
            await scenario(
                f"429 above {cap} in flight, no retry-after",
                count,
                delay,
                image,
                {"max_in_flight": cap, "busy_retry_after": None},
            ),
        ]
    print(
        table(
            f"Bursts with the default settings: {count} simultaneous /edit, 1024² {fmt}, "
            f"{os.cpu_count()} CPUs (target: total ÷ one edit ≤ {TARGET_RATIO:g}; under a cap, every "
            f"edit delivered once and the limit at the cap)",
            (
                "provider",
                "edits",
                "one edit s",
                "burst total s",
                "total ÷ one",
                "bot-side provider mean s",
                "bot CPU s",
                "delivered",
                "served at fake",
                "429s",
                "peak in flight",
                "limit after",
            ),
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20, help="edits in the burst")
    parser.add_argument("--delay", type=float, default=1.0, help="provider latency, seconds")
    parser.add_argument("--cap", type=int, default=5, help="edits the capped fake serves at once")
    parser.add_argument("--format", choices=("png", "jpeg"), default="png")
    parser.add_argument("--uncapped-only", action="store_true", help="only the never-429 burst, twice")
    parser.add_argument(
        "--bot-env", nargs="*", default=[], metavar="KEY=VALUE", help="settings for the uncapped bot"
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.bot_env)
    asyncio.run(main(args.count, args.delay, args.cap, args.format, args.uncapped_only, extra))
