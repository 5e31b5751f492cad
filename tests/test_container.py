"""The container and the declared dependencies say what the code needs (read as text: no Docker here)."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

from bot import client
from bot.config import Settings
from bot.jobs import core
from bot.observability.audit import AuditLog
from bot.storage import postgres

ROOT = Path(__file__).resolve().parents[1]
CLOSE_SECONDS = 5.0  # closing the gateway and the HTTP sessions after the drain


def compose() -> str:
    return (ROOT / "docker-compose.yml").read_text()


def docker_ignores(path: str) -> bool:
    """Whether `.dockerignore` keeps `path` (relative to the project) out of the build context, read
    the way Docker reads it: the last pattern matching the path or one of its parent folders decides,
    `*` and `?` stay within one folder, `**` spans any number and `!` re-includes."""
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = re.escape(line.lstrip("!").strip("/"))
        for glob, regex in ((r"\*\*/", "(.*/)?"), (r"\*\*", ".*"), (r"\*", "[^/]*"), (r"\?", "[^/]")):
            pattern = pattern.replace(glob, regex)
        if any(re.fullmatch(pattern, c) for c in candidates):
            ignored = not include
    return ignored


def test_the_base_image_is_pinned_by_digest():
    [base] = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*@sha256:[0-9a-f]{64}", base), base


def test_the_stop_grace_period_outlasts_the_worst_case_drain():
    flush_timeout = inspect.signature(AuditLog.flush).parameters["timeout"].default
    worst = (
        Settings.__dataclass_fields__["shutdown_grace_seconds"].default
        + core.SHUTDOWN_ABORT_WAIT_SECONDS  # aborted jobs stop
        + core.SHUTDOWN_ABORT_WAIT_SECONDS  # background notices are flushed
        + client.REPLY_GRACE_SECONDS
        + flush_timeout
        + CLOSE_SECONDS
        + postgres.CLOSE_SECONDS  # the database: at most this long, even with a connection nobody gives back
    )
    [period] = re.findall(r"^\s+stop_grace_period:\s*(\d+)s\s*$", compose(), re.MULTILINE)
    assert int(period) > worst


def test_the_container_runs_locked_down_with_limits_and_rotated_logs():
    text = compose()
    for line in (
        "read_only: true",
        "cap_drop: [ALL]",
        "- no-new-privileges:true",
        "- /tmp:size=64m,mode=1777",
        'max-size: "10m"',
        'max-file: "5"',
    ):
        assert re.search(rf"^\s+{re.escape(line)}\s*$", text, re.MULTILINE), line
    assert re.search(r"^\s+mem_limit: \d+[mg]\s*$", text, re.MULTILINE)
    assert re.search(r"^\s+pids_limit: \d+\s*$", text, re.MULTILINE)


def test_declared_dependencies_cover_what_the_code_uses():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [aiohttp] = [d for d in project["dependencies"] if d.startswith("aiohttp")]
    low = re.search(r">=(\d+)\.(\d+)", aiohttp)
    assert low is not None and (int(low[1]), int(low[2])) >= (3, 10)  # aiohttp.ConnectionTimeoutError
    assert any(d.startswith("yarl") for d in project["dependencies"])
    assert any(d.startswith("hypothesis") for d in project["optional-dependencies"]["dev"])


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_secrets_or_data():
    copied = [
        src
        for line in re.findall(r"^COPY\s+(.+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
        for src in line.split()[:-1]
    ]
    assert copied == ["pyproject.toml", "README.md", "bot", "cogs"]  # parsed, not an empty match
    for path in [*copied, "bot/__main__.py", "bot/data/catalog.toml", "cogs/edit.py"]:
        assert not docker_ignores(path), path
    for path in (
        ".env",  # the bot token and provider keys
        "data/retouch.sqlite3",
        ".venv/bin/python",
        ".git/config",
        "bench/results/burst.json",
        "bot/__pycache__/app.cpython-311.pyc",
        "cogs/mask/__pycache__/view.cpython-311.pyc",
        ".mypy_cache/3.11/bot.json",
        "tests/data/astronaut.png",
    ):
        assert docker_ignores(path), path
