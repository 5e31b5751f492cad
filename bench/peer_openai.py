"""Benchmark 6 — peer: Retouch's OpenAI adapter against the official `openai` SDK's `images.edit`.

Both call the same fake OpenAI server, which runs in a separate process so its CPU is not counted.
Measured: client CPU time per edit (`time.process_time` around N sequential calls: every thread of
this process, nothing of the server's) and wall time. Both send a 1024² photo (PNG) and decode the
returned base64 image, so they do the same work. Needs the `bench` extra (`pip install -e ".[bench]"`).
Run from the repository root: `python -m bench.peer_openai`. Target: adapter CPU ≤ 0.5× the SDK's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from collections.abc import Awaitable, Callable

import aiohttp

from bench._common import FakeOpenAIProcess, photo, table
from bot import imaging
from bot.providers.base import EditRequest
from bot.providers.openai import OpenAIProvider

MODEL = "gpt-image-2"
PROMPT = "make it a watercolour painting"
TARGET_RATIO = 0.5


async def measure(call: Callable[[], Awaitable[bytes]], count: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call over `count` sequential calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        image = await call()
        assert image.startswith(b"\x89PNG"), "no image came back"
    return (time.process_time() - cpu) / count, (time.perf_counter() - wall) / count


async def main(count: int, rounds: int) -> None:
    from openai import AsyncOpenAI  # the bench extra; imported here so --help works without it

    data = photo(1024, "png")
    image = imaging.validate_image(data, max_bytes=len(data), max_pixels=2_000_000)
    with FakeOpenAIProcess(cache=True) as fake:
        async with aiohttp.ClientSession() as session:
            adapter = OpenAIProvider(session, fake.api_key, fake.base_url)
            sdk = AsyncOpenAI(api_key=fake.api_key, base_url=fake.base_url, max_retries=0)

            async def via_adapter() -> bytes:
                request = EditRequest(
                    images=(image,),
                    prompt=PROMPT,
                    model=MODEL,
                    quality="low",
                    size="1024x1024",
                    user_hash="u1",
                )
                return (await adapter.edit(request)).images[0].data

            async def via_sdk() -> bytes:
                result = await sdk.images.edit(
                    image=("image-1.png", data, "image/png"),
                    prompt=PROMPT,
                    model=MODEL,
                    n=1,
                    size="1024x1024",
                    quality="low",
                    background="auto",
                    output_format="png",
                    user="u1",
                )
                assert result.data and result.data[0].b64_json
                return base64.b64decode(result.data[0].b64_json)

            for call in (via_adapter, via_sdk):  # warm up connections and imports
                await measure(call, 3)
            totals = {"Retouch OpenAIProvider (aiohttp)": [0.0, 0.0], "openai SDK images.edit": [0.0, 0.0]}
            for _ in range(rounds):  # interleaved, so drift hits both alike
                for name, call in zip(totals, (via_adapter, via_sdk), strict=True):
                    cpu, wall = await measure(call, count)
                    totals[name][0] += cpu / rounds
                    totals[name][1] += wall / rounds
            await sdk.close()
    import openai

    sdk_cpu = totals["openai SDK images.edit"][0]
    rows = [
        (name, f"{cpu * 1000:.2f}", f"{wall * 1000:.1f}", f"{cpu / sdk_cpu:.2f}×")
        for name, (cpu, wall) in totals.items()
    ]
    ratio = totals["Retouch OpenAIProvider (aiohttp)"][0] / sdk_cpu
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(
        table(
            f"Peer: client CPU per edit, 1024² PNG in and out, {count * rounds} edits each "
            f"(openai {openai.__version__}; adapter/SDK = {ratio:.2f}, {verdict} target ≤ {TARGET_RATIO})",
            ("client", "CPU ms/edit", "wall ms/edit", "CPU vs SDK"),
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=25, help="edits per client per round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.rounds))
