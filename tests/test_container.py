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
