"""Shared helpers for the benchmarks: tables, percentiles, photos, and the processes they drive.

Everything listens on 127.0.0.1 only. The fake OpenAI server can run in its own process (so its CPU
and memory are not charged to what is measured), and the bot runs as `python -m bot` in its own
process (so its peak RSS is its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import multiprocessing as mp
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "astronaut.png"  # 512² real photo, upscaled as needed
MIB = 1024 * 1024


# -- output -------------------------------------------------------------------------------------------


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes straight into the README)."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [f"\n### {title}\n"]
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 20 samples is the largest one)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# -- photos -------------------------------------------------------------------------------------------


def photo(side: int, fmt: str = "png") -> bytes:
    """The test photo upscaled to side×side, encoded as `fmt` (png or jpeg, quality 90)."""
    with Image.open(PHOTO) as source:
        image = source.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, "JPEG", quality=90)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


# -- processes ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_fake_openai(
    delay: float, cache: bool, ready: Any, stop: Any, options: Mapping[str, Any], stats: Any
) -> None:
    """Child process body: run the fake OpenAI until `stop` is set, then report its counters.

    With `cache`, each distinct output is rendered once: the benchmarks measure the bot, not Pillow
    inside the fake (which still validates every upload like the real API). `options` go to
    `FakeOpenAI` (e.g. `max_in_flight`).
    """
    sys.path.insert(0, str(ROOT))
    from tests.fakes import openai_server

    if cache:
        openai_server._render = functools.lru_cache(maxsize=16)(openai_server._render)

    async def main() -> None:
        async with openai_server.FakeOpenAI(delay=delay, **options) as fake:
            ready.put((fake.base_url, fake.api_key))
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)
            stats.put(
                {
                    "posts": fake.post_count,
                    "edits_served": fake.edits_served,
                    "busy_refusals": fake.busy_refusals,
                    "peak_in_flight": fake.peak_in_flight,
                }
            )

    asyncio.run(main())


class FakeOpenAIProcess:
    """The fake OpenAI server in a separate process (its CPU and RSS are not the bot's).

    After the `with` block, `stats` holds the fake's counters (posts, edits_served, busy_refusals,
    peak_in_flight).
    """

    def __init__(
        self, *, delay: float = 0.0, cache: bool = False, options: Mapping[str, Any] | None = None
    ) -> None:
        ctx = mp.get_context("spawn")
        self._ready = ctx.Queue()
        self._stats = ctx.Queue()
        self._stop = ctx.Event()
        self._process = ctx.Process(
            target=_serve_fake_openai,
            args=(delay, cache, self._ready, self._stop, dict(options or {}), self._stats),
            daemon=True,
        )
        self.base_url = ""
        self.api_key = ""
        self.stats: dict[str, int] = {}

    def __enter__(self) -> FakeOpenAIProcess:
        self._process.start()
        self.base_url, self.api_key = self._ready.get(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            self.stats = self._stats.get(timeout=10)
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


@dataclass
class BotProcess:
    """`python -m bot` (the real entry point) in its own process, pointed at local fakes."""

    env: Mapping[str, str]
    metrics_port: int
    root: Path = ROOT  # the source tree the bot runs from (another checkout measures "before")
    process: subprocess.Popen[bytes] | None = None
    workdir: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> None:
        self.workdir = tempfile.TemporaryDirectory(prefix="retouch-bench-")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(self.root),
            "DATA_DIR": self.workdir.name,
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(self.metrics_port),
            "LOG_LEVEL": "warning",
            "SHUTDOWN_GRACE_SECONDS": "5",
            **self.env,
        }
        log = open(Path(self.workdir.name) / "bot.log", "wb")  # noqa: SIM115 - lives as long as the process
        # cwd is the scratch folder, so a developer's own .env is never picked up.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot"], env=env, cwd=self.workdir.name, stdout=log, stderr=log
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    async def wait_healthy(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Poll /healthz until the bot says it is connected and its database is writable."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"the bot exited early:\n{self.log_tail()}")
                try:
                    async with session.get(f"{self.url}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"the bot did not become healthy:\n{self.log_tail()}")

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics") as resp:
            return await resp.text()

    def rss_mib(self, field: str = "VmHWM") -> float:
        """VmHWM (peak) or VmRSS (now) of the bot process, in MiB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{field} not found")

    def cpu_seconds(self) -> float:
        """User + system CPU the bot process has used so far."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 30) -> str:
        if self.workdir is None:
            return ""
        path = Path(self.workdir.name) / "bot.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.workdir is not None:
            self.workdir.cleanup()


def metric_sum(page: str, name: str) -> float:
    """Sum of every sample called `name` in a Prometheus text page (all label sets)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total
