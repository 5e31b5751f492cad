"""Start-up that cannot be bricked, tried through the real `python -m bot` as an operator would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp import web

from bot.observability.healthcheck import heartbeat_file
from bot.storage.postgres import schema_url
from bot.storage.sqlite import hold_sole_process_lock
from tests.fakes.discord import FakeDiscord
from tests.fixtures import MIGRATIONS, NO_POSTGRES, TEST_DATABASE_URL
from tests.providers.helpers import closed_port

ROOT = Path(__file__).resolve().parents[1]


async def run_bot(data_dir: Path, *args: str, **env: str) -> tuple[int, str]:
    """`python -m bot [args]` until it exits by itself; its exit code and everything it printed."""
    base = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "DISCORD_TOKEN": "x" * 59,
        "OPENAI_API_KEY": "sk-test",
        "DATA_DIR": str(data_dir),
        "METRICS_PORT": "0",
        "LOG_LEVEL": "info",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=data_dir,
        env={**base, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, output.decode()


@contextlib.asynccontextmanager
async def answering(status: int) -> AsyncIterator[str]:
    """A local server that answers every request with `status` (a proxy, or a base URL missing its
    path); yields its URL."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"message": "no", "code": 0}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def problems(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line]


@pytest.mark.parametrize("database", ["in DATA_DIR", "elsewhere"])
async def test_a_data_dir_that_cannot_be_written_is_a_settings_problem_said_once(
    tmp_path: Path, database: str
):
    """Also when the database is not in it: job files and the salt live there too."""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    elsewhere = {"DATABASE_URL": f"sqlite:///{tmp_path}/other.sqlite3"} if database == "elsewhere" else {}
    code, log = await run_bot(tmp_path, DATA_DIR=str(blocked / "data"), **elsewhere)

    assert code == 2, log
    assert "Traceback" not in log
    [line] = problems(log)
    assert "cannot write to DATA_DIR" in line


@pytest.mark.parametrize(
    ("in_the_way", "named"),
    [
        ("retouch.sqlite3", "retouch.sqlite3 (unable to open database file)"),  # sqlite3.OperationalError
        ("retouch.sqlite3.lock", "retouch.sqlite3.lock (Is a directory)"),  # OSError, no DATABASE_URL
    ],
)
async def test_a_default_sqlite_file_that_cannot_be_opened_is_a_settings_problem_said_once(
    tmp_path: Path, in_the_way: str, named: str
):
    """Without DATABASE_URL the database is DATA_DIR/retouch.sqlite3: a folder where it or its lock
    belongs was a traceback and exit 1."""
    (tmp_path / in_the_way).mkdir()
    code, log = await run_bot(tmp_path)

    assert code == 2, log
    assert "Traceback" not in log
    [line] = problems(log)
    assert f"cannot use {tmp_path / named}" in line and "DATA_DIR" in line


async def test_a_file_that_is_not_a_sqlite_database_is_refused_with_one_clear_line(tmp_path: Path):
    (tmp_path / "retouch.sqlite3").write_bytes(b"not a database, " * 64)
    code, log = await run_bot(tmp_path)

    assert code == 1, log
    assert "Traceback" not in log
    [line] = problems(log)
    assert "retouch.sqlite3 (file is not a database): it is not a SQLite database" in line


@pytest.mark.parametrize(
    ("host", "setting"),
    [
        ("127.0.0.1", "set METRICS_PORT"),  # the port is taken
        ("no-such-host.invalid", "set METRICS_HOST"),  # a name that does not resolve (socket.gaierror)
        ("192.0.2.1", "set METRICS_HOST"),  # an address this machine does not have (EADDRNOTAVAIL)
    ],
)
async def test_a_metrics_port_that_cannot_be_listened_on_is_a_settings_problem_said_once(
    tmp_path: Path, host: str, setting: str
):
    """The line names the setting to change: a bad METRICS_HOST was blamed on METRICS_PORT."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, log = await run_bot(tmp_path, METRICS_HOST=host, METRICS_PORT=str(port))

    assert code == 2, log
    assert "Traceback" not in log and "cannot reach Discord" not in log
    [line] = problems(log)
    assert f"cannot serve health and metrics on {host}:{port}" in line and setting in line


async def test_a_database_from_a_newer_release_is_refused_with_one_clear_line(tmp_path: Path):
    with sqlite3.connect(tmp_path / "retouch.sqlite3") as db:
        db.execute("CREATE TABLE future (x)")
        db.execute("PRAGMA user_version = 99")

    code, log = await run_bot(tmp_path)

    assert code == 1, log
    assert "Traceback" not in log
    [line] = log.strip().splitlines()
    assert "newer" in line and "schema 99" in line
    with sqlite3.connect(tmp_path / "retouch.sqlite3") as db:  # untouched
        assert db.execute("PRAGMA user_version").fetchone()[0] == 99
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == [("future",)]


async def test_sync_beside_a_running_bot_publishes_the_commands_without_migrating_its_file(
    fake_discord: FakeDiscord, tmp_path: Path
):
    """`--sync` takes no lock (it runs beside the bot), so it must not migrate either: a newer release's
    `--sync` changed the schema under the older bot running on the file, and two raced a migration."""
    path = tmp_path / "retouch.sqlite3"
    older = sorted(MIGRATIONS.glob("*.sql"))[:-1]  # the file as the release before the last one left it
    with sqlite3.connect(path) as db:
        for file in older:
            db.executescript(
                f"BEGIN;\n{file.read_text('utf-8')}\nPRAGMA user_version = {file.name[:4]};\nCOMMIT;"
            )
    version = int(older[-1].name[:4])
    running_bot = hold_sole_process_lock(str(path))
    try:
        code, log = await run_bot(
            tmp_path, "--sync", DISCORD_API_BASE=fake_discord.api_base, DISCORD_TOKEN=fake_discord.token
        )
    finally:
        os.close(running_bot)

    assert code == 0, log
    assert "Traceback" not in log and not problems(log)
    assert {c["name"] for c in fake_discord.synced_commands()} >= {"edit", "credits"}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == version


async def test_sync_on_the_bots_host_leaves_the_running_bots_heartbeat_alone(
    fake_discord: FakeDiscord, tmp_path: Path
):
    """`--sync` (run beside the bot, e.g. `scripts/run.sh --sync`) serves nothing: it neither writes nor,
    at its close, deletes this host's heartbeat file, which the running bot's health check reads."""
    beat = heartbeat_file(tmp_path)
    beat.write_text("1234567890")
    code, log = await run_bot(
        tmp_path, "--sync", DISCORD_API_BASE=fake_discord.api_base, DISCORD_TOKEN=fake_discord.token
    )
    assert code == 0, log
    assert {c["name"] for c in fake_discord.synced_commands()} >= {"edit", "credits"}
    assert beat.read_text() == "1234567890"


async def test_an_unreachable_database_server_gives_one_clear_line_without_its_password(tmp_path: Path):
    url = f"postgresql://retouch:hunter2@127.0.0.1:{closed_port()}/retouch"
    code, log = await run_bot(tmp_path, DATABASE_URL=url)

    assert code == 1, log
    assert "Traceback" not in log and "hunter2" not in log
    [line] = problems(log)
    assert "cannot open the database postgresql://***@127.0.0.1:" in line


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("postgresql://retouch@127.0.0.1:{port}/retouch?password=Hunter2Secret", 1),  # libpq's other form
        ("postgresql://retouch:Hunter2Secret#x@127.0.0.1:{port}/retouch", 2),  # raw characters that
        ("postgresql://retouch:Hunter/2Secret@127.0.0.1:{port}/retouch", 2),  # end the host part early
        ("postgresql://retouch:Hunter?2Secret@127.0.0.1:{port}/retouch", 2),
        ("postgresql:/retouch:Hunter2Secret@127.0.0.1:{port}/retouch", 2),  # a mistyped scheme
    ],
)
async def test_a_database_password_never_reaches_the_log_however_the_url_is_written(
    tmp_path: Path, url: str, code: int
):
    """Unreachable (1), or a URL that cannot be read (2, a settings problem): one clear line either
    way, and the password in none of it."""
    got, log = await run_bot(tmp_path, DATABASE_URL=url.format(port=closed_port()))

    assert got == code, log
    assert "Traceback" not in log and "Hunter" not in log and "Secret" not in log
    assert "DATABASE_URL" in log or "cannot open the database" in log


@pytest.mark.parametrize(
    "api_base",
    [f"http://127.0.0.1:{closed_port()}/api/v10", "http://discord.invalid/api/v10"],
    ids=["refused", "dns"],
)
async def test_an_unreachable_discord_gives_one_clear_line(tmp_path: Path, api_base: str):
    code, log = await run_bot(tmp_path, DISCORD_API_BASE=api_base)

    assert code == 1, log
    assert "Traceback" not in log
    [line] = problems(log)
    assert "cannot reach Discord" in line


async def test_a_wrong_token_gives_one_clear_line(fake_discord: FakeDiscord, tmp_path: Path):
    code, log = await run_bot(tmp_path, DISCORD_API_BASE=fake_discord.api_base, DISCORD_TOKEN="y" * 59)

    assert code == 2, log
    assert "Traceback" not in log
    [line] = problems(log)
    assert "DISCORD_TOKEN" in line


async def test_a_failure_inside_a_working_database_is_not_blamed_on_the_file_or_the_folder(tmp_path: Path):
    """A migration that fails inside the file (here: the tables it rebuilds are missing) is a bug to
    report with its traceback, never advice to move the database away or change DATA_DIR."""
    with sqlite3.connect(tmp_path / "retouch.sqlite3") as db:
        db.execute("PRAGMA user_version = 13")  # says it has every table up to 0013, but holds none
    code, log = await run_bot(tmp_path)

    assert code != 0 and code != 2, log
    assert "no such table" in log
    assert "move it away" not in log and "set DATA_DIR" not in log


async def test_a_damaged_sqlite_file_gets_the_restore_advice_not_a_traceback(tmp_path: Path):
    path = tmp_path / "retouch.sqlite3"
    with sqlite3.connect(path) as db:  # a real database, then its schema page overwritten
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [("y" * 500,) for _ in range(200)])
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[100:page] = b"\xff" * (page - 100)
    path.write_bytes(bytes(data))
    code, log = await run_bot(tmp_path)

    assert code == 1, log
    assert "Traceback" not in log
    [line] = problems(log)
    assert "malformed" in line and "restore a backup" in line


async def test_a_dev_guild_the_bot_is_not_in_is_a_settings_problem_said_once(
    fake_discord: FakeDiscord, tmp_path: Path
):
    """Discord answers 403 Missing Access to the command sync: that was a traceback."""
    code, log = await run_bot(
        tmp_path, DISCORD_API_BASE=fake_discord.api_base, DISCORD_TOKEN=fake_discord.token, DEV_GUILD_ID="123"
    )

    assert code == 2, log
    assert "Traceback" not in log
    [line] = problems(log)
    assert "DEV_GUILD_ID 123 (HTTP 403)" in line and "invite it there, or unset DEV_GUILD_ID" in line


async def test_a_discord_api_base_without_its_api_path_names_the_setting_in_one_line(tmp_path: Path):
    async with answering(404) as base:
        code, log = await run_bot(tmp_path, DISCORD_API_BASE=base)

    assert code == 2, log
    assert "Traceback" not in log
    [line] = problems(log)
    assert "HTTP 404 Not Found" in line and "DISCORD_API_BASE" in line and "must end in /api/v10" in line


async def test_a_404_from_a_base_that_ends_in_its_api_path_is_not_blamed_on_the_path(tmp_path: Path):
    """The path is there: what answers (a proxy lacking a route) is what to look at."""
    async with answering(404) as base:
        code, log = await run_bot(tmp_path, DISCORD_API_BASE=f"{base}/api/v10")

    assert code == 1, log
    [line] = problems(log)
    assert "Discord refused the bot's start-up requests (HTTP 404 Not Found)" in line
    assert "must end in /api/v10" not in line


async def test_a_proxy_that_refuses_the_bot_gives_one_line_with_the_status(tmp_path: Path):
    async with answering(403) as base:
        code, log = await run_bot(tmp_path, DISCORD_API_BASE=f"{base}/api/v10")

    assert code == 1, log
    assert "Traceback" not in log
    [line] = problems(log)
    assert "Discord refused the bot's start-up requests (HTTP 403 Forbidden)" in line
    assert "DISCORD_API_BASE" in line


@pytest.mark.skipif(not TEST_DATABASE_URL, reason=NO_POSTGRES)
@pytest.mark.parametrize(
    ("where", "advice"),
    [
        ("schema", "create the schema first: CREATE SCHEMA retouch_absent"),  # at the first migration
        ("database", "the database retouch_absent_db does not exist: create it"),  # at connecting
    ],
)
async def test_a_postgresql_schema_or_database_that_does_not_exist_is_one_line_with_the_fix(
    tmp_path: Path, where: str, advice: str
):
    """A schema `?search_path=` names but nobody created was a traceback from inside the migration."""
    parts = urlsplit(TEST_DATABASE_URL)
    # The password (ignored by a server that trusts local connections) must appear nowhere.
    netloc = f"{parts.username or 'postgres'}:Hunter2Secret@{parts.hostname}:{parts.port or 5432}"
    if where == "schema":
        url = schema_url(urlunsplit(parts._replace(netloc=netloc)), "retouch_absent")
    else:
        url = urlunsplit(parts._replace(netloc=netloc, path="/retouch_absent_db"))
    code, log = await run_bot(tmp_path, DATABASE_URL=url)

    assert code == 2, log
    assert "Traceback" not in log and "Hunter2Secret" not in log
    [line] = problems(log)
    assert "cannot use the database DATABASE_URL names" in line and advice in line


# Stands in for the virtualenv's python under scripts/run.sh: notes each `-m` it is asked to run, and
# fails `pip install` like an offline machine while the project holds a file named `offline`.
FAKE_VENV_PYTHON = """#!/bin/sh
here=$(dirname "$0")/../..
if [ "$1" = "-m" ]; then
  echo "$2" >>"$here/calls"
  if [ "$2" = pip ] && [ -e "$here/offline" ]; then exit 1; fi
  exit 0
fi
exec {python} "$@"
"""


def test_run_sh_installs_only_in_a_new_virtualenv_or_after_pyproject_changed(tmp_path: Path):
    """It ran `pip install .` on every start, whose isolated build fetches setuptools: without the package
    index (offline, a mirror down) it exited 1 and the bot never started."""
    project = tmp_path / "retouch"
    (project / "scripts").mkdir(parents=True)
    for script in ("run.sh", "_venv.sh"):
        shutil.copy(ROOT / "scripts" / script, project / "scripts" / script)
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    python = project / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_VENV_PYTHON.format(python=sys.executable))
    python.chmod(0o755)

    def start(*, offline: bool) -> tuple[int, list[str]]:
        """Run scripts/run.sh once: its exit code and the modules it ran, in order."""
        (project / "offline").unlink(missing_ok=True)
        if offline:
            (project / "offline").touch()
        (project / "calls").unlink(missing_ok=True)
        proc = subprocess.run(
            ["bash", "scripts/run.sh", "--check-config"],
            cwd=project,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        calls = project / "calls"
        return proc.returncode, calls.read_text().split() if calls.exists() else []

    assert start(offline=False) == (0, ["pip", "bot"])  # a new virtualenv
    assert start(offline=True) == (0, ["bot"])
    with (project / "pyproject.toml").open("a") as pyproject:
        pyproject.write("# a new dependency\n")
    assert start(offline=True) == (1, ["pip"])  # the dependencies changed: they must be installed
    assert start(offline=True) == (1, ["pip"])  # a failed install is tried again at the next start
    assert start(offline=False) == (0, ["pip", "bot"])
    assert start(offline=True) == (0, ["bot"])
